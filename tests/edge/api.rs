//! Every endpoint of the seed with its request formats (multipart,
//! urlencoded, JSON) and exact response shapes, the original's error
//! answers, trailing slashes, auth, and the OpenAPI document.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{EdgeEnv, edge_doc, file, read_tar};

#[tokio::test(flavor = "multi_thread")]
async fn templates_masters_and_assignments_answer_in_the_seeds_shapes() {
    let e = EdgeEnv::start().await;
    // Create (JSON), with the code's alias `permission`.
    let reply = e
        .json(
            Method::POST,
            "/config_template/",
            &json!({"name": "sugarbox.conf", "description": "edge daemon", "owner": "root",
                    "group": "root", "permission": 644, "path": "/etc/sugarbox/sugarbox.conf"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json,
        json!({"message": "Template added", "template_id": 1})
    );
    // Create (urlencoded), without the optional fields; ids never repeat.
    let reply = e
        .urlencoded(
            Method::POST,
            "/config_template",
            &[("name", "motd"), ("description", "d")],
        )
        .await;
    assert_eq!(
        reply.json,
        json!({"message": "Template added", "template_id": 2})
    );
    // The original's answer to a bad path: 200 "Incorrect path".
    let reply = e
        .json(
            Method::POST,
            "/config_template/",
            &json!({"name": "x", "description": "d", "path": "relative/x"}),
        )
        .await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (StatusCode::OK, json!({"message": "Incorrect path"}))
    );
    let reply = e
        .json(
            Method::POST,
            "/config_template/",
            &json!({"description": "no name"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json["message"]["name"].is_string(), "{}", reply.text);

    // Version (multipart) and download (raw bytes, at the seed's URL and the original's).
    let content = b"listen={{lan_ip}}\nid={{edge_id}}\n";
    e.version(1, content, "first").await;
    let reply = e.get("/config_template/version/1/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text.as_bytes(), content);
    assert!(
        reply.headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("sugarbox.conf")
    );
    let reply = e.get("/config_template/download/1?format=json").await;
    assert_eq!(reply.json["template_name"], "sugarbox.conf_v0.01");
    assert_eq!(reply.json["template_path"], "/etc/sugarbox/sugarbox.conf");
    let reply = e.get("/config_template/version/2/").await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (
            StatusCode::NOT_FOUND,
            json!({"message": "Template file not found"})
        )
    );
    let reply = e
        .form(
            Method::POST,
            "/config_template/version/99/",
            &[("template_file", Some("f"), b"x")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json["message"], "Template version not added");

    // Retrieve.
    let reply = e.get("/config_template/").await;
    assert_eq!(
        reply.json,
        json!({"data": [
            {"id": 1, "name": "sugarbox.conf", "description": "edge daemon"},
            {"id": 2, "name": "motd", "description": "d"},
        ]})
    );

    // Master package create (form-data with the three files) and retrieve.
    let reply = e
        .form(
            Method::POST,
            "/master_package/",
            &[
                ("name", None, b"sugarbox"),
                ("description", None, b"the edge daemon"),
                (
                    "uninstall_file",
                    Some("u.sh"),
                    b"rm -f /etc/sugarbox/sugarbox.conf\n",
                ),
                ("pre_script_file", Some("pre.sh"), b"echo pre\n"),
                (
                    "post_script_files",
                    Some("post.sh"),
                    b"status_check() { true; }\n",
                ),
                ("path", None, b"/etc/sugarbox"),
                ("user", None, b"root"),
                ("group", None, b"adm"),
                ("permission", None, b"640"),
            ],
        )
        .await;
    assert_eq!(
        reply.json["message"], "Master Package added",
        "{}",
        reply.text
    );
    let reply = e.get("/master_package/").await;
    assert_eq!(
        reply.json,
        json!({"data": [{"id": 1, "name": "sugarbox", "description": "the edge daemon", "status": 1}]})
    );

    // Update: POST and PUT, field aliases; unknown id.
    let reply = e
        .urlencoded(
            Method::PUT,
            "/master_package/1/",
            &[("description", "updated"), ("execution_sequence", "2")],
        )
        .await;
    assert_eq!(reply.json, json!({"message": "Master Package updated"}));
    let reply = e
        .form(
            Method::POST,
            "/master_package/1",
            &[("owner", None, b"root")],
        )
        .await;
    assert_eq!(reply.json, json!({"message": "Master Package updated"}));
    let reply = e
        .urlencoded(Method::PUT, "/master_package/7/", &[("description", "x")])
        .await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (
            StatusCode::NOT_FOUND,
            json!({"message": "The requested master package is not present"})
        )
    );

    // Assign a template to the master package; twice; unknown ids.
    let assign = |m: u64, t: u64| {
        let url = e.url(&format!("/master_package_config/{m}/assign/{t}/"));
        e.send(e.daemon.http().post(url))
    };
    assert_eq!(
        assign(1, 1).await.json,
        json!({"message": "Master package config assigned"})
    );
    assert_eq!(
        assign(1, 1).await.json,
        json!({"message": "Master package config already assigned"})
    );
    let reply = assign(1, 42).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json["message"], "Master package config not assigned");

    // List master configs (both URLs): version_no is a number; templates
    // without versions list null.
    assert_eq!(
        assign(1, 2).await.json["message"],
        "Master package config assigned"
    );
    let expected = json!({"data": [
        {"id": 1, "name": "sugarbox.conf", "description": "edge daemon", "version_no": 0.01},
        {"id": 2, "name": "motd", "description": "d", "version_no": null},
    ]});
    assert_eq!(e.get("/config_template/1/").await.json, expected);
    assert_eq!(
        e.get("/master_package/1/config_template").await.json,
        expected
    );
    let reply = e.get("/config_template/5/").await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (
            StatusCode::NOT_FOUND,
            json!({"message": "Could not find master id 5"})
        )
    );

    // Assign to the seed's pairs; twice; unknown pairs refused in the seed's style.
    assert_eq!(
        e.assign(1, "static", "default").await.json,
        json!({"message": "Package assigned"})
    );
    assert_eq!(
        e.assign(1, "static", "default").await.json,
        json!({"message": "Package already assigned"})
    );
    assert_eq!(
        e.assign(1, "mobile", "railtel_pilot_ec").await.json,
        json!({"message": "Package assigned"})
    );
    for (t, s) in [("mobile", "bogus"), ("Static", "default"), ("", "")] {
        let reply = e.assign(1, t, s).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{t}/{s}");
        assert_eq!(reply.json["message"], "Package not assigned");
        assert_eq!(reply.json["description"], "Something went wrong");
    }
    let reply = e.assign(9, "static", "default").await;
    assert_eq!(reply.json["message"], "Package not assigned");

    // Unassign; not assigned → the original's 200 "Invalid package id".
    assert_eq!(
        e.unassign(1, "mobile", "railtel_pilot_ec").await.json,
        json!({"message": "Package deleted"})
    );
    let reply = e.unassign(1, "mobile", "railtel_pilot_ec").await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (StatusCode::OK, json!({"message": "Invalid package id"}))
    );

    // Delete: status 0, repeatable; unknown id.
    let delete = |m: u64| {
        e.send(
            e.daemon
                .http()
                .delete(e.url(&format!("/master_package/{m}/"))),
        )
    };
    assert_eq!(
        delete(1).await.json,
        json!({"message": "Master Package deleted"})
    );
    assert_eq!(
        delete(1).await.json,
        json!({"message": "Master Package deleted"})
    );
    assert_eq!(e.get("/master_package").await.json["data"][0]["status"], 0);
    let reply = delete(3).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json["message"], "Master Package not deleted");
}

#[tokio::test(flavor = "multi_thread")]
async fn device_calls_follow_the_seed() {
    let e = EdgeEnv::start().await;
    let t = e
        .template("app.conf", "/etc/app/\"$edge_id\"/app.conf")
        .await;
    e.version(t, b"ip={{lan_ip}}\n", "v1").await;
    let m = e.master("app", &[("execution_sequence", "5")]).await;
    e.link(m, t).await;
    assert_eq!(
        e.assign(m, "mobile", "c2cbus").await.json["message"],
        "Package assigned"
    );
    e.register(&[
        edge_doc(
            "a1b2c3",
            "mobile",
            "c2cbus",
            &["00:11:22:33:44:55", "00-11-22-33-44-56"],
            json!({"lan_ip": "10.1.0.1"}),
        ),
        edge_doc("d4e5f6", "static", "default", &[], json!({})),
    ])
    .await;

    let answer = e.template_set("a1b2c3", None).await;
    let latest = answer["latest_set_version"].as_str().unwrap().to_string();
    // A template version, a master package, a link, an assignment.
    assert_eq!(latest, "0.04");
    assert_eq!(
        answer["data"],
        json!([{
            "name": "app",
            "description": "a master package",
            "status": 1,
            "execution_sequence": 5,
            "master_package_id": m,
            "config_template": [{
                "name": "app.conf",
                "description": "app.conf template",
                "path": "/etc/app/a1b2c3/app.conf",
                "owner": "root",
                "group": "root",
                "permissions": 644,
                "template_id": t,
                "latest_version": {"version_no": "0.01", "comment": "v1"},
            }],
        }])
    );
    // Up to date: nothing, with the global latest.
    assert_eq!(
        e.template_set("a1b2c3", Some(&latest)).await,
        json!({"data": [], "latest_set_version": latest})
    );
    // Another class: nothing assigned.
    assert_eq!(
        e.template_set("d4e5f6", None).await,
        json!({"data": [], "latest_set_version": latest})
    );
    // Both URL forms.
    assert_eq!(
        e.get("/template_set/latest/?edge_id=a1b2c3").await.status,
        StatusCode::OK
    );
    // Errors: bad id, unknown edge, bad set version.
    let reply = e.get("/template_set/latest?edge_id=XYZ").await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (
            StatusCode::BAD_REQUEST,
            json!({"message": {"edge_id": "Invalid edge id"}})
        )
    );
    let reply = e.get("/template_set/latest").await;
    assert_eq!(
        reply.json,
        json!({"message": {"edge_id": "Invalid edge id"}})
    );
    let reply = e.get("/template_set/latest?edge_id=ffffff").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = e
        .get("/template_set/latest?edge_id=a1b2c3&set_version=abc")
        .await;
    assert_eq!(
        reply.json,
        json!({"message": {"set_version": "Invalid set version"}})
    );

    // config_package by MAC (any notation, first registered wins), by id.
    let (answer, bytes) = e
        .package("mac_address=ff:ff:ff:ff:ff:ff|0011.2233.4456")
        .await;
    assert_eq!(answer["data"], "Package generated");
    assert_eq!(answer["edge_id"], "a1b2c3");
    assert_eq!(answer["latest_set_version"], latest.as_str());
    let path = answer["path"].as_str().unwrap();
    assert!(
        path.starts_with(&format!("http://{}/api/v1.0/package/", e.daemon.api)),
        "{path}"
    );
    assert!(
        path.ends_with(".tar.gz") && path.contains("/a1b2c3-"),
        "{path}"
    );
    let entries = read_tar(&bytes.unwrap());
    assert_eq!(file(&entries, "5_app/app.conf"), b"ip=10.1.0.1\n");
    let (by_id, _) = e.package("edge_id=a1b2c3").await;
    assert_eq!(by_id["sha256"], answer["sha256"]);
    let reply = e.get("/config_package?mac_address=00:00:00:00:00:01").await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (
            StatusCode::NOT_FOUND,
            json!({"data": "Edge Id not found for given mac_address in DP"})
        )
    );
    let reply = e.get("/config_package").await;
    assert_eq!(
        reply.json,
        json!({"message": {"edge_id": "Invalid edge id"}})
    );
    // No changes.
    let (answer, bytes) = e
        .package(&format!("edge_id=a1b2c3&set_version={latest}"))
        .await;
    assert_eq!(
        answer,
        json!({"data": "No changes in configuration", "edge_id": "a1b2c3", "latest_set_version": latest})
    );
    assert!(bytes.is_none());
    let (answer, _) = e.package("edge_id=d4e5f6").await;
    assert_eq!(answer["data"], "No changes in configuration");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_and_device_auth_when_configured() {
    let e = EdgeEnv::start_with(|c| {
        c.set("edge.admin_token", "admin-secret")
            .set("edge.admin_username", "ops")
            .set("edge.admin_password", "pw")
            .set("edge.device_auth", "optional");
    })
    .await;
    let reply = e.get("/config_template/").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json["message"], "Unauthorized");
    let http = e.daemon.http();
    let ok = e
        .send(
            http.get(e.url("/config_template/"))
                .bearer_auth("admin-secret"),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let ok = e
        .send(
            http.get(e.url("/master_package/"))
                .basic_auth("ops", Some("pw")),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let bad = e
        .send(
            http.get(e.url("/master_package/"))
                .basic_auth("ops", Some("no")),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    // Device calls are not admin calls; an edge with a token must send it.
    let mut with_token = edge_doc("a1b2c3", "static", "default", &[], json!({}));
    with_token["token"] = json!("edge-secret");
    e.env
        .couch
        .upsert(&e.db("edge_registry"), &with_token)
        .await;
    e.env
        .couch
        .upsert(
            &e.db("edge_registry"),
            &edge_doc("d4e5f6", "static", "default", &[], json!({})),
        )
        .await;
    let path = "/template_set/latest?edge_id=d4e5f6";
    crate::support::eventually(
        "the edge without a token is served",
        std::time::Duration::from_secs(20),
        async || {
            let reply = e.get(path).await;
            (reply.status == StatusCode::OK)
                .then_some(())
                .ok_or(reply.text)
        },
    )
    .await;
    let reply = e.get("/template_set/latest?edge_id=a1b2c3").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = e
        .send(
            http.get(e.url("/template_set/latest?edge_id=a1b2c3"))
                .header("x-edge-token", "edge-secret"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = e
        .send(
            http.get(e.url("/config_package?edge_id=a1b2c3"))
                .bearer_auth("wrong"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // The description is open.
    assert_eq!(e.get("/openapi.json").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_matches_what_is_served() {
    let e = EdgeEnv::start().await;
    let doc = e.get("/openapi.json").await.json;
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 18, "{}", paths.len());
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            // Fill the parameters with values; a served route never answers
            // the router's own 404/405 fallbacks.
            let concrete = path
                .replace("{template_id}", "1")
                .replace("{master_id}", "1")
                .replace("{edge_id}", "a1b2c3")
                .replace("{proxy_edge_id}", "a1b2c3")
                .replace("{status}", "success")
                .replace("{page_number}", "1")
                .replace("{token}", "x")
                .replace("{file_name}", "a1b2c3-20240101000000.tar.gz");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for url in [
                concrete.clone(),
                format!("{}/", concrete.trim_end_matches('/')),
            ] {
                let reply = e
                    .send(
                        e.daemon
                            .http()
                            .request(method.clone(), e.daemon.api_url(&url))
                            .header("content-type", "application/json")
                            .body("{}"),
                    )
                    .await;
                let fallback = reply.json
                    == json!({"message": "The requested URL was not found on the server."})
                    || reply.status == StatusCode::METHOD_NOT_ALLOWED;
                assert!(
                    !fallback,
                    "{method} {url} is documented but not served: {} {}",
                    reply.status, reply.text
                );
            }
        }
    }
    let reply = e.get("/no_such_thing/").await;
    assert_eq!(
        reply.json,
        json!({"message": "The requested URL was not found on the server."})
    );
    let reply = e
        .send(e.daemon.http().patch(e.url("/config_template/")))
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let _: Value = reply.json;
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_and_set_versions_are_allocated_safely_under_concurrency() {
    let e = EdgeEnv::start().await;
    // Twenty templates created at once: twenty distinct ids.
    let e = &e;
    let creates = (0..20).map(|i| async move {
        let body =
            json!({"name": format!("t{i}"), "description": "d", "path": format!("/etc/t{i}")});
        e.json(Method::POST, "/config_template/", &body).await
    });
    let mut ids: Vec<u64> = futures_util::future::join_all(creates)
        .await
        .iter()
        .map(|r| r.json["template_id"].as_u64().expect("an id"))
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>());
    // Versions of one template and of others at once: distinct version
    // numbers, and one set-log entry each, without holes.
    let uploads = (0..16).map(|i| {
        let template = if i % 2 == 0 { 1 } else { 2 + i };
        let content = format!("v{i}");
        async move {
            let reply = e
                .form(
                    Method::POST,
                    &format!("/config_template/version/{template}/"),
                    &[("template_file", Some("f"), content.as_bytes())],
                )
                .await;
            (template, reply)
        }
    });
    let replies = futures_util::future::join_all(uploads).await;
    let mut versions: Vec<String> = Vec::new();
    let mut sets: Vec<String> = Vec::new();
    for (template, reply) in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        if *template == 1 {
            versions.push(reply.json["version_no"].as_str().unwrap().to_string());
        }
        sets.push(reply.json["set_version"].as_str().unwrap().to_string());
    }
    versions.sort();
    assert_eq!(
        versions,
        (1..=8).map(|n| format!("0.{n:02}")).collect::<Vec<_>>()
    );
    sets.sort();
    assert_eq!(
        sets,
        (1..=16).map(|n| format!("0.{n:02}")).collect::<Vec<_>>()
    );
    let log = e
        .env
        .couch
        .docs_by_id(&e.db("edge_config"))
        .await
        .into_keys()
        .filter(|id| id.starts_with("set_log:"))
        .count();
    assert_eq!(log, 16);
}
