//! The HTTP API (axum): routes, request parsing, errors as JSON, authentication and metrics.
//! Handlers are thin: they parse, authorize and call the [`Node`].

pub mod auth;
mod handlers;
pub mod keys;
pub mod metrics;
pub mod rbac;

use crate::cluster::Node;
use crate::error::{Error, ErrorCode};
use auth::{Permission, Principal};
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use grape_client::{ErrorBody, ErrorDetail, SlowQuery};
use keys::{Credentials, Keys};
use metrics::Metrics;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub keys: Arc<Keys>,
    pub metrics: Arc<Metrics>,
    pub slow_queries: Arc<SlowQueryLog>,
}

/// The slowest recent searches, for `/admin/slow-queries`.
#[derive(Debug, Default)]
pub struct SlowQueryLog {
    entries: Mutex<VecDeque<SlowQuery>>,
}

impl SlowQueryLog {
    const CAPACITY: usize = 100;

    pub fn record(&self, query: SlowQuery) {
        let mut entries = self.entries.lock();
        if entries.len() == Self::CAPACITY {
            entries.pop_front();
        }
        entries.push_back(query);
    }

    /// Most recent first.
    pub fn recent(&self) -> Vec<SlowQuery> {
        self.entries.lock().iter().rev().cloned().collect()
    }
}

/// An error answered as `{"error": {"code", "message"}}` with its status.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error()
            && status != StatusCode::SERVICE_UNAVAILABLE
            && status != StatusCode::INSUFFICIENT_STORAGE
        {
            tracing::error!(error = %self, "request failed");
        }
        let retry_after = match &self {
            Error::RateLimited { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            // Not ready, no leader, timed out, saturated: worth retrying shortly.
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            // Space is freed by an operator, not by waiting a second.
            Error::InsufficientStorage(_) => Some(30),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.message(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON body parsed whatever its Content-Type (the seed's curl examples send none), with
/// errors that name the path of the bad field, and 413 past the body limit.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::PayloadTooLarge(
                        "the request body is over the limit (performance.max_request_body_mb)"
                            .into(),
                    )
                } else {
                    Error::invalid(ErrorCode::InvalidBody, rejection.body_text())
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON with the failing field's path in the message.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(Error::invalid(
                ErrorCode::InvalidJson,
                "the request body is empty; a JSON object is expected",
            ));
        }
        // Every body is an object: `[]` must not read as a struct of defaults.
        Some(b'{') => {}
        Some(_) => {
            return Err(Error::invalid(
                ErrorCode::InvalidJson,
                "the request body must be a JSON object",
            ));
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ErrorCode::InvalidJson
            }
            _ => ErrorCode::InvalidRequest,
        };
        let message = if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        Error::invalid(code, message)
    })?;
    deserializer.end().map_err(|e| {
        Error::invalid(
            ErrorCode::InvalidJson,
            format!("trailing characters after the JSON value: {e}"),
        )
    })?;
    Ok(value)
}

/// The caller's key, when authentication is on.
#[derive(Clone)]
pub struct Caller(pub Option<Arc<Principal>>);

async fn authorize(
    state: AppState,
    permission: Permission,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::to_owned).map_err(|_| ()))
    };
    // An API key wins over an Authorization header (an empty one counts as absent); a header
    // that is not text is refused.
    let key = text(header::HeaderName::from_static("x-api-key"));
    let authorization = text(header::AUTHORIZATION);
    let connection = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let real_ip = headers.get("x-real-ip").and_then(|v| v.to_str().ok());
    let peer = state.keys.client_address(connection, real_ip);
    let credentials = match (&key, &authorization) {
        (Some(Ok(key)), _) if !key.is_empty() => Credentials::Key(key),
        (Some(Err(())), _) => Credentials::BadKey,
        (_, Some(Ok(value))) => match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
                Credentials::Basic(rest)
            }
            _ => Credentials::Unsupported,
        },
        (_, Some(Err(()))) => Credentials::Unsupported,
        (_, None) => Credentials::Missing,
    };
    match state.keys.authorize(credentials, peer, permission).await {
        Ok(caller) => {
            request.extensions_mut().insert(Caller(caller));
            next.run(request).await
        }
        Err(error) => {
            let mut response = error.into_response();
            if response.status() == StatusCode::UNAUTHORIZED && state.keys.has_users() {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"grape\", charset=\"UTF-8\""),
                );
            }
            response
        }
    }
}

async fn record(state: AppState, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    state.metrics.observe_request(
        &method,
        &path,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Routes of one permission, guarded by it.
fn guarded(state: &AppState, permission: Permission, routes: Router<AppState>) -> Router<AppState> {
    let state = state.clone();
    routes.route_layer(middleware::from_fn(move |request: Request, next: Next| {
        authorize(state.clone(), permission, request, next)
    }))
}

/// Document and search routes, mounted at `/api/v1` (default collection) and at
/// `/api/v1/collections/{name}`.
fn data_routes(state: &AppState) -> Router<AppState> {
    use handlers::*;
    let writes = Router::new()
        .route("/documents", post(upsert_document))
        .route("/documents/batch", post(upsert_batch))
        .route("/documents/{id}", axum::routing::delete(delete_document));
    let reads = Router::new()
        .route("/documents", get(list_documents))
        .route("/documents/{id}", get(get_document));
    let searches = Router::new()
        .route("/search", post(search))
        .route("/vectors/search", post(search));
    guarded(state, Permission::DataWrite, writes)
        .merge(guarded(state, Permission::DataRead, reads))
        .merge(guarded(state, Permission::SearchExecute, searches))
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    use handlers::*;
    let body_limit = state.node.config().performance.max_request_body_mb * 1024 * 1024;
    let body_timeout =
        std::time::Duration::from_millis(state.node.config().performance.body_read_timeout_ms);
    let collections_read = Router::new()
        .route("/api/v1/collections", get(list_collections))
        .route("/api/v1/collections/{name}", get(get_collection));
    let collections_manage = Router::new()
        .route("/api/v1/collections", post(create_collection))
        .route(
            "/api/v1/collections/{name}",
            axum::routing::delete(drop_collection),
        );
    let admin_read = Router::new()
        .route("/admin/stats", get(stats))
        .route("/admin/stats/shards", get(shard_stats))
        .route("/admin/checksum", get(checksum))
        .route("/admin/slow-queries", get(slow_queries))
        .route("/admin/cluster/status", get(cluster_status))
        .route("/admin/cluster/leader", get(cluster_leader))
        .route("/admin/cluster/consensus", get(consensus))
        .route("/admin/cluster/election-history", get(election_history))
        .route("/admin/cluster/sync-status", get(sync_status))
        .route("/admin/cluster/rebalance-status", get(rebalance_status))
        .route("/admin/cluster/migration-status", get(migration_status))
        .route("/admin/cluster/repair-status", get(repair_status))
        .route("/admin/backups", get(list_backups))
        .route("/admin/backups/{id}", get(get_backup))
        .route("/admin/restore", get(list_restores));
    let admin_write = Router::new()
        .route(
            "/admin/cluster/transfer-leadership",
            post(transfer_leadership),
        )
        .route("/admin/cluster/add-node", post(add_node))
        .route("/admin/cluster/remove-node", post(remove_node))
        .route("/admin/cluster/rebalance", post(rebalance))
        .route("/admin/cluster/repair", post(repair))
        .route("/admin/cluster/force-recovery", post(force_recovery))
        .route("/admin/backups", post(start_backup))
        .route("/admin/backups/{id}", axum::routing::delete(delete_backup))
        .route("/admin/restore", post(start_restore));
    let metrics_read = Router::new().route("/metrics", get(metrics));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .nest("/api/v1", data_routes(&state))
        .nest("/api/v1/collections/{name}", data_routes(&state))
        .merge(guarded(&state, Permission::DataRead, collections_read))
        .merge(guarded(&state, Permission::DataManage, collections_manage))
        .merge(guarded(&state, Permission::ClusterRead, admin_read))
        .merge(guarded(&state, Permission::ClusterWrite, admin_write))
        .merge(guarded(&state, Permission::MetricsRead, metrics_read))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn({
            let state = state.clone();
            move |request: Request, next: Next| record(state.clone(), request, next)
        }))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .with_state(state)
}

/// The unauthenticated metrics listener's routes (`monitoring.metrics_port`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .with_state(state)
}
