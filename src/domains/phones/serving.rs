//! The serving index: everything the phones listener needs, ready to send
//! — realm → account, (account, MAC) → unit with its files as `Bytes` and
//! its credentials, (account, common file name) → the common files — kept
//! in step with the mirror by observing it (`cache::mirror::Observer`), so
//! it is never older or newer than the cache documents it comes from.
//!
//! A request is then a few hash lookups and reference-count bumps: no JSON
//! is walked and no body is copied per request (measured: the serving
//! decision was 40% of the listener's time before). The price is one copy
//! of each served file's bytes next to the mirror's JSON text (the mirror
//! keeps phones outputs unparsed, `cache::Content::Text`): a put reads
//! only the fields indexed here (`Indexed`) and moves the bodies in. Each
//! file also carries since when it has had its current content
//! (`Last-Modified`).
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
use super::mac::Mac;
use crate::cache::mirror::{Entries, Observer};
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
    pub auth: Option<Stored>,
    pub files: HashMap<String, Arc<ServedFile>>,
    /// The cache document of its model's common files.
    pub common: Option<Arc<str>>,
}

/// The model-common files of a model in an account.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedCommon {
    /// The cache document.
    pub doc: Arc<str>,
    pub brand: String,
    pub model: String,
    pub files: HashMap<String, Arc<ServedFile>>,
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
}

/// The tables; shared by the phones listener and the admin API.
#[derive(Default)]
pub struct Tables {
    inner: RwLock<Inner>,
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

/// The files of a document, keeping `since` of those whose etag did not
/// change (`before`: the previous revision's files).
fn files(
    files: Option<Value>,
    before: Option<&HashMap<String, Arc<ServedFile>>>,
    now: SystemTime,
) -> HashMap<String, Arc<ServedFile>> {
    let Some(Value::Object(files)) = files else {
        return HashMap::new();
    };
    files
        .into_iter()
        .filter_map(|(name, file)| {
            let Value::Object(mut file) = file else {
                return None;
            };
            let etag = file.get("etag")?.as_str()?.to_string();
            let Some(Value::String(body)) = file.remove("body") else {
                return None;
            };
            let since = before
                .and_then(|b| b.get(&name))
                .filter(|old| old.etag == etag)
                .map_or(now, |old| old.since);
            let content_type = file
                .get("content_type")
                .and_then(Value::as_str)
                .map_or_else(|| "application/octet-stream".into(), str::to_string);
            let served = ServedFile {
                body: Bytes::from(body),
                headers: FileHeaders::of(&content_type, &etag, since),
                etag,
                content_type,
                since,
            };
            Some((name, Arc::new(served)))
        })
        .collect()
}

/// What a cache document contributes, given what its previous revision did.
fn contribution(
    entry: &CacheEntry,
    before: Option<&Contribution>,
    now: SystemTime,
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
        return unit_contribution(id, content, before, now);
    }
    let account = Indexed::text(content.account_id.as_ref())?;
    let old_files = match before {
        Some(Contribution::Common { common, .. }) => Some(&common.files),
        _ => None,
    };
    let common = Arc::new(ServedCommon {
        doc: Arc::from(entry.id.as_str()),
        brand: Indexed::text(content.brand.as_ref()).unwrap_or_default(),
        model: Indexed::text(content.model.as_ref()).unwrap_or_default(),
        files: files(content.files, old_files, now),
    });
    Some(Contribution::Common { account, common })
}

fn unit_contribution(
    id: &str,
    content: Indexed,
    before: Option<&Contribution>,
    now: SystemTime,
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
            auth: content.auth.as_ref().and_then(Stored::from_json),
            common: content
                .common
                .as_ref()
                .and_then(|c| c.get("key")?.as_str())
                .map(|k| Arc::from(format!("phones:{k}").as_str())),
            files: files(content.files, old_files, now),
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
        let Some(contribution) = contribution(entry, before, now) else {
            return;
        };
        let doc: Arc<str> = Arc::from(entry.id.as_str());
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
                for file in common.files.keys() {
                    by_file
                        .entry(file.clone())
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
                    for file in common.files.keys() {
                        if let Some(list) = by_file.get_mut(file) {
                            list.retain(|c| c.doc != common.doc);
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
        let before = std::mem::take(&mut *inner).contributed;
        entries.each_of_domain(Domain::Phones.name(), |entry| {
            inner.add(entry, before.get(entry.id.as_str()), now);
        });
    }

    fn put(&self, entry: &Arc<CacheEntry>) {
        if !entry.id.starts_with("phones:") {
            return;
        }
        let mut inner = self.write();
        let before = inner.forget(&entry.id);
        inner.add(entry, before.as_ref(), SystemTime::now());
    }

    fn remove(&self, id: &str) {
        if id.starts_with("phones:") {
            self.write().forget(id);
        }
    }
}

impl Tables {
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
        assert_eq!(found[0].files["f.cfg"].body, Bytes::from_static(b"x"));
        assert!(
            tables.units("b", &mac).is_empty(),
            "not served, not indexed"
        );
        assert!(tables.mac_in_other_account("b", &mac));
        assert!(!tables.mac_in_other_account("a", &mac));
        assert_eq!(tables.units_of("b"), [Arc::from("phones:unit:u2")]);
        let since = found[0].files["f.cfg"].since;
        // Same etag in a new revision: the time stays.
        mirror.apply_written(Update::Live(entry(
            "phones:unit:u1",
            "2-a",
            unit("a", "805ec0123456", true, "e1"),
        )));
        assert_eq!(tables.units("a", &mac)[0].files["f.cfg"].since, since);
        mirror.apply_written(Update::Live(entry(
            "phones:unit:u1",
            "3-a",
            unit("a", "805ec0123457", true, "e2"),
        )));
        assert!(tables.units("a", &mac).is_empty());
        let moved = Mac::parse("805ec0123457").unwrap();
        assert_eq!(tables.units("a", &moved)[0].files["f.cfg"].etag, "e2");
        mirror.apply_written(Update::Live(entry(
            "phones:common:a:yealink:t46s",
            "1-a",
            json!({"account_id": "a", "brand": "yealink", "files": {"y.cfg": {"etag": "c", "body": "common"}}}),
        )));
        assert_eq!(
            tables.common("a", "y.cfg")[0].files["y.cfg"].body,
            Bytes::from_static(b"common")
        );
        mirror.apply_written(Update::Deleted {
            id: "phones:common:a:yealink:t46s".into(),
            rev: "2-a".into(),
        });
        assert!(tables.common("a", "y.cfg").is_empty());
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
