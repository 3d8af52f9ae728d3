//! Routing and ACLs through the real daemon (`cargo bench --bench
//! domains_daemon`): the figures of issues 4 and 5 that the pure benches
//! (`benches/routing.rs`, `benches/acls.rs`) cannot give, measured with the
//! daemon binary, a real CouchDB-compatible server (the tests' harness:
//! in-memory pouchdb-server, or `COUCHDB_URL`) and, for ACL hostnames, a
//! loopback hickory DNS server.
//!
//! * Routing: 100k rules across 10 rulesets, 200 gateways in 20 carriers,
//!   10 host-profile gateways. Start-up to every table served; HTTP lookups
//!   per second with p50/p99 from `wrk` (a separate process, the fair
//!   measurement on a 2-core machine) and from an in-process client (the
//!   old figure); one carrier edit written to CouchDB → time until every
//!   table reached answers the new result (every sampled affected lookup is
//!   checked afterwards).
//! * ACLs: 50k auth-by-ip devices, 5k resources whose gateways name 2k
//!   distinct hostnames served by the loopback DNS server. Start-up to
//!   every hostname resolved; `freeswitch.xml` requests per second; one
//!   device edit written to CouchDB → visible in `freeswitch.xml`.
//!
//! Knobs: `DOMAINS_BENCH_RULES` (100000), `DOMAINS_BENCH_DEVICES` (50000),
//! `DOMAINS_BENCH_SECS` (10, per load run), `DOMAINS_BENCH_EDITS` (100
//! device edits, 5 carrier edits), `DOMAINS_BENCH_ONLY` (`routing` or
//! `acls`). Numbers are printed, not asserted.

#[path = "acl_data.rs"]
mod acl_data;
#[path = "daemon_support/mod.rs"]
mod daemon_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use reqwest::StatusCode;
use serde_json::{Value, json};

use acl_data::{HOSTNAMES, device, host_addresses, resource};
use daemon_support::{cpu_time, env_or, machine, ms, percentile, rss_mb, wrk};
use support::couch::{Couch, DbNames};
use support::daemon::{Daemon, DaemonConfig};

const SDN: &str = "example.net";
const RULESETS: usize = 10;
const GATEWAYS: usize = 200;
const CARRIERS: usize = 20;
const HOSTS: usize = 10;
const RESOURCES: usize = 5_000;
/// The carrier whose edits are timed.
const EDITED_CARRIER: &str = "c3";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!("domains through the daemon; machine: {}", machine());
    let couch = Couch::shared();
    let only = std::env::var("DOMAINS_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "routing" {
        runtime.block_on(routing(&couch));
    }
    if only.is_empty() || only == "acls" {
        runtime.block_on(acls(&couch));
    }
    println!("\nmachine at the end: {}", machine());
}

/// Writes documents in `_bulk_docs` batches of 1000; returns id → rev.
async fn load(couch: &Couch, db: &str, docs: &[Value]) -> BTreeMap<String, String> {
    couch.create_db(db).await;
    let mut revs = BTreeMap::new();
    for chunk in docs.chunks(1000) {
        for result in couch.bulk_docs(db, chunk).await {
            let id = result["id"].as_str().unwrap_or_default().to_string();
            let rev = result["rev"]
                .as_str()
                .unwrap_or_else(|| panic!("{db}: {id} refused: {result}"));
            revs.insert(id, rev.to_string());
        }
    }
    revs
}

fn bench_config(couch: &Couch, names: &DbNames) -> DaemonConfig {
    let mut config = DaemonConfig::new(couch.url(), names, "caldera@bench");
    config
        .set("log.level", "info")
        .set("feeds.heartbeat_ms", 5000);
    if let Ok(level) = std::env::var("DOMAINS_BENCH_LOG") {
        // e.g. `info,caldera::rebuild=debug` to see every batch's timing.
        config.set("log.level", level);
    }
    config.label = "bench".into();
    config
}

/// With `DOMAINS_BENCH_LOG` set, prints the daemon's log lines that hold
/// `needle`.
fn print_log(daemon: &Daemon, needle: &str) {
    if std::env::var_os("DOMAINS_BENCH_LOG").is_some() {
        for line in daemon.logs().iter().filter(|l| l.contains(needle)) {
            println!("  {line}");
        }
    }
}

/// Starts the daemon; returns it, when it was spawned, and how long until
/// `/readyz` answered 200.
async fn start(config: &DaemonConfig) -> (Daemon, Instant, Duration) {
    let started = Instant::now();
    let daemon = Daemon::start(config).await;
    daemon.wait_ready_within(Duration::from_secs(1800)).await;
    (daemon, started, started.elapsed())
}

async fn cleanup(couch: &Couch, prefix: &str) {
    for db in couch.all_dbs().await {
        if db.starts_with(&format!("{prefix}_")) {
            couch.delete_db(&db).await;
        }
    }
}

// ---------------------------------------------------------------- routing

/// The routing data: provisioning documents, each ruleset database with
/// its rules, and each ruleset's rule prefixes.
struct RoutingData {
    provisioning: Vec<Value>,
    rulesets: Vec<(String, Vec<Value>)>,
    prefixes: Vec<Vec<String>>,
}

fn routing_sources(prefix: &str, total_rules: usize) -> RoutingData {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut provisioning = Vec::new();
    for c in 0..CARRIERS {
        provisioning.push(
            json!({"_id": format!("carrier:{SDN}:c{c}"), "type": "carrier",
            "try": 1 + (c % 2), "attrs": {"carrier": format!("c{c}")}}),
        );
    }
    for g in 0..GATEWAYS {
        provisioning.push(
            json!({"_id": format!("gateway:{SDN}:g{g}"), "type": "gateway",
            "address": format!("198.51.{}.{}:5060", g / 250, g % 250),
            "carrierid": format!("c{}", g % CARRIERS), "weight": 1 + rng.u8(..3)}),
        );
    }
    for h in 0..HOSTS {
        provisioning.push(
            json!({"_id": format!("host@sbc{h}"), "type": "host", "host": format!("sbc{h}"),
            "sip_domain_name": SDN, "sip_profiles": {"p": {"ingress_sip_ip": format!("192.0.2.{h}"),
            "ingress_sip_port": 5060, "egress_gwid": format!("hp{h}")}}}),
        );
    }
    let mut rulesets = Vec::new();
    let mut prefixes = Vec::new();
    for r in 0..RULESETS {
        let db = format!("{prefix}_rules_{r}");
        provisioning.push(
            json!({"_id": format!("ruleset:{SDN}:r{r}"), "type": "ruleset",
            "database": db, "title": format!("ruleset {r}")}),
        );
        let (rules, own) = rules(&mut rng, total_rules / RULESETS);
        rulesets.push((db, rules));
        prefixes.push(own);
    }
    RoutingData {
        provisioning,
        rulesets,
        prefixes,
    }
}

/// `count` rules with distinct 2–8 digit prefixes and 1–3 gwlist entries
/// (half carrier entries), 10% with attrs of their own, plus a catch-all.
fn rules(rng: &mut fastrand::Rng, count: usize) -> (Vec<Value>, Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    let mut docs = Vec::with_capacity(count + 1);
    while docs.len() < count {
        let len = rng.usize(2..=8);
        let prefix: String = (0..len).map(|_| char::from(b'0' + rng.u8(..10))).collect();
        if !seen.insert(prefix.clone()) {
            continue;
        }
        let gwlist: Vec<Value> = (0..rng.usize(1..=3))
            .map(|_| match rng.u8(..10) {
                0..=4 => json!({"carrierid": format!("c{}", rng.usize(..CARRIERS))}),
                5 => json!({"gwid": format!("hp{}", rng.usize(..HOSTS))}),
                _ => json!({"gwid": format!("g{}", rng.usize(..GATEWAYS))}),
            })
            .collect();
        let mut body = json!({"_id": format!("rule:{prefix}"), "type": "rule", "gwlist": gwlist});
        if rng.u8(..100) < 10 {
            body["attrs"] = json!({"tag": prefix.clone()});
        }
        docs.push(body);
    }
    docs.push(json!({"_id": "rule:", "type": "rule", "gwlist": [{"carrierid": "c0"}]}));
    (docs, seen.into_iter().collect())
}

fn route_path(ruleset: usize, number: &str) -> String {
    format!("/v1/routes/{SDN}/r{ruleset}/{number}?host=sbc1")
}

async fn routing(couch: &Couch) {
    let total_rules = env_or("DOMAINS_BENCH_RULES", 100_000usize);
    let secs = env_or("DOMAINS_BENCH_SECS", 10u64);
    println!(
        "\n== routing: {total_rules} rules in {RULESETS} rulesets, {GATEWAYS} gateways in {CARRIERS} carriers, {HOSTS} host gateways =="
    );
    let names = DbNames::unique();
    let provisioning_db = format!("{}_provisioning", names.prefix);
    let RoutingData {
        provisioning,
        rulesets,
        prefixes,
    } = routing_sources(&names.prefix, total_rules);
    let started = Instant::now();
    let revs = load(couch, &provisioning_db, &provisioning).await;
    for (db, rules) in &rulesets {
        load(couch, db, rules).await;
    }
    println!("loaded into CouchDB in {:?}", started.elapsed());

    let (daemon, _, ready_after) = start(&bench_config(couch, &names)).await;
    let mut rng = fastrand::Rng::with_seed(7);
    let numbers: Vec<(usize, String)> = (0..20_000)
        .map(|_| {
            let r = rng.usize(..RULESETS);
            let mut number = prefixes[r][rng.usize(..prefixes[r].len())].clone();
            while number.len() < 11 {
                number.push(char::from(b'0' + rng.u8(..10)));
            }
            (r, number)
        })
        .collect();
    for r in 0..RULESETS {
        let reply = daemon.get(&route_path(r, "0")).await;
        assert_eq!(reply.status, StatusCode::OK, "ruleset r{r}: {}", reply.text);
    }
    let (rss, peak) = rss_mb(daemon.pid());
    println!(
        "daemon start to ready (every table built, written, mirrored and compiled): {ready_after:?}; CPU {:?}; RSS {rss:.0} MB (peak {peak:.0})",
        cpu_time(daemon.pid())
    );

    let paths: Vec<String> = numbers
        .iter()
        .take(5000)
        .map(|(r, n)| route_path(*r, n))
        .collect();
    let base = daemon.api_url("");
    for (threads, connections) in [(1, 1), (1, 8), (2, 64)] {
        match wrk(&base, &paths, threads, connections, secs) {
            Some(result) => println!(
                "HTTP lookups, wrk -t{threads} -c{connections} (separate process): {result}"
            ),
            None => {
                println!("wrk is not installed (apt-get install wrk): no separate-process figure")
            }
        }
    }
    let (rate, latencies) = in_process_lookups(&daemon, &numbers, 8).await;
    println!(
        "HTTP lookups, in-process client, 8 connections: {rate:.0}/s, p50 {} p99 {} max {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    );

    carrier_edits(couch, &daemon, &provisioning_db, &revs, &numbers).await;
    print_log(&daemon, "batch written");
    print_log(&daemon, "cache _bulk_docs");
    let (rss, peak) = rss_mb(daemon.pid());
    println!("daemon RSS at the end: {rss:.0} MB (peak {peak:.0})");
    drop(daemon);
    cleanup(couch, &names.prefix).await;
}

/// 20k lookups on `connections` keep-alive connections from this process.
async fn in_process_lookups(
    daemon: &Daemon,
    numbers: &[(usize, String)],
    connections: usize,
) -> (f64, Vec<Duration>) {
    let per = numbers.len() / connections;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let urls: Vec<String> = numbers[c * per..(c + 1) * per]
            .iter()
            .map(|(r, n)| daemon.api_url(&route_path(*r, n)))
            .collect();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("a client");
            let mut latencies = Vec::with_capacity(urls.len());
            for url in urls {
                let t = Instant::now();
                let reply = http.get(&url).send().await.expect("GET");
                assert!(reply.status().is_success(), "{url}: {}", reply.status());
                let _ = reply.bytes().await.expect("the body");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a client task"));
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

/// Whether every gateway of the edited carrier in a lookup answer has the
/// edited `progress_timeout`; `None` when the answer has none of them.
fn carrier_updated(answer: &Value, progress_timeout: i64) -> Option<bool> {
    let gateways = answer["gateways"].as_array()?;
    let ours: Vec<&Value> = gateways
        .iter()
        .filter(|g| g["carrierid"] == EDITED_CARRIER)
        .collect();
    (!ours.is_empty()).then(|| {
        ours.iter()
            .all(|g| g["progress_timeout"] == progress_timeout)
    })
}

/// Edits the carrier in CouchDB and times until every table that reaches
/// it answers the new result (a table is one cache document, swapped
/// whole, so one affected lookup per table tells); then checks every
/// sampled affected lookup.
async fn carrier_edits(
    couch: &Couch,
    daemon: &Daemon,
    db: &str,
    revs: &BTreeMap<String, String>,
    numbers: &[(usize, String)],
) {
    let edits = env_or("DOMAINS_BENCH_EDITS", 100usize).clamp(1, 5);
    let id = format!("carrier:{SDN}:{EDITED_CARRIER}");
    let mut rev = revs[&id].clone();
    // Lookups that reach the carrier (the answer names it), per ruleset.
    let mut affected: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (r, number) in numbers.iter().take(3000) {
        let reply = daemon.get(&route_path(*r, number)).await;
        if carrier_updated(&reply.json, -1).is_some() {
            affected.entry(*r).or_default().push(number.clone());
        }
    }
    let sampled: usize = affected.values().map(Vec::len).sum();
    println!(
        "carrier {EDITED_CARRIER}: {sampled} of 3000 sampled lookups reach it, in {} of {RULESETS} rulesets",
        affected.len()
    );
    for e in 0..edits {
        let timeout = 7000 + e as i64;
        let doc = json!({"_id": id, "_rev": rev, "type": "carrier", "try": 2,
            "progress_timeout": timeout, "attrs": {"carrier": EDITED_CARRIER}});
        let sent = Instant::now();
        rev = couch.try_put(db, &doc).await.expect("the carrier edit");
        let mut waiting: Vec<usize> = affected.keys().copied().collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for r in waiting {
                let reply = daemon.get(&route_path(r, &affected[&r][0])).await;
                if carrier_updated(&reply.json, timeout) != Some(true) {
                    still.push(r);
                }
            }
            waiting = still;
            assert!(
                sent.elapsed() < Duration::from_secs(120),
                "the carrier edit never showed"
            );
            if !waiting.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let visible = sent.elapsed();
        for (r, list) in &affected {
            for number in list {
                let reply = daemon.get(&route_path(*r, number)).await;
                assert_eq!(
                    carrier_updated(&reply.json, timeout),
                    Some(true),
                    "r{r}/{number} still answers the old carrier: {}",
                    reply.text
                );
            }
        }
        println!(
            "carrier edit {e}: every affected table answers the new result {} after the edit was sent",
            ms(visible)
        );
    }
}

// ---------------------------------------------------------------- ACLs

/// A loopback hickory DNS server answering `gw<h>.bench.test` with two A
/// records each (TTL 300 s); returns it (keep it alive) and its port.
async fn dns_server() -> (Server<Catalog>, u16) {
    let name = |text: &str| Name::from_str(text).expect("a DNS name");
    let origin = name("bench.test.");
    let mut zone: InMemoryZoneHandler =
        InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(
        name("ns.bench.test."),
        name("admin.bench.test."),
        1,
        60,
        60,
        60,
        1,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    for h in 0..HOSTNAMES {
        let owner = name(&format!("gw{h}.bench.test."));
        for address in host_addresses(h) {
            zone.upsert_mut(
                Record::from_rdata(owner.clone(), 300, RData::A(A(address))),
                1,
            );
        }
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("a DNS socket");
    let port = socket.local_addr().expect("its address").port();
    let mut server = Server::new(catalog);
    server.register_socket(socket);
    (server, port)
}

async fn acls(couch: &Couch) {
    let devices = env_or("DOMAINS_BENCH_DEVICES", 50_000usize);
    let secs = env_or("DOMAINS_BENCH_SECS", 10u64);
    println!(
        "\n== ACLs: {devices} auth-by-ip devices, {RESOURCES} resources over {HOSTNAMES} hostnames (loopback DNS) =="
    );
    let names = DbNames::unique();
    let (_dns, port) = dns_server().await;
    let sip_auth = format!("{}_sip_auth", names.prefix);
    let offnet = format!("{}_offnet", names.prefix);
    let mut local: Vec<Value> = (0..devices).map(device).collect();
    let mut global = Vec::new();
    for n in 0..RESOURCES {
        if n % 5 == 0 {
            local.push(resource(n));
        } else {
            global.push(resource(n));
        }
    }
    let started = Instant::now();
    let revs = load(couch, &sip_auth, &local).await;
    load(couch, &offnet, &global).await;
    couch.create_db(&names.system_config).await;
    couch
        .put(&names.system_config, &json!({"_id": "ecallmgr", "default": {"acls": {
            "kamailio-1": {"type": "allow", "network-list-name": "authoritative", "cidr": "10.255.0.11/32"}}}}))
        .await;
    println!("loaded into CouchDB in {:?}", started.elapsed());

    let mut config = bench_config(couch, &names);
    config
        .set("acls.dns_servers", format!("127.0.0.1:{port}"))
        .set("acls.dns_timeout_ms", 500);
    let (daemon, spawned, ready_after) = start(&config).await;
    let last_host = host_addresses(HOSTNAMES - 1)[1].to_string();
    let resolved_after = loop {
        let reply = daemon.get("/v1/acls/freeswitch.xml").await;
        if reply.status == StatusCode::OK && reply.text.contains(&format!("\"{last_host}/32\"")) {
            break spawned.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let errors = daemon.get("/v1/acls").await.json["errors"].clone();
    if let Some(first) = errors.as_array().and_then(|e| e.first()) {
        println!("first ACL error: {first}");
    }
    let xml = daemon.get("/v1/acls/freeswitch.xml").await;
    let (rss, peak) = rss_mb(daemon.pid());
    println!(
        "daemon start to ready: {ready_after:?}; every hostname resolved and served by {resolved_after:?}; \
         freeswitch.xml {} kB, {} nodes; errors {}; CPU {:?}; RSS {rss:.0} MB (peak {peak:.0})",
        xml.text.len() / 1000,
        xml.text.matches("<node ").count(),
        errors.as_array().map_or(0, Vec::len),
        cpu_time(daemon.pid())
    );

    let base = daemon.api_url("");
    let paths = vec!["/v1/acls/freeswitch.xml".to_string()];
    for (threads, connections) in [(1, 1), (1, 4), (2, 16)] {
        match wrk(&base, &paths, threads, connections, secs) {
            Some(result) => println!(
                "freeswitch.xml, wrk -t{threads} -c{connections} (separate process): {result}"
            ),
            None => println!("wrk is not installed (apt-get install wrk): no freeswitch.xml rate"),
        }
    }

    device_edits(couch, &daemon, &sip_auth, &revs, devices).await;
    let (rss, peak) = rss_mb(daemon.pid());
    println!("daemon RSS at the end: {rss:.0} MB (peak {peak:.0})");
    drop(daemon);
    cleanup(couch, &names.prefix).await;
}

/// Moves one device at a time to a new address in CouchDB; polls
/// `/metrics` (small) until the cache write is counted, then
/// `freeswitch.xml` (3 MB) until the new address is served, so the time
/// splits into "in the cache" and "served".
async fn device_edits(
    couch: &Couch,
    daemon: &Daemon,
    db: &str,
    revs: &BTreeMap<String, String>,
    devices: usize,
) {
    let edits = env_or("DOMAINS_BENCH_EDITS", 100usize);
    let mut stored = Vec::with_capacity(edits);
    let mut visible = Vec::with_capacity(edits);
    let url = daemon.api_url("/v1/acls/freeswitch.xml");
    for e in 0..edits {
        let n = (e * 7919) % devices;
        let mut doc = device(n);
        let id = doc["_id"].as_str().unwrap_or_default().to_string();
        doc["_rev"] = json!(revs[&id]);
        let ip = Ipv4Addr::from(0x0bc8_0000u32 + e as u32 + 1).to_string();
        doc["sip"]["ip"] = json!(ip);
        let needle = format!("\"{ip}/32\"");
        let writes_before = stored_writes(daemon).await;
        let sent = Instant::now();
        couch.try_put(db, &doc).await.expect("the device edit");
        while stored_writes(daemon).await <= writes_before {
            assert!(
                sent.elapsed() < Duration::from_secs(60),
                "edit {e} never stored"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stored.push(sent.elapsed());
        loop {
            let body = daemon
                .http()
                .get(&url)
                .send()
                .await
                .expect("GET")
                .text()
                .await
                .expect("the body");
            if body.contains(&needle) {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(60),
                "edit {e} never showed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        visible.push(sent.elapsed());
    }
    // The serving side alone: from the cache write counted to served.
    let mut serving: Vec<Duration> = visible.iter().zip(&stored).map(|(v, s)| *v - *s).collect();
    stored.sort();
    visible.sort();
    serving.sort();
    println!(
        "one device edit, {edits} edits, from sending it to CouchDB: in the cache (write counted) p50 {} p99 {}; \
         served in freeswitch.xml p50 {} p99 {} max {}; served after the write was counted p50 {} p99 {}",
        ms(percentile(&stored, 0.5)),
        ms(percentile(&stored, 0.99)),
        ms(percentile(&visible, 0.5)),
        ms(percentile(&visible, 0.99)),
        ms(*visible.last().unwrap_or(&Duration::ZERO)),
        ms(percentile(&serving, 0.5)),
        ms(percentile(&serving, 0.99)),
    );
}

/// `caldera_cache_writes_total{outcome="stored"}` now.
async fn stored_writes(daemon: &Daemon) -> f64 {
    let text = daemon.get("/metrics").await.text;
    text.lines()
        .find(|l| l.starts_with("caldera_cache_writes_total{") && l.contains("\"stored\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
