//! Collections: a fixed set of shards, routing of documents to shards by a stable hash of the
//! id, validation of what clients send, and merging of per-shard search results. Which node
//! holds which shard replica is the cluster layer's business.

use crate::error::{Error, ErrorCode, Result};
use crate::index::distance;
use crate::shard::filter::{CompiledFilter, FilterLimits};
use crate::shard::{NewDocument, Shard, ShardHit, ShardId, check_document};
use grape_client::{CollectionConfig, DocumentInput, SearchHit, SearchRequest};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

/// The collection the seed guide's `/api/v1/documents` paths use, defined by the node config.
pub const DEFAULT_COLLECTION: &str = "default";
pub use crate::shard::{MAX_ID_BYTES, MAX_METADATA_BYTES, check_vector};
/// Largest vector dimension.
pub const MAX_DIMENSION: usize = 65_536;
/// Largest `top_k` a search may ask for.
pub const MAX_TOP_K: usize = 10_000;
/// Largest `ef` a search may ask for.
pub const MAX_EF: usize = 100_000;
/// Most shards a collection may have.
pub const MAX_SHARDS: u32 = 1024;

/// The shard a document id belongs to: xxh3 of the id modulo the shard count. Stable across
/// releases and platforms (unlike `DefaultHasher`, which the seed guide used).
pub fn shard_of(id: &str, shard_count: u32) -> ShardId {
    (xxh3_64(id.as_bytes()) % u64::from(shard_count.max(1))) as ShardId
}

/// A field of a collection definition, as [`collection_problem`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionField {
    Name,
    Dimension,
    ShardCount,
    ReplicationFactor,
    HnswM,
    HnswEfConstruction,
    HnswEfSearch,
    PayloadIndexes,
}

impl CollectionField {
    /// The field as a client writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            CollectionField::Name => "name",
            CollectionField::Dimension => "dimension",
            CollectionField::ShardCount => "shard_count",
            CollectionField::ReplicationFactor => "replication_factor",
            CollectionField::HnswM => "hnsw.m",
            CollectionField::HnswEfConstruction => "hnsw.ef_construction",
            CollectionField::HnswEfSearch => "hnsw.ef_search",
            CollectionField::PayloadIndexes => "payload_indexes",
        }
    }
}

/// The first field of a collection definition out of range, with what is wrong with it (the
/// message starts with the field's name).
pub fn collection_problem(config: &CollectionConfig) -> Option<(CollectionField, String)> {
    let name = &config.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Some((
            CollectionField::Name,
            format!("name {name:?} must be 1 to 64 characters of letters, digits, '-' and '_'"),
        ));
    }
    if let Some(problem) = payload_index_problem(&config.payload_indexes) {
        return Some((CollectionField::PayloadIndexes, problem));
    }
    let hnsw = &config.hnsw;
    let ranges = [
        (
            CollectionField::Dimension,
            config.dimension,
            1,
            MAX_DIMENSION,
        ),
        (
            CollectionField::ShardCount,
            config.shard_count as usize,
            1,
            MAX_SHARDS as usize,
        ),
        (
            CollectionField::ReplicationFactor,
            config.replication_factor as usize,
            1,
            7,
        ),
        (CollectionField::HnswM, hnsw.m, 2, 128),
        (
            CollectionField::HnswEfConstruction,
            hnsw.ef_construction,
            1,
            10_000,
        ),
        (CollectionField::HnswEfSearch, hnsw.ef_search, 1, MAX_EF),
    ];
    ranges
        .into_iter()
        .find(|(_, value, low, high)| !(low..=high).contains(&value))
        .map(|(field, value, low, high)| {
            (
                field,
                format!(
                    "{} {value} must be between {low} and {high}",
                    field.as_str()
                ),
            )
        })
}

/// Most payload indexes a collection may have (each costs memory and work on every write).
pub const MAX_PAYLOAD_INDEXES: usize = 16;

fn payload_index_problem(indexes: &[grape_client::PayloadIndex]) -> Option<String> {
    if indexes.len() > MAX_PAYLOAD_INDEXES {
        return Some(format!(
            "payload_indexes lists {} keys; at most {MAX_PAYLOAD_INDEXES} are allowed",
            indexes.len()
        ));
    }
    for (i, index) in indexes.iter().enumerate() {
        if let Err(why) = crate::shard::filter::check_key(&index.key) {
            return Some(format!("payload_indexes[{i}]: {why}"));
        }
        if indexes[..i].iter().any(|earlier| earlier.key == index.key) {
            return Some(format!(
                "payload_indexes[{i}]: key {:?} is indexed twice",
                index.key
            ));
        }
    }
    None
}

/// Checks a collection definition; the message names the offending field.
pub fn validate_collection_config(config: &CollectionConfig) -> Result<()> {
    match collection_problem(config) {
        Some((_, message)) => Err(Error::invalid(ErrorCode::InvalidCollection, message)),
        None => Ok(()),
    }
}

/// Checks one document against a collection and gives it an id if it has none. `position` is
/// its index in a batch, named in errors.
pub fn validate_document(
    config: &CollectionConfig,
    input: DocumentInput,
    position: Option<usize>,
) -> Result<NewDocument> {
    let document = NewDocument {
        id: input.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        vector: input.vector,
        metadata: input.metadata.unwrap_or_default(),
    };
    check_document(config, &document).map_err(|e| match (e, position) {
        (Error::InvalidInput { code, message }, Some(i)) => Error::InvalidInput {
            code,
            message: format!("documents[{i}]: {message}"),
        },
        (other, _) => other,
    })?;
    Ok(document)
}

/// A position in a collection's document listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub shard: ShardId,
    pub after: String,
}

impl Cursor {
    /// Opaque text form (hex of `shard:id`).
    pub fn encode(&self) -> String {
        format!("{}:{}", self.shard, self.after)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn decode(text: &str) -> Result<Cursor> {
        let bad = || {
            Error::invalid(
                ErrorCode::InvalidCursor,
                format!("cursor {text:?} is not one this server issued"),
            )
        };
        if !text.len().is_multiple_of(2) {
            return Err(bad());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (shard, after) = text.split_once(':').ok_or_else(bad)?;
        Ok(Cursor {
            shard: shard.parse().map_err(|_| bad())?,
            after: after.to_string(),
        })
    }
}

/// A search validated against its collection.
#[derive(Debug)]
pub struct PreparedSearch {
    /// The query in the index's form (unit length for cosine).
    pub query: Vec<f32>,
    pub top_k: usize,
    pub ef: usize,
    pub filter: Option<CompiledFilter>,
    pub include_vectors: bool,
    /// When the search gives up (`performance.query_timeout_ms` after it arrived).
    pub deadline: Option<Instant>,
}

/// A collection: its fixed settings and the incarnation that distinguishes it from earlier
/// collections of the same name. Routes ids to shards and names each shard's replica group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    pub config: CollectionConfig,
    /// Unique per creation (the meta log index of its creation): a dropped and re-created
    /// collection never shares a shard group or storage namespace with its predecessor.
    pub uid: u64,
}

impl Collection {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The shard holding `id`.
    pub fn shard_for(&self, id: &str) -> ShardId {
        shard_of(id, self.config.shard_count)
    }

    /// Every shard number.
    pub fn shard_ids(&self) -> impl Iterator<Item = ShardId> + use<> {
        0..self.config.shard_count
    }

    /// Name of one shard's replica group; also its storage namespace.
    pub fn group(&self, shard: ShardId) -> String {
        format!("{}/{shard}@{}", self.config.name, self.uid)
    }

    /// Validates a search request against this collection.
    pub fn prepare_search(
        &self,
        request: &SearchRequest,
        limits: FilterLimits,
        deadline: Option<Instant>,
    ) -> Result<PreparedSearch> {
        if request.top_k == 0 || request.top_k > MAX_TOP_K {
            return Err(Error::invalid(
                ErrorCode::InvalidTopK,
                format!("top_k {} must be between 1 and {MAX_TOP_K}", request.top_k),
            ));
        }
        if let Some(ef) = request.ef
            && (ef == 0 || ef > MAX_EF)
        {
            return Err(Error::invalid(
                ErrorCode::InvalidEf,
                format!("ef {ef} must be between 1 and {MAX_EF}"),
            ));
        }
        check_vector(&self.config, &request.vector)?;
        let filter = request
            .filter
            .as_ref()
            .map(|filter| CompiledFilter::new(filter, limits))
            .transpose()?;
        let query = distance::prepare(self.config.metric, &request.vector).ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidVector,
                "the query vector has no direction",
            )
        })?;
        Ok(PreparedSearch {
            query,
            top_k: request.top_k,
            ef: request
                .ef
                .unwrap_or(self.config.hnsw.ef_search)
                .max(request.top_k),
            filter,
            include_vectors: request.include_vectors,
            deadline,
        })
    }
}

/// Parses a group name made by [`Collection::group`] into (collection, shard, uid).
pub fn parse_group(group: &str) -> Option<(&str, ShardId, u64)> {
    let (name, rest) = group.rsplit_once('/')?;
    let (shard, uid) = rest.split_once('@')?;
    Some((name, shard.parse().ok()?, uid.parse().ok()?))
}

/// Searches one shard replica.
///
/// A panic in the search (a bug in index code) marks the replica failed, as a panic in its
/// maintenance does: the node goes on, and the shard's other replicas answer for it.
pub fn search_shard(shard: &Shard, search: &PreparedSearch) -> Result<Vec<ShardHit>> {
    crate::index::worker::contain(|| {
        shard.search(
            &search.query,
            search.top_k,
            search.ef,
            search.filter.as_ref(),
            search.deadline,
        )
    })
    .unwrap_or_else(|reason| {
        shard.fail(reason.clone());
        Err(Error::unavailable(
            ErrorCode::ShardFailed,
            format!("searching {} failed: {reason}", shard.namespace()),
        ))
    })
}

/// Merges per-shard results into the best `top_k`, best first.
pub fn merge_hits(mut hits: Vec<ShardHit>, top_k: usize) -> Vec<ShardHit> {
    hits.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then_with(|| a.id.cmp(&b.id))
    });
    hits.truncate(top_k);
    hits
}

/// A shard hit as the API returns it.
pub fn to_search_hit(hit: ShardHit, vector: Option<Vec<f32>>) -> SearchHit {
    SearchHit {
        id: hit.id.to_string(),
        score: hit.score,
        metadata: Arc::unwrap_or_clone(hit.metadata),
        vector,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_routing_is_stable_and_spreads_ids() {
        // Pinned values: changing the hash would move every stored document.
        assert_eq!(shard_of("doc-1", 16), shard_of("doc-1", 16));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("id-{i}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(shard_of("anything", 1), 0);
        let collection = Collection {
            config: CollectionConfig::new("my-docs_2", 4),
            uid: 17,
        };
        assert_eq!(
            parse_group(&collection.group(3)),
            Some(("my-docs_2", 3, 17))
        );
        assert_eq!(parse_group("meta"), None);
    }

    #[test]
    fn a_search_that_panics_fails_its_replica_and_the_process_goes_on() {
        use crate::index::worker::IndexWorker;
        use crate::storage::{Storage, StorageOptions};
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path(), &StorageOptions::default()).unwrap());
        let config = CollectionConfig::new("c", 2);
        let shard = Shard::open(
            Arc::new(config.clone()),
            "c/0",
            storage,
            Arc::new(IndexWorker::new(1).unwrap()),
            crate::index::IndexOptions::default(),
        )
        .unwrap();
        let collection = Collection { config, uid: 1 };
        let request = SearchRequest::new(vec![1.0, 0.5], 3);
        let limits = FilterLimits {
            conditions: 1,
            values: 1,
        };
        let prepared = collection.prepare_search(&request, limits, None).unwrap();
        assert!(search_shard(&shard, &prepared).unwrap().is_empty());
        shard.inject_search_panic();
        let err = search_shard(&shard, &prepared).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ShardFailed);
        assert!(
            shard
                .failure()
                .unwrap()
                .contains("injected fault in search")
        );
        // Failed: refused from now on, not searched again.
        assert_eq!(
            search_shard(&shard, &prepared).unwrap_err().code(),
            ErrorCode::ShardFailed
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            shard: 3,
            after: "a:b/ü".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in ["zz", "abc", "", "3a"] {
            assert_eq!(
                Cursor::decode(bad).unwrap_err().code(),
                "invalid_cursor",
                "{bad}"
            );
        }
    }

    #[test]
    fn documents_are_checked_against_their_collection() {
        let config = CollectionConfig::new("docs", 3);
        let input = |vector: Vec<f32>| DocumentInput {
            id: None,
            vector,
            metadata: None,
        };
        let ok = validate_document(&config, input(vec![1.0, 2.0, 3.0]), None).unwrap();
        assert_eq!(ok.id.len(), 36, "a UUID is assigned");
        let err = validate_document(&config, input(vec![1.0]), Some(4)).unwrap_err();
        assert_eq!(err.code(), "dimension_mismatch");
        assert!(
            err.message()
                .starts_with("documents[4]: vector has 1 dimensions"),
            "{}",
            err.message()
        );
        let err =
            validate_document(&config, input(vec![1.0, f32::INFINITY, 0.0]), None).unwrap_err();
        assert_eq!(err.code(), "invalid_vector");
        let err = validate_document(&config, input(vec![0.0, 0.0, 0.0]), None).unwrap_err();
        assert_eq!(err.code(), "invalid_vector");
        let long = DocumentInput {
            id: Some("x".repeat(MAX_ID_BYTES + 1)),
            vector: vec![1.0, 2.0, 3.0],
            metadata: None,
        };
        assert_eq!(
            validate_document(&config, long, None).unwrap_err().code(),
            "invalid_id"
        );
    }
}
