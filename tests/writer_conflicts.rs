//! The cache writer's `_rev` conflict path through the real daemon: a
//! second writer rewrites the same cache documents with their current
//! `_rev` in a tight loop (as a second builder storing the same content
//! would), so the daemon's `_bulk_docs` meets 409s. Every source edit made
//! meanwhile still reaches the cache (no lost update), the conflicts are
//! counted in `/metrics`, the writer stops retrying once the racer stops
//! (an edit after it is served) and no cache document is left with
//! `_conflicts`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestEnv, assert_equals_from_scratch, cache_id, wait_cache_equals_sources};
use crate::support::couch::Couch;
use crate::support::daemon::Daemon;
use crate::support::{eventually, metric_sample};

/// Categories the racer fights over.
const RACED: usize = 4;
/// Source edits made while racing.
const EDITS: usize = 80;

/// What the racing writer did.
#[derive(Default)]
struct RacerCounts {
    writes: AtomicU64,
    conflicts: AtomicU64,
}

/// Rewrites `id` in `db` unchanged, with its current `_rev`, until `stop`:
/// every round makes the daemon's next write of `id` stale. The racer only
/// ever stores a copy of what is there, so it can never bring back an old
/// content (a stale copy of its own is refused with 409 like anyone's).
async fn race(
    couch: Couch,
    db: String,
    id: String,
    stop: Arc<AtomicBool>,
    counts: Arc<RacerCounts>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Some(doc) = couch.get(&db, &id).await else {
            tokio::task::yield_now().await;
            continue;
        };
        match couch.try_put(&db, &doc).await {
            Ok(_) => counts.writes.fetch_add(1, Ordering::Relaxed),
            Err((StatusCode::CONFLICT, _)) => counts.conflicts.fetch_add(1, Ordering::Relaxed),
            Err((status, body)) => panic!("racer PUT {id}: {status} {body}"),
        };
    }
}

async fn conflicts_counted(daemon: &Daemon) -> f64 {
    let metrics = daemon.get("/metrics").await;
    metric_sample(
        &metrics.text,
        "caldera_cache_writes_total",
        &["outcome=\"conflict\""],
    )
    .unwrap_or_else(|| panic!("no conflict outcome in /metrics:\n{}", metrics.text))
}

/// Waits until the daemon serves `value` as `default.k` of `category`.
async fn wait_served(daemon: &Daemon, category: &str, value: &Value) {
    eventually(
        &format!("{category}: default.k = {value} served"),
        Duration::from_secs(30),
        async || {
            let reply = daemon.sysconf_get(category, &["k"], Some("default")).await;
            if reply.json["value"] == *value {
                Ok(())
            } else {
                Err(reply.text)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_writers_conflict_and_the_writer_converges() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    let categories: Vec<String> = (0..RACED).map(|i| format!("raced{i}")).collect();
    for category in &categories {
        env.couch
            .put(&db, &json!({"_id": category, "default": {"k": -1}}))
            .await;
    }
    let config = env.config("n1");
    let daemon = Daemon::start_ready(&config).await;
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(20)).await;
    let before = conflicts_counted(&daemon).await;

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(RacerCounts::default());
    let racers: Vec<_> = categories
        .iter()
        .map(|category| {
            tokio::spawn(race(
                env.couch.clone(),
                env.names.cache.clone(),
                cache_id(category),
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();
    // Edits in quick succession, several to one category before the
    // previous is stored: a retry that re-sent an old plan would lose one.
    for step in 0..EDITS {
        let category = &categories[step % RACED];
        let doc = json!({"_id": category, "default": {"k": step, "by": format!("edit {step}")}});
        env.couch.upsert(&db, &doc).await;
        if step % 10 == 9 {
            wait_served(&daemon, category, &json!(step)).await;
        }
    }
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(60)).await;
    let racing = conflicts_counted(&daemon).await - before;
    stop.store(true, Ordering::Relaxed);
    for racer in racers {
        racer.await.expect("the racer does not panic");
    }
    let racer_writes = counts.writes.load(Ordering::Relaxed);
    eprintln!(
        "daemon conflicts {racing}, racer writes {racer_writes}, racer conflicts {}",
        counts.conflicts.load(Ordering::Relaxed)
    );
    assert!(racer_writes > 0, "the racer never wrote");
    assert!(racing >= 1.0, "the daemon's writer never met a 409");

    // The writer is not stuck in its retry loop: one more edit is served.
    let last = &categories[0];
    env.couch
        .upsert(&db, &json!({"_id": last, "default": {"k": "after"}}))
        .await;
    wait_served(&daemon, last, &json!("after")).await;
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(20)).await;
    let conflicted = env.couch.conflicted_ids(&env.names.cache).await;
    assert!(
        conflicted.is_empty(),
        "conflicting revisions: {conflicted:?}"
    );
    assert_equals_from_scratch(&env.couch, &config, "conflicts").await;
}
