//! The kube-runtime shell against a mocked API server (tower-test): the old finalizer's removal, the exact
//! server-side-apply requests, the status patch, the Events, and leader election.

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
use std::sync::Arc;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

fn cluster(finalizers: Option<Vec<&str>>, deleting: bool) -> GrapeCluster {
    let mut metadata = json!({
        "name": "test", "namespace": "default", "uid": "uid-1", "generation": 2,
        "resourceVersion": "100",
    });
    if let Some(f) = finalizers {
        metadata["finalizers"] = json!(f);
    }
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
    }
    serde_json::from_value(json!({
        "apiVersion": "grape.io/v1alpha1",
        "kind": "GrapeCluster",
        "metadata": metadata,
        "spec": {"replicas": 3, "database": {"vectorDimension": 8}},
    }))
    .unwrap()
}

/// The next request: method, path, query, body as JSON (Null when empty).
async fn next(
    handle: &mut Handle,
) -> (
    String,
    String,
    String,
    String,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (request, send) = handle.next_request().await.expect("a request");
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let content_type = request
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (method, path, query, content_type, body, send)
}

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// The CA and node certificate Secrets of an existing cluster (issued now, not due for
/// renewal), as the API server returns them.
fn issued() -> (Value, Value) {
    let object = cluster(None, false);
    let now = k8s_openapi::jiff::Timestamp::now();
    let ca = grape_operator::certs::new_ca(&object, now).unwrap();
    let tls = grape_operator::certs::node_certificate(&object, &ca, now).unwrap();
    (
        serde_json::to_value(&ca).unwrap(),
        serde_json::to_value(&tls).unwrap(),
    )
}

/// Answers the reads of an existing cluster's CA and certificate: nothing is written.
async fn answer_issued(handle: &mut Handle) {
    let (ca, tls) = issued();
    for (name, secret) in [("test-ca", ca), ("test-tls", tls)] {
        let (method, path, _, _, _, send) = next(handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            (
                "GET",
                format!("/api/v1/namespaces/default/secrets/{name}").as_str()
            )
        );
        respond(send, StatusCode::OK, &secret);
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

#[tokio::test]
async fn the_finalizer_of_earlier_versions_is_removed_and_none_is_added() {
    // A cluster an earlier version reconciled carries its finalizer: it is taken off first,
    // with a patch that checks it is still where it was seen.
    let (client, mut handle) = mock();
    let ctx = Arc::new(Context::new(client, Metrics::new()));
    let server = tokio::spawn(async move {
        let (method, path, _, content_type, body, send) = next(&mut handle).await;
        assert_eq!(method, "PATCH");
        assert_eq!(
            path,
            "/apis/grape.io/v1alpha1/namespaces/default/grapeclusters/test"
        );
        assert_eq!(content_type, "application/json-patch+json");
        assert_eq!(
            body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        let object = serde_json::to_value(cluster(Some(vec!["someone.else/keep"]), false)).unwrap();
        respond(send, StatusCode::OK, &object);
        // Then the usual reconcile: the StatefulSet is read (the rest is not answered here).
        let (method, path, _, _, _, _send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/apis/apps/v1/namespaces/default/statefulsets/test")
        );
    });
    let old = cluster(Some(vec!["someone.else/keep", FINALIZER]), false);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        controller::reconcile(Arc::new(old), ctx),
    )
    .await;
    server.await.unwrap();

    // A new cluster: no finalizer is added; the first call reads the StatefulSet.
    let (client, mut handle) = mock();
    let ctx = Arc::new(Context::new(client, Metrics::new()));
    let server = tokio::spawn(async move {
        let (method, path, _, _, _, _send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/apis/apps/v1/namespaces/default/statefulsets/test")
        );
    });
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        controller::reconcile(Arc::new(cluster(None, false)), ctx),
    )
    .await;
    server.await.unwrap();
}

#[tokio::test]
async fn reconcile_applies_every_owned_object_with_server_side_apply_then_patches_status() {
    let (client, mut handle) = mock();
    let metrics = Metrics::new();
    let ctx = Arc::new(Context::new(client, metrics.clone()));
    let object = cluster(None, false);
    let mut desired = resources::desired(&object, 3, 3);
    let mut expected: Vec<(String, Value)> = vec![
        (
            format!(
                "/api/v1/namespaces/default/configmaps/{}",
                desired.config_map.metadata.name.as_deref().unwrap()
            ),
            serde_json::to_value(&desired.config_map).unwrap(),
        ),
        (
            "/api/v1/namespaces/default/services/test-headless".to_string(),
            serde_json::to_value(&desired.headless).unwrap(),
        ),
        (
            "/api/v1/namespaces/default/services/test".to_string(),
            serde_json::to_value(&desired.client_service).unwrap(),
        ),
        (
            "/apis/apps/v1/namespaces/default/statefulsets/test".to_string(),
            serde_json::to_value(&desired.statefulset).unwrap(),
        ),
        (
            "/apis/policy/v1/namespaces/default/poddisruptionbudgets/test".to_string(),
            serde_json::to_value(&desired.pdb).unwrap(),
        ),
    ];
    let server = tokio::spawn(async move {
        // Observe: the StatefulSet (none yet) and the pods (none).
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/apis/apps/v1/namespaces/default/statefulsets/test")
        );
        respond(send, StatusCode::NOT_FOUND, &not_found());
        let (method, path, query, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/api/v1/namespaces/default/pods")
        );
        assert!(
            query.contains("labelSelector=app.kubernetes.io%2Finstance%3Dtest%2Capp.kubernetes.io%2Fname%3Dgrape"),
            "{query}"
        );
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        );
        // The cluster's node-to-node secret: none yet, so one is created, random, owned.
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            (
                "GET",
                "/api/v1/namespaces/default/secrets/test-cluster-secret"
            )
        );
        respond(send, StatusCode::NOT_FOUND, &not_found());
        let (method, path, _, _, body, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/api/v1/namespaces/default/secrets")
        );
        assert_eq!(body["metadata"]["name"], "test-cluster-secret");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let secret = body["stringData"]["cluster.secret"]
            .as_str()
            .unwrap()
            .trim();
        assert_eq!(secret.len(), 64, "{secret}");
        assert!(secret.chars().all(|c| c.is_ascii_hexdigit()), "{secret}");
        let created: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(body.clone()).unwrap();
        respond(send, StatusCode::CREATED, &body);
        // No API keys named in the spec: the operator generates them (authentication on).
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/api/v1/namespaces/default/secrets/test-api-keys")
        );
        respond(send, StatusCode::NOT_FOUND, &not_found());
        let (method, path, _, _, body, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/api/v1/namespaces/default/secrets")
        );
        assert_eq!(body["metadata"]["name"], "test-api-keys");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let admin = body["stringData"]["admin-key"].as_str().unwrap();
        let operator = body["stringData"]["operator-key"].as_str().unwrap();
        assert_ne!(admin, operator);
        assert_ne!(admin, secret, "each key is drawn on its own");
        for key in [admin, operator] {
            assert_eq!(key.len(), 64, "{key}");
            let file = body["stringData"]["api_keys.yaml"].as_str().unwrap();
            assert!(file.contains(key), "{file}");
        }
        respond(send, StatusCode::CREATED, &body);
        // Secure by default: the operator's CA, created once, then the nodes' certificate it
        // signs (operator/tests/certs.rs checks the chain and the names).
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/api/v1/namespaces/default/secrets/test-ca")
        );
        respond(send, StatusCode::NOT_FOUND, &not_found());
        let (method, path, _, _, body, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/api/v1/namespaces/default/secrets")
        );
        assert_eq!(body["metadata"]["name"], "test-ca");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert!(body["data"]["ca.crt"].is_string() && body["data"]["ca.key"].is_string());
        let ca: k8s_openapi::api::core::v1::Secret = serde_json::from_value(body.clone()).unwrap();
        respond(send, StatusCode::CREATED, &body);
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/api/v1/namespaces/default/secrets/test-tls")
        );
        respond(send, StatusCode::NOT_FOUND, &not_found());
        let (method, path, _, _, body, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/api/v1/namespaces/default/secrets")
        );
        assert_eq!(body["metadata"]["name"], "test-tls");
        assert_eq!(body["type"], "kubernetes.io/tls");
        let tls: k8s_openapi::api::core::v1::Secret = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(
            grape_operator::certs::text(&tls, "ca.crt"),
            grape_operator::certs::text(&ca, "ca.crt")
        );
        respond(send, StatusCode::CREATED, &body);
        // The pods' revision carries the digest of what they read at start-up (the cluster
        // secret and the certificate): rotating either rolls them.
        let digest = resources::secrets_digest([&created, &tls]);
        resources::stamp_secrets(&mut desired.statefulset, Some(&digest));
        let stamped = serde_json::to_value(&desired.statefulset).unwrap();
        assert_eq!(
            stamped["spec"]["template"]["metadata"]["annotations"]["grape.io/secrets-digest"],
            digest.as_str()
        );
        expected[3].1 = stamped;
        // Apply: each owned object, server-side, one field manager, forced.
        for (want_path, want_body) in expected {
            let (method, path, query, content_type, body, send) = next(&mut handle).await;
            assert_eq!(method, "PATCH");
            assert_eq!(path, want_path);
            assert!(query.contains("fieldManager=grape-operator"), "{query}");
            assert!(query.contains("force=true"), "{query}");
            assert_eq!(content_type, "application/apply-patch+yaml");
            assert_eq!(body, want_body, "{path}");
            assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            respond(send, StatusCode::OK, &body);
        }
        // Monitoring is off: the ServiceMonitor this cluster owns (made while it was on) goes.
        let monitor = "/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors/test";
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("GET", monitor));
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "test", "namespace": "default", "ownerReferences": [
                {"apiVersion": "grape.io/v1alpha1", "kind": "GrapeCluster", "name": "test", "uid": "uid-1"}
            ]}}),
        );
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), path.as_str()), ("DELETE", monitor));
        respond(
            send,
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
        );
        // Configurations of earlier templates that no pod mounts are deleted.
        let (method, path, query, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/api/v1/namespaces/default/configmaps")
        );
        assert!(query.contains("labelSelector="), "{query}");
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "test-config", "namespace": "default"}},
            ]}),
        );
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            (
                "DELETE",
                "/api/v1/namespaces/default/configmaps/test-config"
            )
        );
        respond(
            send,
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
        );
        // Report: a merge patch of the status subresource.
        let (method, path, _, content_type, body, send) = next(&mut handle).await;
        assert_eq!(method, "PATCH");
        assert_eq!(
            path,
            "/apis/grape.io/v1alpha1/namespaces/default/grapeclusters/test/status"
        );
        assert_eq!(content_type, "application/merge-patch+json");
        let status = &body["status"];
        assert_eq!(status["phase"], "Creating");
        assert_eq!(status["observedGeneration"], 2);
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, vec!["Ready", "Progressing", "Degraded", "Balanced"]);
        assert_eq!(status["conditions"][1]["reason"], "Creating");
        let mut object = serde_json::to_value(cluster(None, false)).unwrap();
        object["status"] = status.clone();
        respond(send, StatusCode::OK, &object);
    });
    let action = controller::reconcile(Arc::new(object), ctx)
        .await
        .expect("reconcile");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(3))
    );
    server.await.unwrap();
    let text = metrics.render();
    assert!(
        text.contains("grape_operator_reconciliations_total{result=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.contains("grape_operator_cluster_condition{cluster=\"test\",condition=\"Progressing\",namespace=\"default\"} 1"), "{text}");
}

#[tokio::test]
async fn a_failed_apply_is_a_reconcile_error_and_is_counted() {
    let (client, mut handle) = mock();
    let metrics = Metrics::new();
    let ctx = Arc::new(Context::new(client, metrics.clone()));
    let server = tokio::spawn(async move {
        let (_, _, _, _, _, send) = next(&mut handle).await;
        respond(send, StatusCode::NOT_FOUND, &not_found());
        let (_, _, _, _, _, send) = next(&mut handle).await;
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        );
        // The cluster secret exists: it is left as it is (never rewritten).
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            (
                "GET",
                "/api/v1/namespaces/default/secrets/test-cluster-secret"
            )
        );
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "test-cluster-secret", "namespace": "default"}, "data": {"cluster.secret": "c2VjcmV0"}}),
        );
        // So do the generated API keys: never rewritten either.
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/api/v1/namespaces/default/secrets/test-api-keys")
        );
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "test-api-keys", "namespace": "default"}, "data": {"operator-key": "a2V5"}}),
        );
        // The CA and a certificate far from expiry: read, not renewed.
        answer_issued(&mut handle).await;
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            method, "PATCH",
            "the existing secrets are not created again"
        );
        assert!(path.contains("/configmaps/test-config-"), "{path}");
        respond(
            send,
            StatusCode::FORBIDDEN,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "forbidden"}),
        );
        handle
    });
    let object = Arc::new(cluster(None, false));
    let error = controller::reconcile(Arc::clone(&object), Arc::clone(&ctx))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("forbidden"), "{error}");
    let mut handle = server.await.unwrap();
    assert!(
        metrics
            .render()
            .contains("grape_operator_reconciliations_total{result=\"error\"} 1")
    );
    // Retried after an exponential backoff, and said as a Warning Event on the cluster.
    for (attempt, wait) in [(1, 5), (2, 10), (3, 20)] {
        let action = controller::error_policy(Arc::clone(&object), &error, Arc::clone(&ctx));
        assert_eq!(
            action,
            kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(wait)),
            "attempt {attempt}"
        );
        let (method, path, _, _, body, send) = next(&mut handle).await;
        assert!(path.contains("/events"), "{path}");
        if method == "POST" {
            assert_eq!(body["reason"], "ReconcileFailed");
            assert_eq!(body["type"], "Warning");
            assert!(
                body["note"].as_str().unwrap().contains("forbidden"),
                "{body}"
            );
            respond(send, StatusCode::CREATED, &body);
        } else {
            respond(
                send,
                StatusCode::OK,
                &json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": "2026-12-03T10:00:00.000000Z", "reason": "ReconcileFailed", "type": "Warning", "action": "Reconcile", "reportingController": "grape-operator", "reportingInstance": "x"}),
            );
        }
    }
}

#[tokio::test]
async fn deleting_a_cluster_removes_the_old_finalizer_and_publishes_an_event() {
    let (client, mut handle) = mock();
    let ctx = Arc::new(Context::new(client, Metrics::new()));
    let server = tokio::spawn(async move {
        let (method, path, _, content_type, body, send) = next(&mut handle).await;
        assert_eq!(method, "PATCH");
        assert_eq!(
            path,
            "/apis/grape.io/v1alpha1/namespaces/default/grapeclusters/test"
        );
        assert_eq!(content_type, "application/json-patch+json");
        assert_eq!(
            body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ])
        );
        let object = serde_json::to_value(cluster(Some(vec![]), true)).unwrap();
        respond(send, StatusCode::OK, &object);
        let (method, path, _, _, body, send) = next(&mut handle).await;
        assert_eq!(method, "POST");
        assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/default/events");
        assert_eq!(body["reason"], "Deleting");
        assert_eq!(body["regarding"]["kind"], "GrapeCluster");
        assert_eq!(body["regarding"]["name"], "test");
        assert_eq!(body["reportingController"], "grape-operator");
        respond(send, StatusCode::CREATED, &body);
    });
    controller::reconcile(Arc::new(cluster(Some(vec![FINALIZER]), true)), ctx)
        .await
        .expect("cleanup");
    server.await.unwrap();
}

fn lease_object(holder: &str, renewed: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "grape-operator-leader", "namespace": "default", "resourceVersion": "7"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed, "leaseTransitions": 2},
    })
}

#[test]
fn lease_steps() {
    use k8s_openapi::jiff::Timestamp;
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let lease = |holder: &str, renewed: &str| -> Lease {
        serde_json::from_value(lease_object(holder, renewed)).unwrap()
    };
    let mut seen = lease::Observed::default();
    let wait = lease::Step::Wait {
        holder: "other".into(),
    };
    assert_eq!(
        lease::step(None, "me", &mut seen, at(0)),
        lease::Step::Create
    );
    // Expiry is judged by how long *we* have seen the same record, never by the holder's
    // clock: a renew time far in the past (skewed clocks) is not expired when first seen...
    let old = lease("other", "2020-01-01T00:00:00.000000Z");
    assert_eq!(lease::step(Some(&old), "me", &mut seen, at(0)), wait);
    assert_eq!(lease::step(Some(&old), "me", &mut seen, at(14)), wait);
    // ...only after the lease's duration (15 s) without a renewal.
    assert_eq!(
        lease::step(Some(&old), "me", &mut seen, at(15)),
        lease::Step::Take
    );
    // A renewal (a new record) starts the count again.
    let renewed = lease("other", "2020-01-01T00:00:05.000000Z");
    assert_eq!(lease::step(Some(&renewed), "me", &mut seen, at(16)), wait);
    assert_eq!(lease::step(Some(&renewed), "me", &mut seen, at(30)), wait);
    assert_eq!(
        lease::step(Some(&renewed), "me", &mut seen, at(31)),
        lease::Step::Take
    );
    // Ours, or released: take it at once.
    let mine = lease("me", "2026-11-27T10:00:10.000000Z");
    assert_eq!(
        lease::step(Some(&mine), "me", &mut seen, at(0)),
        lease::Step::Take
    );
    let now: Timestamp = "2026-11-27T10:00:20Z".parse().unwrap();
    let released = lease::released(&mine, now);
    assert_eq!(
        released.spec.as_ref().unwrap().holder_identity,
        None,
        "released"
    );
    assert_eq!(
        released.spec.as_ref().unwrap().lease_duration_seconds,
        Some(1)
    );
    assert_eq!(
        lease::step(
            Some(&released),
            "other",
            &mut lease::Observed::default(),
            at(0)
        ),
        lease::Step::Take
    );

    let taken = lease::held(Some(&old), "grape-operator-leader", "me", now);
    let spec = taken.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("me"));
    assert_eq!(spec.lease_transitions, Some(3));
    assert_eq!(spec.acquire_time.unwrap().0, now);
    // The resourceVersion read is kept: a concurrent taker's write fails with 409.
    assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"));
    let renewed = lease::held(Some(&mine), "grape-operator-leader", "me", now)
        .spec
        .unwrap();
    assert_eq!(
        renewed.lease_transitions,
        Some(2),
        "renewal is not a transition"
    );
}

#[tokio::test]
async fn a_stopping_leader_releases_the_lease_and_leaves_anothers_alone() {
    let (client, mut handle) = mock();
    let api: Api<Lease> = Api::namespaced(client, "default");
    let server = tokio::spawn(async move {
        let (method, _, _, _, _, send) = next(&mut handle).await;
        assert_eq!(method, "GET");
        respond(
            send,
            StatusCode::OK,
            &lease_object("me", "2026-11-27T10:00:10.000000Z"),
        );
        let (method, path, _, _, body, send) = next(&mut handle).await;
        assert_eq!(method, "PUT");
        assert!(path.ends_with("/leases/grape-operator-leader"));
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert!(body["spec"].get("holderIdentity").is_none(), "{body}");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        respond(send, StatusCode::OK, &body);
        // Held by another replica: not ours to release, nothing written.
        let (method, _, _, _, _, send) = next(&mut handle).await;
        assert_eq!(method, "GET");
        respond(
            send,
            StatusCode::OK,
            &lease_object("other", "2026-11-27T10:00:10.000000Z"),
        );
    });
    lease::release(&api, "grape-operator-leader", "me")
        .await
        .unwrap();
    lease::release(&api, "grape-operator-leader", "me")
        .await
        .unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_replica_waits_while_another_holds_the_lease_and_loses_a_race_cleanly() {
    let (client, mut handle) = mock();
    let api: Api<Lease> = Api::namespaced(client, "default");
    let server = tokio::spawn(async move {
        // Held by another replica, renewed just now: wait.
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            (
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/default/leases/grape-operator-leader"
            )
        );
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        respond(send, StatusCode::OK, &lease_object("other", &now));
        // Released: take it with a replace carrying resourceVersion 7; someone was faster (409).
        let (_, _, _, _, _, send) = next(&mut handle).await;
        respond(
            send,
            StatusCode::OK,
            &lease_object("", "2020-01-01T00:00:00.000000Z"),
        );
        let (method, path, _, _, body, send) = next(&mut handle).await;
        assert_eq!(method, "PUT");
        assert!(path.ends_with("/leases/grape-operator-leader"));
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        respond(
            send,
            StatusCode::CONFLICT,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
        );
        // No lease at all: create it.
        let (_, _, _, _, _, send) = next(&mut handle).await;
        respond(send, StatusCode::NOT_FOUND, &not_found());
        let (method, _, _, _, body, send) = next(&mut handle).await;
        assert_eq!(method, "POST");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        respond(send, StatusCode::CREATED, &body);
    });
    let mut seen = lease::Observed::default();
    assert!(
        !lease::try_acquire(&api, "grape-operator-leader", "me", &mut seen)
            .await
            .unwrap()
    );
    assert!(
        !lease::try_acquire(&api, "grape-operator-leader", "me", &mut seen)
            .await
            .unwrap()
    );
    assert!(
        lease::try_acquire(&api, "grape-operator-leader", "me", &mut seen)
            .await
            .unwrap()
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_larger_storage_size_grows_each_claim_and_keeps_the_statefulsets_claim_template() {
    let (client, mut handle) = mock();
    let ctx = Arc::new(Context::new(client, Metrics::new()));
    let created = cluster(None, false);
    let existing = serde_json::to_value(resources::desired(&created, 3, 3).statefulset).unwrap();
    let mut grown = created.clone();
    grown.spec.storage.size = "20Gi".into();
    grown.spec.storage.storage_class_name = Some("fast".into());
    let server = tokio::spawn(async move {
        let (_, path, _, _, _, send) = next(&mut handle).await;
        assert!(path.ends_with("/statefulsets/test"), "{path}");
        respond(send, StatusCode::OK, &existing);
        let (_, path, _, _, _, send) = next(&mut handle).await;
        assert!(path.ends_with("/pods"), "{path}");
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        );
        // Each pod's claim, and whether its class may grow.
        let (method, path, query, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/api/v1/namespaces/default/persistentvolumeclaims")
        );
        assert!(query.contains("labelSelector="), "{query}");
        let claims: Vec<Value> = (0..3)
            .map(|i| json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": format!("data-test-{i}"), "namespace": "default"},
                "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "10Gi"}}},
                "status": {"capacity": {"storage": "10Gi"}},
            }))
            .collect();
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": claims}),
        );
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/apis/storage.k8s.io/v1/storageclasses/fast")
        );
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"}, "provisioner": "csi.example", "allowVolumeExpansion": true}),
        );
        for name in ["test-cluster-secret", "test-api-keys"] {
            let (_, path, _, _, _, send) = next(&mut handle).await;
            assert!(path.ends_with(&format!("/secrets/{name}")), "{path}");
            respond(
                send,
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"}, "data": {"cluster.secret": "c2VjcmV0"}}),
            );
        }
        answer_issued(&mut handle).await;
        // Apply: the StatefulSet keeps the claim template it was created with (the API server
        // refuses any change to it: the old operator wedged here).
        for _ in 0..5 {
            let (method, path, _, _, body, send) = next(&mut handle).await;
            assert_eq!(method, "PATCH");
            if path.ends_with("/statefulsets/test") {
                let claim = &body["spec"]["volumeClaimTemplates"][0]["spec"];
                assert_eq!(claim["resources"]["requests"]["storage"], "10Gi");
                assert!(claim.get("storageClassName").is_none());
            }
            respond(send, StatusCode::OK, &body);
        }
        // Monitoring is off in this spec: a ServiceMonitor the cluster owns would go (none).
        let (method, path, _, _, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), path.as_str()),
            (
                "GET",
                "/apis/monitoring.coreos.com/v1/namespaces/default/servicemonitors/test"
            )
        );
        respond(
            send,
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
        let (_, path, _, _, _, send) = next(&mut handle).await;
        assert!(path.ends_with("/configmaps"), "{path}");
        respond(
            send,
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": []}),
        );
        // Each claim grows, with an Event.
        for i in 0..3 {
            let (method, path, _, content_type, body, send) = next(&mut handle).await;
            assert_eq!(
                (method.as_str(), path.as_str()),
                (
                    "PATCH",
                    format!("/api/v1/namespaces/default/persistentvolumeclaims/data-test-{i}")
                        .as_str()
                )
            );
            assert_eq!(content_type, "application/merge-patch+json");
            assert_eq!(
                body,
                json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}})
            );
            respond(
                send,
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": format!("data-test-{i}"), "namespace": "default"}, "spec": {"resources": {"requests": {"storage": "20Gi"}}}}),
            );
            // The recorder creates the Event, then counts repeats of it as a series.
            let (method, path, _, _, body, send) = next(&mut handle).await;
            assert!(path.contains("/events"), "{path}");
            if method == "POST" {
                assert_eq!(body["reason"], "ExpandingVolume");
                assert_eq!(body["type"], "Normal");
                respond(send, StatusCode::CREATED, &body);
            } else {
                assert_eq!(method, "PATCH");
                respond(
                    send,
                    StatusCode::OK,
                    &json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"}, "eventTime": "2026-12-03T10:00:00.000000Z", "reason": "ExpandingVolume", "type": "Normal", "action": "ExpandingVolume", "reportingController": "grape-operator", "reportingInstance": "x"}),
                );
            }
        }
        let (_, path, _, _, body, send) = next(&mut handle).await;
        assert!(path.ends_with("/grapeclusters/test/status"), "{path}");
        let progressing = body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Progressing")
            .unwrap()
            .clone();
        assert_eq!(progressing["status"], "True");
        assert_eq!(progressing["reason"], "ExpandingVolumes");
        assert!(
            progressing["message"]
                .as_str()
                .unwrap()
                .contains("data-test-0, data-test-1, data-test-2 to 20Gi"),
            "{progressing}"
        );
        let object = serde_json::to_value(cluster(None, false)).unwrap();
        respond(send, StatusCode::OK, &object);
    });
    controller::reconcile(Arc::new(grown), ctx)
        .await
        .expect("reconcile");
    server.await.unwrap();
}

#[test]
fn a_status_patch_clears_what_the_new_status_no_longer_has() {
    use grape_operator::crd::{FailedAction, GrapeClusterStatus};
    let old = GrapeClusterStatus {
        leader: Some("g-0".into()),
        failed_action: Some(FailedAction {
            reason: "Rebalancing".into(),
            message: "409".into(),
            attempts: 2,
            last_failure_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }),
        ..GrapeClusterStatus::default()
    };
    let new = GrapeClusterStatus {
        leader: Some("g-1".into()),
        ..GrapeClusterStatus::default()
    };
    let patch = controller::status_patch(&old, &new);
    assert_eq!(patch["status"]["failedAction"], Value::Null);
    assert!(
        patch["status"]
            .as_object()
            .unwrap()
            .contains_key("failedAction")
    );
    assert_eq!(patch["status"]["leader"], "g-1");
}
