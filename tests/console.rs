//! The operator console (`/console/`) and the API endpoints it added, on
//! the demo documents of `fixtures/couch/` through the real daemon: the
//! page's security headers, `/v1/errors` (grouped, paged), `/v1/units`
//! (search by MAC, name, account; cursor paging), `/v1/units/{id}/why`
//! (who set each value, which lock decided) and masked files. The page
//! itself is driven in a real Chromium by `console_browser.rs`.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::TestEnv;
use crate::support::couch::repo_root;

use crate::phones::PhonesEnv;
use crate::phones_demo::{PHONES, load_demo};
use crate::support::daemon::Daemon;

/// Every folder of `fixtures/couch/` as `<prefix>_<folder>`, the ruleset
/// pointed at its prefixed rules database, and a unit named with markup.
pub async fn load_all_fixtures(env: &TestEnv) {
    let out = Command::new(repo_root().join("scripts/load-fixtures"))
        .arg(env.couch.url())
        .args(["--db-prefix", &format!("{}_", env.names.prefix)])
        .output()
        .expect("scripts/load-fixtures runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let provisioning = format!("{}_provisioning", env.names.prefix);
    let mut ruleset = env
        .couch
        .get(&provisioning, "ruleset:example.net:default")
        .await
        .expect("the demo ruleset");
    ruleset["database"] = json!(format!("{}_rules_default", env.names.prefix));
    env.couch.upsert(&provisioning, &ruleset).await;
    let units = format!("{}_units", env.names.prefix);
    let markup = json!({
        "_id": "unit-markup", "type": "unit", "account_id": "6f2a1b3c4d5e6f708192a3b4c5d6e7f8",
        "name": "markup <img src=x onerror=\"window.__xss=1\">", "mac_address": "80:5e:c0:00:00:99",
        "brand": "yealink", "model": "t46s", "enabled": false,
    });
    env.couch.upsert(&units, &markup).await;
}

async fn demo_daemon() -> (PhonesEnv, Daemon) {
    let env = PhonesEnv::new().await;
    load_demo(&env).await;
    let daemon = Daemon::start_ready(&env.config()).await;
    (env, daemon)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_page_is_served_with_a_strict_policy() {
    let env = PhonesEnv::new().await;
    let mut config = env.config();
    config.set("http.api.admin_token", "t0ken");
    let daemon = Daemon::start_ready(&config).await;
    // The page is open (it holds nothing); the data behind it is not.
    let page = daemon.get("/console/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.content_type().starts_with("text/html"), "{page:?}");
    assert!(
        page.text
            .contains(r#"<script type="module" src="console.js">"#)
    );
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    for asset in [
        "console.js",
        "api.js",
        "dom.js",
        "views.js",
        "phones.js",
        "chart.js",
    ] {
        let reply = daemon.get(&format!("/console/{asset}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{asset}");
        assert!(
            reply.content_type().starts_with("text/javascript"),
            "{asset}"
        );
        assert!(
            !reply.text.contains("innerHTML"),
            "{asset} must render with textContent"
        );
    }
    assert_eq!(
        daemon.get("/console/nope.js").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        daemon.get("/console").await.status,
        StatusCode::OK,
        "redirected to /console/"
    );
    for path in ["/v1/errors", "/v1/units?q=acme", "/v1/units/unit-1/why"] {
        assert_eq!(
            daemon.get(path).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let authed = daemon
            .try_send(daemon.http().get(daemon.api_url(path)).bearer_auth("t0ken"))
            .await
            .unwrap();
        assert_ne!(authed.status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_grouped_by_database_and_domain_and_paged() {
    let (_env, daemon) = demo_daemon().await;
    let all = daemon.get("/v1/errors?limit=200").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    let total = all.json["total"].as_u64().unwrap() as usize;
    let items = all.json["items"].as_array().unwrap();
    assert_eq!(items.len(), total, "{}", all.text);
    // The demo's locked values are errors on the units (database `units`).
    let units_group = all.json["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["db"].as_str().unwrap().ends_with("_units") && g["domain"] == "phones")
        .unwrap_or_else(|| panic!("{}", all.text));
    assert!(units_group["documents"].as_u64().unwrap() >= 1);
    // Paging by cursor gives the same documents, in id order, once each.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = daemon
            .get(&format!("/v1/errors?limit=2&cursor={cursor}"))
            .await;
        let ids = page.json["items"].as_array().unwrap();
        assert!(ids.len() <= 2);
        paged.extend(ids.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        match page.json["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let whole: Vec<String> = items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paged, whole);
    assert!(whole.windows(2).all(|w| w[0] < w[1]));
    // Filters: one domain and one database.
    let units_db = units_group["db"].as_str().unwrap();
    let phones = daemon
        .get(&format!("/v1/errors?domain=phones&db={units_db}"))
        .await;
    let items = phones.json["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(
        items.iter().all(|i| i["domain"] == "phones"),
        "{}",
        phones.text
    );
    assert_eq!(
        daemon.get("/v1/errors?limit=x").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn units_are_searched_by_mac_name_and_account_a_page_at_a_time() {
    let (_env, daemon) = demo_daemon().await;
    let ids = |reply: &Value| -> Vec<String> {
        reply["units"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_string())
            .collect()
    };
    for (q, want) in [
        ("80:5E:C0:12:34:56", vec!["unit-acme-yealink"]),
        ("805ec0", vec!["unit-acme-yealink"]),
        ("boardroom", vec!["unit-acme-mpp"]),
        ("globex snom", vec!["unit-globex-snom"]),
    ] {
        let reply = daemon.get(&format!("/v1/units?q={}", urlencoding(q))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(ids(&reply.json), want, "{q}: {}", reply.text);
    }
    // By account name: Acme's four units, two a page.
    let first = daemon.get("/v1/units?q=acme%20corp&limit=2").await;
    assert_eq!(ids(&first.json), ["unit-acme-mpp", "unit-acme-polycom"]);
    assert_eq!(first.json["units"][0]["account_name"], "Acme Corp");
    let next = first.json["next"].as_str().unwrap();
    let second = daemon
        .get(&format!("/v1/units?q=acme%20corp&limit=2&cursor={next}"))
        .await;
    assert_eq!(ids(&second.json), ["unit-acme-spa", "unit-acme-yealink"]);
    assert_eq!(second.json["next"], Value::Null);
    // No query: every unit, and never more than the bound.
    let all = daemon.get("/v1/units?limit=100000").await;
    assert_eq!(all.json["units"].as_array().unwrap().len(), PHONES.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn why_this_value_names_the_layer_and_the_lock() {
    let (_env, daemon) = demo_daemon().await;
    let why = daemon.get("/v1/units/unit-acme-yealink/why").await;
    assert_eq!(why.status, StatusCode::OK, "{}", why.text);
    let value = |path: &str| -> Value {
        why.json["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} in {}", why.text))
    };
    // Nimbus locks the codecs; Acme's provision config tried to change them.
    let codecs = value("/codecs");
    assert_eq!(codecs["set_by"]["layer"], "account_config");
    let nimbus = codecs["decided_by_lock"].as_str().unwrap();
    assert_eq!(codecs["refused"][0]["locked_by"], nimbus);
    // The unit's own value stands where nothing stronger set one.
    let ring = value("/yealink/phone_setting/ring_type");
    assert!(ring["set_by"]["layer"].is_string(), "{ring}");
    assert_eq!(
        daemon.get("/v1/units/nope/why").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn masked_files_keep_no_secret_of_any_vendor() {
    let (_env, daemon) = demo_daemon().await;
    for (unit, _, _) in PHONES {
        let view = daemon.get(&format!("/v1/units/{unit}")).await;
        for file in view.json["files"].as_object().unwrap().keys() {
            let path = format!("/v1/units/{unit}/files/{file}");
            let plain = daemon.get(&path).await;
            let masked = daemon.get(&format!("{path}?masked=true")).await;
            assert_eq!(masked.status, StatusCode::OK, "{path}");
            assert!(
                !masked.text.contains("demo-sip-secret")
                    && !masked.text.contains("demo-provisioning-secret"),
                "{path}:\n{}",
                masked.text
            );
            if plain.text.contains("demo-sip-secret") {
                assert!(masked.text.contains("••••••"), "{path}:\n{}", masked.text);
            }
            // Only secret values change: the rest of the file stays.
            assert_eq!(
                plain.text.lines().count(),
                masked.text.lines().count(),
                "{path}"
            );
        }
    }
}

fn urlencoding(q: &str) -> String {
    q.replace(':', "%3A").replace(' ', "%20")
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_hostnames_are_listed_with_their_ttl() {
    let env = TestEnv::new().await;
    load_all_fixtures(&env).await;
    let mut config = env.config("ecallmgr@kz1.example.net");
    config.set("acls.dns_min_ttl_secs", 7);
    let daemon = Daemon::start_ready(&config).await;
    // Ready means the first DNS round was asked: every host is on the board.
    let deadline = Instant::now() + Duration::from_secs(10);
    let hosts = loop {
        let reply = daemon.get("/v1/acls/dns").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let hosts = reply.json["hosts"].as_array().unwrap().clone();
        if hosts.len() >= 3 && hosts.iter().all(|h| h["asked"] == true) {
            break hosts;
        }
        assert!(Instant::now() < deadline, "{}", reply.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let carrier = hosts
        .iter()
        .find(|h| h["host"] == "gw.carrier-c.invalid")
        .unwrap_or_else(|| panic!("{hosts:?}"));
    // A failed lookup is kept for the minimum TTL, then asked again.
    assert!(
        carrier["error"].as_str().unwrap().contains("DNS"),
        "{carrier}"
    );
    assert_eq!(carrier["ttl_secs"], 7, "{carrier}");
    assert!(
        carrier["next_lookup_secs"].as_u64().unwrap() <= 7,
        "{carrier}"
    );
    assert_eq!(carrier["addresses"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_route_tester_says_where_each_attribute_came_from() {
    let env = TestEnv::new().await;
    load_all_fixtures(&env).await;
    let daemon = Daemon::start_ready(&env.config("ecallmgr@kz1.example.net")).await;
    let path = "/v1/routes/example.net/default/33123456789?host=sbc1.example.net&explain=true";
    let reply = daemon.get(path).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let gateways = reply.json["gateways"].as_array().unwrap();
    let transit = gateways
        .iter()
        .find(|g| g["gwid"] == "transit-a-1")
        .unwrap_or_else(|| panic!("{}", reply.text));
    let origins = &transit["origins"];
    // cdr_carrier is the gateway's (folded over its carrier), region the
    // route's destination, progress_timeout the route's too.
    assert_eq!(origins["attrs.cdr_carrier"]["from"], "gateway", "{origins}");
    assert_eq!(
        origins["attrs.cdr_carrier"]["doc"],
        "gateway:example.net:transit-a-1"
    );
    assert_eq!(origins["attrs.region"]["from"], "route", "{origins}");
    assert_eq!(origins["progress_timeout"]["rule"], "rule:33", "{origins}");
    assert_eq!(origins["weight"]["from"], "gateway", "{origins}");
    let local = gateways
        .iter()
        .find(|g| g["gwid"] == "sbc1-egress")
        .unwrap();
    assert_eq!(local["origins"]["priority"]["local_bonus"], true, "{local}");
    // Without explain the answer is the proxies' own, unchanged.
    let plain = daemon
        .get("/v1/routes/example.net/default/33123456789?host=sbc1.example.net")
        .await;
    assert!(
        plain.json["gateways"][0].get("origins").is_none(),
        "{}",
        plain.text
    );
}
