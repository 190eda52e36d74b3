//! Forced recovery after the loss of a majority: the last resort when Raft cannot elect a
//! leader because most members are gone for good. The node records the request and restarts;
//! `raft::recovery` rewrites its groups at the next start.

use crate::cluster::node::Node;
use crate::cluster::raft::recovery;
use crate::error::{Error, ErrorCode, Result};
use grape_client::ForceRecoveryResponse;

/// Asks for a forced recovery at the next start, then stops this node (its supervisor
/// restarts it). Refused while the cluster still has a working quorum.
pub async fn force_recovery(
    node: &Node,
    mode: &str,
    accept_data_loss: bool,
) -> Result<ForceRecoveryResponse> {
    if mode != "single_node" {
        return Err(Error::invalid(
            ErrorCode::InvalidRequest,
            format!("recovery_mode {mode:?} is not supported; use \"single_node\""),
        ));
    }
    if !accept_data_loss {
        return Err(Error::invalid(
            ErrorCode::InvalidRequest,
            "a forced recovery makes this node the only member of every group it holds and may \
                 lose acknowledged writes that only lost members had; pass \"accept_data_loss\": true",
        ));
    }
    // A leader cut off from its quorum still believes it leads: what counts is whether this
    // node reaches a majority of the members.
    let members = node.members();
    let reachable = members.iter().filter(|m| node.is_reachable(m)).count();
    if reachable > members.len() / 2 {
        return Err(Error::conflict(
            ErrorCode::ClusterHealthy,
            format!(
                "{reachable} of the {} members answer, a quorum: remove or repair nodes instead",
                members.len()
            ),
        ));
    }
    recovery::request(&node.config().node.data_dir, mode)?;
    tracing::warn!(
        "forced recovery requested: stopping; the node rewrites its groups when it starts again"
    );
    node.request_exit();
    Ok(ForceRecoveryResponse {
        recovery_mode: mode.to_string(),
        restarting: true,
        message: "the node stops now and becomes the only member of its groups when it \
                      starts again"
            .into(),
    })
}
