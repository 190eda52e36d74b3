//! A shard replica as a Raft state machine: committed entries are applied to the [`Shard`] in
//! log order, together with the applied log id; snapshots are the shard's documents.
//!
//! The shard persists its state with every apply, so snapshots need not be kept: a snapshot is
//! built when a follower needs one (or openraft's policy asks) and the latest is kept in a
//! file under `snapshots/` so that it can be served again without rebuilding.

use super::types::{
    AppliedState, LogId, Request, Response, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig, decode, encode,
};
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
}

impl ShardStateMachine {
    pub fn new(shard: Arc<Shard>, snapshot_dir: &std::path::Path) -> Self {
        let file_name: String = shard
            .namespace()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '.'
                }
            })
            .collect();
        ShardStateMachine {
            snapshot_file: snapshot_dir.join(format!("{file_name}.snapshot")),
            shard,
        }
    }
}

impl ShardStateMachine {
    /// Deletes the kept snapshot (the replica is being dropped).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.snapshot_file);
    }
}

/// Writes a snapshot file: meta length (u32 LE), meta (MessagePack), data.
pub(crate) fn write_snapshot_file(
    path: &std::path::Path,
    meta: &SnapshotMeta,
    data: &[u8],
) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let meta = encode(meta);
    let temporary = path.with_extension("tmp");
    let mut bytes = Vec::with_capacity(4 + meta.len() + data.len());
    bytes.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&meta);
    bytes.extend_from_slice(data);
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(temporary, path)
}

/// Reads [`write_snapshot_file`]'s output.
pub(crate) fn read_snapshot_file(path: &std::path::Path) -> io::Result<Option<Snapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let corrupt = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is corrupt", path.display()),
        )
    };
    let len = u32::from_le_bytes(
        bytes
            .get(..4)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    ) as usize;
    let meta: SnapshotMeta =
        decode(bytes.get(4..4 + len).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
    Ok(Some(Snapshot {
        meta,
        snapshot: std::io::Cursor::new(bytes[4 + len..].to_vec()),
    }))
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let shard = Arc::clone(&self.shard);
        let path = self.snapshot_file.clone();
        tokio::task::spawn_blocking(move || {
            let (marker, data) = shard.snapshot().map_err(io::Error::other)?;
            let applied: AppliedState = match marker {
                Some(bytes) => {
                    decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
                }
                None => AppliedState::default(),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership,
            };
            write_snapshot_file(&path, &meta, &data)?;
            Ok(Snapshot {
                meta,
                snapshot: std::io::Cursor::new(data),
            })
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
        let Some(last) = entries.last().map(|(entry, _)| entry.log_id()) else {
            return Ok(());
        };
        let mut state = applied_state(&self.shard)?;
        state.last_applied = Some(last);
        let mut commands: Vec<ShardCommand> = Vec::new();
        // Which command (if any) answers each entry.
        let mut answers: Vec<(
            Option<usize>,
            Option<openraft::storage::ApplyResponder<TypeConfig>>,
        )> = Vec::with_capacity(entries.len());
        for (entry, responder) in entries {
            let log_id = entry.log_id();
            match entry.payload {
                EntryPayload::Normal(Request::Shard(command)) => {
                    answers.push((Some(commands.len()), responder));
                    commands.push(command);
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(log_id), membership);
                    answers.push((None, responder));
                }
                EntryPayload::Normal(Request::Meta(_)) | EntryPayload::Blank => {
                    answers.push((None, responder));
                }
            }
        }
        let marker = encode(&state);
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
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let data = snapshot.into_inner();
            shard.restore(&marker, &data).map_err(io::Error::other)?;
            write_snapshot_file(&path, &meta, &data)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let path = self.snapshot_file.clone();
        tokio::task::spawn_blocking(move || read_snapshot_file(&path))
            .await
            .map_err(io::Error::other)?
    }
}
