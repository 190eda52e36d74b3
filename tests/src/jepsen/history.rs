//! What the clients did and saw: one [`Op`] per request, with the times it was invoked and
//! answered, written as JSON lines so that a failed run's history can be checked again
//! (`grape-jepsen --check FILE`).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// A request a client made. Values are unique across the run: every write carries a value no
/// other write has, so a read names the write it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "f")]
pub enum Call {
    /// Upsert of one document (`metadata.v = value`).
    Write { key: String, value: u64 },
    /// One batch upsert of several documents (keys may lie on different shards).
    Batch { writes: Vec<(String, u64)> },
    /// Delete of one document.
    Delete { key: String },
    /// Get of one document, `strong` (linearizable) or `eventual`.
    Read { key: String, strong: bool },
    /// A search over the whole collection.
    Search,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered with success: it took effect exactly once.
    Ok,
    /// Answered with an error that means nothing was changed (a 4xx, a refused connection).
    Fail,
    /// No answer, or an answer that does not say (a timeout, `no_leader` after a write was
    /// proposed, a 500): it may or may not have taken effect.
    Unknown,
}

/// What a successful request returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    /// A read: the value found, or none (404).
    Read(Option<u64>),
    /// A delete: whether the document existed.
    Deleted(bool),
    /// A search: `(key, value)` of every result.
    Found(Vec<(String, u64)>),
}

/// One request in the history. Times are microseconds since the run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client that made it (a client makes one request at a time).
    pub process: usize,
    /// The node it was sent to (`node-N`).
    pub node: String,
    pub call: Call,
    pub invoke: u64,
    /// When the answer came (or the client gave up).
    pub complete: u64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
    /// The error, for failed and unknown outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A fault the nemesis started or ended, recorded beside the operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    pub at: u64,
    /// `kill`, `pause`, `partition`, ...
    pub fault: String,
    /// `start` or `end`.
    pub phase: String,
    pub detail: String,
}

/// A line of a history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// The run's parameters (first line).
    Run {
        seed: u64,
        nodes: usize,
        cycles: usize,
    },
    Op(Op),
    Fault(FaultEvent),
}

/// Writes a history as JSON lines.
pub fn save(path: &Path, lines: &[Line]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for line in lines {
        serde_json::to_writer(&mut out, line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`save`].
pub fn load(path: &Path) -> std::io::Result<Vec<Line>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    file.lines()
        .map(|line| {
            serde_json::from_str(&line?)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .collect()
}
