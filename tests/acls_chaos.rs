//! ACLs under chaos through the real daemon: a seeded random sequence
//! (`CALDERA_TEST_SEED`) of edits to auth-by-ip devices and peered
//! resources (`sip_auth`), carriers (`offnet`) and the static `acls` of
//! `system_config/ecallmgr` — bad values and deletes included — while the
//! DNS answers for the hostnames they name change address and TTL and
//! vanish, with a kill -9 in the middle of a round (edits go on while the
//! daemon is down) and a clean restart. Once every name resolves again the
//! cache equals a from-scratch build and both daemons serve the same
//! lists, `acl.conf` and merged object.

use std::collections::BTreeMap;
use std::time::Duration;

use fastrand::Rng;
use hickory_server::proto::rr::RData;
use hickory_server::proto::rr::RecordType;
use hickory_server::proto::rr::rdata::A;
use serde_json::{Map, Value, json};

use crate::acls::{Dns, KZ1, KZ2, config};
use crate::common::{TestEnv, stop_cleanly, wait_equals_from_scratch};
use crate::support::daemon::Daemon;
use crate::support::{eventually, seed};

const ROUNDS: usize = 5;
const EDITS_PER_ROUND: usize = 25;
/// Names the documents may use, all in the test's `example.com.` zone.
const HOSTS: [&str; 4] = [
    "h0.example.com",
    "h1.example.com",
    "h2.example.com",
    "h3.example.com",
];
/// A name that never resolves.
const NOWHERE: &str = "gw.nowhere.invalid";

/// The DNS answers the test controls: host → addresses (none: vanished).
struct Names {
    answers: BTreeMap<&'static str, Vec<String>>,
}

impl Names {
    async fn start(dns: &Dns, rng: &mut Rng) -> Names {
        let mut names = Names {
            answers: BTreeMap::new(),
        };
        for host in HOSTS {
            names.resolve(dns, rng, host).await;
        }
        names
    }

    /// Gives `host` one or two new addresses, with a TTL of 1–4 s.
    async fn resolve(&mut self, dns: &Dns, rng: &mut Rng, host: &'static str) {
        let addresses: Vec<String> = (0..rng.usize(1..3))
            .map(|_| format!("192.0.2.{}", rng.u8(1..60)))
            .collect();
        self.publish(dns, host, addresses, rng.u32(1..5)).await;
    }

    async fn publish(&mut self, dns: &Dns, host: &'static str, addresses: Vec<String>, ttl: u32) {
        let data = addresses
            .iter()
            .map(|a| RData::A(A(a.parse().expect("an IPv4 address"))))
            .collect();
        let owner = format!("{host}.");
        dns.set_with_ttl("example.com.", &owner, RecordType::A, data, ttl)
            .await;
        self.answers.insert(host, addresses);
    }

    /// One random DNS event: a new answer, or the name vanishing.
    async fn change(&mut self, dns: &Dns, rng: &mut Rng) {
        let host = HOSTS[rng.usize(..HOSTS.len())];
        self.change_host(dns, rng, host).await;
    }

    async fn change_host(&mut self, dns: &Dns, rng: &mut Rng, host: &'static str) {
        if rng.u8(..3) == 0 {
            self.publish(dns, host, Vec::new(), 1).await;
        } else {
            self.resolve(dns, rng, host).await;
        }
    }

    /// Every vanished name resolves again (a from-scratch build cannot know
    /// the last good addresses a running daemon keeps for a failing name).
    async fn restore(&mut self, dns: &Dns, rng: &mut Rng) {
        for host in HOSTS {
            if self.answers[host].is_empty() {
                self.resolve(dns, rng, host).await;
            }
        }
    }
}

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

/// An address as documents write them: an IP, a network, a hostname, a
/// name that never resolves, or garbage.
fn target(rng: &mut Rng) -> Value {
    match rng.u8(..20) {
        0..=6 => json!(format!("198.51.100.{}", rng.u8(1..40))),
        7..=8 => json!(format!("203.0.113.{}/30", rng.u8(0..16) * 4)),
        9..=14 => json!(pick(rng, &HOSTS)),
        15 => json!(NOWHERE),
        16 => json!(format!("203.0.113.{}:5080;transport=tcp", rng.u8(1..40))),
        17 => json!("not an address!"),
        18 => json!(rng.u16(..)),
        _ => json!(format!("2001:db8::{:x}", rng.u16(1..200))),
    }
}

fn device(rng: &mut Rng, id: &str) -> Value {
    let mut sip = Map::new();
    let method = if rng.u8(..5) == 0 { "password" } else { "ip" };
    sip.insert("method".into(), json!(method));
    sip.insert("ip".into(), target(rng));
    if rng.u8(..4) == 0 {
        sip.insert("inbound_ip".into(), target(rng));
    }
    let mut doc = json!({"_id": id, "pvt_type": "device", "pvt_account_id": pick(rng, &["acc-a", "acc-b"]),
                         "device_type": pick(rng, &["sip_device", "sip_device", "mobile"]), "sip": sip});
    if rng.u8(..6) == 0 {
        doc["enabled"] = json!(false);
    }
    doc
}

fn gateways(rng: &mut Rng, peered: bool) -> Value {
    if rng.u8(..15) == 0 {
        return json!("not a list");
    }
    let list: Vec<Value> = (0..rng.usize(0..4))
        .map(|_| {
            let mut gateway = json!({"server": target(rng), "endpoint_type": "sip"});
            match rng.u8(..4) {
                0 => gateway["enabled"] = json!(false),
                1 if !peered => {}
                _ => gateway["enabled"] = json!(true),
            }
            if peered && rng.u8(..3) == 0 {
                gateway["inbound_ip"] = target(rng);
            }
            gateway
        })
        .collect();
    json!(list)
}

fn peered_resource(rng: &mut Rng, id: &str) -> Value {
    json!({"_id": id, "pvt_type": "resource", "pvt_account_id": "acc-a", "peer": true,
           "enabled": rng.u8(..5) != 0, "gateways": gateways(rng, true)})
}

fn carrier(rng: &mut Rng, id: &str) -> Value {
    let mut doc = json!({"_id": id, "pvt_type": "resource", "enabled": rng.u8(..5) != 0,
                         "gateways": gateways(rng, false)});
    if rng.bool() {
        let ips: Vec<Value> = (0..rng.usize(0..3)).map(|_| target(rng)).collect();
        doc["inbound_ips"] = json!(ips);
    }
    doc
}

/// `system_config/ecallmgr` with random static `acls` in `default` and in
/// the two nodes' sections.
fn ecallmgr(rng: &mut Rng) -> Value {
    let mut doc = json!({"_id": "ecallmgr", "pvt_type": "config"});
    for section in ["default", KZ1, KZ2] {
        if section != "default" && rng.bool() {
            continue;
        }
        let mut acls = Map::new();
        for _ in 0..rng.usize(0..4) {
            let name = format!("static-{}", rng.u8(..6));
            let entry = json!({"type": pick(rng, &["allow", "allow", "deny"]),
                               "network-list-name": pick(rng, &["trusted", "authoritative"]),
                               "cidr": target(rng)});
            acls.insert(name, entry);
        }
        doc[section] = json!({"acls": acls});
    }
    doc
}

/// The test's databases and one random source edit at a time.
struct Sources<'a> {
    env: &'a TestEnv,
    sip_auth: String,
    offnet: String,
}

impl Sources<'_> {
    async fn edit(&self, rng: &mut Rng) {
        let couch = &self.env.couch;
        let (db, doc) = match rng.u8(..20) {
            0..=8 => {
                let id = format!("dev-{}", rng.u8(..12));
                (&self.sip_auth, device(rng, &id))
            }
            9..=11 => {
                let id = format!("peer-{}", rng.u8(..4));
                (&self.sip_auth, peered_resource(rng, &id))
            }
            12..=16 => {
                let id = format!("carrier-{}", rng.u8(..6));
                (&self.offnet, carrier(rng, &id))
            }
            _ => (&self.env.names.system_config, ecallmgr(rng)),
        };
        if rng.u8(..8) == 0 {
            couch.delete(db, doc["_id"].as_str().expect("an _id")).await;
        } else {
            couch.upsert(db, &doc).await;
        }
    }
}

/// One of `HOSTS` some ACL cache document names, if any.
async fn used_host(env: &TestEnv, rng: &mut Rng) -> Option<&'static str> {
    let cache = crate::common::cache_docs(&env.couch, &env.names.cache).await;
    let used: Vec<&'static str> = HOSTS
        .into_iter()
        .filter(|host| {
            cache.iter().any(|(id, doc)| {
                id.starts_with("acls:") && doc["content"]["hostnames"].get(*host).is_some()
            })
        })
        .collect();
    (!used.is_empty()).then(|| used[rng.usize(..used.len())])
}

/// Address strings in text order (the daemon keeps them in address order).
fn sorted(addresses: &Value) -> Vec<String> {
    let mut list: Vec<String> = addresses
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some(a.as_str()?.to_string()))
        .collect();
    list.sort();
    list
}

/// Waits until the ACL cache uses the current answer of every name that
/// resolves, and `/v1/acls` reports every vanished one it names (its TTL
/// expired, the daemon asked again): the DNS changes happened mid-run,
/// not only before the end.
async fn wait_dns_applied(env: &TestEnv, daemon: &Daemon, names: &Names, what: &str) {
    eventually(what, Duration::from_secs(20), async || {
        let cache = crate::common::cache_docs(&env.couch, &env.names.cache).await;
        let errors = daemon.get("/v1/acls").await.json["errors"].to_string();
        for (id, doc) in cache.iter().filter(|(id, _)| id.starts_with("acls:")) {
            let Some(used) = doc["content"]["hostnames"].as_object() else {
                continue;
            };
            for (host, addresses) in used {
                let Some(answer) = names.answers.get(host.as_str()) else {
                    continue;
                };
                let mut wanted = answer.clone();
                wanted.sort();
                wanted.dedup();
                if answer.is_empty() {
                    if !errors.contains(host.as_str()) {
                        return Err(format!("{id}: vanished {host} not reported: {errors}"));
                    }
                } else if sorted(addresses) != wanted {
                    return Err(format!(
                        "{id}: {host} uses {addresses}, DNS says {wanted:?}"
                    ));
                }
            }
        }
        Ok(())
    })
    .await;
}

/// What a daemon serves for node `node`: the lists, `acl.conf` and the
/// merged object sysconf gives Kazoo.
async fn served(daemon: &Daemon, node: &str) -> (Value, String, Value) {
    let query = format!("?node={}", crate::support::daemon::query_value(node));
    let lists = daemon.get(&format!("/v1/acls{query}")).await;
    let xml = daemon.get(&format!("/v1/acls/freeswitch.xml{query}")).await;
    let merged = daemon.sysconf_get("ecallmgr", &["acls"], Some(node)).await;
    let mut lists = lists.json;
    // Which node asked is not part of the answer's content.
    lists.as_object_mut().map(|o| o.remove("node"));
    (lists, xml.text, merged.json)
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_edits_dns_changes_and_kill_9_end_as_a_from_scratch_build() {
    let seed = seed("acl chaos");
    let mut rng = Rng::with_seed(seed);
    let env = TestEnv::new().await;
    let dns = Dns::start().await;
    let mut names = Names::start(&dns, &mut rng).await;
    let sources = Sources {
        env: &env,
        sip_auth: format!("{}_sip_auth", env.names.prefix),
        offnet: format!("{}_offnet", env.names.prefix),
    };
    env.couch.create_db(&sources.sip_auth).await;
    env.couch.create_db(&sources.offnet).await;
    for _ in 0..10 {
        sources.edit(&mut rng).await;
    }
    let mut config = config(&env, &dns);
    config.set("acls.dns_max_ttl_secs", 3);
    let mut daemon = Daemon::start_ready(&config).await;
    for round in 0..ROUNDS {
        for step in 0..EDITS_PER_ROUND {
            sources.edit(&mut rng).await;
            if step % 8 == 0 {
                names.change(&dns, &mut rng).await;
            }
            if step == EDITS_PER_ROUND / 2 {
                match round {
                    // Killed mid-round; the edits go on while it is down.
                    1 | 4 => daemon.kill9(),
                    3 => stop_cleanly(&mut daemon).await,
                    _ => {}
                }
            }
        }
        if !daemon.is_running() {
            daemon = Daemon::start_ready(&config).await;
        }
        // A name the outputs use changes last, so the wait below sees the
        // daemon ask again once its TTL is over.
        if let Some(host) = used_host(&env, &mut rng).await {
            names.change_host(&dns, &mut rng, host).await;
        }
        wait_dns_applied(
            &env,
            &daemon,
            &names,
            &format!("seed {seed}, round {round}"),
        )
        .await;
    }
    names.restore(&dns, &mut rng).await;
    let scratch =
        wait_equals_from_scratch(&env.couch, &config, "acls", Duration::from_secs(40)).await;
    for node in [KZ1, KZ2] {
        assert_eq!(
            served(&daemon, node).await,
            served(&scratch, node).await,
            "seed {seed}: {node}"
        );
    }
    let cache = crate::common::cache_docs(&env.couch, &env.names.cache).await;
    let hosts_used = cache
        .iter()
        .filter(|(id, _)| id.starts_with("acls:"))
        .filter(|(_, doc)| {
            doc["content"]["hostnames"]
                .as_object()
                .is_some_and(|h| !h.is_empty())
        })
        .count();
    assert!(
        hosts_used > 0,
        "seed {seed}: no ACL output names a hostname"
    );
}
