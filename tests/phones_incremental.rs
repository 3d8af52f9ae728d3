//! Phones through the real daemon: an edit of each document type rebuilds
//! exactly the outputs that read it (counted with the rebuild metric) and
//! rewrites only the cache documents whose bytes changed; and randomised
//! edit sequences over every document type — creates, updates, deletes,
//! template attachments, restarts and a kill -9 — after which every phones
//! cache document equals a from-scratch build of the final documents and
//! the served files agree (seeded; `CALDERA_TEST_SEED` replays).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use caldera::couch::Body;
use caldera::domains::phones::model::{self, DocType, SIP_AUTH, TEMPLATE_BODIES, UNITS};
use caldera::domains::phones::{PhonesBuilder, phones_index};
use caldera::domains::{Builder, Built};
use caldera::rebuild::index::{Reads, SourceDoc, SourceId};
use fastrand::Rng;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::phones::{PhonesEnv, common_template, device_template};
use crate::support::daemon::Daemon;
use crate::support::{eventually, seed};

/// `caldera_rebuilds_total{domain="phones"}`.
async fn rebuilds(daemon: &Daemon) -> u64 {
    let text = daemon.get("/metrics").await.text;
    text.lines()
        .find(|l| l.starts_with("caldera_rebuilds_total{") && l.contains("domain=\"phones\""))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Every phones cache document: id → (rev, document).
async fn cache(env: &PhonesEnv) -> BTreeMap<String, (String, Value)> {
    env.env
        .couch
        .docs_by_id(&env.env.names.cache)
        .await
        .into_iter()
        .filter(|(id, _)| id.starts_with("phones:"))
        .map(|(id, doc)| {
            (
                id,
                (doc["_rev"].as_str().unwrap_or_default().to_string(), doc),
            )
        })
        .collect()
}

/// The phones the precision test edits: a provider with a customer that
/// has three units (two profiles, one without), another account with one.
async fn precision_seed(env: &PhonesEnv) {
    let docs = [
        json!({"_id": "prov", "type": "account", "name": "Provider", "realm": "prov.example.net"}),
        json!({"_id": "acme", "type": "account", "name": "Acme", "realm": "acme.example.net", "tree": ["prov"]}),
        json!({"_id": "other", "type": "account", "name": "Other", "realm": "other.example.net"}),
        json!({"_id": "pc-prov", "type": "provision_config", "account_id": "prov", "config": {"codecs": ["pcmu"]}, "locks": {"codecs": true}}),
        json!({"_id": "pc-acme", "type": "provision_config", "account_id": "acme", "config": {"ntp": "ntp.acme"}}),
        json!({"_id": "pol-book", "type": "policy", "account_id": "acme", "config": {"book": ["100"]}}),
        json!({"_id": "pol-classic", "type": "policy", "account_id": "acme", "config": {"ring": "classic"}}),
        json!({"_id": "pol-modern", "type": "policy", "account_id": "acme", "config": {"ring": "modern"}}),
        json!({"_id": "prof-sales", "type": "profile", "account_id": "acme", "policies": ["pol-book", "pol-classic"]}),
        json!({"_id": "prof-support", "type": "profile", "account_id": "acme", "policies": ["pol-book", "pol-modern"]}),
        json!({"_id": "u1", "type": "unit", "account_id": "acme", "mac_address": "001565000001", "brand": "yealink", "model": "t46s",
               "profiles": ["prof-sales"], "lines": [{"line": 1, "device_id": "dev-1"}]}),
        json!({"_id": "u2", "type": "unit", "account_id": "acme", "mac_address": "001565000002", "brand": "yealink", "model": "t46s",
               "profiles": ["prof-support"]}),
        json!({"_id": "u3", "type": "unit", "account_id": "acme", "mac_address": "001565000003", "brand": "yealink", "model": "t46s"}),
        json!({"_id": "u4", "type": "unit", "account_id": "other", "mac_address": "001565000004", "brand": "yealink", "model": "t46s"}),
        json!({"_id": "tpl-device", "type": "template", "brand": "yealink", "file": device_template(),
               "template": "{{#each config}}{{@key}}={{this}}\n{{/each}}{{#each lines}}{{username}}:{{password}}\n{{/each}}"}),
        json!({"_id": "tpl-common", "type": "template", "brand": "yealink", "file": common_template(),
               "template": "{{#each config}}{{@key}}={{this}}\n{{/each}}"}),
    ];
    for doc in docs {
        env.unit_doc(doc).await;
    }
    env.device(json!({"_id": "dev-1", "pvt_account_id": "acme", "sip": {"username": "one", "password": "p1"}})).await;
}

/// (what, source, document to write, outputs rebuilt, cache documents rewritten)
type Case<'a> = (&'a str, &'a str, Value, Vec<&'a str>, Vec<&'a str>);

#[tokio::test(flavor = "multi_thread")]
async fn each_edit_rebuilds_exactly_the_outputs_that_read_it() {
    let env = PhonesEnv::new().await;
    precision_seed(&env).await;
    let mut config = env.config();
    config.set("build.debounce_ms", 50);
    let daemon = Daemon::start_ready(&config).await;
    let all: BTreeSet<String> = [
        "account:acme",
        "account:other",
        "account:prov",
        "common:acme:yealink:t46s",
        "common:other:yealink:t46s",
        "unit:u1",
        "unit:u2",
        "unit:u3",
        "unit:u4",
    ]
    .iter()
    .map(|k| format!("phones:{k}"))
    .collect();
    eventually("the first build", Duration::from_secs(30), async || {
        let ids: BTreeSet<String> = cache(&env).await.into_keys().collect();
        if ids == all {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    // Sources that load late (the edge store's databases, created at
    // start) end in one more full build: wait until building is quiet.
    let mut seen = rebuilds(&daemon).await;
    loop {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let now = rebuilds(&daemon).await;
        if now == seen {
            break;
        }
        seen = now;
    }
    let acme_outputs = ["unit:u1", "unit:u2", "unit:u3", "common:acme:yealink:t46s"];
    // (what, document to write, source, outputs rebuilt, cache documents rewritten)
    let mut docs = env.env.couch.docs_by_id(&env.units).await;
    let mut doc = |id: &str| docs.remove(id).unwrap();
    let mut modern = doc("pol-modern");
    modern["config"]["ring"] = json!("modern-2");
    let mut sales = doc("prof-sales");
    sales["policies"] = json!(["pol-book", "pol-modern"]);
    let mut pc_acme = doc("pc-acme");
    pc_acme["config"]["ntp"] = json!("ntp2.acme");
    let mut pc_prov = doc("pc-prov");
    pc_prov["defaults"] = json!({"tz": "UTC"});
    let mut acme = doc("acme");
    acme["name"] = json!("Acme Inc");
    let mut u3 = doc("u3");
    u3["config"] = json!({"label": "three"});
    let mut u3_same = u3.clone();
    u3_same["name"] = json!("renamed, no file changes");
    let mut tpl = doc("tpl-common");
    tpl["template"] = json!("common {{#each config}}{{@key}}={{this}}\n{{/each}}");
    let cases: Vec<Case> = vec![
        (
            "a policy one profile uses",
            UNITS,
            modern,
            vec!["unit:u2"],
            vec!["unit:u2"],
        ),
        ("a profile", UNITS, sales, vec!["unit:u1"], vec!["unit:u1"]),
        (
            "a device",
            SIP_AUTH,
            json!({"_id": "dev-1", "pvt_account_id": "acme", "sip": {"username": "one", "password": "p1-new"}}),
            vec!["unit:u1"],
            vec!["unit:u1"],
        ),
        (
            "the account's provision config",
            UNITS,
            pc_acme,
            [&acme_outputs[..], &["account:acme"]].concat(),
            acme_outputs.to_vec(),
        ),
        (
            "an ancestor's provision config",
            UNITS,
            pc_prov,
            [&acme_outputs[..], &["account:prov"]].concat(),
            acme_outputs.to_vec(),
        ),
        (
            "an account",
            UNITS,
            acme,
            [&acme_outputs[..], &["account:acme"]].concat(),
            vec!["unit:u1", "unit:u2", "unit:u3", "account:acme"],
        ),
        (
            "a unit's config",
            UNITS,
            u3,
            vec!["unit:u3", "common:acme:yealink:t46s"],
            vec!["unit:u3"],
        ),
        (
            "a unit's name only",
            UNITS,
            u3_same,
            vec!["unit:u3", "common:acme:yealink:t46s"],
            vec!["unit:u3"],
        ),
        (
            "a common template",
            UNITS,
            tpl,
            vec!["common:acme:yealink:t46s", "common:other:yealink:t46s"],
            vec!["common:acme:yealink:t46s", "common:other:yealink:t46s"],
        ),
        (
            "a phone model of another model",
            UNITS,
            json!({"_id": "pm-t48u", "type": "phone_model", "brand": "yealink", "family": "t4x", "model": "t48u"}),
            vec![],
            vec![],
        ),
        (
            "an unrelated account",
            UNITS,
            json!({"_id": "new", "type": "account", "realm": "new.example.net"}),
            vec!["account:new"],
            vec!["account:new"],
        ),
    ];
    for (what, source, doc, rebuilt, rewritten) in cases {
        let before_cache = cache(&env).await;
        let before = rebuilds(&daemon).await;
        if source == UNITS {
            env.unit_doc(doc).await
        } else {
            env.device(doc).await
        };
        let expected = rebuilt.len() as u64;
        let delta = eventually(what, Duration::from_secs(20), async || {
            let delta = rebuilds(&daemon).await - before;
            if delta >= expected {
                Ok(delta)
            } else {
                Err(format!("{delta} of {expected} rebuilt"))
            }
        })
        .await;
        // Let anything else that would rebuild happen.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let delta = delta.max(rebuilds(&daemon).await - before);
        assert_eq!(
            delta, expected,
            "{what}: rebuilt {delta} outputs, expected {rebuilt:?}"
        );
        let after = cache(&env).await;
        let changed: BTreeSet<String> = after
            .iter()
            .filter(|(id, (rev, _))| before_cache.get(*id).is_none_or(|(old, _)| old != rev))
            .map(|(id, _)| id.trim_start_matches("phones:").to_string())
            .collect();
        let wanted: BTreeSet<String> = rewritten.iter().map(|s| s.to_string()).collect();
        assert_eq!(changed, wanted, "{what}: cache documents rewritten");
    }
}

/// What a from-scratch build of the documents now in CouchDB gives.
async fn from_scratch(env: &PhonesEnv) -> BTreeMap<String, Built> {
    let couch = &env.env.couch;
    let to_docs = |docs: BTreeMap<String, Value>| -> BTreeMap<String, Arc<SourceDoc>> {
        docs.into_iter()
            .map(|(id, body)| {
                let rev = body["_rev"].as_str().unwrap_or_default().to_string();
                (
                    id.clone(),
                    Arc::new(SourceDoc {
                        id,
                        rev,
                        body: Body::of(&body),
                    }),
                )
            })
            .collect()
    };
    let units = couch.docs_by_id(&env.units).await;
    let mut bodies = BTreeMap::new();
    for (id, doc) in &units {
        if model::doc_type(doc) != Some(DocType::Template) || doc.get("template").is_some() {
            continue;
        }
        let Ok(name) = model::attachment_name(doc) else {
            continue;
        };
        let text = attachment(env, id, &name).await;
        let body = match text {
            Some(text) => json!({"_id": id, "text": text}),
            None => json!({"_id": id, "error": "the attachment does not exist"}),
        };
        bodies.insert(id.clone(), body);
    }
    let mut index = phones_index();
    index.replace(&SourceId::from(UNITS), to_docs(units));
    index.replace(
        &SourceId::from(SIP_AUTH),
        to_docs(couch.docs_by_id(&env.sip_auth).await),
    );
    index.replace(&SourceId::from(TEMPLATE_BODIES), to_docs(bodies));
    PhonesBuilder
        .all_keys(&index)
        .into_iter()
        .filter_map(|key| {
            let mut reads = Reads::new(&index);
            let built = PhonesBuilder.build(&key, &mut reads);
            (built != Built::Absent).then(|| (format!("phones:{key}"), built))
        })
        .collect()
}

async fn attachment(env: &PhonesEnv, id: &str, name: &str) -> Option<String> {
    let url = format!("{}/{}/{id}/{name}", env.env.couch.url(), env.units);
    let response = reqwest::get(&url).await.ok()?;
    (response.status() == StatusCode::OK).then_some(response.text().await.ok()?)
}

async fn put_attachment(env: &PhonesEnv, id: &str, name: &str, text: &str) {
    let rev = env
        .env
        .couch
        .rev(&env.units, id)
        .await
        .expect("the document exists");
    let url = format!(
        "{}/{}/{id}/{name}?rev={rev}",
        env.env.couch.url(),
        env.units
    );
    let response = reqwest::Client::new()
        .put(&url)
        .header("Content-Type", "text/plain")
        .body(text.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "PUT attachment: {}",
        response.status()
    );
}

/// Differences between the phones cache and a from-scratch build.
async fn differences(env: &PhonesEnv) -> Result<(), String> {
    let expected = from_scratch(env).await;
    let cache = cache(env).await;
    let cached: BTreeSet<&String> = cache.keys().collect();
    let wanted: BTreeSet<&String> = expected.keys().collect();
    if cached != wanted {
        return Err(format!("cache has {cached:?}, from scratch {wanted:?}"));
    }
    for (id, built) in &expected {
        let doc = &cache[id].1;
        match built {
            Built::Content { content, issues } => {
                if doc["content"] != *content {
                    return Err(format!("{id}: content differs"));
                }
                let errors = doc["errors"].as_array().map_or(0, Vec::len);
                let mut reasons: Vec<String> = issues
                    .iter()
                    .map(|i| format!("{:?}{}", i.doc, i.reason))
                    .collect();
                reasons.sort();
                reasons.dedup();
                if errors != reasons.len() || doc["stale"] != json!(false) {
                    return Err(format!(
                        "{id}: {errors} errors (expected {}), stale {}",
                        reasons.len(),
                        doc["stale"]
                    ));
                }
            }
            other => return Err(format!("{id}: the build is {other:?}")),
        }
    }
    Ok(())
}

const ACCOUNTS: [&str; 3] = ["ra", "rb", "rc"];
const MACS: [&str; 5] = [
    "001565000001",
    "001565000002",
    "00:15:65:00:00:03",
    "0015.6500.0001",
    "001565000005",
];

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

fn random_config(rng: &mut Rng) -> Value {
    let mut config = serde_json::Map::new();
    for key in ["vlan", "ring", "codecs", "net"] {
        if rng.bool() {
            let value = match rng.u8(..6) {
                0 => Value::Null,
                1 => json!(rng.u16(0..5000)),
                2 => json!(["a", "b", "c"][rng.usize(..3)]),
                3 => json!({"ntp": format!("n{}", rng.u8(..3))}),
                4 => json!(["pcmu"]),
                _ => json!(rng.bool()),
            };
            config.insert(key.into(), value);
        }
    }
    Value::Object(config)
}

/// One random edit through CouchDB.
async fn random_edit(env: &PhonesEnv, rng: &mut Rng) {
    let account = pick(rng, &ACCOUNTS);
    let delete = rng.u8(..7) == 0;
    let (id, doc): (String, Value) = match rng.u8(..20) {
        0 | 1 => {
            let id = pick(rng, &ACCOUNTS);
            let tree = match id {
                "ra" => json!([]),
                "rb" => json!(["ra"]),
                _ => json!(["ra", "rb"]),
            };
            let realm = pick(
                rng,
                &[
                    "a.example.net",
                    "b.example.net",
                    "c.example.net",
                    "b.example.net",
                ],
            );
            (
                id.into(),
                json!({"type": "account", "realm": realm, "tree": tree, "enabled": rng.u8(..6) != 0}),
            )
        }
        2 | 3 => {
            let locks = [
                json!({"codecs": true}),
                json!({"net": {"ntp": "locked"}}),
                json!({}),
            ][rng.usize(..3)]
            .clone();
            (
                format!("pc-{account}"),
                json!({"type": "provision_config", "account_id": account, "config": random_config(rng),
                                             "defaults": random_config(rng), "locks": locks}),
            )
        }
        4 | 5 => (
            pick(rng, &["pol-1", "pol-2", "pol-3"]).into(),
            json!({"type": "policy", "account_id": account, "config": random_config(rng)}),
        ),
        6 => {
            let policies: Vec<&str> = (0..rng.usize(0..3))
                .map(|_| pick(rng, &["pol-1", "pol-2", "pol-3", "pol-9"]))
                .collect();
            (
                pick(rng, &["prof-1", "prof-2"]).into(),
                json!({"type": "profile", "account_id": account, "policies": policies}),
            )
        }
        7 => {
            let scope = if rng.bool() {
                json!(account)
            } else {
                Value::Null
            };
            let body = format!(
                "v{} {{{{#each config}}}}{{{{@key}}}}\n{{{{/each}}}}{{{{#each lines}}}}{{{{username}}}}\n{{{{/each}}}}",
                rng.u8(..9)
            );
            (
                pick(rng, &["tpl-1", "tpl-2"]).into(),
                json!({"type": "template", "brand": "yealink", "file": device_template(), "account_id": scope, "template": body}),
            )
        }
        8 => {
            // An override whose body is an attachment.
            let id = "tpl-att";
            let doc = json!({"_id": id, "type": "template", "brand": "yealink", "file": common_template(), "account_id": account});
            if delete {
                env.env.couch.delete(&env.units, id).await;
            } else {
                env.unit_doc(doc).await;
                put_attachment(
                    env,
                    id,
                    "body.hbs",
                    &format!("att{} {{{{account.realm}}}}\n", rng.u8(..9)),
                )
                .await;
            }
            return;
        }
        9 => {
            let schema = [
                json!({"properties": {"vlan": {"type": "integer", "maximum": 4094, "default": 1}}}),
                json!({"properties": {"ring": {"enum": ["a", "b"], "default": "a"}}}),
                json!({}),
            ][rng.usize(..3)]
            .clone();
            (
                "pm-yealink".into(),
                json!({"type": "phone_model", "brand": "yealink", "schema": schema}),
            )
        }
        10 | 11 => {
            let id = pick(rng, &["dev-1", "dev-2"]);
            let doc = json!({"_id": id, "pvt_account_id": account, "sip": {"username": id, "password": format!("p{}", rng.u16(..))}});
            if delete {
                env.env.couch.delete(&env.sip_auth, id).await;
            } else {
                env.device(doc).await;
            }
            return;
        }
        _ => {
            let model = pick(rng, &["t46s", "t46s", "t46s", "t99"]);
            let profiles: Vec<&str> = (0..rng.usize(0..3))
                .map(|_| pick(rng, &["prof-1", "prof-2", "pol-1"]))
                .collect();
            let policies: Vec<&str> = (0..rng.usize(0..2))
                .map(|_| pick(rng, &["pol-1", "pol-2", "pol-3"]))
                .collect();
            let mut unit = json!({"type": "unit", "account_id": account, "mac_address": pick(rng, &MACS), "brand": "yealink",
                                  "model": model, "config": random_config(rng), "profiles": profiles, "policies": policies,
                                  "enabled": rng.u8(..5) != 0, "lines": [{"line": 1, "device_id": pick(rng, &["dev-1", "dev-2", "dev-3"])}]});
            if rng.u8(..4) == 0 {
                unit["provisioning"] = json!({"username": "u", "password": "p"});
            }
            (
                pick(rng, &["unit-1", "unit-2", "unit-3", "unit-4", "unit-5"]).into(),
                unit,
            )
        }
    };
    if delete {
        env.env.couch.delete(&env.units, &id).await;
    } else {
        let mut doc = doc;
        doc["_id"] = json!(id);
        env.unit_doc(doc).await;
    }
}

async fn wait_equal(env: &PhonesEnv, daemon: &Daemon, what: &str) {
    eventually(what, Duration::from_secs(60), async || {
        differences(env).await
    })
    .await;
    // The served files agree with the cache.
    for (id, (_, doc)) in cache(env).await {
        if !id.starts_with("phones:unit:")
            || doc["content"]["served"] != true
            || doc["content"]["auth"].is_object()
        {
            continue;
        }
        let realm = match doc["content"]["account"]["realm"].as_str() {
            Some(r) => r.to_string(),
            None => continue,
        };
        for (name, file) in doc["content"]["files"].as_object().unwrap() {
            let reply =
                crate::phones::get(daemon, &format!("/{name}"), &realm, "caldera-test").await;
            // A duplicate realm or a disabled account is a 404; otherwise the bytes must be the cache's.
            if reply.status == StatusCode::OK {
                assert_eq!(
                    reply.text,
                    file["body"].as_str().unwrap(),
                    "{what}: {id} {name}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_edits_restarts_and_kill_9_end_in_a_from_scratch_cache() {
    let seed = seed("phones random edits");
    let mut rng = Rng::with_seed(seed);
    let env = PhonesEnv::new().await;
    let config = env.config();
    let mut daemon = Daemon::start_ready(&config).await;
    for round in 0..4 {
        for _ in 0..30 {
            random_edit(&env, &mut rng).await;
        }
        match round {
            1 => {
                daemon.sigterm();
                assert!(daemon.wait_exit(Duration::from_secs(20)).await.success());
                for _ in 0..10 {
                    random_edit(&env, &mut rng).await;
                }
                daemon = Daemon::start_ready(&config).await;
            }
            2 => {
                daemon.kill9();
                for _ in 0..10 {
                    random_edit(&env, &mut rng).await;
                }
                daemon = Daemon::start_ready(&config).await;
            }
            _ => {}
        }
        wait_equal(&env, &daemon, &format!("seed {seed}, round {round}")).await;
    }
    let built = from_scratch(&env).await;
    assert!(
        built
            .keys()
            .filter(|k| k.starts_with("phones:unit:"))
            .count()
            >= 2,
        "the sequence leaves units to compare: {:?}",
        built.keys().collect::<Vec<_>>()
    );
}
