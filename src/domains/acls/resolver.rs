//! The IO shell of the ACLs: resolves the hostnames the ACL outputs name
//! and feeds the answers to the rebuild engine as documents of the
//! synthetic source `dns` (id = hostname, body = `model::dns_body`).
//!
//! Lookups follow Kazoo (`kz_network_utils:resolve`): SRV
//! `_sip._udp.<host>`, then A and AAAA of every SRV target, or of the host
//! itself when there is no SRV record. Every query has a hard deadline
//! (`acls.dns_timeout_ms`), up to `acls.dns_concurrency` hosts resolve at
//! once, and an answer is kept for its TTL (clamped to
//! `acls.dns_min_ttl_secs`..=`acls.dns_max_ttl_secs`) and then re-resolved
//! in the background. A failed lookup keeps the last good addresses and
//! reports the failure in the document's `error` (which the builder turns
//! into an `errors` entry of the output), in `caldera_acls_dns_lookups` and
//! `caldera_acls_dns_failing`; it is retried after the minimum TTL.
//!
//! Which hostnames: those listed in the `hostnames` of the ACL cache
//! documents in the mirror. At start-up the resolver seeds the `dns` source
//! with the addresses those documents last used, so a restart serves the
//! same lists before the first lookup completes; a document is sent to the
//! engine only when a host's addresses or error change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::model::{self, DNS, DnsAnswer};
use crate::cache::doc_id;
use crate::cache::mirror::Mirror;
use crate::config::AclsConfig;
use crate::couch::Body;
use crate::domains::Domain;
use crate::feeds::FeedEvent;
use crate::lifecycle::readiness::Readiness;
use crate::rebuild::engine;
use crate::rebuild::index::{SourceDoc, SourceId};
use crate::telemetry::metrics::{Metrics, OutcomeLabel};

/// The resolver's settings (`acls.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Hard deadline of one query.
    pub timeout: Duration,
    /// Hosts resolved at once.
    pub concurrency: usize,
    /// Name servers to ask instead of those of /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl DnsSettings {
    pub fn from_config(config: &AclsConfig) -> DnsSettings {
        DnsSettings {
            timeout: config.dns_timeout,
            concurrency: config.dns_concurrency,
            servers: config.dns_servers.clone(),
            min_ttl: config.dns_min_ttl,
            max_ttl: config.dns_max_ttl,
        }
    }
}

/// What resolving one host gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Addresses (sorted, never empty) and how long they are valid.
    Found {
        addresses: Vec<IpAddr>,
        ttl: Duration,
    },
    /// The reason, and the metric label.
    Failed { reason: String, kind: &'static str },
}

/// A hickory resolver with Kazoo's lookup order.
pub struct Resolver {
    dns: TokioResolver,
    timeout: Duration,
}

impl Resolver {
    /// # Errors
    /// The system resolver configuration cannot be read (when no servers
    /// are given).
    pub fn new(settings: &DnsSettings) -> Result<Resolver, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if settings.servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|err| format!("cannot read the system DNS configuration: {err}"))?
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let options = builder.options_mut();
        options.timeout = settings.timeout;
        options.attempts = 1;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // TTLs are ours to keep: every lookup asks the server.
        options.cache_size = 0;
        let dns = builder
            .build()
            .map_err(|err| format!("cannot build the DNS resolver: {err}"))?;
        Ok(Resolver {
            dns,
            timeout: settings.timeout,
        })
    }

    /// SRV `_sip._udp.<host>`, then A and AAAA of each target (or of the
    /// host itself when there is no SRV record).
    pub async fn resolve(&self, host: &str) -> Outcome {
        let fqdn = format!("{host}.");
        let srv_name = format!("_sip._udp.{fqdn}");
        let mut valid: Option<std::time::Instant> = None;
        let mut targets: Vec<String> = Vec::new();
        // Kazoo treats a failed SRV query like an absent one: the host's
        // own A/AAAA decide.
        if let Ok(Ok(lookup)) =
            tokio::time::timeout(self.deadline(), self.dns.srv_lookup(srv_name)).await
        {
            for record in lookup.answers() {
                if let RData::SRV(srv) = &record.data {
                    let target = srv.target.to_ascii();
                    if target != "." && !targets.contains(&target) {
                        targets.push(target);
                    }
                }
            }
            if !targets.is_empty() {
                valid = Some(lookup.valid_until());
            }
        }
        if targets.is_empty() {
            targets.push(fqdn);
        }
        let mut addresses = BTreeSet::new();
        let mut failure: Option<Outcome> = None;
        let lookups = targets.iter().map(|target| async move {
            (
                target,
                tokio::time::timeout(self.deadline(), self.dns.lookup_ip(target.as_str())).await,
            )
        });
        let results = futures_util::future::join_all(lookups).await;
        let several = results.len() > 1;
        for (target, result) in results {
            match result {
                Ok(Ok(found)) => {
                    addresses.extend(found.iter());
                    let until = found.valid_until();
                    valid = Some(valid.map_or(until, |v| v.min(until)));
                }
                // An authoritative "nothing here" for one SRV target is an
                // answer, not a failure.
                Ok(Err(err)) if several && (err.is_nx_domain() || err.is_no_records_found()) => {}
                Ok(Err(err)) => failure = Some(classify(&err, target, several)),
                Err(_) => {
                    failure = Some(Outcome::Failed {
                        reason: format!(
                            "DNS lookup timed out after {} ms",
                            self.timeout.as_millis()
                        ),
                        kind: "timeout",
                    });
                }
            }
        }
        if let Some(failure) = failure {
            return failure;
        }
        if addresses.is_empty() {
            return Outcome::Failed {
                reason: "DNS: the SRV targets have no A or AAAA records".into(),
                kind: "no_records",
            };
        }
        let ttl = valid.map_or(Duration::ZERO, |v| {
            v.saturating_duration_since(std::time::Instant::now())
        });
        Outcome::Found {
            addresses: addresses.into_iter().collect(),
            ttl,
        }
    }

    fn deadline(&self) -> Duration {
        // hickory's own timeout is the per-query one; this is the backstop.
        self.timeout + Duration::from_millis(50)
    }
}

fn classify(err: &NetError, target: &str, several: bool) -> Outcome {
    let which = if several {
        format!(" (SRV target {})", target.trim_end_matches('.'))
    } else {
        String::new()
    };
    let (reason, kind) = if err.is_nx_domain() {
        ("no such name (NXDOMAIN)".to_string(), "nxdomain")
    } else if err.is_no_records_found() {
        ("no A or AAAA records".to_string(), "no_records")
    } else if matches!(err, NetError::Timeout) {
        ("timed out".to_string(), "timeout")
    } else {
        match err {
            NetError::Dns(hickory_resolver::net::DnsError::ResponseCode(code)) => {
                (format!("the server answered {code}"), "error")
            }
            NetError::Io(_) | NetError::NoConnections => {
                ("no DNS server could be reached".to_string(), "error")
            }
            _ => ("the lookup failed".to_string(), "error"),
        }
    };
    Outcome::Failed {
        reason: format!("DNS: {reason}{which}"),
        kind,
    }
}

/// What the resolver knows of every hostname, for `/v1/acls/dns` (the
/// console's ACLs view): published by the task after each round. Only a
/// building instance resolves; elsewhere the board stays empty.
#[derive(Default)]
pub struct DnsBoard {
    hosts: std::sync::Mutex<Vec<HostStatus>>,
}

/// One hostname as the board shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostStatus {
    pub host: String,
    pub addresses: Vec<IpAddr>,
    pub error: Option<String>,
    /// Whether this process has looked it up yet.
    pub asked: bool,
    /// How long the last answer is kept (its TTL, clamped), in seconds.
    pub ttl_secs: u64,
    /// Seconds until it is resolved again.
    pub next_lookup_secs: u64,
}

impl DnsBoard {
    pub fn snapshot(&self) -> Vec<HostStatus> {
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, hosts: &BTreeMap<String, Host>) {
        let now = Instant::now();
        let statuses = hosts
            .iter()
            .map(|(name, h)| HostStatus {
                host: name.clone(),
                addresses: h.answer.addresses.clone(),
                error: h.answer.error.clone(),
                asked: h.asked,
                ttl_secs: h.ttl.as_secs(),
                next_lookup_secs: h.due.saturating_duration_since(now).as_secs(),
            })
            .collect();
        *self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = statuses;
    }
}

/// One hostname's state.
struct Host {
    /// What the engine has (the last good addresses and the last error).
    answer: DnsAnswer,
    /// When to resolve again.
    due: Instant,
    /// How long the last answer is kept.
    ttl: Duration,
    /// Whether this process has looked it up at least once.
    asked: bool,
}

/// The resolver task.
pub struct Task {
    /// The resolver, or why none could be built (then every lookup fails
    /// with that reason, and the outputs say so).
    pub resolver: Result<Arc<Resolver>, String>,
    pub settings: DnsSettings,
    pub mirror: Arc<Mirror>,
    pub engine: mpsc::Sender<FeedEvent>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub board: Arc<DnsBoard>,
}

/// The readiness component of the first resolution round.
const COMPONENT: &str = "acls:dns";

/// How often the first round's completion is checked until it is done.
const FIRST_ROUND_POLL: Duration = Duration::from_millis(50);

impl Task {
    pub fn new(
        config: &AclsConfig,
        mirror: Arc<Mirror>,
        engine: mpsc::Sender<FeedEvent>,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        board: Arc<DnsBoard>,
    ) -> Task {
        let settings = DnsSettings::from_config(config);
        let resolver = Resolver::new(&settings).map(Arc::new);
        if let Err(reason) = &resolver {
            tracing::error!(reason, "ACL hostnames cannot be resolved");
        }
        Task {
            resolver,
            settings,
            mirror,
            engine,
            metrics,
            readiness,
            board,
        }
    }

    /// Runs until `token` fires (or the engine is gone).
    pub async fn run(self, token: CancellationToken) {
        self.readiness
            .register(COMPONENT, "the ACL hostnames are not resolved yet");
        let mut loaded = self.mirror.subscribe_loaded();
        tokio::select! {
            biased;
            () = token.cancelled() => return,
            result = loaded.wait_for(|l| *l) => if result.is_err() { return; },
        }
        let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
        let mut rev: u64 = 0;
        // Seed with what the cache last used, due at once.
        let mut seed = BTreeMap::new();
        let now = Instant::now();
        for (host, addresses) in self.wanted() {
            let mut answer = DnsAnswer {
                addresses,
                error: None,
            };
            answer.addresses.sort();
            answer.addresses.dedup();
            if !answer.addresses.is_empty() {
                rev += 1;
                seed.insert(host.clone(), source_doc(&host, &answer, rev));
            }
            hosts.insert(
                host,
                Host {
                    answer,
                    due: now,
                    ttl: Duration::ZERO,
                    asked: false,
                },
            );
        }
        let replace = FeedEvent::Replace {
            source: SourceId::from(DNS),
            docs: seed,
            seq: None,
            checkpoint: None,
        };
        if self.engine.send(replace).await.is_err() {
            return;
        }
        let mut fingerprint = Vec::new();
        let mut caught_up = false;
        loop {
            let changed = self.mirror.changed();
            let current = self.fingerprint();
            if current != fingerprint {
                fingerprint = current;
                let wanted = self.wanted();
                let gone: Vec<String> = hosts
                    .keys()
                    .filter(|h| !wanted.contains_key(*h))
                    .cloned()
                    .collect();
                for host in gone {
                    hosts.remove(&host);
                    rev += 1;
                    if !self.send(&host, None, rev).await {
                        return;
                    }
                }
                for host in wanted.into_keys() {
                    hosts.entry(host).or_insert_with(|| Host {
                        answer: DnsAnswer::default(),
                        due: Instant::now(),
                        ttl: Duration::ZERO,
                        asked: false,
                    });
                }
            }
            // The outputs name their hostnames only once the engine has
            // built them: judge the first round against that build.
            if !caught_up && self.readiness.is_component_ready(engine::COMPONENT) {
                caught_up = self.report_first_round(&hosts, &self.wanted());
            }
            let now = Instant::now();
            let due: Vec<String> = hosts
                .iter()
                .filter(|(_, h)| h.due <= now)
                .map(|(name, _)| name.clone())
                .collect();
            if !due.is_empty() {
                let Some(results) = self.resolve_all(due, &token).await else {
                    return;
                };
                for (host, outcome) in results {
                    let Some(state) = hosts.get_mut(&host) else {
                        continue;
                    };
                    let (answer, due) = self.apply(&state.answer, &outcome);
                    state.due = Instant::now() + due;
                    state.ttl = due;
                    state.asked = true;
                    if answer != state.answer {
                        state.answer = answer.clone();
                        rev += 1;
                        if !self.send(&host, Some(&answer), rev).await {
                            return;
                        }
                    }
                }
                let failing = hosts.values().filter(|h| h.answer.error.is_some()).count();
                self.metrics.dns_failing.set(failing as i64);
                continue;
            }
            self.board.publish(&hosts);
            let mut next = hosts.values().map(|h| h.due).min();
            if !caught_up {
                // Look again soon: the engine reports its build elsewhere.
                let soon = Instant::now() + FIRST_ROUND_POLL;
                next = Some(next.map_or(soon, |n| n.min(soon)));
            }
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                () = changed => {}
                () = sleep_until(next) => {}
            }
        }
    }

    /// Until the start-up round is done, `/readyz` waits: every hostname
    /// the ACL outputs name has been asked at least once (answered or
    /// failed), and the outputs use those answers — otherwise a fresh
    /// instance would serve lists without their resolved addresses. Later
    /// lookups never make the daemon unready (failures are reported in the
    /// outputs' `errors` and the metrics). Returns whether it is done.
    fn report_first_round(
        &self,
        hosts: &BTreeMap<String, Host>,
        wanted: &BTreeMap<String, Vec<IpAddr>>,
    ) -> bool {
        let pending = wanted
            .iter()
            .filter(|(name, used)| {
                hosts.get(*name).is_none_or(|host| {
                    let used: BTreeSet<&IpAddr> = used.iter().collect();
                    !host.asked || used != host.answer.addresses.iter().collect()
                })
            })
            .count();
        if pending == 0 {
            self.readiness.set(COMPONENT, Ok(()));
            return true;
        }
        self.readiness.set(
            COMPONENT,
            Err(format!(
                "{pending} ACL hostname(s) not resolved and applied yet"
            )),
        );
        false
    }

    /// The new answer after `outcome`, and when to ask again.
    fn apply(&self, old: &DnsAnswer, outcome: &Outcome) -> (DnsAnswer, Duration) {
        match outcome {
            Outcome::Found { addresses, ttl } => {
                self.count("ok");
                let ttl = (*ttl).clamp(self.settings.min_ttl, self.settings.max_ttl);
                let answer = DnsAnswer {
                    addresses: addresses.clone(),
                    error: None,
                };
                (answer, ttl.max(Duration::from_secs(1)))
            }
            Outcome::Failed { reason, kind } => {
                self.count(kind);
                let answer = DnsAnswer {
                    addresses: old.addresses.clone(),
                    error: Some(reason.clone()),
                };
                (answer, self.settings.min_ttl.max(Duration::from_secs(1)))
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .dns_lookups
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Resolves `hosts`, at most `concurrency` at once; `None` on shutdown.
    async fn resolve_all(
        &self,
        hosts: Vec<String>,
        token: &CancellationToken,
    ) -> Option<Vec<(String, Outcome)>> {
        let mut pending = hosts.into_iter();
        let mut running = FuturesUnordered::new();
        let mut results = Vec::new();
        loop {
            while running.len() < self.settings.concurrency.max(1) {
                let Some(host) = pending.next() else { break };
                let resolver = self.resolver.clone();
                running.push(async move {
                    let outcome = match resolver {
                        Ok(resolver) => resolver.resolve(&host).await,
                        Err(reason) => Outcome::Failed {
                            reason: format!("DNS: {reason}"),
                            kind: "error",
                        },
                    };
                    (host, outcome)
                });
            }
            tokio::select! {
                biased;
                () = token.cancelled() => return None,
                next = running.next() => match next {
                    Some(result) => results.push(result),
                    None => return Some(results),
                },
            }
        }
    }

    async fn send(&self, host: &str, answer: Option<&DnsAnswer>, rev: u64) -> bool {
        let doc = answer.map(|a| source_doc(host, a, rev));
        let event = FeedEvent::Change {
            source: SourceId::from(DNS),
            id: host.to_string(),
            rev: format!("{rev}-dns"),
            body: doc.map(|d| d.body),
            seq: serde_json::Value::Null,
            received: std::time::Instant::now(),
        };
        self.engine.send(event).await.is_ok()
    }

    /// The hashes of the ACL cache documents (to notice a change cheaply).
    fn fingerprint(&self) -> Vec<Option<String>> {
        model::all_output_keys()
            .iter()
            .map(|key| {
                self.mirror
                    .get(&doc_id(Domain::Acls, key))
                    .map(|e| e.hash.clone())
            })
            .collect()
    }

    /// Every hostname the ACL outputs name, with the addresses they used.
    fn wanted(&self) -> BTreeMap<String, Vec<IpAddr>> {
        let mut wanted: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for key in model::all_output_keys() {
            let Some(entry) = self.mirror.get(&doc_id(Domain::Acls, &key)) else {
                continue;
            };
            for (host, addresses) in model::content_hostnames(&entry.content.value()) {
                wanted
                    .entry(host.to_string())
                    .or_default()
                    .extend(addresses);
            }
        }
        wanted
    }
}

fn source_doc(host: &str, answer: &DnsAnswer, rev: u64) -> SourceDoc {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SourceDoc {
        id: host.to_string(),
        rev: format!("{rev}-dns"),
        body: Body::of(&model::dns_body(answer, now)),
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}
