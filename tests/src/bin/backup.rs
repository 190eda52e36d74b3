//! `grape-backup`: backup and restore throughput with real processes. Loads `--count`
//! documents of `--dim` dimensions into a cluster of `--nodes`, then `--runs` times: backs the
//! cluster up into a directory and restores the backup into a fresh cluster of the same size,
//! timing each from the request to the recorded end. Prints one row per run and the medians.
//!
//! ```sh
//! cargo build --release --bins && cargo run --release -p grape-e2e --bin grape-backup -- --count 100000 --dim 128
//! ```

use clap::Parser;
use grape_client::{BackupRequest, BackupState, DocumentInput, GrapeClient, RestoreRequest};
use grape_e2e::{Cluster, NodeOptions, vector};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Nodes in the source and in each restored cluster.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    #[arg(long, default_value_t = 8)]
    shards: u32,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn main() -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(run(Args::parse()))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run(args: Args) -> Result<(), String> {
    let options =
        NodeOptions::dimension(args.dim).setting("DATABASE__SHARD_COUNT", &args.shards.to_string());
    let source = Cluster::start(args.nodes, options.clone()).await;
    let client = source.node(1).client();
    let loaded = Instant::now();
    for start in (0..args.count).step_by(1000) {
        let batch: Vec<DocumentInput> = (start..(start + 1000).min(args.count))
            .map(|i| DocumentInput {
                id: Some(format!("doc-{i}")),
                vector: vector(i, args.dim),
                metadata: serde_json::json!({"i": i, "group": i % 100})
                    .as_object()
                    .cloned(),
            })
            .collect();
        client
            .default_collection()
            .upsert_batch(&batch)
            .await
            .map_err(|e| e.to_string())?;
    }
    eprintln!(
        "loaded {} x {} into {} node(s) in {:.1} s",
        args.count,
        args.dim,
        args.nodes,
        loaded.elapsed().as_secs_f64()
    );
    println!(
        "| run | backup s | backup MB/s | backup docs/s | restore s | restore MB/s | restore docs/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    let (mut backup_rates, mut restore_rates) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let started = Instant::now();
        let info = client
            .start_backup(&BackupRequest {
                destination: format!("file://{}", dir.path().display()),
                collections: None,
                tag: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        let info = loop {
            let now = client.backup(&info.id).await.map_err(|e| e.to_string())?;
            if now.state != BackupState::Running {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let backup = started.elapsed().as_secs_f64();
        if info.state != BackupState::Done {
            return Err(format!("the backup failed: {info:?}"));
        }
        let target = Cluster::start(args.nodes, options.clone()).await;
        let restore_client: GrapeClient = target.node(1).client();
        let started = Instant::now();
        restore_client
            .start_restore(&RestoreRequest {
                source: format!("file://{}", dir.path().display()),
                backup_id: Some(info.id.clone()),
                collections: None,
                rename: BTreeMap::new(),
            })
            .await
            .map_err(|e| e.to_string())?;
        let restored = loop {
            let all = restore_client.restores().await.map_err(|e| e.to_string())?;
            if let Some(r) = all.restores.into_iter().find(|r| r.backup_id == info.id)
                && r.state != BackupState::Running
            {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let restore = started.elapsed().as_secs_f64();
        if restored.state != BackupState::Done || restored.documents_restored != args.count {
            return Err(format!("the restore failed: {restored:?}"));
        }
        let mb = info.bytes as f64 / 1e6;
        let docs = info.documents as f64;
        println!(
            "| {run} | {backup:.2} | {:.0} | {:.0} | {restore:.2} | {:.0} | {:.0} |",
            mb / backup,
            docs / backup,
            mb / restore,
            docs / restore
        );
        backup_rates.push((mb / backup, docs / backup, backup));
        restore_rates.push((mb / restore, docs / restore, restore));
    }
    let pick = |rates: &[(f64, f64, f64)], i: usize| {
        median(rates.iter().map(|r| [r.0, r.1, r.2][i]).collect())
    };
    println!(
        "| median | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
        pick(&backup_rates, 2),
        pick(&backup_rates, 0),
        pick(&backup_rates, 1),
        pick(&restore_rates, 2),
        pick(&restore_rates, 0),
        pick(&restore_rates, 1)
    );
    Ok(())
}
