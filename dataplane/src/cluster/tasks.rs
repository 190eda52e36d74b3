//! The node's background work: forming the cluster once, announcing its addresses, keeping
//! local replicas in line with the meta group's placement, and (on the meta leader) creating
//! the `default` collection and forming new shard groups.

use super::elastic;
use super::node::Node;
use super::raft::ids::{GroupId, META_GROUP, NodeAddr, NodeId};
use super::raft::meta_commands::MetaCommand;
use super::raft::meta_state::MetaState;
use super::raft::rpc::{InitGroupRpc, PingRpc, StatusRpc};
use super::raft::types::Request;
use super::route::propose;
use crate::collection::DEFAULT_COLLECTION;
use crate::error::{Error, ErrorCode, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Starts the node's background work; the node stops it at shutdown.
pub fn spawn_all(node: &Arc<Node>) {
    for task in [
        tokio::spawn(bootstrap(Arc::clone(node))),
        tokio::spawn(register(Arc::clone(node))),
        tokio::spawn(reconcile(Arc::clone(node))),
        tokio::spawn(control(Arc::clone(node))),
        tokio::spawn(probe(Arc::clone(node))),
        tokio::spawn(watch_disk(Arc::clone(node))),
        tokio::spawn(save_graphs(Arc::clone(node))),
        tokio::spawn(super::backup::restore::resume_pending(Arc::clone(node))),
        tokio::spawn(sweep_exports(Arc::clone(node))),
    ] {
        node.add_task(task);
    }
}

/// Initializes the meta group exactly once per cluster.
///
/// Only a node without any meta state takes part. A lone node (no peers) initializes itself.
/// In a cluster, the member with the smallest id initializes once a majority of the members
/// answer and none of them already belongs to a formed cluster; a node that finds a formed
/// cluster (it was wiped and came back) waits to be re-seeded by its leader instead.
async fn bootstrap(node: Arc<Node>) {
    match node.meta_raft().is_initialized().await {
        Ok(true) | Err(_) => return,
        Ok(false) => {}
    }
    let peers = node.config().other_peers();
    let mut members: BTreeMap<NodeId, NodeAddr> = peers
        .iter()
        .map(|p| {
            (
                p.id.clone(),
                NodeAddr {
                    raft: p.address.clone(),
                    api: String::new(),
                },
            )
        })
        .collect();
    members.insert(node.id().to_string(), node.addr().clone());
    let seed = members.keys().next().cloned().unwrap_or_default();
    if seed != node.id() {
        tracing::info!(%seed, "waiting for the seed node to form the cluster");
        return;
    }
    let majority = members.len() / 2 + 1;
    loop {
        let mut reachable = 1;
        let mut formed = false;
        for peer in &peers {
            let status = node
                .peers()
                .call(&peer.id, &StatusRpc, Duration::from_secs(1))
                .await;
            if let Ok(status) = status {
                reachable += 1;
                formed |= status.meta_initialized;
            }
        }
        if formed {
            tracing::info!("a cluster already exists: waiting to be re-seeded by its leader");
            return;
        }
        if reachable >= majority {
            match node.meta_raft().initialize(members.clone()).await {
                Ok(()) => tracing::info!(members = members.len(), "formed the cluster"),
                Err(e) => tracing::warn!(error = %e, "initializing the cluster"),
            }
            return;
        }
        tracing::info!(
            reachable,
            needed = majority,
            "waiting for peers before forming the cluster"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Keeps this node's addresses and incarnation current in the meta group.
async fn register(node: Arc<Node>) {
    loop {
        let registered = {
            let state = node.meta_read();
            state.nodes.get(node.id()) == Some(node.addr())
                && state.incarnations.get(node.id()) == Some(&node.incarnation())
        };
        if !registered && node.meta_metrics().current_leader.is_some() {
            let command = Request::Meta(MetaCommand::RegisterNode {
                id: node.id().to_string(),
                addr: node.addr().clone(),
                incarnation: Some(node.incarnation()),
            });
            if let Err(e) = propose(&node, META_GROUP, command).await {
                tracing::debug!(error = %e, "registering this node");
            }
        }
        tokio::time::sleep(Duration::from_millis(if registered { 2000 } else { 200 })).await;
    }
}

/// Opens the replicas the meta group places on this node and drops those it no longer does.
async fn reconcile(node: Arc<Node>) {
    let mut changes = node.meta_changes();
    loop {
        // Addresses announced in the meta group.
        let (nodes, incarnations, wanted) = {
            let state = node.meta_read();
            let wanted: BTreeMap<_, _> = state
                .copies_on(node.id())
                .filter_map(|(group, record)| {
                    state
                        .collections
                        .get(&record.collection)
                        .map(|c| (group.clone(), c.clone()))
                })
                .collect();
            (state.nodes.clone(), state.incarnations.clone(), wanted)
        };
        for (id, addr) in &nodes {
            node.peers().learn(id, &addr.raft);
        }
        node.peers().expect_incarnations(incarnations);
        for (group, collection) in &wanted {
            if node.replicas().get(group).is_none()
                && let Err(e) = node.replicas().open(group, collection).await
            {
                tracing::error!(%group, error = %e, "cannot open replica");
            }
        }
        // Dropping needs a meta state that is known to be current, or a lagging node would
        // delete replicas that a newer placement still gives it.
        if node.meta_caught_up() {
            let stale: Vec<String> = node
                .replicas()
                .all()
                .iter()
                .map(|g| g.group.clone())
                .filter(|g| !wanted.contains_key(g))
                .collect();
            for group in stale {
                if let Err(e) = node.replicas().remove(&group).await {
                    tracing::error!(%group, error = %e, "cannot drop replica");
                }
            }
            let wanted: Vec<GroupId> = {
                let state = node.meta_read();
                state.copies_on(node.id()).map(|(g, _)| g.clone()).collect()
            };
            node.replicas().remove_orphaned_state(wanted).await;
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Leader duties: the `default` collection and forming new shard groups.
async fn control(node: Arc<Node>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !node.is_meta_leader() {
            continue;
        }
        elastic::moves::drive(&node).await;
        let (has_default, forming) = {
            let state = node.meta_read();
            let forming: Vec<_> = state
                .groups
                .iter()
                .filter(|(_, g)| !g.initialized)
                .map(|(group, record)| {
                    let members: BTreeMap<NodeId, NodeAddr> = record
                        .replicas
                        .iter()
                        .map(|r| (r.clone(), node_addr(&state, r)))
                        .collect();
                    (group.clone(), members)
                })
                .collect();
            (state.collections.contains_key(DEFAULT_COLLECTION), forming)
        };
        if !has_default {
            match node.config().default_collection() {
                Ok(config) => {
                    let command = Request::Meta(MetaCommand::CreateCollection {
                        config,
                        request: None,
                    });
                    if let Err(e) = propose(&node, META_GROUP, command).await {
                        tracing::warn!(error = %e, "creating the default collection");
                    }
                }
                Err(e) => tracing::error!(error = %e, "the default collection is misconfigured"),
            }
        }
        for (group, members) in forming {
            let mut formed = 0;
            for member in members.keys() {
                let result = if member == node.id() {
                    form_group(&node, &group, members.clone()).await
                } else {
                    node.peers()
                        .call(
                            member,
                            &InitGroupRpc {
                                group: group.clone(),
                                members: members.clone(),
                            },
                            Duration::from_secs(5),
                        )
                        .await
                        .map_err(Error::from)
                };
                match result {
                    Ok(()) => formed += 1,
                    Err(e) => tracing::debug!(%group, %member, error = %e, "forming group"),
                }
            }
            // A majority formed the group: it can elect a leader; the rest catch up from it.
            if formed > members.len() / 2 {
                let command = Request::Meta(MetaCommand::GroupInitialized {
                    group: group.clone(),
                });
                if let Err(e) = propose(&node, META_GROUP, command).await {
                    tracing::warn!(%group, error = %e, "recording a formed group");
                }
            }
        }
    }
}

/// A member's addresses: as it announced them, else as the meta membership knows them.
fn node_addr(state: &MetaState, id: &str) -> NodeAddr {
    state.nodes.get(id).cloned().unwrap_or_else(|| {
        state
            .applied
            .membership
            .membership()
            .get_node(&id.to_string())
            .cloned()
            .unwrap_or_default()
    })
}

/// Pings every member each second, so that `grape_cluster_nodes_connected` is current.
async fn probe(node: Arc<Node>) {
    loop {
        let members: Vec<NodeId> = node.members().into_iter().collect();
        let pings = members.iter().filter(|m| *m != node.id()).map(|member| {
            let node = &node;
            async move {
                let _ = node
                    .peers()
                    .call(member, &PingRpc, Duration::from_millis(900))
                    .await;
            }
        });
        futures::future::join_all(pings).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Opens this node's replica of a new group and forms it with exactly `members` (the
/// controller's call, here or through a peer's `InitGroupRpc`).
pub async fn form_group(
    node: &Node,
    group: &str,
    members: BTreeMap<NodeId, NodeAddr>,
) -> Result<()> {
    let collection = {
        let state = node.meta_read();
        let record = state.groups.get(group).ok_or_else(|| {
            Error::not_found(
                ErrorCode::NotFound,
                format!("group {group} is not in this node's meta state yet"),
            )
        })?;
        state
            .collections
            .get(&record.collection)
            .cloned()
            .ok_or_else(|| {
                Error::not_found(
                    ErrorCode::NotFound,
                    format!("collection of {group} unknown"),
                )
            })?
    };
    node.replicas().form(group, &collection, members).await
}

/// Every few seconds: saves the graphs that are due (see `Shard::save_graph_if_due`), unless
/// the data volume is below its reserve.
async fn save_graphs(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        if !node.disk().is_low() {
            node.replicas().save_due_graphs().await;
        }
    }
}

/// Each second: reads the data volume's free space, and records in the meta group when this
/// node went below its reserve or came back above it (until the record matches).
async fn watch_disk(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let low = node.disk().refresh();
        // Snapshots whose sender went away stop holding disk space.
        node.incoming().sweep();
        let (recorded, member) = {
            let state = node.meta_read();
            (
                state.low_disk.contains(node.id()),
                state.members().contains(node.id()),
            )
        };
        if low == recorded || (low && !member) || !node.meta_caught_up() {
            continue;
        }
        let command = MetaCommand::SetDiskLow {
            node: node.id().to_string(),
            low,
        };
        if let Err(error) = propose(&node, META_GROUP, Request::Meta(command)).await {
            tracing::debug!(%error, "recording the disk state failed; retrying");
        }
    }
}

/// Drops backups' exports that nobody pulls any more (their coordinator died).
async fn sweep_exports(node: Arc<Node>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        let running: std::collections::BTreeSet<String> = node
            .meta_read()
            .backups
            .values()
            .filter(|b| b.state == grape_client::BackupState::Running)
            .map(|b| b.id.clone())
            .collect();
        node.exports().sweep(&running);
    }
}
