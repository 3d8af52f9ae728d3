//! The phones configuration API and admin read API through the real daemon:
//! each verb, each kind of refused write with every problem listed, stale
//! `_rev`/`If-Match`, ancestors' locks (409), the hierarchical provision
//! config, unit options, admin auth, and that an accepted write reaches the
//! served file.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::phones::{ACME, MAC, PhonesEnv, REALM, YEALINK_UA, get, wait_status};
use crate::support::daemon::{Daemon, Reply};

const PROVIDER: &str = "acct-provider";

async fn seed(env: &PhonesEnv) {
    env.seed().await;
    env.unit_doc(
        json!({"_id": ACME, "type": "account", "name": "Acme", "realm": REALM, "tree": [PROVIDER]}),
    )
    .await;
    env.unit_doc(json!({"_id": PROVIDER, "type": "account", "name": "Provider", "realm": "prov.example.net"})).await;
    env.unit_doc(
        json!({"_id": "pc-provider", "type": "provision_config", "account_id": PROVIDER,
                        "config": {"codecs": ["pcmu", "pcma"]}, "locks": {"codecs": true}}),
    )
    .await;
    env.unit_doc(
        json!({"_id": "pm-yealink", "type": "phone_model", "brand": "yealink",
                        "schema": {"type": "object", "properties": {
                            "vlan": {"type": "integer", "minimum": 1, "maximum": 4094},
                            "ringtone": {"type": "string", "enum": ["Ring1.wav", "Ring2.wav"]}}}}),
    )
    .await;
    env.device(
        json!({"_id": "dev-2", "pvt_type": "device", "pvt_account_id": ACME,
                      "sip": {"username": "bob", "password": "bob-secret-2"}}),
    )
    .await;
    env.device(
        json!({"_id": "dev-other", "pvt_type": "device", "pvt_account_id": "acct-other",
                      "sip": {"username": "eve", "password": "x"}}),
    )
    .await;
}

async fn call(
    daemon: &Daemon,
    method: Method,
    path: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> Reply {
    let mut request = daemon.http().request(method, daemon.api_url(path));
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    if let Some(rev) = if_match {
        request = request.header("If-Match", rev);
    }
    daemon
        .try_send(request)
        .await
        .expect("the api listener answers")
}

fn problem_paths(reply: &Reply) -> Vec<(String, bool)> {
    reply.json["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems in {}", reply.text))
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["locked"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn units_are_validated_before_writing_and_accepted_writes_are_served() {
    let env = PhonesEnv::new().await;
    seed(&env).await;
    let daemon = Daemon::start_ready(&env.config()).await;
    wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::OK,
    )
    .await;
    let units = format!("/v1/accounts/{ACME}/units");

    let bad = json!({"name": 7, "mac_address": "80:5e:c0:12:34:56", "brand": "yealink", "model": "t46s",
                     "config": {"vlan": 5000, "ringtone": "Ring9.wav"},
                     "lines": [{"line": 1, "device_id": "dev-other"}, {"line": 1, "device_id": "dev-missing"}],
                     "profiles": ["nope"], "policies": ["unit-1"]});
    let reply = call(&daemon, Method::POST, &units, Some(bad), None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert_eq!(
        problem_paths(&reply),
        [
            ("/config/ringtone".into(), false),
            ("/config/vlan".into(), false),
            ("/lines/0/device_id".into(), false),
            ("/lines/1/device_id".into(), false),
            ("/lines/1/line".into(), false),
            ("/mac_address".into(), false),
            ("/name".into(), false),
            ("/policies/0".into(), false),
            ("/profiles/0".into(), false),
        ]
    );
    assert!(
        reply.json["problems"][5]["reason"]
            .as_str()
            .unwrap()
            .contains("unit-1"),
        "the duplicate MAC names the unit"
    );

    let locked = json!({"mac_address": "805ec0000002", "brand": "yealink", "model": "t46s", "config": {"codecs": ["g729"]}});
    let reply = call(&daemon, Method::POST, &units, Some(locked), None).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert_eq!(problem_paths(&reply), [("/config/codecs".into(), true)]);
    assert!(
        reply.json["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains(PROVIDER)
    );

    let good = json!({"_id": "unit-2", "name": "Desk 2", "mac_address": "80-5E-C0-00-00-02", "brand": "yealink", "model": "t46s",
                      "config": {"vlan": 20}, "lines": [{"line": 1, "device_id": "dev-2"}]});
    let created = call(&daemon, Method::POST, &units, Some(good), None).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let rev = created.json["_rev"].as_str().unwrap().to_string();
    assert_eq!(created.json["account_id"], ACME);
    assert_eq!(created.json["type"], "unit");
    // The write waited for the build: the file is served already.
    let file = get(
        &daemon,
        "/805ec0000002.cfg",
        REALM,
        "Yealink SIP-T46S 66.86.0.15 80:5e:c0:00:00:02",
    )
    .await;
    assert_eq!(file.status, StatusCode::OK);
    assert!(
        file.text.contains("bob-secret-2") && file.text.contains("vlan = 20"),
        "{}",
        file.text
    );

    let one = call(&daemon, Method::GET, &format!("{units}/unit-2"), None, None).await;
    assert_eq!(one.json["_rev"], rev.as_str());
    let list = call(&daemon, Method::GET, &units, None, None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(
        list.json["units"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["_id"] == "unit-2")
    );
    assert_eq!(list.json["status"]["unit-2"]["served"], true);

    // A stale revision, in the body or in If-Match, is refused with 409.
    let stale = json!({"_rev": "1-00000000000000000000000000000000", "mac_address": "805ec0000002", "brand": "yealink", "model": "t46s"});
    let reply = call(
        &daemon,
        Method::PUT,
        &format!("{units}/unit-2"),
        Some(stale),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert_eq!(problem_paths(&reply), [("/_rev".into(), true)]);
    let reply = call(
        &daemon,
        Method::PATCH,
        &format!("{units}/unit-2"),
        Some(json!({"config": {"vlan": 30}})),
        Some("\"1-0\""),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);

    let patched = call(
        &daemon,
        Method::PATCH,
        &format!("{units}/unit-2"),
        Some(json!({"config": {"vlan": 30}})),
        Some(&rev),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(
        patched.json["lines"][0]["device_id"], "dev-2",
        "a patch keeps the rest"
    );
    assert_ne!(patched.json["_rev"], rev.as_str());
    let file = get(
        &daemon,
        "/805ec0000002.cfg",
        REALM,
        "Yealink SIP-T46S 66.86.0.15 80:5e:c0:00:00:02",
    )
    .await;
    assert!(file.text.contains("vlan = 30"), "{}", file.text);

    let view = call(&daemon, Method::GET, "/v1/units/unit-2", None, None).await;
    assert_eq!(view.json["config"]["vlan"], 30);
    assert_eq!(view.json["config"]["codecs"], json!(["pcmu", "pcma"]));
    assert_eq!(view.json["provenance"]["/codecs"]["doc"], "pc-provider");
    assert_eq!(view.json["provenance"]["/vlan"]["layer"], "unit");
    assert!(view.json["files"]["805ec0000002.cfg"]["etag"].is_string());
    assert!(view.json["common_files"]["y000000000066.cfg"].is_object());
    let raw = call(
        &daemon,
        Method::GET,
        "/v1/units/unit-2/files/805ec0000002.cfg",
        None,
        None,
    )
    .await;
    assert_eq!(raw.text, file.text);

    let deleted = call(
        &daemon,
        Method::DELETE,
        &format!("{units}/unit-2"),
        None,
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    assert_eq!(deleted.json["_deleted"], true);
    let gone = get(
        &daemon,
        "/805ec0000002.cfg",
        REALM,
        "Yealink SIP-T46S 66.86.0.15 80:5e:c0:00:00:02",
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let missing = call(&daemon, Method::GET, &format!("{units}/unit-2"), None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    // Another account's unit is not reachable through this account.
    let other = call(
        &daemon,
        Method::GET,
        &format!("{units}/unit-other"),
        None,
        None,
    )
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let nobody = call(
        &daemon,
        Method::GET,
        "/v1/accounts/acct-nope/units",
        None,
        None,
    )
    .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_profiles_and_provision_configs_follow_the_same_rules() {
    let env = PhonesEnv::new().await;
    seed(&env).await;
    let daemon = Daemon::start_ready(&env.config()).await;
    wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::OK,
    )
    .await;
    let base = format!("/v1/accounts/{ACME}");

    let policy = call(
        &daemon,
        Method::POST,
        &format!("{base}/policies"),
        Some(json!({"_id": "pol-ring", "name": "Ring", "config": {"ringtone": "Ring2.wav"}})),
        None,
    )
    .await;
    assert_eq!(policy.status, StatusCode::CREATED, "{}", policy.text);
    let reply = call(
        &daemon,
        Method::POST,
        &format!("{base}/policies"),
        Some(json!({"config": {"codecs": []}, "name": 3})),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(
        problem_paths(&reply),
        [("/config/codecs".into(), true), ("/name".into(), false)]
    );
    let reply = call(
        &daemon,
        Method::POST,
        &format!("{base}/profiles"),
        Some(json!({"policies": ["pol-ring", "pol-missing"]})),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_paths(&reply), [("/policies/1".into(), false)]);
    let profile = call(
        &daemon,
        Method::POST,
        &format!("{base}/profiles"),
        Some(json!({"_id": "prof-ring", "policies": ["pol-ring"]})),
        None,
    )
    .await;
    assert_eq!(profile.status, StatusCode::CREATED);
    // Give the unit the profile: the policy's value reaches the unit.
    let unit = call(
        &daemon,
        Method::PATCH,
        &format!("{base}/units/unit-1"),
        Some(json!({"profiles": ["prof-ring"]})),
        None,
    )
    .await;
    assert_eq!(unit.status, StatusCode::OK, "{}", unit.text);
    let view = call(&daemon, Method::GET, "/v1/units/unit-1", None, None).await;
    assert_eq!(view.json["config"]["ringtone"], "Ring2.wav");
    assert_eq!(view.json["provenance"]["/ringtone"]["via"], "prof-ring");
    // A policy now used by a Yealink is checked against its schema.
    let reply = call(
        &daemon,
        Method::PUT,
        &format!("{base}/policies/pol-ring"),
        Some(json!({"config": {"ringtone": "Ring7.wav"}})),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert_eq!(problem_paths(&reply), [("/config/ringtone".into(), false)]);

    let pc_path = format!("{base}/provision_config");
    let reply = call(&daemon, Method::GET, &pc_path, None, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = call(
        &daemon,
        Method::PUT,
        &pc_path,
        Some(json!({"config": {"codecs": ["g722"], "vlan": 99999}, "locks": {"vlan": true}})),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert_eq!(
        problem_paths(&reply),
        [
            ("/config/codecs".into(), true),
            ("/config/vlan".into(), false)
        ]
    );
    let pc = call(
        &daemon,
        Method::PUT,
        &pc_path,
        Some(json!({"config": {"vlan": 40}, "locks": {"vlan": true}})),
        None,
    )
    .await;
    assert_eq!(pc.status, StatusCode::OK, "{}", pc.text);
    let file = get(&daemon, "/805ec0123456.cfg", REALM, YEALINK_UA).await;
    assert!(
        file.text.contains("vlan = 40"),
        "account parameters win over the unit's: {}",
        file.text
    );
    let patched = call(
        &daemon,
        Method::PATCH,
        &pc_path,
        Some(json!({"defaults": {"ringtone": "Ring1.wav"}})),
        Some(pc.json["_rev"].as_str().unwrap()),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.json["config"]["vlan"], 40);
    // The account's own lock now binds its units.
    let reply = call(
        &daemon,
        Method::PATCH,
        &format!("{base}/units/unit-1"),
        Some(json!({"config": {"vlan": 12}})),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(problem_paths(&reply), [("/config/vlan".into(), true)]);

    let chain = call(
        &daemon,
        Method::GET,
        &format!("{pc_path}?hierarchical=true"),
        None,
        None,
    )
    .await;
    assert_eq!(chain.status, StatusCode::OK, "{}", chain.text);
    let accounts: Vec<&str> = chain.json["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["account_id"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, [PROVIDER, ACME]);
    assert_eq!(
        chain.json["chain"][0]["provision_config"]["_id"],
        "pc-provider"
    );
    assert_eq!(
        chain.json["locks_from_ancestors"],
        json!([{"path": "/codecs", "locked_by": PROVIDER}])
    );
    assert_eq!(
        chain.json["effective_locks"],
        json!([{"path": "/codecs", "locked_by": PROVIDER}, {"path": "/vlan", "locked_by": ACME}])
    );
    let deleted = call(&daemon, Method::DELETE, &pc_path, None, None).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let file = get(&daemon, "/805ec0123456.cfg", REALM, YEALINK_UA).await;
    assert!(file.text.contains("vlan = 10"), "{}", file.text);
    let reply = call(
        &daemon,
        Method::DELETE,
        &format!("{base}/policies/pol-ring"),
        None,
        Some("\"9-x\""),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let reply = call(
        &daemon,
        Method::DELETE,
        &format!("{base}/policies/pol-ring"),
        None,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn unit_options_list_the_catalogue_and_accept_new_models() {
    let env = PhonesEnv::new().await;
    seed(&env).await;
    let daemon = Daemon::start_ready(&env.config()).await;
    let root = call(&daemon, Method::GET, "/v1/unit_options", None, None).await;
    assert_eq!(root.status, StatusCode::OK, "{}", root.text);
    assert!(root.json["vendors"]["yealink"].is_object());
    let vendor = call(&daemon, Method::GET, "/v1/unit_options/yealink", None, None).await;
    assert!(
        vendor.json["families"]["t4x"].is_object(),
        "{}",
        vendor.text
    );
    let family = call(
        &daemon,
        Method::GET,
        "/v1/unit_options/yealink/t4x",
        None,
        None,
    )
    .await;
    assert!(family.json["models"]["t46s"].is_object());
    let model = call(
        &daemon,
        Method::GET,
        "/v1/unit_options/yealink/t4x/t46s",
        None,
        None,
    )
    .await;
    assert_eq!(
        model.json["schema"]["properties"]["vlan"]["maximum"], 4094,
        "the phone_model document extends it"
    );
    let reply = call(
        &daemon,
        Method::PUT,
        "/v1/unit_options/yealink/t9x/t99",
        Some(json!({"description": "x"})),
        None,
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "the family does not exist: {}",
        reply.text
    );
    let reply = call(
        &daemon,
        Method::PUT,
        "/v1/unit_options/yealink/t4x/t48u",
        Some(json!({"schema": {"type": "strange"}})),
        None,
    )
    .await;
    assert_eq!(problem_paths(&reply), [("/schema/type".into(), false)]);
    let put = call(&daemon, Method::PUT, "/v1/unit_options/yealink/t4x/t48u",
                   Some(json!({"description": "SIP-T48U", "meta": {"file_id": "65"}, "schema": {"properties": {"vlan": {"default": 7}}}})), None).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let model = call(
        &daemon,
        Method::GET,
        "/v1/unit_options/yealink/t4x/t48u",
        None,
        None,
    )
    .await;
    assert_eq!(model.json["description"], "SIP-T48U");
    assert_eq!(model.json["defaults"]["vlan"], 7);
    // A unit of the new model is accepted and served.
    let unit = json!({"mac_address": "805ec0000048", "brand": "yealink", "model": "t48u"});
    let created = call(
        &daemon,
        Method::POST,
        &format!("/v1/accounts/{ACME}/units"),
        Some(unit),
        None,
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let file = get(
        &daemon,
        "/805ec0000048.cfg",
        REALM,
        "Yealink SIP-T48U 1.0 80:5e:c0:00:00:48",
    )
    .await;
    assert_eq!(file.status, StatusCode::OK, "{}", file.text);
    assert!(file.text.contains("vlan = 7"), "{}", file.text);
    let deleted = call(
        &daemon,
        Method::DELETE,
        "/v1/unit_options/yealink/t4x/t48u",
        None,
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    let shipped = call(
        &daemon,
        Method::DELETE,
        "/v1/unit_options/yealink/t4x/t46s",
        None,
        None,
    )
    .await;
    assert_eq!(
        shipped.status,
        StatusCode::NOT_FOUND,
        "the shipped catalogue stays"
    );
    let gone = call(
        &daemon,
        Method::GET,
        "/v1/unit_options/yealink/t4x/t48u",
        None,
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_phones_admin_api_needs_the_admin_token() {
    let env = PhonesEnv::new().await;
    seed(&env).await;
    let mut config = env.config();
    config.set("http.api.admin_token", "t0ken");
    let daemon = Daemon::start_ready(&config).await;
    for path in [
        "/v1/units/unit-1",
        "/v1/unit_options",
        &format!("/v1/accounts/{ACME}/units"),
        "/v1/units/unit-1/requests",
    ] {
        let reply = call(&daemon, Method::GET, path, None, None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        let authed = daemon
            .try_send(daemon.http().get(daemon.api_url(path)).bearer_auth("t0ken"))
            .await
            .unwrap();
        assert_ne!(authed.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let reply = call(
        &daemon,
        Method::POST,
        &format!("/v1/accounts/{ACME}/units"),
        Some(json!({"mac_address": MAC})),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

/// Every verb on the policy and profile collections, with the real
/// catalogue's schema (Yealink's `ring_type` enum) deciding what a policy a
/// Yealink uses may say.
#[tokio::test(flavor = "multi_thread")]
async fn every_verb_on_policies_and_profiles_against_the_real_catalogue() {
    let env = PhonesEnv::new().await;
    seed(&env).await;
    let daemon = Daemon::start_ready(&env.config()).await;
    wait_status(
        &daemon,
        "/805ec0123456.cfg",
        REALM,
        YEALINK_UA,
        StatusCode::OK,
    )
    .await;
    let base = format!("/v1/accounts/{ACME}");
    let ring = |tone: &str| json!({"yealink": {"phone_setting": {"ring_type": tone}}});
    for (collection, body, changed, patch) in [
        (
            "policies",
            json!({"_id": "pol-x", "name": "X", "config": ring("Ring4.wav")}),
            json!({"name": "X2", "config": ring("Ring6.wav")}),
            json!({"name": "X3"}),
        ),
        (
            "profiles",
            json!({"_id": "prof-x", "name": "X", "policies": ["pol-x"]}),
            json!({"name": "X2", "policies": []}),
            json!({"name": "X3"}),
        ),
    ] {
        let list = format!("{base}/{collection}");
        let one = format!("{list}/{}", body["_id"].as_str().unwrap());
        let created = call(&daemon, Method::POST, &list, Some(body.clone()), None).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        let rev = created.json["_rev"].as_str().unwrap().to_string();
        let got = call(&daemon, Method::GET, &one, None, None).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.json["name"], "X");
        let listed = call(&daemon, Method::GET, &list, None, None).await;
        assert!(
            listed.text.contains(body["_id"].as_str().unwrap()),
            "{}",
            listed.text
        );
        let mut replaced = changed.clone();
        replaced["_rev"] = json!(rev);
        let put = call(&daemon, Method::PUT, &one, Some(replaced), None).await;
        assert_eq!(put.status, StatusCode::OK, "{collection}: {}", put.text);
        let new_rev = put.json["_rev"].as_str().unwrap().to_string();
        assert_ne!(new_rev, rev);
        // The first revision is stale now.
        let stale = call(
            &daemon,
            Method::PATCH,
            &one,
            Some(patch.clone()),
            Some(&rev),
        )
        .await;
        assert_eq!(stale.status, StatusCode::CONFLICT, "{collection}");
        let patched = call(&daemon, Method::PATCH, &one, Some(patch), Some(&new_rev)).await;
        assert_eq!(
            patched.status,
            StatusCode::OK,
            "{collection}: {}",
            patched.text
        );
        assert_eq!(patched.json["name"], "X3");
        if collection == "profiles" {
            assert_eq!(patched.json["policies"], json!([]), "PATCH merges");
        }
    }
    // A policy the Yealink uses (through a profile) is checked against the
    // T46S's schema: an unknown ring tone and a VLAN out of range are both
    // listed.
    let used = call(
        &daemon,
        Method::PATCH,
        &format!("{base}/profiles/prof-x"),
        Some(json!({"policies": ["pol-x"]})),
        None,
    )
    .await;
    assert_eq!(used.status, StatusCode::OK, "{}", used.text);
    let unit = call(
        &daemon,
        Method::PATCH,
        &format!("{base}/units/unit-1"),
        Some(json!({"profiles": ["prof-x"]})),
        None,
    )
    .await;
    assert_eq!(unit.status, StatusCode::OK, "{}", unit.text);
    let bad = json!({"config": {"yealink": {"phone_setting": {"ring_type": "Ring99.wav"},
                                "static": {"network": {"vlan": {"internet_port_vid": 5000}}}}}});
    let refused = call(
        &daemon,
        Method::PATCH,
        &format!("{base}/policies/pol-x"),
        Some(bad),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert_eq!(
        problem_paths(&refused),
        [
            ("/config/yealink/phone_setting/ring_type".into(), false),
            (
                "/config/yealink/static/network/vlan/internet_port_vid".into(),
                false
            ),
        ]
    );
    // An accepted policy edit reaches the served file.
    let ok = call(
        &daemon,
        Method::PATCH,
        &format!("{base}/policies/pol-x"),
        Some(json!({"config": ring("Ring8.wav")})),
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let view = call(&daemon, Method::GET, "/v1/units/unit-1", None, None).await;
    assert_eq!(
        view.json["config"]["yealink"]["phone_setting"]["ring_type"], "Ring8.wav",
        "{}",
        view.text
    );
    for path in ["profiles/prof-x", "policies/pol-x"] {
        let path = format!("{base}/{path}");
        let gone = call(&daemon, Method::DELETE, &path, None, None).await;
        assert_eq!(gone.status, StatusCode::OK, "{path}: {}", gone.text);
        let missing = call(&daemon, Method::GET, &path, None, None).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{path}");
    }
}
