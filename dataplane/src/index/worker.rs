//! Background graph maintenance: a small thread pool that moves pending vectors into their
//! HNSW graphs and rebuilds graphs, one job per index at a time, so writes are acknowledged
//! without waiting for graph insertion.

use super::VectorIndex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Vectors inserted per maintenance step, between which the job re-checks for other work.
const STEP: usize = 512;

/// The pool that maintains every index of a node.
pub struct IndexWorker {
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for IndexWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexWorker")
            .field("threads", &self.pool.current_num_threads())
            .finish()
    }
}

/// Per-index scheduling state, owned by whoever owns the index.
#[derive(Debug, Default)]
pub struct Maintenance {
    /// A job for this index is queued or running.
    scheduled: AtomicBool,
    /// The index was dropped: stop maintaining it.
    closed: AtomicBool,
}

impl Maintenance {
    /// Stops future maintenance of this index (its collection was dropped).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl IndexWorker {
    /// A pool of `threads` threads (0: one per core).
    pub fn new(threads: usize) -> std::io::Result<IndexWorker> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("grape-index-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(IndexWorker { pool })
    }

    /// Makes sure a job will bring `index` up to date.
    pub fn schedule(&self, index: &Arc<VectorIndex>, state: &Arc<Maintenance>) {
        if state.closed.load(Ordering::Acquire) || state.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let index = Arc::clone(index);
        let state = Arc::clone(state);
        self.pool.spawn(move || {
            loop {
                while !state.closed.load(Ordering::Acquire) {
                    if index.maintain(STEP) == 0 {
                        break;
                    }
                }
                state.scheduled.store(false, Ordering::Release);
                // Work that arrived after the last step but before the flag cleared would
                // otherwise wait for the next write.
                if state.closed.load(Ordering::Acquire)
                    || !index.needs_maintenance()
                    || state.scheduled.swap(true, Ordering::AcqRel)
                {
                    break;
                }
            }
        });
    }
}
