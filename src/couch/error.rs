//! CouchDB errors, classified by what the caller must do about them.

use reqwest::StatusCode;

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connection refused or cut, timeout, 408, 429, 5xx: retry with backoff.
    Transient,
    /// 409 or 412: re-read the current revision and try again.
    Conflict,
    /// 404: the database or document does not exist.
    NotFound,
    /// 401 or 403: credentials are missing or wrong; retrying fast is pointless.
    Unauthorized,
    /// 413: the document is over the server's size limit.
    TooLarge,
    /// 400 and anything unexpected: a bug or a server we cannot talk to.
    Fatal,
}

impl ErrorKind {
    pub fn from_status(status: StatusCode) -> ErrorKind {
        match status.as_u16() {
            404 => ErrorKind::NotFound,
            409 | 412 => ErrorKind::Conflict,
            401 | 403 => ErrorKind::Unauthorized,
            413 => ErrorKind::TooLarge,
            408 | 429 | 500..=599 => ErrorKind::Transient,
            _ => ErrorKind::Fatal,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Fatal => "fatal",
        }
    }
}

/// A failed CouchDB request: what was attempted, and why it failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    /// `GET system_config/ecallmgr` and the like; never contains credentials.
    pub operation: String,
    pub status: Option<u16>,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, operation: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            kind,
            operation: operation.into(),
            status: None,
            message: message.into(),
        }
    }

    /// An answer with an error status; `body` is CouchDB's `{"error","reason"}`.
    pub fn from_response(operation: String, status: StatusCode, body: &[u8]) -> Error {
        let message = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(json) => {
                let error = json.get("error").and_then(|v| v.as_str()).unwrap_or("");
                let reason = json.get("reason").and_then(|v| v.as_str()).unwrap_or("");
                format!("{status}: {error}: {reason}")
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                format!("{status}: {text}")
            }
        };
        Error {
            kind: ErrorKind::from_status(status),
            operation,
            status: Some(status.as_u16()),
            message,
        }
    }

    /// A transport failure (connect, timeout, cut body). Our URLs never carry
    /// credentials (they go in a header), so the text is safe to log.
    pub fn transport(operation: String, err: &reqwest::Error) -> Error {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        Error::new(ErrorKind::Transient, operation, message)
    }

    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_caller_must_do() {
        let kind = |code: u16| ErrorKind::from_status(StatusCode::from_u16(code).unwrap());
        assert_eq!(kind(404), ErrorKind::NotFound);
        assert_eq!(kind(409), ErrorKind::Conflict);
        assert_eq!(kind(412), ErrorKind::Conflict);
        assert_eq!(kind(401), ErrorKind::Unauthorized);
        assert_eq!(kind(503), ErrorKind::Transient);
        assert_eq!(kind(429), ErrorKind::Transient);
        assert_eq!(kind(413), ErrorKind::TooLarge);
        assert_eq!(kind(400), ErrorKind::Fatal);
    }

    #[test]
    fn couchdb_error_bodies_become_the_message() {
        let err = Error::from_response(
            "PUT db/doc".into(),
            StatusCode::CONFLICT,
            br#"{"error":"conflict","reason":"Document update conflict."}"#,
        );
        assert_eq!(
            err.to_string(),
            "PUT db/doc: 409 Conflict: conflict: Document update conflict."
        );
        assert!(err.is(ErrorKind::Conflict));
    }
}
