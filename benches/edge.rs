//! The edge store at scale (`cargo bench --bench edge`): 10k edges in the
//! 10 seed classes, 50 templates in 8 master packages, a set log of 10k
//! entries (template versions). Measures the full precompute (every edge
//! output, pure, one thread) and the cache document sizes; delta
//! computation over the 10k-entry log; `template_set/latest` and
//! `config_package` in process (per-edge builds cold, cached hits, the
//! precomputed class package) and over HTTP through the real api router on
//! loopback (served from a mirror holding the built documents); package
//! build throughput; download throughput next to nginx serving the same
//! tar from disk in the same run (skipped when nginx is not installed); and,
//! against a real pouchdb-server and the real daemon, the time from a new
//! template version to its package being served (`EDGE_BENCH_E2E=0` skips).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use caldera::cache::mirror::Mirror;
use caldera::cache::{CacheEntry, content_hash};
use caldera::config::Config;
use caldera::couch::{Body, Client};
use caldera::domains::edge::delta::{self, Since};
use caldera::domains::edge::manifest::ClassManifest;
use caldera::domains::edge::model::{
    self, Class, EDGE_BLOBS, EDGE_CONFIG, EDGE_REGISTRY, SEED_CLASSES,
};
use caldera::domains::edge::service::{EdgeService, Settings};
use caldera::domains::edge::{EdgeBuilder, package};
use caldera::domains::{Builder, Built};
use caldera::rebuild::index::{Index, Reads, SourceDoc, SourceId};
use serde_json::{Value, json};
use sha2::Digest;

const EDGES: usize = 10_000;
const TEMPLATES: u64 = 50;
const MASTERS: u64 = 8;
const LOG: u64 = 10_000;
/// Classes 0 and 1 get only static templates (their packages are precomputed).
const STATIC_CLASSES: usize = 2;

fn doc(id: String, body: Value) -> (String, Arc<SourceDoc>) {
    let doc = SourceDoc {
        id: id.clone(),
        rev: "1-a".into(),
        body: Body::of(&body),
    };
    (id, Arc::new(doc))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A template's text: about 2 kB; odd templates use edge variables.
fn template_text(t: u64, version: u64) -> String {
    let mut text = format!("# template {t} version {version}\n");
    for line in 0..40 {
        if t % 2 == 1 && line % 8 == 0 {
            text.push_str(&format!(
                "setting_{line} = {{{{lan_ip}}}} {{{{edge_id}}}}\n"
            ));
        } else {
            text.push_str(&format!(
                "setting_{line} = value-{t}-{line}-{version} # a comment\n"
            ));
        }
    }
    text
}

fn digest(content: &[u8]) -> String {
    format!(
        "md5-{}",
        STANDARD.encode(&sha2::Sha256::digest(content)[..16])
    )
}

struct Data {
    config: BTreeMap<String, Arc<SourceDoc>>,
    registry: BTreeMap<String, Arc<SourceDoc>>,
    blobs: BTreeMap<String, Arc<SourceDoc>>,
    edges: Vec<(String, usize)>,
}

fn blob(content: &[u8]) -> (String, Value) {
    let d = digest(content);
    (
        d.clone(),
        json!({"data": STANDARD.encode(content), "size": content.len(), "sha256": model::sha256_hex(content)}),
    )
}

/// Masters 0..2 hold only even (static) templates and go to the static
/// classes; the rest mix both and go to the other classes.
fn generate() -> Data {
    let mut config = BTreeMap::new();
    let mut blobs = BTreeMap::new();
    let classes: Vec<Class> = SEED_CLASSES
        .iter()
        .map(|(t, s)| Class::new(t, s).unwrap())
        .collect();
    for class in &classes {
        config.extend([doc(model::class_doc_id(class), json!({"type": "edge_class", "edge_type": class.edge_type, "edge_sub_type": class.edge_sub_type, "vars": {"mtu": 1400}}))]);
    }
    for t in 1..=TEMPLATES {
        config.extend([doc(model::template_doc_id(t), json!({"type": "config_template", "template_id": t, "name": format!("t{t}.conf"), "description": "d", "path": format!("/etc/app/t{t}.conf"), "owner": "root", "group": "root", "permissions": "644"}))]);
    }
    // The set log: 10k template versions, round-robin over the templates.
    let mut latest = BTreeMap::new();
    for seq in 1..=LOG {
        let t = (seq - 1) % TEMPLATES + 1;
        let v = (seq - 1) / TEMPLATES + 1;
        latest.insert(t, v);
        let content = template_text(t, v);
        let (d, body) = blob(content.as_bytes());
        let id = model::version_doc_id(t, v);
        config.extend([doc(id, json!({"type": "template_version", "template_id": t, "version": v, "comment": "c", "_attachments": {"template_file": {"digest": d, "length": content.len(), "stub": true}}}))]);
        if seq > LOG - TEMPLATES {
            blobs.insert(model::digest_key(&d), body);
        }
        config.extend([doc(model::set_log_doc_id(seq), json!({"type": "set_log", "set_seq": seq, "kind": "template_version", "template_id": t, "version": v, "created_at": "2024-01-01T00:00:00Z"}))]);
    }
    let script = b"echo script\nstatus_check() { true; }\n";
    let (script_digest, script_blob) = blob(script);
    blobs.insert(model::digest_key(&script_digest), script_blob);
    let stub = json!({"digest": script_digest, "length": script.len(), "stub": true});
    for m in 1..=MASTERS {
        config.extend([doc(model::master_doc_id(m), json!({"type": "master_package", "master_id": m, "name": format!("m{m}"), "status": 1, "execution_sequence": m, "_attachments": {"prescript.sh": stub, "postscript.sh": stub, "uninstall.sh": stub}}))]);
        let templates: Vec<u64> = if m <= 2 {
            (1..=TEMPLATES)
                .filter(|t| t % 2 == 0 && (t / 2) % 2 == m - 1)
                .collect()
        } else {
            (1..=TEMPLATES).filter(|t| t % 6 == m - 3).collect()
        };
        for t in templates {
            config.extend([doc(
                model::link_doc_id(m, t),
                json!({"type": "mp_template", "master_id": m, "template_id": t}),
            )]);
        }
        for (i, class) in classes.iter().enumerate() {
            let wanted = if m <= 2 {
                i < STATIC_CLASSES
            } else {
                i >= STATIC_CLASSES && !(i + m as usize).is_multiple_of(3)
            };
            if wanted {
                config.extend([doc(model::assign_doc_id(m, class), json!({"type": "mp_assign", "master_id": m, "edge_type": class.edge_type, "edge_sub_type": class.edge_sub_type}))]);
            }
        }
    }
    let mut registry = BTreeMap::new();
    let mut edges = Vec::new();
    for e in 0..EDGES {
        let class = e % classes.len();
        let id = format!("{:06x}", 0x100000 + e);
        let c = &classes[class];
        registry.extend([doc(format!("edge-{id}"), json!({"type": "edge", "edge_id": id, "edge_type": c.edge_type, "edge_sub_type": c.edge_sub_type, "mac_addresses": [format!("02:00:00:{:02x}:{:02x}:{:02x}", e >> 16, (e >> 8) & 255, e & 255)], "vars": {"lan_ip": format!("10.{}.{}.1", e / 250, e % 250)}}))]);
        edges.push((id, class));
    }
    let blobs = blobs.into_iter().map(|(k, v)| doc(k, v)).collect();
    let _ = latest;
    Data {
        config,
        registry,
        blobs,
        edges,
    }
}

struct Output {
    key: String,
    content: Value,
}

fn kind_of(key: &str) -> &'static str {
    ["catalog", "class:", "package:", "file:", "edges.", "macs."]
        .into_iter()
        .find(|k| key.starts_with(k))
        .unwrap_or("other")
}

/// Per kind of output: count, largest (bytes), build time.
type Sizes = BTreeMap<&'static str, (usize, usize, Duration)>;

/// Every output, built one by one as the engine's first pass does.
fn precompute(index: &Index) -> (Vec<Output>, Duration, Sizes) {
    let builder = EdgeBuilder;
    let keys = builder.all_keys(index);
    let started = Instant::now();
    let mut outputs = Vec::new();
    let mut sizes = Sizes::new();
    for key in keys {
        let t = Instant::now();
        let mut reads = Reads::new(index);
        if let Built::Content { content, .. } = builder.build(&key, &mut reads) {
            sizes.entry(kind_of(&key)).or_default().2 += t.elapsed();
            outputs.push(Output { key, content });
        }
    }
    let elapsed = started.elapsed();
    for output in &outputs {
        let size = serde_json::to_vec(&output.content).unwrap().len();
        let entry = sizes.entry(kind_of(&output.key)).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(size);
    }
    (outputs, elapsed, sizes)
}

fn mirror_of(outputs: Vec<Output>) -> Arc<Mirror> {
    let entries = outputs
        .into_iter()
        .map(|o| {
            let bytes = serde_json::to_vec(&o.content).unwrap().len();
            CacheEntry {
                id: format!("edge:{}", o.key),
                rev: "1-a".into(),
                domain: "edge".into(),
                key: o.key,
                hash: content_hash(&o.content, &json!([]), false),
                content: o.content.into(),
                errors: json!([]),
                stale: false,
                bytes,
            }
        })
        .collect();
    let mirror = Arc::new(Mirror::default());
    mirror.replace_all(entries);
    mirror
}

fn service(mirror: Arc<Mirror>) -> Arc<EdgeService> {
    let config = Config::from_toml("", &|_| None).unwrap();
    let client = Client::new(&config.couchdb).unwrap();
    let metrics = Arc::new(caldera::telemetry::metrics::Metrics::new());
    Arc::new(EdgeService::new(
        mirror,
        client.db("edge_config"),
        client.db("edge_telemetry"),
        None,
        Settings::from_config(&config.edge, b"bench-download-key-0123456789"),
        metrics,
    ))
}

fn main() {
    println!(
        "edge bench: {EDGES} edges in {} classes, {TEMPLATES} templates in {MASTERS} master packages, a set log of {LOG} entries",
        SEED_CLASSES.len()
    );
    let rss = rss_mb();
    let data = generate();
    let edges = data.edges.clone();
    let mut index = Index::with_keyer(Arc::new(|source, doc| EdgeBuilder.view_keys(source, doc)));
    index.replace(&SourceId::from(EDGE_CONFIG), data.config);
    index.replace(&SourceId::from(EDGE_REGISTRY), data.registry);
    index.replace(&SourceId::from(EDGE_BLOBS), data.blobs);
    println!(
        "source index: {} config, {} registry, {} blob documents; RSS +{:.0} MB",
        index.len(EDGE_CONFIG),
        index.len(EDGE_REGISTRY),
        index.len(EDGE_BLOBS),
        rss_mb() - rss
    );

    let (outputs, elapsed, sizes) = precompute(&index);
    println!(
        "full precompute: {} outputs in {elapsed:?} (pure, one thread)",
        outputs.len()
    );
    for (kind, (count, max, time)) in &sizes {
        println!(
            "  {kind:<9} {count:>4} documents, largest {:.1} kB, built in {time:?}",
            *max as f64 / 1e3
        );
    }
    let manifests: Vec<ClassManifest> = outputs
        .iter()
        .filter(|o| o.key.starts_with("class:"))
        .map(|o| serde_json::from_value(o.content.clone()).unwrap())
        .collect();
    deltas(&manifests);
    let mirror = mirror_of(outputs);
    let service = service(mirror.clone());
    println!(
        "RSS with the source index and the mirror: {:.0} MB",
        rss_mb()
    );
    in_process(&service, &edges);
    build_throughput(&manifests, &index);
    http(service.clone(), &edges);
    if std::env::var("EDGE_BENCH_E2E").as_deref() != Ok("0") {
        end_to_end();
    }
}

fn deltas(manifests: &[ClassManifest]) {
    let manifest = manifests.iter().max_by_key(|m| m.masters.len()).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut latencies = Vec::new();
    for _ in 0..20_000 {
        let since = Since::After(rng.u64(0..=LOG));
        let started = Instant::now();
        let selected = delta::select(manifest, since);
        std::hint::black_box(&selected);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let full = delta::select(manifest, Since::Full);
    let started = Instant::now();
    for _ in 0..1_000 {
        std::hint::black_box(delta::template_set_answer(&full, LOG, "abcdef"));
    }
    println!(
        "template_set answer of a full set ({} templates) as JSON: {:?}",
        full.iter().map(|s| s.templates.len()).sum::<usize>(),
        started.elapsed() / 1_000
    );
    println!(
        "delta computation ({} masters, log of {LOG}): p50 {:?}, p99 {:?}",
        manifest.masters.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
}

fn in_process(service: &EdgeService, edges: &[(String, usize)]) {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut latencies = Vec::new();
    let started = Instant::now();
    for _ in 0..50_000 {
        let (edge, _) = &edges[rng.usize(..edges.len())];
        let since = rng
            .bool()
            .then(|| format!("{}", rng.u64(0..=LOG) as f64 / 100.0));
        let t = Instant::now();
        let answer = service.template_set(Some(edge), since.as_deref(), None);
        assert_eq!(answer.status, 200);
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "template_set in process, 1 thread: {:.0}/s, p50 {:?}, p99 {:?}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let per_edge: Vec<&String> = edges.iter().filter(|(_, c)| *c >= STATIC_CLASSES).map(|(e, _)| e).take(500).collect();
        let mut cold = Vec::new();
        let mut size = 0;
        for edge in &per_edge {
            let t = Instant::now();
            let answer = service.config_package(None, Some(edge), None, None, "http://bench").await;
            cold.push(t.elapsed());
            assert_eq!(answer.status, 200, "{}", answer.body);
            size = answer.body["size"].as_u64().unwrap();
        }
        cold.sort();
        let mut hot = Vec::new();
        for edge in per_edge.iter().cycle().take(5_000) {
            let t = Instant::now();
            service.config_package(None, Some(edge), None, None, "http://bench").await;
            hot.push(t.elapsed());
        }
        hot.sort();
        let static_edges: Vec<&String> = edges.iter().filter(|(_, c)| *c < STATIC_CLASSES).map(|(e, _)| e).take(1_000).collect();
        let mut class_wide = Vec::new();
        for edge in &static_edges {
            let t = Instant::now();
            service.config_package(None, Some(edge), None, None, "http://bench").await;
            class_wide.push(t.elapsed());
        }
        class_wide.sort();
        println!("config_package per edge, cold (render + tar.gz of a {:.1} kB package): p50 {:?}, p99 {:?}", size as f64 / 1e3, percentile(&cold, 0.5), percentile(&cold, 0.99));
        println!("config_package per edge, cached: p50 {:?}, p99 {:?}", percentile(&hot, 0.5), percentile(&hot, 0.99));
        println!("config_package of a class-wide (precomputed) package: p50 {:?}, p99 {:?}", percentile(&class_wide, 0.5), percentile(&class_wide, 0.99));
    });
}

fn build_throughput(manifests: &[ClassManifest], index: &Index) {
    let manifest = manifests
        .iter()
        .find(|m| m.edge_type == "mobile" && m.edge_sub_type == "c2cbus")
        .unwrap();
    let selected = delta::select(manifest, Since::Full);
    let files = |file: &model::FileRef| {
        index
            .get(EDGE_BLOBS, &file.key())
            .and_then(|d| caldera::domains::edge::blob_bytes(&d.json()?))
    };
    let mut rendered_bytes = 0;
    let mut output_bytes = 0;
    let started = Instant::now();
    let builds = 300;
    for e in 0..builds {
        let record = model::EdgeRecord {
            doc: format!("e{e}"),
            edge_id: format!("{e:06x}"),
            edge_type: manifest.edge_type.clone(),
            edge_sub_type: manifest.edge_sub_type.clone(),
            mac_addresses: vec![],
            tags: vec![],
            vars: serde_json::from_value(json!({"lan_ip": format!("10.0.{e}.1")})).unwrap(),
            token_sha256: None,
        };
        let request = package::Request {
            manifest,
            selected: &selected,
            since: Since::Full,
            edge: Some(&record),
        };
        let built = package::build(&request, &files).unwrap();
        output_bytes += built.bytes.len();
        rendered_bytes += selected
            .iter()
            .flat_map(|s| &s.templates)
            .map(|t| t.file.size as usize)
            .sum::<usize>();
    }
    let elapsed = started.elapsed();
    println!(
        "package builds: {builds} in {elapsed:?} ({:.1} ms each): {:.1} MB/s of templates rendered, {:.1} MB/s of tar.gz written",
        elapsed.as_secs_f64() * 1e3 / builds as f64,
        rendered_bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        output_bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
}

fn api_router(service: Arc<EdgeService>, mirror: Arc<Mirror>) -> axum::Router {
    use caldera::http::{AdminAuth, api};
    let config = Config::from_toml("", &|_| None).unwrap();
    let client = Client::new(&config.couchdb).unwrap();
    let state = Arc::new(api::ApiState {
        node: "bench".into(),
        building: false,
        started: Instant::now(),
        readiness: Arc::default(),
        metrics: Arc::new(caldera::telemetry::metrics::Metrics::new()),
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
        acls: Arc::new(caldera::domains::acls::service::AclsService::new(
            mirror.clone(),
            "bench".into(),
            "z".into(),
        )),
        routing: Arc::new(caldera::domains::routing::service::RoutingService::new(
            mirror,
        )),
        admin: Arc::new(AdminAuth::new(None)),
        max_body_bytes: 1 << 20,
        phones: None,
        dns: Arc::default(),
    });
    let edge = caldera::http::edge::router(Arc::new(caldera::http::edge::EdgeHttp {
        service,
        json_limit: 1 << 20,
    }));
    api::router_with(state, Duration::from_secs(10), Some(edge))
}

/// `requests` GETs over `connections` keep-alive connections: (req/s, MB/s, sorted latencies).
async fn load(urls: Vec<String>, connections: usize) -> (f64, f64, Vec<Duration>) {
    let per = urls.len() / connections;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let work: Vec<String> = urls[c * per..(c + 1) * per].to_vec();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut latencies = Vec::with_capacity(work.len());
            let mut bytes = 0;
            for url in work {
                let t = Instant::now();
                let reply = http.get(&url).send().await.unwrap();
                assert!(reply.status().is_success(), "{url}: {}", reply.status());
                bytes += reply.bytes().await.unwrap().len();
                latencies.push(t.elapsed());
            }
            (latencies, bytes)
        }));
    }
    let mut latencies = Vec::new();
    let mut bytes = 0;
    for task in tasks {
        let (l, b) = task.await.unwrap();
        latencies.extend(l);
        bytes += b;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    (
        latencies.len() as f64 / elapsed,
        bytes as f64 / 1e6 / elapsed,
        latencies,
    )
}

fn http(service: Arc<EdgeService>, edges: &[(String, usize)]) {
    use caldera::http::{self, Limits};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = Config::from_toml("", &|_| None).unwrap();
        let mirror = Arc::new(Mirror::default());
        let router = api_router(service.clone(), mirror);
        let listener = http::bind("api", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = tokio_util::sync::CancellationToken::new();
        tokio::spawn(http::serve("api", listener, router, Limits::from_config(&config.http), token.clone(), Duration::from_secs(1)));
        let base = format!("http://{addr}/api/v1.0");
        let mut rng = fastrand::Rng::with_seed(5);
        let urls: Vec<String> = (0..20_000)
            .map(|_| {
                let (edge, _) = &edges[rng.usize(..edges.len())];
                format!("{base}/template_set/latest?edge_id={edge}&set_version={}", rng.u64(0..=LOG) as f64 / 100.0)
            })
            .collect();
        let (rate, _, latencies) = load(urls, 8).await;
        println!("HTTP template_set/latest (8 connections, loopback, client in process): {rate:.0}/s, p50 {:?}, p99 {:?}", percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        let per_edge: Vec<&String> = edges.iter().filter(|(_, c)| *c >= STATIC_CLASSES).map(|(e, _)| e).take(200).collect();
        let urls: Vec<String> = per_edge.iter().cycle().take(8_000).map(|e| format!("{base}/config_package?edge_id={e}")).collect();
        let (rate, _, latencies) = load(urls, 8).await;
        println!("HTTP config_package, per-edge packages cached (8 connections): {rate:.0}/s, p50 {:?}, p99 {:?}", percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        // Downloads of one package, against nginx serving the same bytes from disk.
        let answer = service.config_package(None, Some(per_edge[0]), None, None, &format!("http://{addr}")).await;
        let path = answer.body["path"].as_str().unwrap().to_string();
        let bytes = reqwest::get(&path).await.unwrap().bytes().await.unwrap();
        let urls = vec![path; 20_000];
        let (rate, mbps, latencies) = load(urls, 8).await;
        println!("HTTP package downloads ({:.1} kB, 8 connections): {rate:.0}/s, {mbps:.0} MB/s, p50 {:?}, p99 {:?}", bytes.len() as f64 / 1e3, percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        match nginx(&bytes) {
            Some((mut nginx, url)) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let (rate, mbps, latencies) = load(vec![url; 20_000], 8).await;
                println!("nginx serving the same file from disk (8 connections): {rate:.0}/s, {mbps:.0} MB/s, p50 {:?}, p99 {:?}", percentile(&latencies, 0.5), percentile(&latencies, 0.99));
                let _ = nginx.kill();
                let _ = nginx.wait();
            }
            None => println!("nginx not found: the comparison is skipped"),
        }
        token.cancel();
    });
}

/// Starts nginx (its own prefix and config, foreground) serving `bytes`.
fn nginx(bytes: &[u8]) -> Option<(std::process::Child, String)> {
    let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = std::env::temp_dir().join(format!("caldera-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("www")).ok()?;
    std::fs::create_dir_all(dir.join("logs")).ok()?;
    std::fs::write(dir.join("www/package.tar.gz"), bytes).ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nerror_log {d}/logs/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = std::process::Command::new(binary)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    Some((child, format!("http://127.0.0.1:{port}/package.tar.gz")))
}

/// A new template version through the API of the real daemon on a real
/// pouchdb-server, until its package is served.
fn end_to_end() {
    use support::couch::{Couch, DbNames};
    use support::daemon::{Daemon, DaemonConfig};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let couch = Couch::shared();
        let names = DbNames::unique();
        couch.create_db(&names.system_config).await;
        let mut config = DaemonConfig::new(couch.url(), &names, "edge-bench");
        config.set("log.level", "info").set("edge.download_key", "bench-download-key-0123456789");
        let daemon = Daemon::start_ready(&config).await;
        let base = daemon.api_url("/api/v1.0");
        let http = reqwest::Client::new();
        let post = |path: String, body: Value| http.post(format!("{base}{path}")).json(&body).send();
        for _ in 0..100 {
            if couch.get(&names.cache, "edge:class:mid:default").await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        post("/config_template/".into(), json!({"name": "a.conf", "description": "d", "path": "/etc/a.conf"})).await.unwrap();
        let form = |content: String| {
            let boundary = "b0undary";
            let body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"template_file\"; filename=\"a\"\r\nContent-Type: application/octet-stream\r\n\r\n{content}\r\n--{boundary}--\r\n");
            (format!("multipart/form-data; boundary={boundary}"), body)
        };
        let (ct, body) = form("ip={{lan_ip}}\n".into());
        http.post(format!("{base}/config_template/version/1/")).header("content-type", ct).body(body).send().await.unwrap();
        post("/master_package/".into(), json!({"name": "m", "description": "d"})).await.unwrap();
        http.post(format!("{base}/master_package_config/1/assign/1/")).send().await.unwrap();
        post("/master_package/assign/1/".into(), json!({"edge_type": "mid", "edge_sub_type": "default"})).await.unwrap();
        let registry = format!("{}_edge_registry", names.prefix);
        couch.put(&registry, &json!({"_id": "e", "type": "edge", "edge_id": "abcdef", "edge_type": "mid", "edge_sub_type": "default", "vars": {"lan_ip": "10.0.0.1"}})).await;
        let package = |http: reqwest::Client, base: String| async move {
            let reply = http.get(format!("{base}/config_package?edge_id=abcdef")).send().await.unwrap();
            reply.json::<Value>().await.unwrap()["sha256"].as_str().map(str::to_string)
        };
        let mut previous = None;
        for _ in 0..200 {
            previous = package(http.clone(), base.clone()).await;
            if previous.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut write = Vec::new();
        let mut served = Vec::new();
        for i in 0..30 {
            let (ct, body) = form(format!("ip={{{{lan_ip}}}} {i}\n"));
            let started = Instant::now();
            let reply = http.post(format!("{base}/config_template/version/1/")).header("content-type", ct).body(body).send().await.unwrap();
            assert!(reply.status().is_success());
            write.push(started.elapsed());
            loop {
                let now = package(http.clone(), base.clone()).await;
                if now.is_some() && now != previous {
                    previous = now;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            served.push(started.elapsed());
        }
        write.sort();
        served.sort();
        println!(
            "end to end (real daemon, pouchdb-server): a template version's POST answers in p50 {:?} / p99 {:?}; its new package is served after p50 {:?} / p99 {:?}",
            percentile(&write, 0.5), percentile(&write, 0.99), percentile(&served, 0.5), percentile(&served, 0.99)
        );
        drop(daemon);
        for db in couch.all_dbs().await.into_iter().filter(|d| d.starts_with(&names.prefix)) {
            couch.delete_db(&db).await;
        }
    });
}
