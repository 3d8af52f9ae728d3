//! Routing at scale (`cargo bench --bench routing`): 100k rules across 10
//! rulesets, 200 gateways in 20 carriers (plus 10 host-profile gateways).
//! Measures the pure builds (the ten ruleset documents and the domain's
//! gateway directory), the cache document sizes, composing the lookup
//! tables, in-process lookups (throughput and latency), one carrier edit
//! (which outputs it reaches, how long until they are rebuilt and every
//! table answers the new result), RSS, and HTTP lookups through the real
//! api router on loopback (served from a mirror holding the built
//! documents; CouchDB is not involved in serving). `ROUTING_BENCH_RULES`
//! scales the rule count, `ROUTING_BENCH_RULESETS` (10) the rulesets they
//! are spread over (issue 13's platform: 1M rules in 100 rulesets).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera::cache::mirror::{Mirror, Update};
use caldera::cache::{CacheEntry, content_hash};
use caldera::couch::{Body, Client};
use caldera::domains::routing::RoutingBuilder;
use caldera::domains::routing::compose;
use caldera::domains::routing::model::{PROVISIONING, directory_domain, ruleset_source};
use caldera::domains::routing::service::{RoutingService, routing_index};
use caldera::domains::{Builder, Built};
use caldera::rebuild::deps::DepGraph;
use caldera::rebuild::index::{Dep, Index, Reads, SourceDoc, SourceId};
use serde_json::{Value, json};

/// The daemon's allocator (src/main.rs), so memory figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rulesets() -> usize {
    static RULESETS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *RULESETS.get_or_init(|| {
        std::env::var("ROUTING_BENCH_RULESETS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(10)
    })
}
const GATEWAYS: usize = 200;
const CARRIERS: usize = 20;
const HOSTS: usize = 10;
const SDN: &str = "example.net";

fn doc(id: String, body: Value) -> (String, Arc<SourceDoc>) {
    let doc = SourceDoc {
        id: id.clone(),
        rev: "1-a".into(),
        body: Body::of(&body),
    };
    (id, Arc::new(doc))
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn provisioning(rng: &mut fastrand::Rng) -> BTreeMap<String, Arc<SourceDoc>> {
    let mut docs = BTreeMap::new();
    for c in 0..CARRIERS {
        let body =
            json!({"type": "carrier", "try": 1 + (c % 2), "attrs": {"carrier": format!("c{c}")}});
        docs.extend([doc(format!("carrier:{SDN}:c{c}"), body)]);
    }
    for g in 0..GATEWAYS {
        let body = json!({"type": "gateway", "address": format!("198.51.{}.{}:5060", g / 250, g % 250),
                          "carrierid": format!("c{}", g % CARRIERS), "weight": 1 + rng.u8(..3)});
        docs.extend([doc(format!("gateway:{SDN}:g{g}"), body)]);
    }
    for h in 0..HOSTS {
        let body = json!({"type": "host", "host": format!("sbc{h}"), "sip_domain_name": SDN,
                          "sip_profiles": {"p": {"ingress_sip_ip": format!("192.0.2.{h}"), "ingress_sip_port": 5060,
                                                 "egress_gwid": format!("hp{h}")}}});
        docs.extend([doc(format!("host@sbc{h}"), body)]);
    }
    for r in 0..rulesets() {
        let body = json!({"type": "ruleset", "database": format!("rules_{r}"), "title": format!("ruleset {r}")});
        docs.extend([doc(format!("ruleset:{SDN}:r{r}"), body)]);
    }
    docs
}

/// `count` rules with distinct digit prefixes (2–8 digits) and 1–3 entries.
fn rules(
    rng: &mut fastrand::Rng,
    count: usize,
    attrs_percent: u8,
) -> (BTreeMap<String, Arc<SourceDoc>>, Vec<String>) {
    let mut docs = BTreeMap::new();
    let mut prefixes = Vec::with_capacity(count);
    while docs.len() < count {
        let len = rng.usize(2..=8);
        let prefix: String = (0..len).map(|_| char::from(b'0' + rng.u8(..10))).collect();
        if docs.contains_key(&format!("rule:{prefix}")) {
            continue;
        }
        let gwlist: Vec<Value> = (0..rng.usize(1..=3))
            .map(|_| match rng.u8(..10) {
                0..=4 => json!({"carrierid": format!("c{}", rng.usize(..CARRIERS))}),
                5 => json!({"gwid": format!("hp{}", rng.usize(..HOSTS))}),
                _ => json!({"gwid": format!("g{}", rng.usize(..GATEWAYS))}),
            })
            .collect();
        let mut body = json!({"type": "rule", "gwlist": gwlist});
        if rng.u8(..100) < attrs_percent {
            body["attrs"] = json!({"tag": prefix.clone()});
        }
        docs.extend([doc(format!("rule:{prefix}"), body)]);
        prefixes.push(prefix);
    }
    docs.extend([doc(
        "rule:".into(),
        json!({"gwlist": [{"carrierid": "c0"}]}),
    )]);
    (docs, prefixes)
}

struct BuiltTable {
    key: String,
    content: Value,
    deps: BTreeSet<Dep>,
}

fn build_all(index: &Index) -> Vec<BuiltTable> {
    RoutingBuilder
        .all_keys(index)
        .into_iter()
        .map(|key| {
            let mut reads = Reads::new(index);
            let Built::Content { content, .. } = RoutingBuilder.build(&key, &mut reads) else {
                panic!("{key} did not build")
            };
            let (deps, _) = reads.finish();
            BuiltTable { key, content, deps }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let total_rules: usize = std::env::var("ROUTING_BENCH_RULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let per_ruleset = total_rules / rulesets();
    // Rules with attributes of their own cannot share resolved gateways.
    let attrs_percent: u8 = std::env::var("ROUTING_BENCH_ATTRS_PERCENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut rng = fastrand::Rng::with_seed(42);
    println!(
        "routing bench: {total_rules} rules in {} rulesets, {GATEWAYS} gateways in {CARRIERS} carriers, {HOSTS} host gateways, {attrs_percent}% of rules with attrs of their own",
        rulesets()
    );
    let rss_start = rss_mb();

    let started = Instant::now();
    let mut index = routing_index();
    index.replace(&SourceId::from(PROVISIONING), provisioning(&mut rng));
    let mut all_prefixes = Vec::new();
    for r in 0..rulesets() {
        let (docs, prefixes) = rules(&mut rng, per_ruleset, attrs_percent);
        index.replace(
            &SourceId::from(ruleset_source(&format!("rules_{r}")).as_str()),
            docs,
        );
        all_prefixes.push(prefixes);
    }
    let rss_index = rss_mb();
    println!(
        "index loaded: {:?}, RSS {:.0} MB (+{:.0})",
        started.elapsed(),
        rss_mb(),
        rss_mb() - rss_start
    );

    // The builds (pure), one thread: ten ruleset documents, one directory.
    let started = Instant::now();
    let tables = build_all(&index);
    let build = started.elapsed();
    let sizes: Vec<usize> = tables
        .iter()
        .map(|t| serde_json::to_vec(&t.content).unwrap().len())
        .collect();
    let is_table = |t: &BuiltTable| directory_domain(&t.key).is_none();
    let table_sizes: Vec<usize> = tables
        .iter()
        .zip(&sizes)
        .filter(|(t, _)| is_table(t))
        .map(|(_, size)| *size)
        .collect();
    let directory_size: usize = tables
        .iter()
        .zip(&sizes)
        .filter(|(t, _)| !is_table(t))
        .map(|(_, size)| *size)
        .sum();
    println!(
        "build: {build:?} for {} outputs ({:.1} µs/rule); ruleset documents {:.2} MB each on average (max {:.2} MB); gateway directory {:.1} kB",
        tables.len(),
        build.as_secs_f64() * 1e6 / total_rules as f64,
        table_sizes.iter().sum::<usize>() as f64 / table_sizes.len() as f64 / 1e6,
        *table_sizes.iter().max().unwrap() as f64 / 1e6,
        directory_size as f64 / 1e3,
    );
    let count = |name: &str| {
        let lists = tables.iter().filter_map(|t| t.content[name].as_array());
        lists.map(Vec::len).sum::<usize>() / rulesets()
    };
    println!(
        "per ruleset document: {} distinct gwlist entries, {} distinct overlays",
        count("entries"),
        count("overlays")
    );
    let started = Instant::now();
    for t in &tables {
        let _ = content_hash(&t.content, &json!([]), false);
    }
    println!(
        "hashing every output (what the writer does before a write): {:?}",
        started.elapsed()
    );

    // The mirror and the service, as the daemon holds them.
    let mirror = Arc::new(Mirror::default());
    let directory = tables.iter().find(|t| !is_table(t)).map(|t| &t.content);
    let started = Instant::now();
    let skeletons: Vec<_> = tables
        .iter()
        .filter(|t| is_table(t))
        .map(|t| compose::Skeleton::compile(&t.content).unwrap())
        .collect();
    let directory = compose::Directory::compile(directory.expect("a directory")).unwrap();
    let parsed = started.elapsed();
    let started = Instant::now();
    let compiled: Vec<_> = skeletons
        .iter()
        .map(|skeleton| compose::compose(skeleton, &directory))
        .collect();
    println!(
        "composing {} lookup tables: {:?} (reading the documents {parsed:?}, resolving the entries {:?})",
        compiled.len(),
        parsed + started.elapsed(),
        started.elapsed()
    );
    drop(compiled);
    drop(skeletons);
    let mut tables = tables;
    let deps: Vec<(String, BTreeSet<Dep>)> = tables
        .iter_mut()
        .map(|t| (t.key.clone(), std::mem::take(&mut t.deps)))
        .collect();
    let entries: Vec<CacheEntry> = tables
        .iter_mut()
        .zip(&sizes)
        .map(|(t, bytes)| CacheEntry {
            id: format!("routing:{}", t.key),
            rev: "1-a".into(),
            domain: "routing".into(),
            key: t.key.clone(),
            hash: content_hash(&t.content, &json!([]), false),
            content: std::mem::take(&mut t.content).into(),
            errors: json!([]),
            stale: false,
            bytes: *bytes,
        })
        .collect();
    mirror.replace_all(entries);
    drop(tables);
    let rss_mirror = rss_mb();
    let service = Arc::new(RoutingService::new(mirror.clone()));
    for r in 0..rulesets() {
        service.lookup(SDN, &format!("r{r}"), "0", None).ok();
    }
    let rss_outputs = rss_mb();
    println!(
        "RSS after the mirror took the documents (and the build's trees were freed): {rss_mirror:.0} MB; the lookup tables compiled from them: +{:.0} MB = {:.0} B per rule",
        rss_outputs - rss_mirror,
        (rss_outputs - rss_mirror) * 1e6 / total_rules as f64
    );
    // The engine keeps each output's dependencies in its interned graph.
    let mut graph = DepGraph::default();
    for (key, deps) in deps {
        graph.set((caldera::domains::Domain::Routing, key), deps);
    }
    let rss_all = rss_mb();
    let per_rule = |mb: f64| mb * 1e6 / total_rules as f64;
    println!(
        "RSS with the source index, the dependency graph, the mirror and the compiled tables (what a building daemon holds): {rss_all:.0} MB = {:.0} bytes per rule; of which source index {:.0} MB ({:.0} B/rule), dependency graph {:.0} MB ({:.0} B/rule), mirror + compiled tables {:.0} MB ({:.0} B/rule)",
        per_rule(rss_all - rss_start),
        rss_index - rss_start,
        per_rule(rss_index - rss_start),
        rss_all - rss_outputs,
        per_rule(rss_all - rss_outputs),
        rss_outputs - rss_index,
        per_rule(rss_outputs - rss_index),
    );

    // In-process lookups.
    let numbers: Vec<(String, String)> = (0..200_000)
        .map(|_| {
            let r = rng.usize(..rulesets());
            let prefixes = &all_prefixes[r];
            let mut number = prefixes[rng.usize(..prefixes.len())].clone();
            while number.len() < 11 {
                number.push(char::from(b'0' + rng.u8(..10)));
            }
            (format!("r{r}"), number)
        })
        .collect();
    let mut latencies = Vec::with_capacity(numbers.len());
    let started = Instant::now();
    for (ruleset, number) in &numbers {
        let t = Instant::now();
        let answer = service
            .lookup(SDN, ruleset, number, Some("sbc1"))
            .expect("routed");
        std::hint::black_box(answer);
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "in-process lookups (1 thread, answer as JSON value): {:.0}/s; latency p50 {:?}, p99 {:?}, max {:?}",
        numbers.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for part in numbers.chunks(numbers.len().div_ceil(threads)) {
            let service = service.clone();
            scope.spawn(move || {
                for (ruleset, number) in part {
                    std::hint::black_box(
                        service.lookup(SDN, ruleset, number, Some("sbc1")).unwrap(),
                    );
                }
            });
        }
    });
    println!(
        "in-process lookups ({threads} threads): {:.0}/s",
        numbers.len() as f64 / started.elapsed().as_secs_f64()
    );

    // One carrier edit: which outputs read it, rebuilding them, and every
    // table answering the new result (the service recomposes on lookup).
    let carrier = format!("carrier:{SDN}:c3");
    let edited = SourceDoc {
        id: carrier.clone(),
        rev: "2-b".into(),
        body: Body::of(&json!({"type": "carrier", "try": 2, "progress_timeout": 7})),
    };
    let provisioning = SourceId::from(PROVISIONING);
    let mut touched = vec![Dep::Doc(provisioning.clone(), carrier.clone())];
    let versions = [
        index.get(PROVISIONING, &carrier).cloned(),
        Some(Arc::new(edited.clone())),
    ];
    for doc in versions.iter().flatten() {
        for key in RoutingBuilder.view_keys(PROVISIONING, doc) {
            touched.push(Dep::View(provisioning.clone(), key));
        }
    }
    let affected: Vec<String> = touched
        .iter()
        .flat_map(|dep| graph.dependents(dep))
        .map(|(_, key)| key.clone())
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    let output_count = sizes.len();
    index.upsert(&provisioning, edited);
    let started = Instant::now();
    let mut rebuilt = Vec::new();
    for key in &affected {
        let mut reads = Reads::new(&index);
        let Built::Content { content, .. } = RoutingBuilder.build(key, &mut reads) else {
            panic!()
        };
        rebuilt.push((key.clone(), content));
    }
    let rebuild = started.elapsed();
    let started = Instant::now();
    for (key, content) in rebuilt {
        let hash = content_hash(&content, &json!([]), false);
        mirror.apply_written(Update::Live(CacheEntry {
            id: format!("routing:{key}"),
            rev: "2-b".into(),
            domain: "routing".into(),
            key: key.clone(),
            hash,
            content: content.into(),
            errors: json!([]),
            stale: false,
            bytes: 0,
        }));
    }
    let mirrored = started.elapsed();
    let started = Instant::now();
    for r in 0..rulesets() {
        service.lookup(SDN, &format!("r{r}"), "0", None).ok();
    }
    println!(
        "one carrier edit reaches {} of {output_count} outputs ({affected:?}): rebuild {rebuild:?} (1 thread), hash + mirror {mirrored:?}, first lookup of every table (recomposing) {:?}",
        affected.len(),
        started.elapsed()
    );
    check_carrier_edit(&service, &numbers);
    println!("RSS at the end of the in-process part: {:.0} MB", rss_mb());

    http_lookups(&numbers, mirror);
}

/// Every sampled lookup that reaches the edited carrier answers its new
/// `progress_timeout`.
fn check_carrier_edit(service: &RoutingService, numbers: &[(String, String)]) {
    let mut reached = 0;
    for (ruleset, number) in numbers.iter().take(20_000) {
        let answer = service.lookup(SDN, ruleset, number, Some("sbc1")).unwrap();
        for gateway in answer["gateways"].as_array().unwrap() {
            if gateway["carrierid"] == "c3" {
                assert_eq!(gateway["progress_timeout"], 7, "{ruleset}/{number}");
                reached += 1;
            }
        }
    }
    println!("… checked: {reached} gateways of c3 in 20000 sampled lookups answer the edit");
}

/// Lookups through the real api router on loopback.
fn http_lookups(numbers: &[(String, String)], mirror: Arc<Mirror>) {
    use caldera::config::Config;
    use caldera::http::{self, AdminAuth, Limits, api};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = Config::from_toml("", &|_| None).unwrap();
        let client = Client::new(&config.couchdb).unwrap();
        let metrics = Arc::new(caldera::telemetry::metrics::Metrics::new());
        let state = Arc::new(api::ApiState {
            node: "bench".into(),
            building: false,
            started: Instant::now(),
            readiness: Arc::default(),
            metrics: metrics.clone(),
            board: Arc::default(),
            mirror: mirror.clone(),
            sysconf: Arc::new(caldera::domains::sysconf::service::SysconfService::new(
                mirror.clone(),
                client.db("system_config"),
                client.db("cache"),
                None,
                caldera::domains::sysconf::service::Settings {
                    node: "bench".into(),
                    zone: "z".into(),
                    write_wait: Duration::from_secs(1),
                    write_attempts: 1,
                },
            )),
            acls: Arc::new(caldera::domains::acls::service::AclsService::new(mirror.clone(), "bench".into(), "z".into())),
            routing: Arc::new(RoutingService::new(mirror.clone())),
            admin: Arc::new(AdminAuth::new(None)),
            max_body_bytes: 1 << 20,
            phones: None,
            dns: Arc::default(),
        });
        let listener = http::bind("api", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = tokio_util::sync::CancellationToken::new();
        let limits = Limits::from_config(&config.http);
        tokio::spawn(http::serve("api", listener, api::router(state, Duration::from_secs(10)), limits, token.clone(), Duration::from_secs(1)));
        let connections = 8;
        let per = 20_000 / connections;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..connections {
            let work: Vec<(String, String)> = numbers[c * per..(c + 1) * per].to_vec();
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
                let mut latencies = Vec::with_capacity(work.len());
                for (ruleset, number) in work {
                    let t = Instant::now();
                    let reply = http
                        .get(format!("http://{addr}/v1/routes/{SDN}/{ruleset}/{number}?host=sbc1"))
                        .send()
                        .await
                        .unwrap();
                    assert!(reply.status().is_success());
                    let _ = reply.bytes().await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed();
        latencies.sort();
        println!(
            "HTTP lookups ({connections} keep-alive connections, loopback, client in the same process): {:.0}/s; latency p50 {:?}, p99 {:?}, max {:?}",
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().unwrap()
        );
        token.cancel();
    });
}
