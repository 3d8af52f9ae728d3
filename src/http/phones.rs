//! The phones listener: what phones fetch. Every request (but `/healthz`)
//! goes to `PhonesService::serve`, which answers from the mirror; this file
//! only reads the request and writes the reply.
//!
//! Denials are one response, byte for byte: status 404, `Content-Type:
//! text/plain`, body `Not Found\n`, nothing else (hyper adds only `Date` and
//! `Content-Length`), so nothing can be learnt by probing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::middleware;
use crate::domains::phones::service::{PhoneRequest, PhonesService, Reply};
use crate::domains::phones::serving::ServedFile;
use crate::telemetry::metrics::Metrics;

/// GETs are answered from memory without waiting, so only an upload's
/// body read is bounded by `timeout` (no timer per request).
pub fn router(service: Arc<PhonesService>, metrics: Arc<Metrics>, timeout: Duration) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(serve)
        .method_not_allowed_fallback(serve)
        .with_state(Listener { service, timeout });
    middleware::instrumented(router, "phones", metrics)
}

#[derive(Clone)]
struct Listener {
    service: Arc<PhonesService>,
    timeout: Duration,
}

fn uniform_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Not Found\n",
    )
        .into_response()
}

fn text_header(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn serve(State(listener): State<Listener>, request: Request) -> Response {
    let service = &listener.service;
    let Some(peer) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return uniform_not_found();
    };
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str();
    let upload = if parts.method == axum::http::Method::PUT {
        let read = read_capped(body, service.settings().max_upload);
        let Ok(length) = tokio::time::timeout(listener.timeout, read).await else {
            // Decided before any lookup, so it tells nothing about units.
            return (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Request Timeout\n",
            )
                .into_response();
        };
        Some(length)
    } else {
        None
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let headers = &parts.headers;
    let phone = PhoneRequest {
        method,
        target,
        host: text_header(headers, header::HOST).or_else(|| parts.uri.host()),
        user_agent: text_header(headers, header::USER_AGENT),
        authorization: text_header(headers, header::AUTHORIZATION),
        if_none_match: text_header(headers, header::IF_NONE_MATCH),
        if_modified_since: text_header(headers, header::IF_MODIFIED_SINCE),
        forwarded_for: headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        peer,
        upload,
    };
    let reply = service.serve(&phone);
    respond(reply)
}

/// The body's length, or `None` past `limit` (the body is not kept: log
/// uploads are counted and discarded).
async fn read_capped(body: Body, limit: usize) -> Option<usize> {
    to_bytes(body, limit).await.ok().map(|b| b.len())
}

fn respond(reply: Reply) -> Response {
    match reply {
        Reply::NotFound => uniform_not_found(),
        Reply::TooMany { retry_after } => {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Too Many Requests\n",
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
        Reply::Challenge { challenges } => {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Unauthorized\n",
            )
                .into_response();
            for challenge in challenges {
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    response
                        .headers_mut()
                        .append(header::WWW_AUTHENTICATE, value);
                }
            }
            response
        }
        Reply::Accepted => StatusCode::NO_CONTENT.into_response(),
        Reply::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Payload Too Large\n",
        )
            .into_response(),
        Reply::File {
            not_modified,
            file,
            private,
        } => file_response(not_modified, &file, private),
    }
}

fn file_response(not_modified: bool, file: &ServedFile, private: bool) -> Response {
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        // HEAD: hyper sends the headers (Content-Length included) and drops
        // the body.
        Response::new(Body::from(file.body.clone()))
    };
    let headers = response.headers_mut();
    if !not_modified {
        headers.insert(header::CONTENT_TYPE, file.headers.content_type.clone());
    }
    headers.insert(header::ETAG, file.headers.etag.clone());
    headers.insert(header::LAST_MODIFIED, file.headers.last_modified.clone());
    let cache = if private {
        "private, no-cache"
    } else {
        "no-cache"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}
