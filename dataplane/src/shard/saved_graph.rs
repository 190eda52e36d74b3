//! A shard replica's graph, saved to `<data_dir>/graphs/NAME.graph` so that a restart loads it
//! instead of inserting every vector again.
//!
//! ```text
//!   "GRAPEGPH" | u32 version | u32 header length | header (JSON)
//!   the graph (index::graph::persist)
//!   for each node: u32 id length | id bytes       (u32::MAX: the node was dead when saved)
//!   u64 xxh3 of everything before
//! ```
//!
//! A saved graph is never trusted for content. Loading matches each stored document with the
//! node saved under its id and reuses the node only when the node's vector is exactly the
//! document's (in a quantized graph: its code is exactly the code of the document's vector,
//! whose full vector is then kept beside it); every other document is inserted again and every unmatched node stays in the
//! graph dead (a rebuild drops it). So a file older than the documents, or from before a
//! snapshot install, costs insert time for what changed and never a wrong answer; the header's
//! generation and applied marker say what it was saved at, for people. A file that fails its
//! digest or any structural check is deleted and the graph built from the documents.

use crate::index::quantize::{Codebook, Space};
use crate::index::{IndexOptions, VectorIndex};
use grape_client::{CollectionConfig, Metric};
use serde::{Deserialize, Serialize};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xxhash_rust::xxh3::Xxh3;

/// Directory of saved graphs, under the data directory.
pub const DIR: &str = "graphs";
const MAGIC: &[u8; 8] = b"GRAPEGPH";
const VERSION: u32 = 1;
/// Longest header and document id read back (ids are far shorter; see `check_document`).
const MAX_HEADER: u32 = 4 << 20;
const MAX_ID: u32 = 64 << 10;
const DEAD: u32 = u32::MAX;

/// What a saved graph was saved from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub namespace: String,
    /// The storage generation the shard read and wrote at the time.
    pub generation: u64,
    /// The shard's applied marker at the time, hex (what the graph is at most as new as).
    pub applied: Option<String>,
    pub dimension: usize,
    pub metric: Metric,
    pub m: usize,
    pub nodes: u64,
    /// What a quantized graph's codes were learnt from (absent: full vectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codebook: Option<Codebook>,
}

/// A graph read back: the index over it (every node dead until revived) and the id each node
/// was saved under.
pub struct Loaded {
    pub header: Header,
    pub index: VectorIndex,
    pub labels: Vec<Option<Box<str>>>,
}

/// Where the graph of `namespace` is saved.
pub fn path(data_dir: &Path, namespace: &str) -> PathBuf {
    data_dir
        .join(DIR)
        .join(format!("{}.graph", crate::storage::file_stem(namespace)))
}

/// Deletes the temporary files of saves a crash interrupted (at start, before any save runs).
pub fn clean_temporary(data_dir: &Path) {
    for entry in std::fs::read_dir(data_dir.join(DIR))
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Deletes the saved graphs of namespaces `keep` refuses (replicas dropped while the file was
/// being written, or while the node was away).
pub fn remove_unless(data_dir: &Path, keep: impl Fn(&str) -> bool) {
    for entry in std::fs::read_dir(data_dir.join(DIR))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".graph")) else {
            continue;
        };
        if !stem.starts_with('.') && !keep(stem) {
            let _ = std::fs::remove_file(entry.path());
            tracing::info!(file = %entry.path().display(), "removed the saved graph of a replica this node no longer holds");
        }
    }
}

struct Hashing<T> {
    inner: T,
    hash: Xxh3,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Writes a graph and the id of each node (`None` for a dead one) to `path`, atomically: a
/// temporary file, fsynced, renamed over the old one, the directory fsynced.
pub fn write(
    path: &Path,
    header: &Header,
    graph: &crate::index::graph::HnswGraph,
    labels: &[Option<Arc<str>>],
) -> io::Result<u64> {
    let dir = path.parent().expect("a graph file lives in a directory");
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(
        ".{}.{:016x}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("graph"),
        rand::random::<u64>()
    ));
    let result = (|| {
        let file = std::fs::File::create(&temporary)?;
        let mut out = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hash: Xxh3::new(),
        };
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        let header = Header {
            codebook: graph.space().codebook(),
            ..header.clone()
        };
        let head = serde_json::to_vec(&header).map_err(io::Error::other)?;
        out.write_all(&(head.len() as u32).to_le_bytes())?;
        out.write_all(&head)?;
        graph.write_to(&mut out)?;
        for label in labels {
            match label {
                Some(id) => {
                    out.write_all(&(id.len() as u32).to_le_bytes())?;
                    out.write_all(id.as_bytes())?;
                }
                None => out.write_all(&DEAD.to_le_bytes())?,
            }
        }
        let digest = out.hash.digest();
        let mut file = out.inner.into_inner().map_err(|e| e.into_error())?;
        file.write_all(&digest.to_le_bytes())?;
        file.sync_all()?;
        let bytes = file.metadata()?.len();
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(bytes)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Reads the graph saved at `path` for a shard of `config`: `Ok(None)` when there is none,
/// an error when it is damaged or was saved with other settings.
pub fn read(
    path: &Path,
    config: &CollectionConfig,
    options: IndexOptions,
) -> io::Result<Option<Loaded>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let file_bytes = file.metadata()?.len();
    let data_dir = path
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| io::Error::other("a saved graph outside a data directory"))?;
    let mut input = Hashing {
        inner: BufReader::with_capacity(1 << 20, file),
        hash: Xxh3::new(),
    };
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a saved graph"));
    }
    let version = read_u32(&mut input)?;
    if version != VERSION {
        return Err(invalid(format!("format version {version}, not {VERSION}")));
    }
    let head_len = read_u32(&mut input)?;
    if head_len > MAX_HEADER {
        return Err(invalid(format!("a header of {head_len} bytes")));
    }
    let mut head = vec![0u8; head_len as usize];
    input.read_exact(&mut head)?;
    let header: Header = serde_json::from_slice(&head).map_err(|e| invalid(e.to_string()))?;
    if header.dimension != config.dimension
        || header.metric != config.metric
        || header.m != config.hnsw.m
    {
        return Err(invalid(format!(
            "saved for dimension {} {} m {}, the collection has {} {} m {}",
            header.dimension,
            header.metric.as_str(),
            header.m,
            config.dimension,
            config.metric.as_str(),
            config.hnsw.m
        )));
    }
    // Every node takes at least its level, its layer-0 list, its vector's code and its
    // label's length in the file: a count the file cannot hold is refused before the graph
    // is allocated for it.
    let space = Space::from_codebook(header.codebook.as_ref(), config.metric, config.dimension)
        .map_err(invalid)?;
    let list_words = 2 * config.hnsw.m.clamp(2, 255) as u64 + 1;
    let node_bytes = 1 + (list_words + space.words(config.dimension) as u64) * 4 + 4;
    let nodes = usize::try_from(header.nodes)
        .ok()
        .filter(|n| (*n as u64).saturating_mul(node_bytes) <= file_bytes)
        .ok_or_else(|| invalid(format!("{} nodes in {file_bytes} bytes", header.nodes)))?;
    let index = VectorIndex::read_graph(
        &mut input,
        config.dimension,
        config.metric,
        config.hnsw,
        options,
        config.quantization,
        header.codebook.as_ref(),
        Some(&super::originals_dir(data_dir)),
        nodes,
    )?;
    let mut labels = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let len = read_u32(&mut input)?;
        if len == DEAD {
            labels.push(None);
            continue;
        }
        if len > MAX_ID {
            return Err(invalid(format!("an id of {len} bytes")));
        }
        let mut id = vec![0u8; len as usize];
        input.read_exact(&mut id)?;
        let id = String::from_utf8(id).map_err(|_| invalid("an id that is not UTF-8"))?;
        labels.push(Some(id.into_boxed_str()));
    }
    let digest = input.hash.digest();
    let mut inner = input.inner;
    let mut recorded = [0u8; 8];
    inner.read_exact(&mut recorded)?;
    if u64::from_le_bytes(recorded) != digest {
        return Err(invalid("the digest does not match the content"));
    }
    if inner.read(&mut [0u8; 1])? != 0 {
        return Err(invalid("bytes after the digest"));
    }
    Ok(Some(Loaded {
        header,
        index,
        labels,
    }))
}

fn read_u32(input: &mut dyn Read) -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}
