//! Golden tests of the pure AMQP core against `fixtures/amqp/`: every case
//! of `messages.json` (a body as JSON, or as raw text, and an optional
//! content type) parses into what `messages.expected.json` records, and the
//! reply builders give `replies.expected.json` (run with `UPDATE_EXPECT=1`
//! to regenerate, then review the diff).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::message::{self, ErrorKind, Parsed, Request};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/amqp")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn describe_request(request: &Request) -> Value {
    match request {
        Request::Get {
            category,
            key,
            default,
            node,
        } => {
            json!({ "get": { "category": category, "key": key, "default": default, "default_given": default.is_some(), "node": node } })
        }
        Request::Set {
            category,
            key,
            value,
            node_specific,
            node,
        } => {
            json!({ "set": { "category": category, "key": key, "value": value, "node_specific": node_specific, "node": node } })
        }
        Request::Flush { category, key } => {
            json!({ "flush": { "category": category, "key": key } })
        }
    }
}

fn describe(name: &str, parsed: &Parsed) -> Value {
    let outcome = match &parsed.request {
        Ok(request) => json!({ "valid": describe_request(request) }),
        Err(reason) => json!({ "invalid": reason }),
    };
    json!({
        "case": name,
        "server_id": parsed.reply_to.server_id,
        "msg_id": parsed.reply_to.msg_id,
        "event": parsed.event.map(message::Event::name),
        "outcome": outcome,
    })
}

/// A body nested `depth` lists deep inside a valid get_req's `Default`.
fn deeply_nested(depth: usize) -> Vec<u8> {
    let mut body = String::from(
        r#"{"App-Name":"x","App-Version":"1","Event-Category":"sysconf","Event-Name":"get_req","Msg-ID":"m","Category":"c","Key":"k","Default":"#,
    );
    body.push_str(&"[".repeat(depth));
    body.push_str(&"]".repeat(depth));
    body.push('}');
    body.into_bytes()
}

#[test]
fn golden_messages() {
    let cases = read_json(&fixtures().join("messages.json"));
    let cases = cases.as_array().expect("messages.json is a list");
    assert!(cases.len() >= 25, "the golden cases are missing");
    let mut described = Vec::new();
    for case in cases {
        let name = case["case"].as_str().expect("every case has a name");
        let body = match (&case.get("raw"), &case.get("body")) {
            (Some(Value::String(raw)), _) => raw.clone().into_bytes(),
            (_, Some(body)) => serde_json::to_vec(body).unwrap(),
            _ => panic!("{name}: no body"),
        };
        let content_type = case.get("content_type").and_then(Value::as_str);
        described.push(describe(name, &message::parse(&body, content_type)));
    }
    let nested = message::parse(&deeply_nested(200), None);
    described.push(describe("nesting_deeper_than_serde_allows", &nested));
    let actual = serde_json::to_string_pretty(&described).unwrap() + "\n";
    expect_test::expect_file![fixtures().join("messages.expected.json")].assert_eq(&actual);
}

#[test]
fn every_invalid_message_still_names_where_to_answer() {
    let body =
        json!({"Event-Name": "get_req", "Server-ID": "targeted.q1", "Msg-ID": "m-1", "Key": {}});
    let parsed = message::parse(&serde_json::to_vec(&body).unwrap(), None);
    assert!(parsed.request.is_err());
    assert_eq!(parsed.reply_to.server_id.as_deref(), Some("targeted.q1"));
    assert_eq!(parsed.reply_to.msg_id.as_deref(), Some("m-1"));
}

#[test]
fn an_oversized_message_is_only_scanned_for_where_to_answer() {
    let body = json!({"Server-ID": "targeted.q1", "Msg-ID": "m-2", "Default": "x".repeat(100)});
    let body = serde_json::to_vec(&body).unwrap();
    let parsed = message::oversized(&body, 64);
    assert_eq!(parsed.reply_to.server_id.as_deref(), Some("targeted.q1"));
    assert_eq!(parsed.reply_to.msg_id.as_deref(), Some("m-2"));
    assert!(
        parsed
            .request
            .unwrap_err()
            .contains("more than amqp.max_message_bytes (64)")
    );
    let garbage = message::oversized(b"\xff not json", 4);
    assert_eq!(garbage.reply_to, message::ReplyTo::default());
}

#[test]
fn golden_replies() {
    let key = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let node = "caldera@kz3.example.net";
    let replies = json!({
        "get_found": message::get_resp(node, "5f1c", "ecallmgr", &key(&["fs_nodes"]), Some(json!(["freeswitch@fs1"]))),
        "get_undefined": message::get_resp(node, "5f1d", "ecallmgr", &key(&["nope"]), None),
        "get_empty_list_stays_a_list": message::get_resp(node, "5f1e", "ecallmgr", &key(&["fs_cmds"]), Some(json!([]))),
        "get_null": message::get_resp(node, "5f1f", "ecallmgr", &key(&["shadowed"]), Some(Value::Null)),
        "get_nested_key": message::get_resp(node, "5f20", "voicemail", &key(&["limits", "max_message_length"]), Some(json!(500))),
        "set_stored": message::set_resp(node, "6a01", "ecallmgr", &key(&["fs_nodes"]), json!(["freeswitch@fs9"])),
        "set_deleted": message::set_resp(node, "6a02", "ecallmgr", &key(&["fs_nodes"]), Value::Null),
        "error_invalid": message::error_resp(node, Some("7b01"), ErrorKind::Invalid, "missing Category"),
        "error_without_msg_id": message::error_resp(node, None, ErrorKind::Invalid, "missing Msg-ID"),
        "error_couchdb": message::error_resp(node, Some("7b02"), ErrorKind::CouchdbUnavailable, "CouchDB: connection refused"),
    });
    let actual = serde_json::to_string_pretty(&replies).unwrap() + "\n";
    expect_test::expect_file![fixtures().join("replies.expected.json")].assert_eq(&actual);
}
