//! Bad input to every writing endpoint — missing keys, wrong JSON types,
//! unknown ids, bodies that are not JSON, oversized uploads — gets a 4xx
//! with a JSON body in the seed's shapes, and changes nothing: the three
//! databases (every document and revision, counters included), the
//! listings and what an edge receives are the same before and after.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{EdgeEnv, Part};
use crate::support::daemon::Reply;

/// Everything a bad request must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    docs: BTreeMap<String, BTreeMap<String, Value>>,
    answers: Vec<Value>,
}

impl EdgeEnv {
    async fn snapshot(&self) -> Snapshot {
        let mut docs = BTreeMap::new();
        for db in ["edge_config", "edge_registry", "edge_telemetry"] {
            docs.insert(
                db.to_string(),
                self.env.couch.docs_by_id(&self.db(db)).await,
            );
        }
        let mut answers = Vec::new();
        for path in [
            "/config_template/",
            "/master_package/",
            "/config_template/1/",
            "/template_set/latest?edge_id=e0a1b2",
            "/edge_telemetry/report/c00001",
        ] {
            answers.push(self.get(path).await.json);
        }
        Snapshot { docs, answers }
    }

    async fn raw(&self, method: Method, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let request = self
            .daemon
            .http()
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body.to_vec());
        self.send(request).await
    }
}

/// A clear refusal: a 4xx status and a JSON object whose `message` says
/// what (a text, or `{field: why}`).
#[track_caller]
fn clear_4xx(reply: &Reply, what: &str) {
    assert!(
        reply.status.is_client_error(),
        "{what}: {} {}",
        reply.status,
        reply.text
    );
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{what}"
    );
    // `config_package`'s not-found answer is the original's `{"data": …}`.
    let message = match (&reply.json["message"], &reply.json["data"]) {
        (Value::Null, data @ Value::String(_)) => data,
        (message, _) => message,
    };
    match message {
        Value::String(text) => assert!(!text.is_empty(), "{what}: {}", reply.text),
        Value::Object(fields) => assert!(
            fields
                .values()
                .all(|v| v.as_str().is_some_and(|t| !t.is_empty())),
            "{what}: {}",
            reply.text
        ),
        _ => panic!("{what}: no message: {}", reply.text),
    }
}

/// A configured store: template 1 (two versions) in master 1, assigned to
/// static/default, edge e0a1b2 of that class, one telemetry report.
async fn configured() -> EdgeEnv {
    let e = EdgeEnv::start_with(|c| {
        c.set("edge.max_upload_bytes", 4096);
    })
    .await;
    let t = e.template("ntp.conf", "/etc/ntp.conf").await;
    e.version(t, b"server a\n", "first").await;
    e.version(t, b"server b\n", "second").await;
    let m = e.master("timesync", &[]).await;
    e.link(m, t).await;
    e.assign(m, "static", "default").await;
    e.register(&[
        json!({"_id": "e", "type": "edge", "edge_id": "e0a1b2", "edge_type": "static", "edge_sub_type": "default"}),
        json!({"_id": "p", "type": "edge", "edge_id": "a00001", "edge_type": "mid", "edge_sub_type": "default"}),
    ])
    .await;
    let reply = e
        .report(
            "download",
            "a00001",
            "success",
            &json!({"edge_id": "c00001", "package_name": "p.tar.gz", "template_set_version": "0.05"}),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    e
}

/// A JSON request, by method and path.
type JsonCase = (&'static str, Method, &'static str, Value);

#[tokio::test(flavor = "multi_thread")]
async fn bad_json_requests_are_refused_and_change_nothing() {
    let e = configured().await;
    let before = e.snapshot().await;
    let tel = "/edge_telemetry/package_download/a00001/success/";
    let cases: Vec<JsonCase> = vec![
        // Missing keys.
        (
            "template without name",
            Method::POST,
            "/config_template/",
            json!({"description": "d"}),
        ),
        (
            "template without description",
            Method::POST,
            "/config_template/",
            json!({"name": "x"}),
        ),
        (
            "master without name",
            Method::POST,
            "/master_package/",
            json!({"description": "d"}),
        ),
        (
            "master without description",
            Method::POST,
            "/master_package/",
            json!({"name": "m"}),
        ),
        (
            "assign without keys",
            Method::POST,
            "/master_package/assign/1/",
            json!({}),
        ),
        (
            "assign without sub-type",
            Method::POST,
            "/master_package/assign/1/",
            json!({"edge_type": "mid"}),
        ),
        (
            "unassign without keys",
            Method::DELETE,
            "/master_package/assign/1/",
            json!({}),
        ),
        (
            "report without package",
            Method::POST,
            tel,
            json!({"edge_id": "c00001", "template_set_version": "0.05"}),
        ),
        (
            "report without version",
            Method::POST,
            tel,
            json!({"edge_id": "c00001", "package_name": "p"}),
        ),
        // Wrong types.
        (
            "numeric template name",
            Method::POST,
            "/config_template/",
            json!({"name": 5, "description": "d"}),
        ),
        (
            "boolean description",
            Method::POST,
            "/config_template/",
            json!({"name": "x", "description": true}),
        ),
        (
            "list description",
            Method::POST,
            "/config_template/",
            json!({"name": "x", "description": ["d"]}),
        ),
        (
            "numeric path",
            Method::POST,
            "/config_template/",
            json!({"name": "x", "description": "d", "path": 7}),
        ),
        (
            "text permissions",
            Method::POST,
            "/config_template/",
            json!({"name": "x", "description": "d", "permissions": "rwx"}),
        ),
        (
            "object owner",
            Method::POST,
            "/config_template/",
            json!({"name": "x", "description": "d", "owner": {"u": 1}}),
        ),
        (
            "boolean master name",
            Method::POST,
            "/master_package/",
            json!({"name": true, "description": "d"}),
        ),
        (
            "numeric script",
            Method::POST,
            "/master_package/",
            json!({"name": "m", "description": "d", "uninstall_file": 3}),
        ),
        (
            "text execution sequence",
            Method::PUT,
            "/master_package/1/",
            json!({"execution_sequence": "soon"}),
        ),
        (
            "text status",
            Method::PUT,
            "/master_package/1/",
            json!({"status": "gone"}),
        ),
        (
            "numeric edge type",
            Method::POST,
            "/master_package/assign/1/",
            json!({"edge_type": 1, "edge_sub_type": "default"}),
        ),
        (
            "list sub-type",
            Method::DELETE,
            "/master_package/assign/1/",
            json!({"edge_type": "static", "edge_sub_type": ["default"]}),
        ),
        (
            "numeric reporting edge",
            Method::POST,
            tel,
            json!({"edge_id": 123456, "package_name": "p", "template_set_version": "0.05"}),
        ),
        (
            "numeric package name",
            Method::POST,
            tel,
            json!({"edge_id": "c00001", "package_name": 1, "template_set_version": "0.05"}),
        ),
        // Unknown ids.
        (
            "update of an unknown master",
            Method::PUT,
            "/master_package/99/",
            json!({"description": "x"}),
        ),
        (
            "assign of an unknown master",
            Method::POST,
            "/master_package/assign/99/",
            json!({"edge_type": "static", "edge_sub_type": "default"}),
        ),
        (
            "unassign of an unknown master",
            Method::DELETE,
            "/master_package/assign/99/",
            json!({"edge_type": "static", "edge_sub_type": "default"}),
        ),
        (
            "assign to an unknown class",
            Method::POST,
            "/master_package/assign/1/",
            json!({"edge_type": "static", "edge_sub_type": "bogus"}),
        ),
        (
            "non-numeric master id",
            Method::PUT,
            "/master_package/abc/",
            json!({"description": "x"}),
        ),
        (
            "report through a malformed proxy id",
            Method::POST,
            "/edge_telemetry/package_download/NOPE/success/",
            json!({"edge_id": "c00001", "package_name": "p", "template_set_version": "0.05"}),
        ),
    ];
    for (what, method, path, body) in cases {
        let reply = e.json(method, path, &body).await;
        clear_4xx(&reply, what);
    }
    // Unknown ids without a body.
    let http = e.daemon.http();
    for (what, request) in [
        (
            "link to an unknown template",
            http.post(e.url("/master_package_config/1/assign/99/")),
        ),
        (
            "link of an unknown master",
            http.post(e.url("/master_package_config/99/assign/1/")),
        ),
        (
            "delete of an unknown master",
            http.delete(e.url("/master_package/99/")),
        ),
        (
            "configs of an unknown master",
            http.get(e.url("/config_template/99/")),
        ),
        (
            "download of an unknown template",
            http.get(e.url("/config_template/version/99/")),
        ),
        (
            "set of an unknown edge",
            http.get(e.url("/template_set/latest?edge_id=ffffff")),
        ),
        (
            "package of an unknown MAC",
            http.get(e.url("/config_package?mac_address=00:00:00:00:00:09")),
        ),
    ] {
        clear_4xx(&e.send(request).await, what);
    }
    // A version for an unknown template.
    let reply = e
        .form(
            Method::POST,
            "/config_template/version/99/",
            &[("template_file", Some("f"), b"x")],
        )
        .await;
    clear_4xx(&reply, "version of an unknown template");
    assert_eq!(
        e.snapshot().await,
        before,
        "a refused request changed something"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_that_are_not_json_and_oversized_uploads_change_nothing() {
    let e = configured().await;
    let before = e.snapshot().await;
    let json = "application/json";
    let tel = "/edge_telemetry/package_consumption/a00001/success/";
    for (what, method, path, content_type, body) in [
        (
            "text as JSON",
            Method::POST,
            "/config_template/",
            json,
            &b"not json"[..],
        ),
        (
            "truncated JSON",
            Method::POST,
            "/config_template/",
            json,
            b"{\"name\": \"x\"",
        ),
        (
            "a JSON list",
            Method::POST,
            "/config_template/",
            json,
            b"[\"x\"]",
        ),
        (
            "a JSON string",
            Method::POST,
            "/master_package/",
            json,
            b"\"m\"",
        ),
        (
            "invalid UTF-8",
            Method::POST,
            "/master_package/assign/1/",
            json,
            b"{\"edge_type\": \"\xff\"}",
        ),
        (
            "text assignment",
            Method::DELETE,
            "/master_package/assign/1/",
            json,
            b"static/default",
        ),
        ("text report", Method::POST, tel, json, b"edge_id=c00001"),
        (
            "XML",
            Method::POST,
            "/config_template/",
            "application/xml",
            b"<t/>",
        ),
        (
            "JSON sent as a form",
            Method::POST,
            "/master_package/assign/1/",
            "application/x-www-form-urlencoded",
            b"{\"edge_type\": \"mid\", \"edge_sub_type\": \"default\"}",
        ),
        (
            "a form without its boundary",
            Method::POST,
            "/config_template/version/1/",
            "multipart/form-data",
            b"x",
        ),
    ] {
        let reply = e.raw(method, path, content_type, body).await;
        clear_4xx(&reply, what);
    }
    // Oversized (edge.max_upload_bytes = 4096): a template file, a script,
    // a JSON body (over http.max_body_bytes, 1 MiB).
    let big = vec![b'x'; 8192];
    let upload: [Part<'_>; 2] = [
        ("template_file", Some("big.conf"), &big),
        ("comment", None, b"big"),
    ];
    let reply = e
        .form(Method::POST, "/config_template/version/1/", &upload)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    clear_4xx(&reply, "oversized template file");
    let script: [Part<'_>; 3] = [
        ("name", None, b"big"),
        ("description", None, b"d"),
        ("pre_script_file", Some("pre.sh"), &big),
    ];
    let reply = e.form(Method::POST, "/master_package/", &script).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    clear_4xx(&reply, "oversized script");
    let reply = e
        .json(
            Method::POST,
            "/config_template/",
            &json!({"name": "x", "description": "d".repeat(1_100_000)}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    clear_4xx(&reply, "oversized JSON body");
    assert_eq!(
        e.snapshot().await,
        before,
        "a refused request changed something"
    );
    // And the ids the refused requests did not use are still next.
    let t = e.template("next.conf", "/etc/next.conf").await;
    assert_eq!(t, 2);
}
