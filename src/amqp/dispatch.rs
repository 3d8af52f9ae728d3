//! Carries out a valid request through `SysconfService`, the same service
//! the HTTP API calls (one implementation, two front doors), and turns the
//! result into Kazoo's reply.

use serde_json::Value;

use super::message::{self, ErrorKind, Request};
use crate::domains::sysconf::service::{SysconfError, SysconfService};

/// What became of a carried-out request.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// The reply to send, and the outcome for metrics (`ok`, `undefined`).
    Reply { body: Value, outcome: &'static str },
    /// Done; Kazoo sends no reply to this request (a flush).
    Silent,
}

/// Why a valid request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<SysconfError> for Failure {
    fn from(err: SysconfError) -> Failure {
        let kind = match &err {
            SysconfError::NotReady => ErrorKind::NotReady,
            SysconfError::NotFound | SysconfError::BadRequest(_) => ErrorKind::BadRequest,
            SysconfError::Conflict(_) => ErrorKind::Conflict,
            SysconfError::Unavailable(_) => ErrorKind::CouchdbUnavailable,
        };
        Failure {
            kind,
            message: err.to_string(),
        }
    }
}

/// Carries out `request`; `node` names this daemon in replies, `msg_id`
/// is the request's.
///
/// # Errors
/// The service's error, as the error reply will name it.
pub async fn carry_out(
    service: &SysconfService,
    node: &str,
    msg_id: &str,
    request: Request,
) -> Result<Done, Failure> {
    match request {
        Request::Get {
            category,
            key,
            default,
            node: asked_for,
        } => {
            // Kazoo answers `"Default": null` with null and writes nothing
            // (storing null deletes): so does a missing key with it here.
            let null_default = default.as_ref().is_some_and(Value::is_null);
            let default = default.filter(|d| !d.is_null());
            let found = service
                .get(&category, &key, asked_for.as_deref(), default)
                .await;
            let (value, outcome) = match found {
                Ok(answer) => (Some(answer.value), "ok"),
                Err(SysconfError::NotFound) if null_default => (Some(Value::Null), "ok"),
                Err(SysconfError::NotFound) => (None, "undefined"),
                Err(err) => return Err(err.into()),
            };
            let body = message::get_resp(node, msg_id, &category, &key, value);
            Ok(Done::Reply { body, outcome })
        }
        Request::Set {
            category,
            key,
            value,
            node_specific,
            node: asked_for,
        } => {
            let answer = service
                .set(&category, &key, value, node_specific, asked_for.as_deref())
                .await?;
            let body = message::set_resp(node, msg_id, &category, &key, answer.value);
            Ok(Done::Reply {
                body,
                outcome: "ok",
            })
        }
        Request::Flush { category, .. } => {
            service.flush(&category).await?;
            Ok(Done::Silent)
        }
    }
}
