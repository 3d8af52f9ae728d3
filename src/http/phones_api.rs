//! The phones routes of the api listener (all admin endpoints): the
//! configuration API — `/v1/accounts/{account}/units|policies|profiles[/{id}]`,
//! `/v1/accounts/{account}/provision_config`, `/v1/unit_options[/…]` — and
//! the admin read API — `/v1/units/{id}`, `/v1/units/{id}/files/{file}`,
//! `/v1/units/{id}/requests` (the unit list of an account is the
//! configuration API's `GET …/units`, with each unit's build status).
//!
//! Refused writes answer `{"error", "reason", "problems": [{path, reason,
//! locked}]}`: 409 when a lock or a stale `_rev` is among them, else 400.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::middleware::{self, AdminAuth};
use crate::domains::phones::api::{ApiFailure, Collection, PhonesApi};
use crate::telemetry::metrics::Metrics;

type Shared = State<Arc<PhonesApi>>;

/// The routes, with the admin check and the api listener's common layers
/// (merged into the api router by `app`).
pub fn router(
    api: Arc<PhonesApi>,
    admin: Arc<AdminAuth>,
    max_body: usize,
    metrics: Arc<Metrics>,
    timeout: Duration,
) -> Router {
    let limit = axum::extract::DefaultBodyLimit::max(max_body);
    let router = Router::new()
        .route("/v1/accounts/{account}/{collection}", any(collection))
        .route("/v1/accounts/{account}/{collection}/{id}", any(item))
        .route("/v1/unit_options", get(unit_options_root))
        .route("/v1/unit_options/{*path}", any(unit_options))
        .route("/v1/units", get(unit_search))
        .route("/v1/units/{id}", get(unit))
        .route("/v1/units/{id}/why", get(unit_why))
        .route("/v1/units/{id}/files/{file}", get(unit_file))
        .route("/v1/units/{id}/requests", get(unit_requests))
        .route_layer(axum::middleware::from_fn_with_state(
            admin,
            middleware::require_admin,
        ))
        .layer(limit)
        .with_state(api);
    middleware::common(router, "api", metrics, timeout)
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        match self {
            ApiFailure::NotReady => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the units database is not loaded yet",
            )
            .into_response(),
            ApiFailure::NotFound(reason) => ApiError::not_found(reason).into_response(),
            ApiFailure::BadRequest(reason) => ApiError::bad_request(reason).into_response(),
            ApiFailure::Unavailable(reason) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "couchdb_unavailable",
                reason,
            )
            .into_response(),
            ApiFailure::Refused(problems) => {
                let locked = problems.iter().any(|p| p.locked);
                let (status, kind) = if locked {
                    (StatusCode::CONFLICT, "conflict")
                } else {
                    (StatusCode::BAD_REQUEST, "invalid")
                };
                let list: Vec<Value> = problems
                    .iter()
                    .map(|p| json!({"path": p.path, "reason": p.reason, "locked": p.locked}))
                    .collect();
                let reason = format!(
                    "{} problem(s): {}",
                    problems.len(),
                    problems
                        .iter()
                        .map(|p| format!("{} {}", p.path, p.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                (
                    status,
                    Json(json!({"error": kind, "reason": reason, "problems": list})),
                )
                    .into_response()
            }
        }
    }
}

fn parse_collection(name: &str) -> Option<Collection> {
    match name {
        "units" => Some(Collection::Units),
        "policies" => Some(Collection::Policies),
        "profiles" => Some(Collection::Profiles),
        _ => None,
    }
}

fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
}

fn json_body(body: &Bytes) -> Result<Value, ApiFailure> {
    serde_json::from_slice(body)
        .map_err(|err| ApiFailure::BadRequest(format!("the body is not JSON: {err}")))
}

fn method_not_allowed(allow: &'static str) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("allowed: {allow}"),
    )
    .into_response()
}

fn answer(result: Result<Value, ApiFailure>, created: bool) -> Response {
    match result {
        Ok(value) if created => (StatusCode::CREATED, Json(value)).into_response(),
        Ok(value) => Json(value).into_response(),
        Err(failure) => failure.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionQuery {
    #[serde(default)]
    hierarchical: Option<String>,
}

async fn collection(
    State(api): Shared,
    Path((account, name)): Path<(String, String)>,
    method: Method,
    query: Result<Query<ProvisionQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if name == "provision_config" {
        return provision_config(&api, &account, method, query, &headers, &body).await;
    }
    let Some(collection) = parse_collection(&name) else {
        return ApiError::not_found(format!("no collection {name:?}")).into_response();
    };
    match method {
        Method::GET | Method::HEAD => answer(api.list(collection, &account), false),
        Method::POST => match json_body(&body) {
            Ok(doc) => answer(api.create(collection, &account, doc).await, true),
            Err(failure) => failure.into_response(),
        },
        _ => method_not_allowed("GET, POST"),
    }
}

async fn provision_config(
    api: &PhonesApi,
    account: &str,
    method: Method,
    query: Result<Query<ProvisionQuery>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let hierarchical = match query {
        Ok(Query(q)) => match q.hierarchical.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return ApiError::bad_request(format!("hierarchical={other:?}: true or false"))
                    .into_response();
            }
        },
        Err(err) => {
            return ApiError::bad_request(format!("bad query string: {}", err.body_text()))
                .into_response();
        }
    };
    match method {
        Method::GET | Method::HEAD => answer(api.provision_config(account, hierarchical), false),
        Method::PUT | Method::PATCH => match json_body(body) {
            Ok(doc) => answer(
                api.write_provision_config(
                    account,
                    doc,
                    if_match(headers),
                    method == Method::PATCH,
                )
                .await,
                false,
            ),
            Err(failure) => failure.into_response(),
        },
        Method::DELETE => answer(
            api.delete_provision_config(account, if_match(headers))
                .await,
            false,
        ),
        _ => method_not_allowed("GET, PUT, PATCH, DELETE"),
    }
}

async fn item(
    State(api): Shared,
    Path((account, name, id)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(collection) = parse_collection(&name) else {
        return ApiError::not_found(format!("no collection {name:?}")).into_response();
    };
    let if_match = if_match(&headers);
    match method {
        Method::GET | Method::HEAD => answer(api.get(collection, &account, &id), false),
        Method::PUT | Method::PATCH => match json_body(&body) {
            Ok(doc) if method == Method::PUT => answer(
                api.replace(collection, &account, &id, doc, if_match).await,
                false,
            ),
            Ok(doc) => answer(
                api.patch(collection, &account, &id, doc, if_match).await,
                false,
            ),
            Err(failure) => failure.into_response(),
        },
        Method::DELETE => answer(api.delete(collection, &account, &id, if_match).await, false),
        _ => method_not_allowed("GET, PUT, PATCH, DELETE"),
    }
}

async fn unit_options_root(State(api): Shared) -> Response {
    answer(api.unit_options(&[]), false)
}

async fn unit_options(
    State(api): Shared,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.len() > 3 {
        return ApiError::not_found("no such catalogue node").into_response();
    }
    match method {
        Method::GET | Method::HEAD => answer(api.unit_options(&parts), false),
        Method::PUT => match json_body(&body) {
            Ok(doc) => answer(
                api.put_unit_option(&parts, doc, if_match(&headers)).await,
                false,
            ),
            Err(failure) => failure.into_response(),
        },
        Method::DELETE => answer(api.delete_unit_option(&parts).await, false),
        _ => method_not_allowed("GET, PUT, DELETE"),
    }
}

async fn unit(State(api): Shared, Path(id): Path<String>) -> Response {
    unit_answer(&id, api.service.unit_view(&id))
}

/// A unit read's answer: the JSON, or 404 when the cache has no such unit.
fn unit_answer(id: &str, found: Option<Value>) -> Response {
    match found {
        Some(view) => Json(view).into_response(),
        None => ApiError::not_found(format!("no unit {id} in the cache")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/units?q=&cursor=&limit=`: a page of the units matching `q`
/// (id, name, MAC, account id or name), in id order.
async fn unit_search(
    State(api): Shared,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return ApiError::bad_request("the query takes q, cursor and limit").into_response();
    };
    if !api.sources.is_loaded() {
        return ApiFailure::NotReady.into_response();
    }
    let parsed = crate::domains::phones::search::Query::parse(&query.q);
    let cursor = query.cursor.filter(|c| !c.is_empty());
    let (units, next) =
        api.sources
            .search_units(&parsed, cursor.as_deref(), query.limit.unwrap_or(50));
    Json(json!({"q": query.q, "units": units, "next": next})).into_response()
}

async fn unit_why(State(api): Shared, Path(id): Path<String>) -> Response {
    unit_answer(&id, api.service.unit_why(&id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuery {
    #[serde(default)]
    masked: bool,
}

/// `GET /v1/units/{id}/files/{file}[?masked=true]`: the file as the phone
/// gets it, or with its secrets masked (what the console asks for unless
/// the admin chooses to reveal them).
async fn unit_file(
    State(api): Shared,
    Path((id, file)): Path<(String, String)>,
    query: Result<Query<FileQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(FileQuery { masked })) = query else {
        return ApiError::bad_request("the query takes masked=true|false").into_response();
    };
    let found = if masked {
        api.service.unit_file_masked(&id, &file)
    } else {
        api.service.unit_file(&id, &file)
    };
    match found {
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => ApiError::not_found(format!("unit {id} has no file {file:?}")).into_response(),
    }
}

async fn unit_requests(State(api): Shared, Path(id): Path<String>) -> Response {
    unit_answer(&id, api.service.unit_requests(&id))
}
