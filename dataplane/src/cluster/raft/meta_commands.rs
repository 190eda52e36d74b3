//! What the meta group's log holds: commands that change the cluster's shape, their answers,
//! and the records they keep (placement, node life cycle, operations and moves).

use super::ids::{GroupId, NodeAddr, NodeId};
use crate::collection::Collection;
pub use grape_client::{
    BackupInfo, BackupState, CollectionConfig, MovePhase, OperationKind, OperationState,
    RestoreInfo,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A change to the cluster's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A node announces (or updates) where it listens, and the incarnation of its data
    /// directory (`None` from `add-node`, which does not know it yet).
    RegisterNode {
        id: NodeId,
        addr: NodeAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incarnation: Option<u64>,
    },
    /// Records a node's place in the cluster's life cycle.
    SetNodeState { id: NodeId, state: NodeState },
    /// Forgets a node that has left the cluster (its address and incarnation).
    ForgetNode { id: NodeId },
    /// A drain left `node` in `group` for want of another node to move the replica to (a
    /// forced removal): the group goes on without it.
    DropReplica { group: GroupId, node: NodeId },
    /// Starts an operation: its replica moves (run by the meta leader) and the leaders it
    /// wants afterwards.
    StartOperation {
        kind: OperationKind,
        moves: Vec<(GroupId, Option<NodeId>, NodeId)>,
        leaders: BTreeMap<GroupId, NodeId>,
    },
    /// A move reached a new phase (with progress figures).
    AdvanceMove {
        id: u64,
        phase: MovePhase,
        progress: Option<MoveProgress>,
    },
    /// A move's membership change committed: the group's replicas now include `to`, not
    /// `from`.
    CompleteMove { id: u64 },
    /// An operation finished (or failed).
    FinishOperation { id: u64, outcome: OperationState },
    /// Creates a collection and places its shards' replicas.
    CreateCollection {
        config: CollectionConfig,
        /// Identifies the proposal, so that a retry is answered, not applied again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<u64>,
    },
    /// Drops a collection and its shards.
    DropCollection {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<u64>,
    },
    /// A shard group has formed; nobody initializes it again.
    GroupInitialized { group: GroupId },
    /// A node's data volume went below its free-space reserve (`low`), or came back above it.
    SetDiskLow { node: NodeId, low: bool },
    /// Records a backup (started, progressing or ended). A new running backup is refused
    /// while another one runs.
    PutBackup { info: BackupInfo },
    /// Records a restore, likewise.
    PutRestore { info: RestoreInfo },
    /// Forgets an ended backup (its files were deleted first). Refused while it runs.
    DeleteBackup { id: String },
}

impl MetaCommand {
    /// The proposal's id, for the commands a client's retry can repeat.
    pub fn request(&self) -> Option<u64> {
        match self {
            MetaCommand::CreateCollection { request, .. }
            | MetaCommand::DropCollection { request, .. } => *request,
            _ => None,
        }
    }
}

/// What a meta command did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaResponse {
    Done,
    Created { collection: Collection },
    AlreadyExists,
    NotFound,
    Invalid { message: String },
    Started { id: u64 },
}

/// Where one shard's replicas live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub collection: String,
    pub shard: u32,
    /// Nodes holding a voting replica.
    pub replicas: Vec<NodeId>,
    /// Nodes receiving a copy (moves in progress) before they vote.
    #[serde(default)]
    pub learners: Vec<NodeId>,
    /// Whether the group has formed.
    pub initialized: bool,
    /// The node that should lead, once balanced.
    #[serde(default)]
    pub preferred_leader: Option<NodeId>,
}

/// A node's life cycle in the cluster.
///
/// ```text
///   (add-node) Joining ──caught up──> Active ──remove-node──> Draining ──moved out──> (forgotten)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Joining,
    Active,
    Draining,
}

/// A batch of replica moves and the leaders wanted after them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: u64,
    pub kind: OperationKind,
    pub state: OperationState,
    pub moves: Vec<u64>,
    pub leaders: BTreeMap<GroupId, NodeId>,
    /// Meta log index at which it started (orders operations).
    pub started_at_index: u64,
}

/// Copy progress of a move, as last observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveProgress {
    pub documents_total: u64,
    pub documents_copied: u64,
    pub bytes_total: u64,
    pub bytes_copied: u64,
}

/// One replica move: add a learner on `to`, let it catch up (snapshot), make it a voter in
/// place of `from`, then `from` drops its copy.
///
/// ```text
///   Pending -> AddingLearner -> CatchingUp -> Promoting -> Done
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub id: u64,
    pub operation: u64,
    pub group: GroupId,
    pub from: Option<NodeId>,
    pub to: NodeId,
    pub phase: MovePhase,
    pub progress: MoveProgress,
}
