//! Loading: built-in defaults, then the YAML file, the environment and the flags, each named
//! as the source of a bad value in the error.

use super::address::parse_host_port;
use super::{Config, ConfigError, PeerConfig};
use figment::Figment;
use figment::providers::{Format, Serialized, Yaml};
use std::path::PathBuf;

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
            } else if name.starts_with("GRAPE__RBAC") {
                return Err(ConfigError(format!(
                    "{name}: roles and users cannot come from the environment; put the rbac block in the configuration file or security.rbac_file"
                )));
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
        let mut config: Config = figment.extract().map_err(|e| ConfigError(describe(e)))?;
        if config.rbac.is_some() {
            // Roles and users in the configuration file: it is their rbac file.
            match (&overrides.config, &config.security.rbac_file) {
                (Some(_), Some(other)) => {
                    return Err(ConfigError(format!(
                        "rbac: the configuration file defines roles and users, and security.rbac_file names {} too: keep them in one place",
                        other.display()
                    )));
                }
                (Some(path), None) => config.security.rbac_file = Some(path.clone()),
                (None, _) => {
                    return Err(ConfigError(
                        "rbac: roles and users can only come from a file (the configuration file or security.rbac_file)".into(),
                    ));
                }
            }
        }
        config.validate()?;
        Ok(config)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A YAML file in a temp dir (keep the dir alive).
    fn file(yaml: &str) -> (tempfile::TempDir, Overrides) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grape.yaml");
        std::fs::write(&path, yaml).unwrap();
        let overrides = Overrides {
            config: Some(path),
            ..Default::default()
        };
        (dir, overrides)
    }

    #[test]
    fn defaults_then_file_then_environment_then_flags() {
        let defaults = Config::load_from(&Overrides::default(), env(&[])).unwrap();
        assert_eq!(defaults, Config::default());

        let yaml = "node:\n  id: from-file\n  data_dir: /tmp/from-file\ndatabase:\n  vector_dimension: 64\n  shard_count: 4\n";
        let (_dir, mut overrides) = file(yaml);
        let from_file = Config::load_from(&overrides, env(&[])).unwrap();
        assert_eq!(from_file.node.id, "from-file");
        assert_eq!(from_file.database.vector_dimension, 64);
        assert_eq!(from_file.database.shard_count, 4);
        assert_eq!(from_file.node.listen_address, "127.0.0.1:8080", "a default");
        assert_eq!(
            from_file.index.graph,
            crate::index::GraphEngine::Grape,
            "Grape's graph unless the file names another engine"
        );

        let vars = env(&[
            ("GRAPE_NODE_ID", "from-env"),
            ("GRAPE__DATABASE__VECTOR_DIMENSION", "128"),
            ("GRAPE__NODE__LISTEN_ADDRESS", "127.0.0.1:7001"),
            ("UNRELATED", "ignored"),
        ]);
        let from_env = Config::load_from(&overrides, vars.clone()).unwrap();
        assert_eq!(from_env.node.id, "from-env");
        assert_eq!(from_env.database.vector_dimension, 128);
        assert_eq!(from_env.node.listen_address, "127.0.0.1:7001");
        assert_eq!(from_env.database.shard_count, 4, "still from the file");

        overrides.node_id = Some("from-flag".into());
        overrides.listen_address = Some("127.0.0.1:7002".into());
        overrides.data_dir = Some("/tmp/from-flag".into());
        let from_flags = Config::load_from(&overrides, vars).unwrap();
        assert_eq!(from_flags.node.id, "from-flag");
        assert_eq!(from_flags.node.listen_address, "127.0.0.1:7002");
        assert_eq!(from_flags.node.data_dir, PathBuf::from("/tmp/from-flag"));
        assert_eq!(from_flags.database.vector_dimension, 128, "still from env");
    }

    #[test]
    fn cluster_peers_come_from_the_environment_in_both_forms() {
        let vars = env(&[("GRAPE_CLUSTER_PEERS", "node-2=10.0.0.2:9000, node-3:9001")]);
        let config = Config::load_from(&Overrides::default(), vars).unwrap();
        let peers: Vec<(&str, &str)> = config
            .cluster
            .peers
            .iter()
            .map(|p| (p.id.as_str(), p.address.as_str()))
            .collect();
        assert_eq!(
            peers,
            [("node-2", "10.0.0.2:9000"), ("node-3", "node-3:9001")]
        );
        let bad = Config::load_from(
            &Overrides::default(),
            env(&[("GRAPE_CLUSTER_PEERS", "node-2=nowhere")]),
        )
        .unwrap_err();
        assert!(bad.0.starts_with("GRAPE_CLUSTER_PEERS="), "{bad}");
    }

    #[test]
    fn a_bad_value_names_its_key_and_where_it_came_from() {
        let bad = Config::load_from(
            &Overrides::default(),
            env(&[("GRAPE__DATABASE__SHARD_COUNT", "many")]),
        )
        .unwrap_err();
        assert!(bad.0.starts_with("database.shard_count: "), "{bad}");
        assert!(
            bad.0
                .contains("environment variable GRAPE__DATABASE__SHARD_COUNT"),
            "{bad}"
        );

        let (_dir, overrides) = file("database:\n  vector_dimensions: 3\n");
        let unknown = Config::load_from(&overrides, env(&[])).unwrap_err();
        assert!(unknown.0.contains("vector_dimensions"), "{unknown}");
        assert!(unknown.0.contains("grape.yaml"), "{unknown}");

        let missing = Overrides {
            config: Some("/nonexistent/grape.yaml".into()),
            ..Default::default()
        };
        let missing = Config::load_from(&missing, env(&[])).unwrap_err();
        assert!(missing.0.contains("/nonexistent/grape.yaml"), "{missing}");
    }

    #[test]
    fn an_rbac_block_makes_the_configuration_file_the_rbac_file() {
        let (_dir, overrides) = file("rbac:\n  users: []\nsecurity:\n  enable_auth: true\n");
        let config = Config::load_from(&overrides, env(&[])).unwrap();
        assert_eq!(config.security.rbac_file, overrides.config);
        assert_eq!(format!("{:?}", config.rbac), "Some(RbacBlock(..))");
        let printed = serde_json::to_string(&config).unwrap();
        assert!(!printed.contains("users"), "{printed}");

        let twice = Config::load_from(
            &overrides,
            env(&[("GRAPE__SECURITY__RBAC_FILE", "/etc/grape/rbac.yaml")]),
        )
        .unwrap_err();
        assert!(twice.0.contains("keep them in one place"), "{twice}");
        let from_env =
            Config::load_from(&Overrides::default(), env(&[("GRAPE__RBAC__USERS", "[]")]))
                .unwrap_err();
        assert!(from_env.0.contains("GRAPE__RBAC__USERS"), "{from_env}");
    }
}
