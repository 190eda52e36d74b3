//! The node: which collections it serves and how writes reach their shards. On a single node
//! every shard's commands go through a [`LocalLog`]; the replicated node puts a Raft group in
//! its place behind the same methods, so the API layer does not change.

pub mod local_log;

use crate::collection::{
    Catalog, Collection, Cursor, DEFAULT_COLLECTION, validate_collection_config, validate_document,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::index::worker::IndexWorker;
use crate::shard::{ShardCommand, ShardResponse};
use crate::storage::{Storage, StorageOptions};
use futures::future::try_join_all;
use grape_client::{
    CollectionConfig, CollectionInfo, Document, DocumentInput, SearchHit, SearchRequest,
    ShardChecksum, ShardStats,
};
use local_log::LocalLog;
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A collection this node serves, with the log of each of its shards.
#[derive(Debug)]
pub struct ServedCollection {
    pub collection: Arc<Collection>,
    /// By shard number.
    logs: Vec<LocalLog>,
}

/// One node of Grape.
#[derive(Debug)]
pub struct Node {
    /// `node.id`.
    id: String,
    /// The configuration the node started with.
    config: Arc<Config>,
    /// Collection definitions and shard storage.
    catalog: Catalog,
    /// Collections by name.
    collections: RwLock<BTreeMap<String, Arc<ServedCollection>>>,
    /// Commands applied since start (`grape_raft_log_entries_total`).
    applied_total: Arc<AtomicU64>,
    /// When the node started.
    started: Instant,
    /// Whether the node serves reads and writes (cleared on shutdown).
    ready: AtomicBool,
    /// Serialises collection creation and removal.
    schema: Mutex<()>,
}

impl Node {
    /// Opens the node's storage, loads its collections and creates the `default` collection on
    /// first start. A stored `default` that disagrees with the configuration stops start-up.
    pub async fn open(config: Config) -> Result<Arc<Node>> {
        let config = Arc::new(config);
        let storage_options = StorageOptions {
            cache_size_mb: config.database.cache_size_mb,
            write_buffer_size_mb: config.database.write_buffer_size_mb,
            enable_compression: config.database.enable_compression,
            sync_writes: true,
        };
        let data_dir = config.node.data_dir.clone();
        let worker_threads = config.index.construction_threads;
        let rebuild_threshold = config.index.rebuild_threshold;
        let (catalog, loaded) = tokio::task::spawn_blocking(move || -> Result<_> {
            let storage = Arc::new(Storage::open(&data_dir, &storage_options)?);
            let worker = Arc::new(
                IndexWorker::new(worker_threads)
                    .map_err(|e| Error::Internal(format!("cannot start index threads: {e}")))?,
            );
            let catalog = Catalog::new(storage, worker, rebuild_threshold);
            let loaded = catalog.load_all()?;
            Ok((catalog, loaded))
        })
        .await
        .map_err(|e| Error::Internal(format!("opening storage panicked: {e}")))??;
        let node = Arc::new(Node {
            id: config.node.id.clone(),
            config: Arc::clone(&config),
            catalog,
            collections: RwLock::new(BTreeMap::new()),
            applied_total: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            schema: Mutex::new(()),
        });
        for collection in loaded {
            node.serve(collection);
        }
        let wanted = config.default_collection()?;
        let existing = node.collections.read().get(DEFAULT_COLLECTION).cloned();
        match existing {
            Some(existing) => {
                let stored = existing.collection.config();
                if stored.dimension != wanted.dimension || stored.metric != wanted.metric {
                    return Err(Error::invalid(
                        "invalid_config",
                        format!(
                            "database.vector_dimension/metric say {} {}, but the stored default \
                             collection has {} {}; use the stored values or a new data_dir",
                            wanted.dimension,
                            wanted.metric.as_str(),
                            stored.dimension,
                            stored.metric.as_str()
                        ),
                    ));
                }
            }
            None => {
                node.create_collection(wanted).await?;
            }
        }
        node.ready.store(true, Ordering::Release);
        Ok(node)
    }

    fn serve(&self, collection: Arc<Collection>) -> Arc<ServedCollection> {
        let logs = collection
            .shards()
            .iter()
            .map(|shard| LocalLog::start(Arc::clone(shard), Arc::clone(&self.applied_total)))
            .collect();
        let served = Arc::new(ServedCollection {
            collection: Arc::clone(&collection),
            logs,
        });
        self.collections
            .write()
            .insert(collection.name().to_string(), Arc::clone(&served));
        served
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn storage(&self) -> &Arc<Storage> {
        self.catalog.storage()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether this node has caught up and serves requests.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Stops answering readiness (shutdown has begun).
    pub fn set_unready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// Commands applied since start.
    pub fn applied_total(&self) -> u64 {
        self.applied_total.load(Ordering::Relaxed)
    }

    /// A served collection, or 404.
    pub fn collection(&self, name: &str) -> Result<Arc<ServedCollection>> {
        self.collections.read().get(name).cloned().ok_or_else(|| {
            Error::not_found(
                "collection_not_found",
                format!("collection '{name}' does not exist"),
            )
        })
    }

    /// Every served collection, by name.
    pub fn collections(&self) -> Vec<Arc<ServedCollection>> {
        self.collections.read().values().cloned().collect()
    }

    /// Live documents over every collection.
    pub fn document_count(&self) -> u64 {
        self.collections().iter().map(|c| c.collection.len()).sum()
    }

    /// Creates a collection; 409 if the name is taken.
    pub async fn create_collection(&self, config: CollectionConfig) -> Result<CollectionInfo> {
        validate_collection_config(&config)?;
        let _schema = self.schema.lock();
        if self.collections.read().contains_key(&config.name) {
            return Err(Error::conflict(
                "collection_exists",
                format!("collection '{}' already exists", config.name),
            ));
        }
        let collection = self.catalog.create(config)?;
        let served = self.serve(collection);
        Ok(info(&served.collection))
    }

    /// Drops a collection and its documents. The `default` collection stays.
    pub async fn drop_collection(&self, name: &str) -> Result<()> {
        if name == DEFAULT_COLLECTION {
            return Err(Error::conflict(
                "default_collection",
                "the default collection is defined by the node configuration and cannot be dropped",
            ));
        }
        let _schema = self.schema.lock();
        let served = self.collections.write().remove(name).ok_or_else(|| {
            Error::not_found(
                "collection_not_found",
                format!("collection '{name}' does not exist"),
            )
        })?;
        self.catalog.drop_collection(&served.collection)
    }

    /// Validates every document, then writes them, grouped by shard, and returns their ids in
    /// input order. `batch` names positions in errors. Nothing is written if any is invalid.
    pub async fn upsert(
        &self,
        name: &str,
        inputs: Vec<DocumentInput>,
        batch: bool,
    ) -> Result<Vec<String>> {
        let served = self.collection(name)?;
        let collection = &served.collection;
        if batch {
            if inputs.is_empty() {
                return Err(Error::invalid("empty_batch", "documents must not be empty"));
            }
            let max = self.config.performance.max_batch_size;
            if inputs.len() > max {
                return Err(Error::invalid(
                    "batch_too_large",
                    format!(
                        "batch has {} documents; at most {max} are allowed (performance.max_batch_size)",
                        inputs.len()
                    ),
                ));
            }
        }
        let documents = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| validate_document(collection.config(), input, batch.then_some(i)))
            .collect::<Result<Vec<_>>>()?;
        let max_documents = self.config.database.max_documents;
        let new = documents
            .iter()
            .filter(|d| !collection.shard_for(&d.id).contains(&d.id))
            .count() as u64;
        if new > 0 && self.document_count() + new > max_documents {
            return Err(Error::conflict(
                "capacity_exceeded",
                format!(
                    "this node holds its maximum of {max_documents} documents (database.max_documents)"
                ),
            ));
        }
        let ids: Vec<String> = documents.iter().map(|d| d.id.clone()).collect();
        let mut by_shard: BTreeMap<u32, Vec<_>> = BTreeMap::new();
        for document in documents {
            by_shard
                .entry(collection.shard_for(&document.id).number())
                .or_default()
                .push(document);
        }
        try_join_all(by_shard.into_iter().map(|(shard, documents)| {
            served.logs[shard as usize].propose(ShardCommand::Upsert { documents })
        }))
        .await?;
        Ok(ids)
    }

    /// Deletes a document; false if it did not exist.
    pub async fn delete(&self, name: &str, id: &str) -> Result<bool> {
        let served = self.collection(name)?;
        let shard = served.collection.shard_for(id).number();
        let response = served.logs[shard as usize]
            .propose(ShardCommand::Delete {
                ids: vec![id.to_string()],
            })
            .await?;
        match response {
            ShardResponse::Deleted { existed } => Ok(existed.first().copied().unwrap_or(false)),
            other => Err(Error::Internal(format!("delete answered {other:?}"))),
        }
    }

    /// A document by id, or 404.
    pub async fn get(&self, name: &str, id: &str) -> Result<Document> {
        let served = self.collection(name)?;
        let id_owned = id.to_string();
        let found = blocking(move || served.collection.get(&id_owned)).await?;
        found.ok_or_else(|| {
            Error::not_found(
                "document_not_found",
                format!("document '{id}' does not exist"),
            )
        })
    }

    /// One page of a collection's documents.
    pub async fn list(
        &self,
        name: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<(Vec<Document>, Option<Cursor>)> {
        let served = self.collection(name)?;
        blocking(move || served.collection.list(cursor.as_ref(), limit)).await
    }

    /// Searches a collection, within `performance.query_timeout_ms`.
    pub async fn search(&self, name: &str, request: &SearchRequest) -> Result<Vec<SearchHit>> {
        let served = self.collection(name)?;
        let prepared = served.collection.prepare_search(request)?;
        let timeout = Duration::from_millis(self.config.performance.query_timeout_ms);
        match tokio::time::timeout(
            timeout,
            blocking(move || served.collection.search(&prepared)),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(Error::unavailable(
                "query_timeout",
                format!(
                    "the search took longer than {} ms (performance.query_timeout_ms)",
                    timeout.as_millis()
                ),
            )),
        }
    }

    /// Per-shard figures of every collection.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        let mut stats = Vec::new();
        for served in self.collections() {
            for shard in served.collection.shards() {
                let figures = shard.figures();
                stats.push(ShardStats {
                    collection: served.collection.name().to_string(),
                    shard: shard.number(),
                    documents: figures.documents,
                    indexed: figures.index.indexed,
                    pending: figures.index.pending,
                    tombstones: figures.index.dead_in_graph,
                    rebuilds: figures.index.rebuilds,
                    replicas: vec![self.id.clone()],
                    leader: Some(self.id.clone()),
                });
            }
        }
        stats
    }

    /// Per-shard content checksums, computed from storage.
    pub async fn checksums(&self) -> Result<Vec<ShardChecksum>> {
        let collections = self.collections();
        blocking(move || {
            let mut sums = Vec::new();
            for served in collections {
                for shard in served.collection.shards() {
                    let (documents, sum) = shard.checksum()?;
                    sums.push(ShardChecksum {
                        collection: served.collection.name().to_string(),
                        shard: shard.number(),
                        documents,
                        checksum: format!("{sum:016x}"),
                    });
                }
            }
            Ok(sums)
        })
        .await
    }
}

/// A collection's public description.
pub fn info(collection: &Collection) -> CollectionInfo {
    CollectionInfo {
        config: collection.config().clone(),
        documents: collection.len(),
    }
}

/// Runs blocking work (RocksDB reads, searches) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("a worker panicked: {e}")))?
}
