//! Issue 16: a MAC scanner behind a NAT must not lock out the real phones
//! behind it. Through the real daemon on the demo documents: a scan of
//! 1,000 MACs from 127.0.0.1 is throttled while the demo phones that
//! fetched before it keep getting their exact bytes (Globex's through
//! Digest); a phone first seen during the scan, or a remembered MAC with
//! another User-Agent, gets the same 429 as an unknown MAC; valid
//! credentials are served from a throttled address, wrong ones count as
//! misses; the throttle shows in `/metrics`, `/v1/status` and the security
//! log; the remembered pairs survive a restart, and a corrupt state file
//! means starting empty, with a log line. With trust off
//! (`trusted_pairs_max = 0`) the lock-out is back; SIGHUP turns it on.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::phones::{PhonesEnv, get, phone, wait_status};
use crate::phones_demo::{ACME, GLOBEX, PHONES, load_demo};
use crate::support::daemon::{Daemon, DaemonConfig, Reply};

const ACME_ID: &str = "6f2a1b3c4d5e6f708192a3b4c5d6e7f8";
const GLOBEX_ID: &str = "7a3b2c4d5e6f708192a3b4c5d6e7f809";
/// Units no phone asked for before the scan.
const LATE_YEALINK: (&str, &str) = (
    "/805ec0777777.cfg",
    "Yealink SIP-T46S 66.86.0.15 80:5e:c0:77:77:77",
);
const LATE_FANVIL: (&str, &str) = ("/0c383e777777.cfg", "Fanvil X5U-V2 2.12.16.17 0c383e777777");
const BUDGET: usize = 20;

/// Every demo phone's per-device files and their bytes, by (unit, path).
type Fetched = BTreeMap<(String, String), String>;

async fn add_late_units(env: &PhonesEnv) {
    for doc in [
        json!({"_id": "unit-acme-late", "type": "unit", "account_id": ACME_ID, "mac_address": "805ec0777777",
               "brand": "yealink", "model": "t46s"}),
        json!({"_id": "unit-globex-late", "type": "unit", "account_id": GLOBEX_ID, "mac_address": "0c383e777777",
               "brand": "fanvil", "model": "x5u"}),
    ] {
        env.unit_doc(doc).await;
    }
}

fn config(env: &PhonesEnv, state: &Path) -> DaemonConfig {
    let mut config = env.config();
    config
        .set("phones.rate_limit.misses", BUDGET as i64)
        .set("phones.rate_limit.cooldown_secs", 600)
        .set("phones.trusted_proxies", "127.0.0.1")
        .set("phones.trusted_pairs_file", state.display().to_string())
        .set("phones.trusted_pairs_save_secs", 1);
    config
}

fn nonce_of(reply: &Reply) -> String {
    let offered = reply.headers["www-authenticate"].to_str().unwrap();
    offered
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a nonce")
        .to_string()
}

/// A GET with Globex's Digest credentials (`password`) on `nonce`.
async fn digest(
    daemon: &Daemon,
    path: &str,
    ua: &str,
    nonce: &str,
    password: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let authorization = caldera::domains::phones::auth::client_authorization(
        caldera::domains::phones::auth::Algorithm::Sha256,
        "globex-phones",
        password,
        GLOBEX,
        nonce,
        "GET",
        path,
        "9b1c2d3e",
    );
    let mut headers = vec![("Authorization", authorization.as_str())];
    headers.extend_from_slice(extra);
    phone(daemon, reqwest::Method::GET, path, GLOBEX, ua, &headers).await
}

/// What a phone does: ask, and answer a challenge with its credentials.
async fn fetch(daemon: &Daemon, path: &str, realm: &str, ua: &str) -> Reply {
    let first = get(daemon, path, realm, ua).await;
    if first.status != StatusCode::UNAUTHORIZED {
        return first;
    }
    let nonce = nonce_of(&first);
    digest(daemon, path, ua, &nonce, "demo-provisioning-secret", &[]).await
}

/// The per-device files of every demo phone, fetched as the phone would.
async fn fetch_all(daemon: &Daemon) -> Fetched {
    let mut fetched = Fetched::new();
    for (unit, realm, ua) in PHONES {
        let view = daemon.get(&format!("/v1/units/{unit}")).await;
        for file in view.json["files"].as_object().unwrap().keys() {
            let path = format!("/{file}");
            let reply = fetch(daemon, &path, realm, ua).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{unit} {path}: {}",
                reply.text
            );
            fetched.insert((unit.to_string(), path), reply.text);
        }
    }
    fetched
}

/// Every demo phone gets exactly the bytes it got before.
async fn assert_served_as_before(daemon: &Daemon, before: &Fetched) {
    for ((unit, path), text) in before {
        let (_, realm, ua) = PHONES.iter().find(|(u, _, _)| u == unit).unwrap();
        let reply = fetch(daemon, path, realm, ua).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{unit} {path}: {}",
            reply.text
        );
        assert_eq!(&reply.text, text, "{unit} {path}: the exact bytes");
    }
}

/// `count` scanner requests for distinct random Yealink MACs from
/// 127.0.0.1 (the User-Agent carrying the same MAC); their statuses.
async fn scan(daemon: &Daemon, from: usize, count: usize) -> BTreeMap<u16, usize> {
    scan_from(daemon, from, count, &[]).await
}

/// `scan` with `extra` headers (an `X-Forwarded-For` source).
async fn scan_from(
    daemon: &Daemon,
    from: usize,
    count: usize,
    extra: &[(&str, &str)],
) -> BTreeMap<u16, usize> {
    let mut statuses = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(16 + from as u64);
    for _ in 0..count {
        let low = rng.u32(..0x00ff_ffff) | 0x0100_0000;
        let mac = format!("805ec{low:07x}");
        let colons: Vec<&str> = (0..6).map(|i| &mac[2 * i..2 * i + 2]).collect();
        let ua = format!("Yealink SIP-T46S 66.86.0.15 {}", colons.join(":"));
        let path = format!("/{mac}.cfg");
        let reply = phone(daemon, reqwest::Method::GET, &path, ACME, &ua, extra).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(reply.headers.get("retry-after").is_some());
        }
        *statuses.entry(reply.status.as_u16()).or_default() += 1;
    }
    statuses
}

/// A 429 as the client sees it, but for `date` and the seconds left.
fn shape(reply: &Reply) -> (StatusCode, Vec<String>, String) {
    let mut headers: Vec<String> = reply
        .headers
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "retry-after"))
        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
        .collect();
    headers.sort();
    assert!(reply.headers.get("retry-after").is_some());
    (reply.status, headers, reply.text.clone())
}

/// The value of the first sample of `name` whose labels contain `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} {label} in\n{text}"))
}

/// A ready daemon, waited for on a model-common file (serving a device
/// file would remember its pair).
async fn start(config: &DaemonConfig) -> Daemon {
    let daemon = Daemon::start_ready(config).await;
    wait_status(
        &daemon,
        "/y000000000066.cfg",
        ACME,
        PHONES[0].2,
        StatusCode::OK,
    )
    .await;
    daemon
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scan_behind_a_nat_is_throttled_while_the_phones_behind_it_keep_working() {
    let env = PhonesEnv::new().await;
    load_demo(&env).await;
    add_late_units(&env).await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("pairs");
    let config = config(&env, &state);
    let mut daemon = start(&config).await;
    let before = fetch_all(&daemon).await;
    assert!(before.len() >= PHONES.len());
    // A challenge for a later Digest answer: nonces are per realm.
    let globex_nonce = nonce_of(&get(&daemon, "/0c383e557eb1.cfg", GLOBEX, PHONES[6].2).await);

    // The scan, with the demo phones asking in between.
    let mut statuses = BTreeMap::new();
    for round in 0..10 {
        for (status, n) in scan(&daemon, round * 100, 100).await {
            *statuses.entry(status).or_insert(0) += n;
        }
        assert_served_as_before(&daemon, &before).await;
    }
    assert_eq!(
        statuses,
        BTreeMap::from([(404, BUDGET), (429, 1000 - BUDGET)]),
        "the budget, then the cool-down"
    );

    // Strangers all get one and the same 429: a known MAC first seen now,
    // a remembered MAC with another User-Agent, an unknown MAC.
    let unknown = get(
        &daemon,
        "/805ec0aaaaaa.cfg",
        ACME,
        "Yealink SIP-T46S 66.86.0.15 80:5e:c0:aa:aa:aa",
    )
    .await;
    assert_eq!(unknown.status, StatusCode::TOO_MANY_REQUESTS);
    let upgraded_ua = "Yealink SIP-T46S 66.86.0.160 80:5e:c0:12:34:56";
    for (path, realm, ua) in [
        (LATE_YEALINK.0, ACME, LATE_YEALINK.1),
        ("/805ec0123456.cfg", ACME, upgraded_ua),
        (LATE_FANVIL.0, GLOBEX, LATE_FANVIL.1),
    ] {
        let reply = get(&daemon, path, realm, ua).await;
        assert_eq!(shape(&reply), shape(&unknown), "{path} ({ua})");
    }
    // Valid credentials are proof: the Digest phone first seen now is served.
    let proven = digest(
        &daemon,
        LATE_FANVIL.0,
        LATE_FANVIL.1,
        &globex_nonce,
        "demo-provisioning-secret",
        &[],
    )
    .await;
    assert_eq!(proven.status, StatusCode::OK, "{}", proven.text);

    // Wrong credentials are misses: another address spends its budget on them.
    let guesser = [("X-Forwarded-For", "198.51.100.7")];
    let mut guesses = Vec::new();
    for _ in 0..=BUDGET {
        let reply = digest(
            &daemon,
            "/0c383e557eb1.cfg",
            PHONES[6].2,
            &globex_nonce,
            "guess",
            &guesser,
        )
        .await;
        guesses.push(reply.status.as_u16());
    }
    assert_eq!(guesses[..BUDGET], [401; BUDGET]);
    assert_eq!(guesses[BUDGET], 429, "the miss past the budget");
    let demo_elsewhere = phone(
        &daemon,
        reqwest::Method::GET,
        "/805ec0123456.cfg",
        ACME,
        PHONES[0].2,
        &guesser,
    )
    .await;
    assert_eq!(
        demo_elsewhere.status,
        StatusCode::TOO_MANY_REQUESTS,
        "not remembered at that address"
    );
    let right = digest(
        &daemon,
        "/0c383e557eb1.cfg",
        PHONES[6].2,
        &globex_nonce,
        "demo-provisioning-secret",
        &guesser,
    )
    .await;
    assert_eq!(right.status, StatusCode::OK);

    // Visible: counts only, never a MAC.
    let metrics = daemon.get("/metrics").await.text;
    assert!(
        metric(
            &metrics,
            "caldera_phones_throttle_decisions_total",
            "outcome=\"refused\""
        ) >= 984.0
    );
    assert!(
        metric(
            &metrics,
            "caldera_phones_throttle_decisions_total",
            "outcome=\"trusted_pair\""
        ) >= 10.0
    );
    assert!(
        metric(
            &metrics,
            "caldera_phones_throttle_decisions_total",
            "outcome=\"authenticated\""
        ) >= 2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "caldera_phones_throttle_decisions_total",
            "outcome=\"cooldown_started\""
        ),
        2.0
    );
    assert_eq!(
        metric(&metrics, "caldera_phones_rate_limit_cooling", ""),
        2.0
    );
    assert_eq!(
        metric(&metrics, "caldera_phones_rate_limit_misses", ""),
        BUDGET as f64
    );
    assert_eq!(
        metric(&metrics, "caldera_phones_rate_limit_cooldown_seconds", ""),
        600.0
    );
    assert_eq!(
        metric(&metrics, "caldera_phones_trusted_pairs_max", ""),
        100_000.0
    );
    // The seven demo phones and the proven late one, at 127.0.0.1; the Fanvil at the guesser's.
    assert_eq!(metric(&metrics, "caldera_phones_trusted_pairs ", ""), 9.0);
    let status = daemon.get("/v1/status").await;
    let throttle = &status.json["phones"];
    assert_eq!(
        throttle["rate_limit"]["sources_cooling"], 2,
        "{}",
        status.text
    );
    assert_eq!(throttle["rate_limit"]["misses"], BUDGET);
    assert_eq!(throttle["trusted_pairs"]["count"], 9);
    assert!(throttle["decisions"]["refused"].as_u64().unwrap() >= 984);
    for text in [&metrics, &status.text] {
        assert!(!text.contains("805ec0123456") && !text.contains("0c383e557eb1"));
    }
    // The security log has every decision, with the address and the reason.
    let logs = daemon.logs();
    let has = |needles: &[&str]| logs.iter().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(has(&["cooldown_started", "127.0.0.1", "unknown MAC"]));
    assert!(has(&[
        "cooldown_started",
        "198.51.100.7",
        "wrong credentials"
    ]));
    assert!(has(&["rate_limited", "127.0.0.1", "cooling down"]));
    assert!(has(&["throttle_bypassed", "127.0.0.1", "trusted pair"]));
    assert!(has(&[
        "throttle_bypassed",
        "127.0.0.1",
        "valid credentials"
    ]));

    // A restart keeps the pairs (the cool-down itself is memory only, so
    // the scanner spends a fresh budget first).
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(30)).await.success());
    let saved = std::fs::read_to_string(&state).unwrap();
    assert_eq!(saved.lines().count(), 1 + 9, "{saved}");
    let mut daemon = start(&config).await;
    assert!(daemon.logged("trusted pairs restored"));
    let statuses = scan(&daemon, 5_000, BUDGET + 5).await;
    assert_eq!(statuses, BTreeMap::from([(404, BUDGET), (429, 5)]));
    assert_served_as_before(&daemon, &before).await;
    let late = get(&daemon, LATE_YEALINK.0, ACME, LATE_YEALINK.1).await;
    assert_eq!(late.status, StatusCode::TOO_MANY_REQUESTS);
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(30)).await.success());

    // A corrupt state file: logged, and every phone is new.
    std::fs::write(&state, "# caldera phones trusted pairs v1\nnot a pair\n").unwrap();
    let daemon = start(&config).await;
    assert!(
        daemon.logged("the trusted pairs state file is corrupt; starting empty"),
        "{}",
        daemon.log_tail(40)
    );
    scan(&daemon, 9_000, BUDGET + 1).await;
    let forgotten = get(&daemon, "/805ec0123456.cfg", ACME, PHONES[0].2).await;
    assert_eq!(forgotten.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn trust_off_is_the_old_lock_out_and_a_reload_turns_it_on() {
    let env = PhonesEnv::new().await;
    load_demo(&env).await;
    let mut config = env.env.config("n1");
    config
        .set("phones.rate_limit.misses", BUDGET as i64)
        .set("phones.rate_limit.cooldown_secs", 600)
        .set("phones.trusted_proxies", "127.0.0.1")
        .set("phones.trusted_pairs_max", 0);
    let daemon = start(&config).await;
    assert!(daemon.logged("trusted pairs are kept in memory only"));
    let (path, ua) = ("/805ec0123456.cfg", PHONES[0].2);
    assert_eq!(get(&daemon, path, ACME, ua).await.status, StatusCode::OK);
    scan(&daemon, 0, BUDGET + 1).await;
    let locked_out = get(&daemon, path, ACME, ua).await;
    assert_eq!(
        locked_out.status,
        StatusCode::TOO_MANY_REQUESTS,
        "trust off: the issue's lock-out"
    );

    // SIGHUP turns trust on; pairs are remembered from then on.
    config.set("phones.trusted_pairs_max", 1_000);
    std::fs::write(daemon.config_path(), config.toml()).unwrap();
    daemon.sighup();
    let office = [("X-Forwarded-For", "203.0.113.9")];
    crate::support::eventually("the reload", Duration::from_secs(10), async || {
        let status = daemon.get("/v1/status").await;
        match status.json["phones"]["trusted_pairs"]["max"].as_u64() {
            Some(1_000) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let served = phone(&daemon, reqwest::Method::GET, path, ACME, ua, &office).await;
    assert_eq!(served.status, StatusCode::OK);
    let statuses = scan_from(&daemon, 100, BUDGET + 1, &office).await;
    assert_eq!(statuses, BTreeMap::from([(404, BUDGET), (429, 1)]));
    let kept = phone(&daemon, reqwest::Method::GET, path, ACME, ua, &office).await;
    assert_eq!(
        kept.status,
        StatusCode::OK,
        "remembered at the office's address"
    );
    assert_eq!(kept.text, served.text);
    let still = get(&daemon, path, ACME, ua).await;
    assert_eq!(
        still.status,
        StatusCode::TOO_MANY_REQUESTS,
        "not remembered while trust was off"
    );
}
