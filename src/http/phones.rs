//! The phones listener: what phones fetch. Every request (but `/healthz`)
//! goes to `PhonesService::serve`, which answers from the mirror; this file
//! only reads the request and writes the reply.
//!
//! Denials are one response, byte for byte: status 404, `Content-Type:
//! text/plain`, body `Not Found\n`, nothing else (hyper adds only `Date` and
//! `Content-Length`), so nothing can be learnt by probing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either, Ready, ready};
use hyper::body::Incoming;

use super::{ApiError, Connections};
use crate::domains::phones::service::{PhoneRequest, PhonesService, Reply};
use crate::domains::phones::serving::ServedFile;
use crate::telemetry::metrics::{ListenerMetrics, Metrics, RouteMetrics};

/// The route label of phone file requests (every path but `/healthz`).
pub const FILES_ROUTE: &str = "/{*file}";
const HEALTH_ROUTE: &str = "/healthz";

/// The phones listener, for `http::serve`. GETs are answered from memory
/// without waiting, so only an upload's body read is bounded by `timeout`
/// (no timer per request).
pub fn listener(service: Arc<PhonesService>, metrics: Arc<Metrics>, timeout: Duration) -> Listener {
    let metrics = ListenerMetrics::new("phones", metrics);
    Listener {
        shared: Arc::new(Shared {
            service,
            timeout,
            files: metrics.route(FILES_ROUTE),
            health: metrics.route(HEALTH_ROUTE),
        }),
    }
}

/// One handler for every request, instead of a router and a middleware
/// stack: the only other route is `/healthz`, and what the shared layers
/// did is done here per request — metrics by route, method and status
/// (handles resolved once), `Authorization` marked sensitive, a panic
/// answered 500.
#[derive(Clone)]
pub struct Listener {
    shared: Arc<Shared>,
}

struct Shared {
    service: Arc<PhonesService>,
    timeout: Duration,
    files: Arc<RouteMetrics>,
    health: Arc<RouteMetrics>,
}

impl Connections for Listener {
    type Service = Connection;

    fn for_peer(&self, peer: SocketAddr) -> Connection {
        Connection {
            shared: self.shared.clone(),
            peer,
        }
    }
}

/// The phones listener on one connection.
pub struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

type Answer = Result<Response, Infallible>;

impl hyper::service::Service<hyper::Request<Incoming>> for Connection {
    type Response = Response;
    type Error = Infallible;
    /// Ready at once, but for an upload, whose body is read first.
    type Future = Either<Ready<Answer>, BoxFuture<'static, Answer>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        let started = Instant::now();
        if let Some(value) = request.headers_mut().get_mut(header::AUTHORIZATION) {
            value.set_sensitive(true);
        }
        let peer = self.peer;
        if request.method() == Method::PUT {
            let shared = self.shared.clone();
            return Either::Right(Box::pin(async move {
                let (parts, body) = request.into_parts();
                let read = read_capped(Body::new(body), shared.service.settings().max_upload);
                let response = match tokio::time::timeout(shared.timeout, read).await {
                    Ok(length) => shared.phone(
                        &parts.method,
                        &parts.uri,
                        &parts.headers,
                        peer,
                        Some(length),
                    ),
                    // Decided before any lookup, so it tells nothing about units.
                    Err(_) => plain(StatusCode::REQUEST_TIMEOUT, "Request Timeout\n"),
                };
                shared
                    .files
                    .record(&parts.method, response.status().as_u16(), started.elapsed());
                Ok(response)
            }));
        }
        let shared = &self.shared;
        let (route, response) = if request.uri().path() == HEALTH_ROUTE
            && matches!(*request.method(), Method::GET | Method::HEAD)
        {
            (&shared.health, plain(StatusCode::OK, "ok\n"))
        } else {
            let response = shared.phone(
                request.method(),
                request.uri(),
                request.headers(),
                peer,
                None,
            );
            (&shared.files, response)
        };
        route.record(
            request.method(),
            response.status().as_u16(),
            started.elapsed(),
        );
        Either::Left(ready(Ok(response)))
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn uniform_not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "Not Found\n")
}

fn text_header(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Shared {
    /// A phone's request, decided by the service; a panic is a 500.
    fn phone(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        peer: SocketAddr,
        upload: Option<Option<usize>>,
    ) -> Response {
        let target = uri
            .path_and_query()
            .map_or_else(|| uri.path(), |p| p.as_str());
        let phone = PhoneRequest {
            method: method.as_str(),
            target,
            host: text_header(headers, header::HOST).or_else(|| uri.host()),
            user_agent: text_header(headers, header::USER_AGENT),
            authorization: text_header(headers, header::AUTHORIZATION),
            if_none_match: text_header(headers, header::IF_NONE_MATCH),
            if_modified_since: text_header(headers, header::IF_MODIFIED_SINCE),
            forwarded_for: headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            peer: peer.ip(),
            upload,
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.service.serve(&phone))) {
            Ok(reply) => respond(reply),
            Err(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed unexpectedly",
            )
            .into_response(),
        }
    }
}

/// The body's length, or `None` past `limit` (the body is not kept: log
/// uploads are counted and discarded).
async fn read_capped(body: Body, limit: usize) -> Option<usize> {
    to_bytes(body, limit).await.ok().map(|b| b.len())
}

fn respond(reply: Reply) -> Response {
    match reply {
        Reply::NotFound => uniform_not_found(),
        Reply::TooMany { retry_after } => retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests\n",
            retry_after,
        ),
        Reply::Unavailable { retry_after } => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable\n",
            retry_after,
        ),
        Reply::Challenge { challenges } => {
            let mut response = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
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
        Reply::TooLarge => plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n"),
        Reply::File {
            not_modified,
            file,
            private,
        } => file_response(not_modified, &file, private),
    }
}

fn retry_later(status: StatusCode, text: &'static str, retry_after: u64) -> Response {
    let mut response = plain(status, text);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
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
