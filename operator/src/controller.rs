//! The kube-runtime shell around [`crate::decide`]: watch GrapeClusters (and what they own),
//! observe the StatefulSet, its pods and the data plane, apply the owned objects with
//! server-side apply under one field manager, run the decided action, publish an Event for it,
//! patch the status, and requeue while work is in progress.
//!
//! ```text
//!   watch ─> reconcile ─┬─ observe ─> decide ─> apply objects ─> act ─> status
//!                       └─ being deleted: Event (owned objects go by garbage collection;
//!                                         volumes are kept: whenDeleted Retain)
//! ```
//!
//! No finalizer: it would only block the deletion of a GrapeCluster (and of its namespace)
//! while the operator is down, for no work of its own. The one earlier versions added is
//! removed at the next reconcile; the metrics of deleted clusters are dropped by
//! [`prune_metrics`].

use crate::certs;
use crate::crd::GrapeCluster;
use crate::dataplane::{self, DataPlane, ServiceDns};
use crate::decide::{
    self, Action as DataAction, Observed, ObservedPod, ObservedStatefulSet, ObservedVolume,
};
use crate::metrics::Metrics;
use crate::resources::{self, BOOTSTRAP_ANNOTATION, FIELD_MANAGER, Names, OPERATOR_KEY};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The finalizer the operator puts on every GrapeCluster.
pub const FINALIZER: &str = "grape.io/finalizer";

/// What a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Data-plane calls go to pod DNS names; tests replace this.
    pub data_plane_http: reqwest::Client,
    /// Consecutive failed reconciles per cluster (`namespace/name`), for the backoff.
    failures: std::sync::Mutex<BTreeMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            data_plane_http: dataplane::http_client(None),
            failures: Default::default(),
        }
    }
}

/// Runs the controller until the process is asked to stop.
pub async fn run(client: Client, metrics: Metrics, namespace: Option<String>) {
    let (clusters, statefulsets, pods) = match &namespace {
        Some(ns) => (
            Api::<GrapeCluster>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<GrapeCluster>::all(client.clone()),
            Api::<StatefulSet>::all(client.clone()),
            Api::<Pod>::all(client.clone()),
        ),
    };
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=grape-operator");
    let context = Arc::new(Context::new(client, metrics.clone()));
    let controller = Controller::new(clusters, watcher::Config::default());
    let pruning = tokio::spawn(prune_metrics(controller.store(), metrics));
    let backups = crate::backup::controller::run(Arc::clone(&context), namespace.clone());
    let clusters = controller
        .owns(statefulsets, managed.clone())
        // Pods belong to the StatefulSet; map them to their cluster by label.
        .watches(pods, managed, |pod: Pod| {
            let namespace = pod.namespace()?;
            let cluster = pod.labels().get("app.kubernetes.io/instance")?.clone();
            Some(ObjectRef::<GrapeCluster>::new(&cluster).within(&namespace))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        });
    futures::join!(clusters, backups);
    pruning.abort();
}

/// One reconcile of one GrapeCluster.
pub async fn reconcile(cluster: Arc<GrapeCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = cluster
        .namespace()
        .ok_or_else(|| Error::Invalid("GrapeCluster without a namespace".into()))?;
    let key = format!("{namespace}/{}", cluster.name_any());
    let api: Api<GrapeCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = async {
        remove_old_finalizer(&api, &cluster).await?;
        if cluster.metadata.deletion_timestamp.is_some() {
            cleanup(&cluster, &ctx).await
        } else {
            apply(&cluster, &ctx).await
        }
    }
    .await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.is_ok());
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&key);
    }
    result
}

/// Retries a failed reconcile after an exponential backoff (5 s doubling to 5 minutes, per
/// cluster, reset by a success) and tells the cluster's users with a Warning Event, not only
/// the operator's log.
pub fn error_policy(cluster: Arc<GrapeCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    );
    let attempts = match ctx.failures.lock() {
        Ok(mut failures) => {
            let n = failures.entry(key).or_default();
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let wait = decide::backoff(attempts.min(i32::MAX as u32) as i32);
    tracing::warn!(cluster = %cluster.name_any(), %error, attempts, "reconcile failed");
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let recorder = ctx.recorder.clone();
        let reference = cluster.object_ref(&());
        let event = Event {
            type_: EventType::Warning,
            reason: "ReconcileFailed".into(),
            note: Some(
                format!("{error} (attempt {attempts}; next in {} s)", wait.as_secs())
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            action: "Reconcile".into(),
            secondary: None,
        };
        runtime.spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "publishing an event");
            }
        });
    }
    Action::requeue(wait)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn server_side_apply<K>(api: Api<K>, object: &K) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object
        .meta()
        .name
        .clone()
        .ok_or_else(|| Error::Invalid("object without a name".into()))?;
    api.patch(&name, &apply_params(), &Patch::Apply(object))
        .await?;
    Ok(())
}

/// The operator's API key and the CA, from the Secrets [`ensure_secrets`] read (a generated
/// key Secret that does not exist yet means no key: the pods were started without one) or
/// the key Secret the spec names.
async fn credentials(
    cluster: &GrapeCluster,
    ctx: &Context,
    namespace: &str,
    read: &ClusterSecrets,
) -> Result<(Option<String>, Option<Vec<u8>>), Error> {
    let key_secret = match &cluster.spec.security.api_keys_secret {
        Some(name) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            Some(secrets.get(name).await?)
        }
        None => read.api_keys.clone(),
    };
    let key = match key_secret {
        Some(secret) => Some(secret_value(&secret, OPERATOR_KEY).ok_or_else(|| {
            Error::Invalid(format!(
                "Secret {} has no `{OPERATOR_KEY}` (an admin key for the operator)",
                secret.name_any()
            ))
        })?),
        None => None,
    };
    let ca = read
        .tls
        .as_ref()
        .and_then(|t| t.data.as_ref())
        .and_then(|d| d.get("ca.crt").map(|v| v.0.clone()));
    Ok((key, ca))
}

/// How another controller (backups) reaches a cluster's data plane: the ready pods, whether
/// they serve HTTPS (they mount a certificate), the operator's key and the cluster's CA. Reads
/// only: nothing is created.
pub struct Access {
    pub endpoints: ServiceDns,
    pub api_key: Option<String>,
    pub http: reqwest::Client,
    /// The ready pods, to ask in turn.
    pub pods: Vec<String>,
}

impl Access {
    pub fn data_plane(&self) -> DataPlane<'_> {
        DataPlane::new(&self.endpoints, self.api_key.clone(), self.http.clone())
    }
}

/// Reads what [`Access`] needs for `cluster`.
pub async fn access(ctx: &Context, cluster: &GrapeCluster) -> Result<Access, Error> {
    let names = Names::of(cluster);
    let client = &ctx.client;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &names.namespace);
    let selector = resources::selector_string(&names);
    let pods = pod_api
        .list(&ListParams::default().labels(&selector))
        .await?;
    let ready: Vec<String> = pods
        .items
        .iter()
        .map(observe_pod)
        .filter(|p| p.ready && !p.terminating)
        .map(|p| p.name)
        .collect();
    // The transport the pods run with (an older cluster may run plain HTTP whatever the
    // spec's default says): they serve HTTPS when they mount the certificate.
    let https = pods.items.iter().any(|p| {
        p.spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .any(|v| v.name == "tls")
    });
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let api_key = match resources::api_keys_secret(&cluster.spec, &names) {
        Some(name) if !ready.is_empty() => secrets
            .get_opt(&name)
            .await?
            .and_then(|s| secret_value(&s, OPERATOR_KEY)),
        _ => None,
    };
    let ca = match resources::tls_secret(&cluster.spec, &names) {
        Some(name) if https && !ready.is_empty() => secrets
            .get_opt(&name)
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get("ca.crt").map(|v| v.0.clone())),
        _ => None,
    };
    Ok(Access {
        endpoints: ServiceDns { names, https },
        api_key,
        http: match &ca {
            Some(pem) => dataplane::http_client(Some(pem)),
            None => ctx.data_plane_http.clone(),
        },
        pods: ready,
    })
}

/// A Secret's value under `key`, trimmed (from `data`, or `stringData` of one just created).
fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).to_string());
    data.or_else(|| secret.string_data.as_ref()?.get(key).cloned())
        .map(|v| v.trim().to_string())
}

/// 32 random bytes, hex.
fn random_secret() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The Secret named like `secret`, created from it if none exists yet (unless `create` is
/// false: paused); never rewritten (the nodes of a cluster must keep proving the same cluster
/// secret; keys and secrets are rotated by editing the Secret, see docs/security.md).
async fn ensure_secret(
    client: &Client,
    namespace: &str,
    secret: Secret,
    create: bool,
) -> Result<Option<Secret>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secret.metadata.name.clone().unwrap_or_default();
    if let Some(existing) = secrets.get_opt(&name).await? {
        return Ok(Some(existing));
    }
    if !create {
        return Ok(None);
    }
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(created) => Ok(Some(created)),
        // Created meanwhile (another reconcile): that one is read next time.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The Secrets one reconcile reads, each once.
#[derive(Default)]
struct ClusterSecrets {
    /// The node-to-node secret.
    cluster: Option<Secret>,
    /// The generated API keys (None when the spec names its own or turns auth off).
    api_keys: Option<Secret>,
    /// The nodes' TLS Secret (the spec's own, or the one issued for them).
    tls: Option<Secret>,
}

impl ClusterSecrets {
    /// Digest of what the nodes read at start-up (the cluster secret, TLS): part of the pods'
    /// revision, so that rotating them rolls the pods.
    fn digest(&self) -> String {
        resources::secrets_digest([&self.cluster, &self.tls].into_iter().flatten())
    }
}

/// The cluster's node-to-node secret and, unless the spec names its own or turns
/// authentication off, its API keys: created once, random; and the TLS Secret, read.
async fn ensure_secrets(
    cluster: &GrapeCluster,
    client: &Client,
    namespace: &str,
) -> Result<ClusterSecrets, Error> {
    let create = !cluster.spec.paused;
    let secret = resources::cluster_secret(cluster, &random_secret());
    let mut read = ClusterSecrets {
        cluster: ensure_secret(client, namespace, secret, create).await?,
        ..ClusterSecrets::default()
    };
    let spec = &cluster.spec.security;
    if spec.api_keys_secret.is_none() && !spec.allow_unauthenticated {
        let keys = resources::generated_api_keys(cluster, &random_secret(), &random_secret());
        read.api_keys = ensure_secret(client, namespace, keys, create).await?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let names = Names::of(cluster);
    match (&spec.tls_secret, spec.certificates()) {
        (Some(name), _) => read.tls = secrets.get_opt(name).await?,
        (None, "operator") => read.tls = ensure_certificate(cluster, &secrets, create).await?,
        (None, "cert-manager") => {
            if create && let Some(certificate) = certs::cert_manager_certificate(cluster) {
                let api: Api<DynamicObject> = Api::namespaced_with(
                    client.clone(),
                    namespace,
                    &ApiResource::from_gvk_with_plural(
                        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
                        "certificates",
                    ),
                );
                api.patch(
                    &names.tls_secret(),
                    &apply_params(),
                    &Patch::Apply(certificate),
                )
                .await?;
            }
            // Until cert-manager has issued it, the pods wait for the Secret to mount.
            read.tls = secrets.get_opt(&names.tls_secret()).await?;
        }
        _ => {}
    }
    Ok(read)
}

/// The operator's CA (created once) and the nodes' certificate it signs (issued again 30
/// days before it expires, or when the CA changed). Nothing is written while paused.
async fn ensure_certificate(
    cluster: &GrapeCluster,
    secrets: &Api<Secret>,
    create: bool,
) -> Result<Option<Secret>, Error> {
    let names = Names::of(cluster);
    let now = k8s_openapi::jiff::Timestamp::now();
    let ca = match secrets.get_opt(&names.ca_secret()).await? {
        Some(ca) => ca,
        None if create => {
            let new = certs::new_ca(cluster, now).map_err(Error::Invalid)?;
            match secrets.create(&PostParams::default(), &new).await {
                Ok(created) => created,
                // Created meanwhile: read next time.
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        None => return Ok(None),
    };
    match secrets.get_opt(&names.tls_secret()).await? {
        Some(tls) if !create || !certs::needs_renewal(&tls, &ca, now) => Ok(Some(tls)),
        Some(tls) => {
            let mut renewed = certs::node_certificate(cluster, &ca, now).map_err(Error::Invalid)?;
            renewed.metadata.resource_version = tls.metadata.resource_version.clone();
            tracing::info!(secret = %names.tls_secret(), "issuing the nodes' certificate again");
            Ok(Some(
                secrets
                    .replace(&names.tls_secret(), &PostParams::default(), &renewed)
                    .await?,
            ))
        }
        None if create => {
            let new = certs::node_certificate(cluster, &ca, now).map_err(Error::Invalid)?;
            match secrets.create(&PostParams::default(), &new).await {
                Ok(created) => Ok(Some(created)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
        None => Ok(None),
    }
}

/// Observes, decides, applies, acts, reports.
async fn apply(cluster: &GrapeCluster, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(cluster);
    let namespace = names.namespace.clone();
    let client = &ctx.client;

    // Observe Kubernetes.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let statefulset = sts_api.get_opt(&names.statefulset()).await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = resources::selector_string(&names);
    let pods = pod_api
        .list(&ListParams::default().labels(&selector))
        .await?;
    let kept = resources::with_transport_kept(cluster, statefulset.as_ref(), &pods.items);
    let cluster = &kept;
    let observed_pods: Vec<ObservedPod> = pods.items.iter().map(observe_pod).collect();
    let observed_sts = statefulset.as_ref().map(|s| ObservedStatefulSet {
        replicas: s.spec.replicas.unwrap_or(1),
        bootstrap_replicas: s
            .annotations()
            .get(BOOTSTRAP_ANNOTATION)
            .and_then(|v| v.parse().ok()),
    });

    let volumes = match &statefulset {
        Some(_) => observe_volumes(client, &namespace, &names, &selector).await?,
        None => Vec::new(),
    };

    // Observe the data plane (ready pods first).
    let mut order: Vec<String> = observed_pods
        .iter()
        .filter(|p| p.ready)
        .map(|p| p.name.clone())
        .collect();
    order.extend(
        observed_pods
            .iter()
            .filter(|p| !p.ready && p.started)
            .map(|p| p.name.clone()),
    );
    let secrets = ensure_secrets(cluster, client, &namespace).await?;
    let (key, ca) = if order.is_empty() {
        (None, None)
    } else {
        credentials(cluster, ctx, &namespace, &secrets).await?
    };
    let endpoints = ServiceDns {
        names: names.clone(),
        https: resources::tls_secret(&cluster.spec, &names).is_some(),
    };
    let http = match &ca {
        Some(pem) => dataplane::http_client(Some(pem)),
        None => ctx.data_plane_http.clone(),
    };
    let data_plane = DataPlane::new(&endpoints, key, http);
    let observed_dp = if order.is_empty() {
        None
    } else {
        data_plane.observe(&order).await
    };

    let secrets_digest = Some(secrets.digest());
    let observed = Observed {
        generation: cluster.metadata.generation,
        annotations: cluster.annotations().clone(),
        status: cluster.status.clone().unwrap_or_default(),
        statefulset: observed_sts,
        pods: observed_pods,
        volumes,
        secrets_digest: secrets_digest.clone(),
        data_plane: observed_dp,
    };
    let plan = decide::decide(
        &cluster.spec,
        &names,
        &observed,
        k8s_openapi::jiff::Timestamp::now(),
    );

    // Apply the owned objects.
    if plan.apply {
        let mut desired =
            resources::desired(cluster, plan.statefulset_replicas, plan.bootstrap_replicas);
        if let Some(existing) = &statefulset {
            resources::keep_claim_templates(&mut desired.statefulset, existing);
        }
        resources::stamp_secrets(&mut desired.statefulset, secrets_digest.as_deref());
        let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
        server_side_apply(config_maps.clone(), &desired.config_map).await?;
        let services = Api::<Service>::namespaced(client.clone(), &namespace);
        server_side_apply(services.clone(), &desired.headless).await?;
        server_side_apply(services, &desired.client_service).await?;
        server_side_apply(sts_api, &desired.statefulset).await?;
        server_side_apply(
            Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace),
            &desired.pdb,
        )
        .await?;
        let monitors: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &namespace,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
                "servicemonitors",
            ),
        );
        if desired.service_monitor.is_none()
            && cluster.metadata.generation
                != cluster.status.as_ref().and_then(|s| s.observed_generation)
        {
            // Turned off (looked at once per spec change): the ServiceMonitor this cluster
            // owns goes; one of the same name that someone else made stays.
            remove_owned_monitor(&monitors, &names.cluster, cluster.metadata.uid.as_deref()).await;
        }
        if let Some(monitor) = &desired.service_monitor {
            let api = &monitors;
            if let Err(e) = api
                .patch(&names.cluster, &apply_params(), &Patch::Apply(monitor))
                .await
            {
                // No Prometheus operator installed: say so, keep going.
                publish(
                    ctx,
                    cluster,
                    EventType::Warning,
                    "ServiceMonitorFailed",
                    &e.to_string(),
                )
                .await;
            }
        }
        // Configurations no pod runs any more go (best effort: a leftover is retried next time).
        let in_use: BTreeSet<String> = pods
            .items
            .iter()
            .flat_map(|p| p.spec.iter().flat_map(|s| s.volumes.iter().flatten()))
            .filter_map(|v| v.config_map.as_ref().map(|c| c.name.clone()))
            .collect();
        match config_maps
            .list(&ListParams::default().labels(&selector))
            .await
        {
            Ok(list) => {
                let existing: Vec<String> = list.items.iter().map(|c| c.name_any()).collect();
                let current = desired.config_map.name_any();
                for stale in resources::stale_config_maps(&names, &current, &existing, &in_use) {
                    if let Err(e) = config_maps.delete(&stale, &DeleteParams::default()).await {
                        tracing::warn!(config_map = %stale, error = %e, "deleting an old configuration");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing configurations"),
        }
    }

    let mut status = plan.status.clone();
    // Grow the volumes the spec wants larger, claim by claim.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    for claim in &plan.expand_volumes {
        let patch =
            json!({"spec": {"resources": {"requests": {"storage": cluster.spec.storage.size}}}});
        match claims
            .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    decide::EXPANDING_VOLUME,
                    &format!("growing {claim} to {}", cluster.spec.storage.size),
                )
                .await
            }
            Err(e) => {
                // Backed off like a failed action: no claim is patched again before then.
                let now = k8s_openapi::jiff::Timestamp::now();
                status = decide::record_volume_failure(
                    &status,
                    &observed.status,
                    claim,
                    &e.to_string(),
                    now,
                );
                publish(
                    ctx,
                    cluster,
                    EventType::Warning,
                    "VolumeExpansionFailed",
                    &format!("growing {claim} to {}: {e}", cluster.spec.storage.size),
                )
                .await;
                break;
            }
        }
    }

    // Act.
    if let Some(action) = &plan.action {
        ctx.metrics.count_action(action.reason());
        let outcome = match action {
            DataAction::DeletePod { pod } => pod_api
                .delete(pod, &DeleteParams::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            other => data_plane
                .execute(other, &order)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match outcome {
            Ok(()) => {
                status = decide::record_success(&status);
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    action.reason(),
                    &action.describe(),
                )
                .await
            }
            Err(message) => {
                let now = k8s_openapi::jiff::Timestamp::now();
                status = decide::record_failure(&status, &observed.status, action, &message, now);
                let attempts = status.failed_action.as_ref().map_or(1, |f| f.attempts);
                let note = format!(
                    "{} failed (attempt {attempts}, next in {} s): {message}",
                    action.describe(),
                    decide::backoff(attempts).as_secs()
                );
                publish(ctx, cluster, EventType::Warning, action.reason(), &note).await
            }
        }
    }
    publish_planned(ctx, &cluster.object_ref(&()), plan.events.iter().cloned()).await;

    // Restore the bootstrap backup once every pod is ready.
    let mut requeue = plan.requeue;
    if cluster.spec.bootstrap.is_some() {
        let (next, events) = crate::backup::controller::bootstrap_restore(
            &cluster.spec,
            &status,
            &observed.status,
            &data_plane,
            &order,
            k8s_openapi::jiff::Timestamp::now(),
        )
        .await;
        status = next;
        publish_planned(ctx, &cluster.object_ref(&()), events).await;
        if status
            .restore
            .as_ref()
            .is_some_and(|r| r.phase != crate::backup::decide::COMPLETED)
        {
            requeue = requeue.min(Duration::from_secs(5));
        }
    }

    // Report.
    let api: Api<GrapeCluster> = Api::namespaced(client.clone(), &namespace);
    api.patch_status(
        &names.cluster,
        &PatchParams::default(),
        &Patch::Merge(status_patch(&observed.status, &status)),
    )
    .await?;
    ctx.metrics.set_cluster(&namespace, &names.cluster, &status);
    Ok(Action::requeue(requeue))
}

async fn cleanup(cluster: &GrapeCluster, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(cluster);
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "Deleting",
        "owned objects are removed by garbage collection; the pods' volumes are kept",
    )
    .await;
    ctx.metrics.forget_cluster(&names.namespace, &names.cluster);
    Ok(Action::await_change())
}

/// Removes the finalizer earlier versions put on every GrapeCluster (a JSON patch that
/// checks it is still where it was seen).
async fn remove_old_finalizer(
    api: &Api<GrapeCluster>,
    cluster: &GrapeCluster,
) -> Result<(), Error> {
    let Some(at) = cluster.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{at}");
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .map_err(|e| Error::Invalid(format!("finalizer patch: {e}")))?;
    match api
        .patch(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already, or the finalizer moved or went meanwhile: nothing left to do here.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Drops the metrics of GrapeClusters that no longer exist (deleted while the operator ran
/// or not), every 30 s, from the controller's cache.
pub async fn prune_metrics(store: Store<GrapeCluster>, metrics: Metrics) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let present: BTreeSet<(String, String)> = store
            .state()
            .iter()
            .filter_map(|c| Some((c.namespace()?, c.name_any())))
            .collect();
        metrics.retain_clusters(&present);
    }
}

/// Deletes the ServiceMonitor `name` if `owner` (a GrapeCluster's uid) owns it. Best effort:
/// without the Prometheus operator's CRD there is nothing to delete.
async fn remove_owned_monitor(api: &Api<DynamicObject>, name: &str, owner: Option<&str>) {
    let Some(owner) = owner else {
        return;
    };
    let existing = match api.get_opt(name).await {
        Ok(existing) => existing,
        Err(e) => {
            tracing::debug!(error = %e, "looking for a ServiceMonitor to remove");
            return;
        }
    };
    let owned = existing.is_some_and(|m| {
        m.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == owner)
    });
    if owned && let Err(e) = api.delete(name, &DeleteParams::default()).await {
        tracing::warn!(error = %e, "removing the ServiceMonitor");
    }
}

async fn publish(
    ctx: &Context,
    cluster: &GrapeCluster,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    publish_about(ctx, &cluster.object_ref(&()), type_, reason, note).await
}

/// Publishes the decided Events about the object `reference` names.
pub async fn publish_planned(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    events: impl IntoIterator<Item = decide::PlannedEvent>,
) {
    for event in events {
        let type_ = if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish_about(ctx, reference, type_, &event.reason, &event.note).await;
    }
}

/// Publishes an Event about the object `reference` names.
pub async fn publish_about(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, "publishing an event");
    }
}

/// The merge patch that makes the status `new`: a field `new` no longer has is sent as
/// `null` (a merge patch leaves out what it does not name: a cleared `failedAction` would
/// otherwise stay).
pub fn status_patch<S: Serialize>(old: &S, new: &S) -> serde_json::Value {
    let mut value = serde_json::to_value(new).unwrap_or_else(|_| json!({}));
    if let (Some(fields), Ok(serde_json::Value::Object(before))) =
        (value.as_object_mut(), serde_json::to_value(old))
    {
        for key in before.keys() {
            fields.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    json!({ "status": value })
}

/// The pods' data claims and whether their StorageClass lets them grow (unknown when the
/// class cannot be read).
async fn observe_volumes(
    client: &Client,
    namespace: &str,
    names: &Names,
    selector: &str,
) -> Result<Vec<ObservedVolume>, Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let classes: Api<StorageClass> = Api::all(client.clone());
    let mut expandable: BTreeMap<String, Option<bool>> = BTreeMap::new();
    let mut volumes = Vec::new();
    for claim in claims.list(&ListParams::default().labels(selector)).await? {
        let name = claim.name_any();
        let Some(pod) = name.strip_prefix("data-") else {
            continue;
        };
        if names.ordinal(pod).is_none() {
            continue;
        }
        let spec = claim.spec.clone().unwrap_or_default();
        let class = spec.storage_class_name.clone();
        let allowed = match &class {
            Some(class) => match expandable.get(class) {
                Some(known) => *known,
                None => {
                    let known = match classes.get_opt(class).await {
                        Ok(found) => found.map(|c| c.allow_volume_expansion.unwrap_or(false)),
                        Err(e) => {
                            tracing::debug!(%class, error = %e, "reading a StorageClass");
                            None
                        }
                    };
                    expandable.insert(class.clone(), known);
                    known
                }
            },
            None => None,
        };
        volumes.push(ObservedVolume {
            claim: name.clone(),
            pod: pod.to_string(),
            requested: spec
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").map(|q| q.0.clone())),
            resize_pending_since: claim
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|conditions| {
                    conditions
                        .iter()
                        .find(|c| c.type_ == "FileSystemResizePending" && c.status == "True")
                })
                .map(|c| {
                    c.last_transition_time
                        .as_ref()
                        .map(|t| t.0)
                        .unwrap_or_else(k8s_openapi::jiff::Timestamp::now)
                }),
            capacity: claim
                .status
                .and_then(|s| s.capacity)
                .and_then(|c| c.get("storage").map(|q| q.0.clone())),
            expandable: allowed,
        });
    }
    Ok(volumes)
}

/// What the kubelet reports of a pod.
pub fn observe_pod(pod: &Pod) -> ObservedPod {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let started = status
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.started == Some(true)));
    ObservedPod {
        name: pod.name_any(),
        started,
        ready,
        template_hash: pod
            .annotations()
            .get(resources::TEMPLATE_HASH_ANNOTATION)
            .cloned(),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }
}
