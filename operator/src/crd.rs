//! The `GrapeCluster` custom resource (`grape.io/v1alpha1`): what a platform engineer asks for
//! (spec) and what the operator reports (status).

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Grape vector database cluster.
// kube's printcolumn attributes repeat the same keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "grape.io",
    version = "v1alpha1",
    kind = "GrapeCluster",
    plural = "grapeclusters",
    shortname = "grape",
    namespaced,
    status = "GrapeClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A Grape vector database cluster: a StatefulSet of data-plane nodes replicating every shard through Raft."
)]
#[x_kube(
    cel,
    validation = Rule::new("self.database.replicationFactor <= self.replicas").message("database.replicationFactor must not exceed replicas")
)]
#[serde(rename_all = "camelCase")]
pub struct GrapeClusterSpec {
    /// Data-plane nodes (pods).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Container image of the node (it also holds the operator binary).
    #[serde(default = "default_image")]
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// CPU and memory requests and limits of each node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Each node's persistent volume.
    #[serde(default)]
    pub storage: StorageSpec,
    /// The `default` collection.
    #[serde(default)]
    pub database: DatabaseSpec,
    /// HNSW settings of the `default` collection.
    #[serde(default)]
    pub index: IndexSpec,
    /// Raft timing.
    #[serde(default)]
    pub raft: RaftSpec,
    /// API keys and TLS.
    #[serde(default)]
    pub security: SecuritySpec,
    /// Prometheus scraping.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// Freezes every change the operator would make (status is still reported).
    #[serde(default)]
    pub paused: bool,
    /// Pod placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

fn default_replicas() -> i32 {
    3
}

/// The data-plane image of the operator's own version: an operator upgrade is what moves
/// the nodes to a new version, never a restart pulling a moved tag.
fn default_image() -> String {
    format!("grape-vector-db:{}", env!("CARGO_PKG_VERSION"))
}

/// A node's persistent volume.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// Storage class; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_storage_size() -> String {
    "10Gi".to_string()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// The `default` collection (the node configuration's `database` section).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Vector dimension; fixed once the cluster exists.
    #[serde(default = "default_dimension")]
    #[schemars(range(min = 1, max = 65536))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("vectorDimension is immutable"))]
    pub vector_dimension: i32,
    /// `cosine`, `l2` or `dot`; fixed once the cluster exists.
    #[serde(default = "default_metric")]
    #[x_kube(
        validation = Rule::new("self in ['cosine', 'l2', 'dot']").message("metric must be cosine, l2 or dot"),
        validation = Rule::new("self == oldSelf").message("metric is immutable")
    )]
    pub metric: String,
    /// Shards of the `default` collection; fixed once the cluster exists.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("shardCount is immutable"))]
    pub shard_count: i32,
    /// Replicas per shard.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 7))]
    pub replication_factor: i32,
}

fn default_dimension() -> i32 {
    1536
}

fn default_metric() -> String {
    "cosine".to_string()
}

fn default_shards() -> i32 {
    16
}

fn default_replication() -> i32 {
    3
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        DatabaseSpec {
            vector_dimension: default_dimension(),
            metric: default_metric(),
            shard_count: default_shards(),
            replication_factor: default_replication(),
        }
    }
}

/// HNSW settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IndexSpec {
    #[serde(default = "default_m")]
    #[schemars(range(min = 2, max = 128))]
    pub m: i32,
    #[serde(default = "default_ef_construction")]
    #[schemars(range(min = 1, max = 10000))]
    pub ef_construction: i32,
    #[serde(default = "default_ef_search")]
    #[schemars(range(min = 1, max = 100000))]
    pub ef_search: i32,
    /// HNSW implementation (`index.graph` of the nodes): `grape` (the default) or `hnsw_rs`. A change
    /// rolls through the pods; each builds the new engine's graphs from storage when it starts.
    #[serde(default = "default_graph")]
    #[x_kube(validation = Rule::new("self in ['hnsw_rs', 'grape']").message("graph must be hnsw_rs or grape"))]
    pub graph: String,
    /// Where collections created with `quantization` keep their full vectors for re-scoring
    /// (`index.quantized_originals`): `memory` (the default) or `disk` (memory then holds the
    /// codes; the page cache serves the re-scoring reads).
    #[serde(default = "default_quantized_originals")]
    #[x_kube(validation = Rule::new("self in ['memory', 'disk']").message("quantizedOriginals must be memory or disk"))]
    pub quantized_originals: String,
}

fn default_quantized_originals() -> String {
    "memory".to_string()
}

fn default_graph() -> String {
    "grape".to_string()
}

fn default_m() -> i32 {
    16
}

fn default_ef_construction() -> i32 {
    200
}

fn default_ef_search() -> i32 {
    128
}

impl Default for IndexSpec {
    fn default() -> Self {
        IndexSpec {
            m: default_m(),
            ef_construction: default_ef_construction(),
            ef_search: default_ef_search(),
            graph: default_graph(),
            quantized_originals: default_quantized_originals(),
        }
    }
}

/// Raft timing.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.electionTimeoutMs >= 2 * self.heartbeatIntervalMs").message("electionTimeoutMs must be at least twice heartbeatIntervalMs"))]
pub struct RaftSpec {
    #[serde(default = "default_election")]
    #[schemars(range(min = 50, max = 60000))]
    pub election_timeout_ms: i32,
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 10, max = 30000))]
    pub heartbeat_interval_ms: i32,
}

fn default_election() -> i32 {
    500
}

fn default_heartbeat() -> i32 {
    100
}

impl Default for RaftSpec {
    fn default() -> Self {
        RaftSpec {
            election_timeout_ms: default_election(),
            heartbeat_interval_ms: default_heartbeat(),
        }
    }
}

/// API keys, users and roles, and TLS.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.rbacSecret) || has(self.apiKeysSecret)").message("rbacSecret needs apiKeysSecret (the operator calls the nodes with its key)"))]
pub struct SecuritySpec {
    /// Secret with an `api_keys.yaml` key (the seed guide's format). Authentication is on when
    /// set. It must also hold `operator-key`, an admin key in that file, for the operator's own
    /// calls (see docs/kubernetes.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_secret: Option<String>,
    /// Secret with an `rbac.yaml` key: the seed guide's `rbac` block (roles, and users who log
    /// in with HTTP Basic and bcrypt password hashes). The nodes read it as
    /// `security.rbac_file` and reload it when the Secret changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac_secret: Option<String>,
    /// Secret of type `kubernetes.io/tls` (`tls.crt`, `tls.key`, `ca.crt`): HTTPS for clients
    /// and verified TLS between nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

/// Prometheus scraping.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a `monitoring.coreos.com/v1` ServiceMonitor for the nodes.
    #[serde(default)]
    pub service_monitor: bool,
}

/// What the operator observed and did.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrapeClusterStatus {
    /// `Pending`, `Creating`, `Running`, `Scaling`, `Updating`, `Degraded` or `Paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Pods the StatefulSet has.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The node leading the meta group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Each node, as the data plane reports it.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// `Ready`, `Progressing`, `Degraded`, `Balanced`: one each (a map by `type`, so a
    /// server-side apply merges them by type).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The pods' label selector, for the scale subresource (an HPA targeting the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last `grape.io/rebalance` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebalance: Option<String>,
    /// The last `grape.io/switchover` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switchover: Option<String>,
    /// When the operator last started a rebalance by itself (the cluster was unbalanced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_auto_rebalance_time: Option<Time>,
}

/// One node of the cluster.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod name.
    pub name: String,
    /// Node id (the pod name).
    pub node_id: String,
    pub ready: bool,
    /// `leader` when it leads the meta group, else `follower` (or `joining`, `draining`).
    pub raft_role: String,
    /// Shard replicas it holds.
    pub replicas: i32,
    /// Shard groups it leads.
    pub leaderships: i32,
}

/// The CustomResourceDefinition as YAML (what `crds/grapecluster.yaml` holds).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = GrapeCluster::crd();
    format!(
        "# Generated by `cargo run -p grape-operator --bin crdgen`; do not edit.\n{}",
        serde_yaml::to_string(&crd).unwrap_or_default()
    )
}
