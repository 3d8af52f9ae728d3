//! A ruleset's cache document (pure; reads go through the recording
//! `Reads`, so every document consulted becomes a dependency): its rules,
//! each a list of references to the ruleset's distinct gwlist entries, and
//! those entries, each naming a gateway or a carrier with the overlay of
//! the levels above the gateway (ruleset → destination → rule → entry)
//! and its position.
//!
//! Nothing here reads a gateway, carrier or host: those live in the
//! domain's gateway directory (`directory`), and the service composes the
//! two (`compose`). So a carrier, gateway or host edit never rebuilds a
//! ruleset's document; a rule, destination or ruleset edit does.
//!
//! For each rule: the destination (ruleset database first, then
//! provisioning), then every gwlist entry in order. Entries are memoised
//! by what they depend on (destination, the rule's own attributes, the
//! entry, its position), overlays by their content: rules share almost
//! everything, and a rule that adds nothing costs a hash lookup.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde_json::{Map, Value, json};

use super::model::{
    self, Acc, Origin, Overlay, PROVISIONING, ruleset_source, sets_attributes, text,
};
use crate::domains::Issue;
use crate::rebuild::index::{Reads, SourceDoc};

/// What a table build needs to know about its ruleset.
pub struct Ruleset<'a> {
    pub id: &'a str,
    pub sip_domain_name: &'a str,
    pub groupid: &'a str,
    pub level: &'a Map<String, Value>,
    /// The validated database name, if any.
    pub database: Option<&'a str>,
}

/// Builds the cache document content of `ruleset`, with the problems found.
pub fn table(ruleset: &Ruleset<'_>, reads: &mut Reads<'_>) -> (Value, Vec<Issue>) {
    let mut issues = Vec::new();
    let origin = Origin {
        source: PROVISIONING,
        doc: ruleset.id,
        path: "",
    };
    Acc::default().apply(ruleset.level, origin, &mut issues);
    let mut ruleset_overlay = Overlay::default();
    ruleset_overlay.apply(ruleset.level);
    let mut build = TableBuild {
        ruleset_overlay,
        rules_source: ruleset.database.map(ruleset_source),
        issues,
        destinations: HashMap::new(),
        overlays: Vec::new(),
        interned: HashMap::new(),
        entries: Vec::new(),
        memo: HashMap::new(),
    };
    let rules = build.rules(reads);
    let mut issues = build.issues;
    issues.sort();
    issues.dedup();
    let mut disabled = Vec::new();
    let mut table = Map::new();
    for (prefix, rule) in rules {
        match rule {
            Some(rule) => {
                table.insert(prefix, rule);
            }
            None => disabled.push(prefix),
        }
    }
    let content = json!({
        "ruleset": ruleset.id,
        "sip_domain_name": ruleset.sip_domain_name,
        "groupid": ruleset.groupid,
        "database": ruleset.database,
        "overlays": build.overlays,
        "entries": build.entries,
        "rules": table,
        "disabled_rules": disabled,
    });
    (content, issues)
}

struct TableBuild {
    ruleset_overlay: Overlay,
    rules_source: Option<String>,
    issues: Vec<Issue>,
    destinations: HashMap<String, Option<Rc<Map<String, Value>>>>,
    overlays: Vec<Value>,
    interned: HashMap<String, usize>,
    /// Distinct gwlist entries, and the memo that finds them again.
    entries: Vec<Value>,
    memo: HashMap<String, usize>,
}

/// What a rule adds on top of the ruleset: its destination and itself.
struct Layers<'l> {
    destination: Option<&'l Map<String, Value>>,
    rule: &'l Map<String, Value>,
    /// What identifies the two for the memo.
    key: String,
}

/// The attribute fields of a level, as memo key material.
fn attribute_key(level: &Map<String, Value>) -> String {
    if !sets_attributes(level) {
        return String::new();
    }
    let fields: Map<String, Value> = level
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "disabled"
                    | "response_timeout"
                    | "progress_timeout"
                    | "answer_timeout"
                    | "dialog_timeout"
                    | "priority"
                    | "weight"
                    | "local_gateway_extra_priority"
                    | "attrs"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(fields).to_string()
}

impl TableBuild {
    /// Every rule by prefix; `None` for a disabled rule.
    fn rules(&mut self, reads: &mut Reads<'_>) -> BTreeMap<String, Option<Value>> {
        let mut rules: BTreeMap<String, (bool, Option<Value>)> = BTreeMap::new();
        let Some(source) = self.rules_source.clone() else {
            return BTreeMap::new();
        };
        let docs: Vec<_> = reads.all(&source).cloned().collect();
        for doc in docs {
            let Some((prefix, spec_form)) = model::rule_prefix(&doc.id) else {
                continue;
            };
            let origin = Origin {
                source: &source,
                doc: &doc.id,
                path: "",
            };
            if !model::valid_prefix(prefix) {
                self.issues.push(origin.issue(
                    "the prefix is not 0-64 characters of [0-9A-Za-z+#*_-]; the rule is ignored",
                ));
                continue;
            }
            // `prefix:` ids sort before `rule:` ids; the spec's form wins.
            match (rules.get(prefix).map(|(spec, _)| *spec), spec_form) {
                (Some(true), false) => {
                    self.issues.push(origin.issue(format!(
                        "rule:{prefix} also exists and takes precedence; ignored"
                    )));
                    continue;
                }
                (Some(false), true) => self.issues.push(Issue::doc(
                    &source,
                    &format!("prefix:{prefix}"),
                    format!("rule:{prefix} also exists and takes precedence; ignored"),
                )),
                _ => {}
            }
            let Some(level) = object(&doc, origin, &mut self.issues) else {
                continue;
            };
            let rule = self.rule(&source, &doc.id, prefix, &level, reads);
            rules.insert(prefix.to_string(), (spec_form, rule));
        }
        rules.into_iter().map(|(p, (_, r))| (p, r)).collect()
    }

    /// One rule's table entry; `None` when the rule is disabled (decision 8:
    /// the lookup falls through to a shorter prefix).
    fn rule(
        &mut self,
        source: &str,
        id: &str,
        prefix: &str,
        level: &Map<String, Value>,
        reads: &mut Reads<'_>,
    ) -> Option<Value> {
        let origin = Origin {
            source,
            doc: id,
            path: "",
        };
        let mut own = Acc::default();
        own.apply(level, origin, &mut self.issues);
        if own.disabled() {
            return None;
        }
        let mut warnings: Vec<String> = Vec::new();
        let mut rejected: Vec<Value> = Vec::new();
        let destination_name = level.get("destination").and_then(Value::as_str);
        let destination = destination_name.and_then(|name| {
            let found = self.destination(name, source, reads);
            if found.is_none() {
                warnings.push(format!(
                    "destination {name:?} does not exist; the rule routes without it"
                ));
            }
            found
        });
        let entries: &[Value] = match level.get("gwlist") {
            None | Some(Value::Null) => &[],
            Some(Value::Array(list)) => list,
            Some(_) => {
                self.issues
                    .push(origin.issue("gwlist is not a list; the rule has no gateways"));
                rejected.push(json!({ "reason": "gwlist is not a list" }));
                &[]
            }
        };
        let layers = Layers {
            destination: destination.as_deref(),
            rule: level,
            key: format!(
                "{}\u{0}{}\u{0}{}",
                destination_name
                    .filter(|_| destination.is_some())
                    .unwrap_or(""),
                destination
                    .as_deref()
                    .map(attribute_key)
                    .unwrap_or_default(),
                attribute_key(level)
            ),
        };
        let count = entries.len();
        let mut expanded = Vec::with_capacity(count);
        for (i, entry) in entries.iter().enumerate() {
            let path = format!("gwlist[{i}].");
            let entry_origin = Origin {
                source,
                doc: id,
                path: &path,
            };
            let Some(entry_level) = entry.as_object() else {
                rejected.push(json!({ "entry": i, "reason": "the entry is not an object" }));
                continue;
            };
            // Validated per rule (the memo below may skip the fold).
            Acc::default().apply(entry_level, entry_origin, &mut self.issues);
            try_value(entry_level, entry_origin, &mut self.issues);
            let position = count - 1 - i;
            expanded.push(json!([i, self.entry(&layers, entry_level, position)]));
        }
        if count == 0 && rejected.is_empty() {
            warnings.push("the rule has no gateways".into());
        }
        let mut out = Map::new();
        if id != format!("rule:{prefix}") {
            out.insert("rule".into(), json!(id));
        }
        if let Some(name) = destination_name {
            out.insert("destination".into(), json!(name));
        }
        out.insert("entries".into(), Value::Array(expanded));
        if !rejected.is_empty() {
            out.insert("rejected".into(), Value::Array(rejected));
        }
        if !warnings.is_empty() {
            out.insert("warnings".into(), json!(warnings));
        }
        Some(Value::Object(out))
    }

    /// The index of one distinct gwlist entry at `position`: what it names
    /// (decisions 6 and 7), its overlay and its position.
    fn entry(&mut self, layers: &Layers<'_>, entry: &Map<String, Value>, position: usize) -> usize {
        let key = format!(
            "{}\u{0}{}\u{0}{position}",
            layers.key,
            Value::Object(entry.clone())
        );
        if let Some(index) = self.memo.get(&key) {
            return *index;
        }
        let mut out = Map::new();
        let named = if let Some(gwid) = text(entry.get("gwid")) {
            out.insert("gwid".into(), json!(gwid));
            true
        } else if let Some(carrierid) = text(entry.get("carrierid")) {
            out.insert("carrierid".into(), json!(carrierid));
            if let Some(tries) = try_value(entry, Origin::NOWHERE, &mut Vec::new()) {
                out.insert("try".into(), json!(tries));
            }
            true
        } else {
            false
        };
        if named {
            let mut overlay = self.ruleset_overlay.clone();
            for level in [layers.destination, Some(layers.rule), Some(entry)]
                .into_iter()
                .flatten()
            {
                overlay.apply(level);
            }
            out.insert("overlay".into(), json!(self.intern(overlay.to_json())));
        }
        out.insert("position".into(), json!(position));
        let index = self.entries.len();
        self.entries.push(Value::Object(out));
        self.memo.insert(key, index);
        index
    }

    fn intern(&mut self, overlay: Value) -> usize {
        let key = overlay.to_string();
        if let Some(index) = self.interned.get(&key) {
            return *index;
        }
        let index = self.overlays.len();
        self.overlays.push(overlay);
        self.interned.insert(key, index);
        index
    }

    /// `destination:{name}` from the ruleset database, else provisioning.
    fn destination(
        &mut self,
        name: &str,
        rules_source: &str,
        reads: &mut Reads<'_>,
    ) -> Option<Rc<Map<String, Value>>> {
        if let Some(found) = self.destinations.get(name) {
            return found.clone();
        }
        let id = format!("destination:{name}");
        let mut found = None;
        for source in [rules_source, PROVISIONING] {
            if let Some(doc) = reads.get(source, &id) {
                let origin = Origin {
                    source,
                    doc: &id,
                    path: "",
                };
                found = object(doc, origin, &mut self.issues).map(Rc::new);
                if let Some(level) = &found {
                    Acc::default().apply(level, origin, &mut self.issues);
                }
                break;
            }
        }
        self.destinations.insert(name.to_string(), found.clone());
        found
    }
}

/// The document as an object, or a reported problem.
pub fn object(
    doc: &SourceDoc,
    origin: Origin<'_>,
    issues: &mut Vec<Issue>,
) -> Option<Map<String, Value>> {
    match doc.json() {
        Some(Value::Object(map)) => Some(map),
        Some(_) => {
            issues.push(origin.issue("the document is not a JSON object; ignored"));
            None
        }
        None => {
            issues.push(origin.issue("the document cannot be read; ignored"));
            None
        }
    }
}

/// A positive integer `try`, or a reported problem.
pub fn try_value(
    level: &Map<String, Value>,
    origin: Origin<'_>,
    issues: &mut Vec<Issue>,
) -> Option<usize> {
    match level.get("try") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|t| t > 0) => {
            n.as_u64().map(|t| t as usize)
        }
        Some(_) => {
            issues.push(origin.issue("try: not a positive integer; ignored"));
            None
        }
    }
}
