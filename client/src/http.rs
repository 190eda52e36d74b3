//! A typed async client for Grape's HTTP API.

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
    /// The request did not complete (connection refused, timeout, bad body).
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Transport(e) => e.status(),
        }
    }

    /// The error code from the body, when the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            ClientError::Transport(_) => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A connection to one Grape node (or a load balancer in front of several).
#[derive(Debug, Clone)]
pub struct GrapeClient {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl GrapeClient {
    /// A client for `base_url`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        GrapeClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            api_key: None,
        }
    }

    /// A client over a preconfigured reqwest client (custom TLS roots, proxies, timeouts).
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Self {
        GrapeClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            api_key: None,
        }
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
        builder
    }

    async fn call<T: DeserializeOwned>(&self, builder: reqwest::RequestBuilder) -> Result<T> {
        let response = builder.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
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

    /// `GET` of any JSON path, for endpoints without a typed wrapper.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        self.get(path).await
    }

    /// `POST` of any JSON body to any path.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.post(path, body).await
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
