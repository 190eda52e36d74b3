//! The vector index of one shard: vectors by dense internal id, an HNSW graph over them, and
//! exact search over whatever the graph does not hold yet. It knows vectors and liveness only;
//! documents, metadata and storage live in the layers above.
//!
//! Two graph engines exist, chosen per node with `index.graph` ([`GraphEngine`]): Grape's own
//! graph ([`graph::HnswGraph`], the default), which inserts on every thread of the pool running
//! maintenance, searches several times faster (docs/benchmarks.md) and holds the vectors it
//! indexes (the index keeps no second copy), or their quantized codes ([`quantize`]; the full
//! vectors then stay in memory or go to disk), and hnsw_rs.
//!
//! ```text
//!   add(id) ──> pending (id >= indexed_upto) ──index_pending()──> in graph (id < indexed_upto)
//!                     │                                                 │
//!   remove(id) ───────┴──────────────> dead (filtered out) <───────────┘
//!                                            │ dead_in_graph >= rebuild_threshold
//!                                            └──rebuild()──> a new graph of live ids only
//! ```
//!
//! A search sees every added vector: the graph for ids below the watermark `indexed_upto`, an
//! exact scan above it. Neither graph deletes, so removed ids stay in the graph, filtered out,
//! until a rebuild; an updated document gets a new id.

pub mod distance;
mod engine;
pub mod graph;
pub mod quantize;
pub mod worker;

use distance::GraphDistance;
use engine::Graph;
use grape_client::{HnswParams, Metric, Quantization};
use graph::{HnswGraph, Node};
use parking_lot::{Mutex, RwLock};
use quantize::{Codebook, Space, training_sample};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};

/// Internal id of a vector within one shard's index.
pub type VectorId = usize;

/// A search result inside the index: id and graph distance (smaller is closer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: VectorId,
    pub distance: f32,
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.id.cmp(&other.id))
    }
}

/// Which HNSW implementation holds a node's graphs (`index.graph`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphEngine {
    /// hnsw_rs: one inserting thread per index.
    HnswRs,
    /// Grape's graph ([`graph::HnswGraph`]): inserts in parallel, allocation-free searches.
    /// The default.
    #[default]
    Grape,
}

impl GraphEngine {
    /// Search work per unit of ef relative to Grape's graph (measured with
    /// `bench/compare_hnswlib.py`: hnsw_rs is four to six times slower at equal ef).
    pub fn search_cost_per_ef(self) -> usize {
        match self {
            GraphEngine::Grape => 1,
            GraphEngine::HnswRs => 4,
        }
    }
}

/// How a node's indexes are built and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexOptions {
    pub engine: GraphEngine,
    /// Dead graph entries tolerated before a rebuild.
    pub rebuild_threshold: usize,
    /// How often a changed graph is saved to disk, to be loaded at the next start instead of
    /// built again (Grape's graph only); `None`: graphs are never saved.
    pub graph_save_interval: Option<std::time::Duration>,
    /// Where a quantized graph's full vectors are kept for re-scoring.
    pub quantized_originals: OriginalsPlace,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            engine: GraphEngine::default(),
            rebuild_threshold: 100_000,
            graph_save_interval: Some(std::time::Duration::from_secs(300)),
            quantized_originals: OriginalsPlace::default(),
        }
    }
}

/// Where the full vectors of a quantized graph's nodes are kept, for re-scoring
/// (`index.quantized_originals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginalsPlace {
    /// In memory beside the codes: fastest re-scoring, no memory saved.
    #[default]
    Memory,
    /// In an unnamed file under the data directory, read back (from the page cache when it
    /// has room) for each candidate re-scored: memory holds the codes only.
    Disk,
}

/// Full vectors of quantized nodes on disk: an unnamed temporary file (unlinked at creation,
/// so nothing is left behind by a crash), `dimension` floats at `id * dimension`.
struct OriginalsFile {
    file: std::fs::File,
    dimension: usize,
}

impl OriginalsFile {
    fn create(dir: &std::path::Path, dimension: usize) -> std::io::Result<OriginalsFile> {
        std::fs::create_dir_all(dir)?;
        Ok(OriginalsFile {
            file: tempfile::tempfile_in(dir)?,
            dimension,
        })
    }

    fn offset(&self, id: VectorId) -> u64 {
        (id as u64) * (self.dimension as u64) * 4
    }

    fn write(&self, id: VectorId, vector: &[f32]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if cfg!(target_endian = "big") {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            return self.file.write_all_at(&bytes, self.offset(id));
        }
        // SAFETY: the bytes of `vector`'s floats, read only while `vector` is borrowed.
        let bytes =
            unsafe { std::slice::from_raw_parts(vector.as_ptr() as *const u8, vector.len() * 4) };
        self.file.write_all_at(bytes, self.offset(id))
    }

    /// Gives back the disk blocks of dead ids' vectors (punching holes; contiguous ids in one
    /// call). Best effort: a file system without hole punching keeps them until the file is
    /// closed.
    fn forget(&self, ids: &[VectorId]) {
        use std::os::fd::AsRawFd;
        let bytes = (self.dimension as u64) * 4;
        let mut i = 0;
        while i < ids.len() {
            let mut j = i + 1;
            while j < ids.len() && ids[j] == ids[j - 1] + 1 {
                j += 1;
            }
            // SAFETY: a system call on a file descriptor this struct owns; it changes no memory.
            let done = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    self.offset(ids[i]) as libc::off_t,
                    ((j - i) as u64 * bytes) as libc::off_t,
                )
            };
            if done != 0 {
                return;
            }
            i = j;
        }
    }

    /// Bytes the file takes on disk (allocated blocks).
    fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map_or(0, |m| m.blocks() * 512)
    }

    /// Reads the vector of `id` into `buf`. A failure here is a broken local disk: it panics,
    /// which marks the shard failed rather than answering with a wrong vector.
    fn read(&self, id: VectorId, buf: &mut Vec<f32>) {
        use std::os::unix::fs::FileExt;
        buf.clear();
        buf.resize(self.dimension, 0.0);
        // SAFETY: the bytes of `buf`'s floats, which any bit pattern may fill.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, self.dimension * 4)
        };
        if let Err(error) = self.file.read_exact_at(bytes, self.offset(id)) {
            panic!("reading the full vector of {id} from disk failed: {error}");
        }
        if cfg!(target_endian = "big") {
            buf.iter_mut()
                .for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
        }
    }
}

/// Where a store finds the vectors of the ids the graph holds.
#[derive(Clone)]
enum Originals {
    /// In Grape's graph (it holds full vectors).
    Graph,
    /// In `data`, every one (hnsw_rs, or a quantized graph with originals in memory).
    Memory,
    /// In a file, once the graph has taken them (a quantized graph with originals on disk).
    Disk(Arc<OriginalsFile>),
}

/// Vectors by id, and which are still live.
///
/// Each vector is held once. Grape's graph keeps the vectors of the ids it holds beside their
/// neighbour lists, and the store reads them there; `data` holds only the vectors still
/// waiting for the graph. hnsw_rs keeps private copies, so with it `data` holds every vector.
/// A quantized graph holds codes: the full vectors stay in `data`, or go to a file once the
/// graph has taken them ([`OriginalsPlace`]).
///
/// Ids only grow (an updated document gets a new id), so the vectors of dead ids would pile
/// up; a rebuild drops them. What stays per id ever issued is its liveness and slot (5 bytes).
struct VectorStore {
    /// `dimension` floats per vector held in memory outside the graph, in the prepared form
    /// (unit length for cosine).
    data: Vec<f32>,
    /// Where each id's vector is: its node in `graph` for ids below `in_graph` with
    /// [`Originals::Graph`], [`IN_FILE`] for one in the file, else its slot in `data`, in
    /// vectors; [`NOT_STORED`] once reclaimed.
    slot: Vec<u32>,
    /// Whether each id is still a current document (false once deleted or replaced).
    live: Vec<bool>,
    live_count: usize,
    originals: Originals,
    /// Grape's graph (with [`Originals::Graph`] or [`Originals::Disk`]), holding the
    /// vectors or codes of the ids below `in_graph`.
    graph: Option<Arc<HnswGraph>>,
    in_graph: VectorId,
    /// Ids with a slot in `data` that the graph does not hold yet; with the ids in
    /// `unwritten`, the rest of `data` is stale copies, dropped by [`VectorStore::compact`].
    outside: usize,
    /// Ids the graph holds whose full vector stays in `data` because writing it to the file
    /// failed ([`Originals::Disk`] only; written again by the next rebuild).
    unwritten: usize,
}

/// Dead vectors held below which a shard is not rebuilt to reclaim memory.
const RECLAIM_MIN: usize = 1000;

/// The slot of an id whose vector a compaction reclaimed (it was dead by then).
const NOT_STORED: u32 = u32::MAX;

/// The slot of an id whose full vector is in the originals file.
const IN_FILE: u32 = u32::MAX - 1;

impl VectorStore {
    fn new(originals: Originals) -> VectorStore {
        VectorStore {
            data: Vec::new(),
            slot: Vec::new(),
            live: Vec::new(),
            live_count: 0,
            originals,
            graph: None,
            in_graph: 0,
            outside: 0,
            unwritten: 0,
        }
    }

    /// The vector of an id, from memory or (into `buf`) from disk. Callers read only ids they
    /// found live under the same lock: a live id always has its vector stored.
    #[inline]
    fn vector<'a>(&'a self, id: VectorId, dimension: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let slot = self.slot[id];
        debug_assert_ne!(slot, NOT_STORED, "vector {id} was reclaimed");
        match &self.originals {
            Originals::Graph if id < self.in_graph => {
                if let Some(graph) = &self.graph {
                    return graph.vector(slot);
                }
            }
            Originals::Disk(file) if slot == IN_FILE => {
                file.read(id, buf);
                return buf;
            }
            _ => {}
        }
        let start = slot as usize * dimension;
        &self.data[start..start + dimension]
    }

    /// Whether `id`'s vector has a slot in `data`.
    fn in_data(&self, id: VectorId) -> bool {
        let slot = self.slot[id];
        slot != NOT_STORED
            && slot != IN_FILE
            && !(matches!(self.originals, Originals::Graph) && id < self.in_graph)
    }

    fn is_live(&self, id: VectorId) -> bool {
        self.live.get(id).copied().unwrap_or(false)
    }

    /// Vectors in memory, live or dead: in `data`, and in Grape's graph (in full, or as codes
    /// whose full vectors are on disk).
    fn stored(&self, dimension: usize) -> usize {
        let in_graph = match self.originals {
            Originals::Graph | Originals::Disk(_) => self.graph.as_ref().map_or(0, |g| g.len()),
            Originals::Memory => 0,
        };
        self.data.len() / dimension.max(1) + in_graph
    }

    /// Vectors of distinct ids held, live or dead: [`VectorStore::stored`] without the copies
    /// in `data` of vectors the graph holds now (dropped by the next compaction, not by a
    /// rebuild), and with the codes of a quantized graph.
    fn held(&self, dimension: usize) -> usize {
        match (&self.graph, &self.originals) {
            (Some(graph), Originals::Graph | Originals::Disk(_)) => graph.len() + self.outside,
            _ => self.stored(dimension),
        }
    }

    /// The live ids in `ids` with a copy of their vectors: what a graph insert takes.
    fn live_batch(
        &self,
        ids: std::ops::Range<VectorId>,
        dimension: usize,
    ) -> Vec<(VectorId, Vec<f32>)> {
        let mut buf = Vec::new();
        ids.filter(|&id| self.live[id])
            .map(|id| (id, self.vector(id, dimension, &mut buf).to_vec()))
            .collect()
    }

    /// Appends a vector to `data` and returns its slot.
    fn push(data: &mut Vec<f32>, vector: &[f32], dimension: usize) -> u32 {
        let slot = u32::try_from(data.len() / dimension.max(1))
            .ok()
            .filter(|s| *s < IN_FILE)
            .expect("fewer than 2^32 - 2 vectors per shard");
        data.extend_from_slice(vector);
        slot
    }

    /// Grape's `graph` took the vectors of `ids` (the batch's ids at `nodes`; the others in
    /// the range were dead): read them there (or, on disk, in the file for those `written`)
    /// from now on, and drop the copies in `data`.
    fn hand_over(
        &mut self,
        graph: &Arc<HnswGraph>,
        ids: std::ops::Range<VectorId>,
        batch: &[(VectorId, Vec<f32>)],
        nodes: &[Node],
        written: &[bool],
        dimension: usize,
    ) {
        debug_assert_eq!(ids.start, self.in_graph);
        let on_disk = matches!(self.originals, Originals::Disk(_));
        let mut kept = std::collections::HashMap::new();
        for ((id, _), written) in batch.iter().zip(written) {
            if !written {
                kept.insert(*id, self.slot[*id]);
            }
        }
        for id in ids.clone() {
            if self.slot[id] != NOT_STORED {
                self.outside -= 1;
                self.slot[id] = NOT_STORED;
            }
        }
        for (i, ((id, _), node)) in batch.iter().zip(nodes).enumerate() {
            self.slot[*id] = match (on_disk, written.get(i)) {
                (false, _) => *node,
                (true, Some(true)) => IN_FILE,
                (true, _) => {
                    self.unwritten += 1;
                    kept.get(id).copied().unwrap_or(NOT_STORED)
                }
            };
        }
        self.graph = Some(Arc::clone(graph));
        self.in_graph = ids.end;
        self.compact(dimension);
    }

    /// Drops from `data` the vectors the graph holds now: all of `data` once nothing waits
    /// outside the graph, otherwise by rewriting it when as many vectors in it are stale as
    /// current (so each vector is copied a bounded number of times, amortised).
    fn compact(&mut self, dimension: usize) {
        let held = self.data.len() / dimension.max(1);
        let current = self.outside + self.unwritten;
        let stale = held - current;
        if current == 0 {
            self.data = Vec::new();
            return;
        }
        if stale < RECLAIM_MIN.max(current) {
            return;
        }
        let mut data = Vec::with_capacity(current * dimension);
        let mut outside = 0;
        let mut unwritten = 0;
        let from = match self.originals {
            Originals::Graph => self.in_graph,
            _ => 0,
        };
        for id in from..self.live.len() {
            if !self.in_data(id) {
                continue;
            }
            if self.live[id] {
                let start = self.slot[id] as usize * dimension;
                self.slot[id] =
                    Self::push(&mut data, &self.data[start..start + dimension], dimension);
                if id < self.in_graph {
                    unwritten += 1;
                } else {
                    outside += 1;
                }
            } else {
                self.slot[id] = NOT_STORED;
            }
        }
        self.data = data;
        self.outside = outside;
        self.unwritten = unwritten;
    }
}

/// The graph and how far it reaches.
struct GraphState {
    graph: Graph,
    /// Every live id below this is in `graph`; ids at or above it are searched exactly.
    indexed_upto: VectorId,
}

/// Figures for stats and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    pub live: u64,
    pub indexed: u64,
    pub pending: u64,
    pub dead_in_graph: u64,
    pub rebuilds: u64,
    /// Vectors held in memory: the live ones and dead ones not yet reclaimed by a rebuild.
    pub stored: u64,
    /// Bytes of those vectors: full vectors in memory, and Grape's graph's codes (not its
    /// neighbour lists, nor hnsw_rs's private copies, nor room allocated and not used yet).
    pub vector_bytes: u64,
    /// Bytes the full vectors of a quantized index take on disk
    /// ([`OriginalsPlace::Disk`]; blocks allocated to the file).
    pub vector_disk_bytes: u64,
}

/// One shard's vectors and graph.
pub struct VectorIndex {
    /// Length of every vector.
    dimension: usize,
    /// How vectors compare.
    metric: Metric,
    /// Graph parameters.
    params: HnswParams,
    /// Which graph implementation to build.
    engine: GraphEngine,
    /// Non-negative distance of the metric, with the CPU's fastest kernels.
    distance: GraphDistance,
    /// The collection's quantization as this index applies it (`None` with hnsw_rs).
    quantization: Quantization,
    /// Vectors the current graph's codes were learnt from (quantized graphs only).
    trained_on: AtomicUsize,
    /// All vectors, by id.
    vectors: RwLock<VectorStore>,
    /// The current graph and its watermark; swapped whole by a rebuild.
    graph: RwLock<GraphState>,
    /// Removed ids that the graph still holds; a rebuild drops them.
    dead_in_graph: AtomicUsize,
    /// Dead graph entries tolerated before a rebuild.
    rebuild_threshold: usize,
    /// Completed rebuilds.
    rebuilds: AtomicU64,
    /// Graph entries inserted so far, rebuilds included: whether the graph changed since it
    /// was last saved.
    graph_changes: AtomicU64,
    /// One maintainer (indexing or rebuild) at a time: it decides the watermark, grows Grape's
    /// graph (which needs no insert running) and keeps hnsw_rs inserts on one thread (they
    /// risk lock-order inversions when concurrent).
    maintenance: Mutex<()>,
    /// Faults a test injects, as a bug in index code would raise them.
    #[cfg(test)]
    pub(crate) faults: TestFaults,
}

/// Panics a test can arm: each fires once.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct TestFaults {
    pub maintain: std::sync::atomic::AtomicBool,
    pub add: std::sync::atomic::AtomicBool,
    pub search: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("dimension", &self.dimension)
            .field("metric", &self.metric)
            .field("stats", &self.stats())
            .finish()
    }
}

impl VectorIndex {
    /// An index of full vectors (no quantization).
    pub fn new(
        dimension: usize,
        metric: Metric,
        params: HnswParams,
        options: IndexOptions,
    ) -> Self {
        Self::quantized(dimension, metric, params, options, Quantization::None, None)
    }

    /// An index whose graph holds `quantization` codes (Grape's graph only: with hnsw_rs the
    /// setting is ignored, with a warning), the full vectors kept as `options` says; on disk
    /// in an unnamed file under `dir` (in memory without one, or when the file cannot be
    /// created, with a warning).
    pub fn quantized(
        dimension: usize,
        metric: Metric,
        params: HnswParams,
        options: IndexOptions,
        quantization: Quantization,
        dir: Option<&std::path::Path>,
    ) -> Self {
        let quantization = match (options.engine, quantization) {
            (_, Quantization::None) => Quantization::None,
            (GraphEngine::Grape, q) => q,
            (GraphEngine::HnswRs, q) => {
                tracing::warn!(
                    quantization = ?q,
                    "index.graph hnsw_rs does not quantize: this collection's graphs hold full vectors"
                );
                Quantization::None
            }
        };
        let originals = match (
            options.engine,
            quantization,
            options.quantized_originals,
            dir,
        ) {
            (GraphEngine::HnswRs, ..) => Originals::Memory,
            (_, Quantization::None, ..) => Originals::Graph,
            (_, _, OriginalsPlace::Disk, Some(dir)) => {
                match OriginalsFile::create(dir, dimension) {
                    Ok(file) => Originals::Disk(Arc::new(file)),
                    Err(error) => {
                        tracing::warn!(%error, dir = %dir.display(), "cannot create a file for full vectors; they stay in memory");
                        Originals::Memory
                    }
                }
            }
            _ => Originals::Memory,
        };
        let distance = GraphDistance::new(metric);
        let space = Space::train(quantization, metric, dimension, &[]);
        VectorIndex {
            dimension,
            metric,
            params,
            engine: options.engine,
            distance,
            quantization,
            trained_on: AtomicUsize::new(0),
            vectors: RwLock::new(VectorStore::new(originals)),
            graph: RwLock::new(GraphState {
                graph: Graph::new(options.engine, dimension, params, distance, space, 1024),
                indexed_upto: 0,
            }),
            dead_in_graph: AtomicUsize::new(0),
            rebuild_threshold: options.rebuild_threshold.max(1),
            rebuilds: AtomicU64::new(0),
            graph_changes: AtomicU64::new(0),
            maintenance: Mutex::new(()),
            #[cfg(test)]
            faults: TestFaults::default(),
        }
    }

    /// The quantization this index applies.
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    /// An index over a graph of `nodes` nodes that [`VectorIndex::write_graph`] wrote, read
    /// from `input` (Grape's engine only), its codes those of `codebook` (saved beside it;
    /// `None`: full vectors). Its ids are the graph's nodes, all dead until
    /// [`VectorIndex::revive`]d: the caller checks each node's vector against what it stores.
    #[allow(clippy::too_many_arguments)]
    pub fn read_graph(
        input: &mut dyn std::io::Read,
        dimension: usize,
        metric: Metric,
        params: HnswParams,
        options: IndexOptions,
        quantization: Quantization,
        codebook: Option<&Codebook>,
        dir: Option<&std::path::Path>,
        nodes: usize,
    ) -> std::io::Result<VectorIndex> {
        if options.engine != GraphEngine::Grape {
            return Err(std::io::Error::other("only Grape's graph is saved"));
        }
        let index = VectorIndex::quantized(dimension, metric, params, options, quantization, dir);
        let saved = match codebook {
            None => Quantization::None,
            Some(Codebook::Scalar { .. }) => Quantization::Scalar,
            Some(Codebook::Binary { .. }) => Quantization::Binary,
        };
        if saved != index.quantization {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "saved with quantization {saved:?}, the collection has {:?}",
                    index.quantization
                ),
            ));
        }
        let space = Space::from_codebook(codebook, metric, dimension)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let float = space.is_float();
        let graph = Arc::new(HnswGraph::read_from(
            input,
            dimension,
            space,
            graph::GraphParams {
                m: params.m,
                ef_construction: params.ef_construction,
            },
            nodes,
        )?);
        {
            let mut store = index.vectors.write();
            // Full vectors are read in the graph; a quantized graph's come with `revive`.
            store.slot = if float {
                (0..nodes as u32).collect()
            } else {
                vec![NOT_STORED; nodes]
            };
            store.live = vec![false; nodes];
            if !matches!(store.originals, Originals::Memory) {
                store.graph = Some(Arc::clone(&graph));
                store.in_graph = nodes;
            }
        }
        let sample = match codebook {
            Some(Codebook::Scalar { sample, .. } | Codebook::Binary { sample, .. }) => *sample,
            None => 0,
        };
        index.trained_on.store(sample, AtomicOrdering::Relaxed);
        *index.graph.write() = GraphState {
            graph: Graph::Grape(graph),
            indexed_upto: nodes,
        };
        index.dead_in_graph.store(nodes, AtomicOrdering::Relaxed);
        Ok(index)
    }

    /// Marks a node of a graph read by [`VectorIndex::read_graph`] live again, `vector` being
    /// its full vector (which [`VectorIndex::holds`] confirmed). False if it is not such a
    /// node, or is live already.
    pub fn revive(&self, id: VectorId, vector: &[f32]) -> bool {
        let mut store = self.vectors.write();
        if id >= store.live.len() || store.live[id] || id >= self.graph.read().indexed_upto {
            return false;
        }
        let dimension = self.dimension;
        let store = &mut *store;
        match &store.originals {
            Originals::Graph => {}
            Originals::Disk(file) if file.write(id, vector).is_ok() => store.slot[id] = IN_FILE,
            Originals::Disk(_) => {
                store.slot[id] = VectorStore::push(&mut store.data, vector, dimension);
                store.unwritten += 1;
            }
            Originals::Memory => {
                store.slot[id] = VectorStore::push(&mut store.data, vector, dimension);
                store.outside += 1;
            }
        }
        store.live[id] = true;
        store.live_count += 1;
        self.dead_in_graph.fetch_sub(1, AtomicOrdering::Relaxed);
        true
    }

    /// Whether `id`, a node of a graph read by [`VectorIndex::read_graph`], holds exactly
    /// `vector` (its code, in a quantized graph; live or not).
    pub fn holds(&self, id: VectorId, vector: &[f32]) -> bool {
        let state = self.graph.read();
        let Some(graph) = state.graph.grape() else {
            return false;
        };
        id < state.indexed_upto
            && id < graph.len()
            && vector.len() == self.dimension
            && graph.code(id as Node) == &*graph.space().encoded(vector)
    }

    /// Writes Grape's graph to `out` while no maintenance changes it (the graph alone: which
    /// id each node holds is answered by `label`, for the caller to record). Waits up to
    /// `wait` for a running maintainer, else answers `None`; `None` too with hnsw_rs, whose
    /// graphs are not saved. Answers the graph's change count at the time, to compare with
    /// [`VectorIndex::graph_changes`]. Maintenance waits meanwhile: the caller schedules it
    /// again afterwards.
    pub fn write_graph(
        &self,
        wait: std::time::Duration,
        out: &mut dyn FnMut(&HnswGraph) -> std::io::Result<()>,
    ) -> Option<std::io::Result<u64>> {
        let _maintainer = self.maintenance.try_lock_for(wait)?;
        let graph = Arc::clone(self.graph.read().graph.grape()?);
        let changes = self.graph_changes.load(AtomicOrdering::Acquire);
        Some(out(&graph).map(|()| changes))
    }

    /// Whether a maintainer (or a [`VectorIndex::write_graph`]) holds the index now.
    pub fn maintainer_busy(&self) -> bool {
        self.maintenance.is_locked()
    }

    /// Graph entries inserted so far (see [`VectorIndex::write_graph`]).
    pub fn graph_changes(&self) -> u64 {
        self.graph_changes.load(AtomicOrdering::Acquire)
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn distance(&self) -> &GraphDistance {
        &self.distance
    }

    /// Appends a prepared vector (see [`distance::prepare`]) and returns its id.
    pub fn add(&self, vector: &[f32]) -> VectorId {
        debug_assert_eq!(vector.len(), self.dimension);
        #[cfg(test)]
        if self.faults.add.swap(false, AtomicOrdering::Relaxed) {
            panic!("injected fault in add");
        }
        let mut store = self.vectors.write();
        let id = store.live.len();
        let slot = VectorStore::push(&mut store.data, vector, self.dimension);
        store.slot.push(slot);
        store.live.push(true);
        store.live_count += 1;
        store.outside += 1;
        id
    }

    /// Marks an id dead; searches stop returning it at once.
    pub fn remove(&self, id: VectorId) {
        let mut store = self.vectors.write();
        if let Some(live) = store.live.get_mut(id)
            && *live
        {
            *live = false;
            store.live_count -= 1;
            if id < self.graph.read().indexed_upto {
                self.dead_in_graph.fetch_add(1, AtomicOrdering::Relaxed);
            }
        }
    }

    /// Applies `f` to the prepared vector of a live id, in place (no copy).
    pub fn with_vector<R>(&self, id: VectorId, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
        let store = self.vectors.read();
        if !store.is_live(id) {
            return None;
        }
        let mut buf = Vec::new();
        Some(f(store.vector(id, self.dimension, &mut buf)))
    }

    pub fn stats(&self) -> IndexStats {
        let store = self.vectors.read();
        let (indexed_upto, codes) = {
            let state = self.graph.read();
            let codes = state
                .graph
                .grape()
                .map_or(0, |g| g.len() * g.space().words(self.dimension) * 4);
            (state.indexed_upto, codes)
        };
        let pending = store.live[indexed_upto.min(store.live.len())..]
            .iter()
            .filter(|live| **live)
            .count();
        IndexStats {
            live: store.live_count as u64,
            indexed: (store.live_count - pending) as u64,
            pending: pending as u64,
            dead_in_graph: self.dead_in_graph.load(AtomicOrdering::Relaxed) as u64,
            rebuilds: self.rebuilds.load(AtomicOrdering::Relaxed),
            stored: store.stored(self.dimension) as u64,
            vector_bytes: (store.data.len() * 4 + codes) as u64,
            vector_disk_bytes: match &store.originals {
                Originals::Disk(file) => file.disk_bytes(),
                _ => 0,
            },
        }
    }

    /// Whether vectors wait to enter the graph, or the graph is due a rebuild.
    pub fn needs_maintenance(&self) -> bool {
        let len = self.vectors.read().live.len();
        self.graph.read().indexed_upto < len || self.needs_rebuild()
    }

    /// `rebuild_threshold` dead graph entries (the seed's rule), or as many dead vectors held
    /// as live ones (at least [`RECLAIM_MIN`]): memory stays within about twice the live
    /// vectors, and each update costs at most one more graph insert, amortised.
    fn needs_rebuild(&self) -> bool {
        if self.dead_in_graph.load(AtomicOrdering::Relaxed) >= self.rebuild_threshold {
            return true;
        }
        if self.needs_training() {
            return true;
        }
        let store = self.vectors.read();
        let dead_held = store.held(self.dimension) - store.live_count;
        dead_held >= RECLAIM_MIN && dead_held >= store.live_count
    }

    /// Whether a quantized graph's codes were learnt from a sample too small for it: fewer
    /// than [`training_sample`] vectors, and a quarter of the graph's nodes now. The rebuild
    /// learns them again from every live node (so the graph it builds is at most its sample
    /// in size, and the next retraining waits for the graph to grow fourfold): a collection
    /// that starts small is retrained a few times as it grows.
    fn needs_training(&self) -> bool {
        if self.quantization == Quantization::None {
            return false;
        }
        let trained_on = self.trained_on.load(AtomicOrdering::Relaxed);
        let nodes = self.graph.read().graph.grape().map_or(0, |g| g.len());
        trained_on < training_sample(self.dimension) && nodes >= 4 * trained_on.max(256)
    }

    /// The codes' space for a graph of `vectors` (all of them, or an even sample of at most
    /// [`training_sample`]).
    fn train(&self, vectors: &[&[f32]]) -> Space {
        let most = training_sample(self.dimension);
        let step = (vectors.len() / most).max(1);
        let sample: Vec<&[f32]> = vectors.iter().step_by(step).take(most).copied().collect();
        if self.quantization != Quantization::None {
            self.trained_on.store(sample.len(), AtomicOrdering::Relaxed);
        }
        Space::train(self.quantization, self.metric, self.dimension, &sample)
    }

    /// The `k` nearest live vectors to a prepared query among those `accept` lets through,
    /// nearest first. Searches the graph with breadth `ef` and scans not-yet-indexed vectors
    /// exactly.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&(dyn Fn(VectorId) -> bool + Sync)>,
    ) -> Vec<Candidate> {
        if k == 0 {
            return Vec::new();
        }
        #[cfg(test)]
        if self.faults.search.swap(false, AtomicOrdering::Relaxed) {
            panic!("injected fault in search");
        }
        let (graph, indexed_upto) = {
            let state = self.graph.read();
            (state.graph.share(), state.indexed_upto)
        };
        let store = self.vectors.read();
        let ef = ef.max(k);
        // A quantized graph ranks by code distance: take the walk's whole candidate list and
        // let the full vectors choose the `k`.
        let quantized = graph.grape().is_some_and(|g| !g.space().is_float());
        let want = if quantized { ef } else { k };
        let admits =
            |id: VectorId| id < indexed_upto && store.is_live(id) && accept.is_none_or(|f| f(id));
        let mut results = Vec::with_capacity(k * 2);
        // A quantized graph's candidates, re-scored with their full vectors in memory, and
        // those whose full vectors are on disk.
        let mut rescored = Vec::new();
        let mut on_disk = Vec::new();
        if indexed_upto > 0 {
            let survivors = |hits: Vec<Candidate>| -> Vec<Candidate> {
                hits.into_iter().filter(|c| admits(c.id)).collect()
            };
            let mut found = None;
            if accept.is_none() {
                // Few dead entries: an unfiltered search, then drop the dead, keeps the walk's
                // early exit; fall back to a filtered search when too few survive.
                let live_in_tail = store.live[indexed_upto..].iter().filter(|l| **l).count();
                let live_in_graph = store.live_count - live_in_tail;
                let hits = survivors(graph.search(query, want, ef, None));
                if hits.len() >= k.min(live_in_graph) {
                    found = Some(hits);
                }
            }
            let found =
                found.unwrap_or_else(|| survivors(graph.search(query, want, ef, Some(&admits))));
            if quantized {
                for c in found {
                    if store.slot[c.id] == IN_FILE {
                        on_disk.push(c.id);
                    } else {
                        let mut buf = Vec::new();
                        let vector = store.vector(c.id, self.dimension, &mut buf);
                        rescored.push(Candidate {
                            id: c.id,
                            distance: self.distance.distance(query, vector),
                        });
                    }
                }
            } else {
                results.extend(found.into_iter().take(k));
            }
        }
        let tail = indexed_upto..store.live.len();
        let exact = self.scan(
            &store,
            query,
            k,
            tail.filter(|&id| store.live[id] && accept.is_none_or(|f| f(id))),
        );
        results.extend(exact);
        // Candidates whose full vectors are on disk are read without the lock, so a slow read
        // holds up no writer. Their file offsets stay put (ids are never reused). A rebuild
        // gives back the blocks of ids it found dead, so an id removed right after this
        // search let go of the lock could read as zeros; its distance is then wrong, for a
        // document already deleted (a shard holds its own lock across the search and the
        // removal cannot happen in between).
        let file = match &store.originals {
            Originals::Disk(file) if !on_disk.is_empty() => Some(Arc::clone(file)),
            _ => None,
        };
        drop(store);
        if let Some(file) = file {
            let mut buf = Vec::new();
            for id in on_disk {
                file.read(id, &mut buf);
                rescored.push(Candidate {
                    id,
                    distance: self.distance.distance(query, &buf),
                });
            }
        }
        rescored.sort_unstable();
        results.extend(rescored.into_iter().take(k));
        results.sort_unstable();
        results.dedup_by_key(|c| c.id);
        results.truncate(k);
        results
    }

    /// The `k` nearest among the given live ids, by exact distance.
    pub fn exact_search(
        &self,
        query: &[f32],
        k: usize,
        ids: impl Iterator<Item = VectorId>,
    ) -> Vec<Candidate> {
        let store = self.vectors.read();
        let mut found = self.scan(&store, query, k, ids.filter(|&id| store.is_live(id)));
        found.sort_unstable();
        found
    }

    fn scan(
        &self,
        store: &VectorStore,
        query: &[f32],
        k: usize,
        ids: impl Iterator<Item = VectorId>,
    ) -> Vec<Candidate> {
        let mut heap = BinaryHeap::with_capacity(k + 1);
        let mut buf = Vec::new();
        for id in ids {
            let vector = store.vector(id, self.dimension, &mut buf);
            let candidate = Candidate {
                id,
                distance: self.distance.distance(query, vector),
            };
            if heap.len() < k {
                heap.push(candidate);
            } else if let Some(worst) = heap.peek()
                && candidate < *worst
            {
                heap.pop();
                heap.push(candidate);
            }
        }
        heap.into_vec()
    }

    /// Moves up to `max` pending ids into the graph (dead ones are skipped), or rebuilds the
    /// graph when too many of its entries are dead. Returns how many ids it processed: 0 when
    /// there was nothing to do or another caller is already maintaining the index.
    pub fn maintain(&self, max: usize) -> usize {
        let Some(_maintainer) = self.maintenance.try_lock() else {
            return 0;
        };
        #[cfg(test)]
        if self.faults.maintain.swap(false, AtomicOrdering::Relaxed) {
            panic!("injected fault in maintain");
        }
        if self.needs_rebuild() {
            return self.rebuild();
        }
        let (mut graph, start) = {
            let state = self.graph.read();
            (state.graph.share(), state.indexed_upto)
        };
        let (end, batch) = {
            let store = self.vectors.read();
            let end = store.live.len().min(start.saturating_add(max));
            (end, store.live_batch(start..end, self.dimension))
        };
        if let Graph::Grape(g) = &graph
            && g.is_empty()
            && !g.space().is_float()
            && !batch.is_empty()
        {
            // A quantized graph's first nodes: learn the codes from them. Nothing reads the
            // empty graph's nodes, so it is replaced outright.
            let vectors: Vec<&[f32]> = batch.iter().map(|(_, v)| v.as_slice()).collect();
            let space = self.train(&vectors);
            let fresh = Graph::new(
                self.engine,
                self.dimension,
                self.params,
                self.distance,
                space,
                g.capacity().max(batch.len()),
            );
            self.graph.write().graph = fresh.share();
            graph = fresh;
        }
        if let Graph::Grape(g) = &graph
            && g.len() + batch.len() > g.capacity()
        {
            // Searches keep using the old graph while the copy is made; nothing inserts. The
            // copy keeps every node's number, so the store's slots stay right.
            let grown = Arc::new(g.grown((2 * g.capacity()).max(g.len() + batch.len())));
            let mut store = self.vectors.write();
            if store.graph.is_some() {
                store.graph = Some(Arc::clone(&grown));
            }
            self.graph.write().graph = Graph::Grape(Arc::clone(&grown));
            drop(store);
            graph = Graph::Grape(grown);
        }
        let nodes = graph.insert(&batch);
        self.graph_changes
            .fetch_add(batch.len() as u64, AtomicOrdering::AcqRel);
        // Full vectors going to disk are written before any lock is taken; one that fails
        // to write stays in memory.
        let file = match &self.vectors.read().originals {
            Originals::Disk(file) => Some(Arc::clone(file)),
            _ => None,
        };
        let written: Vec<bool> = match &file {
            Some(file) => batch
                .iter()
                .map(|(id, vector)| {
                    file.write(*id, vector)
                        .inspect_err(|error| {
                            tracing::warn!(%error, "writing a full vector to disk failed; it stays in memory");
                        })
                        .is_ok()
                })
                .collect(),
            None => vec![true; batch.len()],
        };
        // Lock order everywhere: vectors, then graph. Holding the vectors lock keeps `remove`
        // out while the watermark moves, so each removal is counted exactly once.
        let mut store = self.vectors.write();
        if let Some(g) = graph.grape()
            && !matches!(store.originals, Originals::Memory)
        {
            store.hand_over(g, start..end, &batch, &nodes, &written, self.dimension);
        }
        self.graph.write().indexed_upto = end;
        // Ids removed while they were being inserted are dead in the graph too.
        let died = batch.iter().filter(|(id, _)| !store.live[*id]).count();
        self.dead_in_graph.fetch_add(died, AtomicOrdering::Relaxed);
        end - start
    }

    /// Builds a new graph from the live vectors below the watermark and swaps it in, and
    /// reclaims the memory of dead vectors: what is held afterwards is what the new graph
    /// holds and the live pending ids. Searches keep using the old graph meanwhile; vectors
    /// added meanwhile stay pending. Returns the number of ids it went through.
    fn rebuild(&self) -> usize {
        let dimension = self.dimension;
        let watermark = self.graph.read().indexed_upto;
        let live_below = {
            let store = self.vectors.read();
            store.live[..watermark].iter().filter(|l| **l).count()
        };
        let space = if self.quantization == Quantization::None {
            self.train(&[])
        } else {
            // The whole sample when there are that many, so that `needs_training` is
            // satisfied afterwards.
            let most = training_sample(dimension);
            let step = (live_below / most).max(1);
            let store = self.vectors.read();
            let sample: Vec<Vec<f32>> = (0..watermark)
                .filter(|&id| store.live[id])
                .step_by(step)
                .take(most)
                .map(|id| store.vector(id, dimension, &mut Vec::new()).to_vec())
                .collect();
            drop(store);
            self.train(&sample.iter().map(|v| v.as_slice()).collect::<Vec<_>>())
        };
        let graph = Graph::new(
            self.engine,
            dimension,
            self.params,
            self.distance,
            space,
            live_below.max(1024),
        );
        let originals = self.vectors.read().originals.clone();
        let in_graph = matches!(originals, Originals::Graph);
        let file = match &originals {
            Originals::Disk(file) => Some(Arc::clone(file)),
            Originals::Graph | Originals::Memory => None,
        };
        // Where each id put in the new graph finds its vector afterwards: its node in Grape's
        // graph, the file, or its slot in the new `data`.
        let mut kept: Vec<(VectorId, u32)> = Vec::with_capacity(live_below);
        let mut data: Vec<f32> = Vec::new();
        const CHUNK: usize = 1024;
        let mut next = 0;
        while next < watermark {
            let end = (next + CHUNK).min(watermark);
            let (chunk, in_file) = {
                let store = self.vectors.read();
                let chunk = store.live_batch(next..end, dimension);
                let in_file: Vec<bool> = chunk
                    .iter()
                    .map(|(id, _)| store.slot[*id] == IN_FILE)
                    .collect();
                (chunk, in_file)
            };
            let nodes = graph.insert(&chunk);
            if in_graph {
                kept.extend(chunk.iter().map(|(id, _)| *id).zip(nodes));
            } else {
                for ((id, vector), in_file) in chunk.iter().zip(in_file) {
                    // On disk, a vector whose write failed before is tried again.
                    let in_file = in_file
                        || file
                            .as_ref()
                            .is_some_and(|file| file.write(*id, vector).is_ok());
                    let slot = if in_file {
                        IN_FILE
                    } else {
                        VectorStore::push(&mut data, vector, dimension)
                    };
                    kept.push((*id, slot));
                }
            }
            next = end;
        }
        // Lock order: vectors, then graph. Nothing is added or removed while the store is
        // swapped, so every live id keeps its vector.
        let mut store = self.vectors.write();
        let mut slot = vec![NOT_STORED; store.live.len()];
        for (id, at) in &kept {
            slot[*id] = *at;
        }
        // Pending ids (added at or after the watermark) move over unchanged; dead ones are
        // never read again.
        let unwritten = kept
            .iter()
            .filter(|(_, s)| file.is_some() && *s != IN_FILE)
            .count();
        let mut outside = 0;
        let mut buf = Vec::new();
        for (id, slot) in slot.iter_mut().enumerate().skip(watermark) {
            if store.live[id] {
                let vector = store.vector(id, dimension, &mut buf);
                *slot = VectorStore::push(&mut data, vector, dimension);
                outside += 1;
            }
        }
        let held_before = store.stored(dimension);
        // Full vectors on disk that nothing reads any more: their blocks are given back.
        let forgotten: Vec<VectorId> = match file {
            Some(_) => (0..store.slot.len())
                .filter(|&id| store.slot[id] == IN_FILE && slot[id] != IN_FILE)
                .collect(),
            None => Vec::new(),
        };
        store.data = data;
        store.slot = slot;
        store.outside = outside;
        store.unwritten = unwritten;
        store.graph = graph
            .grape()
            .cloned()
            .filter(|_| !matches!(originals, Originals::Memory));
        store.in_graph = if store.graph.is_some() { watermark } else { 0 };
        let reclaimed = held_before.saturating_sub(store.stored(dimension));
        let mut state = self.graph.write();
        state.graph = graph;
        state.indexed_upto = watermark;
        // Ids removed while the new graph was built are in it, dead.
        let dead = kept.iter().filter(|(id, _)| !store.live[*id]).count();
        self.dead_in_graph.store(dead, AtomicOrdering::Relaxed);
        self.rebuilds.fetch_add(1, AtomicOrdering::Relaxed);
        self.graph_changes
            .fetch_add(kept.len().max(1) as u64, AtomicOrdering::AcqRel);
        drop(state);
        drop(store);
        if let Some(file) = file {
            file.forget(&forgotten);
        }
        tracing::info!(
            vectors = kept.len(),
            reclaimed,
            "rebuilt HNSW graph without dead entries"
        );
        watermark.max(1)
    }
}

#[cfg(test)]
mod tests;
