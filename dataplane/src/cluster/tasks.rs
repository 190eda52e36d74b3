//! The node's background work: forming the cluster once, announcing its addresses, keeping
//! local replicas in line with the meta group's placement, and (on the meta leader) creating
//! the `default` collection and forming new shard groups.

use super::Node;
use super::meta::MetaCommand;
use super::network::NodeStatus;
use super::types::{META_GROUP, NodeAddr, NodeId, Request};
use crate::collection::DEFAULT_COLLECTION;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn spawn_all(node: &Arc<Node>) {
    let tasks = vec![
        tokio::spawn(bootstrap(Arc::clone(node))),
        tokio::spawn(register(Arc::clone(node))),
        tokio::spawn(reconcile(Arc::clone(node))),
        tokio::spawn(control(Arc::clone(node))),
        tokio::spawn(probe(Arc::clone(node))),
    ];
    node.tasks.lock().extend(tasks);
}

/// Initializes the meta group exactly once per cluster.
///
/// Only a node without any meta state takes part. A lone node (no peers) initializes itself.
/// In a cluster, the member with the smallest id initializes once a majority of the members
/// answer and none of them already belongs to a formed cluster; a node that finds a formed
/// cluster (it was wiped and came back) waits to be re-seeded by its leader instead.
async fn bootstrap(node: Arc<Node>) {
    match node.meta.is_initialized().await {
        Ok(true) | Err(_) => return,
        Ok(false) => {}
    }
    let peers = node.config.other_peers();
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
    members.insert(node.id.clone(), node.addr.clone());
    let seed = members.keys().next().cloned().unwrap_or_default();
    if seed != node.id {
        tracing::info!(%seed, "waiting for the seed node to form the cluster");
        return;
    }
    let majority = members.len() / 2 + 1;
    loop {
        let mut reachable = 1;
        let mut formed = false;
        for peer in &peers {
            let status: Result<NodeStatus, _> = node
                .router
                .peers
                .call(&peer.id, "/internal/status", &(), Duration::from_secs(1))
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
            match node.meta.initialize(members.clone()).await {
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

/// Keeps this node's addresses current in the meta group.
async fn register(node: Arc<Node>) {
    loop {
        let registered = node.meta_state.read().nodes.get(&node.id) == Some(&node.addr);
        if !registered && node.meta_metrics().current_leader.is_some() {
            let command = Request::Meta(MetaCommand::RegisterNode {
                id: node.id.clone(),
                addr: node.addr.clone(),
            });
            if let Err(e) = node.propose(META_GROUP, command).await {
                tracing::debug!(error = %e, "registering this node");
            }
        }
        tokio::time::sleep(Duration::from_millis(if registered { 2000 } else { 200 })).await;
    }
}

/// Opens the replicas the meta group places on this node and drops those it no longer does.
async fn reconcile(node: Arc<Node>) {
    let mut changes = node.meta_changes.clone();
    loop {
        // Addresses announced in the meta group.
        let (nodes, wanted) = {
            let state = node.meta_state.read();
            let wanted: BTreeMap<_, _> = state
                .copies_on(&node.id)
                .filter_map(|(group, record)| {
                    state
                        .collections
                        .get(&record.collection)
                        .map(|c| (group.clone(), c.clone()))
                })
                .collect();
            (state.nodes.clone(), wanted)
        };
        for (id, addr) in &nodes {
            node.router.peers.learn(id, &addr.raft);
        }
        for (group, collection) in &wanted {
            if node.local_group(group).is_none()
                && let Err(e) = node.open_group(group, collection).await
            {
                tracing::error!(%group, error = %e, "cannot open replica");
            }
        }
        // Dropping needs a meta state that is known to be current, or a lagging node would
        // delete replicas that a newer placement still gives it.
        if super::caught_up(&node.meta_metrics()) {
            let stale: Vec<String> = node
                .local_groups()
                .iter()
                .map(|g| g.group.clone())
                .filter(|g| !wanted.contains_key(g))
                .collect();
            for group in stale {
                if let Err(e) = node.drop_group(&group).await {
                    tracing::error!(%group, error = %e, "cannot drop replica");
                }
            }
            node.drop_orphaned_state().await;
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
        node.drive_elastic().await;
        let (has_default, forming) = {
            let state = node.meta_state.read();
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
            match node.config.default_collection() {
                Ok(config) => {
                    let command = Request::Meta(MetaCommand::CreateCollection { config });
                    if let Err(e) = node.propose(META_GROUP, command).await {
                        tracing::warn!(error = %e, "creating the default collection");
                    }
                }
                Err(e) => tracing::error!(error = %e, "the default collection is misconfigured"),
            }
        }
        for (group, members) in forming {
            let mut formed = 0;
            for member in members.keys() {
                let result = if *member == node.id {
                    node.init_group(&group, members.clone()).await
                } else {
                    node.router
                        .peers
                        .call::<_, ()>(
                            member,
                            "/internal/init-group",
                            &super::network::InitGroupRpc {
                                group: group.clone(),
                                members: members.clone(),
                            },
                            Duration::from_secs(5),
                        )
                        .await
                        .map_err(Into::into)
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
                if let Err(e) = node.propose(META_GROUP, command).await {
                    tracing::warn!(%group, error = %e, "recording a formed group");
                }
            }
        }
    }
}

/// A member's addresses: as it announced them, else as the meta membership knows them.
fn node_addr(state: &super::meta::MetaState, id: &str) -> NodeAddr {
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
        let members: Vec<NodeId> = node.meta_state.read().members().into_iter().collect();
        let pings = members.iter().filter(|m| **m != node.id).map(|member| {
            let node = &node;
            async move {
                let _: Result<String, _> = node
                    .router
                    .peers
                    .call(member, "/internal/ping", &(), Duration::from_millis(900))
                    .await;
            }
        });
        futures::future::join_all(pings).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
