//! Tests of the pure ACL core and builder: golden cases in `fixtures/acls/`
//! (the reference's §4 set and a malformed-input set; `UPDATE_EXPECT=1` to
//! regenerate, then review), the deliberate differences from Kazoo 4.2
//! asserted by name, address parsing, and randomised edit sequences applied
//! incrementally (through the builder, the index views and the dependency
//! map, as the engine does, and on to the service's incremental merge)
//! compared with a from-scratch build and merge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::AclsBuilder;
use super::live::LiveMerge;
use super::model::{self, DNS, Net, OFFNET, SIP_AUTH, SYSTEM_CONFIG, SYSTEM_KEY, Target};
use crate::couch::Body;
use crate::domains::{Builder, Built, Domain, Issue};
use crate::rebuild::deps::DepGraph;
use crate::rebuild::index::{Dep, Index, Reads, SourceDoc, SourceId};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/acls")
}

fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// An index that files documents into the ACL views, as the engine's does.
fn new_index() -> Index {
    Index::with_keyer(Arc::new(|source: &str, doc: &SourceDoc| {
        AclsBuilder.view_keys(source, doc)
    }))
}

fn put(index: &mut Index, source: &str, id: &str, body: Value) -> Option<Arc<SourceDoc>> {
    let source: SourceId = Arc::from(source);
    let rev = index.get(&source, id).map_or(1, |d| {
        d.rev.split('-').next().unwrap().parse::<u64>().unwrap() + 1
    });
    index.upsert(
        &source,
        SourceDoc {
            id: id.to_string(),
            rev: format!("{rev}-x"),
            body: Body::of(&body),
        },
    )
}

/// Loads a fixture case into an index.
fn load_case(dir: &Path) -> Index {
    let mut index = new_index();
    for source in [SIP_AUTH, OFFNET, SYSTEM_CONFIG] {
        let Some(Value::Array(docs)) = read_json(&dir.join(format!("{source}.json"))) else {
            continue;
        };
        for doc in docs {
            let id = doc["_id"]
                .as_str()
                .expect("fixture documents have ids")
                .to_string();
            put(&mut index, source, &id, doc);
        }
    }
    if let Some(Value::Object(answers)) = read_json(&dir.join("dns.json")) {
        for (host, body) in answers {
            put(&mut index, DNS, &host, body);
        }
    }
    index
}

/// Every output of a from-scratch build (absent ones left out).
fn build_all(index: &Index) -> BTreeMap<String, Built> {
    AclsBuilder
        .all_keys(index)
        .into_iter()
        .filter_map(|key| {
            let mut reads = Reads::new(index);
            match AclsBuilder.build(&key, &mut reads) {
                Built::Absent => None,
                built => Some((key, built)),
            }
        })
        .collect()
}

fn issues_json(issues: &[Issue]) -> Value {
    let mut issues = issues.to_vec();
    issues.sort();
    json!(
        issues
            .iter()
            .map(|i| json!({ "db": &*i.source, "doc": i.doc, "reason": i.reason }))
            .collect::<Vec<_>>()
    )
}

fn describe(outputs: &BTreeMap<String, Built>) -> Value {
    let described: serde_json::Map<String, Value> = outputs
        .iter()
        .map(|(key, built)| {
            let value = match built {
                Built::Absent => json!("absent"),
                Built::Content { content, issues } => {
                    json!({ "content": content, "issues": issues_json(issues) })
                }
                Built::Failed { issues } => json!({ "failed": issues_json(issues) }),
            };
            (key.clone(), value)
        })
        .collect();
    Value::Object(described)
}

fn content(built: &Built) -> Option<&Value> {
    match built {
        Built::Content { content, .. } => Some(content),
        _ => None,
    }
}

/// What is served to `node` (zone `local`) from these outputs.
struct Served {
    merged: serde_json::Map<String, Value>,
    lists: Value,
    xml: String,
}

fn view(outputs: &BTreeMap<String, Built>, node: &str) -> Served {
    let system = outputs.get(SYSTEM_KEY).and_then(content);
    let digests: Vec<model::Digest> = outputs
        .iter()
        .filter(|(key, _)| *key != SYSTEM_KEY)
        .filter_map(|(_, built)| content(built))
        .map(model::digest)
        .collect();
    let shards: Vec<&model::Digest> = digests.iter().collect();
    let merged = model::merge(system, &shards, node, "local");
    Served {
        merged: merged.object(),
        lists: serde_json::from_str(&merged.lists_json().0).unwrap(),
        xml: merged.freeswitch_xml(),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

fn check_case(dir: &Path) -> BTreeMap<String, Built> {
    let index = load_case(dir);
    let outputs = build_all(&index);
    expect_test::expect_file![dir.join("outputs.expected.json")]
        .assert_eq(&pretty(&describe(&outputs)));
    let nodes: Vec<String> =
        serde_json::from_value(read_json(&dir.join("nodes.json")).expect("nodes.json")).unwrap();
    for node in nodes {
        let view = view(&outputs, &node);
        let served = json!({ "merged": view.merged, "lists": view.lists });
        expect_test::expect_file![dir.join(format!("merged.{node}.expected.json"))]
            .assert_eq(&pretty(&served));
        expect_test::expect_file![dir.join(format!("freeswitch.{node}.expected.xml"))]
            .assert_eq(&view.xml);
    }
    outputs
}

#[test]
fn golden_cases() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures/acls exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 2, "the golden cases are missing");
    for case in cases {
        check_case(&case);
    }
}

/// The reference's §4.5 answer, with the deliberate improvements named.
#[test]
fn kazoo_fixtures_give_the_reference_answer() {
    let outputs = build_all(&load_case(&fixtures().join("kazoo")));
    let kz1 = view(&outputs, "ecallmgr@kz1.example.net");
    let keys: BTreeSet<&str> = kz1.merged.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "kamailio-1",
        "kamailio-2",
        "carrier-b-block",
        "blocked-scanner",
        "198.51.100.23",
        "198.51.100.40",
        "198.51.100.77",
        "198.51.100.80",
        "198.51.100.78",
        "203.0.113.20",
        "203.0.113.10",
        "192.0.2.101",
        "192.0.2.102",
        "203.0.113.12",
        // Kazoo 4.2 also has "203.0.113.15" (Carrier A's allow); here the
        // static deny `blocked-scanner` for the same /32 is never overruled.
    ]
    .into();
    assert_eq!(keys, expected);
    let device = &kz1.merged["198.51.100.23"];
    assert_eq!(
        device,
        &json!({"type":"allow","network-list-name":"trusted","cidr":"198.51.100.23/32",
                "account_id":"3c9f1a7e5b2d4c8e9f0a1b2c3d4e5f60",
                "authorizing_id":"1d2e3f40a5b6c7d8e9f0a1b2c3d4e5f6","authorizing_type":"device"})
    );
    // Kazoo: account_id only "if the lookup_by_ip copy arrived last (race)";
    // here the peered-resource entry always beats the plain resource one.
    assert_eq!(
        kz1.merged["198.51.100.80"]["account_id"],
        "3c9f1a7e5b2d4c8e9f0a1b2c3d4e5f60"
    );
    assert!(kz1.merged["198.51.100.78"].get("account_id").is_none());
    assert_eq!(
        kz1.merged["192.0.2.101"]["authorizing_id"],
        "6d7e8f90a1b2c3d4e5f6a7b8c9d0e1f2"
    );
    assert_eq!(
        kz1.merged["kamailio-1"],
        json!({"type":"allow","network-list-name":"authoritative","cidr":"10.10.0.11/32","description":"edge proxy 1"})
    );
    let xml = &kz1.xml;
    assert!(xml.contains(r#"<node type="deny" cidr="203.0.113.15/32"/>"#));
    assert!(!xml.contains(r#"<node type="allow" cidr="203.0.113.15/32"/>"#));
    assert!(xml.find(r#"<list name="authoritative""#) < xml.find(r#"<list name="trusted""#));

    // The node section replaces `default` as a whole.
    let kz2 = view(&outputs, "ecallmgr@kz2.example.net");
    let statics: Vec<&str> = kz2
        .merged
        .iter()
        .filter(|(_, e)| e.get("authorizing_type").is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(statics, ["kamailio-lab"]);
    // Without blocked-scanner, Carrier A's 203.0.113.15 is back.
    assert!(kz2.merged.contains_key("203.0.113.15"));

    // Carrier C's NXDOMAIN is reported, not silently dropped.
    let shard = model::shard_key(OFFNET, model::shard_of("8f90a1b2c3d4e5f6a7b8c9d0e1f2a3b4"));
    let Built::Content { issues, .. } = &outputs[&shard] else {
        panic!("{shard} is built");
    };
    assert!(issues.iter().any(
        |i| i.doc.as_deref() == Some("8f90a1b2c3d4e5f6a7b8c9d0e1f2a3b4")
            && i.reason.contains("NXDOMAIN")
    ));
}

#[test]
fn address_strings_are_cut_as_kazoo_does_but_strictly() {
    let net = |text: &str| match model::parse_target(text) {
        Ok(Target::Net(net)) => net.cidr(),
        other => panic!("{text}: {other:?}"),
    };
    assert_eq!(net("198.51.100.23"), "198.51.100.23/32");
    assert_eq!(net(" 203.0.113.12:5080;transport=tcp"), "203.0.113.12/32");
    assert_eq!(net("203.0.113.12;transport=tcp"), "203.0.113.12/32");
    assert_eq!(net("198.18.40.0/28"), "198.18.40.0/28");
    assert_eq!(net("2001:DB8::1"), "2001:db8::1/128");
    assert_eq!(net("[2001:db8::1]:5060"), "2001:db8::1/128");
    assert_eq!(net("2001:db8::/32"), "2001:db8::/32");
    assert_eq!(
        model::parse_target("SBC.Carrier-A.example.com.:5060"),
        Ok(Target::Host("sbc.carrier-a.example.com".into()))
    );
    for bad in [
        "",
        "   ",
        ";transport=udp",
        "198.51.100.300",
        "198.51.100.1/33",
        "2001:db8::/129",
        "bogus/8",
        "198.51.100.1/",
        "198.51.100.1:0",
        "198.51.100.1:65536",
        "198.51.100.1:99999",
        "198.51.100.1:port",
        "sip:198.51.100.1",
        "[2001:db8::1",
        "[198.51.100.1]",
        "exa mple.com",
        "-bad-.example.com",
        "999.1.1.1",
    ] {
        assert!(
            model::parse_target(bad).is_err(),
            "{bad:?} must be rejected"
        );
    }
    let v6 = Net::host("2001:db8::1".parse().unwrap());
    assert_eq!(
        (v6.key(), v6.cidr()),
        ("2001:db8::1".into(), "2001:db8::1/128".into())
    );
}

#[test]
fn shard_keys_round_trip_and_are_stable() {
    assert_eq!(
        model::all_output_keys().len(),
        1 + 2 * model::SHARDS as usize
    );
    for key in model::all_output_keys().iter().skip(1) {
        let (source, shard) = model::parse_shard_key(key).expect("a shard key");
        assert_eq!(model::shard_key(source, shard), *key);
    }
    assert_eq!(model::parse_shard_key("sip_auth.64"), None);
    assert_eq!(model::parse_shard_key("units.01"), None);
    // The hash names cache documents: it must never change.
    // FNV-1a 32 of the id is 0xbc3ea282 (computed independently).
    assert_eq!(
        model::shard_of("1d2e3f40a5b6c7d8e9f0a1b2c3d4e5f6"),
        0xbc3e_a282 % model::SHARDS
    );
}

/// The engine's incremental path, reduced to the ACL builder: what a change
/// marks dirty (roots, document, source and view dependencies) is rebuilt.
struct Incremental {
    index: Index,
    deps: DepGraph,
    outputs: BTreeMap<String, Built>,
}

impl Incremental {
    fn new(index: Index) -> Incremental {
        let mut this = Incremental {
            index,
            deps: DepGraph::default(),
            outputs: BTreeMap::new(),
        };
        let keys = AclsBuilder.all_keys(&this.index);
        this.rebuild(keys);
        this
    }

    /// Applies one edit; returns the outputs it rebuilt.
    fn apply(&mut self, source: &str, id: &str, body: Option<Value>) -> BTreeSet<String> {
        let old = match body {
            Some(body) => put(&mut self.index, source, id, body),
            None => self.index.remove(source, id),
        };
        let new = self.index.get(source, id).cloned();
        let sid: SourceId = Arc::from(source);
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut deps = vec![
            Dep::Doc(sid.clone(), id.to_string()),
            Dep::Source(sid.clone()),
        ];
        for doc in [old.as_deref(), new.as_deref()] {
            dirty.extend(AclsBuilder.roots(source, id, doc));
            for key in doc.map_or_else(Vec::new, |d| AclsBuilder.view_keys(source, d)) {
                deps.push(Dep::View(sid.clone(), key));
            }
        }
        for dep in &deps {
            dirty.extend(self.deps.dependents(dep).map(|(_, key)| key.clone()));
        }
        self.rebuild(dirty.iter().cloned().collect());
        dirty
    }

    fn rebuild(&mut self, keys: Vec<String>) {
        for key in keys {
            let mut reads = Reads::new(&self.index);
            let built = AclsBuilder.build(&key, &mut reads);
            let (deps, _) = reads.finish();
            let id = (Domain::Acls, key.clone());
            if built == Built::Absent {
                self.deps.remove(&id);
                self.outputs.remove(&key);
            } else {
                self.deps.set(id, deps);
                self.outputs.insert(key, built);
            }
        }
    }
}

#[test]
fn one_device_edit_rebuilds_one_shard() {
    let mut state = Incremental::new(load_case(&fixtures().join("kazoo")));
    let id = "1d2e3f40a5b6c7d8e9f0a1b2c3d4e5f6";
    let mut doc = read_json(&fixtures().join("kazoo/sip_auth.json")).unwrap()[0].clone();
    doc["sip"]["ip"] = json!("198.51.100.24");
    let before = state.outputs.clone();
    let rebuilt = state.apply(SIP_AUTH, id, Some(doc));
    let shard = model::shard_key(SIP_AUTH, model::shard_of(id));
    assert_eq!(rebuilt, BTreeSet::from([shard.clone()]));
    let changed: Vec<&String> = state
        .outputs
        .keys()
        .filter(|k| before.get(*k) != state.outputs.get(*k))
        .collect();
    assert_eq!(changed, [&shard]);
    let merged = view(&state.outputs, "ecallmgr@kz1.example.net").merged;
    assert!(merged.contains_key("198.51.100.24") && !merged.contains_key("198.51.100.23"));

    // A DNS answer rebuilds exactly the outputs that used the name.
    let rebuilt = state.apply(
        DNS,
        "sbc.carrier-a.example.com",
        Some(json!({"addresses": ["192.0.2.103"], "error": null, "resolved_at": 2})),
    );
    let carrier_a = model::shard_key(OFFNET, model::shard_of("6d7e8f90a1b2c3d4e5f6a7b8c9d0e1f2"));
    assert_eq!(rebuilt, BTreeSet::from([carrier_a]));
    // Only `resolved_at` changed: same content.
    let before = state.outputs.clone();
    state.apply(
        DNS,
        "sbc.carrier-a.example.com",
        Some(json!({"addresses": ["192.0.2.103"], "error": null, "resolved_at": 99})),
    );
    assert_eq!(before, state.outputs);
}

/// A random document for the randomised edit test.
fn random_doc(rng: &mut fastrand::Rng, source: &str, id: &str) -> Value {
    const ADDRESSES: [&str; 16] = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
        "198.51.100.5:5060",
        "198.51.100.6;transport=tcp",
        "2001:db8::1",
        "[2001:db8::2]:5080",
        "198.51.100.0/30",
        "h0.example.net",
        "h1.example.net",
        "h2.example.net:5061",
        "",
        "198.51.100.300",
        "1.2.3.4:99999",
        "bogus/99",
    ];
    let address = |rng: &mut fastrand::Rng| json!(ADDRESSES[rng.usize(..ADDRESSES.len())]);
    let flag = |rng: &mut fastrand::Rng| match rng.u8(..5) {
        0 => Value::Null,
        1 => json!(false),
        2 => json!("true"),
        _ => json!(true),
    };
    if source == SYSTEM_CONFIG {
        let mut sections = serde_json::Map::new();
        for section in ["default", "ecallmgr@kz1.example.net", "local"] {
            if rng.bool() {
                continue;
            }
            let mut acls = serde_json::Map::new();
            for n in 0..rng.usize(..4) {
                let list = if rng.bool() {
                    "trusted"
                } else {
                    "authoritative"
                };
                let kind = if rng.u8(..4) == 0 { "deny" } else { "allow" };
                let cidr = match rng.u8(..4) {
                    0 => json!("198.51.100.1/32"),
                    1 => json!(["198.51.100.2", "h1.example.net"]),
                    2 => json!("10.0.0.0/8"),
                    _ => address(rng),
                };
                acls.insert(
                    format!("static-{n}"),
                    json!({"type": kind, "network-list-name": list, "cidr": cidr}),
                );
            }
            // An entry named like an address: it shadows the dynamic one.
            if rng.bool() {
                acls.insert("198.51.100.3".into(), json!({"type": "deny", "network-list-name": "trusted", "cidr": "198.51.100.3/32"}));
            }
            sections.insert(section.into(), json!({ "acls": acls }));
        }
        return Value::Object(sections);
    }
    if source == DNS {
        let addresses: Vec<&str> = ["192.0.2.1", "192.0.2.2", "198.51.100.1", "2001:db8::9"]
            .into_iter()
            .filter(|_| rng.bool())
            .collect();
        let error = (rng.u8(..3) == 0).then_some("DNS: no such name (NXDOMAIN)");
        return json!({ "addresses": addresses, "error": error, "resolved_at": rng.u32(..) });
    }
    match rng.u8(..6) {
        0 => json!("not an object"),
        1 | 2 => {
            let mut sip = json!({ "method": if rng.u8(..4) == 0 { "password" } else { "ip" }, "ip": address(rng) });
            if rng.bool() {
                sip["inbound_ip"] = address(rng);
            }
            json!({ "_id": id, "pvt_type": "device", "pvt_account_id": format!("acct{}", rng.u8(..3)),
                    "enabled": flag(rng), "pvt_deleted": rng.u8(..6) == 0,
                    "device_type": if rng.u8(..4) == 0 { "mobile" } else { "sip_device" }, "sip": sip })
        }
        _ => {
            let gateways: Vec<Value> = (0..rng.usize(..4))
                .map(|_| {
                    let mut gateway = json!({ "server": address(rng), "enabled": flag(rng) });
                    if rng.bool() {
                        gateway["inbound_ip"] = address(rng);
                    }
                    gateway
                })
                .collect();
            let gateways = if rng.u8(..8) == 0 {
                json!({"server": "198.51.100.1"})
            } else {
                json!(gateways)
            };
            json!({ "_id": id, "pvt_type": "resource", "pvt_account_id": "acct1", "enabled": flag(rng),
                    "peer": rng.bool(), "gateways": gateways,
                    "inbound_ips": if rng.bool() { json!([address(rng)]) } else { Value::Null } })
        }
    }
}

#[test]
fn random_edits_incrementally_equal_a_from_scratch_build() {
    let seed = std::env::var("CALDERA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("acls random edits: CALDERA_TEST_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut state = Incremental::new(new_index());
    let nodes = [
        "ecallmgr@kz1.example.net",
        "ecallmgr@kz9.example.net",
        "default",
    ];
    // The service's incremental merge, fed only the outputs each edit
    // rebuilt (tiny pages, so they split and join).
    let mut live = LiveMerge::with_page_size(2);
    for step in 0..400 {
        let (source, id) = match rng.u8(..10) {
            0 => (SYSTEM_CONFIG, "ecallmgr".to_string()),
            1 => (DNS, format!("h{}.example.net", rng.u8(..3))),
            2 | 3 => (OFFNET, format!("res-{}", rng.u8(..8))),
            _ => (SIP_AUTH, format!("doc-{}", rng.u8(..30))),
        };
        let body = (rng.u8(..5) != 0).then(|| random_doc(&mut rng, source, &id));
        for key in state.apply(source, &id, body) {
            let digest = state.outputs.get(&key).and_then(content).map(model::digest);
            if key != SYSTEM_KEY {
                live.apply(&key, digest);
            }
        }
        let scratch = build_all(&state.index);
        assert_eq!(
            describe(&state.outputs),
            describe(&scratch),
            "seed {seed}, step {step}: incremental differs from scratch after {source}/{id}"
        );
        for node in nodes {
            let (incremental, fresh) = (view(&state.outputs, node), view(&scratch, node));
            assert_eq!(incremental.xml, fresh.xml, "seed {seed}, step {step}");
            assert_eq!(incremental.merged, fresh.merged, "seed {seed}, step {step}");
            let system = state.outputs.get(SYSTEM_KEY).and_then(content);
            let answer = live.answer(system.and_then(|s| model::system_section(s, node, "local")));
            assert_eq!(
                answer.freeswitch_xml(),
                fresh.xml,
                "seed {seed}, step {step}: live merge"
            );
            assert_eq!(
                answer.object(&live.object()),
                fresh.merged,
                "seed {seed}, step {step}: live merge"
            );
            let lists: Value = serde_json::from_str(&answer.lists_json().0).unwrap();
            assert_eq!(lists, fresh.lists, "seed {seed}, step {step}: live merge");
        }
    }
}

#[test]
fn merge_order_does_not_depend_on_shard_order() {
    let mut index = new_index();
    for (n, account) in ["b", "a", "c"].into_iter().enumerate() {
        put(
            &mut index,
            SIP_AUTH,
            &format!("dev-{n}"),
            json!({"pvt_type": "device", "pvt_account_id": account, "sip": {"method": "ip", "ip": "198.51.100.1"}}),
        );
    }
    let outputs = build_all(&index);
    let digests: Vec<model::Digest> = outputs
        .values()
        .filter_map(content)
        .map(model::digest)
        .collect();
    let mut shards: Vec<&model::Digest> = digests.iter().collect();
    let forward = model::merge(None, &shards, "n", "z");
    let (xml, merged) = (forward.freeswitch_xml(), forward.object());
    shards.reverse();
    let backward = model::merge(None, &shards, "n", "z");
    assert_eq!(xml, backward.freeswitch_xml());
    assert_eq!(merged, backward.object());
    assert_eq!(merged["198.51.100.1"]["authorizing_id"], "dev-0");
}
