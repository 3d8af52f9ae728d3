//! The phones listener. Until the phones domain serves files here, it
//! answers `/healthz` and gives every other request the same bare 404, so
//! nothing can be learnt by probing it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use super::middleware;
use crate::telemetry::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>, timeout: Duration) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(uniform_not_found)
        .method_not_allowed_fallback(uniform_not_found);
    middleware::common(router, "phones", metrics, timeout)
}

async fn uniform_not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "Not Found\n")
}
