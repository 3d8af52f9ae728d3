//! The edge store's pure core: the documents of `edge_config` and
//! `edge_registry` as typed values, and the rules every writer and reader
//! shares — document ids, set versions (`n/100`), MAC notation, target
//! paths, owners and permissions, the seed's ten edge classes. No IO, no
//! clock: every function here is a function of its arguments.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Templates, versions, master packages, links, assignments, classes, the set log.
pub const EDGE_CONFIG: &str = "edge_config";
/// One document per edge.
pub const EDGE_REGISTRY: &str = "edge_registry";
/// Synthetic source: attachment bytes fetched by `blobs`, id = `digest_key`.
pub const EDGE_BLOBS: &str = "edge_blob";

/// The seed's table of (edge type, edge sub-type) pairs: the initial edge classes.
pub const SEED_CLASSES: [(&str, &str); 10] = [
    ("static", "default"),
    ("mid", "default"),
    ("mobile", "default"),
    ("mobile", "kontronmetro"),
    ("mobile", "c2cbus"),
    ("mid", "parent_pseudo_tp"),
    ("mid", "child_pseudo_tp"),
    ("static", "nuc"),
    ("static", "ct_static"),
    ("mobile", "railtel_pilot_ec"),
];

/// Attachment names.
pub const TEMPLATE_FILE: &str = "template_file";
pub const UNINSTALL_SCRIPT: &str = "uninstall.sh";
pub const PRE_SCRIPT: &str = "prescript.sh";
pub const POST_SCRIPT: &str = "postscript.sh";
pub const PRE_GEN_SCRIPT: &str = "pre_gen_script.sh";
pub const POST_GEN_SCRIPT: &str = "post_gen_script.sh";

/// Counter documents for the integer ids (compare-and-set on `_rev`).
pub const TEMPLATE_COUNTER: &str = "counter:template_id";
pub const MASTER_COUNTER: &str = "counter:master_id";

/// Largest integer id (ids are zero-padded to 8 digits in document ids).
pub const MAX_ID: u64 = 99_999_999;
/// Largest per-template version number (6 digits).
pub const MAX_VERSION: u64 = 999_999;

pub fn template_doc_id(template_id: u64) -> String {
    format!("config_template:{template_id:08}")
}

pub fn version_doc_id(template_id: u64, version: u64) -> String {
    format!("template_version:{template_id:08}:{version:06}")
}

pub fn master_doc_id(master_id: u64) -> String {
    format!("master_package:{master_id:08}")
}

pub fn link_doc_id(master_id: u64, template_id: u64) -> String {
    format!("mp_template:{master_id:08}:{template_id:08}")
}

pub fn assign_doc_id(master_id: u64, class: &Class) -> String {
    format!(
        "mp_assign:{master_id:08}:{}:{}",
        class.edge_type, class.edge_sub_type
    )
}

pub fn class_doc_id(class: &Class) -> String {
    format!("edge_class:{}:{}", class.edge_type, class.edge_sub_type)
}

pub fn set_log_doc_id(seq: u64) -> String {
    format!("set_log:{seq:012}")
}

/// An (edge type, edge sub-type) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Class {
    pub edge_type: String,
    pub edge_sub_type: String,
}

impl Class {
    /// # Errors
    /// Either name is not 1–64 characters of `[a-z0-9_-]`.
    pub fn new(edge_type: &str, edge_sub_type: &str) -> Result<Class, String> {
        for (what, name) in [("edge_type", edge_type), ("edge_sub_type", edge_sub_type)] {
            if !valid_class_name(name) {
                return Err(format!(
                    "{what} {name:?} is not 1-64 characters of a-z, 0-9, _ and -"
                ));
            }
        }
        Ok(Class {
            edge_type: edge_type.to_string(),
            edge_sub_type: edge_sub_type.to_string(),
        })
    }

    /// The `<type>:<sub>` part of output keys.
    pub fn key(&self) -> String {
        format!("{}:{}", self.edge_type, self.edge_sub_type)
    }

    /// The class of an output key part `<type>:<sub>`.
    pub fn from_key(key: &str) -> Option<Class> {
        let (edge_type, sub) = key.split_once(':')?;
        Class::new(edge_type, sub).ok()
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.edge_type, self.edge_sub_type)
    }
}

pub fn valid_class_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

// ---------------------------------------------------------------------------
// Set versions
// ---------------------------------------------------------------------------

/// A set sequence number as the seed renders it: `n/100` with two decimals
/// (`1` → `"0.01"`, `100` → `"1.00"`).
pub fn render_set_version(seq: u64) -> String {
    format!("{}.{:02}", seq / 100, seq % 100)
}

/// A set version that is not a non-negative decimal with at most two decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a set version (a decimal with at most two decimals, like 0.03)")]
pub struct InvalidSetVersion;

/// Parses a set version as an edge sends it (`"0.03"`, `"1.5"`, `"2"`)
/// into hundredths.
///
/// # Errors
/// Not a non-negative decimal with at most two decimals.
pub fn parse_set_version(text: &str) -> Result<u64, InvalidSetVersion> {
    let text = text.trim();
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || whole.len() > 10 {
        return Err(InvalidSetVersion);
    }
    let fraction = match fraction {
        None => "",
        Some(f) if digits(f) && f.len() <= 2 => f,
        Some(_) => return Err(InvalidSetVersion),
    };
    let whole: u64 = whole.parse().map_err(|_| InvalidSetVersion)?;
    let hundredths = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<u64>().map_err(|_| InvalidSetVersion)? * 10,
        _ => fraction.parse::<u64>().map_err(|_| InvalidSetVersion)?,
    };
    Ok(whole * 100 + hundredths)
}

// ---------------------------------------------------------------------------
// Field rules
// ---------------------------------------------------------------------------

/// Normalises a MAC address in any common notation (`00:11:22:33:44:55`,
/// `00-11-22-33-44-55`, `0011.2233.4455`, `001122334455`, any case) to
/// lower-case colon form.
pub fn normalise_mac(text: &str) -> Option<String> {
    let text = text.trim();
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | '.'))
        .collect();
    let separators = text.len() - hex.len();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    if !matches!(separators, 0 | 2 | 5) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    let pairs: Vec<&str> = (0..6).map(|i| &hex[i * 2..i * 2 + 2]).collect();
    Some(pairs.join(":"))
}

/// A POSIX-ish user or group name, or a numeric id: safe inside a shell
/// word and a tar header.
pub fn valid_owner(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 32 {
        return false;
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut chars = body.bytes();
    chars
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && chars.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Parses permissions given as `644`, `"644"` or `"0644"` (octal digits)
/// into a mode.
///
/// # Errors
/// Not three or four octal digits.
pub fn parse_permissions(value: &Value) -> Result<u32, String> {
    let text = match value {
        Value::Number(n) if n.is_u64() => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        other => return Err(format!("permissions {other} are not octal digits")),
    };
    let octal = (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !octal {
        return Err(format!(
            "permissions {text:?} are not three or four octal digits"
        ));
    }
    u32::from_str_radix(&text, 8).map_err(|err| err.to_string())
}

/// A mode as the seed shows it: its octal digits read as a decimal integer
/// (`0o644` → `644`).
pub fn permissions_number(mode: u32) -> u64 {
    format!("{mode:o}").parse().unwrap_or(0)
}

/// The placeholders a target path may contain, replaced by the edge id (the
/// original replaced the quoted form; both are accepted).
pub const EDGE_ID_PLACEHOLDERS: [&str; 2] = ["\"$edge_id\"", "$edge_id"];

/// A target path on the edge: absolute, a directory and a file name
/// (`^(.+)/([^/]+)$` as the original checked), no `.`/`..` segments, no
/// control characters.
///
/// # Errors
/// Why the path is refused.
pub fn check_target_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 1024 {
        return Err("the path must be 1-1024 bytes".into());
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("{path:?} contains control characters"));
    }
    let Some((dir, file)) = path.rsplit_once('/') else {
        return Err(format!("{path:?} has no file name"));
    };
    if dir.is_empty() || file.is_empty() {
        return Err(format!("{path:?} is not a directory and a file name"));
    }
    if path
        .split('/')
        .skip(1)
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!("{path:?} has an empty, . or .. segment"));
    }
    Ok(())
}

/// `path` with the edge-id placeholders replaced.
pub fn substitute_edge_id(path: &str, edge_id: &str) -> String {
    EDGE_ID_PLACEHOLDERS
        .iter()
        .fold(path.to_string(), |path, p| path.replace(p, edge_id))
}

pub fn has_edge_id_placeholder(path: &str) -> bool {
    path.contains(EDGE_ID_PLACEHOLDERS[1])
}

/// The file name a template gets inside its master package's directory.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// File names the package generator writes into a master directory itself.
pub const RESERVED_FILE_NAMES: [&str; 3] = [PRE_SCRIPT, POST_SCRIPT, UNINSTALL_SCRIPT];

/// A template's display name (also its download file name): no path
/// separators, no control characters, not `.`/`..`.
pub fn valid_template_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
        && name != "."
        && name != ".."
}

/// A directory name for a master package inside the tar: `<seq>_<name>`
/// (lower-cased, anything but `[a-z0-9._-]` replaced by `_`), or just the
/// name without a sequence, as the original did.
pub fn master_dir(execution_sequence: Option<i64>, name: &str, master_id: u64) -> String {
    let mut clean: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.trim_matches('.').is_empty() {
        clean = format!("master_{master_id}");
    }
    match execution_sequence {
        Some(seq) => format!("{seq}_{clean}"),
        None => clean,
    }
}

/// `sha256` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The id of a blob (and of its `file:` output) for a CouchDB attachment
/// digest: `md5-<base64>` becomes `md5-<hex>`; anything else keeps only
/// `[A-Za-z0-9-]`.
pub fn digest_key(digest: &str) -> String {
    use base64::Engine;
    if let Some(b64) = digest.strip_prefix("md5-")
        && let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64)
    {
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        return format!("md5-{hex}");
    }
    digest
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

// ---------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------

/// An attachment a package needs, as the document's stub describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The document holding the attachment, and its name.
    pub doc: String,
    pub name: String,
    /// CouchDB's digest (`md5-…`): identifies the bytes.
    pub digest: String,
    pub size: u64,
}

impl FileRef {
    /// The blob / `file:` key of these bytes.
    pub fn key(&self) -> String {
        digest_key(&self.digest)
    }
}

/// The stub of attachment `name` of a document, if it has one.
///
/// # Errors
/// The stub exists but has no digest.
pub fn attachment(doc: &Value, doc_id: &str, name: &str) -> Result<Option<FileRef>, String> {
    let Some(stub) = doc.get("_attachments").and_then(|a| a.get(name)) else {
        return Ok(None);
    };
    let digest = stub
        .get("digest")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| format!("attachment {name:?} has no digest"))?;
    Ok(Some(FileRef {
        doc: doc_id.to_string(),
        name: name.to_string(),
        digest: digest.to_string(),
        size: stub.get("length").and_then(Value::as_u64).unwrap_or(0),
    }))
}

/// How a template becomes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Render {
    /// Rendered per edge with handlebars (strict).
    Handlebars,
    /// Copied byte for byte.
    Raw,
}

impl Render {
    /// # Errors
    /// Not `handlebars` or `raw`.
    pub fn parse(text: &str) -> Result<Render, String> {
        match text {
            "handlebars" => Ok(Render::Handlebars),
            "raw" => Ok(Render::Raw),
            other => Err(format!("render {other:?} is not \"handlebars\" or \"raw\"")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Render::Handlebars => "handlebars",
            Render::Raw => "raw",
        }
    }
}

/// A config template entity (`config_template:<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub template_id: u64,
    pub name: String,
    pub description: String,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub permissions: Option<u32>,
    pub path: Option<String>,
    pub render: Render,
}

/// An immutable template version (`template_version:<id>:<n>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateVersion {
    pub template_id: u64,
    /// Per-template version in hundredths (`version_no` = `n/100`).
    pub version: u64,
    pub comment: String,
    /// Declared at upload; checked against the bytes at package time.
    pub sha256: Option<String>,
    pub file: FileRef,
}

/// Master package status: 1 active, 0 deleted (its edges uninstall it).
pub const ACTIVE: u8 = 1;
pub const DELETED: u8 = 0;

/// A master package (`master_package:<id>`), scripts as attachments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    pub master_id: u64,
    pub name: String,
    pub description: String,
    pub status: u8,
    pub execution_sequence: Option<i64>,
    /// Defaults for its templates (the seed's `path`/`user`/`group`/`permission`).
    pub path: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub permission: Option<u32>,
    pub uninstall: Option<FileRef>,
    pub pre_script: Option<FileRef>,
    pub post_script: Option<FileRef>,
}

/// What an assignment asks of the class's edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignState {
    /// The master package is installed on the class's edges.
    Assigned,
    /// Unassigned with `uninstall`: the class's edges receive it as deleted.
    Uninstall,
}

/// A master ↔ class assignment (`mp_assign:<m>:<type>:<sub>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub master_id: u64,
    pub class: Class,
    pub state: AssignState,
}

/// An edge class (`edge_class:<type>:<sub>`): exists = assignable.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeClass {
    pub class: Class,
    /// Template variables every edge of the class gets (edge vars win).
    pub vars: Map<String, Value>,
    pub pre_gen: Option<FileRef>,
    pub post_gen: Option<FileRef>,
}

/// What one set-log entry changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetChange {
    /// A new version of a template: every master holding it changes.
    TemplateVersion { template_id: u64, version: u64 },
    /// A master package was created, updated or deleted: all of it changes
    /// for every class it is assigned to.
    Master { master_id: u64 },
    /// A template joined a master package.
    Link { master_id: u64, template_id: u64 },
    /// A master package was assigned to, or unassigned from, a class.
    Assignment { master_id: u64, class: Class },
    /// A class's scripts or variables changed: all of the class changes.
    Class { class: Class },
}

/// One entry of the global set log (`set_log:<seq>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetEntry {
    pub seq: u64,
    pub change: SetChange,
    /// Unix seconds of the entry (from `created_at`); 0 when unreadable.
    pub time: i64,
}

/// The set-log `kind` names.
pub mod kind {
    pub const TEMPLATE_VERSION: &str = "template_version";
    pub const MASTER_CREATE: &str = "master_create";
    pub const MASTER_UPDATE: &str = "master_update";
    pub const MASTER_DELETE: &str = "master_delete";
    pub const LINK: &str = "link";
    pub const ASSIGN: &str = "assign";
    pub const UNASSIGN: &str = "unassign";
    pub const CLASS_UPDATE: &str = "class_update";
}

/// A document of `edge_config`, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigDoc {
    Template(Template),
    Version(TemplateVersion),
    Master(Master),
    Link {
        master_id: u64,
        template_id: u64,
    },
    Assignment(Assignment),
    Class(EdgeClass),
    SetEntry(SetEntry),
    /// Counters and documents of other types: not the builder's business.
    Other,
}

fn text(doc: &Value, field: &str) -> Result<Option<String>, String> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{field} is {other}, not a string")),
    }
}

fn required_text(doc: &Value, field: &str) -> Result<String, String> {
    text(doc, field)?.ok_or_else(|| format!("{field} is missing"))
}

fn id_field(doc: &Value, field: &str, max: u64) -> Result<u64, String> {
    match doc.get(field).and_then(Value::as_u64) {
        Some(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{field} is not an integer from 1 to {max}")),
    }
}

fn optional_owner(doc: &Value, field: &str) -> Result<Option<String>, String> {
    match text(doc, field)? {
        Some(name) if !valid_owner(&name) => {
            Err(format!("{field} {name:?} is not a user or group name"))
        }
        other => Ok(other),
    }
}

fn optional_permissions(doc: &Value, field: &str) -> Result<Option<u32>, String> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => parse_permissions(value).map(Some),
    }
}

fn optional_path(doc: &Value, field: &str) -> Result<Option<String>, String> {
    match text(doc, field)? {
        Some(path) => check_target_path(&path).map(|()| Some(path)),
        None => Ok(None),
    }
}

/// The id a document must have given its content, checked so that a copy
/// under another id cannot shadow the real one.
fn expect_id(id: &str, wanted: &str) -> Result<(), String> {
    if id == wanted {
        Ok(())
    } else {
        Err(format!(
            "a document of this type must have the id {wanted:?}"
        ))
    }
}

/// Types an `edge_config` document by its `type` field.
///
/// # Errors
/// The document has a known type but is malformed; the reason names the field.
pub fn parse_config_doc(id: &str, doc: &Value) -> Result<ConfigDoc, String> {
    let Some(kind) = doc.get("type").and_then(Value::as_str) else {
        return Ok(ConfigDoc::Other);
    };
    match kind {
        "config_template" => parse_template(id, doc).map(ConfigDoc::Template),
        "template_version" => parse_version(id, doc).map(ConfigDoc::Version),
        "master_package" => parse_master(id, doc).map(ConfigDoc::Master),
        "mp_template" => {
            let master_id = id_field(doc, "master_id", MAX_ID)?;
            let template_id = id_field(doc, "template_id", MAX_ID)?;
            expect_id(id, &link_doc_id(master_id, template_id))?;
            Ok(ConfigDoc::Link {
                master_id,
                template_id,
            })
        }
        "mp_assign" => parse_assignment(id, doc).map(ConfigDoc::Assignment),
        "edge_class" => parse_class(id, doc).map(ConfigDoc::Class),
        "set_log" => parse_set_entry(id, doc).map(ConfigDoc::SetEntry),
        _ => Ok(ConfigDoc::Other),
    }
}

fn parse_template(id: &str, doc: &Value) -> Result<Template, String> {
    let template_id = id_field(doc, "template_id", MAX_ID)?;
    expect_id(id, &template_doc_id(template_id))?;
    let name = required_text(doc, "name")?;
    if !valid_template_name(&name) {
        return Err(format!("name {name:?} is not a file name"));
    }
    let render = match text(doc, "render")? {
        Some(render) => Render::parse(&render)?,
        None => Render::Handlebars,
    };
    Ok(Template {
        template_id,
        name,
        description: text(doc, "description")?.unwrap_or_default(),
        owner: optional_owner(doc, "owner")?,
        group: optional_owner(doc, "group")?,
        permissions: optional_permissions(doc, "permissions")?,
        path: optional_path(doc, "path")?,
        render,
    })
}

fn parse_version(id: &str, doc: &Value) -> Result<TemplateVersion, String> {
    let template_id = id_field(doc, "template_id", MAX_ID)?;
    let version = id_field(doc, "version", MAX_VERSION)?;
    expect_id(id, &version_doc_id(template_id, version))?;
    let file = attachment(doc, id, TEMPLATE_FILE)?
        .ok_or_else(|| format!("the version has no {TEMPLATE_FILE:?} attachment"))?;
    let sha256 = text(doc, "sha256")?;
    if let Some(sha) = &sha256
        && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(format!("sha256 {sha:?} is not 64 hex digits"));
    }
    Ok(TemplateVersion {
        template_id,
        version,
        comment: text(doc, "comment")?.unwrap_or_default(),
        sha256: sha256.map(|s| s.to_ascii_lowercase()),
        file,
    })
}

fn parse_master(id: &str, doc: &Value) -> Result<Master, String> {
    let master_id = id_field(doc, "master_id", MAX_ID)?;
    expect_id(id, &master_doc_id(master_id))?;
    let status = match doc.get("status") {
        None | Some(Value::Null) => ACTIVE,
        Some(value) => match value.as_u64() {
            Some(0) => DELETED,
            Some(1) => ACTIVE,
            _ => return Err(format!("status {value} is not 0 or 1")),
        },
    };
    let execution_sequence = match doc.get("execution_sequence") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_i64()
                .filter(|n| (-1_000_000..=1_000_000).contains(n))
                .ok_or_else(|| format!("execution_sequence {value} is not an integer"))?,
        ),
    };
    Ok(Master {
        master_id,
        name: required_text(doc, "name")?,
        description: text(doc, "description")?.unwrap_or_default(),
        status,
        execution_sequence,
        path: match text(doc, "path")? {
            Some(dir) => Some(check_default_dir(&dir)?),
            None => None,
        },
        user: optional_owner(doc, "user")?,
        group: optional_owner(doc, "group")?,
        permission: optional_permissions(doc, "permission")?,
        uninstall: attachment(doc, id, UNINSTALL_SCRIPT)?,
        pre_script: attachment(doc, id, PRE_SCRIPT)?,
        post_script: attachment(doc, id, POST_SCRIPT)?,
    })
}

/// A master package's default directory: absolute, no `.`/`..` segments.
///
/// # Errors
/// Why the directory is refused.
pub fn check_default_dir(dir: &str) -> Result<String, String> {
    let trimmed = dir.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(format!("path {dir:?} is not a directory below /"));
    }
    check_target_path(&format!("{trimmed}/x"))
        .map(|()| trimmed.to_string())
        .map_err(|_| format!("path {dir:?} is not an absolute directory"))
}

fn parse_assignment(id: &str, doc: &Value) -> Result<Assignment, String> {
    let master_id = id_field(doc, "master_id", MAX_ID)?;
    let class = Class::new(
        &required_text(doc, "edge_type")?,
        &required_text(doc, "edge_sub_type")?,
    )?;
    expect_id(id, &assign_doc_id(master_id, &class))?;
    let state = match text(doc, "state")?.as_deref() {
        None | Some("assigned") => AssignState::Assigned,
        Some("uninstall") => AssignState::Uninstall,
        Some(other) => {
            return Err(format!(
                "state {other:?} is not \"assigned\" or \"uninstall\""
            ));
        }
    };
    Ok(Assignment {
        master_id,
        class,
        state,
    })
}

fn parse_class(id: &str, doc: &Value) -> Result<EdgeClass, String> {
    let class = Class::new(
        &required_text(doc, "edge_type")?,
        &required_text(doc, "edge_sub_type")?,
    )?;
    expect_id(id, &class_doc_id(&class))?;
    let vars = match doc.get("vars") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(vars)) => vars.clone(),
        Some(other) => return Err(format!("vars is {other}, not an object")),
    };
    Ok(EdgeClass {
        class,
        vars,
        pre_gen: attachment(doc, id, PRE_GEN_SCRIPT)?,
        post_gen: attachment(doc, id, POST_GEN_SCRIPT)?,
    })
}

fn doc_class(doc: &Value) -> Result<Class, String> {
    Class::new(
        &required_text(doc, "edge_type")?,
        &required_text(doc, "edge_sub_type")?,
    )
}

fn parse_set_entry(id: &str, doc: &Value) -> Result<SetEntry, String> {
    let seq = id_field(doc, "set_seq", 999_999_999_999)?;
    expect_id(id, &set_log_doc_id(seq))?;
    let master = || id_field(doc, "master_id", MAX_ID);
    let change = match required_text(doc, "kind")?.as_str() {
        kind::TEMPLATE_VERSION => SetChange::TemplateVersion {
            template_id: id_field(doc, "template_id", MAX_ID)?,
            version: id_field(doc, "version", MAX_VERSION)?,
        },
        kind::MASTER_CREATE | kind::MASTER_UPDATE | kind::MASTER_DELETE => SetChange::Master {
            master_id: master()?,
        },
        kind::LINK => SetChange::Link {
            master_id: master()?,
            template_id: id_field(doc, "template_id", MAX_ID)?,
        },
        kind::ASSIGN | kind::UNASSIGN => SetChange::Assignment {
            master_id: master()?,
            class: doc_class(doc)?,
        },
        kind::CLASS_UPDATE => SetChange::Class {
            class: doc_class(doc)?,
        },
        other => return Err(format!("kind {other:?} is not a set-log kind")),
    };
    let time = text(doc, "created_at")?
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or(0, |t| t.as_second());
    Ok(SetEntry { seq, change, time })
}

// ---------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------

/// One edge of `edge_registry`, checked and normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeRecord {
    /// The registry document it came from.
    pub doc: String,
    pub edge_id: String,
    pub edge_type: String,
    pub edge_sub_type: String,
    /// Normalised (`normalise_mac`), sorted, without duplicates.
    pub mac_addresses: Vec<String>,
    pub tags: Vec<String>,
    /// Template variables.
    pub vars: Map<String, Value>,
    /// sha256 (hex) of the edge's own token, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

impl EdgeRecord {
    pub fn class(&self) -> Option<Class> {
        Class::new(&self.edge_type, &self.edge_sub_type).ok()
    }
}

/// Edge ids in the registry: 1–64 characters of `[A-Za-z0-9._:-]` (the API
/// may be stricter, `edge.edge_id_pattern`).
pub fn valid_registry_edge_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Whether a registry document describes an edge (others are ignored).
pub fn is_edge_doc(doc: &Value) -> bool {
    doc.get("type").and_then(Value::as_str) == Some("edge")
}

/// Reads an edge document. MACs that no notation fits are reported in the
/// second value and left out, so one typo does not take the edge away.
///
/// # Errors
/// The edge id or class is missing or malformed.
pub fn parse_edge(id: &str, doc: &Value) -> Result<(EdgeRecord, Vec<String>), String> {
    let edge_id = required_text(doc, "edge_id")?;
    if !valid_registry_edge_id(&edge_id) {
        return Err(format!(
            "edge_id {edge_id:?} is not 1-64 characters of A-Z a-z 0-9 . _ : -"
        ));
    }
    let class = doc_class(doc)?;
    let mut problems = Vec::new();
    let mut macs = Vec::new();
    match doc.get("mac_addresses") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for mac in list {
                match mac.as_str().and_then(normalise_mac) {
                    Some(mac) => macs.push(mac),
                    None => problems.push(format!("mac_addresses: {mac} is not a MAC address")),
                }
            }
        }
        Some(other) => return Err(format!("mac_addresses is {other}, not a list")),
    }
    macs.sort();
    macs.dedup();
    let tags = match doc.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("tags: {t} is not a string"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(format!("tags is {other}, not a list")),
    };
    let vars = match doc.get("vars") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(vars)) => vars.clone(),
        Some(other) => return Err(format!("vars is {other}, not an object")),
    };
    let token_sha256 = match (text(doc, "token")?, text(doc, "token_sha256")?) {
        (Some(token), _) if !token.is_empty() => Some(sha256_hex(token.as_bytes())),
        (_, Some(sha)) if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(sha.to_ascii_lowercase())
        }
        (_, Some(_)) => return Err("token_sha256 is not 64 hex digits".into()),
        _ => None,
    };
    let record = EdgeRecord {
        doc: id.to_string(),
        edge_id,
        edge_type: class.edge_type,
        edge_sub_type: class.edge_sub_type,
        mac_addresses: macs,
        tags,
        vars,
        token_sha256,
    };
    Ok((record, problems))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_versions_are_hundredths() {
        assert_eq!(render_set_version(1), "0.01");
        assert_eq!(render_set_version(99), "0.99");
        assert_eq!(render_set_version(100), "1.00");
        assert_eq!(render_set_version(418), "4.18");
        assert_eq!(parse_set_version("0.03"), Ok(3));
        assert_eq!(parse_set_version("1.5"), Ok(150));
        assert_eq!(parse_set_version("2"), Ok(200));
        assert_eq!(parse_set_version(" 0.00 "), Ok(0));
        for bad in ["", ".5", "1.", "-1", "0.001", "abc", "1e3", "1.x", "１"] {
            assert_eq!(parse_set_version(bad), Err(InvalidSetVersion), "{bad:?}");
        }
    }

    #[test]
    fn macs_in_any_notation() {
        for text in [
            "00:11:22:AA:bb:cc",
            "00-11-22-aa-bb-cc",
            "0011.22aa.bbcc",
            "001122AABBCC",
        ] {
            assert_eq!(normalise_mac(text).as_deref(), Some("00:11:22:aa:bb:cc"));
        }
        for bad in [
            "00:11:22:aa:bb",
            "00:11:22:aa:bb:cc:dd",
            "zz:11:22:aa:bb:cc",
            "0:0",
        ] {
            assert_eq!(normalise_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn target_paths_refuse_traversal() {
        assert!(check_target_path("/etc/nginx/nginx.conf").is_ok());
        assert!(check_target_path("/etc/sb/\"$edge_id\"/x.conf").is_ok());
        for bad in [
            "etc/x",
            "/x",
            "/etc/",
            "/etc/../shadow",
            "/etc/./x",
            "/etc//x",
            "/etc/x\n",
            "",
        ] {
            assert!(check_target_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            substitute_edge_id("/etc/sb/\"$edge_id\"/$edge_id.conf", "a1b2c3"),
            "/etc/sb/a1b2c3/a1b2c3.conf"
        );
    }

    #[test]
    fn permissions_owners_and_dirs() {
        assert_eq!(parse_permissions(&json!(644)), Ok(0o644));
        assert_eq!(parse_permissions(&json!("0755")), Ok(0o755));
        assert!(parse_permissions(&json!(648)).is_err());
        assert!(parse_permissions(&json!("rw-")).is_err());
        assert!(parse_permissions(&json!(-1)).is_err());
        assert_eq!(permissions_number(0o644), 644);
        assert!(valid_owner("root") && valid_owner("www-data") && valid_owner("1000"));
        assert!(!valid_owner("ro ot") && !valid_owner("'x") && !valid_owner(""));
        assert_eq!(master_dir(Some(2), "Nginx Proxy", 3), "2_nginx_proxy");
        assert_eq!(master_dir(None, "base", 3), "base");
        assert_eq!(master_dir(None, "..", 3), "master_3");
        assert_eq!(check_default_dir("/etc/nginx/"), Ok("/etc/nginx".into()));
        assert!(check_default_dir("/etc/../x").is_err());
    }

    #[test]
    fn documents_are_typed_with_reasons() {
        let version = json!({
            "type": "template_version", "template_id": 2, "version": 3, "comment": "c",
            "_attachments": {"template_file": {"digest": "md5-AAAA", "length": 4, "stub": true}}
        });
        let ConfigDoc::Version(v) =
            parse_config_doc("template_version:00000002:000003", &version).unwrap()
        else {
            panic!("not a version");
        };
        assert_eq!((v.template_id, v.version, v.file.size), (2, 3, 4));
        let err = parse_config_doc("template_version:2:3", &version).unwrap_err();
        assert!(err.contains("must have the id"), "{err}");
        let bad = json!({"type": "config_template", "template_id": 1, "name": "a/b"});
        assert!(parse_config_doc("config_template:00000001", &bad).is_err());
        let other = json!({"type": "counter", "last": 3});
        assert_eq!(
            parse_config_doc("counter:template_id", &other),
            Ok(ConfigDoc::Other)
        );
        let entry = json!({"type": "set_log", "set_seq": 4, "kind": "assign", "master_id": 1,
            "edge_type": "mobile", "edge_sub_type": "c2cbus", "created_at": "2024-01-01T00:00:10Z"});
        let ConfigDoc::SetEntry(e) = parse_config_doc("set_log:000000000004", &entry).unwrap()
        else {
            panic!("not an entry");
        };
        assert_eq!(e.time, 1_704_067_210);
    }

    #[test]
    fn edges_keep_good_macs_and_report_bad_ones() {
        let doc = json!({"type": "edge", "edge_id": "a1b2c3", "edge_type": "mobile",
            "edge_sub_type": "c2cbus", "mac_addresses": ["00-11-22-33-44-55", "junk"],
            "vars": {"lan_ip": "10.0.0.1"}, "token": "s3cret"});
        let (edge, problems) = parse_edge("e1", &doc).unwrap();
        assert_eq!(edge.mac_addresses, ["00:11:22:33:44:55"]);
        assert_eq!(problems.len(), 1);
        assert_eq!(
            edge.token_sha256.as_deref(),
            Some(sha256_hex(b"s3cret").as_str())
        );
        assert!(parse_edge("e2", &json!({"type": "edge", "edge_id": "a b"})).is_err());
    }

    #[test]
    fn digest_keys_are_id_safe() {
        assert_eq!(digest_key("md5-AAECAw=="), "md5-00010203");
        assert_eq!(digest_key("sha/x+y"), "shaxy");
    }
}
