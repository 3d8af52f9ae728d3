//! Pure core of the AMQP front door: Kazoo's sysconf messages as Kazoo
//! validates them (`kz_api:validate/4` with `kapi_sysconf`'s tables), and the
//! replies Kazoo sends back. No IO, no async, no clock.
//!
//! Validation follows Kazoo: every message carries the default headers
//! (`App-Name`, `App-Version`, `Event-Category`, `Event-Name`, `Msg-ID`,
//! all strings), `Event-Category` is `sysconf`, `Event-Name` names the
//! request, each request has its required fields, and the typed fields
//! (`Category`, `Node`, `Server-ID`) are strings. As in Kazoo, a header
//! that is present with JSON `null` counts as present (and then fails its
//! type check where it has one). Where this differs from Kazoo it says so:
//! every problem is listed at once instead of the first, and an unknown
//! event is an error instead of being ignored.
//!
//! Decisions where Kazoo's versions differ (see `reference/sysconf.md` §1):
//! `Key` may be a string or a list of strings (a nested path, Kazoo master),
//! and a stored `[]` stays `[]` in a reply (4.2; 4.3 turned it into
//! `"undefined"`, which makes an empty list look missing).

use serde_json::{Map, Value, json};

/// `Event-Category` of every sysconf request and reply.
pub const EVENT_CATEGORY: &str = "sysconf";
/// `App-Name` and `App-Version` of replies: Kazoo's sysconf sends exactly
/// these (`kz_api:default_headers(<<"sysconf">>, <<"4.0.0">>)`), and a
/// drop-in replacement looks the same on the wire.
pub const APP_NAME: &str = "sysconf";
pub const APP_VERSION: &str = "4.0.0";
/// What a value that is nowhere to be found is answered with (Kazoo's
/// `maybe_fix_undefined`).
pub const UNDEFINED: &str = "undefined";
/// The routing keys the shared queue is bound with.
pub const ROUTING_KEYS: [&str; 3] = ["sysconf.get", "sysconf.set", "sysconf.flush"];

/// The headers every Kazoo message must carry (`DEFAULT_HEADERS`).
const DEFAULT_HEADERS: [&str; 5] = [
    "App-Name",
    "App-Version",
    "Event-Category",
    "Event-Name",
    "Msg-ID",
];
/// Fields that must be strings when present (`DEFAULT_TYPES` and
/// `SYSCONF_TYPES`; `Key` is checked on its own).
const STRING_FIELDS: [&str; 13] = [
    "App-Name",
    "App-Version",
    "Event-Category",
    "Event-Name",
    "Msg-ID",
    "Server-ID",
    "Raw-Headers",
    "Destination-Server",
    "Geo-Location",
    "Access-Group",
    "Tenant-ID",
    "Node",
    "Category",
];

/// The three sysconf requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    GetReq,
    SetReq,
    FlushReq,
}

impl Event {
    pub const ALL: [Event; 3] = [Event::GetReq, Event::SetReq, Event::FlushReq];

    /// The `Event-Name` on the wire, also the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Event::GetReq => "get_req",
            Event::SetReq => "set_req",
            Event::FlushReq => "flush_req",
        }
    }

    fn from_name(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == name)
    }

    /// Required fields besides the default headers (`SYSCONF_*_HEADERS`).
    fn required(self) -> &'static [&'static str] {
        match self {
            Event::GetReq => &["Category", "Key"],
            Event::SetReq => &["Category", "Key", "Value"],
            Event::FlushReq => &["Category"],
        }
    }
}

/// A valid request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Get {
        category: String,
        key: Vec<String>,
        /// `Some(Value::Null)` when the request says `"Default": null`.
        default: Option<Value>,
        node: Option<String>,
    },
    Set {
        category: String,
        key: Vec<String>,
        value: Value,
        node_specific: bool,
        node: Option<String>,
    },
    Flush {
        category: String,
        /// Accepted as Kazoo does; a flush re-reads the whole category.
        key: Option<Value>,
    },
}

impl Request {
    pub fn event(&self) -> Event {
        match self {
            Request::Get { .. } => Event::GetReq,
            Request::Set { .. } => Event::SetReq,
            Request::Flush { .. } => Event::FlushReq,
        }
    }

    pub fn category(&self) -> &str {
        match self {
            Request::Get { category, .. }
            | Request::Set { category, .. }
            | Request::Flush { category, .. } => category,
        }
    }
}

/// Where and how to answer a message: taken from any message whose body is
/// a JSON object, valid or not, so an invalid one can still be answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyTo {
    /// The requester's reply queue (the routing key on the reply exchange).
    pub server_id: Option<String>,
    pub msg_id: Option<String>,
}

/// A delivered message, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub reply_to: ReplyTo,
    /// The event the message names, when it names a known one (metrics).
    pub event: Option<Event>,
    /// The request, or why the message is not a valid one (every problem).
    pub request: Result<Request, String>,
}

/// Parses and validates one message body. `content_type` is the AMQP
/// property (Kazoo always sends `application/json`; none means JSON too).
pub fn parse(body: &[u8], content_type: Option<&str>) -> Parsed {
    let invalid = |reason: String| Parsed {
        reply_to: ReplyTo::default(),
        event: None,
        request: Err(reason),
    };
    if let Some(kind) = content_type.filter(|kind| !is_json(kind)) {
        return invalid(format!(
            "the content type is {kind:?}, not application/json"
        ));
    }
    let json: Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(err) => return invalid(format!("the body is not JSON: {err}")),
    };
    let Value::Object(fields) = json else {
        return invalid(format!("the body is {}, not a JSON object", kind_of(&json)));
    };
    let reply_to = ReplyTo {
        server_id: non_empty_string(&fields, "Server-ID"),
        msg_id: fields
            .get("Msg-ID")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    let event = fields
        .get("Event-Name")
        .and_then(Value::as_str)
        .and_then(Event::from_name);
    Parsed {
        reply_to,
        event,
        request: validate(&fields),
    }
}

/// A message over the size limit: not parsed into values, only scanned for
/// where to send the error reply (serde skips everything else without
/// building it).
pub fn oversized(body: &[u8], limit: usize) -> Parsed {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "Server-ID")]
        server_id: Option<Value>,
        #[serde(rename = "Msg-ID")]
        msg_id: Option<Value>,
    }
    let envelope = serde_json::from_slice::<Envelope>(body).ok();
    let text = |value: Option<Value>| match value {
        Some(Value::String(text)) if !text.is_empty() => Some(text),
        _ => None,
    };
    let reply_to = envelope.map_or_else(ReplyTo::default, |e| ReplyTo {
        server_id: text(e.server_id),
        msg_id: text(e.msg_id),
    });
    Parsed {
        reply_to,
        event: None,
        request: Err(format!(
            "the message is {} bytes, more than amqp.max_message_bytes ({limit})",
            body.len()
        )),
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.is_empty() || essence.eq_ignore_ascii_case("application/json")
}

/// Kazoo's checks in order (default headers, values, required fields,
/// types), collecting every problem.
fn validate(fields: &Map<String, Value>) -> Result<Request, String> {
    let mut problems = Vec::new();
    let event = check_event(fields, &mut problems);
    let required = event.map(Event::required).unwrap_or_default();
    let missing: Vec<&str> = DEFAULT_HEADERS
        .iter()
        .chain(required)
        .copied()
        .filter(|name| !fields.contains_key(*name))
        .collect();
    if !missing.is_empty() {
        problems.insert(0, format!("missing {}", missing.join(", ")));
    }
    for name in STRING_FIELDS {
        if let Some(value) = fields.get(name).filter(|v| !v.is_string()) {
            problems.push(format!("{name} is {}, not a string", kind_of(value)));
        }
    }
    if let Some(id) = string(fields, "Server-ID").filter(|id| id.len() > MAX_ROUTING_KEY_BYTES) {
        problems.push(format!(
            "Server-ID is {} bytes, longer than the {MAX_ROUTING_KEY_BYTES} a routing key holds",
            id.len()
        ));
    }
    let key = fields.get("Key").map(parse_key);
    if let Some(Err(problem)) = &key {
        problems.push(problem.clone());
    }
    match (event, problems.is_empty()) {
        (Some(event), true) => Ok(build(event, fields, key.and_then(Result::ok))),
        _ => Err(problems.join("; ")),
    }
}

/// Checks `Event-Category` and `Event-Name`; the event if both are right.
fn check_event(fields: &Map<String, Value>, problems: &mut Vec<String>) -> Option<Event> {
    let category = fields.get("Event-Category").and_then(Value::as_str);
    if let Some(category) = category.filter(|c| *c != EVENT_CATEGORY) {
        problems.push(format!(
            "Event-Category is {category:?}, not \"{EVENT_CATEGORY}\""
        ));
    }
    let name = fields.get("Event-Name").and_then(Value::as_str)?;
    let event = Event::from_name(name);
    if event.is_none() {
        problems.push(format!(
            "Event-Name {name:?} is not one of get_req, set_req, flush_req"
        ));
    }
    event
}

/// `Key`: one name, or a non-empty list of names (a nested path).
fn parse_key(key: &Value) -> Result<Vec<String>, String> {
    let wrong = || format!("Key is {}, not a string or a list of strings", kind_of(key));
    match key {
        Value::String(name) => Ok(vec![name.clone()]),
        Value::Array(path) if !path.is_empty() => path
            .iter()
            .map(|step| step.as_str().map(str::to_string).ok_or_else(wrong))
            .collect(),
        _ => Err(wrong()),
    }
}

/// The request from fields that passed validation.
fn build(event: Event, fields: &Map<String, Value>, key: Option<Vec<String>>) -> Request {
    let category = string(fields, "Category").unwrap_or_default();
    let node = string(fields, "Node");
    match event {
        Event::GetReq => Request::Get {
            category,
            key: key.unwrap_or_default(),
            default: fields.get("Default").cloned(),
            node,
        },
        Event::SetReq => Request::Set {
            category,
            key: key.unwrap_or_default(),
            value: fields.get("Value").cloned().unwrap_or(Value::Null),
            node_specific: is_true(fields.get("Node-Specific")),
            node,
        },
        Event::FlushReq => Request::Flush {
            category,
            key: fields.get("Key").cloned(),
        },
    }
}

/// Kazoo's `kz_json:is_true`: only `true` and `"true"` are true.
fn is_true(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::Bool(true))) || value.and_then(Value::as_str) == Some("true")
}

fn string(fields: &Map<String, Value>, name: &str) -> Option<String> {
    fields.get(name).and_then(Value::as_str).map(str::to_string)
}

/// The longest routing key AMQP carries (a short string).
pub const MAX_ROUTING_KEY_BYTES: usize = 255;

/// A `Server-ID` that can be routed to: an empty one names no queue (Kazoo
/// cannot publish to it either), a longer one than a routing key holds
/// cannot be published at all.
fn non_empty_string(fields: &Map<String, Value>, name: &str) -> Option<String> {
    string(fields, name).filter(|s| !s.is_empty() && s.len() <= MAX_ROUTING_KEY_BYTES)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The headers Kazoo puts on every sysconf reply.
fn reply_headers(event_name: &str, node: &str, msg_id: Option<&str>) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("Event-Category".into(), EVENT_CATEGORY.into());
    fields.insert("Event-Name".into(), event_name.into());
    fields.insert("App-Name".into(), APP_NAME.into());
    fields.insert("App-Version".into(), APP_VERSION.into());
    fields.insert("Node".into(), node.into());
    if let Some(msg_id) = msg_id {
        fields.insert("Msg-ID".into(), msg_id.into());
    }
    fields
}

/// The key as the request gave it: one name, or the path as a list.
pub fn key_value(key: &[String]) -> Value {
    match key {
        [single] => Value::String(single.clone()),
        path => json!(path),
    }
}

/// `get_resp`: the value found, or `"undefined"` when there is none.
pub fn get_resp(
    node: &str,
    msg_id: &str,
    category: &str,
    key: &[String],
    value: Option<Value>,
) -> Value {
    let mut fields = reply_headers("get_resp", node, Some(msg_id));
    fields.insert("Category".into(), category.into());
    fields.insert("Key".into(), key_value(key));
    fields.insert(
        "Value".into(),
        value.unwrap_or_else(|| Value::String(UNDEFINED.into())),
    );
    Value::Object(fields)
}

/// `set_resp`: echoes the value that was stored (`null`: deleted).
pub fn set_resp(node: &str, msg_id: &str, category: &str, key: &[String], value: Value) -> Value {
    let mut fields = reply_headers("set_resp", node, Some(msg_id));
    fields.insert("Category".into(), category.into());
    fields.insert("Key".into(), key_value(key));
    fields.insert("Value".into(), value);
    Value::Object(fields)
}

/// Why a request failed, as the error reply names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The message is not a valid sysconf request.
    Invalid,
    /// The request is valid but cannot be carried out as asked.
    BadRequest,
    NotReady,
    Conflict,
    CouchdbUnavailable,
    Internal,
}

impl ErrorKind {
    /// The `Error-Kind` field (and the HTTP API's `error` for the same case).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid_message",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::Conflict => "conflict",
            ErrorKind::CouchdbUnavailable => "couchdb_unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error reply in Kazoo's shape (`kz_api:error_resp`: `Event-Category`
/// `error`, `Error-Message`), plus `Error-Kind` for programs. Kazoo's
/// sysconf never answers a failed request; a Kazoo caller
/// (`kz_amqp_worker:call`) treats a reply with its `Msg-ID` that is not a
/// valid response as a negative answer and returns `{error, Reply}` at once
/// instead of waiting for its timeout. Without a `Msg-ID` in the request
/// the reply carries none.
pub fn error_resp(node: &str, msg_id: Option<&str>, kind: ErrorKind, message: &str) -> Value {
    let mut fields = reply_headers("sysconf_error", node, msg_id);
    fields.insert("Event-Category".into(), "error".into());
    fields.insert("Error-Kind".into(), kind.name().into());
    fields.insert("Error-Message".into(), message.into());
    Value::Object(fields)
}
