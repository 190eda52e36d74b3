//! Membership changes of one group, carried out by its leader: add a learner, set the voters.

use crate::cluster::node::Node;
use crate::cluster::raft::ids::META_GROUP;
use crate::cluster::raft::ids::{NodeAddr, NodeId};
use crate::cluster::raft::rpc::MembershipRpc;
use crate::error::{Error, ErrorCode, Result};
use openraft::ChangeMembers;
use std::time::Duration;

/// Carries out a membership change of a group this node leads (a peer's call, or ours).
pub async fn membership_here(node: &Node, rpc: MembershipRpc) -> Result<()> {
    let (group, result) = match rpc {
        MembershipRpc::AddLearner {
            group,
            node: learner,
            addr,
        } => {
            node.peers().learn(&learner, &addr.raft);
            let result = if group == META_GROUP {
                node.meta_raft()
                    .add_learner(learner, addr, false)
                    .await
                    .map(|_| ())
            } else {
                let local = node
                    .replicas()
                    .get(&group)
                    .ok_or_else(|| Error::NotLeader {
                        message: format!("no replica of {group} here"),
                        leader: None,
                    })?;
                local
                    .raft
                    .add_learner(learner, addr, false)
                    .await
                    .map(|_| ())
            };
            (group, result)
        }
        MembershipRpc::SetVoters { group, voters } => {
            let result = if group == META_GROUP {
                node.meta_raft()
                    .change_membership(voters, false)
                    .await
                    .map(|_| ())
            } else {
                let local = node
                    .replicas()
                    .get(&group)
                    .ok_or_else(|| Error::NotLeader {
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
            message: format!("{} does not lead {group}", node.id()),
            leader: forward.leader_id.clone(),
        },
        None => Error::unavailable(ErrorCode::Unavailable, format!("{group}: {e}")),
    })
}

/// Sends a membership change to the group's leader.
pub async fn membership(node: &Node, leader: &str, rpc: MembershipRpc) -> Result<()> {
    if leader == node.id() {
        return membership_here(node, rpc).await;
    }
    node.peers()
        .call(leader, &rpc, Duration::from_secs(30))
        .await
        .map_err(Error::from)
}

/// Changes the meta group's membership relative to its current one (add or remove these
/// voters, remove these nodes); this node must lead the meta group. Relative changes never
/// drop a node another change added meanwhile, as a voter set computed from a stale meta
/// state would.
pub async fn change_meta_membership(
    node: &Node,
    change: ChangeMembers<NodeId, NodeAddr>,
    what: &str,
) -> Result<()> {
    node.meta_raft()
        .change_membership(change, false)
        .await
        .map(|_| ())
        .map_err(|e| Error::unavailable(ErrorCode::Unavailable, format!("{what}: {e}")))
}
