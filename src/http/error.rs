//! JSON errors: `{"error": "<kind>", "reason": "<human text>"}` with the
//! right status code, for every failure the api listener reports.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domains::sysconf::service::SysconfError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            reason: reason.into(),
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.kind, "reason": self.reason })),
        )
            .into_response()
    }
}

impl From<SysconfError> for ApiError {
    fn from(err: SysconfError) -> ApiError {
        let reason = err.to_string();
        match err {
            SysconfError::NotReady => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason)
            }
            SysconfError::NotFound => ApiError::not_found("no such category or key"),
            SysconfError::BadRequest(_) => ApiError::bad_request(reason),
            SysconfError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", reason),
            SysconfError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "couchdb_unavailable",
                reason,
            ),
        }
    }
}
