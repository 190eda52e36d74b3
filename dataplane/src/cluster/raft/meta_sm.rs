//! The meta group's state machine: applies [`MetaCommand`]s to the [`MetaState`] every node
//! shares, persists it as one record, and tells the node when it changed.
//!
//! [`MetaCommand`]: super::meta_commands::MetaCommand

use super::meta_state::MetaState;
use super::types::{
    LogId, Request, Response, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
    decode, encode,
};
use crate::storage::{Changes, Storage};
use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::RwLock;
use std::io;
use std::sync::Arc;
use tokio::sync::watch;

/// The meta group's Raft.
pub type MetaRaft = openraft::Raft<TypeConfig, MetaStateMachine>;

/// The meta state machine: the state, shared with the node, and where it is persisted.
#[derive(Clone)]
pub struct MetaStateMachine {
    state: Arc<RwLock<MetaState>>,
    storage: Arc<Storage>,
    /// Bumped after every apply, so the node can react.
    changes: Arc<watch::Sender<u64>>,
}

/// The node record holding the meta state.
pub const RECORD: &str = "meta_state";

impl MetaStateMachine {
    /// Loads the persisted state (empty on first start).
    pub fn open(storage: Arc<Storage>) -> io::Result<MetaStateMachine> {
        let state = match storage.node_record(RECORD).map_err(io::Error::other)? {
            Some(bytes) => {
                decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            }
            None => MetaState::default(),
        };
        Ok(MetaStateMachine {
            state: Arc::new(RwLock::new(state)),
            storage,
            changes: Arc::new(watch::channel(0).0),
        })
    }

    /// The shared state.
    pub fn state(&self) -> Arc<RwLock<MetaState>> {
        Arc::clone(&self.state)
    }

    /// Notified after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn persist(&self, state: &MetaState) -> io::Result<()> {
        let mut changes = Changes::default();
        changes.put_node_record(&self.storage, RECORD, &encode(state));
        self.storage.commit(changes).map_err(io::Error::other)
    }

    fn changed(&self) {
        self.changes.send_modify(|version| *version += 1);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let state = self.state.read().clone();
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: state.applied.last_applied.clone(),
                last_membership: state.applied.membership.clone(),
            },
            snapshot: SnapshotData::from_bytes(encode(&state)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = self.state.read();
        Ok((
            state.applied.last_applied.clone(),
            state.applied.membership.clone(),
        ))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let mut next = self.state.read().clone();
        let mut answers = Vec::with_capacity(entries.len());
        for (entry, responder) in entries {
            let log_id = entry.log_id();
            let response = match entry.payload {
                EntryPayload::Normal(Request::Meta(command)) => {
                    Response::Meta(next.apply(&log_id, command))
                }
                EntryPayload::Membership(membership) => {
                    next.applied.membership =
                        StoredMembership::new(Some(log_id.clone()), membership);
                    Response::None
                }
                EntryPayload::Normal(Request::Shard(_) | Request::Fence { .. })
                | EntryPayload::Blank => Response::None,
            };
            next.applied.last_applied = Some(log_id);
            answers.push((responder, response));
        }
        self.persist(&next)?;
        *self.state.write() = next;
        self.changed();
        for (responder, response) in answers {
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
        let bytes = tokio::task::spawn_blocking(move || snapshot.to_bytes())
            .await
            .map_err(io::Error::other)??;
        let mut state: MetaState =
            decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        state.applied.last_applied = meta.last_log_id.clone();
        state.applied.membership = meta.last_membership.clone();
        self.persist(&state)?;
        *self.state.write() = state;
        self.changed();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        // The meta state is small: a current snapshot is built on demand.
        if self.state.read().applied.last_applied.is_none() {
            return Ok(None);
        }
        Ok(Some(self.build_snapshot().await?))
    }
}
