//! Dynamic feeds: databases followed because documents name them (the
//! ruleset databases of the routing domain), not because the configuration
//! does. The engine publishes the wanted set (`WantedFeeds`) after every
//! batch; this task starts a follower for each new entry, cancels the ones
//! no longer wanted, and restarts a source whose database or incarnation
//! changed.
//!
//! Invariant: two followers of the same source never run at once. A
//! successor waits for its predecessor to end (a stopping follower first
//! saves its last checkpoint and forgets its readiness and status), so the
//! predecessor's clean-up can never erase the successor's state.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{WantedFeed, WantedFeeds};
use crate::rebuild::index::SourceId;

/// Runs one follower of `(source, db)` until the token is cancelled.
pub type StartFeed = Arc<
    dyn Fn(SourceId, String, CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

struct Running {
    feed: WantedFeed,
    token: CancellationToken,
    handle: JoinHandle<()>,
}

/// The followers of the dynamic sources.
pub struct DynamicFeeds {
    start: StartFeed,
    tasks: TaskTracker,
    token: CancellationToken,
    running: BTreeMap<SourceId, Running>,
    /// Followers told to stop, kept until they end so a successor can wait.
    stopping: BTreeMap<SourceId, JoinHandle<()>>,
}

impl DynamicFeeds {
    /// `token` is the parent of every follower's token (shutdown stops all).
    pub fn new(start: StartFeed, tasks: TaskTracker, token: CancellationToken) -> DynamicFeeds {
        DynamicFeeds {
            start,
            tasks,
            token,
            running: BTreeMap::new(),
            stopping: BTreeMap::new(),
        }
    }

    /// Follows the engine's wanted set until shutdown.
    pub async fn run(mut self, mut wanted: watch::Receiver<WantedFeeds>) {
        loop {
            let current = wanted.borrow_and_update().clone();
            self.reconcile(&current);
            tokio::select! {
                biased;
                () = self.token.cancelled() => return,
                changed = wanted.changed() => if changed.is_err() { return },
            }
        }
    }

    /// The sources followed now, with their database.
    pub fn followed(&self) -> BTreeMap<SourceId, String> {
        self.running
            .iter()
            .map(|(id, r)| (id.clone(), r.feed.db.clone()))
            .collect()
    }

    /// Starts, stops and restarts followers so exactly `wanted` runs.
    pub fn reconcile(&mut self, wanted: &WantedFeeds) {
        self.stopping.retain(|_, handle| !handle.is_finished());
        let stale: Vec<SourceId> = self
            .running
            .iter()
            .filter(|(id, r)| wanted.get(*id) != Some(&r.feed))
            .map(|(id, _)| id.clone())
            .collect();
        for source in stale {
            let running = self.running.remove(&source).expect("listed above");
            tracing::info!(%source, db = running.feed.db, "stopping a dynamic feed");
            running.token.cancel();
            self.stopping.insert(source, running.handle);
        }
        for (source, feed) in wanted {
            if self.running.contains_key(source) {
                continue;
            }
            tracing::info!(%source, db = feed.db, "starting a dynamic feed");
            let token = self.token.child_token();
            let predecessor = self.stopping.remove(source);
            let run = (self.start)(source.clone(), feed.db.clone(), token.clone());
            let handle = self.tasks.spawn(async move {
                if let Some(predecessor) = predecessor {
                    let _ = predecessor.await;
                }
                run.await;
            });
            let running = Running {
                feed: feed.clone(),
                token,
                handle,
            };
            self.running.insert(source.clone(), running);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    type Log = Arc<Mutex<Vec<String>>>;

    /// A fake follower: logs its start, runs until cancelled, logs its stop
    /// (after a pause, like a follower saving its checkpoint).
    fn fake(log: Log) -> StartFeed {
        Arc::new(move |source, db, token: CancellationToken| {
            let log = log.clone();
            Box::pin(async move {
                log.lock().unwrap().push(format!("start {source} {db}"));
                token.cancelled().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                log.lock().unwrap().push(format!("stop {source} {db}"));
            })
        })
    }

    fn wanted(entries: &[(&str, &str, u64)]) -> WantedFeeds {
        entries
            .iter()
            .map(|(source, db, incarnation)| {
                let feed = WantedFeed {
                    db: db.to_string(),
                    incarnation: *incarnation,
                };
                (SourceId::from(*source), feed)
            })
            .collect()
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn feeds_start_stop_and_switch() {
        let log: Log = Arc::default();
        let tasks = TaskTracker::new();
        let token = CancellationToken::new();
        let mut feeds = DynamicFeeds::new(fake(log.clone()), tasks.clone(), token.clone());

        feeds.reconcile(&wanted(&[
            ("ruleset_db:a", "a", 1),
            ("ruleset_db:b", "b", 2),
        ]));
        settle().await;
        // The ruleset switches from database b to c; a stays.
        feeds.reconcile(&wanted(&[
            ("ruleset_db:a", "a", 1),
            ("ruleset_db:c", "c", 3),
        ]));
        settle().await;
        assert_eq!(
            feeds.followed().into_values().collect::<Vec<_>>(),
            ["a", "c"]
        );
        // No ruleset names a database any more.
        feeds.reconcile(&WantedFeeds::new());
        settle().await;
        assert!(feeds.followed().is_empty());
        let mut seen = log.lock().unwrap().clone();
        seen[..2].sort();
        seen[2..4].sort();
        seen[4..].sort();
        assert_eq!(
            seen,
            [
                "start ruleset_db:a a",
                "start ruleset_db:b b",
                "start ruleset_db:c c",
                "stop ruleset_db:b b",
                "stop ruleset_db:a a",
                "stop ruleset_db:c c",
            ]
        );
        token.cancel();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn a_new_incarnation_restarts_only_after_the_old_follower_ended() {
        let log: Log = Arc::default();
        let tasks = TaskTracker::new();
        let token = CancellationToken::new();
        let mut feeds = DynamicFeeds::new(fake(log.clone()), tasks.clone(), token.clone());
        feeds.reconcile(&wanted(&[("ruleset_db:a", "a", 1)]));
        settle().await;
        feeds.reconcile(&wanted(&[("ruleset_db:a", "a", 2)]));
        // Same wanted set again: nothing happens.
        feeds.reconcile(&wanted(&[("ruleset_db:a", "a", 2)]));
        settle().await;
        assert_eq!(
            *log.lock().unwrap(),
            [
                "start ruleset_db:a a",
                "stop ruleset_db:a a",
                "start ruleset_db:a a"
            ],
            "the successor starts after its predecessor stopped"
        );
        token.cancel();
        tasks.close();
        tasks.wait().await;
        assert_eq!(log.lock().unwrap().len(), 4, "shutdown stops every feed");
    }
}
