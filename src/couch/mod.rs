//! The only code that speaks CouchDB's HTTP API: documents, `_bulk_docs`,
//! `_all_docs`, `_local` documents, attachments, database creation and
//! `_changes`. It works unchanged against Apache CouchDB 3.x and
//! pouchdb-server 4.2: sequences stay opaque JSON values, nothing is filtered
//! on the server, and nothing asks for gzip.

mod changes;
mod error;
mod json_scan;
pub mod retry;
mod rows;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use reqwest::{Method, Url};
use serde::Deserialize;
use serde_json::{Value, json};

pub use changes::{ChangesStream, FeedTimeouts, Known};
pub use error::{Error, ErrorKind, Result};
pub use rows::{Line, Page, Row};

use crate::config::{CouchConfig, Credentials};
use crate::json::JsonText;

/// An update sequence: opaque, stored and sent back exactly as received.
pub type Seq = Value;

/// A document body as received: JSON (kept as text, parsed when read: see
/// `crate::json`), or the reason it could not be parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Json(JsonText),
    Malformed(String),
}

impl Body {
    /// The body of a parsed document.
    pub fn of(value: &Value) -> Body {
        Body::Json(JsonText::of(value))
    }

    /// The document, parsed; `None` when it is malformed.
    pub fn value(&self) -> Option<Value> {
        match self {
            Body::Json(text) => Some(text.parse()),
            Body::Malformed(_) => None,
        }
    }
}

/// A connection to one CouchDB server.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    pools: ArcSwap<Pools>,
    /// When the pools were last replaced (see `Client::stalled`).
    pools_since: Mutex<Instant>,
    config: CouchConfig,
    base: Url,
    credentials: Option<Credentials>,
}

/// The HTTP clients, each with its pool of keep-alive connections.
struct Pools {
    /// Ordinary requests, with a total deadline.
    http: reqwest::Client,
    /// Feed requests: no total deadline; the feed code enforces its own.
    feed_http: reqwest::Client,
}

impl Pools {
    fn new(config: &CouchConfig) -> Result<Pools> {
        let build = |total: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .tcp_keepalive(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(60))
                .user_agent(concat!("caldera/", env!("CARGO_PKG_VERSION")));
            if let Some(total) = total {
                builder = builder.timeout(total);
            }
            builder
                .build()
                .map_err(|err| Error::transport("building the HTTP client".into(), &err))
        };
        Ok(Pools {
            http: build(Some(config.request_timeout))?,
            feed_http: build(None)?,
        })
    }
}

/// Least time between two replacements of the connection pools.
const POOL_RESET_INTERVAL: Duration = Duration::from_secs(1);

impl Client {
    /// # Errors
    /// The HTTP client cannot be built (TLS set-up failed).
    pub fn new(config: &CouchConfig) -> Result<Client> {
        Ok(Client {
            inner: Arc::new(Inner {
                pools: ArcSwap::from_pointee(Pools::new(config)?),
                pools_since: Mutex::new(Instant::now()),
                config: config.clone(),
                base: config.url.clone(),
                credentials: config.credentials.clone(),
            }),
        })
    }

    /// A request got no answer in time. The server, or the route to it,
    /// may have gone silent without closing anything: then every idle
    /// connection in the pools is dead too, and each later request would
    /// wait out its own deadline on one of them before a fresh connection is
    /// tried. Replacing the pools (at most once a second) makes the next
    /// requests connect afresh; requests in flight keep their connections.
    pub(crate) fn stalled(&self) {
        let mut since = self
            .inner
            .pools_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if since.elapsed() < POOL_RESET_INTERVAL {
            return;
        }
        match Pools::new(&self.inner.config) {
            Ok(pools) => {
                self.inner.pools.store(Arc::new(pools));
                *since = Instant::now();
                tracing::debug!(url = %self.inner.base, "request timed out; opening fresh connections");
            }
            Err(err) => tracing::warn!(error = %err, "cannot rebuild the HTTP clients"),
        }
    }

    pub fn db(&self, name: &str) -> Db {
        Db {
            client: self.clone(),
            name: Arc::from(name),
        }
    }

    /// The server's URL, without credentials.
    pub fn url(&self) -> &Url {
        &self.inner.base
    }

    /// `GET /`: proves the server answers and the credentials work.
    ///
    /// # Errors
    /// The server cannot be reached or refuses the credentials.
    pub async fn server_info(&self) -> Result<Value> {
        let url = self.inner.base.clone();
        let response = self
            .send(Method::GET, url, None, "GET /".into(), false)
            .await?;
        parse_json(&response.body, "GET /")
    }

    fn request(&self, method: Method, url: Url, feed: bool) -> reqwest::RequestBuilder {
        let pools = self.inner.pools.load();
        let http = if feed { &pools.feed_http } else { &pools.http };
        let mut request = http
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(credentials) = &self.inner.credentials {
            request =
                request.basic_auth(&credentials.username, Some(credentials.password.expose()));
        }
        request
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<RequestBody>,
        operation: String,
        feed: bool,
    ) -> Result<Answer> {
        let mut request = self.request(method, url, feed);
        request = match body {
            Some(RequestBody::Json(bytes)) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes),
            Some(RequestBody::Raw {
                content_type,
                bytes,
            }) => request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes),
            None => request,
        };
        let response = request.send().await.map_err(|err| {
            if err.is_timeout() {
                self.stalled();
            }
            Error::transport(operation.clone(), &err)
        })?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let body = response.bytes().await.map_err(|err| {
            if err.is_timeout() {
                self.stalled();
            }
            Error::transport(operation.clone(), &err)
        })?;
        if !status.is_success() {
            return Err(Error::from_response(operation, status, &body));
        }
        Ok(Answer { content_type, body })
    }
}

enum RequestBody {
    Json(Vec<u8>),
    Raw { content_type: String, bytes: Bytes },
}

struct Answer {
    content_type: String,
    body: Bytes,
}

/// Database information from `GET /{db}`.
#[derive(Debug, Clone, Deserialize)]
pub struct DbInfo {
    pub update_seq: Seq,
    #[serde(default)]
    pub doc_count: u64,
}

/// One result of `_bulk_docs`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BulkResult {
    pub id: String,
    pub rev: Option<String>,
    pub error: Option<String>,
    pub reason: Option<String>,
}

/// One row of `_all_docs` asked by keys.
#[derive(Debug, Clone, Deserialize)]
pub struct AllDocsRow {
    pub key: String,
    pub value: Option<AllDocsValue>,
    pub doc: Option<Value>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AllDocsValue {
    pub rev: String,
    #[serde(default)]
    pub deleted: bool,
}

/// A key range of `_all_docs`.
#[derive(Debug, Clone, Copy)]
pub struct KeyRange<'a> {
    pub start: &'a str,
    pub end: &'a str,
    pub descending: bool,
    pub include_docs: bool,
    pub limit: Option<u64>,
}

/// One database on a server.
#[derive(Clone)]
pub struct Db {
    client: Client,
    name: Arc<str>,
}

impl Db {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The URL of `/{db}/{segments...}`; document ids are split so that
    /// `_design/x` and `_local/x` keep their slash and other ids have theirs
    /// escaped.
    fn url(&self, id: Option<&str>, rest: &[&str]) -> Url {
        let mut url = self.client.inner.base.clone();
        {
            let mut segments = url.path_segments_mut().expect("http URLs have paths");
            segments.pop_if_empty().push(&self.name);
            if let Some(id) = id {
                match id.split_once('/') {
                    Some((prefix @ ("_design" | "_local"), name)) => {
                        segments.push(prefix).push(name);
                    }
                    _ => {
                        segments.push(id);
                    }
                }
            }
            for part in rest {
                segments.push(part);
            }
        }
        url
    }

    fn op(&self, method: &Method, what: &str) -> String {
        if what.is_empty() {
            format!("{method} {}", self.name)
        } else {
            format!("{method} {}/{what}", self.name)
        }
    }

    async fn json_call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer> {
        let operation = self.op(&method, what);
        let body =
            body.map(|b| RequestBody::Json(serde_json::to_vec(b).expect("JSON values serialize")));
        self.client.send(method, url, body, operation, false).await
    }

    /// `GET /{db}`; `None` when the database does not exist.
    ///
    /// # Errors
    /// Any failure other than 404.
    pub async fn info(&self) -> Result<Option<DbInfo>> {
        match self
            .json_call(Method::GET, self.url(None, &[]), None, "")
            .await
        {
            Ok(answer) => parse_json(&answer.body, &self.op(&Method::GET, "")).map(Some),
            Err(err) if err.is(ErrorKind::NotFound) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `PUT /{db}`: `true` when created, `false` when it already existed.
    ///
    /// # Errors
    /// Any failure other than "already exists".
    pub async fn create(&self) -> Result<bool> {
        match self
            .json_call(Method::PUT, self.url(None, &[]), None, "")
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if err.is(ErrorKind::Conflict) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// `DELETE /{db}`: `false` when it did not exist.
    ///
    /// # Errors
    /// Any failure other than 404.
    pub async fn delete_db(&self) -> Result<bool> {
        match self
            .json_call(Method::DELETE, self.url(None, &[]), None, "")
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if err.is(ErrorKind::NotFound) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// `GET /{db}/{id}`; `None` when missing or deleted.
    ///
    /// # Errors
    /// Any failure other than 404, or a body that is not JSON.
    pub async fn get(&self, id: &str) -> Result<Option<Value>> {
        match self
            .json_call(Method::GET, self.url(Some(id), &[]), None, id)
            .await
        {
            Ok(answer) => parse_json(&answer.body, &self.op(&Method::GET, id)).map(Some),
            Err(err) if err.is(ErrorKind::NotFound) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `PUT /{db}/{_id}` with the document's own `_rev` (if any); returns the
    /// new revision.
    ///
    /// # Errors
    /// Conflict when `_rev` is stale; any other failure.
    pub async fn put(&self, doc: &Value) -> Result<String> {
        let id = doc.get("_id").and_then(Value::as_str).ok_or_else(|| {
            Error::new(
                ErrorKind::Fatal,
                format!("PUT {}", self.name),
                "the document has no _id",
            )
        })?;
        let answer = self
            .json_call(Method::PUT, self.url(Some(id), &[]), Some(doc), id)
            .await?;
        rev_of(&answer.body, &self.op(&Method::PUT, id))
    }

    /// `DELETE /{db}/{id}?rev=`.
    ///
    /// # Errors
    /// Conflict when `rev` is stale; any other failure.
    pub async fn delete(&self, id: &str, rev: &str) -> Result<String> {
        let mut url = self.url(Some(id), &[]);
        url.query_pairs_mut().append_pair("rev", rev);
        let answer = self.json_call(Method::DELETE, url, None, id).await?;
        rev_of(&answer.body, &self.op(&Method::DELETE, id))
    }

    /// `POST /{db}/_bulk_docs`; one result per document, in order. Not atomic:
    /// check every result.
    ///
    /// # Errors
    /// The request as a whole failed.
    pub async fn bulk_docs(&self, docs: &[Value]) -> Result<Vec<BulkResult>> {
        let serialized: Vec<Vec<u8>> = docs
            .iter()
            .map(|doc| serde_json::to_vec(doc).expect("JSON values serialize"))
            .collect();
        self.bulk_docs_serialized(&serialized).await
    }

    /// `_bulk_docs` with documents already serialized (the cache writer
    /// serializes each document once and keeps the bytes for its size).
    ///
    /// # Errors
    /// The request as a whole failed.
    pub async fn bulk_docs_serialized<D: AsRef<[u8]>>(
        &self,
        docs: &[D],
    ) -> Result<Vec<BulkResult>> {
        let total: usize = docs.iter().map(|d| d.as_ref().len() + 1).sum();
        let mut body = Vec::with_capacity(total + 12);
        body.extend_from_slice(b"{\"docs\":[");
        for (i, doc) in docs.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(doc.as_ref());
        }
        body.extend_from_slice(b"]}");
        let operation = self.op(&Method::POST, "_bulk_docs");
        let answer = self
            .client
            .send(
                Method::POST,
                self.url(Some("_bulk_docs"), &[]),
                Some(RequestBody::Json(body)),
                operation.clone(),
                false,
            )
            .await?;
        parse_json(&answer.body, &operation)
    }

    /// `POST /{db}/_all_docs` with `keys`: one row per key, in order.
    ///
    /// # Errors
    /// The request failed.
    pub async fn all_docs(&self, keys: &[String], include_docs: bool) -> Result<Vec<AllDocsRow>> {
        #[derive(Deserialize)]
        struct Rows {
            rows: Vec<AllDocsRow>,
        }
        let mut url = self.url(Some("_all_docs"), &[]);
        if include_docs {
            url.query_pairs_mut().append_pair("include_docs", "true");
        }
        let body = json!({ "keys": keys });
        let answer = self
            .json_call(Method::POST, url, Some(&body), "_all_docs")
            .await?;
        parse_json::<Rows>(&answer.body, &self.op(&Method::POST, "_all_docs")).map(|r| r.rows)
    }

    /// `GET /{db}/_all_docs` over the keys from `range.start` to
    /// `range.end` (both inclusive; descending swaps their roles as
    /// CouchDB does), in key order.
    ///
    /// # Errors
    /// The request failed.
    pub async fn all_docs_range(&self, range: &KeyRange<'_>) -> Result<Vec<AllDocsRow>> {
        #[derive(Deserialize)]
        struct Rows {
            rows: Vec<AllDocsRow>,
        }
        let mut url = self.url(Some("_all_docs"), &[]);
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("startkey", &Value::from(range.start).to_string())
                .append_pair("endkey", &Value::from(range.end).to_string());
            if range.descending {
                query.append_pair("descending", "true");
            }
            if range.include_docs {
                query.append_pair("include_docs", "true");
            }
            if let Some(limit) = range.limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        let answer = self.json_call(Method::GET, url, None, "_all_docs").await?;
        parse_json::<Rows>(&answer.body, &self.op(&Method::GET, "_all_docs")).map(|r| r.rows)
    }

    /// `GET /{db}/_local/{name}`.
    ///
    /// # Errors
    /// Any failure other than 404.
    pub async fn get_local(&self, name: &str) -> Result<Option<Value>> {
        self.get(&format!("_local/{name}")).await
    }

    /// Writes `_local/{name}` portably: read the current `_rev` first
    /// (pouchdb-server insists on it; CouchDB ignores it), retry once on 409.
    ///
    /// # Errors
    /// The write failed twice, or any other failure.
    pub async fn put_local(&self, name: &str, content: &Value) -> Result<()> {
        let id = format!("_local/{name}");
        let mut attempt = 0;
        loop {
            let mut doc = content.clone();
            doc["_id"] = json!(id);
            if let Some(rev) = self.get(&id).await?.as_ref().and_then(|d| d.get("_rev")) {
                doc["_rev"] = rev.clone();
            }
            match self.put(&doc).await {
                Err(err) if err.is(ErrorKind::Conflict) && attempt == 0 => attempt += 1,
                other => return other.map(drop),
            }
        }
    }

    /// `PUT /{db}/{id}/{name}?rev=`: stores an attachment, returns the new rev.
    ///
    /// # Errors
    /// Conflict when `rev` is stale; any other failure.
    pub async fn put_attachment(
        &self,
        id: &str,
        rev: Option<&str>,
        name: &str,
        content_type: &str,
        bytes: Bytes,
    ) -> Result<String> {
        let mut url = self.url(Some(id), &[name]);
        if let Some(rev) = rev {
            url.query_pairs_mut().append_pair("rev", rev);
        }
        let body = RequestBody::Raw {
            content_type: content_type.to_string(),
            bytes,
        };
        let operation = self.op(&Method::PUT, &format!("{id}/{name}"));
        let answer = self
            .client
            .send(Method::PUT, url, Some(body), operation.clone(), false)
            .await?;
        rev_of(&answer.body, &operation)
    }

    /// `GET /{db}/{id}/{name}`: `(content type, bytes)`, `None` when missing.
    ///
    /// # Errors
    /// Any failure other than 404.
    pub async fn get_attachment(&self, id: &str, name: &str) -> Result<Option<(String, Bytes)>> {
        let operation = self.op(&Method::GET, &format!("{id}/{name}"));
        match self
            .client
            .send(
                Method::GET,
                self.url(Some(id), &[name]),
                None,
                operation,
                false,
            )
            .await
        {
            Ok(answer) => Ok(Some((answer.content_type, answer.body))),
            Err(err) if err.is(ErrorKind::NotFound) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// One page of `_changes?feed=normal&include_docs=true` after `since`.
    /// A normal feed answers at once, so the ordinary request deadline
    /// applies: a server gone silent must not hang a load or a probe.
    ///
    /// # Errors
    /// The request failed or the answer is not a changes page.
    pub async fn changes_page(&self, since: &Seq, limit: u64) -> Result<Page> {
        let mut url = self.url(Some("_changes"), &[]);
        url.query_pairs_mut()
            .append_pair("feed", "normal")
            .append_pair("include_docs", "true")
            .append_pair("since", &seq_param(since))
            .append_pair("limit", &limit.to_string());
        let operation = self.op(&Method::GET, "_changes");
        let answer = self
            .client
            .send(Method::GET, url, None, operation.clone(), false)
            .await?;
        rows::parse_page(&answer.body)
            .map_err(|why| Error::new(ErrorKind::Transient, operation, why))
    }

    /// The `_changes` URL of a live feed.
    fn feed_url(&self, since: &Seq, mode: &str, heartbeat: Duration, limit: Option<u64>) -> Url {
        let mut url = self.url(Some("_changes"), &[]);
        url.query_pairs_mut()
            .append_pair("feed", mode)
            .append_pair("include_docs", "true")
            .append_pair("heartbeat", &heartbeat.as_millis().to_string())
            .append_pair("since", &seq_param(since));
        if let Some(limit) = limit {
            url.query_pairs_mut()
                .append_pair("limit", &limit.to_string());
        }
        url
    }
}

/// A sequence as a `since` parameter: strings as they are, anything else as
/// its JSON text. Never parsed, never computed on.
pub fn seq_param(seq: &Seq) -> String {
    match seq {
        Value::String(text) => text.clone(),
        Value::Null => "0".to_string(),
        other => other.to_string(),
    }
}

/// The generation (the number before the dash) of a revision, used only to
/// order revisions of the same document that this process has seen.
pub fn rev_generation(rev: &str) -> u64 {
    rev.split_once('-')
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], operation: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|err| {
        Error::new(
            ErrorKind::Fatal,
            operation,
            format!("the answer is not the expected JSON: {err}"),
        )
    })
}

fn rev_of(body: &[u8], operation: &str) -> Result<String> {
    #[derive(Deserialize)]
    struct Saved {
        rev: String,
    }
    parse_json::<Saved>(body, operation).map(|s| s.rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(base: &str) -> Db {
        let config = CouchConfig {
            url: Url::parse(base).unwrap(),
            credentials: None,
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        };
        Client::new(&config).unwrap().db("edge/config")
    }

    #[test]
    fn urls_escape_names_but_keep_design_and_local_prefixes() {
        let db = db("http://h:5984/couch/");
        assert_eq!(
            db.url(Some("a/b c"), &[]).as_str(),
            "http://h:5984/couch/edge%2Fconfig/a%2Fb%20c"
        );
        assert_eq!(
            db.url(Some("_local/cp"), &[]).as_str(),
            "http://h:5984/couch/edge%2Fconfig/_local/cp"
        );
        assert_eq!(
            db.url(Some("_design/v"), &[]).as_str(),
            "http://h:5984/couch/edge%2Fconfig/_design/v"
        );
        assert_eq!(
            db.url(Some("t"), &["file.txt"]).as_str(),
            "http://h:5984/couch/edge%2Fconfig/t/file.txt"
        );
    }

    #[test]
    fn sequences_are_sent_back_as_received() {
        assert_eq!(seq_param(&json!("12-g1AAAA")), "12-g1AAAA");
        assert_eq!(seq_param(&json!(12)), "12");
        assert_eq!(seq_param(&Value::Null), "0");
    }

    #[test]
    fn revision_generations() {
        assert_eq!(rev_generation("12-abc"), 12);
        assert_eq!(rev_generation("garbage"), 0);
    }
}
