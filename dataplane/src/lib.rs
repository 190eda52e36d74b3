//! Grape's data-plane node.
//!
//! Layers, each depending only on those before it:
//! [`index`] (vectors, HNSW, distances) -> [`shard`] (documents + index + RocksDB, a
//! deterministic state machine) -> [`collection`] (shards, routing by id) -> [`cluster`] (which
//! collections this node serves and how writes reach shards) -> [`api`] (axum routes, auth,
//! metrics). [`storage`] is RocksDB underneath the shards; [`server`] runs the API.

pub mod api;
pub mod cluster;
pub mod collection;
pub mod config;
pub mod error;
pub mod index;
pub mod server;
pub mod shard;
pub mod storage;

pub use error::{Error, Result};
