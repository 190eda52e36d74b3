//! Background graph maintenance: a small thread pool that moves pending vectors into their
//! HNSW graphs and rebuilds graphs, one job per index at a time, so writes are acknowledged
//! without waiting for graph insertion.

use super::VectorIndex;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

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
    /// Work on the index panicked: what it said. The index is no longer trusted; nothing
    /// maintains or searches it until it is rebuilt from storage (a restart or a snapshot).
    failed: OnceLock<String>,
}

impl Maintenance {
    /// Stops future maintenance of this index (its collection was dropped).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Marks the index failed (the first reason is kept) and stops maintaining it.
    pub fn fail(&self, reason: String) {
        if self.failed.set(reason).is_ok() {
            self.close();
        }
    }

    /// Whether [`Maintenance::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Why the index failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }
}

/// Runs `work`, turning a panic into an error carrying its message: a bug in index code
/// must cost one shard, not the process.
pub fn contain<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        format!("index work panicked: {message}")
    })
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
                    // A panic here would abort the process (rayon's default for spawned jobs).
                    match contain(|| index.maintain(STEP)) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(reason) => {
                            tracing::error!(%reason, "graph maintenance failed; the shard is marked failed");
                            state.fail(reason);
                            return;
                        }
                    }
                }
                state.scheduled.store(false, Ordering::Release);
                // Work that arrived after the last step but before the flag cleared would
                // otherwise wait for the next write. While a graph is being saved nothing can
                // be maintained: the saver schedules a job when it is done.
                if state.closed.load(Ordering::Acquire)
                    || !index.needs_maintenance()
                    || index.maintainer_busy()
                    || state.scheduled.swap(true, Ordering::AcqRel)
                {
                    break;
                }
            }
        });
    }
}
