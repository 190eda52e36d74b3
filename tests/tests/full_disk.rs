//! Full disks, on real nodes whose data directories are small tmpfs volumes: before a volume
//! fills, writes are refused with 507 `insufficient_storage` naming the node; reads, searches
//! and deletes go on; once space is freed, writes resume without a restart, and every
//! acknowledged write is still there.

use grape_client::{Consistency, DocumentInput, ErrorCode, SearchRequest};
use grape_e2e::load::{self, DIMENSION};
use grape_e2e::{Cluster, NodeOptions, vector};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Each node's volume, its reserve, and a ballast file that stands for "other data" the
/// operator can delete.
const VOLUME_MB: u64 = 192;
const RESERVE_MB: u64 = 48;
const BALLAST_MB: usize = 48;

fn batch(start: u64, count: u64) -> Vec<DocumentInput> {
    (start..start + count)
        .map(|i| DocumentInput {
            id: Some(format!("doc-{i}")),
            vector: vector(i, DIMENSION),
            // 16 KiB of metadata: the volume fills in a few hundred batches.
            metadata: json!({"i": i, "pad": "x".repeat(16 * 1024)})
                .as_object()
                .cloned(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filling_disk_refuses_writes_keeps_serving_reads_and_resumes_once_space_is_freed() {
    let options = NodeOptions::dimension(DIMENSION)
        .on_tmpfs(VOLUME_MB)
        .setting("DATABASE__MIN_FREE_DISK_MB", &RESERVE_MB.to_string())
        .setting("DATABASE__WRITE_BUFFER_SIZE_MB", "4")
        .setting("DATABASE__SHARD_COUNT", "2");
    let cluster = Cluster::start(3, options).await;
    for node in &cluster.nodes {
        std::fs::write(
            node.data_dir.path().join("ballast"),
            vec![7u8; BALLAST_MB << 20],
        )
        .unwrap();
    }
    let client = cluster.node(1).client();
    let documents = client.default_collection();

    // Write until refused; every answer is a success or the 507.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut next = 0u64;
    let refusal = loop {
        assert!(next < 20_000, "never refused after {next} documents");
        match documents.upsert_batch(&batch(next, 20)).await {
            Ok(answer) => {
                for (k, id) in answer.ids.into_iter().enumerate() {
                    acked.insert(id, next + k as u64);
                }
                next += 20;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(
        refusal.error_code(),
        Some(ErrorCode::InsufficientStorage),
        "{refusal}"
    );
    assert!(refusal.to_string().contains("node-"), "{refusal}");
    assert!(
        acked.len() >= 500,
        "refused after only {} documents",
        acked.len()
    );
    // Refused before the volume was full: every node still has about the reserve free.
    for node in &cluster.nodes {
        let fs = free_mb(node.data_dir.path());
        assert!(
            fs >= RESERVE_MB / 2,
            "{} MiB free on {:?}",
            fs,
            node.data_dir.path()
        );
    }
    // The cluster records which nodes are low (each node checks every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let low = loop {
        let status = load::cluster_status(&cluster).await.unwrap();
        if !status.low_disk.is_empty() {
            break status.low_disk;
        }
        assert!(
            Instant::now() < deadline,
            "no node recorded as low: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Once recorded, the refusal holds on every node (a leader that is not low itself learns
    // it from the record), for single upserts too, and for a new collection.
    for node in &cluster.nodes {
        let e = node
            .client()
            .default_collection()
            .upsert(&batch(next, 1)[0])
            .await
            .unwrap_err();
        assert_eq!(e.error_code(), Some(ErrorCode::InsufficientStorage), "{e}");
    }
    let metrics = cluster
        .node(Cluster::index_of(&low[0]))
        .client()
        .metrics_text()
        .await
        .unwrap();
    assert!(metrics.contains("grape_db_disk_low 1"), "{metrics}");

    // Reads, searches and deletes go on; every node stays ready.
    let (first, _) = acked.iter().next().unwrap();
    let read = documents
        .get_with(first, Consistency::Strong)
        .await
        .unwrap();
    assert_eq!(read.id, *first);
    let found = documents
        .search(&SearchRequest::new(vector(3, DIMENSION), 5))
        .await
        .unwrap();
    assert_eq!(found.results.len(), 5);
    let last = acked.keys().next_back().unwrap().clone();
    assert!(documents.delete(&last).await.unwrap().deleted);
    acked.remove(&last);
    for node in &cluster.nodes {
        assert!(
            node.client().ready().await.unwrap(),
            "a node stopped being ready"
        );
    }

    // Space freed: writes resume by themselves.
    for node in &cluster.nodes {
        std::fs::remove_file(node.data_dir.path().join("ballast")).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match documents.upsert_batch(&batch(next, 20)).await {
            Ok(answer) => {
                for (k, id) in answer.ids.into_iter().enumerate() {
                    acked.insert(id, next + k as u64);
                }
                break;
            }
            Err(e) => {
                assert_eq!(e.error_code(), Some(ErrorCode::InsufficientStorage), "{e}");
                assert!(Instant::now() < deadline, "writes did not resume: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = load::cluster_status(&cluster).await.unwrap();
        if status.low_disk.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still recorded low: {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing acknowledged was lost, on any node.
    let strong_reads = acked.keys().step_by(7).cloned().collect::<Vec<_>>();
    for node in &cluster.nodes {
        let documents = node.client();
        for id in &strong_reads {
            documents
                .default_collection()
                .get_with(id, Consistency::Strong)
                .await
                .unwrap_or_else(|e| panic!("{id} lost: {e}"));
        }
    }
    let sums = load::converged(&cluster, Duration::from_secs(60))
        .await
        .unwrap();
    let total: u64 = sums.iter().map(|s| s.documents).sum();
    assert_eq!(total, acked.len() as u64);
}

/// Free MiB on the filesystem holding `path`.
fn free_mb(path: &std::path::Path) -> u64 {
    let output = std::process::Command::new("df")
        .args(["--output=avail", "-m"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// Without the reserve (`min_free_disk_mb: 0`) the volume fills up and RocksDB's writes fail:
/// nothing is acknowledged that was not stored, the node stops writing (its groups are reported
/// failed) or RocksDB aborts it, and a restart on a volume with room again serves every
/// acknowledged write and takes new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_reserve_a_full_disk_stops_its_groups_and_loses_nothing_acknowledged() {
    let options = NodeOptions::dimension(DIMENSION)
        .on_tmpfs(96)
        .setting("DATABASE__MIN_FREE_DISK_MB", "0")
        .setting("DATABASE__WRITE_BUFFER_SIZE_MB", "4")
        .setting("DATABASE__SHARD_COUNT", "2");
    let mut cluster = Cluster::start(1, options).await;
    let documents = cluster.node(1).client();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut next = 0u64;
    let failure = loop {
        assert!(next < 20_000, "never failed after {next} documents");
        match documents
            .default_collection()
            .upsert_batch(&batch(next, 20))
            .await
        {
            Ok(answer) => {
                for (k, id) in answer.ids.into_iter().enumerate() {
                    acked.insert(id, next + k as u64);
                }
                next += 20;
            }
            Err(e) => break e,
        }
    };
    // Either the node answered the failed write with a 5xx and reports its stopped groups,
    // or RocksDB aborted the process (Debian's build asserts when a WAL sync follows a failed
    // append on another thread). Both keep the promise: nothing unacknowledged was claimed.
    match failure.status() {
        Some(status) => {
            assert!(status.is_server_error(), "{failure}");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let shards = documents.shard_stats().await.unwrap();
                if shards.shards.iter().any(|s| s.failed.is_some()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no failed shard reported: {shards:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        None => {
            // The log is read from the process's stderr by another thread.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(
                cluster.node(1).log_text().contains("Assertion"),
                "no answer, and no abort: {failure}\n{}",
                cluster.node(1).log_text()
            );
        }
    }
    // More room, a restart: everything acknowledged is there, and writes work again.
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,size=256m"])
        .arg(cluster.node(1).data_dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    cluster.node_mut(1).restart().await;
    let documents = cluster.node(1).client();
    for id in acked.keys() {
        documents
            .default_collection()
            .get_with(id, Consistency::Strong)
            .await
            .unwrap_or_else(|e| panic!("{id} lost: {e}"));
    }
    documents
        .default_collection()
        .upsert_batch(&batch(next, 20))
        .await
        .unwrap();
}
