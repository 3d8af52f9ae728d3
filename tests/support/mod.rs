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

use std::time::{Duration, Instant};

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
