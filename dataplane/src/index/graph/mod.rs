//! Grape's own HNSW graph (Malkov & Yashunin), laid out for the CPU: one slab holding each
//! node's layer-0 list (`2m` fixed `u32` slots) beside its vector, cache-line aligned and
//! backed by huge pages; upper-layer lists per node; the unvisited neighbours of a node
//! prefetched together before their distances are computed; a visited set stamped with a
//! generation number and reused between searches, and no allocation on the search path once a
//! thread's scratch space exists. Neighbours are chosen with the usual diversity heuristic
//! ("keep a candidate only if it is closer to the new node than to every neighbour already
//! kept").
//!
//! Concurrency: any number of threads search and insert at once. Capacity is fixed at creation
//! (the index's maintainer grows a full graph with [`HnswGraph::grown`], never while an insert
//! runs). An inserter reserves a node, writes
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

mod memory;
mod persist;

use super::quantize::{Space, as_floats};
use memory::{Scratch, Slab};
use parking_lot::Mutex;
use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
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
    /// What nodes hold (full vectors or codes) and how two compare.
    space: Space,
    /// Components of the vectors.
    dimension: usize,
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
    /// Inserts running now; [`HnswGraph::grown`] requires none.
    inserting: AtomicUsize,
}

/// Counts an insert out when it ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Mem::AcqRel);
    }
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
    pub fn new(dimension: usize, space: Space, params: GraphParams, capacity: usize) -> HnswGraph {
        let m = params.m.clamp(2, 255);
        let m_zero = 2 * m;
        let code_words = space.words(dimension);
        HnswGraph {
            space,
            dimension,
            params,
            m_upper: m,
            level_scale: 1.0 / (m as f64).ln(),
            capacity,
            reserved: AtomicUsize::new(0),
            vectors: Slab::new(capacity, m_zero + 1, code_words),
            labels: (0..capacity).map(|_| AtomicUsize::new(0)).collect(),
            levels: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
            upper: (0..capacity).map(|_| OnceLock::new()).collect(),
            locks: (0..capacity).map(|_| Mutex::new(())).collect(),
            entry: AtomicU64::new(EMPTY),
            entry_change: Mutex::new(()),
            scratch: Mutex::new(Vec::new()),
            inserting: AtomicUsize::new(0),
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

    /// A copy of this graph with room for `capacity` nodes. No insert may run meanwhile (a
    /// half-inserted node would be copied half-written): only the index's single maintainer
    /// calls this, between its insert batches, and it panics if an insert is in flight.
    pub(super) fn grown(&self, capacity: usize) -> HnswGraph {
        assert_eq!(
            self.inserting.load(Mem::Acquire),
            0,
            "an HNSW graph was grown while inserts ran"
        );
        let capacity = capacity.max(self.capacity);
        let grown = HnswGraph::new(self.dimension, self.space.clone(), self.params, capacity);
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
    fn dist(&self, a: &[u32], node: Node) -> f32 {
        self.space.distance(a, self.vectors.get(node))
    }

    /// A prepared vector as this graph compares it: its code.
    fn code_of<'a>(&self, vector: &'a [f32]) -> Cow<'a, [u32]> {
        match self.space {
            // SAFETY: `f32` and `u32` have the same size and alignment.
            Space::Float(_) => Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(vector.as_ptr() as *const u32, vector.len())
            }),
            _ => Cow::Owned(self.space.encoded(vector)),
        }
    }

    /// What nodes hold and how they compare.
    pub fn space(&self) -> &Space {
        &self.space
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
    fn descend(&self, query: &[u32], from: Node, top: usize, stop: usize) -> Near {
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
        query: &[u32],
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

    /// Inserts a vector under the caller's id `label` and answers its node. Panics when the
    /// graph is full (the owner checks [`HnswGraph::len`] against [`HnswGraph::capacity`] and
    /// grows it first).
    pub fn insert(&self, label: usize, vector: &[f32]) -> Node {
        self.inserting.fetch_add(1, Mem::AcqRel);
        let _done = InFlight(&self.inserting);
        self.add(label, vector)
    }

    /// The vector of a node that an insert has returned, when nodes hold full vectors
    /// ([`Space::is_float`]; otherwise its code read as floats, meaningless).
    #[inline]
    pub fn vector(&self, node: Node) -> &[f32] {
        debug_assert!(self.space.is_float());
        as_floats(self.vectors.get(node))
    }

    /// The code a node holds.
    #[inline]
    pub fn code(&self, node: Node) -> &[u32] {
        self.vectors.get(node)
    }

    fn add(&self, label: usize, vector: &[f32]) -> Node {
        assert_eq!(vector.len(), self.dimension);
        let code = self.code_of(vector);
        let node = self.reserved.fetch_add(1, Mem::AcqRel);
        assert!(node < self.capacity, "HNSW graph full ({})", self.capacity);
        let level = self.level_of(node);
        // SAFETY: this thread reserved `node`; nobody can reach it before it is linked below.
        unsafe { self.vectors.write(node as Node, &code) };
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
            return node;
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
        node
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
        let query = self.code_of(query);
        let start = self.descend(&query, entry, top, 0);
        let mut scratch = self.take_scratch();
        self.search_layer(&query, start, ef.max(k), 0, &mut scratch, accept);
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
mod tests;
