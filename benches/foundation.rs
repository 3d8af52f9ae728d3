//! The foundation benchmark (`cargo bench --bench foundation`): the real
//! daemon binary against a real CouchDB-compatible server, for N
//! `system_config` categories (N = 10k and 100k by default).
//!
//! Per N, side by side in one run on the same server:
//! * the server's raw `_bulk_docs` write throughput, for documents shaped
//!   and sized like the cache documents the daemon writes, sent the way the
//!   daemon's writer sends them (`build.write_batch` = 500 per request, one
//!   request at a time) — the figure the build is compared with;
//! * the daemon's initial build: from spawning it on the loaded source
//!   database to `/readyz` (every category loaded, built, written and
//!   mirrored), in documents per second, and the ratio to the raw writes;
//! * edit-to-visible: 1,000 edits written to CouchDB one after the other,
//!   each polled over the HTTP API until it is served (p50/p99, measured
//!   from sending the edit and from CouchDB's acknowledgement);
//! * sysconf GET throughput and latency at 64 concurrent keep-alive
//!   connections, from `wrk` (a separate process; `apt-get install wrk`)
//!   when it is installed, and from an in-process client either way;
//! * the daemon's RSS (and peak) after the build and after the GET load.
//!
//! The harness is the integration tests' own (`tests/support`): an
//! in-memory pouchdb-server started through `scripts/couch-server`, or the
//! server `COUCHDB_URL` points at. Knobs: `FOUNDATION_BENCH_DOCS`
//! (comma-separated, default `10000,100000`), `FOUNDATION_BENCH_EDITS`
//! (1000), `FOUNDATION_BENCH_GET_SECS` (10), `FOUNDATION_BENCH_CONCURRENCY`
//! (64). Numbers are printed, not asserted.

#[path = "daemon_support/mod.rs"]
mod daemon_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use daemon_support::{WrkResult, cpu_time, env_or, machine, ms, percentile, rss_mb, wrk};
use support::couch::{Couch, DbNames};
use support::daemon::{Daemon, DaemonConfig, sysconf_path};

/// Documents per `_bulk_docs` request, as the daemon's `build.write_batch`.
const WRITE_BATCH: usize = 500;

/// A Kazoo-like category: a `default` section and two node sections,
/// about 600 bytes of JSON.
fn category(i: usize) -> Value {
    json!({
        "_id": format!("cat{i:06}"),
        "pvt_type": "config",
        "default": {
            "fetch_timeout": 3000 + i % 100,
            "use_bypass_media": i.is_multiple_of(2),
            "codecs": ["PCMU", "PCMA", "G722", "OPUS"],
            "realm": format!("realm{}.example.net", i % 50),
            "limits": {"calls": 100 + i % 7, "resource_consuming": 10, "inbound": 5},
            "description": format!("benchmark category {i}, with a little text to give it a realistic size"),
        },
        "ecallmgr@kz1.example.net": {"fetch_timeout": 5000, "bench_edit": 0},
        "zone_a": {"fetch_timeout": 4000, "codecs": ["PCMU"]},
    })
}

/// A document shaped and sized like the cache document the daemon writes
/// for `source` (content, hash, provenance).
fn cache_shaped(source: &Value) -> Value {
    let id = source["_id"].as_str().unwrap_or_default();
    let mut content = source.clone();
    content.as_object_mut().map(|o| o.remove("_rev"));
    let hash = format!(
        "sha256-{:x}",
        Sha256::digest(serde_json::to_vec(&content).unwrap_or_default())
    );
    json!({
        "_id": format!("sysconf:{id}"),
        "caldera": 1, "domain": "sysconf", "key": id, "hash": hash,
        "content": content, "errors": [], "stale": false,
        "built_from": {"system_config": {id: "1-0123456789abcdef0123456789abcdef"}},
        "seqs": {"system_config": 123_456},
        "built_by": "caldera@bench.example.net", "built_at": "2026-01-01T00:00:00.000Z",
    })
}

/// Writes `docs` with `_bulk_docs`, `WRITE_BATCH` per request, one request
/// at a time; returns docs/s and every document's new revision.
async fn bulk_write(couch: &Couch, db: &str, docs: &[Value]) -> (f64, BTreeMap<String, String>) {
    couch.create_db(db).await;
    let mut revs = BTreeMap::new();
    let started = Instant::now();
    for chunk in docs.chunks(WRITE_BATCH) {
        for result in couch.bulk_docs(db, chunk).await {
            let id = result["id"].as_str().unwrap_or_default().to_string();
            match result["rev"].as_str() {
                Some(rev) => revs.insert(id, rev.to_string()),
                None => panic!("{db}: {id} refused: {result}"),
            };
        }
    }
    (docs.len() as f64 / started.elapsed().as_secs_f64(), revs)
}

/// The 1-minute load average now.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// The value of the first `"msg"` log line's field, e.g. the elapsed time
/// of "full build written".
fn logged_field(daemon: &Daemon, message: &str, field: &str) -> Option<String> {
    daemon.logs().iter().find_map(|line| {
        let json: Value = serde_json::from_str(line).ok()?;
        (json["message"] == message).then(|| json[field].to_string())
    })
}

struct Figures {
    docs: usize,
    raw_source: f64,
    raw_cache: f64,
    build: f64,
    build_phase: Option<String>,
    edit_p50: Duration,
    edit_p99: Duration,
    edit_acked_p99: Duration,
    get_rps: f64,
    get_p99: Duration,
    wrk: Option<WrkResult>,
    rss_built: (f64, f64),
    rss_end: (f64, f64),
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FOUNDATION_BENCH_DOCS")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!("foundation bench; machine: {}", machine());
    let couch = Couch::shared();
    let mut all = Vec::new();
    for n in sizes {
        all.push(runtime.block_on(bench_size(&couch, n)));
    }
    println!("\nmachine at the end: {}", machine());
    println!(
        "\n| N | raw _bulk_docs, source docs | raw _bulk_docs, cache-shaped docs | daemon initial build (spawn → ready) | ratio | edit-to-visible p50 / p99 (p99 from ack) | GET at 64 conns, in-process client | GET, wrk | RSS after build (peak) | RSS at end (peak) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in &all {
        let wrk = f
            .wrk
            .as_ref()
            .map_or("not installed".to_string(), ToString::to_string);
        println!(
            "| {} | {:.0}/s | {:.0}/s | {:.0}/s (build+write phase {}) | {:.2} | {} / {} ({}) | {:.0}/s, p99 {} | {wrk} | {:.0} MB ({:.0}) | {:.0} MB ({:.0}) |",
            f.docs,
            f.raw_source,
            f.raw_cache,
            f.build,
            f.build_phase.as_deref().unwrap_or("?"),
            f.build / f.raw_cache,
            ms(f.edit_p50),
            ms(f.edit_p99),
            ms(f.edit_acked_p99),
            f.get_rps,
            ms(f.get_p99),
            f.rss_built.0,
            f.rss_built.1,
            f.rss_end.0,
            f.rss_end.1,
        );
    }
}

async fn bench_size(couch: &Couch, n: usize) -> Figures {
    println!("\n== N = {n} categories ==");
    let names = DbNames::unique();
    let sources: Vec<Value> = (0..n).map(category).collect();
    let cache_docs: Vec<Value> = sources.iter().map(cache_shaped).collect();
    let doc_bytes = serde_json::to_vec(&cache_docs[0]).map_or(0, |b| b.len());
    println!(
        "source documents {} bytes, cache documents {doc_bytes} bytes",
        serde_json::to_vec(&sources[0]).map_or(0, |b| b.len())
    );

    // Raw writes, measured right before the daemon's build on the same server.
    let (raw_source, mut revs) = bulk_write(couch, &names.system_config, &sources).await;
    println!("raw _bulk_docs of the {n} source documents: {raw_source:.0} docs/s");
    let raw_db = format!("{}_raw_cache_shaped", names.prefix);
    let (raw_before, _) = bulk_write(couch, &raw_db, &cache_docs).await;
    println!(
        "raw _bulk_docs of {n} cache-shaped documents: {raw_before:.0} docs/s (load {})",
        load_average()
    );
    couch.delete_db(&raw_db).await;

    let mut config = DaemonConfig::new(couch.url(), &names, "ecallmgr@kz1.example.net");
    config
        .set("zone", "zone_a")
        .set("log.level", "info")
        .set("feeds.heartbeat_ms", 5000);
    config.label = "bench".into();
    // `FOUNDATION_BENCH_DAEMON_ENV="NAME=value,..."`: extra environment for
    // the daemon (e.g. allocator settings to compare).
    if let Ok(extra) = std::env::var("FOUNDATION_BENCH_DAEMON_ENV") {
        for pair in extra.split(',').filter(|p| !p.is_empty()) {
            if let Some((name, value)) = pair.split_once('=') {
                config.env.push((name.to_string(), value.to_string()));
            }
        }
    }
    let started = Instant::now();
    let daemon = Daemon::start(&config).await;
    wait_ready(&daemon, started).await;
    let elapsed = started.elapsed();
    let build = n as f64 / elapsed.as_secs_f64();
    let build_load = load_average();
    // The same raw write right after the build: on a shared machine the
    // load changes within minutes, so the ratio uses the mean of the two.
    let (raw_after, _) = bulk_write(couch, &raw_db, &cache_docs).await;
    couch.delete_db(&raw_db).await;
    println!(
        "raw _bulk_docs of {n} cache-shaped documents again, after the build: {raw_after:.0} docs/s (load {})",
        load_average()
    );
    let raw_cache = (raw_before + raw_after) / 2.0;
    let loaded = logged_field(&daemon, "database loaded", "elapsed");
    let build_phase = logged_field(&daemon, "full build written", "elapsed");
    let rss_built = rss_mb(daemon.pid());
    let build_cpu = cpu_time(daemon.pid());
    if std::env::var_os("FOUNDATION_BENCH_TIMELINE").is_some() {
        print_timeline(&daemon);
    }
    let cache_count = couch.doc_count(&names.cache).await;
    println!(
        "daemon initial build (load {build_load}): ready after {elapsed:?} = {build:.0} docs/s ({:.2}× the mean raw cache-shaped write rate); \
         load phase {}, build+write phase {}; daemon CPU {build_cpu:?}; cache holds {cache_count} documents; RSS {:.0} MB (peak {:.0})",
        build / raw_cache,
        loaded.as_deref().unwrap_or("?"),
        build_phase.as_deref().unwrap_or("?"),
        rss_built.0,
        rss_built.1
    );

    let edits = env_or("FOUNDATION_BENCH_EDITS", 1000usize);
    let (from_send, from_ack) =
        edit_to_visible(couch, &daemon, &names, &sources, &mut revs, edits).await;
    println!(
        "edit-to-visible over {edits} edits: from sending the edit p50 {} p99 {} max {}; from CouchDB's ack p50 {} p99 {}",
        ms(percentile(&from_send, 0.5)),
        ms(percentile(&from_send, 0.99)),
        ms(*from_send.last().unwrap_or(&Duration::ZERO)),
        ms(percentile(&from_ack, 0.5)),
        ms(percentile(&from_ack, 0.99)),
    );

    let concurrency = env_or("FOUNDATION_BENCH_CONCURRENCY", 64usize);
    let secs = env_or("FOUNDATION_BENCH_GET_SECS", 10u64);
    let paths: Vec<String> = (0..n.min(1000))
        .map(|i| sysconf_path(&format!("cat{i:06}"), &["fetch_timeout"]))
        .collect();
    let wrk = wrk(&daemon.api_url(""), &paths, 2, concurrency, secs);
    if let Some(result) = &wrk {
        println!(
            "sysconf GET with wrk -t2 (separate process, {concurrency} connections, {secs} s): {result}"
        );
    }
    let (get_rps, latencies) = in_process_gets(&daemon, &paths, concurrency, secs).await;
    println!(
        "sysconf GET with an in-process client ({concurrency} connections, {secs} s): {get_rps:.0}/s, p50 {} p99 {} max {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    );
    let rss_end = rss_mb(daemon.pid());
    println!(
        "daemon RSS at the end: {:.0} MB (peak {:.0})",
        rss_end.0, rss_end.1
    );
    drop(daemon);
    for (_, db) in names.all() {
        couch.delete_db(&db).await;
    }
    Figures {
        docs: n,
        raw_source,
        raw_cache,
        build,
        build_phase,
        edit_p50: percentile(&from_send, 0.5),
        edit_p99: percentile(&from_send, 0.99),
        edit_acked_p99: percentile(&from_ack, 0.99),
        get_rps,
        get_p99: percentile(&latencies, 0.99),
        wrk,
        rss_built,
        rss_end,
    }
}

/// Edits one category at a time in CouchDB (`bench_edit` in the daemon's
/// node section) and polls the HTTP API until the new value is served.
async fn edit_to_visible(
    couch: &Couch,
    daemon: &Daemon,
    names: &DbNames,
    sources: &[Value],
    revs: &mut BTreeMap<String, String>,
    edits: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut from_send = Vec::with_capacity(edits);
    let mut from_ack = Vec::with_capacity(edits);
    let http = daemon.http();
    for e in 0..edits {
        let mut doc = sources[(e * 7919) % sources.len()].clone();
        let id = doc["_id"].as_str().unwrap_or_default().to_string();
        doc["_rev"] = json!(revs[&id]);
        doc["ecallmgr@kz1.example.net"]["bench_edit"] = json!(e + 1);
        let url = daemon.api_url(&sysconf_path(&id, &["bench_edit"]));
        let sent = Instant::now();
        let rev = couch
            .try_put(&names.system_config, &doc)
            .await
            .unwrap_or_else(|e| panic!("edit {id}: {e:?}"));
        let acked = Instant::now();
        revs.insert(id.clone(), rev);
        loop {
            let reply = http.get(&url).send().await.expect("GET");
            let body: Value = reply.json().await.unwrap_or(Value::Null);
            if body["value"] == json!(e + 1) {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "edit {e} never became visible: {body}"
            );
        }
        from_send.push(sent.elapsed());
        from_ack.push(acked.elapsed());
    }
    from_send.sort();
    from_ack.sort();
    (from_send, from_ack)
}

/// GETs on `concurrency` keep-alive connections for `secs`, from this
/// process (which shares the cores with the daemon and the server).
async fn in_process_gets(
    daemon: &Daemon,
    paths: &[String],
    concurrency: usize,
    secs: u64,
) -> (f64, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Arc<Vec<String>> = Arc::new(paths.iter().map(|p| daemon.api_url(p)).collect());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let (stop, urls) = (stop.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("a client");
            let mut latencies = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let reply = http.get(&urls[i % urls.len()]).send().await.expect("GET");
                assert_eq!(reply.status(), StatusCode::OK);
                let _ = reply.bytes().await.expect("the body");
                latencies.push(t.elapsed());
                i += concurrency;
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a client task"));
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

/// The daemon's start-up as its log tells it: every "database loaded" and
/// "full build written" line, with its time and fields.
fn print_timeline(daemon: &Daemon) {
    for line in daemon.logs() {
        let Ok(json) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let message = json["message"].as_str().unwrap_or_default();
        if message.contains("loaded") || message.contains("build") || message.contains("starting") {
            println!("  {line}");
        }
    }
}

/// Polls `/readyz` until 200 (30 minutes at most); with
/// `FOUNDATION_BENCH_TIMELINE` set, prints each change of its reasons.
async fn wait_ready(daemon: &Daemon, started: Instant) {
    let verbose = std::env::var_os("FOUNDATION_BENCH_TIMELINE").is_some();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(1800) {
        if let Ok(reply) = daemon.try_get("/readyz").await {
            if reply.status == StatusCode::OK {
                return;
            }
            if verbose && reply.text != last {
                println!("  {:?} /readyz {}", started.elapsed(), reply.text);
                last = reply.text;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the daemon was not ready within 30 minutes:\n{}",
        daemon.log_tail(40)
    );
}
