//! With an on-disk store the mirror keeps phones outputs out of memory
//! (`cache::store`, `Content::Spilled`) and reads them back on demand;
//! the serving tables extract what they need when an entry is put or the
//! mirror is reset from the store. These tests prove that every answer of
//! a store-backed mirror — the serving tables, what a phone's request
//! gets, the admin read views, after puts and after a reload — is exactly
//! the one of an in-memory mirror, for the demo data, randomised worlds
//! (seeded; `CALDERA_TEST_SEED` replays) and hostile contents the builder
//! never writes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::limiter::Limits;
use super::mac::Mac;
use super::service::{PhoneRequest, PhonesService, Reply, Settings, nonce_key};
use super::serving::{FileLookup, FileSet, ServedFile, Tables};
use super::tests::{World, demo_world, random_doc};
use super::trust::TrustLimits;
use crate::cache::mirror::{Mirror, Update};
use crate::cache::store::Store;
use crate::cache::{CacheEntry, Content, JsonText};
use crate::domains::Built;

fn entry(key: &str, content: &Value) -> CacheEntry {
    CacheEntry {
        id: format!("phones:{key}"),
        rev: "1-a".into(),
        domain: "phones".into(),
        key: key.into(),
        hash: "h".into(),
        content: Content::Text(JsonText::of(content)),
        errors: json!([{"db": "units", "doc": "d", "reason": "r"}]),
        stale: false,
        bytes: 0,
    }
}

fn settings() -> Settings {
    Settings {
        limits: Limits {
            budget: 100_000,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
            max_sources: 100,
        },
        trust: TrustLimits {
            ttl: 3_600,
            max: 100,
        },
        nonce_ttl: Duration::from_secs(300),
        request_log: 10,
        max_upload: 1024,
        trusted_proxies: Vec::new(),
        hot_set_bytes: 1 << 20,
    }
}

/// A service over a mirror holding `contents` (applied one by one, in
/// order), in memory or backed by a store (the store's file lives in a
/// temporary directory kept for the test process's life).
fn service(contents: &[(String, Value)], stored: bool) -> (std::sync::Arc<Mirror>, PhonesService) {
    let mirror = if stored {
        let dir = tempfile::tempdir().unwrap().keep();
        let store = Store::open(&dir.join("cache.redb")).unwrap();
        Mirror::with_store(store).unwrap().0
    } else {
        std::sync::Arc::new(Mirror::default())
    };
    mirror.caught_up();
    let service = PhonesService::new(mirror.clone(), settings(), nonce_key(Some("k")));
    for (key, content) in contents {
        mirror.apply_written(Update::Live(entry(key, content)));
    }
    spill(&mirror, stored);
    (mirror, service)
}

/// Waits until a store-backed mirror's phones contents left memory.
fn spill(mirror: &Mirror, stored: bool) {
    if stored {
        assert!(mirror.flush(Duration::from_secs(30)));
        assert_eq!(mirror.pending_bytes(), 0);
    }
}

/// What the probes ask about: every account, realm, MAC and file name the
/// contents mention, and some they do not.
#[derive(Default)]
struct Probes {
    accounts: BTreeSet<String>,
    realms: BTreeSet<String>,
    macs: BTreeSet<String>,
    files: BTreeSet<String>,
    units: BTreeSet<String>,
}

impl Probes {
    fn of(contents: &[(String, Value)]) -> Probes {
        let mut probes = Probes::default();
        let add = |set: &mut BTreeSet<String>, value: &Value| {
            if let Some(text) = value.as_str() {
                set.insert(text.to_string());
            }
        };
        for (key, content) in contents {
            add(&mut probes.accounts, &content["unit"]["account_id"]);
            add(&mut probes.accounts, &content["account_id"]);
            add(&mut probes.realms, &content["realm"]);
            add(&mut probes.realms, &content["account"]["realm"]);
            add(&mut probes.macs, &content["unit"]["mac"]);
            if let Some(files) = content["files"].as_object() {
                probes.files.extend(files.keys().cloned());
            }
            if let Some(id) = key.strip_prefix("account:") {
                probes.accounts.insert(id.to_string());
            }
            if let Some(id) = key.strip_prefix("unit:") {
                probes.units.insert(id.to_string());
            }
        }
        probes.accounts.insert("nobody".into());
        probes.realms.insert("nowhere.example".into());
        probes.macs.insert("0004f2000000".into());
        probes.files.insert("nothing.cfg".into());
        probes.units.insert("no-unit".into());
        probes
    }
}

fn file_summary(file: &ServedFile) -> Value {
    json!({
        "body": String::from_utf8_lossy(&file.body), "etag": file.etag,
        "content_type": file.content_type,
        "headers": [file.headers.content_type.to_str().ok(), file.headers.etag.to_str().ok()],
    })
}

/// Each file of a set as served (its body read back through the hot set
/// and the mirror), twice: the second answer comes from the hot set.
fn files_summary(tables: &Tables, mirror: &Mirror, files: &FileSet) -> Value {
    let read = |name: &str| match tables.file(mirror, files, name) {
        FileLookup::Found(file) => file_summary(&file),
        other => json!(format!("{other:?}")),
    };
    let sorted: BTreeMap<&str, Value> = files
        .names()
        .map(|name| {
            let first = read(name);
            assert_eq!(first, read(name), "{name}: the hot set answers the same");
            (name, first)
        })
        .collect();
    json!(sorted)
}

/// Lists sorted, so that tables filled in a different order compare equal.
fn sorted(mut list: Vec<Value>) -> Value {
    list.sort_by_key(Value::to_string);
    Value::Array(list)
}

/// Everything the tables answer to the probes (`since` aside: it is when
/// this process first saw a file).
fn tables_summary(tables: &Tables, mirror: &Mirror, probes: &Probes) -> Value {
    let mut out = serde_json::Map::new();
    for realm in &probes.realms {
        out.insert(
            format!("realm {realm}"),
            json!(tables.account_of_realm(realm).as_deref()),
        );
    }
    for account in &probes.accounts {
        let served = tables
            .account(account)
            .map(|a| json!({"served": a.served, "allowed": format!("{:?}", a.allowed)}));
        out.insert(format!("account {account}"), json!(served));
        let units_of: Vec<String> = tables
            .units_of(account)
            .iter()
            .map(|u| u.to_string())
            .collect();
        out.insert(format!("units_of {account}"), json!(units_of));
        for mac in probes.macs.iter().filter_map(|m| Mac::parse(m)) {
            let units = tables.units(account, &mac);
            let units = units.iter().map(|u| {
                json!({"id": &*u.id, "brand": u.brand, "auth": format!("{:?}", u.auth),
                       "common": u.common.as_deref(), "files": files_summary(tables, mirror, &u.files)})
            });
            out.insert(format!("units {account} {mac}"), sorted(units.collect()));
            out.insert(
                format!("elsewhere {account} {mac}"),
                json!(tables.mac_in_other_account(account, &mac)),
            );
        }
        for file in &probes.files {
            let common = tables.common(account, file);
            let common = common.iter().map(|c| {
                json!({"doc": &**c.doc(), "brand": c.brand, "model": c.model,
                       "files": files_summary(tables, mirror, &c.files)})
            });
            out.insert(format!("common {account} {file}"), sorted(common.collect()));
        }
    }
    Value::Object(out)
}

/// The admin read API's answers (before any phone request: `last_seen`).
fn admin_summary(service: &PhonesService, probes: &Probes) -> Value {
    let mut out = serde_json::Map::new();
    for unit in &probes.units {
        out.insert(format!("view {unit}"), json!(service.unit_view(unit)));
        for file in &probes.files {
            let found = service
                .unit_file(unit, file)
                .map(|(kind, body)| json!([kind, String::from_utf8_lossy(&body)]));
            out.insert(format!("file {unit} {file}"), json!(found));
        }
    }
    for account in &probes.accounts {
        out.insert(
            format!("account_units {account}"),
            json!(service.account_units(account)),
        );
    }
    Value::Object(out)
}

fn reply_summary(reply: &Reply) -> Value {
    match reply {
        Reply::File {
            not_modified,
            file,
            private,
        } => json!({"status": reply.status(), "not_modified": not_modified, "private": private,
                    "file": file_summary(file)}),
        // Nonces are random per challenge.
        Reply::Challenge { challenges } => json!({"status": 401, "challenges": challenges.len()}),
        other => json!({"status": other.status()}),
    }
}

/// What phones get: every file name from every probed unit's MAC, by
/// realm and by account prefix, with and without a User-Agent, fresh and
/// conditional.
fn phone_summary(service: &PhonesService, probes: &Probes) -> Value {
    let peer = "192.0.2.7".parse().unwrap();
    let mut out = Vec::new();
    for (realm, account) in probes.realms.iter().zip(probes.accounts.iter().cycle()) {
        for mac in probes.macs.iter().filter_map(|m| Mac::parse(m)) {
            let mac = mac.lower();
            let colons: Vec<&str> = (0..6).map(|i| &mac[2 * i..2 * i + 2]).collect();
            let ua = format!("Yealink SIP-T46S 66.86.0.15 {}", colons.join(":"));
            for file in &probes.files {
                let by_account = format!("/{account}/{file}");
                let by_realm = format!("/{file}");
                for (target, agent, tag) in [
                    (by_realm.as_str(), Some(ua.as_str()), None),
                    (by_realm.as_str(), None, None),
                    (by_account.as_str(), Some(ua.as_str()), Some("\"x\", *")),
                ] {
                    let request = PhoneRequest {
                        method: "GET",
                        target,
                        host: Some(realm),
                        user_agent: agent,
                        authorization: None,
                        if_none_match: tag,
                        if_modified_since: None,
                        forwarded_for: None,
                        peer,
                        upload: None,
                    };
                    out.push(json!([
                        target,
                        agent,
                        tag,
                        reply_summary(&service.serve(&request))
                    ]));
                }
            }
        }
    }
    for unit in &probes.units {
        let mut log = json!(service.unit_requests(unit));
        for request in log["requests"].as_array_mut().into_iter().flatten() {
            request["time"] = Value::Null;
        }
        if log["last_seen"].is_object() {
            log["last_seen"]["time"] = Value::Null;
        }
        out.push(log);
    }
    Value::Array(out)
}

/// Asserts that in-memory and store-backed mirrors of `contents` answer
/// the same (`parsed`: in memory; `text`: in the store).
fn assert_same_answers(what: &str, contents: &[(String, Value)]) {
    let probes = Probes::of(contents);
    let (parsed_mirror, parsed) = service(contents, false);
    let (text_mirror, text) = service(contents, true);
    let compare = |aspect: &str, a: Value, b: Value| {
        if a != b {
            let (a, b) = (a.as_object().cloned(), b.as_object().cloned());
            let differing: Vec<String> = match (a, b) {
                (Some(a), Some(b)) => a
                    .iter()
                    .filter(|(k, v)| b.get(*k) != Some(v))
                    .map(|(k, v)| format!("{k}: parsed {v} / text {}", b[k]))
                    .take(3)
                    .collect(),
                _ => vec!["(lists differ)".into()],
            };
            panic!("{what}: {aspect} differs: {differing:#?}");
        }
    };
    compare(
        "serving tables",
        tables_summary(parsed.tables(), &parsed_mirror, &probes),
        tables_summary(text.tables(), &text_mirror, &probes),
    );
    compare(
        "admin views",
        admin_summary(&parsed, &probes),
        admin_summary(&text, &probes),
    );
    let (a, b) = (
        phone_summary(&parsed, &probes),
        phone_summary(&text, &probes),
    );
    assert_eq!(a, b, "{what}: phone requests differ");
    // A full reload goes through `reset`, in the mirror's own order.
    let reload = |mirror: &Mirror, stored: bool| {
        mirror.replace_all(contents.iter().map(|(k, c)| entry(k, c)).collect());
        spill(mirror, stored);
    };
    reload(&parsed_mirror, false);
    reload(&text_mirror, true);
    compare(
        "serving tables after a reload",
        tables_summary(parsed.tables(), &parsed_mirror, &probes),
        tables_summary(text.tables(), &text_mirror, &probes),
    );
}

fn contents_of(world: &World) -> Vec<(String, Value)> {
    world
        .build_all()
        .into_iter()
        .filter_map(|(key, built)| match built {
            Built::Content { content, .. } => Some((key, content)),
            _ => None,
        })
        .collect()
}

#[test]
fn text_entries_of_the_demo_data_answer_what_parsed_ones_did() {
    let contents = contents_of(&demo_world());
    assert!(
        contents
            .iter()
            .filter(|(k, _)| k.starts_with("unit:"))
            .count()
            > 5,
        "the demo data has units"
    );
    let served = contents
        .iter()
        .filter(|(k, c)| k.starts_with("unit:") && c["served"] == true)
        .count();
    assert!(served > 5, "the demo data serves units");
    assert_same_answers("demo data", &contents);
}

#[test]
fn text_entries_of_random_worlds_answer_what_parsed_ones_did() {
    let seed = super::tests::seed("phones text entries");
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..8 {
        let mut world = World::default();
        for _ in 0..30 {
            let kind = rng.u8(..10).min(7);
            let (source, doc) = random_doc(&mut rng, kind);
            world.put(source, doc);
        }
        assert_same_answers(&format!("seed {seed}, round {round}"), &contents_of(&world));
    }
}

/// Contents the builder never writes (another version's, or damaged):
/// wrongly typed fields, non-objects, missing parts.
#[test]
fn text_entries_of_hostile_contents_answer_what_parsed_ones_did() {
    let unit =
        |account: &str, mac: &str| json!({"account_id": account, "mac": mac, "brand": "yealink"});
    let contents: Vec<(String, Value)> = vec![
        ("account:n".into(), json!(null)),
        ("account:l".into(), json!([true, "r.example"])),
        ("account:s".into(), json!("served")),
        (
            "account:t".into(),
            json!({"served": "true", "realm": "t.example"}),
        ),
        (
            "account:w".into(),
            json!({"served": true, "realm": 5, "allowed_cidrs": "10.0.0.0/8"}),
        ),
        (
            "account:v".into(),
            json!({"served": true, "realm": "v.example",
                                     "allowed_cidrs": ["10.0.0.0/8", 7, "bad", "192.0.2.0/24"]}),
        ),
        (
            "account:u".into(),
            json!({"served": true, "realm": "v.example"}),
        ),
        (
            "account:x".into(),
            json!({"served": true, "realm": "x.example"}),
        ),
        ("unit:a".into(), json!({"unit": null, "served": true})),
        (
            "unit:b".into(),
            json!({"unit": {"account_id": "x", "mac": "805ec0aaaaaa", "brand": 3},
                                  "served": true, "files": []}),
        ),
        (
            "unit:c".into(),
            json!({"unit": unit("x", "805ec0bbbbbb"), "served": true, "auth": "x",
            "common": {"key": 5},
            "files": {"a.cfg": {"etag": "e", "body": 5}, "b.cfg": {"body": "x"}, "c.cfg": "str",
                      "d.cfg": {"etag": "e", "body": "ok\n\"é\"", "content_type": 7},
                      "805ec0bbbbbb.cfg": {"etag": "f", "body": "#!version:1.0.0.1\n", "content_type": "text/plain"}}}),
        ),
        (
            "unit:d".into(),
            json!({"unit": unit("x", "805ec0cccccc"), "served": true,
            "auth": {"username": "u", "realm": "r", "ha1_md5": "m", "ha1_sha256": "s", "allow_basic": "yes"},
            "common": {"key": "common:x:yealink:t46s"},
            "files": {"805ec0cccccc.cfg": {"etag": "g", "body": "secret", "content_type": "text/plain"}}}),
        ),
        (
            "unit:e".into(),
            json!({"unit": unit("x", "not-a-mac"), "served": true}),
        ),
        (
            "unit:f".into(),
            json!({"unit": unit("x", "805ec0dddddd"), "served": false,
            "files": {"805ec0dddddd.cfg": {"etag": "h", "body": "off"}}}),
        ),
        (
            "unit:g".into(),
            json!([{"unit": unit("x", "805ec0eeeeee")}]),
        ),
        (
            "unit:h".into(),
            json!({"unit": {"account_id": 9, "mac": "805ec0ffffff"}, "served": true}),
        ),
        (
            "common:x:yealink:t46s".into(),
            json!({"account_id": "x", "brand": null, "model": "t46s",
            "files": {"y000000000066.cfg": {"etag": "c", "body": "common"}, "bad.cfg": {"etag": 1, "body": "b"}}}),
        ),
        (
            "common:x:yealink:t48s".into(),
            json!({"account_id": "x", "brand": "yealink",
            "files": {"y000000000066.cfg": {"etag": "d", "body": "other model"}}}),
        ),
        (
            "common:q".into(),
            json!({"account_id": 5, "files": {"q.cfg": {"etag": "q", "body": "q"}}}),
        ),
        (
            "other:thing".into(),
            json!({"served": true, "realm": "o.example"}),
        ),
    ];
    assert_same_answers("hostile contents", &contents);
    // The probes did find something to serve.
    let (text_mirror, text) = service(&contents, true);
    let mac = Mac::parse("805ec0bbbbbb").unwrap();
    let served = text.tables().units("x", &mac);
    assert_eq!(served.len(), 1);
    assert_eq!(
        served[0].files.names().collect::<BTreeSet<_>>(),
        BTreeSet::from(["805ec0bbbbbb.cfg", "d.cfg"])
    );
    let FileLookup::Found(file) = text.tables().file(&text_mirror, &served[0].files, "d.cfg")
    else {
        panic!("d.cfg is served");
    };
    assert_eq!(&*file.body, "ok\n\"é\"".as_bytes());
}

#[test]
fn a_cold_mirror_answers_503_for_every_request_then_serves_once_warm() {
    let contents = contents_of(&demo_world());
    let probes = Probes::of(&contents);
    let mirror = std::sync::Arc::new(Mirror::default());
    let service = PhonesService::new(mirror.clone(), settings(), nonce_key(Some("k")));
    for (key, content) in &contents {
        mirror.apply_written(Update::Live(entry(key, content)));
    }
    let cold = phone_summary(&service, &probes);
    let replies: Vec<&Value> = cold
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| row.get(3))
        .collect();
    assert!(!replies.is_empty());
    assert!(
        replies.iter().all(|r| r["status"] == 503),
        "a cold mirror served: {replies:?}"
    );
    mirror.caught_up();
    let warm = phone_summary(&service, &probes);
    let served = warm
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row.get(3).is_some_and(|r| r["status"] == 200))
        .count();
    assert!(served > 0, "nothing served once warm: {warm}");
}
