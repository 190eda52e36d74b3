//! A shard: the documents whose ids hash to it, their vector index, and their RocksDB rows.
//!
//! A shard is a deterministic state machine. Writes reach it only as commands from its Raft
//! group's log, applied in log order through [`Shard::apply`]. Given the same commands, every
//! replica holds the same documents and answers the same way. The shard knows nothing of Raft:
//! the caller hands it an opaque "applied" marker that is stored atomically with the effect of
//! the commands, and a snapshot is the documents plus that marker.
//!
//! ```text
//!   commands ──apply(marker)──> RocksDB batch (documents + marker)
//!                                └──> in memory: document table + vector index (pending)
//!                                                          └── index worker ──> HNSW graph
//! ```

pub mod filter;
pub mod payload;
pub mod requests;
pub mod saved_graph;

use crate::error::{Error, ErrorCode, Result};
use crate::index::distance::VectorProblem;
use crate::index::worker::{IndexWorker, Maintenance, contain};
use crate::index::{
    Candidate, GraphEngine, IndexOptions, IndexStats, VectorId, VectorIndex, distance,
};
use crate::storage::{
    Changes, Generations, Storage, decode_document, encode_document, generation_namespace,
};
use filter::CompiledFilter;
use grape_client::{CollectionConfig, Document, Metadata};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use payload::PayloadIndexes;
use requests::{Answer, Recent, RequestId};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::xxh3_64;

/// Number of a shard within its collection.
pub type ShardId = u32;

/// Longest document id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest metadata object, serialised, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// A document already validated against its collection, ready to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewDocument {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Metadata,
}

/// A write to one shard. Commands are validated before they are logged; [`Shard::apply`]
/// checks them again (a command from a peer of another version, or one that slipped past),
/// and rejects a bad one whole, the same way on every replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Insert or replace documents by id; later entries win over earlier ones.
    Upsert {
        documents: Vec<NewDocument>,
        /// Identifies the proposal, so that a retry is answered, not applied again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<RequestId>,
    },
    /// Remove documents by id.
    Delete {
        ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<RequestId>,
    },
}

impl ShardCommand {
    /// An upsert with a fresh request id.
    pub fn upsert(documents: Vec<NewDocument>) -> ShardCommand {
        ShardCommand::Upsert {
            documents,
            request: Some(rand::random()),
        }
    }

    /// A delete with a fresh request id.
    pub fn delete(ids: Vec<String>) -> ShardCommand {
        ShardCommand::Delete {
            ids,
            request: Some(rand::random()),
        }
    }

    /// The proposal's id, if it carries one.
    pub fn request(&self) -> Option<RequestId> {
        match self {
            ShardCommand::Upsert { request, .. } | ShardCommand::Delete { request, .. } => *request,
        }
    }

    /// Documents this command carries or names (for batching and quotas).
    pub fn len(&self) -> usize {
        match self {
            ShardCommand::Upsert { documents, .. } => documents.len(),
            ShardCommand::Delete { ids, .. } => ids.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardResponse {
    Upserted {
        count: usize,
    },
    /// For each id of the command, whether it existed.
    Deleted {
        existed: Vec<bool>,
    },
    /// The command was not applied: what [`check_document`] found wrong with it.
    Rejected {
        code: ErrorCode,
        message: String,
    },
}

/// Checks one document against its collection: what a shard refuses to store. The API runs
/// it before anything is logged (a 400), and [`Shard::apply`] runs it again, so a document the
/// index could not use never reaches it.
pub fn check_document(config: &CollectionConfig, document: &NewDocument) -> Result<()> {
    let id = &document.id;
    if id.is_empty() {
        return Err(Error::invalid(ErrorCode::InvalidId, "id must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::invalid(
            ErrorCode::InvalidId,
            format!(
                "id is {} bytes; at most {MAX_ID_BYTES} are allowed",
                id.len()
            ),
        ));
    }
    check_vector(config, &document.vector)?;
    let size = serde_json::to_vec(&document.metadata)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            ErrorCode::MetadataTooLarge,
            format!("metadata is {size} bytes; at most {MAX_METADATA_BYTES} are allowed"),
        ));
    }
    Ok(())
}

/// Checks a vector (of a document or a query) against a collection: its dimension, finite
/// values and a length the index can use under the metric.
pub fn check_vector(config: &CollectionConfig, vector: &[f32]) -> Result<()> {
    distance::check(config.metric, config.dimension, vector).map_err(|problem| match problem {
        VectorProblem::Dimension { got, want } => Error::invalid(
            ErrorCode::DimensionMismatch,
            format!(
                "vector has {got} dimensions, collection '{}' expects {want}",
                config.name
            ),
        ),
        other => Error::invalid(ErrorCode::InvalidVector, other.to_string()),
    })
}

/// A document's in-memory entry, by vector id.
#[derive(Debug)]
struct Entry {
    id: Arc<str>,
    metadata: Arc<Metadata>,
    /// Size of the stored value, for the shard's byte count.
    size: u32,
}

/// What a shard holds in memory: documents by vector id and by id, and their vector index.
/// Replaced whole when a snapshot is installed.
struct ShardState {
    /// Indexed by vector id; `None` once deleted or replaced.
    entries: Vec<Option<Entry>>,
    /// Current vector id of each live document.
    by_id: HashMap<Arc<str>, VectorId>,
    /// Vectors and the HNSW graph, ids aligned with `entries`.
    index: Arc<VectorIndex>,
    /// Background graph maintenance of `index`.
    maintenance: Arc<Maintenance>,
    /// The collection's payload indexes over `entries`.
    payload: PayloadIndexes,
    /// Stored bytes of the live documents.
    bytes: u64,
    /// Graph entries reused from the saved graph when this state was loaded.
    loaded: u64,
    /// How far the saved graph file is behind `index`.
    saved: Mutex<SaveMark>,
}

/// The graph changes a saved file holds, and when it was written (or loaded).
#[derive(Debug, Clone, Copy)]
struct SaveMark {
    changes: u64,
    at: Instant,
}

impl SaveMark {
    fn now(changes: u64) -> Mutex<SaveMark> {
        Mutex::new(SaveMark {
            changes,
            at: Instant::now(),
        })
    }
}

/// Unsaved graph inserts that make a save due before the interval is up, once the graph has
/// caught up with the writes (a bulk load just finished): a tenth of the graph, at least this.
const SAVE_EARLY_MIN: u64 = 10_000;

/// Shortest time between two saves of one graph.
const SAVE_GAP: Duration = Duration::from_secs(30);

/// One search result from a shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardHit {
    pub id: Arc<str>,
    pub metadata: Arc<Metadata>,
    /// The graph distance (smaller is closer), comparable across shards of a collection.
    pub distance: f32,
    /// The user-facing score (see [`distance::GraphDistance::score`]).
    pub score: f32,
}

/// Figures for `/admin/stats/shards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFigures {
    pub documents: u64,
    /// Stored bytes of the live documents (encoded vector and metadata).
    pub bytes: u64,
    pub index: IndexStats,
    /// Graph entries reused from the saved graph at start (or 0: built from the documents).
    pub graph_loaded: u64,
    /// Why this replica's index failed, if it did (see [`Shard::failure`]).
    pub failed: Option<String>,
}

/// Breadth a filtered graph walk may widen to (it holds the shard's read lock throughout).
const MAX_WIDENED_EF: usize = 4096;

/// Documents a filtered search checks between two chances for writers to take the lock.
const SCAN_CHUNK: usize = 4096;

/// Filters matching at most this many documents are answered by exact scan: small candidate
/// sets are where graph search loses recall, and scanning them is cheap.
const EXACT_FILTER_LIMIT: usize = 10_000;

/// One replica of one shard of a collection.
pub struct Shard {
    /// Storage namespace of this replica's documents (unique per collection incarnation and
    /// shard).
    namespace: String,
    /// The collection's fixed settings.
    config: Arc<CollectionConfig>,
    /// Durable state.
    storage: Arc<Storage>,
    /// In-memory documents and index.
    state: RwLock<ShardState>,
    /// Pool running graph maintenance.
    worker: Arc<IndexWorker>,
    /// How the index is built (graph engine, rebuild threshold).
    index_options: IndexOptions,
    /// The applied-state marker stored with the last applied commands (opaque to the shard).
    applied: Mutex<Option<Vec<u8>>>,
    /// Serialises `apply` and `restore`: existence checks and memory updates assume one writer.
    applying: Mutex<()>,
    /// The storage generation writes go to (see [`crate::storage`]); changed only by
    /// [`Shard::restore_from`], under `applying`.
    generation: Mutex<u64>,
    /// Requests answered recently (guarded by `applying` in practice).
    recent: Mutex<Recent>,
    /// Where the graph is saved; `None` when graphs are not saved.
    graph_file: Option<PathBuf>,
    /// Set by [`Shard::stop`].
    stopping: AtomicBool,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Shard {
    /// Opens a shard replica, loading its documents from storage into memory and queueing
    /// them for indexing.
    pub fn open(
        config: Arc<CollectionConfig>,
        namespace: &str,
        storage: Arc<Storage>,
        worker: Arc<IndexWorker>,
        index_options: IndexOptions,
    ) -> Result<Shard> {
        let generations = storage.generations(namespace)?;
        if !generations.stale.is_empty() {
            // What an interrupted snapshot install left: a half-written new generation, or
            // the old one it replaced.
            let mut changes = Changes::default();
            for stale in &generations.stale {
                changes.clear_generation(&storage, namespace, *stale);
            }
            let current = Generations {
                current: generations.current,
                stale: Vec::new(),
            };
            changes.set_generations(&storage, namespace, &current);
            storage.commit(changes)?;
            tracing::info!(%namespace, stale = ?generations.stale, "deleted what an interrupted snapshot install left");
        }
        let stored = generation_namespace(namespace, generations.current);
        let graph_file = saved_graph::path(storage.path(), namespace);
        let saving = index_options.graph_save_interval.is_some()
            && index_options.engine == GraphEngine::Grape;
        let saved = if saving {
            let started = Instant::now();
            match saved_graph::read(&graph_file, &config, index_options) {
                Ok(saved) => {
                    if let Some(saved) = &saved {
                        tracing::info!(%namespace, nodes = saved.labels.len(), generation = saved.header.generation, elapsed_ms = started.elapsed().as_millis() as u64, "read the saved graph");
                    }
                    saved
                }
                Err(error) => {
                    // Damaged: deleted. Unreadable for now (no file handles, an I/O error):
                    // kept for the next start.
                    let damaged = matches!(
                        error.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    );
                    tracing::warn!(%namespace, %error, file = %graph_file.display(), deleted = damaged, "the saved graph cannot be used; building the graph from the documents");
                    if damaged {
                        let _ = std::fs::remove_file(&graph_file);
                    }
                    None
                }
            }
        } else {
            // Saving is off, or hnsw_rs builds the graphs: nothing will keep the file current.
            let _ = std::fs::remove_file(&graph_file);
            None
        };
        let state = load_state(&config, &stored, &storage, index_options, saved)?;
        let applied = storage.applied(namespace)?;
        let recent = Recent::load(&storage, namespace)?;
        let shard = Shard {
            namespace: namespace.to_string(),
            config,
            storage,
            state: RwLock::new(state),
            worker,
            index_options,
            applied: Mutex::new(applied),
            applying: Mutex::new(()),
            generation: Mutex::new(generations.current),
            recent: Mutex::new(recent),
            graph_file: saving.then_some(graph_file),
            stopping: AtomicBool::new(false),
        };
        shard.schedule_indexing();
        Ok(shard)
    }

    fn schedule_indexing(&self) {
        let state = self.state.read();
        self.worker.schedule(&state.index, &state.maintenance);
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    /// Where writes to the current generation go.
    fn stored(&self) -> String {
        generation_namespace(&self.namespace, *self.generation.lock())
    }

    /// The marker stored with the last applied commands, if any.
    pub fn applied_marker(&self) -> Option<Vec<u8>> {
        self.applied.lock().clone()
    }

    /// Applies commands in order: one RocksDB batch holding their effect and `marker`, then
    /// memory. On a storage error nothing is applied. The batch is not fsynced: the caller's
    /// log is the durable record.
    pub fn apply(&self, commands: &[&ShardCommand], marker: &[u8]) -> Result<Vec<ShardResponse>> {
        let _applying = self.applying.lock();
        let stored = self.stored();
        // Commands this replica refuses, decided from their content and the collection alone,
        // so every replica refuses the same ones.
        let rejected: Vec<Option<Error>> = commands
            .iter()
            .map(|command| match command {
                ShardCommand::Upsert { documents, .. } => {
                    documents.iter().enumerate().find_map(|(i, d)| {
                        check_document(&self.config, d).err().map(|e| {
                            Error::invalid(e.code(), format!("documents[{i}]: {}", e.message()))
                        })
                    })
                }
                ShardCommand::Delete { .. } => None,
            })
            .collect();
        let mut changes = Changes::default();
        let mut responses: Vec<ShardResponse> = Vec::with_capacity(commands.len());
        // Commands whose effect is not applied: rejected, or repeats of answered requests.
        let mut skip = vec![false; commands.len()];
        // Requests answered by this batch, in command order, and where their answers are.
        let mut answered: Vec<(RequestId, usize)> = Vec::new();
        let mut answered_here: HashMap<RequestId, usize> = HashMap::new();
        let mut recent = self.recent.lock();
        // Stored size of each upserted document, in order.
        let mut sizes = Vec::new();
        {
            let state = self.state.read();
            // A failed replica's memory may be behind its storage: ask storage.
            let failed = state.maintenance.failure().is_some();
            // Whether ids exist after the earlier commands of this same batch.
            let mut overlay: HashMap<&str, bool> = HashMap::new();
            for (i, (command, rejected)) in commands.iter().zip(&rejected).enumerate() {
                let request = command.request();
                if let Some(id) = request {
                    let first = match answered_here.get(&id) {
                        Some(at) => Some(responses[*at].clone()),
                        None => recent.get(id).cloned(),
                    };
                    if let Some(first) = first {
                        // A retry: answered as the first time, applied once.
                        responses.push(first);
                        skip[i] = true;
                        continue;
                    }
                    answered_here.insert(id, responses.len());
                    answered.push((id, responses.len()));
                }
                if let Some(error) = rejected {
                    responses.push(ShardResponse::Rejected {
                        code: error.code(),
                        message: error.message(),
                    });
                    skip[i] = true;
                    continue;
                }
                match command {
                    ShardCommand::Upsert { documents, .. } => {
                        for doc in documents {
                            let value = encode_document(&doc.vector, &doc.metadata);
                            sizes.push(value.len());
                            changes.put_document(&self.storage, &stored, &doc.id, &value);
                            overlay.insert(&doc.id, true);
                        }
                        responses.push(ShardResponse::Upserted {
                            count: documents.len(),
                        });
                    }
                    ShardCommand::Delete { ids, .. } => {
                        let mut existed = Vec::with_capacity(ids.len());
                        for id in ids {
                            let exists = match overlay.get(id.as_str()) {
                                Some(exists) => *exists,
                                None if failed => {
                                    self.storage.get_document(&self.namespace, id)?.is_some()
                                }
                                None => state.by_id.contains_key(id.as_str()),
                            };
                            existed.push(exists);
                            if exists {
                                changes.delete_document(&self.storage, &stored, id);
                            }
                            overlay.insert(id, false);
                        }
                        responses.push(ShardResponse::Deleted { existed });
                    }
                }
            }
        }
        let staged = recent.stage(
            answered
                .iter()
                .map(|(id, at)| (*id, responses[*at].clone())),
            &mut changes,
            &self.storage,
            &stored,
        );
        changes.set_applied(&self.storage, &stored, marker);
        self.storage.commit(changes)?;
        recent.commit(staged);
        drop(recent);

        let mut state = self.state.write();
        if state.maintenance.failure().is_none() {
            let outcome =
                contain(|| apply_in_memory(&self.config, &mut state, commands, &skip, sizes));
            if let Err(reason) = outcome {
                tracing::error!(shard = %self.namespace, %reason, "applying to the index failed; the shard is marked failed");
                state.maintenance.fail(reason);
            }
        }
        self.worker.schedule(&state.index, &state.maintenance);
        drop(state);
        *self.applied.lock() = Some(marker.to_vec());
        Ok(responses)
    }

    /// Records a new applied marker without changing documents (entries that carry no
    /// command, such as Raft membership changes).
    pub fn mark_applied(&self, marker: &[u8]) -> Result<()> {
        let _applying = self.applying.lock();
        let mut changes = Changes::default();
        changes.set_applied(&self.storage, &self.stored(), marker);
        self.storage.commit(changes)?;
        *self.applied.lock() = Some(marker.to_vec());
        Ok(())
    }

    /// Whether a document exists.
    pub fn contains(&self, id: &str) -> bool {
        self.state.read().by_id.contains_key(id)
    }

    /// Live documents.
    pub fn len(&self) -> usize {
        self.state.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A stored document, as written.
    pub fn get(&self, id: &str) -> Result<Option<Document>> {
        let Some(value) = self.storage.get_document(&self.namespace, id)? else {
            return Ok(None);
        };
        let (vector, metadata) = decode_document(&value)?;
        Ok(Some(Document {
            id: id.to_string(),
            vector,
            metadata,
        }))
    }

    /// Up to `limit` documents in id order, after `after`.
    pub fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Document>> {
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        self.storage
            .scan_documents(&self.namespace, after, |id, value| {
                let (vector, metadata) = decode_document(value)?;
                found.push(Document {
                    id: id.to_string(),
                    vector,
                    metadata,
                });
                Ok(found.len() < limit)
            })?;
        Ok(found)
    }

    /// The `k` nearest documents to a prepared query that pass `filter`, nearest first.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&CompiledFilter>,
        deadline: Option<Instant>,
    ) -> Result<Vec<ShardHit>> {
        let mut state = self.state.read();
        if let Some(reason) = state.maintenance.failure() {
            return Err(failed_error(&self.namespace, reason));
        }
        let candidates = match filter {
            None => state.index.search(query, k, ef, None),
            Some(filter) => {
                let matching = match indexed_matches(&mut state, filter, deadline)? {
                    Some(matching) => matching,
                    None => scanned_matches(&mut state, filter, deadline)?,
                };
                let count = matching.len() as usize;
                if count <= EXACT_FILTER_LIMIT || count * 10 <= state.by_id.len() {
                    state
                        .index
                        .exact_search(query, k, matching.iter().map(|id| id as VectorId))
                } else {
                    let accept =
                        |id: VectorId| u32::try_from(id).is_ok_and(|id| matching.contains(id));
                    let ef = widened_ef(ef, k, state.by_id.len(), count);
                    state.index.search(query, k, ef, Some(&accept))
                }
            }
        };
        Ok(hits(&state, query, candidates))
    }

    /// Count and order-independent hash of every stored document, read from storage.
    pub fn checksum(&self) -> Result<(u64, u64)> {
        let mut count = 0u64;
        let mut sum = 0u64;
        self.storage
            .scan_all_documents(&self.namespace, |id, value| {
                sum = sum.wrapping_add(document_hash(id, value));
                count += 1;
                Ok(true)
            })?;
        Ok((count, sum))
    }

    pub fn figures(&self) -> ShardFigures {
        let state = self.state.read();
        ShardFigures {
            documents: state.by_id.len() as u64,
            bytes: state.bytes,
            index: state.index.stats(),
            graph_loaded: state.loaded,
            failed: state.maintenance.failure().map(str::to_string),
        }
    }

    /// Test only: the next search of this replica's index panics.
    #[cfg(test)]
    pub(crate) fn inject_search_panic(&self) {
        self.state
            .read()
            .index
            .faults
            .search
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks this replica's index failed (work on it panicked).
    pub fn fail(&self, reason: String) {
        tracing::error!(shard = %self.namespace, %reason, "the shard is marked failed");
        self.state.read().maintenance.fail(reason);
    }

    /// Why this replica's index failed, if it did: work on it panicked (a bug), so it is no
    /// longer searched or maintained. Writes still reach storage and every replica answers
    /// them alike; a restart or a snapshot rebuilds the index from storage.
    pub fn failure(&self) -> Option<String> {
        self.state.read().maintenance.failure().map(str::to_string)
    }

    /// Writes a consistent copy of this replica to `out`, record by record (see
    /// [`write_record`]): its remembered answers, then every document. Answers the applied
    /// marker the copy is at. Memory use does not depend on the shard's size.
    pub fn snapshot_into(&self, out: &mut dyn std::io::Write) -> Result<Option<Vec<u8>>> {
        let written = |e: std::io::Error| {
            Error::unavailable(
                ErrorCode::StorageError,
                format!("writing the snapshot of {}: {e}", self.namespace),
            )
        };
        self.storage
            .with_consistent_view(&self.namespace, |marker, requests, scan| {
                // Remembered answers travel with the documents, under the empty id (which no
                // document can have), so the new replica answers retries as the others do.
                for answer in requests {
                    write_record(out, "", &answer).map_err(written)?;
                }
                scan(&mut |id, value| {
                    write_record(out, id, value).map_err(written)?;
                    Ok(true)
                })?;
                Ok(marker)
            })
    }

    /// Writes this replica's documents, as they are at one instant, to `out` as records (see
    /// [`write_record`]; no remembered answers), calling `fixed` as soon as that instant is
    /// fixed (writes applied afterwards are not in the copy). Answers how many documents were
    /// written and their checksum, as [`Shard::checksum`] computes it.
    pub fn export_into(
        &self,
        out: &mut dyn std::io::Write,
        fixed: &mut dyn FnMut(),
    ) -> Result<(u64, u64)> {
        let written = |e: std::io::Error| {
            Error::unavailable(
                ErrorCode::StorageError,
                format!("exporting {}: {e}", self.namespace),
            )
        };
        self.storage
            .with_consistent_view(&self.namespace, |_, _, scan| {
                fixed();
                let (mut count, mut sum) = (0u64, 0u64);
                scan(&mut |id, value| {
                    write_record(out, id, value).map_err(written)?;
                    sum = sum.wrapping_add(document_hash(id, value));
                    count += 1;
                    Ok(true)
                })?;
                Ok((count, sum))
            })
    }

    /// [`Shard::snapshot_into`] a buffer.
    #[cfg(test)]
    pub fn snapshot(&self) -> Result<(Option<Vec<u8>>, Vec<u8>)> {
        let mut data = Vec::new();
        let marker = self.snapshot_into(&mut data)?;
        Ok((marker, data))
    }

    /// [`Shard::restore_from`] a buffer.
    #[cfg(test)]
    pub fn restore(&self, marker: &[u8], mut data: &[u8]) -> Result<()> {
        self.restore_from(marker, &mut data)
    }

    /// Replaces this replica's content with a [`Shard::snapshot_into`] taken elsewhere, read
    /// from `records` as a stream.
    ///
    /// The records go to a new storage generation (as table files, not through memory) while
    /// the current one keeps serving reads and searches; one batch then makes the new
    /// generation current together with `marker` (and is fsynced), memory switches to it, and
    /// the old generation is deleted. A crash at
    /// any point leaves the old content or the new, never a mix: [`Shard::open`] deletes
    /// whichever generation was left over. A corrupt or truncated copy changes nothing.
    pub fn restore_from(&self, marker: &[u8], records: &mut dyn std::io::Read) -> Result<()> {
        let _applying = self.applying.lock();
        let generations = self.storage.generations(&self.namespace)?;
        let old = generations.current;
        let new = generations.next();
        // Until it is complete, the new generation is stale: a crash leaves it to be deleted.
        let mut changes = Changes::default();
        changes.clear_generation(&self.storage, &self.namespace, new);
        let mut installing = generations.clone();
        installing.stale.push(new);
        changes.set_generations(&self.storage, &self.namespace, &installing);
        self.storage.commit(changes)?;
        self.storage.sync()?;
        // The new content, written and loaded into memory while the old one serves.
        let stored = generation_namespace(&self.namespace, new);
        let prepared = self.write_generation(&stored, records).and_then(|answers| {
            let fresh = load_state(
                &self.config,
                &stored,
                &self.storage,
                self.index_options,
                None,
            )?;
            Ok((answers, fresh))
        });
        // Then one fsynced batch makes it current, and memory follows at once.
        let mut switched = generations.clone();
        switched.stale.push(old);
        switched.current = new;
        let switch = |(answers, fresh)| -> Result<(Vec<Answer>, ShardState)> {
            let mut changes = Changes::default();
            changes.set_applied(&self.storage, &stored, marker);
            changes.set_generations(&self.storage, &self.namespace, &switched);
            self.storage.commit(changes)?;
            self.storage.sync()?;
            Ok((answers, fresh))
        };
        let (answers, fresh) = match prepared.and_then(switch) {
            Ok(done) => done,
            Err(error) => {
                let mut changes = Changes::default();
                changes.clear_generation(&self.storage, &self.namespace, new);
                changes.set_generations(&self.storage, &self.namespace, &generations);
                if let Err(cleanup) = self.storage.commit(changes) {
                    tracing::warn!(shard = %self.namespace, %cleanup, "removing a failed install; the next start removes it");
                }
                return Err(error);
            }
        };
        *self.generation.lock() = new;
        *self.recent.lock() = Recent::from_answers(answers);
        let mut state = self.state.write();
        state.maintenance.close();
        *state = fresh;
        self.worker.schedule(&state.index, &state.maintenance);
        drop(state);
        *self.applied.lock() = Some(marker.to_vec());
        // Nothing reads the old generations any more: storage reads resolve the current one.
        let mut changes = Changes::default();
        for stale in &switched.stale {
            changes.clear_generation(&self.storage, &self.namespace, *stale);
        }
        changes.set_generations(
            &self.storage,
            &self.namespace,
            &Generations {
                current: new,
                stale: Vec::new(),
            },
        );
        if let Err(error) = self.storage.commit(changes) {
            tracing::warn!(shard = %self.namespace, %error, "deleting the replaced content; the next start deletes it");
        }
        Ok(())
    }

    /// Writes `records` into the generation stored under `stored` (not yet current). Answers
    /// the remembered answers they carried.
    fn write_generation(
        &self,
        stored: &str,
        records: &mut dyn std::io::Read,
    ) -> Result<Vec<Answer>> {
        let corrupt = |why: String| {
            Error::Internal(format!("snapshot of {} is corrupt: {why}", self.namespace))
        };
        let mut answers: Vec<Answer> = Vec::new();
        let mut changes = Changes::default();
        // Documents go straight into table files (see `Storage::bulk_load`); the remembered
        // answers, at most `REMEMBERED`, in one batch.
        self.storage.bulk_load(stored, |put| {
            while let Some((id, value)) =
                read_record(records).map_err(|e| corrupt(e.to_string()))?
            {
                if id.is_empty() {
                    if answers.len() as u64 >= requests::REMEMBERED {
                        return Err(corrupt("more remembered answers than are kept".into()));
                    }
                    let answer = requests::decode(&value)?;
                    changes.put_request(
                        &self.storage,
                        stored,
                        answer.seq % requests::REMEMBERED,
                        &requests::encode(&answer),
                    );
                    answers.push(answer);
                    continue;
                }
                decode_document(&value).map_err(|e| corrupt(format!("document {id}: {e}")))?;
                put(&id, &value).map_err(|e| corrupt(format!("document {id}: {e}")))?;
            }
            Ok(())
        })?;
        self.storage.commit(changes)?;
        Ok(answers)
    }

    /// Stops background work and removes this replica's documents from storage, and its
    /// saved graph.
    pub fn destroy(&self) -> Result<()> {
        let _applying = self.applying.lock();
        self.state.read().maintenance.close();
        let mut changes = Changes::default();
        changes.clear_namespace(&self.storage, &self.namespace);
        self.storage.commit(changes)?;
        if let Some(file) = &self.graph_file {
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }

    /// Saves the graph if it changed since it was last saved or loaded, and either the save
    /// interval is up, or many inserts are unsaved and the graph has caught up with the
    /// writes (a bulk load just ended). Skips a graph busy with maintenance. Answers the bytes
    /// written, if it saved.
    pub fn save_graph_if_due(&self) -> Result<Option<u64>> {
        let Some(interval) = self.index_options.graph_save_interval else {
            return Ok(None);
        };
        let (unsaved, since, stats) = {
            let state = self.state.read();
            let mark = *state.saved.lock();
            let unsaved = state.index.graph_changes().saturating_sub(mark.changes);
            (unsaved, mark.at.elapsed(), state.index.stats())
        };
        let early = unsaved >= (stats.indexed / 10).max(SAVE_EARLY_MIN) && stats.pending == 0;
        if unsaved == 0 || since < SAVE_GAP.min(interval) || (since < interval && !early) {
            return Ok(None);
        }
        self.save_graph(Duration::ZERO)
    }

    /// Saves the graph now if it changed since it was last saved or loaded, waiting up to
    /// `wait` for running maintenance (a step of inserts, or a rebuild) to let go. Answers the
    /// bytes written, if it saved. Maintenance pauses meanwhile and resumes after.
    pub fn save_graph(&self, wait: Duration) -> Result<Option<u64>> {
        let Some(file) = &self.graph_file else {
            return Ok(None);
        };
        let (index, mut header) = {
            let state = self.state.read();
            if state.maintenance.failure().is_some()
                || state.maintenance.is_closed() && !self.stopping.load(AtomicOrdering::Acquire)
                || state.index.graph_changes() == state.saved.lock().changes
            {
                return Ok(None);
            }
            let header = saved_graph::Header {
                namespace: self.namespace.clone(),
                generation: *self.generation.lock(),
                applied: self
                    .applied
                    .lock()
                    .as_deref()
                    .map(|marker| marker.iter().map(|b| format!("{b:02x}")).collect()),
                dimension: self.config.dimension,
                metric: self.config.metric,
                m: self.config.hnsw.m,
                nodes: 0,
                codebook: None,
            };
            (Arc::clone(&state.index), header)
        };
        let started = Instant::now();
        let written = index.write_graph(wait, &mut |graph| {
            // Which document each node holds, from the same state as the graph.
            let labels: Vec<Option<Arc<str>>> = {
                let state = self.state.read();
                if !Arc::ptr_eq(&state.index, &index) {
                    return Err(std::io::Error::other("a snapshot replaced the shard"));
                }
                if state.maintenance.is_closed() && !self.stopping.load(AtomicOrdering::Acquire) {
                    return Err(std::io::Error::other("the replica was dropped"));
                }
                (0..graph.len() as u32)
                    .map(|node| {
                        let entry = state.entries.get(graph.label(node))?.as_ref()?;
                        Some(Arc::clone(&entry.id))
                    })
                    .collect()
            };
            header.nodes = labels.len() as u64;
            saved_graph::write(file, &header, graph, &labels).map(|bytes| {
                tracing::info!(shard = %self.namespace, nodes = labels.len(), bytes, elapsed_ms = started.elapsed().as_millis() as u64, "saved the graph");
            })
        });
        // Maintenance that found the index busy meanwhile waits for this.
        {
            let state = self.state.read();
            self.worker.schedule(&state.index, &state.maintenance);
        }
        match written {
            None => Ok(None),
            Some(Ok(changes)) => {
                let state = self.state.read();
                if Arc::ptr_eq(&state.index, &index) {
                    *state.saved.lock() = SaveMark {
                        changes,
                        at: Instant::now(),
                    };
                }
                Ok(std::fs::metadata(file).ok().map(|m| m.len()))
            }
            Some(Err(e)) => Err(Error::unavailable(
                ErrorCode::StorageError,
                format!("saving the graph of {}: {e}", self.namespace),
            )),
        }
    }

    /// Stops background work on this replica.
    pub fn close(&self) {
        self.state.read().maintenance.close();
    }

    /// The node is stopping: background work stops after its current step, and a last
    /// [`Shard::save_graph`] may still run (a closed replica is otherwise one being dropped,
    /// whose graph is not saved).
    pub fn stop(&self) {
        self.stopping.store(true, AtomicOrdering::Release);
        self.close();
    }
}

fn timed_out() -> Error {
    Error::unavailable(
        ErrorCode::QueryTimeout,
        "the search ran past performance.query_timeout_ms",
    )
}

/// The live entries `filter` matches, found through the payload indexes; `None` when no
/// condition of the filter names an indexed key. When the indexes answer every condition
/// their answer is the matches; otherwise the rest of the filter is checked on the candidates
/// alone, in chunks that let waiting writers in and stop at the deadline.
fn indexed_matches(
    state: &mut RwLockReadGuard<'_, ShardState>,
    filter: &CompiledFilter,
    deadline: Option<Instant>,
) -> Result<Option<RoaringBitmap>> {
    'over: loop {
        let Some((candidates, exact)) = state.payload.candidates(filter) else {
            return Ok(None);
        };
        if exact {
            // The indexes hold live entries only.
            return Ok(Some(candidates));
        }
        let candidates: Vec<u32> = candidates.iter().collect();
        let mut matching = Vec::with_capacity(candidates.len());
        for chunk in candidates.chunks(SCAN_CHUNK) {
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(timed_out());
            }
            let index = Arc::as_ptr(&state.index);
            for id in chunk {
                // Deleted or replaced since (even during a bump below): no longer a match.
                if state
                    .entries
                    .get(*id as VectorId)
                    .and_then(Option::as_ref)
                    .is_some_and(|e| filter.matches(&e.metadata))
                {
                    matching.push(*id);
                }
            }
            RwLockReadGuard::bump(state);
            if !std::ptr::eq(index, Arc::as_ptr(&state.index)) {
                // A snapshot replaced the shard meanwhile: start over on the new state.
                continue 'over;
            }
        }
        return Ok(Some(payload::sorted(matching.into_iter())));
    }
}

/// The live entries `filter` matches, found by reading every entry's metadata, in chunks that
/// let waiting writers in and stop at the deadline.
fn scanned_matches(
    state: &mut RwLockReadGuard<'_, ShardState>,
    filter: &CompiledFilter,
    deadline: Option<Instant>,
) -> Result<RoaringBitmap> {
    let mut end = state.entries.len();
    let mut matching = Vec::new();
    let mut next = 0;
    while next < end {
        let index = Arc::as_ptr(&state.index);
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(timed_out());
        }
        let chunk = next..(next + SCAN_CHUNK).min(end);
        for id in chunk.clone() {
            if state.entries[id]
                .as_ref()
                .is_some_and(|e| filter.matches(&e.metadata))
                && let Ok(id) = u32::try_from(id)
            {
                matching.push(id);
            }
        }
        next = chunk.end;
        RwLockReadGuard::bump(state);
        if !std::ptr::eq(index, Arc::as_ptr(&state.index)) {
            // A snapshot replaced the shard meanwhile: start over on the new state.
            end = state.entries.len();
            matching.clear();
            next = 0;
        }
    }
    // Entries deleted or replaced during a bump: no longer matches.
    matching.retain(|id| state.entries[*id as VectorId].is_some());
    Ok(payload::sorted(matching.into_iter()))
}

/// The breadth of a filtered graph walk: a filter that rejects most of the `live` entries
/// (`matching` of them pass) needs a wider search to find `k`.
fn widened_ef(ef: usize, k: usize, live: usize, matching: usize) -> usize {
    let widest = (4 * ef.max(k)).min(MAX_WIDENED_EF).max(ef);
    (ef * live / matching.max(1)).clamp(ef, widest)
}

fn failed_error(namespace: &str, reason: &str) -> Error {
    Error::unavailable(
        ErrorCode::ShardFailed,
        format!(
            "the replica {namespace} failed and is not searched until it is rebuilt (a restart or a snapshot): {reason}"
        ),
    )
}

/// The hash one document contributes to its shard's checksum.
pub fn document_hash(id: &str, value: &[u8]) -> u64 {
    let mut bytes = Vec::with_capacity(id.len() + 1 + value.len());
    bytes.extend_from_slice(id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(value);
    xxh3_64(&bytes)
}

/// Largest stored value a snapshot record may carry (a document is far smaller; a corrupt
/// length must not allocate gigabytes).
const MAX_RECORD_VALUE: usize = 64 * 1024 * 1024;

/// One snapshot record: id length (u32 LE), id, value length (u32 LE), value.
pub fn write_record(out: &mut dyn std::io::Write, id: &str, value: &[u8]) -> std::io::Result<()> {
    out.write_all(&(id.len() as u32).to_le_bytes())?;
    out.write_all(id.as_bytes())?;
    out.write_all(&(value.len() as u32).to_le_bytes())?;
    out.write_all(value)
}

/// Reads the next [`write_record`] record; `None` at the end of the stream.
pub fn read_record(input: &mut dyn std::io::Read) -> std::io::Result<Option<(String, Vec<u8>)>> {
    use std::io::{Error, ErrorKind, Read};
    let mut len = [0u8; 4];
    // The end of the stream is only allowed between records.
    let mut got = 0;
    while got < 4 {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(Error::new(ErrorKind::UnexpectedEof, "truncated record")),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    fn field(input: &mut dyn Read, limit: usize, len: [u8; 4]) -> std::io::Result<Vec<u8>> {
        let len = u32::from_le_bytes(len) as usize;
        if len > limit {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("a record field of {len} bytes"),
            ));
        }
        let mut bytes = vec![0; len];
        input.read_exact(&mut bytes)?;
        Ok(bytes)
    }
    let id = field(input, MAX_ID_BYTES, len)?;
    let id =
        String::from_utf8(id).map_err(|_| Error::new(ErrorKind::InvalidData, "id is not UTF-8"))?;
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let value = field(input, MAX_RECORD_VALUE, len)?;
    Ok(Some((id, value)))
}

/// Where quantized shards keep full vectors on disk (`index.quantized_originals: disk`), in
/// unnamed files: under the data directory.
pub(crate) fn originals_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("vectors")
}

/// Reads the documents of one generation (`stored`) into a fresh in-memory state, reusing the
/// nodes of a saved graph whose vectors are exactly their documents' (see [`saved_graph`]).
fn load_state(
    config: &CollectionConfig,
    stored: &str,
    storage: &Storage,
    index_options: IndexOptions,
    saved: Option<saved_graph::Loaded>,
) -> Result<ShardState> {
    let (index, labels) = match saved {
        Some(saved) => (saved.index, saved.labels),
        None => (
            VectorIndex::quantized(
                config.dimension,
                config.metric,
                config.hnsw,
                index_options,
                config.quantization,
                Some(&originals_dir(storage.path())),
            ),
            Vec::new(),
        ),
    };
    let mut state = ShardState {
        entries: labels.iter().map(|_| None).collect(),
        by_id: HashMap::new(),
        index: Arc::new(index),
        maintenance: Arc::new(Maintenance::default()),
        payload: PayloadIndexes::new(&config.payload_indexes),
        bytes: 0,
        loaded: 0,
        saved: SaveMark::now(0),
    };
    let mut nodes: HashMap<Box<str>, VectorId> = labels
        .into_iter()
        .enumerate()
        .filter_map(|(node, id)| Some((id?, node)))
        .collect();
    storage.scan_generation(stored, |id, value| {
        let (vector, metadata) = decode_document(value)?;
        if let Some(node) = nodes.remove(id)
            && let Some(prepared) = distance::check(config.metric, config.dimension, &vector)
                .ok()
                .and_then(|()| distance::prepare(config.metric, &vector))
            && state.index.holds(node, &prepared)
            && state.index.revive(node, &prepared)
        {
            let id: Arc<str> = Arc::from(id);
            state.payload.add(node, &metadata);
            state.entries[node] = Some(Entry {
                id: Arc::clone(&id),
                metadata: Arc::new(metadata),
                size: value.len() as u32,
            });
            state.bytes += value.len() as u64;
            state.by_id.insert(id, node);
            state.loaded += 1;
            return Ok(true);
        }
        match contain(|| put_in_memory(config, &mut state, id, &vector, metadata, value.len())) {
            Ok(()) => Ok(true),
            Err(reason) => {
                tracing::error!(shard = %stored, %reason, "loading the index failed; the shard is marked failed");
                state.maintenance.fail(reason);
                Ok(false)
            }
        }
    })?;
    state.saved = SaveMark::now(state.index.graph_changes());
    Ok(state)
}

/// The in-memory half of [`Shard::apply`], once storage holds the commands.
fn apply_in_memory(
    config: &CollectionConfig,
    state: &mut ShardState,
    commands: &[&ShardCommand],
    skip: &[bool],
    sizes: Vec<usize>,
) {
    let mut sizes = sizes.into_iter();
    for (command, skip) in commands.iter().zip(skip) {
        if *skip {
            continue;
        }
        match command {
            ShardCommand::Upsert { documents, .. } => {
                for doc in documents {
                    let size = sizes.next().unwrap_or(0);
                    put_in_memory(
                        config,
                        state,
                        doc.id.as_str(),
                        &doc.vector,
                        doc.metadata.clone(),
                        size,
                    );
                }
            }
            ShardCommand::Delete { ids, .. } => {
                for id in ids {
                    if let Some(vid) = state.by_id.remove(id.as_str()) {
                        if let Some(entry) = state.entries[vid].take() {
                            state.bytes -= u64::from(entry.size);
                            state.payload.remove(vid, &entry.metadata);
                        }
                        state.index.remove(vid);
                    }
                }
            }
        }
    }
}

fn put_in_memory(
    config: &CollectionConfig,
    state: &mut ShardState,
    id: &str,
    vector: &[f32],
    metadata: Metadata,
    size: usize,
) {
    if let Some(old) = state.by_id.get(id).copied() {
        if let Some(entry) = state.entries[old].take() {
            state.bytes -= u64::from(entry.size);
            state.payload.remove(old, &entry.metadata);
        }
        state.index.remove(old);
    }
    // Commands are checked where they are applied; a document the index cannot use is one an
    // earlier version stored. It stays readable and deletable, and is never searched.
    let vid = match distance::check(config.metric, config.dimension, vector)
        .ok()
        .and_then(|()| distance::prepare(config.metric, vector))
    {
        Some(prepared) => state.index.add(&prepared),
        None => {
            tracing::warn!(%id, "a stored document's vector cannot be indexed: it is not searchable");
            let vid = state.index.add(&vec![0.0; config.dimension]);
            state.index.remove(vid);
            vid
        }
    };
    debug_assert_eq!(vid, state.entries.len());
    state.payload.add(vid, &metadata);
    let id: Arc<str> = Arc::from(id);
    state.entries.push(Some(Entry {
        id: Arc::clone(&id),
        metadata: Arc::new(metadata),
        size: size as u32,
    }));
    state.bytes += size as u64;
    state.by_id.insert(id, vid);
}

fn hits(state: &ShardState, query: &[f32], candidates: Vec<Candidate>) -> Vec<ShardHit> {
    let metric = state.index.distance();
    candidates
        .into_iter()
        .filter_map(|c| {
            let entry = state.entries.get(c.id)?.as_ref()?;
            let score = state
                .index
                .with_vector(c.id, |v| metric.score(query, v))
                .unwrap_or(f32::NAN);
            Some(ShardHit {
                id: Arc::clone(&entry.id),
                metadata: Arc::clone(&entry.metadata),
                distance: c.distance,
                score,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
