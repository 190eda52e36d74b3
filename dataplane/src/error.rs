//! The node's one error type. Each variant knows its HTTP status and a stable code, so every
//! layer reports problems in terms a client can act on.

pub use grape_client::ErrorCode;
use std::time::Duration;

/// Everything that can go wrong serving a request or applying a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or violates a limit; nothing was changed.
    #[error("{message}")]
    InvalidInput { code: ErrorCode, message: String },
    /// The named collection or document does not exist.
    #[error("{message}")]
    NotFound { code: ErrorCode, message: String },
    /// The request conflicts with current state (an existing collection, a full node).
    #[error("{message}")]
    Conflict { code: ErrorCode, message: String },
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
        code: ErrorCode,
        message: String,
        retry_after: Duration,
    },
    /// The node cannot serve this now (not ready, timed out, storage failing); retry later.
    #[error("{message}")]
    Unavailable { code: ErrorCode, message: String },
    /// This node does not lead the group a request needs; `leader` is the one it knows of.
    #[error("{message}")]
    NotLeader {
        message: String,
        leader: Option<String>,
    },
    /// A node holding the data is below its free-disk reserve: nothing was written (a batch is
    /// checked whole first; in a race with a node crossing the line, shards other than the
    /// refusing one may have been written).
    #[error("{0}")]
    InsufficientStorage(String),
    /// RocksDB failed; the write was not acknowledged.
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::NotFound {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Unavailable {
            code,
            message: message.into(),
        }
    }

    /// The stable machine-readable code clients match on; also a metric label.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidInput { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::RateLimited { code, .. }
            | Error::Unavailable { code, .. } => *code,
            Error::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::NotLeader { .. } => ErrorCode::NotLeader,
            Error::Storage(_) => ErrorCode::StorageError,
            Error::InsufficientStorage(_) => ErrorCode::InsufficientStorage,
            Error::Internal(_) => ErrorCode::InternalError,
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
            Error::InsufficientStorage(_) => 507,
            Error::Internal(_) => 500,
        }
    }

    /// The message without the code.
    pub fn message(&self) -> String {
        self.to_string()
    }
}
