//! Where a request runs: every write, read and search on a group goes through one
//! route-and-retry loop, [`route`], that picks a replica (the leader for writes and `strong`
//! reads, this node's own replica first for `eventual` reads), runs the request there, here or
//! on a peer, and retries elsewhere while replicas are down or leadership moves, for up to
//! [`LEADER_WAIT`].
//!
//! The rooms beside it use the loop: `documents` (upsert, delete, get, list), `search` (fan
//! out over shards and merge) and `catalog` (collections, through the meta group).

pub mod catalog;
pub mod documents;
pub mod search;

use super::node::Node;
use super::raft::ids::{META_GROUP, NodeId};
use super::raft::meta_commands::{MetaCommand, MetaResponse};
use super::raft::rpc::ProposeRpc;
use super::raft::types::{Request, Response};
use super::replicas::LocalGroup;
use crate::collection::DEFAULT_COLLECTION;
use crate::error::{Error, ErrorCode, Result};
use crate::shard::ShardCommand;
use openraft::ReadPolicy;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a request waits for a leader (an election, a restart) before giving up.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Which replica a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The leader, to append to the log.
    Write,
    /// The leader, after it confirmed its leadership with a quorum (read-index).
    StrongRead,
    /// Any replica; this node's own when it holds one.
    AnyReplica,
}

/// Runs a request on a replica of `group` chosen by `target`: `here()` when that is this
/// node, `there(peer, time_left)` otherwise. Follows leader hints, tries other replicas while
/// one is unreachable, waits out elections, and answers `no_leader` after [`LEADER_WAIT`]:
/// every attempt, here or on a peer, is bounded by the time left, so a request answers within
/// [`LEADER_WAIT`] in all.
///
/// A leader cut off from its quorum keeps a write pending: the loop gives up at the deadline
/// without acknowledging it (the write may still commit later).
pub async fn route<T, Here, HereFut, There, ThereFut>(
    node: &Node,
    group: &str,
    target: Target,
    here: Here,
    there: There,
) -> Result<T>
where
    Here: Fn() -> HereFut,
    HereFut: Future<Output = Result<T>>,
    There: Fn(NodeId, Duration) -> ThereFut,
    ThereFut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + LEADER_WAIT;
    let mut hint: Option<NodeId> = None;
    let mut attempt = 0usize;
    loop {
        let replicas = replicas_of(node, group);
        let nth = || replicas.get(attempt % replicas.len().max(1)).cloned();
        let chosen = match target {
            Target::Write | Target::StrongRead => {
                hint.take().or_else(|| node.leader_of(group)).or_else(nth)
            }
            Target::AnyReplica if attempt == 0 && node.replicas().get(group).is_some() => {
                Some(node.id().to_string())
            }
            Target::AnyReplica => nth(),
        };
        attempt += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = match &chosen {
            Some(peer) if peer == node.id() => tokio::time::timeout(left, here())
                .await
                .unwrap_or_else(|_| {
                    Err(Error::unavailable(
                        ErrorCode::NoLeader,
                        format!(
                            "{group} could not answer within {} s",
                            LEADER_WAIT.as_secs()
                        ),
                    ))
                }),
            Some(peer) => there(peer.clone(), left.max(Duration::from_millis(100))).await,
            None => Err(Error::unavailable(
                ErrorCode::NoLeader,
                format!("no replica of {group} is known"),
            )),
        };
        let (message, pause) = match outcome {
            Err(Error::NotLeader { leader, message }) => {
                if leader.is_some() && leader != chosen {
                    // Go straight to the leader the replica named.
                    hint = leader;
                    (message, Duration::ZERO)
                } else {
                    (message, Duration::from_millis(50))
                }
            }
            Err(Error::Unavailable {
                code:
                    code @ (ErrorCode::PeerUnreachable
                    | ErrorCode::NoLeader
                    | ErrorCode::ShardFailed
                    | ErrorCode::Overloaded),
                message,
            }) => {
                let pause = match target {
                    Target::Write if code == ErrorCode::NoLeader => Duration::from_millis(50),
                    Target::Write => Duration::from_millis(100),
                    // A read tries every replica at once before it waits.
                    _ if attempt < replicas.len() => Duration::ZERO,
                    _ => Duration::from_millis(100),
                };
                (message, pause)
            }
            other => return other,
        };
        if Instant::now() > deadline {
            return Err(Error::unavailable(ErrorCode::NoLeader, message));
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Nodes holding a replica of `group` (the members, for the meta group), preferred leader
/// first.
fn replicas_of(node: &Node, group: &str) -> Vec<NodeId> {
    let state = node.meta_read();
    if group == META_GROUP {
        return state.members().into_iter().collect();
    }
    state
        .groups
        .get(group)
        .map(|g| g.replicas.clone())
        .unwrap_or_default()
}

/// Appends a command to a group's log through its leader, wherever it is, and returns the
/// outcome once it is committed and applied.
pub async fn propose(node: &Node, group: &str, request: Request) -> Result<Response> {
    route(
        node,
        group,
        Target::Write,
        || propose_here(node, group, request.clone()),
        |peer, timeout| {
            let rpc = ProposeRpc {
                group: group.to_string(),
                request: request.clone(),
            };
            async move {
                node.peers()
                    .call(&peer, &rpc, timeout)
                    .await
                    .map_err(Error::from)
            }
        },
    )
    .await
}

/// Appends a command to a group whose leader should be this node (our own call, or a peer's
/// forwarded write).
pub async fn propose_here(node: &Node, group: &str, request: Request) -> Result<Response> {
    admit_write(node, group, &request)?;
    // Data writes wait while a backup takes its cut (see `cluster::backup`), and hold their
    // permit until they are committed.
    let _pass = match &request {
        Request::Shard(_) => Some(node.write_gate().pass().await?),
        _ => None,
    };
    // The leader that appends a backup's fence exports the shard at it.
    let request = match request {
        Request::Fence { backup, .. } => Request::Fence {
            backup,
            exporter: node.id().to_string(),
        },
        other => other,
    };
    let result = if group == META_GROUP {
        node.meta_raft().client_write(request).await.map(|r| r.data)
    } else {
        let local = node.replicas().get(group).ok_or_else(|| Error::NotLeader {
            message: format!("this node holds no replica of {group}"),
            leader: None,
        })?;
        local.raft.client_write(request).await.map(|r| r.data)
    };
    result.map_err(|e| match e.forward_to_leader() {
        Some(forward) => Error::NotLeader {
            message: format!("{} does not lead {group}", node.id()),
            leader: forward.leader_id.clone(),
        },
        // This replica's Raft stopped (its log write failed): the route tries another.
        None if e.fatal().is_some() => Error::unavailable(
            ErrorCode::ShardFailed,
            format!("{group} stopped on {}: {e}", node.id()),
        ),
        None => Error::unavailable(ErrorCode::Unavailable, format!("{group}: {e}")),
    })
}

/// Refuses a write that adds data (an upsert, a collection create) when this node, or a node
/// holding a replica of the group it goes to, is below its free-disk reserve. Deletes and
/// drops free space and go through; so does everything the cluster does by itself.
fn admit_write(node: &Node, group: &str, request: &Request) -> Result<()> {
    let adds_data = match request {
        Request::Shard(ShardCommand::Upsert { .. }) => true,
        // The cluster creates `default` by itself: an empty collection.
        Request::Meta(MetaCommand::CreateCollection { config, .. }) => {
            config.name != DEFAULT_COLLECTION
        }
        _ => false,
    };
    if !adds_data {
        return Ok(());
    }
    if node.disk().refresh() {
        return Err(Error::InsufficientStorage(format!(
            "{} has {} MiB free on its data volume, less than database.min_free_disk_mb ({} MiB): writes are refused until space is freed; reads and deletes go on",
            node.id(),
            node.disk().free_bytes() >> 20,
            node.disk().reserve_bytes() >> 20
        )));
    }
    low_holders(node, group)
}

/// Refuses a write to `group` when a node holding one of its replicas (or any member, for the
/// meta group) is recorded below its free-disk reserve.
pub fn low_holders(node: &Node, group: &str) -> Result<()> {
    let state = node.meta_read();
    if state.low_disk.is_empty() {
        return Ok(());
    }
    let holders: Vec<&NodeId> = match state.groups.get(group) {
        Some(record) => record
            .replicas
            .iter()
            .chain(&record.learners)
            .filter(|n| state.low_disk.contains(*n))
            .collect(),
        // A collection create places replicas on any member.
        None => state.low_disk.iter().collect(),
    };
    match holders.first() {
        None => Ok(()),
        Some(_) => Err(Error::InsufficientStorage(format!(
            "{} (holding {}) {} below the free-disk reserve (database.min_free_disk_mb): writes are refused until space is freed; reads and deletes go on",
            holders
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if group == META_GROUP {
                "the cluster's data"
            } else {
                group
            },
            if holders.len() == 1 { "is" } else { "are" }
        ))),
    }
}

/// Proposes a command to the meta group and returns what applying it answered.
pub async fn meta_command(node: &Node, command: MetaCommand) -> Result<MetaResponse> {
    match propose(node, META_GROUP, Request::Meta(command)).await? {
        Response::Meta(response) => Ok(response),
        other => Err(Error::Internal(format!("meta answered {other:?}"))),
    }
}

/// This node's replica of `group`, ready to be read: with `strong`, after confirming with a
/// quorum that this node leads the group and has applied everything committed before the
/// call (read-index), so that the read is linearizable.
pub async fn local_read(node: &Node, group: &str, strong: bool) -> Result<Arc<LocalGroup>> {
    let local = node.replicas().require(group)?;
    if strong {
        local
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| match e.forward_to_leader() {
                Some(forward) => Error::NotLeader {
                    message: format!("{} does not lead {group}", node.id()),
                    leader: forward.leader_id.clone(),
                },
                None => Error::unavailable(ErrorCode::NoLeader, format!("{group}: {e}")),
            })?;
    }
    Ok(local)
}

/// Runs blocking work (RocksDB reads, searches) off the async workers.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("a worker panicked: {e}")))?
}
