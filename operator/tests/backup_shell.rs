//! The backup controllers against a mocked API server (tower-test): the exact requests of a
//! GrapeBackup whose cluster is missing, of one that ended (none), and of a schedule taking
//! its run (once, even when asked twice) and deleting a backup past retention.

use grape_operator::backup::controller::{reconcile_backup, reconcile_schedule};
use grape_operator::backup::crd::{GrapeBackup, GrapeScheduledBackup};
use grape_operator::controller::Context;
use grape_operator::metrics::Metrics;
use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

fn mock() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (Arc::new(Context::new(client, Metrics::new())), handle)
}

/// The next request: method, path with query, body as JSON (Null when empty).
async fn next(handle: &mut Handle) -> (String, String, Value, Send) {
    let (request, send) = handle.next_request().await.expect("a request");
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (method, uri, body, send)
}

fn respond(send: Send, status: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn backup(status: Value) -> Value {
    json!({
        "apiVersion": "grape.io/v1alpha1", "kind": "GrapeBackup",
        "metadata": {"name": "once", "namespace": "default", "uid": "uid-b",
            "creationTimestamp": "2026-12-01T00:00:00Z"},
        "spec": {"cluster": "test", "destination": "s3://bucket/grape"},
        "status": status,
    })
}

const BACKUPS: &str = "/apis/grape.io/v1alpha1/namespaces/default/grapebackups";

#[tokio::test]
async fn a_backup_of_a_missing_cluster_waits_and_says_why() {
    let (ctx, mut handle) = mock();
    let server = tokio::spawn(async move {
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), uri.as_str()),
            (
                "GET",
                "/apis/grape.io/v1alpha1/namespaces/default/grapeclusters/test"
            )
        );
        respond(send, StatusCode::NOT_FOUND, &not_found());
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), uri.as_str()),
            (
                "PATCH",
                "/apis/grape.io/v1alpha1/namespaces/default/grapebackups/once/status?"
            )
        );
        assert_eq!(body["status"]["phase"], "Pending");
        assert_eq!(
            body["status"]["message"],
            "GrapeCluster test does not exist"
        );
        let conditions = body["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2);
        assert!(conditions.iter().all(|c| c["status"] == "False"));
        respond(send, StatusCode::OK, &backup(body["status"].clone()));
    });
    let object: GrapeBackup = serde_json::from_value(backup(Value::Null)).unwrap();
    let action = tokio::time::timeout(
        Duration::from_secs(5),
        reconcile_backup(Arc::new(object), ctx),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    server.await.unwrap();
}

#[tokio::test]
async fn an_ended_backup_asks_nothing_more() {
    for phase in ["Completed", "Failed"] {
        let (ctx, mut handle) = mock();
        let object: GrapeBackup =
            serde_json::from_value(backup(json!({"phase": phase, "backupId": "x"}))).unwrap();
        let action = reconcile_backup(Arc::new(object), ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        let asked = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
        assert!(
            matches!(asked, Err(_) | Ok(None)),
            "a request for an ended backup"
        );
    }
}

fn schedule() -> Value {
    json!({
        "apiVersion": "grape.io/v1alpha1", "kind": "GrapeScheduledBackup",
        "metadata": {"name": "nightly", "namespace": "default", "uid": "uid-s",
            "creationTimestamp": "2026-12-01T10:20:30Z"},
        "spec": {"cluster": "test", "schedule": "0 2 * * *", "destination": "s3://bucket/grape",
            "collections": ["docs"], "successfulBackupsToKeep": 1, "immediate": true},
    })
}

fn child(name: &str, created: &str) -> Value {
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

/// Answers the list of the schedule's backups with `items`.
async fn list_children(handle: &mut Handle, items: Vec<Value>) {
    let (method, uri, _, send) = next(handle).await;
    assert_eq!(method, "GET");
    assert_eq!(
        uri,
        format!("{BACKUPS}?&labelSelector=grape.io%2Fscheduled-backup%3Dnightly")
    );
    respond(
        send,
        StatusCode::OK,
        &json!({"apiVersion": "grape.io/v1alpha1", "kind": "GrapeBackupList", "metadata": {}, "items": items}),
    );
}

#[tokio::test]
async fn a_schedule_takes_its_run_once_and_deletes_what_is_past_retention() {
    let (ctx, mut handle) = mock();
    let server = tokio::spawn(async move {
        // Two completed backups of earlier runs (made by an operator with keep 2, say): the
        // older goes (it has no data-plane id: nothing to delete on the nodes).
        // One made by hand with the schedule's label, older still, is not the schedule's: kept.
        let mut foreign = child("by-hand", "2026-11-01T02:00:00Z");
        foreign["metadata"]["ownerReferences"] = json!([]);
        list_children(
            &mut handle,
            vec![
                foreign,
                child("nightly-old", "2026-11-29T02:00:00Z"),
                child("nightly-new", "2026-11-30T02:00:00Z"),
            ],
        )
        .await;
        // Immediate: the first run is the creation time.
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", &*format!("{BACKUPS}?"))
        );
        assert_eq!(body["metadata"]["name"], "nightly-20261201102030");
        assert_eq!(
            body["metadata"]["labels"],
            json!({"grape.io/scheduled-backup": "nightly"})
        );
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["uid"], &owner["controller"]),
            (
                &json!("GrapeScheduledBackup"),
                &json!("uid-s"),
                &json!(true)
            )
        );
        assert_eq!(
            body["spec"],
            json!({"cluster": "test", "destination": "s3://bucket/grape", "collections": ["docs"]})
        );
        respond(send, StatusCode::CREATED, &body);
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("DELETE", &*format!("{BACKUPS}/nightly-old?"))
        );
        respond(
            send,
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
        );
        let (method, uri, body, send) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), uri.as_str()),
            (
                "PATCH",
                "/apis/grape.io/v1alpha1/namespaces/default/grapescheduledbackups/nightly/status?"
            )
        );
        assert_eq!(body["status"]["lastScheduleTime"], "2026-12-01T10:20:30Z");
        assert_eq!(body["status"]["lastBackup"], "nightly-20261201102030");
        // The next 02:00 from now (this test runs on real time).
        let next_run: k8s_openapi::jiff::Timestamp = body["status"]["nextScheduleTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(next_run > k8s_openapi::jiff::Timestamp::now());
        assert!(next_run.to_string().ends_with("T02:00:00Z"), "{next_run}");
        assert_eq!(body["status"]["conditions"][0]["type"], "Ready");
        let mut answered = schedule();
        answered["status"] = body["status"].clone();
        respond(send, StatusCode::OK, &answered);
        // Events: the backup made, the old one deleted.
        let mut reasons = Vec::new();
        for _ in 0..2 {
            let (method, uri, body, send) = next(&mut handle).await;
            assert_eq!(method, "POST");
            assert!(uri.contains("/events"), "{uri}");
            reasons.push(body["reason"].as_str().unwrap().to_string());
            respond(send, StatusCode::CREATED, &body);
        }
        assert_eq!(reasons, ["BackupCreated", "BackupDeleted"]);
    });
    let object: GrapeScheduledBackup = serde_json::from_value(schedule()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        reconcile_schedule(Arc::new(object), ctx),
    )
    .await
    .unwrap()
    .unwrap();
    server.await.unwrap();

    // Asked again before its status shows the run (a stale cache): the GrapeBackup exists
    // already (409) and nothing else is made.
    let (ctx, mut handle) = mock();
    let server = tokio::spawn(async move {
        list_children(&mut handle, vec![]).await;
        let (method, _, body, send) = next(&mut handle).await;
        assert_eq!(method, "POST");
        assert_eq!(body["metadata"]["name"], "nightly-20261201102030");
        respond(
            send,
            StatusCode::CONFLICT,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"}),
        );
        let (method, uri, _, send) = next(&mut handle).await;
        assert_eq!(method, "PATCH");
        assert!(uri.ends_with("/grapescheduledbackups/nightly/status?"));
        respond(send, StatusCode::OK, &schedule());
        let more = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
        assert!(
            matches!(more, Err(_) | Ok(None)),
            "no Event for a backup made earlier"
        );
    });
    let object: GrapeScheduledBackup = serde_json::from_value(schedule()).unwrap();
    reconcile_schedule(Arc::new(object), ctx).await.unwrap();
    server.await.unwrap();
}
