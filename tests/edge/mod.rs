//! The edge provisioning store (`/api/v1.0/`) against the real daemon and
//! a real CouchDB-compatible server: the seed's endpoints and shapes
//! (`api`), set-version deltas (`sets`), packages and signed URLs
//! (`packages`), telemetry (`telemetry`), hostile input (`hostile`) and
//! randomised edit sequences against a from-scratch build (`incremental`).

mod api;
mod bad_input;
mod hostile;
mod incremental;
mod packages;
mod seed;
mod sets;
mod telemetry;

use std::io::Read;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::TestEnv;
use crate::support::daemon::{Daemon, DaemonConfig, Reply};
use crate::support::eventually;

pub const KEY: &str = "test-download-key-0123456789";

/// One part of a multipart body: name, file name, content.
pub type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

/// A multipart/form-data body and its content type.
pub fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "caldera-test-boundary-7f3a";
    let mut body = Vec::new();
    for (name, file, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(file) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A daemon with the edge store and its databases (the daemon is dropped
/// first, so the databases are never deleted under its feeds).
pub struct EdgeEnv {
    pub daemon: Daemon,
    pub env: TestEnv,
}

impl EdgeEnv {
    pub async fn start() -> EdgeEnv {
        EdgeEnv::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut DaemonConfig)) -> EdgeEnv {
        let env = TestEnv::new().await;
        let mut config = env.config("edge-test");
        config
            .set("edge.download_key", KEY)
            .set("edge.trusted_proxies", "127.0.0.0/8")
            .set("edge.write_wait_ms", 5000);
        configure(&mut config);
        let daemon = Daemon::start_ready(&config).await;
        let edge = EdgeEnv { daemon, env };
        edge.wait_classes().await;
        edge
    }

    pub fn db(&self, key: &str) -> String {
        format!("{}_{key}", self.env.names.prefix)
    }

    /// Waits until the seed's classes are in the cache (start-up creates them).
    pub async fn wait_classes(&self) {
        let couch = self.env.couch.clone();
        let cache = self.env.names.cache.clone();
        eventually(
            "the seed's edge classes in the cache",
            Duration::from_secs(30),
            async || match couch.get(&cache, "edge:class:static:default").await {
                Some(_) => Ok(()),
                None => Err("no edge:class:static:default yet".to_string()),
            },
        )
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        self.daemon.api_url(&format!("/api/v1.0{path}"))
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        self.daemon
            .try_send(request)
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.daemon.log_tail(40)))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.daemon.http().get(self.url(path))).await
    }

    pub async fn json(&self, method: Method, path: &str, body: &Value) -> Reply {
        let request = self
            .daemon
            .http()
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
        self.send(request).await
    }

    pub async fn form(&self, method: Method, path: &str, parts: &[Part<'_>]) -> Reply {
        let (content_type, body) = multipart(parts);
        let request = self
            .daemon
            .http()
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body);
        self.send(request).await
    }

    pub async fn urlencoded(&self, method: Method, path: &str, pairs: &[(&str, &str)]) -> Reply {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let request = self
            .daemon
            .http()
            .request(method, self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(request).await
    }

    /// Creates a template; returns its id.
    pub async fn template(&self, name: &str, path: &str) -> u64 {
        let reply = self
            .json(
                Method::POST,
                "/config_template/",
                &json!({"name": name, "description": format!("{name} template"), "owner": "root",
                        "group": "root", "permissions": 644, "path": path}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply.json["template_id"].as_u64().expect("a template id")
    }

    /// Uploads a version; returns the set version it created.
    pub async fn version(&self, template_id: u64, content: &[u8], comment: &str) -> String {
        let reply = self
            .form(
                Method::POST,
                &format!("/config_template/version/{template_id}/"),
                &[
                    ("template_file", Some("file.conf"), content),
                    ("comment", None, comment.as_bytes()),
                ],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.json["message"], "Template version added");
        reply.json["set_version"].as_str().unwrap().to_string()
    }

    /// Creates a master package with scripts; returns its id.
    pub async fn master(&self, name: &str, extra: &[(&str, &str)]) -> u64 {
        let mut parts: Vec<Part<'_>> = vec![
            ("name", None, name.as_bytes()),
            ("description", None, b"a master package"),
            ("uninstall_file", Some("uninstall.sh"), b"echo uninstall\n"),
            ("pre_script_file", Some("pre.sh"), b"echo pre\n"),
            (
                "post_script_files",
                Some("post.sh"),
                b"status_check() { return 0; }\n",
            ),
        ];
        for (k, v) in extra {
            parts.push((k, None, v.as_bytes()));
        }
        let reply = self.form(Method::POST, "/master_package/", &parts).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.json["message"], "Master Package added");
        reply.json["master_id"].as_u64().expect("a master id")
    }

    pub async fn link(&self, master_id: u64, template_id: u64) {
        let reply = self
            .send(self.daemon.http().post(self.url(&format!(
                "/master_package_config/{master_id}/assign/{template_id}/"
            ))))
            .await;
        assert_eq!(
            reply.json["message"], "Master package config assigned",
            "{}",
            reply.text
        );
    }

    pub async fn assign(&self, master_id: u64, edge_type: &str, sub: &str) -> Reply {
        self.json(
            Method::POST,
            &format!("/master_package/assign/{master_id}/"),
            &json!({"edge_type": edge_type, "edge_sub_type": sub}),
        )
        .await
    }

    pub async fn unassign(&self, master_id: u64, edge_type: &str, sub: &str) -> Reply {
        self.json(
            Method::DELETE,
            &format!("/master_package/assign/{master_id}/"),
            &json!({"edge_type": edge_type, "edge_sub_type": sub}),
        )
        .await
    }

    /// Registers edges (registry documents) and waits until each is served.
    pub async fn register(&self, edges: &[Value]) {
        let db = self.db("edge_registry");
        for edge in edges {
            self.env.couch.upsert(&db, edge).await;
        }
        for edge in edges {
            let id = edge["edge_id"].as_str().unwrap().to_string();
            let path = format!("/template_set/latest?edge_id={id}");
            eventually(
                &format!("edge {id} registered"),
                Duration::from_secs(20),
                async || {
                    let reply = self.get(&path).await;
                    if reply.status == StatusCode::OK {
                        Ok(())
                    } else {
                        Err(format!("{} {}", reply.status, reply.text))
                    }
                },
            )
            .await;
        }
    }

    pub async fn template_set(&self, edge_id: &str, set_version: Option<&str>) -> Value {
        let mut path = format!("/template_set/latest?edge_id={edge_id}");
        if let Some(v) = set_version {
            path.push_str(&format!("&set_version={v}"));
        }
        let reply = self.get(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        reply.json
    }

    /// `config_package` for an edge, then the package bytes from its path.
    pub async fn package(&self, query: &str) -> (Value, Option<Vec<u8>>) {
        let reply = self.get(&format!("/config_package?{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
        let Some(path) = reply.json["path"].as_str() else {
            return (reply.json, None);
        };
        let bytes = self.download(path).await;
        (reply.json.clone(), Some(bytes))
    }

    pub async fn download(&self, url: &str) -> Vec<u8> {
        let response = self.daemon.http().get(url).send().await.expect("download");
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        response.bytes().await.unwrap().to_vec()
    }
}

/// A registry document.
pub fn edge_doc(edge_id: &str, edge_type: &str, sub: &str, macs: &[&str], vars: Value) -> Value {
    json!({
        "_id": format!("edge-{edge_id}"),
        "type": "edge",
        "edge_id": edge_id,
        "edge_type": edge_type,
        "edge_sub_type": sub,
        "mac_addresses": macs,
        "tags": ["ALL"],
        "vars": vars,
    })
}

/// One tar entry: path, mode, uid, gid, user, group, content.
#[derive(Debug, Clone)]
pub struct TarEntry {
    pub path: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub user: String,
    pub group: String,
    pub data: Vec<u8>,
}

pub fn read_tar(bytes: &[u8]) -> Vec<TarEntry> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive
        .entries()
        .expect("a tar.gz")
        .map(|entry| {
            let mut entry = entry.expect("an entry");
            let header = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            TarEntry {
                path: entry.path().unwrap().to_string_lossy().into_owned(),
                mode: header.mode().unwrap(),
                uid: header.uid().unwrap(),
                gid: header.gid().unwrap(),
                user: header.username().unwrap().unwrap_or("").to_string(),
                group: header.groupname().unwrap().unwrap_or("").to_string(),
                data,
            }
        })
        .collect()
}

pub fn file<'a>(entries: &'a [TarEntry], path: &str) -> &'a [u8] {
    &entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| {
            panic!(
                "{path} not in the package: {:?}",
                entries.iter().map(|e| &e.path).collect::<Vec<_>>()
            )
        })
        .data
}
