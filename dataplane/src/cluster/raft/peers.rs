//! Node-to-node calls, client side: one HTTP/2 connection per peer (MessagePack bodies),
//! carrying every group's Raft messages and the cluster's own calls, and the address book of
//! where each peer listens.

use super::auth::PeerAuth;
use super::ids::NodeId;
use super::rpc::{RemoteError, Rpc};
use super::types::{decode, encode};
use crate::error::{Error, ErrorCode};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Why a call to a peer failed.
#[derive(Debug)]
pub enum CallError {
    /// No answer (connection refused, timeout, unknown address).
    Unreachable(String),
    /// The peer answered with an error.
    Remote(RemoteError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(why) => write!(f, "unreachable: {why}"),
            CallError::Remote(e) => write!(f, "{}: {}", e.code, e.message),
        }
    }
}

impl std::error::Error for CallError {}

impl From<CallError> for Error {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Unreachable(why) => Error::unavailable(ErrorCode::PeerUnreachable, why),
            CallError::Remote(remote) => remote.into(),
        }
    }
}

/// Connections to every peer and where they listen.
pub struct Peers {
    http: reqwest::Client,
    /// Proves this node to its peers on every call.
    auth: Arc<PeerAuth>,
    scheme: &'static str,
    /// Raft addresses by node id: from the configuration, the meta group's node records and
    /// Raft membership.
    book: RwLock<HashMap<NodeId, String>>,
    /// When each peer last answered.
    answered: RwLock<HashMap<NodeId, std::time::Instant>>,
    /// The data-directory incarnation the meta group recorded for each node: sent with every
    /// call, so that a node whose directory was replaced refuses to take part.
    incarnations: RwLock<BTreeMap<NodeId, u64>>,
}

/// The header that names the incarnation the caller expects of the node it calls.
pub const INCARNATION_HEADER: &str = "x-grape-incarnation";

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("book", &*self.book.read())
            .finish()
    }
}

impl Peers {
    pub fn new(http: reqwest::Client, tls: bool, auth: Arc<PeerAuth>) -> Peers {
        Peers {
            http,
            auth,
            scheme: if tls { "https" } else { "http" },
            book: RwLock::new(HashMap::new()),
            answered: RwLock::new(HashMap::new()),
            incarnations: RwLock::new(BTreeMap::new()),
        }
    }

    /// Replaces the recorded incarnations (from the meta group's state).
    pub fn expect_incarnations(&self, incarnations: BTreeMap<NodeId, u64>) {
        let mut known = self.incarnations.write();
        if *known != incarnations {
            *known = incarnations;
        }
    }

    /// Whether `id` answered within `window`.
    pub fn answered_within(&self, id: &str, window: Duration) -> bool {
        self.answered
            .read()
            .get(id)
            .is_some_and(|at| at.elapsed() <= window)
    }

    /// Records where a node listens.
    pub fn learn(&self, id: &str, raft_address: &str) {
        if raft_address.is_empty() {
            return;
        }
        let mut book = self.book.write();
        if book.get(id).map(String::as_str) != Some(raft_address) {
            book.insert(id.to_string(), raft_address.to_string());
        }
    }

    pub fn address(&self, id: &str) -> Option<String> {
        self.book.read().get(id).cloned()
    }

    /// Sends `request` to `target` and decodes its answer. Every node-to-node call goes
    /// through here.
    pub async fn call<R: Rpc>(
        &self,
        target: &str,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Response, CallError> {
        let address = self
            .address(target)
            .ok_or_else(|| CallError::Unreachable(format!("no address known for node {target}")))?;
        let path = R::KIND.path();
        let body = encode(request);
        let mut builder = self
            .http
            .post(format!("{}://{address}{path}", self.scheme))
            .header("content-type", "application/msgpack")
            .timeout(timeout);
        for (name, value) in self.auth.headers(path, &body) {
            builder = builder.header(name, value);
        }
        if let Some(incarnation) = self.incarnations.read().get(target) {
            builder = builder.header(INCARNATION_HEADER, incarnation.to_string());
        }
        let response = builder
            .body(body)
            .send()
            .await
            .map_err(|e| CallError::Unreachable(format!("{target} ({address}): {e}")))?;
        let status = response.status();
        let replaced = response.headers().contains_key(INCARNATION_HEADER);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Unreachable(format!("{target}: {e}")))?;
        if status == reqwest::StatusCode::MISDIRECTED_REQUEST {
            // The node under this id has a new data directory: as a member it is gone.
            return Err(CallError::Unreachable(
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        if !status.is_success() {
            return Err(CallError::Remote(RemoteError {
                status: status.as_u16(),
                code: ErrorCode::PeerError,
                message: String::from_utf8_lossy(&bytes).into_owned(),
                leader: None,
                retry_after_ms: None,
            }));
        }
        let answer: Result<R::Response, RemoteError> = decode(&bytes).map_err(|e| {
            CallError::Unreachable(format!("{target} sent an unreadable answer: {e}"))
        })?;
        // A status marked with another incarnation comes from a replaced data directory: the
        // member it was is not reachable.
        if !replaced {
            self.answered
                .write()
                .insert(target.to_string(), std::time::Instant::now());
        }
        answer.map_err(CallError::Remote)
    }
}
