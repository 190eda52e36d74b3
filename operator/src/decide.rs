//! The operator's decisions as one pure function: from the spec, what Kubernetes shows
//! (StatefulSet, pods) and what the data plane reports (members, leaders, running operations)
//! to the StatefulSet's size, at most one data-plane action, and the status to report.
//!
//! ```text
//!   paused ─────────────────────────────> nothing changes; status says Paused
//!   scale in  (spec < pods)  ─> remove-node highest ordinal ─> drained? ─> lower StatefulSet
//!   scale out (spec > pods)  ─> raise StatefulSet ─> pod started ─> add-node ─> rebalance
//!   switchover annotation    ─> transfer meta leadership to the named pod
//!   pods on an old revision  ─> not-ready ones first, then highest ordinal: move its
//!                               leaderships away (once) ─> delete it ─> (recreated) wait
//!                               until it is ready ─> next; a new pod that never turns ready
//!                               halts the rollout there
//!   rebalance annotation / unbalanced for a while ─> rebalance
//!   storage.size grown       ─> patch each claim (where its StorageClass allows it)
//!   a member's volume lost   ─> remove-node (force) ─> add-node as new ─> rebalance
//!   a member down past spec.failover.timeoutSeconds ─> spare pod (ordinal = replicas) ─>
//!                               add-node spare ─> remove-node (force) the member: its
//!                               replicas move to the spare ─> member's pod back ─> add-node
//!                               ─> spare drained and removed (scale in)
//! ```
//!
//! Only one data-plane action is taken per reconcile, and none while the data plane is running
//! an operation (drain, rebalance, repair). With a member down, scale-in and switchover go
//! ahead while every quorum holds; a rebalance waits. A failed action is retried after an
//! exponential backoff; work that makes no progress for `progressDeadlineSeconds` is reported
//! Degraded.

use crate::crd::{
    FailedAction, Failover, GrapeClusterSpec, GrapeClusterStatus, MemberStatus, PodStep,
};
use crate::resources::{self, Names, REBALANCE_ANNOTATION, SWITCHOVER_ANNOTATION};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long after an automatic rebalance the operator waits before starting another one when
/// the cluster is still unbalanced (leaders move on failover; this keeps it from chasing them).
pub const AUTO_REBALANCE_INTERVAL: Duration = Duration::from_secs(30);

/// The StatefulSet as observed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedStatefulSet {
    pub replicas: i32,
    /// The bootstrap peer count it was created with.
    pub bootstrap_replicas: Option<i32>,
}

/// A pod as observed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedPod {
    pub name: String,
    /// Its container started (the startup probe on `/health` passed).
    pub started: bool,
    /// Its `Ready` condition (the readiness probe on `/ready`).
    pub ready: bool,
    /// Its `grape.io/template-hash` annotation: the pod template it was created from.
    pub template_hash: Option<String>,
    /// It has a deletion timestamp.
    pub terminating: bool,
}

/// A pod's data volume (PersistentVolumeClaim) as observed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedVolume {
    /// The claim's name (`data-<cluster>-<ordinal>`).
    pub claim: String,
    /// The pod it belongs to.
    pub pod: String,
    /// `spec.resources.requests.storage`.
    pub requested: Option<String>,
    /// `status.capacity.storage`: what the volume has now.
    pub capacity: Option<String>,
    /// Its StorageClass's `allowVolumeExpansion` (None: unknown).
    pub expandable: Option<bool>,
    /// Since when the claim's `FileSystemResizePending` condition holds: the volume grew, and
    /// its file system grows when the pod starts again (drivers without online expansion;
    /// with online expansion it holds only until the kubelet's next look).
    pub resize_pending_since: Option<Timestamp>,
}

/// How long a `FileSystemResizePending` condition must hold before the pod is restarted for
/// it: with online expansion the kubelet clears it without a restart, within its sync period.
pub const RESIZE_GRACE: Duration = Duration::from_secs(120);

/// A data-plane member as reported by `/admin/cluster/status`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedMember {
    pub reachable: bool,
    pub ready: bool,
    pub replicas: i32,
    /// Shard groups it leads (the meta group not counted).
    pub leaderships: i32,
    /// Any group it leads, the meta group included.
    pub leads_any: bool,
}

/// The data plane as seen through one of its nodes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedDataPlane {
    /// The meta group's leader.
    pub leader: Option<String>,
    /// Members by node id (= pod name).
    pub members: BTreeMap<String, ObservedMember>,
    /// The kind of operation (drain, rebalance, repair) the data plane is running, if any.
    pub running_operation: Option<String>,
    /// How far the running operation got, in words (it changes as moves advance).
    pub operation_progress: Option<String>,
    /// Members that answer with a new data directory (their volume was lost): they take no
    /// part until removed and added again as new nodes.
    pub data_lost: Vec<String>,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub generation: Option<i64>,
    pub annotations: BTreeMap<String, String>,
    /// The status reported last time.
    pub status: GrapeClusterStatus,
    pub statefulset: Option<ObservedStatefulSet>,
    pub pods: Vec<ObservedPod>,
    /// The pods' data volumes.
    pub volumes: Vec<ObservedVolume>,
    /// Digest of the Secrets the nodes read at start-up (see [`resources::revision`]).
    pub secrets_digest: Option<String>,
    /// `None` when no node answered.
    pub data_plane: Option<ObservedDataPlane>,
}

/// A data-plane action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `POST /admin/cluster/add-node` for this pod.
    AddNode { node: String },
    /// `POST /admin/cluster/remove-node`: drains the node, then removes it.
    RemoveNode { node: String },
    /// `POST /admin/cluster/rebalance`.
    Rebalance { strategy: String },
    /// `POST /admin/cluster/transfer-leadership` with `from_node` alone: every group `from`
    /// leads goes to another of its voters.
    MoveLeadershipsOff { from: String },
    /// `POST /admin/cluster/transfer-leadership` of the meta group to `to`.
    Switchover { to: String },
    /// Delete a pod so that the StatefulSet controller recreates it on the new revision.
    DeletePod { pod: String },
    /// `POST /admin/cluster/remove-node` with `force` for a member whose volume was lost, so
    /// that it joins again as a new node (add-node, then a rebalance gives it replicas).
    ReplaceMember { node: String },
    /// `POST /admin/cluster/remove-node` with `force` for a member down past
    /// `spec.failover.timeoutSeconds`, once a spare pod is a member to take its replicas.
    FailOver { node: String },
}

impl Action {
    /// The Event reason for this action.
    pub fn reason(&self) -> &'static str {
        match self {
            Action::AddNode { .. } => "AddingNode",
            Action::RemoveNode { .. } => "DrainingNode",
            Action::Rebalance { .. } => "Rebalancing",
            Action::MoveLeadershipsOff { .. } => "MovingLeadership",
            Action::Switchover { .. } => "Switchover",
            Action::DeletePod { .. } => "RestartingPod",
            Action::ReplaceMember { .. } => "ReplacingMember",
            Action::FailOver { .. } => "FailingOver",
        }
    }

    /// A sentence for the Event.
    pub fn describe(&self) -> String {
        match self {
            Action::AddNode { node } => format!("adding {node} to the cluster"),
            Action::RemoveNode { node } => {
                format!("draining {node} and removing it from the cluster")
            }
            Action::Rebalance { strategy } => format!("rebalancing ({strategy})"),
            Action::MoveLeadershipsOff { from } => {
                format!("moving every leadership off {from} before it restarts")
            }
            Action::Switchover { to } => format!("switching the leader over to {to}"),
            Action::DeletePod { pod } => format!("restarting {pod} on the new revision"),
            Action::ReplaceMember { node } => format!(
                "{node} lost its data volume: removing it from the cluster so that it joins again as a new node"
            ),
            Action::FailOver { node } => format!(
                "{node} stayed down: removing it from the cluster, its replicas move to the spare pod"
            ),
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Apply the owned objects (false only while paused).
    pub apply: bool,
    /// The StatefulSet's replica count.
    pub statefulset_replicas: i32,
    /// The peer list the pods bootstrap from (fixed once the cluster exists).
    pub bootstrap_replicas: i32,
    pub action: Option<Action>,
    /// Claims to grow to `spec.storage.size` (their StorageClass allows it).
    pub expand_volumes: Vec<String>,
    pub status: GrapeClusterStatus,
    /// Events to publish besides the action's own (condition changes worth a notice).
    pub events: Vec<PlannedEvent>,
    /// When to look again.
    pub requeue: Duration,
}

/// An Event the plan asks the controller to publish on the GrapeCluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// `Warning` (true) or `Normal`.
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// How long after the `attempts`-th consecutive failure an action is tried again: 5 s,
/// doubling, at most 5 minutes.
pub fn backoff(attempts: i32) -> Duration {
    let exponent = attempts.clamp(1, 16) as u32 - 1;
    Duration::from_secs((5u64 << exponent).min(300))
}

/// The status to report after `action` failed with `message`: the failure counted (the next
/// attempt waits [`backoff`]), and what the plan recorded as done for it undone so that it is
/// tried again (a failed rebalance is not "the rebalance asked for").
pub fn record_failure(
    planned: &GrapeClusterStatus,
    before: &GrapeClusterStatus,
    action: &Action,
    message: &str,
    now: Timestamp,
) -> GrapeClusterStatus {
    let mut status = failure(
        planned,
        before,
        action.reason(),
        &action.describe(),
        message,
        now,
    );
    if let Action::Rebalance { .. } = action {
        status.last_rebalance = before.last_rebalance.clone();
        status.last_auto_rebalance_time = before.last_auto_rebalance_time.clone();
    }
    status.last_step = before.last_step.clone();
    status
}

/// The status to report after growing `claim` failed: counted and backed off like an action
/// (no claim is patched again before the wait is over).
pub fn record_volume_failure(
    planned: &GrapeClusterStatus,
    before: &GrapeClusterStatus,
    claim: &str,
    message: &str,
    now: Timestamp,
) -> GrapeClusterStatus {
    failure(
        planned,
        before,
        EXPANDING_VOLUME,
        &format!("growing {claim}"),
        message,
        now,
    )
}

/// The Event reason of growing a claim (and of its failures).
pub const EXPANDING_VOLUME: &str = "ExpandingVolume";

fn failure(
    planned: &GrapeClusterStatus,
    before: &GrapeClusterStatus,
    reason: &str,
    what: &str,
    message: &str,
    now: Timestamp,
) -> GrapeClusterStatus {
    let mut status = planned.clone();
    let attempts = match &before.failed_action {
        Some(f) if f.reason == reason => f.attempts.saturating_add(1),
        _ => 1,
    };
    status.failed_action = Some(FailedAction {
        reason: reason.into(),
        message: format!("{what}: {message}").chars().take(1000).collect(),
        attempts,
        last_failure_time: Time(now),
    });
    status
}

/// The status to report after `action` succeeded: a failure streak ends.
pub fn record_success(planned: &GrapeClusterStatus) -> GrapeClusterStatus {
    let mut status = planned.clone();
    status.failed_action = None;
    status
}

/// Progressing reasons, also used to pick the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Creating,
    ScalingOut,
    ScalingIn,
    RollingUpdate,
    Rebalancing,
    Switchover,
    ExpandingVolumes,
    ReplacingMember,
    FailingOver,
}

impl Work {
    fn reason(self) -> &'static str {
        match self {
            Work::Creating => "Creating",
            Work::ScalingOut => "ScalingOut",
            Work::ScalingIn => "ScalingIn",
            Work::RollingUpdate => "RollingUpdate",
            Work::Rebalancing => "Rebalancing",
            Work::Switchover => "Switchover",
            Work::ExpandingVolumes => "ExpandingVolumes",
            Work::ReplacingMember => "ReplacingMember",
            Work::FailingOver => "FailingOver",
        }
    }
    fn phase(self) -> &'static str {
        match self {
            Work::Creating => "Creating",
            Work::ScalingOut | Work::ScalingIn => "Scaling",
            Work::RollingUpdate => "Updating",
            Work::Rebalancing | Work::Switchover => "Rebalancing",
            Work::ExpandingVolumes => "Expanding",
            Work::ReplacingMember | Work::FailingOver => "Recovering",
        }
    }
}

/// Spread (max - min) of a per-member count.
fn spread(values: impl Iterator<Item = i32>) -> i32 {
    let values: Vec<i32> = values.collect();
    match (values.iter().max(), values.iter().min()) {
        (Some(max), Some(min)) => max - min,
        _ => 0,
    }
}

/// The decision. `now` stamps condition transitions.
pub fn decide(spec: &GrapeClusterSpec, names: &Names, observed: &Observed, now: Timestamp) -> Plan {
    let desired = spec.replicas.max(1);
    let current = observed.statefulset.as_ref().map(|s| s.replicas);
    let bootstrap = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.bootstrap_replicas)
        .unwrap_or(desired);
    let dp = observed.data_plane.as_ref();
    let before = &observed.status;
    let is_member = |pod: &str| dp.is_some_and(|d| d.members.contains_key(pod));
    let pod = |name: &str| observed.pods.iter().find(|p| p.name == name);
    let mut last_rebalance = before.last_rebalance.clone();
    let mut last_switchover = before.last_switchover.clone();
    let mut last_auto = before.last_auto_rebalance_time.clone();
    let revision = resources::revision(
        &resources::template_hash(spec, names, bootstrap),
        observed.secrets_digest.as_deref(),
    );
    let updated_replicas = observed
        .pods
        .iter()
        .filter(|p| p.ready && !p.terminating && p.template_hash.as_deref() == Some(&revision))
        .count() as i32;

    // Members that are down: unreachable, their pod not ready (or gone, or terminating), or
    // their volume lost.
    let down: Vec<String> = dp
        .map(|d| {
            d.members
                .iter()
                .filter(|(id, m)| {
                    !m.reachable
                        || !pod(id).is_some_and(|p| p.ready && !p.terminating)
                        || d.data_lost.contains(id)
                })
                .map(|(id, _)| id.clone())
                .collect()
        })
        .unwrap_or_default();
    // Whether the members that are up still hold every quorum: a majority of the meta group
    // (every member votes there) and of every shard group (no more down than
    // (replicationFactor - 1) / 2, whichever shards they held).
    let quorum_holds = dp.is_some_and(|d| {
        let members = d.members.len();
        let rf = spec.database.replication_factor.max(1) as usize;
        members - down.len() > members / 2 && down.len() <= (rf - 1) / 2
    });
    // Since when each member has been down (carried over from the last status).
    let down_since: BTreeMap<&str, Time> = down
        .iter()
        .map(|id| {
            let since = before
                .members
                .iter()
                .find(|m| m.name == *id)
                .and_then(|m| m.unavailable_since.clone())
                .unwrap_or(Time(now));
            (id.as_str(), since)
        })
        .collect();
    // Failover (the TiDB operator's pattern): a member down past spec.failover.timeoutSeconds
    // gets a spare pod (the next ordinal above spec.replicas), is removed once the spare is a
    // member (its replicas move to the spare), and rejoins as a new node when its pod is
    // back; then the spare is drained away as any pod above spec.replicas.
    let mut failover = before.failover.clone().filter(|f| {
        // Over once the member is a ready member again: back before its removal, or admitted
        // again after it. Not while an operation runs (the member's removal may be under way:
        // it is still listed until the drain ends), and not for a member the spec no longer
        // has (scaled away).
        let back = is_member(&f.member)
            && !down.contains(&f.member)
            && dp.is_some_and(|d| d.running_operation.is_none());
        let kept = names.ordinal(&f.member).is_some_and(|o| o < desired);
        !back && kept
    });
    let mut failover_event: Option<PlannedEvent> = None;
    if let Some(f) = &before.failover
        && failover.is_none()
    {
        failover_event = Some(PlannedEvent {
            warning: false,
            reason: "FailoverEnded".into(),
            note: format!(
                "{} is a ready member again; {} is drained away",
                f.member, f.spare
            ),
        });
    }
    let timeout = i64::from(spec.failover.timeout_seconds);
    let settling = before.last_step.as_ref().map(|s| s.pod.as_str());
    if failover.is_none()
        && timeout > 0
        && !spec.paused
        && current == Some(desired)
        && quorum_holds
        && let Some(dp) = dp.filter(|d| d.running_operation.is_none() && d.leader.is_some())
        && let Some((member, since)) = down_since.iter().find(|(id, since)| {
            // Unreachable: a node that answers but is not ready (loading its graphs after a
            // restart, however long) is not failed over.
            dp.members.get(**id).is_some_and(|m| !m.reachable)
                && !dp.data_lost.iter().any(|l| l == *id)
                && Some(**id) != settling
                && names.ordinal(id).is_some_and(|o| o < desired)
                && now.as_second() - since.0.as_second() >= timeout
        })
    {
        let spare = names.pod(desired);
        failover_event = Some(PlannedEvent {
            warning: true,
            reason: "FailoverStarted".into(),
            note: format!(
                "{member} has been down since {} (spec.failover.timeoutSeconds {timeout}): adding the spare pod {spare} to take its replicas",
                since.0
            ),
        });
        failover = Some(Failover {
            member: member.to_string(),
            spare,
            start_time: Time(now),
        });
    }
    // The StatefulSet's pods: the spec's, and a spare while a member is failed over.
    let target = desired + i32::from(failover.is_some());

    // The StatefulSet's size: up at once, down only once the pods above are no longer members.
    let statefulset_replicas = match current {
        None => desired,
        Some(current) if target >= current => target,
        Some(current) => {
            let drained =
                dp.is_some() && (target..current).all(|ordinal| !is_member(&names.pod(ordinal)));
            if drained { target } else { current }
        }
    };

    // Imbalance among the members the spec keeps.
    let balance = dp.map(|d| {
        let kept: Vec<&ObservedMember> = d
            .members
            .iter()
            .filter(|(id, _)| names.ordinal(id).is_some_and(|o| o < target))
            .map(|(_, m)| m)
            .collect();
        (
            spread(kept.iter().map(|m| m.replicas)),
            spread(kept.iter().map(|m| m.leaderships)),
        )
    });

    // After a failure, no action (and no claim patch, after a failed one) before this.
    let backing_off = before.failed_action.as_ref().and_then(|f| {
        let wait = backoff(f.attempts).as_secs() as i64;
        let at = f.last_failure_time.0.as_second() + wait;
        let left = at - now.as_second();
        (left > 0).then(|| (f, left, Timestamp::from_second(at).unwrap_or(now)))
    });

    // Volumes smaller than the spec asks: grown by patching their claims (the
    // StatefulSet's claim template cannot change), where the StorageClass allows it.
    let wanted = resources::quantity_bytes(&spec.storage.size);
    let small = |size: &Option<String>| {
        let size = size.as_deref().and_then(resources::quantity_bytes);
        matches!((size, wanted), (Some(have), Some(want)) if have < want)
    };
    let growing: Vec<&ObservedVolume> = observed
        .volumes
        .iter()
        .filter(|v| small(&v.capacity) || small(&v.requested))
        .collect();
    let cannot_grow: Vec<&str> = growing
        .iter()
        .filter(|v| v.expandable == Some(false))
        .map(|v| v.claim.as_str())
        .collect();
    let volumes_backing_off = backing_off.is_some_and(|(f, _, _)| f.reason == EXPANDING_VOLUME);
    let expand_volumes: Vec<String> = if spec.paused || volumes_backing_off {
        Vec::new()
    } else {
        growing
            .iter()
            .filter(|v| v.expandable != Some(false) && small(&v.requested))
            .map(|v| v.claim.clone())
            .collect()
    };

    // Pods whose volume grew but whose file system waits for a restart.
    let resize_pending: Vec<&str> = observed
        .volumes
        .iter()
        .filter(|v| {
            v.resize_pending_since.is_some_and(|since| {
                now.as_second() - since.as_second() >= RESIZE_GRACE.as_secs() as i64
            })
        })
        .map(|v| v.pod.as_str())
        .collect();

    // The step taken last time, while its outcome is awaited: a restarted pod until it is
    // ready on the current template, an added one until it is a ready member, a pod whose
    // leaderships were moved off until it is restarted.
    let last_step = before.last_step.clone().filter(|step| {
        let p = pod(&step.pod);
        let ready = p.is_some_and(|p| p.ready && !p.terminating);
        let current = p.is_some_and(|p| p.template_hash.as_deref() == Some(revision.as_str()));
        let resizing = resize_pending.contains(&step.pod.as_str());
        match step.kind.as_str() {
            "Restarted" => !(ready && current),
            // Until the kubelet has grown the file system: no second restart for it.
            "RestartedForResize" => !ready || resizing,
            "Added" => !(ready && is_member(&step.pod)),
            "MovedLeaderships" => p.is_some() && (!current || resizing),
            _ => false,
        }
    });

    let mut work: Option<Work> = None;
    let mut action: Option<Action> = None;
    // Why planned work takes no action now, for the Progressing message.
    let mut waiting: Option<String> = None;
    if spec.paused {
        // Nothing changes.
    } else if current.is_none() {
        work = Some(Work::Creating);
    } else if let Some(dp) = dp {
        let outdated: Vec<&ObservedPod> = {
            let mut pods: Vec<&ObservedPod> = observed
                .pods
                .iter()
                .filter(|p| p.template_hash.as_deref() != Some(revision.as_str()) && !p.terminating)
                .collect();
            // Then pods restarted only to grow their file system (once each).
            let resized_already = |name: &str| {
                last_step
                    .as_ref()
                    .is_some_and(|s| s.kind == "RestartedForResize" && s.pod == name)
            };
            let resizing: Vec<&ObservedPod> = observed
                .pods
                .iter()
                .filter(|p| {
                    resize_pending.contains(&p.name.as_str())
                        && !p.terminating
                        && !pods.iter().any(|o| o.name == p.name)
                        && !resized_already(&p.name)
                })
                .collect();
            // Pods that are not ready first (a crash-looping pod of a bad revision is replaced
            // before anything else), then the highest ordinal.
            pods.sort_by_key(|p| {
                (
                    p.ready,
                    std::cmp::Reverse(names.ordinal(&p.name).unwrap_or(0)),
                )
            });
            pods.extend(resizing);
            pods
        };
        let members_ready = down.is_empty();
        let victim = (target..current.unwrap_or(target))
            .rev()
            .map(|o| names.pod(o))
            .find(|p| is_member(p));
        let newcomer = (0..target)
            .map(|o| names.pod(o))
            .filter(|p| !is_member(p))
            .find(|p| pod(p).is_some_and(|p| p.started && !p.terminating));
        // The failed-over member rejoins when its pod is back; nothing waits for it.
        let failed_over = failover.as_ref().map(|f| f.member.as_str());
        let waiting_newcomers = (0..target)
            .map(|o| names.pod(o))
            .any(|p| !is_member(&p) && Some(p.as_str()) != failed_over);
        let switchover = observed
            .annotations
            .get(SWITCHOVER_ANNOTATION)
            .filter(|target| last_switchover.as_ref() != Some(*target));
        let rebalance_asked = observed
            .annotations
            .get(REBALANCE_ANNOTATION)
            .filter(|value| last_rebalance.as_ref() != Some(*value));
        let down_list = || format!("{} down", down.join(", "));

        if dp.leader.is_none() {
            work = Some(if before.leader.is_none() {
                Work::Creating
            } else {
                Work::Rebalancing
            });
        } else if let Some(kind) = &dp.running_operation {
            work = Some(match kind.as_str() {
                // The forced removal of a member whose volume was lost.
                "drain" if !dp.data_lost.is_empty() => Work::ReplacingMember,
                "drain" if failover.as_ref().is_some_and(|f| is_member(&f.member)) => {
                    Work::FailingOver
                }
                "drain" => Work::ScalingIn,
                _ => Work::Rebalancing,
            });
        } else if let Some(lost) = dp.data_lost.first() {
            // A member whose volume was lost takes no part (it refuses Raft traffic meant for
            // its old data): remove it, and it joins again as a new node below. The removal
            // is forced (the others may be too few to take its replicas), so the operator
            // checks the quorum itself: the lost member counts as down.
            work = Some(Work::ReplacingMember);
            if quorum_holds {
                action = Some(Action::ReplaceMember { node: lost.clone() });
            } else {
                waiting = Some(format!(
                    "{lost} lost its data volume; replacing it waits for a quorum: {}",
                    down_list()
                ));
            }
        } else if let Some(victim) = victim {
            work = Some(Work::ScalingIn);
            // With members down, a drain goes ahead as long as the rest hold every quorum
            // (the drained node itself may be one of them: its replicas are re-created from
            // the others); the data plane checks again and refuses what would lose one.
            let others_down = down.iter().filter(|d| **d != victim).count();
            if members_ready || (quorum_holds && others_down <= 1) {
                action = Some(Action::RemoveNode { node: victim });
            } else {
                waiting = Some(down_list());
            }
        } else if let Some(newcomer) = newcomer {
            work = Some(Work::ScalingOut);
            action = Some(Action::AddNode { node: newcomer });
        } else if waiting_newcomers || statefulset_replicas != target {
            work = Some(if current.unwrap_or(0) > target {
                Work::ScalingIn
            } else {
                Work::ScalingOut
            });
        } else if let Some(f) = failover.as_ref().filter(|f| is_member(&f.member)) {
            // The spare is a ready member: the failed member is removed, its replicas move
            // to the spare (forced: it does not answer; the operator checks the quorum).
            work = Some(Work::FailingOver);
            let spare_ready = dp.members.get(&f.spare).is_some_and(|m| m.ready)
                && pod(&f.spare).is_some_and(|p| p.ready);
            if spare_ready && quorum_holds {
                action = Some(Action::FailOver {
                    node: f.member.clone(),
                });
            } else if !spare_ready {
                waiting = Some(format!("waiting for the spare {} to be ready", f.spare));
            } else {
                waiting = Some(down_list());
            }
        } else if let Some(target) = switchover {
            work = Some(Work::Switchover);
            let target_ok = dp
                .members
                .get(target)
                .is_some_and(|m| m.ready && m.reachable);
            if target_ok && dp.leader.as_ref() != Some(target) {
                if members_ready || quorum_holds {
                    action = Some(Action::Switchover { to: target.clone() });
                } else {
                    waiting = Some(down_list());
                }
            }
            if target_ok && dp.leader.as_ref() == Some(target) || !dp.members.contains_key(target) {
                // Done, or impossible (no such member): either way it is acted on.
                last_switchover = Some(target.clone());
                work = None;
            }
        } else if let Some(next) = outdated.first() {
            let for_resize = next.template_hash.as_deref() == Some(revision.as_str());
            work = Some(if for_resize {
                Work::ExpandingVolumes
            } else {
                Work::RollingUpdate
            });
            // A pod that is not ready is replaced without waiting for it (waiting would wedge
            // the rollout: a bad image reverted), as long as that costs no vote: the others
            // are ready, or it does not answer as a member anyway. A ready one only while
            // every pod is ready: a pod of the new revision that does not turn ready halts
            // the rollout there.
            let all_ready = observed.pods.iter().all(|p| p.ready && !p.terminating)
                && observed.pods.len() as i32 == statefulset_replicas;
            let others_ready = observed.pods.len() as i32 == statefulset_replicas
                && observed
                    .pods
                    .iter()
                    .filter(|p| p.name != next.name)
                    .all(|p| p.ready && !p.terminating)
                && down.iter().all(|d| *d == next.name);
            let votes = dp.members.get(&next.name).is_some_and(|m| m.reachable);
            let terminating = observed.pods.iter().any(|p| p.terminating);
            if (!next.ready && !terminating && (others_ready || !votes)) || all_ready {
                let next = next.name.clone();
                // Leaderships go first (each group to another of its voters), unless no other
                // member could take them (a cluster of one), the pod is unreachable anyway, or
                // they were moved off already (what could not move, a group with no other
                // voter, the pod hands over as it stops).
                let leads = dp
                    .members
                    .get(&next)
                    .is_some_and(|m| m.leads_any && m.reachable);
                let moved_already = last_step
                    .as_ref()
                    .is_some_and(|s| s.kind == "MovedLeaderships" && s.pod == next);
                let others_ready = dp.members.iter().any(|(id, m)| *id != next && m.ready);
                action = Some(if leads && others_ready && !moved_already {
                    Action::MoveLeadershipsOff { from: next }
                } else {
                    Action::DeletePod { pod: next }
                });
            } else {
                let unready: Vec<&str> = observed
                    .pods
                    .iter()
                    .filter(|p| !p.ready || p.terminating)
                    .map(|p| p.name.as_str())
                    .collect();
                waiting = Some(format!(
                    "waiting for {} to be ready before restarting {}",
                    if unready.is_empty() {
                        "the missing pods".to_string()
                    } else {
                        unready.join(", ")
                    },
                    next.name
                ));
            }
        } else if let Some(value) = rebalance_asked {
            work = Some(Work::Rebalancing);
            // Replicas would be planned onto the members that are down too: wait for them.
            if members_ready {
                action = Some(Action::Rebalance {
                    strategy: "even_distribution".into(),
                });
                last_rebalance = Some(value.clone());
            } else {
                waiting = Some(down_list());
            }
        } else if let Some((replica_spread, leader_spread)) = balance
            && (replica_spread > 1 || leader_spread > 1)
            && members_ready
        {
            let due = last_auto.as_ref().is_none_or(|t| {
                now.as_second() - t.0.as_second() >= AUTO_REBALANCE_INTERVAL.as_secs() as i64
            });
            if due {
                work = Some(Work::Rebalancing);
                action = Some(Action::Rebalance {
                    strategy: if replica_spread > 1 {
                        "even_distribution".into()
                    } else {
                        "leaders_only".into()
                    },
                });
                last_auto = Some(Time(now));
            }
        }
    }
    if let (None, Some(step), false) = (work, &last_step, spec.paused) {
        // The last pod step still settling: the rollout or scale-out is not over yet.
        match step.kind.as_str() {
            "Restarted" => work = Some(Work::RollingUpdate),
            "RestartedForResize" => work = Some(Work::ExpandingVolumes),
            "Added" => work = Some(Work::ScalingOut),
            _ => {}
        }
        if work.is_some() {
            waiting = Some(format!("waiting for {} to be ready", step.pod));
        }
    }
    if work.is_none() && !spec.paused && growing.len() > cannot_grow.len() {
        work = Some(Work::ExpandingVolumes);
        waiting = Some(format!(
            "growing {} to {}",
            growing
                .iter()
                .filter(|v| v.expandable != Some(false))
                .map(|v| v.claim.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            spec.storage.size
        ));
    }
    // After a failure the same or any other action waits its backoff.
    if let (Some(planned), Some((failed, _, at))) = (&action, backing_off)
        && failed.reason != EXPANDING_VOLUME
    {
        waiting = Some(format!(
            "{} failed {} time(s) ({}); next attempt after {at}",
            failed.reason, failed.attempts, failed.message
        ));
        if matches!(planned, Action::Rebalance { .. }) {
            last_rebalance = before.last_rebalance.clone();
            last_auto = before.last_auto_rebalance_time.clone();
        }
        action = None;
    }
    let last_step = match &action {
        Some(Action::MoveLeadershipsOff { from }) => Some(step("MovedLeaderships", from)),
        Some(Action::DeletePod { pod })
            if resize_pending.contains(&pod.as_str())
                && observed
                    .pods
                    .iter()
                    .any(|p| p.name == *pod && p.template_hash.as_deref() == Some(&revision)) =>
        {
            Some(step("RestartedForResize", pod))
        }
        Some(Action::DeletePod { pod }) => Some(step("Restarted", pod)),
        Some(Action::AddNode { node }) => Some(step("Added", node)),
        _ => last_step,
    };

    // Progress: anything that moved since the last look restarts the deadline.
    let ready_replicas = observed.pods.iter().filter(|p| p.ready).count() as i32;
    let member_count = dp.map(|d| d.members.len());
    let operation = dp.and_then(|d| {
        d.running_operation
            .as_ref()
            .map(|kind| match &d.operation_progress {
                Some(progress) => format!("{kind}: {progress}"),
                None => kind.clone(),
            })
    });
    let moved = action.is_some()
        || !expand_volumes.is_empty()
        || ready_replicas != before.ready_replicas
        || updated_replicas != before.updated_replicas
        || member_count.is_some_and(|n| {
            n != before
                .members
                .iter()
                .filter(|m| m.raft_role != "joining")
                .count()
        })
        || operation != before.operation;
    let last_progress = match work {
        None => None,
        Some(_) if moved || before.last_progress_time.is_none() => Some(Time(now)),
        Some(_) => before.last_progress_time.clone(),
    };
    let stalled_for = last_progress
        .as_ref()
        .map(|t| now.as_second() - t.0.as_second())
        .unwrap_or(0);
    let deadline_exceeded =
        work.is_some() && stalled_for > i64::from(spec.progress_deadline_seconds);
    let failed_action = if work.is_none() && action.is_none() {
        None
    } else {
        before.failed_action.clone()
    };

    // Status.
    let members: Vec<MemberStatus> = {
        let mut ids: Vec<String> = observed.pods.iter().map(|p| p.name.clone()).collect();
        if let Some(dp) = dp {
            ids.extend(dp.members.keys().cloned());
        }
        ids.sort_by_key(|id| (names.ordinal(id).unwrap_or(i32::MAX), id.clone()));
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let member = dp.and_then(|d| d.members.get(&id));
                let raft_role = match member {
                    None => "joining",
                    Some(_) if dp.and_then(|d| d.leader.as_ref()) == Some(&id) => "leader",
                    Some(_) if names.ordinal(&id).is_some_and(|o| o >= target) => "draining",
                    Some(m) if !m.reachable => "unreachable",
                    Some(_) => "follower",
                };
                MemberStatus {
                    name: id.clone(),
                    node_id: id.clone(),
                    ready: pod(&id).is_some_and(|p| p.ready),
                    raft_role: raft_role.into(),
                    replicas: member.map(|m| m.replicas).unwrap_or(0),
                    leaderships: member.map(|m| m.leaderships).unwrap_or(0),
                    unavailable_since: down_since.get(id.as_str()).cloned(),
                }
            })
            .collect()
    };
    let leader = dp.and_then(|d| d.leader.clone());
    let ready = leader.is_some()
        && ready_replicas >= desired
        && (0..desired).all(|o| is_member(&names.pod(o)))
        && down.is_empty();

    let generation = observed.generation;
    let old = &before.conditions;
    let mut conditions = Vec::new();
    let mut condition = |type_: &str, status: bool, reason: &str, message: String| {
        conditions.push(make_condition(
            old, type_, status, reason, message, generation, now,
        ));
    };
    condition(
        "Ready",
        ready,
        if ready {
            "ClusterReady"
        } else if leader.is_none() {
            "NoLeader"
        } else {
            "MembersNotReady"
        },
        if ready {
            format!(
                "{desired} of {desired} members ready; {} leads",
                leader.clone().unwrap_or_default()
            )
        } else {
            format!("{ready_replicas} of {desired} pods ready")
        },
    );
    let doing = action
        .as_ref()
        .map(Action::describe)
        .or_else(|| waiting.clone())
        .or_else(|| operation.clone());
    match (spec.paused, work) {
        (true, _) => condition(
            "Progressing",
            false,
            "Paused",
            "spec.paused is set: the operator changes nothing".into(),
        ),
        (false, Some(w)) if deadline_exceeded => condition(
            "Progressing",
            false,
            "ProgressDeadlineExceeded",
            format!(
                "{}: no progress since {}{}",
                w.reason(),
                since(&last_progress),
                doing
                    .as_ref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        ),
        (false, Some(w)) => condition(
            "Progressing",
            true,
            w.reason(),
            doing.unwrap_or_else(|| format!("waiting: {}", w.reason())),
        ),
        (false, None) if !cannot_grow.is_empty() => condition(
            "Progressing",
            false,
            "VolumeExpansionUnsupported",
            format!(
                "storage.size {} cannot be met: the StorageClass of {} does not allow volume expansion",
                spec.storage.size,
                cannot_grow.join(", ")
            ),
        ),
        (false, None) => condition("Progressing", false, "Stable", "nothing to do".into()),
    }
    let planned = matches!(
        work,
        Some(Work::RollingUpdate | Work::ScalingIn | Work::ScalingOut | Work::Creating)
    );
    let degraded = if dp.is_none() && current.is_some() && before.leader.is_some() {
        Some((
            "DataPlaneUnreachable",
            "no node answered the admin API".to_string(),
        ))
    } else if deadline_exceeded {
        Some((
            "ProgressDeadlineExceeded",
            format!(
                "no progress since {} (spec.progressDeadlineSeconds {}){}",
                since(&last_progress),
                spec.progress_deadline_seconds,
                waiting
                    .as_ref()
                    .map(|w| format!(": {w}"))
                    .unwrap_or_default()
            ),
        ))
    } else if let Some(failed) = failed_action.as_ref().filter(|f| f.attempts >= 3) {
        Some((
            "ActionFailing",
            format!(
                "{} failed {} times in a row: {}",
                failed.reason, failed.attempts, failed.message
            ),
        ))
    } else if let Some(dp) = dp.filter(|d| !d.data_lost.is_empty()) {
        Some((
            "MemberDataLost",
            format!(
                "{} answer with a new data directory (volume lost): replaced as new nodes",
                dp.data_lost.join(", ")
            ),
        ))
    } else if let Some(f) = failover.as_ref() {
        Some((
            "MemberFailedOver",
            format!(
                "{} stayed down past spec.failover.timeoutSeconds and is failed over to {}; it rejoins as a new node when its pod is back",
                f.member, f.spare
            ),
        ))
    } else if !down.is_empty() && !planned {
        Some((
            "MemberUnavailable",
            format!("not ready or unreachable: {}", down.join(", ")),
        ))
    } else {
        None
    };
    match &degraded {
        Some((reason, message)) => condition("Degraded", true, reason, message.clone()),
        None => condition(
            "Degraded",
            false,
            "AllMembersHealthy",
            "every member answers".into(),
        ),
    }
    match balance {
        Some((r, l)) if r <= 1 && l <= 1 => condition(
            "Balanced",
            true,
            "EvenDistribution",
            "every node holds the same number of replicas (±1) and leads as many shards (±1)"
                .into(),
        ),
        Some((r, l)) => condition(
            "Balanced",
            false,
            "Unbalanced",
            format!("replicas per node differ by {r}, leaderships by {l}"),
        ),
        None => conditions.push(unknown_condition(old, "Balanced", generation, now)),
    }

    // A Degraded that starts, changes reason or ends is worth an Event (the action's own
    // Event is the controller's).
    let mut events = Vec::new();
    let was = self::condition(before, "Degraded").filter(|c| c.status == "True");
    match (&degraded, was) {
        (Some((reason, message)), was) if was.is_none_or(|c| c.reason != *reason) => {
            events.push(PlannedEvent {
                warning: true,
                reason: (*reason).into(),
                note: message.clone(),
            })
        }
        (None, Some(c)) => events.push(PlannedEvent {
            warning: false,
            reason: "Recovered".into(),
            note: format!("no longer degraded ({})", c.reason),
        }),
        _ => {}
    }

    events.extend(failover_event);
    if spec.security.allow_unauthenticated && generation != before.observed_generation {
        events.push(PlannedEvent {
            warning: true,
            reason: "InsecureAuthDisabled".into(),
            note: "security.allowUnauthenticated is set: anyone who reaches the API port may \
                   read, write and administer this cluster"
                .into(),
        });
    }
    if spec.security.tls_secret.is_none()
        && spec.security.certificates() == "none"
        && generation != before.observed_generation
    {
        events.push(PlannedEvent {
            warning: true,
            reason: "InsecureTransport".into(),
            note: "security.certificates is none: clients, probes and nodes talk plain HTTP; \
                   anyone on the network path can read and alter the traffic"
                .into(),
        });
    }
    // Said once per spec change (the condition says it for as long as it holds).
    if !cannot_grow.is_empty() && generation != before.observed_generation {
        events.push(PlannedEvent {
            warning: true,
            reason: "VolumeExpansionUnsupported".into(),
            note: format!(
                "cannot grow {} to {}: their StorageClass does not allow volume expansion",
                cannot_grow.join(", "),
                spec.storage.size
            ),
        });
    }

    let phase = if spec.paused {
        "Paused"
    } else if degraded.is_some() && (deadline_exceeded || work.is_none()) {
        "Degraded"
    } else if let Some(w) = work {
        w.phase()
    } else if ready {
        "Running"
    } else {
        "Pending"
    };
    let busy = work.is_some() || action.is_some();
    let requeue = match backing_off {
        Some((_, left, _)) if busy => Duration::from_secs(left.clamp(1, 300) as u64),
        _ if busy => Duration::from_secs(3),
        _ => Duration::from_secs(30),
    };
    Plan {
        apply: !spec.paused,
        statefulset_replicas: if spec.paused {
            current.unwrap_or(0)
        } else {
            statefulset_replicas
        },
        bootstrap_replicas: bootstrap,
        action,
        expand_volumes,
        status: GrapeClusterStatus {
            phase: Some(phase.into()),
            replicas: observed.pods.len() as i32,
            ready_replicas,
            updated_replicas,
            leader,
            members,
            conditions,
            observed_generation: generation,
            operation,
            last_progress_time: last_progress,
            failed_action,
            last_rebalance,
            last_switchover,
            last_auto_rebalance_time: last_auto,
            last_step,
            failover: failover.clone(),
            restore: observed.status.restore.clone(),
            selector: Some(crate::resources::selector_string(names)),
        },
        events,
        requeue,
    }
}

fn step(kind: &str, pod: &str) -> PodStep {
    PodStep {
        kind: kind.into(),
        pod: pod.into(),
    }
}

/// A status time as text, for messages that must not change from one look to the next.
fn since(time: &Option<Time>) -> String {
    time.as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| "the start".into())
}

pub(crate) fn make_condition(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn unknown_condition(
    old: &[Condition],
    type_: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == "Unknown")
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: "Unknown".into(),
        reason: "NoDataPlaneView".into(),
        message: "no node answered the admin API".into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// A condition of `status` by type.
pub fn condition<'a>(status: &'a GrapeClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}
