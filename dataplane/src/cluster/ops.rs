//! What the API asks of a node, routed to where it must run: writes to each shard group's
//! leader, reads and searches to a replica (or the leader, for `strong` consistency), here or
//! on a peer.

use super::meta::{MetaCommand, MetaResponse};
use super::network::{GetRpc, InitGroupRpc, ListRpc, ProposeRpc, RemoteHit, SearchRpc};
use super::types::{GroupId, META_GROUP, NodeAddr, NodeId, Request, Response};
use super::{LocalGroup, Node};
use crate::collection::{
    Collection, Cursor, DEFAULT_COLLECTION, PreparedSearch, merge_hits, search_shard,
    to_search_hit, validate_collection_config, validate_document,
};
use crate::error::{Error, ErrorCode, Result};
use crate::shard::{ShardCommand, ShardResponse};
use crate::storage::Changes;
use futures::future::join_all;
use grape_client::{
    CollectionConfig, CollectionInfo, Consistency, Document, DocumentInput, SearchHit,
    SearchRequest,
};
use openraft::ReadPolicy;
use openraft::type_config::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a request waits for a leader (an election, a restart) before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Timeout of one call to a peer.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// A collection's public description, with the documents this node holds of it.
pub fn info(node: &Node, collection: &Collection) -> CollectionInfo {
    let documents = node
        .local_groups()
        .iter()
        .filter(|g| g.collection.uid == collection.uid)
        .map(|g| g.shard.len() as u64)
        .sum();
    CollectionInfo {
        config: collection.config.clone(),
        documents,
    }
}

impl Node {
    /// A collection, or 404.
    pub fn collection(&self, name: &str) -> Result<Collection> {
        self.meta_state
            .read()
            .collections
            .get(name)
            .cloned()
            .ok_or_else(|| {
                Error::not_found(
                    ErrorCode::CollectionNotFound,
                    format!("collection '{name}' does not exist"),
                )
            })
    }

    /// Every collection, by name.
    pub fn collections(&self) -> Vec<Collection> {
        self.meta_state
            .read()
            .collections
            .values()
            .cloned()
            .collect()
    }

    /// Live document replicas held by this node.
    pub fn document_count(&self) -> u64 {
        self.local_groups()
            .iter()
            .map(|g| g.shard.len() as u64)
            .sum()
    }

    /// Replicas of a group, preferred leader first.
    fn replicas(&self, group: &str) -> Vec<NodeId> {
        self.meta_state
            .read()
            .groups
            .get(group)
            .map(|g| g.replicas.clone())
            .unwrap_or_default()
    }

    /// The leader of a group as this node knows it.
    pub fn leader_of(&self, group: &str) -> Option<NodeId> {
        if group == META_GROUP {
            return self.meta.metrics().borrow_watched().current_leader.clone();
        }
        self.local_group(group)
            .and_then(|g| g.raft.metrics().borrow_watched().current_leader.clone())
    }

    /// Appends a command to a group's log through its leader, wherever it is, and returns the
    /// outcome once it is committed and applied. Waits out elections up to [`LEADER_WAIT`].
    pub async fn propose(&self, group: &str, request: Request) -> Result<Response> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut hint: Option<NodeId> = None;
        let mut attempt = 0usize;
        loop {
            let replicas = if group == META_GROUP {
                self.meta_state.read().members().into_iter().collect()
            } else {
                self.replicas(group)
            };
            let target = hint
                .take()
                .or_else(|| self.leader_of(group))
                .or_else(|| replicas.get(attempt % replicas.len().max(1)).cloned());
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = match &target {
                // A leader cut off from its quorum keeps the entry pending: give up at the
                // deadline without acknowledging (the write may still commit later).
                Some(target) if *target == self.id => {
                    tokio::time::timeout(left, self.propose_here(group, request.clone()))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::unavailable(
                                ErrorCode::NoLeader,
                                format!(
                                    "{group} could not commit the write within {} s",
                                    LEADER_WAIT.as_secs()
                                ),
                            ))
                        })
                }
                Some(target) => self
                    .router
                    .peers
                    .call(
                        target,
                        "/internal/propose",
                        &ProposeRpc {
                            group: group.to_string(),
                            request: request.clone(),
                        },
                        left.max(Duration::from_millis(100)),
                    )
                    .await
                    .map_err(Error::from),
                None => Err(Error::NotLeader {
                    message: format!("no replica of {group} is known"),
                    leader: None,
                }),
            };
            match outcome {
                Ok(response) => return Ok(response),
                Err(Error::NotLeader { leader, message }) => {
                    if Instant::now() > deadline {
                        return Err(Error::unavailable(ErrorCode::NoLeader, message));
                    }
                    if leader.is_some() && leader != target {
                        hint = leader;
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(Error::Unavailable {
                    code: ErrorCode::PeerUnreachable,
                    message,
                }) => {
                    if Instant::now() > deadline {
                        return Err(Error::unavailable(ErrorCode::NoLeader, message));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Error::Unavailable {
                    code: ErrorCode::NoLeader,
                    message,
                }) if Instant::now() > deadline => {
                    return Err(Error::unavailable(ErrorCode::NoLeader, message));
                }
                Err(Error::Unavailable {
                    code: ErrorCode::NoLeader,
                    ..
                }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Appends a command to a group whose leader should be this node.
    pub(super) async fn propose_here(&self, group: &str, request: Request) -> Result<Response> {
        let result = if group == META_GROUP {
            self.meta.client_write(request).await.map(|r| r.data)
        } else {
            let local = self.local_group(group).ok_or_else(|| Error::NotLeader {
                message: format!("this node holds no replica of {group}"),
                leader: None,
            })?;
            local.raft.client_write(request).await.map(|r| r.data)
        };
        result.map_err(|e| match e.forward_to_leader() {
            Some(forward) => Error::NotLeader {
                message: format!("{} does not lead {group}", self.id),
                leader: forward.leader_id.clone(),
            },
            None => Error::unavailable(ErrorCode::Unavailable, format!("{group}: {e}")),
        })
    }

    /// Creates a collection; 409 if the name is taken. Returns once every shard group has
    /// formed here.
    pub async fn create_collection(&self, config: CollectionConfig) -> Result<CollectionInfo> {
        validate_collection_config(&config)?;
        let response = self
            .propose(
                META_GROUP,
                Request::Meta(MetaCommand::CreateCollection {
                    config: config.clone(),
                }),
            )
            .await?;
        let collection = match response {
            Response::Meta(MetaResponse::Created { collection }) => collection,
            Response::Meta(MetaResponse::AlreadyExists) => {
                return Err(Error::conflict(
                    ErrorCode::CollectionExists,
                    format!("collection '{}' already exists", config.name),
                ));
            }
            Response::Meta(MetaResponse::Invalid { message }) => {
                return Err(Error::invalid(ErrorCode::InvalidCollection, message));
            }
            other => return Err(Error::Internal(format!("create answered {other:?}"))),
        };
        self.wait_formed(&collection).await?;
        Ok(info(self, &collection))
    }

    /// Waits until every shard group of a collection has a leader.
    async fn wait_formed(&self, collection: &Collection) -> Result<()> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let formed = {
                let state = self.meta_state.read();
                collection.shard_ids().all(|s| {
                    state
                        .groups
                        .get(&collection.group(s))
                        .is_some_and(|g| g.initialized)
                })
            };
            if formed {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::unavailable(
                    ErrorCode::NoLeader,
                    format!("the shards of '{}' did not form in time", collection.name()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drops a collection and its documents everywhere. The `default` collection stays.
    pub async fn drop_collection(&self, name: &str) -> Result<()> {
        if name == DEFAULT_COLLECTION {
            return Err(Error::conflict(
                ErrorCode::DefaultCollection,
                "the default collection is defined by the node configuration and cannot be dropped",
            ));
        }
        self.collection(name)?;
        match self
            .propose(
                META_GROUP,
                Request::Meta(MetaCommand::DropCollection {
                    name: name.to_string(),
                }),
            )
            .await?
        {
            Response::Meta(MetaResponse::NotFound) => Err(Error::not_found(
                ErrorCode::CollectionNotFound,
                format!("collection '{name}' does not exist"),
            )),
            _ => Ok(()),
        }
    }

    /// Validates every document, then writes them, split by shard and committed in parallel,
    /// and returns their ids in input order. Nothing is written if any is invalid.
    pub async fn upsert(
        &self,
        name: &str,
        inputs: Vec<DocumentInput>,
        batch: bool,
    ) -> Result<Vec<String>> {
        let collection = self.collection(name)?;
        if batch {
            if inputs.is_empty() {
                return Err(Error::invalid(
                    ErrorCode::EmptyBatch,
                    "documents must not be empty",
                ));
            }
            let max = self.config.performance.max_batch_size;
            if inputs.len() > max {
                return Err(Error::invalid(
                    ErrorCode::BatchTooLarge,
                    format!(
                        "batch has {} documents; at most {max} are allowed (performance.max_batch_size)",
                        inputs.len()
                    ),
                ));
            }
        }
        let documents = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| validate_document(&collection.config, input, batch.then_some(i)))
            .collect::<Result<Vec<_>>>()?;
        let max_documents = self.config.database.max_documents;
        if self.document_count() + documents.len() as u64 > max_documents {
            let new = documents
                .iter()
                .filter(|d| {
                    self.local_group(&collection.group(collection.shard_for(&d.id)))
                        .is_none_or(|g| !g.shard.contains(&d.id))
                })
                .count() as u64;
            if new > 0 && self.document_count() + new > max_documents {
                return Err(Error::conflict(
                    ErrorCode::CapacityExceeded,
                    format!(
                        "this node holds its maximum of {max_documents} documents (database.max_documents)"
                    ),
                ));
            }
        }
        let ids: Vec<String> = documents.iter().map(|d| d.id.clone()).collect();
        let mut by_shard: BTreeMap<u32, Vec<_>> = BTreeMap::new();
        for document in documents {
            by_shard
                .entry(collection.shard_for(&document.id))
                .or_default()
                .push(document);
        }
        let writes = by_shard.into_iter().map(|(shard, documents)| {
            let group = collection.group(shard);
            async move {
                self.propose(&group, Request::Shard(ShardCommand::Upsert { documents }))
                    .await
            }
        });
        for result in join_all(writes).await {
            result?;
        }
        Ok(ids)
    }

    /// Deletes a document; false if it did not exist.
    pub async fn delete(&self, name: &str, id: &str) -> Result<bool> {
        let collection = self.collection(name)?;
        let group = collection.group(collection.shard_for(id));
        let response = self
            .propose(
                &group,
                Request::Shard(ShardCommand::Delete {
                    ids: vec![id.to_string()],
                }),
            )
            .await?;
        match response {
            Response::Shard(ShardResponse::Deleted { existed }) => {
                Ok(existed.first().copied().unwrap_or(false))
            }
            other => Err(Error::Internal(format!("delete answered {other:?}"))),
        }
    }

    /// Runs `work` on a replica of `group`: the leader for `strong` reads (after confirming
    /// leadership with a quorum, read-index), any replica otherwise (this node's when it holds
    /// one). Retries elsewhere while replicas are down or leadership moves.
    async fn on_replica<T, Here, HereFut, There, ThereFut>(
        &self,
        group: &str,
        strong: bool,
        here: Here,
        there: There,
    ) -> Result<T>
    where
        Here: Fn(Arc<LocalGroup>) -> HereFut,
        HereFut: std::future::Future<Output = Result<T>>,
        There: Fn(NodeId) -> ThereFut,
        ThereFut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut attempt = 0usize;
        let mut hint: Option<NodeId> = None;
        loop {
            let replicas = self.replicas(group);
            let target = if strong {
                hint.take()
                    .or_else(|| self.leader_of(group))
                    .or_else(|| replicas.get(attempt % replicas.len().max(1)).cloned())
            } else if attempt == 0 && self.local_group(group).is_some() {
                Some(self.id.clone())
            } else {
                replicas.get(attempt % replicas.len().max(1)).cloned()
            };
            attempt += 1;
            let outcome = match target {
                Some(target) if target == self.id => match self.local_group(group) {
                    Some(local) => {
                        if strong {
                            match self.read_index(&local).await {
                                Ok(()) => here(local).await,
                                Err(e) => Err(e),
                            }
                        } else {
                            here(local).await
                        }
                    }
                    None => Err(Error::unavailable(
                        ErrorCode::PeerUnreachable,
                        format!("no replica of {group} here"),
                    )),
                },
                Some(target) => there(target).await,
                None => Err(Error::unavailable(
                    ErrorCode::NoLeader,
                    format!("no replica of {group} is known"),
                )),
            };
            match outcome {
                Err(Error::NotLeader { leader, message }) => {
                    if Instant::now() > deadline {
                        return Err(Error::unavailable(ErrorCode::NoLeader, message));
                    }
                    hint = leader;
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(Error::Unavailable {
                    code: ErrorCode::PeerUnreachable | ErrorCode::NoLeader,
                    message,
                }) => {
                    if Instant::now() > deadline {
                        return Err(Error::unavailable(ErrorCode::NoLeader, message));
                    }
                    if attempt >= replicas.len() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// Confirms this node leads `local`'s group with a quorum and has applied everything
    /// committed before the call: a read after this is linearizable.
    async fn read_index(&self, local: &LocalGroup) -> Result<()> {
        local
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map(|_| ())
            .map_err(|e| match e.forward_to_leader() {
                Some(forward) => Error::NotLeader {
                    message: format!("{} does not lead {}", self.id, local.group),
                    leader: forward.leader_id.clone(),
                },
                None => Error::unavailable(ErrorCode::NoLeader, format!("{}: {e}", local.group)),
            })
    }

    /// A document by id, or 404.
    pub async fn get(&self, name: &str, id: &str, consistency: Consistency) -> Result<Document> {
        let collection = self.collection(name)?;
        let group = collection.group(collection.shard_for(id));
        let strong = consistency == Consistency::Strong;
        let found = self
            .on_replica(
                &group,
                strong,
                |local| {
                    let id = id.to_string();
                    async move { blocking(move || local.shard.get(&id)).await }
                },
                |target| {
                    let rpc = GetRpc {
                        group: group.clone(),
                        id: id.to_string(),
                        strong,
                    };
                    async move {
                        self.router
                            .peers
                            .call(&target, "/internal/get", &rpc, PEER_TIMEOUT)
                            .await
                            .map_err(Error::from)
                    }
                },
            )
            .await?;
        found.ok_or_else(|| {
            Error::not_found(
                ErrorCode::DocumentNotFound,
                format!("document '{id}' does not exist"),
            )
        })
    }

    /// Reads a document from the local replica (for a peer).
    pub(super) async fn get_here(&self, rpc: GetRpc) -> Result<Option<Document>> {
        let local = self.local_group(&rpc.group).ok_or_else(|| {
            Error::unavailable(
                ErrorCode::PeerUnreachable,
                format!("no replica of {} here", rpc.group),
            )
        })?;
        if rpc.strong {
            self.read_index(&local).await?;
        }
        blocking(move || local.shard.get(&rpc.id)).await
    }

    /// One page of a collection's documents, in (shard, id) order.
    pub async fn list(
        &self,
        name: &str,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<(Vec<Document>, Option<Cursor>)> {
        let collection = self.collection(name)?;
        let mut found: Vec<Document> = Vec::new();
        let (first, mut after) = match cursor {
            Some(c) => (c.shard, Some(c.after)),
            None => (0, None),
        };
        for shard in collection.shard_ids().skip(first as usize) {
            let group = collection.group(shard);
            let wanted = limit - found.len();
            let page = self
                .on_replica(
                    &group,
                    false,
                    |local| {
                        let after = after.clone();
                        async move { blocking(move || local.shard.list(after.as_deref(), wanted)).await }
                    },
                    |target| {
                        let rpc = ListRpc {
                            group: group.clone(),
                            after: after.clone(),
                            limit: wanted,
                        };
                        async move {
                            self.router
                                .peers
                                .call(&target, "/internal/list", &rpc, PEER_TIMEOUT)
                                .await
                                .map_err(Error::from)
                        }
                    },
                )
                .await?;
            found.extend(page);
            if found.len() == limit {
                let last = found.last().map(|d| d.id.clone()).unwrap_or_default();
                return Ok((found, Some(Cursor { shard, after: last })));
            }
            after = None;
        }
        Ok((found, None))
    }

    /// Lists documents of the local replica (for a peer).
    pub(super) async fn list_here(&self, rpc: ListRpc) -> Result<Vec<Document>> {
        let local = self.local_group(&rpc.group).ok_or_else(|| {
            Error::unavailable(
                ErrorCode::PeerUnreachable,
                format!("no replica of {} here", rpc.group),
            )
        })?;
        blocking(move || local.shard.list(rpc.after.as_deref(), rpc.limit)).await
    }

    /// Searches a collection: one replica per shard, results merged, within
    /// `performance.query_timeout_ms`.
    pub async fn search(&self, name: &str, request: &SearchRequest) -> Result<Vec<SearchHit>> {
        let collection = self.collection(name)?;
        // Validate here first: bad input is a 400 before any fan-out.
        collection.prepare_search(request)?;
        let timeout = Duration::from_millis(self.config.performance.query_timeout_ms);
        match tokio::time::timeout(timeout, self.fan_out(&collection, request)).await {
            Ok(result) => result,
            Err(_) => Err(Error::unavailable(
                ErrorCode::QueryTimeout,
                format!(
                    "the search took longer than {} ms (performance.query_timeout_ms)",
                    timeout.as_millis()
                ),
            )),
        }
    }

    async fn fan_out(
        &self,
        collection: &Collection,
        request: &SearchRequest,
    ) -> Result<Vec<SearchHit>> {
        let strong = request.consistency == Some(Consistency::Strong);
        // Shards with a local replica are searched together in one blocking task.
        let (local, remote): (Vec<u32>, Vec<u32>) = collection
            .shard_ids()
            .partition(|s| !strong && self.local_group(&collection.group(*s)).is_some());
        let mut searches = Vec::new();
        if !local.is_empty() {
            searches.push(Box::pin(async {
                self.search_here(SearchRpc {
                    collection: collection.clone(),
                    shards: local,
                    request: request.clone(),
                    strong: false,
                })
                .await
            })
                as std::pin::Pin<
                    Box<dyn std::future::Future<Output = Result<Vec<RemoteHit>>> + Send + '_>,
                >);
        }
        for shard in remote {
            let group = collection.group(shard);
            searches.push(Box::pin(async move {
                let rpc = |shards: Vec<u32>| SearchRpc {
                    collection: collection.clone(),
                    shards,
                    request: request.clone(),
                    strong,
                };
                self.on_replica(
                    &group,
                    strong,
                    |_local| async move { self.search_here(rpc(vec![shard])).await },
                    |target| {
                        let rpc = rpc(vec![shard]);
                        async move {
                            self.router
                                .peers
                                .call(&target, "/internal/search", &rpc, PEER_TIMEOUT)
                                .await
                                .map_err(Error::from)
                        }
                    },
                )
                .await
            }));
        }
        let mut hits = Vec::new();
        for result in join_all(searches).await {
            hits.extend(result?);
        }
        let top_k = request.top_k;
        let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
        let shard_hits = hits
            .into_iter()
            .map(|h| {
                if let Some(v) = h.vector {
                    vectors.insert(h.hit.id.to_string(), v);
                }
                h.hit
            })
            .collect();
        Ok(merge_hits(shard_hits, top_k)
            .into_iter()
            .map(|hit| {
                let vector = vectors.remove(&*hit.id);
                to_search_hit(hit, vector)
            })
            .collect())
    }

    /// Searches local replicas of the given shards (for this node's fan-out or a peer's).
    pub(super) async fn search_here(&self, rpc: SearchRpc) -> Result<Vec<RemoteHit>> {
        let prepared = rpc.collection.prepare_search(&rpc.request)?;
        let mut locals = Vec::with_capacity(rpc.shards.len());
        for shard in &rpc.shards {
            let group = rpc.collection.group(*shard);
            let local = self.local_group(&group).ok_or_else(|| {
                Error::unavailable(
                    ErrorCode::PeerUnreachable,
                    format!("no replica of {group} here"),
                )
            })?;
            if rpc.strong {
                self.read_index(&local).await?;
            }
            locals.push(local);
        }
        // A small search (few shards x small ef, no filter scan, no vectors to read from
        // storage) costs less than the two thread hand-offs of the blocking pool: it runs right
        // here. Larger ones go to the blocking pool and search their shards in parallel.
        let cost = self.config.index.graph.search_cost_per_ef();
        let small = prepared.filter.is_none()
            && !prepared.include_vectors
            && cost * locals.len() * prepared.ef.max(prepared.top_k) <= INLINE_SEARCH_WORK;
        if small {
            return search_locals(&locals, &prepared, false);
        }
        blocking(move || search_locals(&locals, &prepared, true)).await
    }

    /// Initializes a group's Raft on this node if it has never been (the controller's call).
    pub(super) async fn init_group(
        self: &Arc<Self>,
        group: &str,
        members: BTreeMap<NodeId, NodeAddr>,
    ) -> Result<()> {
        let collection = {
            let state = self.meta_state.read();
            let record = state.groups.get(group).ok_or_else(|| {
                Error::not_found(
                    ErrorCode::NotFound,
                    format!("group {group} is not in this node's meta state yet"),
                )
            })?;
            state
                .collections
                .get(&record.collection)
                .cloned()
                .ok_or_else(|| {
                    Error::not_found(
                        ErrorCode::NotFound,
                        format!("collection of {group} unknown"),
                    )
                })?
        };
        let local = self.open_group(group, &collection).await?;
        if local.raft.is_initialized().await.unwrap_or(true) {
            return Ok(());
        }
        for (id, addr) in &members {
            self.router.peers.learn(id, &addr.raft);
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

    /// Answers a peer's `init-group` call.
    pub(super) async fn init_group_rpc(self: &Arc<Self>, rpc: InitGroupRpc) -> Result<()> {
        self.init_group(&rpc.group, rpc.members).await
    }

    /// Deletes Raft state of groups this node no longer holds (dropped or moved while it was
    /// away).
    pub(super) async fn drop_orphaned_state(&self) {
        let wanted: Vec<GroupId> = {
            let state = self.meta_state.read();
            state.copies_on(&self.id).map(|(g, _)| g.clone()).collect()
        };
        let storage = Arc::clone(&self.storage);
        let local: Vec<GroupId> = self
            .local_groups()
            .iter()
            .map(|g| g.group.clone())
            .collect();
        let _ = tokio::task::spawn_blocking(move || -> Result<()> {
            for group in storage.raft_groups()? {
                if group != META_GROUP && !wanted.contains(&group) && !local.contains(&group) {
                    let mut changes = Changes::default();
                    changes.clear_raft_group(&storage, &group);
                    changes.clear_namespace(&storage, &group);
                    storage.commit(changes)?;
                    tracing::info!(%group, "removed state of a dropped group");
                }
            }
            Ok(())
        })
        .await;
    }
}

/// Keeps the best `top_k` of hits gathered from several shards.
fn merge_remote(mut hits: Vec<RemoteHit>, top_k: usize) -> Vec<RemoteHit> {
    hits.sort_by(|a, b| {
        a.hit
            .distance
            .total_cmp(&b.hit.distance)
            .then_with(|| a.hit.id.cmp(&b.hit.id))
    });
    hits.truncate(top_k);
    hits
}

/// Breadth times shards, weighted by [`GraphEngine::search_cost_per_ef`], up to which a
/// search runs on the request's own thread (about a tenth of a millisecond of graph work on
/// one core).
///
/// [`GraphEngine::search_cost_per_ef`]: crate::index::GraphEngine::search_cost_per_ef
const INLINE_SEARCH_WORK: usize = 256;

/// Searches local replicas, in parallel on the rayon pool when `parallel`, and merges their
/// hits into the best `top_k`.
fn search_locals(
    locals: &[Arc<LocalGroup>],
    prepared: &PreparedSearch,
    parallel: bool,
) -> Result<Vec<RemoteHit>> {
    use rayon::prelude::*;
    let search = |local: &Arc<LocalGroup>| -> Result<Vec<RemoteHit>> {
        search_shard(&local.shard, prepared)
            .into_iter()
            .map(|hit| {
                let vector = if prepared.include_vectors {
                    local.shard.get(&hit.id)?.map(|d| d.vector)
                } else {
                    None
                };
                Ok(RemoteHit { hit, vector })
            })
            .collect()
    };
    let per_shard: Vec<Result<Vec<RemoteHit>>> = if parallel && locals.len() > 1 {
        locals.par_iter().map(search).collect()
    } else {
        locals.iter().map(search).collect()
    };
    let mut hits = Vec::new();
    for result in per_shard {
        hits.extend(result?);
    }
    Ok(merge_remote(hits, prepared.top_k))
}

/// Runs blocking work (RocksDB reads, searches) off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("a worker panicked: {e}")))?
}
