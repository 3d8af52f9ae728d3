//! One database's follower task: wait for the database, load it whole, follow
//! its feed, and start over when the database is deleted or re-created.
//!
//! Invariants:
//! * a `since` sent to CouchDB always came from this incarnation's own feed
//!   (a new incarnation is loaded from scratch);
//! * a checkpoint is saved only for a sequence the consumer reported durable,
//!   through the channel that came with this incarnation's `Replace`;
//! * on shutdown the follower stops reading but keeps saving checkpoints
//!   until the consumer lets go of the channel, so the last durable position
//!   is never lost.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::checkpoint::{self, Checkpointer};
use super::{Board, FeedEvent, FeedState};
use crate::config::{FeedConfig, FeedMode};
use crate::couch::retry::Backoff;
use crate::couch::{
    ChangesStream, Db, Error, ErrorKind, FeedTimeouts, Known, Line, Page, Result, Row, Seq,
};
use crate::lifecycle::readiness::Readiness;
use crate::rebuild::index::{SourceDoc, SourceId};
use crate::telemetry::metrics::Metrics;

/// Everything a follower needs; `run` consumes it.
pub struct Follower {
    pub source: SourceId,
    pub db: Db,
    pub node: String,
    pub config: FeedConfig,
    /// Whether to save checkpoints (source databases) or not (the cache
    /// database, whose consumer is the mirror).
    pub checkpoints: bool,
    pub sink: mpsc::Sender<FeedEvent>,
    pub board: Arc<Board>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Revisions the consumer already holds, skipped unparsed on a
    /// continuous feed (the mirror's own writes echoed by the cache feed).
    pub known: Option<Known>,
    /// Where the consumer's own copy of the database stands (the mirror's
    /// on-disk store): followed from there, without a load, when it is of
    /// the database's current incarnation.
    pub resume: Option<Resume>,
    /// Whether a load is sent as `Reloading`, one `Change` per document
    /// and `Loaded` (the mirror: never all documents in memory at once),
    /// rather than one `Replace`.
    pub streamed: bool,
    /// Start looking at the database only once this turns true: the
    /// databases the daemon creates itself (the edge store's), so the first
    /// look finds them with their seed documents instead of reporting them
    /// missing until the next `feeds.missing_db_poll_ms` while writes land.
    pub after: Option<watch::Receiver<bool>>,
}

/// A position the consumer already holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub marker: String,
    pub seq: Seq,
}

/// The incarnation of the database this follower has loaded.
struct Session {
    marker: String,
    since: Seq,
    checkpointer: Option<Checkpointer>,
    durable: watch::Receiver<Option<Seq>>,
}

/// Why a follow round ended without an error.
enum Ended {
    /// Reopen the feed (rotation, end of feed).
    Reconnect,
    /// The database is gone or is another incarnation.
    Reset,
    Cancelled,
}

impl Follower {
    /// The readiness component of this feed (`feed:<source>`).
    pub fn component(&self) -> String {
        format!("feed:{}", self.source)
    }

    fn set_state(&self, state: FeedState, error: Option<String>) {
        self.board.update(&self.source, self.db.name(), |s| {
            s.state = state;
            if error.is_some() || state == FeedState::Live {
                s.last_error = error;
            }
        });
    }

    /// Runs until `token` is cancelled and the consumer has let go.
    pub async fn run(mut self, token: CancellationToken) {
        let mut resume = self.resume.take();
        self.readiness.register(&self.component(), "not loaded yet");
        self.metrics.register_feed(self.db.name());
        self.set_state(FeedState::Starting, None);
        if let Some(mut after) = self.after.clone() {
            // A dropped sender means the preparation gave up: follow anyway.
            tokio::select! {
                () = token.cancelled() => {}
                _ = after.wait_for(|done| *done) => {}
            }
        }
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        let mut session: Option<Session> = None;
        let mut announced_missing = false;
        while !token.is_cancelled() {
            // Shutdown must not wait for whatever the round is waiting on:
            // pouchdb-server sends a quiet feed's headers only with the
            // first heartbeat (30 s by default, longer than the grace
            // period), and a request to an unreachable server runs to its
            // deadline. Dropping the round is safe: the session keeps its
            // position and the durable channel, drained below.
            let round = tokio::select! {
                biased;
                () = token.cancelled() => break,
                round = self.round(&mut session, &mut resume, &mut announced_missing, &token) => round,
            };
            match round {
                Ok(progress) => {
                    if progress {
                        backoff.reset();
                    }
                }
                Err(err) => {
                    self.failed(&err);
                    if !backoff.wait(err.kind, &token).await {
                        break;
                    }
                }
            }
        }
        self.metrics
            .feed_connected
            .get_or_create(&Metrics::db(self.db.name()))
            .set(0);
        if let Some(session) = session {
            self.drain_checkpoints(session).await;
        }
        self.set_state(FeedState::Stopped, None);
    }

    fn failed(&self, err: &Error) {
        tracing::warn!(db = self.db.name(), error = %err, "feed interrupted, retrying");
        self.metrics
            .feed_connected
            .get_or_create(&Metrics::db(self.db.name()))
            .set(0);
        // Every failure is followed by a reconnection attempt: count it with
        // the planned reopenings, so a flapping server shows in one series.
        self.count_reconnect();
        self.readiness.set(
            &self.component(),
            Err(format!("cannot follow {}: {err}", self.db.name())),
        );
        self.set_state(FeedState::Retrying, Some(err.to_string()));
    }

    /// One attempt: check the database, (re)load when needed, follow until
    /// something ends the feed. Returns whether progress was made.
    async fn round(
        &self,
        session: &mut Option<Session>,
        resume: &mut Option<Resume>,
        announced_missing: &mut bool,
        token: &CancellationToken,
    ) -> Result<bool> {
        if self.db.info().await?.is_none() {
            if session.take().is_some() || !*announced_missing {
                self.reset_to_missing(token).await;
                *announced_missing = true;
            } else {
                // Back after an error (an outage) and still missing: a
                // missing database counts as caught up again.
                self.readiness.set(&self.component(), Ok(()));
                self.board.update(&self.source, self.db.name(), |s| {
                    s.state = FeedState::Missing;
                    s.last_error = None;
                });
            }
            tokio::select! {
                () = token.cancelled() => {}
                () = tokio::time::sleep(self.config.missing_db_poll) => {}
            }
            return Ok(true);
        }
        let marker = checkpoint::marker(&self.db).await?;
        if session.as_ref().is_some_and(|s| s.marker != marker) {
            tracing::warn!(
                db = self.db.name(),
                "the database was re-created; reloading it from scratch"
            );
            self.count_reset();
            *session = None;
        }
        if session.is_none()
            && let Some(resume) = self.resume_from(resume.take(), &marker)
        {
            *session = self.catch_up(resume, token).await?;
            *announced_missing = false;
            if session.is_none() {
                return Ok(false);
            }
        }
        if session.is_none() {
            *session = self.load(marker, token).await?;
            *announced_missing = false;
            if session.is_none() {
                return Ok(false);
            }
        }
        let current = session.as_mut().expect("loaded above");
        let ended = match self.follow(current, token).await {
            // The server rejects our position (it should not, as it came from
            // its own feed): the only safe move is a fresh load.
            Err(err) if err.status == Some(400) => {
                tracing::warn!(db = self.db.name(), error = %err, "the feed position was refused; reloading");
                *session = None;
                return Err(err);
            }
            other => other?,
        };
        match ended {
            Ended::Reconnect => self.count_reconnect(),
            Ended::Reset => {
                self.count_reset();
                tracing::warn!(
                    db = self.db.name(),
                    "the database was deleted or re-created; starting over"
                );
                *session = None;
            }
            Ended::Cancelled => {}
        }
        Ok(true)
    }

    fn count_reconnect(&self) {
        self.metrics
            .feed_reconnects
            .get_or_create(&Metrics::db(self.db.name()))
            .inc();
        self.board
            .update(&self.source, self.db.name(), |s| s.reconnects += 1);
    }

    fn count_reset(&self) {
        self.metrics
            .feed_resets
            .get_or_create(&Metrics::db(self.db.name()))
            .inc();
        self.board
            .update(&self.source, self.db.name(), |s| s.resets += 1);
    }

    /// Tells the consumer the database is empty (missing): its outputs go.
    async fn reset_to_missing(&self, token: &CancellationToken) {
        tracing::info!(
            db = self.db.name(),
            "database does not exist; waiting for it"
        );
        let event = FeedEvent::Replace {
            source: self.source.clone(),
            docs: BTreeMap::new(),
            seq: None,
            checkpoint: None,
        };
        self.send(event, token).await;
        self.readiness.set(&self.component(), Ok(()));
        self.metrics
            .feed_connected
            .get_or_create(&Metrics::db(self.db.name()))
            .set(0);
        self.board.update(&self.source, self.db.name(), |s| {
            s.state = FeedState::Missing;
            s.loaded = true;
            s.since = None;
            s.last_error = None;
        });
    }

    /// The resume position, taken once (a later load starts from scratch),
    /// when it belongs to the incarnation `marker`.
    fn resume_from(&self, resume: Option<Resume>, marker: &str) -> Option<Resume> {
        let resume = resume?;
        if resume.marker == marker {
            return Some(resume);
        }
        tracing::info!(
            db = self.db.name(),
            "the database is another incarnation than the one held; loading it"
        );
        None
    }

    /// Delivers every change after `resume.seq`, page by page, then
    /// `Loaded`: the consumer is then as current as a fresh load.
    async fn catch_up(&self, resume: Resume, token: &CancellationToken) -> Result<Option<Session>> {
        self.set_state(FeedState::Loading, None);
        let started = Instant::now();
        let mut since = resume.seq;
        let mut changes = 0;
        loop {
            if token.is_cancelled() {
                return Ok(None);
            }
            let page = self
                .db
                .changes_page(&since, self.config.load_page_size)
                .await?;
            let count = page.rows.len();
            for row in page.rows {
                self.deliver(row, token).await;
            }
            changes += count;
            since = page.last_seq;
            if count == 0 {
                break;
            }
        }
        tracing::info!(db = self.db.name(), changes, elapsed = ?started.elapsed(), "resumed from the held position");
        self.loaded(resume.marker, since, token).await
    }

    /// A streamed load: `Reloading`, each document as a `Change`, `Loaded`.
    async fn stream_load(
        &self,
        marker: String,
        token: &CancellationToken,
    ) -> Result<Option<Session>> {
        let started = Instant::now();
        let reloading = FeedEvent::Reloading {
            source: self.source.clone(),
        };
        if !self.send(reloading, token).await {
            return Ok(None);
        }
        let mut since = Seq::from(0);
        let mut docs = 0;
        loop {
            if token.is_cancelled() {
                return Ok(None);
            }
            let page = self
                .db
                .changes_page(&since, self.config.load_page_size)
                .await?;
            let count = page.rows.len();
            for row in page.rows {
                self.deliver_loaded(row, token).await;
            }
            docs += count;
            since = page.last_seq;
            if count == 0 {
                break;
            }
        }
        tracing::info!(db = self.db.name(), docs, elapsed = ?started.elapsed(), "database loaded");
        self.loaded(marker, since, token).await
    }

    /// Tells the consumer it holds the database as of `since`.
    async fn loaded(
        &self,
        marker: String,
        since: Seq,
        token: &CancellationToken,
    ) -> Result<Option<Session>> {
        let (durable_tx, durable) = watch::channel(None);
        let event = FeedEvent::Loaded {
            source: self.source.clone(),
            seq: since.clone(),
            marker: marker.clone(),
            checkpoint: Some(durable_tx),
        };
        if !self.send(event, token).await {
            return Ok(None);
        }
        Ok(Some(self.session(marker, since, durable)))
    }

    fn session(
        &self,
        marker: String,
        since: Seq,
        durable: watch::Receiver<Option<Seq>>,
    ) -> Session {
        let checkpointer = self.checkpoints.then(|| {
            Checkpointer::new(
                self.db.clone(),
                &self.node,
                marker.clone(),
                self.config.checkpoint_interval,
            )
        });
        self.board.update(&self.source, self.db.name(), |s| {
            s.loaded = true;
            s.since = Some(since.clone());
        });
        Session {
            marker,
            since,
            checkpointer,
            durable,
        }
    }

    /// Reads the whole database through `_changes` pages (one consistent
    /// sequence to follow from, design documents left out) and hands it over.
    async fn load(&self, marker: String, token: &CancellationToken) -> Result<Option<Session>> {
        self.set_state(FeedState::Loading, None);
        if self.streamed {
            return self.stream_load(marker, token).await;
        }
        let started = Instant::now();
        let Some((docs, since)) =
            super::read_whole(&self.db, self.config.load_page_size, token).await?
        else {
            return Ok(None);
        };
        tracing::info!(db = self.db.name(), docs = docs.len(), elapsed = ?started.elapsed(), "database loaded");
        let (durable_tx, durable) = watch::channel(None);
        let event = FeedEvent::Replace {
            source: self.source.clone(),
            docs,
            seq: Some(since.clone()),
            checkpoint: Some(durable_tx),
        };
        if !self.send(event, token).await {
            return Ok(None);
        }
        Ok(Some(self.session(marker, since, durable)))
    }

    /// Follows the feed from `session.since` until it ends, rotates, the
    /// database changes incarnation, or shutdown.
    async fn follow(&self, session: &mut Session, token: &CancellationToken) -> Result<Ended> {
        let timeouts = FeedTimeouts {
            headers: self.config.inactivity_timeout,
            inactivity: self.config.inactivity_timeout,
        };
        if self.caught_up(&session.since).await? {
            self.readiness.set(&self.component(), Ok(()));
        }
        let mut feed = match self.config.mode {
            FeedMode::Continuous => {
                let stream = self
                    .db
                    .follow(&session.since, self.config.heartbeat, timeouts)
                    .await?;
                FeedReader::Continuous(match &self.known {
                    Some(known) => stream.skip_known(known.clone()),
                    None => stream,
                })
            }
            FeedMode::Longpoll => FeedReader::longpoll(
                self.db.clone(),
                session.since.clone(),
                &self.config,
                timeouts,
            ),
        };
        self.readiness.set(&self.component(), Ok(()));
        self.metrics
            .feed_connected
            .get_or_create(&Metrics::db(self.db.name()))
            .set(1);
        self.set_state(FeedState::Live, None);
        let rotate_at = tokio::time::Instant::now() + self.config.rotate_after;
        let mut verify =
            tokio::time::interval(self.config.missing_db_poll.max(Duration::from_secs(1)));
        verify.tick().await;
        loop {
            let save_at = session.checkpointer.as_ref().and_then(Checkpointer::due_at);
            let save_at = save_at.map_or_else(
                || rotate_at + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
            tokio::select! {
                biased;
                () = token.cancelled() => return Ok(Ended::Cancelled),
                () = tokio::time::sleep_until(rotate_at) => return Ok(Ended::Reconnect),
                changed = session.durable.changed() => {
                    if changed.is_ok() {
                        let seq = session.durable.borrow_and_update().clone();
                        if let (Some(seq), Some(checkpointer)) = (seq, session.checkpointer.as_mut()) {
                            checkpointer.offer(seq);
                        }
                    } else {
                        // The consumer dropped this incarnation: it has moved on.
                        return Ok(Ended::Cancelled);
                    }
                }
                () = tokio::time::sleep_until(save_at) => self.save_checkpoint(session).await,
                _ = verify.tick() => {
                    if !self.same_incarnation(&session.marker).await? {
                        return Ok(Ended::Reset);
                    }
                }
                line = feed.next() => match line? {
                    Some(Line::Row(row)) => {
                        // `seq: null` (CouchDB's seq_interval) is not a position.
                        if !row.seq.is_null() {
                            session.since = row.seq.clone();
                        }
                        self.deliver(row, token).await;
                    }
                    Some(Line::Known { seq }) => {
                        if !seq.is_null() {
                            session.since = seq.clone();
                        }
                        self.count_change(&seq);
                    }
                    Some(Line::End { last_seq }) => {
                        session.since = last_seq;
                        return Ok(Ended::Reconnect);
                    }
                    None => return Ok(Ended::Reconnect),
                },
            }
        }
    }

    /// Whether the database has no change after `since`. Asked with a
    /// normal feed, which answers at once: pouchdb-server sends a continuous
    /// or longpoll feed's headers only with its first row or heartbeat, so
    /// waiting for them would keep `/readyz` false for up to a heartbeat
    /// (30 s by default) after every start and reconnection.
    async fn caught_up(&self, since: &Seq) -> Result<bool> {
        Ok(self.db.changes_page(since, 1).await?.rows.is_empty())
    }

    async fn same_incarnation(&self, marker: &str) -> Result<bool> {
        if self.db.info().await?.is_none() {
            return Ok(false);
        }
        Ok(checkpoint::read_marker(&self.db).await?.as_deref() == Some(marker))
    }

    fn count_change(&self, seq: &Seq) {
        self.metrics
            .feed_changes
            .get_or_create(&Metrics::db(self.db.name()))
            .inc();
        self.board.update(&self.source, self.db.name(), |s| {
            s.changes += 1;
            s.since = Some(seq.clone());
        });
    }

    async fn deliver(&self, row: Row, token: &CancellationToken) {
        self.count_change(&row.seq);
        self.deliver_loaded(row, token).await;
    }

    /// Sends a row as a `Change` (not counted: part of a load).
    async fn deliver_loaded(&self, row: Row, token: &CancellationToken) {
        let seq = row.seq.clone();
        // A deletion keeps its revision: the mirror orders a deletion
        // against the revision it holds by its generation.
        let deleted_rev = row.rev.clone();
        let Some((id, doc)) = source_doc(row) else {
            return;
        };
        let (rev, body) = match doc {
            Some(doc) => (doc.rev, Some(doc.body)),
            None => (deleted_rev, None),
        };
        let event = FeedEvent::Change {
            source: self.source.clone(),
            id,
            rev,
            body,
            seq,
            received: Instant::now(),
        };
        self.send(event, token).await;
    }

    async fn save_checkpoint(&self, session: &mut Session) {
        let Some(checkpointer) = session.checkpointer.as_mut() else {
            return;
        };
        match checkpointer.save().await {
            Ok(Some(seq)) => {
                self.metrics
                    .checkpoints
                    .get_or_create(&Metrics::db(self.db.name()))
                    .inc();
                self.board
                    .update(&self.source, self.db.name(), |s| s.checkpoint = Some(seq));
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(db = self.db.name(), error = %err, "checkpoint not saved; will retry")
            }
        }
    }

    /// After shutdown: keep taking durable sequences until the consumer is
    /// done, then save the last one.
    async fn drain_checkpoints(&self, mut session: Session) {
        if session.checkpointer.is_none() {
            return;
        }
        while session.durable.changed().await.is_ok() {
            let seq = session.durable.borrow_and_update().clone();
            if let (Some(seq), Some(checkpointer)) = (seq, session.checkpointer.as_mut()) {
                checkpointer.offer(seq);
            }
        }
        let last = session.durable.borrow().clone();
        if let (Some(seq), Some(checkpointer)) = (last, session.checkpointer.as_mut()) {
            checkpointer.offer(seq);
        }
        self.save_checkpoint(&mut session).await;
    }

    /// Sends to the consumer unless shutdown comes first.
    async fn send(&self, event: FeedEvent, token: &CancellationToken) -> bool {
        tokio::select! {
            sent = self.sink.send(event) => sent.is_ok(),
            () = token.cancelled() => false,
        }
    }
}

/// A feed row as an index entry: `None` for design documents, `(id, None)`
/// for deletions.
pub(super) fn source_doc(row: Row) -> Option<(String, Option<SourceDoc>)> {
    if row.id.starts_with("_design/") {
        return None;
    }
    let doc = match (row.deleted, row.body) {
        (false, Some(body)) => Some(SourceDoc {
            id: row.id.clone(),
            rev: row.rev,
            body,
        }),
        _ => None,
    };
    Some((row.id, doc))
}

type PageFuture = Pin<Box<dyn Future<Output = Result<Page>> + Send>>;

/// A feed in either mode, read line by line. `next` is cancel-safe: a
/// longpoll request in flight survives the caller's `select!`.
enum FeedReader {
    Continuous(ChangesStream),
    Longpoll {
        db: Db,
        since: Seq,
        heartbeat: Duration,
        limit: u64,
        timeouts: FeedTimeouts,
        rows: VecDeque<Row>,
        in_flight: Option<PageFuture>,
    },
}

impl FeedReader {
    fn longpoll(db: Db, since: Seq, config: &FeedConfig, timeouts: FeedTimeouts) -> FeedReader {
        FeedReader::Longpoll {
            db,
            since,
            heartbeat: config.heartbeat,
            limit: config.load_page_size,
            timeouts,
            rows: VecDeque::new(),
            in_flight: None,
        }
    }

    async fn next(&mut self) -> Result<Option<Line>> {
        match self {
            FeedReader::Continuous(stream) => stream.next_line().await,
            FeedReader::Longpoll {
                db,
                since,
                heartbeat,
                limit,
                timeouts,
                rows,
                in_flight,
            } => loop {
                if let Some(row) = rows.pop_front() {
                    return Ok(Some(Line::Row(row)));
                }
                let request = in_flight.get_or_insert_with(|| {
                    let (db, since, heartbeat, limit, timeouts) =
                        (db.clone(), since.clone(), *heartbeat, *limit, *timeouts);
                    // The server may ignore `timeout`; this deadline bounds a round.
                    let deadline = timeouts.inactivity.max(heartbeat * 2);
                    Box::pin(async move {
                        db.longpoll(&since, heartbeat, limit, timeouts, deadline)
                            .await
                    })
                });
                let page = request.as_mut().await;
                *in_flight = None;
                match page {
                    Ok(page) => {
                        *since = page.last_seq.clone();
                        rows.extend(page.rows);
                    }
                    // A round that reached its deadline without changes is normal.
                    Err(err)
                        if err.is(ErrorKind::Transient) && err.message.contains("deadline") => {}
                    Err(err) => return Err(err),
                }
            },
        }
    }
}
