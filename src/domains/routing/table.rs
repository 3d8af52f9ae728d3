//! A ruleset table compiled for lookups (pure: no IO, no clock).
//!
//! A table is its rules (`Rules`, from the ruleset's cache document) and,
//! per distinct gwlist entry of those rules, the entry's resolution
//! (`Expansion`: its gateways with their priorities, its `try`, its
//! rejections), which `compose` derives from the domain's gateway
//! directory. A lookup finds the longest prefix of the called number among
//! the table's (non-disabled) rules by probing a hash map from the longest
//! candidate length down to the catch-all, then per request: carrier entries
//! select `try` of their gateways by smooth weighted round-robin, gateways
//! local to the asking host get their `local_gateway_extra_priority`, the
//! gateways are grouped by priority (highest first) and each group is
//! ordered by smooth weighted round-robin.
//!
//! Round-robin state lives in the table, per (host, rule, group), so a new
//! table (its rules or the resolution of one of its entries changed) starts
//! from zero. The state is bounded: past `MAX_STATES` groups it is reset, so
//! unbounded `host` values cannot grow memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use super::model::{Acc, number as json_number};
use super::wrr::Smooth;

/// Round-robin groups kept per table before the state is reset.
pub const MAX_STATES: usize = 100_000;

/// One resolved gateway of the table: the answer fields that do not
/// depend on the request, and what the request-dependent ones need. The
/// strings are shared with the directory and with the other gateways
/// resolved from the same definition.
#[derive(Debug, PartialEq)]
pub struct Gateway {
    gwid: Arc<str>,
    carrierid: Option<Arc<str>>,
    address: Arc<str>,
    weight: u64,
    /// `response_timeout`, `progress_timeout`, `answer_timeout`,
    /// `dialog_timeout`.
    timeouts: [Value; 4],
    attrs: Arc<Map<String, Value>>,
    host: Option<Arc<str>>,
    local_extra: f64,
}

/// Where a gateway comes from: its definition's identity.
pub struct Identity<'a> {
    pub gwid: &'a Arc<str>,
    pub carrierid: Option<&'a Arc<str>>,
    pub address: &'a Arc<str>,
    pub host: Option<&'a Arc<str>>,
}

impl Gateway {
    /// A gateway with everything folded into `acc` but `attrs`, which come
    /// apart (so gateways resolved alike share them). `acc` must not be
    /// disabled: `disabled: false` is part of every answer.
    pub fn new(identity: &Identity<'_>, acc: &Acc, attrs: Arc<Map<String, Value>>) -> Gateway {
        Gateway {
            gwid: identity.gwid.clone(),
            carrierid: identity.carrierid.cloned(),
            address: identity.address.clone(),
            weight: acc.weight().max(1),
            timeouts: acc.timeouts(),
            attrs,
            host: identity.host.cloned(),
            // As stored and read back: `number` writes integral values as integers.
            local_extra: json_number(acc.local_extra())
                .as_f64()
                .unwrap_or(super::model::DEFAULT_LOCAL_EXTRA_PRIORITY),
        }
    }

    /// From the fields a cache document held before the directory existed
    /// (for the reference resolver).
    #[cfg(test)]
    pub(super) fn from_fields(fields: &Map<String, Value>, local_extra: f64) -> Gateway {
        let text = |name: &str| fields.get(name).and_then(Value::as_str).map(Arc::from);
        let timeout = |name: &str| fields.get(name).cloned().unwrap_or(Value::Null);
        Gateway {
            gwid: text("gwid").expect("a gwid"),
            carrierid: text("carrierid"),
            address: text("address").expect("an address"),
            weight: fields
                .get("weight")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1),
            timeouts: super::model::TIMEOUTS.map(timeout),
            attrs: Arc::new(
                fields
                    .get("attrs")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
            ),
            host: text("host"),
            local_extra,
        }
    }

    /// The request-independent answer fields as a JSON object.
    fn fields(&self) -> Map<String, Value> {
        let fields = GatewayAnswer {
            gateway: self,
            priority: None,
            local: None,
        };
        match serde_json::to_value(fields) {
            Ok(Value::Object(fields)) => fields,
            _ => unreachable!("a gateway serializes to an object"),
        }
    }
}

/// A resolved gwlist entry, shared by every rule that resolves it alike.
#[derive(Debug, PartialEq)]
pub struct Expansion {
    /// `(gateway, priority)` in gwlist order.
    pub candidates: Vec<(Arc<Gateway>, f64)>,
    /// A carrier entry selecting fewer than all of its gateways.
    pub tries: Option<usize>,
    pub carrierid: Value,
    pub rejected: Vec<Value>,
}

#[derive(Debug)]
struct Rule {
    prefix: String,
    id: String,
    destination: Value,
    /// `(entry index in the gwlist, expansion)`.
    entries: Vec<(usize, usize)>,
    /// Entries rejected before expansion (with their entry index).
    rejected: Vec<Value>,
    warnings: Value,
}

/// A ruleset's rules as its cache document gives them: everything of a
/// table but the resolution of the gwlist entries, which the rules refer
/// to by index.
#[derive(Debug)]
pub struct Rules {
    ruleset: Value,
    sip_domain_name: Value,
    groupid: Value,
    database: Value,
    rules: Vec<Rule>,
    by_prefix: HashMap<String, usize>,
    longest: usize,
    disabled_rules: Value,
}

/// One candidate of a rule for a request.
#[derive(Debug, Clone, Copy)]
struct Candidate<'a> {
    gateway: &'a Gateway,
    entry: usize,
    priority: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    /// The `try` selection of a carrier entry.
    Select(usize),
    /// A priority group (by the bits of its priority).
    Order(u64),
}

type States = HashMap<Box<str>, HashMap<(usize, Group), Smooth>>;

/// A lookup's answer, borrowing from the table. Members in sorted order, so
/// its text equals that of the JSON tree made from it (serde_json's maps
/// are sorted).
#[derive(serde::Serialize)]
struct Answer<'a> {
    destination: &'a Value,
    gateways: Vec<GatewayAnswer<'a>>,
    groupid: &'a Value,
    host: Option<&'a str>,
    number: &'a str,
    prefix: &'a str,
    rejected: Value,
    rule: &'a str,
    ruleset: &'a Value,
    sip_domain_name: &'a Value,
    warnings: &'a Value,
}

/// One gateway of an answer: its request-independent fields plus this
/// request's `local` and `priority`, members in sorted order (the order of
/// a serde_json map, so the text equals that of the JSON tree).
struct GatewayAnswer<'a> {
    gateway: &'a Gateway,
    priority: Option<Value>,
    local: Option<bool>,
}

impl serde::Serialize for GatewayAnswer<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let g = self.gateway;
        let [response, progress, answer, dialog] = &g.timeouts;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("address", &*g.address)?;
        map.serialize_entry("answer_timeout", answer)?;
        map.serialize_entry("attrs", &*g.attrs)?;
        map.serialize_entry("carrierid", &g.carrierid.as_deref())?;
        map.serialize_entry("dialog_timeout", dialog)?;
        map.serialize_entry("disabled", &false)?;
        map.serialize_entry("gwid", &*g.gwid)?;
        if let Some(local) = self.local {
            map.serialize_entry("local", &local)?;
        }
        if let Some(priority) = &self.priority {
            map.serialize_entry("priority", priority)?;
        }
        map.serialize_entry("progress_timeout", progress)?;
        map.serialize_entry("response_timeout", response)?;
        map.serialize_entry("weight", &g.weight)?;
        map.end()
    }
}

/// A compiled table.
#[derive(Debug)]
pub struct Table {
    rules: Arc<Rules>,
    expansions: Vec<Arc<Expansion>>,
    states: Mutex<States>,
}

fn field<'a>(value: &'a Value, name: &str) -> Result<&'a Value, String> {
    value.get(name).ok_or_else(|| format!("no field {name:?}"))
}

fn index(value: &Value, what: &str) -> Result<usize, String> {
    value
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| format!("{what} is not an index"))
}

impl Rules {
    /// Reads the rules of a ruleset's cache document content, whose rules
    /// refer to `expansions` distinct entries.
    ///
    /// # Errors
    /// The content does not have the shape the builder writes.
    pub fn compile(content: &Value, expansions: usize) -> Result<Rules, String> {
        let mut rules = Vec::new();
        let mut by_prefix = HashMap::new();
        let mut longest = 0;
        for (prefix, rule) in field(content, "rules")?
            .as_object()
            .ok_or("rules is not an object")?
        {
            let rule = compile_rule(prefix, rule, expansions)?;
            longest = longest.max(prefix.len());
            by_prefix.insert(prefix.clone(), rules.len());
            rules.push(rule);
        }
        Ok(Rules {
            ruleset: field(content, "ruleset")?.clone(),
            sip_domain_name: field(content, "sip_domain_name")?.clone(),
            groupid: field(content, "groupid")?.clone(),
            database: content.get("database").cloned().unwrap_or(Value::Null),
            rules,
            by_prefix,
            longest,
            disabled_rules: content
                .get("disabled_rules")
                .cloned()
                .unwrap_or_else(|| json!([])),
        })
    }
}

impl Table {
    /// A table of `rules` whose entries resolve to `expansions` (indexed as
    /// the rules refer to them), with fresh round-robin state.
    pub fn new(rules: Arc<Rules>, expansions: Vec<Arc<Expansion>>) -> Table {
        Table {
            rules,
            expansions,
            states: Mutex::default(),
        }
    }

    /// The resolution of every distinct entry, as the rules index them.
    pub fn expansions(&self) -> &[Arc<Expansion>] {
        &self.expansions
    }

    /// The rules this table was made with.
    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// The number of rules (disabled ones excluded).
    pub fn len(&self) -> usize {
        self.rules.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.rules.is_empty()
    }

    /// The rule the number routes by (decision 9), if any.
    fn find(&self, number: &str) -> Option<usize> {
        let longest = self.rules.longest.min(number.len());
        (0..=longest)
            .rev()
            .filter(|len| number.is_char_boundary(*len))
            .find_map(|len| self.rules.by_prefix.get(&number[..len]).copied())
    }

    /// A rule's candidates in gwlist order (slots are stable per rule).
    fn candidates(&self, rule: &Rule) -> Vec<Candidate<'_>> {
        let mut out = Vec::new();
        for (entry, expansion) in &rule.entries {
            for (gateway, priority) in &self.expansions[*expansion].candidates {
                out.push(Candidate {
                    gateway,
                    entry: *entry,
                    priority: *priority,
                });
            }
        }
        out
    }

    /// Every rejection of a rule, with its entry index, in gwlist order.
    fn rejected(&self, rule: &Rule) -> Value {
        let mut all: Vec<(i64, Value)> = rule
            .rejected
            .iter()
            .map(|r| (r["entry"].as_i64().unwrap_or(-1), r.clone()))
            .collect();
        for (entry, expansion) in &rule.entries {
            for rejected in &self.expansions[*expansion].rejected {
                let mut rejected = rejected.clone();
                rejected["entry"] = json!(entry);
                all.push((*entry as i64, rejected));
            }
        }
        all.sort_by_key(|(entry, _)| *entry);
        Value::Array(all.into_iter().map(|(_, r)| r).collect())
    }

    /// The answer for `number` asked by `host`; `None` when no rule matches.
    /// The caller validates the number (decision 15).
    pub fn lookup(&self, number: &str, host: Option<&str>) -> Option<Value> {
        let answer = self.answer(number, host)?;
        Some(serde_json::to_value(answer).expect("an answer serializes"))
    }

    /// The same answer as `lookup`, as JSON text written straight from the
    /// table: no per-request copy of every gateway's fields into a JSON
    /// tree (what the HTTP handler sends; the bytes are those of `lookup`'s
    /// tree serialized).
    pub fn lookup_text(&self, number: &str, host: Option<&str>) -> Option<String> {
        let answer = self.answer(number, host)?;
        Some(serde_json::to_string(&answer).expect("an answer serializes"))
    }

    fn answer<'a>(&'a self, number: &'a str, host: Option<&'a str>) -> Option<Answer<'a>> {
        let index = self.find(number)?;
        let rule = &self.rules.rules[index];
        let host = host.filter(|h| !h.is_empty());
        let candidates = self.candidates(rule);
        let ordered = {
            let mut states = self
                .states
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if states.values().map(HashMap::len).sum::<usize>() >= MAX_STATES {
                states.clear();
            }
            let host_key = host.unwrap_or("");
            if !states.contains_key(host_key) {
                states.insert(host_key.into(), HashMap::new());
            }
            let groups = states.get_mut(host_key).expect("inserted above");
            self.order(index, rule, &candidates, host, groups)
        };
        let gateways = ordered
            .into_iter()
            .map(|(slot, priority, local)| GatewayAnswer {
                gateway: candidates[slot].gateway,
                priority: Some(json_number(priority)),
                local: Some(local),
            })
            .collect();
        Some(Answer {
            destination: &rule.destination,
            gateways,
            groupid: &self.rules.groupid,
            host,
            number,
            prefix: &rule.prefix,
            rejected: self.rejected(rule),
            rule: &rule.id,
            ruleset: &self.rules.ruleset,
            sip_domain_name: &self.rules.sip_domain_name,
            warnings: &rule.warnings,
        })
    }

    /// The rule's candidates for this request, in answer order:
    /// `(slot, priority with the host bonus, local)`.
    fn order(
        &self,
        index: usize,
        rule: &Rule,
        candidates: &[Candidate],
        host: Option<&str>,
        states: &mut HashMap<(usize, Group), Smooth>,
    ) -> Vec<(usize, f64, bool)> {
        let mut kept = vec![true; candidates.len()];
        for (entry, expansion) in &rule.entries {
            let Some(tries) = self.expansions[*expansion].tries else {
                continue;
            };
            let members: Vec<(usize, u64)> = candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.entry == *entry)
                .map(|(slot, c)| (slot, c.gateway.weight))
                .collect();
            let state = states.entry((index, Group::Select(*entry))).or_default();
            for position in state.order(&members).into_iter().skip(tries) {
                kept[members[position].0] = false;
            }
        }
        let mut groups: Vec<(f64, Vec<(usize, bool)>)> = Vec::new();
        for (slot, candidate) in candidates.iter().enumerate().filter(|(s, _)| kept[*s]) {
            let gateway = candidate.gateway;
            let local = host.is_some() && gateway.host.as_deref() == host;
            let priority = candidate.priority + if local { gateway.local_extra } else { 0.0 };
            match groups
                .iter_mut()
                .find(|(p, _)| p.total_cmp(&priority).is_eq())
            {
                Some((_, members)) => members.push((slot, local)),
                None => groups.push((priority, vec![(slot, local)])),
            }
        }
        groups.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut ordered = Vec::with_capacity(candidates.len());
        for (priority, members) in groups {
            if members.len() == 1 {
                ordered.push((members[0].0, priority, members[0].1));
                continue;
            }
            let weights: Vec<(usize, u64)> = members
                .iter()
                .map(|(slot, _)| (*slot, candidates[*slot].gateway.weight))
                .collect();
            let state = states
                .entry((index, Group::Order(priority.to_bits())))
                .or_default();
            for position in state.order(&weights) {
                let (slot, local) = members[position];
                ordered.push((slot, priority, local));
            }
        }
        ordered
    }

    /// The whole table for export to a SIP proxy: per rule its gateways
    /// grouped by priority (before the host bonus and round-robin), the
    /// carrier entries that select `try` of theirs, and the rejections.
    pub fn export(&self) -> Value {
        let mut rules = Map::new();
        for rule in &self.rules.rules {
            let mut groups: Vec<(f64, Vec<Value>)> = Vec::new();
            for candidate in self.candidates(rule) {
                let mut fields = candidate.gateway.fields();
                fields.insert("priority".into(), json_number(candidate.priority));
                fields.insert("entry".into(), json!(candidate.entry));
                match groups
                    .iter_mut()
                    .find(|(p, _)| p.total_cmp(&candidate.priority).is_eq())
                {
                    Some((_, members)) => members.push(Value::Object(fields)),
                    None => groups.push((candidate.priority, vec![Value::Object(fields)])),
                }
            }
            groups.sort_by(|a, b| b.0.total_cmp(&a.0));
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(p, gateways)| json!({ "priority": json_number(p), "gateways": gateways }))
                .collect();
            let select: Vec<Value> = rule
                .entries
                .iter()
                .filter_map(|(entry, expansion)| {
                    let expansion = &self.expansions[*expansion];
                    let tries = expansion.tries?;
                    Some(json!({ "entry": entry, "carrierid": expansion.carrierid, "try": tries }))
                })
                .collect();
            rules.insert(
                rule.prefix.clone(),
                json!({
                    "rule": rule.id,
                    "destination": rule.destination,
                    "groups": groups,
                    "select": select,
                    "rejected": self.rejected(rule),
                    "warnings": rule.warnings,
                }),
            );
        }
        json!({
            "ruleset": self.rules.ruleset,
            "sip_domain_name": self.rules.sip_domain_name,
            "groupid": self.rules.groupid,
            "database": self.rules.database,
            "rules": rules,
            "disabled_rules": self.rules.disabled_rules,
        })
    }
}

fn compile_rule(prefix: &str, rule: &Value, expansions: usize) -> Result<Rule, String> {
    let mut entries = Vec::new();
    for pair in field(rule, "entries")?
        .as_array()
        .ok_or("a rule's entries is not a list")?
    {
        let entry = index(&pair[0], "an entry index")?;
        let expansion = index(&pair[1], "an entry reference")?;
        if expansion >= expansions {
            return Err(format!(
                "rule {prefix:?} refers to entry {expansion}, out of range"
            ));
        }
        entries.push((entry, expansion));
    }
    Ok(Rule {
        prefix: prefix.to_string(),
        id: rule
            .get("rule")
            .and_then(Value::as_str)
            .map_or_else(|| format!("rule:{prefix}"), str::to_string),
        destination: rule.get("destination").cloned().unwrap_or(Value::Null),
        entries,
        rejected: rule
            .get("rejected")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        warnings: rule.get("warnings").cloned().unwrap_or_else(|| json!([])),
    })
}
