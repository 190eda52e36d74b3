//! The node's one error type. Each variant knows its HTTP status and a stable code, so every
//! layer reports problems in terms a client can act on.

use std::time::Duration;

/// Everything that can go wrong serving a request or applying a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or violates a limit; nothing was changed.
    #[error("{message}")]
    InvalidInput { code: &'static str, message: String },
    /// The named collection or document does not exist.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The request conflicts with current state (an existing collection, a full node).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The body is over `performance.max_request_body_mb`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No key, an unknown key or an expired key.
    #[error("{0}")]
    Unauthorized(String),
    /// The key lacks the permission, or the caller's address is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate limit or a daily quota; retry after the given time.
    #[error("{message}")]
    RateLimited {
        code: &'static str,
        message: String,
        retry_after: Duration,
    },
    /// The node cannot serve this now (not ready, timed out, storage failing); retry later.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// This node does not lead the group a request needs; `leader` is the one it knows of.
    #[error("{message}")]
    NotLeader {
        message: String,
        leader: Option<String>,
    },
    /// RocksDB failed; the write was not acknowledged.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Error::NotFound {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Error::Unavailable {
            code,
            message: message.into(),
        }
    }

    /// The stable machine-readable code clients match on; also a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::RateLimited { code, .. }
            | Error::Unavailable { code, .. } => code,
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotLeader { .. } => "not_leader",
            Error::Storage(_) => "storage_error",
            Error::Internal(_) => "internal_error",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidInput { .. } => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound { .. } => 404,
            Error::Conflict { .. } => 409,
            Error::PayloadTooLarge(_) => 413,
            Error::RateLimited { .. } => 429,
            Error::Unavailable { .. } | Error::NotLeader { .. } | Error::Storage(_) => 503,
            Error::Internal(_) => 500,
        }
    }

    /// The message without the code.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// Every error code the node uses, so that a code received from a peer maps back to the same
/// static string (unknown codes become `remote_error`).
const CODES: &[&str] = &[
    "batch_too_large",
    "capacity_exceeded",
    "collection_exists",
    "collection_not_found",
    "default_collection",
    "dimension_mismatch",
    "document_not_found",
    "empty_batch",
    "forbidden",
    "internal_error",
    "invalid_api_keys",
    "invalid_body",
    "invalid_collection",
    "invalid_config",
    "invalid_cursor",
    "invalid_ef",
    "invalid_filter",
    "invalid_id",
    "invalid_json",
    "invalid_limit",
    "invalid_query",
    "invalid_request",
    "invalid_top_k",
    "invalid_vector",
    "invalid_target",
    "metadata_too_large",
    "method_not_allowed",
    "no_leader",
    "not_found",
    "not_leader",
    "not_ready",
    "payload_too_large",
    "peer_error",
    "peer_unreachable",
    "query_timeout",
    "quota_exceeded",
    "rate_limited",
    "shard_closed",
    "storage_error",
    "unauthorized",
    "unavailable",
];

/// The static form of a code received as text.
pub fn known_code(code: &str) -> &'static str {
    CODES
        .iter()
        .find(|known| **known == code)
        .copied()
        .unwrap_or("remote_error")
}
