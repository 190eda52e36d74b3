//! One Grape node: its identity and addresses, its storage, the meta group (this node's copy of
//! the cluster description), the registry of shard replicas it holds, and its life cycle from
//! opening the data directory to shutdown. What the node does with these lives in the rooms
//! beside it: `route` (documents, search, collections), `elastic` (membership and moves),
//! `status`, `tasks` and `server`.

use super::activity::Activity;
use super::backup::BackupCounters;
use super::backup::export::{Exports, WriteGate};
use super::disk::DiskReserve;
use super::raft::auth::PeerAuth;
use super::raft::ids::{GroupId, META_GROUP, NodeAddr, NodeId};
use super::raft::log_store::LogStore;
use super::raft::meta_commands::NodeState;
use super::raft::meta_sm::{MetaRaft, MetaStateMachine};
use super::raft::meta_state::MetaState;
use super::raft::network::{NetworkFactory, Router};
use super::raft::peers::Peers;
use super::raft::recovery;
use super::raft::snapshot::{Incoming, Outgoing};
use super::raft::tls::peer_http_client;
use super::raft::types::RaftMetrics;
use super::replicas::{ReplicaParts, Replicas};
use crate::collection::{Collection, DEFAULT_COLLECTION};
use crate::config::{Config, advertised};
use crate::error::{Error, ErrorCode, Result};
use crate::index::worker::IndexWorker;
use crate::storage::{Storage, StorageOptions, WalSyncer};
use openraft::type_config::async_runtime::WatchReceiver;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One Grape node.
pub struct Node {
    /// `node.id`.
    id: NodeId,
    /// Identifies this node's data directory: drawn when the directory is first used and kept
    /// in it. The cluster records it, and refuses Raft traffic to a member whose directory
    /// was replaced (see [`INCARNATION_RECORD`]).
    incarnation: u64,
    /// Where peers and clients reach this node.
    addr: NodeAddr,
    /// The configuration the node started with.
    config: Arc<Config>,
    /// The node's RocksDB.
    storage: Arc<Storage>,
    /// Shares WAL fsyncs among Raft groups; flushed at shutdown.
    syncer: Arc<WalSyncer>,
    /// Connections to peers, shared by every group and every call.
    peers: Arc<Peers>,
    /// Checks every call from peers (and signs ours, through `peers`).
    peer_auth: Arc<PeerAuth>,
    /// The meta group.
    meta: MetaRaft,
    /// The meta group's state (this node's copy).
    meta_state: Arc<RwLock<MetaState>>,
    /// Notified when the meta state changes.
    meta_changes: tokio::sync::watch::Receiver<u64>,
    /// Shard replicas held here.
    replicas: Replicas,
    /// Leadership changes and Raft counters.
    activity: Arc<Activity>,
    /// When the node started.
    started: Instant,
    /// Set when shutdown begins: the node stops answering readiness.
    stopping: AtomicBool,
    /// Set once the node was first ready (fully caught up); afterwards a small apply lag no
    /// longer makes it unready.
    was_ready: AtomicBool,
    /// Background tasks, stopped at shutdown.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Wakes the server when the node asks to be restarted (forced recovery).
    exit: Arc<tokio::sync::Notify>,
    /// Permits for searches running at once (`performance.max_concurrent_searches`).
    searches: Arc<tokio::sync::Semaphore>,
    /// The data volume's free space against `database.min_free_disk_mb`.
    disk: DiskReserve,
    /// Snapshots being received from peers.
    incoming: Arc<Incoming>,
    /// Snapshots being sent to peers.
    outgoing: Arc<Outgoing>,
    /// Shards this node exports for backups.
    exports: Arc<Exports>,
    /// Pauses writes for a backup's cut.
    write_gate: Arc<WriteGate>,
    /// Backups and restores this node ran.
    backup_counters: BackupCounters,
    /// Backups whose restore this node is running.
    restores_running: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the node's storage, its meta group and the replicas it held before it stopped.
    /// `raft` and `api` are the bound node-to-node and client addresses (advertised to others).
    /// Serving and background work are started by [`super::start`].
    pub async fn open(config: Config, raft: SocketAddr, api: SocketAddr) -> Result<Arc<Node>> {
        let config = Arc::new(config);
        let searches = Arc::new(tokio::sync::Semaphore::new(
            config.performance.max_concurrent_searches,
        ));
        let id = config.node.id.clone();
        let addr = NodeAddr {
            raft: advertised(config.node.advertise_raft_address.as_deref(), raft),
            api: advertised(config.node.advertise_api_address.as_deref(), api),
        };
        let storage_options = StorageOptions {
            cache_size_mb: config.database.cache_size_mb,
            write_buffer_size_mb: config.database.write_buffer_size_mb,
            enable_compression: config.database.enable_compression,
        };
        let data_dir = config.node.data_dir.clone();
        let worker_threads = config.index.construction_threads;
        let (storage, worker) = tokio::task::spawn_blocking(move || -> Result<_> {
            let storage = Arc::new(Storage::open(&data_dir, &storage_options)?);
            let worker = Arc::new(
                IndexWorker::new(worker_threads)
                    .map_err(|e| Error::Internal(format!("cannot start index threads: {e}")))?,
            );
            Ok((storage, worker))
        })
        .await
        .map_err(|e| Error::Internal(format!("opening storage panicked: {e}")))??;
        if recovery::requested(&config.node.data_dir) {
            let storage = Arc::clone(&storage);
            let (dir, id, addr) = (config.node.data_dir.clone(), id.clone(), addr.clone());
            tokio::task::spawn_blocking(move || {
                recovery::rewrite_as_single_node(&storage, &dir, &id, &addr)
            })
            .await
            .map_err(|e| Error::Internal(format!("forced recovery panicked: {e}")))??;
        }
        let incarnation = {
            let storage = Arc::clone(&storage);
            tokio::task::spawn_blocking(move || incarnation_of(&storage))
                .await
                .map_err(|e| Error::Internal(format!("reading the incarnation panicked: {e}")))??
        };
        let syncer = Arc::new(WalSyncer::start(&storage));

        let peer_auth = Arc::new(PeerAuth::from_config(&config)?);
        if config.peer_auth_required() && !peer_auth.is_enforced() {
            tracing::warn!(
                "cluster.insecure is set: node-to-node calls are NOT authenticated; anyone who \
                 reaches {} can write data and change the cluster's membership",
                config.node.raft_address
            );
        }
        if config.cluster.enable_tls && !config.cluster.tls_config.verify_peer {
            tracing::warn!(
                "cluster.tls_config.verify_peer is false: any TLS client is accepted on {}                  unless it also proves the cluster secret",
                config.node.raft_address
            );
        }
        let peers = Arc::new(Peers::new(
            peer_http_client(&config, raft)?,
            config.cluster.enable_tls,
            Arc::clone(&peer_auth),
        ));
        for peer in config.other_peers() {
            peers.learn(&peer.id, &peer.address);
        }
        peers.learn(&id, &addr.raft);
        crate::shard::saved_graph::clean_temporary(&config.node.data_dir);
        let snapshot_dir = config.node.data_dir.join("snapshots");
        let incoming = Arc::new(Incoming::new(&snapshot_dir).map_err(|e| {
            Error::unavailable(
                ErrorCode::StorageError,
                format!("cannot prepare {}: {e}", snapshot_dir.display()),
            )
        })?);
        let outgoing = Arc::new(Outgoing::default());
        let network = Router {
            peers: Arc::clone(&peers),
            outgoing: Arc::clone(&outgoing),
        };
        let raft_config = Arc::new(raft_settings(&config)?);

        let meta_sm = MetaStateMachine::open(Arc::clone(&storage)).map_err(storage_error)?;
        let meta_state = meta_sm.state();
        let meta_changes = meta_sm.subscribe();
        let meta = MetaRaft::new(
            id.clone(),
            Arc::clone(&raft_config),
            NetworkFactory::new(network.clone(), META_GROUP.to_string()),
            LogStore::new(META_GROUP, Arc::clone(&storage), Arc::clone(&syncer)),
            meta_sm,
        )
        .await
        .map_err(|e| Error::Internal(format!("cannot start the meta group: {e}")))?;
        check_default_collection(&config, &meta_state.read())?;

        let activity = Arc::new(Activity::default());
        let disk = DiskReserve::new(
            config.node.data_dir.clone(),
            config.database.min_free_disk_mb,
        );
        let exports = Arc::new(Exports::default());
        let replicas = Replicas::new(ReplicaParts {
            node_id: id.clone(),
            storage: Arc::clone(&storage),
            syncer: Arc::clone(&syncer),
            worker,
            raft_config,
            network,
            index: config.index.options(),
            snapshot_dir,
            activity: Arc::clone(&activity),
            exports: Arc::clone(&exports),
        });
        let node = Arc::new(Node {
            id,
            incarnation,
            addr,
            config,
            storage,
            syncer,
            peers,
            peer_auth,
            meta,
            meta_state,
            meta_changes,
            replicas,
            activity,
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            was_ready: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            exit: Arc::new(tokio::sync::Notify::new()),
            searches,
            disk,
            incoming,
            outgoing,
            exports,
            write_gate: Arc::new(WriteGate::default()),
            backup_counters: BackupCounters::default(),
            restores_running: Mutex::new(BTreeSet::new()),
        });
        let weak = Arc::downgrade(&node);
        node.activity
            .watch(META_GROUP.to_string(), node.meta.metrics(), move |_| {
                // Without its meta group a node can route nothing: it stops being ready.
                if let Some(node) = weak.upgrade() {
                    node.set_unready();
                }
            });
        // Replicas this node held before it stopped.
        let held: Vec<(GroupId, Collection)> = {
            let state = node.meta_read();
            state
                .groups_of(&node.id)
                .filter_map(|(group, record)| {
                    state
                        .collections
                        .get(&record.collection)
                        .map(|c| (group.clone(), c.clone()))
                })
                .collect()
        };
        for (group, collection) in held {
            node.replicas.open(&group, &collection).await?;
        }
        Ok(node)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// This node's data directory's identity (see [`INCARNATION_RECORD`]).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn addr(&self) -> &NodeAddr {
        &self.addr
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The data volume's free space against the reserve.
    pub fn disk(&self) -> &DiskReserve {
        &self.disk
    }

    /// Snapshots being received from peers.
    pub fn incoming(&self) -> &Arc<Incoming> {
        &self.incoming
    }

    /// Snapshots being sent to peers.
    pub fn outgoing(&self) -> &Outgoing {
        &self.outgoing
    }

    /// Shards this node exports for backups.
    pub fn exports(&self) -> &Exports {
        &self.exports
    }

    pub fn exports_arc(&self) -> &Arc<Exports> {
        &self.exports
    }

    /// Pauses writes for a backup's cut.
    pub fn write_gate(&self) -> &Arc<WriteGate> {
        &self.write_gate
    }

    /// Backups and restores this node ran.
    pub fn backup_counters(&self) -> &BackupCounters {
        &self.backup_counters
    }

    /// Backups whose restore this node is running.
    pub fn restores_running(&self) -> &Mutex<BTreeSet<String>> {
        &self.restores_running
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Connections to peers.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// What calls from peers must prove.
    pub fn peer_auth(&self) -> &PeerAuth {
        &self.peer_auth
    }

    /// The shard replicas held here.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// Leadership changes and Raft counters.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The meta group's Raft.
    pub fn meta_raft(&self) -> &MetaRaft {
        &self.meta
    }

    /// The meta group's current metrics.
    pub fn meta_metrics(&self) -> RaftMetrics {
        self.meta.metrics().borrow_watched().clone()
    }

    /// Whether this node leads the meta group.
    pub fn is_meta_leader(&self) -> bool {
        self.meta_metrics().current_leader.as_deref() == Some(self.id.as_str())
    }

    /// A copy of the meta state.
    pub fn meta_state(&self) -> MetaState {
        self.meta_state.read().clone()
    }

    /// The meta state, read in place (do not hold across an await).
    pub fn meta_read(&self) -> RwLockReadGuard<'_, MetaState> {
        self.meta_state.read()
    }

    /// Notified after every change of the meta state.
    pub fn meta_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.meta_changes.clone()
    }

    /// The cluster's members (voters of the meta group).
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.meta_state.read().members()
    }

    /// The leader of a group as this node knows it (groups it holds, and the meta group).
    pub fn leader_of(&self, group: &str) -> Option<NodeId> {
        if group == META_GROUP {
            return known_leader(&self.meta.metrics().borrow_watched());
        }
        self.replicas
            .get(group)
            .and_then(|g| known_leader(&g.raft.metrics().borrow_watched()))
    }

    /// Whether `node` answered a call recently (this node always does).
    pub fn is_reachable(&self, node: &str) -> bool {
        node == self.id || self.peers.answered_within(node, Duration::from_secs(3))
    }

    /// Members this node can reach, itself included.
    pub fn connected_nodes(&self) -> usize {
        1 + self
            .members()
            .iter()
            .filter(|m| **m != self.id && self.is_reachable(m))
            .count()
    }

    /// A permit to run one search, if fewer than `performance.max_concurrent_searches` run.
    pub fn search_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.searches).try_acquire_owned().ok()
    }

    /// Whether this node has been ready at least once since it started.
    pub fn has_been_ready(&self) -> bool {
        self.was_ready.load(Ordering::Acquire)
    }

    /// Whether this node has caught up: it is a voting member, the meta group and every
    /// replica placed here have a leader and have applied everything the leader reported
    /// committed, and the `default` collection exists. A node started to be added stays
    /// unready until `add-node` admits it and it has caught up.
    pub fn is_ready(&self) -> bool {
        if self.stopping.load(Ordering::Acquire) {
            return false;
        }
        // The first time, every replica must have applied all it knows to be committed; once
        // ready, a replica a few entries behind (as followers are under load) stays ready.
        let slack = if self.was_ready.load(Ordering::Acquire) {
            READY_LAG_ENTRIES
        } else {
            0
        };
        if !within(&self.meta_metrics(), slack) {
            return false;
        }
        let state = self.meta_state.read();
        if !state.collections.contains_key(DEFAULT_COLLECTION) {
            return false;
        }
        // A node admitted by add-node serves once it has caught up and become a voter.
        if !state.members().contains(&self.id) || state.node_state(&self.id) == NodeState::Joining {
            return false;
        }
        let ready = state.groups_of(&self.id).all(|(group, record)| {
            record.initialized
                && self
                    .replicas
                    .get(group)
                    .is_some_and(|local| within(&local.raft.metrics().borrow_watched(), slack))
        });
        if ready {
            self.was_ready.store(true, Ordering::Release);
        }
        ready
    }

    /// Whether the meta state here is known to be current: the meta group has a leader and
    /// this node applied everything it knows to be committed.
    pub fn meta_caught_up(&self) -> bool {
        let metrics = self.meta_metrics();
        if metrics.current_leader.is_none() {
            return false;
        }
        let applied = metrics.last_applied.as_ref().map(|l| l.index());
        let committed = metrics.cluster_committed.as_ref().map(|l| l.index());
        applied >= committed
    }

    /// Keeps a background task, to be stopped at shutdown.
    pub fn add_task(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().push(task);
    }

    /// Asks the server to stop this node shortly (after the current answers are sent).
    pub fn request_exit(&self) {
        let exit = Arc::clone(&self.exit);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            exit.notify_one();
        });
    }

    /// Completes when the node asked to be stopped.
    pub async fn exit_requested(&self) {
        self.exit.notified().await;
    }

    /// Stops answering readiness (shutdown has begun).
    pub fn set_unready(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Stops answering readiness, then stops every Raft group and flushes the log.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        self.activity.stop();
        self.replicas.shutdown().await;
        let _ = self.meta.shutdown().await;
        let _ = self.syncer.sync().await;
        // Everything acknowledged is durable by now; the graphs only save start-up time.
        self.replicas.save_graphs_at_shutdown().await;
        let storage = Arc::clone(&self.storage);
        let _ = tokio::task::spawn_blocking(move || storage.shutdown()).await;
    }
}

/// A stored `default` collection that disagrees with the configuration stops start-up.
fn check_default_collection(config: &Config, state: &MetaState) -> Result<()> {
    let wanted = config.default_collection()?;
    if let Some(stored) = state.collections.get(DEFAULT_COLLECTION) {
        let stored = &stored.config;
        if stored.dimension != wanted.dimension || stored.metric != wanted.metric {
            return Err(Error::invalid(
                ErrorCode::InvalidConfig,
                format!(
                    "database.vector_dimension/metric say {} {}, but the stored default \
                     collection has {} {}; use the stored values or a new data_dir",
                    wanted.dimension,
                    wanted.metric.as_str(),
                    stored.dimension,
                    stored.metric.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// The node record that holds the data directory's incarnation.
///
/// A member whose volume was lost comes back under its old id with nothing: no log, no vote.
/// Were it to take part in Raft as it was, it could vote a stale candidate in and lose entries
/// a majority had acknowledged. So each data directory draws a random incarnation when it is
/// first used; the cluster records every member's (`RegisterNode`), every node-to-node call
/// names the incarnation its sender expects of the receiver, and a node with another one
/// refuses them. The replaced member takes part in nothing until it is removed
/// (`remove-node`, which forgets the recorded incarnation) and added again as a new node.
pub const INCARNATION_RECORD: &str = "incarnation";

/// The data directory's incarnation, drawn and saved (synced) on first use.
fn incarnation_of(storage: &Storage) -> Result<u64> {
    if let Some(bytes) = storage.node_record(INCARNATION_RECORD)? {
        let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
            Error::unavailable(
                ErrorCode::StorageError,
                "the data directory's incarnation record is damaged",
            )
        })?;
        return Ok(u64::from_be_bytes(bytes));
    }
    // Never 0, so that a zero read from elsewhere cannot match.
    let incarnation = rand::random::<u64>().max(1);
    let mut changes = crate::storage::Changes::default();
    changes.put_node_record(storage, INCARNATION_RECORD, &incarnation.to_be_bytes());
    storage.commit(changes)?;
    storage.sync()?;
    Ok(incarnation)
}

/// Entries a replica may still have to apply and be ready: under a steady write load a
/// follower is always a few entries behind the commit index it has heard of, and readiness
/// must not flap with every batch.
const READY_LAG_ENTRIES: u64 = 256;

/// A leader is known and the replica is at most `slack` entries behind its commit index.
fn within(metrics: &RaftMetrics, slack: u64) -> bool {
    if metrics.current_leader.is_none() {
        return false;
    }
    let applied = metrics
        .last_applied
        .as_ref()
        .map(|l| l.index())
        .unwrap_or(0);
    let committed = metrics
        .cluster_committed
        .as_ref()
        .map(|l| l.index())
        .unwrap_or(0);
    applied + slack >= committed
}

fn storage_error(e: std::io::Error) -> Error {
    Error::unavailable(ErrorCode::StorageError, e.to_string())
}

/// openraft settings from the `cluster` section.
fn raft_settings(config: &Config) -> Result<openraft::Config> {
    let settings = openraft::Config {
        cluster_name: "grape".into(),
        heartbeat_interval: config.cluster.heartbeat_interval_ms,
        election_timeout_min: config.cluster.election_timeout_ms,
        election_timeout_max: config.cluster.election_timeout_ms * 3 / 2,
        install_snapshot_timeout: 60_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
            config.cluster.snapshot_log_entries,
        ),
        max_in_snapshot_log_to_keep: (config.cluster.snapshot_log_entries / 5).min(1_000),
        max_payload_entries: 64,
        // A member whose data directory was replaced is refused by its incarnation (see
        // INCARNATION_RECORD) and must be removed and added again. The one case left is a
        // directory lost in the few hundred milliseconds between a node's first start and the
        // registration of its incarnation: its leaders then re-seed it rather than stop
        // replicating to it.
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    settings
        .validate()
        .map_err(|e| Error::invalid(ErrorCode::InvalidConfig, format!("cluster timing: {e}")))
}

/// The leader a group's Raft names, unless that Raft stopped (a failed log write): a stopped
/// Raft still names the leader it last knew.
pub fn known_leader(metrics: &RaftMetrics) -> Option<NodeId> {
    metrics
        .running_state
        .is_ok()
        .then(|| metrics.current_leader.clone())
        .flatten()
}
