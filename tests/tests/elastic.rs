//! Elasticity with real processes: growing from three nodes to five and back, repairing after a
//! node is gone for good, and a rebalance that survives the death of the node coordinating it.

use grape_client::{
    AddNodeRequest, ForceRecoveryRequest, GrapeClient, MovePhase, OperationKind, OperationStatus,
    RebalanceRequest, RemoveNodeRequest, RepairRequest, SearchRequest,
};
use grape_e2e::load::{self, DIMENSION, Operations, Writers, urls_of};
use grape_e2e::{Cluster, NodeOptions, node_metric, vector, wait_metric};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn options(shards: u32) -> NodeOptions {
    NodeOptions::dimension(DIMENSION)
        .setting("DATABASE__SHARD_COUNT", &shards.to_string())
        .setting("CLUSTER__MAX_CONCURRENT_MOVES", "8")
}

async fn load_documents(cluster: &Cluster, count: u64) {
    load::load_base_documents(cluster, count).await.unwrap();
}

/// Results of 100 fixed queries over the base documents (wide `ef`: exact on shards of a few
/// thousand documents; the filter leaves out what the writers add meanwhile).
async fn answers(client: &GrapeClient) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for q in 0..100u64 {
        let request = SearchRequest {
            ef: Some(400),
            filter: Some(grape_client::Filter {
                must: vec![grape_client::Condition::matches("kind", "base")],
                ..Default::default()
            }),
            ..SearchRequest::new(vector(7_000_000 + q, DIMENSION), 5)
        };
        let response = client.default_collection().search(&request).await.unwrap();
        all.push(response.results.into_iter().map(|r| r.id).collect());
    }
    all
}

fn rebalance() -> RebalanceRequest {
    RebalanceRequest {
        strategy: Some("even_distribution".into()),
    }
}

async fn wait_done(cluster: &Cluster, which: Operations, within: Duration) -> OperationStatus {
    load::wait_operation_done(cluster, which, within)
        .await
        .unwrap()
}

async fn distribution(cluster: &Cluster) -> BTreeMap<String, (usize, usize, u64)> {
    load::distribution(cluster).await.unwrap()
}

/// The distribution once the nodes hold `replicas` replicas in all: a move is done once its
/// target holds the shard and the source is out of the group, and the source drops its copy
/// when it learns that, a moment later.
async fn settled_distribution(
    cluster: &Cluster,
    replicas: usize,
) -> BTreeMap<String, (usize, usize, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spread = distribution(cluster).await;
        let held: usize = spread.values().map(|(r, _, _)| r).sum();
        if held == replicas {
            return spread;
        }
        assert!(
            Instant::now() < deadline,
            "{held} replicas held, not {replicas}: {spread:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_ready(cluster: &Cluster) {
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        node.wait_ready().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn growing_to_five_nodes_and_back_to_three_moves_data_without_losing_any() {
    let mut cluster = Cluster::start(3, options(16)).await;
    load_documents(&cluster, 50_000).await;
    let before = answers(&cluster.node(1).client()).await;
    let urls = Arc::new(Mutex::new(urls_of(&cluster)));
    let writers = Writers::start(Arc::clone(&urls), 2);
    let three = distribution(&cluster).await;
    assert!(
        three
            .values()
            .all(|(replicas, _, docs)| *replicas == 16 && *docs >= 50_000),
        "{three:?}"
    );

    // Two new nodes, admitted with add-node: they hold nothing until the rebalance.
    for _ in 0..2 {
        let i = cluster.start_extra_node().await;
        let before_admission = cluster.node(i).client().ready().await.unwrap();
        assert!(!before_admission, "a node not yet admitted is not ready");
        let answer = cluster
            .node(2)
            .client()
            .add_node(&AddNodeRequest {
                node_id: format!("node-{i}"),
                address: cluster.raft_address(i),
                role: Some("follower".into()),
            })
            .await
            .unwrap();
        assert_eq!(answer.state, "joining");
        cluster.node(i).wait_ready().await;
    }
    let joined = distribution(&cluster).await;
    assert_eq!(
        joined["node-4"].0, 0,
        "a new node holds nothing before a rebalance: {joined:?}"
    );

    let started = Instant::now();
    let plan = cluster
        .node(1)
        .client()
        .rebalance(&rebalance())
        .await
        .unwrap();
    assert!(plan.moves >= 18, "{plan:?}");
    // Any node reports it: a follower once it has applied the meta entry (a CI run asked
    // node 3 a moment before it had).
    let deadline = Instant::now() + Duration::from_secs(10);
    let progress = loop {
        let progress = cluster.node(3).client().rebalance_status().await.unwrap();
        if !progress.operations.is_empty() || Instant::now() > deadline {
            break progress;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        progress
            .operations
            .first()
            .is_some_and(|o| o.moves_total >= 18),
        "{progress:?}"
    );
    let done = wait_done(&cluster, Operations::Rebalance, Duration::from_secs(300)).await;
    eprintln!(
        "rebalance 3 -> 5 took {:?}: {} moves",
        started.elapsed(),
        done.moves_total
    );
    assert!(done.moves.iter().all(|m| m.phase == MovePhase::Done));
    *urls.lock().unwrap() = urls_of(&cluster);
    wait_ready(&cluster).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let five = distribution(&cluster).await;
    eprintln!(
        "documents per node (replicas, shards led, documents):\n3 nodes: {three:?}\n5 nodes: {five:?}"
    );
    for (node, (replicas, leads, _)) in &five {
        assert!(
            (9..=10).contains(replicas),
            "{node} holds {replicas} replicas: {five:?}"
        );
        assert!(
            (3..=4).contains(leads),
            "{node} leads {leads} shards: {five:?}"
        );
    }
    let most_before = three.values().map(|d| d.2).max().unwrap();
    let most_after = five.values().map(|d| d.2).max().unwrap();
    assert!(
        most_after < most_before,
        "documents per node must fall: {most_before} -> {most_after}"
    );
    assert_eq!(
        answers(&cluster.node(5).client()).await,
        before,
        "the same queries answer the same after the rebalance"
    );

    // Back to three: each removal drains the node first.
    for i in [5usize, 4] {
        let answer = cluster
            .node(1)
            .client()
            .remove_node(&RemoveNodeRequest {
                node_id: format!("node-{i}"),
                force: false,
            })
            .await
            .unwrap();
        assert!(answer.moves > 0, "{answer:?}");
        let done = wait_done(&cluster, Operations::Migration, Duration::from_secs(300)).await;
        assert_eq!(
            done.kind,
            OperationKind::Drain {
                node: format!("node-{i}"),
                force: false
            }
        );
        let gone = distribution(&cluster).await;
        assert_eq!(
            gone[&format!("node-{i}")].0,
            0,
            "node-{i} was drained: {gone:?}"
        );
        cluster.node_mut(i).kill9();
        *urls.lock().unwrap() = urls_of(&cluster);
    }
    // A third removal would break the replication factor.
    let refused = cluster
        .node(1)
        .client()
        .remove_node(&RemoveNodeRequest {
            node_id: "node-3".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.status().map(|s| s.as_u16()), refused.code()),
        (Some(409), Some("would_break_replication"))
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writers.stop().await;
    assert!(acked.len() > 100, "{}", acked.len());
    load::check_all_present(&cluster, &acked).await.unwrap();
    let back = distribution(&cluster).await;
    assert_eq!(back.len(), 3);
    assert!(
        back.values().all(|(replicas, _, _)| *replicas == 16),
        "replication factor 3 everywhere: {back:?}"
    );
    load::converged(&cluster, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(answers(&cluster.node(1).client()).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_restores_the_replication_factor_after_a_node_is_gone_for_good() {
    let mut cluster = Cluster::start(4, options(8)).await;
    load_documents(&cluster, 5_000).await;
    let lost: Vec<String> = cluster
        .node(4)
        .client()
        .shard_stats()
        .await
        .unwrap()
        .shards
        .iter()
        .map(|s| format!("{}/{}", s.collection, s.shard))
        .collect();
    assert!(!lost.is_empty());
    // Searches keep answering throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let searches = Arc::new(AtomicUsize::new(0));
    let searcher = {
        let (stop, failures, searches) = (
            Arc::clone(&stop),
            Arc::clone(&failures),
            Arc::clone(&searches),
        );
        let client = cluster.node(2).client();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = SearchRequest::new(vector(5, DIMENSION), 3);
                match client.default_collection().search(&request).await {
                    Ok(r) if r.results.len() == 3 => searches.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    cluster.node_mut(4).kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let plan = cluster
        .node(1)
        .client()
        .repair(&RepairRequest {
            repair_type: Some("full_sync".into()),
            nodes: None,
        })
        .await
        .unwrap();
    assert_eq!(plan.moves, lost.len(), "{plan:?}");
    let done = wait_done(&cluster, Operations::Repair, Duration::from_secs(120)).await;
    assert_eq!(
        done.kind,
        OperationKind::Repair {
            nodes: vec!["node-4".into()]
        }
    );
    stop.store(true, Ordering::Relaxed);
    searcher.await.unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "searches failed during the repair"
    );
    assert!(searches.load(Ordering::Relaxed) > 20);

    let mut replicas_per_shard: BTreeMap<u32, usize> = BTreeMap::new();
    for i in 1..=3 {
        let shards = cluster.node(i).client().shard_stats().await.unwrap();
        for shard in &shards.shards {
            assert_eq!(shard.replicas.len(), 3, "{shard:?}");
            assert!(!shard.replicas.iter().any(|r| r == "node-4"), "{shard:?}");
            *replicas_per_shard.entry(shard.shard).or_default() += 1;
        }
    }
    assert_eq!(replicas_per_shard.len(), 8);
    assert!(
        replicas_per_shard.values().all(|n| *n == 3),
        "three live copies of every shard: {replicas_per_shard:?}"
    );
    let mut expected = BTreeMap::new();
    for i in 0..5_000u64 {
        expected.insert(format!("base-{i}"), 1_000_000_000 + i);
    }
    load::check_all_present(&cluster, &expected).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_resumes_after_its_coordinator_is_killed() {
    let mut cluster = Cluster::start(3, options(8)).await;
    load_documents(&cluster, 10_000).await;
    for _ in 0..2 {
        load::grow(&mut cluster).await.unwrap();
    }
    let urls = Arc::new(Mutex::new(urls_of(&cluster)));
    let writers = Writers::start(Arc::clone(&urls), 2);
    cluster
        .node(2)
        .client()
        .rebalance(&rebalance())
        .await
        .unwrap();
    // Kill the coordinator (the meta leader) once moves are under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.node(2).client().rebalance_status().await.unwrap();
        // Node 2 may not have applied the operation's start yet.
        let moving = status.operations.first().is_some_and(|o| {
            o.moves
                .iter()
                .any(|m| matches!(m.phase, MovePhase::CatchingUp | MovePhase::Promoting))
        });
        if moving {
            break;
        }
        assert!(Instant::now() < deadline, "no move started: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every node exports the running operation (what the "operation stuck" alert watches).
    // Polled: node 5 may apply the start later than node 2.
    let rebalance = [("kind", "rebalance")];
    let running = "grape_operation_running";
    let ten_s = Duration::from_secs(10);
    wait_metric(cluster.node(5), running, &rebalance, ten_s, |v| v == 1.0).await;
    let moves = node_metric(cluster.node(5), "grape_operation_moves", &rebalance).await;
    assert!(moves.unwrap() > 0.0);
    let coordinator = load::leader_of(&cluster, "meta").await.unwrap();
    cluster.node_mut(coordinator).kill9();
    *urls.lock().unwrap() = urls_of(&cluster);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.node_mut(coordinator).restart_unready().await;
    *urls.lock().unwrap() = urls_of(&cluster);
    let done = wait_done(&cluster, Operations::Rebalance, Duration::from_secs(300)).await;
    assert!(
        done.moves.iter().all(|m| m.phase == MovePhase::Done),
        "{done:?}"
    );
    wait_ready(&cluster).await;
    for i in 1..=5 {
        wait_metric(cluster.node(i), running, &rebalance, ten_s, |v| v == 0.0).await;
    }
    let spread = settled_distribution(&cluster, 24).await;
    // 24 replicas over 5 nodes.
    assert!(
        spread
            .values()
            .all(|(replicas, _, _)| (4..=5).contains(replicas)),
        "{spread:?}"
    );
    let acked = writers.stop().await;
    load::check_all_present(&cluster, &acked).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_recovery_brings_back_a_lone_survivor_only_when_asked_explicitly() {
    let mut cluster = Cluster::start(3, options(2)).await;
    load_documents(&cluster, 500).await;
    // A write is acknowledged once two of three replicas hold it: wait until the survivor-to-be
    // holds them all. (Writes only the lost majority held are the data loss a forced recovery
    // accepts; a run that killed the others first lost one shard's batch that way.)
    load::converged(&cluster, Duration::from_secs(60))
        .await
        .unwrap();
    cluster.node_mut(2).kill9();
    cluster.node_mut(3).kill9();
    let survivor = cluster.node(1).client();
    // No quorum: writes are not acknowledged.
    assert!(
        survivor
            .default_collection()
            .upsert(&load::doc("lonely", 1))
            .await
            .is_err()
    );
    let refused = survivor
        .force_recovery(&ForceRecoveryRequest {
            recovery_mode: "single_node".into(),
            accept_data_loss: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(400));
    assert!(
        refused.to_string().contains("accept_data_loss"),
        "{refused}"
    );
    let answer = survivor.force_recovery(&accept_data_loss()).await.unwrap();
    assert!(answer.restarting);
    // The node stops by itself; its supervisor (here, the test) starts it again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.node_mut(1).restart().await;
    let survivor = cluster.node(1).client();
    let mut expected = BTreeMap::new();
    for i in 0..500u64 {
        expected.insert(format!("base-{i}"), 1_000_000_000 + i);
    }
    load::check_all_present(&cluster, &expected).await.unwrap();
    survivor
        .default_collection()
        .upsert(&load::doc("after", 2))
        .await
        .unwrap();
    // A healthy cluster refuses a forced recovery.
    let healthy = survivor
        .force_recovery(&accept_data_loss())
        .await
        .unwrap_err();
    assert_eq!(
        (healthy.status().map(|s| s.as_u16()), healthy.code()),
        (Some(409), Some("cluster_healthy"))
    );
}

fn accept_data_loss() -> ForceRecoveryRequest {
    ForceRecoveryRequest {
        recovery_mode: "single_node".into(),
        accept_data_loss: true,
    }
}

/// The deployment guide's procedure done quickly: two nodes started and admitted, and a
/// rebalance asked at once. The rebalance waits for both to finish joining, so that both get
/// their share; a node admitted but never started makes it answer 409 naming that node, and
/// removing that node lets the rebalance run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_right_after_adding_two_nodes_gives_both_their_share() {
    let mut cluster = Cluster::start(3, options(16)).await;
    load_documents(&cluster, 3000).await;
    let four = cluster.start_extra_node().await;
    let five = cluster.start_extra_node().await;
    let admin = cluster.node(1).client();
    for i in [four, five] {
        admin
            .add_node(&AddNodeRequest {
                node_id: format!("node-{i}"),
                address: cluster.raft_address(i),
                role: None,
            })
            .await
            .unwrap();
    }
    let started = admin.rebalance(&rebalance()).await.unwrap();
    assert!(started.moves >= 18, "{started:?}");
    let done = wait_done(&cluster, Operations::Rebalance, Duration::from_secs(180)).await;
    assert!(
        done.moves.iter().any(|m| m.to == "node-4") && done.moves.iter().any(|m| m.to == "node-5"),
        "{done:?}"
    );
    wait_ready(&cluster).await;
    let spread = settled_distribution(&cluster, 48).await;
    assert_eq!(spread.len(), 5, "{spread:?}");
    for (node, (replicas, _, documents)) in &spread {
        // 48 replicas over 5 nodes: 9 or 10 each, and about 3000 * 3 / 5 documents.
        assert!((9..=10).contains(replicas), "{node}: {spread:?}");
        assert!(*documents >= 1200, "{node}: {spread:?}");
    }

    // A node admitted but never started stays joining: the rebalance says so, by name.
    let ghost = std::net::TcpListener::bind(format!("{}.9:0", cluster.network))
        .unwrap()
        .local_addr()
        .unwrap();
    admin
        .add_node(&AddNodeRequest {
            node_id: "node-9".into(),
            address: ghost.to_string(),
            role: None,
        })
        .await
        .unwrap();
    let status = load::cluster_status(&cluster).await.unwrap();
    assert_eq!(status.joining, vec!["node-9".to_string()], "{status:?}");
    let refused = admin.rebalance(&rebalance()).await.unwrap_err();
    assert_eq!(
        refused.error_code(),
        Some(grape_client::ErrorCode::NodesNotReady),
        "{refused}"
    );
    assert!(refused.to_string().contains("node-9"), "{refused}");
    admin
        .remove_node(&RemoveNodeRequest {
            node_id: "node-9".into(),
            force: false,
        })
        .await
        .unwrap();
    let again = admin.rebalance(&rebalance()).await.unwrap();
    assert_eq!(again.moves, 0, "already even: {again:?}");
    let status = load::cluster_status(&cluster).await.unwrap();
    assert!(status.joining.is_empty(), "{status:?}");
    assert!(status.nodes.iter().all(|n| n.id != "node-9"), "{status:?}");
}
