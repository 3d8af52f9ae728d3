//! The rebuild engine: one task that owns the index and the dependency map,
//! takes feed events in debounced batches, rebuilds exactly the outputs the
//! batch affects, hands them to the cache writer, and then reports the
//! batch's sequences durable (which lets followers checkpoint them).
//!
//! Start-up: nothing is built until every source this instance reads has
//! been loaded and the mirror of the cache database is warm; then one full
//! build covers every output a from-scratch build has, plus every output
//! the cache holds (so orphans are deleted), and only differences are
//! written. The same full pass runs again whenever the cache database is
//! re-created underneath us.
//!
//! Dynamic sources: after every batch the engine asks each builder which
//! extra databases it wants followed (`Builder::dynamic_sources`, e.g. the
//! ruleset databases the routing domain reads), registers new ones as not
//! loaded, drops the documents of those no longer wanted (so their readers
//! rebuild), and publishes the set on a `watch` channel for
//! `feeds::dynamic`. An output that read a registered source which has not
//! loaded yet is deferred, not written, until that source loads or goes.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::deps::{DepGraph, OutputId};
use super::index::{Dep, Index, Keyer, Reads, SourceDoc, SourceId};
use crate::cache::mirror::Mirror;
use crate::cache::writer::{Cancelled, Output, Writer, Written};
use crate::config::BuildConfig;
use crate::couch::{Seq, rev_generation};
use crate::domains::{Built, Domain, Issue};
use crate::feeds::{CheckpointTx, FeedEvent, WantedFeed, WantedFeeds};
use crate::lifecycle::readiness::Readiness;
use crate::telemetry::metrics::Metrics;

/// From this many outputs a batch is built on the worker threads.
const PARALLEL_THRESHOLD: usize = 256;

/// The most outputs built before they are written: bounds the memory a
/// full build holds (built contents are trees until the writer serialises
/// them) while keeping `_bulk_docs` requests and the worker threads full.
const FLUSH_CHUNK: usize = 4096;

/// A smaller batch goes to the worker threads when its outputs are expected
/// to take at least this long to build (a few routing tables do; a few
/// sysconf categories do not), which pays for starting the threads.
const PARALLEL_MIN_WORK: Duration = Duration::from_millis(2);

/// The readiness component: ready once the first full build is written.
pub const COMPONENT: &str = "engine";

/// The readiness component of the dynamic sources: ready once every
/// database the builders want followed (a ruleset's `database`) has loaded,
/// so no output (a routing table) is still deferred. Separate from
/// `COMPONENT`, which parts that need only the first build wait for.
pub const DYNAMIC_COMPONENT: &str = "dynamic_sources";

#[derive(Default)]
struct SourceState {
    loaded: bool,
    /// The sequence the index reflects.
    seq: Option<Seq>,
    checkpoint: Option<CheckpointTx>,
    /// Changes absorbed but not yet durable, and when the oldest arrived.
    unapplied: u64,
    oldest: Option<Instant>,
}

/// What the events absorbed since the last write require.
#[derive(Default)]
struct Batch {
    events: usize,
    dirty: BTreeSet<OutputId>,
    done: Vec<oneshot::Sender<()>>,
    received: Vec<Instant>,
}

pub struct Engine {
    domains: Vec<Domain>,
    config: BuildConfig,
    index: Index,
    deps: DepGraph,
    sources: BTreeMap<SourceId, SourceState>,
    writer: Writer,
    mirror: Arc<Mirror>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    /// A full pass is due (start-up, cache database re-created).
    full_build: bool,
    built_once: bool,
    /// The dynamic sources followed now, with the domains that want them.
    dynamic: BTreeMap<SourceId, (WantedFeed, BTreeSet<Domain>)>,
    incarnations: u64,
    wanted: watch::Sender<WantedFeeds>,
    /// Outputs that read a dynamic source not loaded yet.
    deferred: BTreeSet<OutputId>,
    /// Recent build time of one output, per domain (a moving average).
    build_cost: BTreeMap<Domain, Duration>,
}

impl Engine {
    pub fn new(
        domains: Vec<Domain>,
        config: BuildConfig,
        writer: Writer,
        mirror: Arc<Mirror>,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Engine {
        let sources = domains
            .iter()
            .flat_map(|d| d.builder().sources().iter())
            .map(|name| (SourceId::from(*name), SourceState::default()))
            .collect();
        readiness.register(COMPONENT, "initial build not done");
        readiness.register(DYNAMIC_COMPONENT, "initial build not done");
        let keyer_domains = domains.clone();
        let keyer: Keyer = Arc::new(move |source: &str, doc: &SourceDoc| {
            keyer_domains
                .iter()
                .flat_map(|d| d.builder().view_keys(source, doc))
                .collect()
        });
        let mut index = Index::with_keyer(keyer);
        index.share_texts_of(
            domains
                .iter()
                .flat_map(|d| d.builder().shared_sources().iter())
                .map(|name| SourceId::from(*name)),
        );
        Engine {
            domains,
            config,
            index,
            deps: DepGraph::default(),
            sources,
            writer,
            mirror,
            metrics,
            readiness,
            full_build: true,
            built_once: false,
            dynamic: BTreeMap::new(),
            incarnations: 0,
            wanted: watch::channel(WantedFeeds::new()).0,
            deferred: BTreeSet::new(),
            build_cost: BTreeMap::new(),
        }
    }

    /// The dynamic sources to follow, updated after every batch (for
    /// `feeds::dynamic`).
    pub fn wanted_feeds(&self) -> watch::Receiver<WantedFeeds> {
        self.wanted.subscribe()
    }

    /// The logical sources the engine needs followers for.
    pub fn sources(&self) -> Vec<SourceId> {
        self.sources.keys().cloned().collect()
    }

    /// Runs until `stop` fires, then writes what it already absorbed (unless
    /// `abort` fires first) and returns; dropping the checkpoint channels
    /// tells the followers to save their last checkpoints.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<FeedEvent>,
        stop: CancellationToken,
        abort: CancellationToken,
    ) {
        let mut reloads = self.mirror.subscribe_reloads();
        let mut mirror_loaded = self.mirror.subscribe_loaded();
        let mut batch = Batch::default();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => self.absorb(event, &mut batch),
                    None => break,
                },
                changed = reloads.changed() => {
                    if changed.is_err() { break; }
                    self.full_build = true;
                }
                changed = mirror_loaded.changed() => if changed.is_err() { break; },
            }
            self.collect(&mut events, &mut batch, &stop).await;
            self.sync_dynamic(&mut batch);
            if self.can_build() && self.flush(&mut batch, &abort).await.is_err() {
                return;
            }
            self.report_readiness();
        }
        // Shutdown: whatever the followers already handed over gets written.
        while let Ok(event) = events.try_recv() {
            self.absorb(event, &mut batch);
        }
        if self.can_build() && (batch.events > 0 || !batch.dirty.is_empty()) {
            let _ = self.flush(&mut batch, &abort).await;
        }
    }

    /// Debounce: keeps absorbing events for `build.debounce` or until the
    /// batch is full.
    async fn collect(
        &mut self,
        events: &mut mpsc::Receiver<FeedEvent>,
        batch: &mut Batch,
        stop: &CancellationToken,
    ) {
        let deadline = tokio::time::Instant::now() + self.config.debounce;
        while batch.events < self.config.max_batch {
            // Whatever is already queued is taken without waiting.
            match events.try_recv() {
                Ok(event) => {
                    self.absorb(event, batch);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => return,
                event = events.recv() => match event {
                    Some(event) => self.absorb(event, batch),
                    None => return,
                },
            }
        }
    }

    /// Static sources must all be loaded; dynamic ones defer their readers.
    fn can_build(&self) -> bool {
        self.mirror.is_loaded()
            && self
                .sources
                .iter()
                .all(|(id, s)| s.loaded || self.dynamic.contains_key(id))
    }

    /// Follows what the builders want now: registers new dynamic sources,
    /// drops the ones no longer wanted, publishes the set.
    fn sync_dynamic(&mut self, batch: &mut Batch) {
        let mut wanted: BTreeMap<SourceId, (String, BTreeSet<Domain>)> = BTreeMap::new();
        for domain in &self.domains {
            for (source, db) in domain.builder().dynamic_sources(&self.index) {
                let entry = wanted
                    .entry(SourceId::from(source))
                    .or_insert_with(|| (db, BTreeSet::new()));
                entry.1.insert(*domain);
            }
        }
        let gone: Vec<SourceId> = self
            .dynamic
            .iter()
            .filter(|(id, (feed, _))| wanted.get(*id).is_none_or(|(db, _)| *db != feed.db))
            .map(|(id, _)| id.clone())
            .collect();
        let mut changed = !gone.is_empty();
        for source in gone {
            tracing::info!(%source, "no longer following a dynamic source");
            self.dynamic.remove(&source);
            // Dropping the state drops its checkpoint channel: the follower
            // saves its last checkpoint and ends.
            self.sources.remove(&source);
            let old = self.index.drop_source(&source);
            self.touch_replaced(&source, &old, batch);
            self.release_deferred(batch);
        }
        for (source, (db, domains)) in wanted {
            if let Some((_, current)) = self.dynamic.get_mut(&source) {
                *current = domains;
                continue;
            }
            tracing::info!(%source, db, "following a dynamic source");
            self.writer.set_db_name(&source, &db);
            self.incarnations += 1;
            let feed = WantedFeed {
                db,
                incarnation: self.incarnations,
            };
            self.dynamic.insert(source.clone(), (feed, domains));
            self.sources.insert(source, SourceState::default());
            changed = true;
        }
        if changed {
            let feeds = self
                .dynamic
                .iter()
                .map(|(id, (feed, _))| (id.clone(), feed.clone()))
                .collect();
            self.wanted.send_replace(feeds);
        }
    }

    /// Deferred outputs are built again (and deferred again if they still
    /// wait for a source).
    fn release_deferred(&mut self, batch: &mut Batch) {
        batch.dirty.append(&mut self.deferred);
    }

    /// Whether a build read a dynamic source that has not loaded yet.
    fn waits_for_source(&self, deps: &BTreeSet<Dep>) -> bool {
        deps.iter().any(|dep| {
            let (Dep::Doc(source, _) | Dep::Source(source) | Dep::View(source, _)) = dep;
            self.dynamic.contains_key(source) && self.sources.get(source).is_none_or(|s| !s.loaded)
        })
    }

    /// Applies one event to the index and notes what it makes dirty.
    fn absorb(&mut self, event: FeedEvent, batch: &mut Batch) {
        batch.events += 1;
        match event {
            FeedEvent::Replace {
                source,
                docs,
                seq,
                checkpoint,
            } => self.replace(source, docs, seq, checkpoint, batch),
            // Only the mirror's follower streams its loads or resumes.
            FeedEvent::Reloading { .. } | FeedEvent::Loaded { .. } => {}
            FeedEvent::Change {
                source,
                id,
                rev,
                body,
                seq,
                received,
            } => {
                let Some(state) = self.sources.get_mut(&source) else {
                    return;
                };
                if !seq.is_null() {
                    state.seq = Some(seq);
                }
                state.unapplied += 1;
                state.oldest.get_or_insert(received);
                batch.received.push(received);
                let new = body.map(|body| SourceDoc {
                    id: id.clone(),
                    rev,
                    body,
                });
                self.put(&source, &id, new, batch);
                self.note_pending(&source);
            }
            FeedEvent::Refresh {
                source,
                id,
                rev,
                body,
                done,
            } => {
                batch.done.push(done);
                if !self.sources.contains_key(&source) {
                    return;
                }
                let current = self
                    .index
                    .get(&source, &id)
                    .map(|d| (rev_generation(&d.rev), d.rev.clone()));
                let incoming = (rev_generation(&rev), rev.clone());
                if current.as_ref().is_none_or(|current| incoming > *current) {
                    let new = body.map(|body| SourceDoc {
                        id: id.clone(),
                        rev,
                        body,
                    });
                    self.put(&source, &id, new, batch);
                } else {
                    // Nothing newer: still rebuild, so a flush repairs the cache.
                    let doc = self.index.get(&source, &id).cloned();
                    self.mark_roots(&source, &id, doc.as_deref(), batch);
                }
            }
        }
    }

    fn replace(
        &mut self,
        source: SourceId,
        docs: BTreeMap<String, SourceDoc>,
        seq: Option<Seq>,
        checkpoint: Option<CheckpointTx>,
        batch: &mut Batch,
    ) {
        let Some(state) = self.sources.get_mut(&source) else {
            return;
        };
        let first_load = !state.loaded;
        state.loaded = true;
        state.seq = seq;
        state.checkpoint = checkpoint;
        state.unapplied = 0;
        state.oldest = None;
        let new: BTreeMap<String, Arc<SourceDoc>> = docs
            .into_iter()
            .map(|(id, doc)| (id, Arc::new(doc)))
            .collect();
        let old = self.index.replace(&source, new);
        if first_load && self.dynamic.contains_key(&source) {
            self.release_deferred(batch);
        }
        self.touch_replaced(&source, &old, batch);
    }

    /// Marks what depends on a source whose documents were swapped (`old`
    /// is what it held before; the index holds the new content).
    fn touch_replaced(
        &mut self,
        source: &SourceId,
        old: &BTreeMap<String, Arc<SourceDoc>>,
        batch: &mut Batch,
    ) {
        let source = source.clone();
        if self.full_build {
            return;
        }
        let mut changed: Vec<(String, Option<Arc<SourceDoc>>)> = Vec::new();
        for (id, doc) in old {
            if self
                .index
                .get(&source, id)
                .is_none_or(|new| new.rev != doc.rev)
            {
                changed.push((id.clone(), Some(doc.clone())));
            }
        }
        for doc in self.index.docs(&source) {
            if old.get(&doc.id).is_none_or(|old| old.rev != doc.rev) {
                changed.push((doc.id.clone(), None));
            }
        }
        for (id, old_doc) in &changed {
            self.touch(&Dep::Doc(source.clone(), id.clone()), batch);
            self.mark_roots(&source, id, old_doc.as_deref(), batch);
            let new_doc = self.index.get(&source, id).cloned();
            self.mark_roots(&source, id, new_doc.as_deref(), batch);
            let old_doc = old_doc.clone().or_else(|| old.get(id).cloned());
            self.touch_views(&source, old_doc.as_deref(), new_doc.as_deref(), batch);
        }
        if !changed.is_empty() {
            self.touch(&Dep::Source(source), batch);
        }
    }

    /// Stores (or removes) one document and marks what depends on it.
    fn put(&mut self, source: &SourceId, id: &str, new: Option<SourceDoc>, batch: &mut Batch) {
        let old = match new {
            Some(doc) => self.index.upsert(source, doc),
            None => self.index.remove(source, id),
        };
        if self.full_build {
            return;
        }
        self.mark_roots(source, id, old.as_deref(), batch);
        let current = self.index.get(source, id).cloned();
        self.mark_roots(source, id, current.as_deref(), batch);
        self.touch(&Dep::Doc(source.clone(), id.to_string()), batch);
        self.touch(&Dep::Source(source.clone()), batch);
        self.touch_views(source, old.as_deref(), current.as_deref(), batch);
    }

    fn touch(&self, dep: &Dep, batch: &mut Batch) {
        batch.dirty.extend(self.deps.dependents(dep).cloned());
    }

    /// Touches every view key the document was or is filed under.
    fn touch_views(
        &self,
        source: &SourceId,
        old: Option<&SourceDoc>,
        new: Option<&SourceDoc>,
        batch: &mut Batch,
    ) {
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for doc in [old, new].into_iter().flatten() {
            keys.extend(self.index.view_keys(source, doc));
        }
        for key in keys {
            self.touch(&Dep::View(source.clone(), key), batch);
        }
    }

    fn mark_roots(&self, source: &str, id: &str, doc: Option<&SourceDoc>, batch: &mut Batch) {
        for domain in &self.domains {
            let builder = domain.builder();
            let dynamic = self
                .dynamic
                .get(source)
                .is_some_and(|(_, domains)| domains.contains(domain));
            if dynamic || builder.sources().contains(&source) {
                batch.dirty.extend(
                    builder
                        .roots(source, id, doc)
                        .into_iter()
                        .map(|key| (*domain, key)),
                );
            }
        }
    }

    fn note_pending(&self, source: &SourceId) {
        if let Some(state) = self.sources.get(source) {
            let label = Metrics::db(source);
            self.metrics
                .feed_pending
                .get_or_create(&label)
                .set(state.unapplied as i64);
            let lag = state.oldest.map_or(0.0, |t| t.elapsed().as_secs_f64());
            self.metrics.feed_lag_seconds.get_or_create(&label).set(lag);
        }
    }

    /// Builds and writes the batch; on success the batch's sequences become
    /// durable.
    async fn flush(
        &mut self,
        batch: &mut Batch,
        abort: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let keys: Vec<OutputId> = if self.full_build {
            self.every_output()
        } else {
            std::mem::take(&mut batch.dirty).into_iter().collect()
        };
        let started = Instant::now();
        let full = self.full_build;
        if full {
            self.mirror.record_feed_changes();
        }
        let seqs: BTreeMap<SourceId, Seq> = self
            .sources
            .iter()
            .filter_map(|(id, s)| Some((id.clone(), s.seq.clone()?)))
            .collect();
        let mut built = 0;
        let mut written = Written::default();
        // Built in bounded chunks, each written before the next is built: a
        // full build of a million outputs never holds them all as trees.
        // Nothing is durable until the last chunk is written.
        let mut result = Ok(());
        for chunk in keys.chunks(FLUSH_CHUNK) {
            let mut outputs = self.build(chunk);
            if full {
                self.keep_newer_writes(&mut outputs);
            }
            built += outputs.len();
            match self.writer.write(outputs, &seqs, abort).await {
                Ok(chunk_written) => written += chunk_written,
                Err(cancelled) => {
                    result = Err(cancelled);
                    break;
                }
            }
        }
        if full {
            // Stops noting the feed's changes (the set would grow for good).
            self.mirror.take_feed_changes();
        }
        result?;
        if self.full_build || built > 0 {
            tracing::debug!(built, ?written, elapsed = ?started.elapsed(), full = self.full_build, "batch written");
        }
        if self.full_build {
            tracing::info!(outputs = built, ?written, elapsed = ?started.elapsed(), "full build written");
        }
        self.full_build = false;
        batch.dirty.clear();
        self.durable(std::mem::take(batch));
        if !self.built_once {
            self.built_once = true;
            self.readiness.set(COMPONENT, Ok(()));
        }
        Ok(())
    }

    /// Drops from a full build the outputs another instance stored while
    /// it was being built: a full build is made from the sources as they
    /// were when it began, and those writes come from later ones, so
    /// storing over them would serve older content (for good, if this
    /// instance died before catching up). The changes this instance has
    /// not absorbed yet rebuild those outputs in the next batches.
    fn keep_newer_writes(&self, outputs: &mut Vec<Output>) {
        let before = outputs.len();
        outputs.retain(|o| {
            !self
                .mirror
                .changed_by_feed(&crate::cache::doc_id(o.domain, &o.key))
        });
        if outputs.len() < before {
            tracing::info!(
                kept = before - outputs.len(),
                "full build: kept the cache documents another instance wrote meanwhile"
            );
        }
    }

    /// `DYNAMIC_COMPONENT` is ready once the first build is written and
    /// every dynamic source the builders want has loaded: until then some
    /// outputs (a ruleset's table) are deferred, and serving without them is
    /// not "caught up".
    fn report_readiness(&self) {
        if !self.built_once {
            return;
        }
        let waiting: Vec<&str> = self
            .dynamic
            .iter()
            .filter(|(id, _)| self.sources.get(*id).is_none_or(|s| !s.loaded))
            .map(|(_, (feed, _))| feed.db.as_str())
            .collect();
        let state = match waiting.as_slice() {
            [] => Ok(()),
            [db] => Err(format!("database {db} is not loaded yet")),
            [db, rest @ ..] => Err(format!(
                "databases {db} and {} more are not loaded yet",
                rest.len()
            )),
        };
        self.readiness.set(DYNAMIC_COMPONENT, state);
    }

    /// Every output a from-scratch build has, every output the cache holds,
    /// and every output with recorded dependencies.
    fn every_output(&self) -> Vec<OutputId> {
        let mut keys: BTreeSet<OutputId> = self.deps.outputs().cloned().collect();
        for domain in &self.domains {
            keys.extend(
                domain
                    .builder()
                    .all_keys(&self.index)
                    .into_iter()
                    .map(|k| (*domain, k)),
            );
            let prefix = format!("{}:", domain.name());
            let cached = self.mirror.ids_of(domain.name());
            keys.extend(
                cached
                    .iter()
                    .filter_map(|id| Some((*domain, id.strip_prefix(&prefix)?.to_string()))),
            );
        }
        keys.into_iter().collect()
    }

    /// Builds `keys` (in parallel when there are many) and records their
    /// dependencies.
    fn build(&mut self, keys: &[OutputId]) -> Vec<Output> {
        let index = &self.index;
        let metrics = &self.metrics;
        let results: Vec<BuildResult> = if !self.worth_parallel(keys) {
            keys.iter()
                .map(|key| build_one(index, metrics, key))
                .collect()
        } else {
            let chunk = keys.len().div_ceil(self.config.workers);
            tokio::task::block_in_place(|| {
                std::thread::scope(|scope| {
                    let handles: Vec<_> = keys
                        .chunks(chunk)
                        .map(|part| {
                            scope.spawn(move || {
                                part.iter()
                                    .map(|k| build_one(index, metrics, k))
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().expect("build_one catches panics"))
                        .collect()
                })
            })
        };
        let mut outputs = Vec::with_capacity(results.len());
        for (id, built, deps, built_from, took) in results {
            let cost = self.build_cost.entry(id.0).or_insert(took);
            *cost = (*cost * 4 + took) / 5;
            if self.waits_for_source(&deps) {
                // Written once every dynamic source it read has loaded.
                self.deps.set(id.clone(), deps);
                self.deferred.insert(id);
                continue;
            }
            if built == Built::Absent {
                self.deps.remove(&id);
            } else {
                self.deps.set(id.clone(), deps);
            }
            outputs.push(Output {
                domain: id.0,
                key: id.1,
                built,
                built_from,
            });
        }
        outputs
    }

    /// Whether to spread a batch over the worker threads: many outputs, or
    /// a few that are expected to be slow to build.
    fn worth_parallel(&self, keys: &[OutputId]) -> bool {
        if self.config.workers < 2 || keys.len() < 2 {
            return false;
        }
        if keys.len() >= PARALLEL_THRESHOLD {
            return true;
        }
        let expected: Duration = keys
            .iter()
            .filter_map(|(domain, _)| self.build_cost.get(domain))
            .sum();
        expected >= PARALLEL_MIN_WORK
    }

    /// Reports everything absorbed so far as durable.
    fn durable(&mut self, batch: Batch) {
        for time in &batch.received {
            self.metrics
                .change_to_cache_seconds
                .observe(time.elapsed().as_secs_f64());
        }
        for (source, state) in &mut self.sources {
            let label = Metrics::db(source);
            if state.unapplied > 0 {
                self.metrics
                    .feed_applied
                    .get_or_create(&label)
                    .inc_by(state.unapplied);
            }
            state.unapplied = 0;
            state.oldest = None;
            self.metrics.feed_pending.get_or_create(&label).set(0);
            self.metrics.feed_lag_seconds.get_or_create(&label).set(0.0);
            if let (Some(tx), Some(seq)) = (&state.checkpoint, &state.seq) {
                tx.send_replace(Some(seq.clone()));
            }
        }
        for done in batch.done {
            let _ = done.send(());
        }
    }
}

/// An output, its dependencies, the revisions it read, and how long it took.
type BuildResult = (
    OutputId,
    Built,
    BTreeSet<Dep>,
    BTreeMap<SourceId, BTreeMap<String, String>>,
    Duration,
);

/// Builds one output; a panicking builder becomes a failed output, never a
/// dead engine.
fn build_one(index: &Index, metrics: &Metrics, id: &OutputId) -> BuildResult {
    let (domain, key) = id;
    let started = Instant::now();
    let mut reads = Reads::new(index);
    let built =
        std::panic::catch_unwind(AssertUnwindSafe(|| domain.builder().build(key, &mut reads)));
    let (deps, revs) = reads.finish();
    let built = built.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        tracing::error!(domain = domain.name(), key, what, "builder panicked");
        Built::Failed {
            issues: vec![Issue {
                source: Arc::from(domain.name()),
                doc: None,
                reason: format!("internal error while building: {what}"),
            }],
        }
    });
    let took = started.elapsed();
    let label = Metrics::domain(domain.name());
    metrics.rebuilds.get_or_create(&label).inc();
    metrics
        .rebuild_seconds
        .get_or_create(&label)
        .observe(took.as_secs_f64());
    if has_issues(&built) {
        metrics.rebuild_errors.get_or_create(&label).inc();
    }
    (id.clone(), built, deps, revs, took)
}

fn has_issues(built: &Built) -> bool {
    match built {
        Built::Absent => false,
        Built::Content { issues, .. } => !issues.is_empty(),
        Built::Failed { .. } => true,
    }
}

/// A handle for out-of-band refreshes (flush, writes through the API).
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<FeedEvent>,
}

impl EngineHandle {
    pub fn new(tx: mpsc::Sender<FeedEvent>) -> EngineHandle {
        EngineHandle { tx }
    }

    /// The engine's event queue, for shells that feed a synthetic source.
    pub fn sender(&self) -> mpsc::Sender<FeedEvent> {
        self.tx.clone()
    }

    /// Hands the engine a freshly read document and waits until the outputs
    /// depending on it are in the cache. Returns false on timeout/shutdown.
    pub async fn refresh(
        &self,
        source: &str,
        id: &str,
        rev: String,
        body: Option<crate::couch::Body>,
        wait: Duration,
    ) -> bool {
        let (done, finished) = oneshot::channel();
        let event = FeedEvent::Refresh {
            source: Arc::from(source),
            id: id.to_string(),
            rev,
            body,
            done,
        };
        if self.tx.send(event).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(wait, finished).await, Ok(Ok(())))
    }
}
