//! Serving a node: binds nothing itself. [`run`] takes bound listeners and a shutdown future,
//! so tests and the benchmark can bind port 0, run a real server in-process and stop it cleanly.

use crate::api::auth::KeyStore;
use crate::api::metrics::Metrics;
use crate::api::{self, AppState, SlowQueryLog};
use crate::cluster::Node;
use anyhow::Context;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

/// Listeners a node serves on.
#[derive(Debug)]
pub struct Listeners {
    /// The client API (`node.listen_address`).
    pub api: TcpListener,
    /// The unauthenticated metrics endpoint (`monitoring.metrics_port`), if enabled.
    pub metrics: Option<TcpListener>,
    /// Node-to-node traffic (`node.raft_address`); taken by [`Node::start`].
    pub raft: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses the configuration names.
    pub fn bind(config: &crate::config::Config) -> anyhow::Result<Listeners> {
        let api = TcpListener::bind(&config.node.listen_address).with_context(|| {
            format!(
                "cannot listen on node.listen_address {}",
                config.node.listen_address
            )
        })?;
        let metrics = match config.metrics_address() {
            Some(address) => Some(TcpListener::bind(&address).with_context(|| {
                format!("cannot listen on monitoring.metrics_port ({address})")
            })?),
            None => None,
        };
        let raft = TcpListener::bind(&config.node.raft_address).with_context(|| {
            format!(
                "cannot listen on node.raft_address {}",
                config.node.raft_address
            )
        })?;
        Ok(Listeners {
            api,
            metrics,
            raft: Some(raft),
        })
    }
}

/// Binds the configured addresses, starts the node and serves it until `shutdown` completes.
pub async fn start_and_run(
    config: crate::config::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut listeners = Listeners::bind(&config)?;
    let raft = listeners
        .raft
        .take()
        .context("the raft listener is bound")?;
    let api = listeners.api.local_addr()?;
    let node = crate::cluster::start(config, raft, api)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the node: {e}"))?;
    run(node, listeners, shutdown).await
}

/// Builds the shared state of the HTTP layer for a node.
pub fn app_state(node: Arc<Node>) -> anyhow::Result<AppState> {
    let config = node.config();
    let keys = if config.auth_enabled() {
        let path = config
            .security
            .api_keys_file
            .as_ref()
            .context("authentication is on but security.api_keys_file is not set")?;
        KeyStore::load(path).map_err(|e| anyhow::anyhow!("{e}"))?
    } else {
        KeyStore::disabled()
    };
    Ok(AppState {
        metrics: Arc::new(Metrics::new(node.id())?),
        keys: Arc::new(keys),
        slow_queries: Arc::new(SlowQueryLog::default()),
        node,
    })
}

/// Serves the API (and metrics) until `shutdown` completes, then drains in-flight requests
/// for up to 10 s.
pub async fn run(
    node: Arc<Node>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = app_state(Arc::clone(&node))?;
    let config = node.config().clone();
    let handle = Handle::new();
    let api_addr = listeners.api.local_addr()?;
    let scheme = if config.security.enable_tls {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        node_id = %node.id(),
        auth = state.keys.enabled(),
        "api listening on {scheme}://{api_addr}"
    );

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.metrics {
        let addr = listener.local_addr()?;
        tracing::info!("metrics listening on http://{addr}/metrics");
        let app = api::metrics_router(state.clone());
        let server = axum_server::from_tcp(listener)?.handle(handle.clone());
        tasks.spawn(async move {
            server
                .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                .await
        });
    }
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    if config.security.enable_tls {
        let (cert, key) = match (&config.security.cert_file, &config.security.key_file) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                anyhow::bail!("security.enable_tls needs security.cert_file and security.key_file")
            }
        };
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let tls = RustlsConfig::from_pem_file(&cert, &key)
            .await
            .with_context(|| {
                format!(
                    "cannot load TLS certificate {} / key {}",
                    cert.display(),
                    key.display()
                )
            })?;
        let server = axum_server::from_tcp_rustls(listeners.api, tls)?.handle(handle.clone());
        tasks.spawn(async move { server.serve(app).await });
    } else {
        let server = axum_server::from_tcp(listeners.api)?.handle(handle.clone());
        tasks.spawn(async move { server.serve(app).await });
    }

    let requested = Arc::clone(&node);
    tokio::select! {
        _ = requested.exit_requested() => {
            tracing::warn!("stopping at this node's own request");
            node.set_unready();
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        }
        _ = shutdown => {
            tracing::info!("shutting down: draining requests");
            node.set_unready();
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        }
        Some(result) = tasks.join_next() => {
            handle.shutdown();
            result??;
            anyhow::bail!("a listener stopped unexpectedly");
        }
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    node.shutdown().await;
    Ok(())
}
