//! The exporting side of a backup, on the node that holds the chosen replica of a shard.
//!
//! When that replica applies the backup's fence entry (see [`crate::cluster::raft::shard_sm`]),
//! [`Exports::begin`] fixes a consistent view of its documents before the next entry is
//! applied, and a thread streams the view into a small bounded queue of chunks. The backup's
//! coordinator pulls the chunks in order ([`Exports::next`], here or over the
//! `/internal/backup-chunk` call); the view is released when the last chunk is taken, when the
//! coordinator gives up, or after [`IDLE`] without a pull.
//!
//! ```text
//!   fence applied ─> begin: view fixed ─> thread: records ─> [chunk queue, 4 x 1 MiB] ─> next(seq)
//! ```

use crate::cluster::raft::ids::GroupId;
use crate::error::{Error, ErrorCode, Result};
use crate::shard::Shard;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// Bytes per chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// An export nobody pulled for this long is dropped (its coordinator died or gave up).
const IDLE: Duration = Duration::from_secs(600);

/// How long a pull waits for the next chunk before asking the caller to retry.
const PULL_WAIT: Duration = Duration::from_secs(20);

/// How long a pull waits for an export that has not begun (the replica has not applied the
/// fence yet).
const BEGIN_WAIT: Duration = Duration::from_secs(3);

/// One chunk of an exported shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportChunk {
    /// Position of the chunk, from 0.
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Set on the last chunk (which may carry no data).
    pub end: Option<ExportEnd>,
}

/// What the exporter counted, with the last chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportEnd {
    pub documents: u64,
    /// Order-independent sum of the documents' hashes (as `/admin/checksum`).
    pub checksum: u64,
}

enum Piece {
    Data(Vec<u8>),
    End(ExportEnd),
    Failed(String),
}

struct Export {
    stream: Mutex<Stream>,
    touched: Mutex<Instant>,
}

struct Stream {
    pieces: Receiver<Piece>,
    /// The chunk `next` hands out next.
    next_seq: u64,
    /// The last chunk handed out, sent again when its pull is retried.
    last: Option<ExportChunk>,
}

/// The exports this node runs, by backup and group.
#[derive(Default)]
pub struct Exports {
    running: Mutex<HashMap<(String, GroupId), Arc<Export>>>,
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Exports({} running)", self.running.lock().len())
    }
}

/// Sends what is written as chunks of [`CHUNK_BYTES`].
struct ChunkWriter {
    buffer: Vec<u8>,
    out: SyncSender<Piece>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.out.send(Piece::Data(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the backup stopped pulling this export",
            )
        })
    }
}

impl Exports {
    /// Starts exporting `shard` for `backup`: returns once the copy's instant is fixed, so
    /// that the caller (applying the fence) may apply the next entries. Blocking.
    pub fn begin(&self, backup: &str, group: &str, shard: Arc<Shard>) {
        let (out, pieces) = sync_channel::<Piece>(4);
        let export = Arc::new(Export {
            stream: Mutex::new(Stream {
                pieces,
                next_seq: 0,
                last: None,
            }),
            touched: Mutex::new(Instant::now()),
        });
        let key = (backup.to_string(), group.to_string());
        if self.running.lock().insert(key, export).is_some() {
            tracing::warn!(%backup, %group, "a fence applied twice; exporting again");
        }
        let (fixed_tx, fixed) = std::sync::mpsc::channel::<()>();
        let (backup, group) = (backup.to_string(), group.to_string());
        let spawned = std::thread::Builder::new()
            .name("grape-export".into())
            .spawn(move || {
                let mut writer = ChunkWriter {
                    buffer: Vec::with_capacity(CHUNK_BYTES),
                    out: out.clone(),
                };
                let exported = shard
                    .export_into(&mut writer, &mut || {
                        let _ = fixed_tx.send(());
                    })
                    .and_then(|end| {
                        writer.flush().map_err(|e| {
                            Error::unavailable(ErrorCode::Unavailable, e.to_string())
                        })?;
                        Ok(end)
                    });
                let piece = match exported {
                    Ok((documents, checksum)) => Piece::End(ExportEnd {
                        documents,
                        checksum,
                    }),
                    Err(e) => {
                        tracing::warn!(%backup, %group, error = %e, "exporting a shard failed");
                        Piece::Failed(e.to_string())
                    }
                };
                let _ = out.send(piece);
            });
        match spawned {
            // Until the view is fixed (microseconds), or the thread ended without one.
            Ok(_) => {
                let _ = fixed.recv();
            }
            Err(e) => tracing::error!(error = %e, "cannot start an export thread"),
        }
    }

    /// The chunk `seq` of the export of `group` for `backup`: the next one, or the last one
    /// again (a retried pull). Blocking: waits for the export to begin and for data.
    pub fn next(&self, backup: &str, group: &str, seq: u64) -> Result<ExportChunk> {
        let key = (backup.to_string(), group.to_string());
        let waited = Instant::now();
        let export = loop {
            if let Some(export) = self.running.lock().get(&key) {
                break Arc::clone(export);
            }
            if waited.elapsed() > BEGIN_WAIT {
                return Err(Error::not_found(
                    ErrorCode::NotFound,
                    format!("no export of {group} for backup {backup} on this node"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        *export.touched.lock() = Instant::now();
        let mut stream = export.stream.lock();
        if let Some(last) = &stream.last
            && last.seq == seq
        {
            return Ok(last.clone());
        }
        if seq != stream.next_seq {
            return Err(Error::invalid(
                ErrorCode::InvalidRequest,
                format!(
                    "chunk {seq} of {group} asked for; the next one is {}",
                    stream.next_seq
                ),
            ));
        }
        let chunk = match stream.pieces.recv_timeout(PULL_WAIT) {
            Ok(Piece::Data(data)) => ExportChunk {
                seq,
                data,
                end: None,
            },
            Ok(Piece::End(end)) => ExportChunk {
                seq,
                data: Vec::new(),
                end: Some(end),
            },
            Ok(Piece::Failed(message)) => {
                drop(stream);
                self.running.lock().remove(&key);
                return Err(Error::unavailable(ErrorCode::StorageError, message));
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(Error::unavailable(
                    ErrorCode::Unavailable,
                    format!("the export of {group} has no data yet; ask again"),
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                drop(stream);
                self.running.lock().remove(&key);
                return Err(Error::unavailable(
                    ErrorCode::StorageError,
                    format!("the export of {group} ended early"),
                ));
            }
        };
        stream.next_seq = seq + 1;
        stream.last = Some(chunk.clone());
        if chunk.end.is_some() {
            // Kept for a retried pull of the last chunk until the sweep; the view is released
            // already (the thread ended).
            *export.touched.lock() = Instant::now() - IDLE + Duration::from_secs(60);
        }
        Ok(chunk)
    }

    /// Drops every export of `backup` (it ended or failed): their threads stop at their next
    /// write and release their views.
    pub fn forget(&self, backup: &str) {
        self.running.lock().retain(|(b, _), _| b != backup);
    }

    /// Drops exports nobody pulled for [`IDLE`], except those of backups still running
    /// (`running`): a large backup copies its shards one after another, for hours.
    pub fn sweep(&self, running: &std::collections::BTreeSet<String>) {
        self.running.lock().retain(|(backup, _), export| {
            running.contains(backup) || export.touched.lock().elapsed() < IDLE
        });
    }

    /// How many exports are running (for tests and status).
    pub fn len(&self) -> usize {
        self.running.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pauses new writes while a backup places its fences, so that the cut is one instant for
/// every shard: a write acknowledged before the pause is before every fence; a write that
/// waited is after every fence. Writes in flight when the pause begins finish first.
pub struct WriteGate {
    gate: Arc<tokio::sync::RwLock<()>>,
    held: Mutex<Option<(String, u64, tokio::sync::OwnedRwLockWriteGuard<()>)>>,
    holds: std::sync::atomic::AtomicU64,
}

impl Default for WriteGate {
    fn default() -> Self {
        WriteGate {
            gate: Arc::new(tokio::sync::RwLock::new(())),
            held: Mutex::new(None),
            holds: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for WriteGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteGate(held: {})", self.held.lock().is_some())
    }
}

/// How long a write waits at the gate before it is refused (the pause outlived its lease
/// by far: a bug).
const PASS_WAIT: Duration = Duration::from_secs(30);

impl WriteGate {
    /// Waits while a backup pauses writes; the write holds the permit until it is committed.
    pub async fn pass(&self) -> Result<tokio::sync::OwnedRwLockReadGuard<()>> {
        tokio::time::timeout(PASS_WAIT, Arc::clone(&self.gate).read_owned())
            .await
            .map_err(|_| {
                Error::unavailable(
                    ErrorCode::Unavailable,
                    "writes are paused for a backup's cut; retry",
                )
            })
    }

    /// Pauses writes for `backup`, once writes in flight have finished (at most `wait`), for
    /// at most `lease` unless released earlier.
    pub async fn hold(
        self: &Arc<Self>,
        backup: &str,
        wait: Duration,
        lease: Duration,
    ) -> Result<()> {
        if self
            .held
            .lock()
            .as_ref()
            .is_some_and(|(held, _, _)| held == backup)
        {
            return Ok(());
        }
        let guard = tokio::time::timeout(wait, Arc::clone(&self.gate).write_owned())
            .await
            .map_err(|_| {
                Error::unavailable(
                    ErrorCode::Unavailable,
                    format!(
                        "writes in flight did not finish within {} ms; the backup's cut was not taken",
                        wait.as_millis()
                    ),
                )
            })?;
        let number = self
            .holds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.held.lock() = Some((backup.to_string(), number, guard));
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            let mut held = gate.held.lock();
            if held.as_ref().is_some_and(|(_, n, _)| *n == number) {
                tracing::warn!("a backup's write pause outlived its lease; writes resume");
                *held = None;
            }
        });
        Ok(())
    }

    /// Ends the pause of `backup`; answers whether it was still held (false: its lease ran
    /// out, and writes resumed before the backup's cut was complete).
    pub fn release(&self, backup: &str) -> bool {
        let mut held = self.held.lock();
        if held.as_ref().is_some_and(|(b, _, _)| b == backup) {
            *held = None;
            true
        } else {
            false
        }
    }
}
