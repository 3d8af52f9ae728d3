//! ACLs through the real daemon: the reference's §4 fixtures in `sip_auth`,
//! `offnet` and `system_config`, hostnames answered by a DNS server on
//! loopback (hickory-server, started here); the served lists equal the
//! golden answer, the three endpoints and sysconf get `ecallmgr`/`acls`
//! agree, a device edit rewrites one ACL cache document, a DNS change is
//! picked up when its TTL expires, failures are reported, and the cache
//! equals a from-scratch build.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestEnv, assert_equals_from_scratch, cache_docs};
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::eventually;

pub(crate) const KZ1: &str = "ecallmgr@kz1.example.net";
pub(crate) const KZ2: &str = "ecallmgr@kz2.example.net";

pub(crate) fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/acls/kazoo")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn name(text: &str) -> Name {
    Name::from_str(text).unwrap()
}

/// The zones the fixtures' hostnames live in, served on 127.0.0.1 (the
/// AMQP tests use it too).
pub(crate) struct Dns {
    zones: BTreeMap<&'static str, Arc<InMemoryZoneHandler>>,
    port: u16,
    _server: Server<Catalog>,
}

impl Dns {
    pub(crate) async fn start() -> Dns {
        let mut catalog = Catalog::new();
        let mut zones = BTreeMap::new();
        for origin in ["example.com.", "example.org.", "invalid."] {
            let mut zone =
                InMemoryZoneHandler::empty(name(origin), ZoneType::Primary, AxfrPolicy::Deny);
            let soa = SOA::new(
                name(&format!("ns.{origin}")),
                name(&format!("admin.{origin}")),
                1,
                60,
                60,
                60,
                1,
            );
            zone.upsert_mut(Record::from_rdata(name(origin), 60, RData::SOA(soa)), 1);
            let zone = Arc::new(zone);
            catalog.upsert(
                LowerName::new(&name(origin)),
                vec![zone.clone() as Arc<dyn ZoneHandler>],
            );
            zones.insert(origin, zone);
        }
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        let dns = Dns {
            zones,
            port,
            _server: server,
        };
        let srv = |target: &str| RData::SRV(SRV::new(10, 10, 5060, name(target)));
        dns.set(
            "example.com.",
            "_sip._udp.sbc.carrier-a.example.com.",
            RecordType::SRV,
            vec![
                srv("edge1.carrier-a.example.com."),
                srv("edge2.carrier-a.example.com."),
            ],
        )
        .await;
        dns.a(
            "example.com.",
            "edge1.carrier-a.example.com.",
            "192.0.2.101",
        )
        .await;
        dns.a(
            "example.com.",
            "edge2.carrier-a.example.com.",
            "192.0.2.102",
        )
        .await;
        dns.a("example.org.", "pbx.customer.example.org.", "198.51.100.78")
            .await;
        dns
    }

    async fn set(&self, zone: &str, owner: &str, kind: RecordType, data: Vec<RData>) {
        // A 1 s TTL: the daemon re-resolves every `dns_min_ttl_secs`.
        self.set_with_ttl(zone, owner, kind, data, 1).await;
    }

    /// Replaces the `kind` records of `owner` (none: the name stops
    /// resolving), answered with `ttl` seconds.
    pub(crate) async fn set_with_ttl(
        &self,
        zone: &str,
        owner: &str,
        kind: RecordType,
        data: Vec<RData>,
        ttl: u32,
    ) {
        let zone = &self.zones[zone];
        zone.records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&name(owner)), kind));
        for rdata in data {
            zone.upsert(Record::from_rdata(name(owner), ttl, rdata), 1)
                .await;
        }
    }

    pub(crate) async fn a(&self, zone: &str, owner: &str, address: &str) {
        self.set(
            zone,
            owner,
            RecordType::A,
            vec![RData::A(A(address.parse().unwrap()))],
        )
        .await;
    }
}

pub(crate) fn config(env: &TestEnv, dns: &Dns) -> DaemonConfig {
    let mut config = env.config(KZ1);
    config
        .set("acls.dns_servers", format!("127.0.0.1:{}", dns.port))
        .set("acls.dns_timeout_ms", 300)
        .set("acls.dns_min_ttl_secs", 1);
    config
}

/// Kazoo's merged object the daemon serves through sysconf get.
async fn merged(daemon: &Daemon, node: &str) -> Value {
    let reply = daemon.sysconf_get("ecallmgr", &["acls"], Some(node)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["section"], "caldera:acls", "{}", reply.text);
    reply.json["value"].clone()
}

async fn acl_revs(env: &TestEnv) -> BTreeMap<String, String> {
    cache_docs(&env.couch, &env.names.cache)
        .await
        .into_iter()
        .filter(|(id, _)| id.starts_with("acls:"))
        .map(|(id, doc)| (id, doc["_rev"].as_str().unwrap_or_default().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn acls_are_built_served_refreshed_and_equal_a_fresh_build() {
    let env = TestEnv::new().await;
    let dns = Dns::start().await;
    let (sip_auth, offnet) = (
        format!("{}_sip_auth", env.names.prefix),
        format!("{}_offnet", env.names.prefix),
    );
    for (db, file) in [
        (&sip_auth, "sip_auth.json"),
        (&offnet, "offnet.json"),
        (&env.names.system_config, "system_config.json"),
    ] {
        env.couch.create_db(db).await;
        for doc in fixture(file).as_array().unwrap() {
            env.couch.put(db, doc).await;
        }
    }
    let config = config(&env, &dns);
    let daemon = Daemon::start_ready(&config).await;

    // The golden answer (fixtures/acls/kazoo, checked against the reference
    // in the unit tests), once the hostnames are resolved.
    let golden = fixture(&format!("merged.{KZ1}.expected.json"));
    eventually(
        "the ACLs equal the golden answer",
        Duration::from_secs(20),
        async || {
            let value = merged(&daemon, KZ1).await;
            if value == golden["merged"] {
                Ok(())
            } else {
                Err(value.to_string())
            }
        },
    )
    .await;
    let kz2 = merged(&daemon, KZ2).await;
    assert_eq!(
        kz2,
        fixture(&format!("merged.{KZ2}.expected.json"))["merged"]
    );

    // GET /v1/acls, /v1/acls/{list}, /v1/acls/freeswitch.xml.
    let all = daemon.get("/v1/acls").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    assert_eq!(all.json["node"], KZ1);
    assert_eq!(all.json["lists"], golden["lists"]);
    let errors = all.json["errors"].to_string();
    assert!(
        errors.contains("gw.carrier-c.invalid") && errors.contains("NXDOMAIN"),
        "{errors}"
    );
    let trusted = daemon
        .get("/v1/acls/trusted?node=ecallmgr%40kz2.example.net")
        .await;
    assert_eq!(
        trusted.json["entries"],
        fixture(&format!("merged.{KZ2}.expected.json"))["lists"]["trusted"]
    );
    let missing = daemon.get("/v1/acls/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json["error"], "not_found");
    let xml = daemon.get("/v1/acls/freeswitch.xml").await;
    assert_eq!(xml.status, StatusCode::OK);
    assert!(
        xml.content_type().starts_with("text/xml"),
        "{}",
        xml.content_type()
    );
    let golden_xml = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("fixtures/acls/kazoo/freeswitch.{KZ1}.expected.xml")),
    )
    .unwrap();
    assert_eq!(xml.text, golden_xml);
    // Other categories keep their stored `acls`.
    let other = daemon.sysconf_get("sysconf", &["acls"], None).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "{}", other.text);
    // Failures are visible in /v1/status and the metrics.
    let status = daemon.get("/v1/status").await;
    assert!(status.text.contains("NXDOMAIN"), "{}", status.text);
    let metrics = daemon.get("/metrics").await;
    assert!(
        metrics
            .text
            .contains("caldera_acls_dns_lookups_total{outcome=\"nxdomain\"}"),
        "{}",
        metrics.text
    );

    // One device edit rewrites exactly one ACL cache document.
    let before = acl_revs(&env).await;
    let mut device = env
        .couch
        .get(&sip_auth, "1d2e3f40a5b6c7d8e9f0a1b2c3d4e5f6")
        .await
        .unwrap();
    device["sip"]["ip"] = json!("198.51.100.24");
    env.couch.put(&sip_auth, &device).await;
    eventually(
        "the device edit is served",
        Duration::from_secs(10),
        async || {
            let value = merged(&daemon, KZ1).await;
            if value.get("198.51.100.24").is_some() && value.get("198.51.100.23").is_none() {
                Ok(())
            } else {
                Err(value.to_string())
            }
        },
    )
    .await;
    let after = acl_revs(&env).await;
    let changed: Vec<&String> = after
        .keys()
        .filter(|id| before.get(*id) != after.get(*id))
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");

    // A name changes address: re-resolved when its TTL expires.
    dns.a("example.org.", "pbx.customer.example.org.", "198.51.100.79")
        .await;
    eventually(
        "the new address is served",
        Duration::from_secs(10),
        async || {
            let value = merged(&daemon, KZ1).await;
            if value.get("198.51.100.79").is_some() && value.get("198.51.100.78").is_none() {
                Ok(())
            } else {
                Err(value.to_string())
            }
        },
    )
    .await;

    // The name stops resolving: its last good address stays, reported.
    dns.set(
        "example.org.",
        "pbx.customer.example.org.",
        RecordType::A,
        vec![],
    )
    .await;
    eventually(
        "the failure is reported",
        Duration::from_secs(10),
        async || {
            let all = daemon.get("/v1/acls").await;
            let errors = all.json["errors"].to_string();
            if errors.contains("pbx.customer.example.org") {
                Ok(())
            } else {
                Err(errors)
            }
        },
    )
    .await;
    assert!(merged(&daemon, KZ1).await.get("198.51.100.79").is_some());

    // With the same DNS answers, a fresh daemon builds the same cache.
    dns.a("example.org.", "pbx.customer.example.org.", "198.51.100.79")
        .await;
    eventually(
        "the name resolves again",
        Duration::from_secs(10),
        async || {
            let errors = daemon.get("/v1/acls").await.json["errors"].to_string();
            if errors.contains("pbx.customer.example.org") {
                Err(errors)
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert_equals_from_scratch(&env.couch, &config, "acls").await;
}
