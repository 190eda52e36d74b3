//! openraft's network for every group, over the shared [`Peers`]: each group's Raft messages
//! are tagged with the group and sent on the peer's one connection.

use super::ids::{GroupId, NodeAddr, NodeId};
use super::peers::{CallError, Peers};
use super::rpc::{AppendRpc, PreVoteRpc, Rpc, SnapshotRpc, TransferLeaderRpc, VoteRpc};
use super::types::{Snapshot, TypeConfig, Vote};
use openraft::OptionalSend;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft_multi::{GroupNetworkAdapter, GroupNetworkFactory, GroupRouter};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The shared router every group's network goes through.
#[derive(Clone, Debug)]
pub struct Router {
    pub peers: Arc<Peers>,
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

    async fn full_snapshot(
        &self,
        target: NodeId,
        group: GroupId,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let body = SnapshotRpc {
            group,
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        // A snapshot can be large: allow it time beyond a heartbeat's.
        let timeout = option.hard_ttl().max(Duration::from_secs(120));
        self.peers
            .call(&target, &body, timeout)
            .await
            .map_err(|e| match e {
                CallError::Unreachable(_) => StreamingError::Unreachable(unreachable(e)),
                CallError::Remote(_) => StreamingError::Network(NetworkError::new(&e)),
            })
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

/// Builds each group's connections to its peers on the shared router.
pub type NetworkFactory = GroupNetworkFactory<Router, GroupId>;

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = GroupNetworkAdapter<TypeConfig, GroupId, Router>;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        self.factory.peers.learn(&target, &node.raft);
        GroupNetworkAdapter::new(self.factory.clone(), target, self.group_id.clone())
    }
}
