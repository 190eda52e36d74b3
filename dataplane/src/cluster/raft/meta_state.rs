//! The meta group's state: which nodes exist and where they listen, which collections exist,
//! and which nodes hold each shard's replicas. Every node holds a copy; the cluster layer
//! reacts to its changes (opening or dropping local replicas).
//!
//! ```text
//!   CreateCollection ──> collection + one group per shard (replicas placed, not initialized)
//!   GroupInitialized ──> the group has formed (its replicas never re-initialize it)
//!   DropCollection   ──> collection and groups gone; every node drops its replicas
//! ```

use super::ids::{GroupId, NodeAddr, NodeId};
use super::meta_commands::{
    BackupInfo, BackupState, GroupRecord, MetaCommand, MetaResponse, MovePhase, MoveProgress,
    MoveRecord, NodeState, Operation, OperationKind, OperationState, RestoreInfo,
};
use super::types::{AppliedState, LogId};
use crate::collection::{Collection, validate_collection_config};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
    /// The last answers to commands that carry a request id (collection creates and drops),
    /// oldest first, so that a retried proposal is answered as the first time.
    #[serde(default)]
    pub answered: std::collections::VecDeque<(u64, MetaResponse)>,
    /// Nodes below their free-disk reserve: writes to the shards they hold are refused.
    #[serde(default)]
    pub low_disk: BTreeSet<NodeId>,
    /// The incarnation of each registered node's data directory (see
    /// `node::INCARNATION_RECORD`): a node answering with another one lost its data.
    #[serde(default)]
    pub incarnations: BTreeMap<NodeId, u64>,
    /// Backups, by id (ids sort by start time); the newest [`KEPT_BACKUPS`] ended ones are kept.
    #[serde(default)]
    pub backups: BTreeMap<String, BackupInfo>,
    /// Restores, by the backup restored.
    #[serde(default)]
    pub restores: BTreeMap<String, RestoreInfo>,
}

/// Ended backups (and restores) the meta state remembers.
pub const KEPT_BACKUPS: usize = 100;

/// Forgets the oldest ended records beyond [`KEPT_BACKUPS`] (keys sort oldest first).
/// The newest successful one is always kept (`grape_backup_last_success_timestamp_seconds`
/// and its alert read it).
fn prune_ended<T>(records: &mut BTreeMap<String, T>, state: impl Fn(&T) -> BackupState) {
    let newest_done = records
        .iter()
        .rev()
        .find(|(_, r)| state(r) == BackupState::Done)
        .map(|(k, _)| k.clone());
    let ended: Vec<String> = records
        .iter()
        .filter(|(k, r)| state(r) != BackupState::Running && Some(*k) != newest_done.as_ref())
        .map(|(k, _)| k.clone())
        .collect();
    for key in ended.iter().take(ended.len().saturating_sub(KEPT_BACKUPS)) {
        records.remove(key);
    }
}

/// Answers [`MetaState::answered`] keeps.
const REMEMBERED: usize = 256;

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

    /// Nodes admitted with `add-node` that are still catching up (learners of the meta group).
    pub fn joining(&self) -> Vec<NodeId> {
        self.node_states
            .iter()
            .filter(|(_, s)| **s == NodeState::Joining)
            .map(|(n, _)| n.clone())
            .collect()
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

    pub(super) fn apply(&mut self, log_id: &LogId, command: MetaCommand) -> MetaResponse {
        let request = command.request();
        if let Some(id) = request
            && let Some((_, first)) = self.answered.iter().find(|(seen, _)| *seen == id)
        {
            return first.clone();
        }
        let response = self.apply_command(log_id, command);
        if let Some(id) = request {
            self.answered.push_back((id, response.clone()));
            while self.answered.len() > REMEMBERED {
                self.answered.pop_front();
            }
        }
        response
    }

    fn apply_command(&mut self, log_id: &LogId, command: MetaCommand) -> MetaResponse {
        match command {
            MetaCommand::RegisterNode {
                id,
                addr,
                incarnation,
            } => {
                if let Some(incarnation) = incarnation {
                    match self.incarnations.get(&id) {
                        Some(known) if *known != incarnation => {
                            return MetaResponse::Invalid {
                                message: format!(
                                    "{id}'s data directory was replaced: remove it and add it again"
                                ),
                            };
                        }
                        _ => {
                            self.incarnations.insert(id.clone(), incarnation);
                        }
                    }
                }
                self.nodes.insert(id, addr);
                MetaResponse::Done
            }
            MetaCommand::CreateCollection { config, .. } => {
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
            MetaCommand::DropCollection { name, .. } => match self.collections.remove(&name) {
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
            MetaCommand::SetDiskLow { node, low } => {
                if low && !self.members().contains(&node) {
                    // A node that left (or never joined) holds nothing to protect.
                    return MetaResponse::NotFound;
                }
                if low {
                    self.low_disk.insert(node);
                } else {
                    self.low_disk.remove(&node);
                }
                MetaResponse::Done
            }
            MetaCommand::PutBackup { info } => {
                let running_other = self
                    .backups
                    .values()
                    .find(|b| b.state == BackupState::Running && b.id != info.id);
                if info.state == BackupState::Running
                    && !self.backups.contains_key(&info.id)
                    && let Some(other) = running_other
                {
                    return MetaResponse::Invalid {
                        message: format!(
                            "backup {} is running (on {}); one backup runs at a time",
                            other.id, other.coordinator
                        ),
                    };
                }
                if self
                    .backups
                    .get(&info.id)
                    .is_some_and(|known| known.state != BackupState::Running)
                {
                    // An ended backup stays as it ended (a late progress report).
                    return MetaResponse::Done;
                }
                self.backups.insert(info.id.clone(), info);
                prune_ended(&mut self.backups, |b| b.state);
                MetaResponse::Done
            }
            MetaCommand::PutRestore { info } => {
                if info.state == BackupState::Running
                    && let Some(other) = self
                        .restores
                        .values()
                        .find(|r| r.state == BackupState::Running && r.backup_id != info.backup_id)
                {
                    return MetaResponse::Invalid {
                        message: format!(
                            "the restore of backup {} is running (on {}); one restore runs at a time",
                            other.backup_id, other.coordinator
                        ),
                    };
                }
                self.restores.insert(info.backup_id.clone(), info);
                prune_ended(&mut self.restores, |r| r.state);
                MetaResponse::Done
            }
            MetaCommand::DeleteBackup { id } => match self.backups.get(&id) {
                None => MetaResponse::NotFound,
                // A running backup whose coordinator left the cluster never ends by itself.
                Some(b)
                    if b.state == BackupState::Running
                        && self.members().contains(&b.coordinator) =>
                {
                    MetaResponse::Invalid {
                        message: format!("backup {id} is running; delete it once it has ended"),
                    }
                }
                Some(_) => {
                    self.backups.remove(&id);
                    MetaResponse::Done
                }
            },
            MetaCommand::ForgetNode { id } => {
                self.low_disk.remove(&id);
                self.node_states.remove(&id);
                self.nodes.remove(&id);
                self.incarnations.remove(&id);
                MetaResponse::Done
            }
            MetaCommand::DropReplica { group, node } => {
                if let Some(record) = self.groups.get_mut(&group) {
                    record.replicas.retain(|r| *r != node);
                    record.learners.retain(|r| *r != node);
                    if record.preferred_leader.as_ref() == Some(&node) {
                        record.preferred_leader = None;
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_drop_is_answered_as_the_first_time() {
        let mut state = MetaState::default();
        let config = grape_client::CollectionConfig::new("docs", 4);
        state
            .collections
            .insert("docs".into(), Collection { config, uid: 1 });
        let log_id = LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: "a".to_string(),
            },
            1,
        );
        let drop = |request| MetaCommand::DropCollection {
            name: "docs".into(),
            request,
        };
        assert!(matches!(
            state.apply(&log_id, drop(Some(7))),
            MetaResponse::Done
        ));
        assert!(
            matches!(state.apply(&log_id, drop(Some(7))), MetaResponse::Done),
            "the retry gets the first answer"
        );
        assert!(matches!(
            state.apply(&log_id, drop(Some(8))),
            MetaResponse::NotFound
        ));
        assert!(matches!(
            state.apply(&log_id, drop(None)),
            MetaResponse::NotFound
        ));
        // Bounded: the oldest answers are forgotten.
        for id in 100..100 + REMEMBERED as u64 {
            state.apply(&log_id, drop(Some(id)));
        }
        assert_eq!(state.answered.len(), REMEMBERED);
        assert!(matches!(
            state.apply(&log_id, drop(Some(7))),
            MetaResponse::NotFound
        ));
    }

    #[test]
    fn a_running_backup_cannot_be_forgotten_an_ended_one_can() {
        let mut state = MetaState::default();
        let log_id = LogId::new(
            openraft::impls::leader_id_adv::LeaderId {
                term: 1,
                node_id: "a".to_string(),
            },
            1,
        );
        let mut info = grape_client::BackupInfo {
            id: "20261203T000000Z-0001".into(),
            state: BackupState::Running,
            location: "file:///backups/20261203T000000Z-0001".into(),
            collections: vec!["default".into()],
            coordinator: "a".into(),
            started_ms: 1,
            finished_ms: None,
            shards_done: 0,
            shards_total: 1,
            bytes: 0,
            documents: 0,
            error: None,
            tag: None,
        };
        let delete = || MetaCommand::DeleteBackup {
            id: "20261203T000000Z-0001".into(),
        };
        let members = |ids: &[&str]| {
            super::super::types::StoredMembership::new(
                None,
                ids.iter()
                    .map(|id| (id.to_string(), super::super::ids::NodeAddr::default()))
                    .collect::<BTreeMap<NodeId, _>>()
                    .into(),
            )
        };
        state.applied.membership = members(&["a", "b"]);
        state.apply(&log_id, MetaCommand::PutBackup { info: info.clone() });
        assert!(matches!(
            state.apply(&log_id, delete()),
            MetaResponse::Invalid { .. }
        ));
        assert!(state.backups.contains_key(&info.id));
        // Its coordinator left the cluster: it will never end, and may go.
        state.applied.membership = members(&["b"]);
        assert!(matches!(state.apply(&log_id, delete()), MetaResponse::Done));
        state.applied.membership = members(&["a", "b"]);
        state.apply(&log_id, MetaCommand::PutBackup { info: info.clone() });
        info.state = BackupState::Failed;
        state.apply(&log_id, MetaCommand::PutBackup { info: info.clone() });
        assert!(matches!(state.apply(&log_id, delete()), MetaResponse::Done));
        assert!(state.backups.is_empty());
        assert!(matches!(
            state.apply(&log_id, delete()),
            MetaResponse::NotFound
        ));
    }

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
