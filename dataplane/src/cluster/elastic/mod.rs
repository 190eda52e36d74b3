//! Elasticity: adding and removing nodes, rebalancing, repair. Every decision and every step is
//! recorded in the meta group, and the meta leader's controller ([`moves`]) executes the
//! recorded moves, so an operation survives the restart of any node (the next leader resumes
//! it).
//!
//! ```text
//!   admin request ──(any node forwards)──> meta leader: plan (planner) ──> StartOperation
//!   controller, every 200 ms on the meta leader: advance each move, then the leaders, then
//!   (drain) remove the node ──> FinishOperation
//! ```

pub mod leadership;
pub mod membership;
pub mod moves;
pub mod operations;
pub mod planner;
pub mod recovery;

use crate::cluster::node::Node;
use crate::cluster::raft::ids::{GroupId, META_GROUP, NodeAddr, NodeId};
use crate::cluster::raft::meta_commands::{MetaCommand, MetaResponse, NodeState, OperationKind};
use crate::cluster::raft::meta_state::MetaState;
pub use crate::cluster::raft::rpc::{AdminAnswer, AdminRpc};
use crate::cluster::route::meta_command;
use crate::cluster::status::{member_statuses, replaced_members};
use crate::config::parse_host_port;
use crate::error::{Error, ErrorCode, Result};
use grape_client::{AddNodeResponse, OperationStarted, RaftRole};
use membership::change_meta_membership;
use openraft::ChangeMembers;
use planner::{PlannedMove, plan_leaders, plan_missing, plan_replicas};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Runs an administrative request on the meta leader (forwarding it there if needed).
pub async fn admin(node: &Node, request: AdminRpc) -> Result<AdminAnswer> {
    match node.meta_metrics().current_leader {
        Some(leader) if leader == node.id() => admin_here(node, request).await,
        Some(leader) => node
            .peers()
            .call(&leader, &request, Duration::from_secs(30))
            .await
            .map_err(Error::from),
        None => Err(Error::unavailable(
            ErrorCode::NoLeader,
            "the cluster has no leader",
        )),
    }
}

/// Carries out an administrative request; this node must lead the meta group.
pub async fn admin_here(node: &Node, request: AdminRpc) -> Result<AdminAnswer> {
    if !node.is_meta_leader() {
        return Err(Error::NotLeader {
            message: format!("{} does not lead the cluster", node.id()),
            leader: node.leader_of(META_GROUP),
        });
    }
    match request {
        AdminRpc::AddNode { id, address } => {
            add_node(node, id, address).await.map(AdminAnswer::Added)
        }
        AdminRpc::RemoveNode { id, force } => {
            remove_node(node, id, force).await.map(AdminAnswer::Started)
        }
        AdminRpc::Rebalance { strategy } => {
            rebalance(node, &strategy).await.map(AdminAnswer::Started)
        }
        AdminRpc::Repair { nodes } => repair(node, nodes).await.map(AdminAnswer::Started),
    }
}

/// Adds a member that holds nothing yet: a learner of the meta group until it has caught
/// up, then a voter. Replicas reach it only through a rebalance.
async fn add_node(node: &Node, id: NodeId, address: String) -> Result<AddNodeResponse> {
    if id.is_empty() || parse_host_port(&address).is_none() {
        return Err(Error::invalid(
            ErrorCode::InvalidRequest,
            "add-node needs a node_id and an address (HOST:PORT of its node-to-node listener)",
        ));
    }
    let state = node.meta_state();
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
    node.peers().learn(&id, &address);
    meta_command(
        node,
        MetaCommand::SetNodeState {
            id: id.clone(),
            state: NodeState::Joining,
        },
    )
    .await?;
    meta_command(
        node,
        MetaCommand::RegisterNode {
            id: id.clone(),
            addr: addr.clone(),
            incarnation: None,
        },
    )
    .await?;
    node.meta_raft()
        .add_learner(id.clone(), addr, false)
        .await
        .map_err(|e| Error::unavailable(ErrorCode::Unavailable, format!("adding {id}: {e}")))?;
    Ok(AddNodeResponse {
        node_id: id,
        address,
        state: "joining".into(),
    })
}

/// Plans moving every replica off `id`, then removing it from the cluster. A node still
/// joining holds nothing: it is removed at once (operation 0, no moves).
async fn remove_node(node: &Node, id: NodeId, force: bool) -> Result<OperationStarted> {
    let state = node.meta_state();
    if !state.members().contains(&id) && state.node_state(&id) == NodeState::Joining {
        let change = ChangeMembers::RemoveNodes(BTreeSet::from([id.clone()]));
        change_meta_membership(node, change, &format!("removing {id}")).await?;
        meta_command(node, MetaCommand::ForgetNode { id: id.clone() }).await?;
        tracing::info!(node = %id, "a joining node was removed");
        return Ok(OperationStarted {
            operation: 0,
            moves: 0,
            leaders: 0,
        });
    }
    if !state.members().contains(&id) {
        return Err(Error::not_found(
            ErrorCode::NotFound,
            format!("'{id}' is not a member"),
        ));
    }
    let remaining: BTreeSet<NodeId> = state.placeable().into_iter().filter(|n| *n != id).collect();
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
        let voters: BTreeSet<NodeId> = state.members().into_iter().filter(|n| *n != id).collect();
        let live = voters.iter().filter(|n| node.is_reachable(n)).count();
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
    // Whatever `force` says: a shard whose replicas that answer (this node's among them, if it
    // answers) make no quorum cannot commit the membership change that takes this node out,
    // and the drain would never end.
    let stuck: Vec<String> = state
        .groups
        .iter()
        .filter(|(_, g)| g.replicas.contains(&id))
        .filter(|(_, g)| {
            let live = g.replicas.iter().filter(|r| node.is_reachable(r)).count();
            live < g.replicas.len() / 2 + 1
        })
        .map(|(group, _)| crate::cluster::status::display_group(group))
        .collect();
    if !stuck.is_empty() {
        return Err(Error::conflict(
            ErrorCode::WouldLoseQuorum,
            format!(
                "{} cannot change membership (too few of their replicas answer, '{id}' among them): bring '{id}' or those replicas back, or recover with force-recovery",
                stuck.join(", ")
            ),
        ));
    }
    let leaving = BTreeSet::from([id.clone()]);
    start_operation(
        node,
        &state,
        OperationKind::Drain { node: id, force },
        &remaining,
        &leaving,
    )
    .await
}

/// How long a rebalance waits for admitted nodes that are still joining before it answers
/// 409 `nodes_not_ready`: with the planning after it, within the 30 s a forwarded admin call
/// may take.
const JOIN_WAIT: Duration = Duration::from_secs(15);

/// Waits until no admitted node is joining, for up to `within`; answers 409
/// `nodes_not_ready` naming those that still are.
async fn wait_for_joining(node: &Node, within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let waiting = node.meta_state().joining();
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let them = if waiting.len() == 1 { "it" } else { "them" };
            return Err(Error::conflict(
                ErrorCode::NodesNotReady,
                format!(
                    "{} still joining after {} s (not caught up with the cluster's log), and a rebalance now would leave {them} out: retry once GET /admin/cluster/status no longer lists {them} under \"joining\", or remove-node {them}",
                    waiting.join(", "),
                    within.as_secs(),
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Plans moves that even out replicas (`even_distribution`) and leaders, or leaders only
/// (`leaders_only`). Admitted nodes still joining are waited for ([`JOIN_WAIT`]): a plan made
/// without them would leave them empty.
async fn rebalance(node: &Node, strategy: &str) -> Result<OperationStarted> {
    if strategy == "even_distribution" {
        wait_for_joining(node, JOIN_WAIT).await?;
    }
    let state = node.meta_state();
    // A member whose data directory was replaced takes no replica until it is admitted again.
    let lost: BTreeSet<NodeId> = replaced_members(&state, &member_statuses(node).await)
        .into_iter()
        .collect();
    let placeable: BTreeSet<NodeId> = state.placeable().difference(&lost).cloned().collect();
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
        return start_operation(node, &state, kind, &BTreeSet::new(), &BTreeSet::new()).await;
    }
    start_operation(node, &state, kind, &placeable, &BTreeSet::new()).await
}

/// Re-creates the replicas held by `nodes` (default: members that do not answer) on the
/// others.
async fn repair(node: &Node, nodes: Vec<NodeId>) -> Result<OperationStarted> {
    let state = node.meta_state();
    let dead: BTreeSet<NodeId> = if nodes.is_empty() {
        state
            .members()
            .into_iter()
            .filter(|n| *n != node.id() && !node.is_reachable(n))
            .collect()
    } else {
        nodes.into_iter().collect()
    };
    let placeable: BTreeSet<NodeId> = state.placeable().difference(&dead).cloned().collect();
    start_operation(
        node,
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
    node: &Node,
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
        // Groups a forced removal left short first, then the evacuation and the evening out.
        let wanted: BTreeMap<GroupId, usize> = state
            .groups
            .iter()
            .filter_map(|(group, record)| {
                let collection = state.collections.get(&record.collection)?;
                Some((group.clone(), collection.config.replication_factor as usize))
            })
            .collect();
        let eligible: BTreeSet<NodeId> = nodes.difference(leaving).cloned().collect();
        let mut moves = plan_missing(&placement, &eligible, &wanted);
        let mut topped_up = placement.clone();
        apply_moves(&mut topped_up, &moves);
        let mut all = nodes.clone();
        all.extend(leaving.iter().cloned());
        moves.extend(plan_replicas(&topped_up, &all, leaving));
        moves
    };
    apply_moves(&mut placement, &moves);
    // A replica a forced drain cannot move leaves with its node: it leads nothing.
    for replicas in placement.values_mut() {
        replicas.retain(|r| !leaving.contains(r));
    }
    let current: BTreeMap<GroupId, NodeId> = group_leaders(node)
        .await
        .into_iter()
        .filter(|(g, _)| g != META_GROUP)
        .collect();
    let leaders = plan_leaders(&placement, &current);
    let planned = moves.len();
    let response = meta_command(
        node,
        MetaCommand::StartOperation {
            kind,
            moves: moves.into_iter().map(|m| (m.group, m.from, m.to)).collect(),
            leaders: leaders.clone(),
        },
    )
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

/// The placement once `moves` are done.
fn apply_moves(placement: &mut BTreeMap<GroupId, Vec<NodeId>>, moves: &[PlannedMove]) {
    for m in moves {
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
}

/// The leader of every group, as the members report.
async fn group_leaders(node: &Node) -> BTreeMap<GroupId, NodeId> {
    let statuses = member_statuses(node).await;
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
