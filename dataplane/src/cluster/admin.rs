//! Cluster administration: status of every node and group, leadership, consistency checks and
//! leadership transfer.

use super::Node;
use super::network::{GroupStatus, NodeStatus, TransferRpc};
use super::types::{GroupId, META_GROUP, NodeId};
use crate::collection::parse_group;
use crate::error::{Error, ErrorCode, Result};
use futures::future::join_all;
use grape_client::{
    ClusterStatus, ConsensusGroup, ConsensusResponse, GroupMemberStatus, GroupSummary, GroupSync,
    LeaderResponse, MemberStatus, MovedLeadership, RaftRole, ShardChecksum, ShardStats, SyncStatus,
    TransferLeadershipResponse,
};
use openraft::type_config::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

impl Node {
    /// Per-shard figures of the replicas this node holds.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        let state = self.meta_state.read();
        self.local_groups()
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
                    rebuilds: figures.index.rebuilds,
                    replicas: record.map(|r| r.replicas.clone()).unwrap_or_default(),
                    leader: local.raft.metrics().borrow_watched().current_leader.clone(),
                }
            })
            .collect()
    }

    /// Content checksums of the replicas this node holds, computed from storage.
    pub async fn local_checksums(&self) -> Result<Vec<ShardChecksum>> {
        let locals = self.local_groups();
        super::ops::blocking(move || {
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
    pub fn cluster_leader(&self) -> LeaderResponse {
        let meta = self.meta_metrics();
        LeaderResponse {
            leader: meta.current_leader,
            term: meta.current_term,
        }
    }

    /// Every member's own status (this node's directly, others' over the network; `null` for
    /// members that do not answer).
    pub(super) async fn member_statuses(&self) -> BTreeMap<NodeId, Option<NodeStatus>> {
        let members: Vec<NodeId> = self.meta_state.read().members().into_iter().collect();
        let calls = members.iter().map(|member| async move {
            if *member == self.id {
                return (member.clone(), Some(self.status()));
            }
            let status = self
                .router
                .peers
                .call::<_, NodeStatus>(member, "/internal/status", &(), STATUS_TIMEOUT)
                .await
                .ok();
            (member.clone(), status)
        });
        join_all(calls).await.into_iter().collect()
    }

    /// Nodes and groups across the cluster: each group's leader, term and each member's
    /// commit and applied index.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let statuses = self.member_statuses().await;
        let state = self.meta_state();
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
            node_id: self.id.clone(),
            leader: self.meta_metrics().current_leader,
            nodes,
            groups,
        }
    }

    /// Each group this node holds, as Raft sees it: voters, leader, term, quorum.
    pub fn consensus(&self) -> ConsensusResponse {
        let groups = self
            .status()
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
            node_id: self.id.clone(),
            groups,
        }
    }

    /// Each local group's progress against what its leader committed.
    pub fn sync_status(&self) -> SyncStatus {
        let status = self.status();
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
            node_id: self.id.clone(),
            ready: status.ready,
            groups,
        }
    }

    /// Moves leaderships. With `target`: one group (`shard`), or every group `from` (default:
    /// the meta leader) leads and `target` holds a replica of. Without `target` (needs `from`):
    /// every group `from` leads goes to another of its voters, the one leading fewest groups,
    /// so that `from` leads nothing afterwards (before a restart or a drain).
    pub async fn transfer_leadership(
        &self,
        target: Option<&str>,
        shard: Option<&str>,
        from: Option<&str>,
    ) -> Result<TransferLeadershipResponse> {
        let state = self.meta_state();
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
            (Some(name), Some(target)) => vec![(self.resolve_group(name)?, target.to_string())],
            _ => {
                let statuses = self.member_statuses().await;
                let from = from
                    .map(str::to_string)
                    .or_else(|| self.meta_metrics().current_leader)
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
            self.transfer_group(&group, &target).await?;
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
    fn resolve_group(&self, name: &str) -> Result<GroupId> {
        if name == META_GROUP {
            return Ok(META_GROUP.to_string());
        }
        let state = self.meta_state.read();
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
    pub(super) async fn transfer_group(&self, group: &str, target: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leader = match self.leader_of(group) {
                Some(leader) => Some(leader),
                None => self.remote_leader_of(group).await,
            };
            if leader.as_deref() == Some(target) {
                return Ok(());
            }
            if let Some(leader) = leader {
                let result = if leader == self.id {
                    self.transfer_here(group, target).await
                } else {
                    self.router
                        .peers
                        .call::<_, ()>(
                            &leader,
                            "/internal/transfer",
                            &TransferRpc {
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
    async fn remote_leader_of(&self, group: &str) -> Option<NodeId> {
        let statuses = self.member_statuses().await;
        statuses.values().flatten().find_map(|s| {
            s.groups
                .iter()
                .find(|g| g.group == group && g.role == RaftRole::Leader)
                .map(|_| s.node_id.clone())
        })
    }

    /// Hands this node's leadership of `group` to `target` (a peer's call, or our own).
    pub(super) async fn transfer_here(&self, group: &str, target: &str) -> Result<()> {
        let trigger =
            |result: std::result::Result<(), openraft::errors::Fatal<super::types::TypeConfig>>| {
                result.map_err(|e| Error::unavailable(ErrorCode::Unavailable, e.to_string()))
            };
        if group == META_GROUP {
            if !self.is_meta_leader() {
                return Err(Error::NotLeader {
                    message: format!("{} does not lead meta", self.id),
                    leader: self.leader_of(group),
                });
            }
            return trigger(
                self.meta
                    .trigger()
                    .transfer_leader(target.to_string())
                    .await,
            );
        }
        let local = self.local_group(group).ok_or_else(|| {
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
}

/// `default/3@17` -> `default/3`.
pub fn display_group(group: &str) -> String {
    match parse_group(group) {
        Some((collection, shard, _)) => format!("{collection}/{shard}"),
        None => group.to_string(),
    }
}
