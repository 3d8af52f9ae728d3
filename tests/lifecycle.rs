//! The daemon's life: restarts (graceful and kill -9) that lose nothing,
//! SIGTERM while writes are in flight, and the command line.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestEnv, assert_equals_from_scratch, stop_cleanly, wait_cache_equals_sources};
use crate::support::daemon::{Daemon, run_cli, run_cli_env, sysconf_path};
use crate::support::eventually;

fn category_doc(id: &str, n: u64) -> Value {
    json!({
        "_id": id,
        "pvt_type": "config",
        "default": {"n": n, "name": id, "nested": {"list": [n, n + 1]}},
        "n1": {"n": n * 10}
    })
}

/// Reads the checkpoint node `node` saved in `db`, asserting its shape.
async fn checkpoint(env: &TestEnv, node: &str) -> Value {
    let id = format!("caldera-checkpoint-{node}");
    let doc = env
        .couch
        .get_local(env.sysconf_db(), &id)
        .await
        .unwrap_or_else(|| panic!("no _local/{id} after a graceful stop"));
    assert!(
        doc.get("since").is_some_and(|s| !s.is_null()),
        "the checkpoint has no since: {doc}"
    );
    doc
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_mid_stream_misses_no_change() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    for i in 0..10 {
        env.couch
            .put(&db, &category_doc(&format!("c{i:02}"), i))
            .await;
    }
    let config = env.config("n1");
    let mut daemon = Daemon::start_ready(&config).await;

    // Edits, the last ones still streaming in when SIGTERM arrives.
    for i in 0..5 {
        env.couch
            .upsert(&db, &category_doc(&format!("c{i:02}"), 100 + i))
            .await;
    }
    let reply = daemon
        .sysconf_put("c07", &["via_api"], &json!({"value": "before stop"}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    for i in 5..9 {
        env.couch
            .upsert(&db, &category_doc(&format!("c{i:02}"), 200 + i))
            .await;
    }
    env.couch.delete(&db, "c09").await;
    stop_cleanly(&mut daemon).await;
    let saved = checkpoint(&env, "n1").await;
    assert_eq!(saved["node"], "n1", "{saved}");
    assert!(saved.get("marker").is_some_and(Value::is_string), "{saved}");

    // Edits while it is down: creates, updates, deletes.
    for i in 10..14 {
        env.couch
            .put(&db, &category_doc(&format!("c{i:02}"), 300 + i))
            .await;
    }
    env.couch.upsert(&db, &category_doc("c00", 999)).await;
    env.couch.delete(&db, "c01").await;
    env.couch.delete(&db, "c07").await;

    let mut daemon = Daemon::start_ready(&config).await;
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(20)).await;
    let answer = daemon.sysconf_get("c00", &["n"], None).await;
    assert_eq!(answer.json["value"], json!(9990), "{}", answer.text);
    for gone in ["c01", "c07", "c09"] {
        let reply = daemon.get(&sysconf_path(gone, &[])).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{gone}: {}",
            reply.text
        );
    }
    let reply = daemon.sysconf_get("c13", &["nested", "list"], None).await;
    assert_eq!(reply.json["value"], json!([313, 314]), "{}", reply.text);
    assert_equals_from_scratch(&env.couch, &config, "scratch").await;

    // A quiet graceful stop checkpoints the very last position.
    stop_cleanly(&mut daemon).await;
    let saved = checkpoint(&env, "n1").await;
    let info = env.couch.db_info(&db).await.expect("the database exists");
    if saved["since"].is_number() {
        // pouchdb-server: sequences are numbers and compare exactly.
        assert_eq!(
            saved["since"], info["update_seq"],
            "checkpoint {saved} vs {info}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_large_rebuild_then_restart_converges() {
    const DOCS: usize = 3000;
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    let docs: Vec<Value> = (0..DOCS)
        .map(|i| category_doc(&format!("big{i:05}"), i as u64))
        .collect();
    for chunk in docs.chunks(500) {
        let results = env.couch.bulk_docs(&db, chunk).await;
        assert!(results.iter().all(|r| r.get("error").is_none()));
    }
    let mut config = env.config("n1");
    // Small write batches make the rebuild long enough to be interrupted.
    config.set("build.write_batch", 50);
    eprintln!("loaded {DOCS} docs");
    let mut daemon = Daemon::start(&config).await;
    let started = Instant::now();
    let written = loop {
        // doc_count includes the design document.
        let count = env.couch.doc_count(&env.names.cache).await;
        if count > 100 {
            daemon.kill9();
            break count;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rebuild wrote nothing within 60 s:\n{}",
            daemon.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let after_kill = env.couch.doc_count(&env.names.cache).await;
    assert!(
        after_kill < DOCS as u64,
        "the rebuild finished ({after_kill} cache docs, {written} when killed) before kill -9; \
         the test needs it interrupted"
    );
    assert!(!daemon.is_running());
    drop(daemon);

    // While it is dead: sources change under the half-written cache.
    let mut edits = Vec::new();
    for i in (0..DOCS).step_by(30) {
        let id = format!("big{i:05}");
        let mut doc = env.couch.get(&db, &id).await.unwrap();
        if i % 60 == 0 {
            doc["_deleted"] = json!(true);
        } else {
            doc["default"]["n"] = json!(-1);
        }
        edits.push(doc);
    }
    env.couch.bulk_docs(&db, &edits).await;

    eprintln!(
        "killed after {:?} with {written} cache docs",
        started.elapsed()
    );
    let daemon = Daemon::start(&config).await;
    daemon.wait_ready_within(Duration::from_secs(120)).await;
    eprintln!("ready again after {:?}", started.elapsed());
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(60)).await;
    eprintln!("converged after {:?}", started.elapsed());
    let reply = daemon.sysconf_get("big00030", &["n"], None).await;
    assert_eq!(reply.json["value"], json!(300), "{}", reply.text);
    let reply = daemon.sysconf_get("big00030", &["n"], Some("n2")).await;
    assert_eq!(reply.json["value"], json!(-1), "{}", reply.text);
    let reply = daemon.sysconf_get("big00060", &["n"], Some("n2")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    assert_equals_from_scratch(&env.couch, &config, "scratch").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_writes_are_in_flight_loses_nothing() {
    const PUTS: usize = 120;
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    let config = env.config("n1");
    let mut daemon = Daemon::start_ready(&config).await;

    let completed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..PUTS {
        let http = daemon.http().clone();
        let url = daemon.api_url(&sysconf_path(
            &format!("g{:02}", i % 40),
            &[&format!("p{i}")],
        ));
        let completed = completed.clone();
        tasks.push(tokio::spawn(async move {
            let result = http
                .put(url)
                .header("content-type", "application/json")
                .body(json!({"value": i}).to_string())
                .send()
                .await;
            let status = match result {
                Ok(response) => {
                    let status = response.status();
                    // The body must arrive too for the answer to count.
                    response.bytes().await.ok().map(|_| status)
                }
                Err(_) => None,
            };
            completed.fetch_add(1, Ordering::SeqCst);
            (i, status, Instant::now())
        }));
    }
    eventually("some PUTs answered", Duration::from_secs(20), async || {
        let n = completed.load(Ordering::SeqCst);
        if n >= 10 {
            Ok(())
        } else {
            Err(format!("{n} answered"))
        }
    })
    .await;
    let signalled = Instant::now();
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(10)).await;
    let exited = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status} after SIGTERM:\n{}",
        daemon.log_tail(40)
    );
    assert!(
        exited < Duration::from_millis(5000 + 1500),
        "took {exited:?} to exit (grace 5 s)"
    );

    let mut ok = Vec::new();
    let mut after_signal = 0;
    let mut refused = 0;
    for task in tasks {
        let (i, status, at) = task.await.expect("the PUT task");
        match status {
            Some(StatusCode::OK) => {
                ok.push(i);
                if at > signalled {
                    after_signal += 1;
                }
            }
            Some(status) => {
                assert!(
                    status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::CONFLICT,
                    "PUT p{i} answered {status} during shutdown"
                );
                refused += 1;
            }
            None => refused += 1,
        }
    }
    eprintln!(
        "{} PUTs answered 200 ({after_signal} after SIGTERM), {refused} refused or cut; exit after {exited:?}",
        ok.len()
    );
    assert!(ok.len() >= 10, "only {} PUTs succeeded", ok.len());
    assert!(
        after_signal > 0,
        "no PUT in flight at SIGTERM was answered: requests are not drained"
    );

    // Every acknowledged write is in CouchDB...
    let stored = env.couch.docs_by_id(&db).await;
    for i in &ok {
        let category = format!("g{:02}", i % 40);
        assert_eq!(
            stored
                .get(&category)
                .map(|d| &d["default"][format!("p{i}")]),
            Some(&json!(i)),
            "acknowledged PUT p{i} is not in CouchDB"
        );
    }
    // ... and served after a restart.
    let daemon = Daemon::start_ready(&config).await;
    for i in &ok {
        let reply = daemon
            .sysconf_get(&format!("g{:02}", i % 40), &[&format!("p{i}")], None)
            .await;
        assert_eq!(reply.json["value"], json!(i), "p{i}: {}", reply.text);
    }
    wait_cache_equals_sources(&env.couch, &env.names, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_reports_every_bad_key_and_accepts_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
node = ""
[couchdb]
url = "ftp://example.net"
[databases]
units = "Bad Name"
[feeds]
heartbeat_ms = 5
colour = "blue"
[log]
format = "xml"
[http.api]
listen = "nowhere"
"#,
    )
    .unwrap();
    let bad_path = bad.to_str().unwrap();
    let (status, _, stderr) = run_cli(&["check-config", "--config", bad_path]);
    assert_eq!(status.code(), Some(78), "{stderr}");
    for key in [
        "node",
        "couchdb.url",
        "databases.units",
        "feeds.heartbeat_ms",
        "feeds.colour",
        "log.format",
        "http.api.listen",
    ] {
        assert!(stderr.contains(key), "{key} is not named in:\n{stderr}");
    }

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "node = \n").unwrap();
    let (status, _, stderr) = run_cli(&["check-config", "--config", broken.to_str().unwrap()]);
    assert_eq!(status.code(), Some(78), "a TOML syntax error: {stderr}");

    let missing = dir.path().join("missing.toml");
    let (status, _, stderr) = run_cli(&["check-config", "--config", missing.to_str().unwrap()]);
    assert_eq!(status.code(), Some(78), "a missing explicit file: {stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "node = \"n1\"\nzone = \"z\"\n[couchdb]\nurl = \"http://admin:pw@127.0.0.1:5984\"\n[http.api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let good_path = good.to_str().unwrap();
    let (status, stdout, stderr) = run_cli(&["check-config", "--config", good_path]);
    assert!(status.success(), "{stdout}{stderr}");
    let (status, stdout, stderr) = run_cli(&["--config", good_path, "check-config"]);
    assert!(
        status.success(),
        "option before the subcommand: {stdout}{stderr}"
    );
    // Every key is overridable from the environment, and validated there too.
    let (status, _, stderr) = run_cli_env(
        &["check-config", "--config", good_path],
        &[("CALDERA_FEEDS_HEARTBEAT_MS", "5")],
    );
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("feeds.heartbeat_ms"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_accepts_the_config_option_before_the_subcommand() {
    let env = TestEnv::new().await;
    env.couch
        .put(env.sysconf_db(), &json!({"_id": "c", "default": {"k": 1}}))
        .await;
    let mut config = env.config("n1");
    config.option_first = true;
    let mut daemon = Daemon::start_ready(&config).await;
    let reply = daemon.sysconf_get("c", &["k"], None).await;
    assert_eq!(reply.json["value"], json!(1), "{}", reply.text);
    stop_cleanly(&mut daemon).await;
}

async fn status_with_token(daemon: &Daemon) -> Result<StatusCode, String> {
    daemon
        .try_send(
            daemon
                .http()
                .get(daemon.api_url("/v1/status"))
                .header("authorization", "Bearer reloaded-token"),
        )
        .await
        .map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config_and_keeps_it_when_the_new_one_is_invalid() {
    let env = TestEnv::new().await;
    env.couch
        .put(env.sysconf_db(), &json!({"_id": "c", "default": {"k": 1}}))
        .await;
    let mut config = env.config("n1");
    let mut daemon = Daemon::start_ready(&config).await;
    assert_eq!(daemon.get("/v1/status").await.status, StatusCode::OK);

    // A new admin token takes effect without a restart.
    config.set("http.api.admin_token", "reloaded-token");
    std::fs::write(daemon.config_path(), config.toml()).unwrap();
    daemon.sighup();
    eventually(
        "the reloaded token is required",
        Duration::from_secs(10),
        async || {
            let status = daemon.get("/v1/status").await.status;
            (status == StatusCode::UNAUTHORIZED)
                .then_some(())
                .ok_or(status.to_string())
        },
    )
    .await;
    assert_eq!(status_with_token(&daemon).await, Ok(StatusCode::OK));

    // An invalid file is refused as a whole; the running config stays.
    let pid = daemon.pid();
    let mut bad = config.clone();
    bad.set("log.format", "xml").set("http.api.admin_token", "");
    std::fs::write(daemon.config_path(), bad.toml()).unwrap();
    daemon.sighup();
    eventually(
        "the reload is refused",
        Duration::from_secs(10),
        async || {
            if daemon.logged("reload refused") {
                Ok(())
            } else {
                Err("no refusal logged".to_string())
            }
        },
    )
    .await;
    assert!(
        daemon.is_running(),
        "an invalid reload must not stop the daemon"
    );
    assert_eq!(daemon.pid(), pid);
    assert_eq!(
        daemon.get("/v1/status").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status_with_token(&daemon).await, Ok(StatusCode::OK));
    assert_eq!(daemon.readyz().await, Ok(StatusCode::OK));
    stop_cleanly(&mut daemon).await;
}

/// Collects sd_notify datagrams sent to a socket we own.
fn notify_listener(path: &std::path::Path) -> Arc<std::sync::Mutex<Vec<String>>> {
    let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set a read timeout");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        // Ends with the test process; the socket lives in a temp dir.
        loop {
            if let Ok(n) = socket.recv(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                sink.lock().unwrap().push(text);
            }
        }
    });
    seen
}

fn count(seen: &std::sync::Mutex<Vec<String>>, state: &str) -> usize {
    let messages = seen.lock().unwrap();
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == state))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_watchdog_reloading_and_stopping() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("notify.sock");
    let seen = notify_listener(&socket);
    let mut config = env.config("n1");
    config.env = vec![
        ("NOTIFY_SOCKET".into(), socket.display().to_string()),
        ("WATCHDOG_USEC".into(), "200000".into()),
    ];
    let mut daemon = Daemon::start_ready(&config).await;
    eventually(
        "READY=1 and watchdog pings",
        Duration::from_secs(10),
        async || {
            let ok = count(&seen, "READY=1") >= 1 && count(&seen, "WATCHDOG=1") >= 2;
            if ok {
                Ok(())
            } else {
                Err(format!("{:?}", seen.lock().unwrap()))
            }
        },
    )
    .await;
    assert_eq!(count(&seen, "STOPPING=1"), 0);

    daemon.sighup();
    eventually(
        "RELOADING=1 then READY=1 again",
        Duration::from_secs(10),
        async || {
            let ok = count(&seen, "RELOADING=1") == 1 && count(&seen, "READY=1") >= 2;
            if ok {
                Ok(())
            } else {
                Err(format!("{:?}", seen.lock().unwrap()))
            }
        },
    )
    .await;

    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(count(&seen, "STOPPING=1"), 1, "{:?}", seen.lock().unwrap());
}

/// The `_local` checkpoint never gets ahead of the cache: while every cache
/// `_bulk_docs` fails (CouchDB otherwise fine, the feed still delivering),
/// the checkpoint stays at the last durable position; once writes go
/// through again it moves past the edit.
#[tokio::test(flavor = "multi_thread")]
async fn checkpoint_waits_until_the_outputs_are_durable() {
    use crate::support::proxy::FaultProxy;
    let env = TestEnv::new().await;
    if crate::support::couch::is_external() {
        // CouchDB's sequences are opaque strings: this test compares
        // pouchdb-server's integer sequences.
        return;
    }
    let db = env.sysconf_db().to_string();
    env.couch.put(&db, &category_doc("c1", 1)).await;
    let proxy = FaultProxy::in_front_of(env.couch.url()).await;
    let mut config = env.config("n1");
    config.set("couchdb.url", proxy.url_for(env.couch.url()));
    let daemon = Daemon::start_ready(&config).await;
    let since = async || {
        env.couch
            .get_local(&db, "caldera-checkpoint-n1")
            .await
            .and_then(|c| c["since"].as_u64())
    };
    eventually("a first checkpoint", Duration::from_secs(10), async || {
        since().await.ok_or_else(|| "none yet".to_string())
    })
    .await;

    proxy.refuse_requests_containing(&format!("POST /{}/_bulk_docs", env.names.cache));
    env.couch.upsert(&db, &category_doc("c1", 2)).await;
    let edit_seq = env.couch.db_info(&db).await.unwrap()["update_seq"]
        .as_u64()
        .expect("pouchdb-server sequences are integers");
    // The feed delivers the edit (the build happens), the write keeps failing.
    eventually(
        "the edit reached the engine",
        Duration::from_secs(10),
        async || {
            let metrics = daemon.get("/metrics").await.text;
            let retried = metrics
                .lines()
                .find(|l| l.starts_with("caldera_cache_writes_total") && l.contains("retried"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            (retried >= 2.0)
                .then_some(())
                .ok_or(format!("retried {retried}"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = since().await.unwrap_or(0);
    assert!(
        held < edit_seq,
        "checkpoint {held} saved for edit seq {edit_seq} before its output was durable"
    );
    // Still the durable value (node n1's section holds 10 × n).
    let reply = daemon.sysconf_get("c1", &["n"], None).await;
    assert_eq!(reply.json["value"], json!(10), "{}", reply.text);

    proxy.restore();
    eventually(
        "the edit is served once written",
        Duration::from_secs(20),
        async || {
            let reply = daemon.sysconf_get("c1", &["n"], None).await;
            (reply.json["value"] == json!(20))
                .then_some(())
                .ok_or(reply.text)
        },
    )
    .await;
    eventually(
        "the checkpoint moves past the edit",
        Duration::from_secs(10),
        async || match since().await {
            Some(seq) if seq >= edit_seq => Ok(()),
            other => Err(format!("checkpoint {other:?} < {edit_seq}")),
        },
    )
    .await;
}

/// SIGTERM on a quiet daemon exits at once, whatever the heartbeat: a feed
/// waiting for pouchdb-server's first heartbeat (which carries the headers
/// of a feed with nothing new) must not hold the shutdown until the grace
/// period runs out.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_promptly_with_a_long_heartbeat() {
    let env = TestEnv::new().await;
    env.couch
        .put(env.sysconf_db(), &category_doc("c1", 1))
        .await;
    let mut config = env.config("n1");
    config
        .set("feeds.heartbeat_ms", 20_000)
        .set("shutdown.grace_ms", 8000);
    let mut daemon = Daemon::start_ready(&config).await;
    // Let every follower reach its feed (and wait for headers).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        !daemon.logged("grace period over"),
        "the shutdown ran into the grace period:\n{}",
        daemon.log_tail(20)
    );
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    // The checkpoint was still saved.
    checkpoint(&env, "n1").await;
}
