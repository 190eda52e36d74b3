//! Every decision of the pure core: creation, scale out, scale in waiting for the drain,
//! rolling-update order with leadership moved first, switchover, rebalance, pause, conditions.

use grape_operator::crd::{GrapeClusterSpec, GrapeClusterStatus};
use grape_operator::decide::{
    Action, Observed, ObservedDataPlane, ObservedMember, ObservedPod, ObservedStatefulSet, Plan,
    backoff, condition, decide, record_failure, record_success,
};
use grape_operator::resources::{self, Names, REBALANCE_ANNOTATION, SWITCHOVER_ANNOTATION};
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;

fn names() -> Names {
    Names {
        cluster: "g".into(),
        namespace: "default".into(),
    }
}

fn spec(replicas: i32) -> GrapeClusterSpec {
    let mut spec: GrapeClusterSpec = serde_json::from_str("{}").unwrap();
    spec.replicas = replicas;
    spec
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

/// The template hash of the default spec (pods "on the current revision").
fn current() -> String {
    resources::template_hash(&spec(3), &names(), 3)
}

fn pod(ordinal: i32, ready: bool, template_hash: &str) -> ObservedPod {
    ObservedPod {
        name: format!("g-{ordinal}"),
        started: true,
        ready,
        template_hash: Some(template_hash.into()),
        terminating: false,
    }
}

/// `replicas` balanced members g-0.. with g-0 leading the meta group.
fn data_plane(members: &[(i32, i32, i32)]) -> ObservedDataPlane {
    ObservedDataPlane {
        leader: Some("g-0".into()),
        members: members
            .iter()
            .map(|&(o, replicas, leads)| {
                (
                    format!("g-{o}"),
                    ObservedMember {
                        reachable: true,
                        ready: true,
                        replicas,
                        leaderships: leads,
                        leads_any: leads > 0 || o == 0,
                    },
                )
            })
            .collect(),
        running_operation: None,
        operation_progress: None,
        data_lost: Vec::new(),
    }
}

/// A settled cluster of `n` pods, all members, all on revision `rev`.
fn settled(n: i32) -> Observed {
    let members: Vec<(i32, i32, i32)> = (0..n).map(|o| (o, 16 * 3 / n, 16 / n)).collect();
    Observed {
        generation: Some(1),
        annotations: BTreeMap::new(),
        status: GrapeClusterStatus {
            leader: Some("g-0".into()),
            ..GrapeClusterStatus::default()
        },
        statefulset: Some(ObservedStatefulSet {
            replicas: n,
            bootstrap_replicas: Some(3),
        }),
        pods: (0..n).map(|o| pod(o, true, &current())).collect(),
        volumes: Vec::new(),
        secrets_digest: None,
        data_plane: Some(data_plane(&members)),
    }
}

/// Pod `g-{ordinal}` not ready and its member unreachable.
fn take_down(observed: &mut Observed, ordinal: i32) {
    observed.pods[ordinal as usize].ready = false;
    observed
        .data_plane
        .as_mut()
        .unwrap()
        .members
        .get_mut(&format!("g-{ordinal}"))
        .unwrap()
        .reachable = false;
}

/// Pod `g-{ordinal}` ready, and a member holding nothing yet.
fn admit_empty(observed: &mut Observed, ordinal: i32) {
    observed.pods[ordinal as usize].ready = true;
    observed.data_plane.as_mut().unwrap().members.insert(
        format!("g-{ordinal}"),
        ObservedMember {
            reachable: true,
            ready: true,
            replicas: 0,
            leaderships: 0,
            leads_any: false,
        },
    );
}

fn cond(plan: &Plan, type_: &str) -> (String, String) {
    let c = condition(&plan.status, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone())
}

#[test]
fn creation_applies_the_statefulset_at_the_spec_size_and_reports_creating() {
    let observed = Observed {
        generation: Some(1),
        ..Observed::default()
    };
    let plan = decide(&spec(3), &names(), &observed, now());
    assert!(plan.apply);
    assert_eq!(plan.statefulset_replicas, 3);
    assert_eq!(plan.bootstrap_replicas, 3);
    assert_eq!(plan.action, None);
    assert_eq!(plan.status.phase.as_deref(), Some("Creating"));
    // The scale subresource's selector: the pods' labels, for an HPA.
    assert_eq!(
        plan.status.selector.as_deref(),
        Some("app.kubernetes.io/instance=g,app.kubernetes.io/name=grape")
    );
    assert_eq!(cond(&plan, "Ready"), ("False".into(), "NoLeader".into()));
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "Creating".into())
    );
    assert_eq!(plan.status.observed_generation, Some(1));
    assert_eq!(
        condition(&plan.status, "Balanced").unwrap().status,
        "Unknown"
    );
}

#[test]
fn a_settled_cluster_is_ready_stable_healthy_and_balanced() {
    let plan = decide(&spec(3), &names(), &settled(3), now());
    assert_eq!(plan.action, None);
    assert_eq!(plan.statefulset_replicas, 3);
    assert_eq!(plan.status.phase.as_deref(), Some("Running"));
    assert_eq!(plan.status.ready_replicas, 3);
    assert_eq!(plan.status.leader.as_deref(), Some("g-0"));
    assert_eq!(cond(&plan, "Ready"), ("True".into(), "ClusterReady".into()));
    assert_eq!(
        cond(&plan, "Progressing"),
        ("False".into(), "Stable".into())
    );
    assert_eq!(
        cond(&plan, "Degraded"),
        ("False".into(), "AllMembersHealthy".into())
    );
    assert_eq!(
        cond(&plan, "Balanced"),
        ("True".into(), "EvenDistribution".into())
    );
    let roles: Vec<&str> = plan
        .status
        .members
        .iter()
        .map(|m| m.raft_role.as_str())
        .collect();
    assert_eq!(roles, vec!["leader", "follower", "follower"]);
    assert_eq!(plan.status.members[1].replicas, 16);
    assert_eq!(plan.status.members[1].leaderships, 5);
    // Bootstrap peers stay what the StatefulSet was created with.
    assert_eq!(plan.bootstrap_replicas, 3);
}

#[test]
fn scale_out_raises_the_statefulset_then_adds_started_pods_then_rebalances() {
    // Spec 5, StatefulSet still 3: raise it; nothing to add yet.
    let observed = settled(3);
    let plan = decide(&spec(5), &names(), &observed, now());
    assert_eq!(plan.statefulset_replicas, 5);
    assert_eq!(plan.action, None);
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "ScalingOut".into())
    );
    assert_eq!(plan.status.phase.as_deref(), Some("Scaling"));

    // Pods g-3 and g-4 exist; g-3 started (not ready: it is not a member yet), g-4 not started.
    let mut observed = settled(3);
    observed.statefulset.as_mut().unwrap().replicas = 5;
    observed.pods.push(pod(3, false, &current()));
    let mut g4 = pod(4, false, &current());
    g4.started = false;
    observed.pods.push(g4);
    let plan = decide(&spec(5), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::AddNode { node: "g-3".into() }));
    assert_eq!(plan.statefulset_replicas, 5);
    // Pods being added are not a degradation.
    assert_eq!(cond(&plan, "Degraded").0, "False");
    assert_eq!(
        cond(&plan, "Ready"),
        ("False".into(), "MembersNotReady".into())
    );
    let g3 = plan
        .status
        .members
        .iter()
        .find(|m| m.name == "g-3")
        .unwrap();
    assert_eq!(g3.raft_role, "joining");

    // g-3 admitted; g-4 started now.
    observed.pods[4].started = true;
    observed.pods[3].ready = true;
    let mut dp = data_plane(&[(0, 16, 6), (1, 16, 5), (2, 16, 5), (3, 0, 0)]);
    dp.members.get_mut("g-3").unwrap().ready = true;
    observed.data_plane = Some(dp);
    let plan = decide(&spec(5), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::AddNode { node: "g-4".into() }));

    // All five members, unbalanced: rebalance evenly.
    observed.pods[4].ready = true;
    observed.data_plane = Some(data_plane(&[
        (0, 16, 6),
        (1, 16, 5),
        (2, 16, 5),
        (3, 0, 0),
        (4, 0, 0),
    ]));
    let plan = decide(&spec(5), &names(), &observed, now());
    assert_eq!(
        plan.action,
        Some(Action::Rebalance {
            strategy: "even_distribution".into()
        })
    );
    assert_eq!(
        cond(&plan, "Balanced"),
        ("False".into(), "Unbalanced".into())
    );
    assert_eq!(
        plan.status.last_auto_rebalance_time.as_ref().map(|t| t.0),
        Some(now())
    );

    // While the rebalance runs: wait.
    let mut running = observed.clone();
    running.status = plan.status.clone();
    running.data_plane.as_mut().unwrap().running_operation = Some("rebalance".into());
    let plan = decide(&spec(5), &names(), &running, now());
    assert_eq!(plan.action, None);
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "Rebalancing".into())
    );

    // Balanced afterwards: stable.
    running.data_plane = Some(data_plane(&[
        (0, 10, 4),
        (1, 10, 3),
        (2, 10, 3),
        (3, 9, 3),
        (4, 9, 3),
    ]));
    let plan = decide(&spec(5), &names(), &running, now());
    assert_eq!(plan.action, None);
    assert_eq!(cond(&plan, "Balanced").0, "True");
    assert_eq!(cond(&plan, "Ready").0, "True");
    assert_eq!(plan.status.phase.as_deref(), Some("Running"));
}

#[test]
fn an_automatic_rebalance_waits_its_interval_and_evens_leaders_only_when_replicas_are_even() {
    let mut observed = settled(3);
    observed.data_plane = Some(data_plane(&[(0, 16, 0), (1, 16, 13), (2, 16, 3)]));
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(
        plan.action,
        Some(Action::Rebalance {
            strategy: "leaders_only".into()
        })
    );
    // Twenty seconds later, still unbalanced: not again yet.
    observed.status = plan.status.clone();
    let later = Timestamp::from_second(now().as_second() + 20).unwrap();
    let plan = decide(&spec(3), &names(), &observed, later);
    assert_eq!(plan.action, None);
    assert_eq!(cond(&plan, "Balanced").0, "False");
    let much_later = Timestamp::from_second(now().as_second() + 40).unwrap();
    let plan = decide(&spec(3), &names(), &observed, much_later);
    assert!(matches!(plan.action, Some(Action::Rebalance { .. })));
}

#[test]
fn scale_in_drains_the_highest_ordinal_first_and_lowers_the_statefulset_only_after() {
    let observed = settled(5);
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.statefulset_replicas, 5, "pods stay until drained");
    assert_eq!(plan.action, Some(Action::RemoveNode { node: "g-4".into() }));
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "ScalingIn".into())
    );
    let g4 = plan
        .status
        .members
        .iter()
        .find(|m| m.name == "g-4")
        .unwrap();
    assert_eq!(g4.raft_role, "draining");

    // Drain running: wait, keep the pods.
    let mut draining = observed.clone();
    draining.data_plane.as_mut().unwrap().running_operation = Some("drain".into());
    let plan = decide(&spec(3), &names(), &draining, now());
    assert_eq!(plan.action, None);
    assert_eq!(plan.statefulset_replicas, 5);
    assert_eq!(cond(&plan, "Progressing").1, "ScalingIn");

    // g-4 gone from the cluster: next, g-3; still 5 pods.
    let mut observed = observed;
    observed.data_plane.as_mut().unwrap().members.remove("g-4");
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::RemoveNode { node: "g-3".into() }));
    assert_eq!(plan.statefulset_replicas, 5);

    // Both gone: lower the StatefulSet.
    observed.data_plane.as_mut().unwrap().members.remove("g-3");
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.statefulset_replicas, 3);
    assert_eq!(plan.action, None);

    // Without a view of the data plane, never lower it.
    observed.data_plane = None;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.statefulset_replicas, 5);
}

#[test]
fn scale_in_goes_ahead_with_one_member_down_while_every_quorum_holds() {
    // Five members, RF 3: one down leaves a majority of every group; g-4 is drained.
    let mut observed = settled(5);
    observed.pods[1].ready = false;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::RemoveNode { node: "g-4".into() }));
    assert_eq!(plan.statefulset_replicas, 5);
    // The member down is the one to drain: its replicas are re-created from the others.
    let mut observed = settled(5);
    take_down(&mut observed, 4);
    let plan = decide(&spec(4), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::RemoveNode { node: "g-4".into() }));

    // Two down: a shard of three replicas may have lost two; nothing moves, and the
    // Progressing message says why.
    let mut observed = settled(5);
    observed.pods[1].ready = false;
    observed.pods[2].ready = false;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert_eq!(plan.statefulset_replicas, 5);
    let progressing = condition(&plan.status, "Progressing").unwrap();
    assert_eq!(progressing.reason, "ScalingIn");
    assert!(
        progressing.message.contains("g-1, g-2 down"),
        "{}",
        progressing.message
    );
}

#[test]
fn switchover_goes_ahead_with_one_member_down_and_rebalance_waits_for_it() {
    let mut observed = settled(3);
    observed.pods[1].ready = false;
    observed
        .annotations
        .insert(SWITCHOVER_ANNOTATION.into(), "g-2".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::Switchover { to: "g-2".into() }));
    // Not to the member that is down.
    observed
        .annotations
        .insert(SWITCHOVER_ANNOTATION.into(), "g-1".into());
    let dp = observed.data_plane.as_mut().unwrap();
    dp.members.get_mut("g-1").unwrap().reachable = false;
    dp.members.get_mut("g-1").unwrap().ready = false;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);

    // A rebalance would place replicas on the member that is down: it waits, says so, and
    // is not recorded as done.
    observed.annotations.clear();
    observed
        .annotations
        .insert(REBALANCE_ANNOTATION.into(), "r1".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert_eq!(plan.status.last_rebalance, None);
    let progressing = condition(&plan.status, "Progressing").unwrap();
    assert_eq!(progressing.reason, "Rebalancing");
    assert!(
        progressing.message.contains("g-1 down"),
        "{}",
        progressing.message
    );

    // Three members, RF 3, two down: no quorum anywhere, no switchover.
    let mut observed = settled(3);
    observed.pods[0].ready = false;
    observed.pods[1].ready = false;
    observed
        .annotations
        .insert(SWITCHOVER_ANNOTATION.into(), "g-2".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
}

#[test]
fn rolling_update_goes_highest_ordinal_first_moving_leaderships_off_before_deleting() {
    let mut observed = settled(3);
    // A configuration change: every pod's template hash is now outdated.
    let mut spec3 = spec(3);
    spec3.raft.heartbeat_interval_ms = 150;
    let next = resources::template_hash(&spec3, &names(), 3);
    assert_ne!(next, current());
    let spec = |_: i32| spec3.clone();
    // g-2 leads 5 shards: move them off first.
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(
        plan.action,
        Some(Action::MoveLeadershipsOff { from: "g-2".into() })
    );
    assert_eq!(plan.status.phase.as_deref(), Some("Updating"));
    assert_eq!(cond(&plan, "Progressing").1, "RollingUpdate");

    // g-2 leads nothing now: delete it.
    let dp = observed.data_plane.as_mut().unwrap();
    dp.members.get_mut("g-2").unwrap().leaderships = 0;
    dp.members.get_mut("g-2").unwrap().leads_any = false;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::DeletePod { pod: "g-2".into() }));

    // g-2 recreated on rev2 but not ready yet: wait; not Degraded (planned).
    observed.pods[2] = pod(2, false, &next);
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert_eq!(cond(&plan, "Degraded").0, "False");
    assert_eq!(cond(&plan, "Progressing").1, "RollingUpdate");

    // Ready again: next is g-1.
    observed.pods[2].ready = true;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(
        plan.action,
        Some(Action::MoveLeadershipsOff { from: "g-1".into() })
    );

    // A terminating pod is never picked twice, and nothing moves while it terminates.
    observed.pods[1].terminating = true;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
}

#[test]
fn a_single_node_cluster_restarts_without_a_transfer() {
    let observed = settled(1);
    let mut s = spec(1);
    s.image = "grape-vector-db:next".into();
    let plan = decide(&s, &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::DeletePod { pod: "g-0".into() }));
}

#[test]
fn switchover_moves_the_meta_leadership_once_per_annotation_value() {
    let mut observed = settled(3);
    observed
        .annotations
        .insert(SWITCHOVER_ANNOTATION.into(), "g-2".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::Switchover { to: "g-2".into() }));
    assert_eq!(cond(&plan, "Progressing").1, "Switchover");
    assert_eq!(plan.status.last_switchover, None, "not done yet");

    // The leader is g-2 now: recorded as done, nothing more.
    observed.data_plane.as_mut().unwrap().leader = Some("g-2".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert_eq!(plan.status.last_switchover.as_deref(), Some("g-2"));
    assert_eq!(cond(&plan, "Progressing").0, "False");
    let leader = plan
        .status
        .members
        .iter()
        .find(|m| m.raft_role == "leader")
        .unwrap();
    assert_eq!(leader.name, "g-2");

    // Leadership drifts back later: the same annotation value is not acted on again.
    observed.status = plan.status.clone();
    observed.data_plane.as_mut().unwrap().leader = Some("g-0".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);

    // A pod that is not a member is recorded and ignored.
    observed
        .annotations
        .insert(SWITCHOVER_ANNOTATION.into(), "g-9".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert_eq!(plan.status.last_switchover.as_deref(), Some("g-9"));
}

#[test]
fn rebalance_annotation_starts_one_rebalance_per_value() {
    let mut observed = settled(3);
    observed
        .annotations
        .insert(REBALANCE_ANNOTATION.into(), "2026-11-27".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(
        plan.action,
        Some(Action::Rebalance {
            strategy: "even_distribution".into()
        })
    );
    assert_eq!(plan.status.last_rebalance.as_deref(), Some("2026-11-27"));
    observed.status = plan.status;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
}

#[test]
fn paused_freezes_everything_but_status() {
    let mut s = spec(5);
    s.paused = true;
    s.image = "grape-vector-db:next".into();
    let mut observed = settled(3);
    observed
        .annotations
        .insert(SWITCHOVER_ANNOTATION.into(), "g-2".into());
    let plan = decide(&s, &names(), &observed, now());
    assert!(!plan.apply);
    assert_eq!(plan.statefulset_replicas, 3);
    assert_eq!(plan.action, None);
    assert_eq!(plan.status.phase.as_deref(), Some("Paused"));
    assert_eq!(
        cond(&plan, "Progressing"),
        ("False".into(), "Paused".into())
    );
    // Scale in while paused: no drain either.
    let mut s = spec(3);
    s.paused = true;
    let plan = decide(&s, &names(), &settled(5), now());
    assert_eq!(plan.action, None);
    assert_eq!(plan.statefulset_replicas, 5);
}

#[test]
fn an_unready_member_is_degraded_and_transition_times_are_kept() {
    let observed = settled(3);
    let first = decide(&spec(3), &names(), &observed, now());
    let mut observed = observed;
    observed.status = first.status.clone();
    observed.pods[1].ready = false;
    let later = Timestamp::from_second(now().as_second() + 30).unwrap();
    let plan = decide(&spec(3), &names(), &observed, later);
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "MemberUnavailable".into())
    );
    assert_eq!(plan.status.phase.as_deref(), Some("Degraded"));
    assert_eq!(cond(&plan, "Ready").0, "False");
    let degraded = condition(&plan.status, "Degraded").unwrap();
    assert_eq!(degraded.last_transition_time.0, later);
    assert!(degraded.message.contains("g-1"));
    // Balanced did not change: its transition time is the first one.
    let balanced = condition(&plan.status, "Balanced").unwrap();
    assert_eq!(balanced.last_transition_time.0, now());

    // No node answers at all, after the cluster existed: Degraded, DataPlaneUnreachable.
    observed.data_plane = None;
    let plan = decide(&spec(3), &names(), &observed, later);
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "DataPlaneUnreachable".into())
    );
}

/// Seconds after [`now`].
fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() + seconds).unwrap()
}

#[test]
fn a_bad_image_halts_the_rollout_and_its_revert_replaces_the_crash_looping_pod_first() {
    let good = spec(3);
    let mut bad = spec(3);
    bad.image = "grape-vector-db:broken".into();
    bad.progress_deadline_seconds = 60;
    let bad_revision = resources::template_hash(&bad, &names(), 3);

    // The bad image reached g-2, which crash-loops (never started, not ready, no longer a
    // reachable member).
    let mut observed = settled(3);
    observed.pods[2] = pod(2, false, &bad_revision);
    observed.pods[2].started = false;
    let dp = observed.data_plane.as_mut().unwrap();
    dp.members.get_mut("g-2").unwrap().reachable = false;
    dp.members.get_mut("g-2").unwrap().ready = false;
    let plan = decide(&bad, &names(), &observed, now());
    // g-1 and g-0 are outdated and ready; g-2 is current and not ready: the rollout halts.
    assert_eq!(plan.action, None);
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "RollingUpdate".into())
    );
    assert!(
        condition(&plan.status, "Progressing")
            .unwrap()
            .message
            .contains("waiting for g-2 to be ready before restarting g-1"),
        "{:?}",
        condition(&plan.status, "Progressing")
    );
    assert_eq!(plan.status.updated_replicas, 0);
    assert_eq!(plan.status.last_progress_time.as_ref().unwrap().0, now());
    // Planned work: not Degraded yet.
    assert_eq!(cond(&plan, "Degraded").0, "False");

    // Nothing changes for longer than the progress deadline: Degraded with a reason, a
    // Warning Event, Progressing False as for a Deployment.
    observed.status = plan.status.clone();
    let stuck = decide(&bad, &names(), &observed, at(61));
    assert_eq!(stuck.action, None);
    assert_eq!(
        cond(&stuck, "Degraded"),
        ("True".into(), "ProgressDeadlineExceeded".into())
    );
    assert_eq!(
        cond(&stuck, "Progressing"),
        ("False".into(), "ProgressDeadlineExceeded".into())
    );
    assert_eq!(stuck.status.phase.as_deref(), Some("Degraded"));
    assert!(
        condition(&stuck.status, "Degraded")
            .unwrap()
            .message
            .contains("g-2"),
        "{:?}",
        condition(&stuck.status, "Degraded")
    );
    assert_eq!(stuck.events.len(), 1, "{:?}", stuck.events);
    assert!(stuck.events[0].warning);
    assert_eq!(stuck.events[0].reason, "ProgressDeadlineExceeded");
    // Said once, not at every reconcile.
    observed.status = stuck.status.clone();
    let again = decide(&bad, &names(), &observed, at(70));
    assert!(again.events.is_empty(), "{:?}", again.events);

    // A pod not ready for another reason (a readiness blip) is not deleted while another pod
    // is down too, if it still answers as a member: that would cost a second vote.
    let mut blip = observed.clone();
    blip.pods[0].ready = false;
    let plan = decide(&bad, &names(), &blip, at(75));
    assert_eq!(plan.action, None);

    // The image is reverted: g-2 is now the outdated one, and not ready: replaced at once,
    // although not every pod is ready (the old rule waited for that forever).
    observed.status = again.status.clone();
    let plan = decide(&good, &names(), &observed, at(80));
    assert_eq!(plan.action, Some(Action::DeletePod { pod: "g-2".into() }));
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "RollingUpdate".into())
    );
    // The rollout moves again: Degraded ends, with a Normal Event.
    assert_eq!(cond(&plan, "Degraded").0, "False");
    assert_eq!(plan.events.len(), 1, "{:?}", plan.events);
    assert!(!plan.events[0].warning);
    assert_eq!(plan.events[0].reason, "Recovered");

    // g-2 back on the good revision and ready: settled.
    let mut observed = Observed {
        status: plan.status.clone(),
        ..settled(3)
    };
    observed.status.failed_action = None;
    let plan = decide(&good, &names(), &observed, at(90));
    assert_eq!(plan.action, None);
    assert_eq!(cond(&plan, "Degraded").0, "False");
    assert_eq!(cond(&plan, "Progressing").0, "False");
    assert_eq!(plan.status.updated_replicas, 3);
    assert_eq!(plan.status.last_progress_time, None);
    assert_eq!(plan.status.phase.as_deref(), Some("Running"));
    assert!(plan.events.is_empty(), "{:?}", plan.events);
}

#[test]
fn a_failed_action_is_retried_with_backoff_and_reported() {
    let mut observed = settled(3);
    observed
        .annotations
        .insert(REBALANCE_ANNOTATION.into(), "r1".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    let action = plan.action.clone().unwrap();
    assert!(matches!(action, Action::Rebalance { .. }));
    assert_eq!(plan.status.last_rebalance.as_deref(), Some("r1"));

    // The data plane refused it: not recorded as done, counted, and retried after 5 s.
    let failed = record_failure(&plan.status, &observed.status, &action, "409 busy", now());
    assert_eq!(failed.last_rebalance, None);
    let record = failed.failed_action.clone().unwrap();
    assert_eq!(record.reason, "Rebalancing");
    assert_eq!(record.attempts, 1);
    assert!(record.message.contains("409 busy"), "{}", record.message);
    observed.status = failed;
    let plan = decide(&spec(3), &names(), &observed, at(2));
    assert_eq!(plan.action, None, "within the backoff");
    assert!(plan.requeue <= std::time::Duration::from_secs(3));
    // The message names when, not how long: it must not change from one look to the next
    // (each status write would wake the controller again).
    let progressing = condition(&plan.status, "Progressing").unwrap().clone();
    assert!(
        progressing
            .message
            .contains(&format!("next attempt after {}", at(5))),
        "{progressing:?}"
    );
    let later = decide(&spec(3), &names(), &observed, at(4));
    assert_eq!(
        condition(&later.status, "Progressing").unwrap().message,
        progressing.message
    );
    let plan = decide(&spec(3), &names(), &observed, at(5));
    assert_eq!(plan.action, Some(action.clone()), "after the backoff");

    // Failing again and again: the waits double, and from the third failure the cluster
    // is Degraded (ActionFailing) with a Warning Event.
    let mut status = plan.status.clone();
    let mut t = 5;
    for attempt in 2..=3 {
        status = record_failure(&status, &observed.status, &action, "409 busy", at(t));
        assert_eq!(status.failed_action.as_ref().unwrap().attempts, attempt);
        observed.status = status.clone();
        let wait = backoff(attempt).as_secs() as i64;
        assert_eq!(wait, 5 << (attempt - 1));
        let early = decide(&spec(3), &names(), &observed, at(t + wait - 1));
        assert_eq!(early.action, None);
        let due = decide(&spec(3), &names(), &observed, at(t + wait));
        assert_eq!(due.action, Some(action.clone()));
        status = due.status;
        t += wait;
    }
    let plan = decide(&spec(3), &names(), &observed, at(t));
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "ActionFailing".into())
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "ActionFailing")
    );
    assert_eq!(backoff(20), std::time::Duration::from_secs(300));

    // It succeeds: the streak ends and the annotation is recorded as acted on.
    let done = record_success(&plan.status);
    assert_eq!(done.failed_action, None);
    assert_eq!(done.last_rebalance.as_deref(), Some("r1"));
}

#[test]
fn a_long_drain_that_advances_is_progress_and_one_that_stalls_is_not() {
    let mut observed = settled(5);
    let dp = observed.data_plane.as_mut().unwrap();
    dp.running_operation = Some("drain".into());
    dp.operation_progress = Some("3 of 16 moves done".into());
    let plan = decide(&spec(4), &names(), &observed, now());
    assert_eq!(
        plan.status.operation.as_deref(),
        Some("drain: 3 of 16 moves done")
    );
    assert_eq!(cond(&plan, "Progressing").1, "ScalingIn");
    observed.status = plan.status.clone();
    // Half an hour later the moves advanced: still progressing.
    observed.data_plane.as_mut().unwrap().operation_progress = Some("9 of 16 moves done".into());
    let plan = decide(&spec(4), &names(), &observed, at(1800));
    assert_eq!(cond(&plan, "Degraded").0, "False");
    assert_eq!(plan.status.last_progress_time.as_ref().unwrap().0, at(1800));
    // Then nothing for 11 minutes: past the default 600 s deadline.
    observed.status = plan.status.clone();
    let plan = decide(&spec(4), &names(), &observed, at(1800 + 660));
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "ProgressDeadlineExceeded".into())
    );
}

#[test]
fn a_storage_change_grows_claims_where_the_class_allows_and_says_so_where_it_does_not() {
    use grape_operator::decide::ObservedVolume;
    let volume =
        |o: i32, requested: &str, capacity: &str, expandable: Option<bool>| ObservedVolume {
            claim: format!("data-g-{o}"),
            pod: format!("g-{o}"),
            requested: Some(requested.into()),
            capacity: Some(capacity.into()),
            expandable,
            resize_pending_since: None,
        };
    let mut grown = spec(3);
    grown.storage.size = "20Gi".into();
    let mut observed = settled(3);
    observed.volumes = (0..3)
        .map(|o| volume(o, "10Gi", "10Gi", Some(true)))
        .collect();
    let plan = decide(&grown, &names(), &observed, now());
    assert_eq!(
        plan.expand_volumes,
        vec!["data-g-0", "data-g-1", "data-g-2"]
    );
    assert_eq!(plan.action, None);
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "ExpandingVolumes".into())
    );
    // The template is not changed by a size change: no pod restarts for it.
    assert_eq!(resources::template_hash(&grown, &names(), 3), current());

    // Requested, the file systems still growing: nothing more to patch, still progressing.
    observed.volumes = (0..3)
        .map(|o| volume(o, "20Gi", "10Gi", Some(true)))
        .collect();
    let plan = decide(&grown, &names(), &observed, now());
    assert!(plan.expand_volumes.is_empty());
    assert_eq!(cond(&plan, "Progressing").1, "ExpandingVolumes");
    // Grown: stable.
    observed.volumes = (0..3)
        .map(|o| volume(o, "20Gi", "20Gi", Some(true)))
        .collect();
    let plan = decide(&grown, &names(), &observed, now());
    assert_eq!(
        cond(&plan, "Progressing"),
        ("False".into(), "Stable".into())
    );

    // A class without volume expansion: nothing patched, a clear condition and one Warning.
    observed.volumes = (0..3)
        .map(|o| volume(o, "10Gi", "10Gi", Some(false)))
        .collect();
    let plan = decide(&grown, &names(), &observed, now());
    assert!(plan.expand_volumes.is_empty());
    assert_eq!(
        cond(&plan, "Progressing"),
        ("False".into(), "VolumeExpansionUnsupported".into())
    );
    assert_eq!(plan.status.phase.as_deref(), Some("Running"));
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "VolumeExpansionUnsupported")
    );
    observed.status = plan.status.clone();
    let again = decide(&grown, &names(), &observed, now());
    assert!(again.events.is_empty(), "{:?}", again.events);
}

#[test]
fn the_last_restart_of_a_rollout_and_an_added_pod_are_awaited_not_degraded() {
    let mut next_spec = spec(3);
    next_spec.raft.heartbeat_interval_ms = 150;
    let next = resources::template_hash(&next_spec, &names(), 3);
    // g-1 and g-2 are done; g-0, the last, leads nothing and is deleted.
    let mut observed = settled(3);
    observed.pods[1] = pod(1, true, &next);
    observed.pods[2] = pod(2, true, &next);
    let dp = observed.data_plane.as_mut().unwrap();
    dp.members.get_mut("g-0").unwrap().leads_any = false;
    let plan = decide(&next_spec, &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::DeletePod { pod: "g-0".into() }));
    let step = plan.status.last_step.clone().unwrap();
    assert_eq!(
        (step.kind.as_str(), step.pod.as_str()),
        ("Restarted", "g-0")
    );
    // Recreated, not ready yet: no outdated pod is left, yet the rollout is not over: still
    // RollingUpdate, not Degraded, no Warning.
    observed.status = plan.status.clone();
    observed.pods[0] = pod(0, false, &next);
    let plan = decide(&next_spec, &names(), &observed, at(3));
    assert_eq!(plan.action, None);
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "RollingUpdate".into())
    );
    assert_eq!(cond(&plan, "Degraded").0, "False");
    assert!(plan.events.is_empty(), "{:?}", plan.events);
    assert!(
        condition(&plan.status, "Progressing")
            .unwrap()
            .message
            .contains("waiting for g-0 to be ready")
    );
    // Ready: done, the step forgotten.
    observed.status = plan.status.clone();
    observed.pods[0].ready = true;
    let plan = decide(&next_spec, &names(), &observed, at(6));
    assert_eq!(
        cond(&plan, "Progressing"),
        ("False".into(), "Stable".into())
    );
    assert_eq!(plan.status.last_step, None);

    // The same for a pod just added: ScalingOut until it is a ready member.
    let mut observed = settled(3);
    observed.pods.push(ObservedPod {
        started: true,
        ..pod(3, false, &current())
    });
    observed.statefulset.as_mut().unwrap().replicas = 4;
    let plan = decide(&spec(4), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::AddNode { node: "g-3".into() }));
    observed.status = plan.status.clone();
    observed
        .data_plane
        .as_mut()
        .unwrap()
        .members
        .insert("g-3".into(), ObservedMember::default());
    let plan = decide(&spec(4), &names(), &observed, at(3));
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "ScalingOut".into())
    );
    assert_eq!(cond(&plan, "Degraded").0, "False");
}

#[test]
fn leaderships_are_moved_off_once_and_the_pod_restarts_even_if_some_could_not_move() {
    let mut next_spec = spec(3);
    next_spec.raft.heartbeat_interval_ms = 150;
    let observed = settled(3);
    let plan = decide(&next_spec, &names(), &observed, now());
    assert_eq!(
        plan.action,
        Some(Action::MoveLeadershipsOff { from: "g-2".into() })
    );
    // g-2 still leads a group (one of a collection with a single replica: no other voter):
    // it is restarted anyway, and hands over what it can as it stops.
    let mut observed = observed;
    observed.status = plan.status.clone();
    let plan = decide(&next_spec, &names(), &observed, at(3));
    assert_eq!(plan.action, Some(Action::DeletePod { pod: "g-2".into() }));
}

#[test]
fn a_failing_automatic_rebalance_backs_off_and_ends_degraded() {
    let mut observed = settled(3);
    // Unbalanced leaderships.
    let dp = observed.data_plane.as_mut().unwrap();
    dp.members.get_mut("g-0").unwrap().leaderships = 10;
    dp.members.get_mut("g-1").unwrap().leaderships = 3;
    dp.members.get_mut("g-2").unwrap().leaderships = 3;
    let mut t = 0;
    let mut attempts = 0;
    while attempts < 3 {
        let plan = decide(&spec(3), &names(), &observed, at(t));
        if let Some(action) = &plan.action {
            attempts += 1;
            observed.status = record_failure(&plan.status, &observed.status, action, "500", at(t));
            assert_eq!(
                observed.status.failed_action.as_ref().unwrap().attempts,
                attempts
            );
        } else {
            assert!(plan.status.failed_action.is_some() || attempts == 0);
            observed.status = plan.status;
        }
        t += 1;
        // Retried when the backoff is over (5 s, then 10 s), not only every 30 s as a
        // successful automatic rebalance is.
        assert!(t <= 16, "the third attempt came after {t} s");
    }
    let plan = decide(&spec(3), &names(), &observed, at(t));
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "ActionFailing".into())
    );
}

#[test]
fn a_rotated_secret_rolls_the_pods_and_insecure_auth_is_announced() {
    // The pods run with the Secrets of digest "d1": their revision says so.
    let d1 = resources::revision(&current(), Some("d1"));
    let mut observed = settled(3);
    for (o, p) in observed.pods.iter_mut().enumerate() {
        *p = pod(o as i32, true, &d1);
    }
    observed.secrets_digest = Some("d1".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert_eq!(plan.status.updated_replicas, 3);
    // The Secret was edited: every pod is outdated, rolled one at a time as for a spec change.
    observed.secrets_digest = Some("d2".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(
        plan.action,
        Some(Action::MoveLeadershipsOff { from: "g-2".into() })
    );
    assert_eq!(cond(&plan, "Progressing").1, "RollingUpdate");
    assert_eq!(plan.status.updated_replicas, 0);

    // Authentication off is a Warning at each spec change, not at each look.
    let mut open = spec(3);
    open.security.allow_unauthenticated = true;
    let mut observed = settled(3);
    observed.pods = (0..3)
        .map(|o| pod(o, true, &resources::template_hash(&open, &names(), 3)))
        .collect();
    let plan = decide(&open, &names(), &observed, now());
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "InsecureAuthDisabled")
    );
    observed.status = plan.status.clone();
    let plan = decide(&open, &names(), &observed, now());
    assert!(plan.events.is_empty(), "{:?}", plan.events);

    // So is plain HTTP (`certificates: none`); the default issues certificates, silently.
    let mut plain = spec(3);
    plain.security.certificates = Some("none".into());
    let mut observed = settled(3);
    observed.pods = (0..3)
        .map(|o| pod(o, true, &resources::template_hash(&plain, &names(), 3)))
        .collect();
    let plan = decide(&plain, &names(), &observed, now());
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "InsecureTransport"),
        "{:?}",
        plan.events
    );
    observed.status = plan.status.clone();
    assert!(decide(&plain, &names(), &observed, now()).events.is_empty());
    let plan = decide(&spec(3), &names(), &settled(3), now());
    assert!(
        !plan.events.iter().any(|e| e.reason == "InsecureTransport"),
        "{:?}",
        plan.events
    );
}

/// g-1's volume was lost: its pod runs with an empty data directory, which the data plane
/// refuses as the member it was (listed under `data_lost`, not ready, leading nothing).
fn g1_lost_its_volume(observed: &mut Observed) {
    observed.pods[1].ready = false;
    let dp = observed.data_plane.as_mut().unwrap();
    dp.data_lost = vec!["g-1".into()];
    let member = dp.members.get_mut("g-1").unwrap();
    member.ready = false;
    member.leads_any = false;
    member.leaderships = 0;
}

#[test]
fn a_member_that_lost_its_volume_is_removed_then_added_again_as_a_new_node_and_rebalanced() {
    let mut observed = settled(3);
    g1_lost_its_volume(&mut observed);
    // Before a pending rollout too: the lost member is the first thing to fix.
    observed.pods[2].template_hash = Some("an-older-revision".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(
        plan.action,
        Some(Action::ReplaceMember { node: "g-1".into() })
    );
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "MemberDataLost".into())
    );
    assert!(
        condition(&plan.status, "Degraded")
            .unwrap()
            .message
            .contains("g-1")
    );
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "ReplacingMember".into())
    );
    assert_eq!(plan.status.phase.as_deref(), Some("Recovering"));
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "MemberDataLost"),
        "{:?}",
        plan.events
    );
    assert_eq!(
        Action::ReplaceMember { node: "g-1".into() }.reason(),
        "ReplacingMember"
    );

    // While the forced removal runs, nothing else happens.
    observed.status = plan.status.clone();
    observed.pods[2].template_hash = Some(current());
    observed.data_plane.as_mut().unwrap().running_operation = Some("drain".into());
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "ReplacingMember".into())
    );
    assert!(plan.events.is_empty(), "{:?}", plan.events);

    // Removed: the pod still runs, and is admitted again as a new node.
    observed.status = plan.status.clone();
    let dp = observed.data_plane.as_mut().unwrap();
    dp.running_operation = None;
    dp.data_lost.clear();
    dp.members.remove("g-1");
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, Some(Action::AddNode { node: "g-1".into() }));
    assert_eq!(cond(&plan, "Degraded").0, "False");
    assert!(
        plan.events
            .iter()
            .any(|e| !e.warning && e.reason == "Recovered"),
        "{:?}",
        plan.events
    );

    // A member again, ready and holding nothing: a rebalance gives it its share (and tops
    // up the shards the removal left short).
    observed.status = plan.status.clone();
    admit_empty(&mut observed, 1);
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(
        plan.action,
        Some(Action::Rebalance {
            strategy: "even_distribution".into()
        })
    );
}

#[test]
fn a_member_that_lost_its_volume_is_not_removed_while_another_member_is_down() {
    let mut observed = settled(3);
    g1_lost_its_volume(&mut observed);
    // g-2 is down too: with g-1 out, only g-0 is left of three voters.
    take_down(&mut observed, 2);
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    let progressing = condition(&plan.status, "Progressing").unwrap();
    assert_eq!(progressing.reason, "ReplacingMember");
    assert!(
        progressing.message.contains("g-2"),
        "{}",
        progressing.message
    );
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "MemberDataLost".into())
    );
}

/// g-1's host died: its pod does not run (evicted and recreated, Pending), the member does
/// not answer.
fn g1_down(observed: &mut Observed) {
    observed.pods[1].ready = false;
    observed.pods[1].started = false;
    let member = observed
        .data_plane
        .as_mut()
        .unwrap()
        .members
        .get_mut("g-1")
        .unwrap();
    member.reachable = false;
    member.ready = false;
    member.leads_any = false;
    member.leaderships = 0;
}

#[test]
fn a_member_down_past_the_failover_timeout_is_replaced_by_a_spare_that_leaves_when_it_is_back() {
    let mut observed = settled(3);
    g1_down(&mut observed);
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.statefulset_replicas, 3);
    assert_eq!(plan.status.failover, None);
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "MemberUnavailable".into())
    );
    let since = |plan: &Plan| {
        plan.status
            .members
            .iter()
            .find(|m| m.name == "g-1")
            .and_then(|m| m.unavailable_since.clone())
    };
    assert_eq!(since(&plan).map(|t| t.0), Some(now()));

    // Just under spec.failover.timeoutSeconds (300): nothing yet, and the time holds.
    observed.status = plan.status.clone();
    let plan = decide(&spec(3), &names(), &observed, at(299));
    assert_eq!(plan.statefulset_replicas, 3);
    assert_eq!(plan.status.failover, None);
    assert_eq!(since(&plan).map(|t| t.0), Some(now()));

    // At the timeout: a spare pod, g-3.
    observed.status = plan.status.clone();
    let plan = decide(&spec(3), &names(), &observed, at(300));
    assert_eq!(plan.statefulset_replicas, 4);
    let failover = plan.status.failover.clone().expect("a failover");
    assert_eq!(
        (failover.member.as_str(), failover.spare.as_str()),
        ("g-1", "g-3")
    );
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "MemberFailedOver".into())
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "FailoverStarted"),
        "{:?}",
        plan.events
    );
    assert_eq!(plan.action, None);

    // The spare started: admitted.
    observed.status = plan.status.clone();
    observed.statefulset.as_mut().unwrap().replicas = 4;
    observed.pods.push(pod(3, false, &current()));
    let plan = decide(&spec(3), &names(), &observed, at(310));
    assert_eq!(plan.statefulset_replicas, 4);
    assert_eq!(plan.action, Some(Action::AddNode { node: "g-3".into() }));
    assert!(plan.events.is_empty(), "said once: {:?}", plan.events);

    // The spare is a ready member: g-1 is removed, its replicas move to the spare.
    observed.status = plan.status.clone();
    admit_empty(&mut observed, 3);
    let plan = decide(&spec(3), &names(), &observed, at(330));
    assert_eq!(plan.action, Some(Action::FailOver { node: "g-1".into() }));
    assert_eq!(
        Action::FailOver { node: "g-1".into() }.reason(),
        "FailingOver"
    );
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "FailingOver".into())
    );
    assert_eq!(plan.status.phase.as_deref(), Some("Recovering"));

    // g-1 is out, its pod still down: the spare stays, nothing else to do.
    observed.status = plan.status.clone();
    {
        let dp = observed.data_plane.as_mut().unwrap();
        dp.members.remove("g-1");
        let spare = dp.members.get_mut("g-3").unwrap();
        spare.replicas = 16;
        spare.leaderships = 5;
    }
    let plan = decide(&spec(3), &names(), &observed, at(400));
    assert_eq!(plan.action, None);
    assert_eq!(plan.statefulset_replicas, 4);
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "MemberFailedOver".into())
    );
    assert_eq!(cond(&plan, "Ready").0, "False");

    // g-1's pod is back (its container started): it joins as a new node.
    observed.status = plan.status.clone();
    observed.pods[1].started = true;
    let plan = decide(&spec(3), &names(), &observed, at(900));
    assert_eq!(plan.action, Some(Action::AddNode { node: "g-1".into() }));

    // A ready member again: the failover ends and the spare is drained away.
    observed.status = plan.status.clone();
    admit_empty(&mut observed, 1);
    let plan = decide(&spec(3), &names(), &observed, at(930));
    assert_eq!(plan.status.failover, None);
    assert_eq!(plan.action, Some(Action::RemoveNode { node: "g-3".into() }));
    assert_eq!(plan.statefulset_replicas, 4, "lowered once g-3 is drained");
    assert!(
        plan.events
            .iter()
            .any(|e| !e.warning && e.reason == "FailoverEnded"),
        "{:?}",
        plan.events
    );
}

#[test]
fn no_failover_when_it_is_off_or_the_others_hold_no_quorum() {
    // Off: spec.failover.timeoutSeconds 0.
    let mut off = spec(3);
    off.failover.timeout_seconds = 0;
    let mut observed = settled(3);
    g1_down(&mut observed);
    let plan = decide(&off, &names(), &observed, now());
    observed.status = plan.status.clone();
    let plan = decide(&off, &names(), &observed, at(86_400));
    assert_eq!(plan.status.failover, None);
    assert_eq!(plan.statefulset_replicas, 3);

    // Two of three down: removing one would need a quorum the last one does not make.
    let mut observed = settled(3);
    g1_down(&mut observed);
    take_down(&mut observed, 2);
    let plan = decide(&spec(3), &names(), &observed, now());
    observed.status = plan.status.clone();
    let plan = decide(&spec(3), &names(), &observed, at(3_600));
    assert_eq!(plan.status.failover, None);
    assert_eq!(plan.statefulset_replicas, 3);
    assert_eq!(plan.action, None);

    // A member that answers but is not ready (loading its graphs after a crash) is not
    // failed over, however long it takes.
    let mut observed = settled(3);
    observed.pods[1].ready = false;
    observed
        .data_plane
        .as_mut()
        .unwrap()
        .members
        .get_mut("g-1")
        .unwrap()
        .ready = false;
    let plan = decide(&spec(3), &names(), &observed, now());
    observed.status = plan.status.clone();
    let plan = decide(&spec(3), &names(), &observed, at(3_600));
    assert_eq!(plan.status.failover, None);
    assert_eq!(plan.statefulset_replicas, 3);

    // The pod being restarted (the last step awaited) is not failed over for a slow start.
    let mut observed = settled(3);
    g1_down(&mut observed);
    let plan = decide(&spec(3), &names(), &observed, now());
    observed.status = plan.status.clone();
    observed.status.last_step = Some(grape_operator::crd::PodStep {
        kind: "Restarted".into(),
        pod: "g-1".into(),
    });
    let plan = decide(&spec(3), &names(), &observed, at(600));
    assert_eq!(plan.status.failover, None);
}

#[test]
fn a_file_system_resize_pending_restarts_the_pod_once_leaderships_first() {
    use grape_operator::decide::ObservedVolume;
    let mut grown = spec(3);
    grown.storage.size = "20Gi".into();
    let mut observed = settled(3);
    // The claims grew; g-1's driver grows the file system only when the pod starts again.
    observed.volumes = (0..3)
        .map(|o| ObservedVolume {
            claim: format!("data-g-{o}"),
            pod: format!("g-{o}"),
            requested: Some("20Gi".into()),
            capacity: Some(if o == 1 { "10Gi" } else { "20Gi" }.into()),
            expandable: Some(true),
            resize_pending_since: (o == 1).then(now),
        })
        .collect();
    // With online expansion the kubelet clears the condition by itself: a grace first.
    let plan = decide(&grown, &names(), &observed, now());
    assert_eq!(plan.action, None);
    let plan = decide(&grown, &names(), &observed, at(121));
    assert_eq!(
        plan.action,
        Some(Action::MoveLeadershipsOff { from: "g-1".into() })
    );
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "ExpandingVolumes".into())
    );

    observed.status = plan.status.clone();
    let plan = decide(&grown, &names(), &observed, at(130));
    assert_eq!(plan.action, Some(Action::DeletePod { pod: "g-1".into() }));
    assert_eq!(
        plan.status.last_step.as_ref().map(|s| s.kind.as_str()),
        Some("RestartedForResize")
    );

    // Restarted and ready, the kubelet not done yet: no second restart.
    observed.status = plan.status.clone();
    let plan = decide(&grown, &names(), &observed, at(130));
    assert_eq!(plan.action, None);
    assert_eq!(
        cond(&plan, "Progressing"),
        ("True".into(), "ExpandingVolumes".into())
    );

    // Grown: nothing left to do.
    observed.status = plan.status.clone();
    observed.volumes[1].resize_pending_since = None;
    observed.volumes[1].capacity = Some("20Gi".into());
    let plan = decide(&grown, &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert_eq!(cond(&plan, "Progressing").0, "False");
    assert_eq!(plan.status.last_step, None);
}

#[test]
fn an_evicted_pod_is_waited_for_and_reported_without_any_action() {
    // A node drain evicts g-1 (the PDB allowed it): its pod terminates (it hands its
    // leaderships over as it stops), and the StatefulSet recreates it.
    let mut observed = settled(3);
    observed.pods[1].terminating = true;
    observed.pods[1].ready = false;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(
        plan.action, None,
        "the operator does not fight the eviction"
    );
    assert_eq!(plan.statefulset_replicas, 3);
    assert_eq!(
        cond(&plan, "Degraded"),
        ("True".into(), "MemberUnavailable".into())
    );
    assert!(
        condition(&plan.status, "Degraded")
            .unwrap()
            .message
            .contains("g-1")
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "MemberUnavailable"),
        "{:?}",
        plan.events
    );
    // Recreated elsewhere, starting: still waited for, nothing else moves.
    observed.status = plan.status.clone();
    observed.pods[1].terminating = false;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert!(plan.events.is_empty(), "said once: {:?}", plan.events);
    // Ready again: healthy, and said so.
    observed.status = plan.status.clone();
    observed.pods[1].ready = true;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(cond(&plan, "Degraded").0, "False");
    assert!(
        plan.events
            .iter()
            .any(|e| !e.warning && e.reason == "Recovered"),
        "{:?}",
        plan.events
    );
}

#[test]
fn a_member_back_during_its_failover_drain_is_admitted_again_before_the_spare_leaves() {
    // g-1 failed over to g-3; its removal (a drain) runs when its host returns.
    let mut observed = settled(3);
    g1_down(&mut observed);
    let plan = decide(&spec(3), &names(), &observed, now());
    observed.status = plan.status.clone();
    let plan = decide(&spec(3), &names(), &observed, at(300));
    assert!(plan.status.failover.is_some());
    observed.status = plan.status.clone();
    observed.statefulset.as_mut().unwrap().replicas = 4;
    observed.pods.push(pod(3, true, &current()));
    admit_empty(&mut observed, 3);
    observed.data_plane.as_mut().unwrap().running_operation = Some("drain".into());
    // Back: a member still (the drain has not ended), reachable, its pod ready.
    observed.pods[1].ready = true;
    observed.pods[1].started = true;
    let member = observed
        .data_plane
        .as_mut()
        .unwrap()
        .members
        .get_mut("g-1")
        .unwrap();
    member.reachable = true;
    member.ready = true;
    let plan = decide(&spec(3), &names(), &observed, at(320));
    assert!(
        plan.status.failover.is_some(),
        "not over while its removal runs"
    );
    assert_eq!(plan.action, None);
    assert_eq!(plan.statefulset_replicas, 4);
    // The drain ended: g-1 is out, its pod runs: admitted again first, the spare stays.
    observed.status = plan.status.clone();
    {
        let dp = observed.data_plane.as_mut().unwrap();
        dp.running_operation = None;
        dp.members.remove("g-1");
    }
    observed.pods[1].ready = false;
    let plan = decide(&spec(3), &names(), &observed, at(340));
    assert_eq!(plan.action, Some(Action::AddNode { node: "g-1".into() }));
    assert!(plan.status.failover.is_some());
    // Scaling the failed member away ends the failover too.
    let plan = decide(&spec(1), &names(), &observed, at(340));
    assert_eq!(plan.status.failover, None);
}
