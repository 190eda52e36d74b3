//! Node-to-node traffic, server side, on `node.raft_address`: Raft RPCs for every group and the
//! cluster's own calls. HTTP/2 (cleartext, or TLS with peer verification under
//! `cluster.enable_tls`), MessagePack bodies; every answer is `Result<T, RemoteError>`.

use super::Node;
use super::network::{
    GetRpc, GroupRpc, GroupStatus, InitGroupRpc, ListRpc, NodeStatus, ProposeRpc, RemoteError,
    SearchRpc, SnapshotRpc, TransferRpc,
};
use super::types::{META_GROUP, MetaRaft, ShardRaft, TypeConfig, decode, encode};
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::type_config::async_runtime::WatchReceiver;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// One group's Raft, whichever state machine it runs.
enum GroupRaft {
    Meta(MetaRaft),
    Shard(ShardRaft),
}

impl Node {
    fn group_raft(&self, group: &str) -> Result<GroupRaft> {
        if group == META_GROUP {
            return Ok(GroupRaft::Meta(self.meta.clone()));
        }
        self.local_group(group)
            .map(|g| GroupRaft::Shard(g.raft.clone()))
            .ok_or_else(|| {
                Error::unavailable(
                    ErrorCode::PeerUnreachable,
                    format!("{} holds no replica of {group} (yet)", self.id),
                )
            })
    }

    /// This node's view of itself and its groups.
    pub fn status(&self) -> NodeStatus {
        let meta = self.meta_metrics();
        let mut groups = vec![GroupStatus::from_metrics(META_GROUP, &meta)];
        for local in self.local_groups() {
            let mut status =
                GroupStatus::from_metrics(&local.group, &local.raft.metrics().borrow_watched());
            let figures = local.shard.figures();
            status.documents = figures.documents;
            status.bytes = figures.bytes;
            groups.push(status);
        }
        NodeStatus {
            node_id: self.id.clone(),
            addr: self.addr.clone(),
            ready: self.is_ready(),
            meta_initialized: meta.last_log_index.is_some() || meta.vote.leader_id().term > 0,
            documents: self.document_count(),
            groups,
        }
    }
}

fn raft_error(e: impl std::fmt::Display) -> Error {
    Error::unavailable(ErrorCode::Unavailable, e.to_string())
}

/// Decodes the body, runs `handle`, encodes its result.
async fn answer<Req, Resp, F, Fut>(body: Bytes, handle: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp>>,
{
    let request: Req = match decode(&body) {
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

async fn append(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(
        body,
        |rpc: GroupRpc<AppendEntriesRequest<TypeConfig>>| async move {
            match node.group_raft(&rpc.group)? {
                GroupRaft::Meta(raft) => raft.append_entries(rpc.rpc).await.map_err(raft_error),
                GroupRaft::Shard(raft) => raft.append_entries(rpc.rpc).await.map_err(raft_error),
            }
        },
    )
    .await
}

async fn vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |rpc: GroupRpc<VoteRequest<TypeConfig>>| async move {
        match node.group_raft(&rpc.group)? {
            GroupRaft::Meta(raft) => raft.vote(rpc.rpc).await.map_err(raft_error),
            GroupRaft::Shard(raft) => raft.vote(rpc.rpc).await.map_err(raft_error),
        }
    })
    .await
}

async fn pre_vote(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |rpc: GroupRpc<VoteRequest<TypeConfig>>| async move {
        match node.group_raft(&rpc.group)? {
            GroupRaft::Meta(raft) => raft.pre_vote(rpc.rpc).await.map_err(raft_error),
            GroupRaft::Shard(raft) => raft.pre_vote(rpc.rpc).await.map_err(raft_error),
        }
    })
    .await
}

async fn snapshot(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |rpc: SnapshotRpc| async move {
        let snapshot = super::types::Snapshot {
            meta: rpc.meta,
            snapshot: std::io::Cursor::new(rpc.data),
        };
        match node.group_raft(&rpc.group)? {
            GroupRaft::Meta(raft) => raft
                .install_full_snapshot(rpc.vote, snapshot)
                .await
                .map_err(raft_error),
            GroupRaft::Shard(raft) => raft
                .install_full_snapshot(rpc.vote, snapshot)
                .await
                .map_err(raft_error),
        }
    })
    .await
}

async fn transfer_leader(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(
        body,
        |rpc: GroupRpc<TransferLeaderRequest<TypeConfig>>| async move {
            match node.group_raft(&rpc.group)? {
                GroupRaft::Meta(raft) => raft
                    .handle_transfer_leader(rpc.rpc)
                    .await
                    .map_err(raft_error),
                GroupRaft::Shard(raft) => raft
                    .handle_transfer_leader(rpc.rpc)
                    .await
                    .map_err(raft_error),
            }
        },
    )
    .await
}

async fn status(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |(): ()| async move { Ok(node.status()) }).await
}

async fn ping(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |(): ()| async move { Ok(node.id.clone()) }).await
}

async fn propose(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |rpc: ProposeRpc| async move {
        node.propose_here(&rpc.group, rpc.request).await
    })
    .await
}

async fn get(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |rpc: GetRpc| async move { node.get_here(rpc).await }).await
}

async fn list(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(
        body,
        |rpc: ListRpc| async move { node.list_here(rpc).await },
    )
    .await
}

async fn search(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(
        body,
        |rpc: SearchRpc| async move { node.search_here(rpc).await },
    )
    .await
}

async fn init_group(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |rpc: InitGroupRpc| async move {
        node.init_group_rpc(rpc).await
    })
    .await
}

async fn transfer(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |rpc: TransferRpc| async move {
        node.transfer_here(&rpc.group, &rpc.target).await
    })
    .await
}

async fn admin(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |rpc: super::elastic::AdminRpc| async move {
        node.admin_here(rpc).await
    })
    .await
}

async fn membership(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |rpc: super::elastic::MembershipRpc| async move {
        node.membership_here(rpc).await
    })
    .await
}

async fn checksums(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    answer(body, |(): ()| async move { node.local_checksums().await }).await
}

/// Serves node-to-node traffic until the node shuts down.
pub(super) fn serve(
    node: Arc<Node>,
    listener: std::net::TcpListener,
) -> Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/pre-vote", post(pre_vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/transfer-leader", post(transfer_leader))
        .route("/internal/status", post(status))
        .route("/internal/ping", post(ping))
        .route("/internal/propose", post(propose))
        .route("/internal/get", post(get))
        .route("/internal/list", post(list))
        .route("/internal/search", post(search))
        .route("/internal/init-group", post(init_group))
        .route("/internal/transfer", post(transfer))
        .route("/internal/checksums", post(checksums))
        .route("/internal/admin", post(admin))
        .route("/internal/membership", post(membership))
        // Snapshots carry whole shards.
        .layer(DefaultBodyLimit::max(4 * 1024 * 1024 * 1024))
        .with_state(Arc::clone(&node));
    let address = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let tls = if node.config.cluster.enable_tls {
        Some(server_tls(&node.config)?)
    } else {
        None
    };
    tracing::info!(
        "raft listening on {address} (advertised as {})",
        node.addr.raft
    );
    Ok(tokio::spawn(async move {
        let result = match tls {
            Some(tls) => match axum_server::from_tcp_rustls(listener, tls) {
                Ok(server) => server.serve(app.into_make_service()).await,
                Err(e) => Err(e),
            },
            None => match axum_server::from_tcp(listener) {
                Ok(server) => server.serve(app.into_make_service()).await,
                Err(e) => Err(e),
            },
        };
        if let Err(error) = result {
            tracing::error!(%error, "the node-to-node listener stopped");
        }
    }))
}

fn tls_files(config: &Config) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let tls = &config.cluster.tls_config;
    let read = |key: &str, path: &Option<std::path::PathBuf>| -> Result<Vec<u8>> {
        let path = path.as_ref().ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidConfig,
                format!("cluster.enable_tls needs cluster.tls_config.{key}"),
            )
        })?;
        std::fs::read(path).map_err(|e| {
            Error::invalid(
                ErrorCode::InvalidConfig,
                format!("cluster.tls_config.{key} {}: {e}", path.display()),
            )
        })
    };
    Ok((
        read("cert_file", &tls.cert_file)?,
        read("key_file", &tls.key_file)?,
        read("ca_file", &tls.ca_file)?,
    ))
}

fn server_tls(config: &Config) -> Result<axum_server::tls_rustls::RustlsConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (cert, key, ca) = tls_files(config)?;
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::invalid(ErrorCode::InvalidConfig, format!("cluster TLS {what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad("key", &e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = if config.cluster.tls_config.verify_peer {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&ca) {
            roots
                .add(ca.map_err(|e| bad("CA", &e))?)
                .map_err(|e| bad("CA", &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| bad("CA", &e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate", &e))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(server),
    ))
}

/// The client for calls to peers: HTTP/2 over one connection per peer, from this node's Raft
/// address (so that a firewall or a test can tell nodes apart), TLS when the cluster uses it.
pub fn peer_http_client(config: &Config, raft_bound: SocketAddr) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_millis(500))
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .http2_keep_alive_interval(std::time::Duration::from_secs(1))
        .http2_keep_alive_timeout(std::time::Duration::from_secs(3))
        .http2_keep_alive_while_idle(true);
    if !raft_bound.ip().is_unspecified() {
        builder = builder.local_address(raft_bound.ip());
    }
    if config.cluster.enable_tls {
        let (cert, key, ca) = tls_files(config)?;
        let bad = |e: reqwest::Error| {
            Error::invalid(ErrorCode::InvalidConfig, format!("cluster TLS: {e}"))
        };
        let mut identity = cert;
        identity.extend_from_slice(&key);
        builder = builder
            .tls_certs_only(vec![reqwest::Certificate::from_pem(&ca).map_err(bad)?])
            .identity(reqwest::Identity::from_pem(&identity).map_err(bad)?);
    } else {
        builder = builder.http2_prior_knowledge();
    }
    builder
        .build()
        .map_err(|e| Error::Internal(format!("cannot build the peer client: {e}")))
}
