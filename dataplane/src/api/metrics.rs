//! Prometheus metrics with the seed guide's names, every series labelled with `node_id`.
//! Request metrics are counted as requests pass; node figures are read at scrape time.

use crate::cluster::Node;
use crate::cluster::elastic::operations;
use crate::cluster::route::catalog;
use crate::cluster::status;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    search_requests: IntCounterVec,
    search_duration: HistogramVec,
    documents: IntGaugeVec,
    index_pending: IntGaugeVec,
    failed_shards: IntGaugeVec,
    memory_usage: IntGauge,
    memory_limit: IntGauge,
    disk_usage: IntGauge,
    disk_free: IntGauge,
    disk_low: IntGauge,
    disk_total: IntGauge,
    disk_reads: IntCounter,
    disk_writes: IntCounter,
    raft_log_entries: IntCounter,
    raft_elections: IntCounter,
    raft_leadership_changes: IntCounter,
    leader_status: IntGauge,
    nodes_connected: IntGauge,
    members: IntGauge,
    raft_groups: IntGauge,
    raft_groups_without_leader: IntGauge,
    raft_replica_lag: IntGaugeVec,
    operation_running: IntGaugeVec,
    operation_moves: IntGaugeVec,
    operation_moves_done: IntGaugeVec,
    operation_copied_bytes: IntGaugeVec,
    backups_started: IntCounter,
    backups_succeeded: IntCounter,
    backups_failed: IntCounter,
    restores_started: IntCounter,
    restores_succeeded: IntCounter,
    restores_failed: IntCounter,
    backup_running: IntGauge,
    backup_last_success: IntGauge,
    backup_last_duration: prometheus::Gauge,
    backup_last_bytes: IntGauge,
    /// One render at a time: a render resets the labelled gauges before it fills them, and a
    /// concurrent scrape (an HA pair of Prometheus servers) must not see them empty.
    rendering: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new(node_id: &str) -> prometheus::Result<Metrics> {
        let labels = HashMap::from([("node_id".to_string(), node_id.to_string())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let histogram_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<HistogramVec> {
                let metric = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
                let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let metric = IntCounter::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let metrics = Metrics {
            http_requests: counter_vec(
                "grape_http_requests_total",
                "HTTP requests answered, by method, route and status",
                &["method", "path", "status"],
            )?,
            http_duration: histogram_vec(
                "grape_http_request_duration_seconds",
                "HTTP request latency, by method and route",
                &["method", "path"],
            )?,
            search_requests: counter_vec(
                "grape_search_requests_total",
                "Searches answered, by collection",
                &["collection"],
            )?,
            search_duration: histogram_vec(
                "grape_search_duration_seconds",
                "Search latency inside the node, by collection",
                &["collection"],
            )?,
            documents: gauge_vec(
                "grape_db_documents_total",
                "Live documents this node holds, by collection",
                &["collection"],
            )?,
            index_pending: gauge_vec(
                "grape_index_pending_documents",
                "Documents written but not yet in an HNSW graph (searched exactly meanwhile)",
                &["collection"],
            )?,
            failed_shards: gauge_vec(
                "grape_shards_failed",
                "Replicas on this node whose index failed (not searched until rebuilt), by collection",
                &["collection"],
            )?,
            memory_usage: gauge("grape_db_memory_usage_bytes", "Resident memory of the node")?,
            memory_limit: gauge(
                "grape_db_memory_limit_bytes",
                "Memory available to the node (cgroup limit, else physical memory)",
            )?,
            disk_usage: gauge(
                "grape_db_disk_usage_bytes",
                "Bytes under the data directory",
            )?,
            disk_free: gauge(
                "grape_db_disk_free_bytes",
                "Free bytes on the data directory's filesystem",
            )?,
            disk_low: gauge(
                "grape_db_disk_low",
                "1 while free space is below database.min_free_disk_mb and writes are refused",
            )?,
            disk_total: gauge(
                "grape_db_disk_total_bytes",
                "Size of the data directory's filesystem",
            )?,
            disk_reads: counter(
                "grape_db_disk_reads_total",
                "Storage reads (point reads and scans) served",
            )?,
            disk_writes: counter(
                "grape_db_disk_writes_total",
                "Storage write batches committed",
            )?,
            raft_log_entries: counter(
                "grape_raft_log_entries_total",
                "Raft log entries applied by this node's groups",
            )?,
            raft_elections: counter(
                "grape_raft_election_count_total",
                "Elections this node started (any group)",
            )?,
            raft_leadership_changes: counter(
                "grape_raft_leadership_changes_total",
                "Leadership changes this node observed (any group)",
            )?,
            leader_status: gauge(
                "grape_cluster_leader_status",
                "1 when this node leads the meta group (the cluster leader), else 0",
            )?,
            nodes_connected: gauge(
                "grape_cluster_nodes_connected",
                "Cluster members this node can reach, itself included",
            )?,
            members: gauge(
                "grape_cluster_members",
                "Voting members of the cluster, as this node knows them (compare grape_cluster_nodes_connected)",
            )?,
            raft_groups: gauge(
                "grape_raft_groups",
                "Raft groups this node is a member of (the meta group and its replicas)",
            )?,
            raft_groups_without_leader: gauge(
                "grape_raft_groups_without_leader",
                "This node's Raft groups with no leader it knows of (an election, a lost quorum, or a stopped Raft)",
            )?,
            raft_replica_lag: gauge_vec(
                "grape_raft_replica_lag_entries",
                "On a group's leader: log entries its furthest-behind voter trails by, by group",
                &["group"],
            )?,
            operation_running: gauge_vec(
                "grape_operation_running",
                "1 while a rebalance, drain or repair runs (any node), by kind",
                &["kind"],
            )?,
            operation_moves: gauge_vec(
                "grape_operation_moves",
                "Replica moves of the running operation, by kind (0 when none runs)",
                &["kind"],
            )?,
            operation_moves_done: gauge_vec(
                "grape_operation_moves_done",
                "Replica moves of the running operation that are done, by kind",
                &["kind"],
            )?,
            operation_copied_bytes: gauge_vec(
                "grape_operation_copied_bytes",
                "Bytes the running operation's moves copied so far, by kind",
                &["kind"],
            )?,
            backups_started: counter(
                "grape_backup_started_total",
                "Backups this node started (as their coordinator)",
            )?,
            backups_succeeded: counter(
                "grape_backup_succeeded_total",
                "Backups this node ran to the end",
            )?,
            backups_failed: counter(
                "grape_backup_failed_total",
                "Backups this node ran that failed",
            )?,
            restores_started: counter("grape_restore_started_total", "Restores this node started")?,
            restores_succeeded: counter(
                "grape_restore_succeeded_total",
                "Restores this node ran to the end",
            )?,
            restores_failed: counter(
                "grape_restore_failed_total",
                "Restores this node ran that failed",
            )?,
            backup_running: gauge(
                "grape_backup_running",
                "1 while a backup of the cluster runs (any node), else 0",
            )?,
            backup_last_success: gauge(
                "grape_backup_last_success_timestamp_seconds",
                "When the cluster's newest successful backup ended (Unix seconds; 0: none recorded)",
            )?,
            backup_last_duration: {
                let metric = prometheus::Gauge::new(
                    "grape_backup_last_duration_seconds",
                    "How long the cluster's newest successful backup took",
                )?;
                registry.register(Box::new(metric.clone()))?;
                metric
            },
            backup_last_bytes: gauge(
                "grape_backup_last_bytes",
                "Bytes the cluster's newest successful backup wrote",
            )?,
            registry,
            rendering: std::sync::Mutex::new(()),
        };
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(metrics)
    }

    /// Counts one answered HTTP request.
    pub fn observe_request(&self, method: &str, path: &str, status: u16, took: Duration) {
        self.http_requests
            .with_label_values(&[method, path, status_label(status)])
            .inc();
        self.http_duration
            .with_label_values(&[method, path])
            .observe(took.as_secs_f64());
    }

    /// Counts one completed search.
    pub fn observe_search(&self, collection: &str, took: Duration) {
        self.search_requests.with_label_values(&[collection]).inc();
        self.search_duration
            .with_label_values(&[collection])
            .observe(took.as_secs_f64());
    }

    /// Reads the node's figures and renders every metric as Prometheus text.
    pub fn render(&self, node: &Node) -> String {
        let _rendering = self
            .rendering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.documents.reset();
        self.index_pending.reset();
        self.failed_shards.reset();
        let mut documents: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
        for collection in catalog::collections(node) {
            documents.insert(collection.name().to_string(), (0, 0, 0));
        }
        for local in node.replicas().all() {
            let figures = local.shard.figures();
            let entry = documents
                .entry(local.collection.name().to_string())
                .or_default();
            entry.0 += figures.documents;
            entry.1 += figures.index.pending;
            entry.2 += u64::from(figures.failed.is_some());
        }
        for (collection, (count, pending, failed)) in documents {
            self.documents
                .with_label_values(&[&collection])
                .set(count as i64);
            self.index_pending
                .with_label_values(&[&collection])
                .set(pending as i64);
            self.failed_shards
                .with_label_values(&[&collection])
                .set(failed as i64);
        }
        self.memory_usage.set(resident_memory() as i64);
        self.memory_limit.set(memory_limit() as i64);
        let data_dir = node.storage().path();
        self.disk_usage.set(directory_size(data_dir) as i64);
        if let Ok(fs) = nix::sys::statvfs::statvfs(data_dir) {
            let fragment = fs.fragment_size();
            self.disk_free
                .set((fs.blocks_available() * fragment) as i64);
            self.disk_total.set((fs.blocks() * fragment) as i64);
        }
        self.disk_low.set(i64::from(node.disk().is_low()));
        advance(&self.disk_reads, node.storage().reads());
        advance(&self.disk_writes, node.storage().writes());
        advance(&self.raft_log_entries, node.activity().applied_total());
        advance(&self.raft_elections, node.activity().elections());
        advance(
            &self.raft_leadership_changes,
            node.activity().leadership_changes(),
        );
        self.leader_status.set(i64::from(node.is_meta_leader()));
        self.nodes_connected.set(node.connected_nodes() as i64);
        self.members.set(node.members().len() as i64);
        let raft = status::raft_health(node);
        self.raft_groups.set(raft.groups as i64);
        self.raft_groups_without_leader
            .set(raft.without_leader as i64);
        self.raft_replica_lag.reset();
        for (group, lag) in raft.replica_lag {
            self.raft_replica_lag
                .with_label_values(&[&group])
                .set(lag as i64);
        }
        // Every kind always has a series (0 when idle), so a rule can tell "idle" from "no data".
        let running = operations::running_progress(node);
        for kind in ["rebalance", "drain", "repair"] {
            let (on, moves, done, bytes) = match running.as_ref().filter(|p| p.kind == kind) {
                Some(p) => (
                    1,
                    p.moves_total as i64,
                    p.moves_done as i64,
                    p.bytes_copied as i64,
                ),
                None => (0, 0, 0, 0),
            };
            self.operation_running.with_label_values(&[kind]).set(on);
            self.operation_moves.with_label_values(&[kind]).set(moves);
            self.operation_moves_done
                .with_label_values(&[kind])
                .set(done);
            self.operation_copied_bytes
                .with_label_values(&[kind])
                .set(bytes);
        }
        let counters = node.backup_counters();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        advance(&self.backups_started, load(&counters.started));
        advance(&self.backups_succeeded, load(&counters.succeeded));
        advance(&self.backups_failed, load(&counters.failed));
        advance(&self.restores_started, load(&counters.restores_started));
        advance(&self.restores_succeeded, load(&counters.restores_succeeded));
        advance(&self.restores_failed, load(&counters.restores_failed));
        {
            let state = node.meta_read();
            self.backup_running.set(i64::from(
                state
                    .backups
                    .values()
                    .any(|b| b.state == grape_client::BackupState::Running),
            ));
            let newest = state
                .backups
                .values()
                .filter(|b| b.state == grape_client::BackupState::Done)
                .max_by_key(|b| b.finished_ms.unwrap_or_default());
            if let Some(newest) = newest {
                let finished = newest.finished_ms.unwrap_or_default();
                self.backup_last_success.set((finished / 1000) as i64);
                self.backup_last_duration
                    .set(finished.saturating_sub(newest.started_ms) as f64 / 1000.0);
                self.backup_last_bytes.set(newest.bytes as i64);
            }
        }

        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Moves a counter up to a cumulative figure kept elsewhere.
fn advance(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// Resident set size of this process.
pub(crate) fn resident_memory() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// The cgroup memory limit, else physical memory.
fn memory_limit() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    })
}

/// Total size of the files under a directory.
pub(crate) fn directory_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
