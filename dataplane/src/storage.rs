//! RocksDB underneath the shards: one database per node with two column families.
//!
//! - `documents`: `collection \0 shard(u32 BE) id` -> encoded document (vector + metadata).
//! - `meta`: collection definitions (`collection\0NAME` -> JSON) and each shard's last applied
//!   command index (`applied\0COLLECTION\0shard(u32 BE)` -> u64 BE).
//!
//! Every write is one atomic `WriteBatch`, fsynced before it returns (configurable for tests),
//! so an acknowledged write survives `kill -9`.

use crate::error::{Error, Result};
use grape_client::Metadata;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, Direction,
    IteratorMode, Options, WriteBatch, WriteOptions,
};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const DOCUMENTS: &str = "documents";
const META: &str = "meta";

/// Tuning taken from the `database` configuration section.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub cache_size_mb: usize,
    pub write_buffer_size_mb: usize,
    pub enable_compression: bool,
    /// fsync every write before acknowledging it. Only tests of unrelated behaviour turn it off.
    pub sync_writes: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            cache_size_mb: 256,
            write_buffer_size_mb: 64,
            enable_compression: true,
            sync_writes: true,
        }
    }
}

/// The node's RocksDB database.
pub struct Storage {
    db: DB,
    /// Whether writes fsync before returning.
    sync_writes: bool,
    /// Point reads and scans served (the `grape_db_disk_reads_total` metric).
    reads: AtomicU64,
    /// Write batches committed (the `grape_db_disk_writes_total` metric).
    writes: AtomicU64,
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
    pub fn put_document(
        &mut self,
        storage: &Storage,
        collection: &str,
        shard: u32,
        id: &str,
        value: &[u8],
    ) {
        self.batch.put_cf(
            storage.documents(),
            document_key(collection, shard, id),
            value,
        );
    }

    pub fn delete_document(&mut self, storage: &Storage, collection: &str, shard: u32, id: &str) {
        self.batch
            .delete_cf(storage.documents(), document_key(collection, shard, id));
    }

    pub fn set_applied(&mut self, storage: &Storage, collection: &str, shard: u32, index: u64) {
        self.batch.put_cf(
            storage.meta(),
            applied_key(collection, shard),
            index.to_be_bytes(),
        );
    }

    pub fn put_collection(&mut self, storage: &Storage, name: &str, definition: &[u8]) {
        self.batch
            .put_cf(storage.meta(), collection_key(name), definition);
    }

    /// Removes a collection's definition, documents and applied indexes.
    pub fn delete_collection(&mut self, storage: &Storage, name: &str) {
        self.batch.delete_cf(storage.meta(), collection_key(name));
        let (from, to) = prefix_range(&collection_prefix(name));
        self.batch.delete_range_cf(storage.documents(), from, to);
        let (from, to) = prefix_range(&applied_prefix(name));
        self.batch.delete_range_cf(storage.meta(), from, to);
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
                "storage_error",
                format!("cannot create data directory {}: {e}", path.display()),
            )
        })?;
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_background_jobs(2);
        db_options.set_keep_log_file_num(5);
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
        let families = [DOCUMENTS, META]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options.clone()));
        let db = DB::open_cf_descriptors(&db_options, path, families)?;
        Ok(Storage {
            db,
            sync_writes: options.sync_writes,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    fn documents(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(DOCUMENTS)
            .expect("the documents column family is created at open")
    }

    fn meta(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(META)
            .expect("the meta column family is created at open")
    }

    /// Applies `changes` atomically and durably.
    pub fn commit(&self, changes: Changes) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(self.sync_writes);
        self.db.write_opt(changes.batch, &options)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One stored document's encoded value.
    pub fn get_document(&self, collection: &str, shard: u32, id: &str) -> Result<Option<Vec<u8>>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .db
            .get_cf(self.documents(), document_key(collection, shard, id))?)
    }

    /// Calls `visit(id, value)` for a shard's documents in id order, starting after `after`,
    /// until it returns false.
    pub fn scan_shard(
        &self,
        collection: &str,
        shard: u32,
        after: Option<&str>,
        mut visit: impl FnMut(&str, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let prefix = shard_prefix(collection, shard);
        let start = match after {
            Some(id) => {
                let mut key = document_key(collection, shard, id);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let iter = self.db.iterator_cf(
            self.documents(),
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let id = std::str::from_utf8(&key[prefix.len()..]).map_err(|_| {
                Error::Internal(format!(
                    "stored document key in {collection}/{shard} is not UTF-8"
                ))
            })?;
            if !visit(id, &value)? {
                break;
            }
        }
        Ok(())
    }

    /// The last command index applied to a shard (0 for none).
    pub fn applied_index(&self, collection: &str, shard: u32) -> Result<u64> {
        let value = self
            .db
            .get_cf(self.meta(), applied_key(collection, shard))?;
        Ok(value
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Every stored collection definition, as JSON.
    pub fn collection_definitions(&self) -> Result<Vec<Vec<u8>>> {
        let prefix = b"collection\0".to_vec();
        let mut found = Vec::new();
        let iter = self
            .db
            .iterator_cf(self.meta(), IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            found.push(value.to_vec());
        }
        Ok(found)
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

fn collection_prefix(collection: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(collection.len() + 1);
    key.extend_from_slice(collection.as_bytes());
    key.push(0);
    key
}

fn shard_prefix(collection: &str, shard: u32) -> Vec<u8> {
    let mut key = collection_prefix(collection);
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

fn document_key(collection: &str, shard: u32, id: &str) -> Vec<u8> {
    let mut key = shard_prefix(collection, shard);
    key.extend_from_slice(id.as_bytes());
    key
}

fn applied_prefix(collection: &str) -> Vec<u8> {
    let mut key = b"applied\0".to_vec();
    key.extend_from_slice(collection.as_bytes());
    key.push(0);
    key
}

fn applied_key(collection: &str, shard: u32) -> Vec<u8> {
    let mut key = applied_prefix(collection);
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

fn collection_key(name: &str) -> Vec<u8> {
    let mut key = b"collection\0".to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// `[prefix, prefix+1)`: every key starting with `prefix` (which never ends in 0xff here).
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    (prefix.to_vec(), end)
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
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_and_scan_in_order_per_shard() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), &StorageOptions::default()).unwrap();
        let mut metadata = Metadata::new();
        metadata.insert("lang".into(), "en".into());
        let mut changes = Changes::default();
        for id in ["b", "a", "c"] {
            changes.put_document(
                &storage,
                "docs",
                1,
                id,
                &encode_document(&[1.0, 2.5], &metadata),
            );
        }
        changes.put_document(
            &storage,
            "docs",
            2,
            "z",
            &encode_document(&[0.0, 0.0], &metadata),
        );
        changes.put_document(
            &storage,
            "docs2",
            1,
            "x",
            &encode_document(&[0.0, 0.0], &metadata),
        );
        changes.set_applied(&storage, "docs", 1, 7);
        storage.commit(changes).unwrap();

        let mut seen = Vec::new();
        storage
            .scan_shard("docs", 1, None, |id, _| {
                seen.push(id.to_string());
                Ok(true)
            })
            .unwrap();
        assert_eq!(seen, ["a", "b", "c"]);
        let mut after = Vec::new();
        storage
            .scan_shard("docs", 1, Some("a"), |id, _| {
                after.push(id.to_string());
                Ok(true)
            })
            .unwrap();
        assert_eq!(after, ["b", "c"]);
        let value = storage.get_document("docs", 1, "a").unwrap().unwrap();
        assert_eq!(decode_document(&value).unwrap(), (vec![1.0, 2.5], metadata));
        assert_eq!(storage.applied_index("docs", 1).unwrap(), 7);

        let mut drop = Changes::default();
        drop.delete_collection(&storage, "docs");
        storage.commit(drop).unwrap();
        assert!(storage.get_document("docs", 1, "a").unwrap().is_none());
        assert!(storage.get_document("docs", 2, "z").unwrap().is_none());
        assert!(storage.get_document("docs2", 1, "x").unwrap().is_some());
        assert_eq!(storage.applied_index("docs", 1).unwrap(), 0);
    }

    #[test]
    fn corrupt_values_are_reported_not_panicked_on() {
        assert!(decode_document(&[]).is_err());
        assert!(decode_document(&[1, 9, 0, 0, 0, 1]).is_err());
    }
}
