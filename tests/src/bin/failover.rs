//! `grape-failover`: measures how long writes and searches take to resume after the leader of
//! the meta group or of a shard group is killed with SIGKILL, under steady write load, over
//! many kills; then checks that no acknowledged write was lost.
//!
//! ```sh
//! cargo build --release --bins && cargo run --release -p grape-e2e --bin grape-failover -- --kills 12
//! ```

use grape_e2e::load::{self, DIMENSION, Writers, urls_of};
use grape_e2e::{Cluster, NodeOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn main() -> Result<(), String> {
    let mut kills = 12usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kills" => {
                kills = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--kills needs a number")?
            }
            other => return Err(format!("unknown argument {other}; use --kills N")),
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(measure(kills))
}

fn median_and_max(mut values: Vec<Duration>) -> (Duration, Duration) {
    values.sort();
    (values[values.len() / 2], values[values.len() - 1])
}

async fn measure(kills: usize) -> Result<(), String> {
    let mut cluster = Cluster::start(3, NodeOptions::dimension(DIMENSION)).await;
    let urls = Arc::new(Mutex::new(urls_of(&cluster)));
    let writers = Writers::start(Arc::clone(&urls), 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rows = Vec::new();
    for kill in 0..kills {
        let group = if kill % 2 == 0 {
            "meta".to_string()
        } else {
            format!("default/{}", (kill / 2) % 2)
        };
        let victim = load::leader_of(&cluster, &group).await?;
        let recovery = load::kill_and_time_recovery(&mut cluster, victim).await?;
        eprintln!(
            "kill {}: leader of {group} (node-{victim}): writes resumed after {:?}, searches after {:?}",
            kill + 1,
            recovery.writes,
            recovery.searches
        );
        rows.push((group, recovery));
        cluster.node_mut(victim).restart_unready().await;
        *urls.lock().map_err(|e| e.to_string())? = urls_of(&cluster);
        for node in &cluster.nodes {
            node.wait_ready().await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let acked = writers.stop().await;
    load::check_all_present(&cluster, &acked).await?;
    load::converged(&cluster, Duration::from_secs(60)).await?;

    println!(
        "| killed leader of | kills | writes resume median | max | searches resume median | max |"
    );
    println!("|---|---|---|---|---|---|");
    for label in ["meta", "shard"] {
        let selected: Vec<_> = rows
            .iter()
            .filter(|(g, _)| (label == "meta") == (g == "meta"))
            .map(|(_, r)| *r)
            .collect();
        if selected.is_empty() {
            continue;
        }
        let (wm, wx) = median_and_max(selected.iter().map(|r| r.writes).collect());
        let (sm, sx) = median_and_max(selected.iter().map(|r| r.searches).collect());
        println!(
            "| {label} group | {} | {:.2} s | {:.2} s | {:.3} s | {:.3} s |",
            selected.len(),
            wm.as_secs_f64(),
            wx.as_secs_f64(),
            sm.as_secs_f64(),
            sx.as_secs_f64()
        );
    }
    println!(
        "\n{} acknowledged writes during the run; every one read back with strong consistency from every node; replica checksums equal.",
        acked.len()
    );
    Ok(())
}
