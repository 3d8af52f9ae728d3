//! Serving the ACLs from the mirror: keeps the merge of `acls:system` and
//! the shard outputs as incremental state (`live::LiveMerge`) and renders
//! JSON and FreeSWITCH's `acl.conf` for a node.
//!
//! A request compares the hashes of the ACL cache documents with the ones
//! last applied; only a changed shard is digested again (`model::digest`)
//! and applied, which touches only its changed entries and re-renders only
//! the pages holding them. The answer for a node is memoised until an ACL
//! cache document changes; each rendering (XML, JSON) is made on first use
//! by copying pre-rendered pages, so after an edit the first request costs
//! a shard's digest plus a copy, not a merge of every entry. Kazoo's merged
//! object is taken by value by sysconf: its dynamic part is kept current
//! in the merge once asked for, and each request copies it.
//!
//! `prepare_eagerly` moves that first-request work off the request: when
//! an ACL cache document changes in the mirror (an observer tells it;
//! other domains' changes do not wake it) it refreshes the state and
//! renders again what was asked for before (the nodes and renderings
//! memoised), so the next request finds its answer ready. Nothing is prepared that no one asked
//! for: a platform that never fetches ACLs never pays for them.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::Value;

use super::live::{LiveMerge, NodeAnswer};
use super::model;
use crate::cache::mirror::{Entries, Mirror, Observer};
use crate::cache::{CacheEntry, doc_id};
use crate::domains::Domain;

/// How many nodes' answers are kept at once.
const MEMO_NODES: usize = 16;

/// Wakes eager preparation when an ACL cache document changes (a mirror
/// observer: told under the mirror's lock, so it only leaves a permit).
#[derive(Default)]
struct AclChanges(tokio::sync::Notify);

impl Observer for AclChanges {
    /// Registration and full reloads.
    fn reset(&self, _: &Entries<'_>) {
        self.0.notify_one();
    }

    fn put(&self, entry: &Arc<CacheEntry>) {
        if entry.domain == Domain::Acls.name() {
            self.0.notify_one();
        }
    }

    fn remove(&self, id: &str) {
        if id
            .split_once(':')
            .is_some_and(|(domain, _)| domain == Domain::Acls.name())
        {
            self.0.notify_one();
        }
    }
}

/// How long eager preparation waits after a mirror change for the rest of
/// its batch.
const PREPARE_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(1);

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
    answer: NodeAnswer,
    /// Every problem recorded in the ACL cache documents:
    /// `[{"output", "db", "doc", "reason"}]`.
    pub errors: Arc<Value>,
    /// Whether any ACL output is a stale last-good copy.
    pub stale: bool,
    xml: OnceLock<Bytes>,
    lists: OnceLock<(String, BTreeMap<String, Range<usize>>)>,
}

impl Served {
    /// FreeSWITCH's `acl.conf`.
    pub fn xml(&self) -> &str {
        std::str::from_utf8(self.xml_bytes()).expect("the XML is UTF-8")
    }

    /// The same, as a cheaply clonable body.
    pub fn xml_bytes(&self) -> &Bytes {
        self.xml
            .get_or_init(|| Bytes::from(self.answer.freeswitch_xml()))
    }

    /// Every list as JSON text: `{list: {name or address: entry}}`.
    pub fn lists_json(&self) -> &str {
        &self.lists().0
    }

    /// One list as JSON text, `None` when no entry names that list.
    pub fn list_json(&self, list: &str) -> Option<&str> {
        let (all, ranges) = self.lists();
        ranges.get(list).map(|range| &all[range.clone()])
    }

    /// Which renderings are made: (XML, JSON lists).
    #[cfg(test)]
    pub(super) fn rendered(&self) -> (bool, bool) {
        (self.xml.get().is_some(), self.lists.get().is_some())
    }

    fn lists(&self) -> &(String, BTreeMap<String, Range<usize>>) {
        self.lists.get_or_init(|| self.answer.lists_json())
    }
}

/// What the service has applied from the mirror.
struct Memo {
    /// Per ACL output (in `AclsService::keys` order), the hash applied.
    applied: Vec<Option<String>>,
    /// Per ACL output, its errors (with `output` added).
    errors: Vec<Vec<Value>>,
    live: LiveMerge,
    system: Option<Arc<CacheEntry>>,
    all_errors: Arc<Value>,
    stale: bool,
    views: HashMap<String, Arc<Served>>,
}

impl Memo {
    fn new(outputs: usize) -> Memo {
        Memo {
            applied: vec![None; outputs],
            errors: vec![Vec::new(); outputs],
            live: LiveMerge::default(),
            system: None,
            all_errors: Arc::new(Value::Array(Vec::new())),
            stale: false,
            views: HashMap::new(),
        }
    }

    /// Applies the outputs whose hash changed; `true` if any did.
    fn refresh(&mut self, keys: &[String], entries: &[Option<Arc<CacheEntry>>]) -> bool {
        let mut changed = false;
        for (n, (id, entry)) in keys.iter().zip(entries).enumerate() {
            let hash = entry.as_ref().map(|e| &e.hash);
            if self.applied[n].as_ref() == hash {
                continue;
            }
            changed = true;
            self.applied[n] = hash.cloned();
            self.errors[n] = entry.as_deref().map(output_errors).unwrap_or_default();
            if n == SYSTEM_SLOT {
                self.system = entry.clone();
            } else {
                let digest = entry.as_ref().map(|e| model::digest(&e.content.value()));
                self.live.apply(id, digest);
            }
        }
        if changed {
            self.all_errors = Arc::new(Value::Array(self.errors.concat()));
            self.stale = entries.iter().flatten().any(|e| e.stale);
        }
        changed
    }

    fn served(&mut self, node: &str, zone: &str) -> Served {
        let system = self.system.as_ref().map(|e| e.content.value());
        let statics = system
            .as_deref()
            .and_then(|s| model::system_section(s, node, zone));
        Served {
            node: node.to_string(),
            answer: self.live.answer(statics),
            errors: self.all_errors.clone(),
            stale: self.stale,
            xml: OnceLock::new(),
            lists: OnceLock::new(),
        }
    }
}

/// Where `acls:system` is in `AclsService::keys` (`model::all_output_keys`
/// lists it first).
const SYSTEM_SLOT: usize = 0;

/// An output's errors, each with the output's id added.
fn output_errors(entry: &CacheEntry) -> Vec<Value> {
    let errors = entry.errors.as_array().into_iter().flatten();
    errors
        .map(|error| {
            let mut error = error.clone();
            if let Some(fields) = error.as_object_mut() {
                fields.insert("output".into(), Value::String(entry.id.clone()));
            }
            error
        })
        .collect()
}

pub struct AclsService {
    mirror: Arc<Mirror>,
    /// This daemon's node and zone (the defaults of every request).
    place: ArcSwap<(String, String)>,
    /// The cache document ids of every possible ACL output.
    keys: Vec<String>,
    memo: Mutex<Memo>,
}

impl AclsService {
    pub fn new(mirror: Arc<Mirror>, node: String, zone: String) -> AclsService {
        let output_keys = model::all_output_keys();
        debug_assert_eq!(output_keys[SYSTEM_SLOT], model::SYSTEM_KEY);
        let keys: Vec<String> = output_keys
            .iter()
            .map(|key| doc_id(Domain::Acls, key))
            .collect();
        AclsService {
            mirror,
            place: ArcSwap::from_pointee((node, zone)),
            memo: Mutex::new(Memo::new(keys.len())),
            keys,
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
        Ok(self.view_and(node, |_| ())?.0)
    }

    /// Kazoo's merged object for `node` (sysconf get `ecallmgr`/`acls`).
    /// The caller takes it by value: the kept dynamic part
    /// (`LiveMerge::object`) is copied, outside the lock, and the node's
    /// static section laid over it.
    ///
    /// # Errors
    /// `NotReady` before the mirror is warm.
    pub fn merged(&self, node: Option<&str>) -> Result<Value, AclsError> {
        let (served, dynamic) = self.view_and(node, |memo| memo.live.object())?;
        Ok(Value::Object(served.answer.object(&dynamic)))
    }

    /// The ACLs for `node`, and what `also` takes from the same state.
    fn view_and<T>(
        &self,
        node: Option<&str>,
        also: impl FnOnce(&mut Memo) -> T,
    ) -> Result<(Arc<Served>, T), AclsError> {
        if !self.mirror.is_loaded() {
            return Err(AclsError::NotReady);
        }
        let place = self.place.load();
        let node = node.filter(|n| !n.is_empty()).unwrap_or(&place.0);
        let mut memo = self.lock();
        // Read under the lock: a request that waited for it would
        // otherwise apply the older state it read over a newer one, and the
        // next request digest the newer one again.
        let entries: Vec<Option<Arc<CacheEntry>>> =
            self.keys.iter().map(|id| self.mirror.get(id)).collect();
        if memo.refresh(&self.keys, &entries) {
            memo.views.clear();
        }
        let served = match memo.views.get(node) {
            Some(served) => served.clone(),
            None => {
                let served = Arc::new(memo.served(node, &place.1));
                if memo.views.len() >= MEMO_NODES {
                    memo.views.clear();
                }
                memo.views.insert(node.to_string(), served.clone());
                served
            }
        };
        let also = also(&mut memo);
        Ok((served, also))
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
        let merged = self.merged(Some(node)).ok()?;
        Some((merged, "caldera:acls".to_string()))
    }

    /// Brings the answers already asked for up to date with the mirror:
    /// for each memoised node, the state and the renderings it had. Returns
    /// how many nodes were prepared again (0 when nothing changed).
    pub fn prepare(&self) -> usize {
        let wanted: Vec<(String, bool, bool)> = {
            let memo = self.lock();
            memo.views
                .values()
                .map(|s| {
                    (
                        s.node.clone(),
                        s.xml.get().is_some(),
                        s.lists.get().is_some(),
                    )
                })
                .collect()
        };
        let mut prepared = 0;
        for (node, xml, lists) in wanted {
            let Ok((served, fresh)) = self.view_and(Some(&node), |_| ()).map(|(s, ())| {
                let fresh = s.xml.get().is_none() && s.lists.get().is_none();
                (s, fresh)
            }) else {
                return prepared;
            };
            if !fresh {
                continue;
            }
            if xml {
                served.xml_bytes();
            }
            if lists {
                served.lists_json();
            }
            prepared += 1;
        }
        prepared
    }

    /// Runs `prepare` after every change of an ACL cache document (on a
    /// blocking thread: a changed shard costs milliseconds of CPU) until
    /// `token` is cancelled. Other domains' changes never wake it; a change
    /// during a preparation leaves a permit, caught by the next one.
    pub async fn prepare_eagerly(self: Arc<Self>, token: tokio_util::sync::CancellationToken) {
        let changes = Arc::new(AclChanges::default());
        self.mirror.observe(changes.clone());
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = changes.0.notified() => {}
            }
            // A batch of cache writes lands as several mirror changes.
            tokio::time::sleep(PREPARE_DEBOUNCE).await;
            let service = self.clone();
            if tokio::task::spawn_blocking(move || service.prepare())
                .await
                .is_err()
            {
                tracing::error!("preparing the ACL answers panicked; requests will prepare them");
            }
        }
    }

    /// The memoised `acl.conf` of `node`, if it is rendered (no refresh).
    #[cfg(test)]
    pub(super) fn memoised_xml(&self, node: &str) -> Option<String> {
        let memo = self.lock();
        let served = memo.views.get(node)?;
        served
            .xml
            .get()
            .map(|xml| String::from_utf8_lossy(xml).into_owned())
    }

    /// How many nodes' answers are memoised now (at most `MEMO_NODES`).
    pub fn memoised_nodes(&self) -> usize {
        self.lock().views.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
