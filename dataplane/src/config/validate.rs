//! Validation: ranges and combinations that types alone cannot express, each refusal naming
//! the key to fix; and what the `database` and `index` sections define (the `default`
//! collection) or leave without effect.

use super::address::parse_host_port;
use super::{Config, ConfigError, parse_net};
use crate::collection::{CollectionField, DEFAULT_COLLECTION, collection_problem};
use crate::error::ErrorCode;
use grape_client::{CollectionConfig, HnswParams, Quantization};

impl Config {
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
        if self.peer_auth_required() && !self.peer_auth_configured() && !self.cluster.insecure {
            return fail(
                "cluster.secret_file",
                "node-to-node calls must be authenticated: set cluster.secret_file (environment \
                 GRAPE__CLUSTER__SECRET_FILE) to a file holding a shared secret, or turn on \
                 cluster.enable_tls with cluster.tls_config.verify_peer; cluster.insecure: true \
                 accepts anyone who reaches node.raft_address"
                    .into(),
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
        for (key, value) in [
            (
                "performance.max_concurrent_searches",
                self.performance.max_concurrent_searches as u64,
            ),
            (
                "performance.max_filter_conditions",
                self.performance.max_filter_conditions as u64,
            ),
            (
                "performance.max_filter_values",
                self.performance.max_filter_values as u64,
            ),
            (
                "performance.header_read_timeout_ms",
                self.performance.header_read_timeout_ms,
            ),
            (
                "performance.body_read_timeout_ms",
                self.performance.body_read_timeout_ms,
            ),
            (
                "performance.max_connections",
                self.performance.max_connections as u64,
            ),
        ] {
            if value == 0 {
                return fail(key, "must be above 0".into());
            }
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
        if self.auth_enabled()
            && self.security.api_keys_file.is_none()
            && self.security.rbac_file.is_none()
        {
            return fail(
                "security.api_keys_file",
                "authentication is on (security.enable_auth, or a listen address beyond loopback) \
                 but neither an API keys file nor security.rbac_file is set"
                    .into(),
            );
        }
        if self.security.reload_interval_secs > 86_400 {
            return fail(
                "security.reload_interval_secs",
                format!(
                    "{} is above a day (86400); use 0 to reload only on SIGHUP",
                    self.security.reload_interval_secs
                ),
            );
        }
        if let Some(bad) = self
            .security
            .trusted_proxies
            .iter()
            .find(|p| parse_net(p).is_none())
        {
            return fail(
                "security.trusted_proxies",
                format!("{bad:?} is not an address or CIDR range"),
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

    /// The `default` collection as the `database` and `index` sections define it.
    pub fn default_collection(&self) -> Result<CollectionConfig, crate::Error> {
        let config = CollectionConfig {
            name: DEFAULT_COLLECTION.to_string(),
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
            payload_indexes: Vec::new(),
        };
        if let Some((field, message)) = collection_problem(&config) {
            // Name the configuration key, not the collection field it feeds.
            let key = match field {
                CollectionField::Dimension => "database.vector_dimension",
                CollectionField::ShardCount => "database.shard_count",
                CollectionField::ReplicationFactor => "database.replication_factor",
                CollectionField::HnswM => "index.hnsw_m",
                CollectionField::HnswEfConstruction => "index.hnsw_ef_construction",
                CollectionField::HnswEfSearch => "index.hnsw_ef_search",
                CollectionField::Name | CollectionField::PayloadIndexes => "database",
            };
            return Err(crate::Error::invalid(
                ErrorCode::InvalidConfig,
                format!("{key}: {message}"),
            ));
        }
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
}

#[cfg(test)]
mod tests {
    use super::super::PeerConfig;
    use super::*;

    /// A way to get a setting wrong.
    type Mistake = fn(&mut Config);

    /// Each way to get a setting wrong, with the key its refusal must name first.
    fn mistakes() -> Vec<(&'static str, Mistake)> {
        vec![
            ("node.id", |c| c.node.id.clear()),
            ("node.listen_address", |c| {
                c.node.listen_address = "8080".into()
            }),
            ("node.raft_address", |c| {
                c.node.raft_address = "host:".into()
            }),
            ("node.advertise_raft_address", |c| {
                c.node.advertise_raft_address = Some("nowhere".into())
            }),
            ("node.advertise_api_address", |c| {
                c.node.advertise_api_address = Some(":80".into())
            }),
            ("node.data_dir", |c| c.node.data_dir = "".into()),
            ("cluster.peers[0].id", |c| {
                c.cluster.peers = vec![PeerConfig {
                    id: String::new(),
                    address: "a:1".into(),
                }]
            }),
            ("cluster.peers[0].address", |c| {
                c.cluster.peers = vec![PeerConfig {
                    id: "node-2".into(),
                    address: "a".into(),
                }]
            }),
            ("cluster.election_timeout_ms", |c| {
                c.cluster.election_timeout_ms = c.cluster.heartbeat_interval_ms
            }),
            ("cluster.snapshot_log_entries", |c| {
                c.cluster.snapshot_log_entries = 0
            }),
            ("database.vector_dimension", |c| {
                c.database.vector_dimension = 0
            }),
            ("database.shard_count", |c| c.database.shard_count = 5000),
            ("database.replication_factor", |c| {
                c.database.replication_factor = Some(0)
            }),
            ("index.hnsw_m", |c| c.index.hnsw_m = 1),
            ("index.hnsw_ef_construction", |c| {
                c.index.hnsw_ef_construction = 0
            }),
            ("index.hnsw_ef_search", |c| c.index.hnsw_ef_search = 0),
            ("index.type", |c| c.index.index_type = "ivf".into()),
            ("index.rebuild_threshold", |c| c.index.rebuild_threshold = 0),
            ("performance.max_batch_size", |c| {
                c.performance.max_batch_size = 0
            }),
            ("performance.query_timeout_ms", |c| {
                c.performance.query_timeout_ms = 0
            }),
            ("performance.max_request_body_mb", |c| {
                c.performance.max_request_body_mb = 0
            }),
            ("performance.max_concurrent_searches", |c| {
                c.performance.max_concurrent_searches = 0
            }),
            ("performance.max_filter_conditions", |c| {
                c.performance.max_filter_conditions = 0
            }),
            ("performance.max_filter_values", |c| {
                c.performance.max_filter_values = 0
            }),
            ("performance.header_read_timeout_ms", |c| {
                c.performance.header_read_timeout_ms = 0
            }),
            ("performance.body_read_timeout_ms", |c| {
                c.performance.body_read_timeout_ms = 0
            }),
            ("performance.max_connections", |c| {
                c.performance.max_connections = 0
            }),
            ("monitoring.log_level", |c| {
                c.monitoring.log_level = "loud".into()
            }),
            ("security.api_keys_file", |c| {
                c.node.listen_address = "0.0.0.0:8080".into()
            }),
            ("security.cert_file", |c| c.security.enable_tls = true),
            ("security.reload_interval_secs", |c| {
                c.security.reload_interval_secs = u64::MAX
            }),
            ("security.trusted_proxies", |c| {
                c.security.trusted_proxies = vec!["10.0.0.0/8".into(), "proxy".into()]
            }),
            ("cluster.secret_file", |c| c.cluster.enabled = true),
            ("cluster.secret_file", |c| {
                c.node.raft_address = "0.0.0.0:9000".into()
            }),
            ("cluster.secret_file", |c| {
                c.cluster.enabled = true;
                c.cluster.enable_tls = true;
                c.cluster.tls_config.verify_peer = false;
            }),
        ]
    }

    #[test]
    fn the_defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn each_refusal_names_the_key_to_fix() {
        for (key, mistake) in mistakes() {
            let mut config = Config::default();
            mistake(&mut config);
            let error = config.validate().unwrap_err();
            assert!(
                error.0.starts_with(&format!("{key}: ")),
                "expected a refusal naming {key}, got: {error}"
            );
        }
    }

    #[test]
    fn a_clustered_node_starts_with_a_secret_verified_tls_or_an_explicit_opt_out() {
        let clustered = || {
            let mut config = Config::default();
            config.cluster.enabled = true;
            config
        };
        let mut secret = clustered();
        secret.cluster.secret_file = Some("/etc/grape/cluster.secret".into());
        secret.validate().unwrap();
        let mut tls = clustered();
        tls.cluster.enable_tls = true;
        tls.validate().unwrap();
        assert!(
            tls.cluster.tls_config.verify_peer,
            "verify_peer is on by default"
        );
        let mut insecure = clustered();
        insecure.cluster.insecure = true;
        insecure.validate().unwrap();
        // A lone node on loopback needs none of them.
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_default_collection_follows_the_database_and_index_sections() {
        let mut config = Config::default();
        config.database.vector_dimension = 384;
        config.database.shard_count = 16;
        config.index.hnsw_m = 32;
        config.index.enable_binary_quantization = true;
        let collection = config.default_collection().unwrap();
        assert_eq!(collection.name, DEFAULT_COLLECTION);
        assert_eq!(
            (
                collection.dimension,
                collection.shard_count,
                collection.hnsw.m
            ),
            (384, 16, 32)
        );
        assert_eq!(collection.quantization, Quantization::Binary);
        assert_eq!(collection.replication_factor, 1, "a single node");
        config.cluster.enabled = true;
        config.cluster.peers = ["node-1", "node-2", "node-3", "node-4"]
            .iter()
            .map(|id| PeerConfig {
                id: id.to_string(),
                address: format!("{id}:9000"),
            })
            .collect();
        assert_eq!(
            config.default_collection().unwrap().replication_factor,
            3,
            "three replicas once the cluster has them"
        );
    }

    #[test]
    fn seed_keys_without_effect_are_listed_when_set() {
        let mut config = Config::default();
        assert!(config.inert_keys().is_empty());
        config.database.query_cache_mb = Some(512);
        config.node.role = Some("leader".into());
        assert_eq!(
            config.inert_keys(),
            ["node.role", "database.query_cache_mb"]
        );
    }
}
