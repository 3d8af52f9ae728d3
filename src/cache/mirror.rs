//! The in-memory mirror of the cache database: what the HTTP layer serves.
//!
//! It is warmed from the cache database at start-up and kept current by the
//! cache database's own feed, so an instance that does not build serves the
//! same content as one that does. A building instance also applies its own
//! successful writes straight away (write-through), so an edit is visible
//! without waiting for the feed's echo.
//!
//! Invariant: a feed update never replaces a newer revision this process
//! already holds (its echo may arrive late); write-through and a full reload
//! always win, because they are known to be current.
//!
//! Entries hold their domain's form of content (`cache::Content`): the
//! phones outputs as their JSON text (at 100k units the outputs' memory
//! went from 36 to 16 kB per unit, see BENCHMARKS.md).
//!
//! Observers (`Mirror::observe`) are told every change in the order it is
//! applied, under the mirror's lock, so a secondary index they keep (the
//! phones domain's realm/MAC tables) never disagrees with the mirror.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::{Notify, watch};

use super::CacheEntry;
use crate::couch::rev_generation;

/// Per-domain totals, for metrics and the status endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DomainStats {
    pub documents: u64,
    pub bytes: u64,
    pub with_errors: u64,
    pub stale: u64,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    stats: BTreeMap<String, DomainStats>,
}

enum Slot {
    Live(Arc<CacheEntry>),
    /// Remembered so that a late echo of an older revision is not revived.
    Deleted {
        generation: u64,
    },
}

/// Told about every change to the mirror, in order, while the mirror's
/// write lock is held: it must be quick and must not call the mirror.
pub trait Observer: Send + Sync {
    /// The mirror now holds exactly `entries` (also called on registration).
    fn reset(&self, entries: &[Arc<CacheEntry>]);
    /// `entry` is live now (new or replacing its previous revision).
    fn put(&self, entry: &Arc<CacheEntry>);
    /// The document `id` is gone.
    fn remove(&self, id: &str);
}

/// The mirror. Cheap to read from many threads.
pub struct Mirror {
    state: RwLock<State>,
    observers: RwLock<Vec<Arc<dyn Observer>>>,
    changed: Notify,
    loaded: watch::Sender<bool>,
    reloads: watch::Sender<u64>,
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror {
            state: RwLock::default(),
            observers: RwLock::default(),
            changed: Notify::new(),
            loaded: watch::channel(false).0,
            reloads: watch::channel(0).0,
        }
    }
}

impl Mirror {
    pub fn get(&self, id: &str) -> Option<Arc<CacheEntry>> {
        match self.read().slots.get(id)? {
            Slot::Live(entry) => Some(entry.clone()),
            Slot::Deleted { .. } => None,
        }
    }

    /// Whether the mirror holds exactly this revision of a live document.
    pub fn holds(&self, id: &str, rev: &str) -> bool {
        matches!(self.read().slots.get(id), Some(Slot::Live(entry)) if entry.rev == rev)
    }

    /// The ids of a domain's live entries.
    pub fn ids_of(&self, domain: &str) -> Vec<String> {
        let state = self.read();
        let live = state.slots.iter().filter_map(|(id, slot)| match slot {
            Slot::Live(entry) if entry.domain == domain => Some(id.clone()),
            _ => None,
        });
        live.collect()
    }

    /// Entries with errors (up to `limit`), sorted by id.
    pub fn with_errors(&self, limit: usize) -> Vec<Arc<CacheEntry>> {
        let state = self.read();
        let mut found: Vec<_> = state
            .slots
            .values()
            .filter_map(|slot| match slot {
                Slot::Live(entry) if entry.has_errors() => Some(entry.clone()),
                _ => None,
            })
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.truncate(limit);
        found
    }

    pub fn stats(&self) -> BTreeMap<String, DomainStats> {
        self.read().stats.clone()
    }

    /// Whether the initial load from the cache database has completed.
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
        observer.reset(&state.live());
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
        {
            let mut state = self.write();
            *state = State::default();
            for entry in entries {
                state.put(Arc::new(entry));
            }
            let live = state.live();
            let observers = self
                .observers
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for observer in observers.iter() {
                observer.reset(&live);
            }
        }
        self.loaded.send_replace(true);
        self.reloads.send_modify(|n| *n += 1);
        self.changed.notify_waiters();
    }

    /// Applies a change from the cache feed, unless this process already holds
    /// a newer revision of the document.
    pub fn apply_feed(&self, update: Update) {
        let applied = {
            let mut state = self.write();
            let incoming = update.generation();
            let newer = match state.slots.get(update.id()) {
                None => true,
                Some(Slot::Live(entry)) => {
                    incoming > rev_generation(&entry.rev)
                        || (incoming == rev_generation(&entry.rev)
                            && update.rev() != Some(entry.rev.as_str()))
                }
                Some(Slot::Deleted { generation }) => incoming > *generation,
            };
            if newer {
                let applied = state.apply(update);
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
            let applied = state.apply(update);
            self.notify(&applied);
        }
        self.changed.notify_waiters();
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

/// What `State::apply` did, for the observers.
enum Applied {
    Put(Arc<CacheEntry>),
    Removed(String),
}

impl State {
    fn apply(&mut self, update: Update) -> Applied {
        match update {
            Update::Live(entry) => {
                let entry = Arc::new(entry);
                self.put(entry.clone());
                Applied::Put(entry)
            }
            Update::Deleted { id, rev } => {
                let generation = rev_generation(&rev);
                if let Some(Slot::Live(old)) =
                    self.slots.insert(id.clone(), Slot::Deleted { generation })
                {
                    self.count(&old, false);
                }
                Applied::Removed(id)
            }
        }
    }

    fn live(&self) -> Vec<Arc<CacheEntry>> {
        self.slots
            .values()
            .filter_map(|slot| match slot {
                Slot::Live(entry) => Some(entry.clone()),
                Slot::Deleted { .. } => None,
            })
            .collect()
    }

    fn put(&mut self, entry: Arc<CacheEntry>) {
        self.count(&entry, true);
        if let Some(Slot::Live(old)) = self.slots.insert(entry.id.clone(), Slot::Live(entry)) {
            self.count(&old, false);
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
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(id: &str, rev: &str, content: Value) -> CacheEntry {
        CacheEntry {
            id: id.into(),
            rev: rev.into(),
            domain: "sysconf".into(),
            key: id.into(),
            hash: "h".into(),
            content: content.into(),
            errors: json!([]),
            stale: false,
            bytes: 10,
        }
    }

    #[test]
    fn late_echoes_do_not_revive_older_revisions() {
        let mirror = Mirror::default();
        mirror.apply_written(Update::Live(entry("sysconf:a", "2-b", json!(2))));
        mirror.apply_feed(Update::Live(entry("sysconf:a", "1-a", json!(1))));
        assert_eq!(*mirror.get("sysconf:a").unwrap().content.value(), json!(2));
        mirror.apply_written(Update::Deleted {
            id: "sysconf:a".into(),
            rev: "3-c".into(),
        });
        mirror.apply_feed(Update::Live(entry("sysconf:a", "2-b", json!(2))));
        assert!(mirror.get("sysconf:a").is_none());
        mirror.apply_feed(Update::Live(entry("sysconf:a", "4-d", json!(4))));
        assert_eq!(*mirror.get("sysconf:a").unwrap().content.value(), json!(4));
    }

    #[test]
    fn stats_follow_replacements_and_deletions() {
        let mirror = Mirror::default();
        mirror.replace_all(vec![
            entry("sysconf:a", "1-a", json!(1)),
            entry("sysconf:b", "1-a", json!(1)),
        ]);
        assert!(mirror.is_loaded());
        assert_eq!(mirror.stats()["sysconf"].documents, 2);
        mirror.apply_feed(Update::Live(entry("sysconf:a", "2-a", json!(2))));
        mirror.apply_feed(Update::Deleted {
            id: "sysconf:b".into(),
            rev: "2-x".into(),
        });
        assert_eq!(
            mirror.stats()["sysconf"],
            DomainStats {
                documents: 1,
                bytes: 10,
                with_errors: 0,
                stale: 0
            }
        );
        assert_eq!(mirror.ids_of("sysconf"), ["sysconf:a"]);
    }

    /// Records what it is told, as `put id` / `remove id` / `reset n`.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl Observer for Recorder {
        fn reset(&self, entries: &[Arc<CacheEntry>]) {
            self.0
                .lock()
                .unwrap()
                .push(format!("reset {}", entries.len()));
        }
        fn put(&self, entry: &Arc<CacheEntry>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("put {} {}", entry.id, entry.rev));
        }
        fn remove(&self, id: &str) {
            self.0.lock().unwrap().push(format!("remove {id}"));
        }
    }

    #[test]
    fn observers_see_every_applied_change_and_no_ignored_one() {
        let mirror = Mirror::default();
        mirror.apply_written(Update::Live(entry("sysconf:a", "1-a", json!(1))));
        let recorder = Arc::new(Recorder::default());
        mirror.observe(recorder.clone());
        mirror.apply_written(Update::Live(entry("sysconf:b", "1-b", json!(1))));
        mirror.apply_feed(Update::Live(entry("sysconf:b", "1-b", json!(1))));
        mirror.apply_feed(Update::Deleted {
            id: "sysconf:a".into(),
            rev: "2-a".into(),
        });
        mirror.replace_all(vec![entry("sysconf:c", "1-c", json!(1))]);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                "reset 1",
                "put sysconf:b 1-b",
                "remove sysconf:a",
                "reset 1"
            ]
        );
    }
}
