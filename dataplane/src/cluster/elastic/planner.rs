//! Placement planning, as pure functions of the current placement: which replicas to move so
//! that every node holds the same number (±1), and which replica of each group should lead so
//! that every node leads the same number of groups (±1).

use crate::cluster::raft::ids::{GroupId, NodeId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One replica to move (`from` = None: a replica to add).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMove {
    pub group: GroupId,
    pub from: Option<NodeId>,
    pub to: NodeId,
}

/// Moves that take every replica off `leaving` nodes and then even out replica counts over
/// `nodes` (the nodes that may hold replicas), moving as few replicas as it can. `groups`
/// maps each group to its current replicas.
pub fn plan_replicas(
    groups: &BTreeMap<GroupId, Vec<NodeId>>,
    nodes: &BTreeSet<NodeId>,
    leaving: &BTreeSet<NodeId>,
) -> Vec<PlannedMove> {
    let eligible: Vec<NodeId> = nodes.difference(leaving).cloned().collect();
    if eligible.is_empty() {
        return Vec::new();
    }
    let mut placement = groups.clone();
    let mut count: BTreeMap<NodeId, usize> = eligible.iter().map(|n| (n.clone(), 0)).collect();
    for replicas in placement.values() {
        for r in replicas {
            if let Some(c) = count.get_mut(r) {
                *c += 1;
            }
        }
    }
    let mut moves = Vec::new();
    // 1. Evacuate leaving (or unknown) nodes.
    for (group, replicas) in placement.iter_mut() {
        for i in 0..replicas.len() {
            if count.contains_key(&replicas[i]) {
                continue;
            }
            let target = eligible
                .iter()
                .filter(|n| !replicas.contains(n))
                .min_by_key(|n| (count[*n], (*n).clone()))
                .cloned();
            if let Some(target) = target {
                moves.push(PlannedMove {
                    group: group.clone(),
                    from: Some(replicas[i].clone()),
                    to: target.clone(),
                });
                *count.get_mut(&target).expect("eligible") += 1;
                replicas[i] = target;
            }
        }
    }
    // 2. Even out: move from the fullest node to the emptiest one that lacks the group.
    let limit = placement.values().map(Vec::len).sum::<usize>() * 2 + 16;
    for _ in 0..limit {
        let (fullest, most) = count
            .iter()
            .max_by_key(|(n, c)| (**c, std::cmp::Reverse((*n).clone())))
            .map(|(n, c)| (n.clone(), *c))
            .expect("eligible is not empty");
        let mut candidates: Vec<(&NodeId, &usize)> = count.iter().collect();
        candidates.sort_by_key(|(n, c)| (**c, (*n).clone()));
        let mut moved = false;
        for (emptiest, least) in candidates {
            if most <= least + 1 {
                break;
            }
            let group = placement
                .iter()
                .find(|(_, r)| r.contains(&fullest) && !r.contains(emptiest))
                .map(|(g, _)| g.clone());
            if let Some(group) = group {
                let emptiest = emptiest.clone();
                let replicas = placement.get_mut(&group).expect("found above");
                let at = replicas
                    .iter()
                    .position(|r| *r == fullest)
                    .expect("contains");
                replicas[at] = emptiest.clone();
                moves.push(PlannedMove {
                    group,
                    from: Some(fullest.clone()),
                    to: emptiest.clone(),
                });
                *count.get_mut(&fullest).expect("counted") -= 1;
                *count.get_mut(&emptiest).expect("counted") += 1;
                moved = true;
                break;
            }
        }
        if !moved {
            break;
        }
    }
    moves
}

/// Replicas to add (`from: None`) to groups with fewer than `wanted` replicas (a forced
/// removal left them short), each on the node among `nodes` that holds fewest replicas and
/// lacks the group.
pub fn plan_missing(
    groups: &BTreeMap<GroupId, Vec<NodeId>>,
    nodes: &BTreeSet<NodeId>,
    wanted: &BTreeMap<GroupId, usize>,
) -> Vec<PlannedMove> {
    let mut count: BTreeMap<&NodeId, usize> = nodes.iter().map(|n| (n, 0)).collect();
    for replicas in groups.values() {
        for r in replicas {
            if let Some(c) = count.get_mut(r) {
                *c += 1;
            }
        }
    }
    let mut moves = Vec::new();
    for (group, replicas) in groups {
        let mut held = replicas.clone();
        let want = wanted.get(group).copied().unwrap_or(0);
        while held.len() < want {
            let Some(target) = nodes
                .iter()
                .filter(|n| !held.contains(n))
                .min_by_key(|n| (count[n], (*n).clone()))
            else {
                break;
            };
            *count.get_mut(target).expect("counted") += 1;
            held.push(target.clone());
            moves.push(PlannedMove {
                group: group.clone(),
                from: None,
                to: target.clone(),
            });
        }
    }
    moves
}

/// A leader for every group, among its replicas, so that leaderships per node differ by at
/// most one where the placement allows it; keeps `current` leaders where it can.
pub fn plan_leaders(
    groups: &BTreeMap<GroupId, Vec<NodeId>>,
    current: &BTreeMap<GroupId, NodeId>,
) -> BTreeMap<GroupId, NodeId> {
    let mut leaders: BTreeMap<GroupId, NodeId> = BTreeMap::new();
    let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
    for replicas in groups.values() {
        for r in replicas {
            led.entry(r.clone()).or_default();
        }
    }
    let nodes = led.len().max(1);
    let ceiling = groups.len().div_ceil(nodes);
    // Keep current leaders up to the ceiling, then place the rest on the least-loaded replica.
    for (group, replicas) in groups {
        if let Some(leader) = current.get(group)
            && replicas.contains(leader)
            && led[leader] < ceiling
        {
            leaders.insert(group.clone(), leader.clone());
            *led.get_mut(leader).expect("replica") += 1;
        }
    }
    for (group, replicas) in groups {
        if leaders.contains_key(group) || replicas.is_empty() {
            continue;
        }
        let best = replicas
            .iter()
            .min_by_key(|r| (led[*r], (*r).clone()))
            .expect("replicas is not empty")
            .clone();
        *led.get_mut(&best).expect("replica") += 1;
        leaders.insert(group.clone(), best);
    }
    // Shift leaderships along chains (a -> b via a group both replicate) until no node leads
    // two more than another.
    for _ in 0..groups.len() * nodes + 1 {
        let (max_node, max) = led
            .iter()
            .max_by_key(|(n, c)| (**c, (*n).clone()))
            .map(|(n, c)| (n.clone(), *c))
            .expect("nodes");
        let min = led.values().copied().min().unwrap_or(0);
        if max <= min + 1 {
            break;
        }
        // Breadth-first search from the most loaded node for a node leading <= max - 2.
        let mut previous: BTreeMap<NodeId, (NodeId, GroupId)> = BTreeMap::new();
        let mut queue = VecDeque::from([max_node.clone()]);
        let mut seen = BTreeSet::from([max_node.clone()]);
        let mut end = None;
        while let Some(node) = queue.pop_front() {
            if led[&node] + 2 <= max {
                end = Some(node);
                break;
            }
            for (group, leader) in &leaders {
                if *leader != node {
                    continue;
                }
                for other in &groups[group] {
                    if seen.insert(other.clone()) {
                        previous.insert(other.clone(), (node.clone(), group.clone()));
                        queue.push_back(other.clone());
                    }
                }
            }
        }
        let Some(mut node) = end else { break };
        *led.get_mut(&node).expect("node") += 1;
        while let Some((from, group)) = previous.get(&node).cloned() {
            leaders.insert(group, node.clone());
            node = from;
        }
        *led.get_mut(&node).expect("node") -= 1;
    }
    leaders
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::raft::meta_state::place;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn sixteen_shards_on(members: &[NodeId]) -> BTreeMap<GroupId, Vec<NodeId>> {
        (0..16)
            .map(|s| (format!("default/{s}@1"), place(members, s, 3)))
            .collect()
    }

    fn apply(groups: &mut BTreeMap<GroupId, Vec<NodeId>>, moves: &[PlannedMove]) {
        for m in moves {
            let replicas = groups.get_mut(&m.group).unwrap();
            match &m.from {
                Some(from) => {
                    let at = replicas.iter().position(|r| r == from).unwrap();
                    replicas[at] = m.to.clone();
                }
                None => replicas.push(m.to.clone()),
            }
        }
    }

    fn replica_counts(groups: &BTreeMap<GroupId, Vec<NodeId>>) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for replicas in groups.values() {
            assert_eq!(
                replicas.iter().collect::<BTreeSet<_>>().len(),
                replicas.len(),
                "a node twice in {replicas:?}"
            );
            for r in replicas {
                *counts.entry(r.clone()).or_default() += 1;
            }
        }
        counts
    }

    #[test]
    fn growing_from_three_to_five_nodes_spreads_replicas_and_leaders_evenly() {
        let three = ids(&["node-1", "node-2", "node-3"]);
        let mut groups = sixteen_shards_on(&three);
        let five: BTreeSet<NodeId> = ids(&["node-1", "node-2", "node-3", "node-4", "node-5"])
            .into_iter()
            .collect();
        let moves = plan_replicas(&groups, &five, &BTreeSet::new());
        // 48 replicas: 9.6 per node; the two new nodes receive 18 to 20 between them.
        assert!((18..=20).contains(&moves.len()), "{} moves", moves.len());
        assert!(moves.iter().all(|m| m.to == "node-4" || m.to == "node-5"));
        apply(&mut groups, &moves);
        let counts = replica_counts(&groups);
        assert_eq!(counts.len(), 5);
        assert!(counts.values().all(|c| (9..=10).contains(c)), "{counts:?}");

        let current: BTreeMap<GroupId, NodeId> = groups
            .iter()
            .map(|(g, r)| (g.clone(), r[0].clone()))
            .collect();
        let leaders = plan_leaders(&groups, &current);
        let mut led = BTreeMap::<NodeId, usize>::new();
        for (group, leader) in &leaders {
            assert!(groups[group].contains(leader));
            *led.entry(leader.clone()).or_default() += 1;
        }
        assert_eq!(led.len(), 5);
        assert!(led.values().all(|c| (3..=4).contains(c)), "{led:?}");
    }

    #[test]
    fn draining_a_node_moves_all_its_replicas_and_stays_balanced() {
        let five = ids(&["a", "b", "c", "d", "e"]);
        let mut groups = sixteen_shards_on(&five);
        let nodes: BTreeSet<NodeId> = five.iter().cloned().collect();
        let leaving: BTreeSet<NodeId> = ["e".to_string()].into_iter().collect();
        let moves = plan_replicas(&groups, &nodes, &leaving);
        assert!(moves.iter().all(|m| m.to != "e"));
        apply(&mut groups, &moves);
        let counts = replica_counts(&groups);
        assert!(!counts.contains_key("e"), "{counts:?}");
        assert!(counts.values().all(|c| (12..=12).contains(c)), "{counts:?}");
    }

    #[test]
    fn groups_left_short_by_a_forced_removal_get_their_replicas_back_on_the_emptiest_nodes() {
        // Three nodes, replication factor 3; b was removed by force, so every group is left
        // with a and c; b comes back empty.
        let mut groups: BTreeMap<GroupId, Vec<NodeId>> = (0..4)
            .map(|s| (format!("g{s}"), ids(&["a", "c"])))
            .collect();
        groups.insert("full".into(), ids(&["a", "c", "d"]));
        let nodes: BTreeSet<NodeId> = ids(&["a", "b", "c", "d"]).into_iter().collect();
        let wanted: BTreeMap<GroupId, usize> = groups.keys().map(|g| (g.clone(), 3)).collect();
        let moves = plan_missing(&groups, &nodes, &wanted);
        assert!(moves.iter().all(|m| m.from.is_none()), "{moves:?}");
        apply(&mut groups, &moves);
        assert!(groups.values().all(|r| r.len() == 3), "{groups:?}");
        // b (empty) and d (one replica) take the four new replicas, ending even: 3 and 2.
        let counts = replica_counts(&groups);
        assert_eq!((counts["b"], counts["d"]), (3, 2), "{counts:?}");
        assert_eq!((counts["a"], counts["c"]), (5, 5), "{counts:?}");
        // Nothing to add once every group has its replicas, nor where no node is left.
        assert!(plan_missing(&groups, &nodes, &wanted).is_empty());
        let short: BTreeMap<GroupId, Vec<NodeId>> = BTreeMap::from([("g".into(), ids(&["a"]))]);
        let lone: BTreeSet<NodeId> = ids(&["a"]).into_iter().collect();
        let want: BTreeMap<GroupId, usize> = BTreeMap::from([("g".into(), 3)]);
        assert!(plan_missing(&short, &lone, &want).is_empty());
    }

    #[test]
    fn an_even_placement_needs_no_moves_and_a_dead_node_is_replaced() {
        let three = ids(&["a", "b", "c"]);
        let groups = sixteen_shards_on(&three);
        let nodes: BTreeSet<NodeId> = three.iter().cloned().collect();
        assert!(plan_replicas(&groups, &nodes, &BTreeSet::new()).is_empty());
        // Four nodes, one gone for good: its replicas go to the three others.
        let four = ids(&["a", "b", "c", "d"]);
        let mut groups = sixteen_shards_on(&four);
        let nodes: BTreeSet<NodeId> = four.iter().cloned().collect();
        let dead: BTreeSet<NodeId> = ["d".to_string()].into_iter().collect();
        let moves = plan_replicas(&groups, &nodes, &dead);
        assert_eq!(moves.len(), 12);
        apply(&mut groups, &moves);
        assert!(replica_counts(&groups).values().all(|c| *c == 16));
    }
}
