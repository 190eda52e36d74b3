//! Node-to-node traffic, client side: one HTTP/2 connection per peer (MessagePack bodies),
//! carrying every group's Raft RPCs, tagged with the group, and the cluster's own calls
//! (forwarded writes, shard searches, status).

use super::types::{
    GroupId, NodeAddr, NodeId, Request, Response, Snapshot, SnapshotMeta, TypeConfig, Vote, decode,
    encode,
};
use crate::error::{Error, ErrorCode};
use grape_client::RaftRole;
use openraft::OptionalSend;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft_multi::{GroupNetworkAdapter, GroupNetworkFactory, GroupRouter};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A Raft RPC for one group.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupRpc<T> {
    pub group: GroupId,
    pub rpc: T,
}

/// A whole snapshot for one group.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRpc {
    pub group: GroupId,
    pub vote: Vote,
    pub meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// An error answered by a peer, in a form that crosses the wire: the same status and code
/// reach the client whichever node it asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteError {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
    /// For `not_leader`: the leader the peer knows of.
    pub leader: Option<NodeId>,
    /// For `rate_limited` and `quota_exceeded`: when to retry.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

impl From<&Error> for RemoteError {
    fn from(error: &Error) -> Self {
        RemoteError {
            status: error.status(),
            code: error.code(),
            message: error.message(),
            leader: match error {
                Error::NotLeader { leader, .. } => leader.clone(),
                _ => None,
            },
            retry_after_ms: match error {
                Error::RateLimited { retry_after, .. } => Some(retry_after.as_millis() as u64),
                _ => None,
            },
        }
    }
}

impl From<RemoteError> for Error {
    fn from(remote: RemoteError) -> Self {
        let RemoteError {
            status,
            code,
            message,
            leader,
            retry_after_ms,
        } = remote;
        match (status, code) {
            (503, ErrorCode::NotLeader) => Error::NotLeader { message, leader },
            (400, code) => Error::InvalidInput { code, message },
            (401, _) => Error::Unauthorized(message),
            (403, _) => Error::Forbidden(message),
            (404, code) => Error::NotFound { code, message },
            (409, code) => Error::Conflict { code, message },
            (413, _) => Error::PayloadTooLarge(message),
            (429, code) => Error::RateLimited {
                code,
                message,
                retry_after: std::time::Duration::from_millis(retry_after_ms.unwrap_or(1000)),
            },
            (503, code) => Error::Unavailable { code, message },
            // The peer's message already says "internal error: ".
            _ => Error::Internal(
                message
                    .strip_prefix("internal error: ")
                    .map(str::to_string)
                    .unwrap_or(message),
            ),
        }
    }
}

/// Why a call to a peer failed.
#[derive(Debug)]
pub enum CallError {
    /// No answer (connection refused, timeout, unknown address).
    Unreachable(String),
    /// The peer answered with an error.
    Remote(RemoteError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) => write!(f, "unreachable: {why}"),
            CallError::Remote(e) => write!(f, "{}: {}", e.code, e.message),
        }
    }
}

impl std::error::Error for CallError {}

impl From<CallError> for Error {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Unreachable(why) => Error::unavailable(ErrorCode::PeerUnreachable, why),
            CallError::Remote(remote) => remote.into(),
        }
    }
}

/// Connections to every peer and where they listen.
pub struct Peers {
    http: reqwest::Client,
    scheme: &'static str,
    /// Raft addresses by node id: from the configuration, the meta group's node records and
    /// Raft membership.
    book: RwLock<HashMap<NodeId, String>>,
    /// When each peer last answered.
    answered: RwLock<HashMap<NodeId, std::time::Instant>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("book", &*self.book.read())
            .finish()
    }
}

impl Peers {
    pub fn new(http: reqwest::Client, tls: bool) -> Peers {
        Peers {
            http,
            scheme: if tls { "https" } else { "http" },
            book: RwLock::new(HashMap::new()),
            answered: RwLock::new(HashMap::new()),
        }
    }

    /// Whether `id` answered within `window`.
    pub fn answered_within(&self, id: &str, window: Duration) -> bool {
        self.answered
            .read()
            .get(id)
            .is_some_and(|at| at.elapsed() <= window)
    }

    /// Records where a node listens.
    pub fn learn(&self, id: &str, raft_address: &str) {
        if raft_address.is_empty() {
            return;
        }
        let mut book = self.book.write();
        if book.get(id).map(String::as_str) != Some(raft_address) {
            book.insert(id.to_string(), raft_address.to_string());
        }
    }

    pub fn address(&self, id: &str) -> Option<String> {
        self.book.read().get(id).cloned()
    }

    /// Calls `path` on `target` with a MessagePack body and decodes its answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let address = self
            .address(target)
            .ok_or_else(|| CallError::Unreachable(format!("no address known for node {target}")))?;
        let response = self
            .http
            .post(format!("{}://{address}{path}", self.scheme))
            .header("content-type", "application/msgpack")
            .timeout(timeout)
            .body(encode(body))
            .send()
            .await
            .map_err(|e| CallError::Unreachable(format!("{target} ({address}): {e}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Unreachable(format!("{target}: {e}")))?;
        if !status.is_success() {
            return Err(CallError::Remote(RemoteError {
                status: status.as_u16(),
                code: ErrorCode::PeerError,
                message: String::from_utf8_lossy(&bytes).into_owned(),
                leader: None,
                retry_after_ms: None,
            }));
        }
        let answer: Result<Resp, RemoteError> = decode(&bytes).map_err(|e| {
            CallError::Unreachable(format!("{target} sent an unreadable answer: {e}"))
        })?;
        self.answered
            .write()
            .insert(target.to_string(), std::time::Instant::now());
        answer.map_err(CallError::Remote)
    }
}

/// The shared router every group's network goes through.
#[derive(Clone, Debug)]
pub struct Router {
    pub peers: Arc<Peers>,
}

fn unreachable(error: CallError) -> Unreachable<TypeConfig> {
    Unreachable::new(&error)
}

impl Router {
    async fn raft_call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: &str,
        path: &str,
        body: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        self.peers
            .call(target, path, body, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable(_) => RPCError::Unreachable(unreachable(e)),
                CallError::Remote(_) => RPCError::Network(NetworkError::new(&e)),
            })
    }
}

impl GroupRouter<TypeConfig, GroupId> for Router {
    type SnapshotData = super::types::SnapshotData;

    async fn append_entries(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&target, "/raft/append", &GroupRpc { group, rpc }, &option)
            .await
    }

    async fn vote(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&target, "/raft/vote", &GroupRpc { group, rpc }, &option)
            .await
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&target, "/raft/pre-vote", &GroupRpc { group, rpc }, &option)
            .await
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        group: GroupId,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let body = SnapshotRpc {
            group,
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        // A snapshot can be large: allow it time beyond a heartbeat's.
        let timeout = option.hard_ttl().max(Duration::from_secs(120));
        self.peers
            .call(&target, "/raft/snapshot", &body, timeout)
            .await
            .map_err(|e| match e {
                CallError::Unreachable(_) => StreamingError::Unreachable(unreachable(e)),
                CallError::Remote(_) => StreamingError::Network(NetworkError::new(&e)),
            })
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(
            &target,
            "/raft/transfer-leader",
            &GroupRpc { group, rpc },
            &option,
        )
        .await
    }

    fn backoff(&self) -> Option<Backoff> {
        // Retry an unreachable peer quickly at first, then every 500 ms.
        Some(Backoff::new(
            [50u64, 100, 200]
                .into_iter()
                .map(Duration::from_millis)
                .chain(std::iter::repeat(Duration::from_millis(500))),
        ))
    }
}

/// Builds each group's connections to its peers on the shared router.
pub type NetworkFactory = GroupNetworkFactory<Router, GroupId>;

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = GroupNetworkAdapter<TypeConfig, GroupId, Router>;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        self.factory.peers.learn(&target, &node.raft);
        GroupNetworkAdapter::new(self.factory.clone(), target, self.group_id.clone())
    }
}

/// A client write forwarded to a group's leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProposeRpc {
    pub group: GroupId,
    pub request: Request,
}

/// The answer to [`ProposeRpc`].
pub type ProposeAnswer = Response;

/// A read of one document from a replica.
#[derive(Debug, Serialize, Deserialize)]
pub struct GetRpc {
    pub group: GroupId,
    pub id: String,
    /// Read on the leader after read-index.
    pub strong: bool,
}

/// A page of one replica's documents.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListRpc {
    pub group: GroupId,
    pub after: Option<String>,
    pub limit: usize,
}

/// A search of some shards' replicas on one node.
#[derive(Debug, Serialize, Deserialize)]
pub struct SearchRpc {
    pub collection: crate::collection::Collection,
    pub shards: Vec<u32>,
    pub request: grape_client::SearchRequest,
    /// Search on the leader after read-index.
    pub strong: bool,
}

/// One hit from a peer, with the stored vector when the search asked for vectors.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteHit {
    pub hit: crate::shard::ShardHit,
    pub vector: Option<Vec<f32>>,
}

/// The controller asks a replica to form a new group with this exact membership.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitGroupRpc {
    pub group: GroupId,
    pub members: std::collections::BTreeMap<NodeId, NodeAddr>,
}

/// Moves a group's leadership to `target`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TransferRpc {
    pub group: GroupId,
    pub target: NodeId,
}

/// What a node reports about itself and the groups it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub addr: NodeAddr,
    pub ready: bool,
    pub meta_initialized: bool,
    pub documents: u64,
    pub groups: Vec<GroupStatus>,
}

/// One group as one member sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: RaftRole,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Last entry covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last entry purged from the log.
    pub purged_index: Option<u64>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// On the leader: each member's last replicated index.
    pub matched: std::collections::BTreeMap<NodeId, Option<u64>>,
    /// Documents this member's replica holds (shard groups).
    pub documents: u64,
    /// Stored bytes of those documents.
    pub bytes: u64,
}

impl GroupStatus {
    pub fn from_metrics(group: &str, m: &super::types::RaftMetrics) -> GroupStatus {
        let membership = m.membership_config.membership();
        GroupStatus {
            group: group.to_string(),
            role: match m.state {
                openraft::ServerState::Leader => RaftRole::Leader,
                openraft::ServerState::Follower => RaftRole::Follower,
                openraft::ServerState::Candidate => RaftRole::Candidate,
                openraft::ServerState::Learner => RaftRole::Learner,
                openraft::ServerState::Shutdown => RaftRole::Shutdown,
            },
            term: m.current_term,
            leader: m.current_leader.clone(),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            last_log_index: m.last_log_index,
            committed_index: m.cluster_committed.as_ref().map(|l| l.index()),
            applied_index: m.last_applied.as_ref().map(|l| l.index()),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index()),
            purged_index: m.purged.as_ref().map(|l| l.index()),
            #[allow(deprecated)]
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            matched: m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, log)| (id.clone(), log.as_ref().map(|l| l.index())))
                        .collect()
                })
                .unwrap_or_default(),
            documents: 0,
            bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The errors a node can answer with, each kind with every code.
    fn every_error() -> Vec<Error> {
        let mut errors = Vec::new();
        for &code in ErrorCode::ALL {
            let message = || format!("{code} happened");
            errors.extend([
                Error::invalid(code, message()),
                Error::not_found(code, message()),
                Error::conflict(code, message()),
                Error::unavailable(code, message()),
                Error::RateLimited {
                    code,
                    message: message(),
                    retry_after: Duration::from_secs(3),
                },
            ]);
        }
        errors.extend([
            Error::PayloadTooLarge("too large".into()),
            Error::Unauthorized("who are you".into()),
            Error::Forbidden("not you".into()),
            Error::NotLeader {
                message: "ask node-2".into(),
                leader: Some("node-2".into()),
            },
            Error::Internal("a bug".into()),
        ]);
        errors
    }

    #[test]
    fn every_error_keeps_its_status_code_and_message_when_forwarded() {
        for error in every_error() {
            let wire = encode(&Result::<(), RemoteError>::Err(RemoteError::from(&error)));
            let received: Result<(), RemoteError> = decode(&wire).unwrap();
            let forwarded = Error::from(received.unwrap_err());
            assert_eq!(
                (forwarded.status(), forwarded.code(), forwarded.message()),
                (error.status(), error.code(), error.message()),
                "{error:?} became {forwarded:?}"
            );
        }
    }

    #[test]
    fn forwarding_keeps_the_leader_hint_and_the_retry_time() {
        let hint = Error::from(RemoteError::from(&Error::NotLeader {
            message: "no".into(),
            leader: Some("node-3".into()),
        }));
        assert!(matches!(hint, Error::NotLeader { leader: Some(l), .. } if l == "node-3"));
        let limited = Error::from(RemoteError::from(&Error::RateLimited {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            retry_after: Duration::from_millis(2500),
        }));
        assert!(
            matches!(limited, Error::RateLimited { retry_after, .. } if retry_after == Duration::from_millis(2500))
        );
    }
}
