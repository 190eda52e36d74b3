//! The admin API's shapes (`/admin/cluster/*`, `/admin/slow-queries`, `/ready`): what the data
//! plane answers and what the operator, the tests and users read back.
//!
//! Answers carry no defaults: a field the server stopped sending is an error on the reading
//! side, never a silent `false` or `0` that a controller would act on.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /ready` answer (200 only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyResponse {
    pub status: String,
    pub node_id: String,
    /// How many replicas on this node have a failed index: the node stays ready, as other
    /// replicas serve those shards, but they need a restart to be rebuilt (which ones:
    /// `/admin/stats/shards`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_shards: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A member's part in one Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    /// Receives the log but does not vote (a replica being added).
    Learner,
    Shutdown,
}

/// `GET /admin/cluster/leader` answer: the meta group's leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderResponse {
    pub leader: Option<String>,
    pub term: u64,
}

/// `GET /admin/cluster/status` answer: every member and every group, as the members report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: String,
    /// The meta group's leader, as the answering node knows it.
    pub leader: Option<String>,
    /// Members of the cluster (voters of the meta group).
    pub nodes: Vec<MemberStatus>,
    pub groups: Vec<GroupSummary>,
    /// Nodes admitted with `add-node` that are still catching up with the cluster's log (not
    /// members yet: a rebalance waits for them).
    #[serde(default)]
    pub joining: Vec<String>,
    /// Members below their free-disk reserve (`database.min_free_disk_mb`): writes to the
    /// shards they hold are refused with 507 until space is freed.
    #[serde(default)]
    pub low_disk: Vec<String>,
    /// Members that answer with another data directory than the one the cluster recorded
    /// (their volume was lost or replaced). They take no part in the cluster, and their
    /// replicas count as lost, until they are removed (`remove-node` with `force`) and
    /// added again as new nodes.
    #[serde(default)]
    pub data_lost: Vec<String>,
}

/// One member in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: String,
    /// Client API address.
    pub address: String,
    /// Node-to-node address.
    pub raft_address: String,
    /// It answered the status call.
    pub reachable: bool,
    /// It answers `/ready` with 200.
    pub ready: bool,
    /// Document replicas it holds (unknown when unreachable).
    pub documents: Option<u64>,
    /// Groups it leads, the meta group included (unknown when unreachable).
    pub leads: Option<usize>,
    /// Shard replicas placed on it.
    pub replicas: usize,
}

/// One Raft group in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Internal group id (`meta`, `docs/3@17`).
    pub group: String,
    /// `meta`, or `collection/shard`.
    pub name: String,
    pub leader: Option<String>,
    pub term: Option<u64>,
    pub members: Vec<GroupMemberStatus>,
}

/// One member of a group in [`GroupSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMemberStatus {
    pub node: String,
    pub role: RaftRole,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
}

/// `GET /admin/cluster/consensus` answer: each group the answering node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusResponse {
    pub node_id: String,
    pub groups: Vec<ConsensusGroup>,
}

/// One group in [`ConsensusResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusGroup {
    pub group: String,
    pub name: String,
    pub role: RaftRole,
    pub term: u64,
    pub leader: Option<String>,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// Votes needed to commit.
    pub quorum: usize,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// On the leader: each member's last replicated log index.
    pub matched: BTreeMap<String, Option<u64>>,
}

/// `GET /admin/cluster/sync-status` answer: how far each local replica has applied its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub node_id: String,
    pub ready: bool,
    pub groups: Vec<GroupSync>,
}

/// One group in [`SyncStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSync {
    pub group: String,
    pub name: String,
    pub leader: Option<String>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Last entry covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last entry purged from the log.
    pub purged_index: Option<u64>,
    /// Committed entries not applied yet.
    pub lag: u64,
    pub caught_up: bool,
}

/// `GET /admin/cluster/election-history` answer, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionHistory {
    pub node_id: String,
    pub events: Vec<LeaderEvent>,
}

/// A leadership change a node saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderEvent {
    /// RFC 3339 time.
    pub at: String,
    pub group: String,
    pub term: u64,
    pub leader: Option<String>,
}

/// `POST /admin/cluster/transfer-leadership` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeadershipRequest {
    /// Where to; without it, every group `from_node` leads goes to another of its voters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// `meta`, or `collection/shard`; every group `from_node` leads when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Whose leaderships move (default: the meta leader's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_node: Option<String>,
}

/// `POST /admin/cluster/transfer-leadership` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeadershipResponse {
    pub target_node: Option<String>,
    pub moved: Vec<MovedLeadership>,
}

/// One leadership that moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedLeadership {
    /// `meta`, or `collection/shard`.
    pub group: String,
    pub to: String,
}

/// `POST /admin/cluster/add-node` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNodeRequest {
    pub node_id: String,
    /// The new node's node-to-node address (`HOST:PORT`).
    pub address: String,
    /// The seed guide's fixed role; accepted, not used (leaders are elected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// `POST /admin/cluster/add-node` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddNodeResponse {
    pub node_id: String,
    pub address: String,
    /// `joining` until it has caught up and votes.
    pub state: String,
}

/// `POST /admin/cluster/remove-node` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveNodeRequest {
    pub node_id: String,
    /// Remove even if it breaks the replication factor or the quorum.
    #[serde(default)]
    pub force: bool,
}

/// `POST /admin/cluster/rebalance` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceRequest {
    /// `even_distribution` (default) or `leaders_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
}

/// `POST /admin/cluster/repair` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairRequest {
    /// The seed's `full_sync`; the only kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_type: Option<String>,
    /// Nodes gone for good; default: members that do not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
}

/// Answer of `remove-node`, `rebalance` and `repair`: the operation that started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationStarted {
    /// Its id, as the operations status shows it.
    pub operation: u64,
    /// Replica moves planned.
    pub moves: usize,
    /// Leaderships planned.
    pub leaders: usize,
}

/// `POST /admin/cluster/force-recovery` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceRecoveryRequest {
    /// Only `single_node`: this node becomes the only member of every group it holds.
    pub recovery_mode: String,
    /// Must be true: acknowledged writes only the lost members had applied are lost.
    #[serde(default)]
    pub accept_data_loss: bool,
}

/// `POST /admin/cluster/force-recovery` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceRecoveryResponse {
    pub recovery_mode: String,
    pub restarting: bool,
    pub message: String,
}

/// `GET /admin/cluster/{rebalance,migration,repair}-status` answer: recent operations, newest
/// first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationsStatus {
    pub node_id: String,
    /// The operation still running, if any (one runs at a time).
    pub running: Option<u64>,
    pub operations: Vec<OperationStatus>,
}

/// What an operation is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Even out replicas (`even_distribution`) or only leaders (`leaders_only`).
    Rebalance { strategy: String },
    /// Move every replica off a node, then remove it.
    Drain { node: String, force: bool },
    /// Re-create replicas of unreachable nodes elsewhere.
    Repair { nodes: Vec<String> },
}

impl OperationKind {
    /// `rebalance`, `drain` or `repair`.
    pub fn name(&self) -> &'static str {
        match self {
            OperationKind::Rebalance { .. } => "rebalance",
            OperationKind::Drain { .. } => "drain",
            OperationKind::Repair { .. } => "repair",
        }
    }
}

/// Where an operation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Running,
    Done,
    Failed { reason: String },
}

/// A replica move's phase: `pending -> adding_learner -> catching_up -> promoting -> done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    Pending,
    AddingLearner,
    CatchingUp,
    Promoting,
    Done,
}

/// One operation in [`OperationsStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationStatus {
    pub operation: u64,
    pub kind: OperationKind,
    pub state: OperationState,
    pub moves_total: usize,
    pub moves_done: usize,
    pub moves_in_progress: usize,
    /// Documents still to copy, over the moves not done.
    pub documents_left: u64,
    pub bytes_left: u64,
    pub moves: Vec<MoveStatus>,
    /// The leader wanted for each group afterwards (`collection/shard` -> node).
    pub leaders: BTreeMap<String, String>,
}

/// One replica move in [`OperationStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveStatus {
    pub id: u64,
    /// `collection/shard`.
    pub shard: String,
    /// The replica it replaces (none when it adds one).
    pub from: Option<String>,
    pub to: String,
    pub phase: MovePhase,
    pub documents_copied: u64,
    pub documents_total: u64,
    pub bytes_copied: u64,
    pub bytes_total: u64,
}

/// `GET /admin/slow-queries` answer, most recent first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowQueries {
    pub threshold_ms: u64,
    pub queries: Vec<SlowQuery>,
}

/// One search slower than `performance.slow_query_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowQuery {
    /// RFC 3339 time.
    pub at: String,
    pub collection: String,
    pub took_ms: f64,
    pub top_k: usize,
    pub ef: Option<usize>,
    pub filtered: bool,
}

/// `POST /admin/backups` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// `file:///absolute/dir` (on the node that takes the request) or `s3://bucket/prefix`.
    pub destination: String,
    /// Collections to back up; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// A caller's label kept in the backup's record (at most 256 printable characters): a
    /// caller that lost the answer finds its backup by it (the operator tags each with its
    /// GrapeBackup) instead of starting another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Where a backup or a restore is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    Running,
    Done,
    Failed,
}

/// One backup, as `GET /admin/backups/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: String,
    pub state: BackupState,
    /// Where its files are: the destination followed by the id.
    pub location: String,
    pub collections: Vec<String>,
    /// The node that runs it.
    pub coordinator: String,
    /// Unix time, milliseconds.
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// Shard files written, of all.
    pub shards_done: u32,
    pub shards_total: u32,
    /// Bytes and documents written so far (all of them once done).
    pub bytes: u64,
    pub documents: u64,
    pub error: Option<String>,
    /// The request's `tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `GET /admin/backups` answer, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupList {
    pub backups: Vec<BackupInfo>,
}

/// `DELETE /admin/backups/{id}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDeleted {
    pub id: String,
    /// Files deleted at the backup's destination.
    pub objects_deleted: u64,
}

/// `POST /admin/restore` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The destination the backup was written to (`file:///dir`, `s3://bucket/prefix`).
    pub source: String,
    /// Which backup; the newest complete one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Collections to restore; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// New names for restored collections (`{"docs": "docs_restored"}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
}

/// One restore, as `GET /admin/restore` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    /// The backup restored.
    pub backup_id: String,
    pub state: BackupState,
    pub source: String,
    /// Backed-up name -> restored name.
    pub collections: BTreeMap<String, String>,
    pub coordinator: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub documents_total: u64,
    pub documents_restored: u64,
    pub bytes_total: u64,
    pub error: Option<String>,
}

/// `GET /admin/restore` answer, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreList {
    pub restores: Vec<RestoreInfo>,
}
