//! RocksDB underneath the node: one database, four column families.
//!
//! - `documents`: `namespace \0 id` -> encoded document. A namespace is one shard replica.
//! - `meta`: `applied\0namespace` -> the shard's applied-state marker (opaque bytes, written in
//!   the same batch as the documents it covers), and `node\0KEY` -> node-level records.
//! - `raft_log`: `group \0 index(u64 BE)` -> a Raft log entry.
//! - `raft_state`: `group \0 KEY` -> vote, last purged log id, committed log id.
//!
//! A write is one atomic `WriteBatch`. Durability comes from the Raft log: [`Storage::sync`]
//! fsyncs the write-ahead log, and the [`WalSyncer`] shares one fsync among many waiters.

use crate::error::{Error, ErrorCode, Result};
use grape_client::Metadata;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, Direction,
    IteratorMode, Options, WriteBatch, WriteOptions,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const DOCUMENTS: &str = "documents";
const META: &str = "meta";
const RAFT_LOG: &str = "raft_log";
const RAFT_STATE: &str = "raft_state";

/// Tuning taken from the `database` configuration section.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub cache_size_mb: usize,
    pub write_buffer_size_mb: usize,
    pub enable_compression: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            cache_size_mb: 256,
            write_buffer_size_mb: 64,
            enable_compression: true,
        }
    }
}

/// The node's RocksDB database.
pub struct Storage {
    db: DB,
    /// Point reads and scans served (the `grape_db_disk_reads_total` metric).
    reads: AtomicU64,
    /// Write batches committed (the `grape_db_disk_writes_total` metric).
    writes: AtomicU64,
    /// The first write or WAL sync that failed. RocksDB cannot go on writing after one (and
    /// aborts on a sync after a failed write): every later write and sync is refused, reads go
    /// on, and a restart reopens the database.
    failed: parking_lot::Mutex<Option<String>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.db.path())
            .finish()
    }
}

/// A batch of changes applied atomically by [`Storage::commit`].
#[derive(Default)]
pub struct Changes {
    batch: WriteBatch,
}

impl Changes {
    pub fn put_document(&mut self, storage: &Storage, namespace: &str, id: &str, value: &[u8]) {
        self.batch
            .put_cf(storage.cf(DOCUMENTS), document_key(namespace, id), value);
    }

    pub fn delete_document(&mut self, storage: &Storage, namespace: &str, id: &str) {
        self.batch
            .delete_cf(storage.cf(DOCUMENTS), document_key(namespace, id));
    }

    /// Records what a namespace has applied, atomically with its documents.
    pub fn set_applied(&mut self, storage: &Storage, namespace: &str, marker: &[u8]) {
        self.batch
            .put_cf(storage.cf(META), applied_key(namespace), marker);
    }

    /// Removes a namespace's documents, remembered answers and applied marker.
    pub fn clear_namespace(&mut self, storage: &Storage, namespace: &str) {
        let (from, to) = prefix_range(&prefix(namespace));
        self.batch.delete_range_cf(storage.cf(DOCUMENTS), from, to);
        let (from, to) = prefix_range(&request_prefix(namespace));
        self.batch.delete_range_cf(storage.cf(META), from, to);
        self.batch
            .delete_cf(storage.cf(META), applied_key(namespace));
    }

    /// Stores one remembered answer of a namespace in `slot` (replacing what it held).
    pub fn put_request(&mut self, storage: &Storage, namespace: &str, slot: u64, value: &[u8]) {
        let mut key = request_prefix(namespace);
        key.extend_from_slice(&slot.to_be_bytes());
        self.batch.put_cf(storage.cf(META), key, value);
    }

    /// A node-level record (the meta state machine, identity).
    pub fn put_node_record(&mut self, storage: &Storage, key: &str, value: &[u8]) {
        self.batch.put_cf(storage.cf(META), node_key(key), value);
    }

    /// Appends (or overwrites) one Raft log entry.
    pub fn put_log_entry(&mut self, storage: &Storage, group: &str, index: u64, value: &[u8]) {
        self.batch
            .put_cf(storage.cf(RAFT_LOG), log_key(group, index), value);
    }

    /// Removes a group's log entries with index in `[from, to)`.
    pub fn delete_log_range(&mut self, storage: &Storage, group: &str, from: u64, to: u64) {
        self.batch.delete_range_cf(
            storage.cf(RAFT_LOG),
            log_key(group, from),
            log_key(group, to),
        );
    }

    pub fn put_raft_state(&mut self, storage: &Storage, group: &str, key: &str, value: &[u8]) {
        self.batch
            .put_cf(storage.cf(RAFT_STATE), state_key(group, key), value);
    }

    /// Removes a group's whole Raft state: log, vote, purge and commit marks.
    pub fn clear_raft_group(&mut self, storage: &Storage, group: &str) {
        let (from, to) = prefix_range(&prefix(group));
        self.batch
            .delete_range_cf(storage.cf(RAFT_LOG), from.clone(), to.clone());
        self.batch.delete_range_cf(storage.cf(RAFT_STATE), from, to);
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

impl Storage {
    /// Opens (or creates) the database under `path`.
    pub fn open(path: &Path, options: &StorageOptions) -> Result<Storage> {
        std::fs::create_dir_all(path).map_err(|e| {
            Error::unavailable(
                ErrorCode::StorageError,
                format!("cannot create data directory {}: {e}", path.display()),
            )
        })?;
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_background_jobs(2);
        db_options.set_keep_log_file_num(5);
        // Raft logs are written by many groups; keep total WAL bounded.
        db_options.set_max_total_wal_size(256 * 1024 * 1024);
        let mut cf_options = Options::default();
        let mut table = BlockBasedOptions::default();
        let cache = Cache::new_lru_cache(options.cache_size_mb.max(1) * 1024 * 1024);
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        cf_options.set_block_based_table_factory(&table);
        cf_options.set_write_buffer_size(options.write_buffer_size_mb.max(1) * 1024 * 1024);
        cf_options.set_compression_type(if options.enable_compression {
            DBCompressionType::Lz4
        } else {
            DBCompressionType::None
        });
        let families = [DOCUMENTS, META, RAFT_LOG, RAFT_STATE]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options.clone()));
        let db = DB::open_cf_descriptors(&db_options, path, families)?;
        Ok(Storage {
            db,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            failed: parking_lot::Mutex::new(None),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    /// Applies `changes` atomically. Not fsynced: call [`Storage::sync`] (or go through a
    /// [`WalSyncer`]) before acknowledging anything that must survive a crash.
    pub fn commit(&self, changes: Changes) -> Result<()> {
        self.refuse_after_failure()?;
        let mut options = WriteOptions::default();
        options.set_sync(false);
        self.db
            .write_opt(changes.batch, &options)
            .map_err(|e| self.record_failure(e))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The failure that stopped writes, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().clone()
    }

    fn refuse_after_failure(&self) -> Result<()> {
        match &*self.failed.lock() {
            None => Ok(()),
            Some(first) => Err(Error::unavailable(
                ErrorCode::StorageError,
                format!(
                    "writes are stopped since a storage write failed ({first}); restart the node once its disk is healthy"
                ),
            )),
        }
    }

    fn record_failure(&self, error: rocksdb::Error) -> Error {
        let mut failed = self.failed.lock();
        if failed.is_none() {
            tracing::error!(%error, "a storage write failed: this node stops writing until it is restarted");
            *failed = Some(error.to_string());
        }
        Error::from(error)
    }

    /// Makes everything durable and stops RocksDB's background flushes and compactions, so
    /// that the process can exit without tearing down threads that are still working.
    pub fn shutdown(&self) {
        if self.failure().is_none()
            && let Err(error) = self.db.flush_wal(true)
        {
            tracing::error!(%error, "syncing the WAL at shutdown");
        }
        self.db.cancel_all_background_work(true);
    }

    /// fsyncs the write-ahead log: every earlier commit is durable afterwards.
    pub fn sync(&self) -> Result<()> {
        self.refuse_after_failure()?;
        self.db
            .flush_wal(true)
            .map_err(|e| self.record_failure(e))?;
        Ok(())
    }

    /// One stored document's encoded value.
    pub fn get_document(&self, namespace: &str, id: &str) -> Result<Option<Vec<u8>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .db
            .get_cf(self.cf(DOCUMENTS), document_key(namespace, id))?)
    }

    /// Calls `visit(id, value)` for a namespace's documents in id order, starting after
    /// `after`, until it returns false.
    pub fn scan_documents(
        &self,
        namespace: &str,
        after: Option<&str>,
        visit: impl FnMut(&str, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let start = start_key(namespace, after);
        let iter = self.db.iterator_cf(
            self.cf(DOCUMENTS),
            IteratorMode::From(&start, Direction::Forward),
        );
        visit_prefix(iter, &prefix(namespace), namespace, visit)
    }

    /// Visits a namespace's remembered answers (see [`Changes::put_request`]).
    pub fn scan_requests(
        &self,
        namespace: &str,
        mut visit: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let start = request_prefix(namespace);
        let iter = self.db.iterator_cf(
            self.cf(META),
            IteratorMode::From(&start, Direction::Forward),
        );
        visit_values(iter, &start, &mut visit)
    }

    /// A namespace's applied marker, if it has applied anything.
    pub fn applied(&self, namespace: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(META), applied_key(namespace))?)
    }

    /// Reads a namespace's documents, remembered answers and applied marker as of one
    /// instant, while writes go on.
    pub fn with_consistent_view<T>(
        &self,
        namespace: &str,
        read: impl FnOnce(
            Option<Vec<u8>>,
            Vec<Vec<u8>>,
            &mut dyn FnMut(&mut dyn FnMut(&str, &[u8]) -> Result<bool>) -> Result<()>,
        ) -> Result<T>,
    ) -> Result<T> {
        let snapshot = self.db.snapshot();
        let marker = snapshot.get_cf(self.cf(META), applied_key(namespace))?;
        let requests_start = request_prefix(namespace);
        let mut requests = Vec::new();
        visit_values(
            snapshot.iterator_cf(
                self.cf(META),
                IteratorMode::From(&requests_start, Direction::Forward),
            ),
            &requests_start,
            &mut |value| {
                requests.push(value.to_vec());
                Ok(())
            },
        )?;
        let start = prefix(namespace);
        let mut scan = |visit: &mut dyn FnMut(&str, &[u8]) -> Result<bool>| {
            let iter = snapshot.iterator_cf(
                self.cf(DOCUMENTS),
                IteratorMode::From(&start, Direction::Forward),
            );
            visit_prefix(iter, &start, namespace, |id, value| visit(id, value))
        };
        read(marker, requests, &mut scan)
    }

    /// A node-level record.
    pub fn node_record(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(META), node_key(key))?)
    }

    /// A group's log entries with index in `[from, to)`, in order.
    pub fn log_entries(&self, group: &str, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let start = log_key(group, from);
        let group_prefix = prefix(group);
        let mut found = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(RAFT_LOG),
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(&group_prefix) {
                break;
            }
            let index = log_index(&key[group_prefix.len()..])?;
            if index >= to {
                break;
            }
            found.push((index, value.to_vec()));
        }
        Ok(found)
    }

    /// A group's last log entry.
    pub fn last_log_entry(&self, group: &str) -> Result<Option<(u64, Vec<u8>)>> {
        let end = log_key(group, u64::MAX);
        let group_prefix = prefix(group);
        let mut iter = self.db.iterator_cf(
            self.cf(RAFT_LOG),
            IteratorMode::From(&end, Direction::Reverse),
        );
        match iter.next() {
            Some(item) => {
                let (key, value) = item?;
                if !key.starts_with(&group_prefix) {
                    return Ok(None);
                }
                Ok(Some((
                    log_index(&key[group_prefix.len()..])?,
                    value.to_vec(),
                )))
            }
            None => Ok(None),
        }
    }

    pub fn raft_state(&self, group: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(RAFT_STATE), state_key(group, key))?)
    }

    /// Groups that have any Raft state on this node.
    pub fn raft_groups(&self) -> Result<Vec<String>> {
        let mut groups = Vec::new();
        let iter = self
            .db
            .iterator_cf(self.cf(RAFT_STATE), IteratorMode::Start);
        for item in iter {
            let (key, _) = item?;
            if let Some(end) = key.iter().position(|b| *b == 0) {
                let group = String::from_utf8_lossy(&key[..end]).into_owned();
                if groups.last() != Some(&group) {
                    groups.push(group);
                }
            }
        }
        groups.dedup();
        Ok(groups)
    }

    /// Point reads and scans served since start.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Write batches committed since start.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        self.db.path()
    }
}

/// Visits the values of the keys that start with `prefix`, in key order.
fn visit_values<'a>(
    iter: impl Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a,
    prefix: &[u8],
    visit: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    for item in iter {
        let (key, value) = item?;
        if !key.starts_with(prefix) {
            break;
        }
        visit(&value)?;
    }
    Ok(())
}

fn visit_prefix<'a>(
    iter: impl Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a,
    prefix: &[u8],
    namespace: &str,
    mut visit: impl FnMut(&str, &[u8]) -> Result<bool>,
) -> Result<()> {
    for item in iter {
        let (key, value) = item?;
        if !key.starts_with(prefix) {
            break;
        }
        let id = std::str::from_utf8(&key[prefix.len()..]).map_err(|_| {
            Error::Internal(format!("stored document key in {namespace} is not UTF-8"))
        })?;
        if !visit(id, &value)? {
            break;
        }
    }
    Ok(())
}

fn prefix(namespace: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(namespace.len() + 1);
    key.extend_from_slice(namespace.as_bytes());
    key.push(0);
    key
}

fn document_key(namespace: &str, id: &str) -> Vec<u8> {
    let mut key = prefix(namespace);
    key.extend_from_slice(id.as_bytes());
    key
}

fn start_key(namespace: &str, after: Option<&str>) -> Vec<u8> {
    match after {
        Some(id) => {
            let mut key = document_key(namespace, id);
            key.push(0);
            key
        }
        None => prefix(namespace),
    }
}

fn applied_key(namespace: &str) -> Vec<u8> {
    let mut key = b"applied\0".to_vec();
    key.extend_from_slice(namespace.as_bytes());
    key
}

fn request_prefix(namespace: &str) -> Vec<u8> {
    let mut key = b"requests\0".to_vec();
    key.extend_from_slice(namespace.as_bytes());
    key.push(0);
    key
}

fn node_key(name: &str) -> Vec<u8> {
    let mut key = b"node\0".to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

fn log_key(group: &str, index: u64) -> Vec<u8> {
    let mut key = prefix(group);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn log_index(bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Internal("a Raft log key is malformed".into()))
}

fn state_key(group: &str, key: &str) -> Vec<u8> {
    let mut out = prefix(group);
    out.extend_from_slice(key.as_bytes());
    out
}

/// `[prefix, prefix+1)`: every key starting with `prefix` (which ends in 0 here).
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    (prefix.to_vec(), end)
}

/// Shares fsyncs of the write-ahead log among concurrent waiters: each waiter's writes are
/// committed before it asks, and one fsync covers everyone who asked before it started.
pub struct WalSyncer {
    requests: std::sync::mpsc::Sender<Box<dyn FnOnce(Result<()>) + Send>>,
}

impl std::fmt::Debug for WalSyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalSyncer").finish_non_exhaustive()
    }
}

impl WalSyncer {
    pub fn start(storage: &Arc<Storage>) -> WalSyncer {
        let (requests, waiting) = std::sync::mpsc::channel::<Box<dyn FnOnce(Result<()>) + Send>>();
        // The thread holds the database only while it syncs: the last owner closes it on its
        // own thread, never this one while the process exits.
        let storage = Arc::downgrade(storage);
        std::thread::Builder::new()
            .name("grape-wal-sync".into())
            .spawn(move || {
                while let Ok(first) = waiting.recv() {
                    let mut group = vec![first];
                    while let Ok(next) = waiting.try_recv() {
                        group.push(next);
                    }
                    let result = match storage.upgrade() {
                        Some(storage) => storage.sync(),
                        None => Err(Error::unavailable(
                            ErrorCode::StorageError,
                            "the storage is closed",
                        )),
                    };
                    for done in group {
                        done(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => {
                                Err(Error::unavailable(ErrorCode::StorageError, e.to_string()))
                            }
                        });
                    }
                }
            })
            .expect("spawning the WAL sync thread");
        WalSyncer { requests }
    }

    /// Calls `done` once everything committed before this call is on disk.
    pub fn after_sync(&self, done: impl FnOnce(Result<()>) + Send + 'static) {
        if let Err(rejected) = self.requests.send(Box::new(done)) {
            (rejected.0)(Err(Error::unavailable(
                ErrorCode::StorageError,
                "the WAL sync thread stopped",
            )));
        }
    }

    /// Waits until everything committed before this call is on disk.
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.after_sync(move |result| {
            let _ = tx.send(result);
        });
        rx.await.map_err(|_| {
            Error::unavailable(ErrorCode::StorageError, "the WAL sync thread stopped")
        })?
    }
}

/// Encoding version of stored documents.
const DOCUMENT_FORMAT: u8 = 1;

/// Encodes a document value: format byte, dimension (u32 LE), floats (LE), metadata JSON.
pub fn encode_document(vector: &[f32], metadata: &Metadata) -> Vec<u8> {
    let metadata = serde_json::to_vec(metadata).unwrap_or_else(|_| b"{}".to_vec());
    let mut out = Vec::with_capacity(5 + vector.len() * 4 + metadata.len());
    out.push(DOCUMENT_FORMAT);
    out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&metadata);
    out
}

/// Decodes [`encode_document`]'s output.
pub fn decode_document(bytes: &[u8]) -> Result<(Vec<f32>, Metadata)> {
    let corrupt = |why: &str| Error::Internal(format!("stored document is corrupt: {why}"));
    if bytes.first() != Some(&DOCUMENT_FORMAT) || bytes.len() < 5 {
        return Err(corrupt("unknown format"));
    }
    let dimension = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let end = 5 + dimension * 4;
    if bytes.len() < end {
        return Err(corrupt("truncated vector"));
    }
    let vector = bytes[5..end]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let metadata = serde_json::from_slice(&bytes[end..]).map_err(|_| corrupt("metadata"))?;
    Ok((vector, metadata))
}

#[cfg(test)]
mod tests;
