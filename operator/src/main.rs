//! `grape-operator`: runs the GrapeCluster controller (while it holds the leader Lease) and
//! serves `/metrics` and `/health`.

#![forbid(unsafe_code)]

use axum::Router;
use axum::routing::get;
use clap::Parser;
use grape_operator::{controller, lease, metrics::Metrics};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Kubernetes operator for Grape vector database clusters"
)]
struct Args {
    /// Address of the `/metrics` and `/health` listener.
    #[arg(long, env = "GRAPE_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Namespace of the leader-election Lease (normally the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "grape-operator-leader")]
    lease_name: String,
    /// This replica's identity in the Lease (normally its pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Act without leader election (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let metrics = Metrics::new();
    let leading = Arc::new(AtomicBool::new(false));

    let served = metrics.clone();
    let flag = Arc::clone(&leading);
    let app = Router::new()
        .route("/metrics", get(move || async move { served.render() }))
        .route("/health", get(|| async { "ok" }))
        .route(
            "/leader",
            get(move || async move { flag.load(Ordering::Relaxed).to_string() }),
        );
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    tracing::info!(address = %args.listen, "metrics and health listening");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = kube::Client::try_default().await?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("grape-operator-{}", std::process::id()));
    if !args.no_leader_election {
        lease::acquire(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
        )
        .await;
    }
    leading.store(true, Ordering::Relaxed);
    let renew = {
        let (client, ns, name, me) = (
            client.clone(),
            args.lease_namespace.clone(),
            args.lease_name.clone(),
            identity.clone(),
        );
        async move {
            if args.no_leader_election {
                std::future::pending::<()>().await;
            }
            lease::hold(client, &ns, &name, &me).await;
        }
    };
    tokio::select! {
        _ = controller::run(client.clone(), metrics, args.namespace.clone()) => {
            // Stopped by a signal: give the lease up, so that another replica takes over now
            // rather than after the lease's duration.
            if !args.no_leader_election {
                let api = kube::Api::namespaced(client, &args.lease_namespace);
                if let Err(e) = lease::release(&api, &args.lease_name, &identity).await {
                    tracing::warn!(error = %e, "releasing the leader lease");
                }
            }
            Ok(())
        }
        _ = renew => {
            // Another replica may act from now on: stop at once.
            anyhow::bail!("lost leadership")
        }
    }
}
