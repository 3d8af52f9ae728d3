//! The IO shell of the edge store's device calls, answered from the mirror
//! (never from CouchDB): `template_set/latest`, `config_package` and the
//! signed downloads; plus what every call shares — settings, answers in the
//! seed's shapes, the parsed views of cache documents, authentication, and
//! read-your-writes for management calls (`manage`, `reports`).
//!
//! Packages: a class whose package depends on no edge is built once (the
//! builder precomputes its full package; deltas are built on request and
//! shared by every edge of the class); otherwise per edge. Built packages
//! live in a byte-bounded LRU keyed by their sha256, found by a hash of
//! every input (manifest digest, starting set version, the edge's record,
//! the generator), so a changed input is simply a different key. A download
//! URL carries the package's sha256: served from the LRU, or rebuilt from
//! the current state when evicted (any instance can), and refused (404)
//! when the rebuilt bytes differ because the configuration moved on.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use ipnet::IpNet;
use jiff::tz::TimeZone;
use lru::LruCache;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::delta::{self, Since};
use super::manifest::ClassManifest;
use super::model::{self, Class, EDGE_CONFIG, EdgeRecord, FileRef, render_set_version};
use super::package::{self, GENERATOR, PackageError};
use super::registry::{self, shard_of};
use super::signing::{self, Grant};
use super::telemetry::ProxyPolicy;
use super::{CATALOG_KEY, blob_bytes, class_key, file_key, package_key};
use crate::cache::doc_id;
use crate::cache::mirror::Mirror;
use crate::config::{DeviceAuth, EdgeConfig, ProxyPolicyName, Secret};
use crate::couch::{Body, Db};
use crate::domains::Domain;
use crate::rebuild::engine::EngineHandle;

/// An answer in the seed's shape: status code and JSON body (or the body
/// already serialised, on hot paths; then `body` is null).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub raw: Option<Bytes>,
}

impl Answer {
    pub fn ok(body: Value) -> Answer {
        Answer {
            status: 200,
            body,
            raw: None,
        }
    }

    /// A 200 whose JSON body is already text.
    pub fn ok_raw(json: Vec<u8>) -> Answer {
        Answer {
            status: 200,
            body: Value::Null,
            raw: Some(Bytes::from(json)),
        }
    }

    /// The body as JSON (parsing a raw one).
    pub fn json(&self) -> Value {
        match &self.raw {
            Some(raw) => serde_json::from_slice(raw).unwrap_or(Value::Null),
            None => self.body.clone(),
        }
    }

    /// `{"message": text}`.
    pub fn message(status: u16, text: &str) -> Answer {
        Answer::with(status, json!({ "message": text }))
    }

    pub fn with(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body,
            raw: None,
        }
    }

    /// `{"message": text, "description": why}`.
    pub fn failure(status: u16, text: &str, description: impl Into<String>) -> Answer {
        Answer::with(
            status,
            json!({ "message": text, "description": description.into() }),
        )
    }

    /// `{"message": {field: text}}`, flask-restful's validation shape.
    pub fn field(field: &str, text: &str) -> Answer {
        Answer::with(400, json!({ "message": { field: text } }))
    }

    pub fn not_ready() -> Answer {
        Answer::failure(
            503,
            "Service not ready",
            "the cache is not loaded yet; try again shortly",
        )
    }

    pub fn unavailable(err: &crate::couch::Error) -> Answer {
        Answer::failure(503, "Something went wrong", format!("CouchDB: {err}"))
    }
}

/// The management credentials (`edge.admin_*`).
#[derive(Debug, Clone, Default)]
pub struct AdminCredentials {
    pub token: Option<Secret>,
    pub basic: Option<(String, Secret)>,
}

/// What the edge store runs with; replaced on reload.
pub struct Settings {
    pub download_key: Vec<u8>,
    pub download_ttl: Duration,
    pub public_url: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub proxy_policy: ProxyPolicy,
    pub proxy_types: Vec<String>,
    pub require_forwarded_for: bool,
    pub admin: AdminCredentials,
    pub device_auth: DeviceAuth,
    pub max_upload_bytes: usize,
    pub package_cache_bytes: usize,
    pub report_page_size: usize,
    pub report_timezone: TimeZone,
    pub edge_id_pattern: regex_lite::Regex,
    pub write_wait: Duration,
    pub report_versions_kept: usize,
}

impl Settings {
    /// From the validated configuration; `fallback_key` signs URLs when no
    /// `edge.download_key` is set.
    pub fn from_config(config: &EdgeConfig, fallback_key: &[u8]) -> Settings {
        let tz = match config.report_timezone.as_str() {
            "UTC" | "Etc/UTC" => TimeZone::UTC,
            name => TimeZone::get(name).unwrap_or(TimeZone::UTC),
        };
        Settings {
            download_key: config
                .download_key
                .as_ref()
                .map_or_else(|| fallback_key.to_vec(), |k| k.expose().as_bytes().to_vec()),
            download_ttl: config.download_ttl,
            public_url: config.public_url.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            proxy_policy: match config.proxy_policy {
                ProxyPolicyName::Off => ProxyPolicy::Off,
                ProxyPolicyName::Log => ProxyPolicy::Log,
                ProxyPolicyName::Enforce => ProxyPolicy::Enforce,
            },
            proxy_types: config.proxy_types.clone(),
            require_forwarded_for: config.require_forwarded_for,
            admin: AdminCredentials {
                token: config.admin_token.clone(),
                basic: config
                    .admin_username
                    .clone()
                    .zip(config.admin_password.clone()),
            },
            device_auth: config.device_auth,
            max_upload_bytes: config.max_upload_bytes,
            package_cache_bytes: config.package_cache_bytes,
            report_page_size: config.report_page_size,
            report_timezone: tz,
            edge_id_pattern: regex_lite::Regex::new(&config.edge_id_pattern)
                .unwrap_or_else(|_| regex_lite::Regex::new("^[0-9a-f]{6}$").expect("valid")),
            write_wait: config.write_wait,
            report_versions_kept: config.report_versions_kept,
        }
    }
}

/// Parsed views of cache documents, re-parsed only when a document's hash changes.
struct Parsed<T> {
    entries: RwLock<HashMap<String, (String, Arc<T>)>>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Parsed {
            entries: RwLock::default(),
        }
    }
}

impl<T> Parsed<T> {
    fn get(
        &self,
        mirror: &Mirror,
        id: &str,
        parse: impl Fn(&Value) -> Option<T>,
    ) -> Option<Arc<T>> {
        let Some(entry) = mirror.get(id) else {
            self.write().remove(id);
            return None;
        };
        if let Some((hash, parsed)) = self.read().get(id)
            && *hash == entry.hash
        {
            return Some(parsed.clone());
        }
        let parsed = Arc::new(parse(&entry.content.value())?);
        self.write()
            .insert(id.to_string(), (entry.hash.clone(), parsed.clone()));
        Some(parsed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, (String, Arc<T>)>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, (String, Arc<T>)>> {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A class manifest with its digest.
pub struct Manifest {
    pub manifest: ClassManifest,
    pub digest: String,
}

/// A package ready to serve.
#[derive(Debug, Clone)]
pub struct Built {
    pub bytes: Bytes,
    pub sha256: String,
}

/// What is known about the package of a set of inputs.
#[derive(Clone)]
enum Known {
    Package(String),
    /// The class-wide build needs an edge.
    PerEdge,
}

/// Built packages, bounded by their total size.
struct PackageCache {
    budget: usize,
    used: usize,
    by_sha: LruCache<String, Arc<Built>>,
    by_input: LruCache<String, Known>,
}

/// Input keys remembered (a few bytes each; the packages are bounded by size).
const INPUT_KEYS: usize = 1 << 16;

impl PackageCache {
    fn new(budget: usize) -> PackageCache {
        PackageCache {
            budget,
            used: 0,
            by_sha: LruCache::unbounded(),
            by_input: LruCache::new(NonZeroUsize::new(INPUT_KEYS).expect("non-zero")),
        }
    }

    fn insert(&mut self, built: Arc<Built>) {
        if built.bytes.len() > self.budget {
            return;
        }
        if let Some(old) = self.by_sha.put(built.sha256.clone(), built.clone()) {
            self.used -= old.bytes.len();
        }
        self.used += built.bytes.len();
        while self.used > self.budget {
            match self.by_sha.pop_lru() {
                Some((_, old)) => self.used -= old.bytes.len(),
                None => break,
            }
        }
    }

    fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
        while self.used > self.budget {
            match self.by_sha.pop_lru() {
                Some((_, old)) => self.used -= old.bytes.len(),
                None => break,
            }
        }
    }
}

/// Why a package could not be served.
pub enum PackageFailure {
    NotReady,
    Failed(PackageError),
}

/// The edge store's shell.
pub struct EdgeService {
    pub(super) mirror: Arc<Mirror>,
    pub(super) config_db: Db,
    pub(super) telemetry_db: Db,
    pub(super) engine: Option<EngineHandle>,
    pub(super) settings: ArcSwap<Settings>,
    manifests: Parsed<Manifest>,
    edges: Parsed<HashMap<String, Arc<EdgeRecord>>>,
    macs: Parsed<HashMap<String, String>>,
    packages: Mutex<PackageCache>,
    pub(super) metrics: Arc<crate::telemetry::metrics::Metrics>,
}

impl EdgeService {
    pub fn new(
        mirror: Arc<Mirror>,
        config_db: Db,
        telemetry_db: Db,
        engine: Option<EngineHandle>,
        settings: Settings,
        metrics: Arc<crate::telemetry::metrics::Metrics>,
    ) -> EdgeService {
        let budget = settings.package_cache_bytes;
        EdgeService {
            mirror,
            config_db,
            telemetry_db,
            engine,
            settings: ArcSwap::from_pointee(settings),
            manifests: Parsed::default(),
            edges: Parsed::default(),
            macs: Parsed::default(),
            packages: Mutex::new(PackageCache::new(budget)),
            metrics,
        }
    }

    pub fn reload(&self, settings: Settings) {
        self.cache().set_budget(settings.package_cache_bytes);
        self.settings.store(Arc::new(settings));
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, PackageCache> {
        self.packages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    // -- lookups in the mirror ------------------------------------------------

    pub fn is_ready(&self) -> bool {
        self.mirror.is_loaded()
    }

    /// The catalog output (management listings).
    pub fn catalog(&self) -> Option<Arc<crate::cache::CacheEntry>> {
        self.mirror.get(&doc_id(Domain::Edge, CATALOG_KEY))
    }

    /// The newest set sequence the cache shows.
    pub fn latest_seq(&self) -> u64 {
        self.catalog()
            .and_then(|c| {
                c.content
                    .value()
                    .get("latest_set_seq")
                    .and_then(Value::as_u64)
            })
            .unwrap_or(0)
    }

    pub fn manifest(&self, class: &Class) -> Option<Arc<Manifest>> {
        let id = doc_id(Domain::Edge, &class_key(class));
        self.manifests.get(&self.mirror, &id, |content| {
            Some(Manifest {
                digest: content.get("digest")?.as_str()?.to_string(),
                manifest: serde_json::from_value(content.clone()).ok()?,
            })
        })
    }

    pub fn edge(&self, edge_id: &str) -> Option<Arc<EdgeRecord>> {
        let id = doc_id(Domain::Edge, &registry::edges_key(shard_of(edge_id)));
        let shard = self.edges.get(&self.mirror, &id, |content| {
            let edges: BTreeMap<String, EdgeRecord> =
                serde_json::from_value(content.get("edges")?.clone()).ok()?;
            Some(edges.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
        })?;
        shard.get(edge_id).cloned()
    }

    /// The edge owning a MAC address (normalised).
    pub fn edge_of_mac(&self, mac: &str) -> Option<String> {
        let id = doc_id(Domain::Edge, &registry::macs_key(shard_of(mac)));
        let shard = self.macs.get(&self.mirror, &id, |content| {
            serde_json::from_value(content.get("macs")?.clone()).ok()
        })?;
        shard.get(mac).cloned()
    }

    pub fn valid_edge_id(&self, edge_id: &str) -> bool {
        model::valid_registry_edge_id(edge_id) && self.settings().edge_id_pattern.is_match(edge_id)
    }

    // -- authentication -------------------------------------------------------

    /// Checks the management credentials of a request (`Authorization`).
    ///
    /// # Errors
    /// A 401 answer when credentials are configured and these do not match.
    pub fn check_admin(&self, authorization: Option<&str>) -> Result<(), Answer> {
        let settings = self.settings();
        let admin = &settings.admin;
        if admin.token.is_none() && admin.basic.is_none() {
            return Ok(());
        }
        let given = authorization.unwrap_or("");
        let token_ok = admin.token.as_ref().is_some_and(|token| {
            given
                .strip_prefix("Bearer ")
                .is_some_and(|g| same_secret(g, token.expose()))
        });
        let basic_ok = admin.basic.as_ref().is_some_and(|(user, password)| {
            given
                .strip_prefix("Basic ")
                .and_then(|b| STANDARD.decode(b.trim()).ok())
                .and_then(|raw| String::from_utf8(raw).ok())
                .is_some_and(|pair| same_secret(&pair, &format!("{user}:{}", password.expose())))
        });
        if token_ok || basic_ok {
            Ok(())
        } else {
            Err(Answer::failure(
                401,
                "Unauthorized",
                "management endpoints need the admin bearer token or basic credentials",
            ))
        }
    }

    /// Checks an edge's own token (`edge.device_auth`).
    ///
    /// # Errors
    /// A 401 answer.
    pub fn check_device(&self, edge: &EdgeRecord, token: Option<&str>) -> Result<(), Answer> {
        let refused = || {
            Err(Answer::failure(
                401,
                "Unauthorized",
                format!("edge {} must present its token", edge.edge_id),
            ))
        };
        match (self.settings().device_auth, &edge.token_sha256) {
            (DeviceAuth::Off, _) | (DeviceAuth::Optional, None) => Ok(()),
            (DeviceAuth::Required, None) => refused(),
            (_, Some(sha)) => match token {
                Some(token) if same_secret(&model::sha256_hex(token.as_bytes()), sha) => Ok(()),
                _ => refused(),
            },
        }
    }

    // -- device calls ---------------------------------------------------------

    /// Finds the edge a device call names, with the seed's errors.
    fn resolve_edge(&self, edge_id: &str) -> Result<Arc<EdgeRecord>, Answer> {
        if !self.valid_edge_id(edge_id) {
            return Err(Answer::field("edge_id", "Invalid edge id"));
        }
        if !self.is_ready() {
            return Err(Answer::not_ready());
        }
        self.edge(edge_id).ok_or_else(|| {
            Answer::failure(
                404,
                "Could not find resource on DP server",
                format!("edge {edge_id} is not in the registry"),
            )
        })
    }

    fn parse_since(set_version: Option<&str>) -> Result<Option<u64>, Answer> {
        match set_version.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(text) => model::parse_set_version(text)
                .map(Some)
                .map_err(|_| Answer::field("set_version", "Invalid set version")),
        }
    }

    /// `GET template_set/latest?edge_id=&set_version=`.
    pub fn template_set(
        &self,
        edge_id: Option<&str>,
        set_version: Option<&str>,
        token: Option<&str>,
    ) -> Answer {
        let answer = || -> Result<Answer, Answer> {
            let since = Self::parse_since(set_version)?;
            let edge = self.resolve_edge(edge_id.unwrap_or(""))?;
            self.check_device(&edge, token)?;
            let Some(manifest) = edge.class().and_then(|c| self.manifest(&c)) else {
                let latest = self.latest_seq();
                return Ok(Answer::ok(json!({
                    "data": [],
                    "latest_set_version": render_set_version(latest),
                })));
            };
            let latest = manifest.manifest.latest_set_seq;
            if since.is_some_and(|s| s > latest) {
                tracing::info!(edge = edge.edge_id, latest, asked = ?since, "an edge is ahead of the set log (restored?); it gets the full set");
            }
            let since = Since::for_request(since, latest);
            let selected = delta::select(&manifest.manifest, since);
            Ok(Answer::ok_raw(delta::template_set_answer(
                &selected,
                latest,
                &edge.edge_id,
            )))
        };
        answer().unwrap_or_else(|refused| refused)
    }

    /// `GET config_package?mac_address=a|b&edge_id=&set_version=`.
    pub async fn config_package(
        &self,
        macs: Option<&str>,
        edge_id: Option<&str>,
        set_version: Option<&str>,
        token: Option<&str>,
        base_url: &str,
    ) -> Answer {
        match self
            .config_package_inner(macs, edge_id, set_version, token, base_url)
            .await
        {
            Ok(answer) | Err(answer) => answer,
        }
    }

    async fn config_package_inner(
        &self,
        macs: Option<&str>,
        edge_id: Option<&str>,
        set_version: Option<&str>,
        token: Option<&str>,
        base_url: &str,
    ) -> Result<Answer, Answer> {
        let since = Self::parse_since(set_version)?;
        let edge = self.package_edge(macs, edge_id)?;
        self.check_device(&edge, token)?;
        let manifest = edge.class().and_then(|c| self.manifest(&c));
        let latest = manifest
            .as_ref()
            .map_or_else(|| self.latest_seq(), |m| m.manifest.latest_set_seq);
        let no_changes = || {
            Answer::ok(json!({
                "data": "No changes in configuration",
                "edge_id": edge.edge_id,
                "latest_set_version": render_set_version(latest),
            }))
        };
        let Some(manifest) = manifest else {
            return Ok(no_changes());
        };
        let since = Since::for_request(since, latest);
        if delta::select(&manifest.manifest, since).is_empty() {
            return Ok(no_changes());
        }
        let built = match self.package(&manifest, since, &edge).await {
            Ok(built) => built,
            Err(PackageFailure::NotReady) => {
                return Err(Answer::failure(
                    503,
                    "Package not generated",
                    "the package's files are not loaded yet; try again shortly",
                ));
            }
            Err(PackageFailure::Failed(err)) => {
                tracing::warn!(edge = edge.edge_id, error = %err, "package refused");
                return Err(Answer::failure(
                    500,
                    "Package not generated",
                    err.to_string(),
                ));
            }
        };
        let settings = self.settings();
        let name = signing::file_name(&edge.edge_id, manifest.manifest.latest_set_time);
        let expires = now_seconds() + settings.download_ttl.as_secs();
        let grant = Grant {
            edge_id: edge.edge_id.clone(),
            since: since.seq(),
            sha256: built.sha256.clone(),
            expires,
        };
        let token = signing::sign(&settings.download_key, &grant, &name);
        Ok(Answer::ok(json!({
            "data": "Package generated",
            "path": format!("{base_url}/api/v1.0/package/{token}/{name}"),
            "edge_id": edge.edge_id,
            "latest_set_version": render_set_version(latest),
            "sha256": built.sha256,
            "size": built.bytes.len(),
        })))
    }

    /// The edge a `config_package` call names: MACs first (the first one
    /// registered wins), then the edge id.
    fn package_edge(
        &self,
        macs: Option<&str>,
        edge_id: Option<&str>,
    ) -> Result<Arc<EdgeRecord>, Answer> {
        let macs: Vec<&str> = macs
            .unwrap_or("")
            .split('|')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        if macs.is_empty() {
            return match edge_id.map(str::trim).filter(|e| !e.is_empty()) {
                Some(edge_id) => self.resolve_edge(edge_id),
                None => Err(Answer::field("edge_id", "Invalid edge id")),
            };
        }
        if !self.is_ready() {
            return Err(Answer::not_ready());
        }
        let found = macs
            .iter()
            .filter_map(|m| model::normalise_mac(m))
            .find_map(|mac| self.edge_of_mac(&mac))
            .and_then(|id| self.edge(&id));
        match found {
            Some(edge) => {
                if let Some(asked) = edge_id.filter(|e| !e.is_empty() && *e != edge.edge_id) {
                    tracing::info!(
                        asked,
                        found = edge.edge_id,
                        "config_package: the MAC addresses name another edge than edge_id; the MACs win"
                    );
                }
                Ok(edge)
            }
            None => Err(Answer::with(
                404,
                json!({ "data": "Edge Id not found for given mac_address in DP" }),
            )),
        }
    }

    /// `GET /api/v1.0/package/<token>/<name>`: the package bytes.
    ///
    /// # Errors
    /// A 404 answer (expired, forged, another edge's, superseded).
    pub async fn download(&self, token: &str, name: &str) -> Result<(Arc<Built>, String), Answer> {
        let not_found = |why: &str| Answer::failure(404, "Package not found", why);
        let settings = self.settings();
        let grant = signing::verify(&settings.download_key, token, name, now_seconds())
            .map_err(|refusal| not_found(&refusal.to_string()))?;
        if let Some(built) = self.cache().by_sha.get(&grant.sha256).cloned() {
            return Ok((built, name.to_string()));
        }
        if !self.is_ready() {
            return Err(Answer::not_ready());
        }
        let superseded =
            "the configuration changed since this URL was made; ask for the package again";
        let edge = self
            .edge(&grant.edge_id)
            .ok_or_else(|| not_found(superseded))?;
        let manifest = edge
            .class()
            .and_then(|c| self.manifest(&c))
            .ok_or_else(|| not_found(superseded))?;
        let since = grant.since.map_or(Since::Full, Since::After);
        match self.package(&manifest, since, &edge).await {
            Ok(built) if built.sha256 == grant.sha256 => Ok((built, name.to_string())),
            _ => Err(not_found(superseded)),
        }
    }

    // -- packages -------------------------------------------------------------

    fn input_key(manifest: &Manifest, since: Since, edge: Option<&EdgeRecord>) -> String {
        let mut hasher = Sha256::new();
        hasher.update(GENERATOR.as_bytes());
        hasher.update(manifest.digest.as_bytes());
        hasher.update(format!("{:?}", since.seq()).as_bytes());
        match edge {
            Some(edge) => hasher.update(serde_json::to_vec(edge).expect("records serialize")),
            None => hasher.update(b"class-wide"),
        }
        format!("{:x}", hasher.finalize())
    }

    /// The package of a delta for an edge: the class's shared one when
    /// nothing depends on the edge, else the edge's own.
    async fn package(
        &self,
        manifest: &Arc<Manifest>,
        since: Since,
        edge: &Arc<EdgeRecord>,
    ) -> Result<Arc<Built>, PackageFailure> {
        let class_key = Self::input_key(manifest, since, None);
        let known = self.cache().by_input.get(&class_key).cloned();
        match known {
            Some(Known::Package(sha)) => {
                if let Some(built) = self.cache().by_sha.get(&sha).cloned() {
                    return Ok(built);
                }
            }
            Some(Known::PerEdge) => return self.edge_package(manifest, since, edge).await,
            None => {}
        }
        if since == Since::Full
            && let Some(built) = self.precomputed(manifest)
        {
            let mut cache = self.cache();
            cache
                .by_input
                .put(class_key, Known::Package(built.sha256.clone()));
            cache.insert(built.clone());
            return Ok(built);
        }
        match self.build(manifest, since, None).await {
            Ok(built) => {
                let mut cache = self.cache();
                cache
                    .by_input
                    .put(class_key, Known::Package(built.sha256.clone()));
                cache.insert(built.clone());
                Ok(built)
            }
            Err(PackageFailure::Failed(PackageError::NeedsEdge(_))) => {
                self.cache().by_input.put(class_key, Known::PerEdge);
                self.edge_package(manifest, since, edge).await
            }
            Err(other) => Err(other),
        }
    }

    async fn edge_package(
        &self,
        manifest: &Arc<Manifest>,
        since: Since,
        edge: &Arc<EdgeRecord>,
    ) -> Result<Arc<Built>, PackageFailure> {
        let key = Self::input_key(manifest, since, Some(edge));
        let known = self.cache().by_input.get(&key).cloned();
        if let Some(Known::Package(sha)) = known
            && let Some(built) = self.cache().by_sha.get(&sha).cloned()
        {
            self.metrics
                .edge_packages
                .get_or_create(&crate::telemetry::metrics::Metrics::outcome("cached"))
                .inc();
            return Ok(built);
        }
        let built = self.build(manifest, since, Some(edge.clone())).await?;
        let mut cache = self.cache();
        cache
            .by_input
            .put(key, Known::Package(built.sha256.clone()));
        cache.insert(built.clone());
        Ok(built)
    }

    /// The builder's precomputed full package of a class, when it is
    /// current.
    fn precomputed(&self, manifest: &Manifest) -> Option<Arc<Built>> {
        let entry = self.mirror.get(&doc_id(
            Domain::Edge,
            &package_key(&manifest.manifest.class()),
        ))?;
        let content = &entry.content.value();
        if content.get("state")?.as_str()? != "ready"
            || content.get("manifest_digest")?.as_str()? != manifest.digest
        {
            return None;
        }
        let sha256 = content.get("sha256")?.as_str()?.to_string();
        if let Some(built) = self.cache().by_sha.get(&sha256).cloned() {
            return Some(built);
        }
        let bytes = STANDARD.decode(content.get("data")?.as_str()?).ok()?;
        (model::sha256_hex(&bytes) == sha256).then(|| {
            Arc::new(Built {
                bytes: Bytes::from(bytes),
                sha256,
            })
        })
    }

    /// The bytes of every file the selected part of a manifest names.
    fn files(
        &self,
        manifest: &ClassManifest,
        since: Since,
    ) -> Result<HashMap<String, Vec<u8>>, PackageFailure> {
        let mut refs: Vec<&FileRef> = manifest.pre_gen.iter().chain(&manifest.post_gen).collect();
        for selected in delta::select(manifest, since) {
            let master = selected.master;
            refs.extend(
                [&master.uninstall, &master.pre_script, &master.post_script]
                    .into_iter()
                    .flatten(),
            );
            refs.extend(selected.templates.iter().map(|t| &t.file));
        }
        let mut files = HashMap::new();
        for file in refs {
            let key = file.key();
            if files.contains_key(&key) {
                continue;
            }
            let bytes = self
                .mirror
                .get(&doc_id(Domain::Edge, &file_key(&key)))
                .and_then(|entry| blob_bytes(&entry.content.value()))
                .ok_or(PackageFailure::NotReady)?;
            files.insert(key, bytes);
        }
        Ok(files)
    }

    async fn build(
        &self,
        manifest: &Arc<Manifest>,
        since: Since,
        edge: Option<Arc<EdgeRecord>>,
    ) -> Result<Arc<Built>, PackageFailure> {
        let files = self.files(&manifest.manifest, since)?;
        let manifest = manifest.clone();
        let per_edge = edge.is_some();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let selected = delta::select(&manifest.manifest, since);
            let request = package::Request {
                manifest: &manifest.manifest,
                selected: &selected,
                since,
                edge: edge.as_deref(),
            };
            package::build(&request, &|file: &FileRef| files.get(&file.key()).cloned())
        })
        .await
        .map_err(|err| {
            PackageFailure::Failed(PackageError::Invalid(format!(
                "the package build failed: {err}"
            )))
        })?;
        let outcome = match (&result, per_edge) {
            (Ok(_), true) => "built_per_edge",
            (Ok(_), false) => "built_class",
            (Err(PackageError::NeedsEdge(_)), _) => "needs_edge",
            (Err(_), _) => "failed",
        };
        let metrics = &self.metrics;
        metrics
            .edge_packages
            .get_or_create(&crate::telemetry::metrics::Metrics::outcome(outcome))
            .inc();
        metrics
            .edge_package_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(package) => Ok(Arc::new(Built {
                bytes: Bytes::from(package.bytes),
                sha256: package.sha256,
            })),
            Err(PackageError::MissingFile { .. }) => Err(PackageFailure::NotReady),
            Err(err) => Err(PackageFailure::Failed(err)),
        }
    }

    // -- read-your-writes -----------------------------------------------------

    /// Hands freshly written `edge_config` documents to the engine (on a
    /// building instance) and waits until `visible` holds for the catalog,
    /// at most `edge.write_wait`.
    pub(super) async fn publish(&self, written: &[Written], visible: impl Fn(&Value) -> bool) {
        let wait = self.settings().write_wait;
        if let Some(engine) = &self.engine {
            let mut refreshes = Vec::new();
            for written in written {
                let (id, rev, body) = match written {
                    Written::Deleted { id, rev } => (id, rev.clone(), None),
                    Written::Doc(id) => match self.config_db.get(id).await {
                        Ok(Some(body)) => {
                            let rev = body
                                .get("_rev")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string();
                            (id, rev, Some(Body::of(&body)))
                        }
                        Ok(None) => continue,
                        Err(err) => {
                            tracing::warn!(id, error = %err, "cannot re-read a document just written");
                            continue;
                        }
                    },
                };
                refreshes.push(engine.refresh(EDGE_CONFIG, id, rev, body, wait));
            }
            futures_util::future::join_all(refreshes).await;
        }
        // Visible, and every file the manifests name is loaded (so a
        // package can be built right after a new version).
        let waiting = async {
            loop {
                let changed = self.mirror.changed();
                if self.catalog().is_some_and(|c| visible(&c.content.value()))
                    && self.files_loaded()
                {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(wait, waiting).await.is_err() {
            tracing::warn!(
                ?wait,
                "an edge store write is stored but not yet visible in the cache"
            );
        }
    }
}

impl EdgeService {
    /// Whether every file some class manifest names is in the mirror.
    fn files_loaded(&self) -> bool {
        self.mirror
            .ids_of(Domain::Edge.name())
            .iter()
            .filter_map(|id| id.strip_prefix("edge:class:").and_then(Class::from_key))
            .filter_map(|class| self.manifest(&class))
            .all(|m| {
                m.manifest.file_refs().iter().all(|f| {
                    self.mirror
                        .get(&doc_id(Domain::Edge, &file_key(&f.key())))
                        .is_some()
                })
            })
    }
}

/// A document a management call wrote.
pub(super) enum Written {
    Doc(String),
    Deleted { id: String, rev: String },
}

/// Compares secrets in time independent of where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes())
}

pub(super) fn now_seconds() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0)
}

/// Now, as stored in documents (RFC 3339, UTC, milliseconds).
pub(super) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}
