//! The api listener: `/healthz`, `/readyz`, `/metrics`, `/v1/status`, the
//! system_config values API, the ACLs (`/v1/acls…`) and the routing tables
//! (`/v1/routes…`). Everything under `/v1` is an admin endpoint (the ACL
//! and route readers, SIP servers and FreeSWITCH, run on trusted hosts and
//! are given the admin token, or ask over loopback when none is set).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::middleware::{self, AdminAuth};
use crate::cache::errors::ErrorFilter;
use crate::cache::mirror::Mirror;
use crate::domains::acls::resolver::DnsBoard;
use crate::domains::acls::service::{AclsError, AclsService};
use crate::domains::phones::service::PhonesService;
use crate::domains::routing::service::{RouteError, RoutingService};
use crate::domains::sysconf::service::SysconfService;
use crate::feeds::Board;
use crate::lifecycle::readiness::Readiness;
use crate::telemetry::metrics::Metrics;

/// What the api handlers read.
pub struct ApiState {
    pub node: String,
    pub building: bool,
    pub started: Instant,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub board: Arc<Board>,
    pub mirror: Arc<Mirror>,
    pub sysconf: Arc<SysconfService>,
    pub acls: Arc<AclsService>,
    pub routing: Arc<RoutingService>,
    pub admin: Arc<AdminAuth>,
    pub max_body_bytes: usize,
    /// The phones listener's service, whose throttle `/metrics` and
    /// `/v1/status` show (absent in benches that serve no phones).
    pub phones: Option<Arc<PhonesService>>,
    /// The ACL resolver's hostnames (`/v1/acls/dns`).
    pub dns: Arc<DnsBoard>,
}

type Shared = State<Arc<ApiState>>;

const SYSCONF_PREFIX: &str = "/v1/sysconf/";

pub fn router(state: Arc<ApiState>, timeout: Duration) -> Router {
    router_with(state, timeout, None)
}

/// The api router with the edge store's seed API nested at `/api/v1.0`
/// (its own auth, answers and fallbacks: see `http::edge`).
pub fn router_with(state: Arc<ApiState>, timeout: Duration, edge: Option<Router>) -> Router {
    let admin = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/errors", get(errors_page))
        .route("/v1/sysconf/{category}", any(sysconf_category))
        .route("/v1/sysconf/{category}/{*key}", any(sysconf_key))
        .route("/v1/acls", get(acls_all))
        .route("/v1/acls/freeswitch.xml", get(acls_freeswitch))
        .route("/v1/acls/dns", get(acls_dns))
        .route("/v1/acls/{list}", get(acls_list))
        .route("/v1/routes/{sip_domain_name}/{groupid}", get(routes_table))
        .route(
            "/v1/routes/{sip_domain_name}/{groupid}/{number}",
            get(routes_lookup),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.admin.clone(),
            middleware::require_admin,
        ));
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(super::console::router());
    let mut router = middleware::json_fallbacks(open.merge(admin).with_state(state.clone()));
    if let Some(edge) = edge {
        router = router.nest("/api/v1.0", edge);
    }
    middleware::common(router, "api", state.metrics.clone(), timeout)
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): Shared) -> Response {
    if state.readiness.is_ready() {
        Json(json!({ "ready": true })).into_response()
    } else {
        let body = json!({ "ready": false, "reasons": state.readiness.reasons() });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(state): Shared) -> Response {
    if let Some(phones) = &state.phones {
        phones.throttle_status().set_gauges(&state.metrics.phones);
    }
    for (domain, stats) in state.mirror.stats() {
        let label = Metrics::domain(&domain);
        state
            .metrics
            .cache_documents
            .get_or_create(&label)
            .set(stats.documents as i64);
        state
            .metrics
            .cache_bytes
            .get_or_create(&label)
            .set(stats.bytes as i64);
        state
            .metrics
            .cache_documents_with_errors
            .get_or_create(&label)
            .set(stats.with_errors as i64);
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        state.metrics.render(),
    )
        .into_response()
}

async fn status(State(state): Shared) -> Json<Value> {
    let cache: BTreeMap<_, _> = state
        .mirror
        .stats()
        .into_iter()
        .map(|(domain, s)| {
            (domain, json!({ "documents": s.documents, "bytes": s.bytes, "with_errors": s.with_errors, "stale": s.stale }))
        })
        .collect();
    let errors: Vec<Value> = state
        .mirror
        .with_errors(100)
        .iter()
        .map(|e| json!({ "id": e.id, "domain": e.domain, "key": e.key, "stale": e.stale, "errors": e.errors }))
        .collect();
    Json(json!({
        "node": state.node,
        "version": env!("CARGO_PKG_VERSION"),
        "building": state.building,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "ready": state.readiness.is_ready(),
        "reasons": state.readiness.reasons(),
        "feeds": state.board.snapshot(),
        "cache": cache,
        "errors": errors,
        "phones": state.phones.as_ref().map(|p| p.throttle_status().to_json()),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorsQuery {
    domain: Option<String>,
    db: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/errors?domain=&db=&cursor=&limit=`: the documents with errors,
/// a page at a time, with the count per (database, domain).
async fn errors_page(
    State(state): Shared,
    query: Result<Query<ErrorsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query
        .map_err(|err| ApiError::bad_request(format!("bad query string: {}", err.body_text())))?;
    let filter = ErrorFilter {
        domain: query.domain.filter(|d| !d.is_empty()),
        db: query.db.filter(|d| !d.is_empty()),
    };
    let cursor = query.cursor.filter(|c| !c.is_empty());
    let page = state
        .mirror
        .errors_page(&filter, cursor.as_deref(), query.limit.unwrap_or(50));
    Ok(Json(page.to_json()))
}

/// The raw path after `/v1/sysconf/`, split on `/` and percent-decoded per
/// segment, so `a/b` is a nested key and `a%2Fb` one key containing a slash.
fn sysconf_path(request: &Request) -> Result<Vec<String>, ApiError> {
    let raw = request
        .uri()
        .path()
        .strip_prefix(SYSCONF_PREFIX)
        .unwrap_or_default();
    raw.split('/')
        .map(|segment| {
            percent_decode_str(segment)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| ApiError::bad_request("the path is not valid UTF-8 once decoded"))
        })
        .collect()
}

async fn sysconf_category(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Err(method_not_allowed("GET"));
    }
    let path = sysconf_path(&request)?;
    let entry = state.sysconf.document(&path[0])?;
    let body = json!({ "category": path[0], "document": entry.content.value(), "errors": entry.errors, "stale": entry.stale });
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    node: Option<String>,
    default: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    value: Value,
    #[serde(default)]
    node_specific: bool,
    node: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FlushBody {
    #[allow(dead_code)] // Accepted for Kazoo compatibility: a flush re-reads the whole category.
    key: Option<Value>,
}

async fn sysconf_key(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let path = sysconf_path(&request)?;
    let (category, key) = path.split_first().expect("the route has a category");
    let method = request.method().clone();
    match method {
        Method::POST if key == ["flush"] => {
            let body = read_body(request, state.max_body_bytes).await?;
            if !body.iter().all(u8::is_ascii_whitespace) {
                parse_json::<FlushBody>(&body)?;
            }
            state.sysconf.flush(category).await?;
            Ok(Json(json!({ "category": category, "flushed": true })).into_response())
        }
        Method::GET | Method::HEAD => {
            let Query(query) = Query::<GetQuery>::try_from_uri(request.uri()).map_err(|err| {
                ApiError::bad_request(format!("bad query string: {}", err.body_text()))
            })?;
            let default = query
                .default
                .map(|text| serde_json::from_str(&text).unwrap_or(Value::String(text)));
            let answer = state
                .sysconf
                .get(category, key, query.node.as_deref(), default)
                .await?;
            Ok(Json(answer).into_response())
        }
        Method::PUT => {
            let body = read_body(request, state.max_body_bytes).await?;
            let body: SetBody = parse_json(&body)?;
            let answer = state
                .sysconf
                .set(
                    category,
                    key,
                    body.value,
                    body.node_specific,
                    body.node.as_deref(),
                )
                .await?;
            Ok(Json(answer).into_response())
        }
        _ if key == ["flush"] => Err(method_not_allowed("GET, PUT, POST")),
        _ => Err(method_not_allowed("GET, PUT")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclsQuery {
    node: Option<String>,
}

/// The ACLs for `?node=` (default: this daemon's node).
fn acls_view(
    state: &ApiState,
    query: Result<Query<AclsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Arc<crate::domains::acls::service::Served>, ApiError> {
    let Query(query) = query
        .map_err(|err| ApiError::bad_request(format!("bad query string: {}", err.body_text())))?;
    state
        .acls
        .view(query.node.as_deref())
        .map_err(|err| match err {
            AclsError::NotReady => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                err.to_string(),
            ),
        })
}

/// Every list: `{"node", "lists": {list: {name or address: entry}}, "errors", "stale"}`.
async fn acls_all(
    State(state): Shared,
    query: Result<Query<AclsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let served = acls_view(&state, query)?;
    let body = format!(
        r#"{{"node":{},"lists":{},"errors":{},"stale":{}}}"#,
        Value::String(served.node.clone()),
        served.lists_json(),
        served.errors,
        served.stale
    );
    Ok(json_text(body))
}

/// One list: `{"node", "list", "entries": {name or address: entry}}`.
async fn acls_list(
    State(state): Shared,
    axum::extract::Path(list): axum::extract::Path<String>,
    query: Result<Query<AclsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let served = acls_view(&state, query)?;
    let Some(entries) = served.list_json(&list) else {
        return Err(ApiError::not_found(format!("no ACL list named {list:?}")));
    };
    let body = format!(
        r#"{{"node":{},"list":{},"entries":{entries}}}"#,
        Value::String(served.node.clone()),
        Value::String(list.clone())
    );
    Ok(json_text(body))
}

/// `GET /v1/acls/dns`: every hostname the ACLs name, its addresses, its
/// TTL and when it is resolved again (empty on an instance that does not
/// build: only builders resolve).
async fn acls_dns(State(state): Shared) -> Json<Value> {
    Json(json!({ "building": state.building, "hosts": state.dns.snapshot() }))
}

/// FreeSWITCH's `acl.conf`.
async fn acls_freeswitch(
    State(state): Shared,
    query: Result<Query<AclsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let served = acls_view(&state, query)?;
    let content_type = "text/xml; charset=utf-8";
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        served.xml_bytes().clone(),
    )
        .into_response())
}

/// A response whose body is already JSON text.
fn json_text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteQuery {
    host: Option<String>,
    /// Adds `origins` to each gateway: where each attribute came from.
    #[serde(default)]
    explain: bool,
}

impl From<RouteError> for ApiError {
    fn from(err: RouteError) -> ApiError {
        let reason = err.to_string();
        match err {
            RouteError::NotReady => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason)
            }
            RouteError::InvalidNumber(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_number", reason)
            }
            RouteError::UnknownRuleset(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_ruleset", reason)
            }
            RouteError::NoRoute { .. } => ApiError::new(StatusCode::NOT_FOUND, "no_route", reason),
            RouteError::Broken(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "broken_table", reason)
            }
            RouteError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "couchdb_unavailable",
                reason,
            ),
        }
    }
}

/// The route of one called number (`?host=` names the asking host, whose
/// local gateways get their bonus).
async fn routes_lookup(
    State(state): Shared,
    axum::extract::Path((sdn, groupid, number)): axum::extract::Path<(String, String, String)>,
    query: Result<Query<RouteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query
        .map_err(|err| ApiError::bad_request(format!("bad query string: {}", err.body_text())))?;
    let host = query.host.as_deref().filter(|h| !h.is_empty());
    if query.explain {
        let answer = state
            .routing
            .lookup_explained(&sdn, &groupid, &number, host)?;
        return Ok(Json(answer).into_response());
    }
    let answer = state.routing.lookup_text(&sdn, &groupid, &number, host)?;
    Ok(json_text(answer))
}

/// A whole ruleset table, for export to a SIP proxy.
async fn routes_table(
    State(state): Shared,
    axum::extract::Path((sdn, groupid)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(state.routing.export(&sdn, &groupid)?).into_response())
}

async fn read_body(request: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let body: Body = request.into_body();
    to_bytes(body, limit).await.map_err(|_| too_large())
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("the body is not the expected JSON: {err}")))
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("allowed: {allow}"),
    )
}
