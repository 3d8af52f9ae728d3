//! The wiring: configuration → telemetry → listeners → followers, engine,
//! mirror → signals. Owns start-up order and the shutdown sequence.
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting HTTP and let requests finish,
//! then stop the feeds; the engine writes what it already absorbed and lets
//! go of the checkpoint channels, so followers save their last checkpoints;
//! all within `shutdown.grace`, after which in-flight CouchDB retries are
//! abandoned (nothing is lost: the next start reloads every source).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp;
use crate::cache::CacheEntry;
use crate::cache::mirror::{Mirror, Update, update_from_doc};
use crate::cache::store::{Checkpoint, Store, StoreError};
use crate::cache::writer::Writer;
use crate::cli::{Cli, Command};
use crate::config::{CacheConfig, Config, LoadError};
use crate::couch::retry::Backoff;
use crate::couch::{Body, Client, Db, Seq};
use crate::domains::Domain;
use crate::domains::acls::{self, service::AclsService};
use crate::domains::edge::{self, service::EdgeService};
use crate::domains::phones::{
    self,
    service::{PhonesService, Settings as PhonesSettings},
};
use crate::domains::routing::service::RoutingService;
use crate::domains::sysconf::service::{Settings, SysconfService};
use crate::feeds::dynamic::{DynamicFeeds, StartFeed};
use crate::feeds::{Board, FeedEvent, Follower, Resume};
use crate::http::AdminAuth;
use crate::http::{self, Limits, api};
use crate::lifecycle::readiness::Readiness;
use crate::lifecycle::{Control, signals, systemd};
use crate::rebuild::engine::{Engine, EngineHandle};
use crate::rebuild::index::{SourceDoc, SourceId};
use crate::telemetry::{self, LogHandle, metrics::Metrics};

/// Exit status for an invalid configuration (sysexits' EX_CONFIG), which
/// the systemd unit does not restart on.
const EXIT_CONFIG: u8 = 78;

/// Queue between followers and the engine (and the mirror).
const EVENT_QUEUE: usize = 4096;

pub fn main(cli: Cli) -> ExitCode {
    let (path, explicit) = cli.config_path();
    let loaded = match Config::load(&path, explicit) {
        Ok(loaded) => loaded,
        Err(err) => return config_failure(&path, &err),
    };
    match cli.command {
        Command::CheckConfig => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}: the configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Command::Route {
            sip_domain_name,
            groupid,
            number,
            host,
        } => route(
            &loaded.config,
            &sip_domain_name,
            &groupid,
            &number,
            host.as_deref(),
        ),
        Command::Render { realm, mac, file } => {
            render(&loaded.config, &realm, &mac, file.as_deref())
        }
        Command::Run => {
            let log = match telemetry::init(&loaded.config.log) {
                Ok(log) => log,
                Err(err) => {
                    eprintln!("cannot start logging: {err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(error = %err, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(loaded.config, path, log)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = format!("{err:#}"), "caldera stopped on an error");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The single-threaded runtime of a one-shot command; `None` (said on
/// stderr) when it cannot start.
fn command_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| eprintln!("cannot start the async runtime: {err}"))
        .ok()
}

/// `caldera route`: one lookup built straight from CouchDB, printed as JSON.
fn route(config: &Config, sdn: &str, groupid: &str, number: &str, host: Option<&str>) -> ExitCode {
    use crate::domains::routing::service::{RouteError, route_offline};
    let Some(runtime) = command_runtime() else {
        return ExitCode::FAILURE;
    };
    let answer = runtime.block_on(async {
        let client = Client::new(&config.couchdb).map_err(RouteError::from)?;
        route_offline(
            &client,
            &config.databases.provisioning,
            sdn,
            groupid,
            number,
            host,
        )
        .await
    });
    let (body, code) = match answer {
        Ok(answer) => (answer, 0),
        Err(err) => {
            let (kind, code) = match &err {
                RouteError::InvalidNumber(_) => ("invalid_number", 64),
                RouteError::UnknownRuleset(_) => ("unknown_ruleset", 1),
                RouteError::NoRoute { .. } => ("no_route", 1),
                RouteError::Unavailable(_) | RouteError::NotReady => ("couchdb_unavailable", 69),
                RouteError::Broken(_) => ("broken_table", 1),
            };
            (
                serde_json::json!({ "error": kind, "reason": err.to_string() }),
                code,
            )
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&body).unwrap_or_else(|_| body.to_string())
    );
    ExitCode::from(code)
}

/// `caldera render`: one phone's files built straight from CouchDB.
fn render(config: &Config, realm: &str, mac: &str, file: Option<&str>) -> ExitCode {
    use crate::domains::phones::offline::{RenderError, Rendered, render_offline};
    let Some(runtime) = command_runtime() else {
        return ExitCode::FAILURE;
    };
    let answer = runtime.block_on(async {
        let client = Client::new(&config.couchdb).map_err(RenderError::from)?;
        let dbs = &config.databases;
        render_offline(&client, &dbs.units, &dbs.sip_auth, realm, mac, file).await
    });
    match answer {
        Ok(Rendered::File { body, .. }) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok(Rendered::All(all)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&all).unwrap_or_else(|_| all.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            let code = match err {
                RenderError::BadMac(_) => 64,
                RenderError::Unavailable(_) => 69,
                _ => 1,
            };
            eprintln!("caldera render: {err}");
            ExitCode::from(code)
        }
    }
}

fn config_failure(path: &Path, err: &LoadError) -> ExitCode {
    eprintln!(
        "caldera: invalid configuration ({}):\n{err}",
        path.display()
    );
    ExitCode::from(EXIT_CONFIG)
}

/// Shared handles every part of the daemon reports to.
#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    board: Arc<Board>,
    mirror: Arc<Mirror>,
    dns: Arc<acls::resolver::DnsBoard>,
}

async fn run(config: Config, path: PathBuf, log: LogHandle) -> anyhow::Result<()> {
    let started = Instant::now();
    let signals = signals::listen()?;
    let shared = Shared {
        metrics: Arc::new(Metrics::new()),
        readiness: Arc::new(Readiness::default()),
        board: Arc::new(Board::default()),
        mirror: Arc::new(Mirror::default()),
        dns: Arc::default(),
    };
    let (mirror, resume) = open_mirror(&config.cache);
    let shared = Shared { mirror, ..shared };
    let domain_names: Vec<&str> = Domain::ALL.iter().map(|d| d.name()).collect();
    shared.metrics.register_domains(&domain_names);
    let client = Client::new(&config.couchdb)?;
    let api_listener = http::bind("api", config.http.api_listen).await?;
    let phones_listener = http::bind("phones", config.http.phones_listen).await?;
    tracing::info!(listener = "api", addr = %api_listener.local_addr()?, "listening");
    tracing::info!(listener = "phones", addr = %phones_listener.local_addr()?, "listening");
    tracing::info!(
        node = config.node,
        couchdb = %config.couchdb.url,
        building = config.build.enabled,
        "caldera {} starting",
        env!("CARGO_PKG_VERSION")
    );

    let core = CancellationToken::new();
    let abort = CancellationToken::new();
    let tasks = TaskTracker::new();
    let cache_db = client.db(&config.databases.cache);
    start_mirror(&config, &shared, cache_db.clone(), resume, &tasks, &core);
    // Followers of the edge store's databases start once the daemon has
    // created them and their seed classes (issue 15).
    let (edge_prepared, edge_ready) = watch::channel(false);
    let engine = config.build.enabled.then(|| {
        start_building(
            &config,
            &shared,
            &client,
            &tasks,
            &core,
            &abort,
            &edge_ready,
        )
    });

    let phone_sources =
        start_phone_sources(&config, &shared, &client, &tasks, &core, engine.as_ref());
    let phones_engine = engine.clone();
    let phones = Arc::new(
        PhonesService::new(
            shared.mirror.clone(),
            PhonesSettings::from_config(&config.phones),
            phones::service::nonce_key(config.phones.nonce_secret.as_ref().map(|s| s.expose())),
        )
        .with_metrics(&shared.metrics),
    );
    keep_trusted_pairs(&config, &phones, &tasks, &core);
    let edge_key = edge_fallback_key(&config);
    let edge = Arc::new(EdgeService::new(
        shared.mirror.clone(),
        client.db(&config.databases.edge_config),
        client.db(&config.databases.edge_telemetry),
        engine.clone(),
        edge::service::Settings::from_config(&config.edge, &edge_key),
        shared.metrics.clone(),
    ));
    tasks.spawn(prepare_edge_store(
        &config,
        &client,
        core.clone(),
        edge_prepared,
    ));
    let acls = Arc::new(AclsService::new(
        shared.mirror.clone(),
        config.node.clone(),
        config.zone.clone(),
    ));
    tasks.spawn(acls.clone().prepare_eagerly(core.clone()));
    let acls_hook = acls.clone();
    let sysconf = Arc::new(
        SysconfService::new(
            shared.mirror.clone(),
            client.db(&config.databases.system_config),
            cache_db,
            engine,
            sysconf_settings(&config),
        )
        .with_special_key(Box::new(move |category, key, node| {
            acls_hook.sysconf_value(category, key, node)
        })),
    );
    let admin = Arc::new(AdminAuth::new(config.http.admin_token.clone()));
    let api_state = Arc::new(api::ApiState {
        node: config.node.clone(),
        building: config.build.enabled,
        started,
        readiness: shared.readiness.clone(),
        metrics: shared.metrics.clone(),
        board: shared.board.clone(),
        mirror: shared.mirror.clone(),
        sysconf: sysconf.clone(),
        acls: acls.clone(),
        routing: Arc::new(RoutingService::new(shared.mirror.clone())),
        admin: admin.clone(),
        max_body_bytes: config.http.max_body_bytes,
        phones: Some(phones.clone()),
        dns: shared.dns.clone(),
    });
    let http_token = CancellationToken::new();
    let http_tasks = TaskTracker::new();
    let limits = Limits::from_config(&config.http);
    let grace = config.shutdown.grace;
    let phones_api = Arc::new(phones::api::PhonesApi {
        sources: phone_sources,
        db: client.db(&config.databases.units),
        sip_auth: client.db(&config.databases.sip_auth),
        engine: phones_engine,
        service: phones.clone(),
        write_wait: config.phones.write_wait,
    });
    let edge_router = http::edge::router(Arc::new(http::edge::EdgeHttp {
        service: edge.clone(),
        json_limit: config.http.max_body_bytes,
    }));
    let api_router = api::router_with(api_state, config.http.request_timeout, Some(edge_router))
        .merge(http::phones_api::router(
            phones_api,
            admin.clone(),
            config.http.max_body_bytes,
            shared.metrics.clone(),
            config.http.request_timeout,
        ));
    http_tasks.spawn(http::serve(
        "api",
        api_listener,
        api_router,
        limits,
        http_token.clone(),
        grace,
    ));
    let phones_listener_service = http::phones::listener(
        phones.clone(),
        shared.metrics.clone(),
        config.http.request_timeout,
    );
    http_tasks.spawn(http::serve(
        "phones",
        phones_listener,
        phones_listener_service,
        limits,
        http_token.clone(),
        grace,
    ));
    // The AMQP front door stops with the HTTP one: both drain before the
    // core (the engine their writes go through) is told to stop.
    http_tasks.spawn(
        amqp::Listener {
            config: config.amqp.clone(),
            node: config.node.clone(),
            service: sysconf.clone(),
            mirror: shared.mirror.clone(),
            metrics: shared.metrics.clone(),
            readiness: shared.readiness.clone(),
        }
        .run(http_token.clone()),
    );
    http_tasks.close();

    systemd::ready("serving; catching up with CouchDB");
    spawn_watchdog(&shared, &tasks, &core);
    let reloader = Reloader {
        path,
        log,
        admin,
        sysconf,
        acls,
        phones,
        edge,
        edge_key,
        current: config,
    };
    let grace = reloader.current.shutdown.grace;
    wait_for_stop(signals, reloader).await;

    systemd::stopping();
    tracing::info!(
        ?grace,
        "stopping: draining requests, writing absorbed changes, saving checkpoints"
    );
    let deadline = tokio::time::Instant::now() + grace;
    http_token.cancel();
    let _ = tokio::time::timeout_at(deadline, http_tasks.wait()).await;
    core.cancel();
    tasks.close();
    if tokio::time::timeout_at(deadline, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; abandoning unfinished CouchDB work");
        abort.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    }
    // What the store has not committed would be read again from CouchDB
    // at the next start: commit it now, so that start resumes instead.
    let mirror = shared.mirror.clone();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let wait = left.max(Duration::from_secs(2));
    if !tokio::task::spawn_blocking(move || mirror.flush(wait))
        .await
        .unwrap_or(false)
    {
        tracing::warn!(
            "the cache store did not commit everything; the next start reads the rest from CouchDB"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Restores the phones' trusted pairs and saves them from now on (the last
/// time when `core` is cancelled, which is after the listeners drained).
fn keep_trusted_pairs(
    config: &Config,
    phones: &Arc<PhonesService>,
    tasks: &TaskTracker,
    core: &CancellationToken,
) {
    let Some(path) = trusted_pairs_path(config) else {
        tracing::info!(
            "no phones.trusted_pairs_file and no systemd state directory: trusted pairs are kept in memory only"
        );
        return;
    };
    phones::trust_store::load(phones, &path);
    tasks.spawn(phones::trust_store::run(
        phones.clone(),
        path,
        config.phones.trusted_pairs_save,
        core.clone(),
    ));
}

/// `phones.trusted_pairs_file`, else a file in systemd's `StateDirectory=`.
fn trusted_pairs_path(config: &Config) -> Option<PathBuf> {
    if let Some(path) = &config.phones.trusted_pairs_file {
        return Some(path.clone());
    }
    let dirs = std::env::var_os("STATE_DIRECTORY")?;
    // Several directories are separated by colons; the first is ours.
    let first = dirs.to_string_lossy().split(':').next()?.to_string();
    (!first.is_empty()).then(|| Path::new(&first).join("phones-trusted-pairs"))
}

/// The key that signs edge download URLs when `edge.download_key` is unset.
fn edge_fallback_key(config: &Config) -> Vec<u8> {
    if config.edge.download_key.is_none() {
        tracing::warn!(
            "edge.download_key is not set: edge download URLs are signed with a random key and work only on this instance until it restarts"
        );
    }
    let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    key
}

/// Creates the edge store's databases and seed classes, retrying until
/// CouchDB answers; then (or when giving up) sets `prepared`.
fn prepare_edge_store(
    config: &Config,
    client: &Client,
    token: CancellationToken,
    prepared: watch::Sender<bool>,
) -> impl std::future::Future<Output = ()> + use<> {
    let names = &config.databases;
    let db = client.db(&names.edge_config);
    let others = [
        client.db(&names.edge_registry),
        client.db(&names.edge_telemetry),
    ];
    let mut backoff = Backoff::new(config.feeds.backoff_initial, config.feeds.backoff_max);
    async move {
        loop {
            match edge::couchdb::prepare(&db, &others).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot prepare the edge store's databases yet");
                    if !backoff.wait(err.kind, &token).await {
                        break;
                    }
                }
            }
        }
        prepared.send_replace(true);
    }
}

fn sysconf_settings(config: &Config) -> Settings {
    Settings {
        node: config.node.clone(),
        zone: config.zone.clone(),
        write_wait: config.sysconf.write_wait,
        write_attempts: config.sysconf.write_attempts,
    }
}

fn follower(
    config: &Config,
    shared: &Shared,
    source: &str,
    db: Db,
    checkpoints: bool,
    sink: mpsc::Sender<FeedEvent>,
) -> Follower {
    Follower {
        source: SourceId::from(source),
        db,
        node: config.node.clone(),
        config: config.feeds.clone(),
        checkpoints,
        sink,
        board: shared.board.clone(),
        readiness: shared.readiness.clone(),
        metrics: shared.metrics.clone(),
        known: None,
        resume: None,
        streamed: false,
        after: None,
    }
}

/// The mirror, backed by the on-disk store when `cache.store_path` is set,
/// and the store's feed position. A damaged store is rebuilt (logged); a
/// store that cannot be used (another process holds it, I/O fails) leaves
/// the mirror in memory, as without a store.
fn open_mirror(config: &CacheConfig) -> (Arc<Mirror>, Option<Checkpoint>) {
    let Some(path) = &config.store_path else {
        return (Arc::new(Mirror::default()), None);
    };
    let opened = Store::open_or_rebuild(path).and_then(|(store, damage)| {
        if let Some(why) = damage {
            tracing::error!(path = %path.display(), why, "the cache store is damaged: it is rebuilt from CouchDB");
        }
        match Mirror::with_store(store) {
            Err(StoreError::Corrupt(why)) => {
                tracing::error!(path = %path.display(), why, "the cache store is damaged: it is rebuilt from CouchDB");
                Store::remove(path)?;
                Mirror::with_store(Store::open(path)?)
            }
            other => other,
        }
    });
    match opened {
        Ok((mirror, checkpoint)) => {
            tracing::info!(path = %path.display(), documents = mirror.stats().values().map(|s| s.documents).sum::<u64>(),
                resumes = checkpoint.is_some(), "cache store opened");
            (mirror, checkpoint)
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "the cache store cannot be used; outputs are held in memory");
            (Arc::new(Mirror::default()), None)
        }
    }
}

/// Follows the cache database into the mirror: from the store's position
/// when it has one of this database (`resume`), else by a streamed load.
fn start_mirror(
    config: &Config,
    shared: &Shared,
    cache_db: Db,
    resume: Option<Checkpoint>,
    tasks: &TaskTracker,
    core: &CancellationToken,
) {
    let (tx, rx) = mpsc::channel::<FeedEvent>(EVENT_QUEUE);
    let mirror = shared.mirror.clone();
    shared
        .readiness
        .register("mirror", "the cache database is not loaded yet");
    let db = cache_db.name().to_string();
    let resume = resume.filter(|c| c.db == db);
    let mut cache_follower = follower(config, shared, "cache", cache_db.clone(), false, tx);
    // The echo of this instance's own writes (already in the mirror) is
    // skipped without parsing the documents.
    let held = mirror.clone();
    cache_follower.known = Some(Arc::new(move |id: &str, rev: &str| held.holds(id, rev)));
    cache_follower.streamed = true;
    cache_follower.resume = resume.as_ref().map(|c| Resume {
        marker: c.marker.clone(),
        seq: c.seq.clone(),
    });
    tasks.spawn(cache_follower.run(core.clone()));
    let consumer = CacheConsumer {
        mirror: mirror.clone(),
        readiness: shared.readiness.clone(),
        db,
        marker: resume.map(|c| c.marker),
        reloading: false,
        max_pending: config.cache.max_pending_bytes as i64,
    };
    tasks.spawn(consumer.run(rx));
    tasks.spawn(repair_mirror(mirror, cache_db, core.clone()));
}

/// Applies the cache feed's events to the mirror and records the feed's
/// position with them in the store.
struct CacheConsumer {
    mirror: Arc<Mirror>,
    readiness: Arc<Readiness>,
    db: String,
    /// The incarnation the mirror's content belongs to, once known.
    marker: Option<String>,
    /// A streamed load is in progress.
    reloading: bool,
    max_pending: i64,
}

impl CacheConsumer {
    async fn run(mut self, mut rx: mpsc::Receiver<FeedEvent>) {
        // The follower ends a feed whose checkpoint channel its consumer
        // dropped ("moved on"): hold the current incarnation's channel.
        let mut _incarnation = None;
        while let Some(event) = rx.recv().await {
            match event {
                // Only for a missing database (loads are streamed).
                FeedEvent::Replace {
                    docs, checkpoint, ..
                } => {
                    _incarnation = checkpoint;
                    self.marker = None;
                    self.reloading = false;
                    self.mirror
                        .replace_all(docs.into_values().filter_map(cache_entry).collect());
                    self.readiness.set("mirror", Ok(()));
                }
                FeedEvent::Reloading { .. } => {
                    self.marker = None;
                    self.reloading = true;
                    self.mirror.begin_reload();
                }
                FeedEvent::Change {
                    id, rev, body, seq, ..
                } => {
                    self.wait_for_the_store().await;
                    self.change(id, rev, body, seq);
                }
                FeedEvent::Loaded {
                    seq,
                    marker,
                    checkpoint,
                    ..
                } => {
                    _incarnation = checkpoint;
                    let position = Checkpoint {
                        db: self.db.clone(),
                        marker: marker.clone(),
                        seq,
                    };
                    if std::mem::take(&mut self.reloading) {
                        self.mirror.finish_reload(Some(position));
                    } else {
                        self.mirror.checkpoint(position);
                        self.mirror.caught_up();
                    }
                    self.marker = Some(marker);
                    self.readiness.set("mirror", Ok(()));
                }
                FeedEvent::Refresh { .. } => {}
            }
        }
    }

    /// A loader must not outrun the store's disk: spilling contents wait
    /// in memory until committed.
    async fn wait_for_the_store(&self) {
        while self.mirror.store_healthy() == Some(true)
            && self.mirror.pending_bytes() > self.max_pending
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn change(&self, id: String, rev: String, body: Option<Body>, seq: Seq) {
        if !self.reloading && self.mirror.holds(&id, &rev) {
            return self.advance(seq);
        }
        let json = match &body {
            Some(Body::Json(text)) => Some((text.parse(), text.len())),
            Some(Body::Malformed(why)) => {
                tracing::warn!(id, why, "unreadable document in the cache database");
                return self.advance(seq);
            }
            None => None,
        };
        let bytes = json.as_ref().map_or(0, |(_, len)| *len);
        match update_from_doc(&id, &rev, json.as_ref().map(|(j, _)| j), bytes) {
            Some(Ok(Update::Live(entry))) if self.reloading => self.mirror.reload_put(entry),
            Some(Ok(Update::Deleted { id, .. })) if self.reloading => {
                self.mirror.reload_remove(&id)
            }
            Some(Ok(update)) => self.mirror.apply_feed(update),
            Some(Err(why)) => tracing::debug!(id, why, "ignoring a non-cache document"),
            None => {}
        }
        self.advance(seq);
    }

    /// Records that the feed is applied up to `seq` (outside a load, and
    /// only for a position of the incarnation the mirror holds).
    fn advance(&self, seq: Seq) {
        if let Some(marker) = &self.marker
            && !self.reloading
            && !seq.is_null()
        {
            self.mirror.checkpoint(Checkpoint {
                db: self.db.clone(),
                marker: marker.clone(),
                seq,
            });
        }
    }
}

/// Fetches again from the cache database the documents whose stored
/// record could not be read back (`Mirror::take_repairs`).
async fn repair_mirror(mirror: Arc<Mirror>, cache_db: Db, token: CancellationToken) {
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = mirror.repair_wanted() => {}
        }
        for id in mirror.take_repairs() {
            match cache_db.get(&id).await {
                Ok(Some(doc)) => match CacheEntry::from_doc(&doc, doc.to_string().len()) {
                    Ok(entry) => {
                        tracing::info!(id, "a damaged stored document was fetched again");
                        mirror.apply_written(Update::Live(entry));
                    }
                    Err(why) => tracing::warn!(id, why, "cannot repair a stored document"),
                },
                Ok(None) => tracing::info!(id, "a damaged stored document is gone from CouchDB"),
                Err(err) => {
                    tracing::warn!(id, error = %err, "cannot fetch a damaged stored document; it stays unserved until a restart")
                }
            }
        }
    }
}

fn cache_entry(doc: SourceDoc) -> Option<CacheEntry> {
    let Body::Json(text) = &doc.body else {
        return None;
    };
    CacheEntry::from_doc(&text.parse(), text.len()).ok()
}

/// The phones shell's copy of `units` (a follower, no checkpoints) and, on a
/// building instance, the template fetcher feeding the synthetic source
/// `phones_templates`.
fn start_phone_sources(
    config: &Config,
    shared: &Shared,
    client: &Client,
    tasks: &TaskTracker,
    core: &CancellationToken,
    engine: Option<&EngineHandle>,
) -> Arc<phones::sources::Sources> {
    use phones::sources::{Sources, TemplateFetcher, consume};
    // With an engine, its index holds the same `units` documents.
    let sources = Arc::new(if engine.is_some() {
        Sources::sharing_texts()
    } else {
        Sources::default()
    });
    let (tx, rx) = mpsc::channel::<FeedEvent>(EVENT_QUEUE);
    let db = client.db(&config.databases.units);
    tasks.spawn(follower(config, shared, "phones_sources:units", db, false, tx).run(core.clone()));
    tasks.spawn(consume(sources.clone(), rx));
    if let Some(engine) = engine {
        let fetcher = TemplateFetcher {
            sources: sources.clone(),
            db: client.db(&config.databases.units),
            engine: engine.sender(),
            backoff: Backoff::new(config.feeds.backoff_initial, config.feeds.backoff_max),
        };
        tasks.spawn(fetcher.run(core.clone()));
    }
    sources
}

/// Starts the engine and one follower per source it reads.
fn start_building(
    config: &Config,
    shared: &Shared,
    client: &Client,
    tasks: &TaskTracker,
    core: &CancellationToken,
    abort: &CancellationToken,
    edge_ready: &watch::Receiver<bool>,
) -> EngineHandle {
    let names: BTreeMap<String, String> = config
        .databases
        .all()
        .iter()
        .map(|(logical, physical)| (logical.to_string(), physical.to_string()))
        .collect();
    let cache_db = client.db(&config.databases.cache);
    let backoff = Backoff::new(config.feeds.backoff_initial, config.feeds.backoff_max);
    let writer = Writer::new(
        cache_db.clone(),
        shared.mirror.clone(),
        &config.node,
        names.clone(),
        config.build.write_batch,
        config.build.max_output_bytes,
        backoff.clone(),
        shared.metrics.clone(),
        shared.readiness.clone(),
    );
    let engine = Engine::new(
        Domain::ALL.to_vec(),
        config.build.clone(),
        writer,
        shared.mirror.clone(),
        shared.metrics.clone(),
        shared.readiness.clone(),
    );
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    for source in engine.sources() {
        if acls::SYNTHETIC_SOURCES.contains(&&*source)
            || phones::SYNTHETIC_SOURCES.contains(&&*source)
            || edge::SYNTHETIC_SOURCES.contains(&&*source)
        {
            continue;
        }
        let physical = names
            .get(&*source)
            .cloned()
            .unwrap_or_else(|| source.to_string());
        let mut follower = follower(
            config,
            shared,
            &source,
            client.db(&physical),
            true,
            tx.clone(),
        );
        if edge::OWNED_SOURCES.contains(&&*source) {
            follower.after = Some(edge_ready.clone());
        }
        tasks.spawn(follower.run(core.clone()));
    }
    let wanted = engine.wanted_feeds();
    let dynamic = DynamicFeeds::new(
        dynamic_follower(config, shared, client, tx.clone()),
        tasks.clone(),
        core.clone(),
    );
    tasks.spawn(dynamic.run(wanted));
    tasks.spawn(engine.run(rx, core.clone(), abort.clone()));
    tasks.spawn(
        acls::resolver::Task::new(
            &config.acls,
            shared.mirror.clone(),
            tx.clone(),
            shared.metrics.clone(),
            shared.readiness.clone(),
            shared.dns.clone(),
        )
        .run(core.clone()),
    );
    tasks.spawn(
        edge::blobs::Task {
            mirror: shared.mirror.clone(),
            db: client.db(&config.databases.edge_config),
            engine: tx.clone(),
            metrics: shared.metrics.clone(),
            backoff: backoff.clone(),
        }
        .run(core.clone()),
    );
    tasks.spawn(install_design_docs(cache_db, backoff, core.clone()));
    EngineHandle::new(tx)
}

/// Starts followers of dynamic sources (ruleset databases); a stopped one
/// forgets its readiness and status.
fn dynamic_follower(
    config: &Config,
    shared: &Shared,
    client: &Client,
    sink: mpsc::Sender<FeedEvent>,
) -> StartFeed {
    let (config, shared, client) = (config.clone(), shared.clone(), client.clone());
    Arc::new(move |source: SourceId, db: String, token| {
        let follower = follower(
            &config,
            &shared,
            &source,
            client.db(&db),
            true,
            sink.clone(),
        );
        let (readiness, board) = (shared.readiness.clone(), shared.board.clone());
        Box::pin(async move {
            let component = follower.component();
            follower.run(token).await;
            readiness.remove(&component);
            board.remove(&source);
        })
    })
}

/// Creates the cache database and installs its design documents, retrying
/// until CouchDB answers.
async fn install_design_docs(db: Db, mut backoff: Backoff, token: CancellationToken) {
    loop {
        match Writer::ensure_database(&db).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(db = db.name(), error = %err, "cannot prepare the cache database yet");
                if !backoff.wait(err.kind, &token).await {
                    return;
                }
            }
        }
    }
}

/// Pings the systemd watchdog while the runtime is responsive.
fn spawn_watchdog(shared: &Shared, tasks: &TaskTracker, core: &CancellationToken) {
    let Some(interval) = systemd::watchdog_interval() else {
        return;
    };
    let readiness = shared.readiness.clone();
    let token = core.clone();
    tasks.spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        let mut was_ready = false;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = ticker.tick() => {}
            }
            systemd::watchdog();
            let ready = readiness.is_ready();
            if ready != was_ready {
                systemd::status(if ready {
                    "ready: caught up with CouchDB"
                } else {
                    "not ready: see /readyz"
                });
                was_ready = ready;
            }
        }
    });
}

/// What SIGHUP may change while running.
struct Reloader {
    path: PathBuf,
    log: LogHandle,
    admin: Arc<AdminAuth>,
    sysconf: Arc<SysconfService>,
    acls: Arc<AclsService>,
    phones: Arc<PhonesService>,
    edge: Arc<EdgeService>,
    edge_key: Vec<u8>,
    current: Config,
}

impl Reloader {
    fn reload(&mut self) {
        systemd::reloading();
        match Config::load(&self.path, true) {
            Err(err) => {
                tracing::error!(path = %self.path.display(), "reload refused, keeping the running configuration: {err}")
            }
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    tracing::warn!("{warning}");
                }
                let new = loaded.config;
                let restart = self.current.needs_restart(&new);
                if !restart.is_empty() {
                    tracing::warn!(keys = ?restart, "these changes take effect only after a restart");
                }
                if let Err(err) = self.log.set_level(&new.log.level) {
                    tracing::error!(error = err, "cannot apply log.level");
                }
                self.admin.set(new.http.admin_token.clone());
                let mut settings = sysconf_settings(&new);
                settings.node = self.current.node.clone();
                self.sysconf.reload(settings);
                self.acls.set_zone(new.zone.clone());
                self.phones.reload(PhonesSettings::from_config(&new.phones));
                self.edge.reload(edge::service::Settings::from_config(
                    &new.edge,
                    &self.edge_key,
                ));
                tracing::info!(path = %self.path.display(), "configuration reloaded");
                self.current = new;
            }
        }
        systemd::ready("serving");
    }
}

async fn wait_for_stop(mut signals: mpsc::UnboundedReceiver<Control>, mut reloader: Reloader) {
    while let Some(control) = signals.recv().await {
        match control {
            Control::Reload => reloader.reload(),
            Control::Shutdown => return,
        }
    }
}
