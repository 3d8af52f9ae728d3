//! The serving index: everything the phones listener needs to decide —
//! realm → account, (account, MAC) → unit with its credentials and the
//! names and etags of its files, (account, common file name) → the common
//! files — kept in step with the mirror by observing it
//! (`cache::mirror::Observer`), so it is never older or newer than the
//! cache documents it comes from.
//!
//! A decision is a few hash lookups and reference-count bumps: no JSON is
//! walked per request (measured: the serving decision was 40% of the
//! listener's time before). The files' bodies are not held here: a body
//! exists once, in the mirror (on disk with a store), and the files served
//! recently are kept formatted in a bounded hot set (`hot`), so memory no
//! longer grows with every unit's served bytes (issue 13: the bodies and
//! their headers were 3.5–4.7 kB of the 8 kB a unit cost). A miss reads the
//! cache document back (`Tables::file`) and serves the body only if its
//! etag is the one indexed, so a file is never answered from another
//! revision than the decision was made on. Each file carries since when it
//! has had its current content (`Last-Modified`).
//!
//! Only served things are indexed: a disabled or duplicate unit, an
//! account with a duplicate realm, a common output without files are
//! absent, which is what makes every denial the same 404.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::http::HeaderValue;
use bytes::Bytes;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::auth::Stored;
use super::hot::{HotSet, HotStats};
use super::mac::Mac;
use crate::cache::mirror::{Entries, Mirror, Observer};
use crate::cache::{CacheEntry, Content};
use crate::domains::Domain;

const PREFIX_ACCOUNT: &str = "phones:account:";
const PREFIX_UNIT: &str = "phones:unit:";
const PREFIX_COMMON: &str = "phones:common:";

/// A file as it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedFile {
    pub body: Bytes,
    pub etag: String,
    pub content_type: String,
    /// Since when the file has had this content (as this process saw it).
    pub since: SystemTime,
    /// The response headers, formatted once per content rather than per
    /// request.
    pub headers: FileHeaders,
}

impl ServedFile {
    pub fn new(body: Bytes, etag: String, content_type: String, since: SystemTime) -> ServedFile {
        ServedFile {
            headers: FileHeaders::of(&content_type, &etag, since),
            body,
            etag,
            content_type,
            since,
        }
    }
}

/// What the index keeps of a file: enough to decide and to answer a
/// conditional request's etag, not its body.
#[derive(Debug, Clone, PartialEq)]
pub struct FileMeta {
    pub name: Box<str>,
    pub etag: Box<str>,
    pub since: SystemTime,
}

/// The files of one revision of a cache document.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSet {
    /// The cache document holding the bodies.
    pub doc: Arc<str>,
    /// Unique to this revision's set: the hot set's key.
    generation: u64,
    files: Box<[FileMeta]>,
}

impl FileSet {
    pub fn get(&self, name: &str) -> Option<&FileMeta> {
        self.files.iter().find(|f| &*f.name == name)
    }

    fn position(&self, name: &str) -> Option<u16> {
        let index = self.files.iter().position(|f| &*f.name == name)?;
        u16::try_from(index).ok()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| &*f.name)
    }

    fn keys(&self) -> impl Iterator<Item = (u64, u16)> + '_ {
        (0..self.files.len()).filter_map(|i| Some((self.generation, u16::try_from(i).ok()?)))
    }
}

/// What `Tables::file` found.
#[derive(Debug, Clone, PartialEq)]
pub enum FileLookup {
    Found(Arc<ServedFile>),
    /// The set has no such file.
    Absent,
    /// The set names it, but the mirror no longer holds that content (a
    /// newer revision arrived since the decision, or the store could not
    /// read it back): never answered with other bytes.
    Gone,
}

/// `Content-Type`, `ETag` (quoted) and `Last-Modified` of a served file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileHeaders {
    pub content_type: HeaderValue,
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
}

impl FileHeaders {
    fn of(content_type: &str, etag: &str, since: SystemTime) -> FileHeaders {
        let value = |text: String| {
            HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        FileHeaders {
            content_type: HeaderValue::from_str(content_type)
                .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
            etag: value(format!("\"{etag}\"")),
            last_modified: value(httpdate::fmt_http_date(since)),
        }
    }
}

/// An account as serving needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedAccount {
    /// Enabled, with a valid realm no other enabled account has.
    pub served: bool,
    /// `None`: any address.
    pub allowed: Option<Vec<IpNet>>,
}

impl ServedAccount {
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)))
    }
}

/// A served unit.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedUnit {
    /// The unit's document id.
    pub id: Arc<str>,
    pub brand: String,
    /// Boxed: most units have none, and the four strings inline would cost
    /// each unit ~100 bytes.
    pub auth: Option<Box<Stored>>,
    pub files: FileSet,
    /// The cache document of its model's common files.
    pub common: Option<Arc<str>>,
}

/// The model-common files of a model in an account.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedCommon {
    pub brand: String,
    pub model: String,
    /// Its `doc` is the cache document.
    pub files: FileSet,
}

impl ServedCommon {
    /// The cache document.
    pub fn doc(&self) -> &Arc<str> {
        &self.files.doc
    }
}

/// What one cache document put into the tables.
#[derive(Debug, Clone)]
enum Contribution {
    Account {
        id: String,
        realm: Option<String>,
        account: Arc<ServedAccount>,
    },
    Unit {
        /// Shared with `accounts_by_mac`.
        account: Arc<str>,
        mac: Option<Mac>,
        unit: Option<Arc<ServedUnit>>,
    },
    Common {
        account: String,
        common: Arc<ServedCommon>,
    },
}

type Ids = BTreeSet<Arc<str>>;

#[derive(Default)]
struct Inner {
    /// realm → account ids.
    realms: HashMap<String, Ids>,
    accounts: HashMap<String, Arc<ServedAccount>>,
    /// account → MAC → served units (nested so lookups need no key copy).
    units_by_mac: HashMap<String, HashMap<Mac, Vec<Arc<ServedUnit>>>>,
    /// MAC → accounts serving it (a set, as a list: nearly always one).
    accounts_by_mac: HashMap<Mac, Vec<Arc<str>>>,
    /// account → common file name → common outputs holding it.
    common: HashMap<String, HashMap<String, Vec<Arc<ServedCommon>>>>,
    /// account → every unit document (served or not), for the admin API.
    units_of: HashMap<String, Ids>,
    contributed: HashMap<Arc<str>, Contribution>,
    /// The last file set generation handed out.
    generations: u64,
}

/// The tables; shared by the phones listener and the admin API.
#[derive(Default)]
pub struct Tables {
    inner: RwLock<Inner>,
    hot: HotSet,
}

fn text(value: &Value, field: &str) -> Option<String> {
    value.get(field)?.as_str().map(str::to_string)
}

/// The fields of a phones cache document the tables read. Everything
/// else (merged configuration, provenance, lines) is skipped unparsed, so
/// a put parses little more than the files' bodies — which are moved into
/// the served bytes, not copied.
#[derive(Debug, Default, Deserialize)]
struct Indexed {
    served: Option<Value>,
    realm: Option<Value>,
    allowed_cidrs: Option<Value>,
    unit: Option<Value>,
    auth: Option<Value>,
    common: Option<Value>,
    files: Option<Value>,
    account_id: Option<Value>,
    brand: Option<Value>,
    model: Option<Value>,
}

impl Indexed {
    /// What the tables read of `content`; nothing of a content that is not
    /// an object (as `Value::get` reads nothing of one).
    fn of(content: &Content) -> Indexed {
        let read = match content {
            Content::Text(text) if text.as_str().starts_with('{') => {
                serde_json::from_str(text.as_str()).ok()
            }
            _ => None,
        };
        read.unwrap_or_default()
    }

    fn served(&self) -> bool {
        self.served.as_ref().and_then(Value::as_bool) == Some(true)
    }

    fn text(field: Option<&Value>) -> Option<String> {
        field?.as_str().map(str::to_string)
    }

    fn allowed(&self) -> Option<Vec<IpNet>> {
        let list = self.allowed_cidrs.as_ref()?.as_array()?;
        Some(
            list.iter()
                .filter_map(|n| super::model::parse_cidr(n.as_str()?))
                .collect(),
        )
    }
}

/// The file set of a revision of `doc`, keeping `since` of the files whose
/// etag did not change (`before`: the previous revision's set). Bodies
/// are dropped: they are read back on demand (`Tables::file`).
fn file_set(
    doc: &str,
    files: Option<Value>,
    before: Option<&FileSet>,
    now: SystemTime,
    generation: u64,
) -> FileSet {
    let mut set: Vec<FileMeta> = file_fields(files)
        .map(|(name, etag, _)| {
            let since = before
                .and_then(|b| b.get(&name))
                .filter(|old| *old.etag == *etag)
                .map_or(now, |old| old.since);
            FileMeta {
                name: name.into(),
                etag: etag.into(),
                since,
            }
        })
        .collect();
    set.truncate(usize::from(u16::MAX));
    FileSet {
        doc: before.map_or_else(|| Arc::from(doc), |b| b.doc.clone()),
        generation,
        files: set.into_boxed_slice(),
    }
}

/// The files of a content's `files` object that have an etag and a body:
/// (name, etag, file object without its etag).
fn file_fields(
    files: Option<Value>,
) -> impl Iterator<Item = (String, String, serde_json::Map<String, Value>)> {
    let files = match files {
        Some(Value::Object(files)) => files,
        _ => serde_json::Map::new(),
    };
    files.into_iter().filter_map(|(name, file)| {
        let Value::Object(file) = file else {
            return None;
        };
        let etag = file.get("etag")?.as_str()?.to_string();
        file.get("body")?.as_str()?;
        Some((name, etag, file))
    })
}

/// The `files` of a phones cache document, for reading bodies back.
#[derive(Deserialize)]
struct Bodies {
    files: Option<Value>,
}

/// The files of `entry` that `set` indexes with the same etag, ready to
/// send.
fn load_files(entry: &CacheEntry, set: &FileSet) -> Vec<(u16, Arc<ServedFile>)> {
    let Content::Text(text) = &entry.content else {
        return Vec::new();
    };
    let Ok(bodies) = serde_json::from_str::<Bodies>(text.as_str()) else {
        return Vec::new();
    };
    file_fields(bodies.files)
        .filter_map(|(name, etag, mut file)| {
            let index = set.position(&name)?;
            let meta = &set.files[usize::from(index)];
            if *meta.etag != *etag {
                return None;
            }
            let Some(Value::String(body)) = file.remove("body") else {
                return None;
            };
            let content_type = file
                .get("content_type")
                .and_then(Value::as_str)
                .map_or_else(|| "application/octet-stream".into(), str::to_string);
            let served = ServedFile::new(Bytes::from(body), etag, content_type, meta.since);
            Some((index, Arc::new(served)))
        })
        .collect()
}

/// What a cache document contributes, given what its previous revision did.
fn contribution(
    entry: &CacheEntry,
    before: Option<&Contribution>,
    now: SystemTime,
    generation: u64,
) -> Option<Contribution> {
    let is = |prefix: &str| entry.id.starts_with(prefix);
    if !(is(PREFIX_ACCOUNT) || is(PREFIX_UNIT) || is(PREFIX_COMMON)) {
        return None;
    }
    let content = Indexed::of(&entry.content);
    if let Some(id) = entry.id.strip_prefix(PREFIX_ACCOUNT) {
        let served = content.served();
        let realm = served
            .then(|| Indexed::text(content.realm.as_ref()))
            .flatten();
        return Some(Contribution::Account {
            id: id.to_string(),
            realm,
            account: Arc::new(ServedAccount {
                served,
                allowed: content.allowed(),
            }),
        });
    }
    if let Some(id) = entry.id.strip_prefix(PREFIX_UNIT) {
        return unit_contribution(&entry.id, id, content, before, now, generation);
    }
    let account = Indexed::text(content.account_id.as_ref())?;
    let old_files = match before {
        Some(Contribution::Common { common, .. }) => Some(&common.files),
        _ => None,
    };
    let common = Arc::new(ServedCommon {
        brand: Indexed::text(content.brand.as_ref()).unwrap_or_default(),
        model: Indexed::text(content.model.as_ref()).unwrap_or_default(),
        files: file_set(&entry.id, content.files, old_files, now, generation),
    });
    Some(Contribution::Common { account, common })
}

fn unit_contribution(
    doc: &str,
    id: &str,
    content: Indexed,
    before: Option<&Contribution>,
    now: SystemTime,
    generation: u64,
) -> Option<Contribution> {
    let unit = content.unit.as_ref()?;
    let account: Arc<str> = Arc::from(text(unit, "account_id")?);
    let mac = content
        .served()
        .then(|| text(unit, "mac").and_then(|m| Mac::parse(&m)))
        .flatten();
    let old_files = match before {
        Some(Contribution::Unit {
            unit: Some(old), ..
        }) => Some(&old.files),
        _ => None,
    };
    let served_unit = match mac {
        Some(_) => Some(Arc::new(ServedUnit {
            id: Arc::from(id),
            brand: text(unit, "brand").unwrap_or_default(),
            auth: content
                .auth
                .as_ref()
                .and_then(Stored::from_json)
                .map(Box::new),
            common: content
                .common
                .as_ref()
                .and_then(|c| c.get("key")?.as_str())
                .map(|k| Arc::from(format!("phones:{k}").as_str())),
            files: file_set(doc, content.files, old_files, now, generation),
        })),
        None => None,
    };
    Some(Contribution::Unit {
        account,
        mac,
        unit: served_unit,
    })
}

impl Inner {
    fn add(&mut self, entry: &CacheEntry, before: Option<&Contribution>, now: SystemTime) {
        self.generations += 1;
        let Some(contribution) = contribution(entry, before, now, self.generations) else {
            return;
        };
        // One copy of the id, shared with the file set's.
        let doc: Arc<str> = contribution
            .files()
            .map_or_else(|| Arc::from(entry.id.as_str()), |files| files.doc.clone());
        match &contribution {
            Contribution::Account { id, realm, account } => {
                if let Some(realm) = realm {
                    self.realms
                        .entry(realm.clone())
                        .or_default()
                        .insert(Arc::from(id.as_str()));
                }
                self.accounts.insert(id.clone(), account.clone());
            }
            Contribution::Unit { account, mac, unit } => {
                self.units_of
                    .entry(account.to_string())
                    .or_default()
                    .insert(doc.clone());
                if let (Some(mac), Some(unit)) = (mac, unit) {
                    let by_mac = self.units_by_mac.entry(account.to_string()).or_default();
                    by_mac.entry(*mac).or_default().push(unit.clone());
                    let accounts = self.accounts_by_mac.entry(*mac).or_default();
                    if !accounts.contains(account) {
                        accounts.push(account.clone());
                    }
                }
            }
            Contribution::Common { account, common } => {
                let by_file = self.common.entry(account.clone()).or_default();
                for file in common.files.names() {
                    by_file
                        .entry(file.to_string())
                        .or_default()
                        .push(common.clone());
                }
            }
        }
        self.contributed.insert(doc, contribution);
    }

    fn forget(&mut self, doc: &str) -> Option<Contribution> {
        let contribution = self.contributed.remove(doc)?;
        match &contribution {
            Contribution::Account { id, realm, .. } => {
                if let Some(realm) = realm
                    && let Some(ids) = self.realms.get_mut(realm)
                {
                    ids.remove(id.as_str());
                    if ids.is_empty() {
                        self.realms.remove(realm);
                    }
                }
                self.accounts.remove(id);
            }
            Contribution::Unit { account, mac, unit } => {
                if let Some(ids) = self.units_of.get_mut(&**account) {
                    ids.remove(doc);
                    if ids.is_empty() {
                        self.units_of.remove(&**account);
                    }
                }
                if let (Some(mac), Some(unit)) = (mac, unit) {
                    self.forget_unit(account, mac, unit);
                }
            }
            Contribution::Common { account, common } => {
                if let Some(by_file) = self.common.get_mut(account) {
                    for file in common.files.names() {
                        if let Some(list) = by_file.get_mut(file) {
                            list.retain(|c| c.doc() != common.doc());
                            if list.is_empty() {
                                by_file.remove(file);
                            }
                        }
                    }
                    if by_file.is_empty() {
                        self.common.remove(account);
                    }
                }
            }
        }
        Some(contribution)
    }

    fn forget_unit(&mut self, account: &str, mac: &Mac, unit: &Arc<ServedUnit>) {
        let Some(by_mac) = self.units_by_mac.get_mut(account) else {
            return;
        };
        if let Some(list) = by_mac.get_mut(mac) {
            list.retain(|u| u.id != unit.id);
            if list.is_empty() {
                by_mac.remove(mac);
            }
        }
        let still = by_mac.contains_key(mac);
        if by_mac.is_empty() {
            self.units_by_mac.remove(account);
        }
        if !still && let Some(accounts) = self.accounts_by_mac.get_mut(mac) {
            accounts.retain(|a| &**a != account);
            if accounts.is_empty() {
                self.accounts_by_mac.remove(mac);
            }
        }
    }
}

impl Observer for Tables {
    fn reset(&self, entries: &Entries<'_>) {
        let now = SystemTime::now();
        let mut inner = self.write();
        let old = std::mem::take(&mut *inner);
        inner.generations = old.generations;
        self.hot.clear();
        entries.each_of_domain(Domain::Phones.name(), |entry| {
            inner.add(entry, old.contributed.get(entry.id.as_str()), now);
        });
    }

    fn put(&self, entry: &Arc<CacheEntry>) {
        if !entry.id.starts_with("phones:") {
            return;
        }
        let mut inner = self.write();
        let before = inner.forget(&entry.id);
        self.forget_hot(before.as_ref());
        inner.add(entry, before.as_ref(), SystemTime::now());
    }

    fn remove(&self, id: &str) {
        if id.starts_with("phones:") {
            let before = self.write().forget(id);
            self.forget_hot(before.as_ref());
        }
    }
}

impl Contribution {
    fn files(&self) -> Option<&FileSet> {
        match self {
            Contribution::Unit {
                unit: Some(unit), ..
            } => Some(&unit.files),
            Contribution::Common { common, .. } => Some(&common.files),
            _ => None,
        }
    }
}

impl Tables {
    /// Tables whose hot set holds at most about `hot_set_bytes`.
    pub fn with_hot_set(hot_set_bytes: usize) -> Tables {
        Tables {
            inner: RwLock::default(),
            hot: HotSet::new(hot_set_bytes),
        }
    }

    /// A new bound for the hot set (SIGHUP).
    pub fn resize_hot_set(&self, bytes: usize) {
        self.hot.resize(bytes);
    }

    pub fn hot_stats(&self) -> HotStats {
        self.hot.stats()
    }

    /// The previous revision's files leave the hot set with it.
    fn forget_hot(&self, before: Option<&Contribution>) {
        for key in before
            .and_then(Contribution::files)
            .into_iter()
            .flat_map(FileSet::keys)
        {
            self.hot.forget(key);
        }
    }

    /// The file `name` of `set`, ready to send: from the hot set, else read
    /// back from the mirror (and kept hot, with the set's other files).
    pub fn file(&self, mirror: &Mirror, set: &FileSet, name: &str) -> FileLookup {
        let Some(index) = set.position(name) else {
            return FileLookup::Absent;
        };
        if let Some(file) = self.hot.get((set.generation, index)) {
            return FileLookup::Found(file);
        }
        let Some(entry) = mirror.get(&set.doc) else {
            return FileLookup::Gone;
        };
        let mut found = FileLookup::Gone;
        for (i, file) in load_files(&entry, set) {
            if i == index {
                found = FileLookup::Found(file.clone());
            }
            self.hot.insert((set.generation, i), file);
        }
        found
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The account serving `realm` (`None` when none or several).
    pub fn account_of_realm(&self, realm: &str) -> Option<Arc<str>> {
        let inner = self.read();
        let ids = inner.realms.get(realm)?;
        (ids.len() == 1)
            .then(|| ids.iter().next().cloned())
            .flatten()
    }

    pub fn account(&self, id: &str) -> Option<Arc<ServedAccount>> {
        self.read().accounts.get(id).cloned()
    }

    /// The served units of a MAC in an account.
    pub fn units(&self, account: &str, mac: &Mac) -> Vec<Arc<ServedUnit>> {
        let inner = self.read();
        inner
            .units_by_mac
            .get(account)
            .and_then(|by_mac| by_mac.get(mac))
            .cloned()
            .unwrap_or_default()
    }

    /// Whether some other account serves a unit with this MAC.
    pub fn mac_in_other_account(&self, account: &str, mac: &Mac) -> bool {
        self.read()
            .accounts_by_mac
            .get(mac)
            .is_some_and(|accounts| accounts.iter().any(|a| &**a != account))
    }

    /// The common outputs of an account that hold `file`.
    pub fn common(&self, account: &str, file: &str) -> Vec<Arc<ServedCommon>> {
        self.read()
            .common
            .get(account)
            .and_then(|by_file| by_file.get(file))
            .cloned()
            .unwrap_or_default()
    }

    /// Every unit document of an account (served or not).
    pub fn units_of(&self, account: &str) -> Vec<Arc<str>> {
        self.read()
            .units_of
            .get(account)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::mirror::{Mirror, Update};
    use serde_json::json;

    fn entry(id: &str, rev: &str, content: Value) -> CacheEntry {
        CacheEntry {
            id: id.into(),
            rev: rev.into(),
            domain: "phones".into(),
            key: id.trim_start_matches("phones:").into(),
            hash: rev.into(),
            content: Content::of(&content),
            errors: json!([]),
            stale: false,
            bytes: 0,
        }
    }

    fn unit(account: &str, mac: &str, served: bool, etag: &str) -> Value {
        json!({"unit": {"account_id": account, "mac": mac, "brand": "yealink"}, "served": served,
               "files": {"f.cfg": {"etag": etag, "body": "x", "content_type": "text/plain"}}})
    }

    #[test]
    fn the_tables_follow_the_mirror() {
        let mirror = Mirror::default();
        let tables = Arc::new(Tables::default());
        let body = |set: &FileSet, name: &str| match tables.file(&mirror, set, name) {
            FileLookup::Found(file) => file.body.clone(),
            other => panic!("{name}: {other:?}"),
        };
        mirror.apply_written(Update::Live(entry(
            "phones:account:a",
            "1-a",
            json!({"served": true, "realm": "a.example", "allowed_cidrs": ["10.0.0.0/8"]}),
        )));
        mirror.observe(tables.clone());
        assert_eq!(tables.account_of_realm("a.example").as_deref(), Some("a"));
        let account = tables.account("a").unwrap();
        assert!(account.allows("10.1.1.1".parse().unwrap()));
        assert!(!account.allows("192.0.2.1".parse().unwrap()));
        mirror.apply_written(Update::Live(entry(
            "phones:unit:u1",
            "1-a",
            unit("a", "805ec0123456", true, "e1"),
        )));
        mirror.apply_written(Update::Live(entry(
            "phones:unit:u2",
            "1-a",
            unit("b", "805ec0123456", false, "e1"),
        )));
        let mac = Mac::parse("805ec0123456").unwrap();
        let found = tables.units("a", &mac);
        assert_eq!(found.len(), 1);
        assert_eq!(&*found[0].id, "u1");
        assert_eq!(body(&found[0].files, "f.cfg"), Bytes::from_static(b"x"));
        assert_eq!(
            tables.file(&mirror, &found[0].files, "g.cfg"),
            FileLookup::Absent
        );
        assert!(
            tables.units("b", &mac).is_empty(),
            "not served, not indexed"
        );
        assert!(tables.mac_in_other_account("b", &mac));
        assert!(!tables.mac_in_other_account("a", &mac));
        assert_eq!(tables.units_of("b"), [Arc::from("phones:unit:u2")]);
        let since = found[0].files.get("f.cfg").unwrap().since;
        // Same etag in a new revision: the time stays.
        mirror.apply_written(Update::Live(entry(
            "phones:unit:u1",
            "2-a",
            unit("a", "805ec0123456", true, "e1"),
        )));
        assert_eq!(
            tables.units("a", &mac)[0].files.get("f.cfg").unwrap().since,
            since
        );
        // The set read before the next revision names etag e1: once the
        // mirror holds e2, its bytes are gone, never e2's.
        let old = tables.units("a", &mac)[0].files.clone();
        mirror.apply_written(Update::Live(entry(
            "phones:unit:u1",
            "3-a",
            unit("a", "805ec0123457", true, "e2"),
        )));
        assert!(tables.units("a", &mac).is_empty());
        let moved = Mac::parse("805ec0123457").unwrap();
        let new = tables.units("a", &moved)[0].files.clone();
        assert_eq!(&*new.get("f.cfg").unwrap().etag, "e2");
        assert_eq!(tables.file(&mirror, &old, "f.cfg"), FileLookup::Gone);
        assert_eq!(body(&new, "f.cfg"), Bytes::from_static(b"x"));
        assert!(tables.hot_stats().files >= 1, "read back and kept hot");
        mirror.apply_written(Update::Live(entry(
            "phones:common:a:yealink:t46s",
            "1-a",
            json!({"account_id": "a", "brand": "yealink", "files": {"y.cfg": {"etag": "c", "body": "common"}}}),
        )));
        let common = tables.common("a", "y.cfg");
        assert_eq!(&**common[0].doc(), "phones:common:a:yealink:t46s");
        assert_eq!(
            body(&common[0].files, "y.cfg"),
            Bytes::from_static(b"common")
        );
        mirror.apply_written(Update::Deleted {
            id: "phones:common:a:yealink:t46s".into(),
            rev: "2-a".into(),
        });
        assert!(tables.common("a", "y.cfg").is_empty());
        assert_eq!(
            tables.file(&mirror, &common[0].files, "y.cfg"),
            FileLookup::Gone,
            "deleted: neither the hot set nor the mirror answers"
        );
        mirror.apply_written(Update::Live(entry(
            "phones:account:b",
            "1-a",
            json!({"served": true, "realm": "a.example"}),
        )));
        assert_eq!(
            tables.account_of_realm("a.example"),
            None,
            "two accounts, no answer"
        );
        mirror.replace_all(vec![]);
        assert!(tables.units_of("a").is_empty());
        assert!(tables.account("a").is_none());
    }
}
