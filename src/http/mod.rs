//! The two HTTP listeners. Both serve from memory (the mirror, the status
//! board), never from CouchDB.
//!
//! * `api`: health, readiness, metrics, status and the admin/`/v1` API;
//! * `phones`: what phones fetch (their files, from the mirror);
//! * `phones_api`: the phones configuration and admin read API (on `api`);
//! * `console`: the operator console's static page (on `api`, `/console/`).
//!
//! Connections are served by hyper directly (not `axum::serve`) so the
//! header limits and the header read timeout apply per connection, and
//! shutdown is graceful: stop accepting, let in-flight requests finish.
//! `serve` takes any `Connections`: an axum `Router` (the api listener), or
//! the phones listener's own service (no router, no middleware stack: one
//! handler answering from memory).

pub mod api;
mod console;
pub mod edge;
mod error;
mod middleware;
pub mod phones;
pub mod phones_api;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use middleware::AdminAuth;

use crate::config::HttpConfig;

/// Per-connection limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
}

impl Limits {
    pub fn from_config(config: &HttpConfig) -> Limits {
        Limits {
            max_headers: config.max_headers,
            max_header_bytes: config.max_header_bytes,
            header_read_timeout: config.header_read_timeout,
        }
    }
}

/// What `serve` needs: the service of each accepted connection.
pub trait Connections: Clone + Send + 'static {
    type Service: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static;

    /// The service answering `peer`'s requests on one connection.
    fn for_peer(&self, peer: SocketAddr) -> Self::Service;
}

/// An axum router's connection: every request carries `ConnectInfo`.
#[derive(Clone)]
pub struct RouterConnection {
    router: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for RouterConnection {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // A router is always ready: `call` needs no `poll_ready` first.
        tower::Service::call(&mut self.router.clone(), request)
    }
}

impl Connections for Router {
    type Service = RouterConnection;

    fn for_peer(&self, peer: SocketAddr) -> RouterConnection {
        RouterConnection {
            router: self.clone(),
            peer,
        }
    }
}

/// Serves `connections` on `listener` until `token` fires, then waits up to
/// `grace` for in-flight requests.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    connections: impl Connections,
    limits: Limits,
    token: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes)
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually EMFILE: pause instead of spinning.
                    tracing::warn!(listener = name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = connections.for_peer(peer);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(listener = name, %peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!(listener = name, "requests still running after the grace period"),
    }
}

/// Binds a listener, naming the address in the error.
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr} ({name} listener): {err}"))
}
