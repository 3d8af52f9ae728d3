//! The resolver as it was before the gateway directory (test-only): one
//! cache document per ruleset holding every resolved gateway, its table
//! compiled from that document alone. Kept verbatim as the reference the
//! composed tables are compared with (`tests.rs`): for every input, every
//! lookup must answer exactly what this one answers.
//!
//! Its views are the old ones (`routing:gw:{sdn}:{gwid}`, every document
//! defining that gateway; `routing:carrier:{sdn}:{carrierid}`, every
//! document defining a member); `view_keys` files documents under them.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde_json::{Map, Value, json};

use std::sync::Arc;

use super::model::{
    self, Acc, GatewayDef, Origin, PROVISIONING, number, ruleset_source, sets_attributes,
};
use super::table::{Expansion, Gateway, Member, Rules, Table};
use crate::couch::Body;
use crate::domains::{Built, Issue};
use crate::rebuild::index::{Reads, SourceDoc};

fn gateway_view(sip_domain_name: &str, gwid: &str) -> String {
    format!("routing:gw:{sip_domain_name}:{gwid}")
}

fn carrier_view(sip_domain_name: &str, carrierid: &str) -> String {
    format!("routing:carrier:{sip_domain_name}:{carrierid}")
}

/// The old builder's view keys (for ruleset documents, the new builder's
/// `routing:rulesets` serves both).
pub fn view_keys(source: &str, doc: &SourceDoc) -> Vec<String> {
    if source != PROVISIONING || doc.id.starts_with("ruleset:") {
        return Vec::new();
    }
    let json = doc.json();
    let mut defs = Vec::new();
    if let Some((sdn, gwid)) = model::split_id(&doc.id, "gateway") {
        match json
            .as_ref()
            .and_then(|j| model::gateway_from_doc(&doc.id, j))
        {
            Some(def) => defs.push(def),
            None => return vec![gateway_view(sdn, gwid)],
        }
    } else if let Some(json) = json.filter(|j| model::is_host(&doc.id, Some(j))) {
        defs = model::gateways_from_host(&doc.id, &json);
    }
    let mut keys: Vec<String> = Vec::new();
    for def in defs {
        keys.push(gateway_view(&def.sip_domain_name, &def.gwid));
        if let Some(carrierid) = &def.carrierid {
            keys.push(carrier_view(&def.sip_domain_name, carrierid));
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The old builder's `build` of a ruleset key (`{sdn}:{groupid}`).
pub fn build(key: &str, reads: &mut Reads<'_>) -> Built {
    let id = format!("ruleset:{key}");
    let Some((sdn, groupid)) = model::split_id(&id, "ruleset") else {
        return Built::Absent;
    };
    let Some(doc) = reads.get(PROVISIONING, &id) else {
        return Built::Absent;
    };
    let json = match &doc.body {
        Body::Json(text) => text.parse(),
        Body::Malformed(reason) => {
            return Built::Failed {
                issues: vec![Issue::doc(PROVISIONING, &id, reason.clone())],
            };
        }
    };
    let Value::Object(level) = &json else {
        return Built::Failed {
            issues: vec![Issue::doc(
                PROVISIONING,
                &id,
                "the ruleset is not a JSON object",
            )],
        };
    };
    let mut issues = Vec::new();
    let database = super::ruleset_database(&json)
        .map_err(|why| issues.push(Issue::doc(PROVISIONING, &id, why)))
        .ok();
    let ruleset = Ruleset {
        id: &id,
        sip_domain_name: sdn,
        groupid,
        level,
        database,
    };
    let (content, found) = table(&ruleset, reads);
    issues.extend(found);
    Built::Content { content, issues }
}

/// The old `Table::compile`: a table from the old document alone.
pub fn compile(content: &Value) -> Result<Table, String> {
    let list = |name: &str| {
        content
            .get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{name} is not a list"))
    };
    let gateways = list("gateways")?
        .iter()
        .map(compile_gateway)
        .collect::<Result<Vec<_>, _>>()?;
    let expansions = list("entries")?
        .iter()
        .map(|e| compile_expansion(e, &gateways))
        .collect::<Result<Vec<_>, _>>()?;
    let rules = Rules::compile(content, expansions.len())?;
    Ok(Table::new(Arc::new(rules), expansions))
}

fn compile_gateway(variant: &Value) -> Result<Arc<Gateway>, String> {
    let object = variant.as_object().ok_or("a gateway is not an object")?;
    let local_extra = object
        .get("local_gateway_extra_priority")
        .and_then(Value::as_f64)
        .unwrap_or(super::model::DEFAULT_LOCAL_EXTRA_PRIORITY);
    Ok(Arc::new(Gateway::from_fields(object, local_extra)))
}

fn compile_expansion(
    expansion: &Value,
    gateways: &[Arc<Gateway>],
) -> Result<Arc<Expansion>, String> {
    let mut candidates = Vec::new();
    for member in expansion["gateways"]
        .as_array()
        .ok_or("an entry's gateways is not a list")?
    {
        let gateway = member[0].as_u64().ok_or("a gateway reference")? as usize;
        let gateway = gateways.get(gateway).ok_or("out of range")?.clone();
        let priority = member[1].as_f64().ok_or("a priority is not a number")?;
        candidates.push(Member::plain(gateway, priority));
    }
    Ok(Arc::new(Expansion {
        candidates,
        tries: expansion
            .get("try")
            .map(|t| t.as_u64().map(|t| t as usize).ok_or("try"))
            .transpose()?,
        carrierid: expansion.get("carrierid").cloned().unwrap_or(Value::Null),
        rejected: expansion
            .get("rejected")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    }))
}

/// What a table build needs to know about its ruleset.
pub struct Ruleset<'a> {
    pub id: &'a str,
    pub sip_domain_name: &'a str,
    pub groupid: &'a str,
    pub level: &'a Map<String, Value>,
    /// The validated database name, if any.
    pub database: Option<&'a str>,
}

/// Builds the table content of `ruleset`, with the problems found.
pub fn table(ruleset: &Ruleset<'_>, reads: &mut Reads<'_>) -> (Value, Vec<Issue>) {
    let mut build = TableBuild {
        sdn: ruleset.sip_domain_name.to_string(),
        ruleset_level: ruleset.level,
        ruleset_id: ruleset.id,
        rules_source: ruleset.database.map(ruleset_source),
        issues: Vec::new(),
        canonical: HashMap::new(),
        members: HashMap::new(),
        carriers: HashMap::new(),
        destinations: HashMap::new(),
        base: HashMap::new(),
        variants: Vec::new(),
        interned: HashMap::new(),
        expansions: Vec::new(),
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
        "gateways": build.variants,
        "entries": build.expansions,
        "rules": table,
        "disabled_rules": disabled,
    });
    (content, issues)
}

/// A gateway folded up to the ruleset level, shared by every rule that
/// adds nothing more specific.
struct Base {
    acc: Acc,
    /// Its interned variant (when enabled and addressed).
    variant: Option<usize>,
}

struct TableBuild<'a> {
    sdn: String,
    ruleset_level: &'a Map<String, Value>,
    ruleset_id: &'a str,
    rules_source: Option<String>,
    issues: Vec<Issue>,
    canonical: HashMap<String, Option<Rc<GatewayDef>>>,
    members: HashMap<String, Vec<Rc<GatewayDef>>>,
    carriers: HashMap<String, Option<Rc<Map<String, Value>>>>,
    destinations: HashMap<String, Option<Rc<Map<String, Value>>>>,
    base: HashMap<String, Rc<Base>>,
    variants: Vec<Value>,
    interned: HashMap<String, usize>,
    /// Resolved gwlist entries, and the memo that finds them again.
    expansions: Vec<Value>,
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

impl<'a> TableBuild<'a> {
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
            expanded.push(json!([
                i,
                self.expansion(&layers, entry_level, position, reads)
            ]));
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

    /// The interned expansion of one gwlist entry at `position`.
    fn expansion(
        &mut self,
        layers: &Layers<'_>,
        entry: &Map<String, Value>,
        position: usize,
        reads: &mut Reads<'_>,
    ) -> usize {
        let key = format!(
            "{}\u{0}{}\u{0}{position}",
            layers.key,
            Value::Object(entry.clone())
        );
        if let Some(index) = self.memo.get(&key) {
            return *index;
        }
        let expansion = self.expand(layers, entry, position as f64, reads);
        let index = self.expansions.len();
        self.expansions.push(expansion);
        self.memo.insert(key, index);
        index
    }

    /// Decisions 6 and 7: a gwid entry is one gateway; a carrier entry its
    /// carrier's usable gateways, with `try` when it selects fewer.
    fn expand(
        &mut self,
        layers: &Layers<'_>,
        entry: &Map<String, Value>,
        position: f64,
        reads: &mut Reads<'_>,
    ) -> Value {
        let mut gateways = Vec::new();
        let mut rejected = Vec::new();
        let mut out = Map::new();
        if let Some(gwid) = text(entry.get("gwid")) {
            match self.canonical(&gwid, reads) {
                None => rejected.push(json!({
                    "gwid": gwid, "reason": format!("no gateway {gwid} in {}", self.sdn),
                })),
                Some(def) => self.candidate(
                    &def,
                    layers,
                    entry,
                    position,
                    reads,
                    &mut gateways,
                    &mut rejected,
                ),
            }
            out.insert("gwid".into(), json!(gwid));
        } else if let Some(carrierid) = text(entry.get("carrierid")) {
            let members = self.members(&carrierid, reads);
            if members.is_empty() {
                rejected.push(json!({
                    "carrierid": carrierid,
                    "reason": format!("carrier {carrierid} has no gateways in {}", self.sdn),
                }));
            }
            for def in &members {
                self.candidate(
                    def,
                    layers,
                    entry,
                    position,
                    reads,
                    &mut gateways,
                    &mut rejected,
                );
            }
            let usable = gateways.len();
            let carrier = self.carrier(&carrierid, reads);
            let mut ignored = Vec::new();
            let origin = Origin {
                source: "",
                doc: "",
                path: "",
            };
            let tries = try_value(entry, origin, &mut ignored)
                .or_else(|| try_value(carrier.as_deref()?, origin, &mut ignored));
            let tries = tries.map_or(usable, |t| t.min(usable));
            if usable > 0 && tries < usable {
                out.insert("try".into(), json!(tries));
            }
            out.insert("carrierid".into(), json!(carrierid));
        } else {
            rejected.push(json!({ "reason": "the entry has neither gwid nor carrierid" }));
        }
        out.insert("gateways".into(), Value::Array(gateways));
        if !rejected.is_empty() {
            out.insert("rejected".into(), Value::Array(rejected));
        }
        Value::Object(out)
    }

    /// Folds the rule's levels onto a gateway: `[variant, priority]`, or a
    /// rejection.
    #[allow(clippy::too_many_arguments)]
    fn candidate(
        &mut self,
        def: &Rc<GatewayDef>,
        layers: &Layers<'_>,
        entry: &Map<String, Value>,
        position: f64,
        reads: &mut Reads<'_>,
        gateways: &mut Vec<Value>,
        rejected: &mut Vec<Value>,
    ) {
        let base = self.base(def, reads);
        let reject = |reason: &str| json!({ "gwid": def.gwid, "carrierid": def.carrierid, "reason": reason });
        let plain = !layers.destination.is_some_and(sets_attributes)
            && !sets_attributes(layers.rule)
            && !sets_attributes(entry);
        let (disabled, priority, variant) = if plain {
            (base.acc.disabled(), base.acc.priority, base.variant)
        } else {
            let mut acc = base.acc.clone();
            let mut ignored = Vec::new();
            let origin = Origin {
                source: "",
                doc: "",
                path: "",
            };
            for level in [layers.destination, Some(layers.rule), Some(entry)]
                .into_iter()
                .flatten()
            {
                acc.apply(level, origin, &mut ignored);
            }
            let variant = (!acc.disabled() && def.address.is_some())
                .then(|| self.intern(variant_json(def, &acc)));
            (acc.disabled(), acc.priority, variant)
        };
        if disabled {
            rejected.push(reject("disabled"));
            return;
        }
        let Some(variant) = variant else {
            let reason = format!("gateway {} has no address", def.gwid);
            rejected.push(reject(&reason));
            return;
        };
        gateways.push(json!([variant, number(priority.unwrap_or(position))]));
    }

    /// A gateway folded over default → carrier → gateway → ruleset.
    fn base(&mut self, def: &Rc<GatewayDef>, reads: &mut Reads<'_>) -> Rc<Base> {
        if let Some(base) = self.base.get(&def.gwid) {
            return base.clone();
        }
        let mut acc = Acc::default();
        if let Some(carrierid) = &def.carrierid
            && let Some(carrier) = self.carrier(carrierid, reads)
        {
            let id = format!("carrier:{}:{carrierid}", self.sdn);
            acc.apply(
                &carrier,
                Origin {
                    source: PROVISIONING,
                    doc: &id,
                    path: "",
                },
                &mut self.issues,
            );
        }
        let gateway_origin = Origin {
            source: PROVISIONING,
            doc: &def.doc,
            path: &def.path,
        };
        acc.apply(&def.level, gateway_origin, &mut self.issues);
        for problem in &def.problems {
            self.issues.push(gateway_origin.issue(problem));
        }
        let ruleset_origin = Origin {
            source: PROVISIONING,
            doc: self.ruleset_id,
            path: "",
        };
        acc.apply(self.ruleset_level, ruleset_origin, &mut self.issues);
        let variant = (!acc.disabled() && def.address.is_some())
            .then(|| self.intern(variant_json(def, &acc)));
        let base = Rc::new(Base { acc, variant });
        self.base.insert(def.gwid.clone(), base.clone());
        base
    }

    fn intern(&mut self, variant: Value) -> usize {
        let key = variant.to_string();
        if let Some(index) = self.interned.get(&key) {
            return *index;
        }
        let index = self.variants.len();
        self.variants.push(variant);
        self.interned.insert(key, index);
        index
    }

    /// The winning definition of `gwid` in this domain: a gateway document
    /// before host profiles, then by document id and profile.
    fn canonical(&mut self, gwid: &str, reads: &mut Reads<'_>) -> Option<Rc<GatewayDef>> {
        if let Some(found) = self.canonical.get(gwid) {
            return found.clone();
        }
        let mut defs: Vec<GatewayDef> = Vec::new();
        let docs: Vec<_> = reads
            .view(PROVISIONING, &gateway_view(&self.sdn, gwid))
            .cloned()
            .collect();
        for doc in docs {
            defs.extend(
                self.definitions(&doc)
                    .into_iter()
                    .filter(|d| d.gwid == gwid),
            );
        }
        defs.sort_by(|a, b| a.rank().cmp(&b.rank()));
        if defs.len() > 1 {
            let others: Vec<String> = defs[1..].iter().map(GatewayDef::describe).collect();
            self.issues.push(Issue::doc(
                PROVISIONING,
                &defs[0].doc,
                format!(
                    "gateway {gwid} is also defined by {}; this definition wins",
                    others.join(", ")
                ),
            ));
        }
        let found = defs.into_iter().next().map(Rc::new);
        self.canonical.insert(gwid.to_string(), found.clone());
        found
    }

    /// The gateways of a carrier (their winning definitions), by gwid.
    fn members(&mut self, carrierid: &str, reads: &mut Reads<'_>) -> Vec<Rc<GatewayDef>> {
        if let Some(found) = self.members.get(carrierid) {
            return found.clone();
        }
        let docs: Vec<_> = reads
            .view(PROVISIONING, &carrier_view(&self.sdn, carrierid))
            .cloned()
            .collect();
        let mut gwids: Vec<String> = Vec::new();
        for doc in docs {
            for def in self.definitions(&doc) {
                if def.carrierid.as_deref() == Some(carrierid) {
                    gwids.push(def.gwid);
                }
            }
        }
        gwids.sort();
        gwids.dedup();
        let mut members = Vec::new();
        for gwid in gwids {
            // A gwid defined twice belongs to the carrier of its winning definition.
            if let Some(def) = self.canonical(&gwid, reads)
                && def.carrierid.as_deref() == Some(carrierid)
            {
                members.push(def);
            }
        }
        self.members.insert(carrierid.to_string(), members.clone());
        members
    }

    /// The gateways one provisioning document defines in this domain.
    fn definitions(&mut self, doc: &SourceDoc) -> Vec<GatewayDef> {
        let Some(json) = doc.json() else {
            let origin = Origin {
                source: PROVISIONING,
                doc: &doc.id,
                path: "",
            };
            self.issues
                .push(origin.issue("the document cannot be read; its gateways are ignored"));
            return Vec::new();
        };
        let defs = if doc.id.starts_with("gateway:") {
            model::gateway_from_doc(&doc.id, &json)
                .into_iter()
                .collect()
        } else if model::is_host(&doc.id, Some(&json)) {
            model::gateways_from_host(&doc.id, &json)
        } else {
            Vec::new()
        };
        defs.into_iter()
            .filter(|d| d.sip_domain_name == self.sdn)
            .collect()
    }

    fn carrier(
        &mut self,
        carrierid: &str,
        reads: &mut Reads<'_>,
    ) -> Option<Rc<Map<String, Value>>> {
        if let Some(found) = self.carriers.get(carrierid) {
            return found.clone();
        }
        let id = format!("carrier:{}:{carrierid}", self.sdn);
        let found = reads.get(PROVISIONING, &id).and_then(|doc| {
            let origin = Origin {
                source: PROVISIONING,
                doc: &id,
                path: "",
            };
            let carrier = object(doc, origin, &mut self.issues);
            if let Some(carrier) = &carrier {
                try_value(carrier, origin, &mut self.issues);
            }
            carrier.map(Rc::new)
        });
        self.carriers.insert(carrierid.to_string(), found.clone());
        found
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
fn object(
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

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A positive integer `try`, or a reported problem.
fn try_value(
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

/// A resolved gateway as stored in the table (no priority: that is per
/// candidate; no `disabled`: disabled gateways are rejected).
fn variant_json(def: &GatewayDef, acc: &Acc) -> Value {
    let [response, progress, answer, dialog] = acc.timeouts();
    json!({
        "gwid": def.gwid,
        "carrierid": def.carrierid,
        "address": def.address,
        "host": def.host,
        "weight": acc.weight(),
        "local_gateway_extra_priority": number(acc.local_extra()),
        "response_timeout": response,
        "progress_timeout": progress,
        "answer_timeout": answer,
        "dialog_timeout": dialog,
        "attrs": acc.attrs,
    })
}
