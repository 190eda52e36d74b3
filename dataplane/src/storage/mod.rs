//! RocksDB underneath the node: one database, four column families.
//!
//! - `documents`: `namespace \0 id` -> encoded document. A namespace is one shard replica.
//! - `meta`: `applied\0namespace` -> the shard's applied-state marker (opaque bytes, written in
//!   the same batch as the documents it covers), `generation\0namespace` -> where the
//!   namespace's content currently lives (see below), and `node\0KEY` -> node-level records.
//! - `raft_log`: `group \0 index(u64 BE)` -> a Raft log entry.
//! - `raft_state`: `group \0 KEY` -> vote, last purged log id, committed log id.
//!
//! A namespace's content (documents, remembered answers, applied marker) lives in one
//! *generation*: generation 0 under the namespace itself, generation N under
//! `namespace \x01 N`. Installing a snapshot writes a new generation beside the current one, in
//! as many batches as it takes, then switches the `generation` record in one batch; the old
//! generation is deleted afterwards. Reads resolve the current generation from the same
//! RocksDB snapshot they read the content from, so they see the old content or the new, never
//! a mix and never an empty namespace. A generation left over by a crash (a half-written
//! install, or an old generation not yet deleted) is listed as stale and deleted at open.
//!
//! A write is one atomic `WriteBatch`. Durability comes from the Raft log: [`Storage::sync`]
//! fsyncs the write-ahead log, and the [`WalSyncer`] shares one fsync among many waiters.

use crate::error::{Error, ErrorCode, Result};
use grape_client::Metadata;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, Direction,
    IngestExternalFileOptions, IteratorMode, Options, SstFileWriter, WriteBatch, WriteOptions,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const DOCUMENTS: &str = "documents";
const META: &str = "meta";
const RAFT_LOG: &str = "raft_log";
const RAFT_STATE: &str = "raft_state";

/// Where [`Storage::bulk_load`] stages its files, under the database directory.
const INGEST_DIR: &str = "ingest";

/// Size at which a bulk load starts its next file.
const BULK_FILE_BYTES: u64 = 64 * 1024 * 1024;

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
    /// Whether tables are compressed (bulk-loaded files are written alike).
    compression: bool,
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

    /// Removes a namespace's documents, remembered answers and applied marker, in every
    /// generation, and its generation record.
    pub fn clear_namespace(&mut self, storage: &Storage, namespace: &str) {
        // `namespace \0 ...` (generation 0) and `namespace \x01 ...` (the others).
        let every = |key: Vec<u8>| {
            let mut end = key.clone();
            end.push(2);
            (key, end)
        };
        let (from, to) = every(namespace.as_bytes().to_vec());
        self.batch.delete_range_cf(storage.cf(DOCUMENTS), from, to);
        let (from, to) = every(named_key(b"requests\0", namespace));
        self.batch.delete_range_cf(storage.cf(META), from, to);
        let (from, to) = every(applied_key(namespace));
        self.batch.delete_range_cf(storage.cf(META), from, to);
        self.batch
            .delete_cf(storage.cf(META), generation_key(namespace));
    }

    /// Removes one generation of a namespace: its documents, remembered answers and marker.
    pub fn clear_generation(&mut self, storage: &Storage, namespace: &str, generation: u64) {
        let stored = generation_namespace(namespace, generation);
        let (from, to) = prefix_range(&prefix(&stored));
        self.batch.delete_range_cf(storage.cf(DOCUMENTS), from, to);
        let (from, to) = prefix_range(&request_prefix(&stored));
        self.batch.delete_range_cf(storage.cf(META), from, to);
        self.batch.delete_cf(storage.cf(META), applied_key(&stored));
    }

    /// Records which generation of a namespace is current and which are left to delete.
    pub fn set_generations(
        &mut self,
        storage: &Storage,
        namespace: &str,
        generations: &Generations,
    ) {
        self.batch.put_cf(
            storage.cf(META),
            generation_key(namespace),
            generations.encode(),
        );
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
        let cache = Cache::new_lru_cache(options.cache_size_mb.max(1) * 1024 * 1024);
        let mut cf_options = table_options(options.enable_compression, Some(&cache));
        cf_options.set_write_buffer_size(options.write_buffer_size_mb.max(1) * 1024 * 1024);
        // What a bulk load interrupted by a crash left.
        let _ = std::fs::remove_dir_all(path.join(INGEST_DIR));
        let families = [DOCUMENTS, META, RAFT_LOG, RAFT_STATE]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options.clone()));
        let db = DB::open_cf_descriptors(&db_options, path, families)?;
        Ok(Storage {
            db,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            failed: parking_lot::Mutex::new(None),
            compression: options.enable_compression,
        })
    }

    /// Writes documents into `stored` (a namespace generation nothing reads or writes yet) as
    /// table files ingested into the database whole, bypassing the memtables: memory does not
    /// grow with what is loaded. `fill` calls `put(id, value)` in ascending id order (an id
    /// out of order is an error). RocksDB fsyncs the files as it links them in.
    pub fn bulk_load<T>(
        &self,
        stored: &str,
        fill: impl FnOnce(&mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<T>,
    ) -> Result<T> {
        self.refuse_after_failure()?;
        let dir = self
            .path()
            .join(INGEST_DIR)
            .join(format!("{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::unavailable(
                ErrorCode::StorageError,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let loaded = self.bulk_load_in(&dir, stored, fill);
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    fn bulk_load_in<T>(
        &self,
        dir: &Path,
        stored: &str,
        fill: impl FnOnce(&mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<T>,
    ) -> Result<T> {
        let options = table_options(self.compression, None);
        let key_prefix = prefix(stored);
        let mut files = Vec::new();
        let mut writer: Option<SstFileWriter<'_>> = None;
        let answer = fill(&mut |id, value| {
            if let Some(mut full) = writer.take_if(|w| w.file_size() >= BULK_FILE_BYTES) {
                full.finish()?;
            }
            let current = match &mut writer {
                Some(current) => current,
                None => {
                    let path = dir.join(format!("{}.sst", files.len()));
                    let opened = SstFileWriter::create(&options);
                    opened.open(&path)?;
                    files.push(path);
                    writer.insert(opened)
                }
            };
            let mut key = key_prefix.clone();
            key.extend_from_slice(id.as_bytes());
            current.put(key, value)?;
            Ok(())
        })?;
        if let Some(mut last) = writer {
            last.finish()?;
        }
        if !files.is_empty() {
            let mut ingest = IngestExternalFileOptions::default();
            ingest.set_move_files(true);
            self.db
                .ingest_external_file_cf_opts(self.cf(DOCUMENTS), &ingest, files)
                .map_err(|e| self.record_failure(e))?;
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(answer)
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

    /// The generations of a namespace (see the module documentation).
    pub fn generations(&self, namespace: &str) -> Result<Generations> {
        Generations::decode(
            self.db
                .get_cf(self.cf(META), generation_key(namespace))?
                .as_deref(),
        )
    }

    /// Where a namespace's current content lives, as `snapshot` sees it.
    fn current_in(&self, snapshot: &rocksdb::Snapshot<'_>, namespace: &str) -> Result<String> {
        let generations = Generations::decode(
            snapshot
                .get_cf(self.cf(META), generation_key(namespace))?
                .as_deref(),
        )?;
        Ok(generation_namespace(namespace, generations.current))
    }

    /// One stored document's encoded value.
    pub fn get_document(&self, namespace: &str, id: &str) -> Result<Option<Vec<u8>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let snapshot = self.db.snapshot();
        let stored = self.current_in(&snapshot, namespace)?;
        Ok(snapshot.get_cf(self.cf(DOCUMENTS), document_key(&stored, id))?)
    }

    /// Calls `visit(id, value)` for a namespace's documents in id order, starting after
    /// `after`, until it returns false.
    pub fn scan_documents(
        &self,
        namespace: &str,
        after: Option<&str>,
        visit: impl FnMut(&str, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.scan(namespace, after, rocksdb::ReadOptions::default(), visit)
    }

    /// [`Storage::scan_documents`] of a whole namespace, without filling the block cache (a
    /// whole-shard scan would evict what searches and reads use, and fill it with blocks
    /// nobody reads again).
    pub fn scan_all_documents(
        &self,
        namespace: &str,
        visit: impl FnMut(&str, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut options = rocksdb::ReadOptions::default();
        options.fill_cache(false);
        self.scan(namespace, None, options, visit)
    }

    /// Every document of one generation, `stored` as [`generation_namespace`] names it,
    /// whether or not it is current (to load a generation before it becomes current); does
    /// not fill the block cache.
    pub fn scan_generation(
        &self,
        stored: &str,
        visit: impl FnMut(&str, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut options = rocksdb::ReadOptions::default();
        options.fill_cache(false);
        let start = prefix(stored);
        let iter = self.db.iterator_cf_opt(
            self.cf(DOCUMENTS),
            options,
            IteratorMode::From(&start, Direction::Forward),
        );
        visit_prefix(iter, &start, stored, visit)
    }

    fn scan(
        &self,
        namespace: &str,
        after: Option<&str>,
        options: rocksdb::ReadOptions,
        visit: impl FnMut(&str, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let snapshot = self.db.snapshot();
        let stored = self.current_in(&snapshot, namespace)?;
        let start = start_key(&stored, after);
        let iter = snapshot.iterator_cf_opt(
            self.cf(DOCUMENTS),
            options,
            IteratorMode::From(&start, Direction::Forward),
        );
        visit_prefix(iter, &prefix(&stored), namespace, visit)
    }

    /// Visits a namespace's remembered answers (see [`Changes::put_request`]).
    pub fn scan_requests(
        &self,
        namespace: &str,
        mut visit: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let snapshot = self.db.snapshot();
        let start = request_prefix(&self.current_in(&snapshot, namespace)?);
        let iter = snapshot.iterator_cf(
            self.cf(META),
            IteratorMode::From(&start, Direction::Forward),
        );
        visit_values(iter, &start, &mut visit)
    }

    /// A namespace's applied marker, if it has applied anything.
    pub fn applied(&self, namespace: &str) -> Result<Option<Vec<u8>>> {
        let snapshot = self.db.snapshot();
        let stored = self.current_in(&snapshot, namespace)?;
        Ok(snapshot.get_cf(self.cf(META), applied_key(&stored))?)
    }

    /// Reads a namespace's documents, remembered answers and applied marker as of one
    /// instant, while writes go on. The documents are read without filling the block cache
    /// (a whole-shard scan would evict what searches and reads use).
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
        let stored = self.current_in(&snapshot, namespace)?;
        let marker = snapshot.get_cf(self.cf(META), applied_key(&stored))?;
        let requests_start = request_prefix(&stored);
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
        let start = prefix(&stored);
        let mut scan = |visit: &mut dyn FnMut(&str, &[u8]) -> Result<bool>| {
            let mut options = rocksdb::ReadOptions::default();
            options.fill_cache(false);
            let iter = snapshot.iterator_cf_opt(
                self.cf(DOCUMENTS),
                options,
                IteratorMode::From(&start, Direction::Forward),
            );
            visit_prefix(iter, &start, namespace, |id, value| visit(id, value))
        };
        read(marker, requests, &mut scan)
    }

    /// Test only: documents stored under exactly `stored` (one generation), unresolved.
    #[cfg(test)]
    pub(crate) fn rows_under(&self, stored: &str) -> usize {
        let mut rows = 0;
        self.scan_generation(stored, |_, _| {
            rows += 1;
            Ok(true)
        })
        .expect("scanning a generation");
        rows
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

/// A file-system-safe name for a group or storage namespace (files named after
/// one: snapshots, saved graphs).
pub fn file_stem(group: &str) -> String {
    group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '.'
            }
        })
        .collect()
}

/// Table settings of every column family: bloom filters, LZ4 when `compress`, and `cache` as
/// the block cache (none for files written outside the database).
fn table_options(compress: bool, cache: Option<&Cache>) -> Options {
    let mut options = Options::default();
    let mut table = BlockBasedOptions::default();
    if let Some(cache) = cache {
        table.set_block_cache(cache);
    }
    table.set_bloom_filter(10.0, false);
    options.set_block_based_table_factory(&table);
    options.set_compression_type(if compress {
        DBCompressionType::Lz4
    } else {
        DBCompressionType::None
    });
    options
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

/// `tag` followed by `namespace`.
fn named_key(tag: &[u8], namespace: &str) -> Vec<u8> {
    let mut key = tag.to_vec();
    key.extend_from_slice(namespace.as_bytes());
    key
}

fn applied_key(namespace: &str) -> Vec<u8> {
    named_key(b"applied\0", namespace)
}

fn generation_key(namespace: &str) -> Vec<u8> {
    named_key(b"generation\0", namespace)
}

fn request_prefix(namespace: &str) -> Vec<u8> {
    let mut key = named_key(b"requests\0", namespace);
    key.push(0);
    key
}

/// Where generation `generation` of `namespace` is stored: generation 0 under the namespace
/// itself (what nodes stored before generations existed), the others beside it.
pub fn generation_namespace(namespace: &str, generation: u64) -> String {
    if generation == 0 {
        namespace.to_string()
    } else {
        format!("{namespace}\u{1}{generation}")
    }
}

/// Which generation of a namespace holds its content, and which are left over to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generations {
    pub current: u64,
    pub stale: Vec<u64>,
}

impl Generations {
    /// The next unused generation.
    pub fn next(&self) -> u64 {
        self.stale.iter().copied().fold(self.current, u64::max) + 1
    }

    /// `current`, then each stale generation, as u64 LE.
    fn encode(&self) -> Vec<u8> {
        std::iter::once(self.current)
            .chain(self.stale.iter().copied())
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    fn decode(bytes: Option<&[u8]>) -> Result<Generations> {
        let Some(bytes) = bytes else {
            return Ok(Generations::default());
        };
        if bytes.is_empty() || bytes.len() % 8 != 0 {
            return Err(Error::Internal("a generation record is corrupt".into()));
        }
        let mut numbers = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")));
        let current = numbers.next().unwrap_or(0);
        Ok(Generations {
            current,
            stale: numbers.collect(),
        })
    }
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
