//! AMQP benchmark (run: `cargo bench --bench amqp`): sysconf `get_req`
//! round trips through RabbitMQ at 1, 16 and 64 concurrent Kazoo-shaped
//! clients (each with its own connection and reply queue, as Kazoo's AMQP
//! workers have), next to the HTTP API's `GET /v1/sysconf/...` for the same
//! value at the same concurrency, in the same run against the same daemon.
//!
//! Everything is real and on this machine: the daemon binary (bench
//! profile), pouchdb-server, and a private rabbitmq-server node (or the
//! broker `AMQP_URL` names). `AMQP_BENCH_SECS` sets the seconds per
//! measurement (default 5). Client, broker, daemon and CouchDB share the
//! cores, so the figures are end-to-end on one box, not a server's ceiling.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::amqp::{KazooClient, Topology, broker_url};
use support::couch::{Cleanup, Couch, DbNames};
use support::daemon::{Daemon, DaemonConfig};

const LEVELS: [usize; 3] = [1, 16, 64];

/// Round trips measured at one concurrency.
struct Stats {
    count: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Stats {
    fn from(mut latencies_us: Vec<u64>, elapsed: Duration) -> Stats {
        latencies_us.sort_unstable();
        Stats {
            count: latencies_us.len(),
            elapsed,
            latencies_us,
        }
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let at = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[at] as f64 / 1000.0
    }
}

fn seconds() -> Duration {
    let secs = std::env::var("AMQP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let couch = Couch::shared();
    let names = DbNames::unique();
    couch.create_db(&names.system_config).await;
    let _cleanup = Cleanup::new(&couch, &names);
    couch
        .put(
            &names.system_config,
            &json!({"_id": "ecallmgr", "default": {"fs_nodes": ["d"]}, "n1": {"fs_nodes": ["fs1", "fs2"]}}),
        )
        .await;
    let url = broker_url();
    let topology = Topology::unique();
    let mut config = DaemonConfig::new(couch.url(), &names, "caldera@bench");
    topology.configure(&mut config, url);
    // Info, not debug: no line per request (the harness needs the info lines).
    config.set("log.level", "info");
    let daemon = Daemon::start_ready(&config).await;
    let period = seconds();
    println!(
        "sysconf get: AMQP get_req round trips vs HTTP GET, same value, {period:?} each; load average before: {}",
        load_average()
    );
    println!(
        "{:>7} | {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9}",
        "clients", "AMQP rt/s", "p50 ms", "p99 ms", "HTTP rq/s", "p50 ms", "p99 ms"
    );
    // Warm both paths up (connections, caches, the JIT-less broker's queues).
    measure_amqp(url, &topology, 4, Duration::from_secs(1)).await;
    measure_http(&daemon, 4, Duration::from_secs(1)).await;
    for clients in LEVELS {
        let amqp = measure_amqp(url, &topology, clients, period).await;
        let http = measure_http(&daemon, clients, period).await;
        println!(
            "{clients:>7} | {:>10.0} {:>9.2} {:>9.2} | {:>10.0} {:>9.2} {:>9.2}",
            amqp.rate(),
            amqp.percentile_ms(0.5),
            amqp.percentile_ms(0.99),
            http.rate(),
            http.percentile_ms(0.5),
            http.percentile_ms(0.99),
        );
    }
    println!("load average after: {}", load_average());
}

/// `clients` Kazoo-shaped clients, each asking in a loop for `period`.
async fn measure_amqp(url: &str, topology: &Topology, clients: usize, period: Duration) -> Stats {
    let mut connected = Vec::new();
    for _ in 0..clients {
        connected.push(Arc::new(KazooClient::connect(url, topology, "n1").await));
    }
    let started = Instant::now();
    let deadline = started + period;
    let mut tasks = Vec::new();
    for client in &connected {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let request = client.request(
                    "get_req",
                    json!({"Category": "ecallmgr", "Key": "fs_nodes"}),
                );
                let sent = Instant::now();
                let reply = client.call("sysconf.get", &request).await;
                latencies.push(sent.elapsed().as_micros() as u64);
                assert_eq!(reply["Value"], json!(["fs1", "fs2"]), "{reply}");
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a client task"));
    }
    let stats = Stats::from(all, started.elapsed());
    for client in connected {
        if let Ok(client) = Arc::try_unwrap(client) {
            client.close().await;
        }
    }
    stats
}

/// `clients` concurrent HTTP loops on one keep-alive pool.
async fn measure_http(daemon: &Daemon, clients: usize, period: Duration) -> Stats {
    let url = daemon.api_url("/v1/sysconf/ecallmgr/fs_nodes?node=n1");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("an HTTP client");
    let started = Instant::now();
    let deadline = started + period;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let reply = http.get(&url).send().await.expect("the daemon answers");
                assert!(reply.status().is_success(), "{}", reply.status());
                let _ = reply.bytes().await.expect("a body");
                latencies.push(sent.elapsed().as_micros() as u64);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("an HTTP task"));
    }
    Stats::from(all, started.elapsed())
}
