//! Phones at scale through CouchDB (`cargo bench --bench scale`, or
//! `scripts/bench-scale`, which installs wrk and nginx-light when missing):
//! point 4 of issue 13, the phones domain.
//!
//! For each size in `SCALE_BENCH_UNITS` (comma list, default
//! `100000,300000,1000000`, run in increasing order), a fresh on-disk
//! pouchdb-server (LevelDB mode, the tests' `CouchProcess`) and a fresh
//! daemon binary with an on-disk cache store (`cache.store_path` in a
//! temporary directory):
//!
//! * Data (generated, streamed to CouchDB in `_bulk_docs` of 1,000, two
//!   requests in flight): N Yealink T46S units over N/50 accounts (a tenth
//!   resellers, the rest customers), each account with a provision config
//!   (locks included), each customer with 5 policies and 2 profiles; each
//!   unit with 1–2 lines (a `sip_auth` device per line). One customer holds
//!   10,000 units (N/2 when N < 20k) whose profiles share one policy.
//! * CouchDB's raw write rate for that load (docs/s and MB/s of JSON).
//! * The daemon's full build: from spawning it until every phones output
//!   (unit, account and model-common cache documents) is in the cache
//!   database (its `doc_count`, polled each second, and the last unit's
//!   cache document); units/s, cache docs/s and MB/s, and the ratio to the
//!   raw write rate; the daemon's RSS (sampled) and `VmHWM` (peak), and
//!   pouchdb-server's.
//! * RSS per unit at the end, the cache database's size on disk, the store
//!   file's size.
//! * One edit of the policy the big customer's 10,000 units share, sent to
//!   CouchDB: time until the served `<mac>.cfg` of a random sample of those
//!   units changes (p50 / p99 / max over the sample).
//! * One unit edit (a line label) → its served `<mac>.cfg` changes, over
//!   `SCALE_BENCH_EDITS` edits (20): p50 / p99.
//! * HTTP GET of per-device files (`<mac>.cfg`, `<mac>.boot`) of random
//!   units on the phones listener with wrk (`-t2`, c64 and c256,
//!   `SCALE_BENCH_SECS` each, default 10), side by side with nginx serving
//!   the same files pre-rendered on disk (a sample of at most 50k files, the
//!   bytes fetched from caldera itself), with each server's CPU per request.
//!
//! `SCALE_BENCH_MAX_SECS` (1500) is a time guard per size: past it the size
//! stops where it is, says so, and keeps the numbers it has; a panic (a
//! server gone, a refused write) is caught the same way, with the stage it
//! broke in. `SCALE_BENCH_MAX_RSS_MB` (default 75 % of the memory
//! available when the daemon starts: the machine is shared) is a memory
//! guard: past it the daemon is killed and the size says how far it got
//! (cache documents written, daemon CPU).
//! `SCALE_BENCH_DAEMON_ENV` (`K=V K=V`) sets the daemon's environment (e.g.
//! `MALLOC_ARENA_MAX=2`); `SCALE_BENCH_PRINT_LOG=1` prints its log after the
//! build; `SCALE_BENCH_LOG` sets its `log.level`. A results table is printed at the end with the machine and the
//! load average at the start and the end. Numbers are printed, not
//! asserted.

#[path = "daemon_support/mod.rs"]
mod daemon_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use daemon_support::{cpu_time, env_or, machine, percentile, rss_mb};
use support::couch::{Couch, CouchProcess, DbNames};
use support::daemon::{Daemon, DaemonConfig};

/// Units of the big customer (whose shared policy is edited).
const BIG: usize = 10_000;
/// Units sampled for the policy edit.
const POLICY_SAMPLE: usize = 200;
/// Most files served side by side with nginx.
const MAX_FILES: usize = 50_000;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------- data

/// The shape of one size's data.
#[derive(Clone, Copy)]
struct Plan {
    units: usize,
    resellers: usize,
    customers: usize,
    big: usize,
}

impl Plan {
    fn new(units: usize) -> Plan {
        let accounts = (units / 50).max(3);
        let resellers = (accounts / 10).max(1);
        Plan {
            units,
            resellers,
            customers: accounts - resellers,
            big: BIG.min(units / 2),
        }
    }

    fn accounts(&self) -> usize {
        self.resellers + self.customers
    }

    /// The customer unit `n` belongs to: the big one first, then round
    /// robin over the others.
    fn customer_of(&self, n: usize) -> usize {
        if n < self.big {
            0
        } else {
            1 + (n - self.big) % (self.customers - 1)
        }
    }

    /// Customers with at least one unit (each has a model-common output).
    fn customers_with_units(&self) -> usize {
        1 + (self.units - self.big).min(self.customers - 1)
    }

    /// The phones outputs a full build writes: one per unit, per account,
    /// per (customer with units, model).
    fn outputs(&self) -> usize {
        self.units + self.accounts() + self.customers_with_units()
    }

    fn lines_of(n: usize) -> usize {
        1 + n % 2
    }

    fn devices(&self) -> usize {
        (0..self.units).map(Plan::lines_of).sum()
    }

    fn units_db_docs(&self) -> usize {
        self.resellers * 2 + self.customers * 9 + self.units
    }
}

fn mac_of(n: usize) -> String {
    format!("805ec0{n:06x}")
}

fn realm_of(customer: usize) -> String {
    format!("c{customer}.example.net")
}

fn user_agent(mac: &str) -> String {
    let colons: Vec<&str> = (0..6).map(|i| &mac[2 * i..2 * i + 2]).collect();
    format!("Yealink SIP-T46S 66.86.0.15 {}", colons.join(":"))
}

fn policy_doc(c: usize, p: usize, minutes: usize) -> Value {
    let mut config = json!({
        "phone_book": {"name": "Company", "entries": [{"name": "Reception", "number": format!("{p}00")}]},
        "keys": [{"key": 3 + p, "type": "blf", "value": format!("10{p}"), "label": format!("Key {p}")}],
        "yealink": {"phone_setting": {"ring_type": format!("Ring{}.wav", 1 + p)}}});
    if p == 0 {
        // What only this policy sets (the later ones override the rest), so
        // its edit changes every dependent unit's served file.
        config["yealink"]["static"] =
            json!({"auto_provision": {"repeat": {"enable": 1, "minutes": minutes}}});
    }
    json!({"_id": format!("pol-{c}-{p}"), "type": "policy", "account_id": format!("acct-{c}"),
           "name": format!("Policy {p}"), "config": config})
}

fn unit_doc(plan: &Plan, n: usize, label_suffix: &str) -> Value {
    let c = plan.customer_of(n);
    let lines: Vec<Value> = (1..=Plan::lines_of(n))
        .map(|l| json!({"line": l, "device_id": format!("dev-{n}-{l}"), "label": format!("Line {l}{label_suffix}")}))
        .collect();
    json!({"_id": format!("unit-{n}"), "type": "unit", "account_id": format!("acct-{c}"),
        "name": format!("Desk {n}"), "mac_address": mac_of(n), "brand": "yealink", "model": "t46s",
        "profiles": [format!("prof-{c}-{}", n % 2)], "config": {"yealink": {"local_time": {"time_format": n % 2}}},
        "lines": lines})
}

/// Every document of the `units` database, generated on demand.
fn units_db(plan: Plan) -> impl Iterator<Item = Value> {
    let resellers = (0..plan.resellers).flat_map(|r| {
        let id = format!("reseller-{r}");
        [
            json!({"_id": id, "type": "account", "name": id, "realm": format!("r{r}.example.net")}),
            json!({"_id": format!("pc-{id}"), "type": "provision_config", "account_id": id,
            "config": {"codecs": ["g722", "pcmu"],
                       "yealink": {"static": {"network": {"vlan": {"internet_port_enable": 1, "internet_port_vid": 20 + r % 10}}}}},
            "defaults": {"time": {"ntp_server": "pool.ntp.org"}, "yealink": {"local_time": {"time_zone": "+1", "time_zone_name": "France(Paris)"}}},
            "locks": {"codecs": true, "yealink": {"static": {"network": {"vlan": true}}}}}),
        ]
    });
    let customers = (0..plan.customers).flat_map(move |c| {
        let account = format!("acct-{c}");
        let reseller = format!("reseller-{}", c % plan.resellers);
        let mut docs = vec![
            json!({"_id": account, "type": "account", "name": account, "realm": realm_of(c), "tree": [reseller]}),
            json!({"_id": format!("pc-{account}"), "type": "provision_config", "account_id": account,
            "config": {"time": {"ntp_server": format!("ntp.c{c}.example.net")}, "yealink": {"features": {"dnd": {"allow": 0}}}},
            "defaults": {"yealink": {"lang": {"gui": "French"}}},
            "locks": {"yealink": {"features": {"dnd": true}}}}),
        ];
        docs.extend((0..5).map(|p| policy_doc(c, p, 1440)));
        docs.extend((0..2).map(|f| {
            json!({"_id": format!("prof-{c}-{f}"), "type": "profile", "account_id": account,
            "name": format!("Profile {f}"), "policies": [format!("pol-{c}-0"), format!("pol-{c}-{}", 1 + f)]})
        }));
        docs
    });
    let units = (0..plan.units).map(move |n| unit_doc(&plan, n, ""));
    resellers.chain(customers).chain(units)
}

/// Every document of the `sip_auth` database.
fn sip_auth_db(plan: Plan) -> impl Iterator<Item = Value> {
    (0..plan.units).flat_map(move |n| {
        let account = format!("acct-{}", plan.customer_of(n));
        (1..=Plan::lines_of(n)).map(move |l| {
            json!({"_id": format!("dev-{n}-{l}"), "pvt_type": "device", "pvt_account_id": account,
                   "sip": {"method": "password", "username": format!("u{n}l{l}"), "password": format!("secret-{n}-{l}")}})
        })
    })
}

/// Batches of `size` from an iterator.
fn batches<T>(mut items: impl Iterator<Item = T>, size: usize) -> impl Iterator<Item = Vec<T>> {
    std::iter::from_fn(move || {
        let batch: Vec<T> = items.by_ref().take(size).collect();
        (!batch.is_empty()).then_some(batch)
    })
}

// ---------------------------------------------------------------- results

/// One load run of wrk.
#[derive(Clone, Default)]
struct Load {
    rps: f64,
    p50: String,
    p99: String,
    errors: String,
    cpu_us: f64,
}

/// What one size measured (filled in as it goes, so a size that breaks
/// keeps what it had).
#[derive(Clone, Default)]
struct Row {
    units: usize,
    accounts: usize,
    stage: String,
    broke: Option<String>,
    loaded_docs: usize,
    load_secs: f64,
    raw_docs_s: f64,
    raw_mb_s: f64,
    couch_rss_peak: f64,
    build_secs: Option<f64>,
    built_docs: u64,
    cache_mb: f64,
    rss_built: (f64, f64),
    rss_end: (f64, f64),
    daemon_cpu_build: f64,
    cache_db_mb: f64,
    store_mb: f64,
    served_bytes_per_unit: f64,
    /// Sampled units, p50, p99, max (ms).
    policy: Option<(usize, f64, f64, f64)>,
    unit_edit: Option<(usize, f64, f64)>,
    serving: Vec<(usize, Load, Option<Load>)>,
}

type Shared = Arc<Mutex<Row>>;

fn with<R>(row: &Shared, f: impl FnOnce(&mut Row) -> R) -> R {
    f(&mut row.lock().unwrap_or_else(|e| e.into_inner()))
}

fn stage(row: &Shared, what: &str) {
    println!(
        "[{}] {what} (load {})",
        with(row, |r| r.units),
        load_average()
    );
    with(row, |r| r.stage = what.to_string());
}

struct Guard {
    deadline: Instant,
    started: Instant,
}

impl Guard {
    fn check(&self, what: impl FnOnce() -> String) -> Result<(), String> {
        if Instant::now() > self.deadline {
            Err(format!(
                "time guard ({} s) hit: {}",
                (self.deadline - self.started).as_secs(),
                what()
            ))
        } else {
            Ok(())
        }
    }
}

fn dir_mb(path: &Path) -> f64 {
    fn walk(path: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return 0;
        };
        if meta.is_dir() {
            std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| walk(&e.path()))
                .sum()
        } else {
            meta.len()
        }
    }
    walk(path) as f64 / 1e6
}

// ---------------------------------------------------------------- loading

/// Streams `docs` into `db`; returns (documents, JSON bytes).
async fn load(
    couch: &Couch,
    db: &str,
    docs: impl Iterator<Item = Value>,
    guard: &Guard,
    couch_pid: u32,
    row: &Shared,
) -> Result<(usize, usize), String> {
    couch.create_db(db).await;
    let mut written = 0;
    let mut bytes = 0;
    let mut requests = futures_util::stream::iter(batches(docs, 1000))
        .map(|batch| async move {
            let size = serde_json::to_vec(&batch).map_or(0, |b| b.len());
            let results = couch.bulk_docs(db, &batch).await;
            let refused = results
                .iter()
                .find(|r| r["rev"].as_str().is_none())
                .cloned();
            (batch.len(), size, refused)
        })
        .buffer_unordered(2);
    let mut last_report = Instant::now();
    while let Some((count, size, refused)) = requests.next().await {
        if let Some(refused) = refused {
            return Err(format!("{db}: a document was refused: {refused}"));
        }
        written += count;
        bytes += size;
        let (rss, _) = rss_mb(couch_pid);
        with(row, |r| r.couch_rss_peak = r.couch_rss_peak.max(rss));
        if last_report.elapsed() > Duration::from_secs(30) {
            last_report = Instant::now();
            println!(
                "  {db}: {written} docs so far; pouchdb-server RSS {rss:.0} MB (load {})",
                load_average()
            );
        }
        guard.check(|| format!("loading {db}: {written} documents written"))?;
    }
    Ok((written, bytes))
}

// ---------------------------------------------------------------- HTTP

/// GET of a served file on the phones listener: (status, body).
async fn served(daemon: &Daemon, host: &str, mac: &str, file: &str) -> (u16, String) {
    let reply = daemon
        .http()
        .get(daemon.phones_url(&format!("/{file}")))
        .header("Host", host)
        .header("User-Agent", user_agent(mac))
        .send()
        .await;
    match reply {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// The value of the first `/metrics` line that starts with `name` and
/// holds `label` (0 when there is none).
async fn metric(daemon: &Daemon, name: &str, label: &str) -> f64 {
    let text = daemon.get("/metrics").await.text;
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The daemon's RSS limit: `SCALE_BENCH_MAX_RSS_MB`, else 75 % of the
/// memory available now (the machine is shared: the bench must not push
/// the others' processes out).
fn max_rss_mb() -> f64 {
    let available = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(8192.0, |kb| kb / 1024.0);
    env_or("SCALE_BENCH_MAX_RSS_MB", available * 0.75)
}

/// `<mac>.cfg` of unit `n`.
async fn device_cfg(daemon: &Daemon, plan: &Plan, n: usize) -> (u16, String) {
    let mac = mac_of(n);
    served(
        daemon,
        &realm_of(plan.customer_of(n)),
        &mac,
        &format!("{mac}.cfg"),
    )
    .await
}

/// Waits until each unit's `<mac>.cfg` differs from `before`; the time
/// each took from `sent`.
async fn until_changed(
    daemon: &Daemon,
    plan: &Plan,
    sample: &[(usize, String)],
    sent: Instant,
    timeout: Duration,
) -> Result<Vec<Duration>, String> {
    let mut waiting: Vec<&(usize, String)> = sample.iter().collect();
    let mut times = Vec::with_capacity(sample.len());
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for unit in waiting {
            let (status, body) = device_cfg(daemon, plan, unit.0).await;
            if status == 200 && body != unit.1 {
                times.push(sent.elapsed());
            } else {
                still.push(unit);
            }
        }
        waiting = still;
        if sent.elapsed() > timeout {
            return Err(format!(
                "{} of {} units still served the old file after {timeout:?}",
                waiting.len(),
                sample.len()
            ));
        }
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    times.sort();
    Ok(times)
}

fn ms_f(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A target for wrk: path, host, user agent.
struct Target {
    path: String,
    host: String,
    ua: String,
}

/// The wrk script and its data file (one target per line, read at start;
/// every request picks a random one).
fn lua_script(targets: &[Target]) -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
    let mut data = tempfile::NamedTempFile::new().expect("a temp file");
    for t in targets {
        writeln!(data, "{}\t{}\t{}", t.path, t.host, t.ua).expect("write");
    }
    data.flush().expect("flush");
    let mut file = tempfile::NamedTempFile::new().expect("a temp file");
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
    .expect("write");
    file.flush().expect("flush");
    (file, data)
}

/// User + system CPU seconds of the processes in `/proc/<pid>/stat` files.
fn cpu_seconds(stat_paths: &[PathBuf]) -> f64 {
    stat_paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .sum()
}

/// The `/proc/<pid>/stat` of every process in process group `group`.
fn group_stats(group: u32) -> Vec<PathBuf> {
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

/// `wrk -t2 -c<connections>` with the script; CPU of `stats` per request.
fn wrk(
    addr: &str,
    script: &Path,
    connections: usize,
    secs: u64,
    stats: &[PathBuf],
) -> Option<Load> {
    let before = cpu_seconds(stats);
    let output = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/"))
        .output()
        .ok()?;
    let cpu = cpu_seconds(stats) - before;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    let requests: f64 = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Some(Load {
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        p50: field("50%"),
        p99: field("99%"),
        errors: if errors.is_empty() {
            "none".into()
        } else {
            errors
        },
        cpu_us: cpu * 1e6 / requests.max(1.0),
    })
}

/// nginx serving the same files from disk (`root <dir>/$host`).
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The whole process group (master and workers).
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
        .find(|p| Path::new(p).exists())?;
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

// ---------------------------------------------------------------- one size

async fn run_size(units: usize, row: Shared, max_secs: u64) -> Result<(), String> {
    let started = Instant::now();
    let guard = Guard {
        deadline: started + Duration::from_secs(max_secs),
        started,
    };
    let plan = Plan::new(units);
    with(&row, |r| {
        r.units = units;
        r.accounts = plan.accounts();
    });
    let secs = env_or("SCALE_BENCH_SECS", 10u64);
    let edits = env_or("SCALE_BENCH_EDITS", 20usize);
    let work = tempfile::Builder::new()
        .prefix("caldera-scale-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .map_err(|e| format!("a work dir: {e}"))?;
    let data_dir = work.path().join("couch");
    std::fs::create_dir_all(&data_dir).map_err(|e| e.to_string())?;

    stage(&row, "starting pouchdb-server (on-disk LevelDB)");
    let couch_process = CouchProcess::start(&data_dir);
    let couch_pid = couch_process.pid().unwrap_or(0);
    let couch = Couch::new(couch_process.url());
    let names = DbNames::unique();
    for (_, db) in names.all() {
        couch.create_db(&db).await;
    }
    let units_db_name = format!("{}_units", names.prefix);
    let sip_auth_name = format!("{}_sip_auth", names.prefix);

    stage(
        &row,
        &format!(
            "loading {} units-db docs ({} accounts) and {} sip_auth devices",
            plan.units_db_docs(),
            plan.accounts(),
            plan.devices()
        ),
    );
    let load_started = Instant::now();
    let (a, a_bytes) = load(
        &couch,
        &units_db_name,
        units_db(plan),
        &guard,
        couch_pid,
        &row,
    )
    .await?;
    let (b, b_bytes) = load(
        &couch,
        &sip_auth_name,
        sip_auth_db(plan),
        &guard,
        couch_pid,
        &row,
    )
    .await?;
    let load_secs = load_started.elapsed().as_secs_f64();
    with(&row, |r| {
        r.loaded_docs = a + b;
        r.load_secs = load_secs;
        r.raw_docs_s = (a + b) as f64 / load_secs;
        r.raw_mb_s = (a_bytes + b_bytes) as f64 / 1e6 / load_secs;
    });
    println!(
        "  loaded {} docs ({:.0} MB of JSON) in {load_secs:.1} s = {:.0} docs/s, {:.2} MB/s; pouchdb-server RSS {:.0} MB, data dir {:.0} MB",
        a + b,
        (a_bytes + b_bytes) as f64 / 1e6,
        (a + b) as f64 / load_secs,
        (a_bytes + b_bytes) as f64 / 1e6 / load_secs,
        rss_mb(couch_pid).0,
        dir_mb(&data_dir)
    );

    stage(&row, "daemon full build");
    let store_path = work.path().join("store").join("cache.redb");
    std::fs::create_dir_all(store_path.parent().expect("a parent")).map_err(|e| e.to_string())?;
    let mut config = DaemonConfig::new(couch.url(), &names, "caldera@scale");
    config
        .set("log.level", "info")
        .set("feeds.heartbeat_ms", 5000)
        .set("cache.store_path", store_path.display().to_string());
    if let Ok(level) = std::env::var("SCALE_BENCH_LOG") {
        config.set("log.level", level);
    }
    config.label = format!("scale-{units}");
    let expected = plan.outputs() as u64;
    let last_unit = format!("phones:unit:unit-{}", units - 1);
    if let Ok(env) = std::env::var("SCALE_BENCH_DAEMON_ENV") {
        // e.g. `MALLOC_ARENA_MAX=2`, to tell fragmentation from live data.
        for pair in env.split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                config.env.push((k.into(), v.into()));
            }
        }
    }
    let max_rss = max_rss_mb();
    println!("  memory guard: the daemon is stopped past {max_rss:.0} MB RSS");
    let spawned = Instant::now();
    let mut daemon = Daemon::start(&config).await;
    let pid = daemon.pid();
    let mut last_report = Instant::now();
    let mut peak_sampled: f64 = 0.0;
    let mut count_at_last_report = 0;
    loop {
        let count = couch.doc_count(&names.cache).await;
        let (rss, _) = rss_mb(pid);
        peak_sampled = peak_sampled.max(rss);
        let (couch_rss, _) = rss_mb(couch_pid);
        with(&row, |r| {
            r.built_docs = count;
            r.couch_rss_peak = r.couch_rss_peak.max(couch_rss);
        });
        if count >= expected && couch.get(&names.cache, &last_unit).await.is_some() {
            break;
        }
        if rss > max_rss {
            let cpu = cpu_time(pid).as_secs_f64();
            daemon.kill9();
            return Err(format!(
                "memory guard: daemon RSS {rss:.0} MB > {max_rss:.0} MB after {:.0} s, with {count} of {expected} cache docs written and {cpu:.0} s of daemon CPU; stopped (kill -9)",
                spawned.elapsed().as_secs_f64()
            ));
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            println!(
                "  {:.0} s: {count} of {expected} cache docs ({:.0}/s over the last 30 s); daemon RSS {rss:.0} MB (peak {:.0}), CPU {:?}; pouchdb-server RSS {couch_rss:.0} MB; store {:.0} MB (load {})",
                spawned.elapsed().as_secs_f64(),
                (count - count_at_last_report.min(count)) as f64
                    / last_report.elapsed().as_secs_f64(),
                rss_mb(pid).1,
                cpu_time(pid),
                dir_mb(store_path.parent().expect("a parent")),
                load_average()
            );
            last_report = Instant::now();
            count_at_last_report = count;
        }
        if !daemon.is_running() {
            return Err(format!(
                "the daemon exited during the build at {count} of {expected} cache docs:\n{}",
                daemon.log_tail(30)
            ));
        }
        guard.check(|| {
            format!(
                "daemon build: {count} of {expected} cache docs after {:.0} s",
                spawned.elapsed().as_secs_f64()
            )
        })?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let build_secs = spawned.elapsed().as_secs_f64();
    if std::env::var_os("SCALE_BENCH_PRINT_LOG").is_some() {
        for line in daemon.logs() {
            println!("  log: {line}");
        }
    }
    let info = couch.db_info(&names.cache).await.unwrap_or(Value::Null);
    let cache_db_mb = dir_mb(&data_dir.join(&names.cache));
    // pouchdb-server's db info has no sizes: the daemon's own count of
    // its cache documents' bytes instead.
    let cache_json_mb = info["sizes"]["external"]
        .as_f64()
        .unwrap_or(metric(&daemon, "caldera_cache_bytes{", "\"phones\"").await)
        / 1e6;
    with(&row, |r| {
        r.build_secs = Some(build_secs);
        r.rss_built = rss_mb(pid);
        r.daemon_cpu_build = cpu_time(pid).as_secs_f64();
        r.cache_db_mb = cache_db_mb;
        r.cache_mb = cache_json_mb;
        r.store_mb = dir_mb(store_path.parent().expect("a parent"));
    });
    let (rss, peak) = rss_mb(pid);
    println!(
        "  built: {expected} phones outputs in {build_secs:.1} s = {:.0} units/s, {:.0} cache docs/s; daemon CPU {:?}; RSS {rss:.0} MB (peak {peak:.0}, sampled peak {peak_sampled:.0}) = {:.0} bytes per unit; cache documents {cache_json_mb:.0} MB of JSON, cache db on disk {cache_db_mb:.0} MB; store {:.0} MB",
        units as f64 / build_secs,
        expected as f64 / build_secs,
        cpu_time(pid),
        rss * 1e6 / units as f64,
        with(&row, |r| r.store_mb),
    );

    // The big customer's units, sampled, and their files before the edit.
    stage(&row, "policy edit reaching the big customer's units");
    let mut rng = fastrand::Rng::with_seed(units as u64);
    let mut sample = Vec::new();
    for _ in 0..POLICY_SAMPLE.min(plan.big) {
        let n = rng.usize(..plan.big);
        let (status, body) = device_cfg(&daemon, &plan, n).await;
        if status != 200 {
            return Err(format!("unit-{n}'s <mac>.cfg answered {status}: {body}"));
        }
        sample.push((n, body));
    }
    let policy_rev = couch
        .rev(&units_db_name, "pol-0-0")
        .await
        .ok_or("no pol-0-0")?;
    let mut policy = policy_doc(0, 0, 1441);
    policy["_rev"] = json!(policy_rev);
    let sent = Instant::now();
    couch
        .try_put(&units_db_name, &policy)
        .await
        .map_err(|e| format!("the policy edit was refused: {e:?}"))?;
    let times = until_changed(&daemon, &plan, &sample, sent, Duration::from_secs(300)).await?;
    let policy_result = (
        sample.len(),
        ms_f(percentile(&times, 0.5)),
        ms_f(percentile(&times, 0.99)),
        ms_f(*times.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "  policy edit reaching {} units: {} sampled units' <mac>.cfg changed after p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        plan.big, policy_result.0, policy_result.1, policy_result.2, policy_result.3
    );
    with(&row, |r| r.policy = Some(policy_result));
    guard.check(|| "after the policy edit".into())?;

    stage(&row, "single unit edits");
    let mut latencies = Vec::new();
    for e in 0..edits {
        let n = if units > plan.big {
            plan.big + (e * 7919 + 13) % (units - plan.big)
        } else {
            (e * 7919) % units
        };
        let (_, before) = device_cfg(&daemon, &plan, n).await;
        let id = format!("unit-{n}");
        let rev = couch.rev(&units_db_name, &id).await.ok_or("no unit rev")?;
        let mut doc = unit_doc(&plan, n, &format!(" e{e}"));
        doc["_rev"] = json!(rev);
        let sent = Instant::now();
        couch
            .try_put(&units_db_name, &doc)
            .await
            .map_err(|e| format!("the unit edit was refused: {e:?}"))?;
        let times = until_changed(
            &daemon,
            &plan,
            &[(n, before)],
            sent,
            Duration::from_secs(60),
        )
        .await?;
        latencies.push(times[0]);
    }
    latencies.sort();
    let unit_result = (
        edits,
        ms_f(percentile(&latencies, 0.5)),
        ms_f(percentile(&latencies, 0.99)),
    );
    println!(
        "  one unit edit → served, {edits} edits: p50 {:.1} ms, p99 {:.1} ms",
        unit_result.1, unit_result.2
    );
    with(&row, |r| r.unit_edit = Some(unit_result));
    guard.check(|| "after the unit edits".into())?;

    stage(&row, "fetching the served files for nginx");
    let per_unit = 2;
    let sampled_units = (MAX_FILES / per_unit).min(units);
    let picks: Vec<usize> = if sampled_units == units {
        (0..units).collect()
    } else {
        (0..sampled_units).map(|_| rng.usize(..units)).collect()
    };
    let daemon_ref = &daemon;
    let plan_ref = &plan;
    let fetched: Vec<Vec<(String, String, String, String)>> = futures_util::stream::iter(picks)
        .map(|n| async move {
            let mac = mac_of(n);
            let host = realm_of(plan_ref.customer_of(n));
            let mut files = Vec::new();
            for name in [format!("{mac}.cfg"), format!("{mac}.boot")] {
                let (status, body) = served(daemon_ref, &host, &mac, &name).await;
                if status == 200 {
                    files.push((host.clone(), name, body, mac.clone()));
                }
            }
            files
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let files: Vec<(String, String, String, String)> = fetched.into_iter().flatten().collect();
    if files.is_empty() {
        return Err("no served file to load".into());
    }
    let served_bytes: usize = files.iter().map(|f| f.2.len()).sum();
    with(&row, |r| {
        r.served_bytes_per_unit = served_bytes as f64 * per_unit as f64 / files.len() as f64
    });
    let targets: Vec<Target> = files
        .iter()
        .map(|(host, name, _, mac)| Target {
            path: format!("/{name}"),
            host: host.clone(),
            ua: user_agent(mac),
        })
        .collect();
    let nginx_files: Vec<(String, String, String)> = files
        .into_iter()
        .map(|(host, name, body, _)| (host, name, body))
        .collect();
    println!(
        "  {} files ({:.1} kB per unit served) from {sampled_units} random units",
        nginx_files.len(),
        served_bytes as f64 / 1e3 * per_unit as f64 / nginx_files.len() as f64
    );
    let (script, _data) = lua_script(&targets);
    let nginx = nginx(&nginx_files);
    drop(nginx_files);
    let have_wrk = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok();
    let caldera_stats = [PathBuf::from(format!("/proc/{pid}/stat"))];
    let nginx_stats = nginx
        .as_ref()
        .map(|n| group_stats(n.child.id()))
        .unwrap_or_default();
    let caldera_addr = daemon
        .phones_url("")
        .trim_start_matches("http://")
        .to_string();
    for connections in [64, 256] {
        if !have_wrk {
            println!(
                "  wrk is not installed: no serving figures (scripts/bench-scale installs it)"
            );
            break;
        }
        stage(&row, &format!("serving with wrk at c{connections}"));
        let Some(ours) = wrk(
            &caldera_addr,
            script.path(),
            connections,
            secs,
            &caldera_stats,
        ) else {
            return Err("wrk did not run".into());
        };
        let reference = nginx.as_ref().and_then(|n| {
            wrk(
                &n.addr.to_string(),
                script.path(),
                connections,
                secs,
                &nginx_stats,
            )
        });
        println!(
            "  c{connections}: caldera {:.0} req/s, p50 {}, p99 {}, errors {}, {:.1} µs CPU per request",
            ours.rps, ours.p50, ours.p99, ours.errors, ours.cpu_us
        );
        if let Some(n) = &reference {
            println!(
                "        nginx   {:.0} req/s, p50 {}, p99 {}, errors {}, {:.1} µs CPU per request -> caldera/nginx {:.2}",
                n.rps,
                n.p50,
                n.p99,
                n.errors,
                n.cpu_us,
                ours.rps / n.rps.max(1.0)
            );
        }
        with(&row, |r| r.serving.push((connections, ours, reference)));
    }
    let end = rss_mb(pid);
    with(&row, |r| r.rss_end = end);
    println!(
        "  daemon RSS at the end {:.0} MB (peak {:.0}); pouchdb-server RSS {:.0} MB (peak seen {:.0})",
        end.0,
        end.1,
        rss_mb(couch_pid).0,
        with(&row, |r| r.couch_rss_peak)
    );
    stage(&row, "done");
    drop(daemon);
    drop(couch_process);
    Ok(())
}

// ---------------------------------------------------------------- table

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "—".into(), f)
}

fn print_table(rows: &[Row]) {
    println!("\n| figure | {} |", {
        let heads: Vec<String> = rows.iter().map(|r| format!("{} units", r.units)).collect();
        heads.join(" | ")
    });
    println!("|---|{}", "---|".repeat(rows.len()));
    let line = |name: &str, f: &dyn Fn(&Row) -> String| {
        let cells: Vec<String> = rows.iter().map(f).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    line("accounts", &|r| r.accounts.to_string());
    line("source docs loaded (units db + sip_auth)", &|r| {
        r.loaded_docs.to_string()
    });
    line("CouchDB raw write rate for the load", &|r| {
        if r.load_secs > 0.0 {
            format!(
                "{:.0} docs/s, {:.2} MB/s ({:.1} s)",
                r.raw_docs_s, r.raw_mb_s, r.load_secs
            )
        } else {
            "—".into()
        }
    });
    line(
        "daemon full build, spawn → every output in the cache db",
        &|r| {
            opt(r.build_secs, |s| {
                format!(
                    "{s:.1} s: {:.0} units/s, {:.0} cache docs/s, {:.2} MB/s",
                    r.units as f64 / s,
                    r.built_docs as f64 / s,
                    r.cache_mb / s
                )
            })
        },
    );
    line("ratio build / raw (docs/s; MB/s)", &|r| {
        opt(r.build_secs, |s| {
            format!(
                "{:.2}; {:.2}",
                r.built_docs as f64 / s / r.raw_docs_s.max(1e-9),
                r.cache_mb / s / r.raw_mb_s.max(1e-9)
            )
        })
    });
    line("daemon CPU for the build", &|r| {
        opt(r.build_secs, |_| format!("{:.0} s", r.daemon_cpu_build))
    });
    line("daemon RSS after the build (peak)", &|r| {
        opt(r.build_secs, |_| {
            format!("{:.0} MB ({:.0})", r.rss_built.0, r.rss_built.1)
        })
    });
    line("daemon RSS at the end (peak)", &|r| {
        if r.rss_end.0 > 0.0 {
            format!("{:.0} MB ({:.0})", r.rss_end.0, r.rss_end.1)
        } else {
            "—".into()
        }
    });
    line("RSS per unit at the end (after the build)", &|r| {
        let end = if r.rss_end.0 > 0.0 {
            format!("{:.0} B", r.rss_end.0 * 1e6 / r.units as f64)
        } else {
            "—".into()
        };
        opt(r.build_secs, |_| {
            format!("{end} ({:.0} B)", r.rss_built.0 * 1e6 / r.units as f64)
        })
    });
    line("served bytes per unit (<mac>.cfg + <mac>.boot)", &|r| {
        opt(
            (r.served_bytes_per_unit > 0.0).then_some(r.served_bytes_per_unit),
            |b| format!("{b:.0} B"),
        )
    });
    line("cache db: JSON / on disk; store file", &|r| {
        opt(r.build_secs, |_| {
            format!(
                "{:.0} MB / {:.0} MB; {:.0} MB",
                r.cache_mb, r.cache_db_mb, r.store_mb
            )
        })
    });
    line("pouchdb-server RSS, highest seen", &|r| {
        format!("{:.0} MB", r.couch_rss_peak)
    });
    line(
        "policy edit reaching 10k units → served, p50 / p99 / max",
        &|r| {
            r.policy.map_or("—".into(), |(n, p50, p99, max)| {
                format!("{p50:.0} / {p99:.0} / {max:.0} ms ({n} sampled)")
            })
        },
    );
    line("one unit edit → served, p50 / p99", &|r| {
        r.unit_edit.map_or("—".into(), |(n, p50, p99)| {
            format!("{p50:.1} / {p99:.1} ms ({n} edits)")
        })
    });
    for connections in [64, 256] {
        line(&format!("HTTP c{connections}: caldera"), &|r| {
            r.serving
                .iter()
                .find(|s| s.0 == connections)
                .map_or("—".into(), |(_, l, _)| {
                    format!(
                        "{:.0} req/s, p99 {}, {:.1} µs CPU/req, errors {}",
                        l.rps, l.p99, l.cpu_us, l.errors
                    )
                })
        });
        line(&format!("HTTP c{connections}: nginx, same files"), &|r| {
            r.serving
                .iter()
                .find(|s| s.0 == connections)
                .and_then(|(_, ours, n)| n.as_ref().map(|n| (ours, n)))
                .map_or("—".into(), |(ours, n)| {
                    format!(
                        "{:.0} req/s, p99 {}, {:.1} µs CPU/req → caldera/nginx {:.2}",
                        n.rps,
                        n.p99,
                        n.cpu_us,
                        ours.rps / n.rps.max(1.0)
                    )
                })
        });
    }
    line("where it stopped", &|r| {
        r.broke
            .clone()
            .map_or("completed".into(), |b| b.replace('\n', " "))
    });
}

fn main() {
    let mut sizes: Vec<usize> = std::env::var("SCALE_BENCH_UNITS")
        .unwrap_or_else(|_| "100000,300000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n >= 10)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let max_secs = env_or("SCALE_BENCH_MAX_SECS", 1500u64);
    let machine_start = machine();
    let load_start = load_average();
    println!(
        "scale bench (phones through CouchDB): sizes {sizes:?}, time guard {max_secs} s per size"
    );
    println!("machine: {machine_start}");
    let mut rows = Vec::new();
    let mut broke_on_time = false;
    for units in sizes {
        if broke_on_time {
            println!("\n== {units} units: skipped (a smaller size hit the time guard) ==");
            rows.push(Row {
                units,
                broke: Some("skipped: a smaller size hit the time guard".into()),
                ..Row::default()
            });
            continue;
        }
        println!(
            "\n== {units} units over {} accounts ==",
            Plan::new(units).accounts()
        );
        let row: Shared = Arc::new(Mutex::new(Row {
            units,
            ..Row::default()
        }));
        let shared = row.clone();
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(run_size(units, shared, max_secs))
        })
        .join();
        let mut result = with(&row, |r| r.clone());
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                // A bigger size needs more time still (one after a size
                // that hit the memory guard still runs, to tell how far it
                // gets).
                broke_on_time = why.starts_with("time guard");
                result.broke = Some(format!("at stage \"{}\": {why}", result.stage));
            }
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                let first: String = text.lines().take(3).collect::<Vec<_>>().join(" ");
                result.broke = Some(format!("at stage \"{}\": panic: {first}", result.stage));
            }
        }
        if let Some(broke) = &result.broke {
            println!("[{units}] STOPPED {broke}");
        }
        rows.push(result);
    }
    print_table(&rows);
    println!("\nmachine at the start: {machine_start}");
    println!("machine at the end: {}", machine());
    println!(
        "load average: {load_start} at the start, {} at the end",
        load_average()
    );
}
