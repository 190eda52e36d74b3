//! The kube-runtime shell of the backup resources: a controller for GrapeBackups (start the
//! data plane's backup, follow it to its end, report it) and one for GrapeScheduledBackups
//! (make a GrapeBackup at each scheduled time, delete those past retention, files first).

use super::crd::{GrapeBackup, GrapeBackupSpec, GrapeScheduledBackup};
use super::decide::{self, BackupStep, CallError, Child, ClusterView};
use crate::controller::{Context, Error, access, publish_planned, status_patch};
use crate::crd::GrapeCluster;
use crate::decide::PlannedEvent;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Runs both controllers until the process is asked to stop.
pub async fn run(context: Arc<Context>, namespace: Option<String>) {
    let client = context.client.clone();
    let (backups, schedules, owned) = match &namespace {
        Some(ns) => (
            Api::<GrapeBackup>::namespaced(client.clone(), ns),
            Api::<GrapeScheduledBackup>::namespaced(client.clone(), ns),
            Api::<GrapeBackup>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<GrapeBackup>::all(client.clone()),
            Api::<GrapeScheduledBackup>::all(client.clone()),
            Api::<GrapeBackup>::all(client.clone()),
        ),
    };
    let one = Controller::new(backups, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile_backup, error_policy, Arc::clone(&context))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "backup reconcile");
            }
        });
    let scheduled = Controller::new(schedules, watcher::Config::default())
        .owns(
            owned,
            watcher::Config::default().labels(decide::SCHEDULE_LABEL),
        )
        .shutdown_on_signal()
        .run(reconcile_schedule, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "schedule reconcile");
            }
        });
    futures::join!(one, scheduled);
}

fn error_policy<K: kube::Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(object = %object.meta().name.clone().unwrap_or_default(), %error, "backup reconcile failed");
    Action::requeue(Duration::from_secs(30))
}

/// What the backup controller sees of a cluster: whether it can take a backup, and how to
/// reach it.
async fn view(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<(ClusterView, Option<crate::controller::Access>), Error> {
    let clusters: Api<GrapeCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(cluster) = clusters.get_opt(name).await? else {
        return Ok((ClusterView::Missing, None));
    };
    let access = access(ctx, &cluster).await?;
    // A backup's cut needs every member to pause writes: none is started mid-roll.
    let view = if (access.pods.len() as i32) < cluster.spec.replicas {
        ClusterView::NotReady(format!(
            "{} of {} pods are ready",
            access.pods.len(),
            cluster.spec.replicas
        ))
    } else {
        ClusterView::Ready {
            destinations: cluster.spec.backup.destinations.clone(),
        }
    };
    Ok((view, Some(access)))
}

/// One reconcile of one GrapeBackup.
pub async fn reconcile_backup(
    backup: Arc<GrapeBackup>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let status = backup.status.clone().unwrap_or_default();
    if matches!(
        status.phase.as_deref(),
        Some(decide::COMPLETED) | Some(decide::FAILED)
    ) {
        // Nothing is asked of the API server for a backup that ended.
        return Ok(Action::await_change());
    }
    let namespace = backup
        .namespace()
        .ok_or_else(|| Error::Invalid("GrapeBackup without a namespace".into()))?;
    let tag = decide::backup_tag(
        &namespace,
        &backup.name_any(),
        backup.metadata.uid.as_deref().unwrap_or_default(),
    );
    let (cluster, access) = view(&ctx, &namespace, &backup.spec.cluster).await?;
    let now = Timestamp::now();
    let (step, mut next) = decide::backup_step(&backup.spec, &tag, &status, &cluster, now);
    let mut events = Vec::new();
    let requeue = match step {
        BackupStep::Ended => None,
        BackupStep::Wait(after) => Some(after),
        BackupStep::Start(request) => {
            let outcome = match &access {
                Some(access) => {
                    access
                        .data_plane()
                        .start_backup_once(&request, &access.pods)
                        .await
                }
                None => Err(unreachable_cluster()),
            };
            let (after, event) = decide::backup_started(&next, outcome, now);
            next = after;
            events.push(event);
            Some(Duration::from_secs(2))
        }
        BackupStep::Follow(id) => {
            let outcome = match &access {
                Some(access) if !access.pods.is_empty() => {
                    access.data_plane().backup(&id, &access.pods).await
                }
                _ => Err(unreachable_cluster()),
            };
            let (after, event) = decide::backup_followed(&next, outcome, now);
            next = after;
            events.extend(event);
            Some(Duration::from_secs(5))
        }
    };
    if next != status {
        let api: Api<GrapeBackup> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &backup.name_any(),
            &PatchParams::default(),
            &Patch::Merge(status_patch(&status, &next)),
        )
        .await?;
    }
    publish_planned(&ctx, &backup.object_ref(&()), events).await;
    let ended = matches!(
        next.phase.as_deref(),
        Some(decide::COMPLETED) | Some(decide::FAILED)
    );
    Ok(match requeue {
        Some(after) if !ended => Action::requeue(after),
        _ => Action::await_change(),
    })
}

fn unreachable_cluster() -> CallError {
    CallError {
        status: None,
        code: None,
        message: "no pod of the cluster is ready".into(),
    }
}

fn child(backup: &GrapeBackup) -> Child {
    let status = backup.status.clone().unwrap_or_default();
    Child {
        destination: backup.spec.target.destination.clone(),
        name: backup.name_any(),
        phase: status.phase,
        created: backup
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or_else(Timestamp::now, |t| t.0),
        completed: status.completion_time.map(|t| t.0),
        backup_id: status.backup_id,
    }
}

/// The GrapeBackup a schedule makes for one run.
pub fn scheduled_backup(schedule: &GrapeScheduledBackup, name: &str) -> GrapeBackup {
    GrapeBackup {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: schedule.namespace(),
            labels: Some(BTreeMap::from([(
                decide::SCHEDULE_LABEL.to_string(),
                schedule.name_any(),
            )])),
            owner_references: schedule.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: GrapeBackupSpec {
            cluster: schedule.spec.cluster.clone(),
            target: schedule.spec.target.clone(),
        },
        status: None,
    }
}

/// One reconcile of one GrapeScheduledBackup.
pub async fn reconcile_schedule(
    schedule: Arc<GrapeScheduledBackup>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = schedule
        .namespace()
        .ok_or_else(|| Error::Invalid("GrapeScheduledBackup without a namespace".into()))?;
    let name = schedule.name_any();
    let backups: Api<GrapeBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    // Its own backups: labelled with its name and owned by it (a GrapeBackup someone made
    // with the label is not its to delete). A name too long for a label is reported by the
    // decisions, and nothing is listed.
    let children: Vec<Child> = if name.chars().count() <= 63 {
        let uid = schedule.metadata.uid.clone();
        backups
            .list(&ListParams::default().labels(&format!("{}={name}", decide::SCHEDULE_LABEL)))
            .await?
            .items
            .iter()
            .filter(|b| {
                b.owner_references()
                    .iter()
                    .any(|r| Some(&r.uid) == uid.as_ref())
            })
            .map(child)
            .collect()
    } else {
        Vec::new()
    };
    let status = schedule.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let created = schedule
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let plan = decide::schedule(&name, &schedule.spec, &status, created, &children, now);
    let mut events = plan.events.clone();
    if let Some(child) = &plan.create {
        match backups
            .create(&PostParams::default(), &scheduled_backup(&schedule, child))
            .await
        {
            Ok(_) => events.push(PlannedEvent {
                warning: false,
                reason: "BackupCreated".into(),
                note: format!("GrapeBackup {child} created"),
            }),
            // Made by an earlier try of this same run.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !plan.delete.is_empty() {
        // The nodes are asked only for backups they took (one that never started has no files).
        let reach = if plan.delete.iter().any(|c| c.backup_id.is_some()) {
            view(&ctx, &namespace, &schedule.spec.cluster).await?.1
        } else {
            None
        };
        for old in &plan.delete {
            let deleted = match (&old.backup_id, &reach) {
                (None, _) => Ok(()),
                (Some(id), Some(access)) => {
                    access
                        .data_plane()
                        .delete_backup(id, &old.destination, &access.pods)
                        .await
                }
                (Some(_), None) => Err(CallError {
                    status: None,
                    code: None,
                    message: format!("GrapeCluster {} does not exist", schedule.spec.cluster),
                }),
            };
            match deleted {
                Ok(()) => {
                    match backups.delete(&old.name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                    events.push(PlannedEvent {
                        warning: false,
                        reason: "BackupDeleted".into(),
                        note: format!(
                            "{} deleted (past retention){}",
                            old.name,
                            old.backup_id
                                .as_ref()
                                .map(|id| format!(", with backup {id}'s files"))
                                .unwrap_or_default()
                        ),
                    });
                }
                Err(error) => events.push(PlannedEvent {
                    warning: true,
                    reason: "RetentionFailed".into(),
                    note: format!(
                        "{} is past retention but its files could not be deleted (retried later): {}",
                        old.name, error.message
                    ),
                }),
            }
        }
    }
    if plan.status != status {
        let api: Api<GrapeScheduledBackup> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(status_patch(&status, &plan.status)),
        )
        .await?;
    }
    publish_planned(&ctx, &schedule.object_ref(&()), events).await;
    Ok(Action::requeue(plan.requeue))
}

/// The bootstrap restore's part of a GrapeCluster reconcile: reads the data plane's restores
/// while one is to do, starts it when [`decide::bootstrap`] says so, and answers the status to
/// report with the Events to publish.
pub async fn bootstrap_restore(
    spec: &crate::crd::GrapeClusterSpec,
    planned: &crate::crd::GrapeClusterStatus,
    previous: &crate::crd::GrapeClusterStatus,
    data_plane: &crate::dataplane::DataPlane<'_>,
    pods: &[String],
    now: Timestamp,
) -> (crate::crd::GrapeClusterStatus, Vec<PlannedEvent>) {
    let pending = planned
        .restore
        .as_ref()
        .is_none_or(|r| r.phase != decide::COMPLETED);
    let restores = if pending && !spec.paused && planned.phase.as_deref() == Some("Running") {
        data_plane.restores(pods).await.ok()
    } else {
        None
    };
    let (step, mut status, mut events) = decide::bootstrap(
        spec,
        planned,
        &previous.conditions,
        restores.as_deref(),
        now,
    );
    if let decide::RestoreStep::Start(request) = step {
        let outcome = data_plane.start_restore(&request, pods).await;
        let (next, event) = decide::restore_started(&status, outcome, now);
        status = next;
        events.push(event);
    }
    (status, events)
}
