//! The operator's core driving real `grape` processes: a stand-in for the StatefulSet
//! controller and the kubelet runs one process per pod (with the configuration the operator
//! renders), and the operator's decisions take the cluster through create 3 -> scale to 5 ->
//! rolling restart -> switchover -> scale to 3, through a bad image rolled out and reverted,
//! a rotation of the cluster secret, a pod's lost volume and a failover to a spare pod, while
//! writers run; no acknowledged write may be lost and the reported conditions
//! are checked at each step.

use grape_e2e::load::{self, Writers};
use grape_e2e::{Cluster, GrapeNode, NodeOptions};
use grape_operator::backup::crd::{GrapeBackupSpec, GrapeBackupStatus, GrapeScheduledBackupSpec};
use grape_operator::backup::decide::{self as backup_decide, BackupStep, Child, ClusterView};
use grape_operator::crd::{GrapeCluster, GrapeClusterStatus};
use grape_operator::dataplane::{self, DataPlane, Endpoints};
use grape_operator::decide::{
    Action, Observed, ObservedPod, ObservedStatefulSet, Plan, condition, decide, record_failure,
    record_success,
};
use grape_operator::resources::{self, Names, SWITCHOVER_ANNOTATION};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The keys of the API-key Secret the operator generates (authentication is on by default).
const ADMIN_KEY: &str = "e2e-admin-key-0123456789abcdef0123456789abcdef";
const OPERATOR_KEY: &str = "e2e-operator-key-0123456789abcdef0123456789abcd";

/// Where each simulated pod answers.
#[derive(Default)]
struct LocalEndpoints {
    api: Mutex<BTreeMap<String, String>>,
    raft: Mutex<BTreeMap<String, String>>,
}

impl Endpoints for LocalEndpoints {
    fn api_url(&self, pod: &str) -> String {
        self.api
            .lock()
            .unwrap()
            .get(pod)
            .cloned()
            .unwrap_or_else(|| "http://127.0.0.1:9".into())
    }
    fn raft_address(&self, pod: &str) -> String {
        self.raft
            .lock()
            .unwrap()
            .get(pod)
            .cloned()
            .unwrap_or_default()
    }
}

struct Pod {
    node: GrapeNode,
    revision: String,
    _config: tempfile::TempDir,
    /// The kubelet's view: the startup probe passed once; readiness with failureThreshold 3.
    started: bool,
    ready: bool,
    failures: u32,
}

/// The StatefulSet controller and kubelet, played with local processes: pod `g-N` is a `grape`
/// process on `127.A.B.(N+1)` started with the ConfigMap's `server.yaml` of its revision.
struct StatefulSetSim {
    network: String,
    names: Names,
    raft_ports: BTreeMap<i32, u16>,
    pods: BTreeMap<i32, Pod>,
    replicas: i32,
    bootstrap: i32,
    /// The pod template's revision and the configuration it runs with.
    revision: String,
    /// The template's image: one whose tag says `broken` never starts (as an image that
    /// does not pull, or a binary that exits at once: CrashLoopBackOff).
    image: String,
    server_yaml: String,
    endpoints: Arc<LocalEndpoints>,
    /// Client-Service stand-in: URLs of the ready pods, for the writers.
    ready_urls: Arc<Mutex<Vec<String>>>,
    /// Stand-in for the cluster Secret the operator creates and the pods mount.
    cluster_secret: (tempfile::TempDir, std::path::PathBuf),
    /// Stand-in for the API-key Secret it generates, when the configuration names one.
    api_keys: Option<(tempfile::TempDir, std::path::PathBuf)>,
}

impl StatefulSetSim {
    fn new(names: Names) -> Self {
        StatefulSetSim {
            network: Cluster::new_network(),
            names,
            raft_ports: BTreeMap::new(),
            pods: BTreeMap::new(),
            replicas: 0,
            bootstrap: 0,
            revision: String::new(),
            image: String::new(),
            server_yaml: String::new(),
            endpoints: Arc::default(),
            ready_urls: Arc::default(),
            cluster_secret: grape_e2e::temp_file(
                "cluster.secret",
                "e2e-cluster-secret-0123456789abcdef\n",
            ),
            api_keys: None,
        }
    }

    fn address(&mut self, ordinal: i32) -> String {
        let ip = format!("{}.{}", self.network, ordinal + 1);
        let port = *self.raft_ports.entry(ordinal).or_insert_with(|| {
            std::net::TcpListener::bind(format!("{ip}:0"))
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        });
        format!("{ip}:{port}")
    }

    /// Applies the StatefulSet the operator wants: template and size.
    async fn apply(&mut self, cluster: &GrapeCluster, plan: &Plan) {
        let mut desired =
            resources::desired(cluster, plan.statefulset_replicas, plan.bootstrap_replicas);
        resources::stamp_secrets(&mut desired.statefulset, Some(&self.secrets_digest()));
        self.revision = resources::pod_template_hash(&desired.statefulset.spec.template);
        self.server_yaml = desired.config_map.data.as_ref().unwrap()["server.yaml"].clone();
        self.image = cluster.spec.image.clone();
        if self.api_keys.is_none()
            && resources::api_keys_secret(&cluster.spec, &self.names).is_some()
        {
            let secret = resources::generated_api_keys(cluster, ADMIN_KEY, OPERATOR_KEY);
            let file = secret.string_data.unwrap()[resources::API_KEYS_FILE].clone();
            self.api_keys = Some(grape_e2e::temp_file("api_keys.yaml", &file));
        }
        self.bootstrap = plan.bootstrap_replicas;
        self.replicas = plan.statefulset_replicas;
        // Scale down: delete the highest ordinals (their volumes go too: whenScaled Delete).
        let extra: Vec<i32> = self
            .pods
            .keys()
            .copied()
            .filter(|o| *o >= self.replicas)
            .collect();
        for ordinal in extra {
            let mut pod = self.pods.remove(&ordinal).unwrap();
            pod.node.terminate();
            self.endpoints
                .api
                .lock()
                .unwrap()
                .remove(&self.names.pod(ordinal));
        }
        // Scale up: create the missing pods (Parallel pod management).
        for ordinal in 0..self.replicas {
            if !self.pods.contains_key(&ordinal) {
                let pod = self.start_pod(ordinal, None).await;
                self.pods.insert(ordinal, pod);
            }
        }
    }

    /// What the controller digests: the cluster Secret as the pods would mount it now.
    fn secrets_digest(&self) -> String {
        let content = std::fs::read(&self.cluster_secret.1).unwrap();
        let secret = k8s_openapi::api::core::v1::Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(self.names.cluster_secret()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                resources::CLUSTER_SECRET_KEY.to_string(),
                k8s_openapi::ByteString(content),
            )])),
            ..Default::default()
        };
        resources::secrets_digest([&secret])
    }

    fn options(&mut self, ordinal: i32) -> (NodeOptions, tempfile::TempDir) {
        let peers: Vec<String> = (0..self.bootstrap)
            .map(|o| format!("{}={}", self.names.pod(o), self.address(o)))
            .collect();
        let address = self.address(ordinal);
        let (ip, port) = address.split_once(':').unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("server.yaml");
        std::fs::write(&config, &self.server_yaml).unwrap();
        let mut options = NodeOptions::default()
            .arg("--config")
            .arg(config.display().to_string());
        options.ip = Some(ip.to_string());
        options.raft_port = Some(port.parse().unwrap());
        // What the pod's environment and the headless Service's DNS provide on Kubernetes.
        options
            .env
            .push(("GRAPE_NODE_ID".into(), self.names.pod(ordinal)));
        options
            .env
            .push(("GRAPE_CLUSTER_PEERS".into(), peers.join(",")));
        // The rendered configuration names the mounted Secret's path; here, a local file.
        options.env.push((
            "GRAPE__CLUSTER__SECRET_FILE".into(),
            self.cluster_secret.1.display().to_string(),
        ));
        if let Some((_, keys)) = &self.api_keys {
            options.env.push((
                "GRAPE__SECURITY__API_KEYS_FILE".into(),
                keys.display().to_string(),
            ));
        }
        (options, dir)
    }

    async fn start_pod(&mut self, ordinal: i32, data: Option<GrapeNode>) -> Pod {
        let (options, config) = self.options(ordinal);
        let broken = self.image.contains("broken");
        let node = match data {
            None => GrapeNode::spawn(options).await,
            Some(mut node) if broken => {
                // The container never runs: the volume stays as the last process left it.
                node.terminate();
                node.set_options(options);
                node
            }
            Some(mut node) => {
                node.set_options(options);
                node.restart_terminated().await;
                node
            }
        };
        let name = self.names.pod(ordinal);
        let url = if node.is_running() {
            node.url.clone()
        } else {
            "http://127.0.0.1:9".to_string()
        };
        self.endpoints.api.lock().unwrap().insert(name.clone(), url);
        let raft = self.address(ordinal);
        self.endpoints.raft.lock().unwrap().insert(name, raft);
        Pod {
            node,
            revision: self.revision.clone(),
            _config: config,
            started: false,
            ready: false,
            failures: 0,
        }
    }

    /// Deletes a pod; the controller recreates it on the current revision, same volume.
    async fn delete_pod(&mut self, name: &str) {
        let ordinal = self.names.ordinal(name).unwrap();
        let pod = self.pods.remove(&ordinal).unwrap();
        let restarted = self.start_pod(ordinal, Some(pod.node)).await;
        self.pods.insert(ordinal, restarted);
    }

    /// The pod's volume is lost (its claim deleted): the pod is recreated with the same name
    /// and an empty data directory.
    async fn lose_volume(&mut self, name: &str) {
        let ordinal = self.names.ordinal(name).unwrap();
        let pod = self.pods.get_mut(&ordinal).unwrap();
        pod.node.kill9();
        pod.node.wipe();
        pod.node.restart_unready().await;
        pod.started = false;
        pod.ready = false;
        let url = pod.node.url.clone();
        self.endpoints.api.lock().unwrap().insert(name.into(), url);
    }

    /// The pod's host dies: the process is gone, and the pod (evicted, recreated, Pending on
    /// no host) has not started.
    fn host_dies(&mut self, name: &str) {
        let ordinal = self.names.ordinal(name).unwrap();
        let pod = self.pods.get_mut(&ordinal).unwrap();
        pod.node.kill9();
        pod.started = false;
        pod.ready = false;
    }

    /// The host is back: the pod starts again on its volume.
    async fn host_returns(&mut self, name: &str) {
        let ordinal = self.names.ordinal(name).unwrap();
        let pod = self.pods.get_mut(&ordinal).unwrap();
        pod.node.restart_unready().await;
        let url = pod.node.url.clone();
        self.endpoints.api.lock().unwrap().insert(name.into(), url);
    }

    /// What the kubelet's probes and the StatefulSet status report: a pod turns unready after
    /// three failed readiness probes in a row (the StatefulSet's `failureThreshold`).
    async fn observe(&mut self) -> (ObservedStatefulSet, Vec<ObservedPod>) {
        let mut pods = Vec::new();
        let mut ready_urls = Vec::new();
        for (ordinal, pod) in self.pods.iter_mut() {
            let client = pod.node.client();
            pod.started |= pod.node.is_running() && client.health().await.is_ok();
            if !pod.node.is_running() {
                pod.ready = false;
            } else if pod.started {
                if client.ready().await.unwrap_or(false) {
                    pod.ready = true;
                    pod.failures = 0;
                } else {
                    pod.failures += 1;
                    if pod.failures >= 3 {
                        pod.ready = false;
                    }
                }
            }
            if pod.ready {
                ready_urls.push(pod.node.url.clone());
            }
            pods.push(ObservedPod {
                name: self.names.pod(*ordinal),
                started: pod.started,
                ready: pod.ready,
                template_hash: Some(pod.revision.clone()),
                terminating: false,
            });
        }
        if !ready_urls.is_empty() {
            *self.ready_urls.lock().unwrap() = ready_urls;
        }
        (
            ObservedStatefulSet {
                replicas: self.replicas,
                bootstrap_replicas: (self.bootstrap > 0).then_some(self.bootstrap),
            },
            pods,
        )
    }
}

/// The operator: observe, decide, act. Mirrors the controller's reconcile without the API
/// server.
struct Operator {
    cluster: GrapeCluster,
    names: Names,
    sim: StatefulSetSim,
    status: GrapeClusterStatus,
    actions: Vec<Action>,
    /// Progressing reasons seen, in order, without repeats.
    progress: Vec<String>,
    /// Reasons of the Events the plans asked for.
    events: Vec<String>,
}

impl Operator {
    fn new(cluster: GrapeCluster) -> Operator {
        let names = Names::of(&cluster);
        Operator {
            sim: StatefulSetSim::new(names.clone()),
            cluster,
            names,
            status: GrapeClusterStatus::default(),
            actions: Vec::new(),
            progress: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl Operator {
    async fn reconcile(&mut self) -> Plan {
        let (statefulset, pods) = if self.sim.replicas == 0 {
            (None, Vec::new())
        } else {
            let (s, p) = self.sim.observe().await;
            (Some(s), p)
        };
        let mut order: Vec<String> = pods
            .iter()
            .filter(|p| p.ready)
            .map(|p| p.name.clone())
            .collect();
        order.extend(pods.iter().filter(|p| !p.ready).map(|p| p.name.clone()));
        let endpoints = Arc::clone(&self.sim.endpoints);
        // The operator reads its key from the generated Secret.
        let data_plane = DataPlane::new(
            endpoints.as_ref(),
            Some(OPERATOR_KEY.into()),
            dataplane::http_client(None),
        );
        let observed_dp = data_plane.observe(&order).await;
        let observed = Observed {
            generation: self.cluster.metadata.generation,
            annotations: self
                .cluster
                .metadata
                .annotations
                .clone()
                .unwrap_or_default(),
            status: self.status.clone(),
            statefulset,
            pods,
            volumes: Vec::new(),
            secrets_digest: Some(self.sim.secrets_digest()),
            data_plane: observed_dp.clone(),
        };
        let plan = decide(
            &self.cluster.spec,
            &self.names,
            &observed,
            k8s_openapi::jiff::Timestamp::now(),
        );
        if plan.apply {
            self.sim.apply(&self.cluster, &plan).await;
        }
        let mut status = plan.status.clone();
        if let Some(action) = &plan.action {
            let outcome = match action {
                Action::DeletePod { pod } => {
                    // Leaderships were moved off before the restart.
                    let led = observed_dp
                        .as_ref()
                        .and_then(|d| d.members.get(pod))
                        .is_some_and(|m| m.leads_any);
                    assert!(
                        !led || self.sim.pods.len() == 1,
                        "{pod} restarted while leading"
                    );
                    self.sim.delete_pod(pod).await;
                    Ok(())
                }
                other => data_plane.execute(other, &order).await,
            };
            // As the controller does: a failure is counted and backed off.
            status = match outcome {
                Ok(()) => record_success(&status),
                Err(e) => {
                    eprintln!("action failed (retried after its backoff): {e}");
                    record_failure(
                        &status,
                        &self.status,
                        action,
                        &e.to_string(),
                        k8s_openapi::jiff::Timestamp::now(),
                    )
                }
            };
            self.actions.push(action.clone());
        }
        // As the controller does: the bootstrap restore once the cluster runs.
        if self.cluster.spec.bootstrap.is_some() {
            let (next, events) = grape_operator::backup::controller::bootstrap_restore(
                &self.cluster.spec,
                &status,
                &self.status,
                &data_plane,
                &order,
                k8s_openapi::jiff::Timestamp::now(),
            )
            .await;
            status = next;
            self.events.extend(events.into_iter().map(|e| e.reason));
        }
        self.events
            .extend(plan.events.iter().map(|e| e.reason.clone()));
        if let Some(p) = condition(&plan.status, "Progressing")
            && p.status == "True"
            && self.progress.last() != Some(&p.reason)
        {
            self.progress.push(p.reason.clone());
        }
        self.status = status;
        plan
    }

    /// Reconciles (as requeues would) until `done` holds for the reported status.
    async fn until(
        &mut self,
        what: &str,
        within: Duration,
        done: impl Fn(&GrapeClusterStatus) -> bool,
    ) {
        let start = Instant::now();
        let deadline = start + within;
        loop {
            let plan = self.reconcile().await;
            if done(&plan.status) {
                eprintln!(
                    "{what}: {:.1} s, actions {:?}",
                    start.elapsed().as_secs_f64(),
                    self.actions
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {within:?}; status {:#?}; actions {:?}",
                plan.status,
                self.actions
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn cond(&self, type_: &str) -> (String, String) {
        let c = condition(&self.status, type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn clients(&self) -> Vec<grape_client::GrapeClient> {
        self.sim
            .pods
            .values()
            .map(|p| p.node.client_with_key(ADMIN_KEY))
            .collect()
    }
}

/// A GrapeCluster `g` of three nodes, RF 3, `shards` shards, with `extra` spec fields.
fn three_nodes(uid: &str, shards: i32, extra: serde_json::Value) -> GrapeCluster {
    let mut spec = json!({
        "replicas": 3,
        "database": {"vectorDimension": load::DIMENSION, "metric": "l2", "shardCount": shards, "replicationFactor": 3},
        // The simulated pods have no Secret volumes for certificates (tests/tests/cluster_tls.rs
        // and operator/tests/certs.rs cover TLS).
        "security": {"certificates": "none"},
    });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "grape.io/v1alpha1",
        "kind": "GrapeCluster",
        "metadata": {"name": "g", "namespace": "default", "uid": uid, "generation": 1},
        "spec": spec,
    }))
    .unwrap()
}

/// Cluster `g` (three nodes, eight shards) created and settled, and two writers going
/// through its ready pods.
async fn running(uid: &str, extra: serde_json::Value) -> (Operator, Writers) {
    let mut op = Operator::new(three_nodes(uid, 8, extra));
    op.until("created", Duration::from_secs(90), settled).await;
    let writers =
        Writers::start_with_key(Arc::clone(&op.sim.ready_urls), 2, Some(ADMIN_KEY.into()));
    (op, writers)
}

fn settled(status: &GrapeClusterStatus) -> bool {
    let is = |t: &str, s: &str| condition(status, t).is_some_and(|c| c.status == s);
    is("Ready", "True")
        && is("Progressing", "False")
        && is("Balanced", "True")
        && is("Degraded", "False")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_core_runs_a_cluster_through_scaling_rolling_restart_and_switchover() {
    let cluster = three_nodes("u-1", 16, json!({}));
    let mut op = Operator::new(cluster);

    // Create: 3 pods form the cluster.
    let first = op.reconcile().await;
    assert_eq!(first.status.phase.as_deref(), Some("Creating"));
    assert_eq!(
        condition(&first.status, "Progressing").unwrap().reason,
        "Creating"
    );
    op.until("created", Duration::from_secs(90), settled).await;
    assert_eq!(op.status.phase.as_deref(), Some("Running"));
    assert_eq!(op.status.ready_replicas, 3);
    assert!(op.status.leader.is_some());
    for member in &op.status.members {
        assert_eq!(member.replicas, 16, "{member:?}");
    }
    // Secure by default: no key, no access; the generated admin key works.
    let url = op.sim.ready_urls.lock().unwrap()[0].clone();
    let anonymous = grape_client::GrapeClient::new(&url)
        .default_collection()
        .upsert(&load::doc("anonymous", 1))
        .await
        .unwrap_err();
    assert_eq!(anonymous.status().map(|s| s.as_u16()), Some(401));
    grape_client::GrapeClient::new(&url)
        .with_api_key(ADMIN_KEY)
        .default_collection()
        .upsert(&load::doc("with-the-admin-key", 1))
        .await
        .unwrap();

    // A writer runs through the ready pods from here to the end.
    let writers =
        Writers::start_with_key(Arc::clone(&op.sim.ready_urls), 2, Some(ADMIN_KEY.into()));

    // Scale to 5: the new pods are added and the shards rebalanced.
    op.cluster.spec.replicas = 5;
    op.cluster.metadata.generation = Some(2);
    op.actions.clear();
    op.until("scaled to 5", Duration::from_secs(180), settled)
        .await;
    assert!(
        op.progress.contains(&"ScalingOut".to_string()),
        "{:?}",
        op.progress
    );
    assert!(op.actions.contains(&Action::AddNode { node: "g-3".into() }));
    assert!(op.actions.contains(&Action::AddNode { node: "g-4".into() }));
    assert!(
        op.actions
            .iter()
            .any(|a| matches!(a, Action::Rebalance { .. })),
        "{:?}",
        op.actions
    );
    assert_eq!(op.status.members.len(), 5);
    for member in &op.status.members {
        assert!((9..=10).contains(&member.replicas), "{member:?}");
        assert!((3..=4).contains(&member.leaderships), "{member:?}");
    }
    assert_eq!(op.status.observed_generation, Some(2));
    let before_restart = writers.count();

    // Rolling restart (a configuration change): highest ordinal first, leaderships moved off
    // each pod before it restarts, the next one waits until every pod is ready.
    op.cluster.spec.raft.heartbeat_interval_ms = 150;
    op.cluster.metadata.generation = Some(3);
    op.actions.clear();
    op.progress.clear();
    let revision_before = op.sim.revision.clone();
    op.until("rolled", Duration::from_secs(240), settled).await;
    assert_ne!(op.sim.revision, revision_before);
    assert!(op.sim.pods.values().all(|p| p.revision == op.sim.revision));
    let deleted: Vec<String> = op
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod { pod } => Some(pod.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, vec!["g-4", "g-3", "g-2", "g-1", "g-0"]);
    assert!(
        op.progress.contains(&"RollingUpdate".to_string()),
        "{:?}",
        op.progress
    );
    assert!(
        op.actions
            .iter()
            .any(|a| matches!(a, Action::MoveLeadershipsOff { .. })),
        "{:?}",
        op.actions
    );
    assert!(
        writers.count() > before_restart,
        "the writer made progress during the restart"
    );

    // Switchover to g-2 through the annotation.
    let mut annotations = BTreeMap::new();
    annotations.insert(SWITCHOVER_ANNOTATION.to_string(), "g-2".to_string());
    op.cluster.metadata.annotations = Some(annotations);
    op.actions.clear();
    op.until("switched over", Duration::from_secs(60), |s| {
        s.last_switchover.as_deref() == Some("g-2")
    })
    .await;
    assert_eq!(op.actions, vec![Action::Switchover { to: "g-2".into() }]);
    assert_eq!(op.status.leader.as_deref(), Some("g-2"));
    assert_eq!(
        op.cond("Ready").0,
        "True",
        "{:?}",
        condition(&op.status, "Ready")
    );

    // Scale to 3: g-4 then g-3 drained and removed, the StatefulSet lowered afterwards.
    op.cluster.spec.replicas = 3;
    op.cluster.metadata.generation = Some(4);
    op.actions.clear();
    op.progress.clear();
    op.until("scaled to 3", Duration::from_secs(240), |s| {
        settled(s) && s.replicas == 3
    })
    .await;
    let removed: Vec<&Action> = op
        .actions
        .iter()
        .filter(|a| matches!(a, Action::RemoveNode { .. }))
        .collect();
    assert_eq!(
        removed,
        vec![
            &Action::RemoveNode { node: "g-4".into() },
            &Action::RemoveNode { node: "g-3".into() }
        ]
    );
    assert!(
        op.progress.contains(&"ScalingIn".to_string()),
        "{:?}",
        op.progress
    );
    assert_eq!(op.sim.pods.len(), 3);
    for member in &op.status.members {
        assert_eq!(member.replicas, 16, "RF 3 on three nodes: {member:?}");
    }

    // Nothing acknowledged was lost.
    let acked = writers.stop().await;
    assert!(
        acked.len() > 100,
        "too few writes to mean anything: {}",
        acked.len()
    );
    load::check_all_present_at(op.clients(), &acked)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_image_halts_the_rollout_and_reverting_it_recovers_the_cluster_unaided() {
    let cluster = three_nodes("u-2", 8, json!({"progressDeadlineSeconds": 20}));
    let mut op = Operator::new(cluster);
    op.until("created", Duration::from_secs(90), settled).await;
    let good_image = op.cluster.spec.image.clone();
    let good_revision = op.sim.revision.clone();
    let writers =
        Writers::start_with_key(Arc::clone(&op.sim.ready_urls), 2, Some(ADMIN_KEY.into()));

    // A bad image: g-2 (highest ordinal) goes first and never starts again.
    op.cluster.spec.image = "grape-vector-db:broken".into();
    op.cluster.metadata.generation = Some(2);
    op.actions.clear();
    op.progress.clear();
    op.until(
        "the rollout reported stuck",
        Duration::from_secs(120),
        |s| {
            condition(s, "Degraded")
                .is_some_and(|c| c.status == "True" && c.reason == "ProgressDeadlineExceeded")
        },
    )
    .await;
    let deleted: Vec<&Action> = op
        .actions
        .iter()
        .filter(|a| matches!(a, Action::DeletePod { .. }))
        .collect();
    assert_eq!(
        deleted,
        vec![&Action::DeletePod { pod: "g-2".into() }],
        "the rollout halted at the pod that does not start"
    );
    assert!(!op.sim.pods[&2].node.is_running());
    for ordinal in [0, 1] {
        assert_eq!(op.sim.pods[&ordinal].revision, good_revision);
        assert!(op.sim.pods[&ordinal].node.is_running());
    }
    assert_eq!(
        op.cond("Progressing"),
        ("False".into(), "ProgressDeadlineExceeded".into())
    );
    assert_eq!(op.status.phase.as_deref(), Some("Degraded"));
    assert!(
        op.events.contains(&"ProgressDeadlineExceeded".to_string()),
        "{:?}",
        op.events
    );
    let degraded = condition(&op.status, "Degraded").unwrap();
    assert!(degraded.message.contains("g-2"), "{}", degraded.message);
    // Two of three serve: the writers kept going.
    let during = writers.count();

    // Revert: the crash-looping pod is replaced first, although it is not ready, and nobody
    // has to delete it by hand.
    op.cluster.spec.image = good_image;
    op.cluster.metadata.generation = Some(3);
    op.actions.clear();
    op.until("recovered", Duration::from_secs(120), settled)
        .await;
    assert_eq!(op.sim.revision, good_revision);
    assert!(
        op.sim
            .pods
            .values()
            .all(|p| p.revision == good_revision && p.node.is_running())
    );
    let deleted: Vec<&Action> = op
        .actions
        .iter()
        .filter(|a| matches!(a, Action::DeletePod { .. }))
        .collect();
    assert_eq!(deleted, vec![&Action::DeletePod { pod: "g-2".into() }]);
    assert!(
        op.events.contains(&"Recovered".to_string()),
        "{:?}",
        op.events
    );
    assert_eq!(op.status.updated_replicas, 3);

    let acked = writers.stop().await;
    assert!(during > 50, "writes went on while g-2 was down: {during}");
    assert!(
        acked.len() > during,
        "writes went on through the recovery: {} acknowledged",
        acked.len()
    );
    load::check_all_present_at(op.clients(), &acked)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_the_cluster_secret_rolls_the_pods_without_downtime() {
    let (mut op, writers) = running("u-3", json!({})).await;
    let old = "e2e-cluster-secret-0123456789abcdef";
    let new = "rotated-cluster-secret-fedcba9876543210";
    // The documented rotation (docs/security.md), one edit of the Secret per step; the
    // operator sees the Secret's content change and rolls the pods each time, leaderships
    // first, one pod at a time.
    for (step, content) in [
        ("accept the new secret", format!("{old}\n{new}\n")),
        ("sign with the new secret", format!("{new}\n{old}\n")),
        ("drop the old secret", format!("{new}\n")),
    ] {
        let before = writers.count();
        let revision = op.sim.revision.clone();
        std::fs::write(&op.sim.cluster_secret.1, content).unwrap();
        op.actions.clear();
        op.until(step, Duration::from_secs(240), |s| {
            settled(s) && s.updated_replicas == 3
        })
        .await;
        assert_ne!(op.sim.revision, revision, "{step}: a new revision");
        assert!(op.sim.pods.values().all(|p| p.revision == op.sim.revision));
        let restarted = op
            .actions
            .iter()
            .filter(|a| matches!(a, Action::DeletePod { .. }))
            .count();
        assert_eq!(restarted, 3, "{step}: {:?}", op.actions);
        assert!(
            writers.count() > before,
            "{step}: writes went on during the roll"
        );
    }
    let acked = writers.stop().await;
    load::check_all_present_at(op.clients(), &acked)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_volume_is_replaced_as_a_new_node_without_losing_an_acknowledged_write() {
    let (mut op, writers) = running("u-4", json!({})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // g-1's claim is deleted: the pod comes back under its name with nothing.
    op.sim.lose_volume("g-1").await;
    op.actions.clear();
    op.progress.clear();
    op.events.clear();
    op.until("g-1 replaced", Duration::from_secs(180), |s| {
        settled(s) && s.ready_replicas == 3
    })
    .await;
    let replaced = op
        .actions
        .iter()
        .position(|a| *a == Action::ReplaceMember { node: "g-1".into() })
        .unwrap_or_else(|| panic!("no replacement: {:?}", op.actions));
    let added = op
        .actions
        .iter()
        .position(|a| *a == Action::AddNode { node: "g-1".into() })
        .unwrap_or_else(|| panic!("not added again: {:?}", op.actions));
    let rebalanced = op
        .actions
        .iter()
        .position(|a| matches!(a, Action::Rebalance { .. }))
        .unwrap_or_else(|| panic!("no rebalance: {:?}", op.actions));
    assert!(replaced < added && added < rebalanced, "{:?}", op.actions);
    assert!(
        !op.actions
            .iter()
            .any(|a| matches!(a, Action::DeletePod { .. })),
        "{:?}",
        op.actions
    );
    assert!(
        op.progress.contains(&"ReplacingMember".to_string()),
        "{:?}",
        op.progress
    );
    for reason in ["MemberDataLost", "Recovered"] {
        assert!(op.events.contains(&reason.to_string()), "{:?}", op.events);
    }

    let acked = writers.stop().await;
    assert!(acked.len() > 50, "{}", acked.len());
    load::check_all_present_at(op.clients(), &acked)
        .await
        .unwrap();
    // g-1 holds its share again, and every replica agrees.
    let status = op.clients()[0].cluster_status().await.unwrap();
    assert!(status.data_lost.is_empty(), "{status:?}");
    let held: BTreeMap<&str, usize> = status
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.replicas))
        .collect();
    assert_eq!(held, BTreeMap::from([("g-0", 8), ("g-1", 8), ("g-2", 8)]));
    let clients = op.clients();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut sums = Vec::new();
        for client in &clients {
            sums.push(client.checksum().await.unwrap().shards);
        }
        if sums.windows(2).all(|w| w[0] == w[1]) {
            let stored: u64 = sums[0].iter().map(|s| s.documents).sum();
            assert!(stored >= acked.len() as u64, "{stored} < {}", acked.len());
            break;
        }
        assert!(Instant::now() < deadline, "replicas differ: {sums:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_down_past_the_failover_timeout_is_replaced_by_a_spare_until_it_returns() {
    let (mut op, writers) = running("u-5", json!({"failover": {"timeoutSeconds": 5}})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // g-1's host dies. Past the timeout a spare, g-3, takes its replicas.
    op.sim.host_dies("g-1");
    op.actions.clear();
    op.events.clear();
    op.until("failed over to g-3", Duration::from_secs(180), |s| {
        s.failover.is_some()
            && s.members
                .iter()
                .any(|m| m.name == "g-3" && m.ready && m.replicas == 8)
            && !s
                .members
                .iter()
                .any(|m| m.name == "g-1" && m.raft_role != "joining")
    })
    .await;
    assert_eq!(
        op.actions,
        vec![
            Action::AddNode { node: "g-3".into() },
            Action::FailOver { node: "g-1".into() },
        ]
    );
    assert!(
        op.events.contains(&"FailoverStarted".to_string()),
        "{:?}",
        op.events
    );
    assert_eq!(
        op.cond("Degraded"),
        ("True".into(), "MemberFailedOver".into())
    );
    let during = writers.count();

    // The host returns: g-1 joins as a new node and the spare leaves.
    op.sim.host_returns("g-1").await;
    op.actions.clear();
    op.until("back to three", Duration::from_secs(240), |s| {
        settled(s) && s.failover.is_none() && s.replicas == 3
    })
    .await;
    assert_eq!(op.actions[0], Action::AddNode { node: "g-1".into() });
    assert!(
        op.actions
            .contains(&Action::RemoveNode { node: "g-3".into() }),
        "{:?}",
        op.actions
    );
    assert!(
        op.events.contains(&"FailoverEnded".to_string()),
        "{:?}",
        op.events
    );
    assert!(!op.sim.pods.contains_key(&3), "the spare pod is gone");

    let acked = writers.stop().await;
    assert!(acked.len() > during, "writes went on: {}", acked.len());
    load::check_all_present_at(op.clients(), &acked)
        .await
        .unwrap();
    let status = op.clients()[0].cluster_status().await.unwrap();
    let held: BTreeMap<&str, usize> = status
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.replicas))
        .collect();
    assert_eq!(held, BTreeMap::from([("g-0", 8), ("g-1", 8), ("g-2", 8)]));
}

/// A GrapeBackup of cluster `g` into `destination`, through the backup decisions and the
/// operator's data-plane calls, to its end.
async fn take_backup(op: &Operator, destination: &str, tag: &str) -> GrapeBackupStatus {
    let spec: GrapeBackupSpec =
        serde_json::from_value(json!({"cluster": "g", "destination": destination})).unwrap();
    let data_plane = DataPlane::new(
        op.sim.endpoints.as_ref(),
        Some(OPERATOR_KEY.into()),
        dataplane::http_client(None),
    );
    let pods: Vec<String> = op.sim.pods.keys().map(|o| op.names.pod(*o)).collect();
    let mut status = GrapeBackupStatus::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = k8s_openapi::jiff::Timestamp::now();
        let view = ClusterView::Ready {
            destinations: vec![destination.to_string()],
        };
        let (step, next) = backup_decide::backup_step(&spec, tag, &status, &view, now);
        status = match step {
            BackupStep::Ended => return status,
            BackupStep::Wait(_) => next,
            BackupStep::Start(request) => {
                let outcome = data_plane.start_backup_once(&request, &pods).await;
                backup_decide::backup_started(&next, outcome, now).0
            }
            BackupStep::Follow(id) => {
                let outcome = data_plane.backup(&id, &pods).await;
                backup_decide::backup_followed(&next, outcome, now).0
            }
        };
        assert!(Instant::now() < deadline, "backup not ended: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_the_operator_takes_are_kept_by_retention_and_bootstrap_a_new_cluster() {
    let (op, writers) = running("u-6", json!({})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let folder = tempfile::tempdir().unwrap();
    let destination = format!("file://{}", folder.path().display());

    // Three runs of a schedule, the last after the writers stopped.
    let mut children = Vec::new();
    let mut writers = Some(writers);
    let started = Instant::now();
    for run in 0..3 {
        if run == 2
            && let Some(writers) = writers.take()
        {
            let acked = writers.stop().await;
            assert!(acked.len() > 50, "{} writes", acked.len());
        }
        let tag = format!("GrapeBackup default/nightly-{run} uid-{run}");
        let status = take_backup(&op, &destination, &tag).await;
        assert_eq!(
            status.phase.as_deref(),
            Some(backup_decide::COMPLETED),
            "{status:?}"
        );
        assert!(status.documents > 0 && status.bytes > 0, "{status:?}");
        let id = status.backup_id.clone().unwrap();
        assert!(folder.path().join(&id).join("manifest.json").exists());
        children.push(Child {
            name: format!("nightly-{run}"),
            phase: status.phase.clone(),
            created: k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + run).unwrap(),
            completed: status.completion_time.as_ref().map(|t| t.0),
            backup_id: Some(id),
            destination: destination.clone(),
        });
        // Its answer lost, a start is asked again: the backup with its tag is found, and no
        // second one is taken.
        let data_plane = DataPlane::new(
            op.sim.endpoints.as_ref(),
            Some(OPERATOR_KEY.into()),
            dataplane::http_client(None),
        );
        let pods: Vec<String> = op.sim.pods.keys().map(|o| op.names.pod(*o)).collect();
        let again = data_plane
            .start_backup_once(
                &grape_client::BackupRequest {
                    destination: destination.clone(),
                    collections: None,
                    tag: Some(tag.clone()),
                },
                &pods,
            )
            .await
            .unwrap();
        assert_eq!(Some(again.id), status.backup_id);
    }
    eprintln!(
        "three backups taken: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let source_sums = op.clients()[0].checksum().await.unwrap().shards;

    let data_plane = DataPlane::new(
        op.sim.endpoints.as_ref(),
        Some(OPERATOR_KEY.into()),
        dataplane::http_client(None),
    );
    let pods: Vec<String> = op.sim.pods.keys().map(|o| op.names.pod(*o)).collect();
    assert_eq!(data_plane.backups(&pods).await.unwrap().len(), 3);

    // Retention of two: the oldest goes, files first, through the data plane.
    let schedule: GrapeScheduledBackupSpec = serde_json::from_value(json!({
        "cluster": "g", "schedule": "@daily", "destination": destination,
        "successfulBackupsToKeep": 2,
    }))
    .unwrap();
    let plan = backup_decide::schedule(
        "nightly",
        &schedule,
        &Default::default(),
        k8s_openapi::jiff::Timestamp::now(),
        &children,
        k8s_openapi::jiff::Timestamp::now(),
    );
    assert_eq!(plan.delete, vec![children[0].clone()]);
    let oldest = children[0].backup_id.clone().unwrap();
    data_plane
        .delete_backup(&oldest, &destination, &pods)
        .await
        .unwrap();
    assert!(!folder.path().join(&oldest).exists());
    for kept in &children[1..] {
        let id = kept.backup_id.as_ref().unwrap();
        assert!(folder.path().join(id).join("manifest.json").exists());
    }
    // Deleting again (a retry after a lost answer) is not an error.
    data_plane
        .delete_backup(&oldest, &destination, &pods)
        .await
        .unwrap();

    // A new cluster bootstraps from the destination: the newest backup, restored once the
    // pods are ready, then Running with the source's data.
    let mut restored = Operator::new(three_nodes(
        "u-7",
        8,
        json!({"bootstrap": {"fromBackup": {"source": destination}}}),
    ));
    let start = Instant::now();
    loop {
        restored.reconcile().await;
        let done = restored
            .status
            .restore
            .as_ref()
            .is_some_and(|r| r.phase == backup_decide::COMPLETED);
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            for (ordinal, pod) in &restored.sim.pods {
                let log = pod.node.log_text();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("restor") || l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                eprintln!(
                    "--- g-{ordinal}:\n{}",
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
            panic!("not restored: {:#?}", restored.status);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("restored: {:.1} s", start.elapsed().as_secs_f64());
    let restore = restored.status.restore.clone().unwrap();
    assert_eq!(
        restore.backup_id, children[2].backup_id,
        "the newest backup"
    );
    assert_eq!(restored.status.phase.as_deref(), Some("Running"));
    let (state, reason) = restored.cond("Restored");
    assert_eq!((state.as_str(), reason.as_str()), ("True", "Restored"));
    for event in ["Restoring", "Restored"] {
        assert!(
            restored.events.contains(&event.to_string()),
            "{:?}",
            restored.events
        );
    }
    let sums = restored.clients()[0].checksum().await.unwrap().shards;
    assert_eq!(sums, source_sums);
    // Later reconciles leave it alone.
    restored.reconcile().await;
    assert_eq!(restored.status.restore.as_ref(), Some(&restore));
}
