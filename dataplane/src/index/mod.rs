//! The vector index of one shard: vectors by dense internal id, an HNSW graph over them, and
//! exact search over whatever the graph does not hold yet. It knows vectors and liveness only;
//! documents, metadata and storage live in the layers above.
//!
//! Two graph engines exist, chosen per node with `index.graph` ([`GraphEngine`]): hnsw_rs
//! (the default) and Grape's own graph ([`graph::HnswGraph`]), which inserts on every thread of
//! the pool running maintenance and searches several times faster (docs/benchmarks.md).
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
pub mod graph;
pub mod worker;

use distance::GraphDistance;
use grape_client::{HnswParams, Metric};
use graph::{GraphParams, HnswGraph};
use hnsw_rs::prelude::Hnsw;
use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;
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

type HnswRsGraph = Hnsw<'static, f32, GraphDistance>;

/// Which HNSW implementation holds a node's graphs (`index.graph`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphEngine {
    /// hnsw_rs: one inserting thread per index.
    #[default]
    HnswRs,
    /// Grape's graph ([`graph::HnswGraph`]): inserts in parallel, allocation-free searches.
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
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            engine: GraphEngine::default(),
            rebuild_threshold: 100_000,
        }
    }
}

/// A graph of either engine, labelled with [`VectorId`]s.
enum Graph {
    HnswRs(Arc<HnswRsGraph>),
    Grape(Arc<HnswGraph>),
}

impl Graph {
    fn new(
        engine: GraphEngine,
        dimension: usize,
        params: HnswParams,
        distance: GraphDistance,
        capacity: usize,
    ) -> Graph {
        match engine {
            GraphEngine::HnswRs => Graph::HnswRs(Arc::new(Hnsw::new(
                params.m,
                capacity,
                MAX_LAYERS,
                params.ef_construction,
                distance,
            ))),
            GraphEngine::Grape => Graph::Grape(Arc::new(HnswGraph::new(
                dimension,
                distance,
                GraphParams {
                    m: params.m,
                    ef_construction: params.ef_construction,
                },
                capacity,
            ))),
        }
    }

    fn share(&self) -> Graph {
        match self {
            Graph::HnswRs(g) => Graph::HnswRs(Arc::clone(g)),
            Graph::Grape(g) => Graph::Grape(Arc::clone(g)),
        }
    }

    /// The nearest graph entries to `query` (at least `k` of them when the graph has them,
    /// up to `ef` for hnsw_rs), nearest first; with a filter, only ids it lets through.
    fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&dyn Fn(VectorId) -> bool>,
    ) -> Vec<Candidate> {
        match self {
            Graph::HnswRs(g) => {
                let hits = match filter {
                    None => g.search(query, ef, ef),
                    Some(f) => g.search_filter(query, ef, ef, Some(&|id: &usize| f(*id))),
                };
                hits.into_iter()
                    .map(|n| Candidate {
                        id: n.d_id,
                        distance: n.distance,
                    })
                    .collect()
            }
            Graph::Grape(g) => {
                let accept = filter.map(|f| move |node: graph::Node| f(g.label(node)));
                g.search(
                    query,
                    k,
                    ef,
                    accept.as_ref().map(|f| f as &dyn Fn(graph::Node) -> bool),
                )
                .into_iter()
                .map(|n| Candidate {
                    id: g.label(n.node),
                    distance: n.distance,
                })
                .collect()
            }
        }
    }

    /// Inserts a batch: hnsw_rs on this thread, Grape's graph on every thread of the current
    /// rayon pool.
    fn insert(&self, batch: &[(VectorId, Vec<f32>)]) {
        match self {
            Graph::HnswRs(g) => {
                for (id, vector) in batch {
                    g.insert_slice((vector, *id));
                }
            }
            Graph::Grape(g) => batch
                .par_iter()
                .for_each(|(id, vector)| g.insert(*id, vector)),
        }
    }
}

/// Layers hnsw_rs may use (its maximum).
const MAX_LAYERS: usize = 16;

/// Vectors by id, and which are still live.
///
/// Ids only grow (an updated document gets a new id), so the vectors of dead ids would pile
/// up; a rebuild compacts `data` to the ids it put in the new graph plus the pending ones.
/// What stays per id ever issued is its liveness and slot (5 bytes).
struct VectorStore {
    /// `dimension` floats per stored vector, in the prepared form (unit length for cosine).
    data: Vec<f32>,
    /// Where each id's vector starts in `data`, in vectors; [`NOT_STORED`] once reclaimed.
    slot: Vec<u32>,
    /// Whether each id is still a current document (false once deleted or replaced).
    live: Vec<bool>,
    live_count: usize,
}

/// Dead vectors held below which a shard is not rebuilt to reclaim memory.
const RECLAIM_MIN: usize = 1000;

/// The slot of an id whose vector a compaction reclaimed (it was dead by then).
const NOT_STORED: u32 = u32::MAX;

impl VectorStore {
    /// The vector of an id. Callers read only ids they found live under the same lock: a live
    /// id always has its vector stored.
    #[inline]
    fn vector(&self, id: VectorId, dimension: usize) -> &[f32] {
        let slot = self.slot[id];
        debug_assert_ne!(slot, NOT_STORED, "vector {id} was reclaimed");
        let start = slot as usize * dimension;
        &self.data[start..start + dimension]
    }

    fn is_live(&self, id: VectorId) -> bool {
        self.live.get(id).copied().unwrap_or(false)
    }

    /// Vectors held, live or dead.
    fn stored(&self, dimension: usize) -> usize {
        self.data.len() / dimension.max(1)
    }

    /// The live ids in `ids` with a copy of their vectors: what a graph insert takes.
    fn live_batch(
        &self,
        ids: std::ops::Range<VectorId>,
        dimension: usize,
    ) -> Vec<(VectorId, Vec<f32>)> {
        ids.filter(|&id| self.live[id])
            .map(|id| (id, self.vector(id, dimension).to_vec()))
            .collect()
    }

    /// Appends a vector to `data` and returns its slot.
    fn push(data: &mut Vec<f32>, vector: &[f32], dimension: usize) -> u32 {
        let slot = u32::try_from(data.len() / dimension.max(1))
            .ok()
            .filter(|s| *s != NOT_STORED)
            .expect("fewer than 2^32 - 1 vectors per shard");
        data.extend_from_slice(vector);
        slot
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
    /// One maintainer (indexing or rebuild) at a time: it decides the watermark, grows Grape's
    /// graph (which needs no insert running) and keeps hnsw_rs inserts on one thread (they
    /// risk lock-order inversions when concurrent).
    maintenance: Mutex<()>,
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
    pub fn new(
        dimension: usize,
        metric: Metric,
        params: HnswParams,
        options: IndexOptions,
    ) -> Self {
        let distance = GraphDistance::new(metric);
        VectorIndex {
            dimension,
            metric,
            params,
            engine: options.engine,
            distance,
            vectors: RwLock::new(VectorStore {
                data: Vec::new(),
                slot: Vec::new(),
                live: Vec::new(),
                live_count: 0,
            }),
            graph: RwLock::new(GraphState {
                graph: Graph::new(options.engine, dimension, params, distance, 1024),
                indexed_upto: 0,
            }),
            dead_in_graph: AtomicUsize::new(0),
            rebuild_threshold: options.rebuild_threshold.max(1),
            rebuilds: AtomicU64::new(0),
            maintenance: Mutex::new(()),
        }
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
        let mut store = self.vectors.write();
        let id = store.live.len();
        let slot = VectorStore::push(&mut store.data, vector, self.dimension);
        store.slot.push(slot);
        store.live.push(true);
        store.live_count += 1;
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
        Some(f(store.vector(id, self.dimension)))
    }

    pub fn stats(&self) -> IndexStats {
        let store = self.vectors.read();
        let indexed_upto = self.graph.read().indexed_upto;
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
        let store = self.vectors.read();
        let dead_held = store.stored(self.dimension) - store.live_count;
        dead_held >= RECLAIM_MIN && dead_held >= store.live_count
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
        let (graph, indexed_upto) = {
            let state = self.graph.read();
            (state.graph.share(), state.indexed_upto)
        };
        let store = self.vectors.read();
        let ef = ef.max(k);
        let admits =
            |id: VectorId| id < indexed_upto && store.is_live(id) && accept.is_none_or(|f| f(id));
        let mut results = Vec::with_capacity(k * 2);
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
                let hits = survivors(graph.search(query, k, ef, None));
                if hits.len() >= k.min(live_in_graph) {
                    found = Some(hits);
                }
            }
            let found =
                found.unwrap_or_else(|| survivors(graph.search(query, k, ef, Some(&admits))));
            results.extend(found.into_iter().take(k));
        }
        let tail = indexed_upto..store.live.len();
        let exact = self.scan(
            &store,
            query,
            k,
            tail.filter(|&id| store.live[id] && accept.is_none_or(|f| f(id))),
        );
        results.extend(exact);
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
        for id in ids {
            let vector = store.vector(id, self.dimension);
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
            && g.len() + batch.len() > g.capacity()
        {
            // Searches keep using the old graph while the copy is made; nothing inserts.
            let grown = Graph::Grape(Arc::new(
                g.grown((2 * g.capacity()).max(g.len() + batch.len())),
            ));
            self.graph.write().graph = grown.share();
            graph = grown;
        }
        graph.insert(&batch);
        // Lock order everywhere: vectors, then graph. Holding the vectors lock keeps `remove`
        // out while the watermark moves, so each removal is counted exactly once.
        let store = self.vectors.read();
        self.graph.write().indexed_upto = end;
        // Ids removed while they were being inserted are dead in the graph too.
        let died = batch.iter().filter(|(id, _)| !store.live[*id]).count();
        self.dead_in_graph.fetch_add(died, AtomicOrdering::Relaxed);
        end - start
    }

    /// Builds a new graph from the live vectors below the watermark and swaps it in, and
    /// reclaims the memory of dead vectors: the store keeps what the new graph holds and the
    /// live pending ids. Searches keep using the old graph meanwhile; vectors added meanwhile
    /// stay pending. Returns the number of ids it went through.
    fn rebuild(&self) -> usize {
        let dimension = self.dimension;
        let watermark = self.graph.read().indexed_upto;
        let live_below = {
            let store = self.vectors.read();
            store.live[..watermark].iter().filter(|l| **l).count()
        };
        let graph = Graph::new(
            self.engine,
            dimension,
            self.params,
            self.distance,
            live_below.max(1024),
        );
        // The compacted store, built beside the old one: the ids put in the new graph, in
        // order, and their vectors.
        let mut kept: Vec<VectorId> = Vec::with_capacity(live_below);
        let mut data: Vec<f32> = Vec::with_capacity(live_below * dimension);
        const CHUNK: usize = 1024;
        let mut next = 0;
        while next < watermark {
            let end = (next + CHUNK).min(watermark);
            let chunk = self.vectors.read().live_batch(next..end, dimension);
            for (id, vector) in &chunk {
                VectorStore::push(&mut data, vector, dimension);
                kept.push(*id);
            }
            graph.insert(&chunk);
            next = end;
        }
        // Lock order: vectors, then graph. Nothing is added or removed while the store is
        // swapped, so every live id keeps its vector.
        let mut store = self.vectors.write();
        let mut slot = vec![NOT_STORED; store.live.len()];
        for (i, id) in kept.iter().enumerate() {
            slot[*id] = i as u32;
        }
        // Pending ids (added at or after the watermark) move over unchanged; dead ones are
        // never read again.
        for (id, slot) in slot.iter_mut().enumerate().skip(watermark) {
            if store.live[id] {
                *slot = VectorStore::push(&mut data, store.vector(id, dimension), dimension);
            }
        }
        let held_before = store.stored(dimension);
        store.data = data;
        store.slot = slot;
        let reclaimed = held_before - store.stored(dimension);
        let mut state = self.graph.write();
        state.graph = graph;
        state.indexed_upto = watermark;
        // Ids removed while the new graph was built are in it, dead.
        let dead = kept.iter().filter(|id| !store.live[**id]).count();
        self.dead_in_graph.store(dead, AtomicOrdering::Relaxed);
        self.rebuilds.fetch_add(1, AtomicOrdering::Relaxed);
        tracing::info!(
            vectors = kept.len(),
            reclaimed,
            "rebuilt HNSW graph without dead entries"
        );
        watermark.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distance::prepare;

    fn grid(n: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|i| vec![i as f32, (i % 7) as f32, 1.0])
            .collect()
    }

    fn exact_top(
        vectors: &[Vec<f32>],
        query: &[f32],
        k: usize,
        live: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let d = GraphDistance::new(Metric::L2);
        let mut all: Vec<(f32, usize)> = vectors
            .iter()
            .enumerate()
            .filter(|(i, _)| live(*i))
            .map(|(i, v)| (d.distance(query, v), i))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.into_iter().take(k).map(|(_, i)| i).collect()
    }

    fn index_of(vectors: &[Vec<f32>], threshold: usize, engine: GraphEngine) -> VectorIndex {
        let options = IndexOptions {
            engine,
            rebuild_threshold: threshold,
        };
        let index = VectorIndex::new(3, Metric::L2, HnswParams::default(), options);
        for v in vectors {
            index.add(v);
        }
        index
    }

    fn maintaining_without_a_limit_indexes_everything_once(engine: GraphEngine) {
        let vectors = grid(300);
        let index = index_of(&vectors, 1000, engine);
        assert_eq!(index.maintain(usize::MAX), 300);
        assert_eq!(index.stats().pending, 0);
        // Nothing left: no work reported (an unbounded limit must not overflow).
        assert_eq!(index.maintain(usize::MAX), 0);
    }

    fn unindexed_vectors_are_found_by_exact_scan(engine: GraphEngine) {
        let vectors = grid(300);
        let index = index_of(&vectors, 1000, engine);
        assert_eq!(index.stats().pending, 300);
        let hits = index.search(&[42.0, 0.0, 1.0], 3, 64, None);
        let ids: Vec<usize> = hits.iter().map(|c| c.id).collect();
        assert_eq!(ids, exact_top(&vectors, &[42.0, 0.0, 1.0], 3, |_| true));
    }

    fn graph_and_tail_answers_agree_with_brute_force(engine: GraphEngine) {
        let vectors = grid(2000);
        let index = index_of(&vectors, 10_000, engine);
        while index.maintain(700) > 0 {}
        let stats = index.stats();
        assert_eq!((stats.indexed, stats.pending), (2000, 0));
        // Half in the graph, half pending.
        for v in grid(2200).into_iter().skip(2000) {
            index.add(&v);
        }
        let all = grid(2200);
        let mut agree = 0;
        for q in [5.0f32, 500.0, 1500.0, 2100.0, 2199.0] {
            let query = [q, 3.0, 1.0];
            let got: Vec<usize> = index
                .search(&query, 5, 128, None)
                .iter()
                .map(|c| c.id)
                .collect();
            let want = exact_top(&all, &query, 5, |_| true);
            agree += got.iter().filter(|id| want.contains(id)).count();
        }
        assert!(agree >= 24, "recall too low: {agree}/25");
    }

    fn removed_vectors_never_come_back_and_a_rebuild_drops_them(engine: GraphEngine) {
        let vectors = grid(1000);
        let index = index_of(&vectors, 50, engine);
        while index.maintain(1000) > 0 {}
        for id in 100..160 {
            index.remove(id);
        }
        let hits = index.search(&[130.0, 4.0, 1.0], 10, 64, None);
        assert!(hits.iter().all(|c| !(100..160).contains(&c.id)), "{hits:?}");
        assert_eq!(hits.len(), 10);
        assert_eq!(index.stats().dead_in_graph, 60);
        assert!(index.needs_maintenance());
        index.maintain(1000);
        let stats = index.stats();
        assert_eq!(
            (stats.rebuilds, stats.dead_in_graph, stats.live),
            (1, 0, 940)
        );
        let hits = index.search(&[130.0, 4.0, 1.0], 10, 64, None);
        assert!(hits.iter().all(|c| !(100..160).contains(&c.id)));
        assert_eq!(hits[0].id, 160, "{hits:?}");
    }

    fn accept_filter_restricts_results(engine: GraphEngine) {
        let vectors = grid(1500);
        let index = index_of(&vectors, 10_000, engine);
        while index.maintain(1000) > 0 {}
        let even = |id: usize| id.is_multiple_of(2);
        let hits = index.search(&[701.0, 1.0, 1.0], 10, 200, Some(&even));
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|c| c.id % 2 == 0));
        let exact = index.exact_search(&[701.0, 1.0, 1.0], 4, (0..1500).filter(|i| i % 2 == 0));
        assert_eq!(exact.len(), 4);
    }

    fn cosine_index_ranks_by_angle(engine: GraphEngine) {
        let index = VectorIndex::new(
            2,
            Metric::Cosine,
            HnswParams::default(),
            IndexOptions {
                engine,
                rebuild_threshold: 100,
            },
        );
        let a = index.add(&prepare(Metric::Cosine, &[1.0, 0.0]).unwrap());
        let b = index.add(&prepare(Metric::Cosine, &[0.0, 5.0]).unwrap());
        let q = prepare(Metric::Cosine, &[10.0, 1.0]).unwrap();
        let hits = index.search(&q, 2, 16, None);
        assert_eq!(hits.iter().map(|c| c.id).collect::<Vec<_>>(), vec![a, b]);
    }

    fn a_rebuild_reclaims_the_vectors_of_replaced_documents(engine: GraphEngine) {
        let vectors = grid(1000);
        let index = index_of(&vectors, 50, engine);
        while index.maintain(1000) > 0 {}
        // 300 updates: each document gets a new id and a moved vector; 10 of the new ones are
        // deleted again before they reach the graph.
        // Spread through a cube (hnsw_rs leaves points of a second parallel line unreachable).
        let moved = |i: usize| {
            let at = |step: f64| ((i as f64 * step).fract() * 1000.0) as f32;
            vec![at(0.618_034), at(0.414_214), at(0.732_051)]
        };
        for i in 0..300 {
            index.remove(i);
            assert_eq!(index.add(&moved(i)), 1000 + i);
        }
        for id in 1000..1010 {
            index.remove(id);
        }
        assert_eq!(index.stats().stored, 1300);
        index.maintain(1000);
        let stats = index.stats();
        assert_eq!(
            (stats.rebuilds, stats.live, stats.stored, stats.pending),
            (1, 990, 990, 290),
            "{stats:?}"
        );
        // Every live id still reads its own vector; reclaimed ones are gone.
        for id in [300, 301, 650, 999] {
            assert_eq!(
                index.with_vector(id, <[f32]>::to_vec),
                Some(vectors[id].clone())
            );
        }
        for id in [1010, 1150, 1299] {
            assert_eq!(
                index.with_vector(id, <[f32]>::to_vec),
                Some(moved(id - 1000))
            );
        }
        for id in [0, 299, 1000, 1009] {
            assert_eq!(index.with_vector(id, |_| ()), None);
        }
        while index.maintain(1000) > 0 {}
        // A second compaction over an already compacted store.
        for id in 400..500 {
            index.remove(id);
        }
        while index.maintain(1000) > 0 {}
        let stats = index.stats();
        assert_eq!(
            (
                stats.rebuilds,
                stats.live,
                stats.stored,
                stats.dead_in_graph
            ),
            (2, 890, 890, 0),
            "{stats:?}"
        );
        for (query, want) in [
            (vectors[650].clone(), 650),
            (moved(150), 1150),
            (moved(20), 1020),
        ] {
            let hits = index.search(&query, 3, 64, None);
            assert_eq!((hits[0].id, hits[0].distance), (want, 0.0), "{hits:?}");
        }
        let hits = index.search(&[450.0, 2.0, 1.0], 10, 64, None);
        assert!(hits.iter().all(|c| !(400..500).contains(&c.id)), "{hits:?}");
    }

    fn as_many_dead_vectors_as_live_ones_are_reclaimed_below_the_threshold(engine: GraphEngine) {
        let vectors = grid(1500);
        let index = index_of(&vectors, 1_000_000, engine);
        while index.maintain(usize::MAX) > 0 {}
        for id in 0..700 {
            index.remove(id);
        }
        while index.maintain(usize::MAX) > 0 {}
        let stats = index.stats();
        assert_eq!((stats.rebuilds, stats.stored), (0, 1500), "{stats:?}");
        // 1,000 dead and 500 live: past RECLAIM_MIN and past the live count.
        for id in 700..1000 {
            index.remove(id);
        }
        assert!(index.needs_maintenance());
        while index.maintain(usize::MAX) > 0 {}
        let stats = index.stats();
        assert_eq!(
            (stats.rebuilds, stats.stored, stats.live),
            (1, 500, 500),
            "{stats:?}"
        );
        assert_eq!(index.search(&vectors[1200], 1, 32, None)[0].id, 1200);
    }

    fn updates_during_rebuilds_keep_every_vector_right(engine: GraphEngine) {
        let docs = 200;
        let vector_of = |doc: usize, version: usize| {
            vec![doc as f32, (version % 13) as f32, (version % 5) as f32]
        };
        let index = Arc::new(index_of(
            &(0..docs).map(|d| vector_of(d, 0)).collect::<Vec<_>>(),
            20,
            engine,
        ));
        while index.maintain(usize::MAX) > 0 {}
        let updates = 2000;
        let writer = {
            let index = Arc::clone(&index);
            std::thread::spawn(move || {
                let mut current: Vec<(VectorId, Vec<f32>)> =
                    (0..docs).map(|d| (d, vector_of(d, 0))).collect();
                for version in 1..=updates {
                    let doc = (version * 37) % docs;
                    let vector = vector_of(doc, version);
                    index.remove(current[doc].0);
                    current[doc] = (index.add(&vector), vector);
                    if version % 100 == 0 {
                        // Wait for the indexer to catch up, so that the next 100 updates remove
                        // graph entries: each such round starts a rebuild that races with it.
                        let waited = std::time::Instant::now();
                        while index.stats().pending > 0
                            && waited.elapsed() < std::time::Duration::from_secs(10)
                        {
                            std::thread::sleep(std::time::Duration::from_micros(200));
                        }
                    }
                }
                current
            })
        };
        let d = GraphDistance::new(Metric::L2);
        while !writer.is_finished() {
            index.maintain(64);
            let query = vector_of(77, 3);
            for hit in index.search(&query, 5, 32, None) {
                // A hit may die right after the search; while live it reads its own vector.
                if let Some(exact) = index.with_vector(hit.id, |v| d.distance(&query, v)) {
                    assert!((exact - hit.distance).abs() < 1e-4, "{hit:?} vs {exact}");
                }
            }
        }
        let current = writer.join().unwrap();
        while index.maintain(usize::MAX) > 0 {}
        let stats = index.stats();
        assert_eq!(stats.live, docs as u64);
        assert!(stats.rebuilds >= 20, "{stats:?}");
        let issued = (docs + updates) as u64;
        assert!(stats.stored < issued / 2, "nothing reclaimed: {stats:?}");
        for (id, vector) in current {
            assert_eq!(index.with_vector(id, <[f32]>::to_vec), Some(vector.clone()));
            let hits = index.search(&vector, 1, docs, None);
            assert_eq!((hits[0].id, hits[0].distance), (id, 0.0));
        }
    }

    /// Runs each test against both graph engines.
    macro_rules! on_both_engines {
        ($($name:ident),* $(,)?) => {
            mod hnsw_rs_engine {
                $(#[test] fn $name() { super::$name(super::GraphEngine::HnswRs) })*
            }
            mod grape_engine {
                $(#[test] fn $name() { super::$name(super::GraphEngine::Grape) })*
            }
        };
    }

    on_both_engines!(
        maintaining_without_a_limit_indexes_everything_once,
        unindexed_vectors_are_found_by_exact_scan,
        graph_and_tail_answers_agree_with_brute_force,
        removed_vectors_never_come_back_and_a_rebuild_drops_them,
        a_rebuild_reclaims_the_vectors_of_replaced_documents,
        as_many_dead_vectors_as_live_ones_are_reclaimed_below_the_threshold,
        updates_during_rebuilds_keep_every_vector_right,
        accept_filter_restricts_results,
        cosine_index_ranks_by_angle,
    );
}
