//! The failover benchmark (`cargo bench --bench failover`): two building
//! instances on one cache database against one, side by side in one run on
//! the same server and the same source edits.
//!
//! Two cache databases follow one `system_config` of N categories: `ha`,
//! built by builders A and B, and `solo`, built by builder S; a replica
//! (`build.enabled = false`) serves each. Every edit is one category
//! written to CouchDB, polled on both replicas until served, so each edit
//! gives an HA latency and a solo latency. Phases:
//! * `healthy`: A, B and S up;
//! * `A down`: right after A is killed with SIGKILL, until it is started
//!   again;
//! * `A restarting`: while the restarted A reloads every source and the
//!   cache and writes what differs;
//! * `A back`: once A is ready again.
//!
//! Also: documents each set of builders wrote per edit
//! (`caldera_cache_writes_total`, stored and conflict outcomes) in the
//! healthy phase, the restart's own writes, every builder's CPU and RSS, and how
//! often an edit already served was read back older (the 8 edits before
//! each edit are read again on both replicas) or was stored more often in
//! the HA cache than in the solo one (revision generations compared).
//!
//! Knobs: `FAILOVER_BENCH_DOCS` (categories, 1000), `FAILOVER_BENCH_EDITS`
//! (edits per phase, 200). Numbers are printed, not asserted.

#[path = "daemon_support/mod.rs"]
mod daemon_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use daemon_support::{cpu_time, env_or, machine, ms, percentile, rss_mb};
use support::couch::{Couch, DbNames};
use support::daemon::{Daemon, DaemonConfig, sysconf_path};
use support::metric_sample;

/// Edit → served latencies of one phase, for the HA pair and the solo builder.
struct Phase {
    name: &'static str,
    ha: Vec<Duration>,
    solo: Vec<Duration>,
    /// Reads of an earlier edit, once served, that gave an older value
    /// again (a builder writing an output built from older sources).
    stale_ha: usize,
    stale_solo: usize,
    /// The edits made in the phase (`n` of `edit_target`).
    edits: std::ops::Range<usize>,
}

/// Cache writes a builder reported, by outcome.
#[derive(Debug, Default, Clone, Copy)]
struct Writes {
    stored: f64,
    conflict: f64,
}

impl Writes {
    fn minus(self, earlier: Writes) -> Writes {
        Writes {
            stored: self.stored - earlier.stored,
            conflict: self.conflict - earlier.conflict,
        }
    }

    fn plus(self, other: Writes) -> Writes {
        Writes {
            stored: self.stored + other.stored,
            conflict: self.conflict + other.conflict,
        }
    }
}

async fn writes(daemon: &Daemon) -> Writes {
    let text = daemon.get("/metrics").await.text;
    let of = |outcome: &str| {
        let label = format!("outcome=\"{outcome}\"");
        metric_sample(&text, "caldera_cache_writes_total", &[&label]).unwrap_or(0.0)
    };
    Writes {
        stored: of("stored"),
        conflict: of("conflict"),
    }
}

fn category(i: usize) -> Value {
    json!({"_id": format!("cat{i:05}"), "pvt_type": "config",
           "default": {"k": i, "text": "x".repeat(200)}, "n1": {"k": i}})
}

/// The sources, the two caches, three builders and two replicas.
struct Setup {
    docs: usize,
    couch: Couch,
    names: DbNames,
    a: DaemonConfig,
    b: DaemonConfig,
    solo: DaemonConfig,
    ha_replica: DaemonConfig,
    solo_replica: DaemonConfig,
}

impl Setup {
    async fn new(docs: usize) -> Setup {
        let couch = Couch::shared();
        let names = DbNames::unique();
        let solo_names = names.with_cache("solo");
        couch.create_db(&names.system_config).await;
        let sources: Vec<Value> = (0..docs).map(category).collect();
        for chunk in sources.chunks(500) {
            couch.bulk_docs(&names.system_config, chunk).await;
        }
        let config = |names: &DbNames, node: &str, build: bool| {
            let mut config = DaemonConfig::new(couch.url(), names, node);
            config.set("log.level", "info").set("build.enabled", build);
            config
        };
        Setup {
            a: config(&names, "builder-a", true),
            b: config(&names, "builder-b", true),
            solo: config(&solo_names, "builder-s", true),
            ha_replica: config(&names, "replica-ha", false),
            solo_replica: config(&solo_names, "replica-solo", false),
            docs,
            couch,
            names,
        }
    }
}

/// One edit, polled on both replicas until each serves it.
/// The category edit `n` changes, the value it sets and the path serving it.
fn edit_target(setup: &Setup, n: usize) -> (Value, Value, String) {
    let mut doc = category((n * 7919) % setup.docs);
    let id = doc["_id"].as_str().unwrap_or_default().to_string();
    let value = json!(format!("edit {n}"));
    doc["default"]["edit"] = value.clone();
    let path = format!("{}?node=default", sysconf_path(&id, &["edit"]));
    (doc, value, path)
}

/// Whether `replica` still serves edit `n` (distinct edits touch distinct
/// categories while `n` < N).
async fn still_served(setup: &Setup, replica: &Daemon, n: usize) -> bool {
    let (_, value, path) = edit_target(setup, n);
    replica.get(&path).await.json["value"] == value
}

async fn edit(setup: &Setup, ha: &Daemon, solo: &Daemon, n: usize) -> (Duration, Duration) {
    let (doc, value, path) = edit_target(setup, n);
    let sent = Instant::now();
    setup.couch.upsert(&setup.names.system_config, &doc).await;
    let (mut ha_at, mut solo_at) = (None, None);
    while ha_at.is_none() || solo_at.is_none() {
        for (replica, at) in [(ha, &mut ha_at), (solo, &mut solo_at)] {
            if at.is_none() && replica.get(&path).await.json["value"] == value {
                *at = Some(sent.elapsed());
            }
        }
        assert!(
            sent.elapsed() < Duration::from_secs(60),
            "edit {n} not served"
        );
    }
    (ha_at.unwrap_or_default(), solo_at.unwrap_or_default())
}

/// `count` edits, or fewer when `until_ready` (a restarting builder)
/// becomes ready first.
async fn phase(
    name: &'static str,
    setup: &Setup,
    replicas: (&Daemon, &Daemon),
    next: &mut usize,
    count: usize,
    until_ready: Option<&Daemon>,
) -> Phase {
    let mut phase = Phase {
        name,
        ha: Vec::new(),
        solo: Vec::new(),
        stale_ha: 0,
        stale_solo: 0,
        edits: *next..*next,
    };
    for _ in 0..count {
        if let Some(daemon) = until_ready
            && daemon.readyz().await == Ok(reqwest::StatusCode::OK)
        {
            break;
        }
        let (ha, solo) = edit(setup, replicas.0, replicas.1, *next).await;
        for earlier in next.saturating_sub(8)..*next {
            phase.stale_ha += usize::from(!still_served(setup, replicas.0, earlier).await);
            phase.stale_solo += usize::from(!still_served(setup, replicas.1, earlier).await);
        }
        *next += 1;
        phase.ha.push(ha);
        phase.solo.push(solo);
    }
    phase.ha.sort();
    phase.solo.sort();
    phase.edits.end = *next;
    phase
}

/// Cache revisions the HA pair stored for a phase's categories beyond
/// those the solo builder stored: each category is edited once in the
/// run, so both caches should hold the same generation; a builder storing
/// older content over newer and then the newer again adds two.
async fn extra_revisions(setup: &Setup, phase: &Phase) -> u64 {
    let generation = |rev: Option<String>| {
        rev.and_then(|r| r.split_once('-')?.0.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let solo_cache = setup.names.with_cache("solo").cache;
    let mut extra = 0;
    for n in phase.edits.clone() {
        let (doc, _, _) = edit_target(setup, n);
        let id = format!("sysconf:{}", doc["_id"].as_str().unwrap_or_default());
        let ha = generation(setup.couch.rev(&setup.names.cache, &id).await);
        let solo = generation(setup.couch.rev(&solo_cache, &id).await);
        extra += ha.saturating_sub(solo);
    }
    extra
}

fn row(phase: &Phase, extra: u64) -> String {
    let p = |s: &[Duration], q| ms(percentile(s, q));
    format!(
        "| {} | {} | {} / {} | {} / {} | {} / {} | {extra} |",
        phase.name,
        phase.ha.len(),
        p(&phase.ha, 0.5),
        p(&phase.ha, 0.99),
        p(&phase.solo, 0.5),
        p(&phase.solo, 0.99),
        phase.stale_ha,
        phase.stale_solo,
    )
}

fn rss(label: &str, daemon: &Daemon) -> String {
    let (now, peak) = rss_mb(daemon.pid());
    format!("{label} {now:.0} MB (peak {peak:.0})")
}

async fn bench(docs: usize, edits: usize) {
    let setup = Setup::new(docs).await;
    let mut a = Daemon::start_ready(&setup.a).await;
    let b = Daemon::start_ready(&setup.b).await;
    let solo = Daemon::start_ready(&setup.solo).await;
    let ha_replica = Daemon::start_ready(&setup.ha_replica).await;
    let solo_replica = Daemon::start_ready(&setup.solo_replica).await;
    let replicas = (&ha_replica, &solo_replica);
    let mut next = 0;
    let mut phases = Vec::new();

    let before = (writes(&a).await, writes(&b).await, writes(&solo).await);
    let cpu = |d: &Daemon| cpu_time(d.pid());
    let cpu_before = [cpu(&a), cpu(&b), cpu(&solo)];
    phases.push(phase("healthy", &setup, replicas, &mut next, edits, None).await);
    let after = (writes(&a).await, writes(&b).await, writes(&solo).await);
    let cpu_used: Vec<Duration> = [cpu(&a), cpu(&b), cpu(&solo)]
        .iter()
        .zip(cpu_before)
        .map(|(now, then)| now.saturating_sub(then))
        .collect();
    let ha_writes = after.0.minus(before.0).plus(after.1.minus(before.1));
    let solo_writes = after.2.minus(before.2);
    let rss_healthy = [rss("A", &a), rss("B", &b), rss("S", &solo)].join(", ");

    a.kill9();
    phases.push(phase("A down", &setup, replicas, &mut next, edits, None).await);
    let restarted = Instant::now();
    a = Daemon::start(&setup.a).await;
    phases.push(phase("A restarting", &setup, replicas, &mut next, edits, Some(&a)).await);
    a.wait_ready().await;
    let ready_after = restarted.elapsed();
    let restart_writes = writes(&a).await;
    phases.push(phase("A back", &setup, replicas, &mut next, edits, None).await);
    let rss_end = [rss("A", &a), rss("B", &b), rss("S", &solo)].join(", ");

    println!(
        "\nN = {docs} categories, {edits} edits per phase, machine: {}",
        machine()
    );
    println!(
        "\n| phase | edits | HA (A+B) edit → served p50 / p99 | solo (S) p50 / p99 | older value served again, HA / solo | extra HA revisions |"
    );
    println!("|---|---|---|---|---|---|");
    for phase in &phases {
        println!("{}", row(phase, extra_revisions(&setup, phase).await));
    }
    let per_edit = |w: Writes| (w.stored / edits as f64, w.conflict / edits as f64);
    let (ha_stored, ha_conflicts) = per_edit(ha_writes);
    let (solo_stored, solo_conflicts) = per_edit(solo_writes);
    println!(
        "\nhealthy phase, cache documents written per edit: HA {ha_stored:.2} stored + {ha_conflicts:.2} conflicts (409), solo {solo_stored:.2} stored + {solo_conflicts:.2} conflicts; ratio HA/solo {:.2} (requests that reached CouchDB: {:.2})",
        ha_stored / solo_stored.max(f64::MIN_POSITIVE),
        (ha_stored + ha_conflicts) / (solo_stored + solo_conflicts).max(f64::MIN_POSITIVE),
    );
    println!(
        "restarted A: ready after {} and wrote {} documents ({} conflicts) while restarting",
        ms(ready_after),
        restart_writes.stored,
        restart_writes.conflict
    );
    println!(
        "builder CPU in the healthy phase: A {}, B {}, S {}",
        ms(cpu_used[0]),
        ms(cpu_used[1]),
        ms(cpu_used[2])
    );
    println!("RSS after the healthy phase: {rss_healthy}; at the end: {rss_end}");
}

fn main() {
    let docs = env_or("FAILOVER_BENCH_DOCS", 1000);
    let edits = env_or("FAILOVER_BENCH_EDITS", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!("failover bench; machine: {}", machine());
    runtime.block_on(bench(docs, edits));
}
