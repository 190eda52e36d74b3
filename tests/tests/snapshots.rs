//! Large shards moving between real processes. A drain moves a shard of a one-replica
//! collection to another node by snapshot: the snapshot streams in bounded memory on both
//! sides, the move reports bytes as they are copied, and killing either side mid-transfer or
//! mid-install leaves a consistent shard once the move completes.
//!
//! `GRAPE_MOVE_MB` sets the size of the moved shard (default 256 MiB); the figures in
//! `docs/verification.md` come from
//! `GRAPE_MOVE_MB=1024 cargo nextest run -p grape-e2e --test snapshots -- moving_a_large --no-capture`.

use futures::StreamExt;
use grape_client::{DocumentInput, GrapeClient, MoveStatus, RemoveNodeRequest};
use grape_e2e::load::{self, Operations};
use grape_e2e::{Cluster, GrapeNode, NodeOptions, vector};
use serde_json::json;
use std::time::{Duration, Instant};

const DIMENSION: usize = 4;

/// Metadata per document: a shard of a given size with few documents (few vectors to index).
const BLOB_BYTES: usize = 48 * 1024;

const MIB: u64 = 1024 * 1024;

/// `cluster.snapshot_log_entries` of the nodes.
const SNAPSHOT_LOG_ENTRIES: u64 = 20;

fn options() -> NodeOptions {
    NodeOptions::dimension(DIMENSION)
        .setting("DATABASE__SHARD_COUNT", "1")
        .setting("DATABASE__REPLICATION_FACTOR", "1")
        // The log is purged behind frequent snapshots: a new replica can only start from one.
        .setting(
            "CLUSTER__SNAPSHOT_LOG_ENTRIES",
            &SNAPSHOT_LOG_ENTRIES.to_string(),
        )
}

/// Printable bytes that do not compress much, different for every document.
fn blob(seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..BLOB_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

/// Documents in `mb` MiB of blobs.
fn mb_documents(mb: u64) -> u64 {
    mb * MIB / BLOB_BYTES as u64
}

/// Loads about `mb` MiB of documents into the one shard; answers how many.
async fn load_blobs(cluster: &Cluster, mb: u64) -> u64 {
    let count = mb_documents(mb);
    let url = cluster.node(1).url.clone();
    let batches: Vec<u64> = (0..count).step_by(16).collect();
    let results: Vec<Result<(), String>> = futures::stream::iter(batches)
        .map(|start| {
            let url = url.clone();
            async move {
                let batch: Vec<DocumentInput> = (start..(start + 16).min(count))
                    .map(|i| DocumentInput {
                        id: Some(format!("blob-{i}")),
                        vector: vector(i, DIMENSION),
                        metadata: json!({"blob": blob(i)}).as_object().cloned(),
                    })
                    .collect();
                GrapeClient::new(&url)
                    .default_collection()
                    .upsert_batch(&batch)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for result in results {
        result.unwrap();
    }
    count
}

/// Writes small documents through `node` (the holder) until its latest snapshot covers its
/// whole log, so that the move sends one snapshot of the whole shard, and the few membership
/// entries of the move do not reach the next snapshot (which would purge the log behind the
/// target and make the leader send a second one).
async fn snapshot_at_tip(node: &GrapeNode) {
    let client = node.client();
    let deadline = Instant::now() + Duration::from_secs(120);
    for pad in 0u64.. {
        assert!(Instant::now() < deadline, "no snapshot at the log's tip");
        let sync = client.sync_status().await.unwrap();
        let group = sync
            .groups
            .iter()
            .find(|g| g.name == "default/0")
            .expect("the shard's group");
        let (applied, snapshot) = (
            group.applied_index.unwrap_or(0),
            group.snapshot_index.unwrap_or(0),
        );
        if applied == snapshot {
            return;
        }
        if applied - snapshot >= SNAPSHOT_LOG_ENTRIES {
            // A snapshot is due or being built.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        client
            .default_collection()
            .upsert(&DocumentInput {
                id: Some(format!("pad-{pad}")),
                vector: vector(pad, DIMENSION),
                metadata: None,
            })
            .await
            .unwrap();
    }
}

/// The nodes holding a replica of the shard.
async fn holders(cluster: &Cluster) -> Vec<usize> {
    let spread = load::distribution(cluster).await.unwrap();
    spread
        .iter()
        .filter(|(_, (replicas, _, _))| *replicas == 1)
        .map(|(id, _)| Cluster::index_of(id))
        .collect()
}

/// The node holding the shard, before any move.
async fn holder(cluster: &Cluster) -> usize {
    let holders = holders(cluster).await;
    assert_eq!(holders.len(), 1, "the shard is held by {holders:?}");
    holders[0]
}

/// The shard's checksum and document count, as its holder reports them.
async fn checksum(node: &GrapeNode) -> (u64, String) {
    let sums = node.client().checksum().await.unwrap();
    let shard = sums.shards.first().expect("one shard");
    (shard.documents, shard.checksum.clone())
}

/// The move of the running drain, once it has a target, read from `via`.
async fn current_move(via: &GrapeNode) -> Option<MoveStatus> {
    let status = Operations::Migration.read(&via.client()).await.ok()?;
    status.running?;
    status.operations.first()?.moves.first().cloned()
}

/// Starts draining the node holding the shard; answers (holder, target) once the move has a
/// target.
async fn drain_holder(cluster: &Cluster) -> (usize, usize) {
    let from = holder(cluster).await;
    let via = if from == 1 { 2 } else { 1 };
    cluster
        .node(via)
        .client()
        .remove_node(&RemoveNodeRequest {
            node_id: format!("node-{from}"),
            force: false,
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(moving) = current_move(cluster.node(via)).await {
            return (from, Cluster::index_of(&moving.to));
        }
        assert!(Instant::now() < deadline, "the drain planned no move");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the drain to finish and checks the shard arrived whole on `to`.
async fn check_moved(cluster: &Cluster, to: usize, before: &(u64, String)) {
    load::wait_operation_done(cluster, Operations::Migration, Duration::from_secs(600))
        .await
        .unwrap();
    // The source drops its copy once it has left the group.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let holders = holders(cluster).await;
        if holders == [to] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shard is held by {holders:?}, not node-{to} alone"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let now = checksum(cluster.node(to)).await;
        if &now == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the moved shard differs: {now:?} against {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Readable document by document, and searchable, on its new node.
    let collection = cluster.node(to).client();
    let collection = collection.default_collection();
    let blobs = before.0.min(mb_documents(16));
    for i in [0, blobs / 2, blobs - 1] {
        let doc = collection.get(&format!("blob-{i}")).await.unwrap();
        assert_eq!(doc.metadata["blob"], json!(blob(i)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moving_a_large_shard_streams_it_in_bounded_memory_and_reports_bytes() {
    let mb: u64 = std::env::var("GRAPE_MOVE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let cluster = Cluster::start(3, options()).await;
    let started = Instant::now();
    let count = load_blobs(&cluster, mb).await;
    let loaded = started.elapsed();
    let from = holder(&cluster).await;
    snapshot_at_tip(cluster.node(from)).await;
    let before = checksum(cluster.node(from)).await;
    assert!(before.0 >= count, "{before:?}");
    // Every node at rest, its peak measured from here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rest: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| {
            n.reset_peak_memory();
            n.memory().unwrap().0
        })
        .collect();
    let started = Instant::now();
    let (from, to) = drain_holder(&cluster).await;
    let via = if from == 1 { 2 } else { 1 };
    // Progress as the drain reports it, while it runs.
    let mut reported = Vec::new();
    while let Some(moving) = current_move(cluster.node(via)).await {
        reported.push((moving.bytes_copied, moving.bytes_total));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_moved(&cluster, to, &before).await;
    let moved = started.elapsed();
    let installs = cluster
        .node(to)
        .log_text()
        .matches("installing a snapshot")
        .count();
    let peak = |i: usize| cluster.node(i).memory().unwrap().1;
    let (sender_peak, receiver_peak) = (peak(from), peak(to));
    let sender_growth = sender_peak.saturating_sub(rest[from - 1]);
    let receiver_growth = receiver_peak.saturating_sub(rest[to - 1]);
    // What the receiver holds for the shard itself (documents and index in memory), measured
    // apart from the move: its resident memory once restarted with the shard.
    let mut cluster = cluster;
    cluster.node_mut(to).restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let footprint = cluster
        .node(to)
        .memory()
        .unwrap()
        .0
        .saturating_sub(rest[to - 1]);
    let overhead = receiver_growth.saturating_sub(footprint);
    println!(
        "shard of {} MiB ({count} documents, loaded in {:.1} s) moved node-{from} -> node-{to} in {:.1} s; \
         sender peak {} MiB (+{} MiB over rest); receiver peak {} MiB (+{} MiB), of which the shard \
         itself holds {} MiB after a restart: move overhead {} MiB; {installs} install(s); progress seen: {:?}",
        before.0 * BLOB_BYTES as u64 / MIB,
        loaded.as_secs_f64(),
        moved.as_secs_f64(),
        sender_peak / MIB,
        sender_growth / MIB,
        receiver_peak / MIB,
        receiver_growth / MIB,
        footprint / MIB,
        overhead / MIB,
        reported
    );
    assert_eq!(installs, 1, "the move sent the shard once");
    assert!(
        sender_growth < 100 * MIB,
        "the sender grew by {} MiB",
        sender_growth / MIB
    );
    assert!(
        overhead < 100 * MIB,
        "the receiver grew by {} MiB beyond the shard's own {} MiB",
        overhead / MIB,
        footprint / MIB
    );
    assert!(
        reported
            .iter()
            .any(|(copied, total)| *copied > 0 && copied < total),
        "no partial progress was reported: {reported:?}"
    );
}

/// Waits until `check` holds, polling every 10 ms.
async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "never saw: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Directories of table files installs at `node` are staging.
fn staging(node: &GrapeNode) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(node.data_dir.path().join("ingest"))
        .map(|dir| dir.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// Bytes of table files an install at `node` is staging.
fn staged(node: &GrapeNode) -> u64 {
    staging(node)
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|files| files.filter_map(|f| f.ok()?.metadata().ok()))
        .map(|m| m.len())
        .sum()
}

/// Files of snapshots arriving at `node`.
fn incoming_files(node: &GrapeNode) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(node.data_dir.path().join("snapshots/incoming"))
        .map(|dir| dir.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

/// Bytes received so far of snapshots arriving at `node`.
fn receiving(node: &GrapeNode) -> u64 {
    std::fs::read_dir(node.data_dir.path().join("snapshots/incoming"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_receiver_mid_install_leaves_a_consistent_shard() {
    let mut cluster = Cluster::start(3, options()).await;
    load_blobs(&cluster, 96).await;
    let before = checksum(cluster.node(holder(&cluster).await)).await;
    let (_, to) = drain_holder(&cluster).await;
    // The last chunk has arrived and the install is writing the shard's table files.
    wait_for("the install writing", Duration::from_secs(120), || {
        staged(cluster.node(to)) > 8 * MIB
    })
    .await;
    let files = staging(cluster.node(to));
    cluster.node_mut(to).kill9();
    let log = cluster.node(to).log_text();
    assert!(
        !log.contains("installed a snapshot"),
        "the install had finished before the kill"
    );
    cluster.node_mut(to).restart().await;
    let left: Vec<_> = files.iter().filter(|f| f.exists()).collect();
    assert!(left.is_empty(), "staged files survive a restart: {left:?}");
    check_moved(&cluster, to, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_either_side_mid_transfer_leaves_a_consistent_shard() {
    let mut cluster = Cluster::start(3, options()).await;
    let count = load_blobs(&cluster, 96).await;
    let before = checksum(cluster.node(holder(&cluster).await)).await;
    let (from, to) = drain_holder(&cluster).await;
    let total = count * BLOB_BYTES as u64;
    // A third of the snapshot has arrived: kill the sender (the shard's only replica).
    wait_for("a third received", Duration::from_secs(120), || {
        receiving(cluster.node(to)) > total / 3
    })
    .await;
    cluster.node_mut(from).kill9();
    cluster.node_mut(from).restart().await;
    // The next attempt starts over; kill the receiver a third of the way through it.
    wait_for("a new transfer", Duration::from_secs(120), || {
        let received = receiving(cluster.node(to));
        received > 0 && received < total / 4
    })
    .await;
    wait_for("a third received again", Duration::from_secs(120), || {
        receiving(cluster.node(to)) > total / 3
    })
    .await;
    let partial = incoming_files(cluster.node(to));
    cluster.node_mut(to).kill9();
    cluster.node_mut(to).restart().await;
    let left: Vec<_> = partial.iter().filter(|f| f.exists()).collect();
    assert!(
        left.is_empty(),
        "half-received files survive a restart: {left:?}"
    );
    check_moved(&cluster, to, &before).await;
}
