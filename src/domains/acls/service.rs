//! Serving the ACLs from the mirror: merges `acls:system` and the shard
//! outputs for a node (`model::merge`) and renders JSON and FreeSWITCH's
//! `acl.conf`.
//!
//! Every shard output is digested (parsed and pre-rendered, `model::digest`)
//! once per version (`hash`), so after an edit only the changed shard is
//! read again and the rest is a merge of pre-rendered pieces. The answer is
//! memoised per node until an ACL cache document changes, so a request
//! costs a few map lookups; each rendering (XML, JSON, Kazoo's merged
//! object) is made on first use.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::Value;

use super::model::{self, Digest, Merged};
use crate::cache::mirror::Mirror;
use crate::cache::{CacheEntry, doc_id};
use crate::domains::Domain;

/// How many nodes' answers are kept at once.
const MEMO_NODES: usize = 16;

/// Why the ACLs cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AclsError {
    #[error("the cache is not loaded yet")]
    NotReady,
}

/// The ACLs as served to one node. Each rendering is made on first use
/// and kept until an ACL cache document changes.
#[derive(Debug)]
pub struct Served {
    pub node: String,
    zone: String,
    system: Option<Arc<CacheEntry>>,
    shards: Vec<Arc<Digest>>,
    /// Every problem recorded in the ACL cache documents:
    /// `[{"output", "db", "doc", "reason"}]`.
    pub errors: Value,
    /// Whether any ACL output is a stale last-good copy.
    pub stale: bool,
    xml: OnceLock<Bytes>,
    lists: OnceLock<(String, BTreeMap<String, String>)>,
    merged: OnceLock<Value>,
}

impl Served {
    fn merge(&self) -> Merged<'_> {
        let shards: Vec<&Digest> = self.shards.iter().map(Arc::as_ref).collect();
        let system = self.system.as_ref().map(|e| &e.content);
        model::merge(system, &shards, &self.node, &self.zone)
    }

    /// FreeSWITCH's `acl.conf`.
    pub fn xml(&self) -> &str {
        std::str::from_utf8(self.xml_bytes()).expect("the XML is UTF-8")
    }

    /// The same, as a cheaply clonable body.
    pub fn xml_bytes(&self) -> &Bytes {
        self.xml
            .get_or_init(|| Bytes::from(self.merge().freeswitch_xml()))
    }

    /// Every list as JSON text: `{list: {name or address: entry}}`.
    pub fn lists_json(&self) -> &str {
        &self.lists().0
    }

    /// One list as JSON text, `None` when no entry names that list.
    pub fn list_json(&self, list: &str) -> Option<&str> {
        self.lists().1.get(list).map(String::as_str)
    }

    fn lists(&self) -> &(String, BTreeMap<String, String>) {
        self.lists.get_or_init(|| self.merge().lists_json())
    }

    /// Kazoo's merged object (sysconf get `ecallmgr`/`acls`).
    pub fn merged(&self) -> &Value {
        self.merged
            .get_or_init(|| Value::Object(self.merge().object()))
    }
}

#[derive(Default)]
struct Memo {
    fingerprint: Vec<Option<String>>,
    views: HashMap<String, Arc<Served>>,
    /// Shard output id → (hash, digest).
    digests: HashMap<String, (String, Arc<Digest>)>,
}

pub struct AclsService {
    mirror: Arc<Mirror>,
    /// This daemon's node and zone (the defaults of every request).
    place: ArcSwap<(String, String)>,
    keys: Vec<String>,
    memo: Mutex<Memo>,
}

impl AclsService {
    pub fn new(mirror: Arc<Mirror>, node: String, zone: String) -> AclsService {
        let keys = model::all_output_keys()
            .iter()
            .map(|key| doc_id(Domain::Acls, key))
            .collect();
        AclsService {
            mirror,
            place: ArcSwap::from_pointee((node, zone)),
            keys,
            memo: Mutex::default(),
        }
    }

    /// A reload may change the zone (the node needs a restart).
    pub fn set_zone(&self, zone: String) {
        let node = self.place.load().0.clone();
        self.place.store(Arc::new((node, zone)));
        self.lock().views.clear();
    }

    /// The ACLs for `node` (default: this daemon's node).
    ///
    /// # Errors
    /// `NotReady` before the mirror is warm.
    pub fn view(&self, node: Option<&str>) -> Result<Arc<Served>, AclsError> {
        if !self.mirror.is_loaded() {
            return Err(AclsError::NotReady);
        }
        let place = self.place.load();
        let node = node.filter(|n| !n.is_empty()).unwrap_or(&place.0);
        let entries: Vec<Option<Arc<CacheEntry>>> =
            self.keys.iter().map(|id| self.mirror.get(id)).collect();
        let fingerprint: Vec<Option<String>> = entries
            .iter()
            .map(|e| e.as_ref().map(|e| e.hash.clone()))
            .collect();
        let mut memo = self.lock();
        if memo.fingerprint != fingerprint {
            memo.fingerprint = fingerprint;
            memo.views.clear();
        }
        if let Some(served) = memo.views.get(node) {
            return Ok(served.clone());
        }
        let served = Arc::new(serve(&mut memo.digests, &entries, node, &place.1));
        if memo.views.len() >= MEMO_NODES {
            memo.views.clear();
        }
        memo.views.insert(node.to_string(), served.clone());
        Ok(served)
    }

    /// The hook sysconf get calls: `ecallmgr`/`acls` answers the merged
    /// ACLs, as Kazoo 4.2's sysconf does (only for that category). The
    /// answer's section is `caldera:acls` (the value is built, not stored
    /// in one section).
    pub fn sysconf_value(
        &self,
        category: &str,
        key: &[String],
        node: &str,
    ) -> Option<(Value, String)> {
        if category != model::ECALLMGR || key != ["acls"] {
            return None;
        }
        let served = self.view(Some(node)).ok()?;
        Some((served.merged().clone(), "caldera:acls".to_string()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The answer for `node` from the current outputs, re-digesting only the
/// shards whose hash changed.
fn serve(
    digests: &mut HashMap<String, (String, Arc<Digest>)>,
    entries: &[Option<Arc<CacheEntry>>],
    node: &str,
    zone: &str,
) -> Served {
    let outputs: Vec<&Arc<CacheEntry>> = entries.iter().flatten().collect();
    digests.retain(|id, _| outputs.iter().any(|e| e.id == *id));
    let mut shards = Vec::new();
    let mut system = None;
    let mut errors = Vec::new();
    for entry in &outputs {
        for error in entry.errors.as_array().into_iter().flatten() {
            let mut error = error.clone();
            if let Some(fields) = error.as_object_mut() {
                fields.insert("output".into(), Value::String(entry.id.clone()));
            }
            errors.push(error);
        }
        if entry.key == model::SYSTEM_KEY {
            system = Some(Arc::clone(entry));
            continue;
        }
        let digest = match digests.get(&entry.id) {
            Some((hash, digest)) if *hash == entry.hash => digest.clone(),
            _ => {
                let digest = Arc::new(model::digest(&entry.content));
                digests.insert(entry.id.clone(), (entry.hash.clone(), digest.clone()));
                digest
            }
        };
        shards.push(digest);
    }
    Served {
        node: node.to_string(),
        zone: zone.to_string(),
        stale: outputs.iter().any(|e| e.stale),
        system,
        shards,
        errors: Value::Array(errors),
        xml: OnceLock::new(),
        lists: OnceLock::new(),
        merged: OnceLock::new(),
    }
}
