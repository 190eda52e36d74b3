//! The backup decisions, pure: what to do next for a GrapeBackup, a GrapeScheduledBackup and
//! a cluster's bootstrap restore, given what was observed and the time, and the status to
//! report. The shell ([`super::controller`]) makes the calls and feeds their outcomes back.

use super::crd::{
    BackupTarget, GrapeBackupSpec, GrapeBackupStatus, GrapeScheduledBackupSpec,
    GrapeScheduledBackupStatus,
};
use crate::crd::{GrapeClusterSpec, GrapeClusterStatus, RestoreStatus};
use crate::decide::{PlannedEvent, backoff, make_condition};
use grape_client::{BackupInfo, BackupRequest, BackupState, RestoreInfo, RestoreRequest};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

pub const PENDING: &str = "Pending";
pub const RUNNING: &str = "Running";
pub const COMPLETED: &str = "Completed";
pub const FAILED: &str = "Failed";

/// The label on a GrapeBackup a schedule made, naming the schedule.
pub const SCHEDULE_LABEL: &str = "grape.io/scheduled-backup";

/// How a data-plane call went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    /// The HTTP status the data plane answered with; None when it could not be reached.
    pub status: Option<u16>,
    /// Its error code (`backup_running`, `invalid_location`, ...).
    pub code: Option<String>,
    pub message: String,
}

impl CallError {
    /// Refused for good: the same request will be refused again (a bad request, a collection
    /// that does not exist). Others (another backup running, a key being rotated, too many
    /// requests, a node down) may pass later.
    fn is_final(&self) -> bool {
        matches!(self.status, Some(400 | 404 | 413 | 422))
    }
}

/// What the operator can see of the GrapeCluster a backup names.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterView {
    Missing,
    /// It exists but cannot take a backup now (no pod ready, paused, ...).
    NotReady(String),
    /// It can take a backup, to the destinations its `spec.backup.destinations` allows.
    Ready {
        destinations: Vec<String>,
    },
}

/// Whether `destination` is one of `allowed` or inside one (at a `/`).
pub fn destination_allowed(destination: &str, allowed: &[String]) -> bool {
    let destination = destination.trim_end_matches('/');
    allowed.iter().any(|a| {
        let a = a.trim_end_matches('/');
        !a.is_empty()
            && (destination == a
                || destination
                    .strip_prefix(a)
                    .is_some_and(|rest| rest.starts_with('/')))
    })
}

/// The next step for a GrapeBackup.
#[derive(Debug, Clone, PartialEq)]
pub enum BackupStep {
    /// It ended (Completed or Failed): nothing more to do, ever.
    Ended,
    /// Look again after this long.
    Wait(Duration),
    /// Ask the data plane to start it.
    Start(BackupRequest),
    /// Read how the data plane's backup is going.
    Follow(String),
}

fn request(target: &BackupTarget, tag: &str) -> BackupRequest {
    BackupRequest {
        destination: target.destination.clone(),
        collections: target.collections.clone(),
        tag: Some(tag.to_string()),
    }
}

/// The tag a GrapeBackup's data-plane backup carries: a lost answer is found by it.
pub fn backup_tag(namespace: &str, name: &str, uid: &str) -> String {
    format!("GrapeBackup {namespace}/{name} {uid}")
}

fn is_ended(phase: Option<&str>) -> bool {
    matches!(phase, Some(COMPLETED) | Some(FAILED))
}

/// The step for a GrapeBackup (whose data-plane backup carries `tag`) and the status to
/// report while it is taken.
pub fn backup_step(
    spec: &GrapeBackupSpec,
    tag: &str,
    status: &GrapeBackupStatus,
    cluster: &ClusterView,
    now: Timestamp,
) -> (BackupStep, GrapeBackupStatus) {
    if is_ended(status.phase.as_deref()) {
        return (BackupStep::Ended, status.clone());
    }
    if let Some(id) = &status.backup_id {
        return (BackupStep::Follow(id.clone()), status.clone());
    }
    let mut next = status.clone();
    next.phase = Some(PENDING.into());
    let waiting = |next: &mut GrapeBackupStatus, message: String, after: u64| {
        next.message = Some(message);
        with_backup_conditions(next, now);
        Duration::from_secs(after)
    };
    match cluster {
        ClusterView::Missing => {
            let message = format!("GrapeCluster {} does not exist", spec.cluster);
            let after = waiting(&mut next, message, 30);
            (BackupStep::Wait(after), next)
        }
        ClusterView::NotReady(why) => {
            let message = format!(
                "GrapeCluster {} cannot take a backup now: {why}",
                spec.cluster
            );
            let after = waiting(&mut next, message, 15);
            (BackupStep::Wait(after), next)
        }
        ClusterView::Ready { destinations } => {
            if !destination_allowed(&spec.target.destination, destinations) {
                // Who may create a GrapeBackup must not choose where the data goes: the
                // cluster's owner lists the places.
                next.phase = Some(FAILED.into());
                next.completion_time = Some(Time(now));
                next.message = Some(format!(
                    "{} is not among GrapeCluster {}'s spec.backup.destinations ({}): add it there first",
                    spec.target.destination,
                    spec.cluster,
                    if destinations.is_empty() {
                        "none".to_string()
                    } else {
                        destinations.join(", ")
                    }
                ));
                with_backup_conditions(&mut next, now);
                return (BackupStep::Ended, next);
            }
            if let Some(left) =
                backoff_left(status.attempts, status.last_attempt_time.as_ref(), now)
            {
                with_backup_conditions(&mut next, now);
                return (BackupStep::Wait(left), next);
            }
            (BackupStep::Start(request(&spec.target, tag)), next)
        }
    }
}

/// How long is left of the backoff after `attempts` failures, the last at `last`.
fn backoff_left(attempts: i32, last: Option<&Time>, now: Timestamp) -> Option<Duration> {
    if attempts <= 0 {
        return None;
    }
    let last = last?.0;
    let wait = backoff(attempts).as_secs() as i64;
    let elapsed = now.as_second() - last.as_second();
    (elapsed < wait).then(|| Duration::from_secs((wait - elapsed).max(1) as u64))
}

/// The status after asking the data plane to start the backup, and the Event to publish.
pub fn backup_started(
    status: &GrapeBackupStatus,
    outcome: Result<BackupInfo, CallError>,
    now: Timestamp,
) -> (GrapeBackupStatus, PlannedEvent) {
    let mut next = status.clone();
    let event = match outcome {
        Ok(info) => {
            next.start_time = Some(Time(now));
            next.attempts = 0;
            next.last_attempt_time = None;
            let note = format!("backup {} started, into {}", info.id, info.location);
            observe_backup(&mut next, &info, now);
            event(false, "BackupStarted", note)
        }
        Err(error) if error.is_final() => {
            next.phase = Some(FAILED.into());
            next.completion_time = Some(Time(now));
            next.message = Some(error.message.clone());
            event(true, "BackupFailed", error.message)
        }
        Err(error) => {
            next.phase = Some(PENDING.into());
            next.attempts = next.attempts.saturating_add(1);
            next.last_attempt_time = Some(Time(now));
            let note = format!(
                "the backup cannot start yet (attempt {}, next in {} s): {}",
                next.attempts,
                backoff(next.attempts).as_secs(),
                error.message
            );
            next.message = Some(note.clone());
            event(true, "BackupDeferred", note)
        }
    };
    with_backup_conditions(&mut next, now);
    (next, event)
}

/// The status after reading the data plane's backup, and the Event when it ended.
pub fn backup_followed(
    status: &GrapeBackupStatus,
    outcome: Result<BackupInfo, CallError>,
    now: Timestamp,
) -> (GrapeBackupStatus, Option<PlannedEvent>) {
    let mut next = status.clone();
    let id = status.backup_id.clone().unwrap_or_default();
    let event = match outcome {
        Ok(info) => {
            observe_backup(&mut next, &info, now);
            match info.state {
                BackupState::Running => None,
                BackupState::Done => Some(event(
                    false,
                    "BackupCompleted",
                    format!(
                        "backup {id} completed: {} documents, {} bytes, in {}",
                        info.documents, info.bytes, info.location
                    ),
                )),
                BackupState::Failed => Some(event(
                    true,
                    "BackupFailed",
                    format!(
                        "backup {id} failed: {}",
                        info.error.as_deref().unwrap_or("no reason given")
                    ),
                )),
            }
        }
        Err(error) if error.status == Some(404) => {
            next.phase = Some(FAILED.into());
            next.completion_time = Some(Time(now));
            let message = format!(
                "the cluster has no record of backup {id} (was the GrapeCluster recreated?)"
            );
            next.message = Some(message.clone());
            Some(event(true, "BackupFailed", message))
        }
        Err(error) => {
            next.message = Some(format!("cannot read backup {id}: {}", error.message));
            None
        }
    };
    with_backup_conditions(&mut next, now);
    (next, event)
}

fn observe_backup(status: &mut GrapeBackupStatus, info: &BackupInfo, now: Timestamp) {
    status.backup_id = Some(info.id.clone());
    status.location = Some(info.location.clone());
    status.bytes = info.bytes.min(i64::MAX as u64) as i64;
    status.documents = info.documents.min(i64::MAX as u64) as i64;
    status.shards_done = info.shards_done.min(i32::MAX as u32) as i32;
    status.shards_total = info.shards_total.min(i32::MAX as u32) as i32;
    match info.state {
        BackupState::Running => {
            status.phase = Some(RUNNING.into());
            status.message = None;
        }
        BackupState::Done => {
            status.phase = Some(COMPLETED.into());
            status.completion_time = Some(Time(finished(info).unwrap_or(now)));
            status.message = None;
        }
        BackupState::Failed => {
            status.phase = Some(FAILED.into());
            status.completion_time = Some(Time(finished(info).unwrap_or(now)));
            status.message = info.error.clone();
        }
    }
}

fn finished(info: &BackupInfo) -> Option<Timestamp> {
    Timestamp::from_millisecond(info.finished_ms? as i64).ok()
}

fn event(warning: bool, reason: &str, note: String) -> PlannedEvent {
    PlannedEvent {
        warning,
        reason: reason.into(),
        note,
    }
}

/// `Complete` and `Failed`, as a Job reports them.
fn with_backup_conditions(status: &mut GrapeBackupStatus, now: Timestamp) {
    let phase = status.phase.clone().unwrap_or_else(|| PENDING.into());
    let message = status.message.clone().unwrap_or_default();
    let old = status.conditions.clone();
    let complete = phase == COMPLETED;
    let failed = phase == FAILED;
    status.conditions = vec![
        make_condition(
            &old,
            "Complete",
            complete,
            &phase,
            message.clone(),
            None,
            now,
        ),
        make_condition(&old, "Failed", failed, &phase, message, None, now),
    ];
}

/// One of a schedule's GrapeBackups, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub name: String,
    pub phase: Option<String>,
    pub created: Timestamp,
    pub completed: Option<Timestamp>,
    pub backup_id: Option<String>,
    /// Where its files are (without the id): deleted there even when the cluster no longer
    /// has a record of it.
    pub destination: String,
}

/// What to do for a schedule now.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulePlan {
    /// A GrapeBackup to create: its name (the schedule's and the scheduled time: a second
    /// try of the same run finds it already there).
    pub create: Option<String>,
    /// GrapeBackups past retention: their files are deleted, then they are.
    pub delete: Vec<Child>,
    pub status: GrapeScheduledBackupStatus,
    pub events: Vec<PlannedEvent>,
    pub requeue: Duration,
}

/// A schedule: five cron fields, or a macro (`@daily`).
pub fn parse_schedule(text: &str) -> Result<croner::Cron, String> {
    let expanded = match text.trim() {
        "@hourly" => "0 * * * *",
        "@daily" | "@midnight" => "0 0 * * *",
        "@weekly" => "0 0 * * 0",
        "@monthly" => "0 0 1 * *",
        "@yearly" | "@annually" => "0 0 1 1 *",
        other => other,
    };
    if expanded.split_whitespace().count() != 5 {
        return Err(format!(
            "{text:?} is not a schedule: give five cron fields (minute hour day month weekday), or @hourly, @daily, @weekly, @monthly"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(expanded)
        .map_err(|e| format!("{text:?} is not a schedule: {e}"))
}

fn to_chrono(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.as_second(), 0).unwrap_or_default()
}

fn from_chrono(t: chrono::DateTime<chrono::Utc>) -> Option<Timestamp> {
    Timestamp::from_second(t.timestamp()).ok()
}

/// The first scheduled time strictly after `after`.
fn next_after(cron: &croner::Cron, after: Timestamp) -> Option<Timestamp> {
    from_chrono(cron.find_next_occurrence(&to_chrono(after), false).ok()?)
}

/// The name of the GrapeBackup of the run scheduled at `time`.
pub fn child_name(schedule: &str, time: Timestamp) -> String {
    let stamp = to_chrono(time).format("%Y%m%d%H%M%S").to_string();
    // Object names are at most 253 characters; leave room for the stamp.
    let base: String = schedule.chars().take(253 - 15).collect();
    format!("{base}-{stamp}")
}

/// The plan for schedule `name` (created at `created`) with its GrapeBackups `children`.
pub fn schedule(
    name: &str,
    spec: &GrapeScheduledBackupSpec,
    status: &GrapeScheduledBackupStatus,
    created: Timestamp,
    children: &[Child],
    now: Timestamp,
) -> SchedulePlan {
    let mut next = status.clone();
    let mut events = Vec::new();
    let mut create = None;
    let mut requeue = Duration::from_secs(300);
    let old = status.conditions.clone();
    let valid = if name.chars().count() > 63 {
        // Its backups carry its name in a label, at most 63 characters.
        Err(format!(
            "the schedule's name is {} characters long: at most 63",
            name.chars().count()
        ))
    } else {
        parse_schedule(&spec.schedule)
    };
    let ready = match valid {
        Err(message) => {
            next.next_schedule_time = None;
            make_condition(&old, "Ready", false, "InvalidSchedule", message, None, now)
        }
        Ok(cron) => {
            let base = status.last_schedule_time.as_ref().map_or(created, |t| t.0);
            let due = if status.last_schedule_time.is_none() && spec.immediate {
                Some(created)
            } else {
                next_after(&cron, base)
                    .filter(|first| *first <= now)
                    // Runs missed (operator down, suspended) are taken once: the latest.
                    .map(|first| {
                        cron.find_previous_occurrence(&to_chrono(now), true)
                            .ok()
                            .and_then(from_chrono)
                            .filter(|latest| *latest >= first)
                            .unwrap_or(first)
                    })
            };
            if let Some(due) = due.filter(|_| !spec.suspend) {
                let active = children
                    .iter()
                    .filter(|c| !is_ended(c.phase.as_deref()))
                    .max_by_key(|c| (c.created, c.name.clone()));
                match active {
                    Some(active) if active.name != child_name(name, due) => events.push(event(
                        true,
                        "BackupSkipped",
                        format!(
                            "the run of {due} is skipped: {} has not ended yet",
                            active.name
                        ),
                    )),
                    _ => {
                        let child = child_name(name, due);
                        next.last_backup = Some(child.clone());
                        create = Some(child);
                    }
                }
                next.last_schedule_time = Some(Time(due));
            }
            let from = next.last_schedule_time.as_ref().map_or(base, |t| t.0);
            next.next_schedule_time = next_after(&cron, from.max(now)).map(Time);
            if let Some(at) = &next.next_schedule_time {
                let left = (at.0.as_second() - now.as_second()).clamp(1, 300);
                requeue = Duration::from_secs(left as u64);
            }
            let newest_ended = children
                .iter()
                .filter(|c| is_ended(c.phase.as_deref()))
                .max_by_key(|c| (c.created, c.name.clone()));
            // A backup still going when a later run came due (stuck pending, say).
            let overdue = children.iter().find(|c| {
                !is_ended(c.phase.as_deref())
                    && next
                        .last_schedule_time
                        .as_ref()
                        .is_some_and(|t| t.0 > c.created)
            });
            let when = next
                .next_schedule_time
                .as_ref()
                .map_or("never".to_string(), |t| t.0.to_string());
            if spec.suspend {
                make_condition(
                    &old,
                    "Ready",
                    false,
                    "Suspended",
                    "suspended: no new backups are taken".into(),
                    None,
                    now,
                )
            } else if let Some(stuck) = overdue {
                make_condition(
                    &old,
                    "Ready",
                    false,
                    "BackupOverdue",
                    format!(
                        "{} has not ended and a later run was due; runs are skipped until it does",
                        stuck.name
                    ),
                    None,
                    now,
                )
            } else if let Some(failed) = newest_ended.filter(|c| c.phase.as_deref() == Some(FAILED))
            {
                make_condition(
                    &old,
                    "Ready",
                    false,
                    "LastBackupFailed",
                    format!(
                        "the last backup, {}, failed; next run at {when}",
                        failed.name
                    ),
                    None,
                    now,
                )
            } else {
                make_condition(
                    &old,
                    "Ready",
                    true,
                    "Scheduled",
                    format!("next run at {when}"),
                    None,
                    now,
                )
            }
        }
    };
    next.conditions = vec![ready];
    next.last_successful_time = children
        .iter()
        .filter(|c| c.phase.as_deref() == Some(COMPLETED))
        .filter_map(|c| c.completed)
        .max()
        .map(Time)
        .or(next.last_successful_time);
    if next.last_backup.is_none() {
        next.last_backup = children
            .iter()
            .max_by_key(|c| (c.created, c.name.clone()))
            .map(|c| c.name.clone());
    }
    let mut delete = past_retention(children, COMPLETED, spec.successful_backups_to_keep);
    delete.extend(past_retention(
        children,
        FAILED,
        spec.failed_backups_to_keep,
    ));
    SchedulePlan {
        create,
        delete,
        status: next,
        events,
        requeue,
    }
}

/// The children in `phase` beyond the newest `keep`.
fn past_retention(children: &[Child], phase: &str, keep: i32) -> Vec<Child> {
    let mut of_phase: Vec<&Child> = children
        .iter()
        .filter(|c| c.phase.as_deref() == Some(phase))
        .collect();
    of_phase.sort_by(|a, b| (b.created, &b.name).cmp(&(a.created, &a.name)));
    of_phase
        .into_iter()
        .skip(keep.max(0) as usize)
        .cloned()
        .collect()
}

/// The next step of a cluster's bootstrap restore.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreStep {
    /// No restore to do, or it is running or done.
    Nothing,
    Start(RestoreRequest),
}

/// The bootstrap restore's step, the cluster status with it (phase `Restoring` and the
/// `Restored` condition while it is not done) and Events. `planned` is what
/// [`crate::decide::decide`] would report, `previous` the conditions last reported;
/// `restores` what the data plane lists (None when no node answered, or when the cluster is
/// paused: nothing is started then).
pub fn bootstrap(
    spec: &GrapeClusterSpec,
    planned: &GrapeClusterStatus,
    previous: &[Condition],
    restores: Option<&[RestoreInfo]>,
    now: Timestamp,
) -> (RestoreStep, GrapeClusterStatus, Vec<PlannedEvent>) {
    let Some(from) = spec.bootstrap.as_ref().map(|b| &b.from_backup) else {
        return (RestoreStep::Nothing, planned.clone(), Vec::new());
    };
    let mut status = planned.clone();
    let mut restore = planned.restore.clone().unwrap_or_else(|| RestoreStatus {
        phase: PENDING.into(),
        ..RestoreStatus::default()
    });
    let mut events = Vec::new();
    let mut step = RestoreStep::Nothing;
    if restore.phase != COMPLETED {
        let ready = planned.phase.as_deref() == Some("Running");
        match restores.filter(|_| ready) {
            None => {
                restore.message =
                    Some("waiting for every pod to be ready before restoring the backup".into());
            }
            Some(restores) => {
                let found = restores.iter().find(|r| {
                    r.source == from.source
                        && from
                            .backup_id
                            .as_ref()
                            .or(restore.backup_id.as_ref())
                            .is_none_or(|id| *id == r.backup_id)
                });
                match found {
                    Some(found) if found.state == BackupState::Done => {
                        observe_restore(&mut restore, found);
                        restore.phase = COMPLETED.into();
                        restore.message = None;
                        restore.attempts = 0;
                        restore.completion_time = Some(Time(
                            found
                                .finished_ms
                                .and_then(|ms| Timestamp::from_millisecond(ms as i64).ok())
                                .unwrap_or(now),
                        ));
                        events.push(event(
                            false,
                            "Restored",
                            format!(
                                "backup {} restored from {}: {} documents",
                                found.backup_id, found.source, found.documents_restored
                            ),
                        ));
                    }
                    Some(found) if found.state == BackupState::Running => {
                        observe_restore(&mut restore, found);
                        restore.phase = RUNNING.into();
                        restore.message = None;
                    }
                    failed => {
                        if let Some(failed) = failed {
                            observe_restore(&mut restore, failed);
                            if restore.phase != FAILED {
                                restore.attempts = restore.attempts.saturating_add(1);
                                restore.last_attempt_time = Some(Time(now));
                                let message = format!(
                                    "restoring backup {} failed: {}",
                                    failed.backup_id,
                                    failed.error.as_deref().unwrap_or("no reason given")
                                );
                                events.push(event(true, "RestoreFailed", message.clone()));
                                restore.message = Some(message);
                            }
                            restore.phase = FAILED.into();
                        }
                        let waited =
                            backoff_left(restore.attempts, restore.last_attempt_time.as_ref(), now)
                                .is_none();
                        if waited {
                            step = RestoreStep::Start(RestoreRequest {
                                source: from.source.clone(),
                                backup_id: from.backup_id.clone().or(restore.backup_id.clone()),
                                collections: from.collections.clone(),
                                rename: from.rename.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    let done = restore.phase == COMPLETED;
    if !done && status.phase.as_deref() == Some("Running") {
        status.phase = Some("Restoring".into());
    }
    let (reason, message) = match restore.phase.as_str() {
        COMPLETED => ("Restored", "the bootstrap backup is restored".to_string()),
        RUNNING => (
            "Restoring",
            format!(
                "{} of {} documents restored",
                restore.documents_restored, restore.documents_total
            ),
        ),
        FAILED => ("RestoreFailed", restore.message.clone().unwrap_or_default()),
        _ => ("Pending", restore.message.clone().unwrap_or_default()),
    };
    // `planned` is rebuilt by the cluster's decisions, which know nothing of this condition:
    // its transition time comes from the status last reported.
    let condition: Condition = make_condition(
        previous,
        "Restored",
        done,
        reason,
        message,
        planned.observed_generation,
        now,
    );
    status.conditions.retain(|c| c.type_ != "Restored");
    status.conditions.push(condition);
    status.restore = Some(restore);
    (step, status, events)
}

fn observe_restore(status: &mut RestoreStatus, info: &RestoreInfo) {
    status.backup_id = Some(info.backup_id.clone());
    status.documents_restored = info.documents_restored.min(i64::MAX as u64) as i64;
    status.documents_total = info.documents_total.min(i64::MAX as u64) as i64;
}

/// The cluster status after asking the data plane to start the bootstrap restore.
pub fn restore_started(
    status: &GrapeClusterStatus,
    outcome: Result<RestoreInfo, CallError>,
    now: Timestamp,
) -> (GrapeClusterStatus, PlannedEvent) {
    let mut next = status.clone();
    let mut restore = next.restore.clone().unwrap_or_default();
    let event = match outcome {
        Ok(info) => {
            observe_restore(&mut restore, &info);
            restore.phase = RUNNING.into();
            restore.message = None;
            event(
                false,
                "Restoring",
                format!("restoring backup {} from {}", info.backup_id, info.source),
            )
        }
        Err(error) => {
            restore.phase = FAILED.into();
            restore.attempts = restore.attempts.saturating_add(1);
            restore.last_attempt_time = Some(Time(now));
            let note = format!(
                "the restore cannot start (attempt {}, next in {} s): {}",
                restore.attempts,
                backoff(restore.attempts).as_secs(),
                error.message
            );
            restore.message = Some(note.clone());
            event(true, "RestoreFailed", note)
        }
    };
    next.restore = Some(restore);
    (next, event)
}
