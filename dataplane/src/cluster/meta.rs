//! The meta group's state machine: which nodes exist and where they listen, which collections
//! exist, and which nodes hold each shard's replicas. Every node holds a copy; the cluster
//! layer reacts to its changes (opening or dropping local replicas).
//!
//! ```text
//!   CreateCollection ──> collection + one group per shard (replicas placed, not initialized)
//!   GroupInitialized ──> the group has formed (its replicas never re-initialize it)
//!   DropCollection   ──> collection and groups gone; every node drops its replicas
//! ```

use super::types::{
    AppliedState, GroupId, LogId, NodeAddr, NodeId, Request, Response, Snapshot, SnapshotData,
    SnapshotMeta, StoredMembership, TypeConfig, decode, encode,
};
use crate::collection::{Collection, validate_collection_config};
use crate::storage::{Changes, Storage};
use futures::{Stream, TryStreamExt};
pub use grape_client::{CollectionConfig, MovePhase, OperationKind, OperationState};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use tokio::sync::watch;

/// A change to the cluster's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A node announces (or updates) where it listens.
    RegisterNode { id: NodeId, addr: NodeAddr },
    /// Records a node's place in the cluster's life cycle.
    SetNodeState { id: NodeId, state: NodeState },
    /// Forgets a node that has left the cluster.
    ForgetNode { id: NodeId },
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
    CreateCollection { config: CollectionConfig },
    /// Drops a collection and its shards.
    DropCollection { name: String },
    /// A shard group has formed; nobody initializes it again.
    GroupInitialized { group: GroupId },
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

/// The replicated cluster description.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetaState {
    pub applied: AppliedState,
    /// Nodes that announced their addresses.
    pub nodes: BTreeMap<NodeId, NodeAddr>,
    /// Life-cycle state of nodes added or being removed (members not listed are active).
    #[serde(default)]
    pub node_states: BTreeMap<NodeId, NodeState>,
    pub collections: BTreeMap<String, Collection>,
    pub groups: BTreeMap<GroupId, GroupRecord>,
    #[serde(default)]
    pub operations: BTreeMap<u64, Operation>,
    #[serde(default)]
    pub moves: BTreeMap<u64, MoveRecord>,
}

impl MetaState {
    /// Voters of the meta group: the cluster's members.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.applied.membership.membership().voter_ids().collect()
    }

    /// Groups of which `node` holds a replica.
    pub fn groups_of<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = (&'a GroupId, &'a GroupRecord)> + 'a {
        self.groups
            .iter()
            .filter(move |(_, g)| g.replicas.iter().any(|r| r == node))
    }

    /// Groups of which `node` holds (or is receiving) a copy.
    pub fn copies_on<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = (&'a GroupId, &'a GroupRecord)> + 'a {
        self.groups.iter().filter(move |(_, g)| {
            g.replicas
                .iter()
                .chain(g.learners.iter())
                .any(|r| r == node)
        })
    }

    /// A node's life-cycle state (members are active unless recorded otherwise).
    pub fn node_state(&self, node: &str) -> NodeState {
        self.node_states
            .get(node)
            .copied()
            .unwrap_or(NodeState::Active)
    }

    /// Members that may receive replicas: active ones.
    pub fn placeable(&self) -> BTreeSet<NodeId> {
        self.members()
            .into_iter()
            .filter(|m| self.node_state(m) == NodeState::Active)
            .collect()
    }

    /// The operation still running, if any (one runs at a time).
    pub fn running_operation(&self) -> Option<&Operation> {
        self.operations
            .values()
            .find(|o| o.state == OperationState::Running)
    }

    fn apply(&mut self, log_id: &LogId, command: MetaCommand) -> MetaResponse {
        match command {
            MetaCommand::RegisterNode { id, addr } => {
                self.nodes.insert(id, addr);
                MetaResponse::Done
            }
            MetaCommand::CreateCollection { config } => {
                if self.collections.contains_key(&config.name) {
                    return MetaResponse::AlreadyExists;
                }
                if let Err(e) = validate_collection_config(&config) {
                    return MetaResponse::Invalid {
                        message: e.message(),
                    };
                }
                let members: Vec<NodeId> = self.placeable().into_iter().collect();
                if members.is_empty() {
                    return MetaResponse::Invalid {
                        message: "the cluster has no members".into(),
                    };
                }
                let collection = Collection {
                    config,
                    uid: log_id.index(),
                };
                for shard in collection.shard_ids() {
                    let replicas = place(&members, shard, collection.config.replication_factor);
                    self.groups.insert(
                        collection.group(shard),
                        GroupRecord {
                            collection: collection.name().to_string(),
                            shard,
                            preferred_leader: replicas.first().cloned(),
                            replicas,
                            learners: Vec::new(),
                            initialized: false,
                        },
                    );
                }
                self.collections
                    .insert(collection.name().to_string(), collection.clone());
                MetaResponse::Created { collection }
            }
            MetaCommand::DropCollection { name } => match self.collections.remove(&name) {
                Some(_) => {
                    self.groups.retain(|_, g| g.collection != name);
                    // Moves of the dropped groups have nothing left to do.
                    let groups = &self.groups;
                    for record in self.moves.values_mut() {
                        if !groups.contains_key(&record.group) {
                            record.phase = MovePhase::Done;
                        }
                    }
                    MetaResponse::Done
                }
                None => MetaResponse::NotFound,
            },
            MetaCommand::GroupInitialized { group } => match self.groups.get_mut(&group) {
                Some(record) => {
                    record.initialized = true;
                    MetaResponse::Done
                }
                None => MetaResponse::NotFound,
            },
            MetaCommand::SetNodeState { id, state } => {
                if state == NodeState::Active {
                    self.node_states.remove(&id);
                } else {
                    self.node_states.insert(id, state);
                }
                MetaResponse::Done
            }
            MetaCommand::ForgetNode { id } => {
                self.node_states.remove(&id);
                self.nodes.remove(&id);
                MetaResponse::Done
            }
            MetaCommand::StartOperation {
                kind,
                moves,
                leaders,
            } => {
                if self.running_operation().is_some() {
                    return MetaResponse::Invalid {
                        message: "another rebalance, drain or repair is running".into(),
                    };
                }
                let id = log_id.index();
                let mut move_ids = Vec::with_capacity(moves.len());
                for (i, (group, from, to)) in moves.into_iter().enumerate() {
                    let move_id = id * 10_000 + i as u64;
                    self.moves.insert(
                        move_id,
                        MoveRecord {
                            id: move_id,
                            operation: id,
                            group,
                            from,
                            to,
                            phase: MovePhase::Pending,
                            progress: MoveProgress::default(),
                        },
                    );
                    move_ids.push(move_id);
                }
                for (group, leader) in &leaders {
                    if let Some(record) = self.groups.get_mut(group) {
                        record.preferred_leader = Some(leader.clone());
                    }
                }
                if let OperationKind::Drain { node, .. } = &kind {
                    self.node_states.insert(node.clone(), NodeState::Draining);
                }
                self.operations.insert(
                    id,
                    Operation {
                        id,
                        kind,
                        state: OperationState::Running,
                        moves: move_ids,
                        leaders,
                        started_at_index: id,
                    },
                );
                // Keep the history short: the last 20 operations.
                while self.operations.len() > 20 {
                    let oldest = *self.operations.keys().next().expect("not empty");
                    if let Some(done) = self.operations.remove(&oldest) {
                        for m in done.moves {
                            self.moves.remove(&m);
                        }
                    }
                }
                MetaResponse::Started { id }
            }
            MetaCommand::AdvanceMove {
                id,
                phase,
                progress,
            } => match self.moves.get_mut(&id) {
                Some(record) => {
                    if phase == MovePhase::AddingLearner
                        && let Some(group) = self.groups.get_mut(&record.group)
                        && !group.learners.contains(&record.to)
                        && !group.replicas.contains(&record.to)
                    {
                        group.learners.push(record.to.clone());
                    }
                    if record.phase != phase {
                        tracing::info!(id, group = %record.group, from = ?record.from, to = %record.to, ?phase, "move");
                    }
                    record.phase = phase;
                    if let Some(progress) = progress {
                        record.progress = progress;
                    }
                    MetaResponse::Done
                }
                None => MetaResponse::NotFound,
            },
            MetaCommand::CompleteMove { id } => match self.moves.get_mut(&id) {
                Some(record) => {
                    if let Some(group) = self.groups.get_mut(&record.group) {
                        group.learners.retain(|l| *l != record.to);
                        if let Some(from) = &record.from {
                            group.replicas.retain(|r| r != from);
                        }
                        if !group.replicas.contains(&record.to) {
                            group.replicas.push(record.to.clone());
                        }
                    }
                    record.phase = MovePhase::Done;
                    record.progress.documents_copied = record.progress.documents_total;
                    record.progress.bytes_copied = record.progress.bytes_total;
                    MetaResponse::Done
                }
                None => MetaResponse::NotFound,
            },
            MetaCommand::FinishOperation { id, outcome } => match self.operations.get_mut(&id) {
                Some(operation) => {
                    operation.state = outcome;
                    if let OperationKind::Drain { node, .. } = &operation.kind
                        && operation.state != OperationState::Done
                    {
                        // A failed drain leaves the node active again.
                        self.node_states.remove(node);
                    }
                    MetaResponse::Done
                }
                None => MetaResponse::NotFound,
            },
        }
    }
}

/// Replicas of `shard` over sorted `members`: consecutive members starting at the shard's
/// position, so shards (and preferred leaders) spread evenly.
pub fn place(members: &[NodeId], shard: u32, replication_factor: u32) -> Vec<NodeId> {
    let n = members.len();
    let count = (replication_factor as usize).min(n);
    (0..count)
        .map(|i| members[(shard as usize + i) % n].clone())
        .collect()
}

/// The meta state machine: the state, shared with the node, and where it is persisted.
#[derive(Clone)]
pub struct MetaStateMachine {
    state: Arc<RwLock<MetaState>>,
    storage: Arc<Storage>,
    /// Bumped after every apply, so the node can react.
    changes: Arc<watch::Sender<u64>>,
}

const RECORD: &str = "meta_state";

impl MetaStateMachine {
    /// Loads the persisted state (empty on first start).
    pub fn open(storage: Arc<Storage>) -> io::Result<MetaStateMachine> {
        let state = match storage.node_record(RECORD).map_err(io::Error::other)? {
            Some(bytes) => {
                decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            }
            None => MetaState::default(),
        };
        Ok(MetaStateMachine {
            state: Arc::new(RwLock::new(state)),
            storage,
            changes: Arc::new(watch::channel(0).0),
        })
    }

    /// The shared state.
    pub fn state(&self) -> Arc<RwLock<MetaState>> {
        Arc::clone(&self.state)
    }

    /// Notified after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn persist(&self, state: &MetaState) -> io::Result<()> {
        let mut changes = Changes::default();
        changes.put_node_record(&self.storage, RECORD, &encode(state));
        self.storage.commit(changes).map_err(io::Error::other)
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let state = self.state.read().clone();
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: state.applied.last_applied.clone(),
                last_membership: state.applied.membership.clone(),
            },
            snapshot: std::io::Cursor::new(encode(&state)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = self.state.read();
        Ok((
            state.applied.last_applied.clone(),
            state.applied.membership.clone(),
        ))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let mut next = self.state.read().clone();
        let mut answers = Vec::with_capacity(entries.len());
        for (entry, responder) in entries {
            let log_id = entry.log_id();
            let response = match entry.payload {
                EntryPayload::Normal(Request::Meta(command)) => {
                    Response::Meta(next.apply(&log_id, command))
                }
                EntryPayload::Membership(membership) => {
                    next.applied.membership =
                        StoredMembership::new(Some(log_id.clone()), membership);
                    Response::None
                }
                EntryPayload::Normal(Request::Shard(_)) | EntryPayload::Blank => Response::None,
            };
            next.applied.last_applied = Some(log_id);
            answers.push((responder, response));
        }
        self.persist(&next)?;
        *self.state.write() = next;
        self.changed();
        for (responder, response) in answers {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let mut state: MetaState = decode(snapshot.get_ref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        state.applied.last_applied = meta.last_log_id.clone();
        state.applied.membership = meta.last_membership.clone();
        self.persist(&state)?;
        *self.state.write() = state;
        self.changed();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        // The meta state is small: a current snapshot is built on demand.
        if self.state.read().applied.last_applied.is_none() {
            return Ok(None);
        }
        Ok(Some(self.build_snapshot().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_replicas_and_leaders_evenly() {
        let members: Vec<NodeId> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut replicas = BTreeMap::<&str, usize>::new();
        let mut leaders = BTreeMap::<&str, usize>::new();
        for shard in 0..16 {
            let placed = place(&members, shard, 3);
            assert_eq!(placed.len(), 3);
            assert_eq!(
                placed.iter().collect::<BTreeSet<_>>().len(),
                3,
                "distinct replicas"
            );
            *leaders
                .entry(members.iter().find(|m| **m == placed[0]).unwrap())
                .or_default() += 1;
            for r in &placed {
                *replicas
                    .entry(members.iter().find(|m| *m == r).unwrap())
                    .or_default() += 1;
            }
        }
        assert!(
            replicas.values().all(|n| (9..=10).contains(n)),
            "{replicas:?}"
        );
        assert!(leaders.values().all(|n| (3..=4).contains(n)), "{leaders:?}");
        assert_eq!(
            place(&members[..2], 0, 3).len(),
            2,
            "never more replicas than members"
        );
    }
}
