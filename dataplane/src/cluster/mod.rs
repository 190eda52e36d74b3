//! The node in its cluster: a meta Raft group (membership, collections, placement) and one Raft
//! group per shard replica it holds, all sharing one RocksDB, one WAL syncer and one
//! connection per peer. A single node is a cluster of one.
//!
//! ```text
//!   start ──> open storage, meta group, local shard groups ──> serve the transport
//!     ├─ bootstrap: fresh seed node + majority of fresh peers reachable -> initialize meta, once
//!     ├─ registrar: announce this node's addresses in the meta group
//!     ├─ reconciler: open replicas the meta group places here; drop replicas it no longer does
//!     └─ controller (meta leader only): create `default`, form new shard groups
//! ```
//!
//! The API layer calls [`Node`]'s methods; they route each request to the replica or leader
//! that must serve it, here or on a peer.

mod admin;
pub mod elastic;
pub mod log_store;
pub mod meta;
pub mod network;
mod ops;
pub mod placement;
pub mod recovery;
pub mod shard_sm;
mod tasks;
pub mod transport;
pub mod types;

use crate::collection::{Collection, DEFAULT_COLLECTION};
use crate::config::{Config, advertised};
use crate::error::{Error, ErrorCode, Result};
use crate::index::worker::IndexWorker;
use crate::shard::Shard;
use crate::storage::{Changes, Storage, StorageOptions, WalSyncer};
use grape_client::LeaderEvent;
use log_store::LogStore;
use meta::{MetaState, MetaStateMachine};
use network::{NetworkFactory, Peers, Router};
use openraft::ServerState;
use openraft::type_config::async_runtime::WatchReceiver;
use parking_lot::{Mutex, RwLock};
use shard_sm::ShardStateMachine;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use types::{GroupId, META_GROUP, MetaRaft, NodeAddr, NodeId, RaftMetrics, ShardRaft};

pub use ops::info;

/// A shard replica held by this node, with its Raft group.
pub struct LocalGroup {
    pub group: GroupId,
    pub collection: Collection,
    pub shard: Arc<Shard>,
    pub raft: ShardRaft,
}

impl std::fmt::Debug for LocalGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGroup")
            .field("group", &self.group)
            .finish()
    }
}

/// One Grape node.
pub struct Node {
    /// `node.id`.
    id: NodeId,
    /// Where peers and clients reach this node.
    addr: NodeAddr,
    /// The configuration the node started with.
    config: Arc<Config>,
    /// The node's RocksDB.
    storage: Arc<Storage>,
    /// Shares WAL fsyncs among Raft groups.
    syncer: Arc<WalSyncer>,
    /// Builds HNSW graphs in the background.
    worker: Arc<IndexWorker>,
    /// Connections to peers, shared by every group.
    router: Router,
    /// Raft timing and snapshot settings shared by every group.
    raft_config: Arc<openraft::Config>,
    /// The meta group.
    meta: MetaRaft,
    /// The meta group's state (this node's copy).
    meta_state: Arc<RwLock<MetaState>>,
    /// Notified when the meta state changes.
    meta_changes: tokio::sync::watch::Receiver<u64>,
    /// Shard replicas held here.
    groups: RwLock<BTreeMap<GroupId, Arc<LocalGroup>>>,
    /// Serialises opening and dropping replicas.
    group_changes: tokio::sync::Mutex<()>,
    /// Where shard snapshots are kept.
    snapshot_dir: PathBuf,
    /// When the node started.
    started: Instant,
    /// Set when shutdown begins: the node stops answering readiness.
    stopping: AtomicBool,
    /// Set once the node was first ready (fully caught up); afterwards a small apply lag no
    /// longer makes it unready.
    was_ready: AtomicBool,
    /// Recent leadership changes seen here, newest last.
    leader_events: Mutex<VecDeque<LeaderEvent>>,
    /// Elections this node started (`grape_raft_election_count_total`).
    elections: AtomicU64,
    /// Leadership changes seen (`grape_raft_leadership_changes_total`).
    leadership_changes: AtomicU64,
    /// Entries applied by local groups (`grape_raft_log_entries_total`).
    applied_entries: AtomicU64,
    /// Background tasks, stopped at shutdown.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Wakes the server when the node asks to be restarted (forced recovery).
    exit: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Retained leadership events.
const LEADER_EVENTS: usize = 200;

impl Node {
    /// Opens the node's storage and Raft groups and starts serving node-to-node traffic on
    /// `raft_listener`. `api` is the bound client API address (advertised to others).
    pub async fn start(
        config: Config,
        raft_listener: std::net::TcpListener,
        api: SocketAddr,
    ) -> Result<Arc<Node>> {
        let config = Arc::new(config);
        let id = config.node.id.clone();
        let raft_bound = raft_listener
            .local_addr()
            .map_err(|e| Error::Internal(format!("raft listener: {e}")))?;
        let addr = NodeAddr {
            raft: advertised(config.node.advertise_raft_address.as_deref(), raft_bound),
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
        let syncer = Arc::new(WalSyncer::start(Arc::clone(&storage)));

        let peers = Arc::new(Peers::new(
            transport::peer_http_client(&config, raft_bound)?,
            config.cluster.enable_tls,
        ));
        for peer in config.other_peers() {
            peers.learn(&peer.id, &peer.address);
        }
        peers.learn(&id, &addr.raft);
        let router = Router { peers };
        let raft_config = Arc::new(raft_settings(&config)?);

        let meta_sm = MetaStateMachine::open(Arc::clone(&storage)).map_err(storage_error)?;
        let meta_state = meta_sm.state();
        let meta_changes = meta_sm.subscribe();
        let meta = MetaRaft::new(
            id.clone(),
            Arc::clone(&raft_config),
            NetworkFactory::new(router.clone(), META_GROUP.to_string()),
            LogStore::new(META_GROUP, Arc::clone(&storage), Arc::clone(&syncer)),
            meta_sm,
        )
        .await
        .map_err(|e| Error::Internal(format!("cannot start the meta group: {e}")))?;

        // A stored `default` collection that disagrees with the configuration stops start-up.
        let wanted = config.default_collection()?;
        if let Some(stored) = meta_state.read().collections.get(DEFAULT_COLLECTION) {
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

        let node = Arc::new(Node {
            snapshot_dir: config.node.data_dir.join("snapshots"),
            id,
            addr,
            config,
            storage,
            syncer,
            worker,
            router,
            raft_config,
            meta,
            meta_state,
            meta_changes,
            groups: RwLock::new(BTreeMap::new()),
            group_changes: tokio::sync::Mutex::new(()),
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            was_ready: AtomicBool::new(false),
            leader_events: Mutex::new(VecDeque::new()),
            elections: AtomicU64::new(0),
            leadership_changes: AtomicU64::new(0),
            applied_entries: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
            exit: Arc::new(tokio::sync::Notify::new()),
        });
        node.watch_group(META_GROUP.to_string(), node.meta.metrics());
        // Replicas this node held before it stopped.
        let held: Vec<(GroupId, Collection)> = {
            let state = node.meta_state.read();
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
            node.open_group(&group, &collection).await?;
        }
        let server = transport::serve(Arc::clone(&node), raft_listener)?;
        node.tasks.lock().push(server);
        tasks::spawn_all(&node);
        Ok(node)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn addr(&self) -> &NodeAddr {
        &self.addr
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Log entries applied by this node's groups since start.
    pub fn applied_total(&self) -> u64 {
        self.applied_entries.load(Ordering::Relaxed)
    }

    /// Elections this node started since start.
    pub fn elections(&self) -> u64 {
        self.elections.load(Ordering::Relaxed)
    }

    /// Leadership changes this node saw since start.
    pub fn leadership_changes(&self) -> u64 {
        self.leadership_changes.load(Ordering::Relaxed)
    }

    /// Members this node can reach, itself included.
    pub fn connected_nodes(&self) -> usize {
        let members = self.meta_state.read().members();
        1 + members
            .iter()
            .filter(|m| {
                **m != self.id && self.router.peers.answered_within(m, Duration::from_secs(3))
            })
            .count()
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

    /// The local replica of a group.
    pub fn local_group(&self, group: &str) -> Option<Arc<LocalGroup>> {
        self.groups.read().get(group).cloned()
    }

    /// Every local replica.
    pub fn local_groups(&self) -> Vec<Arc<LocalGroup>> {
        self.groups.read().values().cloned().collect()
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
        if !state.members().contains(&self.id)
            || state.node_state(&self.id) == meta::NodeState::Joining
        {
            return false;
        }
        let groups = self.groups.read();
        let ready = state.groups_of(&self.id).all(|(group, record)| {
            record.initialized
                && groups
                    .get(group)
                    .is_some_and(|local| within(&local.raft.metrics().borrow_watched(), slack))
        });
        if ready {
            self.was_ready.store(true, Ordering::Release);
        }
        ready
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

    /// Stops answering readiness, then stops every Raft group.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        for group in self.local_groups() {
            let _ = group.raft.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
        let _ = self.syncer.sync().await;
        let storage = Arc::clone(&self.storage);
        let _ = tokio::task::spawn_blocking(move || storage.shutdown()).await;
    }

    /// Opens the local replica of `group` (idempotent).
    async fn open_group(
        self: &Arc<Self>,
        group: &str,
        collection: &Collection,
    ) -> Result<Arc<LocalGroup>> {
        let _changing = self.group_changes.lock().await;
        if let Some(existing) = self.local_group(group) {
            return Ok(existing);
        }
        let config = Arc::new(collection.config.clone());
        let storage = Arc::clone(&self.storage);
        let worker = Arc::clone(&self.worker);
        let namespace = group.to_string();
        let index_options = self.config.index.options();
        let shard = tokio::task::spawn_blocking(move || {
            Shard::open(config, &namespace, storage, worker, index_options)
        })
        .await
        .map_err(|e| Error::Internal(format!("opening {group} panicked: {e}")))??;
        let shard = Arc::new(shard);
        let raft = ShardRaft::new(
            self.id.clone(),
            Arc::clone(&self.raft_config),
            NetworkFactory::new(self.router.clone(), group.to_string()),
            LogStore::new(group, Arc::clone(&self.storage), Arc::clone(&self.syncer)),
            ShardStateMachine::new(Arc::clone(&shard), &self.snapshot_dir),
        )
        .await
        .map_err(|e| Error::Internal(format!("cannot start group {group}: {e}")))?;
        let local = Arc::new(LocalGroup {
            group: group.to_string(),
            collection: collection.clone(),
            shard,
            raft,
        });
        self.groups
            .write()
            .insert(group.to_string(), Arc::clone(&local));
        self.watch_group(group.to_string(), local.raft.metrics());
        tracing::info!(%group, "opened replica");
        Ok(local)
    }

    /// Stops a local replica and deletes its documents, log and snapshot.
    async fn drop_group(&self, group: &str) -> Result<()> {
        let _changing = self.group_changes.lock().await;
        let Some(local) = self.groups.write().remove(group) else {
            return Ok(());
        };
        let _ = local.raft.shutdown().await;
        let storage = Arc::clone(&self.storage);
        let snapshot = ShardStateMachine::new(Arc::clone(&local.shard), &self.snapshot_dir);
        let group_name = group.to_string();
        tokio::task::spawn_blocking(move || -> Result<()> {
            local.shard.destroy()?;
            let mut changes = Changes::default();
            changes.clear_raft_group(&storage, &group_name);
            storage.commit(changes)?;
            snapshot.remove_file();
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("dropping {group} panicked: {e}")))??;
        tracing::info!(%group, "dropped replica");
        Ok(())
    }

    /// Follows a group's metrics: leadership changes and elections.
    fn watch_group(
        self: &Arc<Self>,
        group: GroupId,
        mut metrics: openraft::type_config::alias::WatchReceiverOf<types::TypeConfig, RaftMetrics>,
    ) {
        let node = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut last_leader: Option<NodeId> = None;
            let mut last_state = ServerState::Learner;
            let mut last_applied = metrics
                .borrow_watched()
                .last_applied
                .as_ref()
                .map(|l| l.index());
            while metrics.changed().await.is_ok() {
                let Some(node) = node.upgrade() else { return };
                let m = metrics.borrow_watched().clone();
                if m.state == ServerState::Candidate && last_state != ServerState::Candidate {
                    node.elections.fetch_add(1, Ordering::Relaxed);
                }
                last_state = m.state;
                let applied = m.last_applied.as_ref().map(|l| l.index());
                if let (Some(now), previous) = (applied, last_applied) {
                    let before = previous.unwrap_or(0);
                    if now > before {
                        node.applied_entries
                            .fetch_add(now - before, Ordering::Relaxed);
                    }
                }
                last_applied = applied;
                if m.current_leader != last_leader {
                    if m.current_leader.is_some() {
                        node.leadership_changes.fetch_add(1, Ordering::Relaxed);
                    }
                    last_leader = m.current_leader.clone();
                    let mut events = node.leader_events.lock();
                    if events.len() == LEADER_EVENTS {
                        events.pop_front();
                    }
                    events.push_back(LeaderEvent {
                        at: chrono::Utc::now().to_rfc3339(),
                        group: group.clone(),
                        term: m.current_term,
                        leader: m.current_leader.clone(),
                    });
                }
                if m.state == ServerState::Shutdown {
                    return;
                }
            }
        });
        self.tasks.lock().push(task);
    }

    /// Leadership changes seen here, newest first.
    pub fn leader_events(&self) -> Vec<LeaderEvent> {
        self.leader_events.lock().iter().rev().cloned().collect()
    }
}

/// Whether a group member knows its leader and has applied what the leader committed.
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

/// Applied everything known to be committed (a leader is known).
fn caught_up(metrics: &RaftMetrics) -> bool {
    if metrics.current_leader.is_none() {
        return false;
    }
    let applied = metrics.last_applied.as_ref().map(|l| l.index());
    let committed = metrics.cluster_committed.as_ref().map(|l| l.index());
    applied >= committed
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
        // A node whose data directory was wiped comes back under the same id with an empty
        // log: its leaders must re-seed it instead of treating the reverted log as a bug.
        // (A Raft member that loses acknowledged entries weakens the quorum guarantee, as any
        // lost replica does: DESIGN.md's promise holds while a majority of replicas survive.)
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    settings
        .validate()
        .map_err(|e| Error::invalid(ErrorCode::InvalidConfig, format!("cluster timing: {e}")))
}
