//! The move controller, run by the meta leader: advances each recorded replica move through
//! its phases, then moves leaderships to the planned replicas and, for a drain, removes the
//! node; it also promotes joining nodes once they caught up.

use super::leadership::transfer_group;
use super::membership::{change_meta_membership, membership};
use crate::cluster::node::Node;
use crate::cluster::raft::ids::{META_GROUP, NodeId};
use crate::cluster::raft::meta_commands::{
    MetaCommand, MovePhase, MoveProgress, MoveRecord, NodeState, Operation, OperationKind,
    OperationState,
};
use crate::cluster::raft::meta_state::MetaState;
use crate::cluster::raft::rpc::{GroupStatus, MembershipRpc, NodeStatus};
use crate::cluster::route::meta_command;
use crate::cluster::status::member_statuses;
use crate::error::{Error, ErrorCode, Result};
use grape_client::RaftRole;
use openraft::ChangeMembers;
use openraft::type_config::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};

/// Log entries a learner may trail its leader by and still be promoted.
const CATCH_UP_SLACK: u64 = 16;

/// One step of the controller: promote joining nodes, advance the running operation.
pub async fn drive(node: &Node) {
    let state = node.meta_state();
    promote_joining(node, &state).await;
    let Some(operation) = state.running_operation().cloned() else {
        return;
    };
    let statuses = member_statuses(node).await;
    let view = ClusterView::new(&statuses);
    let moves: Vec<MoveRecord> = operation
        .moves
        .iter()
        .filter_map(|id| state.moves.get(id).cloned())
        .collect();
    let limit = node.config().cluster.max_concurrent_moves.max(1);
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
                    let started = meta_command(
                        node,
                        MetaCommand::AdvanceMove {
                            id: record.id,
                            phase: MovePhase::AddingLearner,
                            progress: None,
                        },
                    )
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
                    (record, step_move(node, state, view, record).await)
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
        && let Err(error) = finish_operation(node, &state, &view, &operation).await
    {
        tracing::info!(operation = operation.id, %error, "finishing operation; retrying");
    }
}

async fn step_move(
    node: &Node,
    state: &MetaState,
    view: &ClusterView<'_>,
    record: &MoveRecord,
) -> Result<()> {
    let Some(group) = state.groups.get(&record.group) else {
        // The collection was dropped.
        return meta_command(node, MetaCommand::CompleteMove { id: record.id })
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
                membership(
                    node,
                    leader,
                    MembershipRpc::AddLearner {
                        group: record.group.clone(),
                        node: record.to.clone(),
                        addr,
                    },
                )
                .await?;
            }
            meta_command(
                node,
                MetaCommand::AdvanceMove {
                    id: record.id,
                    phase: MovePhase::CatchingUp,
                    progress: Some(progress(view, record, status)),
                },
            )
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
                meta_command(
                    node,
                    MetaCommand::AdvanceMove {
                        id: record.id,
                        phase: MovePhase::Promoting,
                        progress: Some(progress),
                    },
                )
                .await?;
            } else if progress != record.progress {
                meta_command(
                    node,
                    MetaCommand::AdvanceMove {
                        id: record.id,
                        phase: MovePhase::CatchingUp,
                        progress: Some(progress),
                    },
                )
                .await?;
            }
        }
        MovePhase::Promoting => {
            if !status.learners.contains(&record.to) && !status.voters.contains(&record.to) {
                // The learner is gone (a leader change lost the uncommitted entry): add it
                // again.
                return meta_command(
                    node,
                    MetaCommand::AdvanceMove {
                        id: record.id,
                        phase: MovePhase::AddingLearner,
                        progress: None,
                    },
                )
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
                    // The leader leaves: hand over first, to a voter that stays (the target
                    // last: it has only just caught up).
                    let staying = |v: &&NodeId| current.contains(*v) && node.is_reachable(v);
                    let next = voters
                        .iter()
                        .filter(staying)
                        .find(|v| **v != record.to)
                        .or_else(|| voters.iter().find(staying))
                        .cloned();
                    match next {
                        Some(next) => transfer_group(node, &record.group, &next).await?,
                        None => {
                            // No voter stays (a shard of one replica): the target votes
                            // beside the leader first, then takes over.
                            let mut joined = current.clone();
                            joined.insert(record.to.clone());
                            membership(
                                node,
                                leader,
                                MembershipRpc::SetVoters {
                                    group: record.group.clone(),
                                    voters: joined,
                                },
                            )
                            .await?;
                        }
                    }
                    return Ok(());
                }
                membership(
                    node,
                    leader,
                    MembershipRpc::SetVoters {
                        group: record.group.clone(),
                        voters,
                    },
                )
                .await?;
            }
            meta_command(node, MetaCommand::CompleteMove { id: record.id }).await?;
        }
        MovePhase::Pending | MovePhase::Done => {}
    }
    Ok(())
}

/// After the moves: the planned leaders, and for a drain, the node's departure.
async fn finish_operation(
    node: &Node,
    state: &MetaState,
    view: &ClusterView<'_>,
    operation: &Operation,
) -> Result<()> {
    let transfers = operation
        .leaders
        .iter()
        .filter(|(_, leader)| node.is_reachable(leader))
        .map(|(group, leader)| async move {
            if node.leader_of(group).as_deref() == Some(leader.as_str()) {
                return;
            }
            if let Err(error) = transfer_group(node, group, leader).await {
                tracing::debug!(%group, %leader, %error, "moving leadership");
            }
        });
    futures::future::join_all(transfers).await;
    if let OperationKind::Drain { node: leaving, .. } = &operation.kind {
        drop_leftover_replicas(node, state, view, leaving).await?;
        if leaving == node.id() {
            // This node leaves: hand the cluster to another member, which finishes the job.
            let next = state
                .members()
                .into_iter()
                .find(|m| m != node.id() && node.is_reachable(m))
                .ok_or_else(|| {
                    Error::unavailable(ErrorCode::Unavailable, "no member to hand the cluster to")
                })?;
            return transfer_group(node, META_GROUP, &next).await;
        }
        if state.members().contains(leaving) {
            let change = ChangeMembers::RemoveVoters(BTreeSet::from([leaving.clone()]));
            change_meta_membership(node, change, &format!("removing {leaving}")).await?;
        }
        let forget = MetaCommand::ForgetNode {
            id: leaving.clone(),
        };
        meta_command(node, forget).await?;
    }
    meta_command(
        node,
        MetaCommand::FinishOperation {
            id: operation.id,
            outcome: OperationState::Done,
        },
    )
    .await?;
    tracing::info!(operation = operation.id, kind = ?operation.kind, "operation done");
    Ok(())
}

/// A forced drain finds no node to move some replicas to (every other node holds the group
/// already, as when a 3-node cluster with a replication factor of 3 loses one): those groups
/// go on without the leaving node, under-replicated until a rebalance tops them up.
async fn drop_leftover_replicas(
    node: &Node,
    state: &MetaState,
    view: &ClusterView<'_>,
    leaving: &str,
) -> Result<()> {
    let left = state.groups.iter().filter(|(_, record)| {
        record.replicas.iter().any(|r| r == leaving) || record.learners.iter().any(|r| r == leaving)
    });
    for (group, record) in left {
        let voters: BTreeSet<NodeId> = record
            .replicas
            .iter()
            .filter(|r| *r != leaving)
            .cloned()
            .collect();
        if voters.is_empty() {
            // Its only replica leaves with the node: nothing to keep.
            continue;
        }
        let leader = view.leader(group).ok_or_else(|| {
            Error::unavailable(ErrorCode::NoLeader, format!("{group} has no leader"))
        })?;
        if leader == leaving {
            let next = voters
                .iter()
                .find(|v| node.is_reachable(v))
                .cloned()
                .ok_or_else(|| {
                    Error::unavailable(
                        ErrorCode::Unavailable,
                        format!("no voter of {group} answers"),
                    )
                })?;
            transfer_group(node, group, &next).await?;
            return Err(Error::unavailable(
                ErrorCode::Unavailable,
                format!("{group}: leadership moving off {leaving}"),
            ));
        }
        membership(
            node,
            leader,
            MembershipRpc::SetVoters {
                group: group.clone(),
                voters,
            },
        )
        .await?;
        let drop = MetaCommand::DropReplica {
            group: group.clone(),
            node: leaving.to_string(),
        };
        meta_command(node, drop).await?;
        tracing::warn!(%group, node = %leaving, "the group goes on without the removed node's replica");
    }
    Ok(())
}

/// Makes joining nodes voters of the meta group once they have caught up.
async fn promote_joining(node: &Node, state: &MetaState) {
    let joining = state.joining();
    if joining.is_empty() {
        return;
    }
    let metrics = node.meta_raft().metrics().borrow_watched().clone();
    let committed = metrics.cluster_committed.as_ref().map(|l| l.index());
    for joiner in joining {
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&joiner).cloned().flatten())
            .map(|l| l.index());
        if matched.is_none() || matched < committed {
            continue;
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([joiner.clone()]));
        let promoted = change_meta_membership(node, change, "promoting").await;
        if promoted.is_ok() {
            let active = MetaCommand::SetNodeState {
                id: joiner.clone(),
                state: NodeState::Active,
            };
            let _ = meta_command(node, active).await;
            tracing::info!(node = %joiner, "node joined the cluster");
        }
    }
}

/// How far a move's copy has come: the target's documents against the leader's, and its
/// bytes, or the bytes of the snapshot streamed to it so far, whichever is further.
fn progress(view: &ClusterView<'_>, record: &MoveRecord, leader: &GroupStatus) -> MoveProgress {
    let target = view.group(&record.to, &record.group);
    let streamed = leader.snapshot_sent.get(&record.to).copied().unwrap_or(0);
    MoveProgress {
        documents_total: leader.documents,
        documents_copied: target
            .map(|t| t.documents.min(leader.documents))
            .unwrap_or(0),
        bytes_total: leader.bytes,
        bytes_copied: target
            .map(|t| t.bytes)
            .unwrap_or(0)
            .max(streamed)
            .min(leader.bytes),
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
