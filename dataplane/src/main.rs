//! `grape`: one Grape node, or (`grape dev-cluster`) a local cluster of them.

use clap::Parser;
use grape_dataplane::config::{Config, Overrides};
use grape_dataplane::server;
use std::io::IsTerminal;

/// Grape vector database node. With no arguments: a single node on 127.0.0.1:8080 with its
/// data in ./grape-data.
#[derive(Debug, Parser)]
#[command(name = "grape", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    overrides: Overrides,
    /// Print the effective configuration as JSON and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Runs a local cluster for development: N nodes on 127.0.0.1, each a child process with
    /// its own data directory. Ctrl-C stops them all.
    DevCluster(dev_cluster::Args),
    /// Prints a bcrypt hash of a password read from standard input (a prompt without echo
    /// on a terminal; else the first line), for `password_hash` in the `rbac.users` block.
    /// The password never appears in the command line or the shell's history.
    HashPassword(hash_password::Args),
    /// Prepares a new node to start from a backup: downloads it into the data directory and
    /// checks every file (a corrupt or truncated backup is refused and leaves nothing). The
    /// node restores it once the cluster has formed. Run it on one node of a new cluster.
    Restore(restore::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::DevCluster(args)) => return dev_cluster::run(args),
        Some(Command::HashPassword(args)) => return hash_password::run(args),
        Some(Command::Restore(args)) => return restore::run(args, cli.overrides),
        None => {}
    }
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
        tracing_subscriber::EnvFilter::new(format!(
            "{},hnsw_rs=warn,openraft=warn",
            config.monitoring.log_level
        ))
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
    runtime
        .enable_all()
        .build()?
        .block_on(server::start_and_run(config, shutdown_signal()))
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

mod dev_cluster {
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// Nodes to run.
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Parent of the nodes' data directories (node-1, node-2, ...).
        #[arg(long, default_value = "./grape-dev")]
        data_dir: PathBuf,
        /// API port of node-1; node-N listens on this + N - 1.
        #[arg(long, default_value_t = 8080)]
        api_port: u16,
        /// Raft port of node-1; node-N listens on this + N - 1.
        #[arg(long, default_value_t = 9000)]
        raft_port: u16,
        /// Metrics port of node-1; node-N listens on this + N - 1.
        #[arg(long, default_value_t = 9091)]
        metrics_port: u16,
        /// A configuration file every node reads (its node and cluster keys are overridden).
        #[arg(long)]
        config: Option<PathBuf>,
    }

    pub fn run(args: Args) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let secret = cluster_secret(&args.data_dir)?;
        let peers: Vec<String> = (1..=args.nodes)
            .map(|i| format!("node-{i}=127.0.0.1:{}", args.raft_port + i - 1))
            .collect();
        let mut children = Vec::new();
        for i in 1..=args.nodes {
            let id = format!("node-{i}");
            let mut command = Command::new(&exe);
            if let Some(config) = &args.config {
                command.arg("--config").arg(config);
            }
            command
                .arg("--node-id")
                .arg(&id)
                .arg("--listen-address")
                .arg(format!("127.0.0.1:{}", args.api_port + i - 1))
                .arg("--raft-address")
                .arg(format!("127.0.0.1:{}", args.raft_port + i - 1))
                .arg("--metrics-port")
                .arg((args.metrics_port + i - 1).to_string())
                .arg("--data-dir")
                .arg(args.data_dir.join(&id))
                .env("GRAPE__CLUSTER__ENABLED", "true")
                .env("GRAPE__CLUSTER__SECRET_FILE", &secret)
                .env("GRAPE_CLUSTER_PEERS", peers.join(","))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = command.spawn()?;
            for stream in [
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            ]
            .into_iter()
            .flatten()
            {
                let id = id.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        eprintln!("[{id}] {line}");
                    }
                });
            }
            eprintln!(
                "{id}: http://127.0.0.1:{} (raft 127.0.0.1:{}, metrics :{})",
                args.api_port + i - 1,
                args.raft_port + i - 1,
                args.metrics_port + i - 1
            );
            children.push(child);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(super::shutdown_signal());
        for child in &children {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for mut child in children {
            let _ = child.wait();
        }
        Ok(())
    }

    /// The secret the local cluster's nodes prove to each other: `DATA_DIR/cluster.secret`,
    /// made (random, readable by this user only) on first use.
    fn cluster_secret(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("cluster.secret");
        if !path.exists() {
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?
                .write_all(format!("{secret}\n").as_bytes())?;
        }
        Ok(path)
    }
}

mod hash_password {
    use grape_dataplane::api::rbac::MAX_BCRYPT_COST;
    use std::io::{BufRead, IsTerminal};

    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// bcrypt cost: each step doubles the work of hashing and of every login.
        #[arg(long, default_value_t = MAX_BCRYPT_COST, value_parser = clap::value_parser!(u32).range(4..=MAX_BCRYPT_COST as i64))]
        cost: u32,
    }

    pub fn run(args: Args) -> anyhow::Result<()> {
        let password = if std::io::stdin().is_terminal() {
            let first = rpassword::prompt_password("Password: ")?;
            let again = rpassword::prompt_password("Again: ")?;
            anyhow::ensure!(first == again, "the two passwords differ");
            first
        } else {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        };
        anyhow::ensure!(!password.is_empty(), "the password is empty");
        anyhow::ensure!(
            password.len() <= 72,
            "the password is {} bytes long; bcrypt reads only the first 72",
            password.len()
        );
        println!("{}", bcrypt::hash(password, args.cost)?);
        Ok(())
    }
}

mod restore {
    use grape_client::RestoreRequest;
    use grape_dataplane::config::{Config, Overrides};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    #[derive(Debug, clap::Args)]
    pub struct Args {
        /// Where the backup was written: file:///dir or s3://bucket/prefix.
        #[arg(long, value_name = "URI")]
        from: String,
        /// Which backup; the newest complete one when absent.
        #[arg(long)]
        backup_id: Option<String>,
        /// A collection to restore (repeatable); all when absent.
        #[arg(long = "collection", value_name = "NAME")]
        collections: Vec<String>,
        /// OLD=NEW: restore a collection under a new name (repeatable).
        #[arg(long, value_name = "OLD=NEW")]
        rename: Vec<String>,
        /// The new node's data directory (node.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The node's configuration file (for node.data_dir and backup.credentials_file).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    }

    pub fn run(args: Args, overrides: Overrides) -> anyhow::Result<()> {
        let overrides = Overrides {
            config: args.config.or(overrides.config),
            data_dir: args.data_dir.or(overrides.data_dir),
            ..overrides
        };
        let config = Config::load(&overrides).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut rename = BTreeMap::new();
        for pair in &args.rename {
            let (old, new) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--rename takes OLD=NEW, not {pair:?}"))?;
            rename.insert(old.to_string(), new.to_string());
        }
        let request = RestoreRequest {
            source: args.from,
            backup_id: args.backup_id,
            collections: (!args.collections.is_empty()).then_some(args.collections),
            rename,
        };
        let data_dir = config.node.data_dir.clone();
        std::fs::create_dir_all(&data_dir)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let manifest = runtime
            .block_on(grape_dataplane::cluster::backup::restore::prepare_offline(
                &data_dir, request, &config,
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "backup {} ({} documents, {} bytes, {} collections) is checked and staged in {}; start the node to restore it",
            manifest.id,
            manifest.documents,
            manifest.bytes,
            manifest.collections.len(),
            data_dir.join("restore").display()
        );
        Ok(())
    }
}
