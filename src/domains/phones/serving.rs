//! The serving index: what the phones listener looks up before it reads a
//! cache document — realm → account, (account, MAC) → unit, (account,
//! common file name) → common outputs — kept in step with the mirror by
//! observing it (`cache::mirror::Observer`), so it is never older or newer
//! than the documents it points to. Also remembers since when each served
//! file has had its current content (`Last-Modified`).
//!
//! Only served things are indexed: a disabled or duplicate unit, an
//! account with a duplicate realm, a common output without files are
//! absent, which is what makes every denial the same 404.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde_json::Value;

use super::mac::Mac;
use crate::cache::CacheEntry;
use crate::cache::mirror::Observer;

const PREFIX_ACCOUNT: &str = "phones:account:";
const PREFIX_UNIT: &str = "phones:unit:";
const PREFIX_COMMON: &str = "phones:common:";

/// What one cache document put into the tables.
#[derive(Debug, Clone)]
enum Contribution {
    Account { realm: Option<String> },
    Unit { account: String, mac: Option<Mac> },
    Common { account: String, files: Vec<String> },
}

/// Ids are shared (`Arc<str>`): lookups hand them out without copying.
type Ids = BTreeSet<Arc<str>>;

#[derive(Default)]
struct Inner {
    realms: HashMap<String, Ids>,
    /// account → MAC → unit documents (nested so lookups need no key copy).
    units_by_mac: HashMap<String, HashMap<Mac, Ids>>,
    accounts_by_mac: HashMap<Mac, Ids>,
    /// account → common file name → common documents.
    common: HashMap<String, HashMap<String, Ids>>,
    units_of: HashMap<String, Ids>,
    contributed: HashMap<Arc<str>, Contribution>,
    /// cache document id → file → (etag, since when).
    modified: HashMap<Arc<str>, HashMap<String, (String, SystemTime)>>,
}

/// The tables; shared by the phones listener and the admin API.
#[derive(Default)]
pub struct Tables {
    inner: RwLock<Inner>,
}

fn insert<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Ids>, key: K, id: &Arc<str>) {
    map.entry(key).or_default().insert(id.clone());
}

fn remove<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Ids>, key: &K, id: &str) {
    if let Some(ids) = map.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

fn text(value: &Value, field: &str) -> Option<String> {
    value.get(field)?.as_str().map(str::to_string)
}

fn served(content: &Value) -> bool {
    content.get("served").and_then(Value::as_bool) == Some(true)
}

/// What a cache document contributes, if it is a phones document.
fn contribution(entry: &CacheEntry) -> Option<Contribution> {
    let content = &entry.content;
    if entry.id.starts_with(PREFIX_ACCOUNT) {
        let realm = served(content).then(|| text(content, "realm")).flatten();
        return Some(Contribution::Account { realm });
    }
    if entry.id.starts_with(PREFIX_UNIT) {
        let unit = content.get("unit")?;
        let account = text(unit, "account_id")?;
        let mac = served(content)
            .then(|| text(unit, "mac").and_then(|m| Mac::parse(&m)))
            .flatten();
        return Some(Contribution::Unit { account, mac });
    }
    if entry.id.starts_with(PREFIX_COMMON) {
        let account = text(content, "account_id")?;
        let files = content
            .get("files")
            .and_then(Value::as_object)
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        return Some(Contribution::Common { account, files });
    }
    None
}

/// The files of a document with their etags.
fn etags(entry: &CacheEntry) -> Vec<(String, String)> {
    entry
        .content
        .get("files")
        .and_then(Value::as_object)
        .map(|files| {
            files
                .iter()
                .filter_map(|(name, file)| Some((name.clone(), text(file, "etag")?)))
                .collect()
        })
        .unwrap_or_default()
}

impl Inner {
    fn add(&mut self, entry: &CacheEntry, now: SystemTime) {
        let Some(contribution) = contribution(entry) else {
            return;
        };
        let id: Arc<str> = Arc::from(entry.id.as_str());
        match &contribution {
            Contribution::Account { realm } => {
                if let Some(realm) = realm {
                    insert(&mut self.realms, realm.clone(), &id);
                }
            }
            Contribution::Unit { account, mac } => {
                insert(&mut self.units_of, account.clone(), &id);
                if let Some(mac) = mac {
                    let by_mac = self.units_by_mac.entry(account.clone()).or_default();
                    insert(by_mac, *mac, &id);
                    insert(
                        &mut self.accounts_by_mac,
                        *mac,
                        &Arc::from(account.as_str()),
                    );
                }
            }
            Contribution::Common { account, files } => {
                let by_file = self.common.entry(account.clone()).or_default();
                for file in files {
                    insert(by_file, file.clone(), &id);
                }
            }
        }
        let current = etags(entry);
        let known = self.modified.entry(id.clone()).or_default();
        known.retain(|file, _| current.iter().any(|(f, _)| f == file));
        for (file, etag) in current {
            let since = known.entry(file).or_insert_with(|| (etag.clone(), now));
            if since.0 != etag {
                *since = (etag, now);
            }
        }
        if known.is_empty() {
            self.modified.remove(&id);
        }
        self.contributed.insert(id, contribution);
    }

    fn forget(&mut self, id: &str) {
        let Some(contribution) = self.contributed.remove(id) else {
            return;
        };
        match contribution {
            Contribution::Account { realm } => {
                if let Some(realm) = realm {
                    remove(&mut self.realms, &realm, id);
                }
            }
            Contribution::Unit { account, mac } => {
                remove(&mut self.units_of, &account, id);
                if let Some(mac) = mac
                    && let Some(by_mac) = self.units_by_mac.get_mut(&account)
                {
                    remove(by_mac, &mac, id);
                    let still = by_mac.contains_key(&mac);
                    if by_mac.is_empty() {
                        self.units_by_mac.remove(&account);
                    }
                    if !still {
                        remove(&mut self.accounts_by_mac, &mac, &account);
                    }
                }
            }
            Contribution::Common { account, files } => {
                if let Some(by_file) = self.common.get_mut(&account) {
                    for file in files {
                        remove(by_file, &file, id);
                    }
                    if by_file.is_empty() {
                        self.common.remove(&account);
                    }
                }
            }
        }
    }
}

impl Observer for Tables {
    fn reset(&self, entries: &[Arc<CacheEntry>]) {
        let now = SystemTime::now();
        let mut inner = self.write();
        let modified = std::mem::take(&mut inner.modified);
        *inner = Inner {
            modified,
            ..Inner::default()
        };
        let ids: BTreeSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        inner.modified.retain(|doc, _| ids.contains(&**doc));
        for entry in entries {
            inner.add(entry, now);
        }
    }

    fn put(&self, entry: &Arc<CacheEntry>) {
        if !entry.id.starts_with("phones:") {
            return;
        }
        let mut inner = self.write();
        inner.forget(&entry.id);
        inner.add(entry, SystemTime::now());
    }

    fn remove(&self, id: &str) {
        if !id.starts_with("phones:") {
            return;
        }
        let mut inner = self.write();
        inner.forget(id);
        inner.modified.remove(id);
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

    /// The account document serving `realm` (`None` when none or several).
    pub fn account_of_realm(&self, realm: &str) -> Option<Arc<str>> {
        let inner = self.read();
        let ids = inner.realms.get(realm)?;
        (ids.len() == 1)
            .then(|| ids.iter().next().cloned())
            .flatten()
    }

    /// The served unit documents of a MAC in an account.
    pub fn units(&self, account: &str, mac: &Mac) -> Vec<Arc<str>> {
        let inner = self.read();
        inner
            .units_by_mac
            .get(account)
            .and_then(|by_mac| by_mac.get(mac))
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether some other account serves a unit with this MAC.
    pub fn mac_in_other_account(&self, account: &str, mac: &Mac) -> bool {
        self.read()
            .accounts_by_mac
            .get(mac)
            .is_some_and(|accounts| accounts.iter().any(|a| &**a != account))
    }

    /// The common documents of an account that hold `file`.
    pub fn common(&self, account: &str, file: &str) -> Vec<Arc<str>> {
        self.read()
            .common
            .get(account)
            .and_then(|by_file| by_file.get(file))
            .map(|ids| ids.iter().cloned().collect())
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

    /// Since when `file` of document `id` has had this `etag`.
    pub fn last_modified(&self, id: &str, file: &str, etag: &str) -> Option<SystemTime> {
        let inner = self.read();
        let (current, since) = inner.modified.get(id)?.get(file)?;
        (current == etag).then_some(*since)
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
            content,
            errors: json!([]),
            stale: false,
            bytes: 0,
        }
    }

    fn unit(account: &str, mac: &str, served: bool, etag: &str) -> Value {
        json!({"unit": {"account_id": account, "mac": mac}, "served": served,
               "files": {"f.cfg": {"etag": etag, "body": "x"}}})
    }

    #[test]
    fn the_tables_follow_the_mirror() {
        let mirror = Mirror::default();
        let tables = Arc::new(Tables::default());
        mirror.apply_written(Update::Live(entry(
            "phones:account:a",
            "1-a",
            json!({"served": true, "realm": "a.example"}),
        )));
        mirror.observe(tables.clone());
        assert_eq!(
            tables.account_of_realm("a.example").as_deref(),
            Some("phones:account:a")
        );
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
        assert_eq!(tables.units("a", &mac), [Arc::from("phones:unit:u1")]);
        assert!(
            tables.units("b", &mac).is_empty(),
            "not served, not indexed"
        );
        assert!(tables.mac_in_other_account("b", &mac));
        assert!(!tables.mac_in_other_account("a", &mac));
        assert_eq!(tables.units_of("b"), [Arc::from("phones:unit:u2")]);
        let since = tables
            .last_modified("phones:unit:u1", "f.cfg", "e1")
            .unwrap();
        // Same etag in a new revision: the time stays.
        mirror.apply_written(Update::Live(entry(
            "phones:unit:u1",
            "2-a",
            unit("a", "805ec0123456", true, "e1"),
        )));
        assert_eq!(
            tables.last_modified("phones:unit:u1", "f.cfg", "e1"),
            Some(since)
        );
        mirror.apply_written(Update::Live(entry(
            "phones:unit:u1",
            "3-a",
            unit("a", "805ec0123457", true, "e2"),
        )));
        assert!(tables.units("a", &mac).is_empty());
        assert_eq!(tables.last_modified("phones:unit:u1", "f.cfg", "e1"), None);
        mirror.apply_written(Update::Live(entry(
            "phones:common:a:yealink:t46s",
            "1-a",
            json!({"account_id": "a", "files": {"y.cfg": {"etag": "c"}}}),
        )));
        assert_eq!(
            tables.common("a", "y.cfg"),
            [Arc::from("phones:common:a:yealink:t46s")]
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
    }
}
