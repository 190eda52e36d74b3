//! `grape-elastic`: grows a 3-node cluster holding 50,000 documents (16 shards, replication
//! factor 3) to 4 and 5 nodes with add-node + rebalance, then shrinks it back with remove-node,
//! and prints what each node holds at every step and how long each operation took.
//!
//! ```sh
//! cargo build --release --bins && cargo run --release -p grape-e2e --bin grape-elastic
//! ```

use grape_client::{RebalanceRequest, RemoveNodeRequest};
use grape_e2e::load::{self, DIMENSION};
use grape_e2e::{Cluster, NodeOptions};
use std::time::{Duration, Instant};

fn main() -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(run())
}

fn row(
    step: &str,
    took: Option<Duration>,
    dist: &std::collections::BTreeMap<String, (usize, usize, u64)>,
) {
    let docs: Vec<String> = dist
        .iter()
        .map(|(n, (_, _, d))| format!("{n}: {d}"))
        .collect();
    let replicas: Vec<String> = dist
        .iter()
        .map(|(n, (r, l, _))| format!("{n}: {r}/{l}"))
        .collect();
    println!(
        "| {step} | {} | {} | {} |",
        took.map(|t| format!("{:.1} s", t.as_secs_f64()))
            .unwrap_or_else(|| "-".into()),
        docs.join(", "),
        replicas.join(", ")
    );
}

async fn run() -> Result<(), String> {
    let options = NodeOptions::dimension(DIMENSION)
        .setting("DATABASE__SHARD_COUNT", "16")
        .setting("CLUSTER__MAX_CONCURRENT_MOVES", "4");
    let mut cluster = Cluster::start(3, options).await;
    load::load_base_documents(&cluster, 50_000).await?;
    println!("| step | operation took | documents per node | replicas/shards led per node |");
    println!("|---|---|---|---|");
    row("3 nodes", None, &load::distribution(&cluster).await?);
    for _ in 0..2 {
        load::grow(&mut cluster).await?;
        let started = Instant::now();
        cluster
            .node(1)
            .client()
            .rebalance(&RebalanceRequest {
                strategy: Some("even_distribution".into()),
            })
            .await
            .map_err(|e| e.to_string())?;
        load::wait_operation_done(
            &cluster,
            load::Operations::Rebalance,
            Duration::from_secs(600),
        )
        .await?;
        let took = started.elapsed();
        let n = cluster.nodes.len();
        row(
            &format!("add node-{n}, rebalance"),
            Some(took),
            &load::distribution(&cluster).await?,
        );
    }
    for i in [5usize, 4] {
        let started = Instant::now();
        cluster
            .node(1)
            .client()
            .remove_node(&RemoveNodeRequest {
                node_id: format!("node-{i}"),
                force: false,
            })
            .await
            .map_err(|e| e.to_string())?;
        load::wait_operation_done(
            &cluster,
            load::Operations::Migration,
            Duration::from_secs(600),
        )
        .await?;
        let took = started.elapsed();
        cluster.node_mut(i).kill9();
        row(
            &format!("remove node-{i}"),
            Some(took),
            &load::distribution(&cluster).await?,
        );
    }
    load::converged(&cluster, Duration::from_secs(60)).await?;
    println!("\nAfter shrinking back: replica checksums equal on the three nodes.");
    Ok(())
}
