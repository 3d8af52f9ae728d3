//! Native parameters: what a vendor's config file finally says, as an
//! ordered map from parameter path to text. Built from the render context
//! in three steps every vendor shares — the cross-vendor ("neutral") keys
//! mapped to native names, then the vendor's own subtree `config.<brand>`
//! flattened on top (the seed's idea: its JSON keys *are* the vendor's
//! parameter paths), then the parameters a file must never carry removed
//! (line identity, which only the unit's lines set; secrets, in
//! model-common files). Pure.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A parameter's path: one segment for flat formats (Cisco, Grandstream,
/// Snom), dotted segments (Yealink, Polycom), module / list / key (Fanvil).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub Vec<String>);

impl Path {
    pub fn of(segments: &[&str]) -> Path {
        Path(segments.iter().map(|s| s.to_string()).collect())
    }

    pub fn joined(&self, separator: &str) -> String {
        self.0.join(separator)
    }

    pub fn last(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }

    /// Whether this is `<family>.<N>.<one of members>` (a numbered block
    /// such as a line's `account.1.password`).
    pub fn is_numbered_member(&self, family: &str, members: &[&str]) -> bool {
        let segments = &self.0;
        segments.len() >= 3
            && segments[0] == family
            && segments[1].bytes().all(|b| b.is_ascii_digit())
            && members.contains(&segments[2..].join(".").as_str())
    }
}

impl Ord for Path {
    fn cmp(&self, other: &Self) -> Ordering {
        for (a, b) in self.0.iter().zip(&other.0) {
            match natural_cmp(a, b) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

impl PartialOrd for Path {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares digit runs by value, so `account.2` sorts before `account.10`
/// and generated files read in the order a person expects.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_digits(a);
                let (nb, rb) = split_digits(b);
                let by_value = na
                    .trim_start_matches('0')
                    .len()
                    .cmp(&nb.trim_start_matches('0').len())
                    .then_with(|| na.trim_start_matches('0').cmp(nb.trim_start_matches('0')))
                    .then_with(|| na.len().cmp(&nb.len()));
                if by_value != Ordering::Equal {
                    return by_value;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(bytes: &[u8]) -> (&str, &[u8]) {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    // The run is ASCII digits, hence valid UTF-8.
    (
        std::str::from_utf8(&bytes[..end]).unwrap_or(""),
        &bytes[end..],
    )
}

/// One parameter's value, plus the XML attributes some formats put on it
/// (Snom's `perm`, `idx`, a function key's `label`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub text: String,
    pub attrs: Vec<(String, String)>,
}

impl Param {
    pub fn text(text: impl Into<String>) -> Param {
        Param {
            text: text.into(),
            attrs: Vec::new(),
        }
    }
}

/// The native parameters of one file, in natural order.
#[derive(Debug, Default, Clone)]
pub struct Params {
    map: BTreeMap<Path, Param>,
}

impl Params {
    pub fn set(&mut self, path: Path, text: impl Into<String>) {
        self.map.insert(path, Param::text(text));
    }

    pub fn set_param(&mut self, path: Path, param: Param) {
        self.map.insert(path, param);
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        self.map.retain(|path, _| keep(path));
    }

    pub fn get(&self, path: &Path) -> Option<&Param> {
        self.map.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Param)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A dotted parameter name as a path (`account.1.label`).
pub fn dotted(name: &str) -> Path {
    Path(name.split('.').map(str::to_string).collect())
}

/// Removes what this file must not carry: parameters the unit's lines own
/// (a configuration can never replace a line's credentials or server), and
/// in a model-common file every parameter that names a secret.
pub fn finish(
    params: &mut Params,
    frame: &Frame<'_>,
    line_owned: impl Fn(&Path) -> bool,
    secret: impl Fn(&Path) -> bool,
) {
    params.retain(|path| !line_owned(path) && (frame.device || !secret(path)));
}

/// How a vendor writes booleans.
#[derive(Debug, Clone, Copy)]
pub struct Bools {
    pub yes: &'static str,
    pub no: &'static str,
}

pub const ONE_ZERO: Bools = Bools { yes: "1", no: "0" };

/// A scalar config value as native text: strings as they are, numbers in
/// JSON form, booleans the vendor's way, an array of scalars joined with
/// commas (comma lists are how every one of these formats writes lists).
/// `None` for null, objects and nested arrays.
pub fn scalar_text(value: &Value, bools: Bools) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(true) => Some(bools.yes.to_string()),
        Value::Bool(false) => Some(bools.no.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Array(_) | Value::Object(_) | Value::Null => None,
                scalar => scalar_text(scalar, bools),
            })
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(",")),
        Value::Null | Value::Object(_) => None,
    }
}

/// Flattens a native subtree whose nested object keys join into one
/// parameter name (`{"local_time": {"ntp_server1": "x"}}` →
/// `local_time.ntp_server1`). Keys that `key_ok` refuses, and values that
/// are not scalars, become problems and are skipped.
pub fn flatten_nested(
    tree: &Map<String, Value>,
    bools: Bools,
    key_ok: fn(&str) -> bool,
    out: &mut Params,
    problems: &mut Vec<String>,
) {
    let mut flattener = Nested {
        bools,
        key_ok,
        out,
        problems,
        prefix: Vec::new(),
    };
    flattener.walk(tree);
}

struct Nested<'a> {
    bools: Bools,
    key_ok: fn(&str) -> bool,
    out: &'a mut Params,
    problems: &'a mut Vec<String>,
    prefix: Vec<String>,
}

impl Nested<'_> {
    fn walk(&mut self, tree: &Map<String, Value>) {
        for (key, value) in tree {
            // `{"local_time": {"ntp_server1": …}}` and `{"local_time.ntp_server1": …}`
            // name the same parameter, so both give the same path.
            let depth = self.prefix.len();
            self.prefix.extend(key.split('.').map(str::to_string));
            match value {
                Value::Object(child) => self.walk(child),
                Value::Null => {}
                scalar => self.leaf(scalar),
            }
            self.prefix.truncate(depth);
        }
    }

    fn leaf(&mut self, scalar: &Value) {
        let name = self.prefix.join(".");
        match scalar_text(scalar, self.bools) {
            Some(text) if (self.key_ok)(&name) => self.out.set(Path(self.prefix.clone()), text),
            Some(_) => self
                .problems
                .push(format!("{name:?} is not a parameter name")),
            None => self
                .problems
                .push(format!("{name:?}: value is not a scalar")),
        }
    }
}

/// Flattens a native subtree whose keys are whole parameter names (Cisco,
/// Grandstream): nested objects are problems.
pub fn flatten_flat(
    tree: &Map<String, Value>,
    bools: Bools,
    key_ok: fn(&str) -> bool,
    out: &mut Params,
    problems: &mut Vec<String>,
) {
    for (key, value) in tree {
        if value.is_null() {
            continue;
        }
        if !key_ok(key) {
            problems.push(format!("{key:?} is not a parameter name"));
            continue;
        }
        match scalar_text(value, bools) {
            Some(text) => out.set(Path(vec![key.clone()]), text),
            None => problems.push(format!("{key:?}: value is not a scalar")),
        }
    }
}

/// Whether a parameter name says it holds a secret (a password, PIN, key
/// or passphrase), by its words: `account.1.password`,
/// `device.auth.localAdminPassword`, `Admin_Passwd`, `SIP1 Register Pswd`,
/// `aes_key_16.com`. Model-common files drop such parameters even when an
/// account's configuration sets them.
pub fn names_a_secret(name: &str) -> bool {
    const WORDS: [&str; 11] = [
        "password",
        "passwd",
        "pswd",
        "pwd",
        "pass",
        "secret",
        "passphrase",
        "psk",
        "pin",
        "aes",
        "credential",
    ];
    words(name).iter().any(|word| {
        WORDS.contains(&word.as_str()) || word.contains("password") || word.contains("passwd")
    })
}

/// Lower-case words of a parameter name, split at non-alphanumerics,
/// letter/digit boundaries and camelCase humps.
fn words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous: Option<char> = None;
    for c in name.chars() {
        let boundary = match previous {
            _ if !c.is_ascii_alphanumeric() => true,
            Some(p) => {
                (p.is_ascii_lowercase() && c.is_ascii_uppercase())
                    || (p.is_ascii_digit() != c.is_ascii_digit())
            }
            None => false,
        };
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        if c.is_ascii_alphanumeric() {
            current.push(c.to_ascii_lowercase());
        }
        previous = Some(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The neutral keys, read tolerantly: the core has already dropped values
/// that violate the schema; whatever is still malformed here is skipped
/// (and reported by `config_problems`).
#[derive(Debug, Default, Clone)]
pub struct Neutral {
    pub codecs: Vec<String>,
    pub ntp_server: Option<String>,
    pub phone_book: PhoneBook,
    pub keys: Vec<Key>,
}

#[derive(Debug, Default, Clone)]
pub struct PhoneBook {
    pub name: Option<String>,
    pub url: Option<String>,
}

/// A programmable key: a BLF or a speed dial on key position `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub key: u32,
    pub kind: KeyKind,
    pub value: String,
    pub label: String,
    pub line: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Blf,
    SpeedDial,
}

/// The neutral codec names, in the catalogue's spelling.
pub const CODECS: [&str; 6] = ["pcmu", "pcma", "g722", "g729", "g726-32", "ilbc"];

impl Neutral {
    pub fn read(config: &Value, problems: &mut Vec<String>) -> Neutral {
        Neutral {
            codecs: read_codecs(config.get("codecs"), problems),
            ntp_server: string_at(config, &["time", "ntp_server"]),
            phone_book: PhoneBook {
                name: string_at(config, &["phone_book", "name"]),
                url: string_at(config, &["phone_book", "url"]),
            },
            keys: read_keys(config.get("keys"), problems),
        }
    }
}

pub fn string_at(value: &Value, path: &[&str]) -> Option<String> {
    let mut node = value;
    for segment in path {
        node = node.get(segment)?;
    }
    node.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

fn read_codecs(value: Option<&Value>, problems: &mut Vec<String>) -> Vec<String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        problems.push("codecs: not a list".to_string());
        return Vec::new();
    };
    let mut codecs: Vec<String> = Vec::new();
    for item in items {
        match item.as_str().map(str::to_ascii_lowercase) {
            Some(name) if CODECS.contains(&name.as_str()) => {
                if !codecs.contains(&name) {
                    codecs.push(name);
                }
            }
            _ => problems.push(format!("codecs: {item} is not a known codec")),
        }
    }
    codecs
}

fn read_keys(value: Option<&Value>, problems: &mut Vec<String>) -> Vec<Key> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        problems.push("keys: not a list".to_string());
        return Vec::new();
    };
    let mut keys: Vec<Key> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let key = read_key(item);
            if key.is_none() {
                problems.push(format!(
                    "keys[{i}]: needs key (1..), type (blf or speed_dial) and value"
                ));
            }
            key
        })
        .collect();
    keys.sort_by_key(|k| k.key);
    keys.dedup_by_key(|k| k.key);
    keys
}

fn read_key(item: &Value) -> Option<Key> {
    let key = item
        .get("key")?
        .as_u64()
        .filter(|k| (1..=1000).contains(k))? as u32;
    let kind = match item.get("type")?.as_str()? {
        "blf" => KeyKind::Blf,
        "speed_dial" => KeyKind::SpeedDial,
        _ => return None,
    };
    let value = item
        .get("value")?
        .as_str()
        .filter(|v| !v.is_empty())?
        .to_string();
    let label = item
        .get("label")
        .and_then(Value::as_str)
        .unwrap_or(&value)
        .to_string();
    let line = item
        .get("line")
        .and_then(Value::as_u64)
        .filter(|l| (1..=64).contains(l))
        .unwrap_or(1) as u32;
    Some(Key {
        key,
        kind,
        value,
        label,
        line,
    })
}

/// What a params builder needs from the render context besides `config`.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    pub config: &'a Value,
    pub meta: &'a Value,
    /// The unit's line numbers; empty for model-common files.
    pub lines: Vec<u32>,
    /// Whether the file is per-device (the context has a `mac`).
    pub device: bool,
    pub realm: &'a str,
}

impl<'a> Frame<'a> {
    /// Reads the frame from a render context (see the module comment of
    /// `vendors` for its shape).
    pub fn from_context(context: &'a Value) -> Frame<'a> {
        static NULL: Value = Value::Null;
        let lines = context
            .get("lines")
            .and_then(Value::as_array)
            .map(|lines| {
                lines
                    .iter()
                    .filter_map(|l| l.get("line").and_then(Value::as_u64))
                    .map(|l| l as u32)
                    .collect()
            })
            .unwrap_or_default();
        Frame {
            config: context.get("config").unwrap_or(&NULL),
            meta: context
                .get("model")
                .and_then(|m| m.get("meta"))
                .unwrap_or(&NULL),
            lines,
            device: context.get("mac").is_some_and(|m| !m.is_null()),
            realm: context
                .get("account")
                .and_then(|a| a.get("realm"))
                .and_then(Value::as_str)
                .unwrap_or(""),
        }
    }

    /// How many SIP accounts the model has (`meta.lines`, at least 1).
    pub fn line_slots(&self) -> u32 {
        self.meta
            .get("lines")
            .and_then(Value::as_u64)
            .map_or(1, |n| n.clamp(1, 64) as u32)
    }

    /// The SIP accounts per-account neutral settings (codecs) are written
    /// for: the unit's lines, within the model's accounts. None in a
    /// model-common file: the per-device file, which the phone loads after
    /// it, sets them for the accounts the unit uses.
    pub fn account_lines(&self) -> Vec<u32> {
        if !self.device {
            return Vec::new();
        }
        let mut lines: Vec<u32> = self
            .lines
            .iter()
            .copied()
            .filter(|l| (1..=self.line_slots()).contains(l))
            .collect();
        lines.sort_unstable();
        lines.dedup();
        lines
    }

    /// How many programmable keys the model has (`meta.line_keys`).
    pub fn key_slots(&self) -> u32 {
        self.meta
            .get("line_keys")
            .and_then(Value::as_u64)
            .map_or(0, |n| n.min(1000) as u32)
    }

    /// The vendor's native subtree, `config.<brand>`.
    pub fn native(&self, brand: &str) -> Option<&'a Map<String, Value>> {
        self.config.get(brand).and_then(Value::as_object)
    }

    /// The neutral keys that fit this model: keys past `meta.line_keys`, or
    /// on a position one of the unit's lines occupies, are problems.
    pub fn keys(&self, neutral: &Neutral, problems: &mut Vec<String>) -> Vec<Key> {
        let slots = self.key_slots();
        neutral
            .keys
            .iter()
            .filter(|k| {
                if k.key > slots {
                    problems.push(format!(
                        "keys: key {} is past this model's {slots} keys",
                        k.key
                    ));
                    return false;
                }
                if self.lines.contains(&k.key) {
                    problems.push(format!("keys: key {} is line {}'s own key", k.key, k.key));
                    return false;
                }
                true
            })
            .cloned()
            .collect()
    }

    /// A key's target as a SIP address: as given when it has a host, else
    /// at the account's realm.
    pub fn sip_target(&self, value: &str) -> String {
        if value.contains('@') || self.realm.is_empty() {
            value.to_string()
        } else {
            format!("{value}@{}", self.realm)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let mut names = vec![
            "account.10.x",
            "account.2.x",
            "account.1.x",
            "a",
            "account.02.x",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "a",
                "account.1.x",
                "account.2.x",
                "account.02.x",
                "account.10.x"
            ]
        );
        assert_eq!(natural_cmp("P30", "P271"), Ordering::Less);
    }

    #[test]
    fn secrets_are_recognised_by_their_words() {
        for name in [
            "account.1.password",
            "device.auth.localAdminPassword",
            "Admin_Passwd",
            "SIP1 Register Pswd",
            "Account1 Pass",
            "XML-PBook1 PassWd",
            "static.auto_provision.aes_key_16.com",
            "http_pass",
            "user_pass",
            "Password_1_",
            "security.user_password",
        ] {
            assert!(names_a_secret(name), "{name}");
        }
        for name in [
            "local_time.ntp_server1",
            "linekey.1.type",
            "passive_mode",
            "tcpIpApp.sntp.address",
            "Primary_NTP_Server",
            "ring_type",
            "compass",
        ] {
            assert!(!names_a_secret(name), "{name}");
        }
    }

    #[test]
    fn scalars_become_text_and_lists_join() {
        assert_eq!(scalar_text(&json!("x"), ONE_ZERO).unwrap(), "x");
        assert_eq!(scalar_text(&json!(5060), ONE_ZERO).unwrap(), "5060");
        assert_eq!(scalar_text(&json!(true), ONE_ZERO).unwrap(), "1");
        assert_eq!(scalar_text(&json!(["a", 2]), ONE_ZERO).unwrap(), "a,2");
        assert!(scalar_text(&json!([["a"]]), ONE_ZERO).is_none());
        assert!(scalar_text(&json!({"a": 1}), ONE_ZERO).is_none());
        assert!(scalar_text(&Value::Null, ONE_ZERO).is_none());
    }

    #[test]
    fn neutral_keys_are_read_tolerantly() {
        let mut problems = Vec::new();
        let neutral = Neutral::read(
            &json!({
                "codecs": ["G722", "pcmu", "speex", "pcmu"],
                "time": {"ntp_server": "pool.ntp.org"},
                "keys": [
                    {"key": 3, "type": "blf", "value": "1002"},
                    {"key": 0, "type": "blf", "value": "x"},
                    {"key": 2, "type": "speed_dial", "value": "100", "label": "Desk", "line": 2}
                ]
            }),
            &mut problems,
        );
        assert_eq!(neutral.codecs, ["g722", "pcmu"]);
        assert_eq!(neutral.ntp_server.as_deref(), Some("pool.ntp.org"));
        assert_eq!(neutral.keys.len(), 2);
        assert_eq!(neutral.keys[0].key, 2);
        assert_eq!(neutral.keys[1].label, "1002");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
