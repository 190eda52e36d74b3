//! Grape's API types and, with the `http` feature (on by default), a typed async client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), grape_client::ClientError> {
//! use grape_client::{DocumentInput, GrapeClient, SearchRequest};
//! let grape = GrapeClient::new("http://127.0.0.1:8080");
//! let docs = grape.default_collection();
//! docs.upsert(&DocumentInput { id: Some("a".into()), vector: vec![0.1; 3], metadata: None }).await?;
//! let hits = docs.search(&SearchRequest::new(vec![0.1; 3], 5)).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod admin;
pub mod error_code;
pub mod types;
pub use admin::*;
pub use error_code::ErrorCode;
pub use types::*;

#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub use http::{ClientError, CollectionClient, GrapeClient, Result, encode_path_segment};
#[cfg(feature = "http")]
pub use reqwest;
