//! The free-disk reserve: a node whose data volume has less free space than
//! `database.min_free_disk_mb` refuses new writes to the shards it holds (507
//! `insufficient_storage`), long before RocksDB would fail a write for want of space (which
//! would stop the groups writing on it until a restart). Reads and deletes go on; writes
//! resume by themselves once free space is back above the reserve plus 10%.
//!
//! Every node watches its own volume ([`DiskReserve::refresh`], each second and before each
//! write it leads) and records in the meta group when it crosses the line, so that the leader
//! of a shard refuses a write any of the shard's replicas could not store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One node's view of its data volume.
#[derive(Debug)]
pub struct DiskReserve {
    path: PathBuf,
    /// Bytes to keep free; 0: no reserve.
    reserve: u64,
    low: AtomicBool,
    free: AtomicU64,
}

impl DiskReserve {
    pub fn new(path: PathBuf, reserve_mb: u64) -> DiskReserve {
        let reserve = DiskReserve {
            path,
            reserve: reserve_mb.saturating_mul(1 << 20),
            low: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
        };
        reserve.refresh();
        reserve
    }

    /// Reads the volume's free space again; returns whether the node is below its reserve.
    /// Below the reserve it becomes low; it stops being low above the reserve plus 10%, so that
    /// a volume hovering at the line does not flap.
    pub fn refresh(&self) -> bool {
        if self.reserve == 0 {
            return false;
        }
        let Ok(fs) = nix::sys::statvfs::statvfs(&self.path) else {
            return self.is_low();
        };
        let free = fs.blocks_available().saturating_mul(fs.fragment_size());
        self.free.store(free, Ordering::Relaxed);
        let low = if self.is_low() {
            free < self.reserve.saturating_add(self.reserve / 10)
        } else {
            free < self.reserve
        };
        if low != self.low.swap(low, Ordering::Relaxed) {
            if low {
                tracing::warn!(
                    free_mb = free >> 20,
                    reserve_mb = self.reserve >> 20,
                    "the data volume is below its free-space reserve: new writes are refused until space is freed"
                );
            } else {
                tracing::info!(
                    free_mb = free >> 20,
                    "free space is back: writes are accepted"
                );
            }
        }
        low
    }

    /// Whether the node was below its reserve at the last [`DiskReserve::refresh`].
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Free bytes at the last refresh.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve
    }
}
