//! Packages: byte-identical for identical inputs (also across restarts and
//! for every edge of a class that needs no edge variables), the listing,
//! modes, owners and sha256s read back from the tar, a render error that
//! refuses the package, the generated installer run for real, and the
//! signed download URLs: valid, expired, forged, another edge's.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{EdgeEnv, TarEntry, edge_doc, file, read_tar};
use crate::support::daemon::Daemon;
use crate::support::eventually;

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn listing(entries: &[TarEntry]) -> Vec<(String, u32)> {
    entries.iter().map(|e| (e.path.clone(), e.mode)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn packages_are_byte_identical_for_identical_inputs() {
    let e = EdgeEnv::start().await;
    // static/default: nothing depends on the edge. mobile/default: per edge.
    let motd = e.template("motd", "/etc/motd").await;
    e.version(motd, b"welcome\n", "static").await;
    let conf = e.template("app.conf", "/etc/app/app.conf").await;
    e.version(conf, b"ip={{lan_ip}}\n", "per edge").await;
    let base = e.master("base", &[("execution_sequence", "2")]).await;
    let first = e.master("first", &[("execution_sequence", "1")]).await;
    e.link(base, motd).await;
    e.link(first, motd).await;
    e.link(base, conf).await;
    e.assign(base, "mobile", "default").await;
    let static_only = e.master("static only", &[]).await;
    e.link(static_only, motd).await;
    e.assign(static_only, "static", "default").await;
    e.assign(first, "static", "default").await;
    e.register(&[
        edge_doc(
            "aaaaa1",
            "static",
            "default",
            &[],
            json!({"lan_ip": "10.0.0.1"}),
        ),
        edge_doc(
            "aaaaa2",
            "static",
            "default",
            &[],
            json!({"lan_ip": "10.0.0.2"}),
        ),
        edge_doc(
            "bbbbb1",
            "mobile",
            "default",
            &[],
            json!({"lan_ip": "10.9.0.1"}),
        ),
        edge_doc(
            "bbbbb2",
            "mobile",
            "default",
            &[],
            json!({"lan_ip": "10.9.0.2"}),
        ),
    ])
    .await;

    // The class-wide package, precomputed by the builder.
    let couch = e.env.couch.clone();
    let cache = e.env.names.cache.clone();
    let precomputed = eventually(
        "the static class package",
        Duration::from_secs(20),
        async || {
            let doc = couch
                .get(&cache, "edge:package:static:default")
                .await
                .ok_or("missing")?;
            if doc["content"]["state"] == "ready" {
                Ok(doc)
            } else {
                Err(format!("{}", doc["content"]))
            }
        },
    )
    .await;
    assert_eq!(
        couch
            .get(&cache, "edge:package:mobile:default")
            .await
            .unwrap()["content"]["state"],
        "per_edge"
    );
    let (a1, bytes_a1) = e.package("edge_id=aaaaa1").await;
    let (a2, bytes_a2) = e.package("edge_id=aaaaa2").await;
    assert_eq!(a1["sha256"], a2["sha256"]);
    assert_eq!(a1["sha256"], precomputed["content"]["sha256"]);
    assert_eq!(bytes_a1, bytes_a2);
    assert_ne!(a1["path"], a2["path"], "each edge gets its own URL");
    let bytes = bytes_a1.unwrap();
    assert_eq!(a1["sha256"], sha256_hex(&bytes).as_str());
    assert_eq!(a1["size"], bytes.len());

    let entries = read_tar(&bytes);
    let paths = listing(&entries);
    assert_eq!(paths[0], ("manifest.json".to_string(), 0o644));
    assert_eq!(paths[1], ("manifest.sha256".to_string(), 0o644));
    let rest: Vec<(String, u32)> = paths[2..].to_vec();
    let mut sorted = rest.clone();
    sorted.sort();
    assert_eq!(rest, sorted, "entries after the manifest are sorted");
    for entry in &entries {
        assert_eq!((entry.uid, entry.gid), (0, 0), "{}", entry.path);
        assert_eq!(
            (entry.user.as_str(), entry.group.as_str()),
            ("root", "root"),
            "{}",
            entry.path
        );
        let expected = if entry.path.ends_with('/') || entry.path.ends_with(".sh") {
            0o755
        } else {
            0o644
        };
        assert_eq!(entry.mode, expected, "{}", entry.path);
    }
    // Execution order: no sequence first, then ascending.
    assert_eq!(
        file(&entries, "package_sequence.txt"),
        b"static_only\n1_first\n"
    );
    assert_eq!(file(&entries, "1_first/motd"), b"welcome\n");
    let sums = String::from_utf8(file(&entries, "manifest.sha256").to_vec()).unwrap();
    let listed: Vec<&str> = sums.lines().collect();
    let files: Vec<&TarEntry> = entries
        .iter()
        .filter(|e| !e.path.ends_with('/') && e.path != "manifest.sha256")
        .collect();
    assert_eq!(listed.len(), files.len());
    for entry in files {
        assert!(
            listed.contains(&format!("{}  {}", sha256_hex(&entry.data), entry.path).as_str()),
            "{} is not in manifest.sha256",
            entry.path
        );
    }
    let manifest: Value = serde_json::from_slice(file(&entries, "manifest.json")).unwrap();
    assert_eq!(manifest["edge_type"], "static");
    assert!(
        manifest.get("edge_id").is_none(),
        "a class-wide package names no edge"
    );
    let listed = &manifest["packages"][1]["files"][0];
    assert_eq!(listed["path"], "/etc/motd");
    assert_eq!(listed["owner"], "root");
    assert_eq!(listed["group"], "root");
    assert_eq!(listed["permissions"], "0644");
    assert_eq!(listed["sha256"], sha256_hex(b"welcome\n").as_str());

    // Per edge: different variables, different bytes; the same edge again,
    // the same bytes.
    let (b1, bytes_b1) = e.package("edge_id=bbbbb1").await;
    let (b2, _) = e.package("edge_id=bbbbb2").await;
    assert_ne!(b1["sha256"], b2["sha256"]);
    let (b1_again, bytes_b1_again) = e.package("edge_id=bbbbb1").await;
    assert_eq!(b1["sha256"], b1_again["sha256"]);
    assert_eq!(bytes_b1, bytes_b1_again);
    let entries = read_tar(&bytes_b1.unwrap());
    assert_eq!(file(&entries, "2_base/app.conf"), b"ip=10.9.0.1\n");
    let manifest: Value = serde_json::from_slice(file(&entries, "manifest.json")).unwrap();
    assert_eq!(manifest["edge_id"], "bbbbb1");
    let prescript = String::from_utf8(file(&entries, "2_base/prescript.sh").to_vec()).unwrap();
    assert!(prescript.starts_with("echo pre\n"), "{prescript}");
    assert!(
        prescript.contains(
            "caldera_install 'app.conf' '/etc/app/app.conf' 'root' 'root' 0644 || return 1"
        ),
        "{prescript}"
    );

    // Another process, the same bytes (nothing depends on process state).
    let EdgeEnv { mut daemon, env } = e;
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(15)).await.success());
    let daemon = Daemon::start_ready(&daemon.config).await;
    let e = EdgeEnv { daemon, env };
    let (b1_restarted, _) = e.package("edge_id=bbbbb1").await;
    assert_eq!(b1_restarted["sha256"], b1["sha256"]);
    let (a1_restarted, _) = e.package("edge_id=aaaaa1").await;
    assert_eq!(a1_restarted["sha256"], a1["sha256"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_render_error_refuses_the_package_with_a_clear_error() {
    let e = EdgeEnv::start().await;
    let t = e.template("wg0.conf", "/etc/wireguard/wg0.conf").await;
    e.version(t, b"PrivateKey = {{wg_private_key}}\n", "keys")
        .await;
    let m = e.master("vpn", &[]).await;
    e.link(m, t).await;
    e.assign(m, "mid", "default").await;
    e.register(&[
        edge_doc(
            "c0ffee",
            "mid",
            "default",
            &[],
            json!({"lan_ip": "10.0.0.1"}),
        ),
        edge_doc(
            "c0ffe2",
            "mid",
            "default",
            &[],
            json!({"wg_private_key": "k2"}),
        ),
    ])
    .await;
    let reply = e.get("/config_package?edge_id=c0ffee").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.json["message"], "Package not generated");
    let why = reply.json["description"].as_str().unwrap();
    for part in ["wg0.conf", "0.01", "c0ffee", "wg_private_key"] {
        assert!(why.contains(part), "{part:?} missing from {why:?}");
    }
    // Another edge of the class, with the variable, is not affected.
    let (answer, bytes) = e.package("edge_id=c0ffe2").await;
    assert_eq!(answer["data"], "Package generated");
    assert_eq!(
        file(&read_tar(&bytes.unwrap()), "vpn/wg0.conf"),
        b"PrivateKey = k2\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_urls_valid_expired_forged_and_another_edges() {
    let e = EdgeEnv::start_with(|c| {
        c.set("edge.download_ttl_secs", 2);
    })
    .await;
    let t = e.template("a.conf", "/etc/a.conf").await;
    e.version(t, b"x={{x}}\n", "v").await;
    let m = e.master("a", &[]).await;
    e.link(m, t).await;
    e.assign(m, "static", "nuc").await;
    e.register(&[
        edge_doc("a00001", "static", "nuc", &[], json!({"x": 1})),
        edge_doc("a00002", "static", "nuc", &[], json!({"x": 2})),
    ])
    .await;
    let reply = e.get("/config_package?edge_id=a00001").await;
    let path = reply.json["path"].as_str().unwrap().to_string();
    let sha = reply.json["sha256"].as_str().unwrap().to_string();
    let http = e.daemon.http();
    // Valid, with ETag / If-None-Match and a range.
    let response = http.get(&path).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(response.headers()["content-type"], "application/gzip");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(sha256_hex(&bytes), sha);
    let cached = http
        .get(&path)
        .header("if-none-match", format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    let part = http
        .get(&path)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), bytes.slice(0..10));
    // Forged: one character of the token changed.
    let (prefix, name) = path.rsplit_once('/').unwrap();
    let (base, token) = prefix.rsplit_once('/').unwrap();
    let mut forged: Vec<char> = token.chars().collect();
    forged[10] = if forged[10] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let reply = e.send(http.get(format!("{base}/{forged}/{name}"))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json["message"], "Package not found");
    // Another edge's name with this token.
    let other = name.replace("a00001", "a00002");
    let reply = e.send(http.get(format!("{base}/{token}/{other}"))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    // Garbage.
    let reply = e
        .send(http.get(format!("{base}/..%2F..%2Fetc/passwd")))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    // Expired.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let reply = e.send(http.get(&path)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply.json["description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{}",
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_installer_installs_and_rolls_back() {
    let e = EdgeEnv::start().await;
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("etc/app");
    let conf_path = format!("{}/app.conf", target.display());
    let t = e.template("app.conf", &conf_path).await;
    e.json(
        Method::POST,
        "/config_template/",
        &json!({"name": "x", "description": "d"}),
    )
    .await;
    e.version(t, b"v1 {{edge_id}}\n", "v1").await;
    let m = e
        .form(
            Method::POST,
            "/master_package/",
            &[
                ("name", None, b"app"),
                ("description", None, b"d"),
                ("pre_script_file", Some("p"), b"echo pre-script ran\n"),
                (
                    "post_script_files",
                    Some("p"),
                    b"status_check() { grep -q v \"$TARGET\"; }\n",
                ),
                ("uninstall_file", Some("u"), b"echo uninstall\n"),
            ],
        )
        .await
        .json["master_id"]
        .as_u64()
        .unwrap();
    e.link(m, t).await;
    e.assign(m, "static", "ct_static").await;
    e.register(&[edge_doc("abcdef", "static", "ct_static", &[], json!({}))])
        .await;
    let run = |bytes: Vec<u8>| {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
        archive.unpack(dir.path()).unwrap();
        let output = std::process::Command::new("bash")
            .arg(dir.path().join("install.sh"))
            .env("TARGET", &conf_path)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            dir,
        )
    };
    let (_, bytes) = e.package("edge_id=abcdef").await;
    let (ok, log, _dir) = run(bytes.unwrap());
    assert!(ok, "{log}");
    assert!(log.contains(&format!("installed {conf_path}")), "{log}");
    assert_eq!(std::fs::read(&conf_path).unwrap(), b"v1 abcdef\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&conf_path).unwrap().permissions().mode() & 0o7777,
        0o644
    );
    // A new version whose status check fails: the old file comes back.
    e.version(t, b"broken\n", "fails the check").await;
    let (_, bytes) = e.package("edge_id=abcdef&set_version=0.04").await;
    let (ok, log, _dir) = run(bytes.unwrap());
    assert!(!ok, "the failing status_check must fail the install: {log}");
    assert!(log.contains("FAILED"), "{log}");
    assert_eq!(
        std::fs::read(&conf_path).unwrap(),
        b"v1 abcdef\n",
        "rolled back"
    );
    // Deleting the master package ships only its uninstall script.
    let reply = e
        .send(
            e.daemon
                .http()
                .delete(e.url(&format!("/master_package/{m}/"))),
        )
        .await;
    assert_eq!(reply.json["message"], "Master Package deleted");
    let answer = e.template_set("abcdef", Some("0.05")).await;
    assert_eq!(answer["data"][0]["status"], 0);
    let (_, bytes) = e.package("edge_id=abcdef&set_version=0.05").await;
    let entries = read_tar(&bytes.clone().unwrap());
    let dir_files: Vec<&str> = entries
        .iter()
        .map(|e| e.path.as_str())
        .filter(|p| p.starts_with("app/"))
        .collect();
    assert_eq!(dir_files, ["app/", "app/uninstall.sh"]);
    let (ok, log, _dir) = run(bytes.unwrap());
    assert!(ok, "{log}");
}
