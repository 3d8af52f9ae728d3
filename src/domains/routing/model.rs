//! The pure core of routing records (CCNQ4): document ids and output keys,
//! the attribute levels and how they fold (decisions 1–5 of the spec), the
//! overlay that folds the levels above a gateway in one step, gateway
//! definitions from `gateway` documents and from a host's `sip_profiles`,
//! and the called-number rule. No IO, no clock, no randomness.
//!
//! Folding: levels are applied from least to most specific (default →
//! carrier → gateway → ruleset → destination → rule → gwlist entry). A
//! scalar set to a valid, non-null value replaces what came before; `attrs`
//! merge per top-level key (booleans OR'ed, strings and lists concatenated
//! most specific last, objects merged one level, numbers replaced, a value
//! of another type than the one accumulated ignored). An invalid value is
//! ignored and reported.

use serde_json::{Map, Number, Value, json};

use crate::domains::Issue;

/// The logical source holding gateways, carriers, rulesets, destinations
/// and hosts.
pub const PROVISIONING: &str = "provisioning";

/// Ruleset databases are dynamic sources named `ruleset_db:<database>`.
pub const RULESET_DB_PREFIX: &str = "ruleset_db:";

/// The view key every ruleset document is filed under.
pub const RULESETS_VIEW: &str = "routing:rulesets";

pub const DEFAULT_RESPONSE_TIMEOUT: u64 = 2;
pub const DEFAULT_PROGRESS_TIMEOUT: u64 = 4;
pub const DEFAULT_ANSWER_TIMEOUT: u64 = 90;
pub const DEFAULT_DIALOG_TIMEOUT: u64 = 28_800;
pub const DEFAULT_LOCAL_EXTRA_PRIORITY: f64 = 0.5;
/// Weights are clamped to this, so smooth round-robin sums never overflow.
pub const MAX_WEIGHT: u64 = 1_000_000;
/// The longest called number (and rule prefix) accepted.
pub const MAX_NUMBER_LEN: usize = 64;

/// The four timeouts, in answer order.
pub const TIMEOUTS: [&str; 4] = [
    "response_timeout",
    "progress_timeout",
    "answer_timeout",
    "dialog_timeout",
];

const TIMEOUT_DEFAULTS: [u64; 4] = [
    DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_PROGRESS_TIMEOUT,
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_DIALOG_TIMEOUT,
];

/// The logical source of a ruleset database.
pub fn ruleset_source(database: &str) -> String {
    format!("{RULESET_DB_PREFIX}{database}")
}

/// The view key of every document defining a gateway in a domain
/// (`gateway` documents and hosts with `sip_profiles`).
pub fn gateways_view(sip_domain_name: &str) -> String {
    format!("routing:gateways:{sip_domain_name}")
}

/// The view key of every carrier document of a domain.
pub fn carriers_view(sip_domain_name: &str) -> String {
    format!("routing:carriers:{sip_domain_name}")
}

/// The view key of every gateway, carrier and gateway-defining host
/// document (what decides which domains have a gateway directory).
pub const DOMAINS_VIEW: &str = "routing:domains";

const DIRECTORY_PREFIX: &str = "gateways@";

/// The output key of a domain's gateway directory, `gateways@{sdn}`. A key
/// without `:` can never be a ruleset's (`{sdn}:{groupid}`); a domain name
/// holding `:` (only a host document can give one) has no directory, as no
/// ruleset can name it.
pub fn directory_key(sip_domain_name: &str) -> Option<String> {
    (!sip_domain_name.is_empty() && !sip_domain_name.contains(':'))
        .then(|| format!("{DIRECTORY_PREFIX}{sip_domain_name}"))
}

/// The domain of a gateway directory's output key.
pub fn directory_domain(key: &str) -> Option<&str> {
    key.strip_prefix(DIRECTORY_PREFIX)
        .filter(|sdn| !sdn.is_empty() && !sdn.contains(':'))
}

/// `<kind>:<a>:<b>` → `(a, b)`, splitting at the first `:` after the kind
/// (domain names have no `:`; the second part may).
pub fn split_id<'a>(id: &'a str, kind: &str) -> Option<(&'a str, &'a str)> {
    let rest = id.strip_prefix(kind)?.strip_prefix(':')?;
    let (a, b) = rest.split_once(':')?;
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

/// Whether a document of the provisioning database is a host document.
pub fn is_host(id: &str, json: Option<&Value>) -> bool {
    id.starts_with("host:")
        || id.starts_with("host@")
        || json.and_then(|j| j.get("type")).and_then(Value::as_str) == Some("host")
}

/// Decision 15: a called number is `[0-9A-Za-z+#*_-]{1,64}`.
pub fn valid_number(number: &str) -> bool {
    !number.is_empty() && valid_prefix(number)
}

/// A rule prefix: the number's alphabet, possibly empty (the catch-all).
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_NUMBER_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+#*_-".contains(&b))
}

/// The rule prefix of a ruleset-database document id (`rule:33`, also
/// `prefix:33`), with whether it used the spec's `rule:` form.
pub fn rule_prefix(id: &str) -> Option<(&str, bool)> {
    if let Some(prefix) = id.strip_prefix("rule:") {
        return Some((prefix, true));
    }
    id.strip_prefix("prefix:").map(|prefix| (prefix, false))
}

/// Where a level comes from, for problem reports.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub source: &'a str,
    pub doc: &'a str,
    /// Inside the document (`gwlist[2].`, `sip_profiles.p1.egress.`), or "".
    pub path: &'a str,
}

impl Origin<'static> {
    /// No document: for folds whose problems were reported elsewhere.
    pub const NOWHERE: Origin<'static> = Origin {
        source: "",
        doc: "",
        path: "",
    };
}

impl Origin<'_> {
    pub fn issue(&self, reason: impl std::fmt::Display) -> Issue {
        Issue::doc(self.source, self.doc, format!("{}{reason}", self.path))
    }
}

/// The attributes accumulated over the levels folded so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acc {
    pub disabled: Option<bool>,
    pub timeouts: [Option<Number>; 4],
    /// An explicit priority (replaces the position default).
    pub priority: Option<f64>,
    pub weight: Option<u64>,
    pub local_extra: Option<f64>,
    pub attrs: Map<String, Value>,
}

/// Whether a level sets any attribute at all (a level that does not leaves
/// a fold unchanged, which lets builders share resolved gateways).
pub fn sets_attributes(level: &Map<String, Value>) -> bool {
    const FIELDS: [&str; 9] = [
        "disabled",
        "response_timeout",
        "progress_timeout",
        "answer_timeout",
        "dialog_timeout",
        "priority",
        "weight",
        "local_gateway_extra_priority",
        "attrs",
    ];
    FIELDS
        .iter()
        .any(|f| level.get(*f).is_some_and(|v| !v.is_null()))
}

impl Acc {
    /// Folds one more specific level in; invalid values are ignored and
    /// reported.
    pub fn apply(
        &mut self,
        level: &Map<String, Value>,
        origin: Origin<'_>,
        issues: &mut Vec<Issue>,
    ) {
        self.apply_scalars(level, origin, issues);
        match level.get("attrs") {
            None | Some(Value::Null) => {}
            Some(Value::Object(attrs)) => merge_attrs(&mut self.attrs, attrs),
            Some(_) => issues.push(origin.issue("attrs: not an object; ignored")),
        }
    }

    /// Folds the scalar attributes of one more specific level in (every
    /// field but `attrs`).
    fn apply_scalars(
        &mut self,
        level: &Map<String, Value>,
        origin: Origin<'_>,
        issues: &mut Vec<Issue>,
    ) {
        let mut bad = |field: &str, what: &str| {
            issues.push(origin.issue(format!("{field}: {what}; ignored")));
        };
        match level.get("disabled") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => self.disabled = Some(*b),
            Some(_) => bad("disabled", "not true or false"),
        }
        for (slot, field) in self.timeouts.iter_mut().zip(TIMEOUTS) {
            match level.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0) => {
                    *slot = Some(n.clone());
                }
                Some(_) => bad(field, "not a non-negative number"),
            }
        }
        match level.get("priority") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => self.priority = n.as_f64(),
            Some(_) => bad("priority", "not a number"),
        }
        match level.get("weight") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => self.weight = Some(weight(n)),
            Some(_) => bad("weight", "not a number"),
        }
        match level.get("local_gateway_extra_priority") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => self.local_extra = n.as_f64(),
            Some(_) => bad("local_gateway_extra_priority", "not a number"),
        }
    }

    /// The scalar fields of `more` where it sets them, else these.
    fn overridden_by(&self, more: &Acc) -> Acc {
        let mut timeouts = self.timeouts.clone();
        for (slot, over) in timeouts.iter_mut().zip(&more.timeouts) {
            if over.is_some() {
                slot.clone_from(over);
            }
        }
        Acc {
            disabled: more.disabled.or(self.disabled),
            timeouts,
            priority: more.priority.or(self.priority),
            weight: more.weight.or(self.weight),
            local_extra: more.local_extra.or(self.local_extra),
            attrs: Map::new(),
        }
    }

    /// The fold as stored in a cache document: each field it sets (priorities
    /// written as `number` writes them, which is what a reader gets back),
    /// `attrs` always.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(disabled) = self.disabled {
            out.insert("disabled".into(), Value::Bool(disabled));
        }
        for (slot, field) in self.timeouts.iter().zip(TIMEOUTS) {
            if let Some(n) = slot {
                out.insert(field.into(), Value::Number(n.clone()));
            }
        }
        if let Some(priority) = self.priority {
            out.insert("priority".into(), number(priority));
        }
        if let Some(weight) = self.weight {
            out.insert("weight".into(), json!(weight));
        }
        if let Some(extra) = self.local_extra {
            out.insert("local_gateway_extra_priority".into(), number(extra));
        }
        out.insert("attrs".into(), Value::Object(self.attrs.clone()));
        out
    }

    /// Reads what `to_json` wrote.
    ///
    /// # Errors
    /// A field does not have the type `to_json` gives it.
    pub fn from_json(fields: &Map<String, Value>) -> Result<Acc, String> {
        let mut acc = Acc::default();
        let mut found = Vec::new();
        acc.apply_scalars(fields, Origin::NOWHERE, &mut found);
        if let Some(problem) = found.first() {
            return Err(problem.reason.clone());
        }
        match fields.get("attrs") {
            None => {}
            Some(Value::Object(attrs)) => acc.attrs.clone_from(attrs),
            Some(_) => return Err("attrs: not an object".into()),
        }
        Ok(acc)
    }

    pub fn disabled(&self) -> bool {
        self.disabled.unwrap_or(false)
    }

    pub fn weight(&self) -> u64 {
        self.weight.unwrap_or(1)
    }

    pub fn local_extra(&self) -> f64 {
        self.local_extra.unwrap_or(DEFAULT_LOCAL_EXTRA_PRIORITY)
    }

    /// The timeouts with defaults, as JSON numbers.
    pub fn timeouts(&self) -> [Value; 4] {
        let mut out: [Value; 4] = Default::default();
        for (i, slot) in self.timeouts.iter().enumerate() {
            out[i] = slot
                .clone()
                .map_or_else(|| json!(TIMEOUT_DEFAULTS[i]), Value::Number);
        }
        out
    }
}

/// Decision 5: non-positive → 1; fractions round to the nearest integer
/// (at least 1); capped at `MAX_WEIGHT`.
fn weight(n: &Number) -> u64 {
    let f = n.as_f64().unwrap_or(1.0);
    if f.is_nan() || f < 0.5 {
        1
    } else {
        (f.round() as u64).clamp(1, MAX_WEIGHT)
    }
}

/// Decision 3, one level: per top-level key of `more` (more specific).
pub fn merge_attrs(acc: &mut Map<String, Value>, more: &Map<String, Value>) {
    for (key, value) in more {
        if value.is_null() {
            continue;
        }
        match acc.get_mut(key) {
            None => {
                acc.insert(key.clone(), value.clone());
            }
            // A value of another type than the one accumulated is ignored.
            Some(current) => _ = merge_same_kind(current, value),
        }
    }
}

/// Merges a more specific `value` into `current` when both have the same
/// JSON type (decision 3); `false`, leaving `current` alone, when they do
/// not.
fn merge_same_kind(current: &mut Value, value: &Value) -> bool {
    match (current, value) {
        (Value::Bool(a), Value::Bool(b)) => *a = *a || *b,
        (Value::String(a), Value::String(b)) => a.push_str(b),
        (Value::Array(a), Value::Array(b)) => a.extend(b.iter().cloned()),
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                a.insert(k.clone(), v.clone());
            }
        }
        (current @ Value::Number(_), Value::Number(_)) => *current = value.clone(),
        _ => return false,
    }
    true
}

fn same_kind(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// What the levels above the gateway (ruleset → destination → rule →
/// gwlist entry) add to a gateway's fold, in a form that applies to any
/// gateway in one step: `compose(base)` equals folding those levels onto
/// `base` one by one.
///
/// Scalars: the most specific value set, which replaces the base's. `attrs`:
/// the fold of decision 3 depends on the type the base already holds for a
/// key (a value of another type is ignored), so per key the overlay keeps
/// one merged value per JSON type met, the first type's first. A base
/// holding type T takes the merge of the T values (merging is associative
/// within one type: OR, concatenation, one-level merge, last number); a
/// base without the key takes the first type's merge, exactly what folding
/// the levels alone gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlay {
    /// `None` when it sets none, as most do (a table holds an overlay per
    /// rule with attrs of its own; an `Acc` is some 180 bytes).
    scalars: Option<Box<Acc>>,
    /// Per key, in key order: merged values of distinct types, the first
    /// type met first. A list rather than a map: a ruleset holds an
    /// overlay per rule with attrs of its own, mostly of one key or two
    /// (a map's node costs some 600 bytes even for one).
    attrs: Vec<(String, Vec<Value>)>,
}

impl Overlay {
    /// Folds one more specific level in; invalid values are ignored (they
    /// are reported where the level is validated).
    pub fn apply(&mut self, level: &Map<String, Value>) {
        let mut scalars = self.scalars.take().unwrap_or_default();
        scalars.apply_scalars(level, Origin::NOWHERE, &mut Vec::new());
        self.scalars = (*scalars != Acc::default()).then_some(scalars);
        let Some(Value::Object(attrs)) = level.get("attrs") else {
            return;
        };
        for (key, value) in attrs.iter().filter(|(_, v)| !v.is_null()) {
            let at = match self.attrs.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
                Ok(at) => at,
                Err(at) => {
                    self.attrs.insert(at, (key.clone(), Vec::new()));
                    at
                }
            };
            let merged = &mut self.attrs[at].1;
            match merged.iter_mut().find(|m| same_kind(m, value)) {
                Some(current) => _ = merge_same_kind(current, value),
                None => merged.push(value.clone()),
            }
        }
    }

    /// Whether folding the overlay changes nothing.
    pub fn is_empty(&self) -> bool {
        self.scalars.is_none() && self.attrs.is_empty()
    }

    /// Whether the overlay changes a fold's `attrs` (`compose_attrs` is
    /// `Some`).
    pub fn adds_attrs(&self) -> bool {
        !self.attrs.is_empty()
    }

    /// `base` with the overlay's levels folded on top.
    pub fn compose(&self, base: &Acc) -> Acc {
        let mut acc = self.compose_scalars(base);
        acc.attrs = self
            .compose_attrs(&base.attrs)
            .unwrap_or_else(|| base.attrs.clone());
        acc
    }

    /// The scalars of `compose` (its `attrs` left empty).
    pub fn compose_scalars(&self, base: &Acc) -> Acc {
        match &self.scalars {
            Some(scalars) => base.overridden_by(scalars),
            None => base.overridden_by(&Acc::default()),
        }
    }

    /// The `attrs` of `compose`; `None` when the overlay adds none, so the
    /// base's stay as they are.
    pub fn compose_attrs(&self, base: &Map<String, Value>) -> Option<Map<String, Value>> {
        if self.attrs.is_empty() {
            return None;
        }
        let mut attrs = base.clone();
        for (key, merged) in &self.attrs {
            match attrs.get_mut(key) {
                Some(current) => {
                    if let Some(value) = merged.iter().find(|m| same_kind(m, current)) {
                        merge_same_kind(current, value);
                    }
                }
                None => {
                    if let Some(first) = merged.first() {
                        attrs.insert(key.clone(), first.clone());
                    }
                }
            }
        }
        Some(attrs)
    }

    /// As stored in a ruleset's cache document: the scalars as `Acc::to_json`
    /// writes them, `attrs` as `{key: [merged value per type]}`.
    pub fn to_json(&self) -> Value {
        let mut out = match &self.scalars {
            Some(scalars) => scalars.to_json(),
            None => Acc::default().to_json(),
        };
        let attrs = self
            .attrs
            .iter()
            .map(|(key, merged)| (key.clone(), Value::Array(merged.clone())));
        out.insert("attrs".into(), Value::Object(attrs.collect()));
        Value::Object(out)
    }

    /// Reads what `to_json` wrote.
    ///
    /// # Errors
    /// The value does not have the shape `to_json` gives it.
    pub fn from_json(value: &Value) -> Result<Overlay, String> {
        let fields = value.as_object().ok_or("an overlay is not an object")?;
        let mut scalars = Acc::from_json(fields)?;
        let mut attrs = std::mem::take(&mut scalars.attrs)
            .into_iter()
            .map(|(key, merged)| match merged {
                Value::Array(merged) => Ok((key, merged)),
                _ => Err("an overlay's attrs are not lists".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        attrs.sort_by(|a, b| a.0.cmp(&b.0));
        attrs.shrink_to_fit();
        let scalars = (scalars != Acc::default()).then(|| Box::new(scalars));
        Ok(Overlay { scalars, attrs })
    }
}

/// A gateway as defined by a `gateway` document or a host's `sip_profiles`
/// entry, before any level is folded.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayDef {
    pub sip_domain_name: String,
    pub gwid: String,
    pub carrierid: Option<String>,
    pub address: Option<String>,
    /// The host it lives on (decision 14).
    pub host: Option<String>,
    /// The gateway level's attributes.
    pub level: Map<String, Value>,
    /// The defining document, and the path inside it.
    pub doc: String,
    pub path: String,
    /// Problems found deriving it (reported when it is used).
    pub problems: Vec<String>,
}

impl GatewayDef {
    /// Gateway documents come before host profiles, then by document and path.
    pub fn rank(&self) -> (bool, &str, &str) {
        (!self.path.is_empty(), &self.doc, &self.path)
    }

    /// The defining document (and profile), for messages.
    pub fn describe(&self) -> String {
        match self.path.trim_end_matches('.') {
            "" => self.doc.clone(),
            path => format!("{} ({path})", self.doc),
        }
    }
}

/// A non-empty string, or a number written as one (ids in documents).
pub fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A `gateway:{sip_domain_name}:{gwid}` document (the id decides both).
pub fn gateway_from_doc(id: &str, json: &Value) -> Option<GatewayDef> {
    let (sdn, gwid) = split_id(id, "gateway")?;
    let level = json.as_object().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for (field, expected) in [("sip_domain_name", sdn), ("gwid", gwid)] {
        if let Some(found) = text(level.get(field))
            && found != expected
        {
            problems.push(format!(
                "{field} is {found:?} but the _id says {expected:?}; the _id wins"
            ));
        }
    }
    Some(GatewayDef {
        sip_domain_name: sdn.to_string(),
        gwid: gwid.to_string(),
        carrierid: text(level.get("carrierid")),
        address: text(level.get("address")),
        host: text(level.get("host")),
        level,
        doc: id.to_string(),
        path: String::new(),
        problems,
    })
}

/// A port given as a number or a numeric string.
fn port(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|p| (1..=65_535).contains(p))
}

/// The gateways a host document's `sip_profiles` define: `egress.gwid`
/// (ccnq3 `egress_gwid` when absent), address from `egress_sip_ip` or
/// `ingress_sip_ip` and port `egress_sip_port` or `ingress_sip_port + 10000`
/// (unless `egress.address` is given), `sip_domain_name` and `host` from the
/// host, and a disabled host disables the profiles that do not say otherwise.
pub fn gateways_from_host(id: &str, json: &Value) -> Vec<GatewayDef> {
    let Some(sdn) = text(json.get("sip_domain_name")) else {
        return Vec::new();
    };
    let host = text(json.get("host")).or_else(|| {
        id.strip_prefix("host@")
            .or_else(|| id.strip_prefix("host:"))
            .map(str::to_string)
    });
    let profiles: Vec<(String, &Value)> = match json.get("sip_profiles") {
        Some(Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return Vec::new(),
    };
    let host_disabled = json.get("disabled").filter(|v| !v.is_null());
    profiles
        .into_iter()
        .filter_map(|(name, profile)| {
            let profile = profile.as_object()?;
            let mut level = match profile.get("egress") {
                Some(Value::Object(egress)) => egress.clone(),
                _ => Map::new(),
            };
            let gwid = text(level.get("gwid")).or_else(|| text(profile.get("egress_gwid")))?;
            if level.get("disabled").is_none_or(Value::is_null)
                && let Some(disabled) = host_disabled
            {
                level.insert("disabled".into(), disabled.clone());
            }
            let mut problems = Vec::new();
            let address =
                text(level.get("address")).or_else(|| profile_address(profile, &mut problems));
            Some(GatewayDef {
                sip_domain_name: sdn.clone(),
                gwid,
                carrierid: text(level.get("carrierid")),
                address,
                host: host.clone(),
                level,
                doc: id.to_string(),
                path: format!("sip_profiles.{name}.egress."),
                problems,
            })
        })
        .collect()
}

fn profile_address(profile: &Map<String, Value>, problems: &mut Vec<String>) -> Option<String> {
    let ip = text(profile.get("egress_sip_ip")).or_else(|| text(profile.get("ingress_sip_ip")));
    let port = port(profile.get("egress_sip_port"))
        .or_else(|| port(profile.get("ingress_sip_port")).map(|p| p + 10_000));
    match (ip, port) {
        (Some(ip), Some(port)) if ip.contains(':') && !ip.starts_with('[') => {
            Some(format!("[{ip}]:{port}"))
        }
        (Some(ip), Some(port)) => Some(format!("{ip}:{port}")),
        (None, _) => {
            problems.push("no egress_sip_ip or ingress_sip_ip to derive the address".into());
            None
        }
        (Some(_), None) => {
            problems
                .push("no usable egress_sip_port or ingress_sip_port to derive the port".into());
            None
        }
    }
}

/// A priority as JSON: integral values print as integers.
pub fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        json!(f as i64)
    } else {
        json!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn attrs_merge_by_type() {
        let mut acc = obj(json!({"b": false, "s": "a", "l": [1], "o": {"x": 1, "y": 1}, "n": 1}));
        merge_attrs(
            &mut acc,
            &obj(json!({"b": true, "s": "b", "l": [2], "o": {"y": 2}, "n": 2, "new": "v"})),
        );
        assert_eq!(
            Value::Object(acc.clone()),
            json!({"b": true, "s": "ab", "l": [1, 2], "o": {"x": 1, "y": 2}, "n": 2, "new": "v"})
        );
        // Inconsistent types are ignored, null is no value.
        merge_attrs(
            &mut acc,
            &obj(json!({"b": "yes", "s": 1, "l": {}, "o": [], "n": "3", "new": null})),
        );
        assert_eq!(
            Value::Object(acc),
            json!({"b": true, "s": "ab", "l": [1, 2], "o": {"x": 1, "y": 2}, "n": 2, "new": "v"})
        );
    }

    /// A random level: scalars of every kind (invalid ones included) and
    /// attrs whose values change type from level to level.
    fn random_level(rng: &mut fastrand::Rng) -> Map<String, Value> {
        let disabled = [json!(true), json!(false), json!(null), json!("x")][rng.usize(..4)].clone();
        let scalars = [
            ("disabled", disabled),
            ("priority", json!(rng.i8(-2..3))),
            ("weight", json!(rng.i8(-1..4))),
            ("dialog_timeout", json!(rng.u8(..9))),
            (
                "local_gateway_extra_priority",
                json!(f64::from(rng.u8(..4)) / 2.0),
            ),
        ];
        let mut level: Map<String, Value> = scalars
            .into_iter()
            .filter(|_| rng.u8(..3) == 0)
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut attrs = Map::new();
        for key in ["a", "b", "c"] {
            let value = match rng.u8(..7) {
                0 => json!(rng.bool()),
                1 => json!(["x", "y"][rng.usize(..2)]),
                2 => json!([rng.u8(..3)]),
                3 => json!({ ["k", "m"][rng.usize(..2)]: rng.u8(..3) }),
                4 => json!(rng.u8(..3)),
                5 => Value::Null,
                _ => continue,
            };
            attrs.insert(key.into(), value);
        }
        if rng.u8(..4) != 0 {
            level.insert("attrs".into(), Value::Object(attrs));
        }
        level
    }

    #[test]
    fn an_overlay_folds_its_levels_in_one_step() {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        for case in 0..5000 {
            let mut base = Acc::default();
            for _ in 0..rng.usize(..3) {
                base.apply(&random_level(&mut rng), Origin::NOWHERE, &mut Vec::new());
            }
            let levels: Vec<_> = (0..rng.usize(..5))
                .map(|_| random_level(&mut rng))
                .collect();
            let mut folded = base.clone();
            let mut overlay = Overlay::default();
            for level in &levels {
                folded.apply(level, Origin::NOWHERE, &mut Vec::new());
                overlay.apply(level);
            }
            // Through the cache document's form, as the service reads it.
            let stored = Overlay::from_json(&overlay.to_json()).unwrap();
            let base = Acc::from_json(&base.to_json()).unwrap();
            let folded = Acc::from_json(&folded.to_json()).unwrap();
            assert_eq!(
                stored.compose(&base),
                folded,
                "seed {seed}, case {case}: {levels:?}"
            );
        }
    }

    #[test]
    fn weights_are_positive_integers() {
        let w = |v: Value| weight(v.as_number().unwrap());
        assert_eq!(w(json!(0)), 1);
        assert_eq!(w(json!(-3)), 1);
        assert_eq!(w(json!(2.6)), 3);
        assert_eq!(w(json!(5)), 5);
        assert_eq!(w(json!(1e12)), MAX_WEIGHT);
    }

    #[test]
    fn numbers_and_prefixes() {
        assert!(valid_number("+33_112#*-aZ"));
        assert!(!valid_number(""));
        assert!(!valid_number("33 1"));
        assert!(!valid_number(&"1".repeat(65)));
        assert!(valid_prefix(""));
        assert_eq!(rule_prefix("rule:33"), Some(("33", true)));
        assert_eq!(rule_prefix("prefix:"), Some(("", false)));
        assert_eq!(
            split_id("gateway:example.net:gw:1", "gateway"),
            Some(("example.net", "gw:1"))
        );
        assert_eq!(split_id("gateway:example.net:", "gateway"), None);
    }

    #[test]
    fn host_profiles_derive_gateways() {
        let host = json!({
            "type": "host", "host": "sbc1", "sip_domain_name": "example.net", "disabled": true,
            "sip_profiles": {
                "a": {"ingress_sip_ip": "192.0.2.1", "ingress_sip_port": "5060", "egress_gwid": "old"},
                "b": {"egress_sip_ip": "2001:db8::1", "egress_sip_port": 5070,
                      "egress": {"gwid": "new", "carrierid": "c1", "disabled": false}},
                "c": {"ingress_sip_ip": "192.0.2.3"},
                "d": {"egress": {"gwid": "x"}}
            }
        });
        let gws = gateways_from_host("host@sbc1", &host);
        let summary: Vec<_> = gws
            .iter()
            .map(|g| {
                (
                    g.gwid.as_str(),
                    g.address.clone(),
                    g.level.get("disabled").cloned(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "old",
                    Some("192.0.2.1:15060".to_string()),
                    Some(json!(true))
                ),
                (
                    "new",
                    Some("[2001:db8::1]:5070".to_string()),
                    Some(json!(false))
                ),
                ("x", None, Some(json!(true))),
            ]
        );
        assert_eq!(gws[1].carrierid.as_deref(), Some("c1"));
        assert_eq!(gws[0].host.as_deref(), Some("sbc1"));
        assert_eq!(gws[2].problems.len(), 1);
    }
}
