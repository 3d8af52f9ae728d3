//! Feeds against a server that misbehaves or changes underneath: an outage
//! (the server stopped, or every connection cut), a database deleted and
//! re-created, a replica learning from the cache database's feed, and the
//! design documents installed into the cache database.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{
    TestEnv, assert_equals_from_scratch, check_answers, key_paths, stop_cleanly,
    wait_cache_equals_sources,
};
use crate::support::couch::{Couch, CouchProcess, is_external, repo_root};
use crate::support::daemon::{Daemon, sysconf_path};
use crate::support::eventually;
use crate::support::proxy::FaultProxy;

/// How long the server stays unreachable.
const OUTAGE: Duration = Duration::from_secs(3);

/// Waits until `category/key` (daemon's own node) answers `value`.
async fn wait_value(daemon: &Daemon, category: &str, key: &str, value: Value) {
    eventually(
        &format!("{category}/{key} = {value} on [{}]", daemon.config.label),
        Duration::from_secs(20),
        async || {
            let reply = daemon.sysconf_get(category, &[key], None).await;
            if reply.status == StatusCode::OK && reply.json["value"] == value {
                Ok(())
            } else {
                Err(format!("{} {}", reply.status, reply.text))
            }
        },
    )
    .await;
}

async fn wait_readyz(daemon: &Daemon, want: StatusCode, within: Duration) {
    eventually(
        &format!("/readyz answers {want}"),
        within,
        async || match daemon.try_get("/readyz").await {
            Ok(reply) if reply.status == want => Ok(()),
            Ok(reply) => Err(format!("{} {}", reply.status, reply.text)),
            Err(err) => Err(err),
        },
    )
    .await;
}

/// The outage test body, for either way of making the server unreachable.
enum Outage {
    /// A dedicated pouchdb-server with a data directory, really stopped and
    /// started again on the same port.
    StopStart(CouchProcess),
    /// A fault proxy in front of the server, cutting every connection.
    Proxy(FaultProxy),
}

impl Outage {
    fn begin(&mut self) {
        match self {
            Outage::StopStart(server) => server.stop(),
            Outage::Proxy(proxy) => proxy.cut(),
        }
    }

    fn end(&mut self) {
        match self {
            Outage::StopStart(server) => server.start_again(),
            Outage::Proxy(proxy) => proxy.restore(),
        }
    }

    /// Whether the server itself still takes writes during the outage.
    fn server_writable(&self) -> bool {
        matches!(self, Outage::Proxy(_))
    }
}

async fn outage_scenario(env: &TestEnv, daemon_url: &str, mut outage: Outage) {
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "c1", "default": {"k": "before"}}))
        .await;
    env.couch
        .put(&db, &json!({"_id": "c2", "default": {"k": "doomed"}}))
        .await;
    let mut config = env.config("n1");
    config.set("couchdb.url", daemon_url);
    let daemon = Daemon::start_ready(&config).await;
    wait_value(&daemon, "c1", "k", json!("before")).await;

    // An edit right before the outage, possibly still in flight when it starts.
    env.couch
        .upsert(&db, &json!({"_id": "c1", "default": {"k": "just before"}}))
        .await;
    outage.begin();
    let down = Instant::now();
    wait_readyz(
        &daemon,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(15),
    )
    .await;
    eprintln!("/readyz turned 503 {:?} into the outage", down.elapsed());

    // Reads keep being served from memory, at once.
    let asked = Instant::now();
    let reply = daemon.sysconf_get("c1", &["k"], None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(
        reply.json["value"] == "before" || reply.json["value"] == "just before",
        "{}",
        reply.text
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "a read waited on CouchDB"
    );
    // A write cannot be stored: it fails fast with a JSON error.
    let asked = Instant::now();
    let reply = daemon
        .sysconf_put("c1", &["k"], &json!({"value": "lost"}))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text
    );
    assert_eq!(reply.json["error"], "couchdb_unavailable", "{}", reply.text);
    assert!(asked.elapsed() < Duration::from_secs(10), "the write hung");

    // Edits queued while the daemon cannot see the server.
    if outage.server_writable() {
        env.couch
            .upsert(&db, &json!({"_id": "c1", "default": {"k": "during"}}))
            .await;
        env.couch
            .put(
                &db,
                &json!({"_id": "c3", "default": {"k": "created during"}}),
            )
            .await;
        env.couch.delete(&db, "c2").await;
    }
    if let Some(rest) = OUTAGE.checked_sub(down.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    // Still not ready at the end of the outage.
    assert_eq!(
        daemon.readyz().await,
        Ok(StatusCode::SERVICE_UNAVAILABLE),
        "/readyz must stay 503 while the server is unreachable"
    );
    outage.end();
    let up = Instant::now();
    wait_readyz(&daemon, StatusCode::OK, Duration::from_secs(30)).await;
    eprintln!(
        "/readyz back to 200 {:?} after the server returned",
        up.elapsed()
    );

    if outage.server_writable() {
        wait_value(&daemon, "c1", "k", json!("during")).await;
        wait_value(&daemon, "c3", "k", json!("created during")).await;
        eventually(
            "c2 deleted during the outage is gone",
            Duration::from_secs(20),
            async || {
                let reply = daemon.sysconf_get("c2", &["k"], None).await;
                (reply.status == StatusCode::NOT_FOUND)
                    .then_some(())
                    .ok_or(reply.text)
            },
        )
        .await;
    } else {
        wait_value(&daemon, "c1", "k", json!("just before")).await;
    }
    // Edits after the return are served; so are writes through the API.
    env.couch
        .upsert(&db, &json!({"_id": "c4", "default": {"k": "after"}}))
        .await;
    wait_value(&daemon, "c4", "k", json!("after")).await;
    let reply = daemon
        .sysconf_put("c1", &["k2"], &json!({"value": "api after"}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    wait_value(&daemon, "c1", "k2", json!("api after")).await;
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn couchdb_outage_stop_and_start_reconnects_by_itself() {
    if is_external() {
        // An external server cannot be stopped: cut its connections instead.
        let env = TestEnv::new().await;
        let proxy = FaultProxy::in_front_of(env.couch.url()).await;
        let url = proxy.url_for(env.couch.url());
        outage_scenario(&env, &url, Outage::Proxy(proxy)).await;
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let server = CouchProcess::start(data.path());
    let env = TestEnv::on(Couch::new(server.url())).await;
    let url = server.url().to_string();
    outage_scenario(&env, &url, Outage::StopStart(server)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn couchdb_outage_through_a_fault_proxy_with_queued_edits() {
    let env = TestEnv::new().await;
    let proxy = FaultProxy::in_front_of(env.couch.url()).await;
    let url = proxy.url_for(env.couch.url());
    outage_scenario(&env, &url, Outage::Proxy(proxy)).await;
}

/// A server that goes silent without closing the connection (no byte, no
/// FIN): only the feed's inactivity deadline (`feeds.inactivity_heartbeats`
/// × the heartbeat) can notice. The follower gives up on the dead feed,
/// `/readyz` shows it, and after the server answers again every edit made
/// meanwhile is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_server_is_noticed_by_the_inactivity_deadline() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "c1", "default": {"k": 1}}))
        .await;
    let proxy = FaultProxy::in_front_of(env.couch.url()).await;
    let mut config = env.config("n1");
    config
        .set("couchdb.url", proxy.url_for(env.couch.url()))
        .set("feeds.heartbeat_ms", 300)
        .set("feeds.inactivity_heartbeats", 3)
        // Nothing else may notice first: no periodic database check, and
        // ordinary requests wait longer than the test looks.
        .set("feeds.missing_db_poll_ms", 60_000)
        .set("couchdb.request_timeout_ms", 4000);
    let daemon = Daemon::start_ready(&config).await;
    wait_value(&daemon, "c1", "k", json!(1)).await;

    proxy.stall();
    let stalled = Instant::now();
    wait_readyz(
        &daemon,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(3),
    )
    .await;
    let noticed = stalled.elapsed();
    assert!(
        noticed < Duration::from_millis(3000),
        "the silent feed was noticed only after {noticed:?}"
    );
    env.couch
        .upsert(&db, &json!({"_id": "c1", "default": {"k": 2}}))
        .await;
    proxy.restore();
    wait_value(&daemon, "c1", "k", json!(2)).await;
    wait_readyz(&daemon, StatusCode::OK, Duration::from_secs(20)).await;
    let metrics = daemon.get("/metrics").await.text;
    let reconnects = metrics
        .lines()
        .find(|l| l.starts_with("caldera_feed_reconnects_total") && l.contains(&db))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(
        reconnects.is_some_and(|n| n >= 1.0),
        "reconnects after the silent feed: {reconnects:?}"
    );
}

/// pouchdb-server sends a continuous feed's headers only with its first
/// row or heartbeat; readiness must not wait for them, or `/readyz` stays
/// 503 for a whole heartbeat (30 s by default) after a start or an outage.
#[tokio::test(flavor = "multi_thread")]
async fn ready_at_once_after_start_and_outage_even_with_a_long_heartbeat() {
    const HEARTBEAT: Duration = Duration::from_secs(20);
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "c1", "default": {"k": 1}}))
        .await;
    let proxy = FaultProxy::in_front_of(env.couch.url()).await;
    let mut config = env.config("n1");
    config
        .set("couchdb.url", proxy.url_for(env.couch.url()))
        .set("feeds.heartbeat_ms", HEARTBEAT.as_millis() as i64);
    let started = Instant::now();
    let daemon = Daemon::start(&config).await;
    daemon.wait_ready_within(Duration::from_secs(60)).await;
    let ready_after = started.elapsed();
    assert!(
        ready_after < HEARTBEAT / 2,
        "ready only {ready_after:?} after start (heartbeat {HEARTBEAT:?})"
    );
    wait_value(&daemon, "c1", "k", json!(1)).await;

    proxy.cut();
    wait_readyz(
        &daemon,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(15),
    )
    .await;
    proxy.restore();
    let restored = Instant::now();
    wait_readyz(&daemon, StatusCode::OK, Duration::from_secs(60)).await;
    let back_after = restored.elapsed();
    assert!(
        back_after < HEARTBEAT / 2,
        "ready again only {back_after:?} after the outage (heartbeat {HEARTBEAT:?})"
    );
    // Still following: an edit after the outage is served.
    env.couch
        .upsert(&db, &json!({"_id": "c1", "default": {"k": 2}}))
        .await;
    wait_value(&daemon, "c1", "k", json!(2)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_and_recreated_database_serves_only_the_new_content() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "old_only", "default": {"k": "old"}}))
        .await;
    env.couch
        .put(
            &db,
            &json!({"_id": "shared", "default": {"k": "old shared"}}),
        )
        .await;
    let config = env.config("n1");
    let daemon = Daemon::start_ready(&config).await;
    wait_value(&daemon, "shared", "k", json!("old shared")).await;

    // Deleted: the derived outputs go, from the mirror and the cache.
    env.couch.delete_db(&db).await;
    eventually(
        "outputs of the deleted database are gone",
        Duration::from_secs(20),
        async || {
            for category in ["old_only", "shared"] {
                let reply = daemon.sysconf_get(category, &["k"], None).await;
                if reply.status != StatusCode::NOT_FOUND {
                    return Err(format!("{category}: {} {}", reply.status, reply.text));
                }
            }
            let cache = env.couch.docs_by_id(&env.names.cache).await;
            let left: Vec<&String> = cache
                .keys()
                .filter(|id| id.starts_with("sysconf:"))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still cached: {left:?}"))
            }
        },
    )
    .await;
    // A missing database counts as caught up.
    assert_eq!(daemon.readyz().await, Ok(StatusCode::OK));

    // Re-created with other documents: only the new content is served.
    env.couch.create_db(&db).await;
    env.couch
        .put(
            &db,
            &json!({"_id": "shared", "default": {"k": "new shared"}}),
        )
        .await;
    env.couch
        .put(&db, &json!({"_id": "new_only", "default": {"k": "new"}}))
        .await;
    eventually(
        "the new content is served",
        Duration::from_secs(20),
        async || {
            let shared = daemon.sysconf_get("shared", &["k"], None).await;
            let new = daemon.sysconf_get("new_only", &["k"], None).await;
            let old = daemon.sysconf_get("old_only", &["k"], None).await;
            assert!(
                shared.status == StatusCode::NOT_FOUND || shared.json["value"] == "new shared",
                "stale content served after re-creation: {}",
                shared.text
            );
            assert_eq!(old.status, StatusCode::NOT_FOUND, "{}", old.text);
            if shared.json["value"] == "new shared" && new.json["value"] == "new" {
                Ok(())
            } else {
                Err(format!("{} / {}", shared.text, new.text))
            }
        },
    )
    .await;
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(20)).await;

    // Deleted and re-created at once (pouchdb-server keeps the old feed
    // open and silent): the marker check still notices.
    env.couch.delete_db(&db).await;
    env.couch.create_db(&db).await;
    env.couch
        .put(&db, &json!({"_id": "shared", "default": {"k": "third"}}))
        .await;
    wait_value(&daemon, "shared", "k", json!("third")).await;
    eventually("new_only is gone", Duration::from_secs(20), async || {
        let reply = daemon.sysconf_get("new_only", &["k"], None).await;
        (reply.status == StatusCode::NOT_FOUND)
            .then_some(())
            .ok_or(reply.text)
    })
    .await;
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(20)).await;
    assert_equals_from_scratch(&env.couch, &config, "scratch").await;
}

/// Every (category, key, node) worth asking about the given sources.
fn all_triples(sources: &BTreeMap<String, Value>) -> Vec<(String, Vec<String>, Option<String>)> {
    let mut triples = Vec::new();
    for (id, doc) in sources {
        let mut paths = key_paths(doc);
        paths.push(vec!["missing".to_string()]);
        for path in paths {
            for node in [None, Some("n2"), Some("default")] {
                triples.push((id.clone(), path.clone(), node.map(str::to_string)));
            }
        }
    }
    triples.push(("nowhere".to_string(), vec!["k".to_string()], None));
    triples
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_without_building_serves_the_same_answers() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(
            &db,
            &json!({"_id": "c1", "default": {"k": "v1", "d": {"x": 1}}, "n1": {"k": "node"}, "test_zone": {"z": true}}),
        )
        .await;
    env.couch
        .put(&db, &json!({"_id": "c2", "default": {"k": [1, 2]}}))
        .await;
    let builder = Daemon::start_ready(&env.config("n1")).await;
    let mut replica_config = env.config("n1");
    replica_config.set("build.enabled", false);
    replica_config.label = "replica".to_string();
    let replica = Daemon::start_ready(&replica_config).await;

    let check_both = async |what: &str| {
        let sources = env.couch.docs_by_id(&db).await;
        let triples = all_triples(&sources);
        eventually(what, Duration::from_secs(20), async || {
            check_answers(&builder, &sources, &triples).await?;
            check_answers(&replica, &sources, &triples).await?;
            for id in sources.keys() {
                let a = builder.get(&sysconf_path(id, &[])).await;
                let b = replica.get(&sysconf_path(id, &[])).await;
                if a.json != b.json {
                    return Err(format!("{id}: builder {} replica {}", a.text, b.text));
                }
            }
            Ok(())
        })
        .await;
    };
    check_both("both serve the initial sources").await;
    let status = replica.get("/v1/status").await;
    assert_eq!(status.json["building"], false, "{}", status.text);

    // Edits in CouchDB reach the replica through the cache database only.
    env.couch
        .upsert(
            &db,
            &json!({"_id": "c1", "default": {"k": "v2"}, "n2": {"k": "n2 only"}}),
        )
        .await;
    env.couch
        .put(&db, &json!({"_id": "c3", "default": {"new": "category"}}))
        .await;
    env.couch.delete(&db, "c2").await;
    wait_value(&replica, "c1", "k", json!("v2")).await;
    check_both("both serve the edited sources").await;

    // A write through the replica returns once the replica itself serves it.
    let reply = replica
        .sysconf_put("c3", &["from_replica"], &json!({"value": 42}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let got = replica.sysconf_get("c3", &["from_replica"], None).await;
    assert_eq!(
        got.json["value"],
        json!(42),
        "read-your-write on the replica: {}",
        got.text
    );
    wait_value(&builder, "c3", "from_replica", json!(42)).await;
    check_both("both serve the write made through the replica").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_design_document_is_installed_and_its_views_work() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "clean", "default": {"k": 1}}))
        .await;
    env.couch
        .put(&db, &json!({"_id": "broken", "default": "not an object"}))
        .await;
    let config = env.config("n1");
    let mut daemon = Daemon::start_ready(&config).await;
    let cache = env.names.cache.clone();

    let installed = env
        .couch
        .get(&cache, "_design/caldera")
        .await
        .expect("_design/caldera is installed at start-up");
    let text = std::fs::read_to_string(repo_root().join("design-docs/cache/caldera.json"))
        .expect("design-docs/cache/caldera.json");
    let shipped: Value = serde_json::from_str(&text).expect("the design document is JSON");
    let mut without_rev = installed.clone();
    without_rev.as_object_mut().unwrap().remove("_rev");
    assert_eq!(
        without_rev, shipped,
        "the installed design document is the shipped one"
    );
    for view in ["by_domain", "errors"] {
        assert!(
            installed["views"][view]["map"].is_string(),
            "view {view} missing from {installed}"
        );
    }

    // by_domain: one row per cache document, keyed [domain, key].
    let docs = env.couch.docs_by_id(&cache).await;
    let (status, by_domain) = env.couch.view(&cache, "caldera", "by_domain").await;
    assert_eq!(status, StatusCode::OK, "{by_domain}");
    let rows = by_domain["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), docs.len(), "{by_domain}");
    for row in rows {
        let id = row["id"].as_str().unwrap();
        let doc = &docs[id];
        assert_eq!(row["key"], json!([doc["domain"], doc["key"]]), "{row}");
        assert_eq!(row["value"]["hash"], doc["hash"], "{row}");
    }
    assert!(rows.iter().any(|r| r["id"] == "sysconf:clean"));
    // errors: only the documents that carry errors.
    let (status, errors) = env.couch.view(&cache, "caldera", "errors").await;
    assert_eq!(status, StatusCode::OK, "{errors}");
    let ids: Vec<&str> = errors["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(ids.contains(&"sysconf:broken"), "{errors}");
    assert!(!ids.contains(&"sysconf:clean"), "{errors}");

    // Installing is idempotent: a restart does not rewrite it.
    stop_cleanly(&mut daemon).await;
    let _daemon = Daemon::start_ready(&config).await;
    let again = env.couch.get(&cache, "_design/caldera").await.unwrap();
    assert_eq!(
        again["_rev"], installed["_rev"],
        "the design document was rewritten"
    );
}
