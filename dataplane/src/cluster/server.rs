//! Node-to-node traffic, server side, on `node.raft_address`: Raft messages for every group and
//! the cluster's own calls. HTTP/2 (cleartext, or TLS under `cluster.enable_tls`), MessagePack
//! bodies; every answer is `Result<T, RemoteError>`.
//!
//! [`router`] registers one handler per [`RpcKind`] in an exhaustive match, each at the path
//! its request type names: every call a peer can make is served, and every request enters
//! through this one router.

use super::connections::ConnectionLimit;
use super::elastic::{self, leadership, membership};
use super::node::Node;
use super::raft::auth::{Call, DIGEST_HEADER, NODE_HEADER, PROOF_HEADER, Refusal};
use super::raft::ids::META_GROUP;
use super::raft::meta_sm::MetaRaft;
use super::raft::peers::INCARNATION_HEADER;
use super::raft::rpc::{
    AdminRpc, AppendRpc, BackupChunkRpc, BackupHoldRpc, ChecksumsRpc, GetRpc, HandOverRpc,
    InitGroupRpc, ListRpc, MembershipRpc, PingRpc, PreVoteRpc, ProposeRpc, RemoteError, Rpc,
    RpcKind, SearchRpc, SnapshotChunkRpc, SnapshotRpc, StatusRpc, TransferLeaderRpc, VoteRpc,
};
use super::raft::shard_sm::ShardRaft;
use super::raft::tls::server_tls;
use super::raft::types::{Snapshot, TypeConfig, decode, encode};
use super::route::{self, documents, search};
use super::{status, tasks};
use crate::config::parse_host_port;
use crate::error::{Error, ErrorCode, Result};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::tls::TlsInfo;
use openraft::raft::SnapshotResponse;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Largest request body: snapshots carry whole shards.
const MAX_BODY: usize = 4 * 1024 * 1024 * 1024;

/// One group's Raft, whichever state machine it runs.
enum GroupRaft {
    Meta(MetaRaft),
    Shard(ShardRaft),
}

fn group_raft(node: &Node, group: &str) -> Result<GroupRaft> {
    if group == META_GROUP {
        return Ok(GroupRaft::Meta(node.meta_raft().clone()));
    }
    node.replicas()
        .require(group)
        .map(|g| GroupRaft::Shard(g.raft.clone()))
}

/// Runs the same call on whichever Raft the group has.
macro_rules! on_group {
    ($node:expr, $group:expr, |$raft:ident| $call:expr) => {
        match group_raft(&$node, $group)? {
            GroupRaft::Meta($raft) => $call.await.map_err(raft_error),
            GroupRaft::Shard($raft) => $call.await.map_err(raft_error),
        }
    };
}

fn raft_error(e: impl std::fmt::Display) -> Error {
    Error::unavailable(ErrorCode::Unavailable, e.to_string())
}

/// Decodes the body, runs `handle`, encodes its result.
async fn answer<R, F, Fut>(body: Bytes, handle: F) -> Response
where
    R: Rpc,
    F: FnOnce(R) -> Fut,
    Fut: Future<Output = Result<R::Response>>,
{
    let request: R = match decode(&body) {
        Ok(request) => request,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("unreadable request: {e}")).into_response();
        }
    };
    let result = handle(request).await.map_err(|e| RemoteError::from(&e));
    (
        [(header::CONTENT_TYPE, "application/msgpack")],
        encode(&result),
    )
        .into_response()
}

/// Adds the handler of `R` at `kind`'s path.
fn serve_rpc<R, F, Fut>(
    app: axum::Router<Arc<Node>>,
    kind: RpcKind,
    handler: F,
) -> axum::Router<Arc<Node>>
where
    R: Rpc,
    F: Fn(Arc<Node>, R) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::Response>> + Send + 'static,
{
    assert_eq!(R::KIND, kind, "the handler for {kind:?} takes another call");
    app.route(
        kind.path(),
        post(move |State(node): State<Arc<Node>>, body: Bytes| {
            let handler = handler.clone();
            async move { answer(body, |request: R| handler(node, request)).await }
        }),
    )
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

/// Pauses writes here for a backup's cut, or resumes them.
async fn hold_for_backup(node: &Arc<Node>, rpc: BackupHoldRpc) -> Result<bool> {
    if rpc.backup.is_empty() || rpc.backup.len() > 64 {
        return Err(Error::invalid(
            crate::error::ErrorCode::InvalidRequest,
            "a backup id has 1 to 64 bytes",
        ));
    }
    if rpc.pause {
        node.write_gate()
            .hold(
                &rpc.backup,
                crate::cluster::backup::PAUSE_WAIT,
                crate::cluster::backup::PAUSE_LEASE,
            )
            .await
            .map(|()| true)
    } else {
        Ok(node.write_gate().release(&rpc.backup))
    }
}

/// Refuses snapshot data for a group this node does not hold, or while its disk is low.
fn may_receive(node: &Node, group: &str) -> Result<()> {
    if group_raft(node, group).is_err() {
        return Err(Error::not_found(
            ErrorCode::NotFound,
            format!("{} holds no replica of {group} (yet)", node.id()),
        ));
    }
    if node.disk().is_low() {
        // What arrived of it is dropped too: the sender starts over once space is freed.
        node.incoming().discard(group);
        return Err(Error::InsufficientStorage(format!(
            "{} has less than {} MiB free: it receives no snapshot until space is freed",
            node.id(),
            node.disk().reserve_bytes() / (1024 * 1024)
        )));
    }
    Ok(())
}

/// Appends a chunk of a snapshot to its file; the last chunk installs the whole.
async fn receive_snapshot_chunk(
    node: &Arc<Node>,
    rpc: SnapshotChunkRpc,
) -> Result<Option<SnapshotResponse<TypeConfig>>> {
    may_receive(node, &rpc.group)?;
    let SnapshotChunkRpc {
        group,
        transfer,
        offset,
        data,
        finish,
    } = rpc;
    let incoming = Arc::clone(node.incoming());
    let at = group.clone();
    blocking(move || incoming.chunk(&at, transfer, offset, &data)).await?;
    let Some(finish) = finish else {
        return Ok(None);
    };
    let incoming = Arc::clone(node.incoming());
    let (at, meta) = (group.clone(), finish.meta.clone());
    let data = blocking(move || incoming.finish(&at, transfer, finish.whole, &meta)).await?;
    let snapshot = Snapshot {
        meta: finish.meta,
        snapshot: data,
    };
    on_group!(node, &group, |raft| raft
        .install_full_snapshot(finish.vote, snapshot))
    .map(Some)
}

/// Installs a snapshot a node of an earlier version sent whole.
async fn receive_whole_snapshot(
    node: &Arc<Node>,
    rpc: SnapshotRpc,
) -> Result<SnapshotResponse<TypeConfig>> {
    may_receive(node, &rpc.group)?;
    let incoming = Arc::clone(node.incoming());
    let SnapshotRpc {
        group,
        vote,
        meta,
        data,
    } = rpc;
    let (at, kept) = (group.clone(), meta.clone());
    let data = blocking(move || incoming.whole(&at, &data, &kept)).await?;
    let snapshot = Snapshot {
        meta,
        snapshot: data,
    };
    on_group!(node, &group, |raft| raft
        .install_full_snapshot(vote, snapshot))
}

/// Lets a call through only if it proves it comes from a node of this cluster
/// ([`PeerAuth::check`]); otherwise answers 401 before any handler runs.
async fn authenticate(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    if !node.peer_auth().is_enforced() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let certificates = parts
        .extensions
        .get::<Arc<TlsInfo>>()
        .map(|info| info.peer_certificates.as_slice())
        .unwrap_or_default();
    let host_of = |id: &str| {
        node.peers()
            .address(id)
            .and_then(|address| parse_host_port(&address).map(|(host, _)| host))
    };
    let mut call = Call {
        path: parts.uri.path(),
        node: header(NODE_HEADER),
        proof: header(PROOF_HEADER),
        digest: header(DIGEST_HEADER),
        body: &[],
        certificates,
    };
    // A stranger is refused before its body is read (it could be gigabytes).
    if let Err(refusal) = node.peer_auth().precheck(&call, &host_of) {
        return refuse(&call, refusal);
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("unreadable body: {e}")).into_response();
        }
    };
    call.body = &body;
    // The caller was verified above; only the body is left to match its proof.
    if let Err(refusal) = node.peer_auth().check_body(&call) {
        return refuse(&call, refusal);
    }
    next.run(axum::extract::Request::from_parts(parts, Body::from(body)))
        .await
}

/// Refuses a call meant for another incarnation of this node (see
/// `node::INCARNATION_RECORD`): this data directory is not the one the cluster knows under
/// this id, so the node must not vote, acknowledge entries or serve data as that member. Status
/// calls still answer, marked with this node's incarnation, so that the cluster can list it
/// under `data_lost` without counting it as a reachable member.
async fn check_incarnation(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let expected = request
        .headers()
        .get(INCARNATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.parse::<u64>());
    match expected {
        None => next.run(request).await,
        Some(Ok(expected)) if expected == node.incarnation() => next.run(request).await,
        // The status still answers, marked, so that the cluster can list this node under
        // `data_lost` without counting it as a reachable member.
        Some(Ok(_)) if path == RpcKind::Status.path() => {
            let mut response = next.run(request).await;
            response.headers_mut().insert(
                INCARNATION_HEADER,
                axum::http::HeaderValue::from(node.incarnation()),
            );
            response
        }
        Some(Ok(_)) => {
            tracing::warn!(
                %path,
                "refused a node-to-node call meant for this node's earlier data directory: remove this node from the cluster and add it again"
            );
            // 421: this node is not the one the call was meant for. The caller treats it as
            // unreachable.
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "{} has a new data directory: the cluster must remove it and add it again",
                    node.id()
                ),
            )
                .into_response()
        }
        Some(Err(_)) => (
            StatusCode::BAD_REQUEST,
            format!("{INCARNATION_HEADER} is not a number"),
        )
            .into_response(),
    }
}

fn refuse(call: &Call<'_>, refusal: Refusal) -> Response {
    tracing::warn!(
        path = call.path,
        claimed = call.node.unwrap_or("-"),
        reason = %refusal.0,
        "refused a node-to-node call"
    );
    (
        StatusCode::UNAUTHORIZED,
        format!("unauthenticated node-to-node call: {}", refusal.0),
    )
        .into_response()
}

/// Every node-to-node call, each served at the path its type names, behind
/// [`authenticate`].
pub fn router(node: Arc<Node>) -> axum::Router {
    let mut app = axum::Router::new();
    for &kind in RpcKind::ALL {
        app = match kind {
            RpcKind::Append => serve_rpc(app, kind, |node, rpc: AppendRpc| async move {
                on_group!(node, &rpc.group, |raft| raft.append_entries(rpc.rpc))
            }),
            RpcKind::Vote => serve_rpc(app, kind, |node, rpc: VoteRpc| async move {
                on_group!(node, &rpc.group, |raft| raft.vote(rpc.rpc))
            }),
            RpcKind::PreVote => serve_rpc(app, kind, |node, rpc: PreVoteRpc| async move {
                on_group!(node, &rpc.group, |raft| raft.pre_vote(rpc.rpc))
            }),
            RpcKind::Snapshot => serve_rpc(app, kind, |node, rpc: SnapshotRpc| async move {
                receive_whole_snapshot(&node, rpc).await
            }),
            RpcKind::SnapshotChunk => {
                serve_rpc(app, kind, |node, rpc: SnapshotChunkRpc| async move {
                    receive_snapshot_chunk(&node, rpc).await
                })
            }
            RpcKind::TransferLeader => {
                serve_rpc(app, kind, |node, rpc: TransferLeaderRpc| async move {
                    on_group!(node, &rpc.group, |raft| raft
                        .handle_transfer_leader(rpc.rpc))
                })
            }
            RpcKind::Status => serve_rpc(app, kind, |node, StatusRpc| async move {
                Ok(status::node_status(&node))
            }),
            RpcKind::Ping => serve_rpc(app, kind, |node, PingRpc| async move {
                Ok(node.id().to_string())
            }),
            RpcKind::Propose => serve_rpc(app, kind, |node, rpc: ProposeRpc| async move {
                route::propose_here(&node, &rpc.group, rpc.request).await
            }),
            RpcKind::Get => serve_rpc(app, kind, |node, rpc: GetRpc| async move {
                documents::get_here(&node, &rpc).await
            }),
            RpcKind::List => serve_rpc(app, kind, |node, rpc: ListRpc| async move {
                documents::list_here(&node, &rpc).await
            }),
            RpcKind::Search => serve_rpc(app, kind, |node, rpc: SearchRpc| async move {
                search::search_here(&node, rpc).await
            }),
            RpcKind::InitGroup => serve_rpc(app, kind, |node, rpc: InitGroupRpc| async move {
                tasks::form_group(&node, &rpc.group, rpc.members).await
            }),
            RpcKind::HandOver => serve_rpc(app, kind, |node, rpc: HandOverRpc| async move {
                leadership::hand_over_here(&node, &rpc.group, &rpc.target).await
            }),
            RpcKind::Checksums => serve_rpc(app, kind, |node, ChecksumsRpc| async move {
                status::local_checksums(&node).await
            }),
            RpcKind::Admin => serve_rpc(app, kind, |node, rpc: AdminRpc| async move {
                elastic::admin_here(&node, rpc).await
            }),
            RpcKind::BackupHold => serve_rpc(app, kind, |node, rpc: BackupHoldRpc| async move {
                hold_for_backup(&node, rpc).await
            }),
            RpcKind::BackupChunk => serve_rpc(app, kind, |node, rpc: BackupChunkRpc| async move {
                let exports = Arc::clone(node.exports_arc());
                blocking(move || exports.next(&rpc.backup, &rpc.group, rpc.seq)).await
            }),
            RpcKind::Membership => serve_rpc(app, kind, |node, rpc: MembershipRpc| async move {
                membership::membership_here(&node, rpc).await
            }),
        };
    }
    let body_timeout = Duration::from_millis(node.config().performance.body_read_timeout_ms);
    app.layer(DefaultBodyLimit::max(MAX_BODY))
        // After the authentication: a stranger learns nothing from it.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&node),
            check_incarnation,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&node),
            authenticate,
        ))
        // Outermost, so that the authentication's own read of the body is bounded too.
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .with_state(node)
}

/// Largest request head (request line and headers) a server reads; larger ones answer 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A server that closes connections whose client takes longer than
/// `performance.header_read_timeout_ms` to start a request or send its headers, refuses
/// request heads over [`MAX_HEADER_BYTES`], and holds at most `performance.max_connections`
/// connections open.
pub fn bounded<A: axum_server::Address, Acc>(
    mut server: axum_server::Server<A, Acc>,
    config: &crate::config::Config,
) -> axum_server::Server<A, ConnectionLimit<Acc>> {
    let headers = Duration::from_millis(config.performance.header_read_timeout_ms);
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(headers))
        .max_buf_size(MAX_HEADER_BYTES);
    server
        .http_builder()
        .http2()
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let limit = config.performance.max_connections;
    server
        .first_request_timeout(headers)
        .map(|acceptor| ConnectionLimit::new(acceptor, limit))
}

/// Serves node-to-node traffic until the node shuts down.
pub fn serve(
    node: Arc<Node>,
    listener: std::net::TcpListener,
) -> Result<tokio::task::JoinHandle<()>> {
    let address = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let tls = if node.config().cluster.enable_tls {
        Some(server_tls(node.config())?)
    } else {
        None
    };
    tracing::info!(
        "raft listening on {address} (advertised as {})",
        node.addr().raft
    );
    let config = node.config().clone();
    let app = router(node);
    Ok(tokio::spawn(async move {
        let result = match tls {
            Some(tls) => match axum_server::from_tcp_rustls(listener, tls) {
                Ok(server) => {
                    bounded(server, &config)
                        .serve(app.into_make_service())
                        .await
                }
                Err(e) => Err(e),
            },
            None => match axum_server::from_tcp(listener) {
                Ok(server) => {
                    bounded(server, &config)
                        .serve(app.into_make_service())
                        .await
                }
                Err(e) => Err(e),
            },
        };
        if let Err(error) = result {
            tracing::error!(%error, "the node-to-node listener stopped");
        }
    }))
}
