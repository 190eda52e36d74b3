//! A shard: the documents whose ids hash to it, their vector index, and their RocksDB rows.
//!
//! A shard is a deterministic state machine. Writes reach it only as numbered commands through
//! [`Shard::apply`], in order: the single-node log today, a Raft group's log in a cluster. Given
//! the same commands, every replica holds the same documents and answers the same way.
//!
//! ```text
//!   command i ──apply──> RocksDB batch (documents + applied=i, fsynced)
//!                         └──> in memory: document table + vector index (pending)
//!                                                         └── index worker ──> HNSW graph
//! ```

pub mod filter;

use crate::error::{Error, Result};
use crate::index::worker::{IndexWorker, Maintenance};
use crate::index::{Candidate, IndexStats, VectorId, VectorIndex, distance};
use crate::storage::{Changes, Storage, decode_document, encode_document};
use filter::CompiledFilter;
use grape_client::{CollectionConfig, Document, Metadata};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use xxhash_rust::xxh3::xxh3_64;

/// Number of a shard within its collection.
pub type ShardId = u32;

/// A document already validated against its collection, ready to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewDocument {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Metadata,
}

/// A write to one shard. Commands are validated before they are numbered, so applying one
/// cannot fail for reasons of content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Insert or replace documents by id; later entries win over earlier ones.
    Upsert { documents: Vec<NewDocument> },
    /// Remove documents by id.
    Delete { ids: Vec<String> },
}

impl ShardCommand {
    /// Documents this command carries or names (for batching and quotas).
    pub fn len(&self) -> usize {
        match self {
            ShardCommand::Upsert { documents } => documents.len(),
            ShardCommand::Delete { ids } => ids.len(),
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
}

/// A document's in-memory entry, by vector id.
#[derive(Debug)]
struct Entry {
    id: Arc<str>,
    metadata: Arc<Metadata>,
}

/// Documents by vector id and by document id.
#[derive(Debug, Default)]
struct DocumentTable {
    /// Indexed by vector id; `None` once deleted or replaced.
    entries: Vec<Option<Entry>>,
    /// Current vector id of each live document.
    by_id: HashMap<Arc<str>, VectorId>,
}

/// One search result from a shard.
#[derive(Debug, Clone)]
pub struct ShardHit {
    pub id: Arc<str>,
    pub metadata: Arc<Metadata>,
    /// The graph distance (smaller is closer), comparable across shards of a collection.
    pub distance: f32,
    /// The user-facing score (see [`distance::GraphDistance::score`]).
    pub score: f32,
}

/// Figures for `/admin/stats/shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardFigures {
    pub documents: u64,
    pub applied_index: u64,
    pub index: IndexStats,
}

/// Filters matching at most this many documents are answered by exact scan: small candidate
/// sets are where graph search loses recall, and scanning them is cheap.
const EXACT_FILTER_LIMIT: usize = 10_000;

/// One shard of a collection.
pub struct Shard {
    /// Collection name, part of every storage key.
    collection: String,
    /// This shard's number.
    number: ShardId,
    /// The collection's fixed settings.
    config: Arc<CollectionConfig>,
    /// Durable state.
    storage: Arc<Storage>,
    /// In-memory documents, consistent with `index` ids.
    table: RwLock<DocumentTable>,
    /// Vectors and the HNSW graph.
    index: Arc<VectorIndex>,
    /// Background graph maintenance of `index`.
    maintenance: Arc<Maintenance>,
    /// Pool running that maintenance.
    worker: Arc<IndexWorker>,
    /// Index of the last command applied.
    applied: AtomicU64,
    /// Serialises `apply`: existence checks and memory updates assume one applier.
    applying: Mutex<()>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("collection", &self.collection)
            .field("number", &self.number)
            .finish()
    }
}

impl Shard {
    /// Opens a shard, loading its documents from storage into memory and queueing them for
    /// indexing.
    pub fn open(
        config: Arc<CollectionConfig>,
        number: ShardId,
        storage: Arc<Storage>,
        worker: Arc<IndexWorker>,
        rebuild_threshold: usize,
    ) -> Result<Shard> {
        let index = Arc::new(VectorIndex::new(
            config.dimension,
            config.metric,
            config.hnsw,
            rebuild_threshold,
        ));
        let mut table = DocumentTable::default();
        storage.scan_shard(&config.name, number, None, |id, value| {
            let (vector, metadata) = decode_document(value)?;
            let prepared = distance::prepare(config.metric, &vector).ok_or_else(|| {
                Error::Internal(format!(
                    "stored document {id:?} has no direction under cosine"
                ))
            })?;
            let vid = index.add(&prepared);
            let id: Arc<str> = Arc::from(id);
            table.entries.push(Some(Entry {
                id: Arc::clone(&id),
                metadata: Arc::new(metadata),
            }));
            table.by_id.insert(id, vid);
            Ok(true)
        })?;
        let applied = storage.applied_index(&config.name, number)?;
        let shard = Shard {
            collection: config.name.clone(),
            number,
            config,
            storage,
            table: RwLock::new(table),
            index,
            maintenance: Arc::new(Maintenance::default()),
            worker,
            applied: AtomicU64::new(applied),
            applying: Mutex::new(()),
        };
        shard.worker.schedule(&shard.index, &shard.maintenance);
        Ok(shard)
    }

    pub fn number(&self) -> ShardId {
        self.number
    }

    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    /// Index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Applies numbered commands in order: one durable RocksDB batch, then memory. Indexes
    /// must follow the last applied one. On a storage error nothing is applied.
    pub fn apply(&self, entries: &[(u64, &ShardCommand)]) -> Result<Vec<ShardResponse>> {
        let Some(&(last, _)) = entries.last() else {
            return Ok(Vec::new());
        };
        let _applying = self.applying.lock();
        let previous = self.applied_index();
        if entries[0].0 <= previous {
            return Err(Error::Internal(format!(
                "shard {}/{}: command {} applied after {previous}",
                self.collection, self.number, entries[0].0
            )));
        }
        let mut changes = Changes::default();
        let mut responses = Vec::with_capacity(entries.len());
        {
            // Whether ids exist after the earlier commands of this same batch.
            let table = self.table.read();
            let mut overlay: HashMap<&str, bool> = HashMap::new();
            for (_, command) in entries {
                match command {
                    ShardCommand::Upsert { documents } => {
                        for doc in documents {
                            changes.put_document(
                                &self.storage,
                                &self.collection,
                                self.number,
                                &doc.id,
                                &encode_document(&doc.vector, &doc.metadata),
                            );
                            overlay.insert(&doc.id, true);
                        }
                        responses.push(ShardResponse::Upserted {
                            count: documents.len(),
                        });
                    }
                    ShardCommand::Delete { ids } => {
                        let mut existed = Vec::with_capacity(ids.len());
                        for id in ids {
                            let exists = overlay
                                .get(id.as_str())
                                .copied()
                                .unwrap_or_else(|| table.by_id.contains_key(id.as_str()));
                            existed.push(exists);
                            if exists {
                                changes.delete_document(
                                    &self.storage,
                                    &self.collection,
                                    self.number,
                                    id,
                                );
                            }
                            overlay.insert(id, false);
                        }
                        responses.push(ShardResponse::Deleted { existed });
                    }
                }
            }
        }
        changes.set_applied(&self.storage, &self.collection, self.number, last);
        self.storage.commit(changes)?;

        let mut table = self.table.write();
        for (_, command) in entries {
            match command {
                ShardCommand::Upsert { documents } => {
                    for doc in documents {
                        self.put_in_memory(&mut table, doc);
                    }
                }
                ShardCommand::Delete { ids } => {
                    for id in ids {
                        if let Some(vid) = table.by_id.remove(id.as_str()) {
                            table.entries[vid] = None;
                            self.index.remove(vid);
                        }
                    }
                }
            }
        }
        drop(table);
        self.applied.store(last, Ordering::Release);
        self.worker.schedule(&self.index, &self.maintenance);
        Ok(responses)
    }

    fn put_in_memory(&self, table: &mut DocumentTable, doc: &NewDocument) {
        // Validated before the command was numbered; a zero cosine vector never gets here.
        let Some(prepared) = distance::prepare(self.config.metric, &doc.vector) else {
            tracing::error!(id = %doc.id, "skipping a document without direction under cosine");
            return;
        };
        if let Some(old) = table.by_id.get(doc.id.as_str()).copied() {
            table.entries[old] = None;
            self.index.remove(old);
        }
        let vid = self.index.add(&prepared);
        debug_assert_eq!(vid, table.entries.len());
        let id: Arc<str> = Arc::from(doc.id.as_str());
        table.entries.push(Some(Entry {
            id: Arc::clone(&id),
            metadata: Arc::new(doc.metadata.clone()),
        }));
        table.by_id.insert(id, vid);
    }

    /// Whether a document exists.
    pub fn contains(&self, id: &str) -> bool {
        self.table.read().by_id.contains_key(id)
    }

    /// Live documents.
    pub fn len(&self) -> usize {
        self.table.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A stored document, as written.
    pub fn get(&self, id: &str) -> Result<Option<Document>> {
        let Some(value) = self
            .storage
            .get_document(&self.collection, self.number, id)?
        else {
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
            .scan_shard(&self.collection, self.number, after, |id, value| {
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
    ) -> Vec<ShardHit> {
        let table = self.table.read();
        let candidates = match filter {
            None => self.index.search(query, k, ef, None),
            Some(filter) => {
                let matching: Vec<bool> = table
                    .entries
                    .iter()
                    .map(|e| e.as_ref().is_some_and(|e| filter.matches(&e.metadata)))
                    .collect();
                let count = matching.iter().filter(|m| **m).count();
                if count <= EXACT_FILTER_LIMIT || count * 10 <= table.by_id.len() {
                    self.index.exact_search(
                        query,
                        k,
                        matching
                            .iter()
                            .enumerate()
                            .filter(|(_, m)| **m)
                            .map(|(i, _)| i),
                    )
                } else {
                    let accept = |id: VectorId| matching.get(id).copied().unwrap_or(false);
                    // A filter that rejects most entries needs a wider search to find k.
                    let ef = (ef * table.by_id.len() / count.max(1)).clamp(ef, 4 * ef.max(k));
                    self.index.search(query, k, ef, Some(&accept))
                }
            }
        };
        self.hits(&table, query, candidates)
    }

    fn hits(
        &self,
        table: &DocumentTable,
        query: &[f32],
        candidates: Vec<Candidate>,
    ) -> Vec<ShardHit> {
        let metric = self.index.distance();
        candidates
            .into_iter()
            .filter_map(|c| {
                let entry = table.entries.get(c.id)?.as_ref()?;
                let score = self
                    .index
                    .vector(c.id)
                    .map(|v| metric.score(query, &v))
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

    /// Count and order-independent hash of every stored document, read from storage.
    pub fn checksum(&self) -> Result<(u64, u64)> {
        let mut count = 0u64;
        let mut sum = 0u64;
        self.storage
            .scan_shard(&self.collection, self.number, None, |id, value| {
                let mut bytes = Vec::with_capacity(id.len() + 1 + value.len());
                bytes.extend_from_slice(id.as_bytes());
                bytes.push(0);
                bytes.extend_from_slice(value);
                sum = sum.wrapping_add(xxh3_64(&bytes));
                count += 1;
                Ok(true)
            })?;
        Ok((count, sum))
    }

    pub fn figures(&self) -> ShardFigures {
        ShardFigures {
            documents: self.len() as u64,
            applied_index: self.applied_index(),
            index: self.index.stats(),
        }
    }

    /// Stops background work on this shard (its collection is being dropped).
    pub fn close(&self) {
        self.maintenance.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;
    use grape_client::Metric;
    use serde_json::json;

    fn doc(id: &str, vector: Vec<f32>, metadata: serde_json::Value) -> NewDocument {
        NewDocument {
            id: id.into(),
            vector,
            metadata: metadata.as_object().cloned().unwrap_or_default(),
        }
    }

    fn open(dir: &std::path::Path) -> Shard {
        let storage = Arc::new(Storage::open(dir, &StorageOptions::default()).unwrap());
        let mut config = CollectionConfig::new("docs", 2);
        config.metric = Metric::L2;
        Shard::open(
            Arc::new(config),
            0,
            storage,
            Arc::new(IndexWorker::new(1).unwrap()),
            10,
        )
        .unwrap()
    }

    #[test]
    fn commands_apply_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let shard = open(dir.path());
            let upsert = ShardCommand::Upsert {
                documents: vec![
                    doc("a", vec![0.0, 0.0], json!({"k": 1})),
                    doc("b", vec![1.0, 0.0], json!({})),
                    doc("a", vec![5.0, 5.0], json!({"k": 2})),
                ],
            };
            let delete = ShardCommand::Delete {
                ids: vec!["b".into(), "nope".into(), "b".into()],
            };
            let responses = shard.apply(&[(1, &upsert), (2, &delete)]).unwrap();
            assert_eq!(
                responses,
                vec![
                    ShardResponse::Upserted { count: 3 },
                    ShardResponse::Deleted {
                        existed: vec![true, false, false]
                    }
                ]
            );
            assert_eq!(shard.len(), 1);
            assert_eq!(shard.applied_index(), 2);
        }
        let shard = open(dir.path());
        assert_eq!(shard.applied_index(), 2);
        assert_eq!(shard.len(), 1);
        let a = shard.get("a").unwrap().unwrap();
        assert_eq!(a.vector, vec![5.0, 5.0]);
        assert_eq!(a.metadata["k"], 2);
        assert!(shard.get("b").unwrap().is_none());
        let hits = shard.search(&[5.0, 5.0], 5, 16, None);
        assert_eq!(hits.len(), 1);
        assert_eq!(&*hits[0].id, "a");
        assert_eq!(hits[0].score, 0.0);
    }

    #[test]
    fn selective_filters_are_answered_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let shard = open(dir.path());
        let documents = (0..500)
            .map(|i| {
                doc(
                    &format!("d{i}"),
                    vec![i as f32, 0.0],
                    json!({"even": i % 2 == 0, "i": i}),
                )
            })
            .collect();
        shard
            .apply(&[(1, &ShardCommand::Upsert { documents })])
            .unwrap();
        let filter: grape_client::Filter = serde_json::from_value(json!({
            "must": [{"key": "even", "match": false}, {"key": "i", "range": {"gte": 100}}]
        }))
        .unwrap();
        let filter = CompiledFilter::new(&filter).unwrap();
        let hits = shard.search(&[0.0, 0.0], 3, 16, Some(&filter));
        let ids: Vec<&str> = hits.iter().map(|h| &*h.id).collect();
        assert_eq!(ids, ["d101", "d103", "d105"]);
    }

    #[test]
    fn checksums_depend_on_content_not_on_write_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (sa, sb) = (open(a.path()), open(b.path()));
        let d1 = doc("x", vec![1.0, 2.0], json!({"t": "x"}));
        let d2 = doc("y", vec![3.0, 4.0], json!({}));
        sa.apply(&[(
            1,
            &ShardCommand::Upsert {
                documents: vec![d1.clone(), d2.clone()],
            },
        )])
        .unwrap();
        sb.apply(&[(
            1,
            &ShardCommand::Upsert {
                documents: vec![d2],
            },
        )])
        .unwrap();
        sb.apply(&[(
            2,
            &ShardCommand::Upsert {
                documents: vec![d1.clone()],
            },
        )])
        .unwrap();
        assert_eq!(sa.checksum().unwrap(), sb.checksum().unwrap());
        let mut changed = d1;
        changed.metadata.insert("t".into(), json!("changed"));
        sb.apply(&[(
            3,
            &ShardCommand::Upsert {
                documents: vec![changed],
            },
        )])
        .unwrap();
        assert_ne!(sa.checksum().unwrap(), sb.checksum().unwrap());
    }
}
