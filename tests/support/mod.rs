//! The integration-test harness: a real CouchDB-compatible server, a real
//! RabbitMQ broker and a Kazoo-shaped AMQP client, the daemon as a child
//! process, and a TCP fault proxy. Shared with the
//! benchmarks (`#[path = "../tests/support/mod.rs"] mod support;`), so it
//! holds no tests itself.
#![allow(dead_code)]

pub mod amqp;
pub mod couch;
pub mod daemon;
pub mod proxy;

use std::process::Command;
use std::time::{Duration, Instant};

/// A server one of the project's scripts started.
pub struct Started {
    pub url: String,
    pub pid: u32,
}

/// Runs `scripts/<script> args…`, which prints `url=… pid=…` once its
/// server answers; `hint` says how to get past a failure.
pub fn run_server_script(script: &str, args: &[&str], hint: &str) -> Started {
    let output = Command::new(couch::repo_root().join("scripts").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/{script} {args:?} failed ({}){hint}:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("url="))
        .unwrap_or_else(|| panic!("no url= line from scripts/{script}: {stdout}"));
    let mut url = None;
    let mut pid = None;
    for part in line.split_whitespace() {
        if let Some(v) = part.strip_prefix("url=") {
            url = Some(v.to_string());
        } else if let Some(v) = part.strip_prefix("pid=") {
            pid = v.parse().ok();
        }
    }
    Started {
        url: url.expect("url= in the script's output"),
        pid: pid.expect("pid= in the script's output"),
    }
}

/// Polls `probe` until it returns `Ok`, or panics after `timeout` with the
/// last reason it gave.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(why) if started.elapsed() > timeout => {
                panic!("{what}: not reached within {timeout:?}; last state: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(40)).await,
        }
    }
}

/// `CALDERA_TEST_SEED` when set, else a random seed; printed either way so
/// a failing run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("CALDERA_TEST_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CALDERA_TEST_SEED={text:?} is not a u64")),
        Err(_) => fastrand::u64(..),
    };
    eprintln!("{test}: seed {seed} (replay with CALDERA_TEST_SEED={seed})");
    seed
}

/// The value of the first Prometheus sample `name{labels...}` (or `name`
/// without labels) whose label set holds every one of `labels`.
pub fn metric_sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_set, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|l| label_set.split(',').any(|s| s == *l))
            .then(|| value.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}
