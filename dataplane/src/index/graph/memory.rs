//! The graph's memory: the slab of layer-0 lists beside their vectors (the only place this
//! module family writes through raw pointers, each write argued below), huge-page backing,
//! and the pooled per-search scratch space.

use super::{Near, Node};
use std::cell::UnsafeCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::AtomicU32;

/// Every node's layer-0 list and vector side by side, as hnswlib lays them out: expanding a
/// node reads the list right next to the vector its distance was computed from, so the list
/// is usually in cache already. One block per node, a whole number of cache lines:
///
/// ```text
///   | len | 2m neighbour ids | vector (code words, see `quantize`) | padding |
/// ```
pub(super) struct Slab {
    cells: Box<[UnsafeCell<u32>]>,
    /// Words before node 0, so that every block starts on a cache line.
    base: usize,
    /// Words per node.
    stride: usize,
    /// Words of the list (length slot included).
    list_words: usize,
    /// Words of each node's vector code.
    pub(super) code_words: usize,
}

// SAFETY: a node's vector is written exactly once, by the thread that reserved the node,
// before any other thread can learn the node's id (ids are published through atomic stores
// with release ordering and read with acquire ordering); afterwards it is only read. List
// words are only ever accessed atomically.
unsafe impl Sync for Slab {}

const LINE_WORDS: usize = 16;

impl Slab {
    pub(super) fn new(capacity: usize, list_words: usize, code_words: usize) -> Slab {
        let stride = (list_words + code_words).next_multiple_of(LINE_WORDS);
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
            code_words,
        }
    }

    #[inline]
    pub(super) fn block(&self, node: Node) -> &[UnsafeCell<u32>] {
        let start = self.base + node as usize * self.stride;
        &self.cells[start..start + self.stride]
    }

    /// # Safety
    /// Only the thread that reserved `node` may call this, once, before publishing `node`.
    pub(super) unsafe fn write(&self, node: Node, code: &[u32]) {
        assert_eq!(code.len(), self.code_words);
        let cells = &self.block(node)[self.list_words..self.list_words + self.code_words];
        // SAFETY: the range is in bounds (checked by the slice above) and nobody reads or
        // writes it concurrently (the caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), cells[0].get(), self.code_words);
        }
    }

    /// The code of a published node.
    #[inline]
    pub(super) fn get(&self, node: Node) -> &[u32] {
        let cells = &self.block(node)[self.list_words..self.list_words + self.code_words];
        // SAFETY: the words were written before the node was published and never written
        // again, so shared reads are sound.
        unsafe { std::slice::from_raw_parts(cells.as_ptr() as *const u32, self.code_words) }
    }

    /// A node's layer-0 list: the length, then the neighbour slots.
    #[inline]
    pub(super) fn list(&self, node: Node) -> &[AtomicU32] {
        let cells = &self.block(node)[..self.list_words];
        // SAFETY: `AtomicU32` has the layout of `u32`, and list words are only ever accessed
        // through atomics.
        unsafe { std::slice::from_raw_parts(cells.as_ptr() as *const AtomicU32, self.list_words) }
    }

    /// Asks the CPU to start loading a node's block (list and vector; the first
    /// `PREFETCH_LINES` cache lines, the hardware streams the rest of a longer one).
    #[inline]
    pub(super) fn prefetch(&self, node: Node) {
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
pub(super) struct Scratch {
    /// `visited[node] == stamp` marks a node seen by the current search.
    visited: Vec<u32>,
    stamp: u32,
    pub(super) candidates: BinaryHeap<Reverse<Near>>,
    pub(super) results: BinaryHeap<Near>,
    /// Unvisited neighbours of the node being expanded.
    pub(super) fresh: Vec<Node>,
}

impl Scratch {
    pub(super) fn new(capacity: usize) -> Scratch {
        Scratch {
            visited: vec![0; capacity],
            stamp: 0,
            candidates: BinaryHeap::new(),
            results: BinaryHeap::new(),
            fresh: Vec::new(),
        }
    }

    /// Starts a new search: nothing visited, empty heaps.
    pub(super) fn reset(&mut self, capacity: usize) {
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
    pub(super) fn visit(&mut self, node: Node) -> bool {
        let mark = &mut self.visited[node as usize];
        if *mark == self.stamp {
            false
        } else {
            *mark = self.stamp;
            true
        }
    }
}
