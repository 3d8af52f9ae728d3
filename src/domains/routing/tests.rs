//! Tests of the routing core, at the level of the builder and composed
//! tables: golden cases from `fixtures/routing/` (each `<case>.json` holds
//! the documents and lookups, `<case>.expected.json` the table and answers;
//! `UPDATE_EXPECT=1` regenerates), one test per row of the spec's decisions
//! table (each would fail under the other reading), the attrs examples,
//! round-robin cycles, malformed records, randomised edit sequences across
//! provisioning and ruleset databases compared with from-scratch builds
//! (tables recomposed the way the service does included), and the composed
//! tables compared answer for answer with the resolver they replaced
//! (`legacy`) over randomised documents.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::compose::{self, Directory, Skeleton};
use super::model::{self, PROVISIONING, directory_key};
use super::service::{build_table, routing_index, table_with_issues};
use super::table::Table;
use super::{RoutingBuilder, legacy};
use crate::couch::Body;
use crate::domains::{Builder, Built};
use crate::rebuild::deps::DepGraph;
use crate::rebuild::index::{Dep, Index, Keyer, Reads, SourceDoc, SourceId};

/// Documents by database (`provisioning` or a ruleset database's name).
#[derive(Default, Clone)]
struct World {
    dbs: BTreeMap<String, BTreeMap<String, Value>>,
}

impl World {
    fn put(&mut self, db: &str, doc: Value) -> &mut Self {
        let id = doc["_id"].as_str().expect("an _id").to_string();
        self.dbs.entry(db.to_string()).or_default().insert(id, doc);
        self
    }

    fn prov(&mut self, doc: Value) -> &mut Self {
        self.put("provisioning", doc)
    }

    /// An index holding provisioning and every ruleset database a ruleset
    /// names, filed for both the builder and the reference resolver.
    fn index(&self) -> Index {
        let keyer: Keyer = Arc::new(|source: &str, doc: &SourceDoc| {
            let mut keys = RoutingBuilder.view_keys(source, doc);
            keys.extend(legacy::view_keys(source, doc));
            keys
        });
        let mut index = Index::with_keyer(keyer);
        let load = |index: &mut Index, source: &str, docs: Option<&BTreeMap<String, Value>>| {
            let docs = docs
                .into_iter()
                .flatten()
                .map(|(id, body)| (id.clone(), Arc::new(source_doc(id, body))))
                .collect();
            index.replace(&SourceId::from(source), docs);
        };
        load(&mut index, PROVISIONING, self.dbs.get("provisioning"));
        for (source, db) in RoutingBuilder.dynamic_sources(&index) {
            load(&mut index, &source, self.dbs.get(&db));
        }
        index
    }

    fn table(&self, key: &str) -> Table {
        let (sdn, groupid) = key.split_once(':').unwrap();
        build_table(&self.index(), sdn, groupid)
            .expect("the ruleset builds")
            .0
    }

    /// The problems a table reports (its ruleset's, and its directory's
    /// that concern it), or why it failed.
    fn issues(&self, key: &str) -> Vec<String> {
        let index = self.index();
        let (sdn, groupid) = key.split_once(':').unwrap();
        let issues = match table_with_issues(&index, sdn, groupid) {
            Ok((_, issues)) => issues,
            Err(_) => match RoutingBuilder.build(key, &mut Reads::new(&index)) {
                Built::Failed { issues } => issues,
                _ => Vec::new(),
            },
        };
        issues
            .iter()
            .map(|i| {
                format!(
                    "{} {}: {}",
                    i.source,
                    i.doc.as_deref().unwrap_or("-"),
                    i.reason
                )
            })
            .collect()
    }

    /// The table the reference resolver builds.
    fn legacy_table(&self, key: &str) -> Option<Table> {
        match legacy::build(key, &mut Reads::new(&self.index())) {
            Built::Content { content, .. } => Some(legacy::compile(&content).unwrap()),
            _ => None,
        }
    }
}

fn source_doc(id: &str, body: &Value) -> SourceDoc {
    let rev = body
        .get("_rev")
        .and_then(Value::as_str)
        .unwrap_or("1-a")
        .to_string();
    let body = match body.get("__malformed").and_then(Value::as_str) {
        Some(why) => Body::Malformed(why.to_string()),
        None => Body::of(body),
    };
    SourceDoc {
        id: id.to_string(),
        rev,
        body,
    }
}

/// `gwid`s of an answer, in order.
fn gwids(answer: &Value) -> Vec<String> {
    answer["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gwid"].as_str().unwrap().to_string())
        .collect()
}

/// A small domain: ruleset `example.net:default` in database `rules`.
fn base() -> World {
    let mut w = World::default();
    w.prov(json!({"_id": "ruleset:example.net:default", "database": "rules"}));
    for gw in ["a", "b", "c"] {
        w.prov(json!({"_id": format!("gateway:example.net:{gw}"), "address": format!("{gw}.example.net:5060")}));
    }
    w
}

fn answer(w: &World, number: &str, host: Option<&str>) -> Value {
    w.table("example.net:default")
        .lookup(number, host)
        .unwrap_or_else(|| panic!("{number} has no route"))
}

fn gateway(answer: &Value, gwid: &str) -> Value {
    answer["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gwid"] == gwid)
        .unwrap_or_else(|| panic!("{gwid} not in {answer:#}"))
        .clone()
}

fn rejected_reasons(answer: &Value) -> Vec<String> {
    answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect()
}

// ---- one test per row of the decisions table -------------------------------

#[test]
fn d01_levels_apply_in_order_and_the_ruleset_is_a_level() {
    let mut w = base();
    w.prov(
        json!({"_id": "carrier:example.net:c", "response_timeout": 10, "progress_timeout": 10,
                  "answer_timeout": 10, "dialog_timeout": 10}),
    );
    w.prov(
        json!({"_id": "gateway:example.net:a", "address": "a:5060", "carrierid": "c",
                  "progress_timeout": 11, "answer_timeout": 11, "dialog_timeout": 11}),
    );
    w.prov(
        json!({"_id": "ruleset:example.net:default", "database": "rules",
                  "answer_timeout": 12, "dialog_timeout": 12}),
    );
    w.prov(json!({"_id": "destination:fr", "dialog_timeout": 13}));
    w.put(
        "rules",
        json!({"_id": "rule:33", "destination": "fr", "gwlist": [{"gwid": "a"}]}),
    );
    let a = gateway(&answer(&w, "33", None), "a");
    assert_eq!(
        [
            &a["response_timeout"],
            &a["progress_timeout"],
            &a["answer_timeout"],
            &a["dialog_timeout"]
        ],
        [&json!(10), &json!(11), &json!(12), &json!(13)],
        "each level overrides the less specific ones"
    );
    // The rule is more specific than its destination (tough-rate had it reversed).
    w.put(
        "rules",
        json!({"_id": "rule:33", "destination": "fr", "dialog_timeout": 14,
                          "gwlist": [{"gwid": "a", "answer_timeout": 15}]}),
    );
    let a = gateway(&answer(&w, "33", None), "a");
    assert_eq!(
        (&a["dialog_timeout"], &a["answer_timeout"]),
        (&json!(14), &json!(15))
    );
    // A disabled ruleset disables every gateway of every rule.
    w.prov(json!({"_id": "ruleset:example.net:default", "database": "rules", "disabled": true}));
    let answer = answer(&w, "33", None);
    assert!(gwids(&answer).is_empty(), "{answer:#}");
    assert_eq!(rejected_reasons(&answer), ["disabled"]);
}

#[test]
fn d02_the_most_specific_value_wins_and_null_is_not_a_value() {
    let mut w = base();
    w.prov(json!({"_id": "gateway:example.net:a", "address": "a:5060", "disabled": true, "progress_timeout": 7}));
    w.put(
        "rules",
        json!({"_id": "rule:", "progress_timeout": null,
                          "gwlist": [{"gwid": "a", "disabled": false}]}),
    );
    let answer = answer(&w, "1", None);
    // Under an OR of `disabled`, a would stay disabled.
    assert_eq!(gwids(&answer), ["a"]);
    assert_eq!(
        gateway(&answer, "a")["progress_timeout"],
        json!(7),
        "null does not override"
    );
}

#[test]
fn d03_attrs_merge_by_type_most_specific_last() {
    let mut w = base();
    w.prov(json!({"_id": "carrier:example.net:c", "attrs": {"flag": false, "s": "car", "l": ["c"], "o": {"x": 1, "y": 1}, "n": 1}}));
    w.prov(
        json!({"_id": "gateway:example.net:a", "address": "a:5060", "carrierid": "c",
                  "attrs": {"flag": true, "s": "-gw", "l": ["g"], "o": {"y": 2}, "n": 2}}),
    );
    w.prov(json!({"_id": "ruleset:example.net:default", "database": "rules", "attrs": "not an object"}));
    w.put("rules", json!({"_id": "rule:", "attrs": {"flag": false, "s": 5, "o": {"z": 3}},
                          "gwlist": [{"gwid": "a", "attrs": {"s": "-entry", "l": ["e"], "n": 3, "o": "x"}}]}));
    let attrs = gateway(&answer(&w, "1", None), "a")["attrs"].clone();
    assert_eq!(
        attrs,
        json!({"flag": true, "s": "car-gw-entry", "l": ["c", "g", "e"], "o": {"x": 1, "y": 2, "z": 3}, "n": 3}),
        "booleans OR'ed, strings and lists concatenated, objects merged, numbers replaced, other types ignored"
    );
    assert!(
        w.issues("example.net:default")
            .iter()
            .any(|i| i.contains("attrs: not an object")),
        "a non-object attrs is ignored and reported"
    );
}

#[test]
fn d04_positions_give_default_priorities_and_explicit_ones_replace_them() {
    let mut w = base();
    w.put(
        "rules",
        json!({"_id": "rule:", "gwlist": [{"gwid": "a"}, {"gwid": "b"}, {"gwid": "c"}]}),
    );
    let answer_ = answer(&w, "1", None);
    let priorities: Vec<_> = answer_["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["priority"].clone())
        .collect();
    assert_eq!(priorities, [json!(2), json!(1), json!(0)]);
    // Explicit priorities replace the position (not added to it).
    w.prov(json!({"_id": "gateway:example.net:c", "address": "c:5060", "priority": 5}));
    assert_eq!(gateway(&answer(&w, "1", None), "c")["priority"], json!(5));
    // The local bonus (default 0.5) is added at lookup time.
    w.prov(json!({"_id": "gateway:example.net:c", "address": "c:5060", "host": "sbc1"}));
    let local = answer(&w, "1", Some("sbc1"));
    assert_eq!(gateway(&local, "c")["priority"], json!(0.5));
    assert_eq!(gateway(&local, "c")["local"], json!(true));
    // … resolved like any attribute: a bigger bonus moves c to the front.
    w.prov(
        json!({"_id": "gateway:example.net:c", "address": "c:5060", "host": "sbc1",
                  "local_gateway_extra_priority": 3}),
    );
    assert_eq!(gwids(&answer(&w, "1", Some("sbc1"))), ["c", "a", "b"]);
    assert_eq!(gwids(&answer(&w, "1", Some("sbc2"))), ["a", "b", "c"]);
}

#[test]
fn d05_weight_resolves_like_any_attribute_and_non_positive_is_one() {
    let mut w = base();
    w.prov(json!({"_id": "carrier:example.net:c", "weight": 3}));
    w.prov(json!({"_id": "gateway:example.net:a", "address": "a:5060", "carrierid": "c"}));
    w.prov(json!({"_id": "gateway:example.net:b", "address": "b:5060", "weight": 0}));
    w.put("rules", json!({"_id": "rule:", "gwlist": [{"gwid": "a"}, {"gwid": "b"}, {"gwid": "c", "weight": -2}]}));
    let answer = answer(&w, "1", None);
    let weights: Vec<_> = answer["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["weight"].clone())
        .collect();
    assert_eq!(weights, [json!(3), json!(1), json!(1)]);
}

fn carrier_world() -> World {
    let mut w = base();
    for (gw, carrier) in [("a", "c"), ("b", "c"), ("x", "c")] {
        w.prov(json!({"_id": format!("gateway:example.net:{gw}"), "address": format!("{gw}:5060"), "carrierid": carrier}));
    }
    w.prov(json!({"_id": "gateway:example.net:x", "address": "x:5060", "carrierid": "c", "disabled": true}));
    // Same carrier id in another domain: not a member.
    w.prov(json!({"_id": "gateway:other.net:y", "address": "y:5060", "carrierid": "c"}));
    w
}

#[test]
fn d06_carrier_entries_expand_to_usable_members_then_try() {
    let mut w = carrier_world();
    w.put(
        "rules",
        json!({"_id": "rule:", "gwlist": [{"carrierid": "c"}]}),
    );
    let answer_ = answer(&w, "1", None);
    let mut found = gwids(&answer_);
    found.sort();
    // `try` defaults to the number of usable gateways (not 1); the disabled
    // member and the other domain's gateway are not candidates.
    assert_eq!(found, ["a", "b"]);
    assert_eq!(rejected_reasons(&answer_), ["disabled"]);
    w.prov(json!({"_id": "carrier:example.net:c", "try": 1}));
    assert_eq!(gwids(&answer(&w, "1", None)).len(), 1, "the carrier's try");
    w.put(
        "rules",
        json!({"_id": "rule:", "gwlist": [{"carrierid": "c", "try": 2}]}),
    );
    assert_eq!(
        gwids(&answer(&w, "1", None)).len(),
        2,
        "the entry's try wins over the carrier's"
    );
    w.put(
        "rules",
        json!({"_id": "rule:", "gwlist": [{"carrierid": "c", "try": 9}]}),
    );
    assert_eq!(
        gwids(&answer(&w, "1", None)).len(),
        2,
        "try never exceeds the usable gateways"
    );
}

#[test]
fn d07_gwid_entries_bring_their_carrier_and_bad_entries_are_rejected() {
    let mut w = carrier_world();
    w.prov(json!({"_id": "carrier:example.net:c", "dialog_timeout": 60, "try": 1}));
    w.put("rules", json!({"_id": "rule:", "gwlist": [{"gwid": "a"}, {"gwid": "nope"}, {"foo": "bar"}, {"gwid": "b"}]}));
    let answer = answer(&w, "1", None);
    // A gwid entry stays one gateway (tough-rate re-expanded it into garbage),
    // with its carrier's attributes.
    assert_eq!(gwids(&answer), ["a", "b"]);
    assert_eq!(gateway(&answer, "a")["dialog_timeout"], json!(60));
    assert_eq!(gateway(&answer, "a")["carrierid"], json!("c"));
    assert_eq!(
        rejected_reasons(&answer),
        [
            "no gateway nope in example.net",
            "the entry has neither gwid nor carrierid"
        ]
    );
}

#[test]
fn d08_disabled_gateways_are_rejected_and_disabled_rules_skipped() {
    let mut w = base();
    w.prov(json!({"_id": "gateway:example.net:b", "address": "b:5060", "disabled": true}));
    w.put("rules", json!({"_id": "rule:3", "gwlist": [{"gwid": "c"}]}));
    w.put(
        "rules",
        json!({"_id": "rule:33", "gwlist": [{"gwid": "a"}, {"gwid": "b"}]}),
    );
    let answer_ = answer(&w, "331", None);
    assert_eq!(gwids(&answer_), ["a"]);
    assert_eq!(
        answer_["rejected"],
        json!([{"entry": 1, "gwid": "b", "carrierid": null, "reason": "disabled"}])
    );
    w.put(
        "rules",
        json!({"_id": "rule:33", "disabled": true, "gwlist": [{"gwid": "a"}]}),
    );
    let answer_ = answer(&w, "331", None);
    assert_eq!(
        (answer_["prefix"].as_str(), gwids(&answer_)),
        (Some("3"), vec!["c".to_string()])
    );
}

#[test]
fn d09_longest_prefix_down_to_the_catch_all() {
    let mut w = base();
    w.put("rules", json!({"_id": "rule:", "gwlist": [{"gwid": "a"}]}));
    w.put("rules", json!({"_id": "rule:3", "gwlist": [{"gwid": "b"}]}));
    w.put(
        "rules",
        json!({"_id": "prefix:33", "gwlist": [{"gwid": "c"}]}),
    );
    let table = w.table("example.net:default");
    let prefix = |n: &str| {
        table.lookup(n, None).unwrap()["prefix"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!([prefix("3312"), prefix("34"), prefix("4")], ["33", "3", ""]);
    w.dbs.get_mut("rules").unwrap().remove("rule:");
    assert!(
        w.table("example.net:default").lookup("4", None).is_none(),
        "no catch-all, no route"
    );
}

#[test]
fn d10_destinations_supply_defaults_and_a_missing_one_is_a_warning() {
    let mut w = base();
    w.prov(json!({"_id": "destination:fr", "progress_timeout": 20, "answer_timeout": 20}));
    w.put(
        "rules",
        json!({"_id": "destination:fr", "progress_timeout": 21}),
    );
    w.put(
        "rules",
        json!({"_id": "rule:33", "destination": "fr", "gwlist": [{"gwid": "a"}]}),
    );
    let a = gateway(&answer(&w, "33", None), "a");
    // The ruleset database's destination wins over provisioning's, whole.
    assert_eq!(
        (&a["progress_timeout"], &a["answer_timeout"]),
        (&json!(21), &json!(90))
    );
    w.put(
        "rules",
        json!({"_id": "rule:33", "destination": "nowhere", "gwlist": [{"gwid": "a"}]}),
    );
    let answer = answer(&w, "33", None);
    assert_eq!(gwids(&answer), ["a"], "the rule still routes");
    assert_eq!(
        answer["warnings"],
        json!(["destination \"nowhere\" does not exist; the rule routes without it"])
    );
}

#[test]
fn d11_descending_priority_then_round_robin() {
    let mut w = base();
    w.put("rules", json!({"_id": "rule:", "gwlist": [{"gwid": "a"}, {"gwid": "b", "priority": 2}, {"gwid": "c"}]}));
    let table = w.table("example.net:default");
    // a (position 2) and b (explicit 2) tie ahead of c (0): they alternate in
    // front. An ascending sort would put c first.
    let leaders: Vec<_> = (0..4)
        .map(|_| gwids(&table.lookup("1", None).unwrap()))
        .collect();
    assert_eq!(
        leaders,
        [
            ["a", "b", "c"],
            ["b", "a", "c"],
            ["a", "b", "c"],
            ["b", "a", "c"]
        ]
    );
}

#[test]
fn d12_round_robin_state_is_per_host_and_reset_with_the_table() {
    let mut w = base();
    w.prov(json!({"_id": "gateway:example.net:a", "address": "a:5060", "weight": 2}));
    w.put("rules", json!({"_id": "rule:", "gwlist": [{"gwid": "a", "priority": 0}, {"gwid": "b", "priority": 0}]}));
    let table = w.table("example.net:default");
    let lead = |host: &str| gwids(&table.lookup("1", Some(host)).unwrap())[0].clone();
    assert_eq!(
        [lead("h1"), lead("h1"), lead("h1")],
        ["a", "b", "a"],
        "smooth: a b a, not a a b"
    );
    assert_eq!(lead("h2"), "a", "another host has its own state");
    let fresh = w.table("example.net:default");
    assert_eq!(
        gwids(&fresh.lookup("1", Some("h1")).unwrap())[0],
        "a",
        "a new table starts over"
    );
}

#[test]
fn d13_duplicates_are_kept() {
    let mut w = base();
    w.put(
        "rules",
        json!({"_id": "rule:", "gwlist": [{"gwid": "a"}, {"gwid": "b"}, {"gwid": "a"}]}),
    );
    assert_eq!(gwids(&answer(&w, "1", None)), ["a", "b", "a"]);
}

#[test]
fn d14_local_means_the_gateway_lives_on_the_asking_host() {
    let mut w = base();
    w.prov(json!({"_id": "host@sbc1", "type": "host", "host": "sbc1", "sip_domain_name": "example.net",
                  "sip_profiles": {"p": {"ingress_sip_ip": "192.0.2.1", "ingress_sip_port": 5060, "egress_gwid": "hp"}}}));
    w.put(
        "rules",
        json!({"_id": "rule:", "gwlist": [{"gwid": "a"}, {"gwid": "hp"}]}),
    );
    let at_sbc1 = answer(&w, "1", Some("sbc1"));
    assert_eq!(gateway(&at_sbc1, "hp")["address"], json!("192.0.2.1:15060"));
    assert_eq!(
        (
            &gateway(&at_sbc1, "hp")["local"],
            &gateway(&at_sbc1, "a")["local"]
        ),
        (&json!(true), &json!(false))
    );
    assert_eq!(gwids(&at_sbc1), ["a", "hp"], "1 > 0 + 0.5");
    assert_eq!(
        gateway(&answer(&w, "1", Some("sbc2")), "hp")["local"],
        json!(false)
    );
    assert_eq!(gateway(&answer(&w, "1", None), "hp")["local"], json!(false));
}

#[test]
fn d15_called_numbers_use_the_sip_user_alphabet() {
    for good in ["33123", "+33123", "33_112", "*98#", "AbC-1"] {
        assert!(model::valid_number(good), "{good}");
    }
    for bad in ["", "33 123", "33.1", "331@x", "é", &"9".repeat(65)] {
        assert!(!model::valid_number(bad), "{bad}");
    }
    let mut w = base();
    w.put(
        "rules",
        json!({"_id": "rule:+33", "gwlist": [{"gwid": "a"}]}),
    );
    assert_eq!(answer(&w, "+331", None)["prefix"], json!("+33"));
}

// ---- the HTTP answer's text ---------------------------------------------------

#[test]
fn lookup_text_is_the_lookup_tree_serialized() {
    let mut w = carrier_world();
    w.prov(json!({"_id": "host@sbc1", "type": "host", "host": "sbc1", "sip_domain_name": "example.net",
                  "sip_profiles": {"p": {"ingress_sip_ip": "192.0.2.1", "ingress_sip_port": 5060, "egress_gwid": "hp"}}}));
    w.prov(
        json!({"_id": "gateway:example.net:a", "address": "a:5060", "carrierid": "c", "weight": 2,
                  "attrs": {"z": true, "list": [1]}, "priority": 1.5}),
    );
    w.put("rules", json!({"_id": "rule:", "gwlist": [{"carrierid": "c", "try": 1}, {"gwid": "hp"}, {"gwid": "nope"}]}));
    w.put("rules", json!({"_id": "rule:33", "destination": "gone", "gwlist": [{"gwid": "a"}, {"gwid": "b"}, {"gwid": "x"}]}));
    // Two tables in lockstep: the same round-robin state on both sides.
    let (tree, text) = (
        w.table("example.net:default"),
        w.table("example.net:default"),
    );
    for step in 0..40 {
        let number = if step % 2 == 0 { "331" } else { "4" };
        let host = [None, Some("sbc1"), Some("")][step % 3];
        let expected = tree.lookup(number, host).unwrap();
        let got = text.lookup_text(number, host).unwrap();
        assert_eq!(
            got,
            serde_json::to_string(&expected).unwrap(),
            "step {step}"
        );
    }
    assert_eq!(
        text.lookup_text("", None).is_some(),
        tree.lookup("", None).is_some()
    );
}

// ---- round-robin cycles -----------------------------------------------------

#[test]
fn each_gateway_leads_its_group_exactly_weight_times_per_cycle() {
    let mut w = base();
    for (gw, weight) in [("a", 3), ("b", 1), ("c", 2)] {
        w.prov(json!({"_id": format!("gateway:example.net:{gw}"), "address": format!("{gw}:5060"), "weight": weight}));
    }
    w.put("rules", json!({"_id": "rule:", "priority": 1, "gwlist": [{"gwid": "a"}, {"gwid": "b"}, {"gwid": "c"}]}));
    let table = w.table("example.net:default");
    for cycle in 0..3 {
        let mut leads = BTreeMap::new();
        for _ in 0..6 {
            let answer = table.lookup("1", Some("h")).unwrap();
            assert_eq!(answer["gateways"].as_array().unwrap().len(), 3);
            *leads.entry(gwids(&answer)[0].clone()).or_insert(0) += 1;
        }
        assert_eq!(
            leads,
            BTreeMap::from([("a".into(), 3), ("b".into(), 1), ("c".into(), 2)]),
            "cycle {cycle}"
        );
    }
}

#[test]
fn carrier_try_selection_rotates_by_weight() {
    let mut w = carrier_world();
    w.prov(
        json!({"_id": "gateway:example.net:a", "address": "a:5060", "carrierid": "c", "weight": 2}),
    );
    w.prov(json!({"_id": "carrier:example.net:c", "try": 1}));
    w.put(
        "rules",
        json!({"_id": "rule:", "gwlist": [{"carrierid": "c"}]}),
    );
    let table = w.table("example.net:default");
    let picks: Vec<String> = (0..6)
        .map(|_| gwids(&table.lookup("1", None).unwrap()).concat())
        .collect();
    assert_eq!(picks, ["a", "b", "a", "a", "b", "a"]);
}

// ---- malformed records --------------------------------------------------------

#[test]
fn malformed_records_give_rejections_or_errors_never_a_crash() {
    let mut w = base();
    w.prov(json!({"_id": "gateway:example.net:a", "address": "a:5060", "response_timeout": "soon", "weight": "heavy"}));
    w.prov(json!({"_id": "gateway:example.net:broken", "__malformed": "nesting deeper than 128 levels"}));
    w.prov(json!({"_id": "carrier:example.net:c", "try": "all"}));
    w.prov(json!({"_id": "gateway:example.net:noaddr", "carrierid": "c"}));
    w.put("rules", json!({"_id": "rule:1", "gwlist": {"gwid": "a"}}));
    w.put(
        "rules",
        json!({"_id": "rule:2", "gwlist": [{"gwid": "unknown"}, 7, {"gwid": "broken"}]}),
    );
    w.put("rules", json!({"_id": "rule:3", "gwlist": []}));
    w.put("rules", json!({"_id": "rule:4", "destination": "missing", "gwlist": [{"gwid": "a"}, {"carrierid": "c"}]}));
    w.put(
        "rules",
        json!({"_id": "rule:5", "__malformed": "lone surrogate"}),
    );
    w.put(
        "rules",
        json!({"_id": "rule:6 6", "gwlist": [{"gwid": "a"}]}),
    );
    w.put(
        "rules",
        json!({"_id": "rule:7", "gwlist": [{"gwid": "a", "progress_timeout": -1}]}),
    );
    let table = w.table("example.net:default");
    let one = table.lookup("1", None).unwrap();
    assert_eq!(
        (gwids(&one).len(), rejected_reasons(&one)),
        (0, vec!["gwlist is not a list".to_string()])
    );
    let two = table.lookup("2", None).unwrap();
    assert_eq!(
        rejected_reasons(&two),
        [
            "no gateway unknown in example.net",
            "the entry is not an object",
            "no gateway broken in example.net"
        ]
    );
    let three = table.lookup("3", None).unwrap();
    assert_eq!(
        (gwids(&three).len(), three["warnings"].clone()),
        (0, json!(["the rule has no gateways"]))
    );
    let four = table.lookup("4", None).unwrap();
    assert_eq!(gwids(&four), ["a"]);
    assert_eq!(
        gateway(&four, "a")["response_timeout"],
        json!(2),
        "a non-numeric timeout is ignored"
    );
    assert_eq!(rejected_reasons(&four), ["gateway noaddr has no address"]);
    assert!(
        table.lookup("5", None).is_none(),
        "an unreadable rule is left out"
    );
    let seven = table.lookup("7", None).unwrap();
    assert_eq!(gateway(&seven, "a")["progress_timeout"], json!(4));
    let issues = w.issues("example.net:default").join("\n");
    for expected in [
        "gateway:example.net:a: response_timeout: not a non-negative number; ignored",
        "gateway:example.net:a: weight: not a number; ignored",
        "carrier:example.net:c: try: not a positive integer; ignored",
        "rule:1: gwlist is not a list",
        "rule:5: the document cannot be read",
        "rule:6 6: the prefix is not",
        "rule:7: gwlist[0].progress_timeout: not a non-negative number",
        "gateway:example.net:broken: the document cannot be read",
    ] {
        assert!(
            issues.contains(expected),
            "missing {expected:?} in\n{issues}"
        );
    }
}

#[test]
fn a_ruleset_without_a_usable_database_has_no_rules() {
    let mut w = base();
    w.prov(json!({"_id": "ruleset:example.net:default"}));
    assert_eq!(w.table("example.net:default").len(), 0);
    w.prov(json!({"_id": "ruleset:example.net:default", "database": "Bad Name"}));
    assert!(w.issues("example.net:default")[0].contains("not a CouchDB database name"));
    // A database that does not exist is not an error: no rules.
    w.prov(json!({"_id": "ruleset:example.net:default", "database": "absent"}));
    assert!(w.issues("example.net:default").is_empty());
    assert!(w.table("example.net:default").is_empty());
}

#[test]
fn prefix_ids_are_accepted_and_rule_ids_win() {
    let mut w = base();
    w.put(
        "rules",
        json!({"_id": "prefix:33", "gwlist": [{"gwid": "a"}]}),
    );
    assert_eq!(gwids(&answer(&w, "33", None)), ["a"]);
    w.put(
        "rules",
        json!({"_id": "rule:33", "gwlist": [{"gwid": "b"}]}),
    );
    assert_eq!(gwids(&answer(&w, "33", None)), ["b"]);
    assert!(w.issues("example.net:default")[0].contains("prefix:33: rule:33 also exists"));
}

#[test]
fn a_gateway_defined_twice_uses_the_gateway_document() {
    let mut w = base();
    w.prov(
        json!({"_id": "host@sbc1", "host": "sbc1", "sip_domain_name": "example.net",
                  "sip_profiles": {"p": {"ingress_sip_ip": "192.0.2.1", "ingress_sip_port": 5060,
                                         "egress": {"gwid": "a", "carrierid": "c"}}}}),
    );
    w.put(
        "rules",
        json!({"_id": "rule:", "gwlist": [{"gwid": "a"}, {"carrierid": "c"}]}),
    );
    let answer = answer(&w, "1", None);
    assert_eq!(
        gateway(&answer, "a")["address"],
        json!("a.example.net:5060")
    );
    assert_eq!(
        rejected_reasons(&answer),
        ["carrier c has no gateways in example.net"]
    );
    assert!(w.issues("example.net:default")[0].contains("also defined by host@sbc1"));
}

#[test]
fn a_disabled_host_disables_its_gateways() {
    let mut w = base();
    w.prov(json!({"_id": "host@sbc1", "host": "sbc1", "sip_domain_name": "example.net", "disabled": true,
                  "sip_profiles": {"p": {"egress_sip_ip": "192.0.2.1", "egress_sip_port": 5080, "egress_gwid": "hp"}}}));
    w.put("rules", json!({"_id": "rule:", "gwlist": [{"gwid": "hp"}]}));
    assert_eq!(rejected_reasons(&answer(&w, "1", None)), ["disabled"]);
}

// ---- golden cases ---------------------------------------------------------------

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/routing")
}

/// A case: `{"provisioning": [docs], "databases": {db: [docs]}, "lookups":
/// [{"ruleset", "number", "host"}]}` → every table built, then the lookups
/// in order (round-robin state carries over between them).
fn run_case(case: &Value) -> Value {
    let mut w = World::default();
    for doc in case["provisioning"].as_array().into_iter().flatten() {
        w.prov(doc.clone());
    }
    for (db, docs) in case["databases"].as_object().into_iter().flatten() {
        for doc in docs.as_array().into_iter().flatten() {
            w.put(db, doc.clone());
        }
    }
    let index = w.index();
    let mut tables = BTreeMap::new();
    let mut built = serde_json::Map::new();
    for key in RoutingBuilder.all_keys(&index) {
        let Some((sdn, groupid)) = key.split_once(':') else {
            continue; // a gateway directory
        };
        let (table, errors) = build_table(&index, sdn, groupid).unwrap();
        built.insert(
            key.clone(),
            json!({"export": table.export(), "errors": errors}),
        );
        tables.insert(key, table);
    }
    let lookups: Vec<Value> = case["lookups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let table = &tables[l["ruleset"].as_str().unwrap()];
            let answer = table.lookup(l["number"].as_str().unwrap(), l["host"].as_str());
            json!({"ask": l, "answer": answer})
        })
        .collect();
    json!({"tables": built, "lookups": lookups})
}

#[test]
fn golden_cases() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures/routing exists")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".expected.json")
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 2, "the golden cases are missing");
    for path in cases {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let actual = serde_json::to_string_pretty(&run_case(&case)).unwrap() + "\n";
        let expected = path.with_extension("expected.json");
        expect_test::expect_file![expected].assert_eq(&actual);
    }
}

#[test]
fn the_couch_demo_data_routes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/couch");
    let mut w = World::default();
    for db in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
        let name = db.file_name().unwrap().to_string_lossy().to_string();
        for file in std::fs::read_dir(&db).unwrap().map(|e| e.unwrap().path()) {
            if file.extension().is_some_and(|e| e == "json") {
                let doc: Value =
                    serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
                if doc.get("_id").is_some() {
                    w.put(&name, doc);
                }
            }
        }
    }
    let table = w.table("example.net:default");
    for (number, prefix) in [
        ("33123456789", "33"),
        ("33612345678", "336"),
        ("112", "112"),
        ("4412345", ""),
    ] {
        let answer = table.lookup(number, Some("sbc1.example.net")).unwrap();
        assert_eq!(answer["prefix"], json!(prefix), "{answer:#}");
        assert!(!gwids(&answer).is_empty(), "{answer:#}");
    }
    assert!(
        w.issues("example.net:default").is_empty(),
        "{:#?}",
        w.issues("example.net:default")
    );
}

// ---- randomised edits: incremental equals from-scratch -----------------------

/// The engine's bookkeeping at the pure level: an index, the dependency
/// map and the dynamic sources, fed edit by edit; rebuilds only what the
/// recorded reads, roots and view keys say is affected.
struct Sim {
    world: World,
    index: Index,
    deps: DepGraph,
    outputs: BTreeMap<String, Built>,
    followed: BTreeMap<String, String>,
    rebuilt: usize,
    /// The outputs the last edit rebuilt.
    last_rebuilt: Vec<String>,
    /// Each ruleset's table as the service keeps it: recomposed when only
    /// the directory changed.
    served: BTreeMap<String, Served>,
}

/// A table as the service holds it, with what it was composed from.
struct Served {
    content: Value,
    skeleton: Skeleton,
    directory: Directory,
    table: Table,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            world: World::default(),
            index: routing_index(),
            deps: DepGraph::default(),
            outputs: BTreeMap::new(),
            followed: BTreeMap::new(),
            rebuilt: 0,
            last_rebuilt: Vec::new(),
            served: BTreeMap::new(),
        }
    }

    /// The directory content of a ruleset key's domain, if any.
    fn directory_of(outputs: &BTreeMap<String, Built>, key: &str) -> Directory {
        let sdn = key.split_once(':').unwrap().0;
        match directory_key(sdn).and_then(|k| outputs.get(&k)) {
            Some(Built::Content { content, .. }) => Directory::compile(content).unwrap(),
            _ => Directory::default(),
        }
    }

    /// Updates the served tables as the service would on its next lookups.
    fn serve(&mut self) {
        let mut served = BTreeMap::new();
        for (key, built) in &self.outputs {
            let Built::Content { content, .. } = built else {
                continue;
            };
            if model::directory_domain(key).is_some() {
                continue;
            }
            let directory = Sim::directory_of(&self.outputs, key);
            let next = match self.served.remove(key) {
                Some(old) if old.content == *content => {
                    let table =
                        compose::recompose(&old.skeleton, &old.table, &old.directory, &directory)
                            .unwrap_or(old.table);
                    Served {
                        directory,
                        table,
                        ..old
                    }
                }
                _ => {
                    let skeleton = Skeleton::compile(content).unwrap();
                    let table = compose::compose(&skeleton, &directory);
                    Served {
                        content: content.clone(),
                        skeleton,
                        directory,
                        table,
                    }
                }
            };
            served.insert(key.clone(), next);
        }
        self.served = served;
    }

    fn touch(&self, dep: Dep, dirty: &mut BTreeSet<String>) {
        dirty.extend(self.deps.dependents(&dep).map(|(_, key)| key.clone()));
    }

    /// What a changed document makes dirty (old and new version).
    fn touch_doc(
        &self,
        source: &str,
        id: &str,
        versions: [Option<&SourceDoc>; 2],
        dirty: &mut BTreeSet<String>,
    ) {
        let sid = SourceId::from(source);
        self.touch(Dep::Doc(sid.clone(), id.to_string()), dirty);
        self.touch(Dep::Source(sid.clone()), dirty);
        for doc in versions.into_iter().flatten() {
            dirty.extend(RoutingBuilder.roots(source, id, Some(doc)));
            for key in self.index.view_keys(source, doc) {
                self.touch(Dep::View(sid.clone(), key), dirty);
            }
        }
        dirty.extend(RoutingBuilder.roots(source, id, None));
    }

    fn edit(&mut self, db: &str, id: &str, body: Option<Value>) {
        match &body {
            Some(body) => {
                let mut body = body.clone();
                body["_id"] = json!(id);
                self.world.put(db, body);
            }
            None => {
                if let Some(docs) = self.world.dbs.get_mut(db) {
                    docs.remove(id);
                }
            }
        }
        let source = if db == PROVISIONING {
            PROVISIONING.to_string()
        } else {
            model::ruleset_source(db)
        };
        let mut dirty = BTreeSet::new();
        if db == PROVISIONING || self.followed.contains_key(&source) {
            let sid = SourceId::from(source.as_str());
            let old = match &body {
                Some(_) => self
                    .index
                    .upsert(&sid, source_doc(id, &self.world.dbs[db][id])),
                None => self.index.remove(&source, id),
            };
            let new = self.index.get(&source, id).cloned();
            self.touch_doc(&source, id, [old.as_deref(), new.as_deref()], &mut dirty);
        }
        self.sync(&mut dirty);
        self.rebuild(dirty);
    }

    /// The ruleset database disappears (its follower reports it empty).
    fn delete_db(&mut self, db: &str) {
        self.world.dbs.remove(db);
        let source = model::ruleset_source(db);
        let mut dirty = BTreeSet::new();
        if self.followed.contains_key(&source) {
            self.swap(&source, BTreeMap::new(), &mut dirty);
        }
        self.sync(&mut dirty);
        self.rebuild(dirty);
    }

    fn swap(
        &mut self,
        source: &str,
        docs: BTreeMap<String, Arc<SourceDoc>>,
        dirty: &mut BTreeSet<String>,
    ) {
        let old = self.index.replace(&SourceId::from(source), docs);
        self.touch(Dep::Source(SourceId::from(source)), dirty);
        let ids: BTreeSet<String> = old
            .keys()
            .chain(self.index.docs(source).map(|d| &d.id))
            .cloned()
            .collect();
        for id in ids {
            let new = self.index.get(source, &id).cloned();
            self.touch_doc(
                source,
                &id,
                [old.get(&id).map(|d| &**d), new.as_deref()],
                dirty,
            );
        }
    }

    /// Follows what the builder wants, as the engine and the feeds do.
    fn sync(&mut self, dirty: &mut BTreeSet<String>) {
        let wanted = RoutingBuilder.dynamic_sources(&self.index);
        let gone: Vec<String> = self
            .followed
            .iter()
            .filter(|(s, db)| wanted.get(*s) != Some(*db))
            .map(|(s, _)| s.clone())
            .collect();
        for source in gone {
            self.followed.remove(&source);
            let old = self.index.drop_source(&source);
            self.touch(Dep::Source(SourceId::from(source.as_str())), dirty);
            for (id, doc) in &old {
                self.touch_doc(&source, id, [Some(doc), None], dirty);
            }
        }
        for (source, db) in wanted {
            if self.followed.contains_key(&source) {
                continue;
            }
            let docs = self
                .world
                .dbs
                .get(&db)
                .into_iter()
                .flatten()
                .map(|(id, body)| (id.clone(), Arc::new(source_doc(id, body))))
                .collect();
            self.followed.insert(source.clone(), db);
            self.swap(&source, docs, dirty);
        }
    }

    fn rebuild(&mut self, dirty: BTreeSet<String>) {
        self.last_rebuilt = dirty.iter().cloned().collect();
        for key in dirty {
            self.rebuilt += 1;
            let mut reads = Reads::new(&self.index);
            let built = RoutingBuilder.build(&key, &mut reads);
            let (deps, _) = reads.finish();
            let id = (crate::domains::Domain::Routing, key.clone());
            if built == Built::Absent {
                self.deps.remove(&id);
                self.outputs.remove(&key);
            } else {
                self.deps.set(id, deps);
                self.outputs.insert(key, built);
            }
        }
        self.serve();
    }

    fn scratch_build(&self) -> BTreeMap<String, Built> {
        let index = self.world.index();
        RoutingBuilder
            .all_keys(&index)
            .into_iter()
            .map(|key| {
                let mut reads = Reads::new(&index);
                let built = RoutingBuilder.build(&key, &mut reads);
                (key, built)
            })
            .collect()
    }
}

struct Gen(fastrand::Rng);

impl Gen {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.0.usize(..items.len())]
    }

    fn maybe(&mut self, percent: u8) -> bool {
        self.0.u8(..100) < percent
    }

    fn attrs(&mut self) -> Value {
        let mut attrs = serde_json::Map::new();
        for key in ["b", "s", "l", "o"] {
            if self.maybe(30) {
                let value = match self.0.u8(..5) {
                    0 => json!(self.maybe(50)),
                    1 => json!(self.pick(&["x", "y"])),
                    2 => json!([self.0.u8(..3)]),
                    3 => json!({ self.pick(&["k", "m"]): self.0.u8(..3) }),
                    _ => json!(self.0.u8(..3)),
                };
                attrs.insert(key.into(), value);
            }
        }
        Value::Object(attrs)
    }

    /// Optional attributes of any level.
    fn level(&mut self, mut doc: Value) -> Value {
        if self.maybe(15) {
            doc["disabled"] = json!(self.maybe(60));
        }
        if self.maybe(20) {
            doc["response_timeout"] = if self.maybe(80) {
                json!(self.0.u8(1..9))
            } else {
                json!("bad")
            };
        }
        if self.maybe(15) {
            doc["weight"] = json!(self.0.i8(-1..4));
        }
        if self.maybe(10) {
            doc["priority"] = json!(self.0.u8(..4));
        }
        if self.maybe(25) {
            doc["attrs"] = self.attrs();
        }
        doc
    }

    fn entry(&mut self) -> Value {
        let entry = match self.0.u8(..10) {
            0..=4 => json!({"gwid": self.pick(&GATEWAYS)}),
            5..=7 => json!({"carrierid": self.pick(&CARRIERS)}),
            8 => json!({"foo": 1}),
            _ => json!("junk"),
        };
        if entry.is_object() {
            let mut entry = self.level(entry);
            if self.maybe(20) {
                entry["try"] = json!(self.0.u8(..3));
            }
            entry
        } else {
            entry
        }
    }

    /// One random edit of the world.
    fn edit(&mut self, sim: &mut Sim) {
        let sdn = if self.maybe(85) {
            "example.net"
        } else {
            "other.net"
        };
        match self.0.u8(..100) {
            0..=14 => {
                let id = format!("gateway:{sdn}:{}", self.pick(&GATEWAYS));
                let body = self.maybe(85).then(|| {
                    let mut gw = json!({"address": format!("{}:5060", self.0.u8(..255))});
                    if self.maybe(70) {
                        gw["carrierid"] = json!(self.pick(&CARRIERS));
                    }
                    if self.maybe(20) {
                        gw["host"] = json!(self.pick(&HOSTS));
                    }
                    self.level(gw)
                });
                sim.edit(PROVISIONING, &id, body);
            }
            15..=24 => {
                let id = format!("carrier:{sdn}:{}", self.pick(&CARRIERS));
                let body = self.maybe(80).then(|| {
                    let mut carrier = self.level(json!({}));
                    if self.maybe(40) {
                        carrier["try"] = json!(self.0.u8(..3));
                    }
                    carrier
                });
                sim.edit(PROVISIONING, &id, body);
            }
            25..=34 => {
                let host = self.pick(&HOSTS);
                let body = self.maybe(85).then(|| {
                    let mut profiles = serde_json::Map::new();
                    for name in ["p", "q"] {
                        if self.maybe(60) {
                            let gwid = self.pick(&GATEWAYS);
                            let mut egress = self.level(json!({ "gwid": gwid }));
                            if self.maybe(60) {
                                egress["carrierid"] = json!(self.pick(&CARRIERS));
                            }
                            profiles.insert(name.into(), json!({"ingress_sip_ip": "192.0.2.1", "ingress_sip_port": 5060, "egress": egress}));
                        }
                    }
                    let mut doc = json!({"type": "host", "host": host, "sip_domain_name": sdn, "sip_profiles": profiles});
                    if self.maybe(15) {
                        doc["disabled"] = json!(true);
                    }
                    doc
                });
                sim.edit(PROVISIONING, &format!("host@{host}"), body);
            }
            35..=44 => {
                let id = format!("ruleset:example.net:{}", self.pick(&["r0", "r1", "r2"]));
                let body = self.maybe(85).then(|| {
                    let mut ruleset = self.level(json!({}));
                    if self.maybe(90) {
                        ruleset["database"] = json!(self.pick(&DATABASES));
                    }
                    ruleset
                });
                sim.edit(PROVISIONING, &id, body);
            }
            45..=49 => {
                let id = format!("destination:{}", self.pick(&["fr", "uk"]));
                let db = if self.maybe(50) {
                    PROVISIONING
                } else {
                    self.pick(&DATABASES)
                };
                let body = self.maybe(80).then(|| self.level(json!({})));
                sim.edit(db, &id, body);
            }
            50..=95 => {
                let db = self.pick(&DATABASES);
                let kind = if self.maybe(85) { "rule" } else { "prefix" };
                let id = format!("{kind}:{}", self.pick(&["", "3", "33", "331", "4", "+1"]));
                let body = self.maybe(85).then(|| {
                    let mut rule = self.level(json!({}));
                    if self.maybe(30) {
                        rule["destination"] = json!(self.pick(&["fr", "uk"]));
                    }
                    rule["gwlist"] = if self.maybe(95) {
                        let n = self.0.usize(..4);
                        Value::Array((0..n).map(|_| self.entry()).collect())
                    } else {
                        json!({"gwid": "g0"})
                    };
                    rule
                });
                sim.edit(db, &id, body);
            }
            _ => {
                let db = self.pick(&DATABASES);
                sim.delete_db(db);
            }
        }
    }
}

const GATEWAYS: [&str; 5] = ["g0", "g1", "g2", "g3", "g4"];
const CARRIERS: [&str; 3] = ["c0", "c1", "c2"];
const HOSTS: [&str; 2] = ["h0", "h1"];
const DATABASES: [&str; 3] = ["d0", "d1", "d2"];

fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("CALDERA_TEST_SEED") {
        Ok(text) => text.trim().parse().expect("CALDERA_TEST_SEED is a u64"),
        Err(_) => fastrand::u64(..),
    };
    eprintln!("{test}: seed {seed} (replay with CALDERA_TEST_SEED={seed})");
    seed
}

/// Lookups of `numbers` for every host of `HOSTS` and none, `rounds` times
/// over (the round-robin state carries on), answered alike by both tables.
fn assert_same_answers(a: &Table, b: &Table, rounds: usize, what: &dyn Fn() -> String) {
    for round in 0..rounds {
        for number in ["1", "3", "331", "3312", "+12", "4", "33", "+1"] {
            for host in [None, Some("h0"), Some("h1")] {
                assert_eq!(
                    a.lookup_text(number, host),
                    b.lookup_text(number, host),
                    "{}: round {round}, {number} asked by {host:?}",
                    what()
                );
            }
        }
    }
    assert_eq!(a.export(), b.export(), "{}: the exports", what());
}

/// A table with the same rules and entries and fresh round-robin state.
fn fresh(table: &Table) -> Table {
    Table::new(table.rules().clone(), table.expansions().to_vec())
}

#[test]
fn randomised_edits_equal_a_from_scratch_build() {
    let seed = test_seed("randomised_edits_equal_a_from_scratch_build");
    let mut generate = Gen(fastrand::Rng::with_seed(seed));
    for run in 0..20 {
        let mut sim = Sim::new();
        for step in 0..150 {
            generate.edit(&mut sim);
            if step % 10 != 9 {
                continue;
            }
            let what = || format!("seed {seed}, run {run}, step {step}");
            let expected = sim.scratch_build();
            assert_eq!(
                sim.outputs.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "{}: the set of outputs differs",
                what()
            );
            for (key, built) in &expected {
                assert_eq!(
                    &sim.outputs[key],
                    built,
                    "{}: output {key} differs from a from-scratch build",
                    what()
                );
            }
            // The tables served (recomposed edit after edit) answer what
            // tables composed from scratch answer.
            for (key, built) in &expected {
                let Built::Content { content, .. } = built else {
                    continue;
                };
                if model::directory_domain(key).is_some() {
                    continue;
                }
                let skeleton = Skeleton::compile(content).unwrap();
                let scratch = compose::compose(&skeleton, &Sim::directory_of(&expected, key));
                let served = fresh(&sim.served[key].table);
                assert_same_answers(&served, &scratch, 2, &|| format!("{}, {key}", what()));
            }
        }
        assert!(sim.rebuilt > 0);
    }
}

/// The composed tables answer exactly what the resolver they replaced
/// answered (same documents, same lookup sequence, round-robin included),
/// and report the same problems.
#[test]
fn composed_tables_answer_what_the_old_resolver_answered() {
    let seed = test_seed("composed_tables_answer_what_the_old_resolver_answered");
    let mut generate = Gen(fastrand::Rng::with_seed(seed));
    let mut compared = 0;
    for run in 0..30 {
        let mut sim = Sim::new();
        for step in 0..60 {
            generate.edit(&mut sim);
            if step % 6 != 5 {
                continue;
            }
            let index = sim.world.index();
            for key in RoutingBuilder.all_keys(&index) {
                if model::directory_domain(&key).is_some() {
                    continue;
                }
                let what = || format!("seed {seed}, run {run}, step {step}, {key}");
                let (sdn, groupid) = key.split_once(':').unwrap();
                let Some(old) = sim.world.legacy_table(&key) else {
                    assert!(build_table(&index, sdn, groupid).is_err(), "{}", what());
                    continue;
                };
                let (new, errors) = build_table(&index, sdn, groupid).unwrap();
                assert_same_answers(&old, &new, 3, &what);
                let old_errors = legacy_errors(&index, &key);
                assert_errors_match(&old_errors, &errors, &what);
                compared += 1;
            }
        }
    }
    assert!(compared > 100, "only {compared} tables compared");
}

/// The reference resolver's problems, as `build_table` lists them.
fn legacy_errors(index: &Index, key: &str) -> Vec<(String, String)> {
    match legacy::build(key, &mut Reads::new(index)) {
        Built::Content { issues, .. } => issues
            .into_iter()
            .map(|i| (i.doc.unwrap_or_default(), i.reason))
            .collect(),
        _ => Vec::new(),
    }
}

/// The problems a composed table reports are the reference's, except
/// where the documented differences apply: the ruleset's own invalid values
/// are always reported (the reference reported them only once a gateway
/// resolved), and a host document's problems are reported for every table
/// that uses one of its gateways.
fn assert_errors_match(old: &[(String, String)], new: &Value, what: &dyn Fn() -> String) {
    let new: BTreeSet<(String, String)> = new
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let doc = e["doc"].as_str().unwrap_or_default().to_string();
            (doc, e["reason"].as_str().unwrap().to_string())
        })
        .collect();
    let old: BTreeSet<(String, String)> = old.iter().cloned().collect();
    for missing in old.difference(&new) {
        // The reference reported a duplicate definition whenever a carrier
        // entry's view met it, even for a gateway of another carrier.
        assert!(
            missing.1.contains("is also defined by"),
            "{}: {missing:?} is no longer reported (now {new:?})",
            what()
        );
    }
    for added in new.difference(&old) {
        assert!(
            added.0.starts_with("ruleset:") || added.0.starts_with("host@"),
            "{}: {added:?} is reported, the reference did not (it had {old:?})",
            what()
        );
    }
}

#[test]
fn edits_rebuild_only_the_outputs_they_reach() {
    let mut sim = Sim::new();
    sim.edit(
        PROVISIONING,
        "gateway:example.net:g0",
        Some(json!({"address": "a:1", "carrierid": "c0"})),
    );
    sim.edit(
        PROVISIONING,
        "gateway:example.net:g1",
        Some(json!({"address": "b:1", "carrierid": "c1"})),
    );
    sim.edit(
        PROVISIONING,
        "ruleset:example.net:r0",
        Some(json!({"database": "d0"})),
    );
    sim.edit(
        PROVISIONING,
        "ruleset:example.net:r1",
        Some(json!({"database": "d1"})),
    );
    sim.edit(
        "d0",
        "rule:",
        Some(json!({"gwlist": [{"carrierid": "c0"}]})),
    );
    sim.edit("d1", "rule:", Some(json!({"gwlist": [{"gwid": "g1"}]})));
    let directory = "gateways@example.net";
    let rebuilt = |sim: &mut Sim, db: &str, id: &str, body: Value| {
        sim.edit(db, id, Some(body));
        sim.last_rebuilt.clone()
    };
    assert_eq!(
        rebuilt(
            &mut sim,
            PROVISIONING,
            "carrier:example.net:c0",
            json!({"try": 1})
        ),
        [directory],
        "a carrier edit rebuilds its domain's directory, no table"
    );
    assert_eq!(
        rebuilt(
            &mut sim,
            PROVISIONING,
            "carrier:example.net:c2",
            json!({"try": 1})
        ),
        [directory],
        "nobody uses c2: the directory only"
    );
    assert_eq!(
        rebuilt(
            &mut sim,
            PROVISIONING,
            "gateway:example.net:g9",
            json!({"address": "x:1", "carrierid": "c0"})
        ),
        [directory],
        "a new member of c0"
    );
    assert_eq!(
        rebuilt(&mut sim, "d1", "rule:4", json!({"gwlist": []})),
        ["example.net:r1"],
        "a rule edit rebuilds its ruleset"
    );
    assert_eq!(
        rebuilt(
            &mut sim,
            PROVISIONING,
            "host@h0",
            json!({"host": "h0", "sip_domain_name": "example.net",
        "sip_profiles": {"p": {"ingress_sip_ip": "192.0.2.1", "ingress_sip_port": 5060, "egress_gwid": "g7"}}})
        ),
        [directory],
        "a host defining gateways"
    );
    assert_eq!(
        rebuilt(
            &mut sim,
            PROVISIONING,
            "gateway:other.net:g0",
            json!({"address": "y:1"})
        ),
        ["gateways@other.net"],
        "another domain's gateway"
    );
    // Switching r1 to database d0 re-reads rules from d0 and stops following d1.
    assert_eq!(
        rebuilt(
            &mut sim,
            PROVISIONING,
            "ruleset:example.net:r1",
            json!({"database": "d0"})
        ),
        ["example.net:r1"]
    );
    assert_eq!(sim.followed.values().collect::<Vec<_>>(), ["d0"]);
    assert_eq!(
        sim.outputs.keys().collect::<Vec<_>>(),
        [
            "example.net:r0",
            "example.net:r1",
            "gateways@example.net",
            "gateways@other.net"
        ]
    );
}

/// After a directory change the service re-resolves only the entries that
/// reach what changed: a table none of whose entries resolves differently
/// is kept whole (its round-robin state too).
#[test]
fn a_directory_change_recomposes_only_the_tables_it_reaches() {
    let mut w = World::default();
    for (r, db) in [("r0", "d0"), ("r1", "d1")] {
        w.prov(json!({"_id": format!("ruleset:example.net:{r}"), "database": db}));
    }
    for (gw, carrier) in [("g0", "c0"), ("g1", "c0"), ("g2", "c1"), ("g3", "c1")] {
        w.prov(
            json!({"_id": format!("gateway:example.net:{gw}"), "address": format!("{gw}:5060"),
                      "carrierid": carrier}),
        );
    }
    w.put(
        "d0",
        json!({"_id": "rule:", "gwlist": [{"carrierid": "c0"}]}),
    );
    w.put(
        "d0",
        json!({"_id": "rule:3", "attrs": {"x": 1}, "gwlist": [{"gwid": "g2"}]}),
    );
    w.put(
        "d1",
        json!({"_id": "rule:", "gwlist": [{"carrierid": "c1"}]}),
    );
    let compose_with = |w: &World, key: &str| {
        let index = w.index();
        let build = |k: &str| match RoutingBuilder.build(k, &mut Reads::new(&index)) {
            Built::Content { content, .. } => content,
            other => panic!("{k}: {other:?}"),
        };
        let skeleton = Skeleton::compile(&build(key)).unwrap();
        let directory = Directory::compile(&build("gateways@example.net")).unwrap();
        let table = compose::compose(&skeleton, &directory);
        (skeleton, directory, table)
    };
    let (s0, d0, t0) = compose_with(&w, "example.net:r0");
    let (s1, d1, t1) = compose_with(&w, "example.net:r1");
    // c1 gains a `try`: r1 resolves differently, r0 does not.
    let mut edited = w.clone();
    edited.prov(json!({"_id": "carrier:example.net:c1", "try": 1}));
    let (_, new_directory, _) = compose_with(&edited, "example.net:r0");
    assert!(compose::recompose(&s0, &t0, &d0, &new_directory).is_none());
    let t1 = compose::recompose(&s1, &t1, &d1, &new_directory).expect("r1 changed");
    assert_same_answers(&t1, &edited.table("example.net:r1"), 2, &|| "r1".into());
    // A gateway r0 names through a rule with its own attrs.
    edited.prov(json!({"_id": "gateway:example.net:g2", "address": "g2:5070", "carrierid": "c1"}));
    let (_, newer, _) = compose_with(&edited, "example.net:r0");
    let t0 = compose::recompose(&s0, &t0, &new_directory, &newer).expect("r0 changed");
    assert_same_answers(&t0, &edited.table("example.net:r0"), 2, &|| "r0".into());
}

// ---- the service: tables composed from the mirror ------------------------------

/// Every output of `w` as the writer stores it in the mirror.
fn mirror_entries(w: &World) -> Vec<crate::cache::CacheEntry> {
    let index = w.index();
    RoutingBuilder
        .all_keys(&index)
        .into_iter()
        .filter_map(|key| {
            let Built::Content { content, issues } =
                RoutingBuilder.build(&key, &mut Reads::new(&index))
            else {
                return None;
            };
            let errors: Vec<Value> = issues
                .iter()
                .map(|i| json!({"db": i.source.as_ref(), "doc": i.doc, "reason": i.reason}))
                .collect();
            let errors = Value::Array(errors);
            Some(crate::cache::CacheEntry {
                id: format!("routing:{key}"),
                rev: "1-a".into(),
                domain: "routing".into(),
                key,
                hash: crate::cache::content_hash(&content, &errors, false),
                content: content.into(),
                errors,
                stale: false,
                bytes: 0,
            })
        })
        .collect()
}

fn leader(service: &super::service::RoutingService, ruleset: &str) -> String {
    let answer = service.lookup("example.net", ruleset, "1", None).unwrap();
    gwids(&answer)[0].clone()
}

/// Decision 12 with two documents: a directory change that no entry of a
/// table resolves differently keeps the table and its round-robin state;
/// one that reaches it starts the table over.
#[test]
fn the_service_keeps_round_robin_state_unless_the_change_reaches_the_table() {
    use crate::cache::mirror::Mirror;
    let mut w = World::default();
    for (r, db) in [("r0", "d0"), ("r1", "d1")] {
        w.prov(json!({"_id": format!("ruleset:example.net:{r}"), "database": db}));
    }
    for (gw, carrier) in [("g0", "c0"), ("g1", "c0"), ("g2", "c1"), ("g3", "c1")] {
        w.prov(
            json!({"_id": format!("gateway:example.net:{gw}"), "address": format!("{gw}:5060"),
                      "carrierid": carrier}),
        );
    }
    w.put("d0", json!({"_id": "rule:", "gwlist": [{"gwid": "g0", "priority": 0}, {"gwid": "g1", "priority": 0}]}));
    w.put(
        "d1",
        json!({"_id": "rule:", "gwlist": [{"carrierid": "c1"}]}),
    );
    let mirror = Arc::new(Mirror::default());
    mirror.replace_all(mirror_entries(&w));
    let service = super::service::RoutingService::new(mirror.clone());
    assert_eq!(
        [leader(&service, "r0"), leader(&service, "r1")],
        ["g0", "g2"]
    );
    // c1's try reaches r1 only: r0 goes on where it was, r1 starts over.
    w.prov(json!({"_id": "carrier:example.net:c1", "try": 1}));
    mirror.replace_all(mirror_entries(&w));
    assert_eq!(leader(&service, "r0"), "g1", "r0 keeps its state");
    assert_eq!(leader(&service, "r1"), "g2", "r1 is a new table");
    assert_eq!(
        gwids(&service.lookup("example.net", "r1", "1", None).unwrap()),
        ["g3"],
        "try 1 rotates"
    );
    // A gateway r0 names: r0 starts over.
    w.prov(json!({"_id": "gateway:example.net:g1", "address": "g1:5070", "carrierid": "c0"}));
    mirror.replace_all(mirror_entries(&w));
    assert_eq!(leader(&service, "r0"), "g0");
    let answer = service.lookup("example.net", "r0", "1", None).unwrap();
    assert_eq!(gateway(&answer, "g1")["address"], json!("g1:5070"));
}

/// The export lists the ruleset's errors and those of the directory that
/// concern the gateways and carriers the table reaches; its `hash` follows
/// both documents.
#[test]
fn the_export_reports_the_problems_of_what_the_table_reaches() {
    use crate::cache::mirror::Mirror;
    let mut w = base();
    w.prov(json!({"_id": "gateway:example.net:a", "address": "a:5060", "weight": "heavy"}));
    w.prov(json!({"_id": "gateway:example.net:b", "address": "b:5060", "priority": "high"}));
    w.put("rules", json!({"_id": "rule:", "gwlist": [{"gwid": "a"}]}));
    let mirror = Arc::new(Mirror::default());
    mirror.replace_all(mirror_entries(&w));
    let service = super::service::RoutingService::new(mirror.clone());
    let export = service.export("example.net", "default").unwrap();
    let docs: Vec<&str> = export["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["doc"].as_str().unwrap())
        .collect();
    assert_eq!(
        docs,
        ["gateway:example.net:a"],
        "b is not reached: {export:#}"
    );
    let before = export["hash"].clone();
    w.prov(json!({"_id": "gateway:example.net:b", "address": "b:5061"}));
    mirror.replace_all(mirror_entries(&w));
    let after = service.export("example.net", "default").unwrap();
    assert_ne!(after["hash"], before, "the directory changed");
    assert_eq!(after["rules"], export["rules"]);
}

/// A domain without gateways has no directory: its tables still answer,
/// every entry rejected.
#[test]
fn a_domain_without_gateways_still_routes_its_rules() {
    use crate::cache::mirror::Mirror;
    let mut w = World::default();
    w.prov(json!({"_id": "ruleset:example.net:default", "database": "rules"}));
    w.put(
        "rules",
        json!({"_id": "rule:", "gwlist": [{"gwid": "a"}, {"carrierid": "c"}]}),
    );
    let entries = mirror_entries(&w);
    assert_eq!(entries.len(), 1, "no directory");
    let mirror = Arc::new(Mirror::default());
    mirror.replace_all(entries);
    let service = super::service::RoutingService::new(mirror);
    let answer = service.lookup("example.net", "default", "1", None).unwrap();
    assert_eq!(
        rejected_reasons(&answer),
        [
            "no gateway a in example.net",
            "carrier c has no gateways in example.net"
        ]
    );
}
