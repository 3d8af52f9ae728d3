//! A bad document hurts only its own outputs: wrong types, missing fields,
//! huge values, nesting deeper than serde_json's recursion limit and unusual
//! unicode never stop the feed; the error is visible in the cache document
//! and the status endpoint, and the last good output keeps being served.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestEnv, cache_id, expected_content, stop_cleanly};
use crate::support::daemon::{Daemon, sysconf_path};
use crate::support::eventually;

/// `{"default": {"n": {"n": ... {"k": "bottom"}}}}`, `levels` objects deep,
/// as JSON text (serde_json could not even build it past 128 levels).
fn deep_doc_text(id: &str, levels: usize) -> String {
    let mut text = format!("{{\"_id\": \"{id}\", \"default\": ");
    for _ in 0..levels {
        text.push_str("{\"n\": ");
    }
    text.push_str("{\"k\": \"bottom\"}");
    for _ in 0..levels {
        text.push('}');
    }
    text.push('}');
    text
}

/// The `errors` of a category's cache document, asserting they name `doc`.
fn assert_names_doc(errors: &Value, doc: &str, db: &str) {
    let list = errors.as_array().expect("errors is a list");
    assert!(!list.is_empty(), "no errors recorded for {doc}");
    assert!(
        list.iter().any(|e| e["doc"] == doc
            && e["db"] == db
            && e["reason"].as_str().is_some_and(|r| !r.is_empty())),
        "no error names {db}/{doc}: {errors}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_documents_never_stop_the_feed() {
    let env = TestEnv::new().await;
    let db = env.sysconf_db().to_string();
    let cache = env.names.cache.clone();
    env.couch
        .put(
            &db,
            &json!({"_id": "good_before", "default": {"k": "fine"}}),
        )
        .await;
    env.couch
        .put(&db, &json!({"_id": "will_break", "default": {"k": "good"}}))
        .await;
    let mut config = env.config("n1");
    config.set("build.max_output_bytes", 1_500_000);
    let mut daemon = Daemon::start_ready(&config).await;
    let untouched = env
        .couch
        .get(&cache, &cache_id("good_before"))
        .await
        .expect("good_before is cached");

    // Wrong types and missing fields.
    for doc in [
        json!({"_id": "wrong_string", "default": "string", "n1": {"k": "node ok"}}),
        json!({"_id": "wrong_array", "default": [1, 2], "test_zone": {"k": "zone ok"}}),
        json!({"_id": "wrong_null", "default": null}),
        json!({"_id": "wrong_number", "n1": 42, "default": {"k": "default ok"}}),
        json!({"_id": "no_sections", "pvt_type": "config"}),
        json!({"_id": "odd id/é.x", "default": {"k": "odd"}}),
    ] {
        env.couch.put(&db, &doc).await;
    }
    // Huge values: one the daemon serves, one over build.max_output_bytes.
    env.couch
        .put(
            &db,
            &json!({"_id": "huge_ok", "default": {"blob": "x".repeat(1_000_000)}}),
        )
        .await;
    env.couch
        .put(
            &db,
            &json!({"_id": "huge_over", "default": {"blob": "y".repeat(2_000_000)}}),
        )
        .await;
    // Nesting deeper than serde_json's recursion limit: a new document, and
    // a good one turned bad.
    env.couch
        .try_put_text(&db, "deep_new", deep_doc_text("deep_new", 200))
        .await
        .expect("the server stores deep documents");
    let rev = env.couch.get(&db, "will_break").await.unwrap()["_rev"].clone();
    let mut text = deep_doc_text("will_break", 200);
    text.insert_str(1, &format!("\"_rev\": {rev}, "));
    env.couch
        .try_put_text(&db, "will_break", text)
        .await
        .expect("the server stores deep documents");
    // Unusual unicode, and keys with dots and slashes.
    let unicode = json!({
        "_id": "unicode",
        "default": {
            "emoji": "😀🎉👩‍👩‍👧",
            "rtl": "שלום عليكم",
            "nul": "a\u{0}b",
            "combining": "e\u{301}",
            "bom": "\u{feff}x",
            "a.b": 2,
            "é/ü": 1,
            "emoji😀key": 3,
            "x": {"y.z": 4}
        },
        "ünïcødé node": {"k": "accented node"}
    });
    env.couch.put(&db, &unicode).await;
    // A lone surrogate, escaped in the JSON text (serde_json refuses it).
    let lone = env
        .couch
        .try_put_text(
            &db,
            "lone_surrogate",
            r#"{"_id": "lone_surrogate", "default": {"k": "a\ud800b"}}"#.to_string(),
        )
        .await;
    let lone_stored = lone.is_ok();
    if let Err((status, body)) = &lone {
        eprintln!("the server refused a lone surrogate ({status} {body}); that case is skipped");
    }
    // A normal document after all of them.
    env.couch
        .put(
            &db,
            &json!({"_id": "after_all", "default": {"k": "served"}}),
        )
        .await;

    // The feed went past every bad document.
    eventually(
        "the document after the bad ones is served",
        Duration::from_secs(30),
        async || {
            let reply = daemon.sysconf_get("after_all", &["k"], None).await;
            (reply.json["value"] == "served")
                .then_some(())
                .ok_or(reply.text)
        },
    )
    .await;
    // Outputs are built and written in batches with no order between them:
    // the one after the bad documents may be written first, so wait for
    // every one (the broken one in its stale state).
    let mut expected = vec![
        "wrong_string",
        "wrong_array",
        "wrong_null",
        "wrong_number",
        "no_sections",
        "odd id/é.x",
        "huge_ok",
        "huge_over",
        "deep_new",
        "will_break",
        "unicode",
    ];
    if lone_stored {
        expected.push("lone_surrogate");
    }
    eventually(
        "every bad document's output is in the cache",
        Duration::from_secs(30),
        async || {
            for category in &expected {
                let reply = daemon.get(&sysconf_path(category, &[])).await;
                if reply.status != StatusCode::OK {
                    return Err(format!("{category}: {}", reply.text));
                }
                if *category == "will_break" && reply.json["stale"] != true {
                    return Err(format!("will_break not stale yet: {}", reply.text));
                }
            }
            Ok(())
        },
    )
    .await;
    let whole = async |category: &str| {
        let reply = daemon.get(&sysconf_path(category, &[])).await;
        assert_eq!(reply.status, StatusCode::OK, "{category}: {}", reply.text);
        reply.json
    };
    let get = async |category: &str, key: &[&str], node: Option<&str>| {
        daemon.sysconf_get(category, key, node).await
    };

    // Wrong types: flagged, and the usable sections still answer.
    for category in ["wrong_string", "wrong_array", "wrong_null", "wrong_number"] {
        let doc = whole(category).await;
        assert_names_doc(&doc["errors"], category, &db);
    }
    assert_eq!(
        get("wrong_string", &["k"], None).await.json["value"],
        "node ok"
    );
    let reply = get("wrong_string", &["k"], Some("n2")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    assert_eq!(
        get("wrong_array", &["k"], Some("n2")).await.json["value"],
        "zone ok"
    );
    assert_eq!(
        get("wrong_number", &["k"], None).await.json["value"],
        "default ok"
    );
    // No sections at all is not an error, just nothing to find.
    assert_eq!(whole("no_sections").await["errors"], json!([]));
    assert_eq!(
        get("no_sections", &["k"], None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get("odd id/é.x", &["k"], None).await.json["value"], "odd");

    // Huge values.
    let reply = get("huge_ok", &["blob"], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["value"].as_str().map(str::len), Some(1_000_000));
    let over = whole("huge_over").await;
    assert!(
        over["errors"].to_string().contains("max_output_bytes"),
        "{}",
        over["errors"]
    );
    assert_eq!(
        get("huge_over", &["blob"], None).await.status,
        StatusCode::NOT_FOUND
    );

    // Too deep to parse: the new one has no content, the broken one keeps
    // its last good content, flagged stale.
    let deep = whole("deep_new").await;
    assert_names_doc(&deep["errors"], "deep_new", &db);
    assert_eq!(
        get("deep_new", &["n"], None).await.status,
        StatusCode::NOT_FOUND
    );
    let broken = whole("will_break").await;
    assert_names_doc(&broken["errors"], "will_break", &db);
    assert_eq!(broken["stale"], true, "{broken}");
    assert_eq!(broken["document"]["default"]["k"], "good", "{broken}");
    assert_eq!(get("will_break", &["k"], None).await.json["value"], "good");
    let cached = env
        .couch
        .get(&cache, &cache_id("will_break"))
        .await
        .unwrap();
    assert_eq!(cached["stale"], true);
    assert_names_doc(&cached["errors"], "will_break", &db);

    // Unicode survives the round trip, keys with dots and slashes included.
    let stored = env.couch.get(&db, "unicode").await.unwrap();
    assert_eq!(
        whole("unicode").await["document"],
        expected_content(&stored)
    );
    for (key, value) in [
        (vec!["emoji"], json!("😀🎉👩‍👩‍👧")),
        (vec!["rtl"], json!("שלום عليكم")),
        (vec!["nul"], json!("a\u{0}b")),
        (vec!["combining"], json!("e\u{301}")),
        (vec!["bom"], json!("\u{feff}x")),
        (vec!["a.b"], json!(2)),
        (vec!["é/ü"], json!(1)),
        (vec!["emoji😀key"], json!(3)),
        (vec!["x", "y.z"], json!(4)),
    ] {
        let reply = get("unicode", &key, None).await;
        assert_eq!(reply.json["value"], value, "{key:?}: {}", reply.text);
    }
    let reply = get("unicode", &["k"], Some("ünïcødé node")).await;
    assert_eq!(reply.json["value"], "accented node", "{}", reply.text);
    // "a.b" is one key, not a path.
    assert_eq!(
        get("unicode", &["a", "b"], None).await.status,
        StatusCode::NOT_FOUND
    );

    if lone_stored {
        let doc = whole("lone_surrogate").await;
        assert_names_doc(&doc["errors"], "lone_surrogate", &db);
    }

    // The status endpoint lists the broken outputs with their reasons.
    let status = daemon.get("/v1/status").await;
    let listed: Vec<&str> = status.json["errors"]
        .as_array()
        .expect("status lists errors")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    for category in [
        "wrong_string",
        "wrong_array",
        "deep_new",
        "will_break",
        "huge_over",
    ] {
        assert!(
            listed.contains(&cache_id(category).as_str()),
            "{category} missing from /v1/status errors: {}",
            status.text
        );
    }
    assert_eq!(daemon.readyz().await, Ok(StatusCode::OK));

    // Other outputs are untouched: not even rewritten.
    let now = env
        .couch
        .get(&cache, &cache_id("good_before"))
        .await
        .unwrap();
    assert_eq!(now["_rev"], untouched["_rev"], "good_before was rewritten");
    assert_eq!(now["hash"], untouched["hash"]);
    assert_eq!(get("good_before", &["k"], None).await.json["value"], "fine");

    // Repairing the broken document clears its errors.
    env.couch
        .upsert(
            &db,
            &json!({"_id": "will_break", "default": {"k": "repaired"}}),
        )
        .await;
    eventually(
        "will_break is repaired",
        Duration::from_secs(20),
        async || {
            let doc = whole("will_break").await;
            if doc["errors"] == json!([])
                && doc["stale"] == false
                && doc["document"]["default"]["k"] == "repaired"
            {
                Ok(())
            } else {
                Err(doc.to_string())
            }
        },
    )
    .await;

    // And the daemon survived all of it.
    assert!(daemon.is_running());
    stop_cleanly(&mut daemon).await;
}
