//! The stale last-good copy of a phones output, through the real daemon:
//! the mirror keeps phones outputs as their JSON text, and a build that
//! fails must still keep (and serve) the last good content, flagged
//! stale, across a restart that reloads the mirror from CouchDB.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::phones::{ACME, MAC, PhonesEnv, REALM, YEALINK_UA, device_template, get, wait_status};
use crate::support::daemon::Daemon;
use crate::support::eventually;

/// Waits until the admin view of `unit-1` is (or is not) stale.
async fn wait_stale(daemon: &Daemon, stale: bool) -> Value {
    eventually(
        &format!("unit-1 stale = {stale}"),
        Duration::from_secs(30),
        async || {
            let view = daemon.get("/v1/units/unit-1").await;
            if view.json["stale"] == json!(stale) {
                Ok(view.json)
            } else {
                Err(format!("{} {}", view.status, view.text))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_build_keeps_serving_the_last_good_phone_file_across_a_restart() {
    let env = PhonesEnv::new().await;
    env.seed().await;
    let config = env.config();
    let mut daemon = Daemon::start_ready(&config).await;
    let path = format!("/{MAC}.cfg");
    let good = wait_status(&daemon, &path, REALM, YEALINK_UA, StatusCode::OK).await;
    assert!(good.text.contains("vlan = 10"), "{}", good.text);
    let etag = good.headers["etag"].clone();
    let fresh = wait_stale(&daemon, false).await;
    let cache_id = "phones:unit:unit-1";
    let good_doc = env
        .env
        .couch
        .get(&env.env.names.cache, cache_id)
        .await
        .unwrap();

    // An account override that cannot render (strict mode) fails the build.
    env.unit_doc(
        json!({"_id": "tpl-broken", "type": "template", "brand": "yealink", "account_id": ACME,
                        "model": "t46s", "file": device_template(), "template": "{{config.nope}}"}),
    )
    .await;
    let stale = wait_stale(&daemon, true).await;
    let errors = stale["errors"].to_string();
    assert!(
        errors.contains("tpl-broken") && errors.contains("nope"),
        "{errors}"
    );
    assert_eq!(stale["config"], fresh["config"], "the last good content");
    assert_eq!(stale["files"], fresh["files"]);
    let served = get(&daemon, &path, REALM, YEALINK_UA).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.text, good.text, "the last good bytes are served");
    assert_eq!(served.headers["etag"], etag);
    let stale_doc = env
        .env
        .couch
        .get(&env.env.names.cache, cache_id)
        .await
        .unwrap();
    assert_eq!(stale_doc["stale"], json!(true));
    assert_eq!(
        stale_doc["content"], good_doc["content"],
        "stored unchanged"
    );
    let file = daemon.get("/v1/units/unit-1/files/805ec0123456.cfg").await;
    assert_eq!(
        file.text, good.text,
        "the admin API reads the stale copy too"
    );

    // A restart reloads the mirror from the cache database (text again).
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(20)).await.success());
    daemon = Daemon::start_ready(&config).await;
    let served = wait_status(&daemon, &path, REALM, YEALINK_UA, StatusCode::OK).await;
    assert_eq!(served.text, good.text);
    assert_eq!(served.headers["etag"], etag);
    let reloaded = wait_stale(&daemon, true).await;
    assert_eq!(reloaded["config"], fresh["config"]);
    assert_eq!(reloaded["provenance"], fresh["provenance"]);

    // Fixing the override ends the staleness with a fresh build.
    env.env.couch.delete(&env.units, "tpl-broken").await;
    let fixed = wait_stale(&daemon, false).await;
    assert_eq!(fixed["errors"], json!([]));
    let served = get(&daemon, &path, REALM, YEALINK_UA).await;
    assert_eq!(served.text, good.text);
    assert_eq!(served.headers["etag"], etag);
}
