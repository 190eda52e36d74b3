//! Consensus and the wire: the Raft type configuration, the log store, the meta and shard
//! state machines, and the node-to-node contract with its client. Nothing else in the node
//! knows openraft's storage and network traits.
//!
//! ```text
//!   ids <- meta_commands <- types <- meta_state <- meta_sm
//!                             ^- log_store, shard_sm
//!   snapshot (files, chunks) <- types
//!   rpc (the contract) <- peers (client) <- network (openraft's network on peers)
//! ```

pub mod auth;
pub mod ids;
pub mod log_store;
pub mod meta_commands;
pub mod meta_sm;
pub mod meta_state;
pub mod network;
pub mod peers;
pub mod recovery;
pub mod rpc;
pub mod shard_sm;
pub mod snapshot;
pub mod tls;
pub mod types;
