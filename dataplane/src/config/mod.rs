//! Node configuration: the seed guide's YAML sections with a default for every key, layered as
//! built-in defaults -> YAML file -> environment (`GRAPE_NODE_ID`, `GRAPE__SECTION__KEY`) ->
//! command-line flags ([`load`]), then checked ([`validate`]): unknown keys and invalid values
//! stop start-up with a message naming the key.
//!
//! Some keys of the seed guide are accepted so that its files load unchanged but have no effect
//! in this version; [`Config::inert_keys`] lists those that are set, and the node logs them.

mod address;
mod load;
mod validate;

pub use address::{advertised, parse_host_port};
use address::{is_loopback_host, join_host_port};
pub use load::{Overrides, parse_peer_list};

use crate::index::{GraphEngine, IndexOptions, OriginalsPlace};
use grape_client::{HnswParams, Metric};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole node configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub database: DatabaseConfig,
    pub index: IndexConfig,
    pub performance: PerformanceConfig,
    pub monitoring: MonitoringConfig,
    pub security: SecurityConfig,
    pub backup: BackupConfig,
    /// The guide's `rbac` block (roles and users), when it is in the configuration file: the
    /// file is then read as `security.rbac_file` too (checked, and reloaded on change or
    /// SIGHUP, by the API layer). Never printed.
    #[serde(skip_serializing)]
    pub rbac: Option<RbacBlock>,
}

/// The `rbac` block as found in the configuration file, unread (the API layer reads it from
/// the file). Its debug form shows nothing of it: it holds password hashes.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RbacBlock(pub serde_json::Value);

/// An address or CIDR range (`10.0.0.0/8`, `127.0.0.1`).
pub fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

impl std::fmt::Debug for RbacBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RbacBlock(..)")
    }
}

/// `node`: who this node is and where it listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Stable identity across restarts and wipes (the pod name on Kubernetes).
    pub id: String,
    /// The seed names a fixed leader here; Raft elects leaders, so this is informational only.
    pub role: Option<String>,
    /// Client API address (HTTP or HTTPS).
    pub listen_address: String,
    /// Node-to-node address (Raft, forwarded writes).
    pub raft_address: String,
    /// The node-to-node address peers dial, when `raft_address` binds a wildcard
    /// (`0.0.0.0:9000` -> `grape-1.grape:9000`). Default: `raft_address`, with the host name in
    /// place of a wildcard address.
    pub advertise_raft_address: Option<String>,
    /// The client API address other nodes and tools report. Default: as for the Raft address.
    pub advertise_api_address: Option<String>,
    /// Where RocksDB keeps this node's data.
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "node-1".to_string(),
            role: None,
            listen_address: "127.0.0.1:8080".to_string(),
            raft_address: "127.0.0.1:9000".to_string(),
            advertise_raft_address: None,
            advertise_api_address: None,
            data_dir: PathBuf::from("./grape-data"),
        }
    }
}

/// One entry of `cluster.peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: String,
    pub address: String,
}

/// `cluster.tls_config`: certificates for node-to-node TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// Callers must present a certificate from `ca_file` that names the host of the node they
    /// claim to be. On by default.
    pub verify_peer: bool,
}

impl Default for ClusterTlsConfig {
    fn default() -> Self {
        ClusterTlsConfig {
            cert_file: None,
            key_file: None,
            ca_file: None,
            verify_peer: true,
        }
    }
}

/// `cluster`: replication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub enabled: bool,
    pub peers: Vec<PeerConfig>,
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub enable_tls: bool,
    pub tls_config: ClusterTlsConfig,
    /// Log entries a group appends between snapshots; older entries are then purged, so a
    /// replica that fell further behind (or was wiped) catches up from a snapshot.
    pub snapshot_log_entries: u64,
    /// Replica moves (rebalance, drain, repair) running at the same time.
    pub max_concurrent_moves: usize,
    /// Secrets every node-to-node call proves it knows (one per line; the first signs).
    pub secret_file: Option<PathBuf>,
    /// Accept unauthenticated node-to-node calls on a clustered node: anyone who reaches
    /// `node.raft_address` can then write and change membership. Off by default.
    pub insecure: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            peers: Vec::new(),
            election_timeout_ms: 500,
            heartbeat_interval_ms: 100,
            enable_tls: false,
            tls_config: ClusterTlsConfig::default(),
            snapshot_log_entries: 5_000,
            max_concurrent_moves: 2,
            secret_file: None,
            insecure: false,
        }
    }
}

/// `database`: the default collection and storage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Dimension of the `default` collection.
    pub vector_dimension: usize,
    /// Metric of the `default` collection.
    pub metric: Metric,
    /// Upper bound on live documents on this node; writes past it get 409.
    pub max_documents: u64,
    /// Free space kept on the data directory's filesystem: below it, the node refuses new
    /// writes (507 `insufficient_storage`) to every shard it holds, and serves reads and
    /// deletes. 0 turns the reserve off.
    pub min_free_disk_mb: u64,
    /// RocksDB block cache.
    pub cache_size_mb: usize,
    /// LZ4-compress RocksDB blocks.
    pub enable_compression: bool,
    /// Shards of the `default` collection.
    pub shard_count: u32,
    /// Replicas per shard of the `default` collection. Default: 3, or the number of members
    /// when the cluster is smaller (1 for a single node).
    pub replication_factor: Option<u32>,
    /// RocksDB memtable size.
    pub write_buffer_size_mb: usize,
    /// Seed key: placement is computed, not configured. Accepted and ignored.
    pub shard_assignments: Option<Vec<u32>>,
    // Seed tuning keys accepted without effect (see `inert_keys`).
    pub vector_cache_mb: Option<u64>,
    pub metadata_cache_mb: Option<u64>,
    pub query_cache_mb: Option<u64>,
    pub batch_size: Option<u64>,
    pub max_concurrent_writes: Option<u64>,
    pub shard_size_limit_mb: Option<u64>,
    pub enable_shard_compression: Option<bool>,
    pub async_replication: Option<bool>,
    pub replication_timeout_ms: Option<u64>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            vector_dimension: 1536,
            metric: Metric::Cosine,
            max_documents: 10_000_000,
            min_free_disk_mb: 512,
            cache_size_mb: 256,
            enable_compression: true,
            shard_count: 2,
            replication_factor: None,
            write_buffer_size_mb: 64,
            shard_assignments: None,
            vector_cache_mb: None,
            metadata_cache_mb: None,
            query_cache_mb: None,
            batch_size: None,
            max_concurrent_writes: None,
            shard_size_limit_mb: None,
            enable_shard_compression: None,
            async_replication: None,
            replication_timeout_ms: None,
        }
    }
}

/// `index`: HNSW settings of the `default` collection and index maintenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// Only `hnsw` exists.
    #[serde(rename = "type")]
    pub index_type: String,
    pub hnsw_m: usize,
    pub hnsw_ef_construction: usize,
    pub hnsw_ef_search: usize,
    /// Quantization of the `default` collection (`binary` when true).
    pub enable_binary_quantization: bool,
    /// Deleted or replaced entries a shard's graph may hold before it is rebuilt without them.
    pub rebuild_threshold: usize,
    /// Threads that insert into HNSW graphs (0: one per core).
    pub construction_threads: usize,
    /// The HNSW implementation: `grape` (Grape's own graph, the default) or `hnsw_rs`.
    pub graph: GraphEngine,
    /// Seconds between saves of a changed graph (Grape's graph only), which a restart loads
    /// instead of building it again; graphs are also saved at shutdown. 0: never saved.
    pub graph_save_interval_secs: u64,
    /// Where quantized collections keep their full vectors for re-scoring: `memory` (the
    /// default) or `disk`.
    pub quantized_originals: OriginalsPlace,
    // Seed keys accepted without effect (see `inert_keys`).
    pub enable_parallel_construction: Option<bool>,
    pub enable_product_quantization: Option<bool>,
    pub pq_segments: Option<u32>,
    pub enable_graph_pruning: Option<bool>,
}

impl IndexConfig {
    /// How shards build and keep their indexes.
    pub fn options(&self) -> IndexOptions {
        IndexOptions {
            engine: self.graph,
            rebuild_threshold: self.rebuild_threshold,
            graph_save_interval: (self.graph_save_interval_secs > 0)
                .then(|| std::time::Duration::from_secs(self.graph_save_interval_secs)),
            quantized_originals: self.quantized_originals,
        }
    }
}

impl Default for IndexConfig {
    fn default() -> Self {
        let hnsw = HnswParams::default();
        IndexConfig {
            index_type: "hnsw".to_string(),
            hnsw_m: hnsw.m,
            hnsw_ef_construction: hnsw.ef_construction,
            hnsw_ef_search: hnsw.ef_search,
            enable_binary_quantization: false,
            rebuild_threshold: 100_000,
            construction_threads: 0,
            graph: GraphEngine::default(),
            graph_save_interval_secs: 300,
            quantized_originals: OriginalsPlace::default(),
            enable_parallel_construction: None,
            enable_product_quantization: None,
            pq_segments: None,
            enable_graph_pruning: None,
        }
    }
}

/// `performance`: request limits and threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceConfig {
    /// Runtime worker threads (0: one per core).
    pub num_threads: usize,
    /// Most documents one batch request may carry.
    pub max_batch_size: usize,
    /// A search running longer answers 503.
    pub query_timeout_ms: u64,
    /// Largest request body accepted; larger ones get 413.
    pub max_request_body_mb: usize,
    /// Searches slower than this are kept for `/admin/slow-queries`.
    pub slow_query_ms: u64,
    /// Searches one node runs at once; more answer `503 overloaded` with `Retry-After`.
    pub max_concurrent_searches: usize,
    /// Conditions one search filter may hold (`must`, `should` and `must_not` together).
    pub max_filter_conditions: usize,
    /// Values one search filter may list in all its `match_any` conditions.
    pub max_filter_values: usize,
    /// Time a client has to send a request's headers (and, on a new connection, to start).
    pub header_read_timeout_ms: u64,
    /// Time a client has to send each part of a request body; a stalled body answers 400.
    pub body_read_timeout_ms: u64,
    /// Connections each listener holds open at once; past it, new ones are closed at once.
    pub max_connections: usize,
    // Seed keys accepted without effect (see `inert_keys`).
    pub enable_query_cache: Option<bool>,
    pub cache_ttl_seconds: Option<u64>,
}

impl Default for PerformanceConfig {
    fn default() -> Self {
        PerformanceConfig {
            num_threads: 0,
            max_batch_size: 2000,
            query_timeout_ms: 10_000,
            max_request_body_mb: 100,
            slow_query_ms: 100,
            max_concurrent_searches: 64,
            max_filter_conditions: 64,
            max_filter_values: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 4096,
            enable_query_cache: None,
            cache_ttl_seconds: None,
        }
    }
}

/// `monitoring`: metrics and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    pub enable_metrics: bool,
    /// Unauthenticated `/metrics` listener (keep it internal). 0 picks a free port.
    pub metrics_port: u16,
    /// Accepted for the seed; logs are structured either way.
    pub enable_tracing: bool,
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub log_level: String,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            enable_metrics: true,
            metrics_port: 9091,
            enable_tracing: false,
            log_level: "info".to_string(),
        }
    }
}

/// `backup`: where backups get their S3 credentials (beyond the `AWS_*` environment).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// A file of `KEY=VALUE` lines (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT`, ...), or a directory of one file per key (a mounted Kubernetes Secret),
    /// read at each backup or restore; its values win over the environment's.
    pub credentials_file: Option<PathBuf>,
}

/// `security`: API keys and TLS for clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Require credentials (`X-API-Key`, or a user's `Authorization: Basic`). Unset: required
    /// unless the node listens on loopback only.
    pub enable_auth: Option<bool>,
    /// API keys (`api_keys`), and maybe roles and users (`rbac`); reloaded on change or SIGHUP.
    pub api_keys_file: Option<PathBuf>,
    /// Roles and users (the guide's `rbac` block), when they are kept apart from the keys (a
    /// Kubernetes Secret of their own); reloaded with the keys file.
    pub rbac_file: Option<PathBuf>,
    pub enable_tls: bool,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Failed authentications one client address may make in a minute; past it, its requests
    /// answer 429 until the minute ends, whatever key they show (0: no limit).
    pub failed_auth_per_minute: u32,
    /// Failed logins (wrong passwords) one user may have from one address in a minute; past
    /// it, those logins answer 429 until the minute ends, except with credentials that passed
    /// and stay in use (0: no limit).
    pub failed_logins_per_user_per_minute: u32,
    /// How often (seconds) the key and rbac files are checked for changes; 0: only on SIGHUP.
    pub reload_interval_secs: u64,
    /// Proxies (addresses or CIDR ranges) whose `X-Real-IP` header names the client: for
    /// requests from them, rate limits, lock-outs and `ip_whitelist` judge that address
    /// instead of the proxy's. Empty: the connection's address always.
    pub trusted_proxies: Vec<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            enable_auth: None,
            api_keys_file: None,
            rbac_file: None,
            enable_tls: false,
            cert_file: None,
            key_file: None,
            failed_auth_per_minute: 100,
            failed_logins_per_user_per_minute: 10,
            reload_interval_secs: 2,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A configuration that cannot start a node; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The other members named by `cluster.peers` (a list naming every member, this node
    /// included, is fine: the same list can then configure every node). Empty unless
    /// `cluster.enabled`.
    pub fn other_peers(&self) -> Vec<PeerConfig> {
        if !self.cluster.enabled {
            return Vec::new();
        }
        self.cluster
            .peers
            .iter()
            .filter(|p| p.id != self.node.id)
            .cloned()
            .collect()
    }

    /// Whether requests need an API key: `security.enable_auth`, or by default whenever the
    /// node listens beyond loopback.
    pub fn auth_enabled(&self) -> bool {
        self.security.enable_auth.unwrap_or_else(|| {
            !parse_host_port(&self.node.listen_address)
                .map(|(host, _)| is_loopback_host(&host))
                .unwrap_or(false)
        })
    }

    /// Where the unauthenticated metrics listener binds: the API's host, `metrics_port`.
    pub fn metrics_address(&self) -> Option<String> {
        if !self.monitoring.enable_metrics {
            return None;
        }
        let (host, _) = parse_host_port(&self.node.listen_address)?;
        Some(join_host_port(&host, self.monitoring.metrics_port))
    }

    /// Whether node-to-node calls must be authenticated: in a cluster, or when the node-to-node
    /// listener is reachable beyond this machine.
    pub fn peer_auth_required(&self) -> bool {
        self.cluster.enabled
            || !parse_host_port(&self.node.raft_address)
                .map(|(host, _)| is_loopback_host(&host))
                .unwrap_or(false)
    }

    /// Whether node-to-node calls are authenticated (a cluster secret, or verified TLS).
    pub fn peer_auth_configured(&self) -> bool {
        self.cluster.secret_file.is_some()
            || (self.cluster.enable_tls && self.cluster.tls_config.verify_peer)
    }

    /// The data directory of this node.
    pub fn data_dir(&self) -> &Path {
        &self.node.data_dir
    }
}
