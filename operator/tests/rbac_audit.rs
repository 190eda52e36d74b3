//! The operator's RBAC is what its code calls: the controller and the leader election run
//! their reconciles against a mocked API server that answers every request, every request is
//! recorded as (API group, resource, verb), and each must be granted by the shipped RBAC
//! (`manifests/rbac.yaml`, which `scripts/check-k8s.sh` keeps equal to the chart's output).
//! The other way round, every granted verb is either called here or listed below with where
//! it is used.

use grape_operator::backup::{self, crd::GrapeBackup, crd::GrapeScheduledBackup};
use grape_operator::controller::{self, Context, FINALIZER};
use grape_operator::crd::GrapeCluster;
use grape_operator::lease;
use grape_operator::metrics::Metrics;
use grape_operator::resources;
use http::{Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// (API group, resource, verb).
type Call = (String, String, String);

/// Granted verbs not called by the reconciles below, and where the operator uses them.
const USED_ELSEWHERE: &[(&str, &str, &str, &str)] = &[
    (
        "cert-manager.io",
        "certificates",
        "create",
        "server-side apply of a new Certificate",
    ),
    (
        "grape.io",
        "grapeclusters",
        "list",
        "the controller's watch",
    ),
    (
        "grape.io",
        "grapeclusters",
        "watch",
        "the controller's watch",
    ),
    (
        "grape.io",
        "grapeclusters/finalizers",
        "update",
        "owner references that block deletion",
    ),
    (
        "grape.io",
        "grapebackups",
        "list",
        "the backup controllers' watches",
    ),
    (
        "grape.io",
        "grapebackups",
        "watch",
        "the backup controllers' watches",
    ),
    (
        "grape.io",
        "grapescheduledbackups",
        "list",
        "the schedule controller's watch",
    ),
    (
        "grape.io",
        "grapescheduledbackups",
        "watch",
        "the schedule controller's watch",
    ),
    (
        "grape.io",
        "grapescheduledbackups/finalizers",
        "update",
        "a schedule's backups are owned by it (owner references that block deletion)",
    ),
    (
        "apps",
        "statefulsets",
        "list",
        "the controller's watch of owned StatefulSets",
    ),
    (
        "apps",
        "statefulsets",
        "watch",
        "the controller's watch of owned StatefulSets",
    ),
    (
        "apps",
        "statefulsets",
        "create",
        "server-side apply of a new StatefulSet",
    ),
    (
        "",
        "configmaps",
        "create",
        "server-side apply of a new ConfigMap",
    ),
    (
        "",
        "services",
        "create",
        "server-side apply of a new Service",
    ),
    (
        "",
        "pods",
        "watch",
        "the controller's watch of the data pods",
    ),
    (
        "",
        "pods",
        "delete",
        "restarting a pod in a rolling update (needs a data-plane view: e2e)",
    ),
    (
        "policy",
        "poddisruptionbudgets",
        "create",
        "server-side apply of a new PDB",
    ),
    (
        "events.k8s.io",
        "events",
        "patch",
        "the event recorder's series of a repeated Event",
    ),
    (
        "monitoring.coreos.com",
        "servicemonitors",
        "create",
        "server-side apply of a new ServiceMonitor",
    ),
];

/// What a request asks for, as RBAC names it.
fn call(method: &str, path: &str, query: &str) -> Call {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/... (core) or /apis/GROUP/VERSION/...
    let (group, rest) = match parts.first() {
        Some(&"api") => ("".to_string(), &parts[2..]),
        _ => (parts[1].to_string(), &parts[3..]),
    };
    let rest: Vec<&str> = match rest.first() {
        Some(&"namespaces") if rest.len() > 2 => rest[2..].to_vec(),
        _ => rest.to_vec(),
    };
    let resource = match rest.len() {
        3.. => format!("{}/{}", rest[0], rest[2]),
        _ => rest[0].to_string(),
    };
    let named = rest.len() >= 2;
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        _ => "unknown",
    };
    (group, resource, verb.to_string())
}

fn verb_of(call: &Call) -> &str {
    call.2.as_str()
}

/// Every (group, resource, verb) the shipped RBAC grants.
fn granted() -> BTreeSet<Call> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("manifests/rbac.yaml")).unwrap();
    let mut granted = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
        if !matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        for rule in doc["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.insert((
                            group.as_str().unwrap().to_string(),
                            resource.as_str().unwrap().to_string(),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    granted
}

fn cluster(spec: Value, finalizers: &[&str], deleting: bool) -> GrapeCluster {
    let mut metadata = json!({
        "name": "test", "namespace": "default", "uid": "uid-1", "generation": 2,
        "resourceVersion": "100", "finalizers": finalizers,
    });
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
    }
    serde_json::from_value(json!({
        "apiVersion": "grape.io/v1alpha1", "kind": "GrapeCluster",
        "metadata": metadata, "spec": spec,
    }))
    .unwrap()
}

/// A completed GrapeBackup a schedule made (no data-plane id: deleting it needs no node).
fn backup_object(name: &str, created: &str) -> Value {
    json!({
        "apiVersion": "grape.io/v1alpha1", "kind": "GrapeBackup",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created,
            "labels": {"grape.io/scheduled-backup": "nightly"},
            "ownerReferences": [{"apiVersion": "grape.io/v1alpha1", "kind": "GrapeScheduledBackup",
                "name": "nightly", "uid": "uid-s", "controller": true}]},
        "spec": {"cluster": "test", "destination": "s3://bucket/grape"},
        "status": {"phase": "Completed", "completionTime": created},
    })
}

fn schedule_object() -> GrapeScheduledBackup {
    serde_json::from_value(json!({
        "apiVersion": "grape.io/v1alpha1", "kind": "GrapeScheduledBackup",
        "metadata": {"name": "nightly", "namespace": "default", "uid": "uid-s",
            "creationTimestamp": "2026-10-01T00:00:00Z"},
        "spec": {"cluster": "test", "schedule": "0 2 * * *", "destination": "s3://bucket/grape",
            "successfulBackupsToKeep": 1, "immediate": true},
    }))
    .unwrap()
}

/// An API server that answers everything plausibly and records what was asked.
fn permissive(existing: Option<Value>) -> (Client, Arc<Mutex<Vec<Call>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let recorded = Arc::clone(&calls);
    let mut stored: std::collections::BTreeMap<String, Value> = Default::default();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or("").to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let asked = call(&method, &path, &query);
            recorded.lock().unwrap().push(asked.clone());
            let (group, resource, verb) = (asked.0.as_str(), asked.1.as_str(), asked.2.as_str());
            // What was created or replaced is there to read afterwards.
            let key = match method.as_str() {
                "POST" => format!("{path}/{}", body["metadata"]["name"].as_str().unwrap_or("")),
                _ => path.clone(),
            };
            if matches!(method.as_str(), "POST" | "PUT") {
                stored.insert(key.clone(), body.clone());
            }
            if let (Some(object), "get") = (stored.get(&key), verb_of(&asked)) {
                let answer = serde_json::to_vec(object).unwrap();
                send.send_response(
                    Response::builder()
                        .status(StatusCode::OK)
                        .body(Body::from(answer))
                        .unwrap(),
                );
                continue;
            }
            let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
            let (status, answer) = match (group, resource, verb) {
                ("apps", "statefulsets", "get") => match &existing {
                    Some(sts) => (StatusCode::OK, sts.clone()),
                    None => (StatusCode::NOT_FOUND, not_found),
                },
                (_, "pods", "list") => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
                ),
                (_, "persistentvolumeclaims", "list") => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": [{
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "data-test-0", "namespace": "default"},
                        "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "10Gi"}}},
                        "status": {"capacity": {"storage": "10Gi"}},
                    }]}),
                ),
                (_, "persistentvolumeclaims", "patch") => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data-test-0", "namespace": "default"}}),
                ),
                (_, "storageclasses", "get") => (
                    StatusCode::OK,
                    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"}, "provisioner": "x", "allowVolumeExpansion": true}),
                ),
                // A node certificate close to its expiry (and of another CA): issued again.
                (_, "secrets", "get") if path.ends_with("/secrets/test-tls") => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                        "metadata": {"name": "test-tls", "namespace": "default", "resourceVersion": "5",
                            "annotations": {"grape.io/not-after": "2026-12-04T00:00:00Z"}},
                        "data": {"tls.crt": "eA==", "tls.key": "eA==", "ca.crt": "eA=="}}),
                ),
                (_, "secrets", "get") | (_, "leases", "get") => (StatusCode::NOT_FOUND, not_found),
                // A configuration of an earlier version that no pod mounts: deleted.
                (_, "configmaps", "list") => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": [
                        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "test-config", "namespace": "default"}},
                    ]}),
                ),
                // The ServiceMonitor of a cluster whose monitoring was turned off.
                ("monitoring.coreos.com", "servicemonitors", "get") => (
                    StatusCode::OK,
                    json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                    "metadata": {"name": "test", "namespace": "default", "ownerReferences": [
                        {"apiVersion": "grape.io/v1alpha1", "kind": "GrapeCluster", "name": "test", "uid": "uid-1"}
                    ]}}),
                ),
                (_, "configmaps", "delete") | (_, "servicemonitors", "delete") => (
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
                ),
                // A schedule's backups: two completed, past a retention of one.
                ("grape.io", "grapebackups", "list") => (
                    StatusCode::OK,
                    json!({"apiVersion": "grape.io/v1alpha1", "kind": "GrapeBackupList", "metadata": {}, "items": [
                        backup_object("nightly-1", "2026-11-01T02:00:00Z"),
                        backup_object("nightly-2", "2026-11-02T02:00:00Z"),
                    ]}),
                ),
                ("grape.io", "grapebackups", "delete") => (
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
                ),
                ("grape.io", "grapebackups" | "grapebackups/status", _) => (
                    StatusCode::OK,
                    backup_object("nightly-2", "2026-11-02T02:00:00Z"),
                ),
                ("grape.io", "grapescheduledbackups/status", _) => (
                    StatusCode::OK,
                    serde_json::to_value(schedule_object()).unwrap(),
                ),
                ("grape.io", _, _) => (
                    StatusCode::OK,
                    serde_json::to_value(cluster(json!({}), &[FINALIZER], false)).unwrap(),
                ),
                (_, _, "create" | "patch" | "update") => (StatusCode::OK, body),
                _ => (StatusCode::NOT_FOUND, not_found),
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (Client::new(service, "default"), calls)
}

#[tokio::test]
async fn every_call_the_operator_makes_is_granted_and_every_grant_is_used() {
    let mut calls: BTreeSet<Call> = BTreeSet::new();
    let base = cluster(
        json!({"database": {"vectorDimension": 8}}),
        &[FINALIZER],
        false,
    );
    let existing = serde_json::to_value(resources::desired(&base, 3, 3).statefulset).unwrap();
    let scenarios: Vec<(GrapeCluster, Option<Value>)> = vec![
        // A new cluster (no finalizer: none is added).
        (cluster(json!({}), &[], false), None),
        // Creation: secrets created, every object applied, status written.
        (base.clone(), None),
        // An existing cluster whose volumes grow, with a ServiceMonitor.
        (
            cluster(
                json!({"database": {"vectorDimension": 8}, "storage": {"size": "20Gi", "storageClassName": "fast"}, "monitoring": {"serviceMonitor": true}}),
                &[FINALIZER],
                false,
            ),
            Some(existing.clone()),
        ),
        // Certificates from cert-manager.
        (
            cluster(
                json!({"database": {"vectorDimension": 8}, "security": {"certificates": "cert-manager", "certManagerIssuer": {"name": "corp"}}}),
                &[],
                false,
            ),
            None,
        ),
        // Deletion of a cluster an earlier version reconciled: its finalizer removed, an Event.
        (
            cluster(
                json!({"database": {"vectorDimension": 8}}),
                &[FINALIZER],
                true,
            ),
            None,
        ),
    ];
    for (object, sts) in scenarios {
        let (client, recorded) = permissive(sts);
        let ctx = Arc::new(Context::new(client, Metrics::new()));
        let _ = controller::reconcile(Arc::new(object), ctx).await;
        calls.extend(recorded.lock().unwrap().iter().cloned());
    }
    // A new GrapeBackup (its cluster has no ready pod: it waits), and a schedule that takes
    // its first backup and deletes one past retention.
    let (client, recorded) = permissive(None);
    let ctx = Arc::new(Context::new(client, Metrics::new()));
    let backup: GrapeBackup = serde_json::from_value(json!({
        "apiVersion": "grape.io/v1alpha1", "kind": "GrapeBackup",
        "metadata": {"name": "once", "namespace": "default", "uid": "uid-b"},
        "spec": {"cluster": "test", "destination": "s3://bucket/grape"},
    }))
    .unwrap();
    let _ = backup::controller::reconcile_backup(Arc::new(backup), Arc::clone(&ctx)).await;
    let _ = backup::controller::reconcile_schedule(Arc::new(schedule_object()), ctx).await;
    calls.extend(recorded.lock().unwrap().iter().cloned());

    // Leader election: create, renew, release.
    let (client, recorded) = permissive(None);
    let api: Api<Lease> = Api::namespaced(client, "grape-system");
    let mut seen = lease::Observed::default();
    let _ = lease::try_acquire(&api, "grape-operator-leader", "me", &mut seen).await;
    let _ = lease::release(&api, "grape-operator-leader", "me").await;
    calls.extend(recorded.lock().unwrap().iter().cloned());

    let granted = granted();
    let missing: Vec<&Call> = calls.iter().filter(|c| !granted.contains(*c)).collect();
    assert!(
        missing.is_empty(),
        "the operator calls what its RBAC does not grant: {missing:?}"
    );
    for expected in [
        ("", "secrets", "create"),
        ("", "secrets", "update"),
        ("cert-manager.io", "certificates", "patch"),
        ("", "persistentvolumeclaims", "patch"),
        ("", "configmaps", "list"),
        ("", "configmaps", "delete"),
        ("storage.k8s.io", "storageclasses", "get"),
        ("events.k8s.io", "events", "create"),
        ("grape.io", "grapeclusters/status", "patch"),
        ("grape.io", "grapeclusters", "get"),
        ("grape.io", "grapebackups", "create"),
        ("grape.io", "grapebackups", "delete"),
        ("grape.io", "grapebackups/status", "patch"),
        ("grape.io", "grapescheduledbackups/status", "patch"),
        ("monitoring.coreos.com", "servicemonitors", "patch"),
        ("monitoring.coreos.com", "servicemonitors", "get"),
        ("monitoring.coreos.com", "servicemonitors", "delete"),
        ("coordination.k8s.io", "leases", "get"),
    ] {
        let expected = (
            expected.0.to_string(),
            expected.1.to_string(),
            expected.2.to_string(),
        );
        assert!(calls.contains(&expected), "not exercised: {expected:?}");
    }
    let elsewhere: BTreeSet<Call> = USED_ELSEWHERE
        .iter()
        .map(|(g, r, v, _)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let unused: Vec<&Call> = granted
        .iter()
        .filter(|g| !calls.contains(*g) && !elsewhere.contains(*g))
        .collect();
    assert!(
        unused.is_empty(),
        "granted but never called (remove them, or say where they are used): {unused:?}"
    );
}
