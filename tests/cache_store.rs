//! The mirror's on-disk store (`cache.store_path`) through the real daemon:
//! a restart resumes from the store without reading the cache database
//! again and serves what changed while it was down; a truncated or
//! hand-edited store, a disk that fills up, and kill -9 in the middle of
//! store writes are each detected or survived, and no phone is ever served
//! a byte the cache database does not hold.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::phones::{ACME, PhonesEnv, REALM, get};
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::{eventually, seed};
use fastrand::Rng;

/// Units in the store: enough that loading and spilling take many store
/// transactions.
const UNITS: usize = 300;

fn mac(i: usize) -> String {
    format!("805ec0{i:06x}")
}

fn unit(i: usize, vlan: u64) -> Value {
    json!({"_id": format!("unit-{i}"), "type": "unit", "account_id": ACME, "name": format!("Desk {i}"),
           "mac_address": mac(i), "brand": "yealink", "model": "t46s", "config": {"vlan": vlan}})
}

async fn seed_units(env: &PhonesEnv) {
    env.seed().await;
    let docs: Vec<Value> = (0..UNITS).map(|i| unit(i, 100 + i as u64)).collect();
    env.env.couch.bulk_docs(&env.units, &docs).await;
}

fn store_path(config: &DaemonConfig) -> std::path::PathBuf {
    config
        .get("cache.store_path")
        .and_then(toml::Value::as_str)
        .map(Into::into)
        .expect("the harness configures a store")
}

/// Every file of every served, credential-free unit, as the cache database
/// holds it: (path, body).
async fn expected_files(env: &PhonesEnv) -> BTreeMap<String, String> {
    let cache = env.env.couch.docs_by_id(&env.env.names.cache).await;
    let mut files = BTreeMap::new();
    for (id, doc) in cache {
        let content = &doc["content"];
        if !id.starts_with("phones:unit:")
            || content["served"] != true
            || content["auth"].is_object()
        {
            continue;
        }
        for (name, file) in content["files"].as_object().into_iter().flatten() {
            files.insert(
                format!("/{name}"),
                file["body"].as_str().unwrap_or_default().to_string(),
            );
        }
    }
    files
}

/// Whether the daemon serves exactly the cache database's files (and the
/// source's unit count made it there).
async fn served_matches_cache(
    env: &PhonesEnv,
    daemon: &Daemon,
    units: usize,
) -> Result<(), String> {
    let expected = expected_files(env).await;
    let device_files = expected.keys().filter(|p| p.starts_with("/805ec0")).count();
    if device_files < units {
        return Err(format!("{device_files} of {units} device files are built"));
    }
    for (path, body) in &expected {
        let reply = get(daemon, path, REALM, "Yealink SIP-T46S 66.86.0.15").await;
        if reply.status != StatusCode::OK || reply.text != *body {
            return Err(format!(
                "{path}: {} {:?}, expected {body:?}",
                reply.status, reply.text
            ));
        }
    }
    Ok(())
}

async fn wait_served(env: &PhonesEnv, daemon: &Daemon, units: usize, what: &str) {
    eventually(what, Duration::from_secs(90), async || {
        served_matches_cache(env, daemon, units).await
    })
    .await;
}

/// Gives the first ten units a new VLAN (7000 + i) and waits until the
/// tenth one's new file is served.
async fn edit_ten_units_until_served(env: &PhonesEnv, daemon: &Daemon, what: &str) {
    for i in 0..10 {
        env.unit_doc(unit(i, 7000 + i as u64)).await;
    }
    eventually(what, Duration::from_secs(60), async || {
        let path = format!("/{}.cfg", mac(9));
        let reply = get(daemon, &path, REALM, "Yealink SIP-T46S").await;
        reply
            .text
            .contains("vlan = 7009")
            .then_some(())
            .ok_or_else(|| format!("{} {}", reply.status, reply.text))
    })
    .await;
}

/// The JSON log lines whose message is `message`.
fn logged(daemon: &Daemon, message: &str) -> Vec<Value> {
    daemon
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == message)
        .collect()
}

async fn stop(daemon: &mut Daemon) {
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(30)).await.success());
}

/// A replica restarted with its store follows the cache feed from the
/// store's position: it reads only what changed while it was down (not
/// the whole cache database), and once ready serves the new bytes, never
/// the old ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_replica_resumes_from_its_store_and_serves_what_changed() {
    let env = PhonesEnv::new().await;
    seed_units(&env).await;
    let builder = Daemon::start_ready(&env.config()).await;
    let mut config = env.env.config("replica");
    config.set("build.enabled", false);
    let mut replica = Daemon::start_ready(&config).await;
    wait_served(&env, &replica, UNITS, "the replica serves every unit").await;
    stop(&mut replica).await;

    // While the replica is down: 20 units change, 5 go.
    for i in 0..20 {
        env.unit_doc(unit(i, 4000 + i as u64)).await;
    }
    for i in 20..25 {
        assert!(env.env.couch.delete(&env.units, &format!("unit-{i}")).await);
    }
    eventually(
        "the builder wrote the edits",
        Duration::from_secs(60),
        async || {
            let files = expected_files(&env).await;
            let edited = files
                .get(&format!("/{}.cfg", mac(0)))
                .is_some_and(|b| b.contains("4000"));
            let deleted = !files.contains_key(&format!("/{}.cfg", mac(20)));
            (edited && deleted)
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await;

    let replica = Daemon::start_ready(&config).await;
    // Ready means caught up: every byte served is already the new one.
    served_matches_cache(&env, &replica, UNITS - 5)
        .await
        .unwrap_or_else(|why| panic!("right after ready: {why}"));
    let deleted = get(
        &replica,
        &format!("/{}.cfg", mac(20)),
        REALM,
        "Yealink SIP-T46S",
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NOT_FOUND);
    let resumed = logged(&replica, "resumed from the held position");
    let cache_db = env.env.names.cache.as_str();
    assert!(
        resumed
            .iter()
            .any(|l| l["db"] == cache_db && l["changes"].as_u64().is_some_and(|c| c < 200)),
        "the replica resumed, reading few changes: {resumed:?}\n{}",
        replica.log_tail(40)
    );
    assert!(
        !logged(&replica, "database loaded")
            .iter()
            .any(|l| l["db"] == cache_db),
        "the cache database is not read again"
    );
    drop(builder);
}

/// A store cut short, then one with a byte changed by hand: each is found
/// at start, logged, rebuilt from CouchDB, and nothing of it is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_or_hand_edited_store_is_rebuilt_not_served() {
    let env = PhonesEnv::new().await;
    seed_units(&env).await;
    let config = env.config();
    let path = store_path(&config);
    let mut daemon = Daemon::start_ready(&config).await;
    wait_served(&env, &daemon, UNITS, "first start").await;
    stop(&mut daemon).await;

    let length = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length / 2).unwrap();
    drop(file);
    let mut daemon = Daemon::start_ready(&config).await;
    assert!(
        !logged(
            &daemon,
            "the cache store is damaged: it is rebuilt from CouchDB"
        )
        .is_empty(),
        "the truncation is reported:\n{}",
        daemon.log_tail(40)
    );
    served_matches_cache(&env, &daemon, UNITS)
        .await
        .unwrap_or_else(|why| panic!("after the truncated store: {why}"));
    stop(&mut daemon).await;

    // A hand edit: one byte of a phone's file text, where the bytes sit.
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = b"vlan = 117";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the store holds unit 17's file text");
    bytes[at + needle.len() - 1] = b'8';
    std::fs::write(&path, &bytes).unwrap();
    let daemon = Daemon::start_ready(&config).await;
    assert!(
        !logged(
            &daemon,
            "the cache store is damaged: it is rebuilt from CouchDB"
        )
        .is_empty(),
        "the edit is reported:\n{}",
        daemon.log_tail(40)
    );
    served_matches_cache(&env, &daemon, UNITS)
        .await
        .unwrap_or_else(|why| panic!("after the edited store: {why}"));
    let reply = get(
        &daemon,
        &format!("/{}.cfg", mac(17)),
        REALM,
        "Yealink SIP-T46S",
    )
    .await;
    assert!(reply.text.contains("vlan = 117") && !reply.text.contains("vlan = 118"));
}

/// The store's disk fills up (a file-size limit on the process): the
/// daemon logs it, keeps every output in memory and goes on serving and
/// building; a later start without the limit resumes from the last commit
/// (consistent with its checkpoint) and serves the current bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_store_not_the_daemon() {
    let env = PhonesEnv::new().await;
    seed_units(&env).await;
    let mut config = env.config();
    config.wrapper = ["prlimit", "--fsize=600000", "--"]
        .map(String::from)
        .to_vec();
    let mut daemon = Daemon::start_ready(&config).await;
    wait_served(&env, &daemon, UNITS, "with a full disk").await;
    eventually(
        "the failed write is logged",
        Duration::from_secs(30),
        async || {
            daemon
                .logged("the store could not be written")
                .then_some(())
                .ok_or_else(|| daemon.log_tail(10))
        },
    )
    .await;
    edit_ten_units_until_served(&env, &daemon, "edits are served after the disk filled").await;
    served_matches_cache(&env, &daemon, UNITS).await.unwrap();
    assert!(daemon.is_running());
    stop(&mut daemon).await;

    config.wrapper.clear();
    let daemon = Daemon::start_ready(&config).await;
    served_matches_cache(&env, &daemon, UNITS)
        .await
        .unwrap_or_else(|why| panic!("after the disk had filled: {why}"));
}

/// kill -9 at random moments while the store is being written (the first
/// load, then edits): every start finds a consistent store or rebuilds
/// it, and ends serving exactly the cache database's bytes.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_store_writes_never_serves_a_wrong_byte() {
    let seed = seed("cache store kill -9");
    let mut rng = Rng::with_seed(seed);
    let env = PhonesEnv::new().await;
    seed_units(&env).await;
    let config = env.config();
    let mut vlan = 10_000;
    for round in 0..4 {
        let mut daemon = Daemon::start(&config).await;
        for _ in 0..rng.usize(..20) {
            vlan += 1;
            env.unit_doc(unit(rng.usize(..UNITS), vlan)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(50..450))).await;
        daemon.kill9();
        let daemon = Daemon::start_ready(&config).await;
        wait_served(&env, &daemon, UNITS, &format!("seed {seed}, round {round}")).await;
        drop(daemon);
    }
}

/// A replica whose store is behind and whose cache feed cannot be read
/// (the fault proxy refuses every `_changes` of the cache database) holds
/// bytes that may be stale: until it has caught up, every phone request —
/// a known MAC or not — gets the same 503 with `Retry-After`, never a file
/// from the store, and `/readyz` says not ready. Once the feed is back it
/// serves the new bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_catching_up_answers_503_not_stale_bytes() {
    use crate::support::proxy::FaultProxy;
    let env = PhonesEnv::new().await;
    seed_units(&env).await;
    let builder = Daemon::start_ready(&env.config()).await;
    let proxy = FaultProxy::in_front_of(env.env.couch.url()).await;
    let mut config = env.env.config("replica");
    config
        .set("build.enabled", false)
        .set("couchdb.url", proxy.url_for(env.env.couch.url()));
    let mut replica = Daemon::start_ready(&config).await;
    wait_served(&env, &replica, UNITS, "the replica serves every unit").await;
    stop(&mut replica).await;

    env.unit_doc(unit(0, 4321)).await;
    eventually(
        "the builder wrote the edit",
        Duration::from_secs(60),
        async || {
            let files = expected_files(&env).await;
            files
                .get(&format!("/{}.cfg", mac(0)))
                .is_some_and(|b| b.contains("4321"))
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await;

    let cache_db = env.env.names.cache.clone();
    proxy.refuse_requests_containing(&format!("/{cache_db}/_changes"));
    let replica = Daemon::start(&config).await;
    let ua = "Yealink SIP-T46S 66.86.0.15";
    for path in [
        format!("/{}.cfg", mac(0)),
        format!("/{}.cfg", mac(1)),
        "/001122334455.cfg".to_string(),
    ] {
        let reply =
            crate::phones::wait_status(&replica, &path, REALM, ua, StatusCode::SERVICE_UNAVAILABLE)
                .await;
        assert_eq!(reply.text, "Service Unavailable\n", "{path}");
        assert_eq!(
            reply
                .headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("5"),
            "{path}"
        );
    }
    // Still refused a moment later: nothing was served from the old store.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = get(&replica, &format!("/{}.cfg", mac(0)), REALM, ua).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(replica.readyz().await, Ok(StatusCode::OK));

    proxy.restore();
    replica.wait_ready().await;
    served_matches_cache(&env, &replica, UNITS)
        .await
        .unwrap_or_else(|why| panic!("after catching up: {why}"));
    drop(builder);
}

/// The hot set's figures in `/v1/status`.
async fn hot_set(daemon: &Daemon) -> Value {
    daemon.get("/v1/status").await.json["phones"]["hot_set"].clone()
}

/// With an empty hot set every phone file is read back from the store,
/// and what is served is still exactly the cache database, edits
/// included; SIGHUP gives it room, and the second pass is answered from
/// memory with the same bytes.
#[tokio::test(flavor = "multi_thread")]
async fn files_read_back_from_the_store_serve_the_same_bytes_hot_or_cold() {
    let env = PhonesEnv::new().await;
    seed_units(&env).await;
    let mut config = env.config();
    config.set("phones.hot_set_mb", 0);
    let daemon = Daemon::start_ready(&config).await;
    wait_served(&env, &daemon, UNITS, "every unit served, cold").await;
    let cold = hot_set(&daemon).await;
    assert_eq!(cold["limit_bytes"], 0, "{cold}");
    assert_eq!(cold["files"], 0, "nothing kept: {cold}");
    assert!(cold["misses"].as_u64() >= Some(UNITS as u64), "{cold}");

    config.set("phones.hot_set_mb", 16);
    std::fs::write(daemon.config_path(), config.toml()).unwrap();
    daemon.sighup();
    eventually(
        "the hot set is resized",
        Duration::from_secs(10),
        async || {
            let limit = hot_set(&daemon).await["limit_bytes"].clone();
            (limit == 16 << 20).then_some(()).ok_or(limit.to_string())
        },
    )
    .await;
    served_matches_cache(&env, &daemon, UNITS).await.unwrap();
    let before = hot_set(&daemon).await;
    served_matches_cache(&env, &daemon, UNITS).await.unwrap();
    let after = hot_set(&daemon).await;
    assert!(after["files"].as_u64() >= Some(UNITS as u64), "{after}");
    assert!(
        after["hits"].as_u64().unwrap() >= before["hits"].as_u64().unwrap() + UNITS as u64,
        "the second pass is answered from the hot set: {before} -> {after}"
    );

    // Edited units: the hot copies of their old revision are never served.
    edit_ten_units_until_served(&env, &daemon, "the edits are served").await;
    wait_served(&env, &daemon, UNITS, "every unit served after the edits").await;
}
