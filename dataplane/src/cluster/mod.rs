//! The node in its cluster: a meta Raft group (membership, collections, placement) and one Raft
//! group per shard replica it holds, all sharing one RocksDB, one WAL syncer and one
//! connection per peer. A single node is a cluster of one.
//!
//! ```text
//!   start ──> open storage, meta group, local shard groups ──> serve the peers (server)
//!     ├─ bootstrap: fresh seed node + majority of fresh peers reachable -> initialize meta, once
//!     ├─ registrar: announce this node's addresses in the meta group
//!     ├─ reconciler: open replicas the meta group places here; drop replicas it no longer does
//!     └─ controller (meta leader only): create `default`, form new shard groups, run moves
//! ```
//!
//! Rooms, each depending only on those listed before it:
//! - [`raft`]: the Raft type configuration, log store, meta and shard state machines, and the
//!   node-to-node contract ([`raft::rpc`]) with its client ([`raft::peers`]).
//! - [`activity`], [`disk`], [`replicas`], [`node`]: a node's identity, storage (and its
//!   free-space reserve), meta group, the registry of local replicas, readiness and shutdown.
//! - [`route`]: the one route-and-retry loop; documents, search and collections on top of it.
//! - [`status`]: what a node and the cluster report.
//! - [`elastic`]: admin requests, placement planning, the move controller, leadership,
//!   forced recovery.
//! - [`tasks`]: the background work above; [`server`]: every call from peers.

pub mod activity;
pub mod backup;
pub mod connections;
pub mod disk;
pub mod elastic;
pub mod node;
pub mod raft;
pub mod replicas;
pub mod route;
pub mod server;
pub mod status;
pub mod tasks;

pub use node::Node;
pub use replicas::LocalGroup;

use crate::config::Config;
use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::sync::Arc;

/// Opens the node, serves node-to-node traffic on `raft_listener` and starts its background
/// work. `api` is the bound client API address (advertised to others).
pub async fn start(
    config: Config,
    raft_listener: std::net::TcpListener,
    api: SocketAddr,
) -> Result<Arc<Node>> {
    let raft = raft_listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("raft listener: {e}")))?;
    let node = Node::open(config, raft, api).await?;
    node.add_task(server::serve(Arc::clone(&node), raft_listener)?);
    tasks::spawn_all(&node);
    Ok(node)
}
