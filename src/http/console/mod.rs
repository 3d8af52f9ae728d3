//! The operator console: a static single page (HTML, CSS and ES modules,
//! embedded in the binary) served open at `/console/`. It holds no data of
//! its own: the page's scripts read the admin API (`/v1/...`, `/metrics`,
//! `/api/v1.0/...`) with the credentials the operator gives, so the console
//! shows exactly what the admin check lets through and nothing more.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles
//! from this origin only, no inline script, no framing), `nosniff` and
//! `no-referrer`: the page renders every value with `textContent`, and the
//! policy is the second line of defence should one slip through.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The policy of every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// (name, bytes) of every asset; the content type follows the extension.
const ASSETS: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("assets/index.html")),
    ("console.css", include_bytes!("assets/console.css")),
    ("console.js", include_bytes!("assets/console.js")),
    ("dom.js", include_bytes!("assets/dom.js")),
    ("chart.js", include_bytes!("assets/chart.js")),
    ("api.js", include_bytes!("assets/api.js")),
    ("views.js", include_bytes!("assets/views.js")),
    ("phones.js", include_bytes!("assets/phones.js")),
];

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The console's routes (open: the page itself holds nothing secret).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(|| async { asset("index.html") }))
        .route(
            "/console/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        )
}

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _)| *n == name) {
        Some((name, bytes)) => {
            let mut response = (*bytes).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(name)),
            );
            // Assets change with the binary; revalidating is cheap.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            secure(response)
        }
        None => secure((StatusCode::NOT_FOUND, "no such console asset").into_response()),
    }
}

/// Adds the security headers.
fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}
