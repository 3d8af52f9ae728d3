//! Phone provisioning at scale (`cargo bench --bench phones`, or
//! `scripts/bench-phones`, which installs nginx-light and wrk when missing).
//!
//! Data (generated): `PHONES_BENCH_UNITS` units (default 10k) over
//! `PHONES_BENCH_ACCOUNTS` accounts (default 100: resellers with customer
//! accounts below them), each account with a provision config (locks
//! included), 5 policies and 2 profiles, each unit with 1–2 lines; one
//! customer has `PHONES_BENCH_BIG` units (default 1000) sharing one policy.
//! Measures: the full build (units/s, parallel like the engine), one edit of
//! that policy (outputs reached through the dependency graph, their rebuild,
//! hashing), the mirror and serving index, RSS, and phone file GETs over
//! HTTP on loopback — the real phones listener served from the mirror —
//! with wrk (`-c64` and `-c256`, random units per request) when installed
//! (else an in-process client), side by side with nginx serving the same
//! files pre-rendered on disk when nginx is installed; for both servers
//! also the CPU time per request (user + system time of the server's
//! processes during the run), which the machine's other load moves far
//! less than requests/s.
//!
//! `PHONES_BENCH_TRUST_AB=1`: the trusted (address, MAC) pairs' cost, side
//! by side in one run — the serving decision in process and wrk at c64,
//! with the trust table off (A: `trusted_pairs_max = 0`, the serving path
//! before issue 16) and on (B: every served device remembered), in
//! alternating rounds (ABAB…, `PHONES_BENCH_AB_ROUNDS`, default 2 each) so
//! the machine's other load falls on both alike.
//!
//! `PHONES_BENCH_HOT_SET_MB` (default 256): the bound of the served files'
//! hot set (`phones.hot_set_mb`); the bench also times the serving decision
//! with every body read back from the mirror (an empty hot set) beside the
//! warm one. `PHONES_BENCH_STORE=1` puts the mirror's phones contents on
//! disk, as `cache.store_path` does.

use std::collections::{BTreeMap, BTreeSet};

/// The daemon's allocator (src/main.rs), so memory figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera::cache::mirror::Mirror;
use caldera::cache::store::Store;
use caldera::cache::{CacheEntry, Content, JsonText, serialized_content_hash};
use caldera::couch::Body;
use caldera::domains::phones::limiter::Limits;
use caldera::domains::phones::model::{SIP_AUTH, TEMPLATE_BODIES, UNITS};
use caldera::domains::phones::service::{PhonesService, Settings, nonce_key};
use caldera::domains::phones::trust::TrustLimits;
use caldera::domains::phones::{PhonesBuilder, phones_index};
use caldera::domains::{Builder, Built, Domain};
use caldera::rebuild::deps::DepGraph;
use caldera::rebuild::index::{Dep, Index, Reads, SourceDoc, SourceId};
use caldera::telemetry::metrics::Metrics;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn doc(id: &str, body: Value) -> (String, Arc<SourceDoc>) {
    (
        id.to_string(),
        Arc::new(SourceDoc {
            id: id.to_string(),
            rev: "1-a".into(),
            body: Body::of(&body),
        }),
    )
}

/// A unit the load generator asks for.
struct Target {
    host: String,
    path: String,
    ua: String,
}

struct Data {
    units: BTreeMap<String, Arc<SourceDoc>>,
    devices: BTreeMap<String, Arc<SourceDoc>>,
    big_policy: String,
}

fn mac_of(n: usize) -> String {
    format!("805ec0{n:06x}")
}

fn generate(units: usize, accounts: usize, big: usize) -> Data {
    let mut docs = BTreeMap::new();
    let mut devices = BTreeMap::new();
    let resellers = (accounts / 10).max(1);
    let customers = accounts.saturating_sub(resellers).max(1);
    for r in 0..resellers {
        let id = format!("reseller-{r}");
        docs.extend([doc(
            &id,
            json!({"type": "account", "name": id, "realm": format!("r{r}.example.net")}),
        )]);
        docs.extend([doc(
            &format!("pc-{id}"),
            json!({"type": "provision_config", "account_id": id,
            "config": {"codecs": ["g722", "pcmu"],
                       "yealink": {"static": {"network": {"vlan": {"internet_port_enable": 1, "internet_port_vid": 20 + r % 10}}}}},
            "defaults": {"time": {"ntp_server": "pool.ntp.org"}, "yealink": {"local_time": {"time_zone": "+1", "time_zone_name": "France(Paris)"}}},
            "locks": {"codecs": true, "yealink": {"static": {"network": {"vlan": true}}}}}),
        )]);
    }
    let rest = units.saturating_sub(big);
    let mut next_unit = 0;
    for c in 0..customers {
        let account = format!("acct-{c}");
        let reseller = format!("reseller-{}", c % resellers);
        docs.extend([doc(&account, json!({"type": "account", "name": account, "realm": format!("c{c}.example.net"), "tree": [reseller]}))]);
        docs.extend([doc(&format!("pc-{account}"), json!({"type": "provision_config", "account_id": account,
            "config": {"time": {"ntp_server": format!("ntp.c{c}.example.net")}, "yealink": {"features": {"dnd": {"allow": 0}}}},
            "defaults": {"yealink": {"lang": {"gui": "French"}}},
            "locks": {"yealink": {"features": {"dnd": true}}}}))]);
        for p in 0..5 {
            let id = format!("pol-{c}-{p}");
            docs.extend([doc(&id, json!({"type": "policy", "account_id": account,
                "config": {"phone_book": {"name": "Company", "entries": [{"name": "Reception", "number": format!("{p}00")}]},
                           "keys": [{"key": 3 + p, "type": "blf", "value": format!("10{p}"), "label": format!("Key {p}")}],
                           "yealink": {"phone_setting": {"ring_type": format!("Ring{}.wav", 1 + p)}}}}))]);
        }
        for f in 0..2 {
            let id = format!("prof-{c}-{f}");
            docs.extend([doc(&id, json!({"type": "profile", "account_id": account, "policies": [format!("pol-{c}-0"), format!("pol-{c}-{}", 1 + f)]}))]);
        }
        let count = if c == 0 {
            big.min(units)
        } else {
            rest / customers.saturating_sub(1).max(1)
                + usize::from(c <= rest % customers.saturating_sub(1).max(1))
        };
        for _ in 0..count {
            if next_unit >= units {
                break;
            }
            let n = next_unit;
            next_unit += 1;
            let id = format!("unit-{n}");
            let lines: Vec<Value> = (1..=1 + n % 2)
                .map(|l| {
                    let device = format!("dev-{n}-{l}");
                    devices.extend([doc(&device, json!({"pvt_type": "device", "pvt_account_id": account,
                        "sip": {"username": format!("u{n}l{l}"), "password": format!("secret-{n}-{l}")}}))]);
                    json!({"line": l, "device_id": device, "label": format!("Line {l}")})
                })
                .collect();
            docs.extend([doc(&id, json!({"type": "unit", "account_id": account, "name": format!("Desk {n}"),
                "mac_address": mac_of(n), "brand": "yealink", "model": "t46s",
                "profiles": [format!("prof-{c}-{}", n % 2)], "config": {"yealink": {"local_time": {"time_format": n % 2}}},
                "lines": lines}))]);
        }
    }
    Data {
        units: docs,
        devices,
        big_policy: "pol-0-0".into(),
    }
}

fn index_of(data: &Data) -> Index {
    let mut index = phones_index();
    index.replace(&SourceId::from(UNITS), data.units.clone());
    index.replace(&SourceId::from(SIP_AUTH), data.devices.clone());
    index.replace(&SourceId::from(TEMPLATE_BODIES), BTreeMap::new());
    index
}

type Result1 = (String, Built, BTreeSet<Dep>);

/// Builds `keys` on `threads` scoped threads, like the engine.
fn build_all(index: &Index, keys: &[String], threads: usize) -> Vec<Result1> {
    let chunk = keys.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|key| {
                            let mut reads = Reads::new(index);
                            let built = PhonesBuilder.build(key, &mut reads);
                            (key.clone(), built, reads.finish().0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Builds `keys` like `build_all`, keeping only the cache documents and the
/// dependencies (what a daemon holds), not the built values.
fn build_entries(
    index: &Index,
    keys: &[String],
    threads: usize,
) -> Vec<(String, Option<CacheEntry>, BTreeSet<Dep>)> {
    let chunk = keys.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|key| {
                            let mut reads = Reads::new(index);
                            let built = PhonesBuilder.build(key, &mut reads);
                            (key.clone(), entry(key, &built), reads.finish().0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn entry(key: &str, built: &Built) -> Option<CacheEntry> {
    let Built::Content { content, issues } = built else {
        return None;
    };
    let errors: Value = issues
        .iter()
        .map(|i| json!({"doc": i.doc, "reason": i.reason}))
        .collect();
    // As the writer does: serialized once, hashed, and kept as that text.
    let json = serde_json::to_vec(content).expect("JSON values serialize");
    let hash = serialized_content_hash(&json, &errors, false);
    Some(CacheEntry {
        id: format!("phones:{key}"),
        rev: "1-a".into(),
        domain: "phones".into(),
        key: key.to_string(),
        hash,
        content: Content::Text(JsonText::from_serialized(&json)),
        errors,
        stale: false,
        bytes: json.len(),
    })
}

/// What the full build produced, counted as the outputs go by.
#[derive(Default)]
struct Totals {
    outputs: usize,
    units: usize,
    served: usize,
    bytes: usize,
    with_errors: usize,
    first_error: Option<(String, Value)>,
}

impl Totals {
    fn add(&mut self, entry: &CacheEntry) {
        self.outputs += 1;
        self.bytes += entry.bytes;
        if entry.key.starts_with("unit:") {
            self.units += 1;
            if entry.content.value()["served"] == true {
                self.served += 1;
            }
        }
        if entry.has_errors() {
            self.with_errors += 1;
            self.first_error
                .get_or_insert_with(|| (entry.key.clone(), entry.errors.clone()));
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one load run measured.
struct Load {
    rps: f64,
    p50: String,
    p99: String,
    errors: String,
    /// Requests answered during the run (for CPU per request).
    requests: f64,
}

/// User + system CPU seconds of the processes `stat_paths` name
/// (`/proc/<pid>/stat`), in clock ticks of 10 ms (Linux's `USER_HZ`).
fn cpu_seconds(stat_paths: &[std::path::PathBuf]) -> f64 {
    stat_paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces): state is
            // the 3rd field of the line, utime and stime the 14th and 15th.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .sum()
}

/// The `/proc/<pid>/stat` of every process in process group `group`.
fn group_stats(group: u32) -> Vec<std::path::PathBuf> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .map(|e| e.path().join("stat"))
        .filter(|p| {
            std::fs::read_to_string(p).ok().is_some_and(|stat| {
                let rest = stat.rsplit_once(')').map_or("", |r| r.1);
                rest.split_whitespace().nth(2) == Some(group.to_string().as_str())
            })
        })
        .collect()
}

/// A load run and the CPU seconds the server's processes spent meanwhile.
fn measured(
    stats: &[std::path::PathBuf],
    run: impl FnOnce() -> Option<Load>,
) -> Option<(Load, f64)> {
    let before = cpu_seconds(stats);
    let load = run()?;
    Some((load, cpu_seconds(stats) - before))
}

/// Microseconds per serving decision over `rounds` random targets, and
/// how many were served.
fn decision_us(
    service: &PhonesService,
    targets: &[Target],
    peer: std::net::IpAddr,
    rounds: usize,
) -> (f64, usize) {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut ok = 0;
    let started = Instant::now();
    for _ in 0..rounds {
        let t = &targets[rng.usize(..targets.len())];
        let request = caldera::domains::phones::service::PhoneRequest {
            method: "GET",
            target: &t.path,
            host: Some(&t.host),
            user_agent: Some(&t.ua),
            authorization: None,
            if_none_match: None,
            if_modified_since: None,
            forwarded_for: None,
            peer,
            upload: None,
        };
        if service.serve(&request).status() == 200 {
            ok += 1;
        }
    }
    (started.elapsed().as_secs_f64() * 1e6 / rounds as f64, ok)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Each round's value, and their mean.
fn rounds_text(values: &[f64]) -> String {
    let each: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
    format!("{} (mean {:.2})", each.join(" / "), mean(values))
}

fn per_request_us(cpu: f64, load: &Load) -> f64 {
    cpu * 1e6 / load.requests.max(1.0)
}

/// The wrk script and its data: one target per line (`path TAB host TAB
/// user agent`), read at start-up (a Lua table literal of 100k entries is
/// more than Lua accepts). Every request picks a random target.
fn lua_script(targets: &[Target]) -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
    let mut data = tempfile::NamedTempFile::new().unwrap();
    for t in targets {
        writeln!(data, "{}\t{}\t{}", t.path, t.host, t.ua).unwrap();
    }
    data.flush().unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        r#"local targets = {{}}
for line in io.lines("{}") do
  local path, host, ua = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
  targets[#targets + 1] = {{path, host, ua}}
end
local n = #targets
math.randomseed(os.time())
request = function()
  local t = targets[math.random(n)]
  return wrk.format("GET", t[1], {{["Host"] = t[2], ["User-Agent"] = t[3]}})
end"#,
        data.path().display()
    )
    .unwrap();
    file.flush().unwrap();
    (file, data)
}

fn wrk(
    addr: SocketAddr,
    script: &std::path::Path,
    connections: usize,
    seconds: u64,
) -> Option<Load> {
    let output = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let rps = field("Requests/sec:").parse().unwrap_or(0.0);
    // "  123456 requests in 10.00s, ..."
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .collect::<Vec<_>>()
        .join("; ");
    Some(Load {
        rps,
        p50: field("50%"),
        p99: field("99%"),
        errors: if errors.is_empty() {
            "none".into()
        } else {
            errors
        },
        requests,
    })
}

/// Without wrk: an in-process keep-alive client per task.
async fn in_process(
    addr: SocketAddr,
    targets: Arc<Vec<Target>>,
    tasks: usize,
    duration: Duration,
) -> Load {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(tasks)
        .build()
        .unwrap();
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (client, targets) = (client.clone(), targets.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t as u64);
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while started.elapsed() < duration {
                let target = &targets[rng.usize(..targets.len())];
                let begun = Instant::now();
                let reply = client
                    .get(format!("http://{addr}{}", target.path))
                    .header("Host", &target.host)
                    .header("User-Agent", &target.ua)
                    .send()
                    .await;
                match reply {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                    }
                    _ => errors += 1,
                }
                latencies.push(begun.elapsed());
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (latencies, e) = h.await.unwrap();
        all.extend(latencies);
        errors += e;
    }
    all.sort();
    Load {
        requests: all.len() as f64,
        rps: all.len() as f64 / duration.as_secs_f64(),
        p50: format!("{:.2?}", percentile(&all, 0.5)),
        p99: format!("{:.2?}", percentile(&all, 0.99)),
        errors: errors.to_string(),
    }
}

/// nginx serving the same files from disk (`root <dir>/$host`).
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The whole process group (master and workers), so no worker outlives the bench.
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        let _ = self.child.wait();
    }
}

fn nginx(files: &[(String, String, String)]) -> Option<Nginx> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = tempfile::tempdir().ok()?;
    for (host, name, body) in files {
        let folder = dir.path().join("www").join(host);
        std::fs::create_dir_all(&folder).ok()?;
        std::fs::write(folder.join(name), body).ok()?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;\n\
           client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;\n\
           uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;\n\
           default_type text/plain; etag on;\n\
           server {{ listen 127.0.0.1:{port}; root {dir}/www/$host; location / {{ try_files $uri =404; }} }} }}\n",
        dir = dir.path().display()
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).ok()?;
    let child = std::process::Command::new(binary)
        .process_group(0)
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some(Nginx {
                child,
                addr,
                _dir: dir,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn main() {
    let units = env_usize("PHONES_BENCH_UNITS", 10_000);
    let accounts = env_usize("PHONES_BENCH_ACCOUNTS", 100);
    let big = env_usize("PHONES_BENCH_BIG", 1_000);
    let seconds = env_usize("PHONES_BENCH_SECONDS", 10) as u64;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "phones bench: {units} units over {accounts} accounts (one with {big}), {threads} build threads"
    );
    println!("load average at the start: {}", load_average());
    let rss_start = rss_mb();

    let started = Instant::now();
    let data = generate(units, accounts, big);
    let index = index_of(&data);
    println!(
        "source index: {} units-db docs + {} devices in {:.2?}, +{:.0} MB RSS",
        data.units.len(),
        data.devices.len(),
        started.elapsed(),
        rss_mb() - rss_start
    );

    let rss_index = rss_mb();
    let keys = PhonesBuilder.all_keys(&index);
    let store_dir = (std::env::var("PHONES_BENCH_STORE").as_deref() == Ok("1"))
        .then(|| tempfile::tempdir().expect("a temp dir for the store"));
    let mirror = match &store_dir {
        Some(dir) => {
            let store = Store::open(&dir.path().join("cache.redb")).expect("open the store");
            Mirror::with_store(store).expect("an empty store").0
        }
        None => Arc::new(Mirror::default()),
    };
    // Phones answer 503 until the mirror is warm; the bench fills it itself.
    mirror.caught_up();
    println!(
        "mirror: {}",
        if store_dir.is_some() {
            "on-disk store (PHONES_BENCH_STORE): phones outputs spill to disk"
        } else {
            "in memory (PHONES_BENCH_STORE=1 for the on-disk store)"
        }
    );
    // With a store the outputs are built and put in chunks, as the daemon
    // streams its cache load, so RSS shows what stays, not one moment
    // holding every output at once.
    let chunk = if store_dir.is_some() {
        env_usize("PHONES_BENCH_CHUNK", 5_000).max(1)
    } else {
        keys.len().max(1)
    };
    let mut totals = Totals::default();
    let mut all_deps = Vec::new();
    let mut sample_unit = None;
    let mut elapsed = Duration::ZERO;
    let started_all = Instant::now();
    mirror.begin_reload();
    for keys in keys.chunks(chunk) {
        // Built, hashed and turned into cache documents on the build
        // threads (the writer hashes every output too).
        let started = Instant::now();
        let built = build_entries(&index, keys, threads);
        elapsed += started.elapsed();
        for (key, entry, deps) in built {
            let Some(entry) = entry else {
                continue;
            };
            all_deps.push((key, deps));
            totals.add(&entry);
            if sample_unit.is_none() && entry.key.starts_with("unit:") {
                sample_unit = Some(entry.content.value().into_owned());
            }
            while mirror.store_healthy() == Some(true) && mirror.pending_bytes() > 64 << 20 {
                std::thread::sleep(Duration::from_millis(1));
            }
            mirror.reload_put(entry);
        }
    }
    mirror.finish_reload(None);
    assert!(mirror.flush(Duration::from_secs(600)), "the store commits");
    let unit_outputs = totals.units;
    if let Some((key, errors)) = &totals.first_error {
        println!(
            "outputs with errors: {} (the first: {key} {errors})",
            totals.with_errors
        );
    }
    println!(
        "full build (built and hashed): {} outputs ({unit_outputs} units, {} served) in {elapsed:.2?} = {:.0} units/s ({:.0} µs per output per thread); cache documents {:.1} MB ({:.1} kB per unit); built and in the mirror after {:.2?}",
        totals.outputs,
        totals.served,
        unit_outputs as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 * threads as f64 / totals.outputs.max(1) as f64,
        totals.bytes as f64 / 1e6,
        totals.bytes as f64 / 1e3 / unit_outputs.max(1) as f64,
        started_all.elapsed()
    );
    let rss_outputs = rss_mb();

    let rss_before_graph = rss_mb();
    let mut graph = DepGraph::default();
    let dep_count: usize = all_deps.iter().map(|(_, d)| d.len()).sum();
    for (key, deps) in all_deps {
        graph.set((Domain::Phones, key), deps);
    }
    println!(
        "dependency graph: {dep_count} dependencies ({:.1} per output), +{:.0} MB RSS",
        dep_count as f64 / graph.len().max(1) as f64,
        rss_mb() - rss_before_graph
    );
    let policy_dep = Dep::Doc(SourceId::from(UNITS), data.big_policy.clone());
    let started = Instant::now();
    let reached: Vec<String> = graph
        .dependents(&policy_dep)
        .map(|(_, k)| k.clone())
        .collect();
    let lookup = started.elapsed();
    let started = Instant::now();
    let rebuilt = build_all(&index, &reached, threads);
    let rebuild = started.elapsed();
    let started = Instant::now();
    let hashed: Vec<CacheEntry> = rebuilt.iter().filter_map(|(k, b, _)| entry(k, b)).collect();
    println!(
        "one policy edit: reaches {} outputs (lookup {lookup:.2?}), rebuilt in {rebuild:.2?}, hashed in {:.2?}",
        reached.len(),
        started.elapsed()
    );
    drop(hashed);
    drop(rebuilt);

    if let Some(content) = &sample_unit {
        let sizes: Vec<String> = content
            .as_object()
            .into_iter()
            .flatten()
            .map(|(field, value)| format!("{field} {}", value.to_string().len()))
            .collect();
        println!(
            "a unit's content, JSON bytes by field: {}",
            sizes.join(", ")
        );
    }
    let started = Instant::now();
    let rss_before_mirror = rss_index;
    let rss_mirror = rss_outputs;
    let settings = Settings {
        limits: Limits {
            budget: 0,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
            max_sources: 1000,
        },
        trust: TrustLimits {
            ttl: 3 * 86_400,
            max: 100_000,
        },
        nonce_ttl: Duration::from_secs(300),
        request_log: 50,
        max_upload: 65536,
        trusted_proxies: Vec::new(),
        hot_set_bytes: env_usize("PHONES_BENCH_HOT_SET_MB", 256) << 20,
    };
    let trust_on = settings.clone();
    let trust_off = Settings {
        trust: TrustLimits {
            max: 0,
            ..settings.trust
        },
        ..settings.clone()
    };
    let service = Arc::new(PhonesService::new(
        mirror.clone(),
        settings,
        nonce_key(Some("bench")),
    ));
    let rss_all = rss_mb();
    println!(
        "outputs built into the mirror +{:.0} MB RSS, serving index (and request logs) +{:.0} MB RSS",
        rss_mirror - rss_before_mirror,
        rss_all - rss_mirror
    );
    println!(
        "serving index: {:.2?}; RSS {rss_all:.0} MB: source index {:.0} MB, outputs (mirror, serving index, dependency graph) {:.0} MB = {:.1} kB per unit",
        started.elapsed(),
        rss_index - rss_start,
        rss_all - rss_index,
        (rss_all - rss_index) * 1024.0 / unit_outputs.max(1) as f64
    );

    // What the load generator asks for: served units' device files.
    let mut targets = Vec::new();
    let mut files = Vec::new();
    for id in mirror.ids_of("phones") {
        let Some(entry) = mirror.get(&id) else {
            continue;
        };
        let content = &entry.content.value();
        if !entry.key.starts_with("unit:") || content["served"] != true {
            continue;
        }
        let host = content["account"]["realm"].as_str().unwrap().to_string();
        let mac = content["unit"]["mac"].as_str().unwrap();
        for (name, file) in content["files"].as_object().unwrap() {
            let colons: Vec<String> = (0..6).map(|i| mac[2 * i..2 * i + 2].to_string()).collect();
            targets.push(Target {
                host: host.clone(),
                path: format!("/{name}"),
                ua: format!("Yealink SIP-T46S 66.86.0.15 {}", colons.join(":")),
            });
            files.push((
                host.clone(),
                name.clone(),
                file["body"].as_str().unwrap().to_string(),
            ));
        }
    }
    // The serving decision alone (no HTTP), one thread.
    let peer: std::net::IpAddr = "192.0.2.10".parse().unwrap();
    let rounds = 200_000.min(targets.len() * 20).max(1);
    let (each, ok) = decision_us(&service, &targets, peer, rounds);
    println!(
        "serving decision in process (no HTTP, 1 thread): {:.0} requests/s, {each:.2} µs each ({ok} of {rounds} served)",
        1e6 / each
    );
    // A miss reads the body back from the mirror (the store, with one):
    // the same decisions with an empty hot set, then warm again.
    let hot_bytes = service.settings().hot_set_bytes;
    service.tables().resize_hot_set(0);
    let (cold, _) = decision_us(&service, &targets, peer, rounds);
    service.tables().resize_hot_set(hot_bytes);
    decision_us(&service, &targets, peer, rounds);
    let (warm, _) = decision_us(&service, &targets, peer, rounds);
    let hot = service.tables().hot_stats();
    println!(
        "hot set (PHONES_BENCH_HOT_SET_MB): every file read back {cold:.2} µs per request, warm {warm:.2} µs -> cold/warm = {:.2}; now {} files, {:.1} MB of {:.0} MB",
        cold / warm,
        hot.files,
        hot.bytes as f64 / 1e6,
        hot.limit_bytes as f64 / 1e6
    );
    let ab = std::env::var_os("PHONES_BENCH_TRUST_AB").is_some();
    let ab_rounds = env_usize("PHONES_BENCH_AB_ROUNDS", 2);
    if ab {
        let mut per = [Vec::new(), Vec::new()];
        for _ in 0..ab_rounds {
            for (i, settings) in [&trust_off, &trust_on].into_iter().enumerate() {
                service.reload(settings.clone());
                per[i].push(decision_us(&service, &targets, peer, rounds).0);
            }
        }
        println!(
            "trust A/B, serving decision in process: off {} µs, on {} µs -> on/off = {:.3} (trusted pairs now {})",
            rounds_text(&per[0]),
            rounds_text(&per[1]),
            mean(&per[1]) / mean(&per[0]),
            service.trust().len()
        );
    }
    let targets = Arc::new(targets);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = caldera::http::phones::listener(
            service.clone(),
            Arc::new(Metrics::new()),
            Duration::from_secs(10),
        );
        let limits = caldera::http::Limits {
            max_headers: 64,
            max_header_bytes: 16384,
            header_read_timeout: Duration::from_secs(10),
        };
        tokio::spawn(caldera::http::serve(
            "phones",
            listener,
            router,
            limits,
            token.clone(),
            Duration::from_secs(1),
        ));
        addr
    });
    let have_wrk = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok();
    let (script, _data) = lua_script(&targets);
    let nginx = nginx(&files);
    // The server runs in this process; while wrk runs, only its threads work.
    let own_stat = [std::path::PathBuf::from("/proc/self/stat")];
    let nginx_stats = nginx
        .as_ref()
        .map(|n| group_stats(n.child.id()))
        .unwrap_or_default();
    for connections in [64, 256] {
        let caldera = if have_wrk {
            measured(&own_stat, || wrk(addr, script.path(), connections, seconds))
        } else {
            // The client shares the process: no CPU figure.
            let load = runtime.block_on(in_process(
                addr,
                targets.clone(),
                connections.min(64),
                Duration::from_secs(seconds),
            ));
            Some((load, f64::NAN))
        };
        let (caldera, caldera_cpu) = caldera.expect("a load run");
        let tool = if have_wrk { "wrk" } else { "in-process client" };
        println!(
            "HTTP GET per-device files ({tool}, c{connections}, {seconds} s, random units): caldera {:.0} req/s, p50 {}, p99 {}, non-200/errors: {}, CPU {:.1} µs per request",
            caldera.rps,
            caldera.p50,
            caldera.p99,
            caldera.errors,
            per_request_us(caldera_cpu, &caldera)
        );
        if let (true, Some(nginx)) = (have_wrk, &nginx)
            && let Some((reference, nginx_cpu)) = measured(&nginx_stats, || {
                wrk(nginx.addr, script.path(), connections, seconds)
            })
        {
            println!(
                "  nginx (same files from disk, 2 workers): {:.0} req/s, p50 {}, p99 {}, non-200/errors: {}, CPU {:.1} µs per request -> caldera/nginx = {:.2}",
                reference.rps,
                reference.p50,
                reference.p99,
                reference.errors,
                per_request_us(nginx_cpu, &reference),
                caldera.rps / reference.rps.max(1.0)
            );
        }
    }
    if ab && have_wrk {
        let mut per = [Vec::new(), Vec::new()];
        let mut cpu = [Vec::new(), Vec::new()];
        for _ in 0..ab_rounds {
            for (i, settings) in [&trust_off, &trust_on].into_iter().enumerate() {
                service.reload(settings.clone());
                let (load, used) = measured(&own_stat, || wrk(addr, script.path(), 64, seconds))
                    .expect("a load run");
                per[i].push(load.rps);
                cpu[i].push(per_request_us(used, &load));
            }
        }
        println!(
            "trust A/B, HTTP GET per-device files (wrk, c64, {seconds} s per round): off {} req/s, on {} req/s -> on/off = {:.3}; CPU per request off {} µs, on {} µs",
            rounds_text(&per[0]),
            rounds_text(&per[1]),
            mean(&per[1]) / mean(&per[0]),
            rounds_text(&cpu[0]),
            rounds_text(&cpu[1])
        );
    }
    if nginx.is_none() {
        println!(
            "  (nginx is not installed: scripts/bench-phones installs nginx-light and wrk, then runs this)"
        );
    }
    token.cancel();
    let hot = service.tables().hot_stats();
    println!(
        "hot set at the end: {} files, {:.1} MB; {} hits, {} misses",
        hot.files,
        hot.bytes as f64 / 1e6,
        hot.hits,
        hot.misses
    );
    println!("RSS at the end: {:.0} MB", rss_mb());
    println!("load average at the end: {}", load_average());
}
