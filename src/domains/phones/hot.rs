//! The hot set: the phone files served recently, ready to send, bounded
//! in bytes.
//!
//! The serving index (`serving`) keeps only each file's name, etag and
//! since-when; the body lives once, in the mirror (on disk when the mirror
//! has a store). A phone asks for its files at boot and about once a day,
//! so most files are cold: a miss reads the cache document back and
//! formats the file (`serving::Tables::file`), and the files read so are
//! kept here, least recently used first out, so a platform's busy phones
//! (a reboot wave, a bench) are served from memory.
//!
//! Keys carry the generation of the file set they were read for (a new
//! revision of a cache document gets a new generation), so an entry can
//! never answer for another revision: an insert racing a newer revision
//! lands under a key nobody asks for again, and ages out.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use super::serving::ServedFile;

/// The default bound (`phones.hot_set_mb`).
pub const DEFAULT_HOT_SET_BYTES: usize = 256 << 20;

/// Locks are per shard, so concurrent requests rarely wait on each other.
const SHARDS: usize = 16;

/// What an entry costs besides its body and strings: the key, the `Arc`,
/// the headers and the LRU's node, roughly.
const ENTRY_OVERHEAD: usize = 256;

/// (file set generation, index of the file in its set).
pub type HotKey = (u64, u16);

struct Shard {
    files: LruCache<HotKey, Arc<ServedFile>>,
    bytes: usize,
}

/// The set; see the module comment.
pub struct HotSet {
    shards: Box<[Mutex<Shard>]>,
    /// The bound of one shard.
    shard_limit: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Numbers for `/v1/status` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HotStats {
    pub files: u64,
    pub bytes: u64,
    pub limit_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

fn weight(file: &ServedFile) -> usize {
    file.body.len() + file.etag.len() + file.content_type.len() + ENTRY_OVERHEAD
}

impl Default for HotSet {
    fn default() -> HotSet {
        HotSet::new(DEFAULT_HOT_SET_BYTES)
    }
}

impl HotSet {
    /// A set holding at most about `limit` bytes (0: nothing is kept, every
    /// request reads the mirror).
    pub fn new(limit: usize) -> HotSet {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    files: LruCache::unbounded(),
                    bytes: 0,
                })
            })
            .collect();
        HotSet {
            shards,
            shard_limit: AtomicUsize::new(limit / SHARDS),
            hasher: std::collections::hash_map::RandomState::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: HotKey) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The file under `key`, counted as a hit or a miss.
    pub fn get(&self, key: HotKey) -> Option<Arc<ServedFile>> {
        let found = self.shard(key).files.get(&key).cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `file` under `key`, evicting the least recently used files
    /// past the bound.
    pub fn insert(&self, key: HotKey, file: Arc<ServedFile>) {
        let limit = self.shard_limit.load(Ordering::Relaxed);
        let cost = weight(&file);
        if cost > limit {
            return;
        }
        let mut shard = self.shard(key);
        if let Some(old) = shard.files.put(key, file) {
            shard.bytes -= weight(&old);
        }
        shard.bytes += cost;
        Self::evict(&mut shard, limit);
    }

    fn evict(shard: &mut Shard, limit: usize) {
        while shard.bytes > limit {
            let Some((_, old)) = shard.files.pop_lru() else {
                break;
            };
            shard.bytes -= weight(&old);
        }
    }

    /// Drops the file under `key` (its document changed or went away).
    pub fn forget(&self, key: HotKey) {
        let mut shard = self.shard(key);
        if let Some(old) = shard.files.pop(&key) {
            shard.bytes -= weight(&old);
        }
    }

    /// Drops every file.
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            shard.files.clear();
            shard.bytes = 0;
        }
    }

    /// A new bound (SIGHUP), applied at once.
    pub fn resize(&self, limit: usize) {
        let limit = limit / SHARDS;
        self.shard_limit.store(limit, Ordering::Relaxed);
        for shard in &self.shards {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Self::evict(&mut shard, limit);
        }
    }

    pub fn stats(&self) -> HotStats {
        let mut stats = HotStats {
            limit_bytes: (self.shard_limit.load(Ordering::Relaxed) * SHARDS) as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            ..HotStats::default()
        };
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            stats.files += shard.files.len() as u64;
            stats.bytes += shard.bytes as u64;
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn file(body: &str) -> Arc<ServedFile> {
        Arc::new(ServedFile::new(
            bytes::Bytes::copy_from_slice(body.as_bytes()),
            "e".into(),
            "text/plain".into(),
            SystemTime::UNIX_EPOCH,
        ))
    }

    #[test]
    fn holds_files_within_its_bound_and_evicts_the_least_recently_used() {
        let one = weight(&file(&"x".repeat(1000)));
        // Room for two files per shard.
        let set = HotSet::new(SHARDS * (2 * one + one / 2));
        let keys: Vec<HotKey> = (0..2000).map(|n| (n, 0)).collect();
        for key in &keys {
            set.insert(*key, file(&"x".repeat(1000)));
        }
        let stats = set.stats();
        assert!(stats.bytes <= stats.limit_bytes, "{stats:?}");
        assert_eq!(stats.files, 2 * SHARDS as u64, "two per shard");
        let last = *keys.last().unwrap();
        assert!(set.get(last).is_some(), "the newest is kept");
        assert!(set.get(keys[0]).is_none(), "the oldest went");
        assert_eq!((set.stats().hits, set.stats().misses), (1, 1));
        set.forget(last);
        assert!(set.get(last).is_none());
        set.resize(0);
        assert_eq!(set.stats().files, 0, "a bound of 0 keeps nothing");
        set.insert((1, 1), file("y"));
        assert!(set.get((1, 1)).is_none());
        set.resize(DEFAULT_HOT_SET_BYTES);
        set.insert((1, 1), file("y"));
        assert_eq!(&set.get((1, 1)).unwrap().body[..], b"y");
        set.insert((1, 1), file("zz"));
        assert_eq!(&set.get((1, 1)).unwrap().body[..], b"zz", "replaced");
        assert_eq!(set.stats().bytes as usize, weight(&file("zz")));
        set.clear();
        assert_eq!(set.stats().files, 0);
    }
}
