//! Harness for black-box tests: real `grape` processes on loopback ports with temporary data
//! directories ([`GrapeNode`], [`Cluster`]), or a real node served in the test's own process
//! ([`LocalNode`]), driven through the real HTTP client.
//!
//! The binary is found through `GRAPE_BIN`, else next to the test executable
//! (`target/<profile>/grape`); `cargo build --bins` (or the README's test command) builds it.

pub mod actions;
pub mod jepsen;
pub mod load;
pub mod recall;

use grape_client::GrapeClient;
use grape_dataplane::config::{Config, Overrides};
use grape_dataplane::server::InProcessNode;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the `grape` binary under test.
pub fn grape_binary() -> PathBuf {
    if let Ok(path) = std::env::var("GRAPE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // Tests run from target/<profile>/deps, binaries from target/<profile>.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("grape"))
        .collect();
    candidates
        .iter()
        .find(|c| c.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no grape binary at {:?}: build it first with `cargo build --bins` or set GRAPE_BIN",
                candidates
            )
        })
}

/// How to start a node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Extra environment (`GRAPE__SECTION__KEY` settings).
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Loopback address the node binds (default 127.0.0.1).
    pub ip: Option<String>,
    /// Fixed node-to-node port (default: any free one; peers need it fixed).
    pub raft_port: Option<u16>,
    /// For [`Cluster`]: do not give the nodes a shared cluster secret (they must authenticate
    /// each other some other way, e.g. verified TLS).
    pub no_cluster_secret: bool,
    /// Mount a tmpfs of this many MiB on the data directory (a small volume that fills; needs
    /// root). Unmounted when the node is dropped.
    pub tmpfs_mb: Option<u64>,
}

impl NodeOptions {
    /// A node whose default collection has `dimension` dimensions.
    pub fn dimension(dimension: usize) -> Self {
        NodeOptions::default().setting("DATABASE__VECTOR_DIMENSION", &dimension.to_string())
    }

    /// Adds `GRAPE__<key>=<value>`.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.env.push((format!("GRAPE__{key}"), value.to_string()));
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// The data directory on a tmpfs of `mb` MiB ([`NodeOptions::tmpfs_mb`]).
    pub fn on_tmpfs(mut self, mb: u64) -> Self {
        self.tmpfs_mb = Some(mb);
        self
    }
}

/// A running (or stopped) `grape` process with a data directory that outlives restarts.
pub struct GrapeNode {
    /// The data directory; removed when the node is dropped.
    pub data_dir: tempfile::TempDir,
    options: NodeOptions,
    child: Option<Child>,
    /// Everything the process wrote to stderr, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    /// `http://127.0.0.1:PORT` of the API.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the metrics listener, if enabled.
    pub metrics_url: Option<String>,
    /// The CA a TLS node's certificate chains to.
    ca_pem: Option<String>,
}

impl GrapeNode {
    /// A node that has not been started, with `data_dir` as its data directory.
    fn unstarted(options: NodeOptions, data_dir: tempfile::TempDir) -> GrapeNode {
        if let Some(mb) = options.tmpfs_mb {
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
                .arg(data_dir.path())
                .status()
                .expect("mount runs (a tmpfs data directory needs root)");
            assert!(
                status.success(),
                "mounting a tmpfs on {:?}",
                data_dir.path()
            );
        }
        GrapeNode {
            data_dir,
            options,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
            url: String::new(),
            metrics_url: None,
            ca_pem: None,
        }
    }

    /// Starts a node on ephemeral loopback ports and waits until it answers `/ready`.
    pub async fn start(options: NodeOptions) -> GrapeNode {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut node = GrapeNode::unstarted(options, data_dir);
        node.launch().await;
        node
    }

    fn command(&self) -> Command {
        let mut command = Command::new(grape_binary());
        let ip = self.options.ip.as_deref().unwrap_or("127.0.0.1");
        command
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--listen-address")
            .arg(format!("{ip}:0"))
            .arg("--metrics-port")
            .arg("0")
            .arg("--raft-address")
            .arg(format!("{ip}:{}", self.options.raft_port.unwrap_or(0)))
            .args(&self.options.args)
            .env_remove("RUST_LOG")
            .envs(self.options.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Runs the binary to completion with this node's settings plus `args`; returns the exit
    /// code and stderr. For start-up failures.
    pub fn run_to_exit(options: &NodeOptions, args: &[&str]) -> (i32, String) {
        let output = Command::new(grape_binary())
            .args(&options.args)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(options.env.iter().cloned())
            .output()
            .expect("grape runs");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout),
        )
    }

    async fn launch(&mut self) {
        self.spawn_and_find_url().await;
        self.wait_ready().await;
    }

    async fn spawn_and_find_url(&mut self) {
        let mut child = self.command().spawn().expect("grape starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (addresses, found) = mpsc::channel();
        let log = Arc::clone(&self.log);
        // GRAPE_E2E_LOGS=DIR keeps every node's log in DIR/<pid>.log for post-mortems.
        let mut keep = std::env::var("GRAPE_E2E_LOGS")
            .ok()
            .and_then(|dir| std::fs::File::create(format!("{dir}/{}.log", child.id())).ok());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(file) = keep.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
                for (marker, kind) in [
                    ("api listening on ", "api"),
                    ("metrics listening on ", "metrics"),
                ] {
                    if let Some(at) = line.find(marker) {
                        let rest = &line[at + marker.len()..];
                        let url = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .trim_end_matches("/metrics");
                        let _ = addresses.send((kind, url.to_string()));
                    }
                }
                log.lock().expect("log lock").push(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut urls = HashMap::new();
        while !urls.contains_key("api") {
            let left = deadline.saturating_duration_since(Instant::now());
            match found.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((kind, url)) => {
                    urls.insert(kind, url);
                }
                Err(_) => {
                    if let Some(status) = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        panic!(
                            "grape exited with {status} before listening:\n{}",
                            self.log_text()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "grape did not start:\n{}",
                        self.log_text()
                    );
                }
            }
        }
        // The metrics line is logged right after the API line.
        if let Ok((kind, url)) = found.recv_timeout(Duration::from_secs(2)) {
            urls.insert(kind, url);
        }
        self.url = urls.remove("api").unwrap_or_default();
        self.metrics_url = urls.remove("metrics");
    }

    /// Starts a node on a data directory prepared beforehand (by `grape restore`, say) and
    /// waits until it is ready.
    pub async fn start_in(options: NodeOptions, data_dir: tempfile::TempDir) -> GrapeNode {
        let mut node = GrapeNode::unstarted(options, data_dir);
        node.launch().await;
        node
    }

    /// Starts a node serving HTTPS with a certificate signed by `ca_pem`.
    pub async fn start_tls(options: NodeOptions, ca_pem: &str) -> GrapeNode {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut node = GrapeNode::unstarted(options, data_dir);
        node.ca_pem = Some(ca_pem.to_string());
        node.launch().await;
        node
    }

    /// Waits (up to 60 s) until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(true) = client.ready().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "grape never became ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client for this node (trusting its CA when it serves TLS).
    pub fn client(&self) -> GrapeClient {
        match &self.ca_pem {
            Some(ca) => {
                let http = grape_client::reqwest::Client::builder()
                    .add_root_certificate(
                        grape_client::reqwest::Certificate::from_pem(ca.as_bytes())
                            .expect("CA PEM"),
                    )
                    .build()
                    .expect("TLS client");
                GrapeClient::with_http_client(&self.url, http)
            }
            None => GrapeClient::new(&self.url),
        }
    }

    /// A client sending `key`.
    pub fn client_with_key(&self, key: &str) -> GrapeClient {
        self.client().with_api_key(key)
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`HUP`, `STOP`, `CONT`, ...) to the running process.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("the node is running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again on the same data directory (new API port, same Raft port)
    /// and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill9();
        self.launch().await;
    }

    /// Starts a node (with its own data directory) without waiting for readiness: a member of
    /// a cluster that does not exist yet, or a node that waits to be admitted.
    pub async fn spawn(options: NodeOptions) -> GrapeNode {
        let mut node = GrapeNode::unstarted(options, tempfile::tempdir().expect("temp dir"));
        node.spawn_and_find_url().await;
        node
    }

    /// Replaces the settings used by the next (re)start.
    pub fn set_options(&mut self, options: NodeOptions) {
        self.options = options;
    }

    /// What a pod restart does: SIGTERM, wait for the exit, start again on the same data
    /// directory; does not wait for readiness.
    pub async fn restart_terminated(&mut self) {
        self.terminate();
        self.spawn_and_find_url().await;
    }

    /// Starts the process again without waiting for readiness (a member of a cluster that has
    /// no quorum yet cannot be ready).
    pub async fn restart_unready(&mut self) {
        self.kill9();
        self.spawn_and_find_url().await;
    }

    /// Deletes everything in the data directory (the node must be stopped).
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "wipe a stopped node");
        for entry in std::fs::read_dir(self.data_dir.path()).expect("data dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(path).expect("remove");
            } else {
                std::fs::remove_file(path).expect("remove");
            }
        }
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's resident memory now and at its peak since [`GrapeNode::reset_peak_memory`]
    /// (or its start), in bytes, from `/proc/PID/status` (`VmRSS`, `VmHWM`).
    pub fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Starts measuring the peak resident memory afresh (writes 5 to `/proc/PID/clear_refs`).
    pub fn reset_peak_memory(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// The process's stderr so far.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for GrapeNode {
    fn drop(&mut self) {
        self.kill9();
        if self.options.tmpfs_mb.is_some() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.data_dir.path())
                .status();
        }
    }
}

/// A node served from the test's own process through `grape_dataplane::server::serve`: the
/// same node and HTTP API as the `grape` binary, on ephemeral loopback ports, without a
/// process to start. For single-node tests that never kill, restart or wipe a node (those
/// use [`GrapeNode`]).
pub struct LocalNode {
    /// Stopped when the test drops it.
    node: Option<InProcessNode>,
    /// `http://127.0.0.1:PORT` of the API.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the metrics listener, if enabled.
    pub metrics_url: Option<String>,
    /// The data directory; removed when the node is dropped.
    pub data_dir: tempfile::TempDir,
}

/// The `grape` binary's command-line flags, to read [`NodeOptions::args`].
#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    overrides: Overrides,
}

impl LocalNode {
    /// Starts a node with `options` (settings, flags and address as for [`GrapeNode`]) and
    /// waits until it answers `/ready`.
    pub async fn start(options: NodeOptions) -> LocalNode {
        use clap::Parser;
        let data_dir = tempfile::tempdir().expect("temp dir");
        let ip = options.ip.as_deref().unwrap_or("127.0.0.1");
        let mut overrides = Flags::try_parse_from(
            std::iter::once("grape".to_string()).chain(options.args.iter().cloned()),
        )
        .expect("flags the grape binary takes")
        .overrides;
        overrides.data_dir = Some(data_dir.path().to_path_buf());
        overrides.listen_address = Some(format!("{ip}:0"));
        overrides.metrics_port = Some(0);
        overrides.raft_address = Some(format!("{ip}:{}", options.raft_port.unwrap_or(0)));
        let config = Config::load_from(&overrides, options.env.iter().cloned())
            .unwrap_or_else(|e| panic!("{e}"));
        let node = InProcessNode::start(config)
            .await
            .unwrap_or_else(|e| panic!("the node did not start: {e:#}"));
        let local = LocalNode {
            url: node.url().to_string(),
            metrics_url: node.metrics_url().map(str::to_string),
            node: Some(node),
            data_dir,
        };
        let client = local.client();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client.ready().await.unwrap_or(false) {
            assert!(Instant::now() < deadline, "the node never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        local
    }

    /// A client for this node.
    pub fn client(&self) -> GrapeClient {
        GrapeClient::new(&self.url)
    }

    /// Stops serving and shuts the node down cleanly.
    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await.expect("a clean stop");
        }
    }
}

/// Writes a file into a fresh temp dir and returns both (keep the dir alive).
pub fn temp_file(name: &str, contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, contents).expect("write temp file");
    (dir, path)
}

/// A bcrypt hash of `password` at `cost`, made by `grape hash-password` (the password on its
/// standard input, as a user would give it).
pub fn hash_password(password: &str, cost: u32) -> String {
    use std::io::Write;
    let mut child = Command::new(grape_binary())
        .args(["hash-password", "--cost", &cost.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start grape hash-password");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "grape hash-password: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The whole seconds of a response's `Retry-After` (which must be there).
pub fn retry_after_secs(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .expect("Retry-After is text")
        .parse()
        .expect("Retry-After is whole seconds")
}

/// A deterministic pseudo-random vector (xorshift), distinct per seed.
pub fn vector(seed: u64, dimension: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dimension)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// A port free on `address` now, below the kernel's ephemeral range (32768 and up by
/// default): a port the kernel hands out (`:0`) is free only until released, and any
/// outgoing connection may take it before the node binds it again.
fn free_port(address: &str) -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for attempt in 0..10_000u32 {
        let port = 10_000 + (seed.wrapping_add(attempt.wrapping_mul(7_919)) % 22_000) as u16;
        if std::net::TcpListener::bind((address, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {address} below 32000");
}

/// Several nodes forming one cluster, each on its own loopback address (`127.A.B.i`, A and B
/// random per cluster) so that a firewall rule can cut one node off from the others.
pub struct Cluster {
    pub nodes: Vec<GrapeNode>,
    /// `127.A.B`: the cluster's loopback network.
    pub network: String,
    /// Holds the cluster secret file (`cluster.secret`), or the TLS files when the cluster
    /// authenticates with TLS ([`cluster_tls_from_env`]); none if the options declined one.
    pub secret_dir: Option<tempfile::TempDir>,
    /// Options every node started with.
    options: NodeOptions,
    /// `id=address` of every node started so far.
    peers: Vec<String>,
}

/// `options` plus a fresh cluster secret file (`GRAPE__CLUSTER__SECRET_FILE`), unless they
/// decline one; returns the directory holding the file.
fn with_cluster_secret(mut options: NodeOptions) -> (NodeOptions, Option<tempfile::TempDir>) {
    if options.no_cluster_secret {
        return (options, None);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cluster.secret");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ u128::from(std::process::id()) << 64;
    std::fs::write(&path, format!("{seed:040x}\n")).expect("write the cluster secret");
    options.env.push((
        "GRAPE__CLUSTER__SECRET_FILE".into(),
        path.to_string_lossy().into_owned(),
    ));
    (options, Some(dir))
}

/// Whether clusters trust each other through mutually verified TLS instead of a cluster secret
/// (`GRAPE_TEST_CLUSTER_TLS=1`): the same cluster tests, over the other way peers authenticate.
pub fn cluster_tls_from_env() -> bool {
    std::env::var("GRAPE_TEST_CLUSTER_TLS").is_ok_and(|v| v == "1")
}

/// `options` plus node-to-node TLS with peer verification: a fresh CA, and one certificate
/// naming every address a node of `network` may have (`{network}.1` to `.9`). Returns the
/// directory holding the files.
pub fn with_cluster_tls(
    mut options: NodeOptions,
    network: &str,
) -> (NodeOptions, tempfile::TempDir) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("a CA certificate");
    let ca = Issuer::new(ca_params, ca_key);
    let node_key = KeyPair::generate().expect("a node key");
    let names: Vec<String> = (1..=9).map(|i| format!("{network}.{i}")).collect();
    let node_cert = CertificateParams::new(names)
        .expect("node certificate parameters")
        .signed_by(&node_key, &ca)
        .expect("a node certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write a TLS file");
        path.to_string_lossy().into_owned()
    };
    let ca_file = write("ca.crt", ca_cert.pem());
    let cert_file = write("node.crt", node_cert.pem());
    let key_file = write("node.key", node_key.serialize_pem());
    options.no_cluster_secret = true;
    let options = options
        .setting("CLUSTER__ENABLE_TLS", "true")
        .setting("CLUSTER__TLS_CONFIG__VERIFY_PEER", "true")
        .setting("CLUSTER__TLS_CONFIG__CA_FILE", &ca_file)
        .setting("CLUSTER__TLS_CONFIG__CERT_FILE", &cert_file)
        .setting("CLUSTER__TLS_CONFIG__KEY_FILE", &key_file);
    (options, dir)
}

/// `base` for member `node-i` of a cluster: its address, its fixed Raft port, and every
/// member as a peer.
fn member_options(
    base: &NodeOptions,
    i: usize,
    ip: String,
    raft_port: u16,
    peers: &[String],
) -> NodeOptions {
    let mut options = base.clone();
    options.ip = Some(ip);
    options.raft_port = Some(raft_port);
    options.env.extend([
        ("GRAPE_NODE_ID".into(), format!("node-{i}")),
        ("GRAPE__CLUSTER__ENABLED".into(), "true".into()),
        ("GRAPE_CLUSTER_PEERS".into(), peers.join(",")),
    ]);
    options
}

impl Cluster {
    /// Starts `size` nodes `node-1`..`node-N` that know each other as peers; waits until all are
    /// ready.
    pub async fn start(size: usize, options: NodeOptions) -> Cluster {
        Cluster::start_on(&Cluster::new_network(), size, options).await
    }

    /// A fresh random loopback network `127.A.B` for a cluster.
    pub fn new_network() -> String {
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        format!("127.{}.{}", 10 + seed % 240, (seed / 240) % 250 + 1)
    }

    /// [`Cluster::start`] on a given network: node `i` binds `{network}.{i}`.
    pub async fn start_on(network: &str, size: usize, options: NodeOptions) -> Cluster {
        let network = network.to_string();
        let ports: Vec<u16> = (1..=size)
            .map(|i| free_port(&format!("{network}.{i}")))
            .collect();
        let peers: Vec<String> = (1..=size)
            .map(|i| format!("node-{i}={network}.{i}:{}", ports[i - 1]))
            .collect();
        let (options, secret_dir) = if cluster_tls_from_env() && !options.no_cluster_secret {
            let (options, dir) = with_cluster_tls(options, &network);
            (options, Some(dir))
        } else {
            with_cluster_secret(options)
        };
        let base_options = options.clone();
        let mut nodes = Vec::new();
        for i in 1..=size {
            let node_options =
                member_options(&options, i, format!("{network}.{i}"), ports[i - 1], &peers);
            let mut node =
                GrapeNode::unstarted(node_options, tempfile::tempdir().expect("temp dir"));
            node.spawn_and_find_url().await;
            nodes.push(node);
        }
        for node in &nodes {
            node.wait_ready().await;
        }
        Cluster {
            nodes,
            network,
            secret_dir,
            options: base_options,
            peers,
        }
    }

    /// The cluster secret its nodes share, if they use one.
    pub fn secret(&self) -> Option<String> {
        let dir = self.secret_dir.as_ref()?;
        std::fs::read_to_string(dir.path().join("cluster.secret"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Starts one more node (`node-N+1`, on the next address) that knows the others as its
    /// peers, as the deployment guide's node4.yaml does. It holds nothing and is not ready
    /// until `add-node` admits it. Returns its index.
    pub async fn start_extra_node(&mut self) -> usize {
        let i = self.nodes.len() + 1;
        let address = format!("{}.{i}", self.network);
        let port = free_port(&address);
        self.peers.push(format!("node-{i}={address}:{port}"));
        let node_options = member_options(&self.options, i, address, port, &self.peers);
        let mut node = GrapeNode::unstarted(node_options, tempfile::tempdir().expect("temp dir"));
        node.spawn_and_find_url().await;
        self.nodes.push(node);
        i
    }

    /// The node-to-node address of node `i`.
    pub fn raft_address(&self, i: usize) -> String {
        let entry = &self.peers[i - 1];
        entry
            .split_once('=')
            .map(|(_, a)| a.to_string())
            .unwrap_or_default()
    }

    /// Node `node-i` (1-based, as its id).
    pub fn node(&self, i: usize) -> &GrapeNode {
        &self.nodes[i - 1]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut GrapeNode {
        &mut self.nodes[i - 1]
    }

    /// The 1-based index of a node id.
    pub fn index_of(id: &str) -> usize {
        id.trim_start_matches("node-").parse().expect("node-N")
    }

    /// Drops all traffic between node `i` and the other nodes (clients still reach it).
    pub fn isolate(&self, i: usize) {
        for j in (1..=self.nodes.len()).filter(|j| *j != i) {
            self.cut(i, j);
        }
    }

    /// Undoes [`Cluster::isolate`].
    pub fn heal(&self, i: usize) {
        for j in (1..=self.nodes.len()).filter(|j| *j != i) {
            self.uncut(i, j);
        }
    }

    /// Drops all traffic between nodes `i` and `j`, both ways.
    pub fn cut(&self, i: usize, j: usize) {
        let (a, b) = (
            format!("{}.{i}", self.network),
            format!("{}.{j}", self.network),
        );
        iptables("-A", &a, &b);
        iptables("-A", &b, &a);
    }

    /// Undoes [`Cluster::cut`].
    pub fn uncut(&self, i: usize, j: usize) {
        let (a, b) = (
            format!("{}.{i}", self.network),
            format!("{}.{j}", self.network),
        );
        iptables("-D", &a, &b);
        iptables("-D", &b, &a);
    }
}

fn iptables(action: &str, from: &str, to: &str) {
    let status = Command::new("iptables")
        .args([action, "OUTPUT", "-s", from, "-d", to, "-j", "DROP"])
        .status()
        .expect("iptables runs (scripts/setup.sh installs it; the partition test needs root)");
    assert!(status.success(), "iptables {action} {from} -> {to} failed");
}

/// The headers a node holding `secret` (or none) sends with a call to `path` carrying `body`
/// on the node-to-node port, made by the node's own code.
pub fn peer_headers(
    node: &str,
    secret: Option<&str>,
    path: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut config = Config::default();
    config.node.id = node.to_string();
    let _dir;
    if let Some(secret) = secret {
        let (dir, file) = temp_file("secret", secret);
        _dir = dir;
        config.cluster.secret_file = Some(file);
    }
    grape_dataplane::cluster::raft::auth::PeerAuth::from_config(&config)
        .expect("a valid secret")
        .headers(path, body)
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
}

/// The value of the sample `name` whose labels include every pair of `labels`, in a
/// Prometheus text exposition (the first such sample).
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        if !(rest.is_empty() || rest.starts_with('{')) {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// [`metric_value`] read from a node's `/metrics` now (`None` if absent or unreachable).
pub async fn node_metric(node: &GrapeNode, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = node.client().metrics_text().await.ok()?;
    metric_value(&text, name, labels)
}

/// Polls `name{labels}` on `node` until `accept` holds, for up to `within`; panics with the
/// last value read otherwise.
pub async fn wait_metric(
    node: &GrapeNode,
    name: &str,
    labels: &[(&str, &str)],
    within: Duration,
    accept: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = std::time::Instant::now() + within;
    loop {
        let value = node_metric(node, name, labels).await;
        if let Some(value) = value.filter(|v| accept(*v)) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} {name}{labels:?}: {value:?}",
            node.url
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
