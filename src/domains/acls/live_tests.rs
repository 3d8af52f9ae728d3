//! Tests of the incremental merge (`live`) and of the service that keeps
//! it: randomised sequences of shard changes (seeded; `CALDERA_TEST_SEED`
//! replays) compared after every step with a fresh from-scratch merge
//! (`model::merge`) for several nodes, the page bookkeeping (bounds, one
//! page re-rendered per edit), and the service following the mirror.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::live::{LiveMerge, PAGE_SIZE};
use super::model::{self, Digest, SYSTEM_KEY};
use super::service::AclsService;
use crate::cache::mirror::{Mirror, Update};
use crate::cache::{CacheEntry, content_hash, doc_id};
use crate::domains::Domain;

const NODES: [&str; 4] = [
    "ecallmgr@kz1.example.net",
    "ecallmgr@kz2.example.net",
    "ecallmgr@elsewhere.example.net",
    "default",
];
const ZONE: &str = "local";

fn seed() -> u64 {
    let seed = std::env::var("CALDERA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("acls live merge: CALDERA_TEST_SEED={seed}");
    seed
}

/// Networks the random entries are drawn from: few, so shards compete.
const NETS: [&str; 14] = [
    "198.51.100.1/32",
    "198.51.100.2/32",
    "198.51.100.3/32",
    "198.51.100.10/32",
    "198.51.100.9/32",
    "198.51.100.0/30",
    "198.51.100.0/24",
    "10.0.0.0/8",
    "10.1.2.3/32",
    "192.0.2.7/32",
    "2001:db8::1/128",
    "2001:db8::2/128",
    "2001:db8::/32",
    "0.0.0.0/0",
];

fn pick<'a>(rng: &mut fastrand::Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

/// One random entry in the shape the builder writes (sometimes with
/// ports, another list, a list name that needs escaping, or a key that
/// does not match its CIDR).
fn random_entry(rng: &mut fastrand::Rng) -> (String, Value) {
    let cidr = pick(rng, &NETS);
    let net = match model::parse_target(cidr) {
        Ok(model::Target::Net(net)) => net,
        other => panic!("{cidr}: {other:?}"),
    };
    let list = match rng.u8(..10) {
        0 => "authoritative",
        1 => "a&b <list>",
        _ => "trusted",
    };
    let mut entry = json!({
        "type": "allow", "network-list-name": list, "cidr": cidr,
        "authorizing_id": pick(rng, &["dev-a", "dev-b", "res-c", ""]),
        "authorizing_type": pick(rng, &["device", "mobile", "resource"]),
    });
    if rng.bool() {
        entry["account_id"] = json!(pick(rng, &["acct1", "acct2"]));
    }
    if rng.u8(..4) == 0 {
        entry["ports"] = json!([5060, "5080"]);
    }
    let key = if rng.u8(..12) == 0 {
        "not-its-key".to_string()
    } else {
        net.key()
    };
    (key, entry)
}

fn random_shard(rng: &mut fastrand::Rng) -> Value {
    let mut content =
        json!({ "device": {}, "peered_resource": {}, "resource": {}, "hostnames": {} });
    for _ in 0..rng.usize(..8) {
        let class = pick(rng, &["device", "peered_resource", "resource"]);
        let (key, entry) = random_entry(rng);
        content[class][key] = entry;
    }
    if rng.u8(..10) == 0 {
        // An entry without a usable CIDR is left out.
        content["device"]["broken"] = json!({"network-list-name": "trusted", "cidr": 7});
    }
    content
}

/// A small edit of a shard: one entry added, changed or dropped.
fn edit_shard(rng: &mut fastrand::Rng, content: &Value) -> Value {
    let mut content = content.clone();
    let class = pick(rng, &["device", "peered_resource", "resource"]);
    let entries = content[class].as_object_mut().expect("a class map");
    match (rng.u8(..3), entries.keys().next().cloned()) {
        (0, Some(key)) => {
            entries.remove(&key);
        }
        (1, Some(key)) => {
            entries[&key]["authorizing_id"] = json!(pick(rng, &["dev-a", "dev-z"]));
        }
        _ => {
            let (key, entry) = random_entry(rng);
            entries.insert(key, entry);
        }
    }
    content
}

fn random_statics(rng: &mut fastrand::Rng) -> Value {
    let mut acls = Map::new();
    for n in 0..rng.usize(..4) {
        let cidr = match rng.u8(..3) {
            0 => json!([pick(rng, &NETS), pick(rng, &NETS)]),
            _ => json!(pick(rng, &NETS)),
        };
        let list = pick(rng, &["trusted", "authoritative", "a&b <list>"]);
        let kind = pick(rng, &["allow", "deny"]);
        acls.insert(
            format!("static-{n}"),
            json!({"type": kind, "network-list-name": list, "cidr": cidr}),
        );
    }
    if rng.bool() {
        // Named like an address: it overrules the dynamic entry so keyed.
        let name = pick(rng, &["198.51.100.1", "2001:db8::1", "198.51.100.0/30"]);
        acls.insert(
            name.into(),
            json!({"type": "deny", "network-list-name": "authoritative", "cidr": "203.0.113.1/32"}),
        );
    }
    Value::Object(acls)
}

/// `acls:system`'s content: sections for some of the nodes and the zone.
fn random_system(rng: &mut fastrand::Rng) -> Value {
    let mut sections = Map::new();
    for section in ["default", NODES[0], NODES[1], ZONE] {
        if rng.u8(..3) != 0 {
            sections.insert(section.into(), random_statics(rng));
        }
    }
    json!({ "sections": sections, "hostnames": {} })
}

/// Everything one answer gives, to compare.
#[derive(Debug, PartialEq)]
struct Answer {
    xml: String,
    lists: String,
    each: BTreeMap<String, String>,
    object: Map<String, Value>,
}

/// The from-scratch answer for the current shards.
fn fresh(system: Option<&Value>, shards: &BTreeMap<String, Value>, node: &str) -> Answer {
    let digests: Vec<Digest> = shards.values().map(model::digest).collect();
    let refs: Vec<&Digest> = digests.iter().collect();
    let merged = model::merge(system, &refs, node, ZONE);
    let (lists, each) = merged.lists_json();
    Answer {
        xml: merged.freeswitch_xml(),
        lists,
        each,
        object: merged.object(),
    }
}

fn live_answer(live: &mut LiveMerge, system: Option<&Value>, node: &str) -> Answer {
    let statics = system.and_then(|s| model::system_section(s, node, ZONE));
    let answer = live.answer(statics);
    let (lists, ranges) = answer.lists_json();
    let each = ranges
        .into_iter()
        .map(|(list, range)| (list, lists[range].to_string()))
        .collect();
    Answer {
        xml: answer.freeswitch_xml(),
        lists,
        each,
        object: answer.object(&live.object()),
    }
}

#[test]
fn random_shard_changes_equal_a_fresh_merge() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..12 {
        // Tiny pages split and join all the time; the real size too.
        let page_size = if round == 0 {
            PAGE_SIZE
        } else {
            rng.usize(1..=5)
        };
        let mut live = LiveMerge::with_page_size(page_size);
        let mut shards: BTreeMap<String, Value> = BTreeMap::new();
        let mut system: Option<Value> = None;
        for step in 0..150 {
            let id = format!("acls:sip_auth.{:02}", rng.u8(..6));
            match rng.u8(..10) {
                0 => system = (rng.u8(..4) != 0).then(|| random_system(&mut rng)),
                1 => {
                    shards.remove(&id);
                    live.apply(&id, None);
                }
                2..=5 if shards.contains_key(&id) => {
                    let content = edit_shard(&mut rng, &shards[&id]);
                    live.apply(&id, Some(model::digest(&content)));
                    shards.insert(id, content);
                }
                _ => {
                    let content = random_shard(&mut rng);
                    live.apply(&id, Some(model::digest(&content)));
                    shards.insert(id, content);
                }
            }
            let context = format!("seed {seed}, round {round} (pages of {page_size}), step {step}");
            live.check().unwrap_or_else(|e| panic!("{context}: {e}"));
            for node in NODES {
                let expected = fresh(system.as_ref(), &shards, node);
                let got = live_answer(&mut live, system.as_ref(), node);
                assert_eq!(got, expected, "{context}, node {node}");
            }
        }
    }
}

/// A shard of `n` devices with consecutive addresses from `first`.
fn devices(first: u32, n: u32, account: &str) -> Value {
    let mut device = Map::new();
    for a in first..first + n {
        let ip = core::net::Ipv4Addr::from(0x0a00_0000 + a).to_string();
        device.insert(
            ip.clone(),
            json!({"type": "allow", "network-list-name": "trusted", "cidr": format!("{ip}/32"),
                   "account_id": account, "authorizing_id": format!("dev-{a}"), "authorizing_type": "device"}),
        );
    }
    json!({ "device": device, "peered_resource": {}, "resource": {}, "hostnames": {} })
}

#[test]
fn one_edit_re_renders_one_page() {
    let mut live = LiveMerge::default();
    // Interleaved shards: every page mixes entries of many shards.
    let shards = 8u32;
    let contents: Vec<Value> = (0..shards)
        .map(|s| {
            let mut content = devices(0, 0, "a");
            for n in 0..2_000u32 {
                let one = devices(n * shards + s, 1, "a");
                let (key, entry) = one["device"].as_object().unwrap().iter().next().unwrap();
                content["device"][key] = entry.clone();
            }
            content
        })
        .collect();
    for (s, content) in contents.iter().enumerate() {
        live.apply(&format!("s{s}"), Some(model::digest(content)));
    }
    let frozen = live.freeze();
    assert_eq!(frozen.len(), 16_000);
    let pages = frozen.pages();
    assert!(
        (16_000 / (2 * PAGE_SIZE)..=16_000 / (PAGE_SIZE / 2)).contains(&pages),
        "{pages} pages"
    );
    let rendered = live.pages_rendered();
    assert_eq!(
        rendered, pages as u64,
        "the first snapshot renders every page"
    );

    // One device moves within its shard: its page, and only it, again.
    let mut edited = contents[3].clone();
    let entries = edited["device"].as_object_mut().unwrap();
    let key = entries.keys().nth(500).unwrap().clone();
    entries[&key]["account_id"] = json!("b");
    live.apply("s3", Some(model::digest(&edited)));
    live.freeze();
    assert_eq!(live.pages_rendered() - rendered, 1);

    // A snapshot without changes renders nothing.
    live.freeze();
    assert_eq!(live.pages_rendered() - rendered, 1);
    live.check().unwrap();

    // The same shard applied again changes nothing at all.
    let before = live.freeze();
    live.apply("s3", Some(model::digest(&edited)));
    assert!(Arc::ptr_eq(&before, &live.freeze()));
}

#[test]
fn pages_split_and_join_as_a_list_grows_and_shrinks() {
    let mut live = LiveMerge::with_page_size(4);
    live.apply("s", Some(model::digest(&devices(0, 1_000, "a"))));
    live.check().unwrap();
    let grown = live.freeze().pages();
    assert!(
        (125..=500).contains(&grown),
        "{grown} pages for 1000 entries"
    );
    // Shrink to a few entries: the pages join again.
    live.apply("s", Some(model::digest(&devices(0, 3, "a"))));
    live.check().unwrap();
    assert_eq!(live.freeze().pages(), 1);
    live.apply("s", None);
    live.check().unwrap();
    assert!(live.is_empty() && live.freeze().is_empty());
}

/// A node with its own static section gets it; another node gets the
/// zone's or `default`'s, from the same incremental state.
#[test]
fn each_node_gets_its_own_static_section() {
    let mut live = LiveMerge::default();
    live.apply("s", Some(model::digest(&devices(1, 3, "a"))));
    let system = json!({"sections": {
        "default": {"10.0.0.1": {"type": "deny", "network-list-name": "trusted", "cidr": "10.0.0.1/32"}},
        "ecallmgr@kz1": {"proxy": {"type": "allow", "network-list-name": "authoritative", "cidr": "10.9.9.9/32"}}
    }, "hostnames": {}});
    let kz1 = live_answer(&mut live, Some(&system), "ecallmgr@kz1");
    let other = live_answer(&mut live, Some(&system), "ecallmgr@kz2");
    assert_eq!(kz1.object.len(), 4);
    assert_eq!(kz1.object["10.0.0.1"]["authorizing_id"], "dev-1");
    assert!(
        kz1.xml
            .contains(r#"<node type="allow" cidr="10.9.9.9/32"/>"#)
    );
    assert_eq!(other.object.len(), 3);
    assert_eq!(other.object["10.0.0.1"]["type"], "deny");
    assert!(!other.xml.contains("10.9.9.9"));
    assert!(
        !other
            .xml
            .contains(r#"<node type="allow" cidr="10.0.0.1/32""#)
    );
}

// ------------------------------------------------------------ the service

fn cache_entry(key: &str, content: Value, errors: Value, rev: u64) -> CacheEntry {
    CacheEntry {
        id: doc_id(Domain::Acls, key),
        rev: format!("{rev}-t"),
        domain: "acls".into(),
        key: key.into(),
        hash: content_hash(&content, &errors, false),
        content: content.into(),
        errors,
        stale: false,
        bytes: 0,
    }
}

#[test]
fn the_service_follows_the_mirror_like_a_fresh_merge() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mirror = Arc::new(Mirror::default());
    mirror.replace_all(Vec::new());
    let service = AclsService::new(mirror.clone(), NODES[0].into(), ZONE.into());
    let mut shards: BTreeMap<String, Value> = BTreeMap::new();
    let mut system: Option<Value> = None;
    for step in 0..300u64 {
        let key = match rng.u8(..8) {
            0 => SYSTEM_KEY.to_string(),
            n => model::shard_key(model::OFFNET, u32::from(n) * 9),
        };
        let rev = step + 2;
        if rng.u8(..5) == 0 {
            let id = doc_id(Domain::Acls, &key);
            mirror.apply_written(Update::Deleted {
                id,
                rev: format!("{rev}-t"),
            });
            shards.remove(&key);
            if key == SYSTEM_KEY {
                system = None;
            }
        } else {
            let content = if key == SYSTEM_KEY {
                random_system(&mut rng)
            } else {
                match shards.get(&key) {
                    Some(held) if rng.bool() => edit_shard(&mut rng, held),
                    _ => random_shard(&mut rng),
                }
            };
            let errors = json!([{"db": "offnet", "doc": format!("d{step}"), "reason": "bad"}]);
            let entry = cache_entry(&key, content.clone(), errors, rev);
            mirror.apply_written(Update::Live(entry));
            if key == SYSTEM_KEY {
                system = Some(content);
            } else {
                shards.insert(key.clone(), content);
            }
        }
        for node in NODES {
            let served = service.view(Some(node)).unwrap();
            let expected = fresh(system.as_ref(), &shards, node);
            let context = format!("seed {seed}, step {step}, node {node}");
            assert_eq!(served.xml(), expected.xml, "{context}");
            assert_eq!(served.lists_json(), expected.lists, "{context}");
            for (list, json) in &expected.each {
                assert_eq!(served.list_json(list), Some(json.as_str()), "{context}");
            }
            assert_eq!(served.list_json("no such list"), None);
            let merged = service.merged(Some(node)).unwrap();
            assert_eq!(merged, Value::Object(expected.object), "{context}");
            let outputs = shards.len() + usize::from(system.is_some());
            assert_eq!(
                served.errors.as_array().map(Vec::len),
                Some(outputs),
                "{context}"
            );
        }
    }
}

#[test]
fn the_service_keeps_a_bounded_number_of_node_answers() {
    let mirror = Arc::new(Mirror::default());
    let system = json!({"sections": {"default": {"x": {"network-list-name": "trusted", "type": "allow", "cidr": "10.0.0.1/32"}}}, "hostnames": {}});
    mirror.replace_all(vec![cache_entry(SYSTEM_KEY, system, json!([]), 1)]);
    let service = AclsService::new(mirror, "n0".into(), ZONE.into());
    for n in 0..100 {
        let served = service.view(Some(&format!("n{n}"))).unwrap();
        assert!(served.xml().contains("10.0.0.1/32"));
        assert!(
            service.memoised_nodes() <= 16,
            "{} answers kept",
            service.memoised_nodes()
        );
    }
}

/// Eager preparation renders again, after a change, exactly what was asked
/// for before it, and nothing when nothing was asked or changed.
#[test]
fn prepare_renders_again_what_was_asked_for() {
    let system = |cidr: &str| json!({"sections": {"default": {"x": {"network-list-name": "trusted", "type": "allow", "cidr": cidr}}}, "hostnames": {}});
    let mirror = Arc::new(Mirror::default());
    mirror.replace_all(vec![cache_entry(
        SYSTEM_KEY,
        system("10.0.0.1/32"),
        json!([]),
        1,
    )]);
    let service = AclsService::new(mirror.clone(), "n0".into(), ZONE.into());
    assert_eq!(service.prepare(), 0, "nothing was asked for");
    assert!(
        service
            .view(Some("n0"))
            .unwrap()
            .xml()
            .contains("10.0.0.1/32")
    );
    assert!(
        service
            .view(Some("n1"))
            .unwrap()
            .lists_json()
            .contains("10.0.0.1/32")
    );
    assert_eq!(service.prepare(), 0, "nothing changed");
    let entry = cache_entry(SYSTEM_KEY, system("10.0.0.2/32"), json!([]), 2);
    mirror.apply_written(Update::Live(entry));
    assert_eq!(service.prepare(), 2);
    let n0 = service.view(Some("n0")).unwrap();
    assert_eq!(n0.rendered(), (true, false));
    assert!(n0.xml().contains("10.0.0.2/32"));
    let n1 = service.view(Some("n1")).unwrap();
    assert_eq!(n1.rendered(), (false, true));
    assert!(n1.lists_json().contains("10.0.0.2/32"));
    assert_eq!(service.prepare(), 0, "already prepared");
}

/// The eager task re-renders a memoised answer after an ACL change, with
/// no request in between.
#[test]
fn an_acl_change_is_prepared_without_a_request() {
    let system = |cidr: &str| json!({"sections": {"default": {"x": {"network-list-name": "trusted", "type": "allow", "cidr": cidr}}}, "hostnames": {}});
    let mirror = Arc::new(Mirror::default());
    mirror.replace_all(vec![cache_entry(
        SYSTEM_KEY,
        system("10.0.0.1/32"),
        json!([]),
        1,
    )]);
    let service = Arc::new(AclsService::new(mirror.clone(), "n0".into(), ZONE.into()));
    assert!(service.view(None).unwrap().xml().contains("10.0.0.1/32"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    runtime.spawn(service.clone().prepare_eagerly(token.clone()));
    // Let the task register and spend the permit of its registration.
    std::thread::sleep(std::time::Duration::from_millis(200));
    mirror.apply_written(Update::Live(cache_entry(
        SYSTEM_KEY,
        system("10.0.0.2/32"),
        json!([]),
        2,
    )));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let xml = service.memoised_xml("n0").unwrap_or_default();
        if xml.contains("10.0.0.2/32") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not prepared: {xml}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    token.cancel();
}

/// Readers racing a writer: each sees the versions in order, and the
/// last one in the end.
#[test]
fn concurrent_readers_never_go_back_in_time() {
    let mirror = Arc::new(Mirror::default());
    mirror.replace_all(Vec::new());
    let service = Arc::new(AclsService::new(mirror.clone(), "n".into(), ZONE.into()));
    let version = |n: u64| {
        let mut content = devices(1, 1, "a");
        content["device"]["10.0.0.1"]["authorizing_id"] = json!(format!("v{n:06}"));
        cache_entry(
            &model::shard_key(model::SIP_AUTH, 1),
            content,
            json!([]),
            n + 1,
        )
    };
    let observed = |service: &AclsService| {
        let served = service.view(Some("n")).unwrap();
        let json = served.lists_json();
        json.find("\"v")
            .map(|at| json[at + 2..at + 8].parse::<u64>().unwrap())
    };
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let service = service.clone();
                scope.spawn(move || {
                    let mut last = 0;
                    for _ in 0..3_000 {
                        if let Some(seen) = observed(&service) {
                            assert!(seen >= last, "saw v{seen} after v{last}");
                            last = seen;
                        }
                    }
                })
            })
            .collect();
        for n in 1..=3_000 {
            mirror.apply_written(Update::Live(version(n)));
        }
        for reader in readers {
            reader.join().unwrap();
        }
    });
    assert_eq!(observed(&service), Some(3_000));
}
