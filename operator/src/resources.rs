//! The objects a `GrapeCluster` owns, rendered from its spec: pure functions, no API calls.
//!
//! ```text
//!   GrapeCluster "g" ──owns──> ConfigMap g-config        server.yaml rendered from the spec
//!                        ├───> Service g-headless        peer DNS g-N.g-headless.NS.svc
//!                        ├───> Service g                 clients (port 8080)
//!                        ├───> StatefulSet g             pods g-0..g-(R-1), node.id = pod name
//!                        ├───> PodDisruptionBudget g     maxUnavailable from the RF
//!                        ├───> Secret g-cluster-secret   the secret node-to-node calls prove
//!                        │                               (created once, random; see controller)
//!                        └───> ServiceMonitor g          when spec.monitoring.serviceMonitor
//! ```
//!
//! The StatefulSet uses the `OnDelete` update strategy: the operator itself restarts pods, one
//! at a time, after moving their leaderships away. Its replica count is not taken from the spec
//! directly but from the decision (scale-in lowers it only after the drain).

use crate::crd::{GrapeCluster, GrapeClusterSpec};
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Client API port.
pub const API_PORT: i32 = 8080;
/// Node-to-node (Raft) port.
pub const RAFT_PORT: i32 = 9000;
/// Prometheus metrics port.
pub const METRICS_PORT: i32 = 9091;
/// Where the data volume is mounted.
pub const DATA_DIR: &str = "/var/lib/grape-vector-db";
/// Where the rendered configuration is mounted.
pub const CONFIG_DIR: &str = "/etc/grape-vector-db";
/// The API-key file inside the API-keys Secret.
pub const API_KEYS_FILE: &str = "api_keys.yaml";
/// The key of `security.rbacSecret` the nodes read their roles and users from.
pub const RBAC_FILE: &str = "rbac.yaml";
/// The key inside the cluster Secret holding the node-to-node secret.
pub const CLUSTER_SECRET_KEY: &str = "cluster.secret";
/// The key inside the API-keys Secret holding the operator's own (admin) key.
pub const OPERATOR_KEY: &str = "operator-key";
/// The key inside a generated API-keys Secret holding the admin key for people.
pub const ADMIN_KEY: &str = "admin-key";
/// Where `backup.credentialsSecret` is mounted, under [`CONFIG_DIR`].
pub const BACKUP_CREDENTIALS_DIR: &str = "backup-credentials";
/// Where `backup.volumeClaimName` is mounted (`file:///backups` destinations).
pub const BACKUPS_DIR: &str = "/backups";
/// Pod template annotation: hash of the rest of the pod template, rendered configuration
/// included. Pods whose annotation differs from the desired one are restarted, one at a time.
pub const TEMPLATE_HASH_ANNOTATION: &str = "grape.io/template-hash";
/// Pod template annotation: digest of the Secrets the nodes read at start-up (cluster secret,
/// TLS); part of the template hash, so that rotating them rolls the pods.
pub const SECRETS_DIGEST_ANNOTATION: &str = "grape.io/secrets-digest";
/// StatefulSet annotation: how many pods formed the cluster (the fixed bootstrap peer list).
pub const BOOTSTRAP_ANNOTATION: &str = "grape.io/bootstrap-replicas";
/// Annotation on the GrapeCluster: make this pod the meta-group leader.
pub const SWITCHOVER_ANNOTATION: &str = "grape.io/switchover";
/// Annotation on the GrapeCluster: any new value starts a rebalance.
pub const REBALANCE_ANNOTATION: &str = "grape.io/rebalance";
/// The operator's field manager for server-side apply.
pub const FIELD_MANAGER: &str = "grape-operator";

/// Names of the objects of cluster `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn of(cluster: &GrapeCluster) -> Names {
        Names {
            cluster: cluster.metadata.name.clone().unwrap_or_default(),
            namespace: cluster
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        }
    }
    /// The prefix of the cluster's ConfigMaps; each is named by its content's hash.
    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }
    /// The immutable ConfigMap holding `server_yaml`.
    pub fn config_map_of(&self, server_yaml: &str) -> String {
        format!("{}-{}", self.config_map(), &hash(server_yaml)[..10])
    }
    pub fn headless(&self) -> String {
        format!("{}-headless", self.cluster)
    }
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }
    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }
    /// The API keys the operator generates when the spec names none.
    pub fn api_keys_secret(&self) -> String {
        format!("{}-api-keys", self.cluster)
    }
    /// The operator's CA for this cluster (`certificates: operator`).
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }
    /// The nodes' certificate when the operator or cert-manager issues it.
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.cluster)
    }
    /// The Secret holding the secret every node-to-node call proves.
    pub fn cluster_secret(&self) -> String {
        format!("{}-cluster-secret", self.cluster)
    }
    /// Pod `ordinal`'s name (also its Grape node id).
    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }
    /// The stable DNS name of pod `pod`.
    pub fn pod_host(&self, pod: &str) -> String {
        format!("{pod}.{}.{}.svc", self.headless(), self.namespace)
    }
    /// The ordinal of one of this cluster's pods, from its name.
    pub fn ordinal(&self, pod: &str) -> Option<i32> {
        pod.strip_prefix(&self.cluster)?
            .strip_prefix('-')?
            .parse()
            .ok()
    }
}

/// Labels on every owned object; the selector uses the first two.
pub fn labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "grape".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            names.cluster.clone(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "grape-operator".to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "database".to_string(),
        ),
    ])
}

/// The pod selector.
pub fn selector(names: &Names) -> BTreeMap<String, String> {
    labels(names)
        .into_iter()
        .filter(|(k, _)| k == "app.kubernetes.io/name" || k == "app.kubernetes.io/instance")
        .collect()
}

/// [`selector`] as a label selector string (`key=value,...`).
pub fn selector_string(names: &Names) -> String {
    selector(names)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn meta(cluster: &GrapeCluster, names: &Names, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names)),
        owner_references: cluster.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The owner reference every owned object carries.
pub fn owner_reference(cluster: &GrapeCluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

/// Everything the operator applies for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub headless: Service,
    pub client_service: Service,
    pub statefulset: StatefulSet,
    pub pdb: PodDisruptionBudget,
    /// A `monitoring.coreos.com/v1` ServiceMonitor, when asked for.
    pub service_monitor: Option<Value>,
}

/// The node configuration (the seed guide's `server.yaml`) every pod runs with. The node id
/// and the advertised addresses come from the pod's environment.
pub fn server_config(spec: &GrapeClusterSpec, names: &Names, bootstrap_replicas: i32) -> Value {
    let peers: Vec<Value> = (0..bootstrap_replicas.max(1))
        .map(|i| {
            let pod = names.pod(i);
            json!({"id": pod, "address": format!("{}:{RAFT_PORT}", names.pod_host(&pod))})
        })
        .collect();
    let tls = tls_secret(spec, names).is_some();
    let mut cluster = json!({
        "enabled": true,
        "peers": peers,
        "election_timeout_ms": spec.raft.election_timeout_ms,
        "heartbeat_interval_ms": spec.raft.heartbeat_interval_ms,
        "secret_file": format!("{CONFIG_DIR}/cluster/{CLUSTER_SECRET_KEY}"),
    });
    // Authentication is off only when the spec explicitly allows it (the node would otherwise
    // turn it on because it listens beyond loopback); keys come from the spec's Secret or the
    // one the operator generates.
    let mut security = json!({"enable_tls": tls, "enable_auth": false});
    if tls {
        let dir = format!("{CONFIG_DIR}/tls");
        cluster["enable_tls"] = json!(true);
        cluster["tls_config"] = json!({
            "cert_file": format!("{dir}/tls.crt"),
            "key_file": format!("{dir}/tls.key"),
            "ca_file": format!("{dir}/ca.crt"),
            "verify_peer": true,
        });
        security["cert_file"] = json!(format!("{dir}/tls.crt"));
        security["key_file"] = json!(format!("{dir}/tls.key"));
    }
    if api_keys_secret(spec, names).is_some() {
        security["enable_auth"] = json!(true);
        security["api_keys_file"] = json!(format!("{CONFIG_DIR}/keys/{API_KEYS_FILE}"));
    }
    if spec.security.rbac_secret.is_some() {
        security["enable_auth"] = json!(true);
        security["rbac_file"] = json!(format!("{CONFIG_DIR}/rbac/{RBAC_FILE}"));
    }
    let mut config = json!({
        "node": {
            "listen_address": format!("0.0.0.0:{API_PORT}"),
            "raft_address": format!("0.0.0.0:{RAFT_PORT}"),
            "data_dir": DATA_DIR,
        },
        "cluster": cluster,
        "database": {
            "vector_dimension": spec.database.vector_dimension,
            "metric": spec.database.metric,
            "shard_count": spec.database.shard_count,
            "replication_factor": spec.database.replication_factor,
        },
        "index": {
            "hnsw_m": spec.index.m,
            "hnsw_ef_construction": spec.index.ef_construction,
            "hnsw_ef_search": spec.index.ef_search,
            "graph": spec.index.graph,
            "quantized_originals": spec.index.quantized_originals,
        },
        "monitoring": {
            "enable_metrics": true,
            "metrics_port": METRICS_PORT,
        },
        "security": security,
    });
    // Only when asked for: a key more would change the configuration (and restart the pods)
    // of every cluster at an operator upgrade.
    if spec.backup.credentials_secret.is_some() {
        config["backup"] =
            json!({"credentials_file": format!("{CONFIG_DIR}/{BACKUP_CREDENTIALS_DIR}")});
    }
    config
}

/// `server.yaml` as text.
pub fn server_yaml(spec: &GrapeClusterSpec, names: &Names, bootstrap_replicas: i32) -> String {
    serde_yaml::to_string(&server_config(spec, names, bootstrap_replicas)).unwrap_or_default()
}

/// A Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1e9`, `1073741824`) in bytes; None when
/// it is not one (or is a fraction of a byte, `100m`: the API server refuses such a size).
pub fn quantity_bytes(quantity: &str) -> Option<u128> {
    let quantity = quantity.trim();
    let split = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        // Decimal exponent: `1e3`, `2E10`.
        exponent if exponent.len() > 1 && exponent.starts_with(['e', 'E']) => {
            let power: u32 = exponent[1..].parse().ok()?;
            10u128.checked_pow(power)?
        }
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut bytes = whole.checked_mul(multiplier)?;
    if !fraction.is_empty() {
        let digits = fraction.len().min(18) as u32;
        let fraction: u128 = fraction[..digits as usize].parse().ok()?;
        bytes = bytes.checked_add(fraction * multiplier / 10u128.pow(digits))?;
    }
    Some(bytes)
}

/// The cluster's ConfigMaps to delete: those of earlier configurations (named with the
/// cluster's config prefix, the unhashed name of earlier versions included) that are neither
/// `current` nor mounted by a pod that still exists.
pub fn stale_config_maps(
    names: &Names,
    current: &str,
    existing: &[String],
    in_use: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    let prefix = names.config_map();
    existing
        .iter()
        .filter(|name| {
            *name == &prefix
                || name
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|h| h.len() == 10 && h.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .filter(|name| name.as_str() != current && !in_use.contains(*name))
        .cloned()
        .collect()
}

/// The claim templates of a StatefulSet that exists: the API server refuses any change to
/// them, so the applied object keeps them whatever `storage` says now (volumes grow by their
/// claims instead).
pub fn keep_claim_templates(desired: &mut StatefulSet, existing: &StatefulSet) {
    if let Some(templates) = &existing.spec.volume_claim_templates {
        desired.spec.volume_claim_templates = Some(templates.clone());
    }
}

/// The claim of pod `ordinal`'s data volume.
pub fn claim(names: &Names, ordinal: i32) -> String {
    format!("data-{}", names.pod(ordinal))
}

/// A short stable hash of `text` (hex).
pub fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn probe(path: &str, scheme: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some(scheme.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn service_port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// One pod per host (`required`), or as far as possible (`preferred`), unless the spec gives
/// its own affinity.
fn default_affinity(names: &Names, required: bool) -> Affinity {
    let term = PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(selector(names)),
            ..LabelSelector::default()
        }),
        topology_key: "kubernetes.io/hostname".into(),
        ..PodAffinityTerm::default()
    };
    let anti = if required {
        PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..PodAntiAffinity::default()
        }
    } else {
        PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: term,
                },
            ]),
            ..PodAntiAffinity::default()
        }
    };
    Affinity {
        pod_anti_affinity: Some(anti),
        ..Affinity::default()
    }
}

/// Zones evened out as far as the scheduler can (`ScheduleAnyway`: a single-zone cluster
/// still schedules), unless the spec gives its own constraints.
fn default_spread(names: &Names) -> Vec<TopologySpreadConstraint> {
    vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".into(),
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector(names)),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    }]
}

/// Pods that may be down at once by choice (a node drain, an eviction) without losing a
/// quorum: a majority of every shard group (`replicationFactor` voters) and of the meta group
/// (every member votes). With fewer than three replicas that is none: a drain waits (see
/// docs/kubernetes.md).
pub fn max_unavailable(spec: &GrapeClusterSpec) -> i32 {
    let rf = spec.database.replication_factor.max(1);
    let members = spec.replicas.max(1);
    ((rf - 1) / 2).min((members - 1) / 2)
}

/// Every object of `cluster`, with the StatefulSet at `statefulset_replicas` pods and the peer
/// list of the `bootstrap_replicas` pods that formed the cluster.
pub fn desired(
    cluster: &GrapeCluster,
    statefulset_replicas: i32,
    bootstrap_replicas: i32,
) -> Desired {
    let names = Names::of(cluster);
    let spec = &cluster.spec;
    let yaml = server_yaml(spec, &names, bootstrap_replicas);
    let tls = tls_secret(spec, &names).is_some();
    let scheme = if tls { "HTTPS" } else { "HTTP" };

    // Immutable and named by its content: a pod always runs the configuration of the
    // template it was created from (a pod recreated mid-rollout cannot pick up the next
    // configuration under the old template's hash), and the kubelet need not watch it.
    let config_map = ConfigMap {
        metadata: meta(cluster, &names, names.config_map_of(&yaml)),
        data: Some(BTreeMap::from([("server.yaml".to_string(), yaml.clone())])),
        immutable: Some(true),
        ..ConfigMap::default()
    };

    let headless = Service {
        metadata: meta(cluster, &names, names.headless()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Peers must resolve each other before they are ready: a joining node is not
            // ready until it is admitted, and admitting it needs its address.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(&names)),
            ports: Some(vec![
                service_port("http", API_PORT),
                service_port("raft", RAFT_PORT),
                service_port("metrics", METRICS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let client_service = Service {
        metadata: meta(cluster, &names, names.client_service()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(&names)),
            // The metrics port is on the headless Service only, so that a ServiceMonitor
            // scrapes each pod once.
            ports: Some(vec![service_port("http", API_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let mut mounts = vec![
        VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "config".into(),
            mount_path: format!("{CONFIG_DIR}/server.yaml"),
            sub_path: Some("server.yaml".into()),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names.config_map_of(&yaml),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    mounts.push(VolumeMount {
        name: "cluster-secret".into(),
        mount_path: format!("{CONFIG_DIR}/cluster"),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    volumes.push(Volume {
        name: "cluster-secret".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names.cluster_secret()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    for (secret, name, dir) in [
        (&api_keys_secret(spec, &names), "api-keys", "keys"),
        (&spec.security.rbac_secret, "rbac", "rbac"),
    ] {
        let Some(secret) = secret else { continue };
        mounts.push(VolumeMount {
            name: name.into(),
            mount_path: format!("{CONFIG_DIR}/{dir}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(secret) = &spec.backup.credentials_secret {
        mounts.push(VolumeMount {
            name: "backup-credentials".into(),
            mount_path: format!("{CONFIG_DIR}/{BACKUP_CREDENTIALS_DIR}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "backup-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(claim) = &spec.backup.volume_claim_name {
        mounts.push(VolumeMount {
            name: "backups".into(),
            mount_path: BACKUPS_DIR.into(),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "backups".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if let Some(secret) = &tls_secret(spec, &names) {
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: format!("{CONFIG_DIR}/tls"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }

    let host = format!(
        "$(GRAPE_NODE_ID).{}.{}.svc",
        names.headless(),
        names.namespace
    );
    let container = Container {
        name: "grape".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        command: Some(vec!["grape".into()]),
        args: Some(vec!["--config".into(), format!("{CONFIG_DIR}/server.yaml")]),
        env: Some(vec![
            EnvVar {
                name: "GRAPE_NODE_ID".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            env(
                "GRAPE__NODE__ADVERTISE_RAFT_ADDRESS",
                &format!("{host}:{RAFT_PORT}"),
            ),
            env(
                "GRAPE__NODE__ADVERTISE_API_ADDRESS",
                &format!("{host}:{API_PORT}"),
            ),
        ]),
        ports: Some(vec![
            port("http", API_PORT),
            port("raft", RAFT_PORT),
            port("metrics", METRICS_PORT),
        ]),
        resources: spec.resources.clone(),
        // /health answers once the storage is open; graphs load after, behind readiness.
        startup_probe: Some(probe(
            "/health",
            scheme,
            2,
            (spec.startup_timeout_seconds / 2).max(1),
        )),
        liveness_probe: Some(probe("/health", scheme, 10, 6)),
        // Not ready until admitted to the cluster and caught up.
        readiness_probe: Some(probe("/ready", scheme, 2, 3)),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let mut template_annotations = BTreeMap::new();
    template_annotations.insert("prometheus.io/scrape".into(), "true".into());
    template_annotations.insert("prometheus.io/port".into(), METRICS_PORT.to_string());

    let mut storage_request = BTreeMap::new();
    storage_request.insert("storage".to_string(), Quantity(spec.storage.size.clone()));

    let mut sts_meta = meta(cluster, &names, names.statefulset());
    sts_meta.annotations = Some(BTreeMap::from([(
        BOOTSTRAP_ANNOTATION.to_string(),
        bootstrap_replicas.to_string(),
    )]));
    let statefulset = StatefulSet {
        metadata: sts_meta,
        spec: StatefulSetSpec {
            replicas: Some(statefulset_replicas),
            service_name: Some(names.headless()),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            // A drained, removed node's volume goes with it: a later scale-out starts fresh.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_scaled: Some("Delete".into()),
                    when_deleted: Some("Retain".into()),
                },
            ),
            selector: LabelSelector {
                match_labels: Some(selector(&names)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&names)),
                    annotations: Some(template_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(60),
                    // Pod Security "restricted": non-root, RuntimeDefault seccomp; volumes
                    // re-owned only when their root does not match (a large data volume is
                    // not walked at every start).
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(10001),
                        run_as_group: Some(10001),
                        fs_group: Some(10001),
                        fs_group_change_policy: Some("OnRootMismatch".into()),
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    node_selector: spec.node_selector.clone(),
                    tolerations: spec.tolerations.clone(),
                    affinity: Some(spec.affinity.clone().unwrap_or_else(|| {
                        default_affinity(&names, spec.pod_anti_affinity_type != "preferred")
                    })),
                    topology_spread_constraints: Some(
                        spec.topology_spread_constraints
                            .clone()
                            .unwrap_or_else(|| default_spread(&names)),
                    ),
                    priority_class_name: spec.priority_class_name.clone(),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(labels(&names)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(storage_request),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    };

    // The hash covers the template (the configuration is in it through `yaml`'s hash below).
    let mut statefulset = statefulset;
    let template_hash = {
        let template = serde_json::to_string(&statefulset.spec.template).unwrap_or_default();
        hash(&format!("{template}\n{yaml}"))
    };
    if let Some(annotations) = annotations_of(&mut statefulset) {
        annotations.insert(TEMPLATE_HASH_ANNOTATION.to_string(), template_hash);
    }

    let pdb = PodDisruptionBudget {
        metadata: meta(cluster, &names, names.pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable(spec))),
            // A pod that is not ready serves nothing: evicting it never costs a quorum, and a
            // crash-looping pod must not hold a node drain forever.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&names)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };

    let service_monitor = spec.monitoring.service_monitor.then(|| {
        let m = meta(cluster, &names, names.cluster.clone());
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": serde_json::to_value(&m).unwrap_or_default(),
            "spec": {
                "selector": {"matchLabels": selector(&names)},
                // job="grape-cluster", as the compose deployment's scrape job: the alerting
                // rules (config/grape_rules.yml, the chart's PrometheusRule) match it. The
                // default would be the Service's name, different for every cluster.
                "endpoints": [{
                    "port": "metrics",
                    "path": "/metrics",
                    "interval": "15s",
                    "relabelings": [{
                        "action": "replace",
                        "targetLabel": "job",
                        "replacement": "grape-cluster",
                    }],
                }],
            },
        })
    });

    Desired {
        config_map,
        headless,
        client_service,
        statefulset,
        pdb,
        service_monitor,
    }
}

/// The template hash pods of `spec` should carry (see [`TEMPLATE_HASH_ANNOTATION`]).
pub fn template_hash(spec: &GrapeClusterSpec, names: &Names, bootstrap_replicas: i32) -> String {
    let mut cluster = GrapeCluster::new(&names.cluster, spec.clone());
    cluster.metadata.namespace = Some(names.namespace.clone());
    pod_template_hash(
        &desired(&cluster, 1, bootstrap_replicas)
            .statefulset
            .spec
            .template,
    )
}

/// The revision pods should carry when the Secrets read at start-up (the cluster secret, the
/// TLS certificate) have content digest `secrets`: a change of them rolls the pods like a
/// change of the template.
pub fn revision(template_hash: &str, secrets: Option<&str>) -> String {
    match secrets {
        Some(digest) => hash(&format!("{template_hash}\n{digest}")),
        None => template_hash.to_string(),
    }
}

fn annotations_of(statefulset: &mut StatefulSet) -> Option<&mut BTreeMap<String, String>> {
    statefulset
        .spec
        .template
        .metadata
        .as_mut()
        .and_then(|m| m.annotations.as_mut())
}

/// Stamps the StatefulSet's pod template with the Secrets' digest (see [`revision`]).
pub fn stamp_secrets(statefulset: &mut StatefulSet, secrets: Option<&str>) {
    let Some(digest) = secrets else { return };
    let base = pod_template_hash(&statefulset.spec.template);
    if let Some(annotations) = annotations_of(statefulset) {
        annotations.insert(SECRETS_DIGEST_ANNOTATION.to_string(), digest.to_string());
        annotations.insert(
            TEMPLATE_HASH_ANNOTATION.to_string(),
            revision(&base, Some(digest)),
        );
    }
}

/// A digest of Secrets' contents (name, then each key and value, in order).
pub fn secrets_digest<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> String {
    let mut text = String::new();
    for secret in secrets {
        text.push_str(secret.metadata.name.as_deref().unwrap_or_default());
        text.push('\n');
        for (key, value) in secret.data.iter().flatten() {
            text.push_str(key);
            text.push('=');
            text.push_str(&hash(&String::from_utf8_lossy(&value.0)));
            text.push('\n');
        }
        for (key, value) in secret.string_data.iter().flatten() {
            text.push_str(key);
            text.push('=');
            text.push_str(&hash(value));
            text.push('\n');
        }
    }
    hash(&text)
}

/// The template hash annotation of a pod template or pod metadata.
pub fn pod_template_hash(template: &PodTemplateSpec) -> String {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION))
        .cloned()
        .unwrap_or_default()
}

/// The Secret the nodes read their API keys from: the spec's, or the generated one unless
/// authentication is explicitly off.
/// `cluster` as it is to be run. A cluster created before TLS was the default (its
/// StatefulSet or its pods mount no certificate) and whose spec does not say `certificates`
/// keeps plain HTTP: switching the transport by rolling restarts would cut each restarted pod
/// off from the others (they would speak different schemes), so it takes an explicit choice.
/// The pods count too: a StatefulSet deleted with `--cascade=orphan` leaves them running.
pub fn with_transport_kept(
    cluster: &GrapeCluster,
    existing: Option<&StatefulSet>,
    pods: &[k8s_openapi::api::core::v1::Pod],
) -> GrapeCluster {
    let security = &cluster.spec.security;
    let has_tls = |spec: Option<&PodSpec>| {
        spec.and_then(|p| p.volumes.as_ref())
            .is_some_and(|volumes| volumes.iter().any(|v| v.name == "tls"))
    };
    let plain = existing.is_some_and(|sts| !has_tls(sts.spec.template.spec.as_ref()))
        || pods.iter().any(|p| !has_tls(p.spec.as_ref()));
    let mut kept = cluster.clone();
    if security.certificates.is_none() && security.tls_secret.is_none() && plain {
        kept.spec.security.certificates = Some("none".into());
    }
    kept
}

/// The Secret the nodes' certificate is read from, when TLS is on: `security.tlsSecret`, or
/// `<cluster>-tls` which the operator (or cert-manager) fills; none with `certificates: none`.
pub fn tls_secret(spec: &GrapeClusterSpec, names: &Names) -> Option<String> {
    match (&spec.security.tls_secret, spec.security.certificates()) {
        (Some(own), _) => Some(own.clone()),
        (None, "none") => None,
        (None, _) => Some(names.tls_secret()),
    }
}

pub fn api_keys_secret(spec: &GrapeClusterSpec, names: &Names) -> Option<String> {
    match (
        &spec.security.api_keys_secret,
        spec.security.allow_unauthenticated,
    ) {
        (Some(name), _) => Some(name.clone()),
        (None, false) => Some(names.api_keys_secret()),
        (None, true) => None,
    }
}

/// The API keys the operator generates for `cluster` when its spec names none: `admin_key`
/// for people (read it from the Secret's `admin-key`) and `operator_key` for the operator's
/// own calls, both with the admin role. Created once, never rewritten (rotate by editing
/// the Secret: the nodes reload it).
pub fn generated_api_keys(cluster: &GrapeCluster, admin_key: &str, operator_key: &str) -> Secret {
    let names = Names::of(cluster);
    let file = [
        format!(
            "# Generated by grape-operator for GrapeCluster {}.",
            names.cluster
        ),
        "# Edit it to add or revoke keys (the nodes reload it); keep the operator's key.".into(),
        "api_keys:".into(),
        format!("  - key: \"{admin_key}\""),
        "    name: \"admin (generated)\"".into(),
        "    permissions: [\"admin\"]".into(),
        format!("  - key: \"{operator_key}\""),
        "    name: \"grape-operator\"".into(),
        "    permissions: [\"admin\"]".into(),
        String::new(),
    ]
    .join("\n");
    Secret {
        metadata: meta(cluster, &names, names.api_keys_secret()),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            (API_KEYS_FILE.to_string(), file),
            (ADMIN_KEY.to_string(), admin_key.to_string()),
            (OPERATOR_KEY.to_string(), operator_key.to_string()),
        ])),
        ..Secret::default()
    }
}

/// The Secret holding the node-to-node secret `value`, owned by `cluster`. Created once (the
/// controller never overwrites it: every node of the cluster must keep the same secret).
pub fn cluster_secret(cluster: &GrapeCluster, value: &str) -> Secret {
    let names = Names::of(cluster);
    Secret {
        metadata: meta(cluster, &names, names.cluster_secret()),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(
            CLUSTER_SECRET_KEY.to_string(),
            format!("{value}\n"),
        )])),
        ..Secret::default()
    }
}
