//! Request bodies of the edge store, parsed by their Content-Type into
//! `Fields`: `multipart/form-data` (files and text fields),
//! `application/x-www-form-urlencoded`, and JSON objects (strings, numbers
//! and booleans as text; a file as its text, or as `{"base64": …,
//! "file_name": …}`). An empty body without a Content-Type is an empty
//! form. Anything else is refused in the seed's error shape.

use axum::extract::Request;
use axum::http::header;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use crate::domains::edge::manage::{Fields, Upload};
use crate::domains::edge::service::Answer;

/// Largest text field of a multipart form (files may be larger).
const MAX_TEXT_FIELD: usize = 64 * 1024;

fn too_large(limit: usize) -> Answer {
    Answer::failure(
        413,
        "Request body too large",
        format!("the limit for this request is {limit} bytes"),
    )
}

/// Bytes read and thrown away after a body went over its limit, so that a
/// client still sending gets the 413 instead of a cut connection.
const DRAIN: usize = 1 << 20;

/// Reads the body, at most `limit` bytes.
///
/// # Errors
/// 413 when the body (or its declared length) is over the limit.
pub async fn body(request: Request, limit: usize) -> Result<(Option<String>, Bytes), Answer> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit.saturating_add(DRAIN)) {
        // Too much to drain: answer at once (the connection is then closed).
        return Err(too_large(limit));
    }
    let mut stream = request.into_body().into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|err| Answer::failure(400, "Incomplete request body", err.to_string()))?;
        seen = seen.saturating_add(chunk.len());
        if seen > limit.saturating_add(DRAIN) {
            break;
        }
        if seen <= limit {
            bytes.extend_from_slice(&chunk);
        }
    }
    if seen > limit {
        return Err(too_large(limit));
    }
    Ok((content_type, Bytes::from(bytes)))
}

/// Reads and parses a form or JSON body.
///
/// # Errors
/// 413 (too large), 415 (content type), 400 (malformed).
pub async fn fields(request: Request, limit: usize) -> Result<Fields, Answer> {
    let (content_type, bytes) = body(request, limit).await?;
    parse(content_type.as_deref(), bytes).await
}

/// Parses a body by its content type.
///
/// # Errors
/// 415 for an unsupported content type, 400 for a malformed body.
pub async fn parse(content_type: Option<&str>, bytes: Bytes) -> Result<Fields, Answer> {
    let essence = content_type
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match essence.as_str() {
        "" if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Fields::default()),
        "application/json" => json_fields(&bytes),
        t if t.ends_with("+json") => json_fields(&bytes),
        "application/x-www-form-urlencoded" => Ok(urlencoded_fields(&bytes)),
        "multipart/form-data" => multipart_fields(content_type.unwrap_or(""), bytes).await,
        "" => Err(unsupported("no Content-Type")),
        other => Err(unsupported(other)),
    }
}

fn unsupported(what: &str) -> Answer {
    let mut answer = Answer::failure(
        415,
        "Unsupported content type",
        "send application/json, application/x-www-form-urlencoded or multipart/form-data",
    );
    answer.body["reason"] = Value::String(format!("the request has {what}"));
    answer
}

fn malformed(what: &str, why: impl std::fmt::Display) -> Answer {
    Answer::failure(400, &format!("Malformed {what}"), why.to_string())
}

fn json_fields(bytes: &[u8]) -> Result<Fields, Answer> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::default());
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|err| malformed("JSON body", err))?;
    let Value::Object(object) = value else {
        return Err(malformed("JSON body", "the body must be a JSON object"));
    };
    let mut fields = Fields::default();
    for (name, value) in object {
        match value {
            Value::Null => {}
            Value::String(text) => {
                fields.text.insert(name, text);
            }
            Value::Bool(_) | Value::Number(_) => {
                fields.non_text.insert(name.clone());
                fields.text.insert(name, value.to_string());
            }
            Value::Object(file) if file.contains_key("base64") => {
                let data = file
                    .get("base64")
                    .and_then(Value::as_str)
                    .and_then(|b| STANDARD.decode(b).ok())
                    .ok_or_else(|| Answer::field(&name, "base64 must be base64 text"))?;
                let upload = Upload {
                    file_name: file
                        .get("file_name")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    content_type: file
                        .get("content_type")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    bytes: Bytes::from(data),
                };
                fields.files.insert(name, upload);
            }
            Value::Object(_) | Value::Array(_) => {
                return Err(Answer::field(
                    &name,
                    "must be a string, a number or a boolean",
                ));
            }
        }
    }
    Ok(fields)
}

fn urlencoded_fields(bytes: &[u8]) -> Fields {
    let mut fields = Fields::default();
    for (name, value) in form_urlencoded::parse(bytes) {
        fields
            .text
            .entry(name.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    fields
}

async fn multipart_fields(content_type: &str, bytes: Bytes) -> Result<Fields, Answer> {
    let boundary =
        multer::parse_boundary(content_type).map_err(|err| malformed("form data", err))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(bytes) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut fields = Fields::default();
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return Ok(fields),
            Err(err) => return Err(malformed("form data", err)),
        };
        let Some(name) = field.name().map(str::to_string) else {
            return Err(malformed("form data", "a part has no name"));
        };
        let file_name = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(ToString::to_string);
        let data = field
            .bytes()
            .await
            .map_err(|err| malformed("form data", err))?;
        let is_file = file_name.is_some()
            || content_type
                .as_deref()
                .is_some_and(|t| !t.starts_with("text/plain"))
            || data.len() > MAX_TEXT_FIELD;
        let text = (!is_file)
            .then(|| String::from_utf8(data.to_vec()).ok())
            .flatten();
        match text {
            Some(text) => {
                fields.text.entry(name).or_insert(text);
            }
            None => {
                let upload = Upload {
                    file_name,
                    content_type,
                    bytes: data,
                };
                fields.files.entry(name).or_insert(upload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn every_content_type_gives_the_same_fields() {
        let json = run(parse(
            Some("application/json; charset=utf-8"),
            Bytes::from_static(
                br#"{"name": "a.conf", "permissions": 644, "raw": true, "owner": null}"#,
            ),
        ))
        .unwrap();
        assert_eq!(json.text(&["name"]), Some("a.conf"));
        assert_eq!(json.text(&["permission", "permissions"]), Some("644"));
        assert_eq!(json.text(&["raw"]), Some("true"));
        assert_eq!(json.text(&["owner"]), None);
        let form = run(parse(
            Some("application/x-www-form-urlencoded"),
            Bytes::from_static(b"name=a.conf&permissions=644&path=%2Fetc%2Fa"),
        ))
        .unwrap();
        assert_eq!(form.text(&["path"]), Some("/etc/a"));
        let mut raw = b"--XX\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\nfirst\r\n--XX\r\nContent-Disposition: form-data; name=\"template_file\"; filename=\"a.conf\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        raw.extend_from_slice(&[0xff, 0x00, b'x']);
        raw.extend_from_slice(b"\r\n--XX--\r\n");
        let multipart = run(parse(
            Some("multipart/form-data; boundary=XX"),
            Bytes::from(raw),
        ))
        .unwrap();
        assert_eq!(multipart.text(&["comment"]), Some("first"));
        let file = multipart.file(&["template_file"]).unwrap();
        assert_eq!(file.bytes.as_ref(), &[0xff, 0x00, b'x']);
        assert_eq!(file.file_name.as_deref(), Some("a.conf"));
    }

    #[test]
    fn bad_bodies_are_refused_in_the_seed_shape() {
        let answer = run(parse(Some("text/xml"), Bytes::from_static(b"<x/>"))).unwrap_err();
        assert_eq!(answer.status, 415);
        let answer = run(parse(Some("application/json"), Bytes::from_static(b"[1]"))).unwrap_err();
        assert_eq!(answer.status, 400);
        let answer = run(parse(
            Some("application/json"),
            Bytes::from_static(b"{\"a\": {\"b\": 1}}"),
        ))
        .unwrap_err();
        assert_eq!(
            answer.body["message"]["a"],
            "must be a string, a number or a boolean"
        );
        let answer = run(parse(
            Some("multipart/form-data; boundary=XX"),
            Bytes::from_static(
                b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
            ),
        ))
        .unwrap_err();
        assert_eq!(answer.status, 400);
        let answer = run(parse(Some("multipart/form-data"), Bytes::from_static(b"x"))).unwrap_err();
        assert_eq!(answer.status, 400);
        assert_eq!(run(parse(None, Bytes::new())).unwrap(), Fields::default());
    }
}
