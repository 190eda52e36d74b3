//! The operator's decisions as one pure function: from the spec, what Kubernetes shows
//! (StatefulSet, pods) and what the data plane reports (members, leaders, running operations)
//! to the StatefulSet's size, at most one data-plane action, and the status to report.
//!
//! ```text
//!   paused ─────────────────────────────> nothing changes; status says Paused
//!   scale in  (spec < pods)  ─> remove-node highest ordinal ─> drained? ─> lower StatefulSet
//!   scale out (spec > pods)  ─> raise StatefulSet ─> pod started ─> add-node ─> rebalance
//!   switchover annotation    ─> transfer meta leadership to the named pod
//!   pods on an old revision  ─> highest ordinal first: move its leaderships away ─> delete it
//!                               ─> (recreated) wait until every pod is ready ─> next
//!   rebalance annotation / unbalanced for a while ─> rebalance
//! ```
//!
//! Only one data-plane action is taken per reconcile, and none while the data plane is running
//! an operation (drain, rebalance, repair) or any pod that is a member is not ready.

use crate::crd::{GrapeClusterSpec, GrapeClusterStatus, MemberStatus};
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
    pub status: GrapeClusterStatus,
    /// When to look again.
    pub requeue: Duration,
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
        }
    }
    fn phase(self) -> &'static str {
        match self {
            Work::Creating => "Creating",
            Work::ScalingOut | Work::ScalingIn => "Scaling",
            Work::RollingUpdate => "Updating",
            Work::Rebalancing | Work::Switchover => "Rebalancing",
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
    let is_member = |pod: &str| dp.is_some_and(|d| d.members.contains_key(pod));
    let pod = |name: &str| observed.pods.iter().find(|p| p.name == name);
    let mut last_rebalance = observed.status.last_rebalance.clone();
    let mut last_switchover = observed.status.last_switchover.clone();
    let mut last_auto = observed.status.last_auto_rebalance_time.clone();

    // The StatefulSet's size: up at once, down only once the pods above are no longer members.
    let statefulset_replicas = match current {
        None => desired,
        Some(current) if desired >= current => desired,
        Some(current) => {
            let drained =
                dp.is_some() && (desired..current).all(|ordinal| !is_member(&names.pod(ordinal)));
            if drained { desired } else { current }
        }
    };

    // Imbalance among the members the spec keeps.
    let balance = dp.map(|d| {
        let kept: Vec<&ObservedMember> = d
            .members
            .iter()
            .filter(|(id, _)| names.ordinal(id).is_some_and(|o| o < desired))
            .map(|(_, m)| m)
            .collect();
        (
            spread(kept.iter().map(|m| m.replicas)),
            spread(kept.iter().map(|m| m.leaderships)),
        )
    });

    let mut work: Option<Work> = None;
    let mut action: Option<Action> = None;
    if spec.paused {
        // Nothing changes.
    } else if current.is_none() {
        work = Some(Work::Creating);
    } else if let Some(dp) = dp {
        let outdated: Vec<&ObservedPod> = {
            let want = resources::template_hash(spec, names, bootstrap);
            let mut pods: Vec<&ObservedPod> = observed
                .pods
                .iter()
                .filter(|p| p.template_hash.as_deref() != Some(want.as_str()) && !p.terminating)
                .collect();
            pods.sort_by_key(|p| std::cmp::Reverse(names.ordinal(&p.name).unwrap_or(0)));
            pods
        };
        let members_ready = dp
            .members
            .keys()
            .all(|id| pod(id).is_some_and(|p| p.ready && !p.terminating));
        let victim = (desired..current.unwrap_or(desired))
            .rev()
            .map(|o| names.pod(o))
            .find(|p| is_member(p));
        let newcomer = (0..desired)
            .map(|o| names.pod(o))
            .filter(|p| !is_member(p))
            .find(|p| pod(p).is_some_and(|p| p.started && !p.terminating));
        let waiting_newcomers = (0..desired).any(|o| !is_member(&names.pod(o)));
        let switchover = observed
            .annotations
            .get(SWITCHOVER_ANNOTATION)
            .filter(|target| last_switchover.as_ref() != Some(*target));
        let rebalance_asked = observed
            .annotations
            .get(REBALANCE_ANNOTATION)
            .filter(|value| last_rebalance.as_ref() != Some(*value));

        if dp.leader.is_none() {
            work = Some(if observed.status.leader.is_none() {
                Work::Creating
            } else {
                Work::Rebalancing
            });
        } else if let Some(kind) = &dp.running_operation {
            work = Some(match kind.as_str() {
                "drain" => Work::ScalingIn,
                _ => Work::Rebalancing,
            });
        } else if let Some(victim) = victim {
            work = Some(Work::ScalingIn);
            if members_ready {
                action = Some(Action::RemoveNode { node: victim });
            }
        } else if let Some(newcomer) = newcomer {
            work = Some(Work::ScalingOut);
            action = Some(Action::AddNode { node: newcomer });
        } else if waiting_newcomers || statefulset_replicas != desired {
            work = Some(if current.unwrap_or(0) > desired {
                Work::ScalingIn
            } else {
                Work::ScalingOut
            });
        } else if let Some(target) = switchover {
            work = Some(Work::Switchover);
            let target_ok = dp.members.get(target).is_some_and(|m| m.ready);
            if target_ok && dp.leader.as_ref() != Some(target) && members_ready {
                action = Some(Action::Switchover { to: target.clone() });
            }
            if target_ok && dp.leader.as_ref() == Some(target) || !dp.members.contains_key(target) {
                // Done, or impossible (no such member): either way it is acted on.
                last_switchover = Some(target.clone());
                work = None;
            }
        } else if !outdated.is_empty() {
            work = Some(Work::RollingUpdate);
            let all_ready = observed.pods.iter().all(|p| p.ready && !p.terminating)
                && observed.pods.len() as i32 == statefulset_replicas;
            if all_ready {
                let next = outdated[0].name.clone();
                // Leaderships go first (each group to another of its voters), unless no other
                // member could take them (a cluster of one).
                let leads = dp.members.get(&next).is_some_and(|m| m.leads_any);
                let others_ready = dp.members.iter().any(|(id, m)| *id != next && m.ready);
                action = Some(if leads && others_ready {
                    Action::MoveLeadershipsOff { from: next }
                } else {
                    Action::DeletePod { pod: next }
                });
            }
        } else if let Some(value) = rebalance_asked {
            work = Some(Work::Rebalancing);
            if members_ready {
                action = Some(Action::Rebalance {
                    strategy: "even_distribution".into(),
                });
                last_rebalance = Some(value.clone());
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
                    Some(_) if names.ordinal(&id).is_some_and(|o| o >= desired) => "draining",
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
                }
            })
            .collect()
    };
    let ready_replicas = observed.pods.iter().filter(|p| p.ready).count() as i32;
    let leader = dp.and_then(|d| d.leader.clone());
    let unavailable: Vec<String> = dp
        .map(|d| {
            d.members
                .iter()
                .filter(|(id, m)| !m.reachable || !pod(id).is_some_and(|p| p.ready))
                .map(|(id, _)| id.clone())
                .collect()
        })
        .unwrap_or_default();
    let ready = leader.is_some()
        && ready_replicas >= desired
        && (0..desired).all(|o| is_member(&names.pod(o)))
        && unavailable.is_empty();

    let generation = observed.generation;
    let old = &observed.status.conditions;
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
    match (spec.paused, work) {
        (true, _) => condition(
            "Progressing",
            false,
            "Paused",
            "spec.paused is set: the operator changes nothing".into(),
        ),
        (false, Some(w)) => condition(
            "Progressing",
            true,
            w.reason(),
            action
                .as_ref()
                .map(Action::describe)
                .unwrap_or_else(|| format!("waiting: {}", w.reason())),
        ),
        (false, None) => condition("Progressing", false, "Stable", "nothing to do".into()),
    }
    let planned = matches!(
        work,
        Some(Work::RollingUpdate | Work::ScalingIn | Work::ScalingOut | Work::Creating)
    );
    let degraded = if dp.is_none() && current.is_some() && observed.status.leader.is_some() {
        Some((
            "DataPlaneUnreachable",
            "no node answered the admin API".to_string(),
        ))
    } else if !unavailable.is_empty() && !planned {
        Some((
            "MemberUnavailable",
            format!("not ready or unreachable: {}", unavailable.join(", ")),
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

    let phase = if spec.paused {
        "Paused"
    } else if let Some(w) = work {
        w.phase()
    } else if degraded.is_some() {
        "Degraded"
    } else if ready {
        "Running"
    } else {
        "Pending"
    };
    let busy = work.is_some() || action.is_some();
    Plan {
        apply: !spec.paused,
        statefulset_replicas: if spec.paused {
            current.unwrap_or(0)
        } else {
            statefulset_replicas
        },
        bootstrap_replicas: bootstrap,
        action,
        status: GrapeClusterStatus {
            phase: Some(phase.into()),
            replicas: observed.pods.len() as i32,
            ready_replicas,
            leader,
            members,
            conditions,
            observed_generation: generation,
            last_rebalance,
            last_switchover,
            last_auto_rebalance_time: last_auto,
            selector: Some(
                crate::resources::selector(names)
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        },
        requeue: if busy {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(30)
        },
    }
}

fn make_condition(
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
