//! Node configuration: the seed guide's YAML sections with a default for every key, layered as
//! built-in defaults -> YAML file -> environment (`GRAPE_NODE_ID`, `GRAPE__SECTION__KEY`) ->
//! command-line flags. Unknown keys and invalid values stop start-up with a message naming the
//! key.
//!
//! Some keys of the seed guide are accepted so that its files load unchanged but have no effect
//! in this version; [`Config::inert_keys`] lists those that are set, and the node logs them.

use crate::error::ErrorCode;
use crate::index::{GraphEngine, IndexOptions};
use figment::Figment;
use figment::providers::{Format, Serialized, Yaml};
use grape_client::{CollectionConfig, HnswParams, Metric, Quantization};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub verify_peer: bool,
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
    /// The HNSW implementation: `hnsw_rs` (default) or `grape` (Grape's own graph).
    pub graph: GraphEngine,
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

/// `security`: API keys and TLS for clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Require `X-API-Key`. Unset: required unless the node listens on loopback only.
    pub enable_auth: Option<bool>,
    pub api_keys_file: Option<PathBuf>,
    pub enable_tls: bool,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Command-line overrides, applied last.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// YAML configuration file (the seed guide's format).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// node.id
    #[arg(long)]
    pub node_id: Option<String>,
    /// node.listen_address
    #[arg(long)]
    pub listen_address: Option<String>,
    /// node.raft_address
    #[arg(long)]
    pub raft_address: Option<String>,
    /// node.data_dir
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// monitoring.metrics_port
    #[arg(long)]
    pub metrics_port: Option<u16>,
    /// monitoring.log_level
    #[arg(long)]
    pub log_level: Option<String>,
    /// security.api_keys_file
    #[arg(long)]
    pub api_keys_file: Option<PathBuf>,
}

/// A configuration that cannot start a node; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Layers defaults, the file, the environment and the flags, then validates.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_from(overrides, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_from(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &overrides.config {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "configuration file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Yaml::file_exact(path));
        }
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (name, value) in &env {
            if name == "GRAPE_NODE_ID" {
                figment = figment.merge(Setting::env(name, "node.id", value.as_str().into()));
            } else if name == "GRAPE_CLUSTER_PEERS" {
                let peers = parse_peer_list(value)
                    .map_err(|e| ConfigError(format!("GRAPE_CLUSTER_PEERS={value:?}: {e}")))?;
                let peers = figment::value::Value::serialize(peers)
                    .map_err(|e| ConfigError(format!("GRAPE_CLUSTER_PEERS: {e}")))?;
                figment = figment.merge(Setting::env(name, "cluster.peers", peers));
            } else if let Some(path) = name.strip_prefix("GRAPE__") {
                let key = path
                    .split("__")
                    .map(str::to_ascii_lowercase)
                    .collect::<Vec<_>>()
                    .join(".");
                let parsed = value
                    .parse()
                    .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
                figment = figment.merge(Setting::env(name, &key, parsed));
            }
        }
        let flags: [(&str, &str, Option<figment::value::Value>); 7] = [
            (
                "--node-id",
                "node.id",
                overrides.node_id.as_deref().map(Into::into),
            ),
            (
                "--listen-address",
                "node.listen_address",
                overrides.listen_address.as_deref().map(Into::into),
            ),
            (
                "--raft-address",
                "node.raft_address",
                overrides.raft_address.as_deref().map(Into::into),
            ),
            (
                "--data-dir",
                "node.data_dir",
                overrides
                    .data_dir
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned().into()),
            ),
            (
                "--metrics-port",
                "monitoring.metrics_port",
                overrides.metrics_port.map(Into::into),
            ),
            (
                "--log-level",
                "monitoring.log_level",
                overrides.log_level.as_deref().map(Into::into),
            ),
            (
                "--api-keys-file",
                "security.api_keys_file",
                overrides
                    .api_keys_file
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned().into()),
            ),
        ];
        for (flag, key, value) in flags {
            if let Some(value) = value {
                figment = figment.merge(Setting {
                    source: format!("command-line flag {flag}"),
                    key: key.to_string(),
                    value,
                });
            }
        }
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and combinations that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, why: String| Err(ConfigError(format!("{key}: {why}")));
        if self.node.id.is_empty() || self.node.id.len() > 253 {
            return fail("node.id", "must be 1 to 253 characters".into());
        }
        if parse_host_port(&self.node.listen_address).is_none() {
            return fail(
                "node.listen_address",
                format!("{:?} is not HOST:PORT", self.node.listen_address),
            );
        }
        if parse_host_port(&self.node.raft_address).is_none() {
            return fail(
                "node.raft_address",
                format!("{:?} is not HOST:PORT", self.node.raft_address),
            );
        }
        for (key, value) in [
            (
                "node.advertise_raft_address",
                &self.node.advertise_raft_address,
            ),
            (
                "node.advertise_api_address",
                &self.node.advertise_api_address,
            ),
        ] {
            if let Some(address) = value
                && parse_host_port(address).is_none()
            {
                return fail(key, format!("{address:?} is not HOST:PORT"));
            }
        }
        if self.node.data_dir.as_os_str().is_empty() {
            return fail("node.data_dir", "must not be empty".into());
        }
        for (i, peer) in self.cluster.peers.iter().enumerate() {
            if peer.id.is_empty() {
                return fail(
                    &format!("cluster.peers[{i}].id"),
                    "must not be empty".into(),
                );
            }
            if parse_host_port(&peer.address).is_none() {
                return fail(
                    &format!("cluster.peers[{i}].address"),
                    format!("{:?} is not HOST:PORT", peer.address),
                );
            }
        }
        if self.cluster.heartbeat_interval_ms == 0
            || self.cluster.election_timeout_ms < 2 * self.cluster.heartbeat_interval_ms
        {
            return fail(
                "cluster.election_timeout_ms",
                format!(
                    "{} must be at least twice cluster.heartbeat_interval_ms ({}), which must be above 0",
                    self.cluster.election_timeout_ms, self.cluster.heartbeat_interval_ms
                ),
            );
        }
        if self.cluster.snapshot_log_entries == 0 {
            return fail("cluster.snapshot_log_entries", "must be above 0".into());
        }
        self.default_collection()
            .map_err(|e| ConfigError(e.to_string()))
            .map(|_| ())?;
        if self.index.index_type != "hnsw" {
            return fail(
                "index.type",
                format!("{:?} is not supported; use \"hnsw\"", self.index.index_type),
            );
        }
        if self.index.rebuild_threshold == 0 {
            return fail("index.rebuild_threshold", "must be above 0".into());
        }
        if self.performance.max_batch_size == 0 {
            return fail("performance.max_batch_size", "must be above 0".into());
        }
        if self.performance.query_timeout_ms == 0 {
            return fail("performance.query_timeout_ms", "must be above 0".into());
        }
        if self.performance.max_request_body_mb == 0 {
            return fail("performance.max_request_body_mb", "must be above 0".into());
        }
        if !["error", "warn", "info", "debug", "trace"]
            .contains(&self.monitoring.log_level.as_str())
        {
            return fail(
                "monitoring.log_level",
                format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    self.monitoring.log_level
                ),
            );
        }
        if self.auth_enabled() && self.security.api_keys_file.is_none() {
            return fail(
                "security.api_keys_file",
                "authentication is on (security.enable_auth, or a listen address beyond loopback) \
                 but no API keys file is set"
                    .into(),
            );
        }
        if self.security.enable_tls
            && (self.security.cert_file.is_none() || self.security.key_file.is_none())
        {
            return fail(
                "security.cert_file",
                "security.enable_tls needs security.cert_file and security.key_file".into(),
            );
        }
        Ok(())
    }

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

    /// The `default` collection as the `database` and `index` sections define it.
    pub fn default_collection(&self) -> Result<CollectionConfig, crate::Error> {
        let config = CollectionConfig {
            name: crate::collection::DEFAULT_COLLECTION.to_string(),
            dimension: self.database.vector_dimension,
            metric: self.database.metric,
            shard_count: self.database.shard_count,
            replication_factor: self
                .database
                .replication_factor
                .unwrap_or_else(|| (1 + self.other_peers().len()).min(3) as u32),
            hnsw: HnswParams {
                m: self.index.hnsw_m,
                ef_construction: self.index.hnsw_ef_construction,
                ef_search: self.index.hnsw_ef_search,
            },
            quantization: if self.index.enable_binary_quantization {
                Quantization::Binary
            } else {
                Quantization::None
            },
        };
        crate::collection::validate_collection_config(&config).map_err(|e| {
            // Name the configuration key, not the collection field it feeds.
            let message = e.message();
            let key = [
                ("dimension", "database.vector_dimension"),
                ("shard_count", "database.shard_count"),
                ("replication_factor", "database.replication_factor"),
                ("hnsw.m", "index.hnsw_m"),
                ("hnsw.ef_construction", "index.hnsw_ef_construction"),
                ("hnsw.ef_search", "index.hnsw_ef_search"),
            ]
            .into_iter()
            .find(|(field, _)| message.starts_with(&format!("{field} ")))
            .map(|(_, key)| key)
            .unwrap_or("database");
            crate::Error::invalid(ErrorCode::InvalidConfig, format!("{key}: {message}"))
        })?;
        Ok(config)
    }

    /// Seed keys that are set but have no effect in this version, for a start-up warning.
    pub fn inert_keys(&self) -> Vec<&'static str> {
        let d = &self.database;
        let i = &self.index;
        let p = &self.performance;
        let set = [
            ("node.role", self.node.role.is_some()),
            ("database.shard_assignments", d.shard_assignments.is_some()),
            ("database.vector_cache_mb", d.vector_cache_mb.is_some()),
            ("database.metadata_cache_mb", d.metadata_cache_mb.is_some()),
            ("database.query_cache_mb", d.query_cache_mb.is_some()),
            ("database.batch_size", d.batch_size.is_some()),
            (
                "database.max_concurrent_writes",
                d.max_concurrent_writes.is_some(),
            ),
            (
                "database.shard_size_limit_mb",
                d.shard_size_limit_mb.is_some(),
            ),
            (
                "database.enable_shard_compression",
                d.enable_shard_compression.is_some(),
            ),
            ("database.async_replication", d.async_replication.is_some()),
            (
                "database.replication_timeout_ms",
                d.replication_timeout_ms.is_some(),
            ),
            (
                "index.enable_parallel_construction",
                i.enable_parallel_construction.is_some(),
            ),
            (
                "index.enable_product_quantization",
                i.enable_product_quantization.is_some(),
            ),
            ("index.pq_segments", i.pq_segments.is_some()),
            (
                "index.enable_graph_pruning",
                i.enable_graph_pruning.is_some(),
            ),
            (
                "performance.enable_query_cache",
                p.enable_query_cache.is_some(),
            ),
            (
                "performance.cache_ttl_seconds",
                p.cache_ttl_seconds.is_some(),
            ),
        ];
        set.into_iter()
            .filter_map(|(key, is_set)| is_set.then_some(key))
            .collect()
    }

    /// Where the unauthenticated metrics listener binds: the API's host, `metrics_port`.
    pub fn metrics_address(&self) -> Option<String> {
        if !self.monitoring.enable_metrics {
            return None;
        }
        let (host, _) = parse_host_port(&self.node.listen_address)?;
        Some(join_host_port(&host, self.monitoring.metrics_port))
    }

    /// The data directory of this node.
    pub fn data_dir(&self) -> &Path {
        &self.node.data_dir
    }
}

/// The address others should use for a bound address: wildcard hosts become this machine's
/// host name.
pub fn advertised(configured: Option<&str>, bound: SocketAddr) -> String {
    if let Some(address) = configured {
        return address.to_string();
    }
    if bound.ip().is_unspecified() {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        return join_host_port(&host, bound.port());
    }
    bound.to_string()
}

/// Splits `HOST:PORT` (`[v6]:PORT` too).
pub fn parse_host_port(address: &str) -> Option<(String, u16)> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Some((socket.ip().to_string(), socket.port()));
    }
    let (host, port) = address.rsplit_once(':')?;
    if host.is_empty() || host.contains(':') {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// `GRAPE_CLUSTER_PEERS`: comma-separated `ID=HOST:PORT`, or `HOST:PORT` whose host is the id
/// (the seed's `node-2:9001` form).
pub fn parse_peer_list(value: &str) -> Result<Vec<PeerConfig>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (id, address) = match entry.split_once('=') {
                Some((id, address)) => (id.trim().to_string(), address.trim().to_string()),
                None => {
                    let (host, _) = parse_host_port(entry)
                        .ok_or_else(|| format!("{entry:?} is not ID=HOST:PORT or HOST:PORT"))?;
                    (host, entry.to_string())
                }
            };
            if id.is_empty() || parse_host_port(&address).is_none() {
                return Err(format!("{entry:?} is not ID=HOST:PORT or HOST:PORT"));
            }
            Ok(PeerConfig { id, address })
        })
        .collect()
}

/// One setting from the environment or a flag, named after its source in error messages.
struct Setting {
    source: String,
    key: String,
    value: figment::value::Value,
}

impl Setting {
    fn env(name: &str, key: &str, value: figment::value::Value) -> Setting {
        Setting {
            source: format!("environment variable {name}"),
            key: key.to_string(),
            value,
        }
    }
}

impl figment::Provider for Setting {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.source.clone())
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::default(&self.key, &self.value).data()
    }
}

fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            let mut message = if key.is_empty() {
                e.kind.to_string()
            } else {
                format!("{key}: {}", e.kind)
            };
            if let Some(file) = e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                message.push_str(&format!(" (from {source} {file})"));
            } else if !source.is_empty() {
                message.push_str(&format!(" (from {source})"));
            }
            message
        })
        .collect::<Vec<_>>()
        .join("; ")
}
