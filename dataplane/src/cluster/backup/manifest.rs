//! What a backup holds, written last (`manifest.json`): a backup without one is incomplete.
//!
//! ```text
//!   <location>/<backup id>/started.json          written first (the location is writable)
//!   <location>/<backup id>/data/c<i>-s<j>.records  one per shard: records as in snapshots
//!   <location>/<backup id>/manifest.json           last: collections, configs, per-file
//!                                                   length, xxh3 and document checksum
//! ```

use crate::collection::{shard_of, validate_collection_config};
use crate::error::{Error, ErrorCode, Result};
use grape_client::CollectionConfig;
use serde::{Deserialize, Serialize};

/// The backup format this version writes and reads.
pub const FORMAT: u32 = 1;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// A manifest larger than this is refused unread.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub grape_version: String,
    pub id: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub collections: Vec<CollectionEntry>,
    pub bytes: u64,
    pub documents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionEntry {
    pub config: CollectionConfig,
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub shard: u32,
    /// Relative to the backup's folder.
    pub file: String,
    pub bytes: u64,
    /// xxh3-64 of the file, hex.
    pub xxh3: String,
    pub documents: u64,
    /// Order-independent hash of the documents, hex (as `/admin/checksum`).
    pub checksum: String,
    /// The node whose replica was copied.
    pub exporter: String,
}

/// The file of shard `shard` of the `index`-th collection.
pub fn shard_file(index: usize, shard: u32) -> String {
    format!("data/c{index}-s{shard}.records")
}

fn invalid(id: &str, why: String) -> Error {
    Error::invalid(
        ErrorCode::InvalidBackup,
        format!("backup {id} cannot be restored: {why}"),
    )
}

impl Manifest {
    /// Reads and checks a manifest: its format, its collections and that every shard is there
    /// once, under a well-formed file name.
    pub fn parse(id: &str, bytes: &[u8]) -> Result<Manifest> {
        // The format is read on its own first, so that a newer format is named as such rather
        // than as a malformed file.
        #[derive(Deserialize)]
        struct Format {
            format: Option<u32>,
            grape_version: Option<String>,
        }
        let format: Format = serde_json::from_slice(bytes).map_err(|e| {
            invalid(
                id,
                format!("its manifest is not valid JSON ({e}): truncated or corrupt"),
            )
        })?;
        if format.format != Some(FORMAT) {
            return Err(invalid(
                id,
                format!(
                    "it has format {} (written by Grape {}); Grape {} reads format {FORMAT}",
                    format.format.map_or("none".into(), |f| f.to_string()),
                    format.grape_version.as_deref().unwrap_or("unknown"),
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| invalid(id, format!("its manifest is malformed: {e}")))?;
        if manifest.id != id {
            return Err(invalid(
                id,
                format!("its manifest names backup {}", manifest.id),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, entry) in manifest.collections.iter().enumerate() {
            validate_collection_config(&entry.config)
                .map_err(|e| invalid(id, format!("collection {:?}: {e}", entry.config.name)))?;
            if !names.insert(entry.config.name.clone()) {
                return Err(invalid(
                    id,
                    format!("collection {:?} is listed twice", entry.config.name),
                ));
            }
            let shards: Vec<u32> = entry.shards.iter().map(|s| s.shard).collect();
            let expected: Vec<u32> = (0..entry.config.shard_count).collect();
            if shards != expected {
                return Err(invalid(
                    id,
                    format!(
                        "collection {:?} lists shards {shards:?}, not 0..{}",
                        entry.config.name, entry.config.shard_count
                    ),
                ));
            }
            for shard in &entry.shards {
                if shard.file != shard_file(index, shard.shard) {
                    return Err(invalid(
                        id,
                        format!("unexpected file name {:?}", shard.file),
                    ));
                }
                if shard.xxh3.len() != 16 || u64::from_str_radix(&shard.xxh3, 16).is_err() {
                    return Err(invalid(id, format!("{}: malformed xxh3", shard.file)));
                }
            }
        }
        Ok(manifest)
    }
}

/// Decodes one record of a shard file into a document, checking that it belongs to `shard`.
pub fn check_record(
    id: &str,
    value: &[u8],
    shard: u32,
    shard_count: u32,
) -> Result<crate::shard::NewDocument> {
    if id.is_empty() || id.len() > 256 {
        return Err(Error::invalid(
            ErrorCode::InvalidBackup,
            format!("a record has an id of {} bytes", id.len()),
        ));
    }
    if shard_of(id, shard_count) != shard {
        return Err(Error::invalid(
            ErrorCode::InvalidBackup,
            format!("document {id:?} is in the file of shard {shard}, not its own"),
        ));
    }
    let (vector, metadata) = crate::storage::decode_document(value).map_err(|e| {
        Error::invalid(
            ErrorCode::InvalidBackup,
            format!("document {id:?} cannot be decoded: {e}"),
        )
    })?;
    Ok(crate::shard::NewDocument {
        id: id.to_string(),
        vector,
        metadata,
    })
}
