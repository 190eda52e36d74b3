//! What a node reports: its own status and its replicas' figures, and the cluster-wide views
//! built from every member's report (`/admin/cluster/status`, `consensus`, `sync-status`,
//! `leader`, `election-history`, `/admin/stats/shards`, `/admin/checksum`).

use super::node::{Node, known_leader};
use super::raft::ids::{GroupId, META_GROUP, NodeId};
use super::raft::meta_state::MetaState;
use super::raft::rpc::{GroupStatus, NodeStatus, StatusRpc};
use super::raft::types::RaftMetrics;
use super::route::blocking;
use crate::collection::parse_group;
use crate::error::Result;
use futures::future::join_all;
use grape_client::{
    ClusterStatus, ConsensusGroup, ConsensusResponse, ElectionHistory, GroupMemberStatus,
    GroupSummary, GroupSync, LeaderResponse, MemberStatus, RaftRole, ShardChecksum, ShardStats,
    SyncStatus,
};
use openraft::Instant as _;
use openraft::type_config::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a member's status may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's view of itself and its groups.
pub fn node_status(node: &Node) -> NodeStatus {
    let meta = node.meta_metrics();
    let mut groups = vec![GroupStatus::from_metrics(META_GROUP, &meta)];
    for local in node.replicas().all() {
        let mut status =
            GroupStatus::from_metrics(&local.group, &local.raft.metrics().borrow_watched());
        let figures = local.shard.figures();
        status.documents = figures.documents;
        status.bytes = figures.bytes;
        status.snapshot_sent = node.outgoing().of_group(&local.group);
        groups.push(status);
    }
    NodeStatus {
        node_id: node.id().to_string(),
        addr: node.addr().clone(),
        ready: node.is_ready(),
        meta_initialized: meta.last_log_index.is_some() || meta.vote.leader_id().term > 0,
        documents: node.replicas().document_count(),
        groups,
        incarnation: Some(node.incarnation()),
    }
}

/// Leadership changes this node saw, newest first.
pub fn election_history(node: &Node) -> ElectionHistory {
    ElectionHistory {
        node_id: node.id().to_string(),
        events: node.activity().leader_events(),
    }
}

/// Per-shard figures of the replicas this node holds.
pub fn shard_stats(node: &Node) -> Vec<ShardStats> {
    let state = node.meta_read();
    node.replicas()
        .all()
        .iter()
        .map(|local| {
            let figures = local.shard.figures();
            let record = state.groups.get(&local.group);
            ShardStats {
                collection: local.collection.name().to_string(),
                shard: record.map(|r| r.shard).unwrap_or_default(),
                documents: figures.documents,
                bytes: figures.bytes,
                indexed: figures.index.indexed,
                pending: figures.index.pending,
                tombstones: figures.index.dead_in_graph,
                stored_vectors: figures.index.stored,
                vector_bytes: figures.index.vector_bytes,
                vector_disk_bytes: figures.index.vector_disk_bytes,
                rebuilds: figures.index.rebuilds,
                graph_loaded: figures.graph_loaded,
                replicas: record.map(|r| r.replicas.clone()).unwrap_or_default(),
                leader: local.raft.metrics().borrow_watched().current_leader.clone(),
                failed: figures.failed,
            }
        })
        .collect()
}

/// Content checksums of the replicas this node holds, computed from storage.
pub async fn local_checksums(node: &Node) -> Result<Vec<ShardChecksum>> {
    let locals = node.replicas().all();
    blocking(move || {
        let mut sums = Vec::new();
        for local in locals {
            let (documents, sum) = local.shard.checksum()?;
            sums.push(ShardChecksum {
                collection: local.collection.name().to_string(),
                shard: parse_group(&local.group)
                    .map(|(_, s, _)| s)
                    .unwrap_or_default(),
                documents,
                checksum: format!("{sum:016x}"),
            });
        }
        sums.sort_by(|a, b| (&a.collection, a.shard).cmp(&(&b.collection, b.shard)));
        Ok(sums)
    })
    .await
}

/// The meta group's leader and term.
pub fn cluster_leader(node: &Node) -> LeaderResponse {
    let meta = node.meta_metrics();
    LeaderResponse {
        leader: meta.current_leader,
        term: meta.current_term,
    }
}

/// Every member's own status (this node's directly, others' over the network; `null` for
/// members that do not answer).
pub async fn member_statuses(node: &Node) -> BTreeMap<NodeId, Option<NodeStatus>> {
    let members: Vec<NodeId> = node.meta_read().members().into_iter().collect();
    let calls = members.iter().map(|member| async move {
        if *member == node.id() {
            return (member.clone(), Some(node_status(node)));
        }
        let status = node
            .peers()
            .call(member, &StatusRpc, STATUS_TIMEOUT)
            .await
            .ok();
        (member.clone(), status)
    });
    join_all(calls).await.into_iter().collect()
}

/// Nodes and groups across the cluster: each group's leader, term and each member's
/// commit and applied index.
pub async fn cluster_status(node: &Node) -> ClusterStatus {
    let statuses = member_statuses(node).await;
    let state = node.meta_state();
    let nodes = statuses
        .iter()
        .map(|(id, status)| {
            let addr = state.nodes.get(id).cloned().unwrap_or_default();
            MemberStatus {
                id: id.clone(),
                address: addr.api,
                raft_address: addr.raft,
                reachable: status.is_some(),
                ready: status.as_ref().is_some_and(|s| s.ready),
                documents: status.as_ref().map(|s| s.documents),
                leads: status.as_ref().map(|s| {
                    s.groups
                        .iter()
                        .filter(|g| g.role == RaftRole::Leader)
                        .count()
                }),
                replicas: state.groups_of(id).count(),
            }
        })
        .collect();
    let mut groups: BTreeMap<GroupId, Vec<(NodeId, GroupStatus)>> = BTreeMap::new();
    for (id, status) in &statuses {
        for group in status.iter().flat_map(|s| s.groups.iter()) {
            groups
                .entry(group.group.clone())
                .or_default()
                .push((id.clone(), group.clone()));
        }
    }
    let joining = state.joining();
    let groups = groups
        .into_iter()
        .map(|(group, members)| GroupSummary {
            name: display_group(&group),
            group,
            leader: members
                .iter()
                .find(|(_, g)| g.role == RaftRole::Leader)
                .map(|(id, _)| id.clone()),
            term: members.iter().map(|(_, g)| g.term).max(),
            members: members
                .iter()
                .map(|(id, g)| GroupMemberStatus {
                    node: id.clone(),
                    role: g.role,
                    term: g.term,
                    last_log_index: g.last_log_index,
                    commit_index: g.committed_index,
                    applied_index: g.applied_index,
                })
                .collect(),
        })
        .collect();
    ClusterStatus {
        node_id: node.id().to_string(),
        leader: node.meta_metrics().current_leader,
        nodes,
        groups,
        joining,
        low_disk: state.low_disk.iter().cloned().collect(),
        // Judged from a current meta state only: a lagging node could still hold the
        // incarnation of a member that was replaced and admitted again since.
        data_lost: if node.meta_caught_up() {
            replaced_members(&state, &statuses)
        } else {
            Vec::new()
        },
    }
}

/// Members that answer with another data directory than the one the cluster recorded: their
/// volume was lost or replaced, and they take part in nothing until removed and added again.
pub fn replaced_members(
    state: &MetaState,
    statuses: &BTreeMap<NodeId, Option<NodeStatus>>,
) -> Vec<NodeId> {
    statuses
        .iter()
        .filter_map(|(id, status)| {
            let answered = status.as_ref()?.incarnation?;
            let recorded = *state.incarnations.get(id)?;
            (answered != recorded).then(|| id.clone())
        })
        .collect()
}

/// Each group this node holds, as Raft sees it: voters, leader, term, quorum.
pub fn consensus(node: &Node) -> ConsensusResponse {
    let groups = node_status(node)
        .groups
        .into_iter()
        .map(|g| ConsensusGroup {
            name: display_group(&g.group),
            quorum: g.voters.len() / 2 + 1,
            group: g.group,
            role: g.role,
            term: g.term,
            leader: g.leader,
            voters: g.voters,
            learners: g.learners,
            millis_since_quorum_ack: g.millis_since_quorum_ack,
            matched: g.matched,
        })
        .collect();
    ConsensusResponse {
        node_id: node.id().to_string(),
        groups,
    }
}

/// Each local group's progress against what its leader committed.
pub fn sync_status(node: &Node) -> SyncStatus {
    let status = node_status(node);
    let groups = status
        .groups
        .into_iter()
        .map(|g| {
            let lag = g
                .committed_index
                .unwrap_or(0)
                .saturating_sub(g.applied_index.unwrap_or(0));
            GroupSync {
                name: display_group(&g.group),
                group: g.group,
                caught_up: g.leader.is_some() && lag == 0,
                leader: g.leader,
                commit_index: g.committed_index,
                applied_index: g.applied_index,
                snapshot_index: g.snapshot_index,
                purged_index: g.purged_index,
                lag,
            }
        })
        .collect();
    SyncStatus {
        node_id: node.id().to_string(),
        ready: status.ready,
        groups,
    }
}

/// `default/3@17` -> `default/3`.
pub fn display_group(group: &str) -> String {
    match parse_group(group) {
        Some((collection, shard, _)) => format!("{collection}/{shard}"),
        None => group.to_string(),
    }
}

/// The health of this node's Raft groups (the meta group included), for metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RaftHealth {
    /// Groups this node is a member of.
    pub groups: usize,
    /// Groups with no working leader this node knows of: an election under way, a lost
    /// quorum (also seen from a leader no quorum acknowledged for [`quorum_lost_after`]), or
    /// a Raft stopped by a failed log write.
    pub without_leader: usize,
    /// For each group this node leads (`collection/shard`, or `meta`): how many entries its
    /// furthest-behind voter trails the leader's log.
    pub replica_lag: Vec<(String, u64)>,
}

/// This node's Raft groups: how many, how many lack a leader, how far behind followers are.
pub fn raft_health(node: &Node) -> RaftHealth {
    let mut health = RaftHealth::default();
    let after = quorum_lost_after(node);
    let mut visit = |group: &str, metrics: &RaftMetrics| {
        health.groups += 1;
        if known_leader(metrics).is_none() || lost_quorum(node.id(), metrics, after) {
            health.without_leader += 1;
        }
        if let Some(lag) = voter_lag(node.id(), metrics) {
            health.replica_lag.push((display_group(group), lag));
        }
    };
    visit(META_GROUP, &node.meta_metrics());
    for local in node.replicas().all() {
        visit(&local.group, &local.raft.metrics().borrow_watched());
    }
    health
}

/// How long a leader may go without a quorum acknowledging it before its group counts as
/// leaderless: 5 s, or ten heartbeats when `cluster.heartbeat_interval_ms` is longer.
pub fn quorum_lost_after(node: &Node) -> Duration {
    let heartbeats = Duration::from_millis(node.config().cluster.heartbeat_interval_ms * 10);
    heartbeats.max(Duration::from_secs(5))
}

/// Whether this node leads the group but no quorum acknowledged it for `after`: a leader cut
/// off from its followers keeps its role, and can commit nothing.
fn lost_quorum(me: &str, metrics: &RaftMetrics, after: Duration) -> bool {
    if metrics.current_leader.as_deref() != Some(me) {
        return false;
    }
    let voters = metrics.membership_config.membership().voter_ids().count();
    if voters <= 1 {
        return false;
    }
    metrics
        .last_quorum_acked
        .as_ref()
        .is_none_or(|acked| acked.elapsed() > after)
}

/// On a group's leader: entries its furthest-behind voter trails the leader's log by. A voter
/// the leader has not matched yet (a new leader, or a voter down since it took over) is left
/// out rather than counted as the whole log: its state is unknown, and a down voter shows as
/// a node down. Learners catching up during a move are not counted: they are expected to
/// trail.
fn voter_lag(me: &str, metrics: &RaftMetrics) -> Option<u64> {
    let replication = metrics.replication.as_ref()?;
    if metrics.current_leader.as_deref() != Some(me) {
        return None;
    }
    let last = metrics.last_log_index.unwrap_or(0);
    let lag = metrics
        .membership_config
        .membership()
        .voter_ids()
        .filter(|voter| voter != me)
        .filter_map(|voter| {
            let matched = replication.get(&voter)?.as_ref()?.index();
            Some(last.saturating_sub(matched))
        })
        .max()
        .unwrap_or(0);
    Some(lag)
}
