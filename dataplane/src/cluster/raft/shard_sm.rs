//! A shard replica as a Raft state machine: committed entries are applied to the [`Shard`] in
//! log order, together with the applied log id; snapshots are the shard's documents.
//!
//! The shard persists its state with every apply, so snapshots need not be kept: a snapshot is
//! built when a follower needs one (or openraft's policy asks), streamed from RocksDB into a
//! file under `snapshots/`, and kept there so that it can be served again without rebuilding.
//! An installed snapshot is kept the same way. Neither is ever held in memory whole (see
//! [`super::snapshot`]).

use super::ids::NodeId;
use super::snapshot::{self, file_stem};
use super::types::{
    AppliedState, LogId, Request, Response, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig, decode, encode,
};
use crate::cluster::backup::export::Exports;
use crate::shard::{Shard, ShardCommand};
use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Reads the applied state a shard stores as its marker.
pub fn applied_state(shard: &Shard) -> io::Result<AppliedState> {
    match shard.applied_marker() {
        Some(bytes) => decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        None => Ok(AppliedState::default()),
    }
}

/// A shard group's Raft.
pub type ShardRaft = openraft::Raft<TypeConfig, ShardStateMachine>;

/// The state machine of one shard group on this node.
#[derive(Clone)]
pub struct ShardStateMachine {
    shard: Arc<Shard>,
    /// Where the latest built or installed snapshot is kept.
    snapshot_file: PathBuf,
    /// Held while the kept snapshot is replaced: openraft builds snapshots beside installs,
    /// and the file must only ever move forward in the log.
    keeping: Arc<parking_lot::Mutex<()>>,
    /// This node, which exports the shard for a backup whose fence names it.
    node_id: NodeId,
    /// Where backups' exports run.
    exports: Arc<Exports>,
}

impl ShardStateMachine {
    pub fn new(
        shard: Arc<Shard>,
        snapshot_dir: &std::path::Path,
        node_id: NodeId,
        exports: Arc<Exports>,
    ) -> Self {
        let stem = file_stem(shard.namespace());
        // Earlier versions kept snapshots whole under another name and format.
        let _ = std::fs::remove_file(snapshot_dir.join(format!("{stem}.snapshot")));
        ShardStateMachine {
            snapshot_file: snapshot_dir.join(format!("{stem}.snap")),
            shard,
            keeping: Arc::new(parking_lot::Mutex::new(())),
            node_id,
            exports,
        }
    }

    /// Deletes the kept snapshot (the replica is being dropped).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.snapshot_file);
    }
}

/// Entries read but not yet applied: their commands, and which command answers each entry.
#[derive(Default)]
struct Pending {
    commands: Vec<ShardCommand>,
    answers: Vec<(
        Option<usize>,
        Option<openraft::storage::ApplyResponder<TypeConfig>>,
    )>,
}

impl ShardStateMachine {
    /// Applies `pending` with the applied state `state` (one storage batch), then answers.
    /// With nothing pending, records `state` only if `always`.
    async fn apply_pending(
        &self,
        state: &AppliedState,
        pending: Pending,
        always: bool,
    ) -> io::Result<()> {
        if pending.answers.is_empty() && !always {
            return Ok(());
        }
        let Pending { commands, answers } = pending;
        let marker = encode(state);
        let shard = Arc::clone(&self.shard);
        let responses = tokio::task::spawn_blocking(move || {
            if commands.is_empty() {
                shard.mark_applied(&marker).map(|()| Vec::new())
            } else {
                let refs: Vec<&ShardCommand> = commands.iter().collect();
                shard.apply(&refs, &marker)
            }
        })
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
        let mut responses: Vec<Option<_>> = responses.into_iter().map(Some).collect();
        for (command, responder) in answers {
            let response = command
                .and_then(|i| responses.get_mut(i).and_then(Option::take))
                .map(Response::Shard)
                .unwrap_or_default();
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }
}

fn meta_of(marker: Option<&[u8]>) -> io::Result<SnapshotMeta> {
    let applied: AppliedState = match marker {
        Some(bytes) => decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        None => AppliedState::default(),
    };
    Ok(SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership,
    })
}

/// Reads the kept snapshot at `path`, if there is a whole one.
fn kept_snapshot(path: &std::path::Path) -> io::Result<Option<Snapshot>> {
    match snapshot::open_file(path) {
        Ok(found) => Ok(found.map(|(meta, snapshot)| Snapshot { meta, snapshot })),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            // Not a whole file (a crash while an earlier version wrote it): build a new one.
            tracing::warn!(error = %e, "ignoring a damaged kept snapshot");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let shard = Arc::clone(&self.shard);
        let path = self.snapshot_file.clone();
        let keeping = Arc::clone(&self.keeping);
        tokio::task::spawn_blocking(move || {
            // The meta is the marker the copy is at, known once the copy has started; the file
            // carries it in its trailer.
            let (temporary, meta) = snapshot::write_temporary(&path, |out| {
                let marker = shard.snapshot_into(out).map_err(io::Error::other)?;
                meta_of(marker.as_deref())
            })?;
            let _keeping = keeping.lock();
            match kept_snapshot(&path)? {
                // An install kept a later snapshot meanwhile: serve that one.
                Some(kept) if kept.meta.last_log_id >= meta.last_log_id => {
                    let _ = std::fs::remove_file(&temporary);
                    Ok(kept)
                }
                _ => {
                    snapshot::replace(&temporary, &path)?;
                    kept_snapshot(&path)?
                        .ok_or_else(|| io::Error::other(format!("{} vanished", path.display())))
                }
            }
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = applied_state(&self.shard)?;
        Ok((state.last_applied, state.membership))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        if entries.is_empty() {
            return Ok(());
        }
        let mut state = applied_state(&self.shard)?;
        let mut pending = Pending::default();
        for (entry, responder) in entries {
            let log_id = entry.log_id();
            state.last_applied = Some(log_id.clone());
            match entry.payload {
                EntryPayload::Normal(Request::Shard(command)) => {
                    pending
                        .answers
                        .push((Some(pending.commands.len()), responder));
                    pending.commands.push(command);
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(log_id), membership);
                    pending.answers.push((None, responder));
                }
                EntryPayload::Normal(Request::Fence { backup, exporter }) => {
                    // What precedes the fence is applied first: the export sees exactly it.
                    self.apply_pending(&state, std::mem::take(&mut pending), false)
                        .await?;
                    if exporter == self.node_id {
                        let (shard, exports) = (Arc::clone(&self.shard), Arc::clone(&self.exports));
                        let group = self.shard.namespace().to_string();
                        tokio::task::spawn_blocking(move || exports.begin(&backup, &group, shard))
                            .await
                            .map_err(io::Error::other)?;
                    }
                    if let Some(responder) = responder {
                        responder.send(Response::Fenced { exporter });
                    }
                }
                EntryPayload::Normal(Request::Meta(_)) | EntryPayload::Blank => {
                    pending.answers.push((None, responder));
                }
            }
        }
        self.apply_pending(&state, pending, true).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let marker = encode(&AppliedState {
            last_applied: meta.last_log_id.clone(),
            membership: meta.last_membership.clone(),
        });
        let shard = Arc::clone(&self.shard);
        let path = self.snapshot_file.clone();
        let keeping = Arc::clone(&self.keeping);
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            tracing::info!(shard = %shard.namespace(), bytes = snapshot.len(), "installing a snapshot");
            shard
                .restore_from(&marker, &mut snapshot.reader())
                .map_err(io::Error::other)?;
            let keeping = keeping.lock();
            if kept_snapshot(&path)?.is_none_or(|kept| kept.meta.last_log_id <= meta.last_log_id) {
                snapshot.keep(&path, &meta)?;
            }
            drop(keeping);
            tracing::info!(shard = %shard.namespace(), bytes = snapshot.len(), millis = started.elapsed().as_millis() as u64, "installed a snapshot");
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let path = self.snapshot_file.clone();
        tokio::task::spawn_blocking(move || kept_snapshot(&path))
            .await
            .map_err(io::Error::other)?
    }
}
