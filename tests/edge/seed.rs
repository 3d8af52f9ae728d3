//! One test per request the seed's provisioning-store document describes,
//! checked from outside as a seed client sees it: status, the exact set of
//! keys (the seed's, plus the documented additive extensions named in
//! `EXT`), their JSON types and message strings, and the documented error
//! replies. Also issue 15's scenario literally, an edge registered after
//! the daemon started, and a registry database created after it started.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{EdgeEnv, KEY, file, read_tar};
use crate::common::TestEnv;
use crate::support::daemon::{Daemon, Reply};
use crate::support::eventually;

/// The issue's edge, as the registry holds it.
fn issue_edge() -> Value {
    json!({"type": "edge", "edge_id": "e0a1b2", "mac_addresses": ["AA:BB:CC:00:11:22"],
           "edge_type": "static", "edge_sub_type": "default"})
}

/// The issue's edge under a document id of ours.
fn issue_edge_as(doc_id: &str) -> Value {
    let mut edge = issue_edge();
    edge["_id"] = json!(doc_id);
    edge
}

/// A JSON type name, to compare shapes.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_u64() || n.is_i64() => "int",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// Asserts `value` is an object with exactly these keys of these types.
#[track_caller]
fn shape(value: &Value, expected: &[(&str, &str)]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    let mut got: Vec<(&str, &str)> = object.iter().map(|(k, v)| (k.as_str(), kind(v))).collect();
    let mut want = expected.to_vec();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "{value}");
}

/// Asserts a reply's status and exact JSON body.
#[track_caller]
fn answer(reply: &Reply, status: StatusCode, body: Value) {
    assert_eq!(
        (reply.status, &reply.json),
        (status, &body),
        "{}",
        reply.text
    );
}

/// Asserts a seed-style refusal `{"message", "description"[, "reason"]}`.
#[track_caller]
fn refused(reply: &Reply, status: StatusCode, message: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.json["message"], message, "{}", reply.text);
    assert!(reply.json["description"].is_string(), "{}", reply.text);
    let keys: Vec<&String> = reply.json.as_object().unwrap().keys().collect();
    assert!(
        keys.iter()
            .all(|k| ["message", "description", "reason"].contains(&k.as_str())),
        "{}",
        reply.text
    );
}

/// `{"message": {field: text}}`, the seed's field error.
#[track_caller]
fn field_error(reply: &Reply, field: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    shape(&reply.json, &[("message", "object")]);
    shape(&reply.json["message"], &[(field, "string")]);
}

impl EdgeEnv {
    /// The issue's configuration: template `ntp.conf` with two versions,
    /// master `timesync`, linked, assigned to (static, default). Returns
    /// (template id, master id).
    async fn ntp(&self) -> (u64, u64) {
        let t = self.template("ntp.conf", "/etc/ntp.conf").await;
        self.version(t, b"server 0.pool.ntp.org iburst\n", "first")
            .await;
        self.version(t, b"server 1.pool.ntp.org iburst\n", "second")
            .await;
        let m = self.master("timesync", &[]).await;
        self.link(m, t).await;
        answer(
            &self.assign(m, "static", "default").await,
            StatusCode::OK,
            json!({"message": "Package assigned"}),
        );
        (t, m)
    }
}

/// Issue 15 literally: a registry database that exists before the daemon
/// starts, an `edge_config` the daemon creates, the calls right after
/// `/readyz`, the edge put in the registry (any `_id`) one second before
/// it asks. It gets its whole set, its package, then the delete as a delta.
#[tokio::test(flavor = "multi_thread")]
async fn issue_15_a_fresh_edge_gets_its_whole_set_then_the_delete() {
    let env = TestEnv::new().await;
    let registry = format!("{}_edge_registry", env.names.prefix);
    env.couch.create_db(&registry).await;
    let mut config = env.config("edge-issue15");
    config.set("edge.download_key", KEY);
    // A new user's timings: the daemon notices databases it did not see
    // at start-up only every 5 s.
    config.set("feeds.missing_db_poll_ms", 5000);
    let daemon = Daemon::start_ready(&config).await;
    let e = EdgeEnv { daemon, env };
    let (t, m) = e.ntp().await;
    e.env.couch.post(&registry, &issue_edge()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let set = e.template_set("e0a1b2", None).await;
    assert_eq!(
        set,
        json!({"data": [{
            "name": "timesync", "description": "a master package", "status": 1,
            "execution_sequence": null, "master_package_id": m,
            "config_template": [{
                "name": "ntp.conf", "description": "ntp.conf template", "path": "/etc/ntp.conf",
                "owner": "root", "group": "root", "permissions": 644, "template_id": t,
                "latest_version": {"version_no": "0.02", "comment": "second"},
            }],
        }], "latest_set_version": "0.05"})
    );
    let (reply, bytes) = e.package("mac_address=aa-bb-cc-00-11-22").await;
    assert_eq!(reply["data"], "Package generated", "{reply}");
    assert_eq!(reply["edge_id"], "e0a1b2");
    let entries = read_tar(&bytes.unwrap());
    assert_eq!(
        file(&entries, "timesync/ntp.conf"),
        b"server 1.pool.ntp.org iburst\n"
    );

    answer(
        &e.send(
            e.daemon
                .http()
                .delete(e.url(&format!("/master_package/{m}/"))),
        )
        .await,
        StatusCode::OK,
        json!({"message": "Master Package deleted"}),
    );
    let delta = e.template_set("e0a1b2", Some("0.05")).await;
    assert_eq!(delta["latest_set_version"], "0.06");
    assert_eq!(delta["data"].as_array().unwrap().len(), 1, "{delta}");
    assert_eq!(delta["data"][0]["master_package_id"], m);
    assert_eq!(delta["data"][0]["status"], 0);
    let (reply, bytes) = e
        .package("mac_address=aa-bb-cc-00-11-22&set_version=0.05")
        .await;
    assert_eq!(reply["latest_set_version"], "0.06");
    let entries = read_tar(&bytes.unwrap());
    assert_eq!(file(&entries, "timesync/uninstall.sh"), b"echo uninstall\n");
    assert!(
        !entries.iter().any(|e| e.path == "timesync/ntp.conf"),
        "a deleted package ships only its uninstall script"
    );
    // Up to date: nothing more.
    let none = e.template_set("e0a1b2", Some("0.06")).await;
    assert_eq!(none, json!({"data": [], "latest_set_version": "0.06"}));
}

/// An edge put in the registry after the daemon started (and after the
/// configuration) gets everything at once.
#[tokio::test(flavor = "multi_thread")]
async fn an_edge_registered_after_start_gets_its_whole_set() {
    let e = EdgeEnv::start().await;
    let (_, m) = e.ntp().await;
    let reply = e.get("/template_set/latest?edge_id=e0a1b2").await;
    refused(
        &reply,
        StatusCode::NOT_FOUND,
        "Could not find resource on DP server",
    );
    e.register(&[issue_edge_as("late-edge")]).await;
    let set = e.template_set("e0a1b2", None).await;
    assert_eq!(set["data"][0]["master_package_id"], m);
    assert_eq!(
        set["data"][0]["config_template"][0]["latest_version"]["version_no"],
        "0.02"
    );
}

/// A registry database that appears after the daemon started (here:
/// deleted, then created again) is found within `feeds.missing_db_poll_ms`
/// (plus the load and the build).
#[tokio::test(flavor = "multi_thread")]
async fn a_registry_database_created_after_start_is_found() {
    const POLL_MS: u64 = 1000;
    let e = EdgeEnv::start_with(|c| {
        c.set("feeds.missing_db_poll_ms", POLL_MS as i64);
    })
    .await;
    e.ntp().await;
    let registry = e.db("edge_registry");
    e.env.couch.delete_db(&registry).await;
    // Let the follower see it gone (it polls every POLL_MS).
    tokio::time::sleep(Duration::from_millis(POLL_MS * 2)).await;
    e.env.couch.create_db(&registry).await;
    e.env.couch.post(&registry, &issue_edge()).await;
    let created = Instant::now();
    eventually(
        "the edge in the re-created registry",
        Duration::from_secs(20),
        async || match e.get("/template_set/latest?edge_id=e0a1b2").await {
            r if r.status == StatusCode::OK => Ok(()),
            r => Err(r.text),
        },
    )
    .await;
    let took = created.elapsed();
    assert!(
        took <= Duration::from_millis(POLL_MS + 2000),
        "found after {took:?} (poll {POLL_MS} ms)"
    );
    let set = e.template_set("e0a1b2", None).await;
    assert_eq!(set["data"][0]["name"], "timesync");
}

// -- config template API --------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn template_create() {
    let e = EdgeEnv::start().await;
    let body = json!({"name": "ntp.conf", "description": "time servers", "owner": "root",
                      "group": "root", "permissions": 644, "path": "/etc/ntp.conf"});
    let reply = e.json(Method::POST, "/config_template/", &body).await;
    answer(
        &reply,
        StatusCode::OK,
        json!({"message": "Template added", "template_id": 1}),
    );
    let reply = e.json(Method::POST, "/config_template/", &body).await;
    answer(
        &reply,
        StatusCode::OK,
        json!({"message": "Template added", "template_id": 2}),
    );
    // Errors: a missing key names it.
    let reply = e
        .json(
            Method::POST,
            "/config_template/",
            &json!({"description": "d"}),
        )
        .await;
    field_error(&reply, "name");
}

#[tokio::test(flavor = "multi_thread")]
async fn template_version() {
    let e = EdgeEnv::start().await;
    let t = e.template("ntp.conf", "/etc/ntp.conf").await;
    let reply = e
        .form(
            Method::POST,
            &format!("/config_template/version/{t}/"),
            &[
                ("template_file", Some("ntp.conf"), b"server a\n"),
                ("comment", None, b"first"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The seed's message; version_no and set_version are additive.
    shape(
        &reply.json,
        &[
            ("message", "string"),
            ("version_no", "string"),
            ("set_version", "string"),
        ],
    );
    assert_eq!(reply.json["message"], "Template version added");
    assert_eq!(reply.json["version_no"], "0.01");
    let reply = e
        .form(
            Method::POST,
            "/config_template/version/99/",
            &[("template_file", Some("f"), b"x")],
        )
        .await;
    refused(&reply, StatusCode::NOT_FOUND, "Template version not added");
}

#[tokio::test(flavor = "multi_thread")]
async fn template_retrieve() {
    let e = EdgeEnv::start().await;
    answer(
        &e.get("/config_template/").await,
        StatusCode::OK,
        json!({"data": []}),
    );
    e.template("ntp.conf", "/etc/ntp.conf").await;
    e.template("motd", "/etc/motd").await;
    let reply = e.get("/config_template/").await;
    answer(
        &reply,
        StatusCode::OK,
        json!({"data": [
            {"id": 1, "name": "ntp.conf", "description": "ntp.conf template"},
            {"id": 2, "name": "motd", "description": "motd template"},
        ]}),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn template_download() {
    let e = EdgeEnv::start().await;
    let t = e.template("ntp.conf", "/etc/ntp.conf").await;
    let reply = e.get(&format!("/config_template/version/{t}/")).await;
    answer(
        &reply,
        StatusCode::NOT_FOUND,
        json!({"message": "Template file not found"}),
    );
    e.version(t, b"server a\n", "first").await;
    e.version(t, b"server b\n", "second").await;
    let reply = e.get(&format!("/config_template/version/{t}/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.text, "server b\n",
        "the latest version, byte for byte"
    );
    let reply = e.get("/config_template/version/42/").await;
    answer(
        &reply,
        StatusCode::NOT_FOUND,
        json!({"message": "Template file not found"}),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn template_assign_to_master() {
    let e = EdgeEnv::start().await;
    let t = e.template("ntp.conf", "/etc/ntp.conf").await;
    let m = e.master("timesync", &[]).await;
    let link = |m: u64, t: u64| {
        e.send(
            e.daemon
                .http()
                .post(e.url(&format!("/master_package_config/{m}/assign/{t}/"))),
        )
    };
    answer(
        &link(m, t).await,
        StatusCode::OK,
        json!({"message": "Master package config assigned"}),
    );
    answer(
        &link(m, t).await,
        StatusCode::OK,
        json!({"message": "Master package config already assigned"}),
    );
    refused(
        &link(m, 99).await,
        StatusCode::BAD_REQUEST,
        "Master package config not assigned",
    );
    refused(
        &link(99, t).await,
        StatusCode::BAD_REQUEST,
        "Master package config not assigned",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn template_list_master_configs() {
    let e = EdgeEnv::start().await;
    let t = e.template("ntp.conf", "/etc/ntp.conf").await;
    e.version(t, b"a", "first").await;
    e.version(t, b"b", "second").await;
    let m = e.master("timesync", &[]).await;
    answer(
        &e.get(&format!("/config_template/{m}/")).await,
        StatusCode::OK,
        json!({"data": []}),
    );
    e.link(m, t).await;
    let reply = e.get(&format!("/config_template/{m}/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    shape(&reply.json, &[("data", "list")]);
    let entry = &reply.json["data"][0];
    shape(
        entry,
        &[
            ("id", "int"),
            ("name", "string"),
            ("description", "string"),
            ("version_no", "number"),
        ],
    );
    assert_eq!(entry["version_no"], 0.02);
    assert_eq!(entry["name"], "ntp.conf");
    answer(
        &e.get("/config_template/77/").await,
        StatusCode::NOT_FOUND,
        json!({"message": "Could not find master id 77"}),
    );
}

// -- master package API --------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn master_create() {
    let e = EdgeEnv::start().await;
    let reply = e
        .form(
            Method::POST,
            "/master_package/",
            &[
                ("name", None, b"timesync"),
                ("description", None, b"time"),
                ("uninstall_file", Some("u.sh"), b"echo u\n"),
                ("pre_script_file", Some("pre.sh"), b"echo pre\n"),
                ("post_script_files", Some("post.sh"), b"echo post\n"),
                ("path", None, b"/etc"),
                ("user", None, b"root"),
                ("group", None, b"root"),
                ("permission", None, b"644"),
            ],
        )
        .await;
    // The seed's message; master_id is additive.
    answer(
        &reply,
        StatusCode::OK,
        json!({"message": "Master Package added", "master_id": 1}),
    );
    let reply = e
        .form(
            Method::POST,
            "/master_package/",
            &[("description", None, b"d")],
        )
        .await;
    field_error(&reply, "name");
}

#[tokio::test(flavor = "multi_thread")]
async fn master_retrieve() {
    let e = EdgeEnv::start().await;
    answer(
        &e.get("/master_package/").await,
        StatusCode::OK,
        json!({"data": []}),
    );
    let m = e.master("timesync", &[]).await;
    answer(
        &e.get("/master_package/").await,
        StatusCode::OK,
        json!({"data": [{"id": m, "name": "timesync", "description": "a master package", "status": 1}]}),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn master_update() {
    let e = EdgeEnv::start().await;
    let m = e.master("timesync", &[]).await;
    let reply = e
        .form(
            Method::POST,
            &format!("/master_package/{m}/"),
            &[("description", None, b"time sync")],
        )
        .await;
    answer(
        &reply,
        StatusCode::OK,
        json!({"message": "Master Package updated"}),
    );
    assert_eq!(
        e.get("/master_package/").await.json["data"][0]["description"],
        "time sync"
    );
    let reply = e
        .form(
            Method::POST,
            "/master_package/99/",
            &[("description", None, b"x")],
        )
        .await;
    answer(
        &reply,
        StatusCode::NOT_FOUND,
        json!({"message": "The requested master package is not present"}),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn master_assign() {
    let e = EdgeEnv::start().await;
    let m = e.master("timesync", &[]).await;
    answer(
        &e.assign(m, "static", "default").await,
        StatusCode::OK,
        json!({"message": "Package assigned"}),
    );
    answer(
        &e.assign(m, "static", "default").await,
        StatusCode::OK,
        json!({"message": "Package already assigned"}),
    );
    // Every pair of the seed's table is allowed; others are refused.
    for (t, s) in [
        ("mid", "default"),
        ("mobile", "default"),
        ("mobile", "kontronmetro"),
        ("mobile", "c2cbus"),
        ("mid", "parent_pseudo_tp"),
        ("mid", "child_pseudo_tp"),
        ("static", "nuc"),
        ("static", "ct_static"),
        ("mobile", "railtel_pilot_ec"),
    ] {
        answer(
            &e.assign(m, t, s).await,
            StatusCode::OK,
            json!({"message": "Package assigned"}),
        );
    }
    refused_assignments(&e, m, Method::POST, "Package not assigned").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn master_unassign() {
    let e = EdgeEnv::start().await;
    let m = e.master("timesync", &[]).await;
    e.assign(m, "static", "default").await;
    answer(
        &e.unassign(m, "static", "default").await,
        StatusCode::OK,
        json!({"message": "Package deleted"}),
    );
    // Not assigned (any more): the original's answer.
    answer(
        &e.unassign(m, "static", "default").await,
        StatusCode::OK,
        json!({"message": "Invalid package id"}),
    );
    refused_assignments(&e, m, Method::DELETE, "Package not deleted").await;
}

/// (Un)assignment refusals: an unknown pair, an unknown master package.
async fn refused_assignments(e: &EdgeEnv, m: u64, method: Method, message: &str) {
    for (master, sub) in [(m, "bogus"), (99, "default")] {
        let path = format!("/master_package/assign/{master}/");
        let body = json!({"edge_type": "static", "edge_sub_type": sub});
        let reply = e.json(method.clone(), &path, &body).await;
        refused(&reply, StatusCode::BAD_REQUEST, message);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn master_delete() {
    let e = EdgeEnv::start().await;
    let m = e.master("timesync", &[]).await;
    let delete = |m: u64| {
        e.send(
            e.daemon
                .http()
                .delete(e.url(&format!("/master_package/{m}/"))),
        )
    };
    answer(
        &delete(m).await,
        StatusCode::OK,
        json!({"message": "Master Package deleted"}),
    );
    assert_eq!(e.get("/master_package/").await.json["data"][0]["status"], 0);
    answer(
        &delete(m).await,
        StatusCode::OK,
        json!({"message": "Master Package deleted"}),
    );
    refused(
        &delete(99).await,
        StatusCode::BAD_REQUEST,
        "Master Package not deleted",
    );
}

// -- template set API ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn template_set_retrieve() {
    let e = EdgeEnv::start().await;
    e.ntp().await;
    e.register(&[json!({"_id": "e1", "type": "edge", "edge_id": "e0a1b2",
                        "edge_type": "static", "edge_sub_type": "default"})])
        .await;
    let reply = e.get("/template_set/latest?edge_id=e0a1b2").await;
    assert_eq!(reply.status, StatusCode::OK);
    shape(
        &reply.json,
        &[("data", "list"), ("latest_set_version", "string")],
    );
    let master = &reply.json["data"][0];
    shape(
        master,
        &[
            ("name", "string"),
            ("description", "string"),
            ("status", "int"),
            ("execution_sequence", "null"),
            ("master_package_id", "int"),
            ("config_template", "list"),
        ],
    );
    let template = &master["config_template"][0];
    shape(
        template,
        &[
            ("name", "string"),
            ("description", "string"),
            ("path", "string"),
            ("owner", "string"),
            ("group", "string"),
            ("permissions", "int"),
            ("template_id", "int"),
            ("latest_version", "object"),
        ],
    );
    shape(
        &template["latest_version"],
        &[("version_no", "string"), ("comment", "string")],
    );
    // Up to date: informs the edge with an empty list.
    let latest = reply.json["latest_set_version"]
        .as_str()
        .unwrap()
        .to_string();
    answer(
        &e.get(&format!(
            "/template_set/latest?edge_id=e0a1b2&set_version={latest}"
        ))
        .await,
        StatusCode::OK,
        json!({"data": [], "latest_set_version": latest}),
    );
    // Errors: edge id missing or malformed, unknown edge, bad set version.
    for query in ["", "?edge_id=", "?edge_id=NOT-HEX"] {
        let reply = e.get(&format!("/template_set/latest{query}")).await;
        answer(
            &reply,
            StatusCode::BAD_REQUEST,
            json!({"message": {"edge_id": "Invalid edge id"}}),
        );
    }
    refused(
        &e.get("/template_set/latest?edge_id=ffffff").await,
        StatusCode::NOT_FOUND,
        "Could not find resource on DP server",
    );
    answer(
        &e.get("/template_set/latest?edge_id=e0a1b2&set_version=abc")
            .await,
        StatusCode::BAD_REQUEST,
        json!({"message": {"set_version": "Invalid set version"}}),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_package_generate() {
    let e = EdgeEnv::start().await;
    e.ntp().await;
    e.register(&[issue_edge_as("e1")]).await;
    for query in [
        "mac_address=aa:bb:cc:00:11:22",
        "mac_address=11:11:11:11:11:11|AA-BB-CC-00-11-22",
        "edge_id=e0a1b2",
    ] {
        let reply = e.get(&format!("/config_package?{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}");
        // The seed's four keys; sha256 and size are additive.
        shape(
            &reply.json,
            &[
                ("data", "string"),
                ("path", "string"),
                ("edge_id", "string"),
                ("latest_set_version", "string"),
                ("sha256", "string"),
                ("size", "int"),
            ],
        );
        assert_eq!(reply.json["data"], "Package generated");
        assert_eq!(reply.json["edge_id"], "e0a1b2");
        assert_eq!(reply.json["latest_set_version"], "0.05");
        let bytes = e.download(reply.json["path"].as_str().unwrap()).await;
        assert!(!read_tar(&bytes).is_empty());
    }
    answer(
        &e.get("/config_package?edge_id=e0a1b2&set_version=0.05")
            .await,
        StatusCode::OK,
        json!({"data": "No changes in configuration", "edge_id": "e0a1b2", "latest_set_version": "0.05"}),
    );
    answer(
        &e.get("/config_package?mac_address=00:00:00:00:00:01").await,
        StatusCode::NOT_FOUND,
        json!({"data": "Edge Id not found for given mac_address in DP"}),
    );
    answer(
        &e.get("/config_package").await,
        StatusCode::BAD_REQUEST,
        json!({"message": {"edge_id": "Invalid edge id"}}),
    );
}

// -- telemetry API -------------------------------------------------------------

/// Edges for telemetry: proxy `a00001` (mid) and reporter `c00001`.
async fn reporters(e: &EdgeEnv) {
    e.register(&[
        json!({"_id": "p", "type": "edge", "edge_id": "a00001", "edge_type": "mid", "edge_sub_type": "default"}),
        json!({"_id": "r", "type": "edge", "edge_id": "c00001", "edge_type": "mobile", "edge_sub_type": "default"}),
    ])
    .await;
}

fn report_body(version: &str) -> Value {
    json!({"edge_id": "c00001", "package_name": "c00001-1.tar.gz", "template_set_version": version})
}

async fn telemetry_status(kind: &str, what: &str) {
    let e = EdgeEnv::start().await;
    reporters(&e).await;
    for (status, outcome) in [
        ("success", "Successful"),
        ("failed", "Failed"),
        ("x", "Failed"),
    ] {
        let reply = e
            .report(
                kind,
                "a00001",
                status,
                &report_body("0.01"),
                Some("192.0.2.1"),
            )
            .await;
        answer(
            &reply,
            StatusCode::OK,
            json!({"message": "success", "description": format!("Package {what} {outcome}")}),
        );
    }
    // Without X-Forwarded-For: still 200 (never a 500).
    let reply = e
        .report(kind, "a00001", "success", &report_body("0.01"), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = e
        .report(
            kind,
            "a00001",
            "success",
            &json!({"package_name": "p", "template_set_version": "0.01"}),
            None,
        )
        .await;
    answer(
        &reply,
        StatusCode::BAD_REQUEST,
        json!({"message": {"edge_id": "Invalid edge id"}}),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_package_download_status() {
    telemetry_status("download", "Download").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_package_consumption_status() {
    telemetry_status("consumption", "Consumption").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_reportee_edge_list() {
    let e = EdgeEnv::start().await;
    reporters(&e).await;
    answer(
        &e.get("/edge_telemetry/report_list/").await,
        StatusCode::OK,
        json!({"data": {"edge_id_list": []}}),
    );
    e.report("download", "a00001", "success", &report_body("0.01"), None)
        .await;
    answer(
        &e.get("/edge_telemetry/report_list/").await,
        StatusCode::OK,
        json!({"data": {"edge_id_list": ["c00001"]}}),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_retrieve_edge_info() {
    let e = EdgeEnv::start().await;
    reporters(&e).await;
    e.report("download", "a00001", "success", &report_body("0.01"), None)
        .await;
    e.report(
        "consumption",
        "a00001",
        "failed",
        &report_body("0.01"),
        None,
    )
    .await;
    let reply = e.get("/edge_telemetry/report/c00001").await;
    assert_eq!(reply.status, StatusCode::OK);
    shape(&reply.json, &[("data", "list")]);
    let entry = &reply.json["data"][0];
    shape(
        entry,
        &[
            ("edge_id", "string"),
            ("package_name", "string"),
            ("report", "object"),
            ("template_set_version", "string"),
        ],
    );
    shape(
        &entry["report"],
        &[("downloaded", "object"), ("consumed", "object")],
    );
    // date_time only when the status was successful.
    shape(
        &entry["report"]["downloaded"],
        &[("success", "bool"), ("date_time", "string")],
    );
    shape(&entry["report"]["consumed"], &[("success", "bool")]);
    assert_eq!(entry["report"]["downloaded"]["success"], true);
    assert_eq!(entry["report"]["consumed"]["success"], false);
    answer(
        &e.get("/edge_telemetry/report/dddddd").await,
        StatusCode::OK,
        json!({"data": []}),
    );
}

/// The report object of the info list and the info report.
fn info_shape(data: &Value) {
    shape(
        data,
        &[
            ("edge_id", "string"),
            ("package_name", "string"),
            ("template_set_version", "string"),
            ("ip_address", "string"),
            ("consumed", "bool"),
            ("downloaded", "bool"),
            ("downloaded_time", "string"),
            ("consumed_time", "null"),
        ],
    );
}

/// A daemon where `c00001` reported a successful download of set version
/// 0.02 through `a00001`, from 192.0.2.7.
async fn reported() -> EdgeEnv {
    let e = EdgeEnv::start().await;
    reporters(&e).await;
    let body = report_body("0.02");
    let reply = e
        .report("download", "a00001", "success", &body, Some("192.0.2.7"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    e
}

/// The reports' `meta`: code 200 and the time of the call.
#[track_caller]
fn meta_200(meta: &Value) {
    shape(meta, &[("code", "int"), ("timestamp", "string")]);
    assert_eq!(meta["code"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_report_info_list() {
    let e = reported().await;
    let reply = e.get("/edge_telemetry_info_list/report/1/").await;
    assert_eq!(reply.status, StatusCode::OK);
    shape(
        &reply.json,
        &[
            ("meta", "object"),
            ("data", "list"),
            ("pagination", "object"),
        ],
    );
    meta_200(&reply.json["meta"]);
    info_shape(&reply.json["data"][0]);
    assert_eq!(reply.json["data"][0]["ip_address"], "192.0.2.7");
    assert_eq!(
        reply.json["pagination"],
        json!({"total": 1, "page": 1, "per_page": 20})
    );
    let beyond = e.get("/edge_telemetry_info_list/report/2/").await;
    assert_eq!(beyond.json["data"], json!([]));
    assert_eq!(
        beyond.json["pagination"],
        json!({"total": 1, "page": 2, "per_page": 20})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_info_report() {
    let e = reported().await;
    let reply = e.get("/edge_telemetry_info/report/c00001/").await;
    assert_eq!(reply.status, StatusCode::OK);
    shape(&reply.json, &[("meta", "object"), ("data", "object")]);
    meta_200(&reply.json["meta"]);
    info_shape(&reply.json["data"]);
    assert_eq!(reply.json["data"]["template_set_version"], "0.02");
    let none = e.get("/edge_telemetry_info/report/dddddd/").await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(
        (&none.json["meta"]["code"], &none.json["data"]),
        (&json!(204), &json!({}))
    );
}
