//! The `GrapeCluster` custom resource (`grape.io/v1alpha1`): what a platform engineer asks for
//! (spec) and what the operator reports (status).

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
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
    validation = Rule::new("self.database.replicationFactor <= self.replicas").message("database.replicationFactor must not exceed replicas"),
    validation = Rule::new("!has(self.bootstrap) || (has(oldSelf.bootstrap) && self.bootstrap == oldSelf.bootstrap)").message("bootstrap is fixed once the cluster exists (it may only be removed)")
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
    /// How the pods spread over failure domains. Default: at most one pod more in any zone
    /// (`topology.kubernetes.io/zone`) than in another, as far as the scheduler can
    /// (`ScheduleAnyway`, so that a single-zone cluster still schedules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Without `affinity`: `required` (the default) puts no two pods of the cluster on one
    /// host, so that losing a host loses at most one replica of any shard; `preferred` allows
    /// it when the scheduler has no other choice (a one-node development cluster).
    #[serde(default = "default_anti_affinity")]
    #[x_kube(validation = Rule::new("self in ['required', 'preferred']").message("podAntiAffinityType must be required or preferred"))]
    pub pod_anti_affinity_type: String,
    /// Seconds a pod may take to open its storage and answer `/health` after a start
    /// (the startup probe; graphs load after that, behind readiness, without a limit).
    #[serde(default = "default_startup_timeout")]
    #[schemars(range(min = 10, max = 86400))]
    pub startup_timeout_seconds: i32,
    /// PriorityClass of the data pods (a database should not be the first thing evicted
    /// under node pressure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Seconds a change (a rollout, a scaling step, an action) may go without progress
    /// before the cluster reports `Degraded` with reason `ProgressDeadlineExceeded`.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: i32,
    /// Replacing a member that stays down (its host is gone, its pod cannot start).
    #[serde(default)]
    pub failover: FailoverSpec,
    /// What the nodes need to take backups and restore them (`GrapeBackup`,
    /// `GrapeScheduledBackup`, `bootstrap.fromBackup`).
    #[serde(default)]
    pub backup: BackupSpec,
    /// How a new cluster gets its first data; fixed once the cluster exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
}

/// What the nodes need to take backups and restore them.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Where GrapeBackups and GrapeScheduledBackups of this cluster may write:
    /// `s3://bucket/prefix` or `file:///backups/...` locations; a backup's destination must be
    /// one of them or inside one. Empty: none may (whoever may create a GrapeBackup must not
    /// be able to send the data elsewhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub destinations: Vec<String>,
    /// Secret whose keys are S3 settings (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and
    /// optionally `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_SESSION_TOKEN`): mounted
    /// read-only into every node and read at each backup and restore (`backup.credentials_file`),
    /// so that a rotated key is used without a restart. Never shown in a status or Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// An existing PersistentVolumeClaim (ReadWriteMany: every node writes to it) mounted at
    /// `/backups` in every node, for `file:///backups/...` destinations. S3 needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_name: Option<String>,
}

/// How a new cluster gets its first data.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore a backup once the cluster's pods are first ready (`POST /admin/restore`).
    pub from_backup: FromBackup,
}

/// A backup to restore into a new cluster.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FromBackup {
    /// Where the backup was written: `s3://bucket/prefix` or `file:///backups/...` (the
    /// destination given when it was taken, without the backup's id).
    #[x_kube(validation = Rule::new("self.startsWith('s3://') || self.startsWith('file:///')").message("source must be s3://bucket/prefix or file:///dir"))]
    pub source: String,
    /// The backup's id; the newest complete backup at `source` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Collections to restore; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collections: Option<Vec<String>>,
    /// New names for restored collections (`{docs: docs_v1}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
}

/// Failover of a member that stays down (the TiDB operator's pattern).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Seconds a member may stay unreachable before it is failed over (one that answers but is
    /// not ready, e.g. loading its graphs, is not): a spare
    /// pod is added, the member is removed (its replicas move to the spare), and when its pod
    /// is back it joins as a new node and the spare is drained away. 0 turns failover off.
    #[serde(default = "default_failover_timeout")]
    #[schemars(range(min = 0, max = 86400))]
    pub timeout_seconds: i32,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        FailoverSpec {
            timeout_seconds: default_failover_timeout(),
        }
    }
}

fn default_failover_timeout() -> i32 {
    300
}

fn default_progress_deadline() -> i32 {
    600
}

fn default_anti_affinity() -> String {
    "required".to_string()
}

fn default_startup_timeout() -> i32 {
    600
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
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storageClassName is immutable: a volume cannot change class (restore a backup into a new cluster instead)"))]
pub struct StorageSpec {
    /// Volume size, e.g. `10Gi`. It may grow: the operator expands each pod's claim (the
    /// StorageClass must allow volume expansion); it cannot shrink.
    #[serde(default = "default_storage_size")]
    #[x_kube(
        validation = Rule::new("isQuantity(self)").message("storage.size must be a quantity such as 10Gi"),
        validation = Rule::new("!isQuantity(self) || !isQuantity(oldSelf) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage.size cannot shrink (volumes only grow)")
    )]
    pub size: String,
    /// Storage class; the cluster default when absent. Fixed once the cluster exists (a
    /// volume cannot change class; move to another class with a new cluster and a backup).
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
    /// Replicas per shard of the `default` collection; fixed once the cluster exists.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("replicationFactor is immutable: it shapes the default collection when the cluster is created"))]
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
    /// Graph degree of the `default` collection; fixed once the cluster exists.
    #[serde(default = "default_m")]
    #[schemars(range(min = 2, max = 128))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("index.m is immutable: it shapes the default collection when the cluster is created"))]
    pub m: i32,
    /// Build-time candidate list of the `default` collection; fixed once the cluster exists.
    #[serde(default = "default_ef_construction")]
    #[schemars(range(min = 1, max = 10000))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("index.efConstruction is immutable: it shapes the default collection when the cluster is created"))]
    pub ef_construction: i32,
    /// Default search candidate list of the `default` collection (a search may pass its own
    /// `ef`); fixed once the cluster exists.
    #[serde(default = "default_ef_search")]
    #[schemars(range(min = 1, max = 100000))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("index.efSearch is immutable: it shapes the default collection when the cluster is created (searches may pass their own ef)"))]
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
#[x_kube(validation = Rule::new("!self.allowUnauthenticated || !(has(self.apiKeysSecret) || has(self.rbacSecret))").message("allowUnauthenticated turns authentication off: it cannot go with apiKeysSecret or rbacSecret"))]
#[x_kube(validation = Rule::new("!has(self.certificates) || self.certificates != 'cert-manager' || has(self.certManagerIssuer)").message("certificates: cert-manager needs certManagerIssuer"))]
pub struct SecuritySpec {
    /// Secret with an `api_keys.yaml` key (the seed guide's format). It must also hold
    /// `operator-key`, an admin key in that file, for the operator's own calls (see
    /// docs/kubernetes.md). When absent, the operator generates `<cluster>-api-keys` with an
    /// admin key (`admin-key`) and its own: authentication is on either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_secret: Option<String>,
    /// Turns authentication off: anyone who reaches the API port may read, write and run the
    /// admin API. For a throwaway cluster only; the status says so (`Degraded` stays False,
    /// but an `InsecureAuthDisabled` Warning Event is published at each spec change).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Secret with an `rbac.yaml` key: the seed guide's `rbac` block (roles, and users who log
    /// in with HTTP Basic and bcrypt password hashes). The nodes read it as
    /// `security.rbac_file` and reload it when the Secret changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac_secret: Option<String>,
    /// Secret of type `kubernetes.io/tls` (`tls.crt`, `tls.key`, `ca.crt`): HTTPS for clients
    /// and verified TLS between nodes, with your own certificate (`certificates` is then not
    /// used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
    /// Where the nodes' certificate comes from without `tlsSecret`: `operator` (the
    /// operator's own CA, Secret `<cluster>-ca`, signs `<cluster>-tls`, renewed 30 days
    /// before it expires; clients trust `ca.crt` of either), `cert-manager` (a cert-manager
    /// `Certificate` for `<cluster>-tls`, from `certManagerIssuer`), or `none` (plain HTTP
    /// for clients, probes and node-to-node traffic: a Warning Event at each spec change).
    /// Unset: `operator` for a new cluster; a cluster created before TLS was the default
    /// keeps plain HTTP until this is set (see docs/kubernetes.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['operator', 'cert-manager', 'none']").message("certificates must be operator, cert-manager or none"))]
    pub certificates: Option<String>,
    /// The cert-manager issuer of the nodes' certificate (`certificates: cert-manager`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager_issuer: Option<IssuerRef>,
}

impl SecuritySpec {
    /// Where the certificate comes from (`operator` when unset).
    pub fn certificates(&self) -> &str {
        self.certificates.as_deref().unwrap_or("operator")
    }
}

/// A cert-manager issuer.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// `Issuer` (in the cluster's namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".to_string()
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_string()
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
    /// `Pending`, `Creating`, `Running`, `Scaling`, `Updating`, `Rebalancing`, `Expanding`,
    /// `Recovering` (a member whose volume was lost is being replaced, or a member that stayed
    /// down is failed over to a spare), `Degraded` or `Paused`.
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
    /// Pods on the current pod template that are ready.
    #[serde(default)]
    pub updated_replicas: i32,
    /// The data-plane operation running (drain, rebalance, repair) and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// When the work in progress last moved on (an action taken, a pod turned ready or
    /// updated, a member added or removed, an operation advanced); absent when nothing is to
    /// do. Past `spec.progressDeadlineSeconds` the cluster is `Degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// The last data-plane or pod action that failed, while it keeps failing: retried with
    /// exponential backoff (5 s doubling to 5 min); cleared by a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_action: Option<FailedAction>,
    /// The last step taken on one pod, while the operator waits for its outcome (a restarted
    /// or added pod to be ready, a pod whose leaderships were moved off to be restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<PodStep>,
    /// The last `grape.io/rebalance` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebalance: Option<String>,
    /// The last `grape.io/switchover` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switchover: Option<String>,
    /// When the operator last started a rebalance by itself (the cluster was unbalanced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_auto_rebalance_time: Option<Time>,
    /// The restore of `spec.bootstrap.fromBackup`, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
    /// The member being failed over (down past `spec.failover.timeoutSeconds`), while it is:
    /// until its pod is back and a ready member again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
}

/// The bootstrap restore (see [`GrapeClusterStatus::restore`]).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// The backup being restored (known once the data plane has started it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// `Running`, `Completed` or `Failed` (retried with backoff while it fails).
    pub phase: String,
    #[serde(default)]
    pub documents_restored: i64,
    #[serde(default)]
    pub documents_total: i64,
    /// The data plane's error, while it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Failed starts and runs in a row.
    #[serde(default)]
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// A failover in progress (see [`GrapeClusterStatus::failover`]).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// The member that stayed down.
    pub member: String,
    /// The spare pod added in its place (the next ordinal above `spec.replicas`).
    pub spare: String,
    pub start_time: Time,
}

/// An action that failed (see [`GrapeClusterStatus::failed_action`]).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailedAction {
    /// The action's Event reason (`DrainingNode`, `Rebalancing`, ...).
    pub reason: String,
    /// What was tried and what the data plane or the API server answered.
    pub message: String,
    /// Consecutive failures.
    pub attempts: i32,
    pub last_failure_time: Time,
}

/// A step taken on one pod (see [`GrapeClusterStatus::last_step`]).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStep {
    /// `MovedLeaderships`, `Restarted`, `RestartedForResize` (to let the kubelet grow its
    /// file system) or `Added`.
    pub kind: String,
    pub pod: String,
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
    /// Since when it has been unreachable or not ready, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_since: Option<Time>,
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

/// Every CustomResourceDefinition of the operator, by file stem (`crds/<stem>.yaml`).
pub fn crd_yamls() -> Vec<(String, String)> {
    let mut all = vec![("grapecluster".to_string(), crd_yaml())];
    all.extend(crate::backup::crd::crd_yamls());
    all
}

/// Where the repository keeps copies of CRD `stem` (relative to its root).
pub fn crd_copies(stem: &str) -> Vec<String> {
    let manifest = if stem == "grapecluster" {
        "manifests/crd.yaml".to_string()
    } else {
        format!("manifests/crd-{stem}.yaml")
    };
    vec![
        format!("crds/{stem}.yaml"),
        format!("charts/grape-operator/crds/{stem}.yaml"),
        manifest,
    ]
}
