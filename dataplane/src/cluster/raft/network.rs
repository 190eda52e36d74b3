//! openraft's network for every group, over the shared [`Peers`]: each group's Raft messages
//! are tagged with the group and sent on the peer's one connection.

use super::ids::{GroupId, NodeAddr, NodeId};
use super::peers::{CallError, Peers};
use super::rpc::{
    AppendRpc, PreVoteRpc, Rpc, SnapshotChunkRpc, SnapshotFinish, SnapshotRpc, TransferLeaderRpc,
    VoteRpc,
};
use super::snapshot::{CHUNK_BYTES, Outgoing, SnapshotData, Whole};
use super::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::error::ErrorCode;
use openraft::OptionalSend;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::TypeConfigExt;
use openraft_multi::{GroupNetworkAdapter, GroupNetworkFactory, GroupRouter};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The shared router every group's network goes through.
#[derive(Clone, Debug)]
pub struct Router {
    pub peers: Arc<Peers>,
    /// Snapshots being sent, with their progress.
    pub outgoing: Arc<Outgoing>,
}

/// How long one chunk of a snapshot may take (1 MiB over a slow link).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the receiver may take to install a snapshot once the last chunk has arrived.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);

fn streaming_error(e: CallError) -> StreamingError<TypeConfig> {
    match e {
        CallError::Unreachable(_) => StreamingError::Unreachable(unreachable(e)),
        CallError::Remote(_) => StreamingError::Network(NetworkError::new(&e)),
    }
}

fn unreachable(error: CallError) -> Unreachable<TypeConfig> {
    Unreachable::new(&error)
}

impl Router {
    async fn raft_call<R: Rpc>(
        &self,
        target: &str,
        request: &R,
        option: &RPCOption,
    ) -> Result<R::Response, RPCError<TypeConfig>> {
        self.peers
            .call(target, request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable(_) => RPCError::Unreachable(unreachable(e)),
                CallError::Remote(_) => RPCError::Network(NetworkError::new(&e)),
            })
    }
}

impl GroupRouter<TypeConfig, GroupId> for Router {
    type SnapshotData = super::types::SnapshotData;

    async fn append_entries(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&target, &AppendRpc { group, rpc }, &option)
            .await
    }

    async fn vote(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&target, &VoteRpc { group, rpc }, &option)
            .await
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&target, &PreVoteRpc { group, rpc }, &option)
            .await
    }

    /// Streams the snapshot in chunks of [`CHUNK_BYTES`] (see [`super::snapshot`]), reading
    /// each from the snapshot's file as it goes; the last chunk asks the receiver to install
    /// it. A receiver of an earlier version (which does not know the chunked call) gets the
    /// snapshot whole.
    async fn full_snapshot(
        &self,
        target: NodeId,
        group: GroupId,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let progress = self.outgoing.start(&group, &target);
        let send = async {
            let data = snapshot.snapshot;
            let len = data.len();
            tracing::info!(%group, %target, bytes = len, "sending a snapshot");
            let transfer: u64 = rand::random();
            let mut digest = xxhash_rust::xxh3::Xxh3::new();
            let mut offset = 0u64;
            loop {
                let chunk = read_chunk(&data, offset).await?;
                digest.update(&chunk);
                let next = offset + chunk.len() as u64;
                let last = next >= len;
                if last
                    && let Some(recorded) = data.recorded_digest()
                    && recorded != digest.digest()
                {
                    tracing::error!(%group, "the kept snapshot is damaged: deleting it so that the next one is built afresh");
                    data.remove_file();
                    let damaged = std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the kept snapshot does not match its digest",
                    );
                    return Err(StreamingError::StorageError(
                        openraft::StorageError::read_snapshot(
                            Some(snapshot.meta.signature()),
                            TypeConfig::err_from_error(&damaged),
                        ),
                    ));
                }
                let rpc = SnapshotChunkRpc {
                    group: group.clone(),
                    transfer,
                    offset,
                    data: chunk,
                    finish: last.then(|| SnapshotFinish {
                        vote: vote.clone(),
                        meta: snapshot.meta.clone(),
                        whole: Whole {
                            len,
                            digest: digest.digest(),
                        },
                    }),
                };
                let timeout = if last {
                    INSTALL_TIMEOUT
                } else {
                    option.hard_ttl().max(CHUNK_TIMEOUT)
                };
                match self.peers.call(&target, &rpc, timeout).await {
                    Ok(Some(response)) => return Ok(response),
                    Ok(None) if !last => {
                        offset = next;
                        progress.sent(offset);
                    }
                    Ok(None) => {
                        return Err(StreamingError::Network(NetworkError::new(
                            &std::io::Error::other("the receiver did not install the snapshot"),
                        )));
                    }
                    // The path itself is unknown (not an answer of ours): an older node.
                    Err(CallError::Remote(e))
                        if e.status == 404 && e.code == ErrorCode::PeerError && offset == 0 =>
                    {
                        return self
                            .send_whole(&target, group.clone(), vote, snapshot.meta, data)
                            .await;
                    }
                    Err(e) => return Err(streaming_error(e)),
                }
            }
        };
        tokio::select! {
            sent = send => sent,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&target, &TransferLeaderRpc { group, rpc }, &option)
            .await
    }

    fn backoff(&self) -> Option<Backoff> {
        // Retry an unreachable peer quickly at first, then every 500 ms.
        Some(Backoff::new(
            [50u64, 100, 200]
                .into_iter()
                .map(Duration::from_millis)
                .chain(std::iter::repeat(Duration::from_millis(500))),
        ))
    }
}

impl Router {
    /// Sends a snapshot whole in one call, as nodes of earlier versions expect.
    async fn send_whole(
        &self,
        target: &str,
        group: GroupId,
        vote: Vote,
        meta: SnapshotMeta,
        data: SnapshotData,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tracing::info!(%target, %group, "the receiver predates chunked snapshots: sending it whole");
        let data = tokio::task::spawn_blocking(move || data.to_bytes())
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let body = SnapshotRpc {
            group,
            vote,
            meta,
            data,
        };
        self.peers
            .call(target, &body, INSTALL_TIMEOUT)
            .await
            .map_err(streaming_error)
    }
}

/// The chunk of `data` at `offset`, read off the async runtime.
async fn read_chunk(
    data: &SnapshotData,
    offset: u64,
) -> Result<Vec<u8>, StreamingError<TypeConfig>> {
    let data = data.clone();
    tokio::task::spawn_blocking(move || data.read_at(offset, CHUNK_BYTES))
        .await
        .map_err(std::io::Error::other)
        .and_then(|read| read)
        .map_err(|e| {
            StreamingError::StorageError(openraft::StorageError::read_snapshot(
                None,
                TypeConfig::err_from_error(&e),
            ))
        })
}

/// Builds each group's connections to its peers on the shared router.
pub type NetworkFactory = GroupNetworkFactory<Router, GroupId>;

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = GroupNetworkAdapter<TypeConfig, GroupId, Router>;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        self.factory.peers.learn(&target, &node.raft);
        GroupNetworkAdapter::new(self.factory.clone(), target, self.group_id.clone())
    }
}
