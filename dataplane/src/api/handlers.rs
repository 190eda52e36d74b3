//! Route handlers: parse, check quotas, call the node, shape the answer.

use super::auth::Usage;
use super::metrics::{directory_size, resident_memory};
use super::{AppState, Caller, JsonBody, SlowQuery};
use crate::cluster::backup;
use crate::cluster::elastic::{self, AdminAnswer, AdminRpc, leadership, operations, recovery};
use crate::cluster::route::{catalog, documents, search};
use crate::cluster::status;
use crate::collection::{Cursor, DEFAULT_COLLECTION};
use crate::error::{Error, ErrorCode, Result};
use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use grape_client::{
    AddNodeRequest, AddNodeResponse, BackupDeleted, BackupInfo, BackupList, BackupRequest,
    BatchRequest, BatchResponse, ChecksumResponse, ClusterStatus, CollectionConfig, CollectionList,
    ConsensusResponse, DeleteResponse, DocumentInput, ElectionHistory, ErrorBody, ErrorDetail,
    ForceRecoveryRequest, ForceRecoveryResponse, HealthResponse, InsertResponse, LeaderResponse,
    ListResponse, OperationStarted, OperationsStatus, ReadyResponse, RebalanceRequest,
    RemoveNodeRequest, RepairRequest, RestoreInfo, RestoreList, RestoreRequest, SearchRequest,
    SearchResponse, ShardStatsResponse, SlowQueries, StatsResponse, SyncStatus,
    TransferLeadershipRequest, TransferLeadershipResponse,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// The version every node reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Path parameters of data routes: the collection (`default` on the seed's short paths) and,
/// on document routes, the document id.
pub struct Target {
    collection: String,
    id: Option<String>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Target {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        let Path(mut params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        Ok(Target {
            collection: params
                .remove("name")
                .unwrap_or_else(|| DEFAULT_COLLECTION.to_string()),
            id: params.remove("id"),
        })
    }
}

impl Target {
    fn id(&self) -> Result<&str> {
        self.id
            .as_deref()
            .ok_or_else(|| Error::Internal("document route without an id".into()))
    }
}

/// One path segment (a collection name), strictly decoded.
pub struct Segment(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self> {
        let Path(segment) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        Ok(Segment(segment))
    }
}

/// A path that does not decode is the caller's mistake, named, never a fallback.
fn path_rejection(rejection: axum::extract::rejection::PathRejection) -> Error {
    Error::invalid(
        ErrorCode::InvalidPath,
        format!(
            "the path is not valid: {} (segments are percent-encoded UTF-8)",
            rejection.body_text()
        ),
    )
}

fn charge(caller: &Caller, usage: Usage, amount: u64) -> Result<()> {
    match &caller.0 {
        Some(key) => key.charge(usage, amount),
        None => Ok(()),
    }
}

pub async fn health(State(state): State<AppState>) -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "healthy".into(),
        node_id: state.node.id().to_string(),
        version: VERSION.into(),
    })
}

pub async fn ready(State(state): State<AppState>) -> Response {
    if state.node.is_ready() {
        // A count only: `/ready` needs no key, so it names nothing.
        let failed_shards = state
            .node
            .replicas()
            .all()
            .iter()
            .filter(|local| local.shard.failure().is_some())
            .count();
        Json(ReadyResponse {
            status: "ready".into(),
            node_id: state.node.id().to_string(),
            failed_shards,
        })
        .into_response()
    } else {
        Error::unavailable(ErrorCode::NotReady, "this node has not caught up yet").into_response()
    }
}

pub async fn upsert_document(
    State(state): State<AppState>,
    target: Target,
    Extension(caller): Extension<Caller>,
    JsonBody(document): JsonBody<DocumentInput>,
) -> Result<(StatusCode, Json<InsertResponse>)> {
    let admit = || charge(&caller, Usage::Documents, 1);
    let mut ids = documents::upsert(
        &state.node,
        &target.collection,
        vec![document],
        false,
        admit,
    )
    .await?;
    let id = ids
        .pop()
        .ok_or_else(|| Error::Internal("upsert returned no id".into()))?;
    Ok((StatusCode::CREATED, Json(InsertResponse { id })))
}

pub async fn upsert_batch(
    State(state): State<AppState>,
    target: Target,
    Extension(caller): Extension<Caller>,
    JsonBody(batch): JsonBody<BatchRequest>,
) -> Result<Json<BatchResponse>> {
    let count = batch.documents.len() as u64;
    let admit = || charge(&caller, Usage::Documents, count);
    let ids = documents::upsert(
        &state.node,
        &target.collection,
        batch.documents,
        true,
        admit,
    )
    .await?;
    Ok(Json(BatchResponse {
        inserted: ids.len(),
        ids,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    consistency: Option<grape_client::Consistency>,
}

pub async fn get_document(
    State(state): State<AppState>,
    target: Target,
    query: std::result::Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Error::invalid(ErrorCode::InvalidQuery, e.body_text()))?;
    let document = documents::get(
        &state.node,
        &target.collection,
        target.id()?,
        query.consistency.unwrap_or_default(),
    )
    .await?;
    Ok(Json(document).into_response())
}

pub async fn delete_document(
    State(state): State<AppState>,
    target: Target,
    Extension(caller): Extension<Caller>,
) -> Result<Json<DeleteResponse>> {
    let id = target.id()?;
    let admit = || charge(&caller, Usage::Documents, 1);
    if documents::delete(&state.node, &target.collection, id, admit).await? {
        Ok(Json(DeleteResponse { deleted: true }))
    } else {
        Err(Error::not_found(
            ErrorCode::DocumentNotFound,
            format!("document '{id}' does not exist"),
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Largest page of `GET .../documents`.
const MAX_PAGE: usize = 1000;

pub async fn list_documents(
    State(state): State<AppState>,
    target: Target,
    query: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ListResponse>> {
    let Query(query) = query.map_err(|e| Error::invalid(ErrorCode::InvalidQuery, e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(Error::invalid(
            ErrorCode::InvalidLimit,
            format!("limit {limit} must be between 1 and {MAX_PAGE}"),
        ));
    }
    let cursor = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let (documents, next) = documents::list(&state.node, &target.collection, cursor, limit).await?;
    Ok(Json(ListResponse {
        documents,
        next_cursor: next.map(|c| c.encode()),
    }))
}

pub async fn search(
    State(state): State<AppState>,
    target: Target,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<SearchRequest>,
) -> Result<Json<SearchResponse>> {
    let started = Instant::now();
    let admit = || charge(&caller, Usage::Searches, 1);
    let results = search::search(&state.node, &target.collection, &request, admit).await?;
    let took = started.elapsed();
    state.metrics.observe_search(&target.collection, took);
    let took_ms = took.as_secs_f64() * 1000.0;
    if took_ms >= state.node.config().performance.slow_query_ms as f64 {
        state.slow_queries.record(SlowQuery {
            at: chrono::Utc::now().to_rfc3339(),
            collection: target.collection.clone(),
            took_ms,
            top_k: request.top_k,
            ef: request.ef,
            filtered: request.filter.is_some(),
        });
    }
    Ok(Json(SearchResponse { results, took_ms }))
}

pub async fn list_collections(State(state): State<AppState>) -> Json<CollectionList> {
    Json(CollectionList {
        collections: catalog::collections(&state.node)
            .iter()
            .map(|collection| catalog::info(&state.node, collection))
            .collect(),
    })
}

pub async fn create_collection(
    State(state): State<AppState>,
    JsonBody(config): JsonBody<CollectionConfig>,
) -> Result<Response> {
    let info = catalog::create(&state.node, config).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn get_collection(
    State(state): State<AppState>,
    Segment(name): Segment,
) -> Result<Response> {
    let collection = catalog::collection(&state.node, &name)?;
    Ok(Json(catalog::info(&state.node, &collection)).into_response())
}

pub async fn drop_collection(
    State(state): State<AppState>,
    Segment(name): Segment,
) -> Result<Json<DeleteResponse>> {
    catalog::drop(&state.node, &name).await?;
    Ok(Json(DeleteResponse { deleted: true }))
}

type Distribution = BTreeMap<String, BTreeMap<String, u64>>;

fn distribution(state: &AppState) -> Distribution {
    let mut out = Distribution::new();
    for shard in status::shard_stats(&state.node) {
        out.entry(shard.collection)
            .or_default()
            .insert(shard.shard.to_string(), shard.documents);
    }
    out
}

pub async fn stats(State(state): State<AppState>) -> Json<StatsResponse> {
    let shards = status::shard_stats(&state.node);
    let node = &state.node;
    Json(StatsResponse {
        node_id: node.id().to_string(),
        version: VERSION.into(),
        documents: shards.iter().map(|s| s.documents).sum(),
        collections: catalog::collections(node).len(),
        shard_distribution: distribution(&state),
        indexing_pending: shards.iter().map(|s| s.pending).sum(),
        uptime_seconds: node.uptime().as_secs(),
        disk_usage_bytes: directory_size(node.storage().path()),
        memory_usage_bytes: resident_memory(),
    })
}

pub async fn shard_stats(State(state): State<AppState>) -> Json<ShardStatsResponse> {
    Json(ShardStatsResponse {
        node_id: state.node.id().to_string(),
        shards: status::shard_stats(&state.node),
        shard_distribution: distribution(&state),
    })
}

pub async fn checksum(State(state): State<AppState>) -> Result<Json<ChecksumResponse>> {
    Ok(Json(ChecksumResponse {
        node_id: state.node.id().to_string(),
        shards: status::local_checksums(&state.node).await?,
    }))
}

pub async fn slow_queries(State(state): State<AppState>) -> Json<SlowQueries> {
    Json(SlowQueries {
        threshold_ms: state.node.config().performance.slow_query_ms,
        queries: state.slow_queries.recent(),
    })
}

pub async fn cluster_status(State(state): State<AppState>) -> Json<ClusterStatus> {
    Json(status::cluster_status(&state.node).await)
}

pub async fn cluster_leader(State(state): State<AppState>) -> Json<LeaderResponse> {
    Json(status::cluster_leader(&state.node))
}

pub async fn consensus(State(state): State<AppState>) -> Json<ConsensusResponse> {
    Json(status::consensus(&state.node))
}

pub async fn election_history(State(state): State<AppState>) -> Json<ElectionHistory> {
    Json(status::election_history(&state.node))
}

pub async fn sync_status(State(state): State<AppState>) -> Json<SyncStatus> {
    Json(status::sync_status(&state.node))
}

pub async fn transfer_leadership(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<TransferLeadershipRequest>,
) -> Result<Json<TransferLeadershipResponse>> {
    let moved = leadership::transfer_leadership(
        &state.node,
        request.target_node.as_deref(),
        request.shard.as_deref(),
        request.from_node.as_deref(),
    )
    .await?;
    Ok(Json(moved))
}

pub async fn add_node(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<AddNodeRequest>,
) -> Result<Json<AddNodeResponse>> {
    let answer = elastic::admin(
        &state.node,
        AdminRpc::AddNode {
            id: request.node_id,
            address: request.address,
        },
    )
    .await?;
    match answer {
        AdminAnswer::Added(added) => Ok(Json(added)),
        other => Err(Error::Internal(format!("add-node answered {other:?}"))),
    }
}

/// Runs an admin request that starts an operation (drain, rebalance, repair).
async fn start_operation(state: &AppState, request: AdminRpc) -> Result<Json<OperationStarted>> {
    match elastic::admin(&state.node, request).await? {
        AdminAnswer::Started(started) => Ok(Json(started)),
        other => Err(Error::Internal(format!("the operation answered {other:?}"))),
    }
}

pub async fn remove_node(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RemoveNodeRequest>,
) -> Result<Json<OperationStarted>> {
    let request = AdminRpc::RemoveNode {
        id: request.node_id,
        force: request.force,
    };
    start_operation(&state, request).await
}

pub async fn rebalance(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RebalanceRequest>,
) -> Result<Json<OperationStarted>> {
    let strategy = request
        .strategy
        .unwrap_or_else(|| "even_distribution".to_string());
    start_operation(&state, AdminRpc::Rebalance { strategy }).await
}

pub async fn repair(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RepairRequest>,
) -> Result<Json<OperationStarted>> {
    if let Some(kind) = &request.repair_type
        && kind != "full_sync"
    {
        return Err(Error::invalid(
            ErrorCode::InvalidRequest,
            format!("unknown repair_type {kind:?}; use \"full_sync\""),
        ));
    }
    let nodes = request.nodes.unwrap_or_default();
    start_operation(&state, AdminRpc::Repair { nodes }).await
}

pub async fn force_recovery(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ForceRecoveryRequest>,
) -> Result<Json<ForceRecoveryResponse>> {
    let answer = recovery::force_recovery(
        &state.node,
        &request.recovery_mode,
        request.accept_data_loss,
    )
    .await?;
    Ok(Json(answer))
}

pub async fn rebalance_status(State(state): State<AppState>) -> Json<OperationsStatus> {
    Json(operations::operations_status(&state.node, &["rebalance"]))
}

pub async fn migration_status(State(state): State<AppState>) -> Json<OperationsStatus> {
    Json(operations::operations_status(
        &state.node,
        &["rebalance", "drain", "repair"],
    ))
}

pub async fn repair_status(State(state): State<AppState>) -> Json<OperationsStatus> {
    Json(operations::operations_status(&state.node, &["repair"]))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let metrics = state.metrics.clone();
    let node = state.node.clone();
    let text = tokio::task::spawn_blocking(move || metrics.render(&node))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn not_found(method: Method, uri: Uri) -> Error {
    Error::not_found(
        ErrorCode::NotFound,
        format!("no route for {method} {}", uri.path()),
    )
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: ErrorCode::MethodNotAllowed.to_string(),
            message: format!("{method} is not allowed on {}", uri.path()),
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

pub async fn start_backup(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<BackupRequest>,
) -> Result<(StatusCode, Json<BackupInfo>)> {
    let info = backup::start(&state.node, request).await?;
    Ok((StatusCode::ACCEPTED, Json(info)))
}

pub async fn list_backups(State(state): State<AppState>) -> Json<BackupList> {
    Json(BackupList {
        backups: backup::list(&state.node),
    })
}

pub async fn get_backup(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BackupInfo>> {
    backup::get(&state.node, &id).map(Json)
}

/// `DELETE /admin/backups/{id}[?destination=URI]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBackupQuery {
    destination: Option<String>,
}

pub async fn delete_backup(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: std::result::Result<
        axum::extract::Query<DeleteBackupQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<BackupDeleted>> {
    let query = query.map_err(|e| Error::invalid(ErrorCode::InvalidRequest, e.body_text()))?;
    backup::delete(&state.node, &id, query.destination.as_deref())
        .await
        .map(Json)
}

pub async fn start_restore(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RestoreRequest>,
) -> Result<(StatusCode, Json<RestoreInfo>)> {
    let info = backup::restore::start(&state.node, request).await?;
    Ok((StatusCode::ACCEPTED, Json(info)))
}

pub async fn list_restores(State(state): State<AppState>) -> Json<RestoreList> {
    Json(RestoreList {
        restores: backup::restore::list(&state.node),
    })
}
