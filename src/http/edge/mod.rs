//! The edge store's HTTP surface, nested under `/api/v1.0` on the api
//! listener: every URL of the seed, with and without the trailing slash
//! (never a redirect), and the answers in the seed's shapes.
//!
//! `ROUTES` is the one list of what is served: the router is built from it,
//! and a test checks it against `openapi.json` (served at
//! `/api/v1.0/openapi.json`). Management routes pass `EdgeService::
//! check_admin` (open unless `edge.admin_*` is set); device routes check the
//! edge's own token in the service when `edge.device_auth` asks for it;
//! downloads are protected by their signed URL.
//!
//! Body limits per route: uploads `edge.max_upload_bytes`, other management
//! calls `http.max_body_bytes`, telemetry 64 KiB.

pub mod request;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;

use crate::domains::edge::model::MAX_ID;
use crate::domains::edge::reports::Origin;
use crate::domains::edge::service::{Answer, EdgeService};
use crate::domains::edge::telemetry::ReportKind;

/// The OpenAPI 3 description of everything below.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Telemetry bodies are three short fields.
const TELEMETRY_LIMIT: usize = 64 * 1024;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Management: `edge.admin_*` credentials when configured.
    Admin,
    /// Edges: their registry token when `edge.device_auth` asks for it.
    Device,
    /// Anyone (signed URLs, the API description).
    Open,
}

/// Every route: method, path (relative to `/api/v1.0`, without the
/// trailing slash, which is optional), access.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("POST", "/config_template", Access::Admin),
    ("GET", "/config_template", Access::Admin),
    (
        "POST",
        "/config_template/version/{template_id}",
        Access::Admin,
    ),
    (
        "GET",
        "/config_template/version/{template_id}",
        Access::Admin,
    ),
    (
        "GET",
        "/config_template/download/{template_id}",
        Access::Admin,
    ),
    ("GET", "/config_template/{master_id}", Access::Admin),
    (
        "POST",
        "/master_package_config/{master_id}/assign/{template_id}",
        Access::Admin,
    ),
    ("POST", "/master_package", Access::Admin),
    ("GET", "/master_package", Access::Admin),
    ("POST", "/master_package/{master_id}", Access::Admin),
    ("PUT", "/master_package/{master_id}", Access::Admin),
    ("DELETE", "/master_package/{master_id}", Access::Admin),
    (
        "GET",
        "/master_package/{master_id}/config_template",
        Access::Admin,
    ),
    ("POST", "/master_package/assign/{master_id}", Access::Admin),
    (
        "DELETE",
        "/master_package/assign/{master_id}",
        Access::Admin,
    ),
    ("GET", "/template_set/latest", Access::Device),
    ("GET", "/config_package", Access::Device),
    ("GET", "/package/{token}/{file_name}", Access::Open),
    (
        "POST",
        "/edge_telemetry/package_download/{proxy_edge_id}/{status}",
        Access::Device,
    ),
    (
        "POST",
        "/edge_telemetry/package_consumption/{proxy_edge_id}/{status}",
        Access::Device,
    ),
    ("GET", "/edge_telemetry/report_list", Access::Admin),
    ("GET", "/edge_telemetry/report/{edge_id}", Access::Admin),
    (
        "GET",
        "/edge_telemetry_info_list/report/{page_number}",
        Access::Admin,
    ),
    (
        "GET",
        "/edge_telemetry_info/report/{edge_id}",
        Access::Admin,
    ),
    ("GET", "/openapi.json", Access::Open),
];

/// What the handlers share.
pub struct EdgeHttp {
    pub service: Arc<EdgeService>,
    /// `http.max_body_bytes`.
    pub json_limit: usize,
}

type Shared = State<Arc<EdgeHttp>>;

/// The router to nest at `/api/v1.0`.
pub fn router(state: Arc<EdgeHttp>) -> Router {
    let mut admin = Router::new();
    let mut other = Router::new();
    for (method, path, access) in ROUTES {
        for variant in [path.to_string(), format!("{path}/")] {
            let route = handler(method, path);
            if *access == Access::Admin {
                admin = admin.route(&variant, route);
            } else {
                other = other.route(&variant, route);
            }
        }
    }
    let admin = admin.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_admin,
    ));
    admin
        .merge(other)
        .fallback(|| async {
            respond(Answer::message(
                404,
                "The requested URL was not found on the server.",
            ))
        })
        .method_not_allowed_fallback(|| async {
            respond(Answer::message(
                405,
                "The method is not allowed for the requested URL.",
            ))
        })
        .with_state(state)
}

/// The handler of one entry of `ROUTES`.
fn handler(method: &str, path: &str) -> MethodRouter<Arc<EdgeHttp>> {
    match (method, path) {
        ("POST", "/config_template") => post(create_template),
        ("GET", "/config_template") => get(list_templates),
        ("POST", "/config_template/version/{template_id}") => post(add_version),
        ("GET", "/config_template/version/{template_id}") => get(download_template),
        ("GET", "/config_template/download/{template_id}") => get(download_template),
        ("GET", "/config_template/{master_id}") => get(list_master_templates),
        ("POST", "/master_package_config/{master_id}/assign/{template_id}") => {
            post(assign_template)
        }
        ("POST", "/master_package") => post(create_master),
        ("GET", "/master_package") => get(list_masters),
        ("POST", "/master_package/{master_id}") => post(update_master),
        ("PUT", "/master_package/{master_id}") => put(update_master),
        ("DELETE", "/master_package/{master_id}") => delete(delete_master),
        ("GET", "/master_package/{master_id}/config_template") => get(list_master_templates),
        ("POST", "/master_package/assign/{master_id}") => post(assign_master),
        ("DELETE", "/master_package/assign/{master_id}") => delete(unassign_master),
        ("GET", "/template_set/latest") => get(template_set),
        ("GET", "/config_package") => get(config_package),
        ("GET", "/package/{token}/{file_name}") => get(download_package),
        ("POST", "/edge_telemetry/package_download/{proxy_edge_id}/{status}") => {
            post(report_download)
        }
        ("POST", "/edge_telemetry/package_consumption/{proxy_edge_id}/{status}") => {
            post(report_consumption)
        }
        ("GET", "/edge_telemetry/report_list") => get(report_list),
        ("GET", "/edge_telemetry/report/{edge_id}") => get(edge_report),
        ("GET", "/edge_telemetry_info_list/report/{page_number}") => get(info_list),
        ("GET", "/edge_telemetry_info/report/{edge_id}") => get(info_report),
        ("GET", "/openapi.json") => get(openapi),
        _ => unreachable!("ROUTES lists {method} {path} but no handler serves it"),
    }
}

/// An answer as an HTTP response.
pub fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match answer.raw {
        Some(raw) => (status, [(header::CONTENT_TYPE, "application/json")], raw).into_response(),
        None => (status, axum::Json(answer.body)).into_response(),
    };
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"caldera edge store\""),
        );
    }
    response
}

async fn require_admin(State(state): Shared, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.service.check_admin(authorization) {
        Ok(()) => next.run(request).await,
        Err(answer) => respond(answer),
    }
}

/// An integer id from the path (the seed's `<int:…>`: anything else is
/// not a route, hence 404).
fn id(text: &str, what: &str) -> Result<u64, Answer> {
    text.parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_ID).contains(n))
        .ok_or_else(|| Answer::message(404, &format!("Invalid {what} id {text:?}")))
}

fn query(uri: &Uri) -> Result<BTreeMap<String, String>, Answer> {
    Query::<BTreeMap<String, String>>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|err| Answer::failure(400, "Bad query string", err.body_text()))
}

/// The edge's own token: `Authorization: Bearer …` or `X-Edge-Token`.
fn device_token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let header = headers.get("x-edge-token").and_then(|v| v.to_str().ok());
    bearer.or(header).map(str::to_string)
}

async fn fields(
    request: Request,
    limit: usize,
) -> Result<crate::domains::edge::manage::Fields, Answer> {
    request::fields(request, limit).await
}

fn upload_limit(state: &EdgeHttp) -> usize {
    // Room for the form around the file.
    state.service.settings().max_upload_bytes + 64 * 1024
}

// -- templates -----------------------------------------------------------------

async fn create_template(State(state): Shared, request: Request) -> Response {
    match fields(request, state.json_limit).await {
        Ok(fields) => respond(state.service.create_template(&fields).await),
        Err(answer) => respond(answer),
    }
}

async fn list_templates(State(state): Shared) -> Response {
    respond(state.service.list_templates())
}

async fn add_version(
    State(state): Shared,
    Path(template_id): Path<String>,
    request: Request,
) -> Response {
    let template_id = match id(&template_id, "template") {
        Ok(id) => id,
        Err(answer) => return respond(answer),
    };
    match fields(request, upload_limit(&state)).await {
        Ok(fields) => respond(state.service.add_version(template_id, &fields).await),
        Err(answer) => respond(answer),
    }
}

/// `Content-Disposition` for a file name (ASCII fallback plus RFC 5987).
fn disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = utf8_percent_encode(name, NON_ALPHANUMERIC);
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

async fn template_file(state: &EdgeHttp, template_id: &str, uri: &Uri) -> Response {
    let template_id = match id(template_id, "template") {
        Ok(id) => id,
        Err(answer) => return respond(answer),
    };
    let query = match query(uri) {
        Ok(q) => q,
        Err(answer) => return respond(answer),
    };
    let json = query.get("format").is_some_and(|f| f == "json");
    match state
        .service
        .template_file(template_id, query.get("version").map(String::as_str))
        .await
    {
        Err(answer) => respond(answer),
        Ok((name, path, version_no, _, bytes)) if json => respond(Answer::ok(json!({
            "template_name": format!("{name}_v{version_no}"),
            "template_path": path,
            "template_file": String::from_utf8_lossy(&bytes),
        }))),
        Ok((name, _, _, content_type, bytes)) => {
            let mut response = Response::new(Body::from(bytes));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&content_type)
                    .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
            );
            headers.insert(header::CONTENT_DISPOSITION, disposition(&name));
            response
        }
    }
}

/// `GET /config_template/version/<id>/` and the original's
/// `/config_template/download/<id>/`: the raw file (`?format=json`: the
/// original's JSON).
async fn download_template(
    State(state): Shared,
    Path(template_id): Path<String>,
    uri: Uri,
) -> Response {
    template_file(&state, &template_id, &uri).await
}

async fn list_master_templates(State(state): Shared, Path(master_id): Path<String>) -> Response {
    match id(&master_id, "master") {
        Ok(master_id) => respond(state.service.list_master_templates(master_id)),
        Err(answer) => respond(answer),
    }
}

async fn assign_template(
    State(state): Shared,
    Path((master_id, template_id)): Path<(String, String)>,
) -> Response {
    let ids = id(&master_id, "master").and_then(|m| Ok((m, id(&template_id, "template")?)));
    match ids {
        Ok((m, t)) => respond(state.service.assign_template(m, t).await),
        Err(answer) => respond(answer),
    }
}

// -- master packages -----------------------------------------------------------

async fn create_master(State(state): Shared, request: Request) -> Response {
    match fields(request, upload_limit(&state)).await {
        Ok(fields) => respond(state.service.create_master(&fields).await),
        Err(answer) => respond(answer),
    }
}

async fn list_masters(State(state): Shared) -> Response {
    respond(state.service.list_masters())
}

async fn update_master(
    State(state): Shared,
    Path(master_id): Path<String>,
    request: Request,
) -> Response {
    let master_id = match id(&master_id, "master") {
        Ok(id) => id,
        Err(answer) => return respond(answer),
    };
    match fields(request, upload_limit(&state)).await {
        Ok(fields) => respond(state.service.update_master(master_id, &fields).await),
        Err(answer) => respond(answer),
    }
}

async fn delete_master(State(state): Shared, Path(master_id): Path<String>) -> Response {
    match id(&master_id, "master") {
        Ok(master_id) => respond(state.service.delete_master(master_id).await),
        Err(answer) => respond(answer),
    }
}

async fn assign_master(
    State(state): Shared,
    Path(master_id): Path<String>,
    request: Request,
) -> Response {
    let master_id = match id(&master_id, "master") {
        Ok(id) => id,
        Err(answer) => return respond(answer),
    };
    match fields(request, state.json_limit).await {
        Ok(fields) => respond(state.service.assign_master(master_id, &fields).await),
        Err(answer) => respond(answer),
    }
}

async fn unassign_master(
    State(state): Shared,
    Path(master_id): Path<String>,
    request: Request,
) -> Response {
    let master_id = match id(&master_id, "master") {
        Ok(id) => id,
        Err(answer) => return respond(answer),
    };
    match fields(request, state.json_limit).await {
        Ok(fields) => respond(state.service.unassign_master(master_id, &fields).await),
        Err(answer) => respond(answer),
    }
}

// -- device calls --------------------------------------------------------------

async fn template_set(State(state): Shared, request: Request) -> Response {
    let query = match query(request.uri()) {
        Ok(q) => q,
        Err(answer) => return respond(answer),
    };
    let token = device_token(request.headers());
    respond(state.service.template_set(
        query.get("edge_id").map(String::as_str),
        query.get("set_version").map(String::as_str),
        token.as_deref(),
    ))
}

/// The base of download URLs: `edge.public_url`, else `http://<Host>`.
fn base_url(state: &EdgeHttp, headers: &HeaderMap) -> String {
    if let Some(url) = &state.service.settings().public_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    host.map_or_else(String::new, |h| format!("http://{h}"))
}

async fn config_package(State(state): Shared, uri: Uri, headers: HeaderMap) -> Response {
    let query = match query(&uri) {
        Ok(q) => q,
        Err(answer) => return respond(answer),
    };
    let token = device_token(&headers);
    let base = base_url(&state, &headers);
    let get = |name: &str| query.get(name).map(String::as_str);
    respond(
        state
            .service
            .config_package(
                get("mac_address"),
                get("edge_id"),
                get("set_version"),
                token.as_deref(),
                &base,
            )
            .await,
    )
}

/// A byte range of `len` bytes asked by a `Range` header (one range only).
fn byte_range(headers: &HeaderMap, len: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = headers
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let parse = |s: &str| s.trim().parse::<usize>().ok();
    let range = match (parse(start), parse(end)) {
        (Some(start), Some(end)) if start <= end && start < len => Ok((start, end.min(len - 1))),
        (Some(start), None) if end.trim().is_empty() && start < len => Ok((start, len - 1)),
        (None, Some(suffix)) if start.trim().is_empty() && suffix > 0 && len > 0 => {
            Ok((len.saturating_sub(suffix), len - 1))
        }
        _ => Err(()),
    };
    Some(range)
}

async fn download_package(
    State(state): Shared,
    Path((token, file_name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (built, name) = match state.service.download(&token, &file_name).await {
        Ok(found) => found,
        Err(answer) => return respond(answer),
    };
    let etag = format!("\"{}\"", built.sha256);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match byte_range(&headers, built.bytes.len()) {
            None => Response::new(Body::from(built.bytes.clone())),
            Some(Ok((start, end))) => {
                let mut response = Response::new(Body::from(built.bytes.slice(start..=end)));
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                let range = format!("bytes {start}-{end}/{}", built.bytes.len());
                if let Ok(value) = HeaderValue::from_str(&range) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                response
            }
            Some(Err(())) => {
                let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", built.bytes.len()))
                {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return response;
            }
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    headers.insert(header::CONTENT_DISPOSITION, disposition(&name));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-transform"),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

async fn report(
    state: &EdgeHttp,
    kind: ReportKind,
    proxy: &str,
    status: &str,
    request: Request,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
    let forwarded: Vec<String> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let token = device_token(request.headers());
    let fields = match fields(request, TELEMETRY_LIMIT).await {
        Ok(fields) => fields,
        Err(answer) => return respond(answer),
    };
    let forwarded: Vec<&str> = forwarded.iter().map(String::as_str).collect();
    let origin = Origin {
        peer,
        forwarded_for: &forwarded,
        token: token.as_deref(),
    };
    respond(
        state
            .service
            .report(kind, proxy, status, &fields, &origin)
            .await,
    )
}

async fn report_download(
    State(state): Shared,
    Path((proxy, status)): Path<(String, String)>,
    request: Request,
) -> Response {
    report(&state, ReportKind::Download, &proxy, &status, request).await
}

async fn report_consumption(
    State(state): Shared,
    Path((proxy, status)): Path<(String, String)>,
    request: Request,
) -> Response {
    report(&state, ReportKind::Consumption, &proxy, &status, request).await
}

async fn report_list(State(state): Shared) -> Response {
    respond(state.service.report_list().await)
}

async fn edge_report(State(state): Shared, Path(edge_id): Path<String>) -> Response {
    respond(state.service.edge_report(&edge_id).await)
}

async fn info_list(State(state): Shared, Path(page): Path<String>, uri: Uri) -> Response {
    let query = match query(&uri) {
        Ok(q) => q,
        Err(answer) => return respond(answer),
    };
    respond(
        state
            .service
            .info_list(&page, query.get("per_page").map(String::as_str))
            .await,
    )
}

async fn info_report(State(state): Shared, Path(edge_id): Path<String>) -> Response {
    respond(state.service.info_report(&edge_id).await)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let path = path
                .strip_prefix("/api/v1.0")
                .unwrap_or_else(|| panic!("{path} is not under /api/v1.0"));
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((
                        method.to_uppercase(),
                        path.trim_end_matches('/').to_string(),
                    ));
                }
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_route_has_a_handler() {
        for (method, path, _) in ROUTES {
            let _ = handler(method, path);
        }
    }

    #[test]
    fn ranges() {
        let mut headers = HeaderMap::new();
        assert_eq!(byte_range(&headers, 10), None);
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=2-4"));
        assert_eq!(byte_range(&headers, 10), Some(Ok((2, 4))));
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=8-"));
        assert_eq!(byte_range(&headers, 10), Some(Ok((8, 9))));
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=-3"));
        assert_eq!(byte_range(&headers, 10), Some(Ok((7, 9))));
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=12-"));
        assert_eq!(byte_range(&headers, 10), Some(Err(())));
    }
}
