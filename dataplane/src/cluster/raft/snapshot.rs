//! Snapshots as files, streamed between nodes in bounded chunks.
//!
//! A shard's snapshot can be gigabytes, so it never sits in memory whole: it is built record by
//! record into a temporary file (fsynced, then renamed into place), sent in chunks of
//! [`CHUNK_BYTES`] that the receiver appends to a file of its own (checked for order, length and
//! an xxh3 digest of the whole), and installed from that file in batches.
//!
//! A kept snapshot file is the data followed by a trailer: the snapshot's meta (MessagePack),
//! the xxh3 digest of the data (u64 LE), the meta's length (u32 LE) and [`MAGIC`]. Received
//! files take the same form, so installing one keeps it by renaming it. A sender checks the
//! digest as it reads the file, so a file damaged at rest is never sent.
//!
//! ```text
//!   leader: build ─> X.snap.tmp ─fsync, rename─> X.snap ─chunks─┐
//!   follower:   incoming/X.<transfer>.part <─append, check─────┘
//!                  └─finish: digest ok, trailer, fsync─> install (batches) ─rename─> X.snap
//! ```

use super::ids::{GroupId, NodeId};
use super::types::{SnapshotMeta, decode, encode};
use crate::error::{Error, ErrorCode, Result};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use xxhash_rust::xxh3::Xxh3;

/// A transfer without a chunk for this long is dropped (its sender died or gave up).
const IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// Bytes of snapshot data per node-to-node call.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Ends every snapshot file, after its meta.
const MAGIC: &[u8; 8] = b"GRAPESNP";

/// A snapshot's data, as openraft hands it around: in memory (the meta group's, which is
/// small) or a file (a shard's). Cloning shares it.
#[derive(Clone)]
pub struct SnapshotData(Source);

#[derive(Clone)]
enum Source {
    Bytes(Arc<Vec<u8>>),
    File(Arc<SnapshotFile>),
}

struct SnapshotFile {
    file: File,
    path: PathBuf,
    /// Bytes of data (the trailer follows them).
    len: u64,
    /// xxh3 of the data, as recorded when the file was written.
    digest: u64,
    /// Deleted when dropped: a received snapshot that was never installed.
    discard: AtomicBool,
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.discard.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::Bytes(bytes) => write!(f, "SnapshotData({} bytes in memory)", bytes.len()),
            Source::File(file) => write!(
                f,
                "SnapshotData({} bytes in {})",
                file.len,
                file.path.display()
            ),
        }
    }
}

impl SnapshotData {
    pub fn from_bytes(bytes: Vec<u8>) -> SnapshotData {
        SnapshotData(Source::Bytes(Arc::new(bytes)))
    }

    /// Bytes of data.
    pub fn len(&self) -> u64 {
        match &self.0 {
            Source::Bytes(bytes) => bytes.len() as u64,
            Source::File(file) => file.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The digest recorded with a file's data (none for data in memory).
    pub fn recorded_digest(&self) -> Option<u64> {
        match &self.0 {
            Source::Bytes(_) => None,
            Source::File(file) => Some(file.digest),
        }
    }

    /// Deletes a kept file found damaged, so that the next snapshot is built afresh.
    pub fn remove_file(&self) {
        if let Source::File(file) = &self.0 {
            let _ = std::fs::remove_file(&file.path);
        }
    }

    /// Up to `max` bytes from `offset` (blocking).
    pub fn read_at(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        let end = self.len().min(offset.saturating_add(max as u64));
        let len = end.saturating_sub(offset) as usize;
        match &self.0 {
            Source::Bytes(bytes) => Ok(bytes[offset as usize..offset as usize + len].to_vec()),
            Source::File(file) => {
                let mut buffer = vec![0; len];
                file.file.read_exact_at(&mut buffer, offset)?;
                Ok(buffer)
            }
        }
    }

    /// The data as a stream (blocking reads).
    pub fn reader(&self) -> Box<dyn Read + Send> {
        match &self.0 {
            Source::Bytes(bytes) => Box::new(io::Cursor::new(Arc::clone(bytes).to_vec())),
            Source::File(file) => Box::new(io::BufReader::with_capacity(
                256 * 1024,
                FileReader {
                    file: Arc::clone(file),
                    at: 0,
                },
            )),
        }
    }

    /// The whole data in memory (for the meta group's small snapshots).
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        self.read_at(0, self.len() as usize)
    }

    /// Keeps this snapshot as the file at `path` with `meta` (blocking): a received file is
    /// renamed there, data in memory is written there.
    pub fn keep(&self, path: &Path, meta: &SnapshotMeta) -> io::Result<()> {
        match &self.0 {
            Source::File(file) if file.path == path => Ok(()),
            Source::File(file) => {
                std::fs::rename(&file.path, path)?;
                file.discard.store(false, Ordering::Relaxed);
                sync_dir(path)
            }
            Source::Bytes(bytes) => write_file(path, |out| {
                out.write_all(bytes)?;
                Ok(meta.clone())
            }),
        }
    }
}

struct FileReader {
    file: Arc<SnapshotFile>,
    at: u64,
}

impl Read for FileReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = self.file.len.saturating_sub(self.at);
        let want = (buffer.len() as u64).min(left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let read = self.file.file.read_at(&mut buffer[..want], self.at)?;
        self.at += read as u64;
        Ok(read)
    }
}

/// Writes a snapshot file beside `path` under a temporary name of its own: `data` writes the
/// data and answers the snapshot's meta, which the trailer records; the file is fsynced
/// (blocking). Answers the temporary file and the meta; [`replace`] puts it in place.
pub fn write_temporary(
    path: &Path,
    data: impl FnOnce(&mut dyn Write) -> io::Result<SnapshotMeta>,
) -> io::Result<(PathBuf, SnapshotMeta)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension(format!("{:016x}.tmp", rand::random::<u64>()));
    let file = File::create(&temporary)?;
    let mut out = Digesting {
        out: BufWriter::with_capacity(256 * 1024, file),
        digest: Xxh3::new(),
    };
    let written = data(&mut out).and_then(|meta| {
        let digest = out.digest.digest();
        let mut out = out.out;
        write_trailer(&mut out, &meta, digest)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(meta)
    });
    match written {
        Ok(meta) => Ok((temporary, meta)),
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            Err(e)
        }
    }
}

/// Renames `temporary` to `path` and makes the rename durable (blocking).
pub fn replace(temporary: &Path, path: &Path) -> io::Result<()> {
    std::fs::rename(temporary, path)?;
    sync_dir(path)
}

/// [`write_temporary`], then [`replace`].
pub fn write_file(
    path: &Path,
    data: impl FnOnce(&mut dyn Write) -> io::Result<SnapshotMeta>,
) -> io::Result<()> {
    let (temporary, _) = write_temporary(path, data)?;
    replace(&temporary, path)
}

/// Deletes what an earlier run left in the snapshot directory `dir`: temporary files of
/// interrupted builds, and half-received snapshots.
pub fn clean_dir(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let incoming = dir.join(INCOMING);
    if incoming.exists() {
        std::fs::remove_dir_all(&incoming)?;
    }
    Ok(())
}

/// The subdirectory of the snapshot directory where [`Incoming`] receives.
pub const INCOMING: &str = "incoming";

/// A writer that hashes what goes through it.
struct Digesting<W> {
    out: W,
    digest: Xxh3,
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buffer)?;
        self.digest.update(&buffer[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Bytes of the trailer after the meta.
const TAIL: usize = 8 + 4 + 8;

fn write_trailer(out: &mut dyn Write, meta: &SnapshotMeta, digest: u64) -> io::Result<()> {
    let meta = encode(meta);
    out.write_all(&meta)?;
    out.write_all(&digest.to_le_bytes())?;
    out.write_all(&(meta.len() as u32).to_le_bytes())?;
    out.write_all(MAGIC)
}

/// fsyncs the directory holding `path`, so that a rename into it survives a crash.
fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Opens a snapshot file written by [`write_file`] (or received whole): its meta and data.
/// `None` if there is no file; an error if it is not a whole snapshot file.
pub fn open_file(path: &Path) -> io::Result<Option<(SnapshotMeta, SnapshotData)>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (meta, len, digest) = read_trailer(&file, path)?;
    Ok(Some((
        meta,
        SnapshotData(Source::File(Arc::new(SnapshotFile {
            file,
            path: path.to_path_buf(),
            len,
            digest,
            discard: AtomicBool::new(false),
        }))),
    )))
}

/// The meta, the data's length and its recorded digest.
fn read_trailer(file: &File, path: &Path) -> io::Result<(SnapshotMeta, u64, u64)> {
    let corrupt = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a whole snapshot: {why}", path.display()),
        )
    };
    let size = file.metadata()?.len();
    let mut tail = [0u8; TAIL];
    if size < TAIL as u64 {
        return Err(corrupt("too short"));
    }
    file.read_exact_at(&mut tail, size - TAIL as u64)?;
    if &tail[12..] != MAGIC {
        return Err(corrupt("no trailer"));
    }
    let digest = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
    let meta_len = u64::from(u32::from_le_bytes(tail[8..12].try_into().expect("4 bytes")));
    let len = size
        .checked_sub(TAIL as u64 + meta_len)
        .ok_or_else(|| corrupt("meta longer than the file"))?;
    let mut meta = vec![0; meta_len as usize];
    file.read_exact_at(&mut meta, len)?;
    let meta = decode(&meta).map_err(|_| corrupt("unreadable meta"))?;
    Ok((meta, len, digest))
}

pub use crate::storage::file_stem;

/// Snapshots this node is receiving, one per group, each appended to a file under `dir`.
pub struct Incoming {
    dir: PathBuf,
    receiving: Mutex<HashMap<GroupId, Receiving>>,
}

struct Receiving {
    transfer: u64,
    /// When its last chunk arrived.
    last: std::time::Instant,
    path: PathBuf,
    file: File,
    len: u64,
    digest: Xxh3,
}

impl Receiving {
    fn discard(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How a sender proves it sent the whole snapshot, on its last chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Whole {
    pub len: u64,
    /// xxh3-64 of the data.
    pub digest: u64,
}

impl Incoming {
    /// Receives into the `incoming` directory of the snapshot directory `dir`, after
    /// [`clean_dir`].
    pub fn new(dir: &Path) -> io::Result<Incoming> {
        clean_dir(dir)?;
        let dir = dir.join(INCOMING);
        std::fs::create_dir_all(&dir)?;
        Ok(Incoming {
            dir,
            receiving: Mutex::new(HashMap::new()),
        })
    }

    /// Drops transfers without a chunk for [`IDLE`] (their sender died or gave up).
    pub fn sweep(&self) {
        self.receiving.lock().retain(|_, r| {
            let alive = r.last.elapsed() <= IDLE;
            if !alive {
                let _ = std::fs::remove_file(&r.path);
            }
            alive
        });
    }

    /// Drops the transfer of `group` in progress, if any (its data cannot be kept).
    pub fn discard(&self, group: &str) {
        if let Some(dropped) = self.receiving.lock().remove(group) {
            dropped.discard();
        }
    }

    /// Appends a chunk of transfer `transfer` of `group`'s snapshot at `offset` (blocking). A
    /// chunk at offset 0 starts the transfer over (dropping any other of the group); any other
    /// chunk must continue the group's current transfer exactly where it stands.
    pub fn chunk(&self, group: &str, transfer: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.sweep();
        let mut receiving = self.receiving.lock();
        if offset == 0 {
            if let Some(previous) = receiving.remove(group) {
                previous.discard();
            }
            let path = self
                .dir
                .join(format!("{}.{transfer:016x}.part", file_stem(group)));
            // Read back when installed.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(written)?;
            receiving.insert(
                group.to_string(),
                Receiving {
                    transfer,
                    last: std::time::Instant::now(),
                    path,
                    file,
                    len: 0,
                    digest: Xxh3::new(),
                },
            );
        }
        let current = match receiving.get_mut(group) {
            Some(current) if current.transfer == transfer && current.len == offset => current,
            Some(current) => {
                let (at, ours) = (current.len, current.transfer == transfer);
                return Err(Error::conflict(
                    ErrorCode::InvalidRequest,
                    if ours {
                        format!(
                            "snapshot chunk of {group} at offset {offset}, but {at} bytes have arrived"
                        )
                    } else {
                        format!(
                            "snapshot chunk of {group} for a transfer this node is not receiving"
                        )
                    },
                ));
            }
            None => {
                return Err(Error::conflict(
                    ErrorCode::InvalidRequest,
                    format!("snapshot chunk of {group} at offset {offset} before its start"),
                ));
            }
        };
        match current.file.write_all(data) {
            Ok(()) => {
                current.last = std::time::Instant::now();
                current.len += data.len() as u64;
                current.digest.update(data);
                Ok(())
            }
            Err(e) => {
                if let Some(failed) = receiving.remove(group) {
                    failed.discard();
                }
                Err(written(e))
            }
        }
    }

    /// Ends transfer `transfer` of `group` (blocking): checks it against `whole`, appends the
    /// trailer with `meta`, fsyncs, and hands the file over. The file is deleted if it is not
    /// installed. A transfer that does not match is dropped.
    pub fn finish(
        &self,
        group: &str,
        transfer: u64,
        whole: Whole,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotData> {
        let mut receiving = self.receiving.lock();
        let Some(current) = receiving.remove(group) else {
            return Err(Error::conflict(
                ErrorCode::InvalidRequest,
                format!("the end of a snapshot of {group} this node is not receiving"),
            ));
        };
        drop(receiving);
        if current.transfer != transfer
            || current.len != whole.len
            || current.digest.digest() != whole.digest
        {
            let message = format!(
                "the snapshot of {group} arrived incomplete or damaged ({} bytes, {} announced)",
                current.len, whole.len
            );
            current.discard();
            return Err(Error::invalid(ErrorCode::InvalidRequest, message));
        }
        let Receiving {
            path,
            mut file,
            len,
            ..
        } = current;
        let sealed = write_trailer(&mut file, meta, whole.digest).and_then(|()| file.sync_all());
        if let Err(e) = sealed {
            let _ = std::fs::remove_file(&path);
            return Err(written(e));
        }
        Ok(SnapshotData(Source::File(Arc::new(SnapshotFile {
            file,
            path,
            len,
            digest: whole.digest,
            discard: AtomicBool::new(true),
        }))))
    }

    /// A snapshot sent whole in one call (by a node of an earlier version), as a file.
    pub fn whole(&self, group: &str, data: &[u8], meta: &SnapshotMeta) -> Result<SnapshotData> {
        let transfer = rand::random();
        self.chunk(group, transfer, 0, data)?;
        let whole = Whole {
            len: data.len() as u64,
            digest: xxhash_rust::xxh3::xxh3_64(data),
        };
        self.finish(group, transfer, whole, meta)
    }
}

fn written(e: io::Error) -> Error {
    Error::unavailable(
        ErrorCode::StorageError,
        format!("writing a received snapshot: {e}"),
    )
}

/// Snapshots this node is sending, with the bytes sent so far: a move's progress.
#[derive(Debug, Default)]
pub struct Outgoing {
    sending: Mutex<BTreeMap<(GroupId, NodeId), u64>>,
}

impl Outgoing {
    /// Records a transfer of `group` to `target` until the guard is dropped.
    pub fn start(self: &Arc<Self>, group: &str, target: &str) -> Sending {
        let key = (group.to_string(), target.to_string());
        self.sending.lock().insert(key.clone(), 0);
        Sending {
            outgoing: Arc::clone(self),
            key,
        }
    }

    /// Bytes sent so far to each target of `group`'s snapshots in flight.
    pub fn of_group(&self, group: &str) -> BTreeMap<NodeId, u64> {
        self.sending
            .lock()
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, target), sent)| (target.clone(), *sent))
            .collect()
    }
}

/// One snapshot being sent; see [`Outgoing::start`].
pub struct Sending {
    outgoing: Arc<Outgoing>,
    key: (GroupId, NodeId),
}

impl Sending {
    pub fn sent(&self, bytes: u64) {
        self.outgoing.sending.lock().insert(self.key.clone(), bytes);
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.outgoing.sending.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta::default()
    }

    #[test]
    fn a_kept_file_round_trips_its_meta_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.snap");
        write_file(&path, |out| {
            out.write_all(b"records")?;
            Ok(meta())
        })
        .unwrap();
        let (_, data) = open_file(&path).unwrap().unwrap();
        assert_eq!(data.len(), 7);
        assert_eq!(data.to_bytes().unwrap(), b"records");
        assert_eq!(
            data.recorded_digest(),
            Some(xxhash_rust::xxh3::xxh3_64(b"records"))
        );
        let mut read = Vec::new();
        data.reader().read_to_end(&mut read).unwrap();
        assert_eq!(read, b"records");
        assert_eq!(data.read_at(3, 100).unwrap(), b"ords");
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, b"records").unwrap();
        assert!(open_file(&path).is_err(), "a file without a trailer");
        assert!(open_file(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn chunks_must_arrive_in_order_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let incoming = Incoming::new(dir.path()).unwrap();
        let whole = |data: &[u8]| Whole {
            len: data.len() as u64,
            digest: xxhash_rust::xxh3::xxh3_64(data),
        };
        // Out of order, and before any start.
        assert!(incoming.chunk("g", 1, 5, b"x").is_err());
        incoming.chunk("g", 1, 0, b"abc").unwrap();
        assert!(incoming.chunk("g", 1, 2, b"x").is_err(), "a gap or overlap");
        assert!(incoming.chunk("g", 2, 3, b"x").is_err(), "another transfer");
        incoming.chunk("g", 1, 3, b"def").unwrap();
        // A damaged whole is refused and dropped.
        assert!(incoming.finish("g", 1, whole(b"abcdeX"), &meta()).is_err());
        assert!(incoming.finish("g", 1, whole(b"abcdef"), &meta()).is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("incoming"))
                .unwrap()
                .count(),
            0
        );
        // A restart at offset 0 replaces a transfer in progress.
        incoming.chunk("g", 3, 0, b"zz").unwrap();
        incoming.chunk("g", 4, 0, b"abc").unwrap();
        let data = incoming.finish("g", 4, whole(b"abc"), &meta()).unwrap();
        assert_eq!(data.to_bytes().unwrap(), b"abc");
        assert_eq!(
            std::fs::read_dir(dir.path().join("incoming"))
                .unwrap()
                .count(),
            1
        );
        // Kept: renamed into place, readable as a kept file.
        let kept = dir.path().join("g.snap");
        data.keep(&kept, &meta()).unwrap();
        drop(data);
        assert_eq!(
            open_file(&kept).unwrap().unwrap().1.to_bytes().unwrap(),
            b"abc"
        );
        // Not kept: deleted once dropped.
        incoming.chunk("h", 5, 0, b"q").unwrap();
        let data = incoming.finish("h", 5, whole(b"q"), &meta()).unwrap();
        drop(data);
        assert_eq!(
            std::fs::read_dir(dir.path().join("incoming"))
                .unwrap()
                .count(),
            0
        );
    }
}
