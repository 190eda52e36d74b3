//! Grape's own HNSW graph (Malkov & Yashunin), laid out for the CPU: one slab holding each
//! node's layer-0 list (`2m` fixed `u32` slots) beside its vector, cache-line aligned and
//! backed by huge pages; upper-layer lists per node; the unvisited neighbours of a node
//! prefetched together before their distances are computed; a visited set stamped with a
//! generation number and reused between searches, and no allocation on the search path once a
//! thread's scratch space exists. Neighbours are chosen with the usual diversity heuristic ("keep a candidate only if
//! it is closer to the new node than to every neighbour already kept").
//!
//! Concurrency: any number of threads search and insert at once. Capacity is fixed at creation
//! (the owner grows a full graph with [`HnswGraph::grown`]). An inserter reserves a node, writes
//! its vector and level before anyone can reach it, and only then links it in; each node's
//! lists change under that node's lock, and readers take no lock: every slot always holds the
//! id of a node that is fully written, so a reader racing a rewrite sees a mix of old and new
//! neighbours, never garbage.
//!
//! ```text
//!   layer 2:  e ─────────────── x                  entry point e, top layer
//!   layer 1:  e ───── a ─────── x ──── b           greedy descent, one best node per layer
//!   layer 0:  e ─ c ─ a ─ d ─ f ─ x ─ g ─ b ─ h    best-first search with breadth ef
//! ```

use super::distance::GraphDistance;
use parking_lot::Mutex;
use std::cell::UnsafeCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering as Mem};

/// Dense position of a vector inside one graph.
pub type Node = u32;

/// Highest layer a node may get (levels are drawn with mean 1/ln(m), so this is never reached
/// in practice; it bounds the per-node allocation).
const MAX_LEVEL: usize = 15;

/// A node and its distance to whatever is being searched for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Near {
    pub distance: f32,
    pub node: Node,
}

impl Eq for Near {}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.node.cmp(&other.node))
    }
}

/// Every node's layer-0 list and vector side by side, as hnswlib lays them out: expanding a
/// node reads the list right next to the vector its distance was computed from, so the list
/// is usually in cache already. One block per node, a whole number of cache lines:
///
/// ```text
///   | len | 2m neighbour ids | vector (dimension floats) | padding |
/// ```
struct Slab {
    cells: Box<[UnsafeCell<u32>]>,
    /// Words before node 0, so that every block starts on a cache line.
    base: usize,
    /// Words per node.
    stride: usize,
    /// Words of the list (length slot included).
    list_words: usize,
    dimension: usize,
}

// SAFETY: a node's vector is written exactly once, by the thread that reserved the node,
// before any other thread can learn the node's id (ids are published through atomic stores
// with release ordering and read with acquire ordering); afterwards it is only read. List
// words are only ever accessed atomically.
unsafe impl Sync for Slab {}

const LINE_WORDS: usize = 16;

impl Slab {
    fn new(capacity: usize, list_words: usize, dimension: usize) -> Slab {
        let stride = (list_words + dimension).next_multiple_of(LINE_WORDS);
        let words = zeroed_words(capacity * stride + LINE_WORDS);
        let misaligned = (words.as_ptr() as usize % (LINE_WORDS * 4)) / 4;
        let base = (LINE_WORDS - misaligned) % LINE_WORDS;
        // SAFETY: `UnsafeCell<u32>` has the size and alignment of `u32`.
        let cells = unsafe { Box::from_raw(Box::into_raw(words) as *mut [UnsafeCell<u32>]) };
        Slab {
            cells,
            base,
            stride,
            list_words,
            dimension,
        }
    }

    #[inline]
    fn block(&self, node: Node) -> &[UnsafeCell<u32>] {
        let start = self.base + node as usize * self.stride;
        &self.cells[start..start + self.stride]
    }

    /// # Safety
    /// Only the thread that reserved `node` may call this, once, before publishing `node`.
    unsafe fn write(&self, node: Node, vector: &[f32]) {
        assert_eq!(vector.len(), self.dimension);
        let cells = &self.block(node)[self.list_words..self.list_words + self.dimension];
        // SAFETY: the range is in bounds (checked by the slice above) and nobody reads or
        // writes it concurrently (the caller's contract); f32 and u32 have the same size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                vector.as_ptr(),
                cells[0].get() as *mut f32,
                self.dimension,
            );
        }
    }

    /// The vector of a published node.
    #[inline]
    fn get(&self, node: Node) -> &[f32] {
        let cells = &self.block(node)[self.list_words..self.list_words + self.dimension];
        // SAFETY: the words hold floats written before the node was published and never
        // written again, so shared reads are sound.
        unsafe { std::slice::from_raw_parts(cells.as_ptr() as *const f32, self.dimension) }
    }

    /// A node's layer-0 list: the length, then the neighbour slots.
    #[inline]
    fn list(&self, node: Node) -> &[AtomicU32] {
        let cells = &self.block(node)[..self.list_words];
        // SAFETY: `AtomicU32` has the layout of `u32`, and list words are only ever accessed
        // through atomics.
        unsafe { std::slice::from_raw_parts(cells.as_ptr() as *const AtomicU32, self.list_words) }
    }

    /// Asks the CPU to start loading a node's block (list and vector; the first
    /// `PREFETCH_LINES` cache lines, the hardware streams the rest of a longer one).
    #[inline]
    fn prefetch(&self, node: Node) {
        #[cfg(target_arch = "x86_64")]
        {
            const PREFETCH_LINES: usize = 12;
            let start = self.base + node as usize * self.stride;
            let Some(block) = self.cells.get(start..start + self.stride) else {
                return;
            };
            let first = block.as_ptr() as *const i8;
            let bytes = (self.stride * 4).min(PREFETCH_LINES * 64);
            for offset in (0..bytes).step_by(64) {
                // SAFETY: prefetching is a hint; every address is inside the block.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        first.add(offset),
                    );
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = node;
    }
}

/// `len` zeroed words. The graph's big arrays are read at random, so with 4 KiB pages most
/// reads would also miss the TLB: on Linux they ask for transparent huge pages (before any
/// page is touched, so the kernel can back them with 2 MiB pages from the start).
fn zeroed_words(len: usize) -> Box<[u32]> {
    let words = vec![0u32; len].into_boxed_slice();
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let bytes = len * 4;
        if bytes >= 4 << 20 {
            let start = words.as_ptr() as usize;
            let aligned = start.next_multiple_of(PAGE);
            let span = (start + bytes - aligned) / PAGE * PAGE;
            // SAFETY: advice about memory this function owns; it changes no contents.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, span, libc::MADV_HUGEPAGE);
            }
        }
    }
    words
}

/// Per-search working memory, pooled so searches do not allocate.
struct Scratch {
    /// `visited[node] == stamp` marks a node seen by the current search.
    visited: Vec<u32>,
    stamp: u32,
    candidates: BinaryHeap<Reverse<Near>>,
    results: BinaryHeap<Near>,
    /// Unvisited neighbours of the node being expanded.
    fresh: Vec<Node>,
}

impl Scratch {
    fn new(capacity: usize) -> Scratch {
        Scratch {
            visited: vec![0; capacity],
            stamp: 0,
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
            fresh: Vec::new(),
        }
    }

    /// Starts a new search: nothing visited, empty heaps.
    fn reset(&mut self, capacity: usize) {
        if self.visited.len() < capacity {
            self.visited.resize(capacity, 0);
        }
        if self.stamp == u32::MAX {
            self.visited.fill(0);
            self.stamp = 0;
        }
        self.stamp += 1;
        self.candidates.clear();
        self.results.clear();
    }

    /// Marks a node visited; false if it already was.
    #[inline]
    fn visit(&mut self, node: Node) -> bool {
        let mark = &mut self.visited[node as usize];
        if *mark == self.stamp {
            false
        } else {
            *mark = self.stamp;
            true
        }
    }
}

/// Graph parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphParams {
    /// Links per node on upper layers; layer 0 keeps twice as many.
    pub m: usize,
    /// Breadth of the search that finds a new node's neighbours.
    pub ef_construction: usize,
}

/// An HNSW graph over at most `capacity` vectors.
pub struct HnswGraph {
    distance: GraphDistance,
    params: GraphParams,
    /// Slots per upper-layer list (`m`; layer-0 lists, in the slab, have `2m`), each list
    /// led by its length.
    m_upper: usize,
    level_scale: f64,
    capacity: usize,
    /// Nodes reserved so far; every node below this is published or about to be.
    reserved: AtomicUsize,
    /// Vectors and layer-0 lists.
    vectors: Slab,
    /// The caller's id of each node.
    labels: Box<[AtomicUsize]>,
    levels: Box<[AtomicU8]>,
    /// Lists of layers 1..=level, `m_upper + 1` slots each, set before the node is published.
    upper: Box<[OnceLock<Box<[AtomicU32]>>]>,
    /// Held while a node's lists change.
    locks: Box<[Mutex<()>]>,
    /// Entry point and top layer packed as `node | level << 32`; `EMPTY` before the first node.
    entry: AtomicU64,
    /// Held by an insert that may raise the top layer.
    entry_change: Mutex<()>,
    scratch: Mutex<Vec<Scratch>>,
}

const EMPTY: u64 = u64::MAX;

impl std::fmt::Debug for HnswGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswGraph")
            .field("params", &self.params)
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl HnswGraph {
    pub fn new(
        dimension: usize,
        distance: GraphDistance,
        params: GraphParams,
        capacity: usize,
    ) -> HnswGraph {
        let m = params.m.clamp(2, 255);
        let m_zero = 2 * m;
        HnswGraph {
            distance,
            params,
            m_upper: m,
            level_scale: 1.0 / (m as f64).ln(),
            capacity,
            reserved: AtomicUsize::new(0),
            vectors: Slab::new(capacity, m_zero + 1, dimension),
            labels: (0..capacity).map(|_| AtomicUsize::new(0)).collect(),
            levels: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
            upper: (0..capacity).map(|_| OnceLock::new()).collect(),
            locks: (0..capacity).map(|_| Mutex::new(())).collect(),
            entry: AtomicU64::new(EMPTY),
            entry_change: Mutex::new(()),
            scratch: Mutex::new(Vec::new()),
        }
    }

    /// Nodes in the graph (including any being inserted right now).
    pub fn len(&self) -> usize {
        self.reserved.load(Mem::Acquire).min(self.capacity)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A copy of this graph with room for `capacity` nodes. No insert may run meanwhile.
    pub fn grown(&self, capacity: usize) -> HnswGraph {
        let capacity = capacity.max(self.capacity);
        let grown = HnswGraph::new(self.vectors.dimension, self.distance, self.params, capacity);
        let len = self.len();
        for node in 0..len as Node {
            let i = node as usize;
            // SAFETY: `grown` is not shared yet and each node is written once.
            unsafe { grown.vectors.write(node, self.vectors.get(node)) };
            for (to, from) in grown.vectors.list(node).iter().zip(self.vectors.list(node)) {
                to.store(from.load(Mem::Acquire), Mem::Relaxed);
            }
            grown.labels[i].store(self.labels[i].load(Mem::Acquire), Mem::Relaxed);
            grown.levels[i].store(self.levels[i].load(Mem::Acquire), Mem::Relaxed);
            if let Some(upper) = self.upper[i].get() {
                let copy = upper
                    .iter()
                    .map(|slot| AtomicU32::new(slot.load(Mem::Acquire)))
                    .collect();
                let _ = grown.upper[i].set(copy);
            }
        }
        grown.reserved.store(len, Mem::Release);
        grown
            .entry
            .store(self.entry.load(Mem::Acquire), Mem::Release);
        grown
    }

    /// The caller's id of a node.
    #[inline]
    pub fn label(&self, node: Node) -> usize {
        self.labels[node as usize].load(Mem::Acquire)
    }

    fn entry(&self) -> Option<(Node, usize)> {
        let packed = self.entry.load(Mem::Acquire);
        (packed != EMPTY).then_some((packed as u32, (packed >> 32) as usize))
    }

    fn set_entry(&self, node: Node, level: usize) {
        self.entry
            .store(node as u64 | ((level as u64) << 32), Mem::Release);
    }

    /// The slots of a node's list on a layer: the length, then up to `m` (or `2m`) ids.
    #[inline]
    fn list(&self, node: Node, layer: usize) -> &[AtomicU32] {
        if layer == 0 {
            self.vectors.list(node)
        } else {
            let width = self.m_upper + 1;
            match self.upper[node as usize].get() {
                Some(lists) => &lists[(layer - 1) * width..layer * width],
                None => &[],
            }
        }
    }

    /// Calls `f` with each neighbour of `node` on `layer`, prefetching the next one's vector.
    #[inline]
    fn for_each_neighbour(&self, node: Node, layer: usize, mut f: impl FnMut(Node)) {
        let list = self.list(node, layer);
        let Some((len, slots)) = list.split_first() else {
            return;
        };
        let len = (len.load(Mem::Acquire) as usize).min(slots.len());
        if len == 0 {
            return;
        }
        let mut next = slots[0].load(Mem::Acquire);
        self.vectors.prefetch(next);
        for i in 0..len {
            let current = next;
            if i + 1 < len {
                next = slots[i + 1].load(Mem::Acquire);
                self.vectors.prefetch(next);
            }
            f(current);
        }
    }

    /// Asks the CPU to start loading a node's list on a layer (likely the next one read).
    #[inline]
    fn prefetch_list(&self, node: Node, layer: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(first) = self.list(node, layer).first() {
            // SAFETY: prefetching is a hint; the address is the list's first slot.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    first.as_ptr() as *const i8,
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (node, layer);
    }

    /// Puts the neighbours of `node` on `layer` that `scratch` has not visited yet into
    /// `scratch.fresh`, marking them visited and prefetching all their vectors at once so
    /// their loads overlap.
    #[inline]
    fn fresh_neighbours(&self, node: Node, layer: usize, scratch: &mut Scratch) {
        scratch.fresh.clear();
        let list = self.list(node, layer);
        let Some((len, slots)) = list.split_first() else {
            return;
        };
        let len = (len.load(Mem::Acquire) as usize).min(slots.len());
        for slot in &slots[..len] {
            let n = slot.load(Mem::Acquire);
            if scratch.visit(n) {
                self.vectors.prefetch(n);
                scratch.fresh.push(n);
            }
        }
    }

    fn write_list(&self, node: Node, layer: usize, neighbours: &[Near]) {
        let list = self.list(node, layer);
        let (len, slots) = list
            .split_first()
            .expect("a list for every layer of a node");
        let count = neighbours.len().min(slots.len());
        for (slot, near) in slots.iter().zip(&neighbours[..count]) {
            slot.store(near.node, Mem::Release);
        }
        len.store(count as u32, Mem::Release);
    }

    #[inline]
    fn dist(&self, a: &[f32], node: Node) -> f32 {
        self.distance.distance(a, self.vectors.get(node))
    }

    fn take_scratch(&self) -> Scratch {
        self.scratch
            .lock()
            .pop()
            .unwrap_or_else(|| Scratch::new(self.capacity))
    }

    fn return_scratch(&self, scratch: Scratch) {
        self.scratch.lock().push(scratch);
    }

    /// Level of a new node: geometric with mean 1/ln(m), drawn from a hash of the node so the
    /// same inserts give the same graph shape.
    fn level_of(&self, node: usize) -> usize {
        let mut x = (node as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let uniform = ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-uniform.ln() * self.level_scale) as usize).min(MAX_LEVEL)
    }

    /// Walks down from the top layer to `stop + 1`, one best node per layer.
    fn descend(&self, query: &[f32], from: Node, top: usize, stop: usize) -> Near {
        let mut best = Near {
            distance: self.dist(query, from),
            node: from,
        };
        for layer in (stop + 1..=top).rev() {
            loop {
                let mut moved = false;
                self.for_each_neighbour(best.node, layer, |n| {
                    let d = self.dist(query, n);
                    if d < best.distance {
                        best = Near {
                            distance: d,
                            node: n,
                        };
                        moved = true;
                    }
                });
                if !moved {
                    break;
                }
            }
        }
        best
    }

    /// Best-first search of one layer from `start`, keeping the `ef` nearest nodes that
    /// `accept` lets through in `scratch.results` (the walk itself goes through every node).
    fn search_layer(
        &self,
        query: &[f32],
        start: Near,
        ef: usize,
        layer: usize,
        scratch: &mut Scratch,
        accept: Option<&dyn Fn(Node) -> bool>,
    ) {
        scratch.reset(self.capacity);
        scratch.visit(start.node);
        scratch.candidates.push(Reverse(start));
        if accept.is_none_or(|f| f(start.node)) {
            scratch.results.push(start);
        }
        while let Some(Reverse(current)) = scratch.candidates.pop() {
            let bound = scratch.results.peek().map_or(f32::INFINITY, |w| w.distance);
            if current.distance > bound && scratch.results.len() >= ef {
                break;
            }
            if let Some(Reverse(next)) = scratch.candidates.peek() {
                self.prefetch_list(next.node, layer);
            }
            self.fresh_neighbours(current.node, layer, scratch);
            for i in 0..scratch.fresh.len() {
                let n = scratch.fresh[i];
                let d = self.dist(query, n);
                let bound = scratch.results.peek().map_or(f32::INFINITY, |w| w.distance);
                if scratch.results.len() < ef || d < bound {
                    let near = Near {
                        distance: d,
                        node: n,
                    };
                    scratch.candidates.push(Reverse(near));
                    if accept.is_none_or(|f| f(n)) {
                        scratch.results.push(near);
                        if scratch.results.len() > ef {
                            scratch.results.pop();
                        }
                    }
                }
            }
        }
    }

    /// The diversity heuristic: from `candidates` sorted nearest first, keep each one that is
    /// closer to the base than to every one kept before it, up to `max`.
    fn select(&self, candidates: &[Near], max: usize, kept: &mut Vec<Near>) {
        kept.clear();
        if candidates.len() <= max {
            kept.extend_from_slice(candidates);
            return;
        }
        for c in candidates {
            if kept.len() >= max {
                break;
            }
            let v = self.vectors.get(c.node);
            if kept.iter().all(|k| self.dist(v, k.node) >= c.distance) {
                kept.push(*c);
            }
        }
    }

    /// Adds `node` to `target`'s list on `layer`, pruning the list with the heuristic when it
    /// is full.
    fn link(&self, target: Node, node: Node, distance: f32, layer: usize, buf: &mut LinkBuf) {
        let _lock = self.locks[target as usize].lock();
        let list = self.list(target, layer);
        let Some((len, slots)) = list.split_first() else {
            return;
        };
        let count = (len.load(Mem::Acquire) as usize).min(slots.len());
        if slots[..count].iter().any(|s| s.load(Mem::Relaxed) == node) {
            return;
        }
        if count < slots.len() {
            slots[count].store(node, Mem::Release);
            len.store(count as u32 + 1, Mem::Release);
            return;
        }
        let base = self.vectors.get(target);
        buf.candidates.clear();
        buf.candidates.push(Near { distance, node });
        for slot in &slots[..count] {
            let n = slot.load(Mem::Relaxed);
            buf.candidates.push(Near {
                distance: self.dist(base, n),
                node: n,
            });
        }
        buf.candidates.sort_unstable();
        self.select(&buf.candidates, slots.len(), &mut buf.kept);
        self.write_list(target, layer, &buf.kept);
    }

    /// Inserts a vector under the caller's id `label`. Panics when the graph is full (the
    /// owner checks [`HnswGraph::len`] against [`HnswGraph::capacity`] and grows it first).
    pub fn insert(&self, label: usize, vector: &[f32]) {
        let node = self.reserved.fetch_add(1, Mem::AcqRel);
        assert!(node < self.capacity, "HNSW graph full ({})", self.capacity);
        let level = self.level_of(node);
        // SAFETY: this thread reserved `node`; nobody can reach it before it is linked below.
        unsafe { self.vectors.write(node as Node, vector) };
        self.labels[node].store(label, Mem::Release);
        self.levels[node].store(level as u8, Mem::Release);
        if level > 0 {
            let slots = (0..level * (self.m_upper + 1))
                .map(|_| AtomicU32::new(0))
                .collect();
            let _ = self.upper[node].set(slots);
        }
        let node = node as Node;
        let _own = self.locks[node as usize].lock();
        let raising = self.entry_change.lock();
        let Some((entry, top)) = self.entry() else {
            self.set_entry(node, level);
            return;
        };
        // Only an insert that raises the top layer keeps other raisers out.
        let raising = (level > top).then_some(raising);
        let vector = self.vectors.get(node);
        let mut start = self.descend(vector, entry, top, level);
        let mut scratch = self.take_scratch();
        let mut buf = LinkBuf::default();
        for layer in (0..=level.min(top)).rev() {
            self.search_layer(
                vector,
                start,
                self.params.ef_construction,
                layer,
                &mut scratch,
                None,
            );
            buf.found.clear();
            buf.found.extend(scratch.results.drain());
            buf.found.sort_unstable();
            // The nearest candidate is usually itself in the graph already; skip the node.
            buf.found.retain(|n| n.node != node);
            if let Some(nearest) = buf.found.first() {
                start = *nearest;
            }
            let mut kept = std::mem::take(&mut buf.kept);
            self.select(&buf.found, self.m_upper, &mut kept);
            self.write_list(node, layer, &kept);
            for neighbour in &kept {
                self.link(neighbour.node, node, neighbour.distance, layer, &mut buf);
            }
            buf.kept = kept;
        }
        self.return_scratch(scratch);
        if raising.is_some() {
            self.set_entry(node, level);
        }
    }

    /// The `k` nearest nodes to `query` that `accept` lets through, nearest first, searching
    /// layer 0 with breadth `ef` (at least `k`).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: Option<&dyn Fn(Node) -> bool>,
    ) -> Vec<Near> {
        let Some((entry, top)) = self.entry() else {
            return Vec::new();
        };
        let start = self.descend(query, entry, top, 0);
        let mut scratch = self.take_scratch();
        self.search_layer(query, start, ef.max(k), 0, &mut scratch, accept);
        let mut found = Vec::with_capacity(scratch.results.len());
        found.extend(scratch.results.drain());
        self.return_scratch(scratch);
        found.sort_unstable();
        found.truncate(k);
        found
    }
}

/// Buffers one insert reuses for every layer and link.
#[derive(Default)]
struct LinkBuf {
    found: Vec<Near>,
    kept: Vec<Near>,
    candidates: Vec<Near>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use grape_client::Metric;

    fn points(n: usize, dimension: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed.max(1);
        (0..n)
            .map(|_| {
                (0..dimension)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state % 10_000) as f32 / 10_000.0
                    })
                    .collect()
            })
            .collect()
    }

    fn exact(vectors: &[Vec<f32>], query: &[f32], k: usize) -> Vec<usize> {
        let d = GraphDistance::new(Metric::L2);
        let mut all: Vec<(f32, usize)> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (d.distance(query, v), i))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        all.into_iter().take(k).map(|(_, i)| i).collect()
    }

    fn graph(capacity: usize, dimension: usize) -> HnswGraph {
        HnswGraph::new(
            dimension,
            GraphDistance::new(Metric::L2),
            GraphParams {
                m: 8,
                ef_construction: 64,
            },
            capacity,
        )
    }

    fn recall(g: &HnswGraph, vectors: &[Vec<f32>], queries: &[Vec<f32>], ef: usize) -> f64 {
        let mut hits = 0;
        for q in queries {
            let want = exact(vectors, q, 10);
            let got = g.search(q, 10, ef, None);
            hits += got
                .iter()
                .filter(|n| want.contains(&g.label(n.node)))
                .count();
        }
        hits as f64 / (10 * queries.len()) as f64
    }

    #[test]
    fn an_empty_graph_finds_nothing_and_one_node_finds_itself() {
        let g = graph(4, 3);
        assert!(g.search(&[0.0, 0.0, 0.0], 5, 10, None).is_empty());
        g.insert(77, &[1.0, 2.0, 3.0]);
        let found = g.search(&[0.0, 0.0, 0.0], 5, 10, None);
        assert_eq!(found.len(), 1);
        assert_eq!(g.label(found[0].node), 77);
        assert_eq!(found[0].distance, 14.0);
    }

    #[test]
    fn search_matches_brute_force_closely() {
        let vectors = points(3000, 16, 7);
        let g = graph(3000, 16);
        for (i, v) in vectors.iter().enumerate() {
            g.insert(i, v);
        }
        let queries = points(50, 16, 99);
        let r = recall(&g, &vectors, &queries, 100);
        assert!(r >= 0.95, "recall@10 {r}");
        // Results come nearest first, each with its true distance.
        let q = &queries[0];
        let found = g.search(q, 10, 100, None);
        assert!(found.windows(2).all(|w| w[0].distance <= w[1].distance));
        let d = GraphDistance::new(Metric::L2);
        for n in &found {
            assert_eq!(n.distance, d.distance(q, &vectors[g.label(n.node)]));
        }
    }

    #[test]
    fn lists_stay_within_their_size_and_never_point_at_themselves() {
        let vectors = points(2000, 8, 3);
        let g = graph(2000, 8);
        for (i, v) in vectors.iter().enumerate() {
            g.insert(i, v);
        }
        for node in 0..2000u32 {
            let level = g.levels[node as usize].load(Mem::Relaxed) as usize;
            for layer in 0..=level {
                let list = g.list(node, layer);
                let len = list[0].load(Mem::Relaxed) as usize;
                assert!(len < list.len());
                assert!(len > 0, "node {node} unlinked on layer {layer}");
                for slot in &list[1..=len] {
                    let n = slot.load(Mem::Relaxed);
                    assert_ne!(n, node);
                    assert!(g.levels[n as usize].load(Mem::Relaxed) as usize >= layer);
                }
            }
        }
    }

    #[test]
    fn concurrent_inserts_and_searches_build_a_good_graph() {
        let vectors = points(4000, 16, 11);
        let g = graph(4000, 16);
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Mem::Relaxed);
                        if i >= vectors.len() {
                            break;
                        }
                        g.insert(i, &vectors[i]);
                        if i.is_multiple_of(50) {
                            // Searching while others insert sees only whole nodes.
                            for n in g.search(&vectors[i], 5, 32, None) {
                                assert!(g.label(n.node) < vectors.len());
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(g.len(), 4000);
        let queries = points(50, 16, 5);
        let r = recall(&g, &vectors, &queries, 100);
        assert!(r >= 0.95, "recall@10 {r}");
    }

    #[test]
    fn a_filter_keeps_results_to_accepted_nodes() {
        let vectors = points(2000, 8, 21);
        let g = graph(2000, 8);
        for (i, v) in vectors.iter().enumerate() {
            g.insert(i, v);
        }
        let even = |n: Node| g.label(n).is_multiple_of(2);
        let found = g.search(&vectors[101], 10, 64, Some(&even));
        assert_eq!(found.len(), 10);
        assert!(found.iter().all(|n| g.label(n.node).is_multiple_of(2)));
    }

    #[test]
    fn a_grown_graph_answers_like_the_original_and_takes_more() {
        let vectors = points(1500, 8, 17);
        let g = graph(1000, 8);
        for (i, v) in vectors[..1000].iter().enumerate() {
            g.insert(i, v);
        }
        let bigger = g.grown(1500);
        for q in &vectors[..20] {
            assert_eq!(g.search(q, 10, 50, None), bigger.search(q, 10, 50, None));
        }
        for (i, v) in vectors.iter().enumerate().skip(1000) {
            bigger.insert(i, v);
        }
        let queries = points(30, 8, 8);
        let r = recall(&bigger, &vectors, &queries, 100);
        assert!(r >= 0.95, "recall@10 {r}");
    }
}
