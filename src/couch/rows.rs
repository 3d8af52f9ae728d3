//! Parsing of `_changes` rows and pages, tolerant of one broken document:
//! a row whose document cannot be parsed still yields its id, rev and seq,
//! with the document marked malformed.

use serde::Deserialize;
use serde_json::Value;

use super::json_scan;
use super::{Body, Seq};

/// One row of a `_changes` feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub seq: Seq,
    pub id: String,
    /// The winning revision the row reports (the included document's `_rev`
    /// when there is one).
    pub rev: String,
    /// The document is gone (its winning revision is a deletion).
    pub deleted: bool,
    /// The included document; `None` for deletions.
    pub body: Option<Body>,
}

/// One line of a continuous feed.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Row(Row),
    /// A change the consumer already holds (see `ChangesStream::skip_known`):
    /// only its position, the document left unparsed.
    Known {
        seq: Seq,
    },
    /// The server ended the feed; reconnect from this sequence.
    End {
        last_seq: Seq,
    },
}

/// A parsed `feed=normal` or `feed=longpoll` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub rows: Vec<Row>,
    pub last_seq: Seq,
}

#[derive(Deserialize)]
struct FastRow {
    seq: Option<Value>,
    id: String,
    #[serde(default)]
    changes: Vec<RevOnly>,
    #[serde(default)]
    deleted: bool,
    doc: Option<Value>,
}

#[derive(Deserialize)]
struct RevOnly {
    rev: String,
}

/// Parses one non-empty line of a continuous feed.
///
/// # Errors
/// The line is neither a change row nor a `last_seq` line.
pub fn parse_line(line: &[u8]) -> Result<Line, String> {
    if let Ok(row) = serde_json::from_slice::<FastRow>(line) {
        return Ok(Line::Row(finish_row(
            row.seq,
            row.id,
            &row.changes,
            row.deleted,
            row.doc.map(Ok),
        )));
    }
    let members = json_scan::members(line).ok_or_else(|| garbage(line))?;
    if let Some((_, span)) = members.iter().find(|(k, _)| k == "last_seq") {
        let last_seq = serde_json::from_slice(&line[span.clone()]).map_err(|_| garbage(line))?;
        return Ok(Line::End { last_seq });
    }
    if let Some((_, span)) = members.iter().find(|(k, _)| k == "error") {
        return Err(format!(
            "the feed reported an error: {}",
            String::from_utf8_lossy(&line[span.clone()])
        ));
    }
    slow_row(line, &members).map(Line::Row)
}

/// The `(seq, id, rev)` of a live (not deleted) change row, read by
/// scanning the line without parsing its document; `None` for anything else.
pub fn peek(line: &[u8]) -> Option<(Seq, String, String)> {
    let members = json_scan::members(line)?;
    let field = |name: &str| {
        members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, s)| &line[s.clone()])
    };
    if field("deleted").is_some_and(|raw| raw == b"true") {
        return None;
    }
    let id: String = serde_json::from_slice(field("id")?).ok()?;
    let seq: Seq = serde_json::from_slice(field("seq")?).ok()?;
    let changes: Vec<RevOnly> = serde_json::from_slice(field("changes")?).ok()?;
    let rev = changes.into_iter().next()?.rev;
    Some((seq, id, rev))
}

/// Parses one item of a page's `results`.
///
/// # Errors
/// The item is not a change row.
pub fn parse_row(item: &[u8]) -> Result<Row, String> {
    match parse_line(item)? {
        Line::Row(row) => Ok(row),
        Line::End { .. } | Line::Known { .. } => Err(garbage(item)),
    }
}

/// Parses a `feed=normal` or `feed=longpoll` body.
///
/// # Errors
/// The body is not a `{"results": [...], "last_seq": ...}` object.
pub fn parse_page(body: &[u8]) -> Result<Page, String> {
    let members = json_scan::members(body).ok_or_else(|| garbage(body))?;
    let span = |name: &str| {
        members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, s)| s.clone())
    };
    let results = span("results").ok_or_else(|| garbage(body))?;
    let last_seq = span("last_seq").ok_or_else(|| garbage(body))?;
    let last_seq = serde_json::from_slice(&body[last_seq]).map_err(|_| garbage(body))?;
    let results = &body[results];
    let items = json_scan::items(results).ok_or_else(|| garbage(body))?;
    let rows = items
        .into_iter()
        .map(|item| parse_row(&results[item]))
        .collect::<Result<_, _>>()?;
    Ok(Page { rows, last_seq })
}

/// The row when the fast path failed: most likely its document is too deeply
/// nested or holds an invalid escape.
fn slow_row(line: &[u8], members: &[(String, std::ops::Range<usize>)]) -> Result<Row, String> {
    let field = |name: &str| {
        members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, s)| &line[s.clone()])
    };
    let id: String = field("id")
        .and_then(|raw| serde_json::from_slice(raw).ok())
        .ok_or_else(|| garbage(line))?;
    let seq = field("seq").and_then(|raw| serde_json::from_slice(raw).ok());
    let changes: Vec<RevOnly> = field("changes")
        .and_then(|raw| serde_json::from_slice(raw).ok())
        .unwrap_or_default();
    let deleted = field("deleted")
        .and_then(|raw| serde_json::from_slice(raw).ok())
        .unwrap_or(false);
    let body = field("doc").map(|raw| {
        serde_json::from_slice::<Value>(raw)
            .map_err(|err| format!("the document cannot be parsed: {err}"))
    });
    let mut row = finish_row(seq, id, &changes, deleted, body);
    if row.rev.is_empty() {
        row.rev = rev_from_raw(field("doc")).unwrap_or_default();
    }
    Ok(row)
}

/// The row, its document kept as text (the parsed tree is dropped here:
/// see `crate::json`).
fn finish_row(
    seq: Option<Value>,
    id: String,
    changes: &[RevOnly],
    deleted: bool,
    doc: Option<Result<Value, String>>,
) -> Row {
    let parsed = doc.as_ref().and_then(|d| d.as_ref().ok());
    let doc_rev = parsed
        .and_then(|doc| doc.get("_rev"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let rev = doc_rev
        .or_else(|| changes.first().map(|c| c.rev.clone()))
        .unwrap_or_default();
    let deleted =
        deleted || parsed.is_some_and(|doc| doc.get("_deleted") == Some(&Value::Bool(true)));
    let body = match doc {
        _ if deleted => None,
        None => None,
        Some(Ok(doc)) => Some(Body::of(&doc)),
        Some(Err(why)) => Some(Body::Malformed(why)),
    };
    Row {
        seq: seq.unwrap_or(Value::Null),
        id,
        rev,
        deleted,
        body,
    }
}

/// The `_rev` of a document that serde could not parse as a whole.
fn rev_from_raw(raw: Option<&[u8]>) -> Option<String> {
    let raw = raw?;
    let members = json_scan::members(raw)?;
    let (_, span) = members.iter().find(|(k, _)| k == "_rev")?;
    serde_json::from_slice(&raw[span.clone()]).ok()
}

fn garbage(bytes: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
    format!("unexpected data in the changes feed: {shown:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peek_reads_position_id_and_rev_without_the_document() {
        let line = br#"{"seq":"12-g1AA","id":"sysconf:a","changes":[{"rev":"3-abc"}],"doc":{"_id":"sysconf:a","_rev":"3-abc","deep":[[[[1]]]]}}"#;
        assert_eq!(
            peek(line),
            Some((
                json!("12-g1AA"),
                "sysconf:a".to_string(),
                "3-abc".to_string()
            ))
        );
        // Deletions are never skipped (they are small, and must be applied).
        let deleted = br#"{"seq":13,"id":"x","changes":[{"rev":"4-d"}],"deleted":true}"#;
        assert_eq!(peek(deleted), None);
        assert_eq!(peek(br#"{"last_seq":14}"#), None);
        assert_eq!(peek(b"garbage"), None);
    }

    #[test]
    fn a_row_with_its_document() {
        let line = br#"{"seq":"3-g1AAAA","id":"ecallmgr","changes":[{"rev":"2-b"}],"doc":{"_id":"ecallmgr","_rev":"2-b","default":{}}}"#;
        let Line::Row(row) = parse_line(line).unwrap() else {
            panic!()
        };
        assert_eq!(row.seq, json!("3-g1AAAA"));
        assert_eq!(row.rev, "2-b");
        assert!(!row.deleted);
        assert_eq!(
            row.body,
            Some(Body::of(
                &json!({"_id":"ecallmgr","_rev":"2-b","default":{}})
            ))
        );
    }

    #[test]
    fn a_deletion_has_no_body() {
        let line = br#"{"seq":7,"id":"x","changes":[{"rev":"3-c"}],"deleted":true,"doc":{"_id":"x","_rev":"3-c","_deleted":true}}"#;
        let Line::Row(row) = parse_line(line).unwrap() else {
            panic!()
        };
        assert!(row.deleted);
        assert_eq!(row.body, None);
        assert_eq!(row.seq, json!(7));
    }

    #[test]
    fn a_too_deep_document_is_malformed_but_the_row_survives() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let line = format!(
            r#"{{"seq":9,"id":"deep","changes":[{{"rev":"1-a"}}],"doc":{{"_id":"deep","_rev":"1-a","v":{deep}}}}}"#
        );
        let Line::Row(row) = parse_line(line.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(row.id, "deep");
        assert_eq!(row.rev, "1-a");
        assert_eq!(row.seq, json!(9));
        assert!(
            matches!(row.body, Some(Body::Malformed(ref why)) if why.contains("recursion limit"))
        );
    }

    #[test]
    fn a_lone_surrogate_makes_the_document_malformed() {
        let line = br#"{"seq":4,"id":"u","changes":[{"rev":"1-a"}],"doc":{"_id":"u","_rev":"1-a","v":"\ud800"}}"#;
        let Line::Row(row) = parse_line(line).unwrap() else {
            panic!()
        };
        assert!(matches!(row.body, Some(Body::Malformed(_))));
    }

    #[test]
    fn end_of_feed_and_garbage() {
        assert_eq!(
            parse_line(br#"{"last_seq":"5-x","pending":0}"#).unwrap(),
            Line::End {
                last_seq: json!("5-x")
            }
        );
        assert!(parse_line(b"<html>").is_err());
        assert!(
            parse_line(br#"{"error":"unauthorized","reason":"x"}"#)
                .unwrap_err()
                .contains("unauthorized")
        );
    }

    #[test]
    fn a_page_with_stray_newlines() {
        let body = b"{\"results\":[\n{\"seq\":1,\"id\":\"a\",\"changes\":[{\"rev\":\"1-a\"}],\"doc\":{\"_id\":\"a\",\"_rev\":\"1-a\"}}\n\n],\n\"last_seq\":1,\"pending\":0}\n";
        let page = parse_page(body).unwrap();
        assert_eq!(page.rows.len(), 1);
        assert_eq!(page.last_seq, json!(1));
    }
}
