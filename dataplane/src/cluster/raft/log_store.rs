//! The Raft log of one group in the node's RocksDB. Appends are acknowledged to openraft only
//! after an fsync, and the [`WalSyncer`] shares each fsync among every group appending at the
//! same time.

use super::types::{Entry, LogId, TypeConfig, Vote, decode, encode};
use crate::storage::{Changes, Storage, WalSyncer};
use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const VOTE: &str = "vote";
const PURGED: &str = "purged";
const COMMITTED: &str = "committed";

/// One group's log and vote.
#[derive(Clone)]
pub struct LogStore {
    group: String,
    storage: Arc<Storage>,
    syncer: Arc<WalSyncer>,
}

impl LogStore {
    pub fn new(group: &str, storage: Arc<Storage>, syncer: Arc<WalSyncer>) -> LogStore {
        LogStore {
            group: group.to_string(),
            storage,
            syncer,
        }
    }

    fn state<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        match self
            .storage
            .raft_state(&self.group, key)
            .map_err(io::Error::other)?
        {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(io_invalid)?)),
            None => Ok(None),
        }
    }

    fn put_state<T: serde::Serialize>(&self, key: &str, value: &T) -> io::Result<()> {
        let mut changes = Changes::default();
        changes.put_raft_state(&self.storage, &self.group, key, &encode(value));
        self.storage.commit(changes).map_err(io::Error::other)
    }
}

fn io_invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let from = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        self.storage
            .log_entries(&self.group, from, to)
            .map_err(io::Error::other)?
            .into_iter()
            .map(|(_, bytes)| decode(&bytes).map_err(io_invalid))
            .collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.state(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last = match self
            .storage
            .last_log_entry(&self.group)
            .map_err(io::Error::other)?
        {
            Some((_, bytes)) => Some(decode::<Entry>(&bytes).map_err(io_invalid)?.log_id()),
            None => None,
        };
        let purged: Option<LogId> = self.state(PURGED)?;
        Ok(LogState {
            last_log_id: last.or_else(|| purged.clone()),
            last_purged_log_id: purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.put_state(VOTE, vote)?;
        // A vote must be on disk before it is announced.
        self.syncer.sync().await.map_err(io::Error::other)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.put_state(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.state::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
    {
        let mut changes = Changes::default();
        for entry in entries {
            changes.put_log_entry(&self.storage, &self.group, entry.index(), &encode(&entry));
        }
        self.storage.commit(changes).map_err(io::Error::other)?;
        // Readable now; acknowledged once on disk.
        self.syncer
            .after_sync(move |result| callback.io_completed(result.map_err(io::Error::other)));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map(|id| id.index() + 1).unwrap_or(0);
        let mut changes = Changes::default();
        changes.delete_log_range(&self.storage, &self.group, from, u64::MAX);
        self.storage.commit(changes).map_err(io::Error::other)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point first: entries at or before it are ignored from then on.
        self.put_state(PURGED, &log_id)?;
        let mut changes = Changes::default();
        changes.delete_log_range(&self.storage, &self.group, 0, log_id.index() + 1);
        self.storage.commit(changes).map_err(io::Error::other)
    }
}
