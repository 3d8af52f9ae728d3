//! Layers shared by both listeners: request metrics by matched route, the
//! admin check, a JSON answer for panics, timeouts and unknown routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use super::ApiError;
use crate::config::Secret;
use crate::telemetry::metrics::{ListenerMetrics, Metrics};

/// JSON answers for unknown routes and methods.
pub fn json_fallbacks(router: Router) -> Router {
    router
        .fallback(|| async { ApiError::not_found("no such resource") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource does not accept that method",
            )
        })
}

/// Wraps a listener's router (fallbacks already set, so they are wrapped
/// too) with metrics, timeout and panic catching.
pub fn common(
    router: Router,
    listener: &'static str,
    metrics: Arc<Metrics>,
    timeout: Duration,
) -> Router {
    let router = router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| deadline(timeout, request, next),
    ));
    instrumented(router, listener, metrics)
}

/// `common` without the request deadline, for handlers that never wait
/// (the phones listener answers from memory; it bounds its one wait, an
/// upload's body, itself): no timer per request.
pub fn instrumented(router: Router, listener: &'static str, metrics: Arc<Metrics>) -> Router {
    let metrics = Arc::new(ListenerMetrics::new(listener, metrics));
    router
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed unexpectedly",
            )
            .into_response()
        }))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| record(metrics.clone(), request, next),
        ))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
}

/// A request still running after `timeout` is answered 503 in the JSON
/// error shape (tower-http's timeout layer answers with an empty body).
async fn deadline(timeout: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request did not finish within http.request_timeout_ms ({} ms)",
                timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

async fn record(metrics: Arc<ListenerMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Unmatched paths share one label so scanners cannot inflate cardinality.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status().as_u16();
    metrics.record(route, &method, status, started.elapsed());
    response
}

/// The admin credential: a bearer token when configured, else loopback only.
#[derive(Default)]
pub struct AdminAuth {
    token: ArcSwapOption<Secret>,
}

impl AdminAuth {
    pub fn new(token: Option<Secret>) -> AdminAuth {
        AdminAuth {
            token: ArcSwapOption::from(token.map(Arc::new)),
        }
    }

    pub fn set(&self, token: Option<Secret>) {
        self.token.store(token.map(Arc::new));
    }

    fn check(&self, request: &Request) -> Result<(), ApiError> {
        match self.token.load().as_deref() {
            Some(token) => {
                let given = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                // Comparing digests keeps the comparison time independent of
                // where the strings differ.
                if Sha256::digest(given.as_bytes()) == Sha256::digest(token.expose().as_bytes()) {
                    Ok(())
                } else {
                    Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "a valid admin bearer token is required",
                    ))
                }
            }
            None => {
                let peer = request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0);
                if peer.is_some_and(|p| p.ip().is_loopback()) {
                    Ok(())
                } else {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "admin endpoints answer loopback clients only unless http.api.admin_token is set",
                    ))
                }
            }
        }
    }
}

/// Middleware: admin endpoints require `AdminAuth`.
pub async fn require_admin(
    State(auth): State<Arc<AdminAuth>>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(&request) {
        Ok(()) => next.run(request).await,
        Err(err) => {
            let mut response = err.clone().into_response();
            if err.status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"caldera\""),
                );
            }
            response
        }
    }
}
