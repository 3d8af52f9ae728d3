//! The configuration API's checks, run before anything is written: every
//! problem of a proposed unit, policy, profile, provision config or
//! catalogue node, each with its JSON pointer. Pure: the current documents
//! come through `Lookup`.
//!
//! A problem is `locked` when an account's lock refuses the value (the API
//! answers 409 then, 400 otherwise). The same rules as the build apply —
//! the model's schema, the locks of the account chain, MAC format and
//! uniqueness among enabled units, references to documents of the same
//! account — so a write the API accepts builds without those errors.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::catalogue::{self, EffectiveModel, NodeKey};
use super::mac::Mac;
use super::merge;
use super::model::{self, Account, DocType, LockTree, PhoneModelDoc, ProvisionConfig};
use super::schema;
use super::vendors;

/// One refused value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// JSON pointer into the submitted document.
    pub path: String,
    pub reason: String,
    /// Refused by a lock (409) rather than invalid (400).
    pub locked: bool,
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Problem {
    Problem {
        path: path.into(),
        reason: reason.into(),
        locked: false,
    }
}

/// What validation reads of the current documents.
pub trait Lookup {
    /// A `units` document.
    fn doc(&self, id: &str) -> Option<Value>;
    /// The enabled units of an account with this MAC (ids).
    fn enabled_units_with_mac(&self, account: &str, mac: &Mac) -> Vec<String>;
    /// A `sip_auth` device: its account, and whether it has SIP credentials.
    fn device(&self, id: &str) -> Option<(Option<String>, bool)>;
    /// The `phone_model` documents at a catalogue node.
    fn phone_models(&self, key: &NodeKey) -> Vec<PhoneModelDoc>;
    /// The provision config of an account (its id and document).
    fn provision_config(&self, account: &str) -> Option<(String, Value)>;
    /// The accounts whose tree contains `account`, and `account` itself.
    fn subtree(&self, account: &str) -> BTreeSet<String>;
    /// The units of some accounts: (id, brand, family, model, profiles, policies).
    fn units_of(&self, accounts: &BTreeSet<String>) -> Vec<UnitRef>;
}

/// What validation needs of an existing unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRef {
    pub id: String,
    pub brand: Option<String>,
    pub family: Option<String>,
    pub model: Option<String>,
    pub profiles: Vec<String>,
    pub policies: Vec<String>,
}

/// The account named by the path, if it exists.
pub fn account(lookup: &dyn Lookup, id: &str) -> Option<Account> {
    let json = lookup.doc(id)?;
    (model::doc_type(&json) == Some(DocType::Account))
        .then(|| model::parse_account(id, &json).ok())
        .flatten()
        .map(|p| p.value)
}

/// The locks of an account's chain, root first.
pub fn chain_locks(lookup: &dyn Lookup, account: &Account) -> Vec<(String, LockTree)> {
    account
        .chain()
        .into_iter()
        .map(|id| {
            let locks = provision_config(lookup, &id)
                .map(|pc| pc.locks)
                .unwrap_or_default();
            (id, locks)
        })
        .collect()
}

fn provision_config(lookup: &dyn Lookup, account: &str) -> Option<ProvisionConfig> {
    let (id, json) = lookup.provision_config(account)?;
    model::parse_provision_config(&id, &json)
        .ok()
        .map(|p| p.value)
}

/// Common checks of every kind: an object, its `type`, its `account_id`.
fn envelope<'a>(
    doc: &'a Value,
    kind: DocType,
    account: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a Map<String, Value>> {
    let Some(object) = doc.as_object() else {
        problems.push(invalid("", "the document is not a JSON object"));
        return None;
    };
    if let Some(given) = object.get("type")
        && given.as_str() != Some(kind.name())
    {
        problems.push(invalid(
            "/type",
            format!("is {given}, not {:?}", kind.name()),
        ));
    }
    if let Some(given) = object.get("account_id")
        && given.as_str() != Some(account)
    {
        problems.push(invalid(
            "/account_id",
            format!("is {given}, not the account of the path ({account})"),
        ));
    }
    Some(object)
}

fn optional_string(
    object: &Map<String, Value>,
    field: &str,
    max: usize,
    problems: &mut Vec<Problem>,
) {
    match object.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) if text.chars().count() <= max => {}
        Some(Value::String(_)) => problems.push(invalid(
            format!("/{field}"),
            format!("is longer than {max} characters"),
        )),
        Some(_) => problems.push(invalid(format!("/{field}"), "is not a string")),
    }
}

fn optional_bool(object: &Map<String, Value>, field: &str, problems: &mut Vec<Problem>) {
    if object
        .get(field)
        .is_some_and(|v| !v.is_boolean() && !v.is_null())
    {
        problems.push(invalid(format!("/{field}"), "is not a boolean"));
    }
}

fn object_field<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a Map<String, Value>> {
    match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(_) => {
            problems.push(invalid(format!("/{field}"), "is not an object"));
            None
        }
    }
}

/// Schema problems of `value` (at `/field`) against a model.
fn schema_problems(
    m: &EffectiveModel,
    value: &Map<String, Value>,
    field: &str,
    note: &str,
    problems: &mut Vec<Problem>,
) {
    let (_, violations) = schema::clean(&m.schema, value, &format!("/{field}"));
    problems.extend(
        violations
            .into_iter()
            .map(|v| invalid(v.path, format!("{}{note}", v.reason))),
    );
}

fn lock_problems(
    value: &Map<String, Value>,
    field: &str,
    locks: &[(String, LockTree)],
    rank: usize,
    problems: &mut Vec<Problem>,
) {
    for (path, account) in merge::locked_paths(value, locks, rank) {
        problems.push(Problem {
            path: format!("/{field}{path}"),
            reason: format!("is locked by account {account}"),
            locked: true,
        });
    }
}

/// The model of a unit document, or the problems naming it.
fn unit_model(
    lookup: &dyn Lookup,
    object: &Map<String, Value>,
    problems: &mut Vec<Problem>,
) -> Option<EffectiveModel> {
    let name = |field: &str, problems: &mut Vec<Problem>| match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !model::normalise_name(s).is_empty() => {
            Some(model::normalise_name(s))
        }
        Some(_) => {
            problems.push(invalid(format!("/{field}"), "is not a name"));
            None
        }
    };
    let (brand, family, model_name) = (
        name("brand", problems),
        name("family", problems),
        name("model", problems),
    );
    let Some(brand) = brand else {
        problems.push(invalid("/brand", "is required"));
        return None;
    };
    let Some(model_name) = model_name else {
        problems.push(invalid("/model", "is required"));
        return None;
    };
    if vendors::by_brand(&brand).is_none() {
        problems.push(invalid(
            "/brand",
            format!("caldera has no vendor code for {brand:?}"),
        ));
        return None;
    }
    let mut notes = Vec::new();
    match catalogue::effective_model(
        &brand,
        None,
        &model_name,
        &mut |key| lookup.phone_models(key),
        &mut notes,
    ) {
        Err(why) => {
            problems.push(invalid("/model", why));
            None
        }
        Ok(m) => {
            if let Some(family) = family
                && family != m.family
            {
                problems.push(invalid(
                    "/family",
                    format!(
                        "is {family:?}, but {brand} {model_name} is in family {:?}",
                        m.family
                    ),
                ));
            }
            Some(m)
        }
    }
}

/// Checks a unit document for account `account` (`id`: its id, for
/// uniqueness).
pub fn unit(lookup: &dyn Lookup, account: &Account, id: &str, doc: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(object) = envelope(doc, DocType::Unit, &account.id, &mut problems) else {
        return problems;
    };
    optional_string(object, "name", 128, &mut problems);
    optional_bool(object, "enabled", &mut problems);
    let enabled = object
        .get("enabled")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    match object.get("mac_address") {
        None | Some(Value::Null) => problems.push(invalid("/mac_address", "is required")),
        Some(value) => match value.as_str().and_then(Mac::parse) {
            None => problems.push(invalid(
                "/mac_address",
                format!(
                    "{value} is not a MAC address (12 hex digits, optionally grouped by : - or .)"
                ),
            )),
            Some(mac) if enabled => {
                let others: Vec<String> = lookup
                    .enabled_units_with_mac(&account.id, &mac)
                    .into_iter()
                    .filter(|o| o != id)
                    .collect();
                if !others.is_empty() {
                    problems.push(invalid(
                        "/mac_address",
                        format!(
                            "MAC {mac} is already used by enabled unit(s) {} of this account",
                            others.join(", ")
                        ),
                    ));
                }
            }
            Some(_) => {}
        },
    }
    let m = unit_model(lookup, object, &mut problems);
    if let Some(config) = object_field(object, "config", &mut problems) {
        if let Some(m) = &m {
            schema_problems(m, config, "config", "", &mut problems);
        }
        let locks = chain_locks(lookup, account);
        lock_problems(config, "config", &locks, locks.len(), &mut problems);
    }
    lines(lookup, account, object, &mut problems);
    for (field, kind) in [
        ("profiles", DocType::Profile),
        ("policies", DocType::Policy),
    ] {
        references(lookup, account, object, field, kind, &mut problems);
    }
    credentials(object, "provisioning", &mut problems);
    problems.sort();
    problems
}

fn lines(
    lookup: &dyn Lookup,
    account: &Account,
    object: &Map<String, Value>,
    problems: &mut Vec<Problem>,
) {
    let items = match object.get("lines") {
        None | Some(Value::Null) => return,
        Some(Value::Array(items)) => items,
        Some(_) => {
            problems.push(invalid("/lines", "is not a list"));
            return;
        }
    };
    let mut numbers = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| format!("/lines/{i}/{field}");
        let Some(line) = item.as_object() else {
            problems.push(invalid(format!("/lines/{i}"), "is not an object"));
            continue;
        };
        match line.get("line").and_then(Value::as_u64) {
            Some(n) if (1..=u64::from(u16::MAX)).contains(&n) => {
                if !numbers.insert(n) {
                    problems.push(invalid(at("line"), format!("line {n} is given twice")));
                }
            }
            _ => problems.push(invalid(at("line"), "is required: a line number, 1 or more")),
        }
        match line.get("device_id").and_then(Value::as_str) {
            None => problems.push(invalid(
                at("device_id"),
                "is required: a device of sip_auth",
            )),
            Some(device) => match lookup.device(device) {
                None => problems.push(invalid(
                    at("device_id"),
                    format!("device {device} does not exist in sip_auth"),
                )),
                Some((owner, _)) if owner.as_deref() != Some(account.id.as_str()) => {
                    problems.push(invalid(
                        at("device_id"),
                        format!("device {device} belongs to another account"),
                    ));
                }
                Some((_, false)) => problems.push(invalid(
                    at("device_id"),
                    format!("device {device} has no sip.username and sip.password"),
                )),
                Some(_) => {}
            },
        }
        for field in ["label", "display_name"] {
            if line
                .get(field)
                .is_some_and(|v| !v.is_string() && !v.is_null())
            {
                problems.push(invalid(at(field), "is not a string"));
            }
        }
    }
}

/// `field` is a list of ids of documents of `kind` in the account.
fn references(
    lookup: &dyn Lookup,
    account: &Account,
    object: &Map<String, Value>,
    field: &str,
    kind: DocType,
    problems: &mut Vec<Problem>,
) {
    let items = match object.get(field) {
        None | Some(Value::Null) => return,
        Some(Value::Array(items)) => items,
        Some(_) => {
            problems.push(invalid(format!("/{field}"), "is not a list of ids"));
            return;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("/{field}/{i}");
        let Some(id) = item.as_str() else {
            problems.push(invalid(path, "is not an id"));
            continue;
        };
        match lookup.doc(id) {
            Some(json) if model::doc_type(&json) == Some(kind) => {
                if model::account_of(&json) != Some(account.id.as_str()) {
                    problems.push(invalid(
                        path,
                        format!("{} {id} belongs to another account", kind.name()),
                    ));
                }
            }
            Some(_) => problems.push(invalid(path, format!("{id} is not a {}", kind.name()))),
            None => problems.push(invalid(
                path,
                format!("{} {id} does not exist", kind.name()),
            )),
        }
    }
}

fn credentials(object: &Map<String, Value>, field: &str, problems: &mut Vec<Problem>) {
    let value = match object.get(field) {
        None | Some(Value::Null) => return,
        Some(Value::Object(value)) => value,
        Some(_) => {
            problems.push(invalid(
                format!("/{field}"),
                "is not an object {username, password}",
            ));
            return;
        }
    };
    for name in ["username", "password"] {
        if value
            .get(name)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            problems.push(invalid(
                format!("/{field}/{name}"),
                "is required: a non-empty string",
            ));
        }
    }
    if value
        .get("allow_basic")
        .is_some_and(|v| !v.is_boolean() && !v.is_null())
    {
        problems.push(invalid(format!("/{field}/allow_basic"), "is not a boolean"));
    }
}

/// The distinct models of some units, resolved (unresolvable ones skipped:
/// their units report them).
fn models_of(lookup: &dyn Lookup, units: &[UnitRef]) -> Vec<(EffectiveModel, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for unit in units {
        let (Some(brand), Some(name)) = (&unit.brand, &unit.model) else {
            continue;
        };
        if !seen.insert((brand.clone(), name.clone())) {
            continue;
        }
        let mut notes = Vec::new();
        if let Ok(m) = catalogue::effective_model(
            brand,
            None,
            name,
            &mut |key| lookup.phone_models(key),
            &mut notes,
        ) {
            out.push((m, unit.id.clone()));
        }
    }
    out
}

/// Checks a policy document.
pub fn policy(lookup: &dyn Lookup, account: &Account, id: &str, doc: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(object) = envelope(doc, DocType::Policy, &account.id, &mut problems) else {
        return problems;
    };
    optional_string(object, "name", 128, &mut problems);
    if let Some(config) = object_field(object, "config", &mut problems) {
        let locks = chain_locks(lookup, account);
        lock_problems(config, "config", &locks, locks.len(), &mut problems);
        // Against the model of every unit that uses the policy.
        let units: Vec<UnitRef> = lookup
            .units_of(&BTreeSet::from([account.id.clone()]))
            .into_iter()
            .filter(|u| {
                u.policies.iter().any(|p| p == id)
                    || u.profiles.iter().any(|p| profile_has(lookup, p, id))
            })
            .collect();
        for (m, unit) in models_of(lookup, &units) {
            schema_problems(
                &m,
                config,
                "config",
                &format!(" (model {} of unit {unit})", m.path()),
                &mut problems,
            );
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

fn profile_has(lookup: &dyn Lookup, profile: &str, policy: &str) -> bool {
    lookup.doc(profile).is_some_and(|json| {
        json.get("policies")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(|p| p.as_str() == Some(policy)))
    })
}

/// Checks a profile document.
pub fn profile(lookup: &dyn Lookup, account: &Account, doc: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(object) = envelope(doc, DocType::Profile, &account.id, &mut problems) else {
        return problems;
    };
    optional_string(object, "name", 128, &mut problems);
    references(
        lookup,
        account,
        object,
        "policies",
        DocType::Policy,
        &mut problems,
    );
    problems.sort();
    problems
}

/// Checks a provision config document.
pub fn provision_config_doc(lookup: &dyn Lookup, account: &Account, doc: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(object) = envelope(doc, DocType::ProvisionConfig, &account.id, &mut problems) else {
        return problems;
    };
    if let Ok(parsed) = model::parse_provision_config("-", &with_account(doc, &account.id)) {
        for problem in parsed.problems {
            // "allowed_cidrs[1] is …" → /allowed_cidrs/1, "locks/a: …" → /locks/a
            let token = problem
                .split(' ')
                .next()
                .unwrap_or("")
                .trim_end_matches(':');
            let path = format!("/{}", token.replace('[', "/").replace(']', ""));
            problems.push(invalid(path, problem));
        }
    }
    credentials(object, "provisioning", &mut problems);
    let locks = chain_locks(lookup, account);
    // Its own locks bind below it, not itself: the ancestors' locks apply.
    let rank = locks.len().saturating_sub(1);
    let subtree = lookup.subtree(&account.id);
    let models = models_of(lookup, &lookup.units_of(&subtree));
    for field in ["config", "defaults"] {
        if let Some(value) = object_field(object, field, &mut problems) {
            lock_problems(value, field, &locks, rank, &mut problems);
            for (m, unit) in &models {
                schema_problems(
                    m,
                    value,
                    field,
                    &format!(" (model {} of unit {unit})", m.path()),
                    &mut problems,
                );
            }
        }
    }
    if object
        .get("locks")
        .is_some_and(|l| !l.is_object() && !l.is_array() && !l.is_null())
    {
        problems.push(invalid("/locks", "is not an object mirroring config paths"));
    }
    problems.sort();
    problems.dedup();
    problems
}

fn with_account(doc: &Value, account: &str) -> Value {
    let mut doc = doc.clone();
    if let Some(object) = doc.as_object_mut() {
        object.insert("account_id".into(), Value::String(account.into()));
    }
    doc
}

/// Checks a catalogue node written through `/v1/unit_options/…`.
pub fn phone_model(lookup: &dyn Lookup, key: &NodeKey, doc: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(object) = doc.as_object() else {
        return vec![invalid("", "the document is not a JSON object")];
    };
    optional_string(object, "description", 1024, &mut problems);
    if let Some(schema) = object.get("schema").filter(|s| !s.is_null()) {
        problems.extend(
            schema::check_schema(schema, "/schema")
                .into_iter()
                .map(|v| invalid(v.path, v.reason)),
        );
    }
    if object
        .get("meta")
        .is_some_and(|m| !m.is_object() && !m.is_null())
    {
        problems.push(invalid("/meta", "is not an object"));
    }
    let vendor_exists = |brand: &str| {
        vendors::catalogue().get(brand).is_some()
            || !lookup
                .phone_models(&NodeKey::Vendor(brand.into()))
                .is_empty()
    };
    match key {
        NodeKey::Vendor(_) => {}
        NodeKey::Family(brand, _) => {
            if !vendor_exists(brand) {
                problems.push(invalid(
                    "",
                    format!("vendor {brand:?} does not exist; create it first"),
                ));
            }
        }
        NodeKey::Model(brand, _) => {
            let family = object
                .get("family")
                .and_then(Value::as_str)
                .map(model::normalise_name);
            match family {
                None => problems.push(invalid("/family", "is required")),
                Some(family) => {
                    let shipped = vendors::catalogue()
                        .get(brand.as_str())
                        .and_then(|v| v.get("families")?.get(&family))
                        .is_some();
                    let documented = !lookup
                        .phone_models(&NodeKey::Family(brand.clone(), family.clone()))
                        .is_empty();
                    if !shipped && !documented {
                        problems.push(invalid(
                            "",
                            format!("family {family:?} of {brand} does not exist; create it first"),
                        ));
                    }
                }
            }
        }
    }
    problems.sort();
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Fake {
        docs: BTreeMap<String, Value>,
        devices: BTreeMap<String, (Option<String>, bool)>,
    }

    impl Lookup for Fake {
        fn doc(&self, id: &str) -> Option<Value> {
            self.docs.get(id).cloned()
        }
        fn enabled_units_with_mac(&self, account: &str, mac: &Mac) -> Vec<String> {
            self.docs
                .iter()
                .filter(|(_, d)| {
                    model::doc_type(d) == Some(DocType::Unit)
                        && model::account_of(d) == Some(account)
                })
                .filter(|(_, d)| {
                    model::unit_mac(d) == Some(*mac) && d.get("enabled") != Some(&json!(false))
                })
                .map(|(id, _)| id.clone())
                .collect()
        }
        fn device(&self, id: &str) -> Option<(Option<String>, bool)> {
            self.devices.get(id).cloned()
        }
        fn phone_models(&self, key: &NodeKey) -> Vec<PhoneModelDoc> {
            self.docs
                .iter()
                .filter(|(_, d)| model::doc_type(d) == Some(DocType::PhoneModel))
                .filter_map(|(id, d)| model::parse_phone_model(id, d).ok())
                .filter(|d| NodeKey::of(d) == *key)
                .collect()
        }
        fn provision_config(&self, account: &str) -> Option<(String, Value)> {
            self.docs
                .iter()
                .find(|(_, d)| {
                    model::doc_type(d) == Some(DocType::ProvisionConfig)
                        && model::account_of(d) == Some(account)
                })
                .map(|(id, d)| (id.clone(), d.clone()))
        }
        fn subtree(&self, account: &str) -> BTreeSet<String> {
            let mut out = BTreeSet::from([account.to_string()]);
            for (id, d) in &self.docs {
                if d.get("tree")
                    .and_then(Value::as_array)
                    .is_some_and(|t| t.iter().any(|a| a == account))
                {
                    out.insert(id.clone());
                }
            }
            out
        }
        fn units_of(&self, accounts: &BTreeSet<String>) -> Vec<UnitRef> {
            self.docs
                .iter()
                .filter(|(_, d)| model::doc_type(d) == Some(DocType::Unit))
                .filter(|(_, d)| model::account_of(d).is_some_and(|a| accounts.contains(a)))
                .filter_map(|(id, d)| {
                    let u = model::parse_unit(id, d).ok()?.value;
                    Some(UnitRef {
                        id: id.clone(),
                        brand: u.brand,
                        family: u.family,
                        model: u.model,
                        profiles: u.profiles,
                        policies: u.policies,
                    })
                })
                .collect()
        }
    }

    fn world() -> Fake {
        let mut fake = Fake::default();
        for doc in [
            json!({"_id": "prov", "type": "account", "realm": "prov.example.net"}),
            json!({"_id": "acme", "type": "account", "realm": "acme.example.net", "tree": ["prov"]}),
            json!({"_id": "other", "type": "account", "realm": "other.example.net"}),
            json!({"_id": "pc-prov", "type": "provision_config", "account_id": "prov", "locks": {"codecs": true}}),
            json!({"_id": "pm", "type": "phone_model", "brand": "yealink", "schema": {"properties": {"vlan": {"type": "integer", "maximum": 4094}}}}),
            json!({"_id": "u-taken", "type": "unit", "account_id": "acme", "mac_address": "001565000001", "brand": "yealink", "model": "t46s", "policies": ["pol"]}),
            json!({"_id": "pol", "type": "policy", "account_id": "acme", "config": {}}),
            json!({"_id": "pol-other", "type": "policy", "account_id": "other", "config": {}}),
            json!({"_id": "prof", "type": "profile", "account_id": "acme", "policies": ["pol"]}),
        ] {
            fake.docs
                .insert(doc["_id"].as_str().unwrap().to_string(), doc);
        }
        fake.devices
            .insert("dev".into(), (Some("acme".into()), true));
        fake.devices
            .insert("dev-other".into(), (Some("other".into()), true));
        fake.devices
            .insert("dev-ip".into(), (Some("acme".into()), false));
        fake
    }

    fn paths(problems: &[Problem]) -> Vec<(String, bool)> {
        problems
            .iter()
            .map(|p| (p.path.clone(), p.locked))
            .collect()
    }

    #[test]
    fn every_problem_of_a_unit_is_listed_with_its_path() {
        let fake = world();
        let acme = account(&fake, "acme").unwrap();
        let doc = json!({"type": "unit", "account_id": "other", "name": 5, "mac_address": "00:15:65:00:00:01",
                         "brand": "yealink", "model": "t46s", "family": "t5x", "enabled": "yes",
                         "config": {"vlan": 9000, "codecs": ["opus"]},
                         "lines": [{"line": 1, "device_id": "dev"}, {"line": 1, "device_id": "dev-other"}, {"device_id": "dev-ip"}, 4],
                         "profiles": ["prof", "pol", "missing"], "policies": ["pol-other", 3],
                         "provisioning": {"username": "u"}});
        let problems = unit(&fake, &acme, "u-new", &doc);
        assert_eq!(
            paths(&problems),
            [
                ("/account_id".into(), false),
                ("/config/codecs".into(), true),
                ("/config/codecs/0".into(), false),
                ("/config/vlan".into(), false),
                ("/enabled".into(), false),
                ("/family".into(), false),
                ("/lines/1/device_id".into(), false),
                ("/lines/1/line".into(), false),
                ("/lines/2/device_id".into(), false),
                ("/lines/2/line".into(), false),
                ("/lines/3".into(), false),
                ("/mac_address".into(), false),
                ("/name".into(), false),
                ("/policies/0".into(), false),
                ("/policies/1".into(), false),
                ("/profiles/1".into(), false),
                ("/profiles/2".into(), false),
                ("/provisioning/password".into(), false),
            ],
            "{problems:#?}"
        );
        // The unit itself may keep its MAC.
        let itself = json!({"mac_address": "001565000001", "brand": "yealink", "model": "t46s"});
        assert!(unit(&fake, &acme, "u-taken", &itself).is_empty());
        assert_eq!(
            paths(&unit(&fake, &acme, "x", &json!({}))),
            [("/brand".into(), false), ("/mac_address".into(), false)]
        );
    }

    #[test]
    fn provision_configs_meet_their_ancestors_locks_and_the_subtree_models() {
        let fake = world();
        let acme = account(&fake, "acme").unwrap();
        let doc = json!({"config": {"codecs": ["g722"], "vlan": 5000}, "defaults": {"codecs": []},
                         "locks": {"vlan": true}, "allowed_cidrs": ["10.0.0.0/8", "x"], "provisioning": 3});
        let problems = provision_config_doc(&fake, &acme, &doc);
        assert_eq!(
            paths(&problems),
            [
                ("/allowed_cidrs/1".into(), false),
                ("/config/codecs".into(), true),
                ("/config/vlan".into(), false),
                ("/defaults/codecs".into(), true),
                ("/provisioning".into(), false),
            ],
            "{problems:#?}"
        );
        // The provider's own config is not bound by its own lock.
        let prov = account(&fake, "prov").unwrap();
        assert!(
            provision_config_doc(&fake, &prov, &json!({"config": {"codecs": ["pcmu"]}})).is_empty()
        );
    }

    #[test]
    fn policies_are_checked_against_the_models_that_use_them() {
        let fake = world();
        let acme = account(&fake, "acme").unwrap();
        let problems = policy(
            &fake,
            &acme,
            "pol",
            &json!({"config": {"vlan": 99999, "codecs": []}}),
        );
        assert_eq!(
            paths(&problems),
            [
                ("/config/codecs".into(), true),
                ("/config/vlan".into(), false)
            ]
        );
        assert!(problems[1].reason.contains("unit u-taken"));
        assert!(
            policy(
                &fake,
                &acme,
                "pol-unused",
                &json!({"config": {"vlan": 99999}})
            )
            .is_empty()
        );
        let problems = profile(
            &fake,
            &acme,
            &json!({"policies": ["pol", "pol-other", "nope"]}),
        );
        assert_eq!(
            paths(&problems),
            [("/policies/1".into(), false), ("/policies/2".into(), false)]
        );
    }

    #[test]
    fn catalogue_nodes_need_a_parent_and_a_valid_schema() {
        let fake = world();
        let key = NodeKey::Model("yealink".into(), "t48u".into());
        assert!(
            phone_model(
                &fake,
                &key,
                &json!({"family": "t4x", "description": "T48U"})
            )
            .is_empty()
        );
        let problems = phone_model(
            &fake,
            &key,
            &json!({"family": "t9x", "schema": {"type": "nope"}}),
        );
        assert_eq!(
            paths(&problems),
            [("".into(), false), ("/schema/type".into(), false)]
        );
        let family = NodeKey::Family("acme".into(), "f".into());
        assert_eq!(phone_model(&fake, &family, &json!({})).len(), 1);
    }
}
