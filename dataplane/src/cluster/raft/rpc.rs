//! The contract between nodes: every node-to-node call is a type that names its path, what it
//! sends and what it answers. The caller ([`Peers::call`]) and the server (`cluster::server`)
//! both take the path from the type, and the server registers a handler for every
//! [`RpcKind`] in one exhaustive match, so a call cannot exist on one side only.
//!
//! Bodies are MessagePack; every answer is `Result<Response, RemoteError>`.
//!
//! [`Peers::call`]: super::peers::Peers::call

use super::ids::{GroupId, NodeAddr, NodeId};
use super::snapshot::Whole;
use super::types::{RaftMetrics, Request, Response, SnapshotMeta, TypeConfig, Vote};
use crate::cluster::backup::export::ExportChunk;
use crate::collection::Collection;
use crate::error::{Error, ErrorCode};
use crate::shard::ShardHit;
use grape_client::{
    AddNodeResponse, Document, OperationStarted, RaftRole, SearchRequest, ShardChecksum,
};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

macro_rules! rpc_kinds {
    ($($(#[doc = $doc:literal])* $kind:ident = $path:literal,)*) => {
        /// Every node-to-node call, by the path it is served on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum RpcKind {
            $($(#[doc = $doc])* $kind,)*
        }

        impl RpcKind {
            /// Every kind, each once.
            pub const ALL: &'static [RpcKind] = &[$(RpcKind::$kind,)*];

            /// Where the call is served on `node.raft_address`.
            pub fn path(self) -> &'static str {
                match self {
                    $(RpcKind::$kind => $path,)*
                }
            }
        }
    };
}

rpc_kinds! {
    /// Raft: replicate log entries (and heartbeats).
    Append = "/raft/append",
    /// Raft: ask for a vote.
    Vote = "/raft/vote",
    /// Raft: ask whether a vote would be granted, without disturbing the leader.
    PreVote = "/raft/pre-vote",
    /// Raft: install a whole snapshot sent in one call (what nodes of earlier versions send).
    Snapshot = "/raft/snapshot",
    /// Raft: one chunk of a snapshot; the last one installs it.
    SnapshotChunk = "/raft/snapshot-chunk",
    /// Raft: the leader hands its leadership to this node.
    TransferLeader = "/raft/transfer-leader",
    /// This node's view of itself and its groups.
    Status = "/internal/status",
    /// Liveness, for `grape_cluster_nodes_connected`.
    Ping = "/internal/ping",
    /// A write forwarded to the group's leader.
    Propose = "/internal/propose",
    /// A document read from a replica.
    Get = "/internal/get",
    /// A page of a replica's documents.
    List = "/internal/list",
    /// A search of some shards' replicas.
    Search = "/internal/search",
    /// Form a new group with an exact membership.
    InitGroup = "/internal/init-group",
    /// Ask a group's leader to hand over to another replica.
    HandOver = "/internal/transfer",
    /// Content checksums of the replicas held.
    Checksums = "/internal/checksums",
    /// An administrative request for the meta leader.
    Admin = "/internal/admin",
    /// A membership change for a group's leader.
    Membership = "/internal/membership",
    /// A backup pauses (or resumes) writes on this node for its cut.
    BackupHold = "/internal/backup-hold",
    /// The next chunk of a shard this node exports for a backup.
    BackupChunk = "/internal/backup-chunk",
}

/// One node-to-node call: the request type itself, with its kind and its answer.
pub trait Rpc: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Which call this is (its path).
    const KIND: RpcKind;
    /// What the callee answers on success.
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// A call without arguments: on the wire a MessagePack nil, as `()` (what nodes of earlier
/// versions send and expect), not the empty array serde makes of a unit struct.
macro_rules! nil_request {
    ($request:ident) => {
        #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
        #[serde(from = "()", into = "()")]
        pub struct $request;

        impl From<()> for $request {
            fn from((): ()) -> Self {
                $request
            }
        }

        impl From<$request> for () {
            fn from(_: $request) {}
        }
    };
}

macro_rules! rpc {
    ($request:ty, $kind:ident, $response:ty) => {
        impl Rpc for $request {
            const KIND: RpcKind = RpcKind::$kind;
            type Response = $response;
        }
    };
}

/// Raft entries for one group.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppendRpc {
    pub group: GroupId,
    pub rpc: AppendEntriesRequest<TypeConfig>,
}
rpc!(AppendRpc, Append, AppendEntriesResponse<TypeConfig>);

/// A vote request for one group.
#[derive(Debug, Serialize, Deserialize)]
pub struct VoteRpc {
    pub group: GroupId,
    pub rpc: VoteRequest<TypeConfig>,
}
rpc!(VoteRpc, Vote, VoteResponse<TypeConfig>);

/// A pre-vote request for one group.
#[derive(Debug, Serialize, Deserialize)]
pub struct PreVoteRpc {
    pub group: GroupId,
    pub rpc: VoteRequest<TypeConfig>,
}
rpc!(PreVoteRpc, PreVote, VoteResponse<TypeConfig>);

/// A whole snapshot for one group.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRpc {
    pub group: GroupId,
    pub vote: Vote,
    pub meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}
rpc!(SnapshotRpc, Snapshot, SnapshotResponse<TypeConfig>);

/// A chunk of a snapshot of one group, at `offset` of transfer `transfer`; the last chunk
/// carries `finish` and is answered once the snapshot is installed (`None` before that).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunkRpc {
    pub group: GroupId,
    /// Chosen by the sender for each attempt; chunks of other attempts are refused.
    pub transfer: u64,
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub finish: Option<SnapshotFinish>,
}
rpc!(
    SnapshotChunkRpc,
    SnapshotChunk,
    Option<SnapshotResponse<TypeConfig>>
);

/// What the last chunk of a snapshot carries.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotFinish {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    /// Length and digest of the whole data, checked before it is installed.
    pub whole: Whole,
}

/// Raft's own leadership hand-off message for one group.
#[derive(Debug, Serialize, Deserialize)]
pub struct TransferLeaderRpc {
    pub group: GroupId,
    pub rpc: TransferLeaderRequest<TypeConfig>,
}
rpc!(
    TransferLeaderRpc,
    TransferLeader,
    TransferLeaderResponse<TypeConfig>
);

nil_request!(StatusRpc);
rpc!(StatusRpc, Status, NodeStatus);

nil_request!(PingRpc);
rpc!(PingRpc, Ping, NodeId);

/// A client write forwarded to a group's leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProposeRpc {
    pub group: GroupId,
    pub request: Request,
}
rpc!(ProposeRpc, Propose, Response);

/// A read of one document from a replica.
#[derive(Debug, Serialize, Deserialize)]
pub struct GetRpc {
    pub group: GroupId,
    pub id: String,
    /// Read on the leader after read-index.
    pub strong: bool,
}
rpc!(GetRpc, Get, Option<Document>);

/// A page of one replica's documents.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListRpc {
    pub group: GroupId,
    pub after: Option<String>,
    pub limit: usize,
}
rpc!(ListRpc, List, Vec<Document>);

/// A search of some shards' replicas on one node.
#[derive(Debug, Serialize, Deserialize)]
pub struct SearchRpc {
    pub collection: Collection,
    pub shards: Vec<u32>,
    pub request: SearchRequest,
    /// Search on the leader after read-index.
    pub strong: bool,
}
rpc!(SearchRpc, Search, Vec<RemoteHit>);

/// One hit from a peer, with the stored vector when the search asked for vectors.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteHit {
    pub hit: ShardHit,
    pub vector: Option<Vec<f32>>,
}

/// The controller asks a replica to form a new group with this exact membership.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitGroupRpc {
    pub group: GroupId,
    pub members: BTreeMap<NodeId, NodeAddr>,
}
rpc!(InitGroupRpc, InitGroup, ());

/// Asks the leader of `group` to hand its leadership to `target`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandOverRpc {
    pub group: GroupId,
    pub target: NodeId,
}
rpc!(HandOverRpc, HandOver, ());

nil_request!(ChecksumsRpc);
rpc!(ChecksumsRpc, Checksums, Vec<ShardChecksum>);

/// An administrative request that the meta leader carries out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRpc {
    AddNode { id: NodeId, address: String },
    RemoveNode { id: NodeId, force: bool },
    Rebalance { strategy: String },
    Repair { nodes: Vec<NodeId> },
}
rpc!(AdminRpc, Admin, AdminAnswer);

/// What the meta leader answers to an [`AdminRpc`]: on the wire the answer itself (untagged,
/// the variants have disjoint fields), as nodes of earlier versions send and expect it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdminAnswer {
    /// To `AddNode`.
    Added(AddNodeResponse),
    /// To `RemoveNode`, `Rebalance` and `Repair`.
    Started(OperationStarted),
}

/// A membership change for one group, carried out by its leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipRpc {
    AddLearner {
        group: GroupId,
        node: NodeId,
        addr: NodeAddr,
    },
    SetVoters {
        group: GroupId,
        voters: BTreeSet<NodeId>,
    },
}
rpc!(MembershipRpc, Membership, ());

/// A backup's coordinator pauses writes on this node (`pause`), or resumes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupHoldRpc {
    pub backup: String,
    pub pause: bool,
}
// Answers, to a resume, whether the pause was still held (its lease had not run out).
rpc!(BackupHoldRpc, BackupHold, bool);

/// A backup's coordinator pulls chunk `seq` of the export of `group`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupChunkRpc {
    pub backup: String,
    pub group: GroupId,
    pub seq: u64,
}
rpc!(BackupChunkRpc, BackupChunk, ExportChunk);

/// What a node reports about itself and the groups it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub addr: NodeAddr,
    pub ready: bool,
    pub meta_initialized: bool,
    pub documents: u64,
    pub groups: Vec<GroupStatus>,
    /// Its data directory's incarnation (absent from nodes of earlier versions).
    #[serde(default)]
    pub incarnation: Option<u64>,
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
    pub matched: BTreeMap<NodeId, Option<u64>>,
    /// Documents this member's replica holds (shard groups).
    pub documents: u64,
    /// Stored bytes of those documents.
    pub bytes: u64,
    /// On the leader: bytes sent so far of each snapshot in flight, by target.
    #[serde(default)]
    pub snapshot_sent: BTreeMap<NodeId, u64>,
}

impl GroupStatus {
    pub fn from_metrics(group: &str, m: &RaftMetrics) -> GroupStatus {
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
            snapshot_sent: BTreeMap::new(),
        }
    }
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
                retry_after: Duration::from_millis(retry_after_ms.unwrap_or(1000)),
            },
            (503, code) => Error::Unavailable { code, message },
            (507, _) => Error::InsufficientStorage(message),
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

#[cfg(test)]
mod tests {
    use super::super::types::{decode, encode};
    use super::*;

    #[test]
    fn calls_without_arguments_travel_as_nil_like_earlier_versions_sent_them() {
        let nil = encode(&());
        assert_eq!(encode(&StatusRpc), nil);
        assert_eq!(encode(&PingRpc), nil);
        assert_eq!(encode(&ChecksumsRpc), nil);
        let _: StatusRpc = decode(&nil).unwrap();
    }

    #[test]
    fn an_admin_answer_travels_as_the_bare_answer() {
        let started = OperationStarted {
            operation: 7,
            moves: 3,
            leaders: 2,
        };
        let wire = encode(&AdminAnswer::Started(started.clone()));
        // An earlier node sent (and reads) the answer as a plain map.
        let map: serde_json::Value = decode(&wire).unwrap();
        assert_eq!(map["operation"], 7);
        let old: serde_json::Value = serde_json::to_value(&started).unwrap();
        match decode::<AdminAnswer>(&encode(&old)).unwrap() {
            AdminAnswer::Started(read) => assert_eq!(read, started),
            other => panic!("read back as {other:?}"),
        }
        let added = AddNodeResponse {
            node_id: "node-4".into(),
            address: "10.0.0.4:9000".into(),
            state: "joining".into(),
        };
        assert!(matches!(
            decode::<AdminAnswer>(&encode(&AdminAnswer::Added(added))).unwrap(),
            AdminAnswer::Added(_)
        ));
    }

    #[test]
    fn every_kind_has_its_own_path() {
        let paths: BTreeSet<&str> = RpcKind::ALL.iter().map(|k| k.path()).collect();
        assert_eq!(paths.len(), RpcKind::ALL.len());
        assert!(
            paths
                .iter()
                .all(|p| p.starts_with("/raft/") || p.starts_with("/internal/"))
        );
    }

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
