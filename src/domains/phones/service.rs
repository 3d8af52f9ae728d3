//! The phones listener's logic: what a phone's request gets, from the
//! mirror and the serving index only (never CouchDB). Also the per-unit
//! request log, the security log, the miss limiter, and the admin read
//! views built on them.
//!
//! Every denial — unknown realm or account, unknown MAC, a MAC of another
//! account, a disabled or duplicate unit, a file the model does not
//! produce, a User-Agent whose MAC or vendor disagrees with the path, an
//! address outside the account's allow list, a malformed path, another
//! method — is the same bare 404; the reason goes to the unit's request
//! log (when there is a unit) and to the security log (tracing target
//! `caldera::security`), never to the client. Secrets (passwords, HA1s,
//! `Authorization`) are never logged.
//!
//! Misses that look like probing (unknown MACs, mismatched User-Agents,
//! malformed paths, wrong credentials) count against the source; past the
//! budget the source cools down: device requests get 429 unless they
//! authenticate or are a *trusted pair* (`trust`: a MAC served from that
//! address before, with the same User-Agent), so the phones behind a
//! scanner's NAT keep working; model-common files, which carry no
//! secrets, stay served. Every throttle decision is in the security log.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use ipnet::IpNet;
use serde_json::{Value, json};

use super::auth::{self, NonceKey, Stored, Verdict};
use super::hot::HotStats;
use super::limiter::{self, Limiter, Limits};
use super::mac::Mac;
use super::request::{self, Agent, Target};
use super::serving::{FileLookup, FileMeta, FileSet, ServedCommon, ServedFile, Tables};
use super::trust::{self, Pair, Standing, Trust, TrustLimits};
use super::vendors;
use crate::cache::CacheEntry;
use crate::cache::mirror::{Entries, Mirror, Observer};
use crate::domains::Domain;
use crate::telemetry::metrics::{Metrics, PhonesGauges};
use prometheus_client::metrics::counter::Counter;

/// `Retry-After` of a file whose content changed while it was being served.
const GONE_RETRY_AFTER: u64 = 1;

/// The tracing target of the security log.
pub const SECURITY: &str = "caldera::security";

/// The phones settings that may change on SIGHUP.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub limits: Limits,
    /// The trusted pairs' TTL and size limit.
    pub trust: TrustLimits,
    pub nonce_ttl: Duration,
    /// Entries kept per unit in its request log.
    pub request_log: usize,
    /// Largest accepted log upload.
    pub max_upload: usize,
    /// Proxies whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<IpNet>,
    /// The bound of the served files' hot set.
    pub hot_set_bytes: usize,
}

impl Settings {
    pub fn from_config(config: &crate::config::PhonesConfig) -> Settings {
        Settings {
            limits: Limits {
                budget: config.rate_limit_misses,
                window: config.rate_limit_window,
                cooldown: config.rate_limit_cooldown,
                max_sources: config.rate_limit_max_sources,
            },
            trust: TrustLimits {
                ttl: config.trusted_pair_ttl.as_secs(),
                max: config.trusted_pairs_max,
            },
            nonce_ttl: config.nonce_ttl,
            request_log: config.request_log_size,
            max_upload: config.max_upload_bytes,
            trusted_proxies: config.trusted_proxies.clone(),
            hot_set_bytes: config.hot_set_bytes,
        }
    }
}

/// A phone's request, as the listener read it.
#[derive(Debug, Clone, Copy)]
pub struct PhoneRequest<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub target: &'a str,
    pub host: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub forwarded_for: Option<&'a str>,
    pub peer: IpAddr,
    /// For a PUT: the body length, or `None` when it was over the cap.
    pub upload: Option<Option<usize>>,
}

/// What the listener answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The uniform 404.
    NotFound,
    TooMany {
        retry_after: u64,
    },
    Challenge {
        challenges: Vec<String>,
    },
    File {
        not_modified: bool,
        /// The body and its precomputed headers (shared, not copied).
        file: Arc<ServedFile>,
        /// Per-device (carries secrets): not for shared caches.
        private: bool,
    },
    /// A log upload taken (204).
    Accepted,
    /// A log upload over the cap (413).
    TooLarge,
    /// The cache is not warm yet (start-up, or a store resumed from disk
    /// still catching up with the cache feed): 503, decided before any
    /// lookup, so it neither serves a stale byte nor tells anything about
    /// units.
    Unavailable {
        retry_after: u64,
    },
}

impl Reply {
    pub fn status(&self) -> u16 {
        match self {
            Reply::NotFound => 404,
            Reply::TooMany { .. } => 429,
            Reply::Challenge { .. } => 401,
            Reply::File {
                not_modified: true, ..
            } => 304,
            Reply::File { .. } => 200,
            Reply::Accepted => 204,
            Reply::TooLarge => 413,
            Reply::Unavailable { .. } => 503,
        }
    }
}

/// What a phone is told to wait while the cache is not warm.
const UNAVAILABLE_RETRY_SECS: u64 = 5;

/// One request in a unit's log. The texts are shared with the entry
/// before when they are the same (a phone sends the same User-Agent for the
/// same files every time), so logging a request allocates nothing.
#[derive(Debug, Clone)]
struct Logged {
    time: SystemTime,
    ip: IpAddr,
    user_agent: Arc<str>,
    method: Arc<str>,
    file: Arc<str>,
    status: u16,
    reason: Cow<'static, str>,
}

impl Logged {
    fn to_json(&self) -> Value {
        json!({
            "time": rfc3339(self.time), "ip": self.ip.to_string(), "user_agent": &*self.user_agent,
            "method": &*self.method, "file": &*self.file, "status": self.status, "reason": &*self.reason,
        })
    }
}

/// A request for a unit's log, as the service saw it (texts already made
/// loggable).
struct LogLine<'a> {
    ip: IpAddr,
    user_agent: &'a str,
    method: &'a str,
    file: &'a str,
    status: u16,
    reason: &'a Cow<'static, str>,
}

/// `text`, sharing `before` when it says the same.
fn shared_text(before: Option<&Arc<str>>, text: &str) -> Arc<str> {
    match before {
        Some(before) if **before == *text => before.clone(),
        _ => Arc::from(text),
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[derive(Default)]
struct UnitLog {
    requests: VecDeque<Logged>,
    last_seen: Option<Logged>,
}

/// Shards of the per-unit logs, so phones served on different threads
/// rarely wait on each other.
const LOG_SHARDS: usize = 16;

struct RequestLogs {
    shards: Vec<Mutex<HashMap<Arc<str>, UnitLog>>>,
}

impl Default for RequestLogs {
    fn default() -> Self {
        RequestLogs {
            shards: (0..LOG_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl RequestLogs {
    fn shard(&self, unit: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, UnitLog>> {
        let hash = trust::fnv1a64(unit.as_bytes());
        self.shards[(hash % LOG_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, unit: &Arc<str>, line: &LogLine<'_>, keep: usize) {
        let mut shard = self.shard(unit);
        let log = shard.entry(unit.clone()).or_default();
        let before = log.requests.back();
        let entry = Logged {
            time: SystemTime::now(),
            ip: line.ip,
            user_agent: shared_text(before.map(|b| &b.user_agent), line.user_agent),
            method: shared_text(before.map(|b| &b.method), line.method),
            file: shared_text(before.map(|b| &b.file), line.file),
            status: line.status,
            reason: line.reason.clone(),
        };
        if matches!(entry.status, 200 | 204 | 304) {
            log.last_seen = Some(entry.clone());
        }
        log.requests.push_back(entry);
        while log.requests.len() > keep.max(1) {
            log.requests.pop_front();
        }
    }

    fn last_seen(&self, unit: &str) -> Option<Value> {
        self.shard(unit)
            .get(unit)?
            .last_seen
            .as_ref()
            .map(Logged::to_json)
    }

    /// The requests, newest first, and the last success.
    fn requests(&self, unit: &str) -> (Vec<Value>, Option<Value>) {
        let shard = self.shard(unit);
        let Some(log) = shard.get(unit) else {
            return (Vec::new(), None);
        };
        let requests = log.requests.iter().rev().map(Logged::to_json).collect();
        (requests, log.last_seen.as_ref().map(Logged::to_json))
    }
}

/// A unit's log goes with its cache document (observed on the mirror).
impl Observer for RequestLogs {
    fn reset(&self, entries: &Entries<'_>) {
        let units: std::collections::HashSet<&str> = entries
            .ids(Domain::Phones.name())
            .filter_map(|id| id.strip_prefix("phones:unit:"))
            .collect();
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|id, _| units.contains(&**id));
        }
    }

    fn put(&self, _entry: &Arc<CacheEntry>) {}

    fn remove(&self, id: &str) {
        if let Some(unit) = id.strip_prefix("phones:unit:") {
            self.shard(unit).remove(unit);
        }
    }
}

/// How a request was decided, for the reply and the logs.
struct Outcome {
    reply: Reply,
    account: Option<Arc<str>>,
    /// The unit's document id (without the `phones:unit:` prefix).
    unit: Option<Arc<str>>,
    reason: Cow<'static, str>,
    /// Counts against the source (probing, wrong credentials).
    miss: bool,
    /// Addresses a device (per-device file or upload), so a cool-down applies.
    device: bool,
    authenticated: bool,
    /// The device's MAC, once the request named one.
    mac: Option<Mac>,
    /// Served although its source cools down, and why.
    bypassed: Option<Standing>,
}

impl Outcome {
    fn deny(reason: impl Into<Cow<'static, str>>) -> Outcome {
        Outcome {
            reply: Reply::NotFound,
            account: None,
            unit: None,
            reason: reason.into(),
            miss: false,
            device: false,
            authenticated: false,
            mac: None,
            bypassed: None,
        }
    }

    /// A miss that counts against the source: a MAC-shaped name whose MAC
    /// the account does not serve (what enumeration looks like).
    fn counted(mut self) -> Outcome {
        self.miss = true;
        self.device = true;
        self
    }

    /// Addresses a device, so a source's cool-down applies to it.
    fn of_device(mut self) -> Outcome {
        self.device = true;
        self
    }

    fn in_account(mut self, account: &Arc<str>) -> Outcome {
        self.account = Some(account.clone());
        self
    }

    fn of_unit(mut self, unit: &Arc<str>) -> Outcome {
        self.unit = Some(unit.clone());
        self.device = true;
        self
    }
}

/// Throttle decisions, by outcome (`caldera_phones_throttle_decisions_total`;
/// detached counters until `with_metrics`).
#[derive(Default)]
struct Decisions {
    started: Counter,
    refused: Counter,
    remembered: Counter,
    authenticated: Counter,
}

impl Decisions {
    fn of(metrics: &Metrics) -> Decisions {
        let counter = |outcome| {
            metrics
                .phones_throttle_decisions
                .get_or_create(&Metrics::outcome(outcome))
                .clone()
        };
        Decisions {
            started: counter("cooldown_started"),
            refused: counter("refused"),
            remembered: counter("trusted_pair"),
            authenticated: counter("authenticated"),
        }
    }
}

/// The phones listener's state.
pub struct PhonesService {
    mirror: Arc<Mirror>,
    tables: Arc<Tables>,
    limiter: Limiter,
    trust: Trust,
    decisions: Decisions,
    logs: Arc<RequestLogs>,
    key: NonceKey,
    settings: ArcSwap<Settings>,
    /// The mirror was seen warm (it never goes cold again): saves reading
    /// its watch channel on every request.
    warm: AtomicBool,
}

/// Nonce key material: the configured secret, else random for this process.
pub fn nonce_key(secret: Option<&str>) -> NonceKey {
    match secret {
        Some(secret) => NonceKey::new(secret.as_bytes()),
        None => {
            // uuid v4 comes from the operating system's CSPRNG.
            let a = uuid::Uuid::new_v4();
            let b = uuid::Uuid::new_v4();
            NonceKey::new(&[a.as_bytes().as_slice(), b.as_bytes().as_slice()].concat())
        }
    }
}

impl PhonesService {
    pub fn new(mirror: Arc<Mirror>, settings: Settings, key: NonceKey) -> PhonesService {
        let tables = Arc::new(Tables::with_hot_set(settings.hot_set_bytes));
        mirror.observe(tables.clone());
        let logs = Arc::new(RequestLogs::default());
        mirror.observe(logs.clone());
        PhonesService {
            mirror,
            tables,
            limiter: Limiter::default(),
            trust: Trust::new(settings.trust),
            decisions: Decisions::default(),
            logs,
            key,
            settings: ArcSwap::from_pointee(settings),
            warm: AtomicBool::new(false),
        }
    }

    /// Counts throttle decisions in `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> PhonesService {
        self.decisions = Decisions::of(metrics);
        self
    }

    pub fn reload(&self, settings: Settings) {
        self.trust.apply(&settings.trust, unix_seconds());
        self.tables.resize_hot_set(settings.hot_set_bytes);
        self.settings.store(Arc::new(settings));
    }

    /// The trusted pairs (for the state file).
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The throttle's settings and counts, for `/v1/status` and `/metrics`:
    /// numbers only, never an address or a MAC.
    pub fn throttle_status(&self) -> ThrottleStatus {
        let settings = self.settings.load();
        ThrottleStatus {
            limits: settings.limits,
            trust: settings.trust,
            sources: self.limiter.tracked(),
            cooling: self.limiter.cooling_count(Instant::now()),
            trusted_pairs: self.trust.len(),
            decisions: [
                ("cooldown_started", self.decisions.started.get()),
                ("refused", self.decisions.refused.get()),
                ("trusted_pair", self.decisions.remembered.get()),
                ("authenticated", self.decisions.authenticated.get()),
            ],
            hot_set: self.tables.hot_stats(),
        }
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    fn is_warm(&self) -> bool {
        if self.warm.load(Ordering::Relaxed) {
            return true;
        }
        let warm = self.mirror.is_loaded();
        if warm {
            self.warm.store(true, Ordering::Relaxed);
        }
        warm
    }

    /// Answers one request.
    pub fn serve(&self, req: &PhoneRequest<'_>) -> Reply {
        if !self.is_warm() {
            return Reply::Unavailable {
                retry_after: UNAVAILABLE_RETRY_SECS,
            };
        }
        let settings = self.settings.load();
        let now = Instant::now();
        let ip = client_ip(req.peer, req.forwarded_for, &settings.trusted_proxies);
        let path = req.target.split('?').next().unwrap_or_default();
        let target = request::parse_target(path);
        let (mut outcome, file) = match &target {
            Some(target) => (
                self.decide(req, ip, target),
                Cow::Borrowed(target.file.as_str()),
            ),
            None => (
                Outcome::deny("malformed path"),
                request::loggable(path, 128),
            ),
        };
        let source = limiter::source_key(ip);
        if outcome.device
            && let Some(until) = self.limiter.cooling(ip, &settings.limits, now)
        {
            let pair = outcome
                .mac
                .map(|mac| device_pair(source, mac, req, unix_seconds()));
            let standing = self
                .trust
                .standing(outcome.authenticated, pair, &settings.trust);
            self.throttle(&mut outcome, standing, until.saturating_duration_since(now));
        }
        if outcome.miss && self.limiter.miss(ip, &settings.limits, now) {
            // The miss past the budget is refused already.
            tracing::warn!(target: SECURITY, event = "cooldown_started", %ip, reason = &*outcome.reason,
                cooldown_secs = settings.limits.cooldown.as_secs(), "too many misses from this source");
            self.decisions.started.inc();
            outcome.reply = Reply::TooMany {
                retry_after: settings.limits.cooldown.as_secs().max(1),
            };
            outcome.reason = format!("cool-down started ({})", outcome.reason).into();
        }
        if let (Reply::File { .. }, Some(_), Some(mac)) =
            (&outcome.reply, &outcome.unit, outcome.mac)
        {
            // Served a per-device file (credentials checked when the unit
            // has some): the pair is proven.
            let pair = device_pair(source, mac, req, unix_seconds());
            self.trust.remember(pair, &settings.trust);
        }
        self.record(req, ip, &outcome, &file, &settings);
        outcome.reply
    }

    /// Applies a source's cool-down to a device request that stands as
    /// `standing`: strangers get the 429 (whatever their MAC), the others
    /// go on as decided.
    fn throttle(&self, outcome: &mut Outcome, standing: Standing, left: Duration) {
        match standing {
            Standing::Stranger => {
                self.decisions.refused.inc();
                outcome.reply = Reply::TooMany {
                    retry_after: left.as_secs().max(1),
                };
                outcome.reason =
                    format!("cooling down after too many misses ({})", outcome.reason).into();
                outcome.miss = false;
            }
            Standing::Remembered => {
                self.decisions.remembered.inc();
            }
            Standing::Authenticated => {
                self.decisions.authenticated.inc();
            }
        }
        if standing != Standing::Stranger {
            outcome.bypassed = Some(standing);
        }
    }

    /// Decides a request for a well-formed `target`; `ip` is the client.
    fn decide(&self, req: &PhoneRequest<'_>, ip: IpAddr, target: &Target) -> Outcome {
        let Target { account, file } = target;
        let upload = req.method == "PUT";
        if !matches!(req.method, "GET" | "HEAD" | "POST" | "PUT") {
            let why = format!("method {} is not served", request::loggable(req.method, 16));
            return Outcome::deny(why);
        }
        let ua = req.user_agent.unwrap_or_default();
        let path_macs = if upload {
            request::mac_of_upload(file).into_iter().collect()
        } else {
            request::macs_in_file(file)
        };
        let agent = Agent::of(ua);
        let Some(account) = self.account_id(account.as_deref(), req.host) else {
            let outcome = Outcome::deny("unknown realm or account");
            return if path_macs.is_empty() {
                outcome
            } else {
                outcome.counted()
            };
        };
        let Some(served) = self.tables.account(&account) else {
            return Outcome::deny("unknown account").in_account(&account);
        };
        if !served.served {
            return Outcome::deny("the account is not served").in_account(&account);
        }
        if !served.allows(ip) {
            return Outcome::deny("address not in the account's allowed_cidrs")
                .in_account(&account);
        }
        if upload && path_macs.is_empty() {
            return Outcome::deny("PUT only takes <mac>-<name> uploads").in_account(&account);
        }
        if !upload && let Some(outcome) = self.common_file(req, &account, file, &agent) {
            return outcome;
        }
        let mac = match (self.path_mac(&account, &path_macs), agent.mac) {
            (Some(path), Some(ua_mac)) if path != ua_mac => {
                let why = format!("the User-Agent's MAC {ua_mac} is not the path's {path}");
                return Outcome::deny(why).in_account(&account).of_device();
            }
            (Some(mac), _) | (None, Some(mac)) => mac,
            (None, None) => {
                return Outcome::deny("no MAC in the file name or the User-Agent")
                    .in_account(&account);
            }
        };
        let mut outcome = self.device_file(req, &account, file, mac, &agent);
        outcome.mac = Some(mac);
        outcome
    }

    /// The MAC a file name carries: the one of a unit of the account when
    /// several vendors' grammars read different MACs, else the first.
    fn path_mac(&self, account: &str, macs: &[Mac]) -> Option<Mac> {
        if let [only] = macs {
            // The rule below picks it too; no lookup needed.
            return Some(*only);
        }
        macs.iter()
            .find(|mac| !self.tables.units(account, mac).is_empty())
            .or_else(|| macs.first())
            .copied()
    }

    /// The account id from the path prefix, else from `Host`.
    fn account_id(&self, prefix: Option<&str>, host: Option<&str>) -> Option<Arc<str>> {
        if let Some(id) = prefix {
            return Some(Arc::from(id));
        }
        let realm = request::realm_of_host(host?)?;
        self.tables.account_of_realm(&realm)
    }

    /// A model-common file of the account, if `file` is one.
    fn common_file(
        &self,
        req: &PhoneRequest<'_>,
        account: &Arc<str>,
        file: &str,
        agent: &Agent,
    ) -> Option<Outcome> {
        let candidates = self.tables.common(account, file);
        // Several models of the account may share a file name (Polycom's
        // 000000000000.cfg): the asking phone's own model, else one of the
        // User-Agent's vendor, else the first.
        let chosen = match candidates.as_slice() {
            [] => return None,
            [only] => only.clone(),
            _ => {
                let own = agent
                    .mac
                    .and_then(|mac| self.tables.units(account, &mac).into_iter().next())
                    .and_then(|unit| unit.common.clone());
                let of_brand = |c: &&Arc<ServedCommon>| Some(c.brand.as_str()) == agent.brand;
                own.and_then(|doc| candidates.iter().find(|c| *c.doc() == doc).cloned())
                    .or_else(|| {
                        candidates
                            .iter()
                            .filter(of_brand)
                            .find(|c| agent.model.as_deref() == Some(c.model.as_str()))
                            .cloned()
                    })
                    .or_else(|| candidates.iter().find(of_brand).cloned())
                    .unwrap_or_else(|| candidates[0].clone())
            }
        };
        chosen.files.get(file)?;
        let mut outcome = Outcome::deny("model-common file").in_account(account);
        outcome.reply = self.file_reply(&chosen.files, file, req, false);
        Some(outcome)
    }

    fn device_file(
        &self,
        req: &PhoneRequest<'_>,
        account: &Arc<str>,
        file: &str,
        mac: Mac,
        agent: &Agent,
    ) -> Outcome {
        let units = self.tables.units(account, &mac);
        let [unit] = units.as_slice() else {
            let why = if self.tables.mac_in_other_account(account, &mac) {
                format!("MAC {mac} belongs to another account")
            } else {
                format!("unknown MAC {mac}")
            };
            return Outcome::deny(why).in_account(account).counted();
        };
        let deny = |why: &'static str| Outcome::deny(why).in_account(account).of_unit(&unit.id);
        match agent.brand {
            Some(brand) if brand != unit.brand => {
                return deny("the User-Agent is another vendor's phone").of_device();
            }
            // Per-device files carry SIP credentials: without the unit's
            // own HTTP credentials to ask for, only its vendor's phones get
            // them (the reference: "unknown UA → deny or require auth").
            None if unit.auth.is_none() => {
                return deny("the User-Agent is not a phone's").of_device();
            }
            _ => {}
        }
        let upload = req.method == "PUT";
        let found = unit.files.get(file).is_some();
        if upload
            && !vendors::by_brand(&unit.brand).is_some_and(|vendor| vendor.accepts_upload(file))
        {
            return deny("the unit's vendor does not upload this file").of_device();
        }
        if !upload && !found {
            return deny("the unit's model does not produce this file").of_device();
        }
        let mut outcome = deny("per-device file");
        if let Some(stored) = &unit.auth {
            match self.authenticate(req, stored) {
                Ok(()) => outcome.authenticated = true,
                Err(mut challenge) => {
                    challenge.account = outcome.account;
                    challenge.unit = outcome.unit;
                    challenge.device = true;
                    return *challenge;
                }
            }
        }
        outcome.reply = match (upload, found, req.upload) {
            (true, _, Some(Some(_))) => Reply::Accepted,
            (true, _, _) => Reply::TooLarge,
            (false, true, _) => self.file_reply(&unit.files, file, req, true),
            (false, false, _) => unreachable!("checked above"),
        };
        if upload {
            outcome.reason = "log upload".into();
        }
        outcome
    }

    /// The reply for the file `name` of `set` (which names it), honouring
    /// the conditional headers. A 304 needs no body, so it reads none; a
    /// body the mirror no longer holds at the indexed etag (a newer
    /// revision came in since the decision, or the store could not read it
    /// back) is a 503, never another revision's bytes.
    fn file_reply(
        &self,
        set: &FileSet,
        name: &str,
        req: &PhoneRequest<'_>,
        private: bool,
    ) -> Reply {
        let Some(meta) = set.get(name) else {
            return Reply::NotFound;
        };
        if not_modified(meta, req) {
            let file = ServedFile::new(
                bytes::Bytes::new(),
                meta.etag.to_string(),
                String::new(),
                meta.since,
            );
            return Reply::File {
                not_modified: true,
                file: Arc::new(file),
                private,
            };
        }
        match self.tables.file(&self.mirror, set, name) {
            FileLookup::Found(file) => Reply::File {
                not_modified: false,
                file,
                private,
            },
            FileLookup::Absent => Reply::NotFound,
            FileLookup::Gone => Reply::Unavailable {
                retry_after: GONE_RETRY_AFTER,
            },
        }
    }

    /// `Ok` when the request carries the unit's credentials, else the 401.
    fn authenticate(&self, req: &PhoneRequest<'_>, stored: &Stored) -> Result<(), Box<Outcome>> {
        let settings = self.settings.load();
        let now = unix_seconds();
        let request = auth::Request {
            method: req.method,
            uri: req.target,
            authorization: req.authorization,
        };
        let ttl = settings.nonce_ttl.as_secs();
        let verdict = auth::verify(stored, &request, &self.key, now, ttl);
        let challenge = |stale: bool, reason: &'static str| {
            let nonce = self.key.issue(&stored.realm, now, fastrand::u64(..));
            let mut outcome = Outcome::deny(reason);
            outcome.reply = Reply::Challenge {
                challenges: auth::challenges(stored, &nonce, stale),
            };
            outcome
        };
        match verdict {
            Verdict::Accepted => Ok(()),
            Verdict::Missing => Err(Box::new(challenge(false, "credentials required"))),
            Verdict::Stale => Err(Box::new(challenge(true, "expired nonce"))),
            Verdict::Refused => {
                let mut outcome = challenge(false, "wrong credentials");
                outcome.miss = true;
                Err(Box::new(outcome))
            }
        }
    }

    fn record(
        &self,
        req: &PhoneRequest<'_>,
        ip: IpAddr,
        outcome: &Outcome,
        file: &str,
        settings: &Settings,
    ) {
        let status = outcome.reply.status();
        let ua = request::loggable(req.user_agent.unwrap_or_default(), 200);
        let ua = &*ua;
        let account = outcome.account.as_deref().unwrap_or("-");
        let unit = outcome.unit.as_deref().unwrap_or("-");
        let file = request::loggable(file, 128);
        let file = &*file;
        match status {
            404 => {
                tracing::info!(target: SECURITY, event = "denied", %ip, account, unit, file, reason = &*outcome.reason, user_agent = ua, "phone request denied")
            }
            401 if outcome.miss => {
                tracing::warn!(target: SECURITY, event = "auth_refused", %ip, account, unit, file, user_agent = ua, "wrong credentials")
            }
            429 => {
                tracing::info!(target: SECURITY, event = "rate_limited", %ip, account, unit, file, reason = &*outcome.reason, "refused while cooling down")
            }
            200 if outcome.unit.is_some() => {
                tracing::info!(target: SECURITY, event = "device_file", %ip, account, unit, file, user_agent = ua, authenticated = outcome.authenticated, "per-device file served")
            }
            _ => {}
        }
        if let Some(standing) = outcome.bypassed {
            let reason = match standing {
                Standing::Remembered => {
                    "trusted pair: this device was served from this address before"
                }
                _ => "valid credentials",
            };
            tracing::info!(target: SECURITY, event = "throttle_bypassed", %ip, account, unit, file, status, reason, "served while cooling down");
        }
        let Some(unit) = &outcome.unit else {
            return;
        };
        let line = LogLine {
            ip,
            user_agent: ua,
            method: &request::loggable(req.method, 16),
            file,
            status,
            reason: &outcome.reason,
        };
        self.logs.record(unit, &line, settings.request_log);
    }

    /// `GET /v1/units/{id}`: the unit as built, with its last request.
    pub fn unit_view(&self, id: &str) -> Option<Value> {
        let entry = self.mirror.get(&format!("phones:unit:{id}"))?;
        let content = &entry.content.value();
        let files = |value: &Value| -> Value {
            let Some(map) = value.as_object() else {
                return json!({});
            };
            map.iter()
                .map(|(name, f)| {
                    let bytes = f["body"].as_str().map_or(0, str::len);
                    (name.clone(), json!({"content_type": f["content_type"], "etag": f["etag"], "bytes": bytes}))
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let common = content["common"]["key"]
            .as_str()
            .and_then(|key| self.mirror.get(&format!("phones:{key}")))
            .map(|c| files(&c.content.value()["files"]))
            .unwrap_or_else(|| json!({}));
        let last_seen = self.logs.last_seen(id);
        Some(json!({
            "id": id, "unit": content["unit"], "account": content["account"],
            "served": content["served"], "reason": content["reason"],
            "config": content["config"],
            "provenance": super::merge::expand_provenance(&content["provenance"], &content["origins"]),
            "lines": content["lines"],
            "auth": content["auth"].is_object(),
            "files": files(&content["files"]), "common_files": common,
            "errors": entry.errors, "stale": entry.stale, "last_seen": last_seen,
        }))
    }

    /// `GET /v1/units/{id}/files/{file}`: a device file, or a common file
    /// of its model.
    pub fn unit_file(&self, id: &str, file: &str) -> Option<(String, Bytes)> {
        let entry = self.mirror.get(&format!("phones:unit:{id}"))?;
        self.file_of(&entry.content.value(), file)
    }

    /// A file of a unit's content, else of its model's common files.
    fn file_of(&self, content: &Value, file: &str) -> Option<(String, Bytes)> {
        let found = |content: &Value| {
            let f = content["files"].get(file)?;
            Some((
                f["content_type"].as_str()?.to_string(),
                Bytes::from(f["body"].as_str()?.to_string()),
            ))
        };
        found(content).or_else(|| {
            let key = content["common"]["key"].as_str()?;
            found(&self.mirror.get(&format!("phones:{key}"))?.content.value())
        })
    }

    /// `GET /v1/units/{id}/why`: every value of the unit's configuration
    /// with who set it and what was refused (`explain`).
    pub fn unit_why(&self, id: &str) -> Option<Value> {
        let entry = self.mirror.get(&format!("phones:unit:{id}"))?;
        let content = entry.content.value();
        let provenance =
            super::merge::expand_provenance(&content["provenance"], &content["origins"]);
        let mut why = super::explain::explain(&content["config"], &provenance, &entry.errors);
        why["unit"] = json!(id);
        Some(why)
    }

    /// A file of the unit for people to read: `unit_file` with the value of
    /// every secret-named parameter masked (`mask`), as the unit's vendor
    /// names its secrets.
    pub fn unit_file_masked(&self, id: &str, file: &str) -> Option<(String, Bytes)> {
        // One read of the unit's document for both the file and its brand.
        let entry = self.mirror.get(&format!("phones:unit:{id}"))?;
        let content = entry.content.value();
        let (content_type, body) = self.file_of(&content, file)?;
        let vendor = content["unit"]["brand"]
            .as_str()
            .and_then(super::vendors::by_brand);
        let names_secret = |name: &str| match vendor {
            Some(v) => v.names_secret(name),
            None => super::vendors::params::names_a_secret(name),
        };
        let masked = super::mask::mask_secrets(&String::from_utf8_lossy(&body), names_secret);
        Some((content_type, Bytes::from(masked)))
    }

    /// `GET /v1/units/{id}/requests`.
    pub fn unit_requests(&self, id: &str) -> Option<Value> {
        self.mirror.get(&format!("phones:unit:{id}"))?;
        let (requests, last_seen) = self.logs.requests(id);
        Some(json!({"unit": id, "last_seen": last_seen, "requests": requests}))
    }

    /// Build status of every unit of an account, by unit id.
    pub fn account_units(&self, account: &str) -> serde_json::Map<String, Value> {
        self.tables
            .units_of(account)
            .into_iter()
            .filter_map(|doc| {
                let entry = self.mirror.get(&doc)?;
                let id = doc.trim_start_matches("phones:unit:").to_string();
                let last_seen = self.logs.last_seen(&id);
                let content = entry.content.value();
                let status = json!({
                    "served": content["served"], "reason": content["reason"],
                    "errors": entry.errors.as_array().map_or(0, Vec::len), "stale": entry.stale,
                    "files": content["files"].as_object().map(|f| f.keys().cloned().collect::<Vec<_>>()),
                    "last_seen": last_seen,
                });
                Some((id, status))
            })
            .collect()
    }
}

/// The throttle's settings and counts (`PhonesService::throttle_status`).
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleStatus {
    pub limits: Limits,
    pub trust: TrustLimits,
    /// Source addresses tracked, and those cooling down now.
    pub sources: usize,
    pub cooling: usize,
    pub trusted_pairs: usize,
    /// Throttle decisions so far, by outcome.
    pub decisions: [(&'static str, u64); 4],
    /// The served files' hot set.
    pub hot_set: HotStats,
}

impl ThrottleStatus {
    pub fn set_gauges(&self, gauges: &PhonesGauges) {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        gauges.misses_budget.set(i64::from(self.limits.budget));
        gauges.window_seconds.set(int(self.limits.window.as_secs()));
        gauges
            .cooldown_seconds
            .set(int(self.limits.cooldown.as_secs()));
        gauges.sources_tracked.set(int(self.sources as u64));
        gauges.sources_cooling.set(int(self.cooling as u64));
        gauges.trusted_pairs.set(int(self.trusted_pairs as u64));
        gauges.trusted_pairs_max.set(int(self.trust.max as u64));
        gauges.trusted_pair_ttl_seconds.set(int(self.trust.ttl));
        gauges.hot_set_files.set(int(self.hot_set.files));
        gauges.hot_set_bytes.set(int(self.hot_set.bytes));
        gauges
            .hot_set_limit_bytes
            .set(int(self.hot_set.limit_bytes));
        gauges.hot_set_hits.set(int(self.hot_set.hits));
        gauges.hot_set_misses.set(int(self.hot_set.misses));
    }

    pub fn to_json(&self) -> Value {
        let decisions: serde_json::Map<String, Value> = self
            .decisions
            .iter()
            .map(|(name, n)| ((*name).to_string(), json!(n)))
            .collect();
        json!({
            "rate_limit": {
                "misses": self.limits.budget, "window_secs": self.limits.window.as_secs(),
                "cooldown_secs": self.limits.cooldown.as_secs(), "max_sources": self.limits.max_sources,
                "sources_tracked": self.sources, "sources_cooling": self.cooling,
            },
            "trusted_pairs": {"count": self.trusted_pairs, "max": self.trust.max, "ttl_secs": self.trust.ttl},
            "decisions": decisions,
            "hot_set": {
                "files": self.hot_set.files, "bytes": self.hot_set.bytes,
                "limit_bytes": self.hot_set.limit_bytes,
                "hits": self.hot_set.hits, "misses": self.hot_set.misses,
            },
        })
    }
}

/// Now, in unix seconds (the clock of nonces and trusted pairs).
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The trusted-pair key of a device request at `unix`.
fn device_pair(source: IpAddr, mac: Mac, req: &PhoneRequest<'_>, unix: u64) -> Pair {
    Pair {
        source,
        mac,
        agent: trust::fnv1a64(req.user_agent.unwrap_or_default().as_bytes()),
        seen: unix,
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy —
/// the last `X-Forwarded-For` hop that is not one.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    header
        .rsplit(',')
        .map(str::trim)
        .map(|hop| hop.parse::<IpAddr>())
        .take_while(Result::is_ok)
        .filter_map(Result::ok)
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// Whether a conditional request's copy is current.
fn not_modified(file: &FileMeta, req: &PhoneRequest<'_>) -> bool {
    match (req.if_none_match, req.if_modified_since) {
        (Some(tags), _) => etag_matches(tags, &file.etag),
        (None, Some(since)) => httpdate::parse_http_date(since).is_ok_and(|since| {
            // HTTP dates have whole seconds.
            file.since
                .duration_since(since)
                .map_or(true, |newer| newer < Duration::from_secs(1))
        }),
        (None, None) => false,
    }
}

/// `If-None-Match`: `*` or a list of (possibly weak) entity tags.
fn etag_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").trim_matches('"') == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let header = Some("198.51.100.7, 10.0.0.9");
        assert_eq!(
            client_ip(peer, header, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let stranger: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(client_ip(stranger, header, &trusted), stranger);
        assert_eq!(client_ip(peer, Some("garbage"), &trusted), peer);
        assert_eq!(client_ip(peer, None, &trusted), peer);
    }

    #[test]
    fn entity_tags_match_strong_weak_and_star() {
        assert!(etag_matches("\"abc\"", "abc"));
        assert!(etag_matches("W/\"abc\", \"x\"", "abc"));
        assert!(etag_matches("*", "abc"));
        assert!(!etag_matches("\"abd\"", "abc"));
    }
}
