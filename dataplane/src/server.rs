//! Serving a node. [`serve`] takes bound listeners and a shutdown future, so tests and the
//! benchmark bind port 0, run a real node in their own process ([`InProcessNode`]) and stop it
//! cleanly; [`start_and_run`] is the binary's entry.

use crate::api::keys::{FailureLimits, Keys, SecurityFiles};
use crate::api::metrics::Metrics;
use crate::api::{self, AppState, SlowQueryLog};
use crate::cluster::Node;
use crate::cluster::server::bounded;
use crate::config::parse_net;
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
    /// Node-to-node traffic (`node.raft_address`); taken when the node starts ([`serve`]).
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

/// Binds the configured addresses, starts the node and serves it until `shutdown` completes
/// (the `grape` binary's entry).
pub async fn start_and_run(
    config: crate::config::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config)?;
    serve(config, listeners, shutdown).await
}

/// Starts a node on bound `listeners` and serves it until `shutdown` completes, then drains
/// requests and stops the node. Binds nothing itself: a caller binds port 0 and runs a real
/// node in its own process (see [`InProcessNode`]).
pub async fn serve(
    config: crate::config::Config,
    mut listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The security files are read before the data directory is opened: a mistake in them
    // stops the start with nothing touched.
    let keys = keys_for(&config)?;
    let node = start_node(config, &mut listeners).await?;
    run(app_state_with(node, keys)?, listeners, shutdown).await
}

/// Opens the node on the listeners' addresses and starts its node-to-node service (which
/// takes the Raft listener).
async fn start_node(
    config: crate::config::Config,
    listeners: &mut Listeners,
) -> anyhow::Result<Arc<Node>> {
    let raft = listeners
        .raft
        .take()
        .context("the raft listener is bound")?;
    let api = listeners.api.local_addr()?;
    crate::cluster::start(config, raft, api)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the node: {e}"))
}

/// A node running in this process on the caller's tokio runtime: the same node and HTTP
/// service as the `grape` binary, on the configured addresses (port 0 picks free ones).
pub struct InProcessNode {
    /// The running node, for callers that look inside (the benchmark's in-process search).
    node: Arc<Node>,
    /// `http(s)://HOST:PORT` of the API.
    url: String,
    /// `http://HOST:PORT` of the metrics listener, when enabled.
    metrics_url: Option<String>,
    /// Ends [`serve`]'s wait.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The serving task: drains requests and stops the node once told to.
    serving: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl std::fmt::Debug for InProcessNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessNode")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl InProcessNode {
    /// Binds the configured addresses, starts the node and serves it in the background.
    pub async fn start(config: crate::config::Config) -> anyhow::Result<InProcessNode> {
        let mut listeners = Listeners::bind(&config)?;
        let scheme = if config.security.enable_tls {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}", listeners.api.local_addr()?);
        let metrics_url = match &listeners.metrics {
            Some(listener) => Some(format!("http://{}", listener.local_addr()?)),
            None => None,
        };
        let keys = keys_for(&config)?;
        let node = start_node(config, &mut listeners).await?;
        let state = app_state_with(Arc::clone(&node), keys)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(run(state, listeners, async {
            let _ = stopped.await;
        }));
        Ok(InProcessNode {
            node,
            url,
            metrics_url,
            stop: Some(stop),
            serving: Some(serving),
        })
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn metrics_url(&self) -> Option<&str> {
        self.metrics_url.as_deref()
    }

    /// Stops serving (in-flight requests finish) and shuts the node down.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.serving.take() {
            Some(serving) => serving.await?,
            None => Ok(()),
        }
    }
}

impl Drop for InProcessNode {
    /// Without [`InProcessNode::stop`], the node stops in the background.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The HTTP layer's state for a node, with its keys and users loaded already.
fn app_state_with(node: Arc<Node>, keys: Keys) -> anyhow::Result<AppState> {
    Ok(AppState {
        metrics: Arc::new(Metrics::new(node.id())?),
        keys: Arc::new(keys),
        slow_queries: Arc::new(SlowQueryLog::default()),
        node,
    })
}

/// The API keys, roles and users a node with this configuration serves with (none when
/// authentication is off; the files are checked all the same).
fn keys_for(config: &crate::config::Config) -> anyhow::Result<Keys> {
    let files = SecurityFiles {
        keys: config.security.api_keys_file.clone(),
        rbac: config.security.rbac_file.clone(),
    };
    let limits = FailureLimits {
        per_address: config.security.failed_auth_per_minute,
        per_user: config.security.failed_logins_per_user_per_minute,
    };
    let keys = if config.auth_enabled() {
        Keys::load(files, limits).map_err(|e| anyhow::anyhow!("{e}"))?
    } else {
        if config.security.enable_auth == Some(false) {
            tracing::warn!(
                "security.enable_auth is false: anyone who reaches {} may read, write and \
                 administer this node without a key",
                config.node.listen_address
            );
        }
        if files.rbac.is_some() {
            // Checked all the same, so a mistake shows now rather than when auth is turned on.
            Keys::load(files, limits).map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::warn!(
                "roles and users are defined (rbac) but authentication is off: they are not \
                 checked; set security.enable_auth: true to use them"
            );
        }
        Keys::disabled()
    };
    let proxies = config.security.trusted_proxies.iter();
    Ok(keys.trusting(proxies.filter_map(|p| parse_net(p)).collect()))
}

/// How long a stopping node spends handing its leaderships over (inside Kubernetes' default
/// 30 s grace period with the 10 s request drain after it).
const HAND_OFF_LIMIT: Duration = Duration::from_secs(15);

/// Serves the API (and metrics) until `shutdown` completes, then hands its leaderships over
/// and drains in-flight requests for up to 10 s.
async fn run(
    state: AppState,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = Arc::clone(&state.node);
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

    // Revoked keys stop working without a restart.
    let every = config.security.reload_interval_secs;
    let every = (every > 0).then(|| Duration::from_secs(every));
    let watching = tokio::spawn(Arc::clone(&state.keys).watch(every));
    let _stop_watching = AbortOnDrop(watching);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.metrics {
        let addr = listener.local_addr()?;
        tracing::info!("metrics listening on http://{addr}/metrics");
        let app = api::metrics_router(state.clone());
        let server = bounded(axum_server::from_tcp(listener)?, &config).handle(handle.clone());
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
        let server = bounded(axum_server::from_tcp_rustls(listeners.api, tls)?, &config)
            .handle(handle.clone());
        tasks.spawn(async move { server.serve(app).await });
    } else {
        let server = bounded(axum_server::from_tcp(listeners.api)?, &config).handle(handle.clone());
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
            tracing::info!("shutting down: handing leaderships over, then draining requests");
            node.set_unready();
            crate::cluster::elastic::leadership::hand_off_before_stopping(&node, HAND_OFF_LIMIT)
                .await;
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
