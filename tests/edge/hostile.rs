//! Hostile input: oversized uploads (limits configurable), path traversal
//! in template names and paths, non-UTF-8 files kept byte-exact, bad ids,
//! malformed bodies and wrong content types, and broken documents written
//! straight into CouchDB, which hurt only their own outputs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{EdgeEnv, edge_doc, file, read_tar};
use crate::support::eventually;

#[tokio::test(flavor = "multi_thread")]
async fn oversized_uploads_and_bodies_are_refused() {
    let e = EdgeEnv::start_with(|c| {
        c.set("edge.max_upload_bytes", 2048)
            .set("http.max_body_bytes", 4096);
    })
    .await;
    let t = e.template("a.conf", "/etc/a.conf").await;
    let reply = e
        .form(
            Method::POST,
            &format!("/config_template/version/{t}/"),
            &[("template_file", Some("a"), &[b'x'; 3000])],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json["message"], "Template version not added");
    let huge = vec![b'x'; 200 * 1024];
    let reply = e
        .form(
            Method::POST,
            &format!("/config_template/version/{t}/"),
            &[("template_file", Some("a"), &huge)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json["message"], "Request body too large");
    let reply = e
        .json(
            Method::POST,
            "/config_template/",
            &json!({"name": "a", "description": "x".repeat(5000)}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let reply = e
        .form(
            Method::POST,
            "/master_package/",
            &[("name", None, b"m"), ("pre_script_file", Some("p"), &huge)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing was half-written; within the limit it works.
    assert_eq!(
        e.get(&format!("/config_template/version/{t}/"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let set_version = e.version(t, &[b'y'; 2000], "fits").await;
    assert_eq!(
        set_version, "0.01",
        "the refused uploads appended nothing to the set log"
    );
    assert_eq!(
        e.get(&format!("/config_template/version/{t}/"))
            .await
            .text
            .len(),
        2000
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn traversal_in_names_and_paths_is_refused() {
    let e = EdgeEnv::start().await;
    for name in ["../etc/passwd", "a/b", "..", "a\\b", "a\nb", ""] {
        let reply = e
            .json(
                Method::POST,
                "/config_template/",
                &json!({"name": name, "description": "d", "path": "/etc/x"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name:?}");
        assert!(
            reply.json["message"]["name"].is_string(),
            "{name:?}: {}",
            reply.text
        );
    }
    for path in [
        "/etc/../shadow",
        "etc/passwd",
        "/etc/./x",
        "/x",
        "/etc//x",
        "/etc/x\ry",
    ] {
        let reply = e
            .json(
                Method::POST,
                "/config_template/",
                &json!({"name": "n", "description": "d", "path": path}),
            )
            .await;
        assert_eq!(
            (reply.status, reply.json.clone()),
            (StatusCode::OK, json!({"message": "Incorrect path"})),
            "{path:?}"
        );
    }
    let reply = e
        .form(
            Method::POST,
            "/master_package/",
            &[
                ("name", None, b"m"),
                ("description", None, b"d"),
                ("path", None, b"/opt/../etc"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json["message"]["path"].is_string());
    // A file name that would replace the package's own script.
    let t = e.template("prescript.sh", "/opt/app/prescript.sh").await;
    let m = e.master("m", &[]).await;
    let reply = e
        .send(
            e.daemon
                .http()
                .post(e.url(&format!("/master_package_config/{m}/assign/{t}/"))),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    // Two templates with one file name in one master package.
    let a = e.template("x.conf", "/etc/one/x.conf").await;
    let b = e.template("x2.conf", "/etc/two/x.conf").await;
    e.link(m, a).await;
    let reply = e
        .send(
            e.daemon
                .http()
                .post(e.url(&format!("/master_package_config/{m}/assign/{b}/"))),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert!(
        reply.json["description"]
            .as_str()
            .unwrap()
            .contains("x.conf")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn non_utf8_files_are_kept_byte_exact() {
    let e = EdgeEnv::start().await;
    let binary: Vec<u8> = (0..=255u8).rev().chain(*b"{{not handlebars}}").collect();
    let t = e.template("blob.bin", "/opt/blob.bin").await;
    e.version(t, &binary, "binary").await;
    let reply = e
        .send(
            e.daemon
                .http()
                .get(e.url(&format!("/config_template/version/{t}/"))),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let raw = e
        .download(&e.url(&format!("/config_template/version/{t}/")))
        .await;
    assert_eq!(raw, binary);
    let m = e.master("bin", &[]).await;
    e.link(m, t).await;
    e.assign(m, "static", "default").await;
    e.register(&[edge_doc("abc123", "static", "default", &[], json!({}))])
        .await;
    let (_, bytes) = e.package("edge_id=abc123").await;
    assert_eq!(
        file(&read_tar(&bytes.unwrap()), "bin/blob.bin"),
        binary.as_slice()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ids_malformed_bodies_and_wrong_content_types() {
    let e = EdgeEnv::start().await;
    for id in [
        "abc",
        "0",
        "-1",
        "99999999999999999999",
        "1.5",
        "%20",
        "100000000",
    ] {
        for path in [
            format!("/config_template/version/{id}/"),
            format!("/config_template/{id}/"),
            format!("/master_package/{id}/config_template"),
        ] {
            let reply = e.get(&path).await;
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{path}: {}",
                reply.text
            );
            assert!(reply.json["message"].is_string(), "{path}");
        }
        let reply = e
            .send(
                e.daemon
                    .http()
                    .delete(e.url(&format!("/master_package/{id}/"))),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{id}");
    }
    let send = |content_type: &str, body: &'static [u8]| {
        let request = e
            .daemon
            .http()
            .post(e.url("/config_template/"))
            .header("content-type", content_type)
            .body(body);
        e.send(request)
    };
    let reply = send("text/plain", b"name=a").await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(reply.json["message"], "Unsupported content type");
    assert_eq!(
        send("application/json", b"{\"name\": ").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send("application/json", b"[\"a\"]").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send("multipart/form-data", b"--x\r\n").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nunterminated"
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    let reply = send(
        "application/x-www-form-urlencoded",
        b"%ff%fe=%00&name=ok&description=d",
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "undecodable bytes are replaced, not fatal: {}",
        reply.text
    );
    let reply = e
        .send(
            e.daemon
                .http()
                .post(e.url("/edge_telemetry/package_download/a1b2c3/success/"))
                .header("content-type", "application/xml")
                .body("<x/>"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let reply = e.get("/template_set/latest?edge_id=%ff").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(e.daemon.get("/readyz").await.status == StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_documents_hurt_only_their_own_outputs() {
    let e = EdgeEnv::start().await;
    let t = e.template("a.conf", "/etc/a.conf").await;
    e.version(t, b"a={{a}}\n", "v").await;
    let m = e.master("good", &[]).await;
    e.link(m, t).await;
    e.assign(m, "static", "default").await;
    let registry = e.db("edge_registry");
    let config = e.db("edge_config");
    let couch = &e.env.couch;
    // Broken registry entries next to a good one.
    couch.put(&registry, &json!({"_id": "bad-id", "type": "edge", "edge_id": "a b", "edge_type": "static", "edge_sub_type": "default"})).await;
    couch.put(&registry, &json!({"_id": "dup-1", "type": "edge", "edge_id": "d00d00", "edge_type": "static", "edge_sub_type": "default", "vars": {"a": 1}})).await;
    couch.put(&registry, &json!({"_id": "dup-2", "type": "edge", "edge_id": "d00d00", "edge_type": "mid", "edge_sub_type": "default"})).await;
    couch.put(&registry, &json!({"_id": "bad-mac", "type": "edge", "edge_id": "bad0ac", "edge_type": "static", "edge_sub_type": "default", "mac_addresses": ["nope", "00:aa:bb:cc:dd:ee"], "vars": {"a": 2}})).await;
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    couch
        .put(
            &registry,
            &json!({"_id": "deep", "type": "edge", "edge_id": "dee000", "x": deep}),
        )
        .await;
    couch
        .put(
            &registry,
            &json!({"_id": "not-an-edge", "type": "something else"}),
        )
        .await;
    // Broken configuration documents.
    couch.put(&config, &json!({"_id": "master_package:00000077", "type": "master_package", "master_id": 77, "name": "x", "status": 9})).await;
    couch.put(&config, &json!({"_id": "mp_assign:00000077:static:default", "type": "mp_assign", "master_id": 77, "edge_type": "static", "edge_sub_type": "default"})).await;
    couch.put(&config, &json!({"_id": "set_log:000000009999", "type": "set_log", "set_seq": 9999, "kind": "bogus"})).await;
    // The good edges are served; the duplicate's first document wins.
    eventually("the good edges", Duration::from_secs(20), async || {
        let a = e.get("/config_package?edge_id=d00d00").await;
        let b = e.get("/config_package?mac_address=00-AA-BB-CC-DD-EE").await;
        if a.status == StatusCode::OK && b.status == StatusCode::OK {
            Ok((a, b))
        } else {
            Err(format!("{} {} / {} {}", a.status, a.text, b.status, b.text))
        }
    })
    .await;
    let (_, bytes) = e.package("edge_id=d00d00").await;
    assert_eq!(file(&read_tar(&bytes.unwrap()), "good/a.conf"), b"a=1\n");
    let (answer, _) = e.package("mac_address=00aa.bbcc.ddee").await;
    assert_eq!(answer["edge_id"], "bad0ac");
    // The problems are reported, each with its document and a reason.
    let expected = [
        ("bad-id", "edge_id"),
        ("dup-2", "already registered by dup-1"),
        ("bad-mac", "not a MAC address"),
        ("deep", ""),
        ("master_package:00000077", "status"),
        (
            "mp_assign:00000077:static:default",
            "master package 77 is unreadable",
        ),
        ("set_log:000000009999", "kind"),
    ];
    eventually(
        "every problem reported",
        Duration::from_secs(20),
        async || {
            let status = e.daemon.get("/v1/status").await.json;
            let errors: Vec<String> = status["errors"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|doc| {
                    doc["errors"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|err| format!("{} {}", err["doc"], err["reason"]))
                })
                .collect();
            match expected
                .iter()
                .find(|(doc, reason)| !errors.iter().any(|l| l.contains(doc) && l.contains(reason)))
            {
                None => Ok(()),
                Some(missing) => Err(format!("no error for {missing:?} in {errors:#?}")),
            }
        },
    )
    .await;
    // The broken set-log entry is left out of the log.
    let answer = e.template_set("d00d00", None).await;
    assert_eq!(answer["data"][0]["master_package_id"], m);
    assert!(e.daemon.get("/readyz").await.status == StatusCode::OK);
    let _: Value = answer;
}
