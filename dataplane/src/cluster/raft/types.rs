//! The Raft type configuration and the short names the rest of the cluster layer uses. The
//! state machines' `Raft` aliases live beside them (`MetaRaft`, `ShardRaft`).

use super::ids::{NodeAddr, NodeId};
use super::meta_commands::{MetaCommand, MetaResponse};
use crate::shard::{ShardCommand, ShardResponse};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A command in some group's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Meta(MetaCommand),
    Shard(ShardCommand),
    /// A backup's cut in a shard group: `exporter`'s replica copies the shard exactly as it
    /// is when it applies this entry (see `cluster::backup`). Changes no data.
    Fence {
        backup: String,
        exporter: NodeId,
    },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Meta(command) => write!(f, "meta {command:?}"),
            Request::Shard(ShardCommand::Upsert { documents, .. }) => {
                write!(f, "upsert of {} documents", documents.len())
            }
            Request::Shard(ShardCommand::Delete { ids, .. }) => {
                write!(f, "delete of {} ids", ids.len())
            }
            Request::Fence { backup, exporter } => {
                write!(f, "fence of backup {backup} (exported by {exporter})")
            }
        }
    }
}

/// What applying a command returned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub enum Response {
    /// Entries without a command (blank, membership).
    #[default]
    None,
    Meta(MetaResponse),
    Shard(ShardResponse),
    /// A backup's fence was applied; `exporter` copies the shard.
    Fenced {
        exporter: NodeId,
    },
}

openraft::declare_raft_types!(
    /// Every Grape Raft group, meta and shard alike, uses these types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeAddr,
);

/// Snapshots are files (shards) or small buffers (meta), streamed in chunks.
pub use super::snapshot::SnapshotData;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// What a state machine stores as its applied marker: the last applied log id and membership.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Encodes a value for the log, snapshots and the wire (MessagePack with field names, which
/// carries `serde_json::Value` metadata and tolerates added optional fields).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("MessagePack encoding of Grape types cannot fail")
}

/// Decodes [`encode`]'s output.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}
