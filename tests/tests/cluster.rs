//! Three real nodes replicating through Raft: no acknowledged write is lost across kills,
//! restarts, a wiped node and a partition; failover happens within seconds; leadership moves on
//! demand.

use grape_client::{
    AddNodeRequest, CollectionConfig, Consistency, DocumentInput, ErrorCode, RemoveNodeRequest,
    SearchRequest, TransferLeadershipRequest,
};
use grape_e2e::load::{self, DIMENSION, Writers, doc, urls_of};
use grape_e2e::{Cluster, NodeOptions, node_metric, vector, wait_metric};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn options() -> NodeOptions {
    NodeOptions::dimension(DIMENSION)
}

async fn converged(cluster: &Cluster) -> Vec<grape_client::ShardChecksum> {
    load::converged(cluster, Duration::from_secs(60))
        .await
        .unwrap()
}

async fn assert_all_present(cluster: &Cluster, acked: &BTreeMap<String, u64>) {
    if let Err(problem) = load::check_all_present(cluster, acked).await {
        panic!("{problem}");
    }
}

async fn leader_of(cluster: &Cluster, group: &str) -> usize {
    load::leader_of(cluster, group).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_every_write_and_report_their_state() {
    let cluster = Cluster::start(3, options()).await;
    // Writes through every node; reads of each through every node.
    for i in 1..=3 {
        let batch: Vec<DocumentInput> = (0..20)
            .map(|j| doc(&format!("n{i}-{j}"), i * 100 + j))
            .collect();
        cluster
            .node(i as usize)
            .client()
            .default_collection()
            .upsert_batch(&batch)
            .await
            .unwrap();
    }
    for reader in 1..=3 {
        let client = cluster.node(reader).client();
        for i in 1..=3u64 {
            for j in 0..20 {
                let found = client
                    .default_collection()
                    .get_with(&format!("n{i}-{j}"), Consistency::Strong)
                    .await
                    .unwrap();
                assert_eq!(found.vector, vector(i * 100 + j, DIMENSION));
            }
        }
        let hits = client
            .default_collection()
            .search(&SearchRequest {
                consistency: Some(Consistency::Strong),
                ..SearchRequest::new(vector(205, DIMENSION), 1)
            })
            .await
            .unwrap();
        assert_eq!(hits.results[0].id, "n2-5");
    }
    let sums = converged(&cluster).await;
    assert_eq!(sums.iter().map(|s| s.documents).sum::<u64>(), 60);
    // Replication factor 3: every node holds every shard.
    for node in &cluster.nodes {
        let stats = node.client().stats().await.unwrap();
        assert_eq!(stats.documents, 60, "{}", node.url);
    }

    let admin = cluster.node(2).client();
    let leader = admin.cluster_leader().await.unwrap();
    let leader_id = leader.leader.unwrap();
    assert!(leader_id.starts_with("node-"));
    assert!(leader.term >= 1);
    let status = admin.cluster_status().await.unwrap();
    assert_eq!(status.nodes.len(), 3);
    assert!(status.nodes.iter().all(|n| n.ready), "{status:?}");
    assert_eq!(
        status.groups.len(),
        3,
        "meta and two shard groups: {status:?}"
    );
    for group in &status.groups {
        assert!(group.leader.is_some(), "{group:?}");
        assert_eq!(group.members.len(), 3, "{group:?}");
        for member in &group.members {
            assert!(
                member.commit_index.is_some() && member.applied_index.is_some(),
                "{member:?}"
            );
        }
    }
    let consensus = admin.consensus().await.unwrap();
    assert!(consensus.groups.iter().all(|g| g.voters.len() == 3));
    let history = admin.election_history().await.unwrap();
    assert!(!history.events.is_empty());
    let sync = admin.sync_status().await.unwrap();
    assert!(sync.ready);
    let shards = admin.shard_stats().await.unwrap();
    assert!(
        shards
            .shards
            .iter()
            .all(|s| s.replicas.len() == 3 && s.leader.is_some())
    );

    let metrics = cluster
        .node(Cluster::index_of(&leader_id))
        .client()
        .metrics_text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "grape_cluster_leader_status{{node_id=\"{leader_id}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "grape_cluster_nodes_connected{{node_id=\"{leader_id}\"}} 3"
    )));
    for name in [
        "grape_raft_log_entries_total",
        "grape_raft_election_count_total",
        "grape_raft_leadership_changes_total",
    ] {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(
            !line.ends_with(" 0") || name == "grape_raft_election_count_total",
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_and_searches_resume_within_five_seconds_of_a_leader_kill() {
    let mut cluster = Cluster::start(3, options()).await;
    let urls = Arc::new(Mutex::new(urls_of(&cluster)));
    let writers = Writers::start(Arc::clone(&urls), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut recoveries = Vec::new();
    for group in ["meta", "default/0", "meta", "default/1"] {
        let victim = leader_of(&cluster, group).await;
        let recovery = load::kill_and_time_recovery(&mut cluster, victim)
            .await
            .unwrap();
        recoveries.push((group, recovery));
        cluster.node_mut(victim).restart_unready().await;
        *urls.lock().unwrap() = urls_of(&cluster);
        for node in &cluster.nodes {
            node.wait_ready().await;
        }
    }
    let acked = writers.stop().await;
    for (group, recovery) in &recoveries {
        assert!(
            recovery.writes < Duration::from_secs(5),
            "writes after killing the leader of {group}: {recovery:?}"
        );
        assert!(
            recovery.searches < Duration::from_secs(5),
            "searches after killing the leader of {group}: {recovery:?}"
        );
    }
    eprintln!("recovery after leader kills: {recoveries:?}");
    assert!(acked.len() > 50);
    assert_all_present(&cluster, &acked).await;
    converged(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_is_lost_across_kills_restarts_and_a_wiped_node() {
    // Frequent snapshots purge the logs, so the wiped node must be re-seeded by snapshot.
    let mut cluster =
        Cluster::start(3, options().setting("CLUSTER__SNAPSHOT_LOG_ENTRIES", "40")).await;
    let urls = Arc::new(Mutex::new(urls_of(&cluster)));
    let writers = Writers::start(Arc::clone(&urls), 3);
    for (round, victim) in [1usize, 2, 3, 1].into_iter().enumerate() {
        eprintln!(
            "round {round}: killing node-{victim}; {} writes acknowledged so far",
            writers.count()
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        cluster.node_mut(victim).kill9();
        *urls.lock().unwrap() = urls_of(&cluster);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if round == 2 {
            // The node comes back with an empty data directory and the same id: the cluster
            // keeps it out until it is removed and added again as a new node.
            cluster.node_mut(victim).wipe();
            cluster.node_mut(victim).restart_unready().await;
            load::replace_lost_member(&cluster, victim, Duration::from_secs(120))
                .await
                .unwrap();
        } else {
            cluster.node_mut(victim).restart_unready().await;
        }
        cluster.node(victim).wait_ready().await;
        *urls.lock().unwrap() = urls_of(&cluster);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    eprintln!("stopping writers");
    let acked = writers.stop().await;
    eprintln!("{} writes acknowledged; checking every node", acked.len());
    assert!(
        acked.len() > 100,
        "writers made too little progress: {}",
        acked.len()
    );
    assert_all_present(&cluster, &acked).await;
    let sums = converged(&cluster).await;
    let stored: u64 = sums.iter().map(|s| s.documents).sum();
    assert!(stored >= acked.len() as u64);
    // The logs were purged behind snapshots: the wiped node can only have caught up from one.
    let consensus = cluster.node(1).client().sync_status().await.unwrap();
    for group in &consensus.groups {
        if group.name != "meta" {
            assert!(group.purged_index.unwrap_or(0) > 0, "{group:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_with_a_wiped_volume_cannot_vote_a_stale_node_in_and_is_replaced_as_a_new_one() {
    // The hazard: node-1 misses writes that node-2 and node-3 acknowledged; node-2 loses its
    // volume. Were node-2 to vote as the member it was, node-1 and node-2 would make a
    // majority, elect the stale node-1 and lose those writes.
    let mut cluster = Cluster::start(3, options()).await;
    let before: Vec<DocumentInput> = (0..20).map(|i| doc(&format!("before-{i}"), i)).collect();
    let client = cluster.node(2).client();
    client
        .default_collection()
        .upsert_batch(&before)
        .await
        .unwrap();
    converged(&cluster).await;

    cluster.isolate(1);
    let during: Vec<DocumentInput> = (0..20)
        .map(|i| doc(&format!("during-{i}"), 100 + i))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = client.default_collection().upsert_batch(&during).await {
        assert!(
            Instant::now() < deadline,
            "node-2 and node-3 take no writes: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let terms_before: BTreeMap<String, Option<u64>> = client
        .cluster_status()
        .await
        .unwrap()
        .groups
        .into_iter()
        .map(|g| (g.name, g.term))
        .collect();
    cluster.node_mut(2).kill9();
    cluster.node_mut(3).kill9();
    cluster.heal(1);
    cluster.node_mut(2).wipe();
    cluster.node_mut(2).restart_unready().await;

    // Only the stale node-1 and the wiped node-2 run: no leader may be elected, and the
    // cluster names node-2 as a member whose data is lost.
    let stale = cluster.node(1).client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = stale.cluster_status().await.unwrap();
        if status.data_lost == ["node-2"] {
            break;
        }
        assert!(Instant::now() < deadline, "node-2 not reported: {status:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Ten election timeouts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for probe in ["during-5", "before-5"] {
        let read = stale
            .default_collection()
            .get_with(probe, Consistency::Strong)
            .await;
        let status = read
            .as_ref()
            .err()
            .and_then(|e| e.status())
            .map(|s| s.as_u16());
        assert!(
            matches!(status, Some(503) | Some(504)),
            "with the stale node and the wiped one alone, a strong read of {probe} must find no leader: {read:?}"
        );
    }
    // No election was won: a leader node-1 still believes in dates from before the kills.
    let status = stale.cluster_status().await.unwrap();
    for group in &status.groups {
        if group.leader.is_some() {
            assert!(
                group.term <= terms_before[&group.name],
                "{} elected a leader without a majority of its real members: {status:?}",
                group.name
            );
        }
    }

    // Removing node-2 now, even by force, could never finish: no shard it holds has a
    // quorum without it.
    let refused = stale
        .remove_node(&RemoveNodeRequest {
            node_id: "node-2".into(),
            force: true,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            (refused.status().map(|s| s.as_u16()), refused.code()),
            (Some(409), Some("would_lose_quorum")) | (Some(503), Some("no_leader"))
        ),
        "{refused}"
    );

    // node-3 returns: node-1 and node-3 hold a majority with every acknowledged write.
    cluster.node_mut(3).restart_unready().await;
    cluster.node(3).wait_ready().await;
    cluster.node(1).wait_ready().await;
    for d in before.iter().chain(&during) {
        let id = d.id.as_deref().unwrap();
        stale
            .default_collection()
            .get_with(id, Consistency::Strong)
            .await
            .unwrap_or_else(|e| panic!("{id} was acknowledged and is lost: {e}"));
    }
    assert!(!cluster.node(2).client().ready().await.unwrap_or(false));

    // Removed and added again, node-2 gets every replica back and serves them.
    load::replace_lost_member(&cluster, 2, Duration::from_secs(120))
        .await
        .unwrap();
    let sums = converged(&cluster).await;
    let stored: u64 = sums.iter().map(|s| s.documents).sum();
    assert_eq!(stored, 40, "{sums:?}");
    let status = stale.cluster_status().await.unwrap();
    assert!(status.data_lost.is_empty(), "{status:?}");
    let held = status.nodes.iter().find(|n| n.id == "node-2").unwrap();
    assert!(held.replicas > 0, "{status:?}");
    for d in before.iter().chain(&during) {
        let id = d.id.as_deref().unwrap();
        cluster
            .node(2)
            .client()
            .default_collection()
            .get_with(id, Consistency::Eventual)
            .await
            .unwrap_or_else(|e| panic!("{id} not on the replaced node-2: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forced_removal_that_no_shard_could_commit_is_refused_instead_of_hanging() {
    let mut cluster = Cluster::start(3, options()).await;
    let client = cluster.node(1).client();
    // One replica per shard: a shard whose only replica is on node-3 cannot move without it.
    client
        .create_collection(&CollectionConfig {
            shard_count: 3,
            replication_factor: 1,
            ..CollectionConfig::new("solo", DIMENSION)
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_node_3 = loop {
        let status = client.cluster_status().await.unwrap();
        let held = status
            .nodes
            .iter()
            .find(|n| n.id == "node-3")
            .map_or(0, |n| n.replicas);
        let solo_led = status
            .groups
            .iter()
            .filter(|g| g.name.starts_with("solo/") && g.leader.is_some())
            .count();
        if solo_led == 3 {
            break held;
        }
        assert!(Instant::now() < deadline, "solo never formed: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(on_node_3 > 0, "node-3 holds a replica of something");
    cluster.node_mut(3).kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let refused = client
        .remove_node(&RemoveNodeRequest {
            node_id: "node-3".into(),
            force: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.status().map(|s| s.as_u16()), refused.code()),
        (Some(409), Some("would_lose_quorum")),
        "{refused}"
    );
    assert!(refused.to_string().contains("solo/"), "{refused}");
    // Nothing was started: the cluster runs no operation.
    assert_eq!(client.migration_status().await.unwrap().running, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_node_acknowledges_nothing_and_converges_after_healing() {
    let cluster = Cluster::start(3, options()).await;
    let before: Vec<DocumentInput> = (0..30).map(|i| doc(&format!("before-{i}"), i)).collect();
    cluster
        .node(1)
        .client()
        .default_collection()
        .upsert_batch(&before)
        .await
        .unwrap();
    converged(&cluster).await;

    cluster.isolate(3);
    // Writes through the isolated node are not acknowledged.
    let isolated = cluster.node(3).client();
    let started = Instant::now();
    let refused = isolated
        .default_collection()
        .upsert(&doc("cut-off-1", 1))
        .await;
    assert!(refused.is_err(), "the isolated node acknowledged a write");
    assert_eq!(refused.unwrap_err().status().map(|s| s.as_u16()), Some(503));
    assert!(started.elapsed() < Duration::from_secs(30));
    // The majority keeps serving.
    let during: Vec<DocumentInput> = (0..30)
        .map(|i| doc(&format!("during-{i}"), 100 + i))
        .collect();
    let majority = cluster.node(1).client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while majority
        .default_collection()
        .upsert_batch(&during)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the majority stopped taking writes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits = majority
        .default_collection()
        .search(&SearchRequest {
            consistency: Some(Consistency::Strong),
            ..SearchRequest::new(vector(105, DIMENSION), 1)
        })
        .await
        .unwrap();
    assert_eq!(hits.results[0].id, "during-5");
    // A strong read on the isolated side cannot be served.
    assert!(
        isolated
            .default_collection()
            .get_with("during-5", Consistency::Strong)
            .await
            .is_err()
    );

    cluster.heal(3);
    let sums = converged(&cluster).await;
    assert_eq!(
        sums.iter().map(|s| s.documents).sum::<u64>(),
        60,
        "{sums:?}"
    );
    let found = isolated
        .default_collection()
        .get_with("during-7", Consistency::Eventual)
        .await;
    assert!(found.is_ok());
    assert!(
        isolated
            .default_collection()
            .get("cut-off-1")
            .await
            .is_err(),
        "an unacknowledged write must not appear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfer_leadership_moves_every_group_the_leader_leads_without_losing_writes() {
    let cluster = Cluster::start(3, options()).await;
    let urls = Arc::new(Mutex::new(urls_of(&cluster)));
    let writers = Writers::start(Arc::clone(&urls), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = leader_of(&cluster, "meta").await;
    let target = if old == 2 { 3 } else { 2 };
    let target_id = format!("node-{target}");
    let answer = cluster
        .node(1)
        .client()
        .transfer_leadership(&TransferLeadershipRequest {
            target_node: Some(target_id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(answer.moved.iter().any(|g| g.group == "meta"), "{answer:?}");
    assert_eq!(leader_of(&cluster, "meta").await, target);
    // One shard group, named explicitly.
    let shard_target = if leader_of(&cluster, "default/0").await == 1 {
        3
    } else {
        1
    };
    cluster
        .node(2)
        .client()
        .transfer_leadership(&TransferLeadershipRequest {
            target_node: Some(format!("node-{shard_target}")),
            shard: Some("default/0".into()),
            from_node: None,
        })
        .await
        .unwrap();
    assert_eq!(leader_of(&cluster, "default/0").await, shard_target);
    // Every leadership off one node (what the operator does before restarting a pod): each
    // group goes to another of its voters.
    let drained = format!("node-{shard_target}");
    let answer = cluster
        .node(1)
        .client()
        .transfer_leadership(&TransferLeadershipRequest {
            from_node: Some(drained.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!answer.moved.is_empty(), "{answer:?}");
    let status = load::cluster_status(&cluster).await.unwrap();
    let still_led: Vec<_> = status
        .groups
        .iter()
        .filter(|g| g.leader.as_deref() == Some(drained.as_str()))
        .collect();
    assert!(still_led.is_empty(), "{drained} still leads {still_led:?}");
    // Neither a target nor a source.
    let bad = cluster
        .node(1)
        .client()
        .transfer_leadership(&TransferLeadershipRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad.status().map(|s| s.as_u16()), Some(400));
    let bad = cluster
        .node(1)
        .client()
        .transfer_leadership(&TransferLeadershipRequest {
            target_node: Some("node-9".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.status().map(|s| s.as_u16()), Some(400));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = writers.stop().await;
    assert!(acked.len() > 20);
    assert_all_present(&cluster, &acked).await;
    converged(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_with_sigterm_hands_its_leaderships_over_before_it_exits() {
    // A long election timeout: without the hand-off, the survivors would go on naming the
    // stopped node as leader of its groups for seconds after it exited.
    let mut cluster = Cluster::start(
        3,
        options()
            .setting("DATABASE__SHARD_COUNT", "6")
            .setting("CLUSTER__ELECTION_TIMEOUT_MS", "6000")
            .setting("CLUSTER__HEARTBEAT_INTERVAL_MS", "300"),
    )
    .await;
    // Once every group has a leader: the node leading the most groups stops.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let status = load::cluster_status(&cluster).await.unwrap();
        if status.groups.iter().all(|g| g.leader.is_some()) || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let leads = |id: &str| {
        before
            .groups
            .iter()
            .filter(|g| g.leader.as_deref() == Some(id))
            .count()
    };
    let victim = (1..=3).max_by_key(|i| leads(&format!("node-{i}"))).unwrap();
    let victim_id = format!("node-{victim}");
    let led = leads(&victim_id);
    // Seven groups (meta and six shards) over three nodes.
    assert!(led >= 3, "{victim_id} leads {led} groups: {before:?}");
    let survivor = if victim == 1 { 2 } else { 1 };
    let survivors: Vec<String> = (1..=3)
        .filter(|i| *i != victim)
        .map(|i| cluster.node(i).url.clone())
        .collect();
    let writers = Writers::start(Arc::new(Mutex::new(survivors)), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopping = Instant::now();
    assert_eq!(
        cluster.node_mut(victim).terminate(),
        Some(0),
        "a clean exit"
    );
    let took = stopping.elapsed();
    assert!(
        cluster
            .node(victim)
            .log_text()
            .contains("handed leaderships over before stopping"),
        "{}",
        cluster.node(victim).log_text()
    );
    // At once, well inside the 6 s election timeout: every group has a leader that is not
    // the stopped node.
    let after = cluster
        .node(survivor)
        .client()
        .cluster_status()
        .await
        .unwrap();
    for group in &after.groups {
        assert!(
            group.leader.is_some() && group.leader.as_deref() != Some(victim_id.as_str()),
            "{} led by {:?} right after {victim_id} stopped",
            group.name,
            group.leader
        );
    }
    eprintln!("stopping {victim_id}, {led} groups handed over: {took:?}");
    // Writes go on through the survivors.
    let client = cluster.node(survivor).client();
    for i in 0..16 {
        client
            .default_collection()
            .upsert(&doc(&format!("after-stop-{i}"), i))
            .await
            .unwrap();
    }
    let acked = writers.stop().await;
    assert!(acked.len() > 20, "{}", acked.len());
    cluster.node_mut(victim).restart().await;
    assert_all_present(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_call_is_refused_alike_through_the_leader_and_through_a_follower() {
    let cluster = Cluster::start(3, options()).await;
    let leader = leader_of(&cluster, "meta").await;
    let follower = if leader == 1 { 2 } else { 1 };
    // What each node answers, as (status, code, message).
    async fn refusal(
        client: &grape_client::GrapeClient,
        call: &str,
    ) -> (Option<u16>, Option<String>, String) {
        let error = match call {
            // Replication factor 3 on three nodes: a removal would break it.
            "remove-node" => client
                .remove_node(&RemoveNodeRequest {
                    node_id: "node-3".into(),
                    force: false,
                })
                .await
                .map(|_| ())
                .unwrap_err(),
            _ => client
                .add_node(&AddNodeRequest {
                    node_id: "node-2".into(),
                    address: "127.0.0.1:1".into(),
                    role: None,
                })
                .await
                .map(|_| ())
                .unwrap_err(),
        };
        let message = match &error {
            grape_client::ClientError::Api { message, .. } => message.clone(),
            other => other.to_string(),
        };
        (
            error.status().map(|s| s.as_u16()),
            error.code().map(str::to_string),
            message,
        )
    }
    for (call, code) in [
        ("remove-node", ErrorCode::WouldBreakReplication),
        ("add-node", ErrorCode::NodeExists),
    ] {
        let direct = refusal(&cluster.node(leader).client(), call).await;
        let forwarded = refusal(&cluster.node(follower).client(), call).await;
        assert_eq!(
            (direct.0, direct.1.as_deref()),
            (Some(409), Some(code.as_str())),
            "{call} on the leader: {direct:?}"
        );
        assert_eq!(forwarded, direct, "{call} through a follower");
    }
}

#[tokio::test]
async fn the_presence_check_reports_a_document_that_was_never_written() {
    let cluster = Cluster::start(1, options()).await;
    let mut fake = BTreeMap::new();
    fake.insert("never-written".to_string(), 1);
    let problem = load::check_all_present(&cluster, &fake).await.unwrap_err();
    assert!(problem.contains("never-written"), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_health_metrics_show_a_replica_behind_and_a_lost_quorum() {
    let mut cluster = Cluster::start(3, options()).await;
    let within = Duration::from_secs(30);
    // Healthy: every node is in the meta group and both shard groups, each with a leader.
    for i in 1..=3 {
        let groups = node_metric(cluster.node(i), "grape_raft_groups", &[]).await;
        assert_eq!(groups, Some(3.0), "node-{i}");
        wait_metric(
            cluster.node(i),
            "grape_raft_groups_without_leader",
            &[],
            within,
            |v| v == 0.0,
        )
        .await;
    }
    let leader = leader_of(&cluster, "default/0").await;
    let lag = [("group", "default/0")];
    let name = "grape_raft_replica_lag_entries";
    wait_metric(cluster.node(leader), name, &lag, within, |v| v == 0.0).await;
    for i in (1..=3).filter(|i| *i != leader) {
        let value = node_metric(cluster.node(i), name, &lag).await;
        assert_eq!(value, None, "only the leader reports lag: node-{i}");
    }

    // A follower stops and writes go on: the leader reports it behind, until it returns.
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    cluster.node_mut(follower).kill9();
    let client = cluster.node(leader).client();
    let docs = client.default_collection();
    for i in 0..40 {
        docs.upsert(&doc(&format!("lag-{i}"), i)).await.unwrap();
    }
    let behind = wait_metric(cluster.node(leader), name, &lag, within, |v| v > 0.0).await;
    eprintln!("default/0 follower behind by {behind} entries");
    // The leader counts one of three members unreachable (GrapeMemberUnreachable).
    let members = node_metric(cluster.node(leader), "grape_cluster_members", &[]).await;
    assert_eq!(members, Some(3.0));
    let connected = "grape_cluster_nodes_connected";
    wait_metric(cluster.node(leader), connected, &[], within, |v| v == 2.0).await;
    cluster.node_mut(follower).restart().await;
    wait_metric(cluster.node(leader), name, &lag, within, |v| v == 0.0).await;

    // Both other nodes stop: the survivor cannot reach a quorum in any group, also in the
    // groups it led when they stopped.
    let others: Vec<usize> = (1..=3).filter(|i| *i != leader).collect();
    for i in &others {
        cluster.node_mut(*i).kill9();
    }
    let without = "grape_raft_groups_without_leader";
    wait_metric(cluster.node(leader), without, &[], within, |v| v == 3.0).await;
    for i in &others {
        cluster.node_mut(*i).restart_unready().await;
    }
    for i in 1..=3 {
        wait_metric(
            cluster.node(i),
            without,
            &[],
            Duration::from_secs(60),
            |v| v == 0.0,
        )
        .await;
    }
}
