//! The stable, machine-readable codes of Grape's error answers (`{"error": {"code", ...}}`).
//!
//! One list, used by the server to answer, by nodes to forward a peer's error unchanged, and by
//! clients to match on. A code this version does not know (from a newer node) reads as
//! [`ErrorCode::RemoteError`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $text:literal,)*) => {
        /// What went wrong, in a form a program can act on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// The code named `text`, if this version knows it.
            pub fn parse(text: &str) -> Option<ErrorCode> {
                match text {
                    $($text => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    // 400: the request is malformed or violates a limit; nothing was changed.
    /// A batch of more than `performance.max_batch_size` documents.
    BatchTooLarge = "batch_too_large",
    /// A batch without documents.
    EmptyBatch = "empty_batch",
    /// A vector whose length is not the collection's dimension.
    DimensionMismatch = "dimension_mismatch",
    /// The body could not be read.
    InvalidBody = "invalid_body",
    /// A collection definition out of range.
    InvalidCollection = "invalid_collection",
    /// A list cursor that this node did not issue.
    InvalidCursor = "invalid_cursor",
    /// A search `ef` out of range.
    InvalidEf = "invalid_ef",
    /// A malformed metadata filter.
    InvalidFilter = "invalid_filter",
    /// A document id that is empty or too long.
    InvalidId = "invalid_id",
    /// The body is not JSON.
    InvalidJson = "invalid_json",
    /// A page size out of range.
    InvalidLimit = "invalid_limit",
    /// A path segment that is not valid percent-encoded UTF-8.
    InvalidPath = "invalid_path",
    /// A malformed query string.
    InvalidQuery = "invalid_query",
    /// A well-formed body with a field of the wrong type, a missing field or a bad value.
    InvalidRequest = "invalid_request",
    /// A leadership target that is not a member or holds no replica.
    InvalidTarget = "invalid_target",
    /// A search `top_k` out of range.
    InvalidTopK = "invalid_top_k",
    /// A vector with a non-finite value, or all zeros for cosine.
    InvalidVector = "invalid_vector",
    /// A backup location that cannot be used (scheme, path, bucket, credentials).
    InvalidLocation = "invalid_location",
    /// A backup that cannot be restored: corrupt, truncated, or of an unknown format.
    InvalidBackup = "invalid_backup",
    /// Metadata over 64 KiB.
    MetadataTooLarge = "metadata_too_large",
    // 401
    /// No key, an unknown key or an expired key.
    Unauthorized = "unauthorized",
    // 403
    /// The key lacks the permission, or the caller's address is not allowed.
    Forbidden = "forbidden",
    // 404
    /// No such route, node or shard.
    NotFound = "not_found",
    /// No such collection.
    CollectionNotFound = "collection_not_found",
    /// No such document.
    DocumentNotFound = "document_not_found",
    /// No backup with this id (or none at all) at the location.
    BackupNotFound = "backup_not_found",
    // 405
    /// The route exists for other methods.
    MethodNotAllowed = "method_not_allowed",
    // 409: the request conflicts with the current state.
    /// This node holds `database.max_documents` documents.
    CapacityExceeded = "capacity_exceeded",
    /// A collection of that name exists.
    CollectionExists = "collection_exists",
    /// The `default` collection cannot be dropped.
    DefaultCollection = "default_collection",
    /// `add-node` of a node that is already a member.
    NodeExists = "node_exists",
    /// `remove-node` would leave fewer nodes than the replication factor.
    WouldBreakReplication = "would_break_replication",
    /// `remove-node` would leave the remaining members without a quorum.
    WouldLoseQuorum = "would_lose_quorum",
    /// Another rebalance, drain or repair is running.
    OperationRunning = "operation_running",
    /// A rebalance while admitted nodes are still joining (catching up with the cluster's
    /// log): it would leave them out.
    NodesNotReady = "nodes_not_ready",
    /// A forced recovery asked of a node that still reaches a majority of the members.
    ClusterHealthy = "cluster_healthy",
    /// Another backup (or restore) is running.
    BackupRunning = "backup_running",
    /// A restore into a collection that holds documents (or differs and cannot be replaced).
    RestoreConflict = "restore_conflict",
    // 413
    /// The body is over `performance.max_request_body_mb`.
    PayloadTooLarge = "payload_too_large",
    // 429
    /// Over the key's rate limit.
    RateLimited = "rate_limited",
    /// Over the key's daily quota.
    QuotaExceeded = "quota_exceeded",
    // 507
    /// A node holding the data has less free disk than `database.min_free_disk_mb`: writes
    /// are refused until space is freed (reads and deletes go on).
    InsufficientStorage = "insufficient_storage",
    // 503: retry later.
    /// The group has no leader (an election, a lost quorum) or could not commit in time.
    NoLeader = "no_leader",
    /// This node does not lead the group the request needs.
    NotLeader = "not_leader",
    /// This node has not caught up yet.
    NotReady = "not_ready",
    /// The node is running as many searches as `limits.max_concurrent_searches` allows.
    Overloaded = "overloaded",
    /// A peer did not answer.
    PeerUnreachable = "peer_unreachable",
    /// A search ran past `performance.query_timeout_ms`.
    QueryTimeout = "query_timeout",
    /// This replica's index failed (a bug in index code); other replicas serve the shard.
    ShardFailed = "shard_failed",
    /// The storage failed; the write was not acknowledged.
    StorageError = "storage_error",
    /// The node cannot serve this now.
    Unavailable = "unavailable",
    // 500
    /// A bug: an invariant did not hold.
    InternalError = "internal_error",
    // the peer's status: an answer from another node that this node passes on
    /// A peer answered with something other than Grape's error body.
    PeerError = "peer_error",
    /// A peer answered with a code this version does not know.
    RemoteError = "remote_error",
    // start-up: the node refuses to start (never an HTTP answer)
    /// The API keys file is malformed.
    InvalidApiKeys = "invalid_api_keys",
    /// A configuration that cannot start a node.
    InvalidConfig = "invalid_config",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(ErrorCode::parse(&text).unwrap_or(ErrorCode::RemoteError))
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} is listed twice");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), *code);
        }
    }

    #[test]
    fn the_api_documentation_lists_every_code() {
        let docs = include_str!("../../docs/api.md");
        for code in ErrorCode::ALL {
            assert!(
                docs.contains(&format!("| `{code}` |")),
                "docs/api.md's error table lacks `{code}`"
            );
        }
    }

    #[test]
    fn an_unknown_code_reads_as_remote_error() {
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"from_the_future\"").unwrap(),
            ErrorCode::RemoteError
        );
    }
}
