//! The on-disk store of the mirror: every cache document this instance
//! mirrors, with the cache feed's position, in one redb file
//! (`cache.store_path`).
//!
//! Why: at a million phones the outputs are gigabytes of text that phones
//! read at boot and once a day, and reading the whole cache database back
//! from CouchDB at every start takes minutes. With the store, the mirror
//! keeps in memory only what every request needs (ids, revisions, hashes,
//! errors, and the content of the domains served from memory) and reads a
//! spilled domain's content from here on demand; a restart loads the store
//! and follows the cache feed from where the store left off.
//!
//! redb, not fjall or sled: one file, ACID transactions (a commit is all or
//! nothing, kill -9 leaves the last commit), a B-tree suited to point reads
//! of a few kilobytes, pure Rust, well kept. The write rate is the cache
//! database's (batches of hundreds of documents), which a B-tree commits
//! comfortably, so an LSM's write throughput buys nothing here.
//!
//! The store is a cache of CouchDB, never a source of truth:
//! * the feed position (`Checkpoint`) is committed in the same transaction
//!   as the records it covers, so the two always agree; a reload clears
//!   the checkpoint first, so a store interrupted mid-reload is reloaded;
//! * every record carries a checksum, and a live record's content is
//!   checked against its cache hash before it is served: a truncated,
//!   hand-edited or otherwise damaged file is detected (at open, or at the
//!   read that meets the damage) and rebuilt from CouchDB, never served;
//! * a write that fails (disk full) leaves the last commit, which is still
//!   consistent with its checkpoint: the store stops writing, the mirror
//!   keeps everything in memory, and the next start resumes from the last
//!   commit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{CacheEntry, Content, JsonText};
use crate::couch::Seq;

/// Cache document id → record.
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// `format`, `checkpoint`.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The version of the record layout; another version is rebuilt.
const FORMAT: &[u8] = b"caldera-store-1";

const KIND_LIVE: u8 = 1;
const KIND_DELETED: u8 = 2;
/// redb's page cache.
const STORE_CACHE_BYTES: usize = 16 << 20;
/// Bytes of sha256 kept at the end of each record.
const CHECKSUM: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is not a store of this version, or a record is damaged.
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    /// Another process holds the file.
    #[error("the store is in use by another process")]
    InUse,
    #[error("store I/O failed: {0}")]
    Io(String),
}

type Result<T> = std::result::Result<T, StoreError>;

fn io(err: impl std::fmt::Display) -> StoreError {
    StoreError::Io(err.to_string())
}

/// How far the records reflect the cache database: its name, its
/// incarnation marker and the feed sequence applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub db: String,
    pub marker: String,
    pub seq: Seq,
}

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Live(CacheEntry),
    /// A deleted document, remembered so a late echo of an older revision
    /// is not revived after a restart.
    Deleted {
        generation: u64,
    },
}

/// A change to the store, in the order the mirror applied it.
#[derive(Debug, Clone)]
pub enum Op {
    /// A live entry; its content is `Content::Text`.
    Put(Arc<CacheEntry>),
    Delete {
        id: String,
        generation: u64,
    },
    /// The position the records now reflect (`None`: they reflect no
    /// consistent position; set when a reload starts).
    Checkpoint(Option<Checkpoint>),
    /// The records not listed are gone (the end of a reload).
    Retain(Arc<std::collections::HashSet<String>>),
    /// Told once every op before it is committed (or failed).
    Flush(mpsc::Sender<()>),
}

/// The store file.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// Set once a write failed: nothing more is written until a restart.
    broken: AtomicBool,
    commits: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the store at `path`, creating it when missing. A file that is
    /// not a store of this format is `Corrupt` (see `open_or_rebuild`).
    ///
    /// # Errors
    /// `InUse`, `Corrupt`, `Io`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // redb's page cache defaults to 1 GiB, which would hold in memory
        // the very contents the store exists to keep out of it; reads are
        // rare (admin views, restarts), so a small cache does.
        let mut db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)
            .map_err(|err| match err {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse,
                // redb reports a file that is not a database as invalid data.
                redb::DatabaseError::Storage(redb::StorageError::Io(err))
                    if !matches!(
                        err.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    io(err)
                }
                other => StoreError::Corrupt(other.to_string()),
            })?;
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(path = %path.display(), "the store was repaired by redb after an unclean stop")
            }
            Err(err) => return Err(StoreError::Corrupt(err.to_string())),
        }
        let store = Store {
            db,
            path: path.to_path_buf(),
            broken: AtomicBool::new(false),
            commits: AtomicU64::new(0),
        };
        store.check_format()?;
        Ok(store)
    }

    /// Opens the store, or — when it is damaged or of another format —
    /// deletes it and starts an empty one; the reason is returned so the
    /// caller can log it.
    ///
    /// # Errors
    /// `InUse` or `Io` (an empty store could not be created either).
    pub fn open_or_rebuild(path: &Path) -> Result<(Store, Option<String>)> {
        match Store::open(path) {
            Ok(store) => Ok((store, None)),
            Err(StoreError::Corrupt(why)) => {
                Store::remove(path)?;
                Ok((Store::open(path)?, Some(why)))
            }
            Err(other) => Err(other),
        }
    }

    /// Deletes the store file.
    ///
    /// # Errors
    /// The file exists and cannot be removed.
    pub fn remove(path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(io(err)),
            _ => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a write has failed (the store then stays as last committed).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Transactions committed since the store was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Writes the format marker into an empty store; refuses another one.
    fn check_format(&self) -> Result<()> {
        let found = {
            let read = self.db.begin_read().map_err(io)?;
            match read.open_table(META) {
                Ok(meta) => meta.get("format").map_err(io)?.map(|v| v.value().to_vec()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(err) => return Err(StoreError::Corrupt(err.to_string())),
            }
        };
        match found {
            Some(format) if format == FORMAT => Ok(()),
            Some(other) => Err(StoreError::Corrupt(format!(
                "format {:?}, not {:?}",
                String::from_utf8_lossy(&other),
                String::from_utf8_lossy(FORMAT)
            ))),
            None => {
                let write = self.db.begin_write().map_err(io)?;
                {
                    write.open_table(ENTRIES).map_err(io)?;
                    let mut meta = write.open_table(META).map_err(io)?;
                    meta.insert("format", FORMAT).map_err(io)?;
                }
                write.commit().map_err(io)
            }
        }
    }

    /// The checkpoint, if the records reflect a consistent position.
    ///
    /// # Errors
    /// `Io`, or `Corrupt` when the checkpoint does not parse.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let read = self.db.begin_read().map_err(io)?;
        let meta = read.open_table(META).map_err(io)?;
        let Some(raw) = meta.get("checkpoint").map_err(io)? else {
            return Ok(None);
        };
        let raw = raw.value();
        if raw.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(raw)
            .map(Some)
            .map_err(|err| StoreError::Corrupt(format!("the checkpoint does not parse: {err}")))
    }

    /// Every record, in id order, each checked. A damaged record fails the
    /// whole load (the caller rebuilds).
    ///
    /// # Errors
    /// `Corrupt` or `Io`.
    pub fn load(&self, mut each: impl FnMut(String, Record)) -> Result<()> {
        let read = self.db.begin_read().map_err(io)?;
        let entries = read.open_table(ENTRIES).map_err(io)?;
        for item in entries.iter().map_err(io)? {
            let (id, raw) = item.map_err(|err| StoreError::Corrupt(err.to_string()))?;
            let id = id.value().to_string();
            let record = decode(&id, raw.value())?;
            each(id, record);
        }
        Ok(())
    }

    /// The record of `id`, checked.
    ///
    /// # Errors
    /// `Corrupt` or `Io`.
    pub fn get(&self, id: &str) -> Result<Option<Record>> {
        let read = self.db.begin_read().map_err(io)?;
        let entries = read.open_table(ENTRIES).map_err(io)?;
        let raw = entries
            .get(id)
            .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        raw.map(|raw| decode(id, raw.value())).transpose()
    }

    /// Every record whose id starts with `prefix`, in id order, each
    /// checked, in one read transaction.
    ///
    /// # Errors
    /// `Corrupt` or `Io`: the scan stops at the first damaged record.
    pub fn scan_prefix(&self, prefix: &str, mut each: impl FnMut(&str, Record)) -> Result<()> {
        let read = self.db.begin_read().map_err(io)?;
        let entries = read.open_table(ENTRIES).map_err(io)?;
        for item in entries.range(prefix..).map_err(io)? {
            let (id, raw) = item.map_err(|err| StoreError::Corrupt(err.to_string()))?;
            let id = id.value();
            if !id.starts_with(prefix) {
                break;
            }
            each(id, decode(id, raw.value())?);
        }
        Ok(())
    }

    /// Damage was found: the checkpoint is dropped (so the next start
    /// rebuilds) and nothing more is written.
    pub fn abandon(&self) {
        let _ = self.apply(&[Op::Checkpoint(None)]);
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Applies `ops` in one transaction.
    ///
    /// # Errors
    /// `Io` (e.g. the disk is full): nothing of `ops` is applied.
    pub fn apply(&self, ops: &[Op]) -> Result<()> {
        if self.is_broken() {
            return Err(StoreError::Io(
                "the store stopped writing after an earlier failure".into(),
            ));
        }
        let result = self.apply_once(ops);
        if let Err(err) = &result {
            self.broken.store(true, Ordering::Relaxed);
            tracing::error!(path = %self.path.display(), error = %err,
                "the store could not be written; it keeps its last commit, and outputs stay in memory until a restart");
        } else {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn apply_once(&self, ops: &[Op]) -> Result<()> {
        let mut write = self.db.begin_write().map_err(io)?;
        write.set_durability(Durability::Immediate).map_err(io)?;
        {
            let mut entries = write.open_table(ENTRIES).map_err(io)?;
            let mut meta = write.open_table(META).map_err(io)?;
            for op in ops {
                match op {
                    Op::Put(entry) => {
                        let record = encode_live(entry);
                        entries
                            .insert(entry.id.as_str(), record.as_slice())
                            .map_err(io)?;
                    }
                    Op::Delete { id, generation } => {
                        let record = seal(vec![KIND_DELETED], &generation.to_le_bytes());
                        entries.insert(id.as_str(), record.as_slice()).map_err(io)?;
                    }
                    Op::Checkpoint(checkpoint) => {
                        let raw = checkpoint
                            .as_ref()
                            .map(|c| serde_json::to_vec(c).expect("checkpoints serialize"))
                            .unwrap_or_default();
                        meta.insert("checkpoint", raw.as_slice()).map_err(io)?;
                    }
                    Op::Retain(keep) => {
                        entries.retain(|id, _| keep.contains(id)).map_err(io)?;
                    }
                    Op::Flush(_) => {}
                }
            }
        }
        write.commit().map_err(io)
    }
}

/// Appends the checksum of `head` + `body`.
fn seal(mut head: Vec<u8>, body: &[u8]) -> Vec<u8> {
    head.extend_from_slice(body);
    let digest = Sha256::digest(&head);
    head.extend_from_slice(&digest[..CHECKSUM]);
    head
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).expect("fields are under 4 GB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(field);
}

/// A live record: kind, then rev, domain, key, hash, errors (JSON), stale,
/// bytes, content (JSON), each length-prefixed, then the checksum.
fn encode_live(entry: &CacheEntry) -> Vec<u8> {
    let content = entry.content.json();
    let errors = serde_json::to_vec(&entry.errors).expect("JSON values serialize");
    let mut body = Vec::with_capacity(content.len() + 256);
    for field in [
        entry.rev.as_bytes(),
        entry.domain.as_bytes(),
        entry.key.as_bytes(),
        entry.hash.as_bytes(),
        &errors,
        &[u8::from(entry.stale)],
        &(entry.bytes as u64).to_le_bytes(),
        &content,
    ] {
        put_field(&mut body, field);
    }
    seal(vec![KIND_LIVE], &body)
}

/// Reads fields back, failing on any inconsistency.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (field, rest) = rest.split_at(len);
        self.rest = rest;
        Some(field)
    }

    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.next()?).ok()
    }
}

fn decode(id: &str, raw: &[u8]) -> Result<Record> {
    let damaged = |why: &str| StoreError::Corrupt(format!("record {id:?}: {why}"));
    if raw.len() < 1 + CHECKSUM {
        return Err(damaged("too short"));
    }
    let (sealed, checksum) = raw.split_at(raw.len() - CHECKSUM);
    if Sha256::digest(sealed)[..CHECKSUM] != *checksum {
        return Err(damaged("checksum mismatch"));
    }
    let (kind, body) = sealed.split_first().expect("length checked");
    match *kind {
        KIND_DELETED => {
            let generation = body
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| damaged("bad deletion"))?;
            Ok(Record::Deleted { generation })
        }
        KIND_LIVE => decode_live(id, body).ok_or_else(|| damaged("bad fields")),
        _ => Err(damaged("unknown kind")),
    }
}

fn decode_live(id: &str, body: &[u8]) -> Option<Record> {
    let mut fields = Fields { rest: body };
    let rev = fields.text()?.to_string();
    let domain = fields.text()?.to_string();
    let key = fields.text()?.to_string();
    let hash = fields.text()?.to_string();
    let errors: Value = serde_json::from_slice(fields.next()?).ok()?;
    let stale = *fields.next()?.first()? != 0;
    let bytes = u64::from_le_bytes(fields.next()?.try_into().ok()?) as usize;
    let content = fields.next()?;
    if !fields.rest.is_empty() {
        return None;
    }
    // The checksum vouches that these are the bytes written (serde_json's
    // output). The content is not re-hashed against `hash`: a cache
    // document written by hand in CouchDB may carry any hash, and the
    // mirror compares revision and hash with what it holds before serving.
    std::str::from_utf8(content).ok()?;
    Some(Record::Live(CacheEntry {
        id: id.to_string(),
        rev,
        domain,
        key,
        hash,
        content: Content::Text(JsonText::from_serialized(content)),
        errors,
        stale,
        bytes,
    }))
}

/// The writer thread: applies ops in batches, one transaction each, and
/// reports each committed batch's entries to `committed` (the mirror then
/// drops their content from memory). Ends when every sender is gone.
pub fn spawn_writer(
    store: Arc<Store>,
    committed: impl Fn(Vec<Arc<CacheEntry>>) + Send + 'static,
) -> (mpsc::Sender<Op>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Op>();
    let thread = std::thread::Builder::new()
        .name("caldera-store".into())
        .spawn(move || write_batches(&store, &rx, &committed))
        .expect("the store writer thread starts");
    (tx, thread)
}

/// Ops per transaction at most, and content bytes.
const BATCH_OPS: usize = 2_000;
const BATCH_BYTES: usize = 16 << 20;

fn write_batches(
    store: &Store,
    rx: &mpsc::Receiver<Op>,
    committed: &impl Fn(Vec<Arc<CacheEntry>>),
) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        let mut bytes = 0;
        while ops.len() < BATCH_OPS && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    if let Op::Put(entry) = &op {
                        bytes += entry.bytes;
                    }
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        let (flushes, ops): (Vec<Op>, Vec<Op>) =
            ops.into_iter().partition(|op| matches!(op, Op::Flush(_)));
        // Entries not committed stay in memory; nothing is reported.
        if !store.is_broken() && store.apply(&ops).is_ok() {
            let puts: Vec<Arc<CacheEntry>> = ops
                .into_iter()
                .filter_map(|op| match op {
                    Op::Put(entry) => Some(entry),
                    _ => None,
                })
                .collect();
            if !puts.is_empty() {
                committed(puts);
            }
        }
        // After `committed`: a flushed mirror holds no pending content.
        for flush in flushes {
            if let Op::Flush(done) = flush {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::serialized_content_hash;
    use serde_json::json;

    pub(crate) fn entry(id: &str, rev: &str, content: Value) -> CacheEntry {
        let errors = json!([]);
        let text = JsonText::of(&content);
        CacheEntry {
            id: id.into(),
            rev: rev.into(),
            domain: id.split(':').next().unwrap().into(),
            key: id.split_once(':').unwrap().1.into(),
            hash: serialized_content_hash(text.as_str().as_bytes(), &errors, false),
            content: Content::Text(text),
            errors,
            stale: false,
            bytes: 100,
        }
    }

    fn all(store: &Store) -> Vec<(String, Record)> {
        let mut found = Vec::new();
        store.load(|id, record| found.push((id, record))).unwrap();
        found
    }

    #[test]
    fn records_and_checkpoint_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.checkpoint().unwrap(), None);
        let a = entry(
            "phones:unit:a",
            "1-a",
            json!({"files": {"x": {"body": "é\n"}}}),
        );
        let checkpoint = Checkpoint {
            db: "caldera_cache".into(),
            marker: "m".into(),
            seq: json!("12-g1AA"),
        };
        store
            .apply(&[
                Op::Put(Arc::new(a.clone())),
                Op::Delete {
                    id: "phones:unit:b".into(),
                    generation: 3,
                },
                Op::Checkpoint(Some(checkpoint.clone())),
            ])
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(checkpoint));
        assert_eq!(
            all(&store),
            [
                ("phones:unit:a".to_string(), Record::Live(a.clone())),
                (
                    "phones:unit:b".to_string(),
                    Record::Deleted { generation: 3 }
                ),
            ]
        );
        assert_eq!(store.get("phones:unit:a").unwrap(), Some(Record::Live(a)));
        store
            .apply(&[
                Op::Checkpoint(None),
                Op::Retain(Arc::new(["phones:unit:b".to_string()].into())),
            ])
            .unwrap();
        assert_eq!(store.checkpoint().unwrap(), None);
        assert_eq!(all(&store).len(), 1);
    }

    #[test]
    fn a_second_process_cannot_open_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let _first = Store::open(&path).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::InUse)));
    }

    /// A file that is not a store, or a store whose bytes were changed, is
    /// detected and rebuilt empty; nothing of it is returned.
    #[test]
    fn damaged_files_are_detected_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        std::fs::write(&path, b"not a database at all, just text").unwrap();
        let (store, why) = Store::open_or_rebuild(&path).unwrap();
        assert!(why.is_some(), "garbage is reported");
        assert!(all(&store).is_empty());
        let body = "x".repeat(3000);
        store
            .apply(&[Op::Put(Arc::new(entry(
                "phones:unit:a",
                "1-a",
                json!({"body": body}),
            )))])
            .unwrap();
        drop(store);
        // Change one byte of the record's content in place.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(100)
            .position(|w| w.iter().all(|&b| b == b'x'))
            .expect("the content is in the file");
        bytes[at + 50] = b'y';
        std::fs::write(&path, &bytes).unwrap();
        let store = Store::open(&path);
        let damaged = match store {
            Err(StoreError::Corrupt(_)) => true,
            Ok(store) => {
                let mut failed = store.load(|_, _| {}).is_err();
                failed |= store.get("phones:unit:a").is_err();
                failed
            }
            Err(other) => panic!("unexpected {other}"),
        };
        assert!(damaged, "the edited record is never returned as good");
    }

    #[test]
    fn a_truncated_file_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        let ops: Vec<Op> = (0..200)
            .map(|n| {
                Op::Put(Arc::new(entry(
                    &format!("sysconf:c{n}"),
                    "1-a",
                    json!({"n": n, "pad": "p".repeat(500)}),
                )))
            })
            .collect();
        store.apply(&ops).unwrap();
        drop(store);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 3).unwrap();
        drop(file);
        let (store, why) = match Store::open_or_rebuild(&path) {
            Ok(opened) => opened,
            Err(err) => panic!("a truncated store must be rebuilt, not fail: {err}"),
        };
        let mut loaded = 0;
        let result = store.load(|_, _| loaded += 1);
        assert!(
            why.is_some() || result.is_err() || loaded == 0,
            "a truncated store is not loaded as if whole ({loaded} records)"
        );
    }

    #[test]
    fn the_writer_reports_committed_entries_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let (seen_tx, seen_rx) = mpsc::channel();
        let (tx, _writer) = spawn_writer(store.clone(), move |entries| {
            for e in entries {
                seen_tx.send(e.id.clone()).unwrap();
            }
        });
        for n in 0..50 {
            tx.send(Op::Put(Arc::new(entry(
                &format!("sysconf:{n}"),
                "1-a",
                json!(n),
            ))))
            .unwrap();
        }
        let seen: Vec<String> = (0..50).map(|_| seen_rx.recv().unwrap()).collect();
        let wanted: Vec<String> = (0..50).map(|n| format!("sysconf:{n}")).collect();
        assert_eq!(seen, wanted);
        assert_eq!(all(&store).len(), 50);
    }
}
