//! Kazoo's sysconf over AMQP, against a real RabbitMQ (the harness starts
//! one per test process, or uses `AMQP_URL`): a Kazoo-shaped client gets
//! exactly Kazoo's reply payloads for get/set/flush (lookup order,
//! `"undefined"`, Default write-back, Node-Specific writes, the merged
//! ACLs); two instances share the queue and answer each request once;
//! invalid messages of every kind are answered or dropped, never looped; a
//! flood is answered in full; a broker restart loses no request published
//! after the reconnect while the HTTP API keeps answering; SIGTERM finishes
//! what it holds. `CALDERA_SKIP_AMQP=1` skips these tests, saying so.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::acls::{Dns, KZ1, KZ2};
use crate::common::TestEnv;
use crate::support::amqp::{
    self, BrokerProcess, KazooClient, Topology, broker_url, password_of, queue_depth, without,
};
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::eventually;

/// The daemon's node name in these tests (the `Node` of its replies).
const CALDERA: &str = "caldera@test";

fn ecallmgr() -> Value {
    json!({
        "_id": "ecallmgr",
        "pvt_type": "config",
        "default": {
            "fs_nodes": ["d"],
            "fs_cmds": [],
            "explicit_null": "from default",
            "nested": {"a": {"b": "deep"}}
        },
        "test_zone": {"fs_nodes": ["z"]},
        "n1": {"fs_nodes": ["n1"], "explicit_null": null}
    })
}

/// A daemon on `env`'s databases answering on `topology` at `url`.
fn config(env: &TestEnv, topology: &Topology, url: &str) -> DaemonConfig {
    let mut config = env.config(CALDERA);
    topology.configure(&mut config, url);
    config
}

/// Kazoo's get_resp for `request`, with `value`.
fn get_resp(request: &Value, value: Value) -> Value {
    json!({
        "Event-Category": "sysconf", "Event-Name": "get_resp",
        "App-Name": "sysconf", "App-Version": "4.0.0", "Node": CALDERA,
        "Msg-ID": request["Msg-ID"], "Category": request["Category"],
        "Key": request["Key"], "Value": value,
    })
}

fn set_resp(request: &Value) -> Value {
    json!({
        "Event-Category": "sysconf", "Event-Name": "set_resp",
        "App-Name": "sysconf", "App-Version": "4.0.0", "Node": CALDERA,
        "Msg-ID": request["Msg-ID"], "Category": request["Category"],
        "Key": request["Key"], "Value": request["Value"],
    })
}

/// Asserts an error reply to `request` of `kind` whose message mentions `words`.
fn assert_error(reply: &Value, request: &Value, kind: &str, words: &str) {
    assert_eq!(reply["Event-Category"], "error", "{reply}");
    assert_eq!(reply["Error-Kind"], kind, "{reply}");
    assert_eq!(reply["Msg-ID"], request["Msg-ID"], "{reply}");
    assert_eq!(reply["Node"], CALDERA, "{reply}");
    let message = reply["Error-Message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{words:?} not in {reply}");
}

/// The value of a counter in the daemon's `/metrics`, 0 when absent.
async fn counter(daemon: &Daemon, series: &str) -> u64 {
    let metrics = daemon.get("/metrics").await.text;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn messages(event: &str, outcome: &str) -> String {
    format!("caldera_amqp_messages_total{{event=\"{event}\",outcome=\"{outcome}\"}} ")
}

#[tokio::test(flavor = "multi_thread")]
async fn get_set_flush_answer_with_kazoos_payloads() {
    if amqp::skip("get_set_flush_answer_with_kazoos_payloads") {
        return;
    }
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch.put(&db, &ecallmgr()).await;
    let topology = Topology::unique();
    let daemon = Daemon::start_ready(&config(&env, &topology, broker_url())).await;
    let kazoo = KazooClient::connect(broker_url(), &topology, "n1").await;
    let get = |fields: Value| kazoo.request("get_req", fields);

    // The node section (Node is the requester's), the zone, default; null is a hit.
    for (fields, value) in [
        (
            json!({"Category": "ecallmgr", "Key": "fs_nodes"}),
            json!(["n1"]),
        ),
        (
            json!({"Category": "ecallmgr", "Key": "fs_nodes", "Node": "n3"}),
            json!(["z"]),
        ),
        (
            json!({"Category": "ecallmgr", "Key": "fs_nodes", "Node": "default"}),
            json!(["d"]),
        ),
        (
            json!({"Category": "ecallmgr", "Key": "explicit_null"}),
            Value::Null,
        ),
        (json!({"Category": "ecallmgr", "Key": "fs_cmds"}), json!([])),
        (
            json!({"Category": "ecallmgr", "Key": ["nested", "a", "b"]}),
            json!("deep"),
        ),
        (
            json!({"Category": "ecallmgr", "Key": "nope"}),
            json!("undefined"),
        ),
        (
            json!({"Category": "no_such_category", "Key": "k"}),
            json!("undefined"),
        ),
        (
            json!({"Category": "ecallmgr", "Key": "nope", "Default": null}),
            Value::Null,
        ),
    ] {
        let request = get(fields);
        let reply = kazoo.call("sysconf.get", &request).await;
        assert_eq!(reply, get_resp(&request, value), "for {request}");
    }
    // `Default: null` wrote nothing.
    let stored = env.couch.get(&db, "ecallmgr").await.unwrap();
    assert!(stored["default"].get("nope").is_none(), "{stored}");

    // Default write-back, also creating a missing category.
    let default = json!({"x": [1, 2], "s": "é"});
    let request = get(json!({"Category": "ecallmgr", "Key": "new_key", "Default": default}));
    assert_eq!(
        kazoo.call("sysconf.get", &request).await,
        get_resp(&request, default.clone())
    );
    let stored = env.couch.get(&db, "ecallmgr").await.unwrap();
    assert_eq!(stored["default"]["new_key"], default, "{stored}");
    let request = get(json!({"Category": "brand_new", "Key": "k", "Default": 5}));
    assert_eq!(
        kazoo.call("sysconf.get", &request).await,
        get_resp(&request, json!(5))
    );
    let created = env.couch.get(&db, "brand_new").await.expect("created");
    assert_eq!(created["default"]["k"], json!(5), "{created}");

    set_and_flush(&env, &daemon, &kazoo).await;
    // The password in amqp.url is never logged.
    let secret = password_of(broker_url());
    assert!(!secret.is_empty());
    assert!(
        !daemon.logs().iter().any(|l| l.contains(&secret)),
        "the AMQP password was logged"
    );
    kazoo.close().await;
}

/// set (default section, Node-Specific, null deletes, bad Node-Specific)
/// and flush, checked in CouchDB and through the HTTP API.
async fn set_and_flush(env: &TestEnv, daemon: &Daemon, kazoo: &KazooClient) {
    let db = env.sysconf_db();
    let set = |fields: Value| kazoo.request("set_req", fields);
    let request = set(json!({"Category": "ecallmgr", "Key": "fs_nodes", "Value": ["fs9"]}));
    assert_eq!(
        kazoo.call("sysconf.set", &request).await,
        set_resp(&request)
    );
    let stored = env.couch.get(db, "ecallmgr").await.unwrap();
    assert_eq!(stored["default"]["fs_nodes"], json!(["fs9"]), "{stored}");
    assert_eq!(stored["n1"]["fs_nodes"], json!(["n1"]), "{stored}");
    // Both front doors see it at once.
    let http = daemon
        .sysconf_get("ecallmgr", &["fs_nodes"], Some("default"))
        .await;
    assert_eq!(http.json["value"], json!(["fs9"]), "{}", http.text);

    // Node-Specific: under the request's Node, even a new key.
    let request = set(
        json!({"Category": "ecallmgr", "Key": "mode", "Value": "strict",
                             "Node-Specific": true, "Node": "n9"}),
    );
    assert_eq!(
        kazoo.call("sysconf.set", &request).await,
        set_resp(&request)
    );
    let stored = env.couch.get(db, "ecallmgr").await.unwrap();
    assert_eq!(stored["n9"]["mode"], "strict", "{stored}");
    assert!(stored["default"].get("mode").is_none(), "{stored}");
    // Node-Specific without Node: an error, nothing written (Kazoo echoes).
    let request = without(
        set(json!({"Category": "ecallmgr", "Key": "other", "Value": 1, "Node-Specific": "true"})),
        &["Node"],
    );
    let reply = kazoo.call("sysconf.set", &request).await;
    assert_error(&reply, &request, "bad_request", "no node");
    let stored = env.couch.get(db, "ecallmgr").await.unwrap();
    assert!(!stored.to_string().contains("\"other\""), "{stored}");

    // null deletes.
    let request = set(json!({"Category": "ecallmgr", "Key": "fs_nodes", "Value": null}));
    assert_eq!(
        kazoo.call("sysconf.set", &request).await,
        set_resp(&request)
    );
    let stored = env.couch.get(db, "ecallmgr").await.unwrap();
    assert!(stored["default"].get("fs_nodes").is_none(), "{stored}");
    let request = kazoo.request(
        "get_req",
        json!({"Category": "ecallmgr", "Key": "fs_nodes", "Node": "default"}),
    );
    assert_eq!(
        kazoo.call("sysconf.get", &request).await,
        get_resp(&request, json!("undefined"))
    );

    // flush: carried out, never answered (as in Kazoo), and the edit made
    // straight in CouchDB is served.
    let mut doc = env.couch.get(db, "ecallmgr").await.unwrap();
    doc["default"]["edited"] = json!("in couch");
    env.couch.put(db, &doc).await;
    let flush = kazoo.request(
        "flush_req",
        json!({"Category": "ecallmgr", "Key": "edited"}),
    );
    kazoo.publish("sysconf.flush", &flush).await;
    eventually(
        "the flush is handled",
        Duration::from_secs(10),
        async || match counter(daemon, &messages("flush_req", "ok")).await {
            1 => Ok(()),
            n => Err(format!("{n} flushes counted")),
        },
    )
    .await;
    let request = kazoo.request("get_req", json!({"Category": "ecallmgr", "Key": "edited"}));
    assert_eq!(
        kazoo.call("sysconf.get", &request).await,
        get_resp(&request, json!("in couch"))
    );
    let flush_id = flush["Msg-ID"].as_str().unwrap();
    assert!(kazoo.replies(flush_id).is_empty(), "a flush was answered");
}

#[tokio::test(flavor = "multi_thread")]
async fn ecallmgr_acls_are_the_merged_acls() {
    if amqp::skip("ecallmgr_acls_are_the_merged_acls") {
        return;
    }
    let env = TestEnv::new().await;
    let dns = Dns::start().await;
    for (db, file) in [
        (format!("{}_sip_auth", env.names.prefix), "sip_auth.json"),
        (format!("{}_offnet", env.names.prefix), "offnet.json"),
        (env.names.system_config.clone(), "system_config.json"),
    ] {
        env.couch.create_db(&db).await;
        for doc in crate::acls::fixture(file).as_array().unwrap() {
            env.couch.put(&db, doc).await;
        }
    }
    let topology = Topology::unique();
    let mut config = crate::acls::config(&env, &dns);
    config.set("node", CALDERA);
    topology.configure(&mut config, broker_url());
    let _daemon = Daemon::start_ready(&config).await;
    let kazoo = KazooClient::connect(broker_url(), &topology, KZ1).await;
    for node in [KZ1, KZ2] {
        let golden =
            crate::acls::fixture(&format!("merged.{node}.expected.json"))["merged"].clone();
        // ecallmgr asks as Kazoo 4.2 does, with Default {}; hostnames
        // resolve in the background, so ask until the lists are complete.
        eventually(
            "get_req ecallmgr/acls gives the merged ACLs",
            Duration::from_secs(20),
            async || {
                let request = kazoo.request(
                    "get_req",
                    json!({"Category": "ecallmgr", "Key": "acls", "Default": {}, "Node": node}),
                );
                let reply = kazoo.call("sysconf.get", &request).await;
                if reply == get_resp(&request, golden.clone()) {
                    Ok(())
                } else {
                    Err(reply.to_string())
                }
            },
        )
        .await;
    }
    // Another category's `acls` is its stored value.
    let request = kazoo.request("get_req", json!({"Category": "sysconf", "Key": "acls"}));
    assert_eq!(
        kazoo.call("sysconf.get", &request).await,
        get_resp(&request, json!("undefined"))
    );
    kazoo.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_the_queue_and_answer_each_request_once() {
    if amqp::skip("two_instances_share_the_queue_and_answer_each_request_once") {
        return;
    }
    let env = TestEnv::new().await;
    env.couch.put(env.sysconf_db(), &ecallmgr()).await;
    let topology = Topology::unique();
    let mut builder = config(&env, &topology, broker_url());
    builder.set("amqp.prefetch", 2);
    let mut replica = builder.clone();
    replica.set("build.enabled", false).label = "replica".into();
    let a = Daemon::start_ready(&builder).await;
    let b = Daemon::start_ready(&replica).await;
    let kazoo = KazooClient::connect(broker_url(), &topology, "n1").await;

    let requests: Vec<Value> = (0..200)
        .map(|i| {
            let key = if i % 2 == 0 { "fs_nodes" } else { "nope" };
            kazoo.request("get_req", json!({"Category": "ecallmgr", "Key": key}))
        })
        .collect();
    for request in &requests {
        kazoo.publish("sysconf.get", request).await;
    }
    eventually(
        "every request is answered",
        Duration::from_secs(30),
        async || match kazoo.reply_count() {
            n if n >= requests.len() => Ok(()),
            n => Err(format!("{n} of {} replies", requests.len())),
        },
    )
    .await;
    // A moment for any duplicate to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, request) in requests.iter().enumerate() {
        let replies = kazoo.replies(request["Msg-ID"].as_str().unwrap());
        let value = if i % 2 == 0 {
            json!(["n1"])
        } else {
            json!("undefined")
        };
        assert_eq!(replies, [get_resp(request, value)], "request {i}");
    }
    assert_eq!(kazoo.reply_count(), requests.len());
    // Both instances took part, and together counted each request once.
    let per_instance = eventually(
        "every request is counted",
        Duration::from_secs(5),
        async || {
            let mut counts = Vec::new();
            for daemon in [&a, &b] {
                let n = counter(daemon, &messages("get_req", "ok")).await
                    + counter(daemon, &messages("get_req", "undefined")).await;
                counts.push(n);
            }
            match counts.iter().sum::<u64>() {
                n if n == requests.len() as u64 => Ok(counts),
                n => Err(format!("{n} counted ({counts:?})")),
            }
        },
    )
    .await;
    assert!(
        per_instance.iter().all(|n| *n > 0),
        "an instance answered nothing: {per_instance:?}"
    );
    kazoo.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_messages_are_answered_or_dropped_never_looped() {
    if amqp::skip("invalid_messages_are_answered_or_dropped_never_looped") {
        return;
    }
    let env = TestEnv::new().await;
    env.couch.put(env.sysconf_db(), &ecallmgr()).await;
    let topology = Topology::unique();
    let mut config = config(&env, &topology, broker_url());
    config.set("amqp.max_message_bytes", 4096);
    let daemon = Daemon::start_ready(&config).await;
    let kazoo = KazooClient::connect(broker_url(), &topology, "n1").await;
    let get = || {
        kazoo.request(
            "get_req",
            json!({"Category": "ecallmgr", "Key": "fs_nodes"}),
        )
    };

    // (request, what the error message says); each has a Server-ID and a Msg-ID.
    let cases: Vec<(Value, &str)> = vec![
        (
            without(get(), &["App-Name", "App-Version"]),
            "missing App-Name, App-Version",
        ),
        (
            without(get(), &["Event-Category"]),
            "missing Event-Category",
        ),
        (without(get(), &["Category"]), "missing Category"),
        (
            without(
                kazoo.request("set_req", json!({"Category": "c", "Key": "k"})),
                &[],
            ),
            "missing Value",
        ),
        (merge(get(), json!({"Category": 7})), "Category is a number"),
        (merge(get(), json!({"Key": {"a": 1}})), "Key is an object"),
        (merge(get(), json!({"Node": ["n1"]})), "Node is a list"),
        (
            merge(get(), json!({"App-Version": 4.3})),
            "App-Version is a number",
        ),
        (
            merge(get(), json!({"Event-Category": "directory"})),
            "Event-Category is \"directory\"",
        ),
        (
            merge(get(), json!({"Event-Name": "delete_req"})),
            "Event-Name \"delete_req\"",
        ),
        (merge(get(), json!({"Key": ""})), "empty"),
        (
            merge(get(), json!({"Category": "_design/x"})),
            "starts with '_'",
        ),
        (
            merge(get(), json!({"Default": "x".repeat(5000)})),
            "more than amqp.max_message_bytes",
        ),
    ];
    for (request, words) in &cases {
        let reply = kazoo.call("sysconf.get", request).await;
        let kind = if words.contains("empty") || words.contains("'_'") {
            "bad_request"
        } else {
            "invalid_message"
        };
        assert_error(&reply, request, kind, words);
    }
    // Without a Msg-ID: answered without one.
    kazoo
        .publish("sysconf.get", &without(get(), &["Msg-ID"]))
        .await;
    let reply = kazoo
        .wait_reply("", Duration::from_secs(10))
        .await
        .expect("an error reply");
    assert_eq!(reply["Error-Message"], "missing Msg-ID", "{reply}");
    // Not JSON, not an object, another content type, no Server-ID: nobody
    // to answer; dropped.
    let unanswerable: [(&[u8], Option<&str>); 4] = [
        (b"{\"Event-Name\": ", Some("application/json")),
        (b"[1, 2]", None),
        (
            &serde_json::to_vec(&get()).unwrap(),
            Some("application/erlang"),
        ),
        (
            &serde_json::to_vec(&without(get(), &["Server-ID"])).unwrap(),
            None,
        ),
    ];
    for (body, content_type) in unanswerable {
        kazoo.publish_raw("sysconf.get", body, content_type).await;
    }
    // The listener is alive and the queue is empty: nothing was requeued.
    let request = get();
    assert_eq!(
        kazoo.call("sysconf.get", &request).await,
        get_resp(&request, json!(["n1"]))
    );
    eventually(
        "every message was settled once",
        Duration::from_secs(10),
        async || {
            let mut invalid = 0;
            for event in ["get_req", "set_req", "unknown"] {
                invalid += counter(&daemon, &messages(event, "invalid")).await;
            }
            let no_reply = counter(&daemon, &messages("get_req", "no_server_id")).await;
            // 11 cases + no Msg-ID + 3 unanswerable invalid ones; 1 valid without Server-ID.
            match (invalid, no_reply) {
                (15, 1) => Ok(()),
                other => Err(format!("(invalid, no Server-ID) = {other:?}")),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(queue_depth(broker_url(), &topology.queue).await, Some(0));
    let log = daemon.logs().join("\n");
    assert_eq!(
        log.matches("\"redelivered\":true").count(),
        0,
        "a message was redelivered"
    );
    assert!(log.contains("invalid sysconf message; rejected"));
    kazoo.close().await;
}

fn merge(mut request: Value, fields: Value) -> Value {
    for (name, value) in fields.as_object().unwrap() {
        request[name] = value.clone();
    }
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_requests_is_answered_in_full() {
    if amqp::skip("a_flood_of_requests_is_answered_in_full") {
        return;
    }
    let env = TestEnv::new().await;
    env.couch.put(env.sysconf_db(), &ecallmgr()).await;
    let topology = Topology::unique();
    let daemon = Daemon::start_ready(&config(&env, &topology, broker_url())).await;
    let kazoo = std::sync::Arc::new(KazooClient::connect(broker_url(), &topology, "n1").await);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..32 {
        let kazoo = kazoo.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..60 {
                let node = ["n1", "n2", "default"][(worker + i) % 3];
                let request = kazoo.request(
                    "get_req",
                    json!({"Category": "ecallmgr", "Key": "fs_nodes", "Node": node}),
                );
                let reply = kazoo.call("sysconf.get", &request).await;
                let value = match node {
                    "n1" => json!(["n1"]),
                    "n2" => json!(["z"]),
                    _ => json!(["d"]),
                };
                assert_eq!(reply, get_resp(&request, value));
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client task");
    }
    let total = 32 * 60;
    eprintln!("flood: {total} round trips in {:?}", started.elapsed());
    assert_eq!(kazoo.reply_count(), total);
    // Counted once acknowledged, just after the reply went out.
    eventually(
        "every request is counted once",
        Duration::from_secs(5),
        async || match counter(&daemon, &messages("get_req", "ok")).await {
            n if n == total as u64 => Ok(()),
            n => Err(format!("{n} counted")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_loses_no_request_published_after_the_reconnect() {
    if amqp::skip("a_broker_restart_loses_no_request_published_after_the_reconnect") {
        return;
    }
    if amqp::external_url().is_some() {
        eprintln!(
            "a broker restart needs a broker of the test's own; AMQP_URL is used for the rest"
        );
    }
    let mut broker = BrokerProcess::start();
    let env = TestEnv::new().await;
    env.couch.put(env.sysconf_db(), &ecallmgr()).await;
    // Kazoo's own names: this broker is the test's alone.
    let topology = Topology::kazoo();
    let daemon = Daemon::start_ready(&config(&env, &topology, broker.url())).await;
    let kazoo = KazooClient::connect(broker.url(), &topology, "n1").await;
    let get = |kazoo: &KazooClient| {
        kazoo.request(
            "get_req",
            json!({"Category": "ecallmgr", "Key": "fs_nodes"}),
        )
    };
    for _ in 0..20 {
        let request = get(&kazoo);
        assert_eq!(
            kazoo.call("sysconf.get", &request).await,
            get_resp(&request, json!(["n1"]))
        );
    }
    // Mid-stream: requests in flight while the broker goes away.
    for _ in 0..50 {
        kazoo.publish("sysconf.get", &get(&kazoo)).await;
    }
    broker.stop();
    drop(kazoo);

    // The outage: not ready for AMQP, the HTTP API keeps answering.
    eventually(
        "readiness reports the AMQP outage",
        Duration::from_secs(20),
        async || {
            let reply = daemon.get("/readyz").await;
            if reply.status == StatusCode::SERVICE_UNAVAILABLE && reply.text.contains("amqp") {
                Ok(())
            } else {
                Err(format!("{} {}", reply.status, reply.text))
            }
        },
    )
    .await;
    for _ in 0..5 {
        let http = daemon
            .sysconf_get("ecallmgr", &["fs_nodes"], Some("n1"))
            .await;
        assert_eq!(http.status, StatusCode::OK, "{}", http.text);
        assert_eq!(http.json["value"], json!(["n1"]));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    broker.start_again();
    daemon.wait_ready_within(Duration::from_secs(30)).await;
    assert!(counter(&daemon, "caldera_amqp_reconnects_total ").await >= 1);
    let sessions = daemon
        .logs()
        .iter()
        .filter(|l| l.contains("consuming sysconf requests"))
        .count();
    assert!(sessions >= 2, "no second AMQP session in the log");
    let kazoo = KazooClient::connect(broker.url(), &topology, "n1").await;
    let requests: Vec<Value> = (0..200).map(|_| get(&kazoo)).collect();
    for request in &requests {
        kazoo.publish("sysconf.get", request).await;
    }
    for request in &requests {
        let msg_id = request["Msg-ID"].as_str().unwrap();
        let reply = kazoo.wait_reply(msg_id, Duration::from_secs(20)).await;
        assert_eq!(
            reply,
            Some(get_resp(request, json!(["n1"]))),
            "lost after the reconnect"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kazoo.reply_count(), requests.len(), "a duplicate reply");
    kazoo.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_requests_in_hand_and_the_other_instance_takes_over() {
    if amqp::skip("sigterm_finishes_the_requests_in_hand_and_the_other_instance_takes_over") {
        return;
    }
    let env = TestEnv::new().await;
    env.couch.put(env.sysconf_db(), &ecallmgr()).await;
    let topology = Topology::unique();
    let mut builder = config(&env, &topology, broker_url());
    builder.set("amqp.prefetch", 8);
    let mut replica = builder.clone();
    replica.set("build.enabled", false).label = "replica".into();
    let staying = Daemon::start_ready(&builder).await;
    let mut leaving = Daemon::start_ready(&replica).await;
    let kazoo = KazooClient::connect(broker_url(), &topology, "n1").await;

    let requests: Vec<Value> = (0..300)
        .map(|_| {
            kazoo.request(
                "get_req",
                json!({"Category": "ecallmgr", "Key": "fs_nodes"}),
            )
        })
        .collect();
    for (i, request) in requests.iter().enumerate() {
        kazoo.publish("sysconf.get", request).await;
        if i == 100 {
            leaving.sigterm();
        }
    }
    let status = leaving.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(
        leaving.logged("closed the AMQP channels"),
        "{}",
        leaving.log_tail(40)
    );
    let mut missing = BTreeSet::new();
    for request in &requests {
        let msg_id = request["Msg-ID"].as_str().unwrap();
        match kazoo.wait_reply(msg_id, Duration::from_secs(20)).await {
            Some(reply) => assert_eq!(reply, get_resp(request, json!(["n1"]))),
            None => {
                missing.insert(msg_id.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} requests never answered",
        missing.len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        kazoo.reply_count(),
        requests.len(),
        "a request was answered twice"
    );
    assert!(counter(&staying, &messages("get_req", "ok")).await > 0);
    kazoo.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_are_reported_without_the_password() {
    if amqp::skip("refused_credentials_are_reported_without_the_password") {
        return;
    }
    let env = TestEnv::new().await;
    env.couch.put(env.sysconf_db(), &ecallmgr()).await;
    let mut url = reqwest::Url::parse(broker_url()).expect("the broker URL parses");
    url.set_password(Some("wrong-pa55word-4711")).unwrap();
    let topology = Topology::unique();
    let daemon = Daemon::start(&config(&env, &topology, url.as_str())).await;
    let reason = eventually(
        "readiness names the refused login",
        Duration::from_secs(20),
        async || {
            let reply = daemon.get("/readyz").await;
            let refused = reply.text.contains("amqp") && reply.text.contains("ACCESS");
            if reply.status == StatusCode::SERVICE_UNAVAILABLE && refused {
                Ok(reply.text)
            } else {
                Err(format!("{} {}", reply.status, reply.text))
            }
        },
    )
    .await;
    assert!(reason.contains("amqp://caldera:***@"), "{reason}");
    // The HTTP API serves meanwhile (once the first build is in the cache).
    eventually("the HTTP API serves", Duration::from_secs(20), async || {
        let http = daemon
            .sysconf_get("ecallmgr", &["fs_nodes"], Some("n1"))
            .await;
        match http.json["value"] == json!(["n1"]) {
            true => Ok(()),
            false => Err(http.text),
        }
    })
    .await;
    assert!(
        !daemon
            .logs()
            .iter()
            .any(|l| l.contains("wrong-pa55word-4711")),
        "the AMQP password was logged"
    );
}

/// `amqp.gates_readiness = false`: an unreachable broker leaves `/readyz`
/// alone (phone and API traffic do not need it) and shows in `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outside_readiness_does_not_hold_readyz() {
    if amqp::skip("a_broker_outside_readiness_does_not_hold_readyz") {
        return;
    }
    let env = TestEnv::new().await;
    env.couch.put(env.sysconf_db(), &ecallmgr()).await;
    let mut url = reqwest::Url::parse(broker_url()).expect("the broker URL parses");
    url.set_password(Some("wrong-pa55word-4711")).unwrap();
    let topology = Topology::unique();
    let mut config = config(&env, &topology, url.as_str());
    config.set("amqp.gates_readiness", false);
    let daemon = Daemon::start(&config).await;
    eventually("the daemon is ready", Duration::from_secs(20), async || {
        let reply = daemon.get("/readyz").await;
        match reply.status == StatusCode::OK {
            true => Ok(()),
            false => Err(reply.text),
        }
    })
    .await;
    eventually(
        "a refused login is retried",
        Duration::from_secs(20),
        async || match counter(&daemon, "caldera_amqp_reconnects_total ").await {
            0 => Err("no reconnect yet".to_string()),
            _ => Ok(()),
        },
    )
    .await;
    assert_eq!(counter(&daemon, "caldera_amqp_connected ").await, 0);
    let reply = daemon.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_queued_before_start_are_answered_from_the_built_cache() {
    if amqp::skip("requests_queued_before_start_are_answered_from_the_built_cache") {
        return;
    }
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    // Enough categories that the first build is not instantaneous.
    let mut docs = vec![ecallmgr()];
    for i in 0..300 {
        docs.push(json!({"_id": format!("category_{i}"), "default": {"n": i}}));
    }
    env.couch.bulk_docs(&db, &docs).await;
    let topology = Topology::unique();
    let kazoo = KazooClient::connect(broker_url(), &topology, "n1").await;
    kazoo.declare_sysconf_queue().await;
    let mut requests: Vec<(Value, Value)> = (0..300)
        .step_by(7)
        .map(|i| {
            let fields = json!({"Category": format!("category_{i}"), "Key": "n"});
            (kazoo.request("get_req", fields), json!(i))
        })
        .collect();
    let fields = json!({"Category": "ecallmgr", "Key": "fs_nodes"});
    requests.push((kazoo.request("get_req", fields), json!(["n1"])));
    for (request, _) in &requests {
        kazoo.publish("sysconf.get", request).await;
    }
    // A fresh cache database: the daemon builds it, then consumes.
    let _daemon = Daemon::start(&config(&env, &topology, broker_url())).await;
    for (request, value) in &requests {
        let msg_id = request["Msg-ID"].as_str().unwrap();
        let reply = kazoo.wait_reply(msg_id, Duration::from_secs(30)).await;
        assert_eq!(
            reply,
            Some(get_resp(request, value.clone())),
            "not the built value"
        );
    }
    kazoo.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_reply_exchange_ends_the_session_and_is_declared_again() {
    if amqp::skip("a_deleted_reply_exchange_ends_the_session_and_is_declared_again") {
        return;
    }
    let env = TestEnv::new().await;
    env.couch.put(env.sysconf_db(), &ecallmgr()).await;
    let topology = Topology::unique();
    let daemon = Daemon::start_ready(&config(&env, &topology, broker_url())).await;
    let kazoo = KazooClient::connect(broker_url(), &topology, "n1").await;
    kazoo.delete_exchange(&topology.reply_exchange).await;
    // Its reply cannot be published: the broker closes the reply channel.
    let lost = kazoo.request(
        "get_req",
        json!({"Category": "ecallmgr", "Key": "fs_nodes"}),
    );
    kazoo.publish("sysconf.get", &lost).await;
    eventually(
        "the listener starts a new session",
        Duration::from_secs(20),
        async || {
            let sessions = daemon
                .logs()
                .iter()
                .filter(|l| l.contains("consuming sysconf requests"))
                .count();
            match (
                counter(&daemon, "caldera_amqp_reconnects_total ").await,
                sessions,
            ) {
                (n, s) if n >= 1 && s >= 2 => Ok(()),
                other => Err(format!("(reconnects, sessions) = {other:?}")),
            }
        },
    )
    .await;
    assert!(
        daemon.logged("the reply channel was closed"),
        "{}",
        daemon.log_tail(30)
    );
    // The exchange is back: a new client (the old one's binding went with
    // the exchange) is answered, and nothing is left in the queue: the
    // request whose reply failed was tried once more, then settled.
    let kazoo = KazooClient::connect(broker_url(), &topology, "n1").await;
    let request = kazoo.request(
        "get_req",
        json!({"Category": "ecallmgr", "Key": "fs_nodes"}),
    );
    assert_eq!(
        kazoo.call("sysconf.get", &request).await,
        get_resp(&request, json!(["n1"]))
    );
    eventually(
        "the queue is empty",
        Duration::from_secs(10),
        async || match queue_depth(broker_url(), &topology.queue).await {
            Some(0) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    kazoo.close().await;
}
