//! Elasticity: adding and removing nodes, rebalancing, repair. Every decision and every step is
//! recorded in the meta group, and the meta leader's controller executes the recorded moves,
//! so an operation survives the restart of any node (the next leader resumes it).

use super::Node;
use super::meta::{
    MetaCommand, MetaResponse, MetaState, MovePhase, MoveProgress, MoveRecord, NodeState,
    OperationKind, OperationState,
};
use super::network::{GroupStatus, NodeStatus};
use super::placement::{plan_leaders, plan_replicas};
use super::types::{GroupId, META_GROUP, NodeAddr, NodeId, Request, Response};
use crate::config::parse_host_port;
use crate::error::{Error, ErrorCode, Result};
use grape_client::{
    AddNodeResponse, MoveStatus, OperationStarted, OperationStatus, OperationsStatus, RaftRole,
};
use openraft::type_config::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// An administrative request that the meta leader carries out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRpc {
    AddNode { id: NodeId, address: String },
    RemoveNode { id: NodeId, force: bool },
    Rebalance { strategy: String },
    Repair { nodes: Vec<NodeId> },
}

/// What the meta leader answers to an [`AdminRpc`].
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Log entries a learner may trail its leader by and still be promoted.
const CATCH_UP_SLACK: u64 = 16;

impl Node {
    /// Runs an administrative request on the meta leader (forwarding it there if needed).
    pub async fn admin(self: &Arc<Self>, request: AdminRpc) -> Result<AdminAnswer> {
        match self.meta_metrics().current_leader {
            Some(leader) if leader == self.id => self.admin_here(request).await,
            Some(leader) => self
                .router
                .peers
                .call(
                    &leader,
                    "/internal/admin",
                    &request,
                    Duration::from_secs(30),
                )
                .await
                .map_err(Error::from),
            None => Err(Error::unavailable(
                ErrorCode::NoLeader,
                "the cluster has no leader",
            )),
        }
    }

    /// Carries out an administrative request; this node must lead the meta group.
    pub(super) async fn admin_here(self: &Arc<Self>, request: AdminRpc) -> Result<AdminAnswer> {
        if !self.is_meta_leader() {
            return Err(Error::NotLeader {
                message: format!("{} does not lead the cluster", self.id),
                leader: self.leader_of(META_GROUP),
            });
        }
        match request {
            AdminRpc::AddNode { id, address } => {
                self.add_node(id, address).await.map(AdminAnswer::Added)
            }
            AdminRpc::RemoveNode { id, force } => {
                self.remove_node(id, force).await.map(AdminAnswer::Started)
            }
            AdminRpc::Rebalance { strategy } => {
                self.rebalance(&strategy).await.map(AdminAnswer::Started)
            }
            AdminRpc::Repair { nodes } => self.repair(nodes).await.map(AdminAnswer::Started),
        }
    }

    async fn meta_command(&self, command: MetaCommand) -> Result<MetaResponse> {
        match self.propose(META_GROUP, Request::Meta(command)).await? {
            Response::Meta(response) => Ok(response),
            other => Err(Error::Internal(format!("meta answered {other:?}"))),
        }
    }

    /// Adds a member that holds nothing yet: a learner of the meta group until it has caught
    /// up, then a voter. Replicas reach it only through a rebalance.
    async fn add_node(&self, id: NodeId, address: String) -> Result<AddNodeResponse> {
        if id.is_empty() || parse_host_port(&address).is_none() {
            return Err(Error::invalid(
                ErrorCode::InvalidRequest,
                "add-node needs a node_id and an address (HOST:PORT of its node-to-node listener)",
            ));
        }
        let state = self.meta_state();
        if state.members().contains(&id) {
            return Err(Error::conflict(
                ErrorCode::NodeExists,
                format!("'{id}' is already a member"),
            ));
        }
        let addr = NodeAddr {
            raft: address.clone(),
            api: String::new(),
        };
        self.router.peers.learn(&id, &address);
        self.meta_command(MetaCommand::SetNodeState {
            id: id.clone(),
            state: NodeState::Joining,
        })
        .await?;
        self.meta_command(MetaCommand::RegisterNode {
            id: id.clone(),
            addr: addr.clone(),
        })
        .await?;
        self.meta
            .add_learner(id.clone(), addr, false)
            .await
            .map_err(|e| Error::unavailable(ErrorCode::Unavailable, format!("adding {id}: {e}")))?;
        Ok(AddNodeResponse {
            node_id: id,
            address,
            state: "joining".into(),
        })
    }

    /// Plans moving every replica off `id`, then removing it from the cluster.
    async fn remove_node(&self, id: NodeId, force: bool) -> Result<OperationStarted> {
        let state = self.meta_state();
        if !state.members().contains(&id) {
            return Err(Error::not_found(
                ErrorCode::NotFound,
                format!("'{id}' is not a member"),
            ));
        }
        let remaining: BTreeSet<NodeId> =
            state.placeable().into_iter().filter(|n| *n != id).collect();
        let needed = state
            .collections
            .values()
            .map(|c| c.config.replication_factor as usize)
            .max()
            .unwrap_or(1);
        if !force {
            if remaining.len() < needed {
                return Err(Error::conflict(
                    ErrorCode::WouldBreakReplication,
                    format!(
                        "removing '{id}' leaves {} nodes for a replication factor of {needed}; add a node first or pass force: true",
                        remaining.len()
                    ),
                ));
            }
            let voters: BTreeSet<NodeId> =
                state.members().into_iter().filter(|n| *n != id).collect();
            let live = voters.iter().filter(|n| self.is_reachable(n)).count();
            if live < voters.len() / 2 + 1 {
                return Err(Error::conflict(
                    ErrorCode::WouldLoseQuorum,
                    format!(
                        "only {live} of the {} remaining members answer: removing '{id}' would leave no quorum; bring members back or pass force: true",
                        voters.len()
                    ),
                ));
            }
        }
        let leaving = BTreeSet::from([id.clone()]);
        self.start_operation(
            &state,
            OperationKind::Drain { node: id, force },
            &remaining,
            &leaving,
        )
        .await
    }

    /// Plans moves that even out replicas (`even_distribution`) and leaders, or leaders only
    /// (`leaders_only`).
    async fn rebalance(&self, strategy: &str) -> Result<OperationStarted> {
        let state = self.meta_state();
        let placeable = state.placeable();
        match strategy {
            "even_distribution" | "leaders_only" => {}
            other => {
                return Err(Error::invalid(
                    ErrorCode::InvalidRequest,
                    format!(
                        "unknown strategy {other:?}; use \"even_distribution\" or \"leaders_only\""
                    ),
                ));
            }
        }
        let kind = OperationKind::Rebalance {
            strategy: strategy.to_string(),
        };
        if strategy == "leaders_only" {
            return self
                .start_operation(&state, kind, &BTreeSet::new(), &BTreeSet::new())
                .await;
        }
        self.start_operation(&state, kind, &placeable, &BTreeSet::new())
            .await
    }

    /// Re-creates the replicas held by `nodes` (default: members that do not answer) on the
    /// others.
    async fn repair(&self, nodes: Vec<NodeId>) -> Result<OperationStarted> {
        let state = self.meta_state();
        let dead: BTreeSet<NodeId> = if nodes.is_empty() {
            state
                .members()
                .into_iter()
                .filter(|n| *n != self.id && !self.is_reachable(n))
                .collect()
        } else {
            nodes.into_iter().collect()
        };
        let placeable: BTreeSet<NodeId> = state.placeable().difference(&dead).cloned().collect();
        self.start_operation(
            &state,
            OperationKind::Repair {
                nodes: dead.iter().cloned().collect(),
            },
            &placeable,
            &dead,
        )
        .await
    }

    async fn start_operation(
        &self,
        state: &MetaState,
        kind: OperationKind,
        nodes: &BTreeSet<NodeId>,
        leaving: &BTreeSet<NodeId>,
    ) -> Result<OperationStarted> {
        if let Some(running) = state.running_operation() {
            return Err(Error::conflict(
                ErrorCode::OperationRunning,
                format!(
                    "operation {} ({:?}) is still running",
                    running.id, running.kind
                ),
            ));
        }
        let mut placement: BTreeMap<GroupId, Vec<NodeId>> = state
            .groups
            .iter()
            .map(|(g, r)| (g.clone(), r.replicas.clone()))
            .collect();
        let moves = if nodes.is_empty() {
            Vec::new()
        } else {
            let mut all = nodes.clone();
            all.extend(leaving.iter().cloned());
            plan_replicas(&placement, &all, leaving)
        };
        for m in &moves {
            if let Some(replicas) = placement.get_mut(&m.group) {
                match &m.from {
                    Some(from) => {
                        if let Some(at) = replicas.iter().position(|r| r == from) {
                            replicas[at] = m.to.clone();
                        }
                    }
                    None => replicas.push(m.to.clone()),
                }
            }
        }
        let current: BTreeMap<GroupId, NodeId> = self
            .group_leaders()
            .await
            .into_iter()
            .filter(|(g, _)| g != META_GROUP)
            .collect();
        let leaders = plan_leaders(&placement, &current);
        let planned = moves.len();
        let response = self
            .meta_command(MetaCommand::StartOperation {
                kind,
                moves: moves.into_iter().map(|m| (m.group, m.from, m.to)).collect(),
                leaders: leaders.clone(),
            })
            .await?;
        match response {
            MetaResponse::Started { id } => Ok(OperationStarted {
                operation: id,
                moves: planned,
                leaders: leaders.len(),
            }),
            MetaResponse::Invalid { message } => {
                Err(Error::conflict(ErrorCode::OperationRunning, message))
            }
            other => Err(Error::Internal(format!(
                "starting an operation answered {other:?}"
            ))),
        }
    }

    /// Whether `node` answered a ping recently (this node always does).
    pub(super) fn is_reachable(&self, node: &str) -> bool {
        node == self.id
            || self
                .router
                .peers
                .answered_within(node, Duration::from_secs(3))
    }

    /// The leader of every group, as the members report.
    async fn group_leaders(&self) -> BTreeMap<GroupId, NodeId> {
        let statuses = self.member_statuses().await;
        let mut leaders = BTreeMap::new();
        for status in statuses.values().flatten() {
            for group in &status.groups {
                if group.role == RaftRole::Leader {
                    leaders.insert(group.group.clone(), status.node_id.clone());
                }
            }
        }
        leaders
    }

    /// Carries out a membership change of a group this node leads (a peer's call, or ours).
    pub(super) async fn membership_here(&self, rpc: MembershipRpc) -> Result<()> {
        let (group, result) = match rpc {
            MembershipRpc::AddLearner { group, node, addr } => {
                self.router.peers.learn(&node, &addr.raft);
                let result = if group == META_GROUP {
                    self.meta.add_learner(node, addr, false).await.map(|_| ())
                } else {
                    let local = self.local_group(&group).ok_or_else(|| Error::NotLeader {
                        message: format!("no replica of {group} here"),
                        leader: None,
                    })?;
                    local.raft.add_learner(node, addr, false).await.map(|_| ())
                };
                (group, result)
            }
            MembershipRpc::SetVoters { group, voters } => {
                let result = if group == META_GROUP {
                    self.meta.change_membership(voters, false).await.map(|_| ())
                } else {
                    let local = self.local_group(&group).ok_or_else(|| Error::NotLeader {
                        message: format!("no replica of {group} here"),
                        leader: None,
                    })?;
                    local
                        .raft
                        .change_membership(voters, false)
                        .await
                        .map(|_| ())
                };
                (group, result)
            }
        };
        result.map_err(|e| match e.forward_to_leader() {
            Some(forward) => Error::NotLeader {
                message: format!("{} does not lead {group}", self.id),
                leader: forward.leader_id.clone(),
            },
            None => Error::unavailable(ErrorCode::Unavailable, format!("{group}: {e}")),
        })
    }

    /// Sends a membership change to the group's leader.
    async fn membership(&self, leader: &str, rpc: MembershipRpc) -> Result<()> {
        if leader == self.id {
            return self.membership_here(rpc).await;
        }
        self.router
            .peers
            .call(
                leader,
                "/internal/membership",
                &rpc,
                Duration::from_secs(30),
            )
            .await
            .map_err(Error::from)
    }

    /// One step of the controller: promote joining nodes, advance the running operation.
    pub(super) async fn drive_elastic(self: &Arc<Self>) {
        let state = self.meta_state();
        self.promote_joining(&state).await;
        let Some(operation) = state.running_operation().cloned() else {
            return;
        };
        let statuses = self.member_statuses().await;
        let view = ClusterView::new(&statuses);
        let moves: Vec<MoveRecord> = operation
            .moves
            .iter()
            .filter_map(|id| state.moves.get(id).cloned())
            .collect();
        let limit = self.config.cluster.max_concurrent_moves.max(1);
        let active = moves
            .iter()
            .filter(|m| !matches!(m.phase, MovePhase::Pending | MovePhase::Done))
            .count();
        let mut free = limit.saturating_sub(active);
        // One move per group at a time: each membership change names the group's whole voter
        // set, which must not drop another move's learner.
        let mut busy: BTreeSet<&str> = moves
            .iter()
            .filter(|m| !matches!(m.phase, MovePhase::Pending | MovePhase::Done))
            .map(|m| m.group.as_str())
            .collect();
        let mut steps = Vec::new();
        for record in &moves {
            match record.phase {
                MovePhase::Done => {}
                MovePhase::Pending if free > 0 && busy.insert(record.group.as_str()) => {
                    free -= 1;
                    steps.push(Box::pin(async move {
                        let started = self
                            .meta_command(MetaCommand::AdvanceMove {
                                id: record.id,
                                phase: MovePhase::AddingLearner,
                                progress: None,
                            })
                            .await
                            .map(|_| ());
                        (record, started)
                    })
                        as std::pin::Pin<
                            Box<dyn std::future::Future<Output = _> + Send + '_>,
                        >);
                }
                MovePhase::Pending => {}
                _ => {
                    let (state, view) = (&state, &view);
                    steps.push(Box::pin(async move {
                        (record, self.step_move(state, view, record).await)
                    }));
                }
            }
        }
        // Moves of different groups advance independently.
        for (record, result) in futures::future::join_all(steps).await {
            if let Err(error) = result {
                tracing::info!(id = record.id, group = %record.group, phase = ?record.phase, %error, "move step failed; retrying");
            }
        }
        if moves.iter().all(|m| m.phase == MovePhase::Done)
            && let Err(error) = self.finish_operation(&state, &operation).await
        {
            tracing::info!(operation = operation.id, %error, "finishing operation; retrying");
        }
    }

    async fn step_move(
        &self,
        state: &MetaState,
        view: &ClusterView<'_>,
        record: &MoveRecord,
    ) -> Result<()> {
        let Some(group) = state.groups.get(&record.group) else {
            // The collection was dropped.
            return self
                .meta_command(MetaCommand::CompleteMove { id: record.id })
                .await
                .map(|_| ());
        };
        let leader = view.leader(&record.group).ok_or_else(|| {
            Error::unavailable(
                ErrorCode::NoLeader,
                format!("{} has no leader", record.group),
            )
        })?;
        let status = view.group(leader, &record.group).ok_or_else(|| {
            Error::unavailable(
                ErrorCode::Unavailable,
                format!("no status of {} from its leader", record.group),
            )
        })?;
        let addr = state.nodes.get(&record.to).cloned().unwrap_or_default();
        match record.phase {
            MovePhase::AddingLearner => {
                if !status.learners.contains(&record.to) && !status.voters.contains(&record.to) {
                    self.membership(
                        leader,
                        MembershipRpc::AddLearner {
                            group: record.group.clone(),
                            node: record.to.clone(),
                            addr,
                        },
                    )
                    .await?;
                }
                self.meta_command(MetaCommand::AdvanceMove {
                    id: record.id,
                    phase: MovePhase::CatchingUp,
                    progress: Some(progress(view, record, status)),
                })
                .await?;
            }
            MovePhase::CatchingUp => {
                // Close enough to the leader: under steady writes the learner trails by the
                // entries in flight, and it keeps receiving them as a voter.
                let matched = status.matched.get(&record.to).copied().flatten();
                let committed = status.committed_index.unwrap_or(0);
                let caught_up = matched.is_some_and(|m| m + CATCH_UP_SLACK >= committed);
                let progress = progress(view, record, status);
                if caught_up {
                    self.meta_command(MetaCommand::AdvanceMove {
                        id: record.id,
                        phase: MovePhase::Promoting,
                        progress: Some(progress),
                    })
                    .await?;
                } else if progress != record.progress {
                    self.meta_command(MetaCommand::AdvanceMove {
                        id: record.id,
                        phase: MovePhase::CatchingUp,
                        progress: Some(progress),
                    })
                    .await?;
                }
            }
            MovePhase::Promoting => {
                if !status.learners.contains(&record.to) && !status.voters.contains(&record.to) {
                    // The learner is gone (a leader change lost the uncommitted entry): add it
                    // again.
                    return self
                        .meta_command(MetaCommand::AdvanceMove {
                            id: record.id,
                            phase: MovePhase::AddingLearner,
                            progress: None,
                        })
                        .await
                        .map(|_| ());
                }
                let mut voters: BTreeSet<NodeId> = group.replicas.iter().cloned().collect();
                if let Some(from) = &record.from {
                    voters.remove(from);
                }
                voters.insert(record.to.clone());
                let current: BTreeSet<NodeId> = status.voters.iter().cloned().collect();
                if current != voters {
                    if record.from.as_deref() == Some(leader) {
                        // The leader leaves: hand over first (to a voter that stays).
                        let next = voters
                            .iter()
                            .find(|v| {
                                **v != record.to && current.contains(*v) && self.is_reachable(v)
                            })
                            .cloned()
                            .ok_or_else(|| {
                                Error::unavailable(
                                    ErrorCode::Unavailable,
                                    "no voter to hand leadership to",
                                )
                            })?;
                        self.transfer_group(&record.group, &next).await?;
                        return Ok(());
                    }
                    self.membership(
                        leader,
                        MembershipRpc::SetVoters {
                            group: record.group.clone(),
                            voters,
                        },
                    )
                    .await?;
                }
                self.meta_command(MetaCommand::CompleteMove { id: record.id })
                    .await?;
            }
            MovePhase::Pending | MovePhase::Done => {}
        }
        Ok(())
    }

    /// After the moves: the planned leaders, and for a drain, the node's departure.
    async fn finish_operation(
        &self,
        state: &MetaState,
        operation: &super::meta::Operation,
    ) -> Result<()> {
        let transfers = operation
            .leaders
            .iter()
            .filter(|(_, leader)| self.is_reachable(leader))
            .map(|(group, leader)| async move {
                if self.leader_of(group).as_deref() == Some(leader.as_str()) {
                    return;
                }
                if let Err(error) = self.transfer_group(group, leader).await {
                    tracing::debug!(%group, %leader, %error, "moving leadership");
                }
            });
        futures::future::join_all(transfers).await;
        if let OperationKind::Drain { node, .. } = &operation.kind {
            if *node == self.id {
                // This node leaves: hand the cluster to another member, which finishes the job.
                let next = state
                    .members()
                    .into_iter()
                    .find(|m| *m != self.id && self.is_reachable(m))
                    .ok_or_else(|| {
                        Error::unavailable(
                            ErrorCode::Unavailable,
                            "no member to hand the cluster to",
                        )
                    })?;
                return self.transfer_group(META_GROUP, &next).await;
            }
            if state.members().contains(node) {
                let voters: BTreeSet<NodeId> =
                    state.members().into_iter().filter(|m| m != node).collect();
                self.membership(
                    &self.id.clone(),
                    MembershipRpc::SetVoters {
                        group: META_GROUP.into(),
                        voters,
                    },
                )
                .await?;
            }
            self.meta_command(MetaCommand::ForgetNode { id: node.clone() })
                .await?;
        }
        self.meta_command(MetaCommand::FinishOperation {
            id: operation.id,
            outcome: OperationState::Done,
        })
        .await?;
        tracing::info!(operation = operation.id, kind = ?operation.kind, "operation done");
        Ok(())
    }

    /// Makes joining nodes voters of the meta group once they have caught up.
    async fn promote_joining(&self, state: &MetaState) {
        let joining: Vec<NodeId> = state
            .node_states
            .iter()
            .filter(|(_, s)| **s == NodeState::Joining)
            .map(|(n, _)| n.clone())
            .collect();
        if joining.is_empty() {
            return;
        }
        let metrics = self.meta.metrics().borrow_watched().clone();
        let committed = metrics.cluster_committed.as_ref().map(|l| l.index());
        for node in joining {
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&node).cloned().flatten())
                .map(|l| l.index());
            if matched.is_none() || matched < committed {
                continue;
            }
            let mut voters = state.members();
            voters.insert(node.clone());
            let promoted = self
                .membership_here(MembershipRpc::SetVoters {
                    group: META_GROUP.into(),
                    voters,
                })
                .await;
            if promoted.is_ok() {
                let _ = self
                    .meta_command(MetaCommand::SetNodeState {
                        id: node.clone(),
                        state: NodeState::Active,
                    })
                    .await;
                tracing::info!(%node, "node joined the cluster");
            }
        }
    }

    /// The moves of recent operations of the given kinds, with totals and an estimate of what
    /// is left.
    pub fn operations_status(&self, kinds: &[&str]) -> OperationsStatus {
        let state = self.meta_state();
        let operations = state
            .operations
            .values()
            .rev()
            .filter(|o| kinds.contains(&o.kind.name()))
            .map(|o| {
                let moves: Vec<&MoveRecord> = o
                    .moves
                    .iter()
                    .filter_map(|id| state.moves.get(id))
                    .collect();
                let open = || moves.iter().filter(|m| m.phase != MovePhase::Done);
                OperationStatus {
                    operation: o.id,
                    kind: o.kind.clone(),
                    state: o.state.clone(),
                    moves_total: moves.len(),
                    moves_done: moves.len() - open().count(),
                    moves_in_progress: open().filter(|m| m.phase != MovePhase::Pending).count(),
                    documents_left: open()
                        .map(|m| {
                            m.progress
                                .documents_total
                                .saturating_sub(m.progress.documents_copied)
                        })
                        .sum(),
                    bytes_left: open()
                        .map(|m| {
                            m.progress
                                .bytes_total
                                .saturating_sub(m.progress.bytes_copied)
                        })
                        .sum(),
                    moves: moves
                        .iter()
                        .map(|m| MoveStatus {
                            id: m.id,
                            shard: super::admin::display_group(&m.group),
                            from: m.from.clone(),
                            to: m.to.clone(),
                            phase: m.phase,
                            documents_copied: m.progress.documents_copied,
                            documents_total: m.progress.documents_total,
                            bytes_copied: m.progress.bytes_copied,
                            bytes_total: m.progress.bytes_total,
                        })
                        .collect(),
                    leaders: o
                        .leaders
                        .iter()
                        .map(|(g, n)| (super::admin::display_group(g), n.clone()))
                        .collect(),
                }
            })
            .collect();
        OperationsStatus {
            node_id: self.id.clone(),
            running: state.running_operation().map(|o| o.id),
            operations,
        }
    }
}

/// How far a move's copy has come: the target's documents against the leader's.
fn progress(view: &ClusterView<'_>, record: &MoveRecord, leader: &GroupStatus) -> MoveProgress {
    let target = view.group(&record.to, &record.group);
    MoveProgress {
        documents_total: leader.documents,
        documents_copied: target
            .map(|t| t.documents.min(leader.documents))
            .unwrap_or(0),
        bytes_total: leader.bytes,
        bytes_copied: target.map(|t| t.bytes.min(leader.bytes)).unwrap_or(0),
    }
}

/// Every member's reported status, indexed for the controller.
struct ClusterView<'a> {
    statuses: &'a BTreeMap<NodeId, Option<NodeStatus>>,
}

impl<'a> ClusterView<'a> {
    fn new(statuses: &'a BTreeMap<NodeId, Option<NodeStatus>>) -> Self {
        ClusterView { statuses }
    }

    fn group(&self, node: &str, group: &str) -> Option<&'a GroupStatus> {
        self.statuses
            .get(node)?
            .as_ref()?
            .groups
            .iter()
            .find(|g| g.group == group)
    }

    fn leader(&self, group: &str) -> Option<&'a str> {
        self.statuses.iter().find_map(|(node, status)| {
            status
                .as_ref()?
                .groups
                .iter()
                .find(|g| g.group == group && g.role == RaftRole::Leader)
                .map(|_| node.as_str())
        })
    }
}
