//! Every decision of the pure core: creation, scale out, scale in waiting for the drain,
//! rolling-update order with leadership moved first, switchover, rebalance, pause, conditions.

use grape_operator::crd::{GrapeClusterSpec, GrapeClusterStatus};
use grape_operator::decide::{
    Action, Observed, ObservedDataPlane, ObservedMember, ObservedPod, ObservedStatefulSet, Plan,
    condition, decide,
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
        data_plane: Some(data_plane(&members)),
    }
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
fn scale_in_waits_while_a_member_is_not_ready() {
    let mut observed = settled(5);
    observed.pods[1].ready = false;
    let plan = decide(&spec(3), &names(), &observed, now());
    assert_eq!(plan.action, None);
    assert_eq!(plan.statefulset_replicas, 5);
}

#[test]
fn rolling_update_goes_highest_ordinal_first_moving_leaderships_off_before_deleting() {
    let mut observed = settled(3);
    // A configuration change: every pod's template hash is now outdated.
    let mut spec3 = spec(3);
    spec3.index.ef_search = 64;
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
