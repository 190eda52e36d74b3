//! A typed async client for Grape's HTTP API.

use crate::admin::*;
use crate::error_code::ErrorCode;
use crate::types::*;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status and Grape's error body.
    #[error("{status}: {code}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// The request did not complete (connection refused, timeout).
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server answered with a success status, but not with the shape this client reads
    /// (a server of another version): the request may well have taken effect.
    #[error("{status}: unexpected answer: {message}")]
    UnexpectedAnswer { status: StatusCode, message: String },
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::UnexpectedAnswer { status, .. } => {
                Some(*status)
            }
            ClientError::Transport(e) => e.status(),
        }
    }

    /// The error code from the body, when the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            ClientError::Transport(_) | ClientError::UnexpectedAnswer { .. } => None,
        }
    }

    /// The error code as this version knows it (`RemoteError` for one it does not), when the
    /// server answered with Grape's error body.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code()
            .map(|code| ErrorCode::parse(code).unwrap_or(ErrorCode::RemoteError))
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A connection to one Grape node (or a load balancer in front of several).
#[derive(Debug, Clone)]
pub struct GrapeClient {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
    timeout: Option<Duration>,
}

impl GrapeClient {
    /// A client for `base_url`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            // Below the 10 s after which a node closes an idle connection
            // (`performance.header_read_timeout_ms`): a request is never sent on a connection
            // the node is closing (a benchmark pausing 10 s between phases failed that way).
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        GrapeClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            api_key: None,
            timeout: None,
        }
    }

    /// A client over a preconfigured reqwest client (custom TLS roots, proxies, timeouts).
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Self {
        GrapeClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            api_key: None,
            timeout: None,
        }
    }

    /// Gives every request this long (instead of the HTTP client's own timeout).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends `X-API-Key: key` with every request.
    pub fn with_api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_string());
        self
    }

    /// The base URL this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A request builder with the key applied, for calls this client does not wrap.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut builder = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(key) = &self.api_key {
            builder = builder.header("X-API-Key", key);
        }
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        builder
    }

    async fn call<T: DeserializeOwned>(&self, builder: reqwest::RequestBuilder) -> Result<T> {
        let response = builder.send().await?;
        let status = response.status();
        if status.is_success() {
            let bytes = response.bytes().await?;
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::UnexpectedAnswer {
                status,
                message: e.to_string(),
            });
        }
        let text = response.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => ("http_error".to_string(), text),
        };
        Err(ClientError::Api {
            status,
            code,
            message,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(self.request(Method::GET, path)).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.call(self.request(Method::POST, path).json(body)).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(self.request(Method::DELETE, path)).await
    }

    /// `GET /health`
    pub async fn health(&self) -> Result<HealthResponse> {
        self.get("/health").await
    }

    /// `GET /ready`: true when the node answers 200.
    pub async fn ready(&self) -> Result<bool> {
        let response = self.request(Method::GET, "/ready").send().await?;
        Ok(response.status().is_success())
    }

    /// A handle on one collection's documents and search.
    pub fn collection(&self, name: &str) -> CollectionClient<'_> {
        CollectionClient {
            client: self,
            prefix: format!("/api/v1/collections/{}", encode_path_segment(name)),
        }
    }

    /// A handle on the default collection, through the seed guide's paths (`/api/v1/documents`).
    pub fn default_collection(&self) -> CollectionClient<'_> {
        CollectionClient {
            client: self,
            prefix: "/api/v1".to_string(),
        }
    }

    /// `GET /api/v1/collections`
    pub async fn list_collections(&self) -> Result<CollectionList> {
        self.get("/api/v1/collections").await
    }

    /// `POST /api/v1/collections`
    pub async fn create_collection(&self, config: &CollectionConfig) -> Result<CollectionInfo> {
        self.post("/api/v1/collections", config).await
    }

    /// `GET /api/v1/collections/{name}`
    pub async fn get_collection(&self, name: &str) -> Result<CollectionInfo> {
        self.get(&format!(
            "/api/v1/collections/{}",
            encode_path_segment(name)
        ))
        .await
    }

    /// `DELETE /api/v1/collections/{name}`
    pub async fn delete_collection(&self, name: &str) -> Result<DeleteResponse> {
        self.delete(&format!(
            "/api/v1/collections/{}",
            encode_path_segment(name)
        ))
        .await
    }

    /// `GET /admin/stats`
    pub async fn stats(&self) -> Result<StatsResponse> {
        self.get("/admin/stats").await
    }

    /// `GET /admin/stats/shards`
    pub async fn shard_stats(&self) -> Result<ShardStatsResponse> {
        self.get("/admin/stats/shards").await
    }

    /// `GET /admin/checksum`
    pub async fn checksum(&self) -> Result<ChecksumResponse> {
        self.get("/admin/checksum").await
    }

    /// `GET /admin/slow-queries`
    pub async fn slow_queries(&self) -> Result<SlowQueries> {
        self.get("/admin/slow-queries").await
    }

    /// `GET /admin/cluster/status`: every member and group, as the members report.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.get("/admin/cluster/status").await
    }

    /// `GET /admin/cluster/leader`: the meta group's leader and term.
    pub async fn cluster_leader(&self) -> Result<LeaderResponse> {
        self.get("/admin/cluster/leader").await
    }

    /// `GET /admin/cluster/consensus`: the groups this node holds, as Raft sees them.
    pub async fn consensus(&self) -> Result<ConsensusResponse> {
        self.get("/admin/cluster/consensus").await
    }

    /// `GET /admin/cluster/sync-status`: how far this node's replicas have applied.
    pub async fn sync_status(&self) -> Result<SyncStatus> {
        self.get("/admin/cluster/sync-status").await
    }

    /// `GET /admin/cluster/election-history`: leadership changes this node saw.
    pub async fn election_history(&self) -> Result<ElectionHistory> {
        self.get("/admin/cluster/election-history").await
    }

    /// `GET /admin/cluster/rebalance-status`: recent rebalances.
    pub async fn rebalance_status(&self) -> Result<OperationsStatus> {
        self.get("/admin/cluster/rebalance-status").await
    }

    /// `GET /admin/cluster/migration-status`: recent rebalances, drains and repairs.
    pub async fn migration_status(&self) -> Result<OperationsStatus> {
        self.get("/admin/cluster/migration-status").await
    }

    /// `GET /admin/cluster/repair-status`: recent repairs.
    pub async fn repair_status(&self) -> Result<OperationsStatus> {
        self.get("/admin/cluster/repair-status").await
    }

    /// `POST /admin/cluster/add-node`: admits a started node (it holds nothing until a
    /// rebalance).
    pub async fn add_node(&self, request: &AddNodeRequest) -> Result<AddNodeResponse> {
        self.post("/admin/cluster/add-node", request).await
    }

    /// `POST /admin/cluster/remove-node`: drains a node, then removes it.
    pub async fn remove_node(&self, request: &RemoveNodeRequest) -> Result<OperationStarted> {
        self.post("/admin/cluster/remove-node", request).await
    }

    /// `POST /admin/cluster/rebalance`
    pub async fn rebalance(&self, request: &RebalanceRequest) -> Result<OperationStarted> {
        self.post("/admin/cluster/rebalance", request).await
    }

    /// `POST /admin/cluster/repair`
    pub async fn repair(&self, request: &RepairRequest) -> Result<OperationStarted> {
        self.post("/admin/cluster/repair", request).await
    }

    /// `POST /admin/cluster/transfer-leadership`
    pub async fn transfer_leadership(
        &self,
        request: &TransferLeadershipRequest,
    ) -> Result<TransferLeadershipResponse> {
        self.post("/admin/cluster/transfer-leadership", request)
            .await
    }

    /// `POST /admin/cluster/force-recovery`: the last resort after losing a majority.
    pub async fn force_recovery(
        &self,
        request: &ForceRecoveryRequest,
    ) -> Result<ForceRecoveryResponse> {
        self.post("/admin/cluster/force-recovery", request).await
    }

    /// `POST /admin/backups`: starts a backup; answers it as it starts.
    pub async fn start_backup(&self, request: &BackupRequest) -> Result<BackupInfo> {
        self.post("/admin/backups", request).await
    }

    /// `GET /admin/backups`: the backups the cluster remembers, newest first.
    pub async fn backups(&self) -> Result<BackupList> {
        self.get("/admin/backups").await
    }

    /// `GET /admin/backups/{id}`
    pub async fn backup(&self, id: &str) -> Result<BackupInfo> {
        self.get(&format!("/admin/backups/{}", encode_path_segment(id)))
            .await
    }

    /// `DELETE /admin/backups/{id}`: deletes an ended backup's files and its record. With
    /// `destination`, a backup the cluster no longer has a record of is deleted there.
    pub async fn delete_backup(
        &self,
        id: &str,
        destination: Option<&str>,
    ) -> Result<BackupDeleted> {
        let path = format!("/admin/backups/{}", encode_path_segment(id));
        let mut builder = self.request(Method::DELETE, &path);
        if let Some(destination) = destination {
            builder = builder.query(&[("destination", destination)]);
        }
        self.call(builder).await
    }

    /// `POST /admin/restore`: starts restoring a backup into this (empty) cluster.
    pub async fn start_restore(&self, request: &RestoreRequest) -> Result<RestoreInfo> {
        self.post("/admin/restore", request).await
    }

    /// `GET /admin/restore`: restores, newest first.
    pub async fn restores(&self) -> Result<RestoreList> {
        self.get("/admin/restore").await
    }

    /// `GET /metrics` as Prometheus text.
    pub async fn metrics_text(&self) -> Result<String> {
        let response = self.request(Method::GET, "/metrics").send().await?;
        let status = response.status();
        let text = response.text().await?;
        if status.is_success() {
            Ok(text)
        } else {
            let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(body) => (body.error.code, body.error.message),
                Err(_) => ("http_error".to_string(), text),
            };
            Err(ClientError::Api {
                status,
                code,
                message,
            })
        }
    }
}

/// Document and search calls on one collection.
#[derive(Debug, Clone)]
pub struct CollectionClient<'a> {
    client: &'a GrapeClient,
    prefix: String,
}

impl CollectionClient<'_> {
    /// `POST .../documents`: insert or replace one document; returns its id.
    pub async fn upsert(&self, document: &DocumentInput) -> Result<String> {
        let response: InsertResponse = self
            .client
            .post(&format!("{}/documents", self.prefix), document)
            .await?;
        Ok(response.id)
    }

    /// `POST .../documents/batch`
    pub async fn upsert_batch(&self, documents: &[DocumentInput]) -> Result<BatchResponse> {
        #[derive(Serialize)]
        struct Body<'b> {
            documents: &'b [DocumentInput],
        }
        self.client
            .post(
                &format!("{}/documents/batch", self.prefix),
                &Body { documents },
            )
            .await
    }

    /// `GET .../documents/{id}`
    pub async fn get(&self, id: &str) -> Result<Document> {
        self.client
            .get(&format!(
                "{}/documents/{}",
                self.prefix,
                encode_path_segment(id)
            ))
            .await
    }

    /// `GET .../documents/{id}?consistency=strong|eventual`
    pub async fn get_with(&self, id: &str, consistency: Consistency) -> Result<Document> {
        let builder = self
            .client
            .request(
                Method::GET,
                &format!("{}/documents/{}", self.prefix, encode_path_segment(id)),
            )
            .query(&[(
                "consistency",
                match consistency {
                    Consistency::Strong => "strong",
                    Consistency::Eventual => "eventual",
                },
            )]);
        self.client.call(builder).await
    }

    /// `DELETE .../documents/{id}`
    pub async fn delete(&self, id: &str) -> Result<DeleteResponse> {
        self.client
            .delete(&format!(
                "{}/documents/{}",
                self.prefix,
                encode_path_segment(id)
            ))
            .await
    }

    /// `GET .../documents?limit=..&cursor=..`: one page.
    pub async fn list(&self, limit: usize, cursor: Option<&str>) -> Result<ListResponse> {
        let mut builder = self
            .client
            .request(Method::GET, &format!("{}/documents", self.prefix))
            .query(&[("limit", limit.to_string())]);
        if let Some(cursor) = cursor {
            builder = builder.query(&[("cursor", cursor)]);
        }
        self.client.call(builder).await
    }

    /// `POST .../search`
    pub async fn search(&self, request: &SearchRequest) -> Result<SearchResponse> {
        self.client
            .post(&format!("{}/search", self.prefix), request)
            .await
    }
}

/// Percent-encodes a path segment (document ids may hold `/`, spaces, anything).
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}
