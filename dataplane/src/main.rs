//! `grape`: one Grape node.

use anyhow::Context;
use clap::Parser;
use grape_dataplane::cluster::Node;
use grape_dataplane::config::{Config, Overrides};
use grape_dataplane::server::{self, Listeners};
use std::io::IsTerminal;

/// Grape vector database node. With no arguments: a single node on 127.0.0.1:8080 with its
/// data in ./grape-data.
#[derive(Debug, Parser)]
#[command(name = "grape", version, about)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    /// Print the effective configuration as YAML-compatible JSON and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match Config::load(&cli.overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("grape: {error}");
            std::process::exit(2);
        }
    };
    if cli.print_config {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},hnsw_rs=warn", config.monitoring.log_level))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    for key in config.inert_keys() {
        tracing::warn!(
            "{key} is accepted for compatibility with the deployment guide but has no effect in this version"
        );
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.performance.num_threads > 0 {
        runtime.worker_threads(config.performance.num_threads);
    }
    runtime.enable_all().build()?.block_on(async move {
        let listeners = Listeners::bind(&config)?;
        let node = Node::open(config).await.context("cannot open the node")?;
        server::run(node, listeners, shutdown_signal()).await
    })
}

/// Ctrl-C or SIGTERM (what Kubernetes and docker send).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return interrupt.await.unwrap_or(()),
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
}
