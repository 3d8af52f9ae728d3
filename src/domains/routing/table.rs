//! A ruleset table compiled for lookups (pure: no IO, no clock).
//!
//! A table is its rules (`Rules`, from the ruleset's cache document) and,
//! per distinct gwlist entry of those rules, the entry's resolution
//! (`Expansion`: its gateways with their priorities, its `try`, its
//! rejections), which `compose` derives from the domain's gateway
//! directory. A lookup finds the longest prefix of the called number among
//! the table's (non-disabled) rules by a binary search of the sorted
//! prefixes per length some rule has, from the longest candidate length
//! down to the catch-all, then per request: carrier entries
//! select `try` of their gateways by smooth weighted round-robin, gateways
//! local to the asking host get their `local_gateway_extra_priority`, the
//! gateways are grouped by priority (highest first) and each group is
//! ordered by smooth weighted round-robin.
//!
//! An entry whose overlay adds attrs (a rule with attrs of its own) shares
//! the resolution of the entries that resolve alike but for attrs; the
//! table keeps the overlay by entry (`Rules::attrs`) and each answer folds
//! it onto the gateways' attrs, so such a rule costs no copy of what it
//! reaches.
//!
//! Round-robin state lives in the table, per (host, rule, group), so a new
//! table (its rules or the resolution of one of its entries changed) starts
//! from zero. The state is bounded: past `MAX_STATES` groups it is reset, so
//! unbounded `host` values cannot grow memory.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use super::model::{Acc, Overlay, number as json_number};
use super::wrr::Smooth;

/// Round-robin groups kept per table before the state is reset.
pub const MAX_STATES: usize = 100_000;

/// One resolved gateway of the table: the answer fields that do not
/// depend on the request, and what the request-dependent ones need. The
/// strings are shared with the directory and with the other gateways
/// resolved from the same definition; its `attrs` are the definition's
/// (an entry whose overlay adds attrs folds them on at answer time, see
/// `Rules::attrs`), so the entries of rules that add only attrs share it.
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

    /// Equal but for `attrs`.
    fn same_scalars(&self, other: &Gateway) -> bool {
        let Gateway {
            gwid,
            carrierid,
            address,
            weight,
            timeouts,
            attrs: _,
            host,
            local_extra,
        } = self;
        *gwid == other.gwid
            && *carrierid == other.carrierid
            && *address == other.address
            && *weight == other.weight
            && *timeouts == other.timeouts
            && *host == other.host
            && *local_extra == other.local_extra
    }
}

/// One gateway of a resolved entry, with its priority.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub gateway: Arc<Gateway>,
    pub priority: f64,
}

impl Member {
    pub fn plain(gateway: Arc<Gateway>, priority: f64) -> Member {
        Member { gateway, priority }
    }
}

/// A gateway's answer `attrs`: its own with the entry's overlay folded on
/// when the overlay adds attrs (composed per answer rather than held, so a
/// rule with attrs of its own costs no copy of every gateway it reaches).
fn attrs<'a>(gateway: &'a Gateway, overlay: Option<&Overlay>) -> Cow<'a, Map<String, Value>> {
    let own = &*gateway.attrs;
    match overlay.and_then(|o| o.compose_attrs(own)) {
        Some(composed) => Cow::Owned(composed),
        None => Cow::Borrowed(own),
    }
}

/// A resolved gwlist entry, shared by every entry that resolves it alike
/// but for attrs (an entry's attrs overlay is the table's, by entry:
/// `Rules::attrs`).
#[derive(Debug, PartialEq)]
pub struct Expansion {
    /// The gateways in gwlist order.
    pub candidates: Vec<Member>,
    /// A carrier entry selecting fewer than all of its gateways.
    pub tries: Option<usize>,
    pub carrierid: Value,
    pub rejected: Vec<Value>,
}

impl Expansion {
    /// Whether the two give the same answers under an entry's `overlay`:
    /// the same gateway fields, composed attrs and priorities.
    pub fn answers_alike(&self, other: &Expansion, overlay: Option<&Overlay>) -> bool {
        let members = |a: &Member, b: &Member| {
            a.priority == b.priority
                && a.gateway.same_scalars(&b.gateway)
                && attrs(&a.gateway, overlay) == attrs(&b.gateway, overlay)
        };
        self.tries == other.tries
            && self.carrierid == other.carrierid
            && self.rejected == other.rejected
            && self.candidates.len() == other.candidates.len()
            && self
                .candidates
                .iter()
                .zip(&other.candidates)
                .all(|(a, b)| members(a, b))
    }
}

/// What few rules have: an id other than `rule:{prefix}`, entries rejected
/// before expansion (with their entry index), warnings.
#[derive(Debug, Default)]
struct Extra {
    id: Option<Box<str>>,
    rejected: Box<[Value]>,
    /// `None`: none (`[]`).
    warnings: Option<Value>,
}

/// A ruleset's rules as its cache document gives them: everything of a
/// table but the resolution of the gwlist entries, which the rules refer
/// to by index.
///
/// Held compactly (issue 13: a million rules): rule `i` is the `i`-th
/// prefix in byte order. The prefixes are one string end to end, found by
/// binary search; the rules' entries are one list; a destination is an
/// index into the table's distinct destinations; an id other than
/// `rule:{prefix}`, rejections and warnings are kept apart for the few
/// rules that have them. About 35 bytes per rule of 2 entries.
#[derive(Debug)]
pub struct Rules {
    ruleset: Value,
    sip_domain_name: Value,
    groupid: Value,
    database: Value,
    disabled_rules: Value,
    /// Every prefix in byte order, end to end.
    prefixes: Box<str>,
    /// Where each rule's prefix starts in `prefixes`, and one past the last.
    starts: Box<[u32]>,
    /// `(entry index in the gwlist, expansion)`, rule after rule.
    entries: Box<[(u32, u32)]>,
    /// Where each rule's entries start in `entries`, and one past the last.
    entry_starts: Box<[u32]>,
    /// Each rule's destination, in `destinations`.
    destination: Box<[u32]>,
    /// The distinct destinations; the first is `null` (none).
    destinations: Box<[Value]>,
    /// By rule, for the rules that have any, in rule order.
    extras: Box<[(u32, Extra)]>,
    /// A bit per prefix length (in bytes) some rule has.
    lengths: Box<[u64]>,
    /// By entry (as the rules refer to them): its overlay when it adds
    /// attrs, folded onto its gateways' per answer. Empty: none does.
    attrs: Box<[Option<Arc<Overlay>>]>,
}

/// The empty list: the warnings of a rule without any.
static NO_WARNINGS: Value = Value::Array(Vec::new());

/// One candidate of a rule for a request.
#[derive(Debug, Clone, Copy)]
struct Candidate<'a> {
    gateway: &'a Gateway,
    overlay: Option<&'a Overlay>,
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
    rule: Cow<'a, str>,
    ruleset: &'a Value,
    sip_domain_name: &'a Value,
    warnings: &'a Value,
}

/// One gateway of an answer: its request-independent fields plus this
/// request's `local` and `priority`, members in sorted order (the order of
/// a serde_json map, so the text equals that of the JSON tree).
struct GatewayAnswer<'a> {
    gateway: &'a Gateway,
    overlay: Option<&'a Overlay>,
    priority: Option<Value>,
    local: Option<bool>,
}

impl GatewayAnswer<'_> {
    /// The request-independent answer fields as a JSON object.
    fn fields(gateway: &Gateway, overlay: Option<&Overlay>) -> Map<String, Value> {
        let fields = GatewayAnswer {
            gateway,
            overlay,
            priority: None,
            local: None,
        };
        match serde_json::to_value(fields) {
            Ok(Value::Object(fields)) => fields,
            _ => unreachable!("a gateway serializes to an object"),
        }
    }
}

impl serde::Serialize for GatewayAnswer<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let g = self.gateway;
        let [response, progress, answer, dialog] = &g.timeouts;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("address", &*g.address)?;
        map.serialize_entry("answer_timeout", answer)?;
        map.serialize_entry("attrs", &*attrs(g, self.overlay))?;
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

fn offset(n: usize, what: &str) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("{what} is too large for a table"))
}

impl Rules {
    /// Reads the rules of a ruleset's cache document content, whose rules
    /// refer to `expansions` distinct entries.
    ///
    /// # Errors
    /// The content does not have the shape the builder writes.
    pub fn compile(content: &Value, expansions: usize) -> Result<Rules, String> {
        let mut sorted: Vec<(&str, &Value)> = field(content, "rules")?
            .as_object()
            .ok_or("rules is not an object")?
            .iter()
            .map(|(prefix, rule)| (prefix.as_str(), rule))
            .collect();
        // A JSON object's members are distinct and (serde_json's map)
        // sorted already; sorted again so nothing depends on that, the
        // last of equal prefixes winning as an object's does.
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        sorted.reverse();
        sorted.dedup_by(|later, earlier| later.0 == earlier.0);
        sorted.reverse();
        let mut build = RulesBuild::default();
        for (i, (prefix, rule)) in sorted.into_iter().enumerate() {
            build.rule(i, prefix, rule, expansions)?;
        }
        let RulesBuild {
            prefixes,
            mut starts,
            entries,
            mut entry_starts,
            destination,
            destinations,
            extras,
            lengths,
            ..
        } = build;
        starts.push(offset(prefixes.len(), "the rules' prefixes")?);
        entry_starts.push(offset(entries.len(), "the rules' entries")?);
        Ok(Rules {
            ruleset: field(content, "ruleset")?.clone(),
            sip_domain_name: field(content, "sip_domain_name")?.clone(),
            groupid: field(content, "groupid")?.clone(),
            database: content.get("database").cloned().unwrap_or(Value::Null),
            disabled_rules: content
                .get("disabled_rules")
                .cloned()
                .unwrap_or_else(|| json!([])),
            prefixes: prefixes.into_boxed_str(),
            starts: starts.into_boxed_slice(),
            entries: entries.into_boxed_slice(),
            entry_starts: entry_starts.into_boxed_slice(),
            destination: destination.into_boxed_slice(),
            destinations: destinations.into_boxed_slice(),
            extras: extras.into_boxed_slice(),
            lengths: lengths.into_boxed_slice(),
            attrs: Box::default(),
        })
    }

    /// The rules with, by entry, its overlay when it adds attrs.
    pub fn with_attrs(mut self, attrs: Vec<Option<Arc<Overlay>>>) -> Rules {
        self.attrs = if attrs.iter().all(Option::is_none) {
            Box::default()
        } else {
            attrs.into_boxed_slice()
        };
        self
    }

    /// Entry `expansion`'s overlay, when it adds attrs.
    pub fn attrs(&self, expansion: usize) -> Option<&Overlay> {
        self.attrs.get(expansion).and_then(Option::as_deref)
    }

    /// The number of rules.
    fn len(&self) -> usize {
        self.destination.len()
    }

    /// Rule `i`'s prefix.
    fn prefix(&self, i: usize) -> &str {
        &self.prefixes[self.starts[i] as usize..self.starts[i + 1] as usize]
    }

    /// Rule `i`'s `(entry index, expansion)` pairs, in gwlist order.
    fn entries(&self, i: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.entries[self.entry_starts[i] as usize..self.entry_starts[i + 1] as usize]
            .iter()
            .map(|(entry, expansion)| (*entry as usize, *expansion as usize))
    }

    fn destination(&self, i: usize) -> &Value {
        &self.destinations[self.destination[i] as usize]
    }

    fn extra(&self, i: usize) -> Option<&Extra> {
        let i = i as u32;
        self.extras
            .binary_search_by_key(&i, |(rule, _)| *rule)
            .ok()
            .map(|found| &self.extras[found].1)
    }

    /// Rule `i`'s id.
    fn id(&self, i: usize) -> Cow<'_, str> {
        match self.extra(i).and_then(|extra| extra.id.as_deref()) {
            Some(id) => Cow::Borrowed(id),
            None => Cow::Owned(format!("rule:{}", self.prefix(i))),
        }
    }

    /// Rule `i`'s rejections made before expansion.
    fn rejected(&self, i: usize) -> &[Value] {
        self.extra(i).map_or(&[], |extra| &extra.rejected)
    }

    fn warnings(&self, i: usize) -> &Value {
        self.extra(i)
            .and_then(|extra| extra.warnings.as_ref())
            .unwrap_or(&NO_WARNINGS)
    }

    fn has_length(&self, len: usize) -> bool {
        self.lengths
            .get(len / 64)
            .is_some_and(|bits| bits & (1 << (len % 64)) != 0)
    }

    /// The rule whose prefix is `prefix` among the first `before` rules
    /// (`Ok`), or where it would be (`Err`).
    fn position(&self, prefix: &str, before: usize) -> Result<usize, usize> {
        let (mut low, mut high) = (0, before);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.prefix(middle).cmp(prefix) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(middle),
            }
        }
        Err(low)
    }

    /// The rule the number routes by (decision 9): the longest prefix.
    /// Each shorter candidate sorts before the longer one, so it is
    /// searched for only among the rules before where that one would be.
    fn find(&self, number: &str) -> Option<usize> {
        let longest = (self.lengths.len() * 64).min(number.len() + 1);
        let mut before = self.len();
        for len in (0..longest).rev() {
            if !self.has_length(len) || !number.is_char_boundary(len) {
                continue;
            }
            match self.position(&number[..len], before) {
                Ok(found) => return Some(found),
                Err(at) => before = at,
            }
        }
        None
    }
}

/// `Rules` being read, rule after rule in prefix order.
#[derive(Default)]
struct RulesBuild<'c> {
    prefixes: String,
    starts: Vec<u32>,
    entries: Vec<(u32, u32)>,
    entry_starts: Vec<u32>,
    destination: Vec<u32>,
    destinations: Vec<Value>,
    /// The destinations naming one by its name, as most do.
    named: HashMap<&'c str, u32>,
    extras: Vec<(u32, Extra)>,
    lengths: Vec<u64>,
}

impl<'c> RulesBuild<'c> {
    fn rule(
        &mut self,
        i: usize,
        prefix: &str,
        rule: &'c Value,
        expansions: usize,
    ) -> Result<(), String> {
        self.starts
            .push(offset(self.prefixes.len(), "the rules' prefixes")?);
        self.prefixes.push_str(prefix);
        let words = prefix.len() / 64 + 1;
        if self.lengths.len() < words {
            self.lengths.resize(words, 0);
        }
        self.lengths[prefix.len() / 64] |= 1 << (prefix.len() % 64);
        self.entry_starts
            .push(offset(self.entries.len(), "the rules' entries")?);
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
            self.entries.push((
                offset(entry, "an entry index")?,
                offset(expansion, "an entry reference")?,
            ));
        }
        let destination = self.destination(rule.get("destination"))?;
        self.destination.push(destination);
        let extra = Extra {
            id: rule
                .get("rule")
                .and_then(Value::as_str)
                .filter(|id| id.strip_prefix("rule:") != Some(prefix))
                .map(Box::from),
            rejected: rule
                .get("rejected")
                .and_then(Value::as_array)
                .map(|list| list.clone().into_boxed_slice())
                .unwrap_or_default(),
            warnings: rule.get("warnings").filter(|w| **w != NO_WARNINGS).cloned(),
        };
        if extra.id.is_some() || !extra.rejected.is_empty() || extra.warnings.is_some() {
            self.extras.push((offset(i, "a rule's index")?, extra));
        }
        Ok(())
    }

    /// The index of a rule's destination among the distinct ones.
    fn destination(&mut self, value: Option<&'c Value>) -> Result<u32, String> {
        if self.destinations.is_empty() {
            self.destinations.push(Value::Null);
        }
        let found = match value {
            None | Some(Value::Null) => Some(0),
            Some(Value::String(name)) => self.named.get(name.as_str()).copied(),
            Some(value) => self
                .destinations
                .iter()
                .position(|d| d == value)
                .map(|i| i as u32),
        };
        if let Some(found) = found {
            return Ok(found);
        }
        let value = value.expect("null is always found");
        let new = offset(self.destinations.len(), "a table's destinations")?;
        if let Value::String(name) = value {
            self.named.insert(name, new);
        }
        self.destinations.push(value.clone());
        Ok(new)
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
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.len() == 0
    }

    /// Rule `rule`'s candidates in gwlist order (slots are stable per rule).
    fn candidates(&self, rule: usize) -> Vec<Candidate<'_>> {
        let mut out = Vec::new();
        for (entry, expansion) in self.rules.entries(rule) {
            let overlay = self.rules.attrs(expansion);
            for member in &self.expansions[expansion].candidates {
                out.push(Candidate {
                    gateway: &member.gateway,
                    overlay,
                    entry,
                    priority: member.priority,
                });
            }
        }
        out
    }

    /// Every rejection of rule `rule`, with its entry index, in gwlist order.
    fn rejected(&self, rule: usize) -> Value {
        let mut all: Vec<(i64, Value)> = self
            .rules
            .rejected(rule)
            .iter()
            .map(|r| (r["entry"].as_i64().unwrap_or(-1), r.clone()))
            .collect();
        for (entry, expansion) in self.rules.entries(rule) {
            for rejected in &self.expansions[expansion].rejected {
                let mut rejected = rejected.clone();
                rejected["entry"] = json!(entry);
                all.push((entry as i64, rejected));
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
        let index = self.rules.find(number)?;
        let host = host.filter(|h| !h.is_empty());
        let candidates = self.candidates(index);
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
            self.order(index, &candidates, host, groups)
        };
        let gateways = ordered
            .into_iter()
            .map(|(slot, priority, local)| GatewayAnswer {
                gateway: candidates[slot].gateway,
                overlay: candidates[slot].overlay,
                priority: Some(json_number(priority)),
                local: Some(local),
            })
            .collect();
        Some(Answer {
            destination: self.rules.destination(index),
            gateways,
            groupid: &self.rules.groupid,
            host,
            number,
            prefix: self.rules.prefix(index),
            rejected: self.rejected(index),
            rule: self.rules.id(index),
            ruleset: &self.rules.ruleset,
            sip_domain_name: &self.rules.sip_domain_name,
            warnings: self.rules.warnings(index),
        })
    }

    /// The rule's candidates for this request, in answer order:
    /// `(slot, priority with the host bonus, local)`.
    fn order(
        &self,
        index: usize,
        candidates: &[Candidate],
        host: Option<&str>,
        states: &mut HashMap<(usize, Group), Smooth>,
    ) -> Vec<(usize, f64, bool)> {
        let mut kept = vec![true; candidates.len()];
        for (entry, expansion) in self.rules.entries(index) {
            let Some(tries) = self.expansions[expansion].tries else {
                continue;
            };
            let members: Vec<(usize, u64)> = candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.entry == entry)
                .map(|(slot, c)| (slot, c.gateway.weight))
                .collect();
            let state = states.entry((index, Group::Select(entry))).or_default();
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
        for rule in 0..self.rules.len() {
            let mut groups: Vec<(f64, Vec<Value>)> = Vec::new();
            for candidate in self.candidates(rule) {
                let mut fields = GatewayAnswer::fields(candidate.gateway, candidate.overlay);
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
            let select: Vec<Value> = self
                .rules
                .entries(rule)
                .filter_map(|(entry, expansion)| {
                    let expansion = &self.expansions[expansion];
                    let tries = expansion.tries?;
                    Some(json!({ "entry": entry, "carrierid": expansion.carrierid, "try": tries }))
                })
                .collect();
            rules.insert(
                self.rules.prefix(rule).to_string(),
                json!({
                    "rule": self.rules.id(rule),
                    "destination": self.rules.destination(rule),
                    "groups": groups,
                    "select": select,
                    "rejected": self.rejected(rule),
                    "warnings": self.rules.warnings(rule),
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

#[cfg(test)]
mod tests {
    //! The compact rules: lookups against a plain longest-prefix search
    //! over a map, and the fields few rules have.

    use std::collections::BTreeMap;

    use super::*;

    fn content(rules: Value) -> Value {
        json!({
            "ruleset": "ruleset:example.net:r", "sip_domain_name": "example.net",
            "groupid": "r", "database": "rules", "rules": rules, "disabled_rules": ["9"],
        })
    }

    fn expansion(carrierid: &str) -> Arc<Expansion> {
        Arc::new(Expansion {
            candidates: Vec::new(),
            tries: None,
            carrierid: json!(carrierid),
            rejected: vec![json!({"reason": carrierid})],
        })
    }

    /// A table whose rule `p` refers to entry `n` when `p` is the `n`-th of
    /// `prefixes`, each entry's rejection naming its index.
    fn table_of(prefixes: &[&str]) -> Table {
        let rules: Map<String, Value> = prefixes
            .iter()
            .enumerate()
            .map(|(n, p)| (p.to_string(), json!({"entries": [[0, n]]})))
            .collect();
        let expansions = (0..prefixes.len()).map(|n| expansion(&n.to_string()));
        let expansions: Vec<_> = expansions.collect();
        let rules = Rules::compile(&content(Value::Object(rules)), expansions.len()).unwrap();
        Table::new(Arc::new(rules), expansions)
    }

    /// The longest of `prefixes` that `number` starts with.
    fn reference<'p>(prefixes: &[&'p str], number: &str) -> Option<&'p str> {
        prefixes
            .iter()
            .filter(|p| number.starts_with(**p))
            .max_by_key(|p| p.len())
            .copied()
    }

    #[track_caller]
    fn check(table: &Table, prefixes: &[&str], number: &str) {
        let answer = table.lookup(number, None);
        let expected = reference(prefixes, number);
        assert_eq!(
            answer.as_ref().map(|a| a["prefix"].as_str().unwrap()),
            expected,
            "{number:?}"
        );
        if let (Some(answer), Some(prefix)) = (answer, expected) {
            let n = prefixes.iter().position(|p| *p == prefix).unwrap();
            assert_eq!(answer["rule"], json!(format!("rule:{prefix}")));
            assert_eq!(answer["rejected"][0]["reason"], json!(n.to_string()));
            assert_eq!(answer["warnings"], json!([]));
            assert_eq!(answer["destination"], Value::Null);
        }
    }

    #[test]
    fn the_longest_prefix_wins_over_overlapping_ones() {
        let prefixes = ["", "3", "33", "331", "3312345", "34", "4"];
        let table = table_of(&prefixes);
        assert_eq!(table.len(), prefixes.len());
        for number in [
            "", "1", "3", "30", "33", "331", "3311", "331234", "3312345", "33123456", "34", "345",
            "4", "5",
        ] {
            check(&table, &prefixes, number);
        }
    }

    #[test]
    fn without_a_catch_all_a_number_can_match_nothing() {
        let prefixes = ["12", "123", "1234"];
        let table = table_of(&prefixes);
        for number in ["", "1", "13", "12", "1239", "12345", "2"] {
            check(&table, &prefixes, number);
        }
        assert!(table.lookup("1", None).is_none());
        let empty = table_of(&[]);
        assert!(empty.is_empty());
        assert!(empty.lookup("", None).is_none());
        assert!(empty.lookup("123", None).is_none());
    }

    #[test]
    fn prefixes_are_bytes_and_stop_at_characters() {
        // Not prefixes the builder accepts, but the table takes what the
        // document holds: byte order, never a cut inside a character.
        let prefixes = ["é", "é1", "+", "+33", "#*", "a", "é1€", "€"];
        let table = table_of(&prefixes);
        for number in [
            "é", "é12", "é1€5", "é1", "e", "+331", "+", "#*9", "a", "ab", "€", "€€", "1",
        ] {
            check(&table, &prefixes, number);
        }
    }

    #[test]
    fn lengths_past_64_bytes_are_found() {
        let long: String = "1".repeat(70);
        let longer: String = "1".repeat(130);
        let prefixes = ["1", long.as_str(), longer.as_str()];
        let table = table_of(&prefixes);
        for len in [1, 2, 63, 64, 65, 69, 70, 71, 128, 129, 130, 131, 200] {
            check(&table, &prefixes, &"1".repeat(len));
        }
    }

    #[test]
    fn random_prefixes_route_as_a_plain_search_does() {
        let mut rng = fastrand::Rng::with_seed(13);
        let digits = ['0', '1', '2', '+', 'é'];
        for round in 0..50 {
            let mut owned: Vec<String> = (0..rng.usize(0..200))
                .map(|_| {
                    (0..rng.usize(0..6))
                        .map(|_| digits[rng.usize(..digits.len())])
                        .collect()
                })
                .collect();
            owned.sort();
            owned.dedup();
            rng.shuffle(&mut owned);
            let prefixes: Vec<&str> = owned.iter().map(String::as_str).collect();
            let table = table_of(&prefixes);
            for _ in 0..200 {
                let number: String = (0..rng.usize(0..8))
                    .map(|_| digits[rng.usize(..digits.len())])
                    .collect();
                check(&table, &prefixes, &number);
            }
            assert_eq!(table.len(), prefixes.len(), "round {round}");
        }
    }

    #[test]
    fn a_repeated_prefix_is_its_last_rule() {
        let text = r#"{"ruleset": "r", "sip_domain_name": "s", "groupid": "g",
            "rules": {"1": {"entries": [[0, 0]]}, "2": {"entries": []}, "1": {"entries": [[0, 1]]}}}"#;
        let rules = Rules::compile(&serde_json::from_str(text).unwrap(), 2).unwrap();
        let table = Table::new(Arc::new(rules), vec![expansion("a"), expansion("b")]);
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.lookup("12", None).unwrap()["rejected"][0]["reason"],
            "b"
        );
        assert_eq!(table.lookup("2", None).unwrap()["rejected"], json!([]));
    }

    #[test]
    fn ids_destinations_rejections_and_warnings_stay_with_their_rule() {
        let rules = json!({
            "1": {"entries": [[1, 0]], "destination": "fr", "rule": "prefix:1",
                  "rejected": [{"entry": 0, "reason": "the entry is not an object"}]},
            "2": {"entries": [[0, 0]], "destination": "fr", "warnings": ["w2"]},
            "3": {"entries": [], "destination": {"odd": 1}, "rule": "rule:3"},
            "4": {"entries": [[0, 1], [2, 0]], "destination": {"odd": 1}, "warnings": []},
            "5": {"entries": [[0, 1]], "destination": "de", "warnings": null},
        });
        let compiled = Rules::compile(&content(rules), 2).unwrap();
        // Null, "fr", {"odd": 1}, "de": each once.
        assert_eq!(compiled.destinations.len(), 4);
        assert_eq!(
            compiled.extras.len(),
            3,
            "rules 1, 2 and 5 have something of their own"
        );
        let table = Table::new(Arc::new(compiled), vec![expansion("a"), expansion("b")]);
        let one = table.lookup("19", None).unwrap();
        assert_eq!(one["rule"], "prefix:1");
        assert_eq!(one["destination"], "fr");
        assert_eq!(
            one["rejected"],
            json!([{"entry": 0, "reason": "the entry is not an object"}, {"entry": 1, "reason": "a"}])
        );
        assert_eq!(one["warnings"], json!([]));
        let two = table.lookup("2", None).unwrap();
        assert_eq!(
            (&two["rule"], &two["destination"]),
            (&json!("rule:2"), &json!("fr"))
        );
        assert_eq!(two["warnings"], json!(["w2"]));
        let three = table.lookup("3", None).unwrap();
        assert_eq!(
            (&three["rule"], &three["destination"]),
            (&json!("rule:3"), &json!({"odd": 1}))
        );
        assert_eq!(three["rejected"], json!([]));
        let four = table.lookup("4", None).unwrap();
        assert_eq!(
            four["rejected"],
            json!([{"entry": 0, "reason": "b"}, {"entry": 2, "reason": "a"}])
        );
        assert_eq!(four["warnings"], json!([]));
        let five = table.lookup("5", None).unwrap();
        assert_eq!(
            (&five["destination"], &five["warnings"]),
            (&json!("de"), &Value::Null)
        );
        let export = table.export();
        assert_eq!(export["rules"]["1"]["rule"], "prefix:1");
        assert_eq!(export["rules"]["2"]["warnings"], json!(["w2"]));
        assert_eq!(export["rules"]["4"]["select"], json!([]));
        assert_eq!(export["disabled_rules"], json!(["9"]));
        assert_eq!(export["database"], "rules");
        let order: Vec<&String> = export["rules"].as_object().unwrap().keys().collect();
        assert_eq!(order, ["1", "2", "3", "4", "5"]);
    }

    #[test]
    fn a_reference_out_of_range_is_refused() {
        let rules = json!({"1": {"entries": [[0, 2]]}});
        let err = Rules::compile(&content(rules), 2).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        assert!(Rules::compile(&content(json!({"1": {}})), 2).is_err());
        assert!(Rules::compile(&content(json!([])), 2).is_err());
    }

    #[test]
    fn many_rulesets_keep_their_own_rules() {
        let owned: Vec<Vec<String>> = (0..100)
            .map(|r| (0..50).map(|n| format!("{r}{n:03}")).collect())
            .collect();
        let tables: Vec<(Vec<&str>, Table)> = owned
            .iter()
            .map(|prefixes| {
                let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
                let table = table_of(&prefixes);
                (prefixes, table)
            })
            .collect();
        let mut expected = BTreeMap::new();
        for (r, (prefixes, table)) in tables.iter().enumerate() {
            for n in [0, 7, 49] {
                let number = format!("{r}{n:03}99");
                check(table, prefixes, &number);
                expected.insert(
                    (r, n),
                    table.lookup(&number, None).unwrap()["prefix"].clone(),
                );
            }
        }
        // Ruleset 1's rule 10 is "1010"; ruleset 10's rule 10 is "10010".
        assert_eq!(expected[&(1, 7)], "1007");
        assert_eq!(
            tables[10].1.lookup("10010", None).unwrap()["prefix"],
            "10010"
        );
        assert_eq!(tables[1].1.lookup("10010", None).unwrap()["prefix"], "1001");
    }

    fn gateway(attrs: Value) -> Expansion {
        let id: Arc<str> = Arc::from("gw");
        let identity = Identity {
            gwid: &id,
            carrierid: None,
            address: &id,
            host: None,
        };
        let Value::Object(attrs) = attrs else {
            panic!("attrs are an object")
        };
        let gateway = Gateway::new(&identity, &Acc::default(), Arc::new(attrs));
        Expansion {
            candidates: vec![Member::plain(Arc::new(gateway), 1.0)],
            tries: None,
            carrierid: Value::Null,
            rejected: Vec::new(),
        }
    }

    #[test]
    fn resolutions_are_alike_when_their_answers_are() {
        let overlay = Overlay::from_json(&json!({"attrs": {"n": [3], "s": ["-rule"]}})).unwrap();
        let under = Some(&overlay);
        // The overlay's number replaces the gateway's: the answers agree.
        assert!(gateway(json!({"n": 1})).answers_alike(&gateway(json!({"n": 2})), under));
        assert!(!gateway(json!({"n": 1})).answers_alike(&gateway(json!({"n": 2})), None));
        assert!(!gateway(json!({"s": "a"})).answers_alike(&gateway(json!({"s": "b"})), under));
        assert!(gateway(json!({"s": "a"})).answers_alike(&gateway(json!({"s": "a"})), under));
        let mut tried = gateway(json!({}));
        tried.tries = Some(1);
        assert!(!tried.answers_alike(&gateway(json!({})), None));
        let g = &gateway(json!({"s": "gw", "k": true})).candidates[0].gateway;
        let answer = GatewayAnswer::fields(g, under);
        assert_eq!(answer["attrs"], json!({"k": true, "n": 3, "s": "gw-rule"}));
        assert_eq!(
            GatewayAnswer::fields(g, None)["attrs"],
            json!({"k": true, "s": "gw"})
        );
    }
}
