//! The shard replicas this node holds: each a [`Shard`] with its Raft group, opened, formed and
//! removed here, and looked up by everything that serves requests.

use super::activity::Activity;
use super::backup::export::Exports;
use super::raft::ids::{GroupId, META_GROUP, NodeAddr, NodeId};
use super::raft::log_store::LogStore;
use super::raft::network::{NetworkFactory, Router};
use super::raft::shard_sm::{ShardRaft, ShardStateMachine};
use crate::collection::Collection;
use crate::error::{Error, ErrorCode, Result};
use crate::index::IndexOptions;
use crate::index::worker::IndexWorker;
use crate::shard::{Shard, saved_graph};
use crate::storage::{Changes, Storage, WalSyncer, file_stem};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// How long a clean stop waits for one graph's maintenance before saving it.
const SHUTDOWN_SAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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

/// What a new replica is built from.
pub struct ReplicaParts {
    /// This node's id: every group's Raft runs under it.
    pub node_id: NodeId,
    /// The node's RocksDB, shared by every replica.
    pub storage: Arc<Storage>,
    /// Shares WAL fsyncs among Raft groups.
    pub syncer: Arc<WalSyncer>,
    /// Builds HNSW graphs in the background.
    pub worker: Arc<IndexWorker>,
    /// Raft timing and snapshot settings.
    pub raft_config: Arc<openraft::Config>,
    /// Connections to peers, shared by every group.
    pub network: Router,
    /// How shards build and keep their indexes.
    pub index: IndexOptions,
    /// Where shard snapshots are kept.
    pub snapshot_dir: PathBuf,
    /// Follows each group's leadership and progress.
    pub activity: Arc<Activity>,
    /// Backups' exports of local replicas.
    pub exports: Arc<Exports>,
}

/// The registry of local replicas.
pub struct Replicas {
    /// What replicas are built from.
    parts: ReplicaParts,
    /// Replicas held here.
    groups: RwLock<BTreeMap<GroupId, Arc<LocalGroup>>>,
    /// Serialises opening and removing replicas.
    changes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("groups", &self.groups.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Replicas {
    pub fn new(parts: ReplicaParts) -> Replicas {
        Replicas {
            parts,
            groups: RwLock::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// The local replica of a group.
    pub fn get(&self, group: &str) -> Option<Arc<LocalGroup>> {
        self.groups.read().get(group).cloned()
    }

    /// The local replica of a group, or `peer_unreachable` (the caller tries another replica).
    pub fn require(&self, group: &str) -> Result<Arc<LocalGroup>> {
        self.get(group).ok_or_else(|| {
            Error::unavailable(
                ErrorCode::PeerUnreachable,
                format!("{} holds no replica of {group} (yet)", self.parts.node_id),
            )
        })
    }

    /// Every local replica.
    pub fn all(&self) -> Vec<Arc<LocalGroup>> {
        self.groups.read().values().cloned().collect()
    }

    /// Live document replicas held here.
    pub fn document_count(&self) -> u64 {
        self.groups
            .read()
            .values()
            .map(|g| g.shard.len() as u64)
            .sum()
    }

    /// Opens the local replica of `group` (idempotent).
    pub async fn open(&self, group: &str, collection: &Collection) -> Result<Arc<LocalGroup>> {
        let _changing = self.changes.lock().await;
        if let Some(existing) = self.get(group) {
            return Ok(existing);
        }
        let parts = &self.parts;
        let config = Arc::new(collection.config.clone());
        let storage = Arc::clone(&parts.storage);
        let worker = Arc::clone(&parts.worker);
        let namespace = group.to_string();
        let index = parts.index;
        let shard = tokio::task::spawn_blocking(move || {
            Shard::open(config, &namespace, storage, worker, index)
        })
        .await
        .map_err(|e| Error::Internal(format!("opening {group} panicked: {e}")))??;
        let shard = Arc::new(shard);
        let raft = ShardRaft::new(
            parts.node_id.clone(),
            Arc::clone(&parts.raft_config),
            NetworkFactory::new(parts.network.clone(), group.to_string()),
            LogStore::new(group, Arc::clone(&parts.storage), Arc::clone(&parts.syncer)),
            ShardStateMachine::new(
                Arc::clone(&shard),
                &parts.snapshot_dir,
                parts.node_id.clone(),
                Arc::clone(&parts.exports),
            ),
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
        let shard = Arc::downgrade(&local.shard);
        parts
            .activity
            .watch(group.to_string(), local.raft.metrics(), move |fatal| {
                if let Some(shard) = shard.upgrade() {
                    shard.fail(format!("its Raft stopped: {fatal}"));
                }
            });
        tracing::info!(%group, "opened replica");
        Ok(local)
    }

    /// Opens the local replica of a new group and initializes its Raft with exactly `members`,
    /// unless it has been initialized before (the controller's call, repeated until a majority
    /// formed the group).
    pub async fn form(
        &self,
        group: &str,
        collection: &Collection,
        members: BTreeMap<NodeId, NodeAddr>,
    ) -> Result<()> {
        let local = self.open(group, collection).await?;
        if local.raft.is_initialized().await.unwrap_or(true) {
            return Ok(());
        }
        for (id, addr) in &members {
            self.parts.network.peers.learn(id, &addr.raft);
        }
        match local.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.api_error(),
                    Some(openraft::errors::InitializeError::NotAllowed(_))
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::unavailable(
                ErrorCode::Unavailable,
                format!("initializing {group}: {e}"),
            )),
        }
    }

    /// Stops a local replica and deletes its documents, log and snapshot.
    pub async fn remove(&self, group: &str) -> Result<()> {
        let _changing = self.changes.lock().await;
        let Some(local) = self.groups.write().remove(group) else {
            return Ok(());
        };
        let _ = local.raft.shutdown().await;
        let storage = Arc::clone(&self.parts.storage);
        let snapshot = ShardStateMachine::new(
            Arc::clone(&local.shard),
            &self.parts.snapshot_dir,
            self.parts.node_id.clone(),
            Arc::clone(&self.parts.exports),
        );
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

    /// Deletes stored Raft state and documents of groups neither `wanted` nor open here
    /// (dropped or moved while this node was away).
    pub async fn remove_orphaned_state(&self, wanted: Vec<GroupId>) {
        let storage = Arc::clone(&self.parts.storage);
        let open: Vec<GroupId> = self.groups.read().keys().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || -> Result<()> {
            for group in storage.raft_groups()? {
                if group != META_GROUP && !wanted.contains(&group) && !open.contains(&group) {
                    let mut changes = Changes::default();
                    changes.clear_raft_group(&storage, &group);
                    changes.clear_namespace(&storage, &group);
                    storage.commit(changes)?;
                    tracing::info!(%group, "removed state of a dropped group");
                }
            }
            let held: std::collections::HashSet<String> =
                wanted.iter().chain(&open).map(|g| file_stem(g)).collect();
            saved_graph::remove_unless(storage.path(), |stem| held.contains(stem));
            Ok(())
        })
        .await;
    }

    /// Stops every replica's Raft group and graph maintenance.
    pub async fn shutdown(&self) {
        for group in self.all() {
            let _ = group.raft.shutdown().await;
            group.shard.stop();
        }
    }

    /// Saves each changed graph so that the next start loads it instead of building it (the
    /// last step of a clean stop), waiting up to [`SHUTDOWN_SAVE_WAIT`] for a graph's
    /// maintenance to let go; a graph busy longer (a rebuild) is not saved.
    pub async fn save_graphs_at_shutdown(&self) {
        let groups = self.all();
        let _ = tokio::task::spawn_blocking(move || {
            for group in groups {
                match group.shard.save_graph(SHUTDOWN_SAVE_WAIT) {
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(group = %group.group, %error, "the graph was not saved; the next start inserts what changed since it was");
                    }
                }
            }
        })
        .await;
    }

    /// Saves the graphs that are due (see [`Shard::save_graph_if_due`]), one at a time.
    pub async fn save_due_graphs(&self) {
        let groups = self.all();
        let _ = tokio::task::spawn_blocking(move || {
            for group in groups {
                if let Err(error) = group.shard.save_graph_if_due() {
                    tracing::warn!(group = %group.group, %error, "the graph was not saved");
                }
            }
        })
        .await;
    }
}
