//! The CouchDB-compatible server tests run against, and a small client for it.
//!
//! `COUCHDB_URL` (credentials may be in it) selects an external server, e.g.
//! Apache CouchDB 3.x. Otherwise one in-memory pouchdb-server is started per
//! test process through `scripts/couch-server`, the first time a test asks
//! for it; `--parent-pid` makes it exit with the test process. Tests that
//! need to stop and start a server start their own `CouchProcess` with a
//! data directory.
//!
//! The client always sends `Content-Type: application/json` with bodies
//! (pouchdb-server treats anything else as a form).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::{Started, run_server_script};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The external server from `COUCHDB_URL`, if one is configured.
pub fn external_url() -> Option<String> {
    std::env::var("COUCHDB_URL")
        .ok()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
}

/// Whether tests run against an external server (which they cannot stop).
pub fn is_external() -> bool {
    external_url().is_some()
}

/// The URL (with credentials) of the server shared by this test process.
pub fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        external_url().unwrap_or_else(|| {
            let state = state_dir("shared");
            let started = run_script(&[
                "start",
                path_str(&state),
                "--in-memory",
                "--parent-pid",
                &std::process::id().to_string(),
            ]);
            started.url
        })
    })
}

/// A fresh directory for a server's state, kept under cargo's target tmp dir.
fn state_dir(what: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).expect("create the target tmp dir");
    tempfile::Builder::new()
        .prefix(&format!("couch-{what}-{}-", std::process::id()))
        .tempdir_in(&base)
        .expect("create a server state dir")
        .keep()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn ensure_installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        if !repo_root().join("tools/couch/node_modules").exists() {
            let status = Command::new(repo_root().join("scripts/couch-server"))
                .arg("install")
                .status()
                .expect("run scripts/couch-server install");
            assert!(status.success(), "scripts/couch-server install failed");
        }
    });
}

/// Runs `scripts/couch-server start ...` and parses `url=... pid=...`.
fn run_script(args: &[&str]) -> Started {
    ensure_installed();
    run_server_script("couch-server", args, "")
}

/// A pouchdb-server of its own, with a data directory, that a test can stop
/// and start again on the same port (an outage).
pub struct CouchProcess {
    state: PathBuf,
    data: PathBuf,
    port: u16,
    url: String,
    pid: Option<u32>,
}

impl CouchProcess {
    /// Starts a server storing its databases in `data`.
    pub fn start(data: &Path) -> CouchProcess {
        let state = state_dir("dedicated");
        let started = run_script(&[
            "start",
            path_str(&state),
            "--data-dir",
            path_str(data),
            "--parent-pid",
            &std::process::id().to_string(),
        ]);
        let port = Url::parse(&started.url)
            .expect("the script prints a URL")
            .port()
            .expect("the URL has a port");
        CouchProcess {
            state,
            data: data.to_path_buf(),
            port,
            url: started.url,
            pid: Some(started.pid),
        }
    }

    /// The URL with credentials; stable across restarts.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Stops the server (by pid) and waits until it has exited.
    pub fn stop(&mut self) {
        if self.pid.take().is_some() {
            let status = Command::new(repo_root().join("scripts/couch-server"))
                .args(["stop", path_str(&self.state)])
                .status()
                .expect("run scripts/couch-server stop");
            assert!(status.success(), "scripts/couch-server stop failed");
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn start_again(&mut self) {
        assert!(self.pid.is_none(), "the server is still running");
        let port = self.port.to_string();
        let started = run_script(&[
            "start",
            path_str(&self.state),
            "--data-dir",
            path_str(&self.data),
            "--port",
            &port,
            "--parent-pid",
            &std::process::id().to_string(),
        ]);
        assert_eq!(started.url, self.url, "the server came back elsewhere");
        self.pid = Some(started.pid);
    }
}

impl Drop for CouchProcess {
    fn drop(&mut self) {
        if self.pid.is_some() {
            let _ = Command::new(repo_root().join("scripts/couch-server"))
                .args(["stop", path_str(&self.state)])
                .status();
        }
    }
}

/// Database names unique to one test, so tests run in parallel: every
/// database the daemon knows about gets the test's prefix.
#[derive(Debug, Clone)]
pub struct DbNames {
    pub prefix: String,
    pub system_config: String,
    pub cache: String,
}

/// The `databases.*` keys besides `system_config` and `cache`.
pub const OTHER_DATABASES: [&str; 7] = [
    "sip_auth",
    "offnet",
    "units",
    "provisioning",
    "edge_config",
    "edge_registry",
    "edge_telemetry",
];

impl DbNames {
    pub fn unique() -> DbNames {
        let prefix = format!("t_{:08x}", fastrand::u32(..));
        DbNames {
            system_config: format!("{prefix}_system_config"),
            cache: format!("{prefix}_cache"),
            prefix,
        }
    }

    /// The same sources with another cache database (`<prefix>_cache_<suffix>`).
    pub fn with_cache(&self, suffix: &str) -> DbNames {
        DbNames {
            cache: format!("{}_cache_{suffix}", self.prefix),
            ..self.clone()
        }
    }

    /// `(config key, name)` for every database.
    pub fn all(&self) -> Vec<(String, String)> {
        let mut all = vec![
            ("system_config".to_string(), self.system_config.clone()),
            ("cache".to_string(), self.cache.clone()),
        ];
        for key in OTHER_DATABASES {
            all.push((key.to_string(), format!("{}_{key}", self.prefix)));
        }
        all
    }
}

/// Deletes every database with a prefix when dropped (unless the test is
/// failing, so an external server keeps the evidence).
pub struct Cleanup {
    couch: Couch,
    prefix: String,
}

impl Cleanup {
    pub fn new(couch: &Couch, names: &DbNames) -> Cleanup {
        Cleanup {
            couch: couch.clone(),
            prefix: format!("{}_", names.prefix),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let couch = self.couch.clone();
        let prefix = self.prefix.clone();
        // Drop cannot await; a thread with its own runtime can.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the clean-up");
            // Best effort: the server may be gone already (a dedicated one).
            runtime.block_on(async {
                let request = couch.request(Method::GET, couch.url_of(&["_all_dbs"]));
                let Ok(response) = request.send().await else {
                    return;
                };
                let Ok(names) = response.json::<Vec<String>>().await else {
                    return;
                };
                for db in names.iter().filter(|db| db.starts_with(&prefix)) {
                    let _ = couch
                        .request(Method::DELETE, couch.url_of(&[db]))
                        .send()
                        .await;
                }
            });
        })
        .join();
    }
}

/// A small CouchDB client for tests.
#[derive(Clone)]
pub struct Couch {
    http: reqwest::Client,
    base: Url,
    auth: Option<(String, String)>,
    url_with_credentials: String,
}

/// The path segments of a document id (`_design/x` and `_local/x` are two).
fn doc_segments(id: &str) -> Vec<&str> {
    for prefix in ["_design/", "_local/"] {
        if let Some(rest) = id.strip_prefix(prefix) {
            return vec![&prefix[..prefix.len() - 1], rest];
        }
    }
    vec![id]
}

impl Couch {
    /// A client for `url` (credentials, if any, in the URL).
    pub fn new(url: &str) -> Couch {
        let mut base = Url::parse(url).unwrap_or_else(|e| panic!("bad CouchDB URL {url:?}: {e}"));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let auth = (!base.username().is_empty()).then(|| {
            (
                decode(base.username()),
                decode(base.password().unwrap_or("")),
            )
        });
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build the test HTTP client");
        Couch {
            http,
            base,
            auth,
            url_with_credentials: url.trim_end_matches('/').to_string(),
        }
    }

    /// A client for the shared test server.
    pub fn shared() -> Couch {
        Couch::new(server_url())
    }

    /// The server URL with credentials, for the daemon's configuration.
    pub fn url(&self) -> &str {
        &self.url_with_credentials
    }

    fn url_of(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().expect("an http URL");
            path.pop_if_empty();
            for segment in segments {
                path.push(segment);
            }
        }
        url
    }

    fn doc_url(&self, db: &str, id: &str) -> Url {
        let mut segments = vec![db];
        segments.extend(doc_segments(id));
        self.url_of(&segments)
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        request
    }

    /// Sends a request; the body, if any, is JSON text.
    pub async fn send_text(
        &self,
        method: Method,
        url: Url,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method.clone(), url.clone());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, json)
    }

    async fn send(&self, method: Method, url: Url, body: Option<&Value>) -> (StatusCode, Value) {
        let text = body.map(|b| serde_json::to_string(b).expect("JSON serializes"));
        self.send_text(method, url, text).await
    }

    pub async fn all_dbs(&self) -> Vec<String> {
        let (status, body) = self
            .send(Method::GET, self.url_of(&["_all_dbs"]), None)
            .await;
        assert_eq!(status, StatusCode::OK, "GET /_all_dbs: {body}");
        serde_json::from_value(body).expect("_all_dbs is a list of names")
    }

    /// Creates a database (fine if it exists).
    pub async fn create_db(&self, db: &str) {
        let (status, body) = self.send(Method::PUT, self.url_of(&[db]), None).await;
        assert!(
            status.is_success() || status == StatusCode::PRECONDITION_FAILED,
            "PUT /{db}: {status} {body}"
        );
    }

    /// Deletes a database (fine if it does not exist).
    pub async fn delete_db(&self, db: &str) {
        let (status, body) = self.send(Method::DELETE, self.url_of(&[db]), None).await;
        assert!(
            status.is_success() || status == StatusCode::NOT_FOUND,
            "DELETE /{db}: {status} {body}"
        );
    }

    /// `GET /db`, or `None` when it does not exist.
    pub async fn db_info(&self, db: &str) -> Option<Value> {
        let (status, body) = self.send(Method::GET, self.url_of(&[db]), None).await;
        match status {
            StatusCode::OK => Some(body),
            StatusCode::NOT_FOUND => None,
            _ => panic!("GET /{db}: {status} {body}"),
        }
    }

    /// The database's `doc_count` (0 when it does not exist).
    pub async fn doc_count(&self, db: &str) -> u64 {
        self.db_info(db)
            .await
            .and_then(|info| info["doc_count"].as_u64())
            .unwrap_or(0)
    }

    /// A document (its winning revision), or `None`.
    pub async fn get(&self, db: &str, id: &str) -> Option<Value> {
        let (status, body) = self.send(Method::GET, self.doc_url(db, id), None).await;
        match status {
            StatusCode::OK => Some(body),
            StatusCode::NOT_FOUND => None,
            _ => panic!("GET /{db}/{id}: {status} {body}"),
        }
    }

    /// The current winning revision of a document (`None` when it does not
    /// exist or is deleted), read through `_all_docs`, so it works for
    /// documents serde_json cannot parse (nested too deeply).
    pub async fn rev(&self, db: &str, id: &str) -> Option<String> {
        let mut url = self.url_of(&[db, "_all_docs"]);
        url.query_pairs_mut()
            .append_pair("key", &serde_json::to_string(id).expect("JSON serializes"));
        let (status, body) = self.send(Method::GET, url, None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "GET /{db}/_all_docs?key={id}: {body}"
        );
        let row = body["rows"].as_array()?.first()?;
        if row["value"]["deleted"] == true {
            return None;
        }
        row["value"]["rev"].as_str().map(str::to_string)
    }

    /// A document with its `_conflicts`, or `None`.
    pub async fn get_with_conflicts(&self, db: &str, id: &str) -> Option<Value> {
        let mut url = self.doc_url(db, id);
        url.query_pairs_mut().append_pair("conflicts", "true");
        let (status, body) = self.send(Method::GET, url, None).await;
        match status {
            StatusCode::OK => Some(body),
            StatusCode::NOT_FOUND => None,
            _ => panic!("GET /{db}/{id}?conflicts=true: {status} {body}"),
        }
    }

    /// A `_local` document (`id` without the `_local/` prefix), or `None`.
    pub async fn get_local(&self, db: &str, id: &str) -> Option<Value> {
        self.get(db, &format!("_local/{id}")).await
    }

    /// `PUT /db/<_id>` with the document as given (its `_rev`, if any).
    ///
    /// # Errors
    /// The status and body of a refusal (409 for a stale `_rev`).
    pub async fn try_put(&self, db: &str, doc: &Value) -> Result<String, (StatusCode, Value)> {
        let id = doc["_id"].as_str().expect("the document has an _id");
        self.try_put_text(db, id, serde_json::to_string(doc).expect("JSON serializes"))
            .await
    }

    /// `PUT /db/<id>` with a raw JSON text (for bodies serde cannot produce,
    /// such as a lone surrogate escape).
    ///
    /// # Errors
    /// The status and body of a refusal.
    pub async fn try_put_text(
        &self,
        db: &str,
        id: &str,
        text: String,
    ) -> Result<String, (StatusCode, Value)> {
        let (status, body) = self
            .send_text(Method::PUT, self.doc_url(db, id), Some(text))
            .await;
        if status.is_success() {
            Ok(body["rev"].as_str().unwrap_or_default().to_string())
        } else {
            Err((status, body))
        }
    }

    /// `PUT`, panicking on any refusal; returns the new revision.
    pub async fn put(&self, db: &str, doc: &Value) -> String {
        match self.try_put(db, doc).await {
            Ok(rev) => rev,
            Err((status, body)) => panic!("PUT /{db}/{}: {status} {body}", doc["_id"]),
        }
    }

    /// `POST /db`: a new document whose id the server chooses; returns the id.
    pub async fn post(&self, db: &str, doc: &Value) -> String {
        let (status, body) = self.send(Method::POST, self.url_of(&[db]), Some(doc)).await;
        assert!(status.is_success(), "POST /{db}: {status} {body}");
        body["id"]
            .as_str()
            .expect("POST answers the id")
            .to_string()
    }

    /// Writes `doc` as the new content of its id, whatever the current
    /// revision (read first; re-read and retried on 409).
    pub async fn upsert(&self, db: &str, doc: &Value) -> String {
        let id = doc["_id"].as_str().expect("the document has an _id");
        for _ in 0..20 {
            let mut doc = doc.clone();
            let object = doc.as_object_mut().expect("documents are objects");
            object.remove("_rev");
            if let Some(rev) = self.rev(db, id).await {
                object.insert("_rev".into(), json!(rev));
            }
            match self.try_put(db, &doc).await {
                Ok(rev) => return rev,
                Err((StatusCode::CONFLICT, _)) => continue,
                Err((status, body)) => panic!("PUT /{db}/{id}: {status} {body}"),
            }
        }
        panic!("PUT /{db}/{id} kept conflicting");
    }

    /// `DELETE /db/<id>?rev=<rev>`.
    ///
    /// # Errors
    /// The status and body of a refusal.
    pub async fn try_delete(
        &self,
        db: &str,
        id: &str,
        rev: &str,
    ) -> Result<String, (StatusCode, Value)> {
        let mut url = self.doc_url(db, id);
        url.query_pairs_mut().append_pair("rev", rev);
        let (status, body) = self.send(Method::DELETE, url, None).await;
        if status.is_success() {
            Ok(body["rev"].as_str().unwrap_or_default().to_string())
        } else {
            Err((status, body))
        }
    }

    /// Deletes the current winning revision (re-read on 409); false when
    /// the document does not exist.
    pub async fn delete(&self, db: &str, id: &str) -> bool {
        for _ in 0..20 {
            let Some(rev) = self.rev(db, id).await else {
                return false;
            };
            match self.try_delete(db, id, &rev).await {
                Ok(_) => return true,
                Err((StatusCode::CONFLICT, _)) => continue,
                Err((status, body)) => panic!("DELETE /{db}/{id}: {status} {body}"),
            }
        }
        panic!("DELETE /{db}/{id} kept conflicting");
    }

    /// `_bulk_docs`; returns the per-document results.
    pub async fn bulk_docs(&self, db: &str, docs: &[Value]) -> Vec<Value> {
        self.bulk(db, json!({ "docs": docs })).await
    }

    /// `_bulk_docs` with `new_edits: false`: stores the given revisions as
    /// they are, as replication does (this is how conflicts are made).
    pub async fn bulk_docs_replicated(&self, db: &str, docs: &[Value]) -> Vec<Value> {
        self.bulk(db, json!({ "docs": docs, "new_edits": false }))
            .await
    }

    async fn bulk(&self, db: &str, body: Value) -> Vec<Value> {
        let (status, answer) = self
            .send(Method::POST, self.url_of(&[db, "_bulk_docs"]), Some(&body))
            .await;
        assert!(
            status.is_success(),
            "POST /{db}/_bulk_docs: {status} {answer}"
        );
        match answer {
            Value::Array(results) => results,
            other => panic!("POST /{db}/_bulk_docs answered {other}"),
        }
    }

    /// Every document (design documents included), with its body.
    pub async fn all_docs(&self, db: &str) -> Vec<Value> {
        let rows = self
            .all_docs_rows(db, &[("include_docs", "true")], None)
            .await;
        rows.into_iter()
            .filter_map(|mut row| row.get_mut("doc").map(Value::take))
            .collect()
    }

    /// The rows of `_all_docs` with `query` (a `GET`, or a `POST` of `keys`).
    async fn all_docs_rows(
        &self,
        db: &str,
        query: &[(&str, &str)],
        keys: Option<Vec<&String>>,
    ) -> Vec<Value> {
        let mut url = self.url_of(&[db, "_all_docs"]);
        url.query_pairs_mut().extend_pairs(query);
        let (status, mut body) = match keys {
            None => self.send(Method::GET, url, None).await,
            Some(keys) => {
                let keys = json!({ "keys": keys });
                self.send(Method::POST, url, Some(&keys)).await
            }
        };
        assert_eq!(status, StatusCode::OK, "/{db}/_all_docs: {body}");
        match body["rows"].take() {
            Value::Array(rows) => rows,
            other => panic!("/{db}/_all_docs has no rows: {other}"),
        }
    }

    /// The current revision of each of `ids` that exists (not deleted),
    /// read in one `_all_docs` request.
    pub async fn revs(
        &self,
        db: &str,
        ids: impl IntoIterator<Item = &String>,
    ) -> BTreeMap<String, String> {
        let keys: Vec<&String> = ids.into_iter().collect();
        let rows = self.all_docs_rows(db, &[], Some(keys)).await;
        rows.iter()
            .filter(|row| row["value"]["deleted"] != true)
            .filter_map(|row| {
                let rev = row["value"]["rev"].as_str()?;
                Some((row["key"].as_str()?.to_string(), rev.to_string()))
            })
            .collect()
    }

    /// The ids of the documents that have conflicting revisions
    /// (`_conflicts` not empty), read in one `_all_docs` request.
    pub async fn conflicted_ids(&self, db: &str) -> Vec<String> {
        let query = [("include_docs", "true"), ("conflicts", "true")];
        let rows = self.all_docs_rows(db, &query, None).await;
        rows.iter()
            .filter(|row| {
                row["doc"]["_conflicts"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            })
            .filter_map(|row| Some(row["id"].as_str()?.to_string()))
            .collect()
    }

    /// Every document except design documents, by id (empty when the
    /// database does not exist).
    pub async fn docs_by_id(&self, db: &str) -> BTreeMap<String, Value> {
        if self.db_info(db).await.is_none() {
            return BTreeMap::new();
        }
        self.all_docs(db)
            .await
            .into_iter()
            .filter_map(|doc| {
                let id = doc["_id"].as_str()?.to_string();
                (!id.starts_with("_design/")).then_some((id, doc))
            })
            .collect()
    }

    /// `GET /db/_design/<ddoc>/_view/<view>`.
    pub async fn view(&self, db: &str, ddoc: &str, view: &str) -> (StatusCode, Value) {
        self.send(
            Method::GET,
            self.url_of(&[db, "_design", ddoc, "_view", view]),
            None,
        )
        .await
    }
}
