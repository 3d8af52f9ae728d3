//! The resolver against a real DNS server on loopback (hickory-server with
//! an in-memory zone `test.` whose records the tests change), and against
//! a UDP socket that never answers: SRV then A/AAAA, NXDOMAIN, timeouts,
//! TTL expiry and background refresh, a name that changes address, and
//! last good addresses kept when a refresh fails.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::model::DNS;
use super::resolver::{DnsSettings, Outcome, Resolver, Task};
use crate::cache::CacheEntry;
use crate::cache::mirror::Mirror;
use crate::couch::Body;
use crate::feeds::FeedEvent;
use crate::lifecycle::readiness::Readiness;
use crate::telemetry::metrics::Metrics;

/// A zone `test.` served over UDP on 127.0.0.1.
struct TestDns {
    zone: Arc<InMemoryZoneHandler>,
    addr: SocketAddr,
    _server: Server<Catalog>,
}

fn name(text: &str) -> Name {
    Name::from_str(text).expect("a DNS name")
}

impl TestDns {
    async fn start() -> TestDns {
        let origin = name("test.");
        let mut zone =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(name("ns.test."), name("admin.test."), 1, 60, 60, 60, 1);
        zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![zone.clone()]);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        TestDns {
            zone,
            addr,
            _server: server,
        }
    }

    /// Replaces the records of `owner`/`kind` (none: the name is gone).
    async fn set(&self, owner: &str, kind: RecordType, ttl: u32, data: Vec<RData>) {
        let owner = name(owner);
        self.zone
            .records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&owner), kind));
        for rdata in data {
            self.zone
                .upsert(Record::from_rdata(owner.clone(), ttl, rdata), 1)
                .await;
        }
    }

    async fn a(&self, owner: &str, ttl: u32, addresses: &[&str]) {
        let data = addresses
            .iter()
            .map(|a| match a.parse::<IpAddr>().unwrap() {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            })
            .collect::<Vec<_>>();
        let (v4, v6): (Vec<RData>, Vec<RData>) =
            data.into_iter().partition(|r| matches!(r, RData::A(_)));
        self.set(owner, RecordType::A, ttl, v4).await;
        self.set(owner, RecordType::AAAA, ttl, v6).await;
    }
}

fn settings(servers: Vec<SocketAddr>, timeout_ms: u64) -> DnsSettings {
    DnsSettings {
        timeout: Duration::from_millis(timeout_ms),
        concurrency: 8,
        servers,
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(3600),
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = list.iter().map(|a| a.parse().unwrap()).collect();
    ips.sort();
    ips
}

#[tokio::test]
async fn srv_targets_then_a_and_aaaa_else_the_host_itself() {
    let dns = TestDns::start().await;
    let srv = |target: &str| RData::SRV(SRV::new(10, 5, 5060, name(target)));
    dns.set(
        "_sip._udp.sbc.test.",
        RecordType::SRV,
        300,
        vec![srv("edge1.test."), srv("edge2.test.")],
    )
    .await;
    dns.a("edge1.test.", 120, &["192.0.2.101"]).await;
    dns.a("edge2.test.", 60, &["192.0.2.102", "2001:db8::102"])
        .await;
    // The host's own A record is not used when SRV records exist.
    dns.a("sbc.test.", 60, &["192.0.2.200"]).await;
    dns.a("pbx.test.", 30, &["198.51.100.78", "2001:db8::78"])
        .await;
    let resolver = Resolver::new(&settings(vec![dns.addr], 500)).unwrap();

    let Outcome::Found { addresses, ttl } = resolver.resolve("sbc.test").await else {
        panic!("sbc.test resolves");
    };
    assert_eq!(
        addresses,
        ips(&["192.0.2.101", "192.0.2.102", "2001:db8::102"])
    );
    assert!(
        ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(50),
        "{ttl:?}"
    );

    let Outcome::Found { addresses, ttl } = resolver.resolve("pbx.test").await else {
        panic!("pbx.test resolves");
    };
    assert_eq!(addresses, ips(&["198.51.100.78", "2001:db8::78"]));
    assert!(ttl <= Duration::from_secs(30), "{ttl:?}");

    match resolver.resolve("gone.test").await {
        Outcome::Failed { kind, reason } => {
            assert_eq!(kind, "nxdomain");
            assert!(reason.contains("NXDOMAIN"), "{reason}");
        }
        other => panic!("expected NXDOMAIN, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_within_the_deadline() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let resolver = Resolver::new(&settings(vec![silent.local_addr().unwrap()], 200)).unwrap();
    let started = std::time::Instant::now();
    let outcome = resolver.resolve("anything.test").await;
    let elapsed = started.elapsed();
    match outcome {
        Outcome::Failed { kind, .. } => assert_eq!(kind, "timeout"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // SRV, then A/AAAA: two deadlines at most, plus slack.
    assert!(elapsed < Duration::from_millis(1_000), "{elapsed:?}");
}

fn acl_entry(hostnames: serde_json::Value) -> CacheEntry {
    CacheEntry {
        id: "acls:offnet.01".into(),
        rev: "1-a".into(),
        domain: "acls".into(),
        key: "offnet.01".into(),
        hash: format!("h{hostnames}"),
        content:
            json!({ "device": {}, "peered_resource": {}, "resource": {}, "hostnames": hostnames })
                .into(),
        errors: json!([]),
        stale: false,
        bytes: 10,
    }
}

/// What the resolver has told the engine, per hostname.
#[derive(Default)]
struct Seen {
    docs: BTreeMap<String, Option<serde_json::Value>>,
}

impl Seen {
    fn absorb(&mut self, event: FeedEvent) {
        match event {
            FeedEvent::Replace { source, docs, .. } => {
                assert_eq!(&*source, DNS);
                self.docs = docs
                    .into_iter()
                    .map(|(id, doc)| (id, Some(json_of(doc.body))))
                    .collect();
            }
            FeedEvent::Change {
                source, id, body, ..
            } => {
                assert_eq!(&*source, DNS);
                self.docs.insert(id, body.map(json_of));
            }
            FeedEvent::Refresh { .. } | FeedEvent::Reloading { .. } | FeedEvent::Loaded { .. } => {
                panic!("the resolver sends only loads and changes")
            }
        }
    }

    fn addresses(&self, host: &str) -> Vec<String> {
        serde_json::from_value(self.docs[host].as_ref().unwrap()["addresses"].clone()).unwrap()
    }

    fn error(&self, host: &str) -> Option<String> {
        self.docs[host].as_ref().unwrap()["error"]
            .as_str()
            .map(str::to_string)
    }
}

fn json_of(body: Body) -> serde_json::Value {
    match body {
        Body::Json(text) => text.parse(),
        Body::Malformed(why) => panic!("malformed dns body: {why}"),
    }
}

/// Receives until `done` holds, or panics after `within`.
async fn until(
    rx: &mut mpsc::Receiver<FeedEvent>,
    seen: &mut Seen,
    within: Duration,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => seen.absorb(event),
            Ok(None) => panic!("the resolver stopped"),
            Err(_) => panic!("timed out; the resolver sent {:?}", seen.docs),
        }
    }
}

async fn eventually_ready(readiness: &Readiness) {
    let started = std::time::Instant::now();
    while !readiness.is_ready() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not ready: {:?}",
            readiness.reasons()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_task_seeds_refreshes_on_ttl_and_keeps_last_good_addresses() {
    let dns = TestDns::start().await;
    dns.a("moving.test.", 1, &["192.0.2.1"]).await;
    dns.a("steady.test.", 3600, &["192.0.2.9"]).await;
    let mirror = Arc::new(Mirror::default());
    // The cache last used 192.0.2.77 for moving.test: that is the seed.
    mirror.replace_all(vec![acl_entry(
        json!({"moving.test": ["192.0.2.77"], "steady.test": [], "gone.test": []}),
    )]);
    let (tx, mut rx) = mpsc::channel(64);
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    // The first round is judged once the engine has built the outputs.
    readiness.set(crate::rebuild::engine::COMPONENT, Ok(()));
    let task = Task {
        resolver: Ok(Arc::new(
            Resolver::new(&settings(vec![dns.addr], 300)).unwrap(),
        )),
        settings: settings(vec![dns.addr], 300),
        mirror: mirror.clone(),
        engine: tx,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        board: Arc::default(),
    };
    let token = CancellationToken::new();
    let handle = tokio::spawn(task.run(token.clone()));
    let mut seen = Seen::default();

    // First event: the seed, with the cached addresses only.
    seen.absorb(rx.recv().await.unwrap());
    assert_eq!(seen.docs.keys().collect::<Vec<_>>(), ["moving.test"]);
    assert_eq!(seen.addresses("moving.test"), ["192.0.2.77"]);

    // Then real answers; NXDOMAIN is reported with no addresses.
    until(&mut rx, &mut seen, Duration::from_secs(5), |s| {
        s.docs.len() == 3
            && s.docs
                .get("moving.test")
                .is_some_and(|d| d.as_ref().unwrap()["addresses"] == json!(["192.0.2.1"]))
    })
    .await;
    assert_eq!(seen.addresses("steady.test"), ["192.0.2.9"]);
    assert_eq!(seen.addresses("gone.test"), Vec::<String>::new());
    assert!(seen.error("gone.test").unwrap().contains("NXDOMAIN"));
    // Not ready while the outputs still use the seed's addresses...
    assert!(!readiness.is_ready(), "{:?}", readiness.reasons());
    // ... ready once they use the answers (the engine's rebuild, here by hand).
    mirror.replace_all(vec![acl_entry(
        json!({"moving.test": ["192.0.2.1"], "steady.test": ["192.0.2.9"], "gone.test": []}),
    )]);
    eventually_ready(&readiness).await;

    // The name changes address; the 1 s TTL expires and it is re-resolved.
    dns.a("moving.test.", 1, &["192.0.2.2", "2001:db8::2"])
        .await;
    until(&mut rx, &mut seen, Duration::from_secs(5), |s| {
        s.addresses("moving.test") == ["192.0.2.2", "2001:db8::2"]
    })
    .await;
    assert_eq!(seen.error("moving.test"), None);

    // The name disappears: the last good addresses stay, with the error.
    dns.a("moving.test.", 1, &[]).await;
    until(&mut rx, &mut seen, Duration::from_secs(5), |s| {
        s.error("moving.test").is_some()
    })
    .await;
    assert_eq!(seen.addresses("moving.test"), ["192.0.2.2", "2001:db8::2"]);
    let text = metrics.render();
    assert!(text.contains("caldera_acls_dns_failing 2"), "{text}");

    // It comes back: the error clears.
    dns.a("moving.test.", 1, &["192.0.2.3"]).await;
    until(&mut rx, &mut seen, Duration::from_secs(5), |s| {
        s.error("moving.test").is_none() && s.addresses("moving.test") == ["192.0.2.3"]
    })
    .await;

    // A hostname no output names any more is dropped.
    mirror.replace_all(vec![acl_entry(json!({"steady.test": ["192.0.2.9"]}))]);
    until(&mut rx, &mut seen, Duration::from_secs(5), |s| {
        s.docs.get("moving.test") == Some(&None) && s.docs.get("gone.test") == Some(&None)
    })
    .await;
    token.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_timing_out_server_keeps_the_last_good_addresses() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let mirror = Arc::new(Mirror::default());
    mirror.replace_all(vec![acl_entry(json!({"sbc.test": ["192.0.2.101"]}))]);
    let (tx, mut rx) = mpsc::channel(64);
    let readiness = Arc::new(Readiness::default());
    // The first round is judged once the engine has built the outputs.
    readiness.set(crate::rebuild::engine::COMPONENT, Ok(()));
    let task = Task {
        resolver: Ok(Arc::new(Resolver::new(&settings(vec![addr], 150)).unwrap())),
        settings: settings(vec![addr], 150),
        mirror,
        engine: tx,
        metrics: Arc::new(Metrics::new()),
        readiness: readiness.clone(),
        board: Arc::default(),
    };
    let token = CancellationToken::new();
    let handle = tokio::spawn(task.run(token.clone()));
    let mut seen = Seen::default();
    until(&mut rx, &mut seen, Duration::from_secs(5), |s| {
        s.docs.contains_key("sbc.test") && s.error("sbc.test").is_some()
    })
    .await;
    assert_eq!(seen.addresses("sbc.test"), ["192.0.2.101"]);
    assert!(seen.error("sbc.test").unwrap().contains("timed out"));
    // A server that never answers does not keep the daemon unready: the
    // name was asked, failed, and the outputs keep its last good addresses.
    eventually_ready(&readiness).await;
    token.cancel();
    handle.await.unwrap();
}
