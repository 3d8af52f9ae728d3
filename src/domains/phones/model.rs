//! The documents of the `units` database (and the `sip_auth` devices lines
//! name) parsed into typed values. Pure: no IO, no clock.
//!
//! Parsing is tolerant per field: a document keeps what is usable and
//! lists its problems (each naming the field), so one bad line or one bad
//! CIDR never hides the rest of a unit. A document is rejected whole only
//! when it is not an object or misses what identifies it (`account_id`).
//! Where a half-read field could weaken security (provisioning
//! credentials, CIDR allow lists) the parse fails closed.

use core::net::IpAddr;
use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::mac::Mac;

/// The logical source of phone provisioning documents.
pub const UNITS: &str = "units";
/// The logical source of the devices that supply SIP credentials.
pub const SIP_AUTH: &str = "sip_auth";
/// The synthetic source of template attachment bodies (id = template
/// document id), fed by the template fetcher, never by a follower.
pub const TEMPLATE_BODIES: &str = "phones_templates";

/// The document types of `units`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocType {
    Account,
    ProvisionConfig,
    Policy,
    Profile,
    Unit,
    Template,
    PhoneModel,
}

impl DocType {
    pub fn name(self) -> &'static str {
        match self {
            DocType::Account => "account",
            DocType::ProvisionConfig => "provision_config",
            DocType::Policy => "policy",
            DocType::Profile => "profile",
            DocType::Unit => "unit",
            DocType::Template => "template",
            DocType::PhoneModel => "phone_model",
        }
    }
}

/// The type of a document: `type`, else `pvt_type` (with Stromboli's
/// `provision_policy`/`provision_profile` names). Soft-deleted documents
/// (`pvt_deleted: true`, Kazoo's convention) have none: they count as gone.
pub fn doc_type(json: &Value) -> Option<DocType> {
    if json.get("pvt_deleted").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let name = json
        .get("type")
        .and_then(Value::as_str)
        .or_else(|| json.get("pvt_type").and_then(Value::as_str))?;
    Some(match name {
        "account" => DocType::Account,
        "provision_config" | "account_provision" => DocType::ProvisionConfig,
        "policy" | "provision_policy" => DocType::Policy,
        "profile" | "provision_profile" => DocType::Profile,
        "unit" => DocType::Unit,
        "template" => DocType::Template,
        "phone_model" => DocType::PhoneModel,
        _ => return None,
    })
}

/// The account a document belongs to (`account_id`, else `pvt_account_id`).
pub fn account_of(json: &Value) -> Option<&str> {
    json.get("account_id")
        .and_then(Value::as_str)
        .or_else(|| json.get("pvt_account_id").and_then(Value::as_str))
        .filter(|id| !id.is_empty())
}

/// Lower case, spaces removed: how brands and models are compared.
pub fn normalise_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A parsed document and the problems found in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub value: T,
    pub problems: Vec<String>,
}

fn object<'a>(json: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    json.as_object()
        .ok_or_else(|| format!("the {what} is not a JSON object"))
}

/// An optional object field; a wrong type is a problem and reads as empty.
fn object_field(json: &Value, field: &str, problems: &mut Vec<String>) -> Map<String, Value> {
    match json.get(field) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => {
            problems.push(format!("{field} is not an object; it is ignored"));
            Map::new()
        }
    }
}

fn string_field(json: &Value, field: &str, problems: &mut Vec<String>) -> Option<String> {
    match json.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            problems.push(format!("{field} is not a string; it is ignored"));
            None
        }
    }
}

fn bool_field(json: &Value, field: &str, default: bool, problems: &mut Vec<String>) -> bool {
    match json.get(field) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(value)) => *value,
        Some(_) => {
            problems.push(format!("{field} is not a boolean; it counts as {default}"));
            default
        }
    }
}

/// An ordered list of ids (`profiles`, `policies`, `tree`).
fn id_list(json: &Value, field: &str, problems: &mut Vec<String>) -> Vec<String> {
    match json.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut ids = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().filter(|s| !s.is_empty()) {
                    Some(id) => ids.push(id.to_string()),
                    None => problems.push(format!("{field}[{i}] is not an id; it is skipped")),
                }
            }
            ids
        }
        Some(_) => {
            problems.push(format!("{field} is not a list of ids; it is ignored"));
            Vec::new()
        }
    }
}

/// A provisioning realm: a host name (or address) phones put in `Host`.
pub fn normalise_realm(text: &str) -> Option<String> {
    let realm = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !realm.is_empty()
        && realm.len() <= 253
        && realm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    valid.then_some(realm)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub name: Option<String>,
    /// Normalised (lower case, no trailing dot); `None` when missing or invalid.
    pub realm: Option<String>,
    /// Ancestors, root first, parent last.
    pub tree: Vec<String>,
    pub enabled: bool,
}

impl Account {
    /// The provision chain: ancestors root first, then this account.
    pub fn chain(&self) -> Vec<String> {
        let mut chain = self.tree.clone();
        chain.push(self.id.clone());
        chain
    }
}

/// # Errors
/// The document is not an object.
pub fn parse_account(id: &str, json: &Value) -> Result<Parsed<Account>, String> {
    object(json, "account")?;
    let mut problems = Vec::new();
    let realm = match string_field(json, "realm", &mut problems) {
        None => {
            problems.push("the account has no realm; phones cannot reach it by Host".into());
            None
        }
        Some(text) => {
            let realm = normalise_realm(&text);
            if realm.is_none() {
                problems.push(format!(
                    "realm {text:?} is not a host name; phones cannot reach the account by Host"
                ));
            }
            realm
        }
    };
    let field = if json.get("tree").is_some() {
        "tree"
    } else {
        "pvt_tree"
    };
    let mut tree = Vec::new();
    for ancestor in id_list(json, field, &mut problems) {
        if ancestor == id {
            problems.push(format!("{field} names the account itself; skipped"));
        } else if tree.contains(&ancestor) {
            problems.push(format!("{field} names {ancestor} twice; skipped"));
        } else {
            tree.push(ancestor);
        }
    }
    Ok(Parsed {
        value: Account {
            id: id.to_string(),
            name: string_field(json, "name", &mut problems),
            realm,
            tree,
            enabled: bool_field(json, "enabled", true, &mut problems),
        },
        problems,
    })
}

/// HTTP credentials a device must present to fetch its per-device files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Valid {
        username: String,
        password: String,
        /// Whether Basic (besides Digest) is accepted.
        allow_basic: bool,
    },
    /// Present but unusable: the files are not served until fixed (an
    /// unreadable credential must not turn authentication off).
    Invalid(String),
}

fn credentials(json: &Value, field: &str) -> Option<Credentials> {
    let value = json.get(field).filter(|v| !v.is_null())?;
    let text = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let parsed = match (value.as_object(), text("username"), text("password")) {
        (None, _, _) => Credentials::Invalid(format!("{field} is not an object")),
        (Some(_), None, _) => Credentials::Invalid(format!("{field}.username is missing")),
        (Some(_), _, None) => Credentials::Invalid(format!("{field}.password is missing")),
        (Some(_), Some(username), Some(password)) => match value.get("allow_basic") {
            None | Some(Value::Null) | Some(Value::Bool(_)) => Credentials::Valid {
                username: username.to_string(),
                password: password.to_string(),
                allow_basic: value.get("allow_basic") == Some(&Value::Bool(true)),
            },
            Some(_) => Credentials::Invalid(format!("{field}.allow_basic is not a boolean")),
        },
    };
    Some(parsed)
}

/// Which addresses may fetch an account's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowList {
    /// No restriction.
    Anyone,
    /// Only these networks (possibly none: an allow list whose every entry
    /// is unreadable lets nobody in rather than everybody).
    Only(Vec<IpNet>),
}

impl AllowList {
    pub fn allows(&self, ip: IpAddr) -> bool {
        match self {
            AllowList::Anyone => true,
            AllowList::Only(nets) => nets.iter().any(|net| net.contains(&ip)),
        }
    }

    /// The list as strings (`None` for no restriction).
    pub fn to_strings(&self) -> Option<Vec<String>> {
        match self {
            AllowList::Anyone => None,
            AllowList::Only(nets) => Some(nets.iter().map(ToString::to_string).collect()),
        }
    }
}

/// A network or a bare address (a host route).
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn allow_list(json: &Value, problems: &mut Vec<String>) -> AllowList {
    match json.get("allowed_cidrs") {
        None | Some(Value::Null) => AllowList::Anyone,
        Some(Value::Array(items)) if items.is_empty() => AllowList::Anyone,
        Some(Value::Array(items)) => {
            let mut nets = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().and_then(parse_cidr) {
                    Some(net) => nets.push(net),
                    None => problems.push(format!(
                        "allowed_cidrs[{i}] is not a network (a.b.c.d/n or an address); skipped"
                    )),
                }
            }
            AllowList::Only(nets)
        }
        Some(_) => {
            problems
                .push("allowed_cidrs is not a list; nobody is allowed until it is fixed".into());
            AllowList::Only(Vec::new())
        }
    }
}

/// Paths an account forbids its descendants (and its units) to change.
/// A node is locked when its lock value is `true` or `"locked"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockTree {
    pub locked: bool,
    pub children: BTreeMap<String, LockTree>,
}

impl LockTree {
    pub fn is_empty(&self) -> bool {
        !self.locked && self.children.is_empty()
    }

    /// Every locked path (JSON pointers), in order.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect("", &mut out);
        out
    }

    fn collect(&self, prefix: &str, out: &mut Vec<String>) {
        if self.locked {
            out.push(prefix.to_string());
            return;
        }
        for (key, child) in &self.children {
            child.collect(&format!("{prefix}/{}", pointer_escape(key)), out);
        }
    }
}

/// RFC 6901 escaping of one path segment.
pub fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn parse_locks(value: &Value, path: &str, problems: &mut Vec<String>) -> LockTree {
    match value {
        Value::Bool(locked) => LockTree {
            locked: *locked,
            children: BTreeMap::new(),
        },
        Value::String(text) if text == "locked" => LockTree {
            locked: true,
            children: BTreeMap::new(),
        },
        Value::Null => LockTree::default(),
        Value::Object(map) => {
            let children = map
                .iter()
                .map(|(key, value)| {
                    let child = format!("{path}/{}", pointer_escape(key));
                    (key.clone(), parse_locks(value, &child, problems))
                })
                .filter(|(_, tree)| !tree.is_empty())
                .collect();
            LockTree {
                locked: false,
                children,
            }
        }
        // The Stromboli documentation writes locks as a list of objects.
        Value::Array(items) if path.is_empty() => {
            let mut merged = Map::new();
            for item in items {
                match item.as_object() {
                    Some(map) => merged.extend(map.clone()),
                    None => problems.push("locks: a list entry is not an object; skipped".into()),
                }
            }
            parse_locks(&Value::Object(merged), path, problems)
        }
        _ => {
            problems.push(format!(
                "locks{path}: a lock is true or \"locked\"; this one is ignored"
            ));
            LockTree::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionConfig {
    pub id: String,
    pub account_id: String,
    pub config: Map<String, Value>,
    pub defaults: Map<String, Value>,
    pub locks: LockTree,
    pub provisioning: Option<Credentials>,
    pub allowed: AllowList,
}

/// # Errors
/// Not an object, or no `account_id`.
pub fn parse_provision_config(id: &str, json: &Value) -> Result<Parsed<ProvisionConfig>, String> {
    object(json, "provision config")?;
    let account_id = account_of(json)
        .ok_or("the provision config has no account_id")?
        .to_string();
    let mut problems = Vec::new();
    let locks = match json.get("locks") {
        None => LockTree::default(),
        Some(value) => parse_locks(value, "", &mut problems),
    };
    Ok(Parsed {
        value: ProvisionConfig {
            id: id.to_string(),
            account_id,
            config: object_field(json, "config", &mut problems),
            defaults: object_field(json, "defaults", &mut problems),
            locks,
            provisioning: credentials(json, "provisioning"),
            allowed: allow_list(json, &mut problems),
        },
        problems,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub id: String,
    pub account_id: String,
    pub name: Option<String>,
    pub config: Map<String, Value>,
}

/// # Errors
/// Not an object, or no `account_id`.
pub fn parse_policy(id: &str, json: &Value) -> Result<Parsed<Policy>, String> {
    object(json, "policy")?;
    let account_id = account_of(json)
        .ok_or("the policy has no account_id")?
        .to_string();
    let mut problems = Vec::new();
    Ok(Parsed {
        value: Policy {
            id: id.to_string(),
            account_id,
            name: string_field(json, "name", &mut problems),
            config: object_field(json, "config", &mut problems),
        },
        problems,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub id: String,
    pub account_id: String,
    pub name: Option<String>,
    pub policies: Vec<String>,
}

/// # Errors
/// Not an object, or no `account_id`.
pub fn parse_profile(id: &str, json: &Value) -> Result<Parsed<Profile>, String> {
    object(json, "profile")?;
    let account_id = account_of(json)
        .ok_or("the profile has no account_id")?
        .to_string();
    let mut problems = Vec::new();
    Ok(Parsed {
        value: Profile {
            id: id.to_string(),
            account_id,
            name: string_field(json, "name", &mut problems),
            policies: id_list(json, "policies", &mut problems),
        },
        problems,
    })
}

/// One line of a unit: which `sip_auth` device supplies its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub line: u32,
    pub device_id: String,
    pub label: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub id: String,
    pub account_id: String,
    pub name: Option<String>,
    pub mac: Option<Mac>,
    pub brand: Option<String>,
    pub family: Option<String>,
    pub model: Option<String>,
    /// Ordered by line number.
    pub lines: Vec<Line>,
    pub config: Map<String, Value>,
    pub profiles: Vec<String>,
    pub policies: Vec<String>,
    pub enabled: bool,
    pub provisioning: Option<Credentials>,
}

/// The MAC of a unit document, if it has a readable one.
pub fn unit_mac(json: &Value) -> Option<Mac> {
    json.get("mac_address")
        .and_then(Value::as_str)
        .and_then(Mac::parse)
}

/// # Errors
/// Not an object, or no `account_id`.
pub fn parse_unit(id: &str, json: &Value) -> Result<Parsed<Unit>, String> {
    object(json, "unit")?;
    let account_id = account_of(json)
        .ok_or("the unit has no account_id")?
        .to_string();
    let mut problems = Vec::new();
    let mac = match json.get("mac_address") {
        None | Some(Value::Null) => {
            problems.push("the unit has no mac_address".into());
            None
        }
        Some(value) => {
            let mac = value.as_str().and_then(Mac::parse);
            if mac.is_none() {
                problems.push(format!(
                    "mac_address {value} is not a MAC address (12 hex digits, optionally grouped by : - or .)"
                ));
            }
            mac
        }
    };
    let name_of = |field: &str, problems: &mut Vec<String>| {
        string_field(json, field, problems)
            .map(|s| normalise_name(&s))
            .filter(|s| !s.is_empty())
    };
    let brand = name_of("brand", &mut problems);
    let family = name_of("family", &mut problems);
    let model = name_of("model", &mut problems);
    Ok(Parsed {
        value: Unit {
            id: id.to_string(),
            account_id,
            name: string_field(json, "name", &mut problems),
            mac,
            brand,
            family,
            model,
            lines: parse_lines(json, &mut problems),
            config: object_field(json, "config", &mut problems),
            profiles: id_list(json, "profiles", &mut problems),
            policies: id_list(json, "policies", &mut problems),
            enabled: bool_field(json, "enabled", true, &mut problems),
            provisioning: credentials(json, "provisioning"),
        },
        problems,
    })
}

/// `lines[]`: `{line, device_id, label, display_name}` (Stromboli's
/// `line_number`/`device` accepted too), sorted by line number.
fn parse_lines(json: &Value, problems: &mut Vec<String>) -> Vec<Line> {
    let items = match json.get("lines") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            problems.push("lines is not a list; the unit has no lines".into());
            return Vec::new();
        }
    };
    let mut lines: Vec<Line> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = |a: &str, b: &str| item.get(a).or_else(|| item.get(b));
        let number = field("line", "line_number")
            .and_then(Value::as_u64)
            .filter(|n| (1..=u64::from(u16::MAX)).contains(n));
        let device = field("device_id", "device")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let (Some(number), Some(device)) = (number, device) else {
            problems.push(format!(
                "lines[{i}] needs a line number (1 or more) and a device_id; skipped"
            ));
            continue;
        };
        let number = number as u32;
        if lines.iter().any(|l| l.line == number) {
            problems.push(format!("lines[{i}]: line {number} is given twice; skipped"));
            continue;
        }
        let text = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_string);
        lines.push(Line {
            line: number,
            device_id: device.to_string(),
            label: text("label"),
            display_name: text("display_name"),
        });
    }
    lines.sort_by_key(|l| l.line);
    lines
}

/// Where a template override applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TemplateScope {
    Model(String),
    Family(String),
    Brand,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateBody {
    Inline(String),
    /// The body is this attachment of the document.
    Attachment(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateDoc {
    pub id: String,
    pub brand: String,
    pub scope: TemplateScope,
    /// The shipped template overridden (`<brand>/<file>.hbs`).
    pub template: String,
    /// `None`: a global override.
    pub account_id: Option<String>,
    pub body: TemplateBody,
}

/// # Errors
/// Not an object, or no brand, file or body.
pub fn parse_template(id: &str, json: &Value) -> Result<TemplateDoc, String> {
    object(json, "template override")?;
    let text = |name: &str| {
        json.get(name)
            .and_then(Value::as_str)
            .map(normalise_name)
            .filter(|s| !s.is_empty())
    };
    let brand = text("brand").ok_or("the template override has no brand")?;
    let file = json
        .get("file")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or("the template override has no file (the shipped template it replaces)")?;
    let template = if file.contains('/') {
        file.to_string()
    } else {
        format!("{brand}/{file}")
    };
    if !template.starts_with(&format!("{brand}/")) {
        return Err(format!("file {file:?} is not a template of brand {brand}"));
    }
    let scope = match (text("model"), text("family")) {
        (Some(model), _) => TemplateScope::Model(model),
        (None, Some(family)) => TemplateScope::Family(family),
        (None, None) => TemplateScope::Brand,
    };
    let body = match json.get("template") {
        Some(Value::String(source)) => TemplateBody::Inline(source.clone()),
        Some(_) => return Err("template is not a string".into()),
        None => TemplateBody::Attachment(attachment_name(json)?),
    };
    Ok(TemplateDoc {
        id: id.to_string(),
        brand,
        scope,
        template,
        account_id: account_of(json).map(str::to_string),
        body,
    })
}

/// The attachment holding a template's body: the one `attachment` names,
/// else the only one.
pub fn attachment_name(json: &Value) -> Result<String, String> {
    let attachments = json
        .get("_attachments")
        .and_then(Value::as_object)
        .filter(|a| !a.is_empty())
        .ok_or("the template override has neither a template string nor an attachment")?;
    if let Some(name) = json.get("attachment").and_then(Value::as_str) {
        return if attachments.contains_key(name) {
            Ok(name.to_string())
        } else {
            Err(format!("attachment {name:?} is not attached"))
        };
    }
    if attachments.len() == 1 {
        Ok(attachments.keys().next().expect("one attachment").clone())
    } else {
        Err("the template override has several attachments; name one in \"attachment\"".into())
    }
}

/// A catalogue node defined or overridden by a `phone_model` document.
#[derive(Debug, Clone, PartialEq)]
pub struct PhoneModelDoc {
    pub id: String,
    pub brand: String,
    pub family: Option<String>,
    pub model: Option<String>,
    /// `{description, schema, meta}` (what the document gives of them).
    pub node: Map<String, Value>,
}

/// # Errors
/// Not an object, no brand, a model without its family, or a node field of
/// the wrong type.
pub fn parse_phone_model(id: &str, json: &Value) -> Result<PhoneModelDoc, String> {
    object(json, "phone model")?;
    let text = |name: &str| {
        json.get(name)
            .and_then(Value::as_str)
            .map(normalise_name)
            .filter(|s| !s.is_empty())
    };
    let brand = text("brand").ok_or("the phone model has no brand")?;
    let family = text("family");
    let model = text("model");
    if model.is_some() && family.is_none() {
        return Err("a phone model document for a model must name its family".into());
    }
    let mut node = Map::new();
    for (field, is_ok) in [
        ("description", Value::is_string as fn(&Value) -> bool),
        ("schema", Value::is_object),
        ("meta", Value::is_object),
    ] {
        match json.get(field) {
            None | Some(Value::Null) => {}
            Some(value) if is_ok(value) => {
                node.insert(field.to_string(), value.clone());
            }
            Some(_) => return Err(format!("{field} has the wrong type")),
        }
    }
    Ok(PhoneModelDoc {
        id: id.to_string(),
        brand,
        family,
        model,
        node,
    })
}

/// The SIP credentials a `sip_auth` device supplies to a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub account_id: Option<String>,
    pub username: String,
    pub password: String,
    /// `sip.realm`, when the device has its own.
    pub realm: Option<String>,
    pub enabled: bool,
}

/// # Errors
/// Not a device, soft-deleted, or without SIP username and password.
pub fn parse_device(id: &str, json: &Value) -> Result<Device, String> {
    object(json, "device")?;
    if json.get("pvt_deleted").and_then(Value::as_bool) == Some(true) {
        return Err("the device is deleted".into());
    }
    let sip = json.get("sip").and_then(Value::as_object);
    let text = |name: &str| {
        sip.and_then(|s| s.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (Some(username), Some(password)) = (text("username"), text("password")) else {
        return Err("the device has no sip.username and sip.password".into());
    };
    Ok(Device {
        id: id.to_string(),
        account_id: account_of(json).map(str::to_string),
        username,
        password,
        realm: text("realm"),
        enabled: json.get("enabled").and_then(Value::as_bool) != Some(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_come_from_type_or_pvt_type_and_soft_deletes_vanish() {
        assert_eq!(doc_type(&json!({"type": "unit"})), Some(DocType::Unit));
        assert_eq!(
            doc_type(&json!({"pvt_type": "provision_policy"})),
            Some(DocType::Policy)
        );
        assert_eq!(
            doc_type(&json!({"type": "unit", "pvt_deleted": true})),
            None
        );
        assert_eq!(doc_type(&json!({"type": "device"})), None);
        assert_eq!(doc_type(&json!([1])), None);
    }

    #[test]
    fn a_unit_keeps_what_is_usable_and_lists_the_rest() {
        let unit = parse_unit(
            "u1",
            &json!({"account_id": "a", "mac_address": "00-15-65-4A-A9-37", "brand": "Yealink",
                    "model": "T46 S", "enabled": "yes", "config": 3,
                    "lines": [{"line": 2, "device_id": "d2"}, {"line": 1, "device": "d1", "label": "L"},
                              {"line": 0, "device_id": "x"}, {"line": 2, "device_id": "d3"}],
                    "profiles": ["p1", 5]}),
        )
        .unwrap();
        let u = &unit.value;
        assert_eq!(u.mac.unwrap().lower(), "0015654aa937");
        assert_eq!(u.brand.as_deref(), Some("yealink"));
        assert_eq!(u.model.as_deref(), Some("t46s"));
        assert!(u.enabled);
        assert_eq!(
            u.lines
                .iter()
                .map(|l| (l.line, l.device_id.as_str()))
                .collect::<Vec<_>>(),
            [(1, "d1"), (2, "d2")]
        );
        assert_eq!(u.profiles, ["p1"]);
        assert_eq!(unit.problems.len(), 5, "{:?}", unit.problems);
        assert!(parse_unit("u", &json!({"mac_address": "x"})).is_err());
    }

    #[test]
    fn unusable_credentials_and_allow_lists_fail_closed() {
        let pc = parse_provision_config(
            "pc",
            &json!({"account_id": "a", "provisioning": {"username": "u"},
                    "allowed_cidrs": ["nonsense"], "locks": {"a": {"b": "locked", "c": false}, "d": 3}}),
        )
        .unwrap();
        assert!(matches!(
            pc.value.provisioning,
            Some(Credentials::Invalid(_))
        ));
        assert_eq!(pc.value.allowed, AllowList::Only(vec![]));
        assert!(!pc.value.allowed.allows("10.0.0.1".parse().unwrap()));
        assert_eq!(pc.value.locks.paths(), ["/a/b"]);
        assert_eq!(pc.problems.len(), 2, "{:?}", pc.problems);
        let open = parse_provision_config(
            "pc",
            &json!({"account_id": "a", "allowed_cidrs": ["10.0.0.0/8", "192.0.2.7"]}),
        )
        .unwrap();
        assert!(open.value.allowed.allows("10.9.8.7".parse().unwrap()));
        assert!(open.value.allowed.allows("192.0.2.7".parse().unwrap()));
        assert!(!open.value.allowed.allows("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn stromboli_list_locks_are_read_as_one_object() {
        let pc = parse_provision_config(
            "pc",
            &json!({"account_id": "a", "locks": [{"codecs": "locked"}, {"net": {"vlan": true}}]}),
        )
        .unwrap();
        assert_eq!(pc.value.locks.paths(), ["/codecs", "/net/vlan"]);
    }

    #[test]
    fn realms_are_normalised_host_names() {
        assert_eq!(
            normalise_realm(" Acme.SIP.example.net. "),
            Some("acme.sip.example.net".into())
        );
        assert_eq!(normalise_realm("bad realm"), None);
        assert_eq!(normalise_realm("a/b"), None);
        let account =
            parse_account("a", &json!({"realm": "x y", "tree": ["r", "a", "r"]})).unwrap();
        assert_eq!(account.value.realm, None);
        assert_eq!(account.value.tree, ["r"]);
        assert_eq!(account.value.chain(), ["r", "a"]);
    }

    #[test]
    fn template_overrides_name_a_shipped_template_and_a_body() {
        let doc = parse_template(
            "t",
            &json!({"brand": "yealink", "model": "T46S", "file": "device.cfg.hbs", "template": "x"}),
        )
        .unwrap();
        assert_eq!(doc.template, "yealink/device.cfg.hbs");
        assert_eq!(doc.scope, TemplateScope::Model("t46s".into()));
        let doc = parse_template(
            "t",
            &json!({"brand": "yealink", "file": "yealink/common.cfg.hbs",
                    "_attachments": {"body.hbs": {"stub": true, "digest": "md5-x"}}}),
        )
        .unwrap();
        assert_eq!(doc.body, TemplateBody::Attachment("body.hbs".into()));
        assert!(
            parse_template(
                "t",
                &json!({"brand": "yealink", "file": "polycom/x.hbs", "template": ""})
            )
            .is_err()
        );
        assert!(parse_template("t", &json!({"brand": "yealink", "file": "x.hbs"})).is_err());
    }

    #[test]
    fn devices_need_sip_credentials() {
        let device = parse_device(
            "d",
            &json!({"pvt_account_id": "a", "sip": {"username": "u", "password": "p"}}),
        )
        .unwrap();
        assert_eq!(device.account_id.as_deref(), Some("a"));
        assert!(parse_device("d", &json!({"sip": {"method": "ip"}})).is_err());
    }
}
