//! Load and checks against a running cluster, shared by the cluster tests and the
//! `grape-failover` measurement.

use crate::{Cluster, vector};
use futures::StreamExt;
use grape_client::{
    AddNodeRequest, ClusterStatus, Consistency, DocumentInput, GrapeClient, OperationState,
    OperationStatus, OperationsStatus, RebalanceRequest, RemoveNodeRequest, SearchRequest,
    ShardChecksum,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Dimension of the documents written here.
pub const DIMENSION: usize = 8;

/// A document whose vector is derived from `seed`.
pub fn doc(id: &str, seed: u64) -> DocumentInput {
    DocumentInput {
        id: Some(id.to_string()),
        vector: vector(seed, DIMENSION),
        metadata: json!({"seed": seed}).as_object().cloned(),
    }
}

/// API URLs of the running nodes.
pub fn urls_of(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.url.clone())
        .collect()
}

/// Writers that keep upserting through every running node and log each acknowledged id with
/// the seed of its vector.
pub struct Writers {
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// `count` writers; `urls` may be changed while they run (nodes killed and restarted).
    pub fn start(urls: Arc<Mutex<Vec<String>>>, count: usize) -> Writers {
        Writers::start_with_key(urls, count, None)
    }

    /// As [`Writers::start`], sending `key` as `X-API-Key`.
    pub fn start_with_key(
        urls: Arc<Mutex<Vec<String>>>,
        count: usize,
        key: Option<String>,
    ) -> Writers {
        let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count as u64)
            .map(|w| {
                let (acked, stop, urls, key) = (
                    Arc::clone(&acked),
                    Arc::clone(&stop),
                    Arc::clone(&urls),
                    key.clone(),
                );
                tokio::spawn(async move {
                    let mut clients: BTreeMap<String, GrapeClient> = BTreeMap::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let url = {
                            let urls = urls.lock().expect("urls");
                            urls[(n as usize + w as usize) % urls.len()].clone()
                        };
                        let client = clients
                            .entry(url.clone())
                            .or_insert_with(|| match &key {
                                Some(key) => GrapeClient::new(&url).with_api_key(key),
                                None => GrapeClient::new(&url),
                            })
                            .clone();
                        let seed = w * 10_000_000 + n;
                        let id = format!("w{w}-{n}");
                        if n.is_multiple_of(4) {
                            let batch: Vec<DocumentInput> = (0..10)
                                .map(|i| doc(&format!("{id}-{i}"), seed * 100 + i))
                                .collect();
                            if client
                                .default_collection()
                                .upsert_batch(&batch)
                                .await
                                .is_ok()
                            {
                                let mut log = acked.lock().expect("log");
                                for (i, d) in batch.iter().enumerate() {
                                    log.insert(
                                        d.id.clone().unwrap_or_default(),
                                        seed * 100 + i as u64,
                                    );
                                }
                            }
                        } else if client
                            .default_collection()
                            .upsert(&doc(&id, seed))
                            .await
                            .is_ok()
                        {
                            acked.lock().expect("log").insert(id, seed);
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Writers { acked, stop, tasks }
    }

    /// The writes acknowledged so far, with their seeds.
    pub fn acked_now(&self) -> BTreeMap<String, u64> {
        self.acked.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Writes acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Stops the writers and returns every acknowledged id with its seed.
    pub async fn stop(self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let log = self.acked.lock().expect("log");
        log.clone()
    }
}

/// Waits until every running node reports the same per-shard checksums; returns them.
pub async fn converged(cluster: &Cluster, within: Duration) -> Result<Vec<ShardChecksum>, String> {
    let deadline = Instant::now() + within;
    loop {
        let mut sums = Vec::new();
        for node in cluster.nodes.iter().filter(|n| n.is_running()) {
            if let Ok(answer) = node.client().checksum().await {
                sums.push(answer.shards);
            }
        }
        let running = cluster.nodes.iter().filter(|n| n.is_running()).count();
        if sums.len() == running && sums.windows(2).all(|w| w[0] == w[1]) && !sums[0].is_empty() {
            return Ok(sums.remove(0));
        }
        if Instant::now() > deadline {
            return Err(format!("replicas did not converge: {sums:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads every acknowledged document with `strong` consistency from every running node.
pub async fn check_all_present(
    cluster: &Cluster,
    acked: &BTreeMap<String, u64>,
) -> Result<(), String> {
    let clients = cluster
        .nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.client())
        .collect();
    check_all_present_at(clients, acked).await
}

/// [`check_all_present`] through each of `clients`.
pub async fn check_all_present_at(
    clients: Vec<GrapeClient>,
    acked: &BTreeMap<String, u64>,
) -> Result<(), String> {
    for client in clients {
        // 16 reads in flight: each strong read is a quorum round.
        let problems: Vec<String> = futures::stream::iter(acked.iter())
            .map(|(id, seed)| {
                let client = client.clone();
                async move {
                    match client
                        .default_collection()
                        .get_with(id, Consistency::Strong)
                        .await
                    {
                        Ok(found) if found.vector == vector(*seed, DIMENSION) => None,
                        Ok(_) => Some(format!("{id}: wrong vector")),
                        Err(e) => Some(format!("{id}: {e}")),
                    }
                }
            })
            .buffer_unordered(16)
            .filter_map(|p| async move { p })
            .collect()
            .await;
        if !problems.is_empty() {
            return Err(format!(
                "{} of {} acknowledged documents missing or wrong on {}: {:?}",
                problems.len(),
                acked.len(),
                client.base_url(),
                &problems[..problems.len().min(5)]
            ));
        }
    }
    Ok(())
}

/// `/admin/cluster/status` as the first running node reports it.
pub async fn cluster_status(cluster: &Cluster) -> Result<ClusterStatus, String> {
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.is_running())
        .ok_or("no node is running")?;
    node.client()
        .cluster_status()
        .await
        .map_err(|e| e.to_string())
}

/// The 1-based index of the node leading `group` (`meta`, `default/0`, ...).
pub async fn leader_of(cluster: &Cluster, group: &str) -> Result<usize, String> {
    let status = cluster_status(cluster).await?;
    let leader = status
        .groups
        .iter()
        .find(|g| g.name == group)
        .and_then(|g| g.leader.as_deref())
        .ok_or_else(|| format!("{group} has no leader: {status:?}"))?;
    Ok(Cluster::index_of(leader))
}

/// How long after a kill writes (to every shard) and searches succeeded again.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    pub writes: Duration,
    pub searches: Duration,
}

/// Kills node `victim` with SIGKILL and measures, through the survivors, how long until a
/// write to each of 16 ids (spread over every shard) and a search succeed again.
pub async fn kill_and_time_recovery(
    cluster: &mut Cluster,
    victim: usize,
) -> Result<Recovery, String> {
    let survivors: Vec<GrapeClient> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| *i + 1 != victim && n.is_running())
        .map(|(_, n)| n.client())
        .collect();
    cluster.node_mut(victim).kill9();
    let killed = Instant::now();
    let writes = async {
        let mut pending: Vec<String> = (0..16).map(|i| format!("probe-{i}")).collect();
        let mut round = 0u64;
        while !pending.is_empty() {
            if killed.elapsed() > Duration::from_secs(30) {
                return Err(format!("writes did not resume within 30 s: {pending:?}"));
            }
            let client = &survivors[round as usize % survivors.len()];
            round += 1;
            let mut still = Vec::new();
            for id in pending {
                if client
                    .default_collection()
                    .upsert(&doc(&id, round))
                    .await
                    .is_err()
                {
                    still.push(id);
                }
            }
            pending = still;
        }
        Ok(killed.elapsed())
    };
    let searches = async {
        let mut round = 0usize;
        loop {
            if killed.elapsed() > Duration::from_secs(30) {
                return Err("searches did not resume within 30 s".to_string());
            }
            let client = &survivors[round % survivors.len()];
            round += 1;
            let request = SearchRequest::new(vector(1, DIMENSION), 3);
            if client.default_collection().search(&request).await.is_ok() {
                return Ok(killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (writes, searches) = tokio::join!(writes, searches);
    Ok(Recovery {
        writes: writes?,
        searches: searches?,
    })
}

/// Loads `count` documents `base-0..` (metadata `kind: base`) in batches of 1000, spread over
/// the running nodes.
pub async fn load_base_documents(cluster: &Cluster, count: u64) -> Result<(), String> {
    let urls = urls_of(cluster);
    for (b, start) in (0..count).step_by(1000).enumerate() {
        let batch: Vec<DocumentInput> = (start..(start + 1000).min(count))
            .map(|i| {
                let mut d = doc(&format!("base-{i}"), 1_000_000_000 + i);
                if let Some(m) = d.metadata.as_mut() {
                    m.insert("kind".into(), json!("base"));
                }
                d
            })
            .collect();
        GrapeClient::new(&urls[b % urls.len()])
            .default_collection()
            .upsert_batch(&batch)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Which operations status to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operations {
    /// `/admin/cluster/rebalance-status`
    Rebalance,
    /// `/admin/cluster/migration-status`: rebalances, drains and repairs.
    Migration,
    /// `/admin/cluster/repair-status`
    Repair,
}

impl Operations {
    /// Reads this status from `client`.
    pub async fn read(self, client: &GrapeClient) -> grape_client::Result<OperationsStatus> {
        match self {
            Operations::Rebalance => client.rebalance_status().await,
            Operations::Migration => client.migration_status().await,
            Operations::Repair => client.repair_status().await,
        }
    }
}

/// Waits until the latest operation of `which` is done; returns it.
pub async fn wait_operation_done(
    cluster: &Cluster,
    which: Operations,
    within: Duration,
) -> Result<OperationStatus, String> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        for node in cluster.nodes.iter().filter(|n| n.is_running()) {
            if let Ok(status) = which.read(&node.client()).await {
                if let (None, Some(latest)) = (status.running, status.operations.first())
                    && latest.state == OperationState::Done
                {
                    return Ok(latest.clone());
                }
                last = Some(status);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{which:?} not done within {within:?}: {last:?}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Per node id: (replicas held, shard groups led, documents held).
pub async fn distribution(
    cluster: &Cluster,
) -> Result<BTreeMap<String, (usize, usize, u64)>, String> {
    let status = cluster_status(cluster).await?;
    let mut led: BTreeMap<String, usize> = BTreeMap::new();
    for group in &status.groups {
        if group.name != "meta"
            && let Some(leader) = &group.leader
        {
            *led.entry(leader.clone()).or_default() += 1;
        }
    }
    let mut out = BTreeMap::new();
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        let shards = node
            .client()
            .shard_stats()
            .await
            .map_err(|e| e.to_string())?;
        let documents = shards.shards.iter().map(|s| s.documents).sum();
        let id = shards.node_id.clone();
        out.insert(
            id.clone(),
            (
                shards.shards.len(),
                led.get(&id).copied().unwrap_or(0),
                documents,
            ),
        );
    }
    Ok(out)
}

/// Waits until operation `id` (a drain, rebalance or repair) is done.
pub async fn wait_operation(cluster: &Cluster, id: u64, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        for node in cluster.nodes.iter().filter(|n| n.is_running()) {
            if let Ok(status) = node.client().migration_status().await {
                match status.operations.iter().find(|o| o.operation == id) {
                    Some(o) if o.state == OperationState::Done => return Ok(()),
                    Some(o) if matches!(o.state, OperationState::Failed { .. }) => {
                        return Err(format!("operation {id} failed: {o:?}"));
                    }
                    _ => last = Some(status),
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "operation {id} not done within {within:?}: {last:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Replaces member `i`, whose data directory was lost, the way the docs tell an operator to:
/// waits until the cluster lists it under `data_lost`, removes it with `force`, adds it back
/// as a new node and rebalances; waits until it is ready.
pub async fn replace_lost_member(
    cluster: &Cluster,
    i: usize,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let id = format!("node-{i}");
    let others: Vec<&crate::GrapeNode> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(at, n)| *at + 1 != i && n.is_running())
        .map(|(_, n)| n)
        .collect();
    let ask = others.first().ok_or("no other node runs")?.client();
    loop {
        match ask.cluster_status().await {
            Ok(status) if status.data_lost.contains(&id) => break,
            other if Instant::now() > deadline => {
                return Err(format!("{id} never listed as data_lost: {other:?}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    let remove = RemoveNodeRequest {
        node_id: id.clone(),
        force: true,
    };
    let started = retry(deadline, || ask.remove_node(&remove)).await?;
    wait_operation(cluster, started.operation, within).await?;
    let add = AddNodeRequest {
        node_id: id.clone(),
        address: cluster.raft_address(i),
        role: None,
    };
    retry(deadline, || ask.add_node(&add)).await?;
    let rebalance = RebalanceRequest {
        strategy: Some("even_distribution".into()),
    };
    let started = retry(deadline, || ask.rebalance(&rebalance)).await?;
    wait_operation(cluster, started.operation, within).await?;
    cluster.node(i).wait_ready().await;
    Ok(())
}

/// Calls `call` until it succeeds or `deadline` passes (an election or a joining node makes
/// admin calls answer 503 or 409 for a moment).
async fn retry<T, F, Fut>(deadline: Instant, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = grape_client::Result<T>>,
{
    loop {
        match call().await {
            Ok(answer) => return Ok(answer),
            Err(e) if Instant::now() > deadline => return Err(e.to_string()),
            Err(e) => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Starts one more node and admits it with `add-node`; waits until it is ready.
pub async fn grow(cluster: &mut Cluster) -> Result<usize, String> {
    let i = cluster.start_extra_node().await;
    let request = AddNodeRequest {
        node_id: format!("node-{i}"),
        address: cluster.raft_address(i),
        role: None,
    };
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.is_running())
        .ok_or("no node is running")?;
    node.client()
        .add_node(&request)
        .await
        .map_err(|e| e.to_string())?;
    cluster.node(i).wait_ready().await;
    Ok(i)
}
