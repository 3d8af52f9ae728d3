//! Every Prometheus metric caldera exports, registered once. Labels stay
//! small and bounded: database, domain, listener, route, outcome; never a
//! document id.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::Method;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabel {
    pub db: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabel {
    pub domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    pub route: String,
    pub method: String,
    pub status: String,
}

/// An AMQP request by its event (`get_req`, `set_req`, `flush_req`,
/// `unknown`) and what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AmqpLabels {
    pub event: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

/// Edge store telemetry reports.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeReportLabels {
    /// download, consumption
    pub kind: String,
    /// ok, skipped, unknown, bad_type, refused
    pub proxy_check: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// All metrics; cloning shares them.
pub struct Metrics {
    registry: Registry,
    pub feed_changes: Family<DbLabel, Counter>,
    pub feed_applied: Family<DbLabel, Counter>,
    pub feed_reconnects: Family<DbLabel, Counter>,
    pub feed_resets: Family<DbLabel, Counter>,
    pub feed_connected: Family<DbLabel, Gauge>,
    pub feed_pending: Family<DbLabel, Gauge>,
    pub feed_lag_seconds: Family<DbLabel, FloatGauge>,
    pub checkpoints: Family<DbLabel, Counter>,
    pub change_to_cache_seconds: Histogram,
    pub rebuilds: Family<DomainLabel, Counter>,
    pub rebuild_errors: Family<DomainLabel, Counter>,
    pub rebuild_seconds: Family<DomainLabel, Histogram, fn() -> Histogram>,
    pub cache_writes: Family<OutcomeLabel, Counter>,
    pub cache_documents: Family<DomainLabel, Gauge>,
    pub cache_bytes: Family<DomainLabel, Gauge>,
    pub cache_documents_with_errors: Family<DomainLabel, Gauge>,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// ACL hostname resolutions by outcome (ok, nxdomain, no_records, timeout, error).
    pub dns_lookups: Family<OutcomeLabel, Counter>,
    /// ACL hostnames whose last resolution failed.
    pub dns_failing: Gauge,
    /// AMQP requests handled, by event and outcome.
    pub amqp_messages: Family<AmqpLabels, Counter>,
    /// From an AMQP request's delivery to its reply being confirmed by the broker.
    pub amqp_reply_seconds: Family<EventLabel, Histogram, fn() -> Histogram>,
    /// Times the AMQP connection was lost or could not be opened.
    pub amqp_reconnects: Counter,
    /// 1 while consuming from the shared queue.
    pub amqp_connected: Gauge,
    /// Edge packages by outcome (built_class, built_per_edge, cached, needs_edge, failed).
    pub edge_packages: Family<OutcomeLabel, Counter>,
    /// Time to build one edge package.
    pub edge_package_seconds: Histogram,
    /// Edge telemetry reports received.
    pub edge_reports: Family<EdgeReportLabels, Counter>,
    /// Edge attachment fetches by outcome (ok, missing, error).
    pub edge_blob_fetches: Family<OutcomeLabel, Counter>,
    /// Phone device requests from a cooling source, by outcome
    /// (cooldown_started, refused, trusted_pair, authenticated).
    pub phones_throttle_decisions: Family<OutcomeLabel, Counter>,
    /// The phones throttle's state, set from the phones service at every scrape.
    pub phones: PhonesGauges,
}

/// The phones throttle's settings and counts: numbers only, never an
/// address or a MAC.
#[derive(Default)]
pub struct PhonesGauges {
    pub misses_budget: Gauge,
    pub window_seconds: Gauge,
    pub cooldown_seconds: Gauge,
    pub sources_tracked: Gauge,
    pub sources_cooling: Gauge,
    pub trusted_pairs: Gauge,
    pub trusted_pairs_max: Gauge,
    pub trusted_pair_ttl_seconds: Gauge,
    pub hot_set_files: Gauge,
    pub hot_set_bytes: Gauge,
    pub hot_set_limit_bytes: Gauge,
    pub hot_set_hits: Gauge,
    pub hot_set_misses: Gauge,
}

impl PhonesGauges {
    fn register(&self, r: &mut Registry) {
        for (name, help, gauge) in [
            (
                "phones_rate_limit_misses",
                "Misses a source may make per window (0: no limit)",
                &self.misses_budget,
            ),
            (
                "phones_rate_limit_window_seconds",
                "The window the miss budget refills over",
                &self.window_seconds,
            ),
            (
                "phones_rate_limit_cooldown_seconds",
                "How long a source past its budget cools down",
                &self.cooldown_seconds,
            ),
            (
                "phones_rate_limit_sources",
                "Source addresses the miss limiter tracks",
                &self.sources_tracked,
            ),
            (
                "phones_rate_limit_cooling",
                "Source addresses cooling down now",
                &self.sources_cooling,
            ),
            (
                "phones_trusted_pairs",
                "Remembered (address, MAC) pairs",
                &self.trusted_pairs,
            ),
            (
                "phones_trusted_pairs_max",
                "Most (address, MAC) pairs remembered",
                &self.trusted_pairs_max,
            ),
            (
                "phones_trusted_pair_ttl_seconds",
                "How long a pair is remembered after it was last served",
                &self.trusted_pair_ttl_seconds,
            ),
            (
                "phones_hot_set_files",
                "Phone files kept ready to send in the hot set",
                &self.hot_set_files,
            ),
            (
                "phones_hot_set_bytes",
                "Bytes the hot set holds (bodies and overhead)",
                &self.hot_set_bytes,
            ),
            (
                "phones_hot_set_limit_bytes",
                "The hot set's bound (phones.hot_set_mb)",
                &self.hot_set_limit_bytes,
            ),
            (
                "phones_hot_set_hits",
                "File lookups the hot set answered, since start",
                &self.hot_set_hits,
            ),
            (
                "phones_hot_set_misses",
                "File lookups that read the body back from the mirror, since start",
                &self.hot_set_misses,
            ),
        ] {
            r.register(name, help, gauge.clone());
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("caldera");
        let metrics = Metrics {
            feed_changes: Family::default(),
            feed_applied: Family::default(),
            feed_reconnects: Family::default(),
            feed_resets: Family::default(),
            feed_connected: Family::default(),
            feed_pending: Family::default(),
            feed_lag_seconds: Family::default(),
            checkpoints: Family::default(),
            change_to_cache_seconds: latency_histogram(),
            rebuilds: Family::default(),
            rebuild_errors: Family::default(),
            rebuild_seconds: Family::new_with_constructor(latency_histogram),
            cache_writes: Family::default(),
            cache_documents: Family::default(),
            cache_bytes: Family::default(),
            cache_documents_with_errors: Family::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency_histogram),
            dns_lookups: Family::default(),
            dns_failing: Gauge::default(),
            amqp_messages: Family::default(),
            amqp_reply_seconds: Family::new_with_constructor(latency_histogram),
            amqp_reconnects: Counter::default(),
            amqp_connected: Gauge::default(),
            edge_packages: Family::default(),
            edge_package_seconds: latency_histogram(),
            edge_reports: Family::default(),
            edge_blob_fetches: Family::default(),
            phones_throttle_decisions: Family::default(),
            phones: PhonesGauges::default(),
            registry: Registry::default(),
        };
        let m = &metrics;
        let r = &mut registry;
        r.register(
            "feed_changes",
            "Changes received from a database's feed",
            m.feed_changes.clone(),
        );
        r.register(
            "feed_applied",
            "Changes whose outputs are durably in the cache database",
            m.feed_applied.clone(),
        );
        r.register(
            "feed_reconnects",
            "Times a feed was reopened after an error, a deadline or a rotation",
            m.feed_reconnects.clone(),
        );
        r.register(
            "feed_resets",
            "Times a database was found deleted or re-created and reloaded",
            m.feed_resets.clone(),
        );
        r.register(
            "feed_connected",
            "1 while the feed is open and delivering",
            m.feed_connected.clone(),
        );
        r.register(
            "feed_pending",
            "Changes received but not yet durably in the cache",
            m.feed_pending.clone(),
        );
        r.register(
            "feed_lag_seconds",
            "Age of the oldest change not yet durably in the cache",
            m.feed_lag_seconds.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints saved to _local documents",
            m.checkpoints.clone(),
        );
        r.register(
            "change_to_cache_seconds",
            "From receiving a change to its outputs being durable",
            m.change_to_cache_seconds.clone(),
        );
        r.register("rebuilds", "Outputs built", m.rebuilds.clone());
        r.register(
            "rebuild_errors",
            "Builds that reported problems or failed",
            m.rebuild_errors.clone(),
        );
        r.register(
            "rebuild_seconds",
            "Time to build one output",
            m.rebuild_seconds.clone(),
        );
        r.register(
            "cache_writes",
            "Cache document writes by outcome",
            m.cache_writes.clone(),
        );
        r.register(
            "cache_documents",
            "Cache documents in the mirror",
            m.cache_documents.clone(),
        );
        r.register(
            "cache_bytes",
            "Approximate bytes of cache documents in the mirror",
            m.cache_bytes.clone(),
        );
        r.register(
            "cache_documents_with_errors",
            "Cache documents that carry errors",
            m.cache_documents_with_errors.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered",
            m.http_requests.clone(),
        );
        r.register(
            "http_request_seconds",
            "HTTP request latency",
            m.http_seconds.clone(),
        );
        r.register(
            "acls_dns_lookups",
            "ACL hostname resolutions by outcome",
            m.dns_lookups.clone(),
        );
        r.register(
            "acls_dns_failing",
            "ACL hostnames whose last resolution failed",
            m.dns_failing.clone(),
        );
        r.register(
            "amqp_messages",
            "AMQP sysconf requests by event and outcome",
            m.amqp_messages.clone(),
        );
        r.register(
            "amqp_reply_seconds",
            "From an AMQP request's delivery to its confirmed reply",
            m.amqp_reply_seconds.clone(),
        );
        r.register(
            "amqp_reconnects",
            "Times the AMQP connection was lost or could not be opened",
            m.amqp_reconnects.clone(),
        );
        r.register(
            "amqp_connected",
            "1 while consuming sysconf requests from RabbitMQ",
            m.amqp_connected.clone(),
        );
        r.register(
            "edge_packages",
            "Edge packages asked for, by outcome",
            m.edge_packages.clone(),
        );
        r.register(
            "edge_package_seconds",
            "Time to build one edge package",
            m.edge_package_seconds.clone(),
        );
        r.register(
            "edge_reports",
            "Edge telemetry reports received",
            m.edge_reports.clone(),
        );
        r.register(
            "edge_blob_fetches",
            "Edge attachments fetched from CouchDB, by outcome",
            m.edge_blob_fetches.clone(),
        );
        r.register(
            "phones_throttle_decisions",
            "Phone device requests from a cooling source, by outcome",
            m.phones_throttle_decisions.clone(),
        );
        m.phones.register(r);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Creates a database's feed series at zero, so a dashboard or alert
    /// sees `caldera_feed_reconnects_total 0` rather than no series at all
    /// before the first reconnect.
    pub fn register_feed(&self, db: &str) {
        let label = Metrics::db(db);
        drop(self.feed_changes.get_or_create(&label));
        drop(self.feed_applied.get_or_create(&label));
        drop(self.feed_reconnects.get_or_create(&label));
        drop(self.feed_resets.get_or_create(&label));
        drop(self.feed_connected.get_or_create(&label));
        drop(self.feed_pending.get_or_create(&label));
        drop(self.feed_lag_seconds.get_or_create(&label));
        drop(self.checkpoints.get_or_create(&label));
    }

    /// Creates the per-domain build and cache series, and every cache write
    /// outcome, at zero.
    pub fn register_domains(&self, domains: &[&str]) {
        for domain in domains {
            let label = Metrics::domain(domain);
            drop(self.rebuilds.get_or_create(&label));
            drop(self.rebuild_errors.get_or_create(&label));
            drop(self.rebuild_seconds.get_or_create(&label));
            drop(self.cache_documents.get_or_create(&label));
            drop(self.cache_bytes.get_or_create(&label));
            drop(self.cache_documents_with_errors.get_or_create(&label));
        }
        for outcome in ["stored", "deleted", "conflict", "refused", "retried"] {
            drop(self.cache_writes.get_or_create(&Metrics::outcome(outcome)));
        }
    }

    pub fn db(db: &str) -> DbLabel {
        DbLabel { db: db.to_string() }
    }

    pub fn domain(domain: &str) -> DomainLabel {
        DomainLabel {
            domain: domain.to_string(),
        }
    }

    pub fn amqp(event: &str, outcome: &str) -> AmqpLabels {
        AmqpLabels {
            event: event.to_string(),
            outcome: outcome.to_string(),
        }
    }

    pub fn event(event: &str) -> EventLabel {
        EventLabel {
            event: event.to_string(),
        }
    }

    pub fn outcome(outcome: &str) -> OutcomeLabel {
        OutcomeLabel {
            outcome: outcome.to_string(),
        }
    }
}

/// The HTTP request series of one listener, resolved once per route and
/// once per (method, status) of a route: a request then costs a map lookup,
/// a counter increment and a histogram observation, not four label strings
/// and two label-set hashes.
pub struct ListenerMetrics {
    listener: &'static str,
    metrics: Arc<Metrics>,
    routes: RwLock<HashMap<Box<str>, Arc<RouteMetrics>>>,
}

impl ListenerMetrics {
    pub fn new(listener: &'static str, metrics: Arc<Metrics>) -> ListenerMetrics {
        ListenerMetrics {
            listener,
            metrics,
            routes: RwLock::default(),
        }
    }

    /// The series of `route` (a route template, or `unmatched`: never a raw
    /// path, so scanners cannot inflate the cardinality).
    pub fn route(&self, route: &str) -> Arc<RouteMetrics> {
        let found = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(route)
            .cloned();
        found.unwrap_or_else(|| {
            let mut routes = self
                .routes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            routes
                .entry(route.into())
                .or_insert_with(|| Arc::new(RouteMetrics::new(self.listener, route, &self.metrics)))
                .clone()
        })
    }

    /// Counts one answered request of `route` and its latency.
    pub fn record(&self, route: &str, method: &Method, status: u16, elapsed: Duration) {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = routes.get(route) {
            known.record(method, status, elapsed);
            return;
        }
        drop(routes);
        self.route(route).record(method, status, elapsed);
    }
}

/// The series of one route of a listener.
pub struct RouteMetrics {
    listener: &'static str,
    route: String,
    requests: Family<RequestLabels, Counter>,
    seconds: Histogram,
    counters: RwLock<HashMap<(&'static str, u16), Counter>>,
}

/// A method's label: the standard methods by name, any other `other` (a
/// method is any token a client makes up).
pub fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    const NAMES: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .position(|m| m == method)
        .map_or("other", |i| NAMES[i])
}

impl RouteMetrics {
    fn new(listener: &'static str, route: &str, metrics: &Metrics) -> RouteMetrics {
        let labels = RouteLabels {
            listener: listener.to_string(),
            route: route.to_string(),
        };
        RouteMetrics {
            listener,
            route: route.to_string(),
            requests: metrics.http_requests.clone(),
            seconds: metrics.http_seconds.get_or_create(&labels).clone(),
            counters: RwLock::default(),
        }
    }

    /// Counts one answered request and its latency.
    pub fn record(&self, method: &Method, status: u16, elapsed: Duration) {
        self.seconds.observe(elapsed.as_secs_f64());
        let key = (method_label(method), status);
        let counters = self
            .counters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(counter) = counters.get(&key) {
            counter.inc();
            return;
        }
        drop(counters);
        let labels = RequestLabels {
            listener: self.listener.to_string(),
            route: self.route.clone(),
            method: key.0.to_string(),
            status: status.to_string(),
        };
        let counter = self.requests.get_or_create(&labels).clone();
        counter.inc();
        self.counters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, counter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_metrics_count_by_route_method_and_status() {
        let metrics = Arc::new(Metrics::new());
        let listener = ListenerMetrics::new("phones", metrics.clone());
        let files = listener.route("/{*file}");
        for _ in 0..3 {
            files.record(&Method::GET, 200, Duration::from_millis(1));
        }
        listener.record("/{*file}", &Method::HEAD, 304, Duration::from_millis(1));
        let odd = Method::from_bytes(b"BREW").unwrap();
        listener.record("unmatched", &odd, 404, Duration::from_millis(1));
        let text = metrics.render();
        for expected in [
            "caldera_http_requests_total{listener=\"phones\",route=\"/{*file}\",method=\"GET\",status=\"200\"} 3",
            "caldera_http_requests_total{listener=\"phones\",route=\"/{*file}\",method=\"HEAD\",status=\"304\"} 1",
            "caldera_http_requests_total{listener=\"phones\",route=\"unmatched\",method=\"other\",status=\"404\"} 1",
            "caldera_http_request_seconds_count{listener=\"phones\",route=\"/{*file}\"} 4",
        ] {
            assert!(text.contains(expected), "no {expected} in\n{text}");
        }
    }

    #[test]
    fn renders_prefixed_names() {
        let metrics = Metrics::new();
        metrics
            .feed_changes
            .get_or_create(&Metrics::db("system_config"))
            .inc();
        metrics
            .rebuild_seconds
            .get_or_create(&Metrics::domain("sysconf"))
            .observe(0.001);
        let text = metrics.render();
        assert!(
            text.contains("caldera_feed_changes_total{db=\"system_config\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("caldera_rebuild_seconds_bucket{le="),
            "{text}"
        );
    }
}
