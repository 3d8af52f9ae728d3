//! Database followers: one task per followed database. A follower waits for
//! its database to exist, loads it whole, then follows its `_changes` feed,
//! reporting everything as `FeedEvent`s to one consumer (the rebuild engine
//! for source databases, the mirror for the cache database).
//!
//! The follower also owns its database's `_local` documents: the marker that
//! reveals a deleted or re-created database, and the checkpoint saved once
//! the consumer reports a sequence durable.

mod checkpoint;
pub mod dynamic;
mod follower;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use follower::{Follower, Resume};

use crate::couch::{Body, Db, Seq};
use crate::rebuild::index::{SourceDoc, SourceId};

/// Where the consumer reports the last sequence whose effects are durable;
/// the follower saves it as the checkpoint. A new channel comes with every
/// `Replace`, so a sequence of a database's earlier incarnation can never be
/// saved into the new one.
pub type CheckpointTx = watch::Sender<Option<Seq>>;

/// A database the engine wants followed beyond the configured ones (see
/// `dynamic`). A new `incarnation` means "start a fresh follower", even for
/// the same database (the engine dropped and re-registered the source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedFeed {
    pub db: String,
    pub incarnation: u64,
}

/// Every dynamic source to follow, by logical source id.
pub type WantedFeeds = BTreeMap<SourceId, WantedFeed>;

/// What a follower tells its consumer.
#[derive(Debug)]
pub enum FeedEvent {
    /// The whole content of the database: the initial load, a reload after
    /// the database was re-created, or nothing at all when it is missing.
    Replace {
        source: SourceId,
        docs: BTreeMap<String, SourceDoc>,
        seq: Option<Seq>,
        checkpoint: Option<CheckpointTx>,
    },
    /// One change from the feed (`body: None` for a deletion).
    Change {
        source: SourceId,
        id: String,
        rev: String,
        body: Option<Body>,
        seq: Seq,
        received: Instant,
    },
    /// A streamed load starts (`Follower::streamed`): the `Change`s that
    /// follow up to `Loaded` are the whole database, nothing else is.
    Reloading { source: SourceId },
    /// A streamed load, or the catch-up of a resumed position
    /// (`Follower::resume`), is complete: the consumer now holds the
    /// database as of `seq`, in the incarnation `marker`.
    Loaded {
        source: SourceId,
        seq: Seq,
        marker: String,
        checkpoint: Option<CheckpointTx>,
    },
    /// A document re-read out of band (a flush, a write through the API);
    /// `done` fires once the outputs depending on it are in the cache.
    Refresh {
        source: SourceId,
        id: String,
        rev: String,
        body: Option<Body>,
        done: oneshot::Sender<()>,
    },
}

/// What a follower is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedState {
    Starting,
    /// The database does not exist; it counts as caught up.
    Missing,
    Loading,
    Live,
    /// The last attempt failed; waiting to retry.
    Retrying,
    Stopped,
}

/// One follower's status, for `/v1/status`, readiness and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct FeedStatus {
    pub source: String,
    pub db: String,
    pub state: FeedState,
    /// The sequence the feed has read up to (opaque).
    pub since: Option<Value>,
    /// The last checkpoint saved.
    pub checkpoint: Option<Value>,
    pub last_error: Option<String>,
    pub changes: u64,
    pub reconnects: u64,
    pub resets: u64,
    /// Whether the database has been loaded since the follower started.
    pub loaded: bool,
}

/// The status of every follower.
#[derive(Default)]
pub struct Board {
    feeds: Mutex<BTreeMap<String, FeedStatus>>,
}

impl Board {
    pub fn snapshot(&self) -> Vec<FeedStatus> {
        self.lock().values().cloned().collect()
    }

    /// Forgets a feed that is no longer followed.
    pub fn remove(&self, source: &str) {
        self.lock().remove(source);
    }

    fn update(&self, source: &str, db: &str, change: impl FnOnce(&mut FeedStatus)) {
        let mut feeds = self.lock();
        let status = feeds
            .entry(source.to_string())
            .or_insert_with(|| FeedStatus {
                source: source.to_string(),
                db: db.to_string(),
                state: FeedState::Starting,
                since: None,
                checkpoint: None,
                last_error: None,
                changes: 0,
                reconnects: 0,
                resets: 0,
                loaded: false,
            });
        change(status);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FeedStatus>> {
        self.feeds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Every document of `db` read through `_changes` pages of `page_size`
/// (design documents left out), and the sequence to follow from; `None`
/// when `token` is cancelled first.
async fn read_whole(
    db: &Db,
    page_size: u64,
    token: &CancellationToken,
) -> crate::couch::Result<Option<(BTreeMap<String, SourceDoc>, Value)>> {
    let mut since = Value::from(0);
    let mut docs = BTreeMap::new();
    loop {
        if token.is_cancelled() {
            return Ok(None);
        }
        let page = db.changes_page(&since, page_size).await?;
        let count = page.rows.len();
        for row in page.rows {
            match follower::source_doc(row) {
                Some((id, Some(doc))) => {
                    docs.insert(id, doc);
                }
                Some((id, None)) => {
                    docs.remove(&id);
                }
                None => {}
            }
        }
        since = page.last_seq;
        if count == 0 {
            return Ok(Some((docs, since)));
        }
    }
}

/// Every document of a database (none when it does not exist), read as a
/// follower's initial load reads it: for the one-shot commands (`caldera
/// route`, `caldera render`) that build from CouchDB without the engine.
///
/// # Errors
/// A CouchDB request failed.
pub async fn load_database(db: &Db) -> crate::couch::Result<BTreeMap<String, Arc<SourceDoc>>> {
    if db.info().await?.is_none() {
        return Ok(BTreeMap::new());
    }
    let never = CancellationToken::new();
    let (docs, _) = read_whole(db, 1_000, &never).await?.unwrap_or_default();
    Ok(docs
        .into_iter()
        .map(|(id, doc)| (id, Arc::new(doc)))
        .collect())
}
