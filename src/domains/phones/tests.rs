//! Tests of the phones core at the builder level: golden cases from
//! `fixtures/phones/` (the seed's examples and every kind of bad
//! document; `UPDATE_EXPECT=1` regenerates), rendering through template
//! overrides, dependency precision (which outputs an edit of each document
//! type rebuilds), and randomised edit sequences whose incremental result
//! must equal a from-scratch build (seeded; `CALDERA_TEST_SEED` replays).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::model::{SIP_AUTH, TEMPLATE_BODIES, UNITS};
use super::vendors::{self, FileClass, ModelRef};
use super::{PhonesBuilder, phones_index};
use crate::couch::Body;
use crate::domains::{Builder, Built, Domain};
use crate::rebuild::deps::DepGraph;
use crate::rebuild::index::{Dep, Index, Reads, SourceDoc, SourceId};

/// Documents by source.
#[derive(Default, Clone)]
pub struct World {
    pub sources: BTreeMap<String, BTreeMap<String, Value>>,
}

fn source_doc(id: &str, body: &Value) -> SourceDoc {
    SourceDoc {
        id: id.to_string(),
        rev: body
            .get("_rev")
            .and_then(Value::as_str)
            .unwrap_or("1-a")
            .to_string(),
        body: Body::of(body),
    }
}

impl World {
    fn from_case(case: &Value) -> World {
        let mut world = World::default();
        for source in [UNITS, SIP_AUTH] {
            for doc in case[source].as_array().into_iter().flatten() {
                world.put(source, doc.clone());
            }
        }
        for (id, body) in case["template_bodies"].as_object().into_iter().flatten() {
            world.put(TEMPLATE_BODIES, json!({"_id": id, "text": body}));
        }
        world
    }

    pub(super) fn put(&mut self, source: &str, doc: Value) -> &mut Self {
        let id = doc["_id"].as_str().expect("an _id").to_string();
        self.sources
            .entry(source.into())
            .or_default()
            .insert(id, doc);
        self
    }

    fn index(&self) -> Index {
        let mut index = phones_index();
        for source in [UNITS, SIP_AUTH, TEMPLATE_BODIES] {
            let docs = self
                .sources
                .get(source)
                .into_iter()
                .flatten()
                .map(|(id, body)| (id.clone(), Arc::new(source_doc(id, body))))
                .collect();
            index.replace(&SourceId::from(source), docs);
        }
        index
    }

    /// Every output of a from-scratch build.
    pub(super) fn build_all(&self) -> BTreeMap<String, Built> {
        let index = self.index();
        PhonesBuilder
            .all_keys(&index)
            .into_iter()
            .map(|key| {
                let mut reads = Reads::new(&index);
                let built = PhonesBuilder.build(&key, &mut reads);
                (key, built)
            })
            .filter(|(_, built)| *built != Built::Absent)
            .collect()
    }
}

fn issue_lines(issues: &[crate::domains::Issue]) -> Vec<String> {
    let mut lines: Vec<String> = issues
        .iter()
        .map(|i| format!("{}: {}", i.doc.as_deref().unwrap_or("-"), i.reason))
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

/// A built output as the golden files show it (file bodies left out).
fn summary(built: &Built) -> Value {
    match built {
        Built::Absent => json!("absent"),
        Built::Failed { issues } => json!({"failed": issue_lines(issues)}),
        Built::Content { content, issues } => {
            let mut content = readable(content);
            if let Some(files) = content.get_mut("files").and_then(Value::as_object_mut) {
                for file in files.values_mut() {
                    *file = file["content_type"].clone();
                }
            }
            json!({"content": content, "errors": issue_lines(issues)})
        }
    }
}

/// A content with its provenance expanded (what the admin API shows).
fn readable(content: &Value) -> Value {
    let mut content = content.clone();
    if content.get("origins").is_some() {
        content["provenance"] =
            super::merge::expand_provenance(&content["provenance"], &content["origins"]);
        content.as_object_mut().unwrap().remove("origins");
    }
    content
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/phones")
}

#[test]
fn golden_cases() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures/phones exists")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 4, "the golden cases are missing");
    for case in cases {
        let input: Value = serde_json::from_str(&std::fs::read_to_string(&case).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let world = World::from_case(&input);
        let outputs: serde_json::Map<String, Value> = world
            .build_all()
            .iter()
            .map(|(key, built)| (key.clone(), summary(built)))
            .collect();
        let actual = serde_json::to_string_pretty(&Value::Object(outputs)).unwrap() + "\n";
        let expected = case.with_extension("expected.json");
        expect_test::expect_file![expected].assert_eq(&actual);
    }
}

fn load_case(name: &str) -> World {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.json"))).unwrap();
    World::from_case(&serde_json::from_str(&text).unwrap())
}

fn content(world: &World, key: &str) -> Value {
    match world.build_all().remove(key) {
        Some(Built::Content { content, .. }) => readable(&content),
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn the_seed_departments_get_their_profiles_policies() {
    let world = load_case("seed_profiles");
    let sales = content(&world, "unit:unit-sales-1");
    // The profile's policy overrides the unit; the phone book is shared.
    assert_eq!(sales["config"]["ringtone"], "Ring3.wav");
    assert_eq!(sales["config"]["ring_volume"], 5);
    assert_eq!(sales["config"]["label"], "Sales 1");
    assert_eq!(
        sales["provenance"]["/ringtone"]["doc"],
        "policy-ring-classic"
    );
    assert_eq!(sales["provenance"]["/ringtone"]["via"], "profile-sales");
    let support = content(&world, "unit:unit-support-1");
    // unit.policies come after the profiles' policies: the last one wins.
    assert_eq!(support["config"]["ringtone"], "Ring3.wav");
    assert_eq!(
        support["provenance"]["/ringtone"]["doc"],
        "policy-ring-classic"
    );
    assert_eq!(support["provenance"]["/ringtone"].get("via"), None);
    assert_eq!(
        support["config"]["phone_book"],
        sales["config"]["phone_book"]
    );
    assert_eq!(
        support["provenance"]["/phone_book"]["via"],
        "profile-support"
    );
    // A default stands where nobody set a value.
    assert_eq!(
        support["provenance"]["/ring_volume"]["doc"],
        "policy-ring-classic"
    );
}

#[test]
fn the_provider_lock_holds_down_the_tree() {
    let world = load_case("seed_locks");
    let branch = content(&world, "unit:unit-branch");
    assert_eq!(branch["config"]["codecs"], json!(["pcmu", "pcma"]));
    assert_eq!(branch["config"]["network"]["vlan"], 20);
    assert_eq!(branch["provenance"]["/network/vlan"]["doc"], "pc-acme");
    // Not locked: the branch account's own config wins over the unit.
    assert_eq!(branch["config"]["network"]["ntp"], "ntp.branch.example.net");
    let hq = content(&world, "unit:unit-hq");
    assert_eq!(hq["config"]["codecs"], json!(["pcmu", "pcma"]));
    assert_eq!(hq["provenance"]["/codecs"]["account"], "acct-provider");
}

#[test]
fn account_parameters_are_strongest() {
    let world = load_case("seed_account_wins");
    let unit = content(&world, "unit:unit-1");
    assert_eq!(unit["config"]["ring_volume"], 3);
    assert_eq!(
        unit["config"]["network"],
        json!({"ntp": "ntp.acme.example.net", "dhcp": false})
    );
    assert_eq!(unit["config"]["timezone"], "Europe/Paris");
    assert_eq!(unit["config"]["screensaver"], 300);
    assert_eq!(unit["provenance"]["/timezone"]["layer"], "account_defaults");
    assert_eq!(unit["provenance"]["/network/dhcp"]["layer"], "unit");
    let common = content(&world, "common:acct-acme:yealink:t46s");
    // Model-common files have no unit layer.
    assert_eq!(common["config"]["ring_volume"], 3);
    assert_eq!(common["config"]["network"]["dhcp"], true);
    assert!(common["config"].get("screensaver").is_none());
}

/// A world with one Yealink T46S unit, and overrides of every
/// template its files use (so the test controls the bytes).
fn rendering_world() -> World {
    let mut world = load_case("seed_account_wins");
    let meta = json!({"file_id": "66"});
    let mac = super::mac::Mac::parse("0015654aa937").unwrap();
    let model = ModelRef {
        brand: "yealink",
        family: Some("t4x"),
        model: "t46s",
        meta: &meta,
    };
    let files = vendors::by_brand("yealink").unwrap().files(&model, &mac);
    for (i, spec) in files.iter().enumerate() {
        let body = match spec.class {
            FileClass::Common => "common realm={{account.realm}} ntp={{config.network.ntp}}\n",
            FileClass::Device => {
                "{{#each lines}}{{line}}:{{username}}:{{password}}@{{realm}}\n{{/each}}mac={{mac.upper}} vol={{config.ring_volume}}\n"
            }
        };
        world.put(
            UNITS,
            json!({"_id": format!("tpl-{i}"), "type": "template", "brand": "yealink", "file": spec.template, "template": body}),
        );
    }
    let mut unit = world.sources[UNITS]["unit-1"].clone();
    unit["lines"] = json!([{"line": 1, "device_id": "dev-1"}]);
    world.put(UNITS, unit);
    world.put(
        SIP_AUTH,
        json!({"_id": "dev-1", "pvt_account_id": "acct-acme", "sip": {"username": "alice", "password": "pw-1"}}),
    );
    world
}

fn file_bodies(content: &Value) -> BTreeMap<String, String> {
    content["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, file)| (name.clone(), file["body"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn device_files_carry_the_lines_and_common_files_carry_no_secrets() {
    let world = rendering_world();
    let unit = content(&world, "unit:unit-1");
    let bodies = file_bodies(&unit);
    // The real Yealink: `<mac>.boot` and `<mac>.cfg` per device.
    assert_eq!(
        bodies.keys().collect::<Vec<_>>(),
        ["0015654aa937.boot", "0015654aa937.cfg"]
    );
    for device in bodies.values() {
        assert_eq!(
            device,
            "1:alice:pw-1@acme.sip.example.net\nmac=0015654AA937 vol=3\n"
        );
    }
    assert!(
        unit["lines"][0].get("password").is_none(),
        "no secret outside the files"
    );
    let common = content(&world, "common:acct-acme:yealink:t46s");
    let bodies = file_bodies(&common);
    assert_eq!(
        bodies.keys().collect::<Vec<_>>(),
        ["y000000000000.boot", "y000000000066.cfg"]
    );
    for body in bodies.values() {
        assert_eq!(
            body,
            "common realm=acme.sip.example.net ntp=ntp.acme.example.net\n"
        );
    }
    assert_eq!(
        unit["common"]["files"],
        json!(bodies.keys().collect::<Vec<_>>())
    );
    let etag = unit["files"].as_object().unwrap().values().next().unwrap()["etag"]
        .as_str()
        .unwrap()
        .len();
    assert_eq!(etag, 32);
}

#[test]
fn an_account_override_beats_a_global_one_and_a_broken_one_fails_the_output() {
    let mut world = rendering_world();
    let template = json!("yealink/device.cfg.hbs");
    world.put(
        UNITS,
        json!({"_id": "tpl-acme", "type": "template", "brand": "yealink", "account_id": "acct-acme", "model": "t46s",
               "file": template, "_attachments": {"body.hbs": {"stub": true, "digest": "md5-x", "length": 3}}}),
    );
    world.put(
        TEMPLATE_BODIES,
        json!({"_id": "tpl-acme", "text": "account {{unit.name}}\n"}),
    );
    let unit = content(&world, "unit:unit-1");
    let bodies = file_bodies(&unit);
    assert_eq!(bodies["0015654aa937.cfg"], "account \n");
    assert_eq!(
        bodies["0015654aa937.boot"], "1:alice:pw-1@acme.sip.example.net\nmac=0015654AA937 vol=3\n",
        "the global override of the other template still applies"
    );
    world.put(
        TEMPLATE_BODIES,
        json!({"_id": "tpl-acme", "text": "{{config.nope}}"}),
    );
    let built = world.build_all().remove("unit:unit-1").unwrap();
    let Built::Failed { issues } = built else {
        panic!("a template error fails the output: {built:?}");
    };
    let lines = issue_lines(&issues);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tpl-acme:") && l.contains("nope")),
        "{lines:?}"
    );
    // The other outputs are untouched.
    assert!(matches!(
        world.build_all()["common:acct-acme:yealink:t46s"],
        Built::Content { .. }
    ));
    world
        .sources
        .get_mut(TEMPLATE_BODIES)
        .unwrap()
        .remove("tpl-acme");
    let Built::Failed { issues } = world.build_all().remove("unit:unit-1").unwrap() else {
        panic!("a missing attachment body fails the output");
    };
    assert!(
        issue_lines(&issues)
            .iter()
            .any(|l| l.contains("not loaded yet"))
    );
}

/// Replays an edit sequence the way the engine does, keeping every
/// output's dependencies.
struct Incremental {
    world: World,
    index: Index,
    deps: DepGraph,
    outputs: BTreeMap<String, Built>,
}

impl Incremental {
    fn new(world: World) -> Incremental {
        let index = world.index();
        let mut sim = Incremental {
            world,
            index,
            deps: DepGraph::default(),
            outputs: BTreeMap::new(),
        };
        let keys = PhonesBuilder.all_keys(&sim.index);
        sim.rebuild(keys.into_iter().collect());
        sim
    }

    fn rebuild(&mut self, keys: BTreeSet<String>) {
        for key in keys {
            let mut reads = Reads::new(&self.index);
            let built = PhonesBuilder.build(&key, &mut reads);
            let (deps, _) = reads.finish();
            let id = (Domain::Phones, key.clone());
            if built == Built::Absent {
                self.deps.remove(&id);
                self.outputs.remove(&key);
            } else {
                self.deps.set(id, deps);
                self.outputs.insert(key, built);
            }
        }
    }

    /// Applies one edit; returns the outputs it rebuilt.
    fn edit(&mut self, source: &str, id: &str, doc: Option<Value>) -> BTreeSet<String> {
        let source_id = SourceId::from(source);
        let old = match &doc {
            Some(body) => {
                self.world.put(source, body.clone());
                self.index.upsert(&source_id, source_doc(id, body))
            }
            None => {
                self.world
                    .sources
                    .entry(source.into())
                    .or_default()
                    .remove(id);
                self.index.remove(source, id)
            }
        };
        let new = self.index.get(source, id).cloned();
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        for version in [old.as_deref(), new.as_deref()] {
            dirty.extend(PhonesBuilder.roots(source, id, version));
            if let Some(doc) = version {
                for key in PhonesBuilder.view_keys(source, doc) {
                    dirty.extend(self.dependents(&Dep::View(source_id.clone(), key)));
                }
            }
        }
        dirty.extend(self.dependents(&Dep::Doc(source_id.clone(), id.to_string())));
        dirty.extend(self.dependents(&Dep::Source(source_id)));
        self.rebuild(dirty.clone());
        dirty
    }

    fn dependents(&self, dep: &Dep) -> Vec<String> {
        self.deps
            .dependents(dep)
            .map(|(_, key)| key.clone())
            .collect()
    }
}

fn keys(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn each_kind_of_edit_rebuilds_exactly_its_readers() {
    let mut sim = Incremental::new(load_case("seed_profiles"));
    let doc = |sim: &Incremental, id: &str| sim.world.sources[UNITS][id].clone();
    let mut policy = doc(&sim, "policy-ring-modern");
    policy["config"]["ring_volume"] = json!(2);
    assert_eq!(
        sim.edit(UNITS, "policy-ring-modern", Some(policy)),
        keys(&["unit:unit-support-1"])
    );
    let mut profile = doc(&sim, "profile-sales");
    profile["name"] = json!("Sales team");
    assert_eq!(
        sim.edit(UNITS, "profile-sales", Some(profile)),
        keys(&["unit:unit-sales-1"])
    );
    let mut policy = doc(&sim, "policy-phonebook");
    policy["config"]["phone_book"] = json!([]);
    assert_eq!(
        sim.edit(UNITS, "policy-phonebook", Some(policy)),
        keys(&["unit:unit-sales-1", "unit:unit-support-1"])
    );
    // A unit edit re-checks its model's common output (whose bytes stay).
    let mut unit = doc(&sim, "unit-sales-1");
    unit["config"]["label"] = json!("Sales one");
    assert_eq!(
        sim.edit(UNITS, "unit-sales-1", Some(unit)),
        keys(&["unit:unit-sales-1", "common:acct-acme:yealink:t46s"])
    );
    let device = json!({"_id": "dev-sales-1", "pvt_account_id": "acct-acme", "sip": {"username": "sales1", "password": "new"}});
    assert_eq!(
        sim.edit(SIP_AUTH, "dev-sales-1", Some(device)),
        keys(&["unit:unit-sales-1"])
    );
    let everything_in_acme = keys(&[
        "unit:unit-sales-1",
        "unit:unit-support-1",
        "common:acct-acme:yealink:t46s",
    ]);
    // The provider's provision config binds its descendants.
    let pc = json!({"_id": "pc-provider", "type": "provision_config", "account_id": "acct-provider", "config": {"ring_volume": 1}});
    let mut provider_and_below = everything_in_acme.clone();
    provider_and_below.insert("account:acct-provider".into());
    assert_eq!(sim.edit(UNITS, "pc-provider", Some(pc)), provider_and_below);
    let mut with_account = everything_in_acme.clone();
    with_account.insert("account:acct-acme".into());
    let pc = json!({"_id": "pc-acme", "type": "provision_config", "account_id": "acct-acme", "config": {"ring_volume": 2}});
    assert_eq!(sim.edit(UNITS, "pc-acme", Some(pc)), with_account);
    let mut account = doc(&sim, "acct-acme");
    account["name"] = json!("Acme Inc");
    assert_eq!(sim.edit(UNITS, "acct-acme", Some(account)), with_account);
    let model = json!({"_id": "pm-other", "type": "phone_model", "brand": "yealink", "family": "t4x", "model": "t48u"});
    assert_eq!(sim.edit(UNITS, "pm-other", Some(model)), keys(&[]));
    let model = json!({"_id": "pm-t46s", "type": "phone_model", "brand": "yealink", "family": "t4x", "model": "t46s", "meta": {"x": 1}});
    assert_eq!(sim.edit(UNITS, "pm-t46s", Some(model)), everything_in_acme);
    let template = json!({"_id": "tpl", "type": "template", "brand": "yealink", "model": "t48u", "file": "yealink/device.cfg.hbs", "template": "x"});
    assert_eq!(sim.edit(UNITS, "tpl", Some(template)), keys(&[]));
    // Overrides reach exactly the outputs rendering that template at that
    // scope: Acme's per-device `.cfg` for the T46S, then every account's
    // model-common `.cfg`, then a family's `.boot` of another account.
    let template = json!({"_id": "tpl-acme", "type": "template", "brand": "yealink", "model": "t46s", "account_id": "acct-acme",
                          "file": "yealink/device.cfg.hbs", "template": "acme {{mac.lower}}"});
    assert_eq!(
        sim.edit(UNITS, "tpl-acme", Some(template)),
        keys(&["unit:unit-sales-1", "unit:unit-support-1"])
    );
    let template = json!({"_id": "tpl-common", "type": "template", "brand": "yealink",
                          "file": "yealink/common.cfg.hbs", "template": "common {{account.realm}}"});
    assert_eq!(
        sim.edit(UNITS, "tpl-common", Some(template)),
        keys(&["common:acct-acme:yealink:t46s"])
    );
    let template = json!({"_id": "tpl-other", "type": "template", "brand": "yealink", "family": "t4x", "account_id": "acct-elsewhere",
                          "file": "yealink/device.boot.hbs", "template": "x"});
    assert_eq!(sim.edit(UNITS, "tpl-other", Some(template)), keys(&[]));
    let other =
        json!({"_id": "acct-elsewhere", "type": "account", "realm": "elsewhere.example.net"});
    assert_eq!(
        sim.edit(UNITS, "acct-elsewhere", Some(other)),
        keys(&["account:acct-elsewhere"])
    );
    assert_eq!(
        sim.outputs,
        sim.world.build_all(),
        "incremental equals from scratch"
    );
}

const ACCOUNTS: [&str; 3] = ["acct-r", "acct-a", "acct-b"];
const MACS: [&str; 4] = [
    "805ec0000001",
    "805ec0000002",
    "80:5e:c0:00:00:03",
    "805EC0000001",
];

fn pick<'a>(rng: &mut fastrand::Rng, items: &[&'a str]) -> &'a str {
    items[rng.usize(..items.len())]
}

/// A random document of the kind `kind`, with ids from small pools so
/// edits collide (duplicate MACs, shared policies, realms).
pub(super) fn random_doc(rng: &mut fastrand::Rng, kind: u8) -> (&'static str, Value) {
    let config = |rng: &mut fastrand::Rng| {
        let mut config = serde_json::Map::new();
        for key in ["ringtone", "vlan", "codecs", "net"] {
            if rng.bool() {
                let value = match rng.u8(..6) {
                    0 => Value::Null,
                    1 => json!(rng.u16(0..5000)),
                    2 => json!(["pcmu", "opus", "gsm"][rng.usize(..3)]),
                    3 => json!({"ntp": format!("ntp{}", rng.u8(..3)), "mtu": rng.u16(1000..1600)}),
                    4 => json!(["pcmu", "pcma"]),
                    _ => json!(format!("Ring{}.wav", rng.u8(1..6))),
                };
                config.insert(key.into(), value);
            }
        }
        Value::Object(config)
    };
    let account = pick(rng, &ACCOUNTS);
    match kind {
        0 => {
            let id = ["acct-r", "acct-a", "acct-b"][rng.usize(..3)];
            let tree = match id {
                "acct-r" => json!([]),
                "acct-a" => json!(["acct-r"]),
                _ => json!(["acct-r", "acct-a"]),
            };
            let realm = [
                "r.example.net",
                "a.example.net",
                "b.example.net",
                "a.example.net",
            ][rng.usize(..4)];
            (
                UNITS,
                json!({"_id": id, "type": "account", "realm": realm, "tree": tree, "enabled": rng.u8(..6) != 0}),
            )
        }
        1 => {
            let locks = match rng.u8(..4) {
                0 => json!({"codecs": true}),
                1 => json!({"net": {"ntp": "locked"}}),
                _ => json!({}),
            };
            let id = format!("pc-{account}{}", if rng.u8(..8) == 0 { "-dup" } else { "" });
            (
                UNITS,
                json!({"_id": id, "type": "provision_config", "account_id": account, "config": config(rng),
                           "defaults": config(rng), "locks": locks}),
            )
        }
        2 => {
            let id = ["pol-1", "pol-2", "pol-3"][rng.usize(..3)];
            (
                UNITS,
                json!({"_id": id, "type": "policy", "account_id": account, "config": config(rng)}),
            )
        }
        3 => {
            let id = ["prof-1", "prof-2"][rng.usize(..2)];
            let policies: Vec<&str> = (0..rng.usize(0..3))
                .map(|_| pick(rng, &["pol-1", "pol-2", "pol-3", "pol-x"]))
                .collect();
            (
                UNITS,
                json!({"_id": id, "type": "profile", "account_id": account, "policies": policies}),
            )
        }
        4 => {
            let id = ["tpl-g", "tpl-a"][rng.usize(..2)];
            let mut doc = json!({"_id": id, "type": "template", "brand": "yealink", "file": "device.cfg.hbs",
                                 "template": format!("v{} {{{{config.vlan}}}}", rng.u8(..9))});
            if id == "tpl-a" {
                doc["account_id"] = json!(account);
            }
            if rng.bool() {
                doc["model"] = json!("t46s");
            }
            (UNITS, doc)
        }
        5 => {
            let schema = match rng.u8(..3) {
                0 => {
                    json!({"properties": {"vlan": {"type": "integer", "maximum": 4094, "default": 1}}})
                }
                1 => {
                    json!({"properties": {"ringtone": {"enum": ["Ring1.wav", "Ring2.wav"], "default": "Ring1.wav"}}})
                }
                _ => json!({}),
            };
            (
                UNITS,
                json!({"_id": "pm-yealink", "type": "phone_model", "brand": "yealink", "schema": schema}),
            )
        }
        6 => {
            let id = ["dev-1", "dev-2"][rng.usize(..2)];
            (
                SIP_AUTH,
                json!({"_id": id, "pvt_account_id": account, "sip": {"username": id, "password": format!("p{}", rng.u16(..))}}),
            )
        }
        _ => {
            let id = ["unit-1", "unit-2", "unit-3", "unit-4"][rng.usize(..4)];
            let model = ["t46s", "t46s", "t46s", "t99"][rng.usize(..4)];
            let profiles: Vec<&str> = (0..rng.usize(0..3))
                .map(|_| pick(rng, &["prof-1", "prof-2", "pol-1"]))
                .collect();
            let policies: Vec<&str> = (0..rng.usize(0..2))
                .map(|_| pick(rng, &["pol-1", "pol-2", "pol-3"]))
                .collect();
            let device = ["dev-1", "dev-2", "dev-3"][rng.usize(..3)];
            let mut unit = json!({"_id": id, "type": "unit", "account_id": account, "mac_address": pick(rng, &MACS),
                                  "brand": "yealink", "model": model, "config": config(rng), "profiles": profiles,
                                  "policies": policies, "enabled": rng.u8(..5) != 0,
                                  "lines": [{"line": 1, "device_id": device}]});
            if rng.u8(..4) == 0 {
                unit["provisioning"] = json!({"username": "u", "password": "p"});
            }
            (UNITS, unit)
        }
    }
}

#[test]
fn random_edit_sequences_equal_a_from_scratch_build() {
    let seed = crate::domains::phones::tests::seed("phones random edits");
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..20 {
        let mut sim = Incremental::new(World::default());
        for step in 0..60 {
            let kind = rng.u8(..10);
            let (source, doc) = random_doc(&mut rng, kind.min(7));
            let id = doc["_id"].as_str().unwrap().to_string();
            if rng.u8(..6) == 0 {
                sim.edit(source, &id, None);
            } else {
                sim.edit(source, &id, Some(doc));
            }
            let scratch = sim.world.build_all();
            if sim.outputs != scratch {
                let keys: BTreeSet<&String> = sim.outputs.keys().chain(scratch.keys()).collect();
                let differing: Vec<&&String> = keys
                    .iter()
                    .filter(|k| sim.outputs.get(**k) != scratch.get(**k))
                    .collect();
                let k = differing[0];
                panic!(
                    "seed {seed}, round {round}, step {step}: incremental differs from scratch on {differing:?}\nincremental {:?}\nscratch {:?}",
                    sim.outputs.get(*k),
                    scratch.get(*k)
                );
            }
        }
    }
}

/// `CALDERA_TEST_SEED` when set, else a random seed; printed either way.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("CALDERA_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: seed {seed} (replay with CALDERA_TEST_SEED={seed})");
    seed
}

/// The demo documents of `fixtures/couch/` (what `scripts/demo` loads).
pub(super) fn demo_world() -> World {
    let mut world = World::default();
    for source in [UNITS, SIP_AUTH] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/couch")
            .join(source);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let mut doc: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let id = path.file_stem().unwrap().to_string_lossy().into_owned();
            doc["_id"] = json!(id);
            world.put(source, doc);
        }
    }
    world
}

#[test]
fn the_demo_data_builds_as_the_readme_says() {
    let built = demo_world().build_all();
    let Some(Built::Content { content, issues }) = built.get("unit:unit-acme-yealink") else {
        panic!(
            "the demo Yealink builds: {:?}",
            built.get("unit:unit-acme-yealink")
        );
    };
    assert_eq!(content["served"], true);
    let config = &content["config"];
    assert_eq!(
        config["codecs"],
        json!(["g722", "pcmu", "pcma"]),
        "the reseller's lock holds"
    );
    assert_eq!(config["time"]["ntp_server"], "ntp.acme.example.net");
    assert_eq!(
        config["yealink"]["phone_setting"]["ring_type"], "Ring2.wav",
        "the sales profile's policy wins over the unit"
    );
    assert_eq!(
        config["yealink"]["features"]["dnd"]["allow"], 0,
        "the account wins over the unit"
    );
    assert_eq!(
        config["yealink"]["static"]["network"]["vlan"]["internet_port_vid"],
        20
    );
    assert_eq!(
        config["yealink"]["local_time"]["time_zone"], "+1",
        "the reseller's defaults"
    );
    assert_eq!(config["phone_book"]["entries"][1]["name"], "IT helpdesk");
    let cfg = content["files"]["805ec0123456.cfg"]["body"]
        .as_str()
        .unwrap();
    for wanted in [
        "#!version:1.0.0.1",
        "account.1.user_name = sales-desk",
        "account.1.sip_server.1.address = acme.sip.example.net",
    ] {
        assert!(cfg.contains(wanted), "{wanted} in {cfg}");
    }
    let lines = issue_lines(issues);
    assert_eq!(
        lines,
        [
            "provision_config:6f2a1b3c4d5e6f708192a3b4c5d6e7f8: account_config /codecs: \
             locked by account 5e1f0a2b3c4d5e6f708192a3b4c5d6e7; ignored",
            "unit-acme-yealink: unit /yealink/features/dnd: locked by account \
             6f2a1b3c4d5e6f708192a3b4c5d6e7f8; ignored",
        ],
        "only the refused values the demo shows on purpose"
    );
}

/// Every demo unit (one per vendor) builds and is served, and its only
/// errors are the locked values the demo refuses on purpose.
#[test]
fn every_demo_unit_builds_without_errors() {
    let built = demo_world().build_all();
    let units: Vec<&String> = built.keys().filter(|k| k.starts_with("unit:")).collect();
    assert_eq!(units.len(), 7, "{units:?}");
    let mut brands = BTreeSet::new();
    for key in units {
        let Some(Built::Content { content, issues }) = built.get(key) else {
            panic!("{key} builds: {:?}", built.get(key));
        };
        assert_eq!(content["served"], true, "{key}: {content}");
        let unexpected: Vec<String> = issue_lines(issues)
            .into_iter()
            .filter(|l| !l.contains("locked by account"))
            .collect();
        assert!(unexpected.is_empty(), "{key}: {unexpected:?}");
        let files = content["files"].as_object().unwrap();
        assert!(!files.is_empty(), "{key} has per-device files");
        assert!(
            content["lines"][0]["username"].is_string(),
            "{key} has its line"
        );
        brands.insert(content["unit"]["brand"].as_str().unwrap().to_string());
        let common = content["common"]["key"].as_str().unwrap();
        let Some(Built::Content { content, issues }) = built.get(common) else {
            panic!("{common} builds");
        };
        assert_eq!(content["served"], true, "{common}");
        assert!(
            !content["files"].as_object().unwrap().is_empty(),
            "{common}"
        );
        assert!(
            issue_lines(issues)
                .iter()
                .all(|l| l.contains("locked by account")),
            "{common}: {issues:?}"
        );
    }
    assert_eq!(
        brands.into_iter().collect::<Vec<_>>(),
        [
            "cisco",
            "fanvil",
            "grandstream",
            "polycom",
            "snom",
            "yealink"
        ]
    );
    let Some(Built::Content { content, .. }) = built.get("unit:unit-globex-snom") else {
        unreachable!()
    };
    assert!(content["auth"].is_object(), "Globex units need credentials");
}
