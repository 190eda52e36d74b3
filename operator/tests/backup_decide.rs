//! The backup decisions, pure: a GrapeBackup from pending to its end (refusals, retries,
//! the data plane's answers), a GrapeScheduledBackup's runs (immediate, missed, skipped,
//! suspended) and retention, and a cluster's bootstrap restore.

use grape_client::{BackupInfo, BackupState, RestoreInfo};
use grape_operator::backup::crd::{
    GrapeBackupSpec, GrapeBackupStatus, GrapeScheduledBackupSpec, GrapeScheduledBackupStatus,
};
use grape_operator::backup::decide::{
    self, BackupStep, COMPLETED, CallError, Child, ClusterView, FAILED, PENDING, RUNNING,
    RestoreStep,
};
use grape_operator::crd::{GrapeClusterSpec, GrapeClusterStatus, RestoreStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use std::time::Duration;

/// 2027-01-15T08:00:00Z.
fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn spec() -> GrapeBackupSpec {
    serde_json::from_value(json!({
        "cluster": "g", "destination": "s3://bucket/grape", "collections": ["docs"],
    }))
    .unwrap()
}

fn info(state: BackupState) -> BackupInfo {
    BackupInfo {
        id: "20270115T080000Z-00aa".into(),
        state,
        location: "s3://bucket/grape/20270115T080000Z-00aa".into(),
        collections: vec!["docs".into()],
        coordinator: "g-1".into(),
        started_ms: 1_800_000_000_000,
        finished_ms: (state != BackupState::Running).then_some(1_800_000_060_000),
        shards_done: if state == BackupState::Running { 1 } else { 4 },
        shards_total: 4,
        bytes: 1234,
        documents: 99,
        error: (state == BackupState::Failed).then(|| "copying docs/0 from g-2: gone".into()),
        tag: Some("GrapeBackup default/once uid-b".into()),
    }
}

const TAG: &str = "GrapeBackup default/once uid-b";

/// The cluster can take a backup to s3://bucket (and below).
fn ready() -> ClusterView {
    ClusterView::Ready {
        destinations: vec!["s3://bucket/".into()],
    }
}

fn refused(status: u16, code: &str) -> CallError {
    CallError {
        status: Some(status),
        code: Some(code.into()),
        message: format!("{status} {code}: refused"),
    }
}

fn unreachable() -> CallError {
    CallError {
        status: None,
        code: None,
        message: "connection refused".into(),
    }
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

#[test]
fn a_backup_waits_for_its_cluster_then_starts_with_its_spec() {
    let status = GrapeBackupStatus::default();
    let (step, waiting) = decide::backup_step(&spec(), TAG, &status, &ClusterView::Missing, at(0));
    assert_eq!(step, BackupStep::Wait(Duration::from_secs(30)));
    assert_eq!(waiting.phase.as_deref(), Some(PENDING));
    assert!(
        waiting
            .message
            .as_ref()
            .unwrap()
            .contains("GrapeCluster g does not exist")
    );
    assert_eq!(condition(&waiting.conditions, "Complete").status, "False");
    assert_eq!(condition(&waiting.conditions, "Failed").status, "False");

    let (step, _) = decide::backup_step(
        &spec(),
        TAG,
        &status,
        &ClusterView::NotReady("no pod is ready".into()),
        at(0),
    );
    assert!(matches!(step, BackupStep::Wait(_)));

    let (step, _) = decide::backup_step(&spec(), TAG, &waiting, &ready(), at(1));
    let BackupStep::Start(request) = step else {
        panic!("{step:?}")
    };
    assert_eq!(request.destination, "s3://bucket/grape");
    assert_eq!(request.collections, Some(vec!["docs".to_string()]));
}

#[test]
fn a_started_backup_is_followed_to_its_end() {
    let (running, event) = decide::backup_started(
        &GrapeBackupStatus::default(),
        Ok(info(BackupState::Running)),
        at(0),
    );
    assert_eq!(running.phase.as_deref(), Some(RUNNING));
    assert_eq!(running.backup_id.as_deref(), Some("20270115T080000Z-00aa"));
    assert_eq!(running.start_time, Some(Time(at(0))));
    assert_eq!((running.shards_done, running.shards_total), (1, 4));
    assert_eq!(event.reason, "BackupStarted");
    assert!(!event.warning);
    // From now on it is followed, whatever the cluster looks like.
    let (step, _) = decide::backup_step(&spec(), TAG, &running, &ClusterView::Missing, at(1));
    assert_eq!(step, BackupStep::Follow("20270115T080000Z-00aa".into()));

    // A node that cannot be reached changes nothing but the message.
    let (still, event) = decide::backup_followed(&running, Err(unreachable()), at(2));
    assert!(event.is_none());
    assert_eq!(still.phase.as_deref(), Some(RUNNING));
    assert!(
        still
            .message
            .as_ref()
            .unwrap()
            .contains("connection refused")
    );

    let (done, event) = decide::backup_followed(&running, Ok(info(BackupState::Done)), at(70));
    assert_eq!(done.phase.as_deref(), Some(COMPLETED));
    assert_eq!(
        done.completion_time,
        Some(Time(at(60))),
        "the data plane's end"
    );
    assert_eq!((done.bytes, done.documents), (1234, 99));
    assert_eq!(condition(&done.conditions, "Complete").status, "True");
    assert_eq!(condition(&done.conditions, "Failed").status, "False");
    assert_eq!(event.unwrap().reason, "BackupCompleted");
    let (step, same) = decide::backup_step(&spec(), TAG, &done, &ready(), at(80));
    assert_eq!(step, BackupStep::Ended);
    assert_eq!(same, done);

    let (failed, event) = decide::backup_followed(&running, Ok(info(BackupState::Failed)), at(70));
    assert_eq!(failed.phase.as_deref(), Some(FAILED));
    assert!(failed.message.as_ref().unwrap().contains("gone"));
    assert_eq!(condition(&failed.conditions, "Failed").status, "True");
    let event = event.unwrap();
    assert!(event.warning && event.reason == "BackupFailed");

    // A record the cluster no longer has (the cluster was recreated) fails it.
    let (lost, _) = decide::backup_followed(&running, Err(refused(404, "backup_not_found")), at(9));
    assert_eq!(lost.phase.as_deref(), Some(FAILED));
}

#[test]
fn a_busy_cluster_defers_a_backup_with_backoff_and_a_refusal_fails_it() {
    let (deferred, event) = decide::backup_started(
        &GrapeBackupStatus::default(),
        Err(refused(409, "backup_running")),
        at(0),
    );
    assert_eq!(deferred.phase.as_deref(), Some(PENDING));
    assert_eq!(deferred.attempts, 1);
    assert!(event.warning && event.reason == "BackupDeferred");
    // 5 s after the first failure, not before.
    let (step, _) = decide::backup_step(&spec(), TAG, &deferred, &ready(), at(2));
    assert_eq!(step, BackupStep::Wait(Duration::from_secs(3)));
    let (step, _) = decide::backup_step(&spec(), TAG, &deferred, &ready(), at(5));
    assert!(matches!(step, BackupStep::Start(_)));
    let (again, _) = decide::backup_started(&deferred, Err(unreachable()), at(5));
    assert_eq!(again.attempts, 2);
    let (step, _) = decide::backup_step(&spec(), TAG, &again, &ready(), at(10));
    assert!(matches!(step, BackupStep::Wait(_)), "10 s after the second");
    let (started, _) = decide::backup_started(&again, Ok(info(BackupState::Running)), at(15));
    assert_eq!((started.attempts, started.last_attempt_time), (0, None));

    // A bad location or collection is refused for good.
    let (failed, event) = decide::backup_started(
        &GrapeBackupStatus::default(),
        Err(refused(400, "invalid_location")),
        at(0),
    );
    assert_eq!(failed.phase.as_deref(), Some(FAILED));
    assert!(
        failed
            .message
            .as_ref()
            .unwrap()
            .contains("invalid_location")
    );
    assert!(event.warning && event.reason == "BackupFailed");
    let (step, _) = decide::backup_step(&spec(), TAG, &failed, &ready(), at(60));
    assert_eq!(step, BackupStep::Ended);
}

fn schedule_spec(schedule: &str, extra: serde_json::Value) -> GrapeScheduledBackupSpec {
    let mut value = json!({
        "cluster": "g", "schedule": schedule, "destination": "s3://bucket/grape",
    });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    serde_json::from_value(value).unwrap()
}

fn child(name: &str, phase: Option<&str>, created: i64) -> Child {
    Child {
        name: name.into(),
        phase: phase.map(str::to_string),
        created: at(created),
        completed: matches!(phase, Some(COMPLETED) | Some(FAILED)).then(|| at(created + 60)),
        backup_id: Some(format!("id-{name}")),
        destination: "s3://bucket/grape".into(),
    }
}

/// at(0) is 2027-01-15T08:00:00Z: 08:00 runs of `0 * * * *` fall on multiples of 3600.
#[test]
fn a_schedule_runs_at_its_times_once_each_and_only_the_latest_missed_run() {
    let spec = schedule_spec("0 * * * *", json!({}));
    let created = at(-600);
    let plan = decide::schedule(
        "nightly",
        &spec,
        &GrapeScheduledBackupStatus::default(),
        created,
        &[],
        at(-300),
    );
    assert_eq!(plan.create, None, "not before the first scheduled time");
    assert_eq!(plan.status.next_schedule_time, Some(Time(at(0))));
    assert_eq!(plan.requeue, Duration::from_secs(300));
    assert_eq!(condition(&plan.status.conditions, "Ready").status, "True");

    let plan = decide::schedule(
        "nightly",
        &spec,
        &GrapeScheduledBackupStatus::default(),
        created,
        &[],
        at(30),
    );
    assert_eq!(plan.create.as_deref(), Some("nightly-20270115080000"));
    assert_eq!(plan.status.last_schedule_time, Some(Time(at(0))));
    assert_eq!(plan.status.next_schedule_time, Some(Time(at(3600))));
    assert_eq!(
        plan.status.last_backup.as_deref(),
        Some("nightly-20270115080000")
    );
    // Taken: the same run is not made again.
    let again = decide::schedule(
        "nightly",
        &spec,
        &plan.status,
        created,
        &[child("nightly-20270115080000", None, 31)],
        at(40),
    );
    assert_eq!(again.create, None);

    // The operator was down for three runs: the latest is taken, once.
    let late = decide::schedule(
        "nightly",
        &spec,
        &plan.status,
        created,
        &[child("nightly-20270115080000", Some(COMPLETED), 31)],
        at(3 * 3600 + 100),
    );
    assert_eq!(late.create.as_deref(), Some("nightly-20270115110000"));
    assert_eq!(late.status.last_schedule_time, Some(Time(at(3 * 3600))));
    assert_eq!(late.status.last_successful_time, Some(Time(at(91))));
}

#[test]
fn immediate_suspend_overlap_and_a_bad_schedule() {
    // Immediate: at once, named by the creation time.
    let spec = schedule_spec("@daily", json!({"immediate": true}));
    let plan = decide::schedule(
        "s",
        &spec,
        &GrapeScheduledBackupStatus::default(),
        at(-5),
        &[],
        at(0),
    );
    assert_eq!(plan.create.as_deref(), Some("s-20270115075955"));
    assert_eq!(plan.status.next_schedule_time, Some(Time(at(16 * 3600))));

    // A run while the last backup still runs is skipped, with a warning.
    let spec = schedule_spec("*/5 * * * *", json!({}));
    let status = GrapeScheduledBackupStatus {
        last_schedule_time: Some(Time(at(0))),
        ..Default::default()
    };
    let plan = decide::schedule(
        "s",
        &spec,
        &status,
        at(-5),
        &[child("s-20270115080000", Some(RUNNING), 0)],
        at(301),
    );
    assert_eq!(plan.create, None);
    assert_eq!(plan.status.last_schedule_time, Some(Time(at(300))));
    let ready = condition(&plan.status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "BackupOverdue")
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "BackupSkipped")
    );

    // Suspended: nothing new; the run missed is taken once when resumed.
    let spec = schedule_spec("*/5 * * * *", json!({"suspend": true}));
    let plan = decide::schedule("s", &spec, &status, at(-5), &[], at(1000));
    assert_eq!(plan.create, None);
    let ready = condition(&plan.status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Suspended")
    );
    let resumed = schedule_spec("*/5 * * * *", json!({}));
    let plan = decide::schedule("s", &resumed, &plan.status, at(-5), &[], at(1000));
    assert_eq!(plan.create.as_deref(), Some("s-20270115081500"));

    // Not a schedule: said so, nothing made.
    for bad in ["0 2 * *", "every day", "61 * * * *", "0 0 2 * * *"] {
        let plan = decide::schedule(
            "s",
            &schedule_spec(bad, json!({})),
            &GrapeScheduledBackupStatus::default(),
            at(-5),
            &[],
            at(100_000),
        );
        assert_eq!(plan.create, None, "{bad}");
        let ready = condition(&plan.status.conditions, "Ready");
        assert_eq!(ready.reason, "InvalidSchedule", "{bad}");
    }
}

#[test]
fn retention_keeps_the_newest_completed_and_failed_backups() {
    let spec = schedule_spec(
        "0 * * * *",
        json!({"successfulBackupsToKeep": 3, "failedBackupsToKeep": 1}),
    );
    let mut children: Vec<Child> = (0..6)
        .map(|i| child(&format!("s-{i}"), Some(COMPLETED), i * 3600))
        .collect();
    children.push(child("s-f1", Some(FAILED), 100));
    children.push(child("s-f2", Some(FAILED), 200));
    children.push(child("s-run", Some(RUNNING), 7 * 3600));
    let status = GrapeScheduledBackupStatus {
        last_schedule_time: Some(Time(at(7 * 3600))),
        ..Default::default()
    };
    let plan = decide::schedule("s", &spec, &status, at(-5), &children, at(7 * 3600 + 10));
    let mut deleted: Vec<&str> = plan.delete.iter().map(|c| c.name.as_str()).collect();
    deleted.sort();
    assert_eq!(deleted, ["s-0", "s-1", "s-2", "s-f1"]);
    assert_eq!(
        plan.status.last_successful_time,
        Some(Time(at(5 * 3600 + 60)))
    );
    // The newest ended backup failed: not Ready.
    let failed_last = vec![
        child("s-0", Some(COMPLETED), 0),
        child("s-1", Some(FAILED), 3600),
    ];
    let plan = decide::schedule("s", &spec, &status, at(-5), &failed_last, at(7 * 3600 + 10));
    assert!(plan.delete.is_empty());
    let ready = condition(&plan.status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "LastBackupFailed")
    );
}

fn cluster_spec(bootstrap: bool) -> GrapeClusterSpec {
    let mut value = json!({"replicas": 3});
    if bootstrap {
        value["bootstrap"] =
            json!({"fromBackup": {"source": "s3://bucket/grape", "rename": {"docs": "docs_v1"}}});
    }
    serde_json::from_value(value).unwrap()
}

fn running_cluster() -> GrapeClusterStatus {
    GrapeClusterStatus {
        phase: Some("Running".into()),
        ready_replicas: 3,
        ..Default::default()
    }
}

fn restore(state: BackupState) -> RestoreInfo {
    RestoreInfo {
        backup_id: "20270115T080000Z-00aa".into(),
        state,
        source: "s3://bucket/grape".into(),
        collections: [("docs".to_string(), "docs_v1".to_string())].into(),
        coordinator: "g-0".into(),
        started_ms: 1_800_000_000_000,
        finished_ms: (state != BackupState::Running).then_some(1_800_000_030_000),
        documents_total: 100,
        documents_restored: if state == BackupState::Done { 100 } else { 40 },
        bytes_total: 5000,
        error: (state == BackupState::Failed).then(|| "restarted".into()),
    }
}

#[test]
fn a_bootstrap_restore_starts_once_the_cluster_is_running_and_is_followed_to_its_end() {
    // Without bootstrap: nothing at all.
    let (step, status, events) = decide::bootstrap(
        &cluster_spec(false),
        &running_cluster(),
        &[],
        Some(&[]),
        at(0),
    );
    assert_eq!(step, RestoreStep::Nothing);
    assert_eq!(status, running_cluster());
    assert!(events.is_empty());

    let spec = cluster_spec(true);
    // Pods still coming up: wait, and say so.
    let creating = GrapeClusterStatus {
        phase: Some("Creating".into()),
        ..Default::default()
    };
    let (step, status, _) = decide::bootstrap(&spec, &creating, &[], None, at(0));
    assert_eq!(step, RestoreStep::Nothing);
    assert_eq!(status.phase.as_deref(), Some("Creating"));
    assert_eq!(status.restore.as_ref().unwrap().phase, PENDING);
    assert_eq!(condition(&status.conditions, "Restored").status, "False");

    // Running, nothing restored yet: start it, with the spec's request.
    let (step, status, _) = decide::bootstrap(&spec, &running_cluster(), &[], Some(&[]), at(1));
    let RestoreStep::Start(request) = step else {
        panic!("{step:?}")
    };
    assert_eq!(request.source, "s3://bucket/grape");
    assert_eq!(request.backup_id, None, "the newest backup there");
    assert_eq!(
        request.rename.get("docs").map(String::as_str),
        Some("docs_v1")
    );
    assert_eq!(status.phase.as_deref(), Some("Restoring"));
    let (status, event) =
        decide::restore_started(&status, Ok(restore(BackupState::Running)), at(1));
    assert_eq!(event.reason, "Restoring");
    let restoring = status.restore.clone().unwrap();
    assert_eq!(restoring.phase, RUNNING);
    assert_eq!(
        restoring.backup_id.as_deref(),
        Some("20270115T080000Z-00aa")
    );

    // Running: progress, no second start.
    let planned = GrapeClusterStatus {
        restore: Some(restoring.clone()),
        ..running_cluster()
    };
    let (step, status, _) = decide::bootstrap(
        &spec,
        &planned,
        &[],
        Some(&[restore(BackupState::Running)]),
        at(5),
    );
    assert_eq!(step, RestoreStep::Nothing);
    assert_eq!(status.phase.as_deref(), Some("Restoring"));
    assert_eq!(status.restore.as_ref().unwrap().documents_restored, 40);
    let restored = condition(&status.conditions, "Restored");
    assert_eq!(
        (restored.status.as_str(), restored.reason.as_str()),
        ("False", "Restoring")
    );

    // Done: Running, Restored, an Event, and never asked again.
    let (step, status, events) = decide::bootstrap(
        &spec,
        &planned,
        &planned.conditions,
        Some(&[restore(BackupState::Done)]),
        at(40),
    );
    assert_eq!(step, RestoreStep::Nothing);
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let done = status.restore.clone().unwrap();
    assert_eq!(
        (done.phase.as_str(), done.documents_restored),
        (COMPLETED, 100)
    );
    assert_eq!(done.completion_time, Some(Time(at(30))));
    assert_eq!(condition(&status.conditions, "Restored").status, "True");
    assert_eq!(events[0].reason, "Restored");
    let later = GrapeClusterStatus {
        restore: Some(done),
        ..running_cluster()
    };
    let (step, status, events) = decide::bootstrap(&spec, &later, &[], None, at(1000));
    assert_eq!(step, RestoreStep::Nothing);
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert!(events.is_empty());
}

#[test]
fn a_failed_bootstrap_restore_is_started_again_after_a_backoff() {
    let spec = cluster_spec(true);
    let planned = GrapeClusterStatus {
        restore: Some(RestoreStatus {
            backup_id: Some("20270115T080000Z-00aa".into()),
            phase: RUNNING.into(),
            ..Default::default()
        }),
        ..running_cluster()
    };
    let (step, status, events) = decide::bootstrap(
        &spec,
        &planned,
        &[],
        Some(&[restore(BackupState::Failed)]),
        at(0),
    );
    assert_eq!(step, RestoreStep::Nothing, "not before the backoff");
    let failed = status.restore.clone().unwrap();
    assert_eq!((failed.phase.as_str(), failed.attempts), (FAILED, 1));
    assert!(
        events
            .iter()
            .any(|e| e.warning && e.reason == "RestoreFailed")
    );
    let planned = GrapeClusterStatus {
        restore: Some(failed),
        ..running_cluster()
    };
    let (step, status, events) = decide::bootstrap(
        &spec,
        &planned,
        &[],
        Some(&[restore(BackupState::Failed)]),
        at(6),
    );
    assert!(events.is_empty(), "the same failure is told once");
    let RestoreStep::Start(request) = step else {
        panic!("{step:?}")
    };
    assert_eq!(
        request.backup_id.as_deref(),
        Some("20270115T080000Z-00aa"),
        "the same backup"
    );
    // A start refused (the backup is damaged, the cluster not empty) counts as a failure.
    let (status, event) =
        decide::restore_started(&status, Err(refused(409, "restore_conflict")), at(6));
    assert!(event.warning);
    let failed = status.restore.unwrap();
    assert_eq!((failed.phase.as_str(), failed.attempts), (FAILED, 2));
    assert!(failed.message.unwrap().contains("restore_conflict"));
}

#[test]
fn a_backup_goes_only_where_its_cluster_allows() {
    for (allowed, ok) in [
        (vec![], false),
        (vec!["s3://bucket/grape"], true),
        (vec!["s3://bucket/grape/"], true),
        (vec!["s3://bucket"], true),
        (vec!["s3://bucket/gr"], false),
        (vec!["s3://other", "s3://bucket/grape"], true),
        (vec!["file:///backups"], false),
    ] {
        let view = ClusterView::Ready {
            destinations: allowed.iter().map(|a| a.to_string()).collect(),
        };
        let (step, status) =
            decide::backup_step(&spec(), TAG, &GrapeBackupStatus::default(), &view, at(0));
        if ok {
            assert!(
                matches!(step, BackupStep::Start(_)),
                "{allowed:?}: {step:?}"
            );
        } else {
            assert_eq!(step, BackupStep::Ended, "{allowed:?}");
            assert_eq!(status.phase.as_deref(), Some(FAILED));
            assert!(
                status
                    .message
                    .as_ref()
                    .unwrap()
                    .contains("spec.backup.destinations"),
                "{status:?}"
            );
        }
    }
    // The request carries the GrapeBackup's tag: a lost answer is found by it.
    let (BackupStep::Start(request), _) =
        decide::backup_step(&spec(), TAG, &GrapeBackupStatus::default(), &ready(), at(0))
    else {
        panic!()
    };
    assert_eq!(request.tag.as_deref(), Some(TAG));
}

#[test]
fn only_a_bad_request_fails_a_backup_for_good() {
    for (status, code, final_) in [
        (400, "invalid_location", true),
        (404, "collection_not_found", true),
        (401, "unauthorized", false),
        (403, "forbidden", false),
        (409, "backup_running", false),
        (429, "rate_limited", false),
        (503, "unavailable", false),
    ] {
        let (next, _) = decide::backup_started(
            &GrapeBackupStatus::default(),
            Err(refused(status, code)),
            at(0),
        );
        let expected = if final_ { FAILED } else { PENDING };
        assert_eq!(next.phase.as_deref(), Some(expected), "{status}");
    }
}

#[test]
fn the_restored_condition_keeps_its_transition_time_across_reconciles() {
    let spec = cluster_spec(true);
    let restoring = GrapeClusterStatus {
        restore: Some(RestoreStatus {
            backup_id: Some("20270115T080000Z-00aa".into()),
            phase: RUNNING.into(),
            ..Default::default()
        }),
        ..running_cluster()
    };
    let running = [restore(BackupState::Running)];
    let (_, first, _) = decide::bootstrap(&spec, &restoring, &[], Some(&running), at(0));
    // The next reconcile's planned status has no Restored condition (the cluster decisions
    // rebuild the list); the one last reported gives its time.
    let (_, second, _) =
        decide::bootstrap(&spec, &restoring, &first.conditions, Some(&running), at(50));
    let time = |s: &GrapeClusterStatus| {
        condition(&s.conditions, "Restored")
            .last_transition_time
            .clone()
    };
    assert_eq!(time(&first), Time(at(0)));
    assert_eq!(time(&second), Time(at(0)));
    assert_eq!(second, first);
    // Paused: nothing read or started, and the condition stays as it was.
    let (step, paused, _) = decide::bootstrap(&spec, &restoring, &first.conditions, None, at(60));
    assert_eq!(step, RestoreStep::Nothing);
    assert_eq!(time(&paused), Time(at(0)));
}

#[test]
fn a_schedule_whose_name_cannot_be_a_label_says_so() {
    let name = "n".repeat(64);
    let plan = decide::schedule(
        &name,
        &schedule_spec("0 * * * *", json!({"immediate": true})),
        &GrapeScheduledBackupStatus::default(),
        at(0),
        &[],
        at(10),
    );
    assert_eq!(plan.create, None);
    let ready = condition(&plan.status.conditions, "Ready");
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("at most 63"), "{ready:?}");
}
