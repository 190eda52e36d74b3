//! Who and where: the names every other part of the cluster layer uses for nodes and groups.

use serde::{Deserialize, Serialize};

/// A node's identity: `node.id` (the pod name on Kubernetes).
pub type NodeId = String;

/// A Raft group's name: [`META_GROUP`], or a shard's group from `Collection::group`.
pub type GroupId = String;

/// The group holding membership, collections and placement.
pub const META_GROUP: &str = "meta";

/// Where a node can be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Node-to-node transport (`node.raft_address` as others reach it).
    pub raft: String,
    /// Client API (`node.listen_address` as clients reach it).
    pub api: String,
}
