//! The system_config values API over HTTP, per the spec: get with Kazoo's
//! lookup order and default write-back, set, flush, the whole document,
//! errors, limits, admin auth, health and metrics.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{TestEnv, expected_content};
use crate::support::daemon::{Daemon, Reply, sysconf_path};
use crate::support::{eventually, metric_sample};

fn assert_json_error(reply: &Reply, status: StatusCode, kind: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert!(
        reply.content_type().starts_with("application/json"),
        "content type {:?} for {}",
        reply.content_type(),
        reply.text
    );
    assert_eq!(reply.json["error"], kind, "{}", reply.text);
    assert!(
        reply.json["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "no reason in {}",
        reply.text
    );
}

fn assert_value(reply: &Reply, value: Value, section: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["value"], value, "{}", reply.text);
    assert_eq!(reply.json["section"], section, "{}", reply.text);
}

fn ecallmgr() -> Value {
    json!({
        "_id": "ecallmgr",
        "pvt_type": "config",
        "default": {
            "fs_nodes": ["d"],
            "only_default": 1,
            "explicit_null": "from default",
            "in_zone_and_default": "d",
            "nested": {"a": {"b": "deep"}}
        },
        "test_zone": {"fs_nodes": ["z"], "in_zone_and_default": "z", "zone_only": true},
        "n1": {"fs_nodes": ["n1"], "explicit_null": null},
        "n2": {"fs_nodes": ["n2"]}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn get_follows_node_zone_default_and_writes_defaults_back() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch.put(&db, &ecallmgr()).await;
    let daemon = Daemon::start_ready(&env.config("n1")).await;
    let get = |key: &'static [&'static str], node: Option<&'static str>| {
        daemon.sysconf_get("ecallmgr", key, node)
    };

    // Node → zone → default, whole values.
    assert_value(&get(&["fs_nodes"], None).await, json!(["n1"]), "n1");
    assert_value(&get(&["fs_nodes"], Some("n2")).await, json!(["n2"]), "n2");
    assert_value(
        &get(&["fs_nodes"], Some("n3")).await,
        json!(["z"]),
        "test_zone",
    );
    assert_value(
        &get(&["fs_nodes"], Some("default")).await,
        json!(["d"]),
        "default",
    );
    assert_value(
        &get(&["in_zone_and_default"], None).await,
        json!("z"),
        "test_zone",
    );
    assert_value(&get(&["only_default"], None).await, json!(1), "default");
    assert_value(
        &get(&["zone_only"], Some("n2")).await,
        json!(true),
        "test_zone",
    );
    // An explicit null is a hit and shadows the sections after it.
    assert_value(&get(&["explicit_null"], None).await, Value::Null, "n1");
    assert_value(
        &get(&["explicit_null"], Some("n2")).await,
        json!("from default"),
        "default",
    );
    // Nested keys.
    assert_value(
        &get(&["nested", "a", "b"], None).await,
        json!("deep"),
        "default",
    );
    assert_value(
        &get(&["nested", "a"], None).await,
        json!({"b": "deep"}),
        "default",
    );
    let reply = get(&["nested", "a", "b"], None).await;
    assert_eq!(reply.json["key"], json!(["nested", "a", "b"]));
    assert_json_error(
        &get(&["nested", "a", "b", "c"], None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Missing keys and categories.
    assert_json_error(
        &get(&["no_such_key"], None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_json_error(
        &daemon.sysconf_get("no_such_category", &["k"], None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_json_error(
        &daemon.get("/v1/sysconf/no_such_category").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_json_error(
        &daemon.sysconf_get("_design", &["k"], None).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_json_error(
        &daemon.get("/v1/sysconf/_users").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // A missing key with a default: returned and written to default.<key>.
    let default = json!({"x": [1, 2], "s": "é"});
    let path = format!(
        "{}?default={}",
        sysconf_path("ecallmgr", &["new_key"]),
        crate::support::daemon::query_value(&default.to_string())
    );
    let reply = daemon.get(&path).await;
    assert_value(&reply, default.clone(), "default");
    let stored = env
        .couch
        .get(&db, "ecallmgr")
        .await
        .expect("ecallmgr exists");
    assert_eq!(stored["default"]["new_key"], default);
    assert_eq!(stored["default"]["fs_nodes"], json!(["d"]), "{stored}");
    assert_eq!(stored["n1"], ecallmgr()["n1"], "other sections untouched");
    // Served at once, without the default.
    assert_value(&get(&["new_key"], None).await, default.clone(), "default");

    // A default never overrides a value that exists.
    let reply = daemon
        .get(&format!(
            "{}?default=%22zzz%22",
            sysconf_path("ecallmgr", &["fs_nodes"])
        ))
        .await;
    assert_value(&reply, json!(["n1"]), "n1");
    let stored = env.couch.get(&db, "ecallmgr").await.unwrap();
    assert_eq!(stored["default"]["fs_nodes"], json!(["d"]));

    // A default for a category that does not exist creates the document;
    // a default that is not JSON is taken as a string.
    let reply = daemon
        .get(&format!(
            "{}?default=5",
            sysconf_path("brand_new", &["k", "sub"])
        ))
        .await;
    assert_value(&reply, json!(5), "default");
    let reply = daemon
        .get(&format!(
            "{}?default=plain%20text",
            sysconf_path("brand_new", &["word"])
        ))
        .await;
    assert_value(&reply, json!("plain text"), "default");
    let created = env
        .couch
        .get(&db, "brand_new")
        .await
        .expect("the default created the category document");
    assert_eq!(created["default"]["k"]["sub"], json!(5), "{created}");
    assert_eq!(created["default"]["word"], json!("plain text"), "{created}");
    assert_value(
        &daemon.sysconf_get("brand_new", &["k", "sub"], None).await,
        json!(5),
        "default",
    );

    // The whole document, as stored minus CouchDB's fields.
    let reply = daemon.get("/v1/sysconf/ecallmgr").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let stored = env.couch.get(&db, "ecallmgr").await.unwrap();
    assert_eq!(reply.json["category"], "ecallmgr");
    assert_eq!(reply.json["document"], expected_content(&stored));
    assert_eq!(reply.json["errors"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn put_writes_sections_deletes_with_null_and_flush_rereads() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    let daemon = Daemon::start_ready(&env.config("n1")).await;

    // A plain set creates the category and writes under default.
    let reply = daemon
        .sysconf_put("cat1", &["key"], &json!({"value": {"a": 1}}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json,
        json!({"category": "cat1", "key": "key", "value": {"a": 1}, "section": "default"})
    );
    let stored = env.couch.get(&db, "cat1").await.expect("cat1 was created");
    assert_eq!(stored["default"]["key"], json!({"a": 1}));
    assert_value(
        &daemon.sysconf_get("cat1", &["key"], None).await,
        json!({"a": 1}),
        "default",
    );

    // Node-specific writes go under the node.
    let reply = daemon
        .sysconf_put(
            "cat1",
            &["key"],
            &json!({"value": "nv", "node_specific": true, "node": "n9"}),
        )
        .await;
    assert_eq!(
        reply.json,
        json!({"category": "cat1", "key": "key", "value": "nv", "section": "n9"}),
        "{}",
        reply.text
    );
    let stored = env.couch.get(&db, "cat1").await.unwrap();
    assert_eq!(stored["n9"]["key"], json!("nv"));
    assert_eq!(stored["default"]["key"], json!({"a": 1}));
    assert_value(
        &daemon.sysconf_get("cat1", &["key"], Some("n9")).await,
        json!("nv"),
        "n9",
    );
    assert_value(
        &daemon.sysconf_get("cat1", &["key"], None).await,
        json!({"a": 1}),
        "default",
    );

    // node_specific without a node is refused and changes nothing.
    let rev = stored["_rev"].clone();
    for body in [
        json!({"value": 1, "node_specific": true}),
        json!({"value": 1, "node_specific": true, "node": ""}),
    ] {
        let reply = daemon.sysconf_put("cat1", &["key"], &body).await;
        assert_json_error(&reply, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(env.couch.get(&db, "cat1").await.unwrap()["_rev"], rev);

    // A node without node_specific still writes under default.
    let reply = daemon
        .sysconf_put("cat1", &["other"], &json!({"value": 2, "node": "n9"}))
        .await;
    assert_eq!(reply.json["section"], "default", "{}", reply.text);
    assert_eq!(
        env.couch.get(&db, "cat1").await.unwrap()["default"]["other"],
        json!(2)
    );

    // Nested keys.
    let reply = daemon
        .sysconf_put("cat1", &["deep", "x", "y"], &json!({"value": true}))
        .await;
    assert_eq!(
        reply.json,
        json!({"category": "cat1", "key": ["deep", "x", "y"], "value": true, "section": "default"})
    );
    assert_eq!(
        env.couch.get(&db, "cat1").await.unwrap()["default"]["deep"],
        json!({"x": {"y": true}})
    );
    assert_value(
        &daemon.sysconf_get("cat1", &["deep", "x"], None).await,
        json!({"y": true}),
        "default",
    );
    // A path through a value that is not an object is refused, nothing is
    // overwritten.
    let reply = daemon
        .sysconf_put("cat1", &["deep", "x", "y", "z"], &json!({"value": 1}))
        .await;
    assert_json_error(&reply, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        env.couch.get(&db, "cat1").await.unwrap()["default"]["deep"],
        json!({"x": {"y": true}})
    );

    // null deletes: the default's key goes; the node's copy stays.
    let reply = daemon
        .sysconf_put("cat1", &["key"], &json!({"value": null}))
        .await;
    assert_eq!(
        reply.json,
        json!({"category": "cat1", "key": "key", "value": null, "section": "default"})
    );
    let stored = env.couch.get(&db, "cat1").await.unwrap();
    assert!(stored["default"].get("key").is_none(), "{stored}");
    assert_eq!(stored["n9"]["key"], json!("nv"));
    assert_json_error(
        &daemon.sysconf_get("cat1", &["key"], None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_value(
        &daemon.sysconf_get("cat1", &["key"], Some("n9")).await,
        json!("nv"),
        "n9",
    );
    let reply = daemon
        .sysconf_put(
            "cat1",
            &["key"],
            &json!({"value": null, "node_specific": true, "node": "n9"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(
        env.couch.get(&db, "cat1").await.unwrap()["n9"]
            .get("key")
            .is_none()
    );
    assert_json_error(
        &daemon.sysconf_get("cat1", &["key"], Some("n9")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Deleting what does not exist is fine and creates nothing.
    let reply = daemon
        .sysconf_put("never_created", &["k"], &json!({"value": null}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(env.couch.get(&db, "never_created").await.is_none());

    // Flush re-reads from CouchDB: once it answers, a GET sees what was
    // written behind the daemon's back.
    let mut doc = env.couch.get(&db, "cat1").await.unwrap();
    doc["default"]["flushed"] = json!(1);
    env.couch.put(&db, &doc).await;
    let reply = daemon
        .send_raw(Method::POST, "/v1/sysconf/cat1/flush", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["flushed"], true);
    assert_value(
        &daemon.sysconf_get("cat1", &["flushed"], None).await,
        json!(1),
        "default",
    );
    let mut doc = env.couch.get(&db, "cat1").await.unwrap();
    doc["default"]["flushed"] = json!(2);
    env.couch.put(&db, &doc).await;
    let reply = daemon
        .post("/v1/sysconf/cat1/flush", &json!({"key": "flushed"}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_value(
        &daemon.sysconf_get("cat1", &["flushed"], None).await,
        json!(2),
        "default",
    );
    let reply = daemon
        .post("/v1/sysconf/cat1/flush", &json!({"nope": 1}))
        .await;
    assert_json_error(&reply, StatusCode::BAD_REQUEST, "bad_request");
    // Flushing a category deleted behind the daemon's back drops it.
    assert!(env.couch.delete(&db, "cat1").await);
    let reply = daemon
        .send_raw(Method::POST, "/v1/sysconf/cat1/flush", None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_json_error(
        &daemon.get("/v1/sysconf/cat1").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_puts_to_one_category_all_land() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "race", "default": {"seed": 0}}))
        .await;
    let daemon = Daemon::start_ready(&env.config("n1")).await;
    // Every PUT reads, modifies and writes the same document: most of them
    // meet a 409 and must retry.
    let puts = (0..12).map(|i| {
        let daemon = &daemon;
        async move {
            let key = format!("c{i}");
            daemon
                .sysconf_put("race", &[&key], &json!({"value": i}))
                .await
        }
    });
    let replies = futures_util::future::join_all(puts).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, StatusCode::OK, "PUT c{i}: {}", reply.text);
    }
    let stored = env.couch.get(&db, "race").await.unwrap();
    for i in 0..12 {
        assert_eq!(stored["default"][format!("c{i}")], json!(i), "{stored}");
        assert_value(
            &daemon.sysconf_get("race", &[&format!("c{i}")], None).await,
            json!(i),
            "default",
        );
    }
    assert_eq!(stored["default"]["seed"], json!(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_limits_methods_and_routes_answer_json_errors() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "cat", "default": {"k": 1}}))
        .await;
    let mut config = env.config("n1");
    config.set("http.max_body_bytes", 2048);
    let daemon = Daemon::start_ready(&config).await;
    let key = sysconf_path("cat", &["k"]);
    let rev = env.couch.get(&db, "cat").await.unwrap()["_rev"].clone();

    // Bodies.
    let bad_json = daemon
        .send_raw(Method::PUT, &key, Some(b"{\"value\": ".to_vec()))
        .await;
    assert_json_error(&bad_json, StatusCode::BAD_REQUEST, "bad_request");
    let not_an_object = daemon
        .send_raw(Method::PUT, &key, Some(b"[1, 2]".to_vec()))
        .await;
    assert_json_error(&not_an_object, StatusCode::BAD_REQUEST, "bad_request");
    let unknown_field = daemon
        .put(&key, &json!({"value": 1, "colour": "blue"}))
        .await;
    assert_json_error(&unknown_field, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        unknown_field.text.contains("colour"),
        "{}",
        unknown_field.text
    );
    let no_value = daemon.put(&key, &json!({"node": "n1"})).await;
    assert_json_error(&no_value, StatusCode::BAD_REQUEST, "bad_request");
    let wrong_type = daemon
        .put(&key, &json!({"value": 1, "node_specific": "yes"}))
        .await;
    assert_json_error(&wrong_type, StatusCode::BAD_REQUEST, "bad_request");

    // Size limit: declared and streamed (chunked) bodies.
    let big = json!({"value": "x".repeat(3000)});
    let too_large = daemon.put(&key, &big).await;
    assert_json_error(&too_large, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(b"{\"value\": \"".to_vec()),
        Ok(vec![b'y'; 3000]),
        Ok(b"\"}".to_vec()),
    ];
    let streamed = daemon
        .try_send(
            daemon
                .http()
                .put(daemon.api_url(&key))
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                ))),
        )
        .await;
    match streamed {
        Ok(reply) => assert_json_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        // The server may close the connection before reading the rest.
        Err(err) => panic!("a streamed oversized body got no answer: {err}"),
    }
    assert_eq!(
        env.couch.get(&db, "cat").await.unwrap()["_rev"],
        rev,
        "refused requests must not write"
    );
    // Just under the limit is fine.
    let fits = daemon.put(&key, &json!({"value": "z".repeat(1800)})).await;
    assert_eq!(fits.status, StatusCode::OK, "{}", fits.text);

    // Methods.
    for (method, path) in [
        (Method::DELETE, key.as_str()),
        (Method::POST, key.as_str()),
        (Method::PATCH, key.as_str()),
        (Method::PUT, "/v1/sysconf/cat"),
        (Method::DELETE, "/v1/sysconf/cat"),
        (Method::DELETE, "/v1/sysconf/cat/flush"),
        (Method::POST, "/healthz"),
        (Method::PUT, "/metrics"),
    ] {
        let reply = daemon.send_raw(method.clone(), path, None).await;
        assert_json_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_ne!(reply.status, StatusCode::OK, "{method} {path}");
    }

    // Routes.
    for path in [
        "/nothing/here",
        "/v1",
        "/v1/unknown",
        "/v2/sysconf/cat/k",
        "/v1/sysconf",
    ] {
        let reply = daemon.get(path).await;
        assert_json_error(&reply, StatusCode::NOT_FOUND, "not_found");
    }

    // The phones listener gives every unknown path the same bare 404.
    for path in ["/nothing", "/v1/sysconf/cat/k", "/metrics", "/v1/status"] {
        let reply = daemon.get_phones(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "phones {path}");
        assert_eq!(reply.text, "Not Found\n", "phones {path}");
    }
    let health = daemon.get_phones("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_guards_the_v1_api() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "cat", "default": {"k": "v"}}))
        .await;
    let mut config = env.config("n1");
    config.set("http.api.admin_token", "s3cret-token");
    let daemon = Daemon::start_ready(&config).await;
    let url = daemon.api_url(&sysconf_path("cat", &["k"]));
    let http = daemon.http();

    let anonymous = daemon.try_send(http.get(&url)).await.unwrap();
    assert_json_error(&anonymous, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        anonymous.headers.contains_key("www-authenticate"),
        "{:?}",
        anonymous.headers
    );
    for header in [
        "Bearer wrong",
        "Bearer s3cret-toke",
        "s3cret-token",
        "Basic czNjcmV0LXRva2Vu",
    ] {
        let reply = daemon
            .try_send(http.get(&url).header("authorization", header))
            .await
            .unwrap();
        assert_json_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let allowed = daemon
        .try_send(
            http.get(&url)
                .header("authorization", "Bearer s3cret-token"),
        )
        .await
        .unwrap();
    assert_value(&allowed, json!("v"), "default");

    // Writes are guarded too, and a refused write changes nothing.
    let rev = env.couch.get(&db, "cat").await.unwrap()["_rev"].clone();
    let refused = daemon
        .try_send(
            http.put(&url)
                .header("content-type", "application/json")
                .body(r#"{"value": "hacked"}"#),
        )
        .await
        .unwrap();
    assert_json_error(&refused, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(env.couch.get(&db, "cat").await.unwrap()["_rev"], rev);
    let written = daemon
        .try_send(
            http.put(&url)
                .header("content-type", "application/json")
                .header("authorization", "Bearer s3cret-token")
                .body(r#"{"value": "new"}"#),
        )
        .await
        .unwrap();
    assert_eq!(written.status, StatusCode::OK, "{}", written.text);
    assert_eq!(
        env.couch.get(&db, "cat").await.unwrap()["default"]["k"],
        json!("new")
    );

    // Status is an admin endpoint; health, readiness and metrics are open.
    let status = daemon.get("/v1/status").await;
    assert_json_error(&status, StatusCode::UNAUTHORIZED, "unauthorized");
    let status = daemon
        .try_send(
            http.get(daemon.api_url("/v1/status"))
                .header("authorization", "Bearer s3cret-token"),
        )
        .await
        .unwrap();
    assert_eq!(status.status, StatusCode::OK, "{}", status.text);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(daemon.get(path).await.status, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_metrics_and_status_report_the_daemon() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "one", "default": {"k": 1}}))
        .await;
    let daemon = Daemon::start_ready(&env.config("n1")).await;
    let health = daemon.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json["status"], "ok");
    let ready = daemon.get("/readyz").await;
    assert_eq!(ready.json["ready"], true, "{}", ready.text);

    // A change after start-up goes through the feed.
    env.couch
        .put(&db, &json!({"_id": "two", "default": {"k": 2}}))
        .await;
    eventually(
        "the new category is served",
        Duration::from_secs(10),
        async || {
            let reply = daemon.sysconf_get("two", &["k"], None).await;
            (reply.status == StatusCode::OK)
                .then_some(())
                .ok_or(reply.text)
        },
    )
    .await;

    let metrics = daemon.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = &metrics.text;
    let db_label = format!("db=\"{db}\"");
    let changes = metric_sample(text, "caldera_feed_changes_total", &[&db_label]);
    assert!(
        changes.is_some_and(|n| n >= 1.0),
        "feed changes: {changes:?}\n{text}"
    );
    let rebuilds = metric_sample(text, "caldera_rebuilds_total", &["domain=\"sysconf\""]);
    assert!(
        rebuilds.is_some_and(|n| n >= 2.0),
        "rebuilds: {rebuilds:?}\n{text}"
    );
    let requests = metric_sample(text, "caldera_http_requests_total", &["listener=\"api\""]);
    assert!(
        requests.is_some_and(|n| n >= 1.0),
        "requests: {requests:?}\n{text}"
    );
    assert_eq!(
        metric_sample(text, "caldera_cache_documents", &["domain=\"sysconf\""]),
        Some(2.0),
        "{text}"
    );
    // Every series issue 2 lists exists from the start (at zero before the
    // first event), so dashboards and alerts never see a missing series.
    for name in [
        "caldera_feed_changes_total",
        "caldera_feed_applied_total",
        "caldera_feed_pending",
        "caldera_feed_lag_seconds",
        "caldera_feed_connected",
        "caldera_feed_reconnects_total",
        "caldera_feed_resets_total",
        "caldera_checkpoints_total",
    ] {
        assert!(
            metric_sample(text, name, &[&db_label]).is_some(),
            "no {name}{{{db_label}}}:\n{text}"
        );
    }
    assert_eq!(
        metric_sample(text, "caldera_feed_reconnects_total", &[&db_label]),
        Some(0.0),
        "{text}"
    );
    for domain in ["sysconf", "acls", "routing"] {
        let label = format!("domain=\"{domain}\"");
        for name in [
            "caldera_rebuilds_total",
            "caldera_rebuild_errors_total",
            "caldera_rebuild_seconds_count",
            "caldera_cache_documents",
            "caldera_cache_bytes",
            "caldera_cache_documents_with_errors",
        ] {
            assert!(
                metric_sample(text, name, &[&label]).is_some(),
                "no {name}{{{label}}}:\n{text}"
            );
        }
    }
    assert!(
        metric_sample(text, "caldera_cache_bytes", &["domain=\"sysconf\""])
            .is_some_and(|b| b > 0.0),
        "{text}"
    );
    for outcome in ["stored", "deleted", "conflict", "refused", "retried"] {
        let label = format!("outcome=\"{outcome}\"");
        assert!(
            metric_sample(text, "caldera_cache_writes_total", &[&label]).is_some(),
            "no cache write outcome {outcome}:\n{text}"
        );
    }
    assert!(
        metric_sample(text, "caldera_change_to_cache_seconds_count", &[]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let route = "route=\"/v1/sysconf/{category}/{*key}\"";
    assert!(
        metric_sample(
            text,
            "caldera_http_requests_total",
            &[route, "status=\"200\""]
        )
        .is_some_and(|n| n >= 1.0),
        "requests by route:\n{text}"
    );
    assert!(
        metric_sample(text, "caldera_http_request_seconds_count", &[route])
            .is_some_and(|n| n >= 1.0),
        "latency by route:\n{text}"
    );

    let status = daemon.get("/v1/status").await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text);
    assert_eq!(status.json["node"], "n1");
    assert_eq!(status.json["ready"], true);
    assert_eq!(status.json["building"], true);
    assert_eq!(
        status.json["cache"]["sysconf"]["documents"], 2,
        "{}",
        status.text
    );
    let feeds = status.json["feeds"].as_array().expect("feeds");
    let feed = feeds
        .iter()
        .find(|f| f["db"] == json!(db))
        .unwrap_or_else(|| panic!("no feed for {db}: {}", status.text));
    assert_eq!(feed["state"], "live", "{feed}");
    assert!(feed["changes"].as_u64() >= Some(1), "{feed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_system_config_database_is_ready_and_created_by_a_default() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch.delete_db(&db).await;
    let daemon = Daemon::start_ready(&env.config("n1")).await;
    // A missing database counts as caught up; it simply has no categories.
    assert_json_error(
        &daemon.sysconf_get("cat", &["k"], None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // A default write-back creates the database and the document, as Kazoo does.
    let reply = daemon
        .get(&format!("{}?default=%5B1%5D", sysconf_path("cat", &["k"])))
        .await;
    assert_value(&reply, json!([1]), "default");
    let stored = env
        .couch
        .get(&db, "cat")
        .await
        .expect("the database and the document were created");
    assert_eq!(stored["default"]["k"], json!([1]));
    // The new database is followed: later edits are served.
    env.couch
        .put(&db, &json!({"_id": "later", "default": {"k": "followed"}}))
        .await;
    eventually(
        "the created database is followed",
        Duration::from_secs(20),
        async || {
            let reply = daemon.sysconf_get("later", &["k"], None).await;
            (reply.json["value"] == "followed")
                .then_some(())
                .ok_or(reply.text)
        },
    )
    .await;
    assert_value(
        &daemon.sysconf_get("cat", &["k"], None).await,
        json!([1]),
        "default",
    );
}

/// Sends raw bytes on a fresh connection and returns what the server
/// answers before closing (or within `wait`).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Hostile HTTP: too many headers, an oversized head, a client that never
/// finishes its head, and a request that outlives `http.request_timeout_ms`
/// (CouchDB gone silent under a write) all end quickly with an error, and
/// the daemon keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_hit_the_limits_and_timeouts() {
    use crate::support::proxy::FaultProxy;
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    env.couch
        .put(&db, &json!({"_id": "cat", "default": {"k": 1}}))
        .await;
    let proxy = FaultProxy::in_front_of(env.couch.url()).await;
    let mut config = env.config("n1");
    config
        .set("couchdb.url", proxy.url_for(env.couch.url()))
        .set("http.max_headers", 16)
        .set("http.max_header_bytes", 8192)
        .set("http.header_read_timeout_ms", 500)
        .set("http.request_timeout_ms", 600);
    let daemon = Daemon::start_ready(&config).await;

    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-Header-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_exchange(daemon.api, many.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "too many headers: {answer:?}"
    );

    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = raw_exchange(daemon.api, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "oversized head: {answer:?}"
    );

    // Slowloris: half a head, then nothing. The server hangs up.
    let started = Instant::now();
    let answer = raw_exchange(
        daemon.api,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow:",
        Duration::from_secs(10),
    )
    .await;
    let closed_after = started.elapsed();
    assert!(
        closed_after < Duration::from_secs(5),
        "a client that never finished its head kept the connection for {closed_after:?}"
    );
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    // A write that cannot finish (CouchDB silent) is answered 503 in JSON
    // once the request deadline passes, not after CouchDB's own timeout.
    proxy.stall();
    let started = Instant::now();
    let reply = daemon
        .sysconf_put("cat", &["k"], &json!({"value": 2}))
        .await;
    let took = started.elapsed();
    assert_json_error(&reply, StatusCode::SERVICE_UNAVAILABLE, "timeout");
    assert!(
        took < Duration::from_secs(3),
        "the request deadline (600 ms) did not apply: {took:?}"
    );
    proxy.restore();
    // Reads never waited on CouchDB and still work.
    assert_value(
        &daemon.sysconf_get("cat", &["k"], None).await,
        json!(1),
        "default",
    );
}
