//! The operator's view of and actions on the data plane, through `grape-client` and the admin
//! API (`/admin/cluster/*`). Where each pod answers is given by [`Endpoints`]: on Kubernetes
//! the pod's stable DNS name; in tests, local processes.

use crate::decide::{Action, ObservedDataPlane, ObservedMember};
use crate::resources::{API_PORT, Names, RAFT_PORT};
use grape_client::GrapeClient;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where a pod (node) answers.
pub trait Endpoints: Send + Sync {
    /// Base URL of its client API.
    fn api_url(&self, pod: &str) -> String;
    /// Its node-to-node address, as peers dial it.
    fn raft_address(&self, pod: &str) -> String;
}

/// Pods behind the cluster's headless Service.
#[derive(Debug, Clone)]
pub struct ServiceDns {
    pub names: Names,
    pub https: bool,
}

impl Endpoints for ServiceDns {
    fn api_url(&self, pod: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}:{API_PORT}", self.names.pod_host(pod))
    }
    fn raft_address(&self, pod: &str) -> String {
        format!("{}:{RAFT_PORT}", self.names.pod_host(pod))
    }
}

/// Talks to a cluster's nodes.
pub struct DataPlane<'a> {
    pub endpoints: &'a dyn Endpoints,
    pub http: reqwest::Client,
    pub api_key: Option<String>,
}

/// An action the data plane refused or could not be reached for.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {message}")]
pub struct ActionError {
    pub action: String,
    pub message: String,
}

/// The HTTP client for data-plane calls: short timeouts, and the cluster's CA when it serves
/// TLS (an unusable CA falls back to the system roots, and the calls fail visibly).
pub fn http_client(ca_pem: Option<&[u8]>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2));
    if let Some(ca) = ca_pem.and_then(|pem| reqwest::Certificate::from_pem(pem).ok()) {
        builder = builder.add_root_certificate(ca);
    }
    builder.build().unwrap_or_default()
}

impl<'a> DataPlane<'a> {
    /// Calls through `http` (see [`http_client`]), sending `api_key` when given.
    pub fn new(
        endpoints: &'a dyn Endpoints,
        api_key: Option<String>,
        http: reqwest::Client,
    ) -> Self {
        DataPlane {
            endpoints,
            http,
            api_key,
        }
    }

    fn client(&self, pod: &str) -> GrapeClient {
        let client = GrapeClient::with_http_client(&self.endpoints.api_url(pod), self.http.clone());
        match &self.api_key {
            Some(key) => client.with_api_key(key),
            None => client,
        }
    }

    /// The cluster as seen by the first of `pods` that answers (ready pods should come first).
    pub async fn observe(&self, pods: &[String]) -> Option<ObservedDataPlane> {
        for pod in pods {
            let client = self.client(pod);
            let Ok(status) = client.get_json("/admin/cluster/status").await else {
                continue;
            };
            // A node that is not yet a member knows no cluster: ask another.
            if status["nodes"].as_array().is_none_or(|n| n.is_empty()) {
                continue;
            }
            let operations = client
                .get_json("/admin/cluster/migration-status")
                .await
                .ok();
            return Some(parse_status(&status, operations.as_ref()));
        }
        None
    }

    /// Runs `action` through the first of `pods` that answers (the admin API forwards to the
    /// meta leader where needed).
    pub async fn execute(&self, action: &Action, pods: &[String]) -> Result<Value, ActionError> {
        let (path, body) = match action {
            Action::AddNode { node } => (
                "/admin/cluster/add-node",
                json!({"node_id": node, "address": self.endpoints.raft_address(node)}),
            ),
            Action::RemoveNode { node } => ("/admin/cluster/remove-node", json!({"node_id": node})),
            Action::Rebalance { strategy } => {
                ("/admin/cluster/rebalance", json!({"strategy": strategy}))
            }
            Action::MoveLeadershipsOff { from } => (
                "/admin/cluster/transfer-leadership",
                json!({"from_node": from}),
            ),
            Action::Switchover { to } => (
                "/admin/cluster/transfer-leadership",
                json!({"target_node": to, "shard": "meta"}),
            ),
            Action::DeletePod { .. } => {
                return Err(ActionError {
                    action: action.describe(),
                    message: "deleting a pod is a Kubernetes action".into(),
                });
            }
        };
        let mut last = String::from("no pod to ask");
        for pod in pods {
            match self.client(pod).post_json(path, &body).await {
                Ok(answer) => return Ok(answer),
                // The data plane answered and refused: asking another node changes nothing.
                Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                    return Err(ActionError {
                        action: action.describe(),
                        message: e.to_string(),
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(ActionError {
            action: action.describe(),
            message: last,
        })
    }
}

/// Reads `/admin/cluster/status` (and `/admin/cluster/migration-status`).
pub fn parse_status(status: &Value, operations: Option<&Value>) -> ObservedDataPlane {
    let mut leads: BTreeMap<String, i32> = BTreeMap::new();
    let mut leads_any: BTreeMap<String, bool> = BTreeMap::new();
    for group in status["groups"].as_array().into_iter().flatten() {
        if let Some(leader) = group["leader"].as_str() {
            leads_any.insert(leader.to_string(), true);
            if group["name"] != "meta" {
                *leads.entry(leader.to_string()).or_default() += 1;
            }
        }
    }
    let members = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let id = n["id"].as_str()?.to_string();
            Some((
                id.clone(),
                ObservedMember {
                    reachable: n["reachable"].as_bool().unwrap_or(false),
                    ready: n["ready"].as_bool().unwrap_or(false),
                    replicas: n["replicas"].as_i64().unwrap_or(0) as i32,
                    leaderships: leads.get(&id).copied().unwrap_or(0),
                    leads_any: leads_any.get(&id).copied().unwrap_or(false),
                },
            ))
        })
        .collect();
    // Operations come newest first: `{"kind": {"drain": {..}}, "state": "running", ..}`.
    let running_operation = operations.and_then(|o| {
        o["operations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|op| op["state"] == "running")
            .map(|op| {
                op["kind"]
                    .as_object()
                    .and_then(|k| k.keys().next().cloned())
                    .unwrap_or_else(|| "operation".into())
            })
    });
    ObservedDataPlane {
        leader: status["leader"].as_str().map(str::to_string),
        members,
        running_operation,
    }
}
