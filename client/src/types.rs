//! The JSON shapes of Grape's HTTP API, shared by the server, this client, the operator, the
//! tests and the benchmark. Request types reject unknown fields, so a typo such as `topk` is a
//! 400 naming the field instead of a silently ignored option.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A document's metadata: always a JSON object.
pub type Metadata = Map<String, Value>;

/// A document as a client sends it: the server assigns a UUID when `id` is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub vector: Vec<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    pub vector: Vec<f32>,
    pub metadata: Metadata,
}

/// `POST /api/v1/documents` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InsertResponse {
    pub id: String,
}

/// `POST /api/v1/documents/batch` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub documents: Vec<DocumentInput>,
}

/// `POST /api/v1/documents/batch` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub inserted: usize,
    pub ids: Vec<String>,
}

/// `DELETE /api/v1/documents/{id}` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub deleted: bool,
}

/// `GET /api/v1/documents` answer: one page, and the cursor of the next one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResponse {
    pub documents: Vec<Document>,
    pub next_cursor: Option<String>,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Any replica may answer; it may lag the leader.
    #[default]
    Eventual,
    /// Linearizable: the answer reflects every write acknowledged before the request.
    Strong,
}

fn default_top_k() -> usize {
    10
}

/// `POST /api/v1/search` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub vector: Vec<f32>,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Search breadth; defaults to the collection's `ef_search`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_vectors: bool,
}

impl SearchRequest {
    /// A plain top-k query with the collection's defaults.
    pub fn new(vector: Vec<f32>, top_k: usize) -> Self {
        SearchRequest {
            vector,
            top_k,
            filter: None,
            ef: None,
            consistency: None,
            include_vectors: false,
        }
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub id: String,
    /// Similarity for `cosine` and `dot` (higher is closer), distance for `l2` (lower is closer).
    pub score: f32,
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// `POST /api/v1/search` answer, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub results: Vec<SearchHit>,
    pub took_ms: f64,
}

/// A metadata filter: every `must` holds, at least one `should` holds (when any are given),
/// and no `must_not` holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub should: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must_not: Vec<Condition>,
}

/// One condition on the metadata value at `key` (a dotted path into nested objects). Exactly
/// one of `match`, `match_any` and `range` is given. When the value is an array, a condition
/// holds if it holds for any element.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_any: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Range>,
}

impl Condition {
    /// `{"key": key, "match": value}`
    pub fn matches(key: &str, value: impl Into<Value>) -> Self {
        Condition {
            key: key.to_string(),
            match_value: Some(value.into()),
            ..Default::default()
        }
    }

    /// `{"key": key, "match_any": values}`
    pub fn matches_any(key: &str, values: Vec<Value>) -> Self {
        Condition {
            key: key.to_string(),
            match_any: Some(values),
            ..Default::default()
        }
    }

    /// `{"key": key, "range": range}`
    pub fn in_range(key: &str, range: Range) -> Self {
        Condition {
            key: key.to_string(),
            range: Some(range),
            ..Default::default()
        }
    }
}

/// Numeric bounds; at least one is given.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
}

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Angle between vectors; the score is the cosine similarity in [-1, 1].
    #[default]
    Cosine,
    /// Euclidean distance; the score is the distance.
    L2,
    /// Inner product; the score is the dot product.
    Dot,
}

impl Metric {
    /// The name used in JSON and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Dot => "dot",
        }
    }

    /// Whether a higher score means closer.
    pub fn higher_is_closer(self) -> bool {
        !matches!(self, Metric::L2)
    }
}

/// How vectors are compressed in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    #[default]
    None,
    Binary,
    Scalar,
}

/// HNSW graph parameters of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node (layer 0 keeps twice as many).
    #[serde(default = "HnswParams::default_m")]
    pub m: usize,
    /// Candidate list size while building.
    #[serde(default = "HnswParams::default_ef_construction")]
    pub ef_construction: usize,
    /// Candidate list size while searching, unless a query names its own `ef`.
    #[serde(default = "HnswParams::default_ef_search")]
    pub ef_search: usize,
}

impl HnswParams {
    fn default_m() -> usize {
        16
    }
    fn default_ef_construction() -> usize {
        200
    }
    fn default_ef_search() -> usize {
        128
    }
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: Self::default_m(),
            ef_construction: Self::default_ef_construction(),
            ef_search: Self::default_ef_search(),
        }
    }
}

fn default_shard_count() -> u32 {
    2
}

fn default_replication_factor() -> u32 {
    1
}

/// `POST /api/v1/collections` body, and a collection's fixed settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    pub name: String,
    pub dimension: usize,
    #[serde(default)]
    pub metric: Metric,
    #[serde(default = "default_shard_count")]
    pub shard_count: u32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u32,
    #[serde(default)]
    pub hnsw: HnswParams,
    #[serde(default)]
    pub quantization: Quantization,
    /// Metadata keys indexed in every shard, so that a filter on them finds its matches
    /// without reading every document. Fixed at creation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload_indexes: Vec<PayloadIndex>,
}

/// An index on one metadata key (`a.b` for nested objects; an array indexes each element).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadIndex {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: PayloadIndexKind,
}

/// What a payload index answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadIndexKind {
    /// Strings and booleans, for `match` and `match_any`.
    Keyword,
    /// Numbers, for `range` (and `match` of a number).
    Numeric,
}

impl CollectionConfig {
    /// A collection with default settings.
    pub fn new(name: &str, dimension: usize) -> Self {
        CollectionConfig {
            name: name.to_string(),
            dimension,
            metric: Metric::default(),
            shard_count: default_shard_count(),
            replication_factor: default_replication_factor(),
            hnsw: HnswParams::default(),
            quantization: Quantization::default(),
            payload_indexes: Vec::new(),
        }
    }
}

/// A collection as `GET /api/v1/collections/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionInfo {
    #[serde(flatten)]
    pub config: CollectionConfig,
    /// Documents stored (on this node, for the shards it holds).
    pub documents: u64,
}

/// `GET /api/v1/collections` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

/// `GET /health` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    pub node_id: String,
    pub version: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable machine-readable `code` and a message for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Per-shard figures, from `GET /admin/stats/shards`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStats {
    pub collection: String,
    pub shard: u32,
    /// Live documents.
    pub documents: u64,
    /// Stored bytes of those documents (vectors and metadata, before compression).
    #[serde(default)]
    pub bytes: u64,
    /// Documents already in the HNSW graph.
    pub indexed: u64,
    /// Documents written but not yet in the graph (searched exactly meanwhile).
    pub pending: u64,
    /// Deleted or replaced graph entries not yet rebuilt away.
    pub tombstones: u64,
    /// Vectors held in memory: the live ones and dead ones a rebuild has not reclaimed yet.
    #[serde(default)]
    pub stored_vectors: u64,
    /// Bytes those vectors take in memory (full vectors, or quantized codes; not the graph's
    /// neighbour lists).
    #[serde(default)]
    pub vector_bytes: u64,
    /// Bytes the full vectors of a quantized collection take on disk
    /// (`index.quantized_originals: disk`).
    #[serde(default)]
    pub vector_disk_bytes: u64,
    /// Graph rebuilds since start.
    pub rebuilds: u64,
    /// Graph entries this replica loaded from its saved graph at start instead of inserting
    /// them again (0: the graph was built from the documents).
    #[serde(default)]
    pub graph_loaded: u64,
    /// Nodes holding a replica of this shard.
    pub replicas: Vec<String>,
    /// The node whose replica takes writes.
    pub leader: Option<String>,
    /// Why this replica's index failed, if it did: it is not searched (other replicas serve
    /// the shard) until a restart or a snapshot rebuilds it from storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// `GET /admin/stats/shards` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStatsResponse {
    pub node_id: String,
    pub shards: Vec<ShardStats>,
    /// Documents per shard, by collection then shard number.
    pub shard_distribution:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

/// `GET /admin/stats` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    pub node_id: String,
    pub version: String,
    /// Document replicas this node holds, over every collection.
    pub documents: u64,
    pub collections: usize,
    /// Documents per shard, by collection then shard number.
    pub shard_distribution:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// Documents written but not yet in an HNSW graph.
    pub indexing_pending: u64,
    pub uptime_seconds: u64,
    pub disk_usage_bytes: u64,
    pub memory_usage_bytes: u64,
}

/// One shard's content fingerprint, from `GET /admin/checksum`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardChecksum {
    pub collection: String,
    pub shard: u32,
    pub documents: u64,
    /// Order-independent hash of every stored document (id, vector and metadata), hex.
    pub checksum: String,
}

/// `GET /admin/checksum` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumResponse {
    pub node_id: String,
    pub shards: Vec<ShardChecksum>,
}
