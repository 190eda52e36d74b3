//! Forced recovery after the loss of a majority, at the storage level: the request file, and
//! the rewrite of every group this node holds so that it is the only member. The admin entry
//! (`elastic::recovery`) refuses it while the cluster has a quorum.
//!
//! `POST /admin/cluster/force-recovery {"recovery_mode": "single_node", "accept_data_loss":
//! true}` records a request in the data directory and restarts the node (it exits; its
//! supervisor, or the operator, starts it again). At start-up, before any Raft group runs, the
//! node rewrites every group it holds so that it is the only member, keeping what it has
//! applied and dropping log entries it had not applied. It may lose acknowledged writes that
//! only the lost members had applied; that is the price of availability without a quorum.

use super::ids::{META_GROUP, NodeAddr, NodeId};
use super::meta_commands::OperationState;
use super::meta_sm::RECORD;
use super::meta_state::MetaState;
use super::types::{AppliedState, Entry, LogId, StoredMembership, Vote, decode, encode};
use crate::error::{Error, ErrorCode, Result};
use crate::storage::{Changes, Storage, generation_namespace};
use openraft::entry::RaftEntry;
use openraft::vote::RaftLeaderId;
use std::collections::BTreeMap;
use std::path::Path;

/// Name of the request file in the data directory.
const REQUEST_FILE: &str = "FORCE_RECOVERY";

/// Records a forced-recovery request, applied at the next start.
pub fn request(data_dir: &Path, mode: &str) -> Result<()> {
    std::fs::write(data_dir.join(REQUEST_FILE), mode).map_err(|e| {
        Error::unavailable(
            ErrorCode::StorageError,
            format!("cannot record the recovery request: {e}"),
        )
    })
}

/// Whether a recovery request waits in `data_dir`.
pub fn requested(data_dir: &Path) -> bool {
    data_dir.join(REQUEST_FILE).exists()
}

/// Makes `id` the only member of every group it holds, from what it has applied. Runs before
/// any Raft group starts.
pub fn rewrite_as_single_node(
    storage: &Storage,
    data_dir: &Path,
    id: &NodeId,
    addr: &NodeAddr,
) -> Result<()> {
    let members: BTreeMap<NodeId, NodeAddr> = BTreeMap::from([(id.clone(), addr.clone())]);
    // The meta group: its state is one record.
    let mut meta: MetaState = match storage.node_record(RECORD)? {
        Some(bytes) => decode(&bytes).map_err(|e| Error::Internal(format!("meta state: {e}")))?,
        None => {
            return Err(Error::invalid(
                ErrorCode::InvalidRequest,
                "this node holds no cluster state to recover",
            ));
        }
    };
    let meta_applied = meta.applied.last_applied.clone();
    meta.applied.membership = StoredMembership::new(meta_applied.clone(), members.clone().into());
    meta.nodes.retain(|n, _| n == id);
    meta.incarnations.retain(|n, _| n == id);
    meta.nodes.insert(id.clone(), addr.clone());
    meta.node_states.clear();
    for group in meta.groups.values_mut() {
        if group.replicas.contains(id) || group.learners.contains(id) {
            group.replicas = vec![id.clone()];
        }
        group.learners.clear();
        group.initialized = true;
    }
    for operation in meta.operations.values_mut() {
        if operation.state == OperationState::Running {
            operation.state = OperationState::Failed {
                reason: "abandoned by a forced recovery".into(),
            };
        }
    }
    let mut changes = Changes::default();
    changes.put_node_record(storage, RECORD, &encode(&meta));
    storage.commit(changes)?;
    reset_raft(storage, META_GROUP, meta_applied, id)?;

    // Every shard replica this node holds.
    let held: Vec<String> = meta
        .groups
        .iter()
        .filter(|(_, g)| g.replicas == [id.clone()])
        .map(|(group, _)| group.clone())
        .collect();
    for group in held {
        let Some(marker) = storage.applied(&group)? else {
            continue;
        };
        let mut applied: AppliedState =
            decode(&marker).map_err(|e| Error::Internal(format!("{group}: {e}")))?;
        applied.membership =
            StoredMembership::new(applied.last_applied.clone(), members.clone().into());
        let mut changes = Changes::default();
        // Where the shard's content currently lives (a snapshot may have moved it).
        let stored = generation_namespace(&group, storage.generations(&group)?.current);
        changes.set_applied(storage, &stored, &encode(&applied));
        storage.commit(changes)?;
        reset_raft(storage, &group, applied.last_applied, id)?;
    }
    storage.sync()?;
    let _ = std::fs::remove_file(data_dir.join(REQUEST_FILE));
    tracing::warn!(node = %id, "forced recovery: this node is now the only member of every group it holds");
    Ok(())
}

/// Empties a group's log up to what was applied and gives this node a fresh vote, so that it
/// elects itself in the next term.
fn reset_raft(storage: &Storage, group: &str, applied: Option<LogId>, id: &NodeId) -> Result<()> {
    let last = storage.last_log_entry(group)?;
    let mut term = applied
        .as_ref()
        .map(|l| l.committed_leader_id().term())
        .unwrap_or(0);
    if let Some((_, bytes)) = &last {
        let entry: Entry = decode(bytes).map_err(|e| Error::Internal(format!("{group}: {e}")))?;
        term = term.max(entry.log_id().committed_leader_id().term());
    }
    if let Some(bytes) = storage.raft_state(group, "vote")? {
        let vote: Vote = decode(&bytes).map_err(|e| Error::Internal(format!("{group}: {e}")))?;
        term = term.max(vote.leader_id().term());
    }
    let mut changes = Changes::default();
    changes.clear_raft_group(storage, group);
    if let Some(applied) = &applied {
        changes.put_raft_state(storage, group, "purged", &encode(applied));
        changes.put_raft_state(storage, group, "committed", &encode(&Some(applied.clone())));
    }
    changes.put_raft_state(
        storage,
        group,
        "vote",
        &encode(&Vote::new(term + 1, id.clone())),
    );
    storage.commit(changes)
}
