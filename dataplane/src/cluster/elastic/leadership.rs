//! Leadership on demand: moving one group's leadership to a named replica, or every group a
//! node leads off it (before a restart or a drain), waiting until the move took effect.

use crate::cluster::node::Node;
use crate::cluster::raft::ids::{GroupId, META_GROUP, NodeId};
use crate::cluster::raft::rpc::{GroupStatus, HandOverRpc};
use crate::cluster::raft::types::TypeConfig;
use crate::cluster::status::{STATUS_TIMEOUT, display_group, member_statuses};
use crate::error::{Error, ErrorCode, Result};
use grape_client::{MovedLeadership, RaftRole, TransferLeadershipResponse};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Moves leaderships. With `target`: one group (`shard`), or every group `from` (default:
/// the meta leader) leads and `target` holds a replica of. Without `target` (needs `from`):
/// every group `from` leads goes to another of its voters, the one leading fewest groups,
/// so that `from` leads nothing afterwards (before a restart or a drain).
pub async fn transfer_leadership(
    node: &Node,
    target: Option<&str>,
    shard: Option<&str>,
    from: Option<&str>,
) -> Result<TransferLeadershipResponse> {
    let state = node.meta_state();
    if let Some(target) = target
        && !state.members().contains(target)
    {
        return Err(Error::invalid(
            ErrorCode::InvalidTarget,
            format!("target_node '{target}' is not a member of the cluster"),
        ));
    }
    if target.is_none() && (from.is_none() || shard.is_some()) {
        return Err(Error::invalid(
            ErrorCode::InvalidRequest,
            "give target_node, or from_node alone to move every leadership off that node",
        ));
    }
    // (group, target) pairs.
    let moves: Vec<(GroupId, NodeId)> = match (shard, target) {
        (Some(name), Some(target)) => vec![(resolve_group(node, name)?, target.to_string())],
        _ => {
            let statuses = member_statuses(node).await;
            let from = from
                .map(str::to_string)
                .or_else(|| node.meta_metrics().current_leader)
                .ok_or_else(|| {
                    Error::unavailable(ErrorCode::NoLeader, "the cluster has no leader")
                })?;
            if !state.members().contains(&from) {
                return Err(Error::invalid(
                    ErrorCode::InvalidRequest,
                    format!("from_node '{from}' is not a member of the cluster"),
                ));
            }
            // Groups each reachable member leads now, to spread what moves.
            let mut leads: BTreeMap<NodeId, usize> = statuses
                .iter()
                .filter_map(|(id, s)| {
                    s.as_ref().map(|s| {
                        (
                            id.clone(),
                            s.groups
                                .iter()
                                .filter(|g| g.role == RaftRole::Leader)
                                .count(),
                        )
                    })
                })
                .collect();
            let led: Vec<GroupStatus> = statuses
                .get(&from)
                .and_then(|s| s.as_ref())
                .map(|s| {
                    s.groups
                        .iter()
                        .filter(|g| g.role == RaftRole::Leader)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let mut moves = Vec::new();
            for group in led {
                let chosen = match target {
                    Some(t) => group.voters.iter().any(|v| v == t).then(|| t.to_string()),
                    None => group
                        .voters
                        .iter()
                        .filter(|v| **v != from && leads.contains_key(*v))
                        .min_by_key(|v| (leads[*v], (*v).clone()))
                        .cloned(),
                };
                if let Some(to) = chosen {
                    *leads.entry(to.clone()).or_default() += 1;
                    moves.push((group.group.clone(), to));
                }
            }
            moves
        }
    };
    let mut moved = Vec::new();
    for (group, target) in moves {
        let replicas: Vec<NodeId> = if group == META_GROUP {
            state.members().into_iter().collect()
        } else {
            state
                .groups
                .get(&group)
                .map(|g| g.replicas.clone())
                .unwrap_or_default()
        };
        if !replicas.contains(&target) {
            return Err(Error::invalid(
                ErrorCode::InvalidTarget,
                format!("'{target}' holds no replica of {}", display_group(&group)),
            ));
        }
        transfer_group(node, &group, &target).await?;
        moved.push(MovedLeadership {
            group: display_group(&group),
            to: target,
        });
    }
    Ok(TransferLeadershipResponse {
        target_node: target.map(str::to_string),
        moved,
    })
}

/// A user-facing group name (`meta`, `collection/shard`) to the group id.
fn resolve_group(node: &Node, name: &str) -> Result<GroupId> {
    if name == META_GROUP {
        return Ok(META_GROUP.to_string());
    }
    let state = node.meta_read();
    state
        .groups
        .iter()
        .find(|(group, record)| {
            *group == name || format!("{}/{}", record.collection, record.shard) == name
        })
        .map(|(group, _)| group.clone())
        .ok_or_else(|| Error::not_found(ErrorCode::NotFound, format!("no shard '{name}'")))
}

/// Asks the group's leader to hand over to `target`, and waits (up to 10 s) until it has.
pub async fn transfer_group(node: &Node, group: &str, target: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = match node.leader_of(group) {
            Some(leader) => Some(leader),
            None => remote_leader_of(node, group).await,
        };
        if leader.as_deref() == Some(target) {
            return Ok(());
        }
        if let Some(leader) = leader {
            let result = if leader == node.id() {
                hand_over_here(node, group, target).await
            } else {
                node.peers()
                    .call(
                        &leader,
                        &HandOverRpc {
                            group: group.to_string(),
                            target: target.to_string(),
                        },
                        STATUS_TIMEOUT,
                    )
                    .await
                    .map_err(Error::from)
            };
            if let Err(e) = result {
                tracing::debug!(%group, error = %e, "transfer request");
            }
        }
        if Instant::now() > deadline {
            return Err(Error::unavailable(
                ErrorCode::NoLeader,
                format!(
                    "leadership of {} did not move to {target} within 10 s",
                    display_group(group)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader of a group this node does not hold, as its replicas report it.
async fn remote_leader_of(node: &Node, group: &str) -> Option<NodeId> {
    let statuses = member_statuses(node).await;
    statuses.values().flatten().find_map(|s| {
        s.groups
            .iter()
            .find(|g| g.group == group && g.role == RaftRole::Leader)
            .map(|_| s.node_id.clone())
    })
}

/// Hands this node's leadership of `group` to `target` (a peer's call, or our own).
pub async fn hand_over_here(node: &Node, group: &str, target: &str) -> Result<()> {
    let trigger = |result: std::result::Result<(), openraft::errors::Fatal<TypeConfig>>| {
        result.map_err(|e| Error::unavailable(ErrorCode::Unavailable, e.to_string()))
    };
    if group == META_GROUP {
        if !node.is_meta_leader() {
            return Err(Error::NotLeader {
                message: format!("{} does not lead meta", node.id()),
                leader: node.leader_of(group),
            });
        }
        return trigger(
            node.meta_raft()
                .trigger()
                .transfer_leader(target.to_string())
                .await,
        );
    }
    let local = node.replicas().get(group).ok_or_else(|| {
        Error::not_found(ErrorCode::NotFound, format!("no replica of {group} here"))
    })?;
    trigger(
        local
            .raft
            .trigger()
            .transfer_leader(target.to_string())
            .await,
    )
}

/// Before this node stops (SIGTERM: a pod deleted, evicted or drained): every group it leads
/// goes to another of its voters, so that the cluster does not wait an election timeout per
/// group for leaders that are gone. A group that fails to move is tried again in the next
/// round (at most three), all within `within`; returns how many groups moved.
pub async fn hand_off_before_stopping(node: &Node, within: Duration) -> usize {
    if node.members().len() < 2 {
        return 0;
    }
    let id = node.id().to_string();
    let deadline = Instant::now() + within;
    let mut moved = 0;
    for _ in 0..3 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, transfer_leadership(node, None, None, Some(&id))).await {
            Ok(Ok(answer)) if answer.moved.is_empty() => break,
            Ok(Ok(answer)) => moved += answer.moved.len(),
            Ok(Err(error)) => tracing::warn!(%error, "handing leaderships over before stopping"),
            Err(_) => {
                tracing::warn!(
                    "handing leaderships over took more than {} s: stopping anyway",
                    within.as_secs()
                );
                break;
            }
        }
    }
    if moved > 0 {
        tracing::info!(moved, "handed leaderships over before stopping");
    }
    moved
}
