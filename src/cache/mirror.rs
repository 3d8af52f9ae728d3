//! The in-memory mirror of the cache database: what the HTTP layer serves.
//!
//! It is warmed at start-up — from the on-disk store when one is
//! configured (`cache::store`: the cache feed then resumes where the store
//! left off), else by reading the cache database — and kept current by the
//! cache database's own feed, so an instance that does not build serves the
//! same content as one that does. A building instance also applies its own
//! successful writes straight away (write-through), so an edit is visible
//! without waiting for the feed's echo.
//!
//! Invariant: a feed update never replaces a newer revision this process
//! already holds (its echo may arrive late); write-through and a full reload
//! always win, because they are known to be current.
//!
//! Contents are JSON text (`cache::Content`). With a store, every change is
//! also queued to the store's writer thread in the order it is applied, and
//! the contents of the domains that spill (`Domain::spills_to_store`: the
//! phones outputs) leave memory once their record is committed: `get` then
//! reads them back, checked against the entry's revision and hash. A record
//! that cannot be read back is never served: it is reported, counted, and
//! handed to the repair queue (`take_repairs`), and the store stops writing
//! until a restart (the next start finds the damage and rebuilds).
//!
//! Observers (`Mirror::observe`) are told every change in the order it is
//! applied, under the mirror's lock, so a secondary index they keep (the
//! phones domain's realm/MAC tables) never disagrees with the mirror.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak, mpsc};

use lru::LruCache;
use serde_json::Value;
use tokio::sync::{Notify, watch};

use super::CacheEntry;
use super::store::{self, Checkpoint, Op, Record, Store};
use crate::couch::rev_generation;
use crate::domains::Domain;

/// Per-domain totals, for metrics and the status endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomainStats {
    pub documents: u64,
    pub bytes: u64,
    pub with_errors: u64,
    pub stale: u64,
}

/// The parsed contents kept for services that walk a content per request
/// (`Mirror::tree`), at most this many text bytes' worth.
const TREE_CACHE_TEXT_BYTES: usize = 8 << 20;

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    stats: BTreeMap<String, DomainStats>,
    /// A reload in progress (`begin_reload`): the new content, swapped in
    /// whole by `finish_reload`.
    reload: Option<Box<State>>,
}

#[derive(Clone)]
enum Slot {
    /// Content in memory (a spilling domain's, until its record commits).
    Live(Arc<CacheEntry>),
    /// Content in the store only (`Content::Spilled`).
    Spilled(Arc<CacheEntry>),
    /// Remembered so that a late echo of an older revision is not revived.
    Deleted { generation: u64 },
}

impl Slot {
    fn entry(&self) -> Option<&Arc<CacheEntry>> {
        match self {
            Slot::Live(entry) | Slot::Spilled(entry) => Some(entry),
            Slot::Deleted { .. } => None,
        }
    }
}

/// Told about every change to the mirror, in order, while the mirror's
/// write lock is held: it must be quick and must not call the mirror.
pub trait Observer: Send + Sync {
    /// The mirror now holds exactly `entries` (also called on registration).
    fn reset(&self, entries: &Entries<'_>);
    /// `entry` is live now (new or replacing its previous revision); its
    /// content is in memory.
    fn put(&self, entry: &Arc<CacheEntry>);
    /// The document `id` is gone.
    fn remove(&self, id: &str);
}

/// The mirror's whole content, as an observer's `reset` reads it.
pub struct Entries<'a> {
    slots: &'a HashMap<String, Slot>,
    mirror: &'a Mirror,
}

impl Entries<'_> {
    /// The ids of a domain's live entries (no content is read).
    pub fn ids(&self, domain: &str) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .filter(move |(_, slot)| slot.entry().is_some_and(|e| e.domain == domain))
            .map(|(id, _)| id.as_str())
    }

    /// Each of a domain's live entries with its content, one at a time
    /// (spilled ones read back from the store in one pass over its
    /// records, so the domain's contents are never all in memory at once;
    /// an unreadable one is left out and reported).
    pub fn each_of_domain(&self, domain: &str, mut each: impl FnMut(&Arc<CacheEntry>)) {
        let mut spilled: HashMap<&str, &Arc<CacheEntry>> = HashMap::new();
        for (id, slot) in self.slots {
            match slot {
                Slot::Live(entry) if entry.domain == domain => each(entry),
                Slot::Spilled(entry) if entry.domain == domain => {
                    spilled.insert(id.as_str(), entry);
                }
                _ => {}
            }
        }
        if spilled.is_empty() {
            return;
        }
        let Some(spill) = &self.mirror.spill else {
            return;
        };
        let prefix = format!("{domain}:");
        let scanned = spill.store.scan_prefix(&prefix, |id, record| {
            if let (Some(meta), Record::Live(entry)) = (spilled.get(id), record)
                && entry.rev == meta.rev
                && entry.hash == meta.hash
            {
                spilled.remove(id);
                each(&Arc::new(entry));
            }
        });
        if let Err(err) = scanned {
            self.mirror.damaged(&prefix, &err.to_string());
        }
        for id in spilled.into_keys() {
            self.mirror
                .damaged(id, "its record is missing or out of date");
        }
    }
}

/// The store and its writer's queue.
struct Spill {
    store: Arc<Store>,
    /// `None` only while the mirror is dropped.
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Bytes of spilling content waiting for their commit.
    pending: AtomicI64,
}

impl Drop for Spill {
    /// Closes the queue and waits for the writer to commit what it holds,
    /// so the file is closed when the mirror is gone (a test reopening
    /// it, a clean shutdown).
    fn drop(&mut self) {
        self.ops = None;
        if let Some(writer) = self.writer.take()
            && writer.thread().id() != std::thread::current().id()
        {
            let _ = writer.join();
        }
    }
}

/// The mirror. Cheap to read from many threads.
pub struct Mirror {
    state: RwLock<State>,
    observers: RwLock<Vec<Arc<dyn Observer>>>,
    changed: Notify,
    loaded: watch::Sender<bool>,
    reloads: watch::Sender<u64>,
    spill: Option<Spill>,
    trees: Mutex<Trees>,
    repairs: Mutex<Vec<String>>,
    repair_wanted: Notify,
    /// Records that could not be read back, since start.
    damaged: AtomicU64,
    /// Ids the cache feed changed since `record_feed_changes` (another
    /// instance wrote them), while a full build is being made.
    feed_changes: Mutex<Option<HashSet<String>>>,
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror::new(None)
    }
}

impl Mirror {
    fn new(spill: Option<Spill>) -> Mirror {
        Mirror {
            state: RwLock::default(),
            observers: RwLock::default(),
            changed: Notify::new(),
            loaded: watch::channel(false).0,
            reloads: watch::channel(0).0,
            spill,
            trees: Mutex::new(Trees::default()),
            repairs: Mutex::new(Vec::new()),
            repair_wanted: Notify::new(),
            damaged: AtomicU64::new(0),
            feed_changes: Mutex::new(None),
        }
    }

    /// A mirror backed by `store`, holding what the store holds (the
    /// contents of spilling domains left on disk), and the store's
    /// checkpoint: where the cache feed resumes (`None`: reload it).
    ///
    /// # Errors
    /// A record is damaged: the caller rebuilds the store and starts again.
    pub fn with_store(
        store: Store,
    ) -> Result<(Arc<Mirror>, Option<Checkpoint>), store::StoreError> {
        let checkpoint = store.checkpoint()?;
        let mut state = State::default();
        store.load(|id, record| {
            let slot = match record {
                Record::Live(entry) if spills(&entry.domain) => {
                    Slot::Spilled(Arc::new(entry.without_content()))
                }
                Record::Live(entry) => Slot::Live(Arc::new(entry)),
                Record::Deleted { generation } => Slot::Deleted { generation },
            };
            if let Some(entry) = slot.entry() {
                state.count(entry, true);
            }
            state.slots.insert(id, slot);
        })?;
        let store = Arc::new(store);
        let mirror = Arc::new_cyclic(|weak: &Weak<Mirror>| {
            let weak = weak.clone();
            let (ops, writer) = store::spawn_writer(store.clone(), move |committed| {
                if let Some(mirror) = weak.upgrade() {
                    mirror.committed(&committed);
                }
            });
            let mut mirror = Mirror::new(Some(Spill {
                store,
                ops: Some(ops),
                writer: Some(writer),
                pending: AtomicI64::new(0),
            }));
            *mirror
                .state
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
            mirror
        });
        Ok((mirror, checkpoint))
    }

    /// The entry with its content (read back from the store when spilled);
    /// `None` when absent — or unreadable, which is reported and queued
    /// for repair, never served.
    pub fn get(&self, id: &str) -> Option<Arc<CacheEntry>> {
        // A newer revision may commit between reading the slot and the
        // record: read again, a few times.
        for _ in 0..3 {
            let meta = match self.read().slots.get(id)? {
                Slot::Live(entry) => return Some(entry.clone()),
                Slot::Spilled(entry) => entry.clone(),
                Slot::Deleted { .. } => return None,
            };
            let spill = self.spill.as_ref()?;
            match spill.store.get(id) {
                Ok(Some(Record::Live(entry)))
                    if entry.rev == meta.rev && entry.hash == meta.hash =>
                {
                    return Some(Arc::new(entry));
                }
                Ok(_)
                    if !self
                        .read()
                        .slots
                        .get(id)
                        .and_then(Slot::entry)
                        .is_some_and(|e| Arc::ptr_eq(e, &meta)) =>
                {
                    continue;
                }
                Ok(_) => {
                    self.damaged(id, "its record is missing or out of date");
                    return None;
                }
                Err(err) => {
                    self.damaged(id, &err.to_string());
                    return None;
                }
            }
        }
        None
    }

    /// The entry as held: its content may be `Content::Spilled` (for
    /// callers that need only its revision, hash and errors).
    pub fn meta(&self, id: &str) -> Option<Arc<CacheEntry>> {
        self.read().slots.get(id)?.entry().cloned()
    }

    /// The content parsed, from a small cache of recent parses (by id and
    /// revision): for services that walk a content per request (a sysconf
    /// lookup) without keeping a tree per document.
    pub fn tree(&self, entry: &CacheEntry) -> Arc<Value> {
        let mut trees = self
            .trees
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((rev, tree)) = trees.parsed.get(&entry.id)
            && *rev == entry.rev
        {
            return tree.clone();
        }
        let tree = Arc::new(entry.content.value().into_owned());
        trees.put(entry, tree.clone());
        tree
    }

    /// Whether the mirror holds exactly this revision of a live document.
    pub fn holds(&self, id: &str, rev: &str) -> bool {
        self.read()
            .slots
            .get(id)
            .and_then(Slot::entry)
            .is_some_and(|entry| entry.rev == rev)
    }

    /// The ids of a domain's live entries.
    pub fn ids_of(&self, domain: &str) -> Vec<String> {
        let state = self.read();
        Entries {
            slots: &state.slots,
            mirror: self,
        }
        .ids(domain)
        .map(str::to_string)
        .collect()
    }

    /// Entries with errors (up to `limit`), sorted by id; their content may
    /// be spilled (see `meta`).
    pub fn with_errors(&self, limit: usize) -> Vec<Arc<CacheEntry>> {
        let state = self.read();
        let mut found: Vec<_> = state
            .slots
            .values()
            .filter_map(|slot| slot.entry().filter(|e| e.has_errors()).cloned())
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.truncate(limit);
        found
    }

    /// A page of the documents with errors (`/v1/errors`), in one pass
    /// under the lock.
    pub fn errors_page(
        &self,
        filter: &super::errors::ErrorFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> super::errors::ErrorsPage {
        let state = self.read();
        let entries = state.slots.values().filter_map(Slot::entry);
        super::errors::page(entries, filter, cursor, limit)
    }

    pub fn stats(&self) -> BTreeMap<String, DomainStats> {
        self.read().stats.clone()
    }

    /// Whether the mirror is warm: the cache database was loaded, or the
    /// store's content caught up with the feed.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    pub fn subscribe_loaded(&self) -> watch::Receiver<bool> {
        self.loaded.subscribe()
    }

    /// Bumps every time the whole cache database was (re)loaded.
    pub fn subscribe_reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Resolves after the next change to the mirror.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Registers an observer and tells it the current content.
    pub fn observe(&self, observer: Arc<dyn Observer>) {
        let state = self.write();
        observer.reset(&Entries {
            slots: &state.slots,
            mirror: self,
        });
        self.observers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(observer);
    }

    /// Tells the observers what was just applied (the state lock is held).
    fn notify(&self, applied: &Applied) {
        let observers = self
            .observers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for observer in observers.iter() {
            match applied {
                Applied::Put(entry) => observer.put(entry),
                Applied::Removed(id) => observer.remove(id),
            }
        }
    }

    /// Replaces everything with a fresh load of the cache database.
    pub fn replace_all(&self, entries: Vec<CacheEntry>) {
        self.begin_reload();
        for entry in entries {
            self.reload_put(entry);
        }
        self.finish_reload(None);
    }

    /// A fresh load of the cache database starts: what follows
    /// (`reload_put`) replaces everything at `finish_reload`. The store
    /// holds no consistent position until then.
    pub fn begin_reload(&self) {
        let mut state = self.write();
        state.reload = Some(Box::default());
        self.queue(Op::Checkpoint(None));
    }

    /// One document of the load in progress.
    pub fn reload_put(&self, entry: CacheEntry) {
        let mut state = self.write();
        let entry = Arc::new(entry);
        self.queue_put(&entry);
        match &mut state.reload {
            Some(reload) => reload.put(entry),
            None => state.put(entry),
        }
    }

    /// A document of the load in progress is gone again (deleted while
    /// the load read on).
    pub fn reload_remove(&self, id: &str) {
        let mut state = self.write();
        if let Some(reload) = &mut state.reload
            && let Some(old) = reload.slots.remove(id)
            && let Some(old) = old.entry()
        {
            reload.count(old, false);
        }
    }

    /// The load is complete: its documents replace the mirror's, the store
    /// keeps exactly them with `checkpoint`, observers are reset, and the
    /// mirror is warm.
    pub fn finish_reload(&self, checkpoint: Option<Checkpoint>) {
        {
            let mut state = self.write();
            let fresh = state.reload.take().map(|r| *r).unwrap_or_default();
            *state = fresh;
            let keep: HashSet<String> = state.slots.keys().cloned().collect();
            self.queue(Op::Retain(Arc::new(keep)));
            self.queue(Op::Checkpoint(checkpoint));
            self.trees
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            let entries = Entries {
                slots: &state.slots,
                mirror: self,
            };
            let observers = self
                .observers
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for observer in observers.iter() {
                observer.reset(&entries);
            }
        }
        self.loaded.send_replace(true);
        self.reloads.send_modify(|n| *n += 1);
        self.changed.notify_waiters();
    }

    /// The store's content has caught up with the cache feed (a resumed
    /// start): the mirror is warm.
    pub fn caught_up(&self) {
        self.loaded.send_replace(true);
        self.changed.notify_waiters();
    }

    /// Records that the feed has been applied up to `checkpoint` (committed
    /// with the changes before it).
    pub fn checkpoint(&self, checkpoint: Checkpoint) {
        let _order = self.write();
        self.queue(Op::Checkpoint(Some(checkpoint)));
    }

    /// Starts noting the ids the cache feed changes, until
    /// `take_feed_changes`.
    pub fn record_feed_changes(&self) {
        *self.feed_changes_lock() = Some(HashSet::new());
    }

    /// The ids the cache feed changed since `record_feed_changes`; stops
    /// noting them.
    pub fn take_feed_changes(&self) -> HashSet<String> {
        self.feed_changes_lock().take().unwrap_or_default()
    }

    /// Whether the cache feed changed `id` since `record_feed_changes`.
    pub fn changed_by_feed(&self, id: &str) -> bool {
        self.feed_changes_lock()
            .as_ref()
            .is_some_and(|ids| ids.contains(id))
    }

    fn feed_changes_lock(&self) -> std::sync::MutexGuard<'_, Option<HashSet<String>>> {
        self.feed_changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a change from the cache feed, unless this process already holds
    /// a newer revision of the document.
    pub fn apply_feed(&self, update: Update) {
        let applied = {
            let mut state = self.write();
            let incoming = update.generation();
            let newer = match state.slots.get(update.id()) {
                None => true,
                Some(Slot::Live(entry) | Slot::Spilled(entry)) => {
                    incoming > rev_generation(&entry.rev)
                        || (incoming == rev_generation(&entry.rev)
                            && update.rev() != Some(entry.rev.as_str()))
                }
                Some(Slot::Deleted { generation }) => incoming > *generation,
            };
            if newer {
                if let Some(ids) = self.feed_changes_lock().as_mut() {
                    ids.insert(update.id().to_string());
                }
                let applied = self.apply(&mut state, update);
                self.notify(&applied);
            }
            newer
        };
        if applied {
            self.changed.notify_waiters();
        }
    }

    /// Applies what this process just wrote (or read back) from the cache
    /// database: always current.
    pub fn apply_written(&self, update: Update) {
        {
            let mut state = self.write();
            if let Some(reload) = &mut state.reload {
                reload.apply_plain(update.clone());
            }
            let applied = self.apply(&mut state, update);
            self.notify(&applied);
        }
        self.changed.notify_waiters();
    }

    fn apply(&self, state: &mut State, update: Update) -> Applied {
        match &update {
            Update::Live(_) => {}
            Update::Deleted { id, rev } => self.queue(Op::Delete {
                id: id.clone(),
                generation: rev_generation(rev),
            }),
        }
        let applied = state.apply_plain(update);
        if let Applied::Put(entry) = &applied {
            self.queue_put(entry);
        }
        applied
    }

    /// Bytes of spilling content not yet committed to the store (a loader
    /// waits while this is high, so a slow disk cannot fill memory).
    pub fn pending_bytes(&self) -> i64 {
        self.spill
            .as_ref()
            .map_or(0, |s| s.pending.load(Ordering::Relaxed))
    }

    /// Whether a store backs the mirror, and is still writing.
    pub fn store_healthy(&self) -> Option<bool> {
        self.spill.as_ref().map(|s| !s.store.is_broken())
    }

    /// Records found damaged since start.
    pub fn damaged_records(&self) -> u64 {
        self.damaged.load(Ordering::Relaxed)
    }

    /// The ids whose records could not be read back, to be fetched again
    /// from the cache database (`apply_written`).
    pub fn take_repairs(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .repairs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Resolves when a repair is wanted.
    pub fn repair_wanted(&self) -> tokio::sync::futures::Notified<'_> {
        self.repair_wanted.notified()
    }

    fn damaged(&self, id: &str, why: &str) {
        self.damaged.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            id,
            why,
            "a stored cache document cannot be read back; it is not served, and is fetched again from CouchDB"
        );
        if let Some(spill) = &self.spill {
            // The next start finds no checkpoint and rebuilds the store.
            spill.store.abandon();
        }
        self.repairs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(id.to_string());
        self.repair_wanted.notify_one();
    }

    fn queue(&self, op: Op) {
        if let Some(ops) = self.spill.as_ref().and_then(|s| s.ops.as_ref()) {
            let _ = ops.send(op);
        }
    }

    /// Waits (up to `limit`) until everything applied so far is committed
    /// to the store; `true` when it is (or there is no store).
    pub fn flush(&self, limit: std::time::Duration) -> bool {
        if self.spill.is_none() {
            return true;
        }
        let (done, flushed) = mpsc::channel();
        self.queue(Op::Flush(done));
        flushed.recv_timeout(limit).is_ok()
    }

    fn queue_put(&self, entry: &Arc<CacheEntry>) {
        let Some(spill) = &self.spill else {
            return;
        };
        if spills(&entry.domain) {
            spill
                .pending
                .fetch_add(entry.bytes as i64, Ordering::Relaxed);
        }
        self.queue(Op::Put(entry.clone()));
    }

    /// The store committed these entries: the spilling ones still held
    /// leave memory.
    fn committed(&self, entries: &[Arc<CacheEntry>]) {
        let mut state = self.write();
        for entry in entries.iter().filter(|e| spills(&e.domain)) {
            if let Some(spill) = &self.spill {
                spill
                    .pending
                    .fetch_sub(entry.bytes as i64, Ordering::Relaxed);
            }
            state.spill(entry);
            if let Some(reload) = &mut state.reload {
                reload.spill(entry);
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn spills(domain: &str) -> bool {
    Domain::from_name(domain).is_some_and(Domain::spills_to_store)
}

/// Recent parses, bounded by the text bytes they came from.
#[derive(Default)]
struct Trees {
    parsed: HashMap<String, (String, Arc<Value>)>,
    order: Option<LruCache<String, usize>>,
    bytes: usize,
}

impl Trees {
    fn put(&mut self, entry: &CacheEntry, tree: Arc<Value>) {
        let order = self.order.get_or_insert_with(LruCache::unbounded);
        let size = entry.content.text().len();
        if let Some(old) = order.put(entry.id.clone(), size) {
            self.bytes -= old;
        }
        self.bytes += size;
        self.parsed
            .insert(entry.id.clone(), (entry.rev.clone(), tree));
        while self.bytes > TREE_CACHE_TEXT_BYTES {
            let Some((id, size)) = order.pop_lru() else {
                break;
            };
            self.bytes -= size;
            self.parsed.remove(&id);
        }
    }

    fn clear(&mut self) {
        *self = Trees::default();
    }
}

/// A change to one cache document.
#[derive(Debug, Clone)]
pub enum Update {
    Live(CacheEntry),
    Deleted { id: String, rev: String },
}

impl Update {
    fn id(&self) -> &str {
        match self {
            Update::Live(entry) => &entry.id,
            Update::Deleted { id, .. } => id,
        }
    }

    fn rev(&self) -> Option<&str> {
        match self {
            Update::Live(entry) => Some(&entry.rev),
            Update::Deleted { .. } => None,
        }
    }

    fn generation(&self) -> u64 {
        match self {
            Update::Live(entry) => rev_generation(&entry.rev),
            Update::Deleted { rev, .. } => rev_generation(rev),
        }
    }
}

/// What `State::apply_plain` did, for the observers.
enum Applied {
    Put(Arc<CacheEntry>),
    Removed(String),
}

impl State {
    fn apply_plain(&mut self, update: Update) -> Applied {
        match update {
            Update::Live(entry) => {
                let entry = Arc::new(entry);
                self.put(entry.clone());
                Applied::Put(entry)
            }
            Update::Deleted { id, rev } => {
                let generation = rev_generation(&rev);
                if let Some(old) = self.slots.insert(id.clone(), Slot::Deleted { generation })
                    && let Some(old) = old.entry()
                {
                    self.count(old, false);
                }
                Applied::Removed(id)
            }
        }
    }

    fn put(&mut self, entry: Arc<CacheEntry>) {
        self.count(&entry, true);
        if let Some(old) = self.slots.insert(entry.id.clone(), Slot::Live(entry))
            && let Some(old) = old.entry()
        {
            self.count(old, false);
        }
    }

    /// `entry`'s content is committed: drop it from memory if the slot
    /// still holds exactly that entry.
    fn spill(&mut self, entry: &Arc<CacheEntry>) {
        if let Some(slot) = self.slots.get_mut(&entry.id)
            && matches!(slot, Slot::Live(held) if Arc::ptr_eq(held, entry))
        {
            *slot = Slot::Spilled(Arc::new(entry.without_content()));
        }
    }

    fn count(&mut self, entry: &CacheEntry, add: bool) {
        let stats = self.stats.entry(entry.domain.clone()).or_default();
        let apply = |total: &mut u64, amount: u64| {
            *total = if add {
                *total + amount
            } else {
                total.saturating_sub(amount)
            };
        };
        apply(&mut stats.documents, 1);
        apply(&mut stats.bytes, entry.bytes as u64);
        apply(&mut stats.with_errors, u64::from(entry.has_errors()));
        apply(&mut stats.stale, u64::from(entry.stale));
    }
}

/// Turns a cache-database document into a mirror update; `None` for
/// documents caldera does not own (design documents, foreign documents).
pub fn update_from_doc(
    id: &str,
    rev: &str,
    body: Option<&Value>,
    bytes: usize,
) -> Option<Result<Update, String>> {
    if id.starts_with("_design/") {
        return None;
    }
    match body {
        None => Some(Ok(Update::Deleted {
            id: id.to_string(),
            rev: rev.to_string(),
        })),
        Some(doc) => Some(CacheEntry::from_doc(doc, bytes).map(Update::Live)),
    }
}

#[cfg(test)]
#[path = "mirror_tests.rs"]
mod tests;
