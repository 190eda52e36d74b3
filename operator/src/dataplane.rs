//! The operator's view of and actions on the data plane, through `grape-client` and the admin
//! API (`/admin/cluster/*`). Where each pod answers is given by [`Endpoints`]: on Kubernetes
//! the pod's stable DNS name; in tests, local processes.

use crate::backup::decide::CallError;
use crate::decide::{Action, ObservedDataPlane, ObservedMember};
use crate::resources::{API_PORT, Names, RAFT_PORT};
use grape_client::{
    AddNodeRequest, BackupInfo, BackupRequest, ClientError, ClusterStatus, GrapeClient,
    OperationState, OperationsStatus, RebalanceRequest, RemoveNodeRequest, RestoreInfo,
    RestoreRequest, TransferLeadershipRequest,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long the calls that start a backup or restore, or delete one, may take (they reach
/// the backup's storage before they answer).
const START_TIMEOUT: Duration = Duration::from_secs(120);

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
            let status = match client.cluster_status().await {
                Ok(status) => status,
                Err(error) => {
                    tracing::debug!(%pod, %error, "reading the cluster status");
                    continue;
                }
            };
            // A node that is not yet a member knows no cluster: ask another.
            if status.nodes.is_empty() {
                continue;
            }
            // Without the operations status the operator cannot know whether a drain runs:
            // ask another node rather than act as if none did.
            let operations = match client.migration_status().await {
                Ok(operations) => operations,
                Err(error) => {
                    tracing::debug!(%pod, %error, "reading the operations status");
                    continue;
                }
            };
            return Some(observed(&status, Some(&operations)));
        }
        None
    }

    /// Runs `action` through the first of `pods` that answers (the admin API forwards to the
    /// meta leader where needed).
    pub async fn execute(&self, action: &Action, pods: &[String]) -> Result<(), ActionError> {
        if let Action::DeletePod { .. } = action {
            return Err(ActionError {
                action: action.describe(),
                message: "deleting a pod is a Kubernetes action".into(),
            });
        }
        let mut last = String::from("no pod to ask");
        for pod in pods {
            match self.run(&self.client(pod), action).await {
                Ok(()) => return Ok(()),
                // It was carried out; only the answer is in a shape this version does not
                // read. Repeating it on another node could do it twice.
                Err(e @ ClientError::UnexpectedAnswer { .. }) => {
                    tracing::warn!(action = %action.describe(), error = %e, "unreadable answer to an action that succeeded");
                    return Ok(());
                }
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

    /// The first answer of `call` on `pods` in turn: a refusal (4xx) is final; an
    /// unreachable node or a 5xx moves on to the next pod.
    async fn first_answer<T, F, Fut>(&self, pods: &[String], call: F) -> Result<T, CallError>
    where
        F: Fn(GrapeClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut last = CallError {
            status: None,
            code: None,
            message: "no pod is ready to ask".into(),
        };
        for pod in pods {
            match call(self.client(pod)).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    let error = CallError {
                        status: e.status().map(|s| s.as_u16()),
                        code: e.code().map(str::to_string),
                        message: e.to_string(),
                    };
                    if e.status().is_some_and(|s| s.is_client_error()) {
                        return Err(error);
                    }
                    tracing::debug!(%pod, error = %error.message, "data-plane call");
                    last = error;
                }
            }
        }
        Err(last)
    }

    /// `POST /admin/backups`.
    pub async fn start_backup(
        &self,
        request: &BackupRequest,
        pods: &[String],
    ) -> Result<BackupInfo, CallError> {
        // Starting writes a first file to the destination: slower than other admin calls.
        self.first_answer(pods, |c| async move {
            c.with_timeout(START_TIMEOUT).start_backup(request).await
        })
        .await
    }

    /// The backup `request` (which carries a tag) started: one that carries the same tag
    /// already (a start whose answer was lost: a timeout, a status not written) is answered
    /// rather than started again.
    pub async fn start_backup_once(
        &self,
        request: &BackupRequest,
        pods: &[String],
    ) -> Result<BackupInfo, CallError> {
        let earlier = self
            .backups(pods)
            .await?
            .into_iter()
            .find(|b| b.tag.is_some() && b.tag == request.tag);
        match earlier {
            Some(earlier) => Ok(earlier),
            None => self.start_backup(request, pods).await,
        }
    }

    /// `GET /admin/backups`.
    pub async fn backups(&self, pods: &[String]) -> Result<Vec<BackupInfo>, CallError> {
        self.first_answer(pods, |c| async move { c.backups().await })
            .await
            .map(|list| list.backups)
    }

    /// `GET /admin/backups/{id}`.
    pub async fn backup(&self, id: &str, pods: &[String]) -> Result<BackupInfo, CallError> {
        self.first_answer(pods, |c| async move { c.backup(id).await })
            .await
    }

    /// `DELETE /admin/backups/{id}?destination=`: its files are deleted at `destination` even
    /// when the cluster no longer has a record of it; one that is nowhere is deleted already.
    pub async fn delete_backup(
        &self,
        id: &str,
        destination: &str,
        pods: &[String],
    ) -> Result<(), CallError> {
        match self
            .first_answer(pods, |c| async move {
                c.with_timeout(START_TIMEOUT)
                    .delete_backup(id, Some(destination))
                    .await
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /admin/restore`.
    pub async fn restores(&self, pods: &[String]) -> Result<Vec<RestoreInfo>, CallError> {
        self.first_answer(pods, |c| async move { c.restores().await })
            .await
            .map(|list| list.restores)
    }

    /// `POST /admin/restore`.
    pub async fn start_restore(
        &self,
        request: &RestoreRequest,
        pods: &[String],
    ) -> Result<RestoreInfo, CallError> {
        // Starting reads the manifest and checks every file's length at the source first.
        self.first_answer(pods, |c| async move {
            c.with_timeout(START_TIMEOUT).start_restore(request).await
        })
        .await
    }

    /// One admin call for `action`.
    async fn run(&self, client: &GrapeClient, action: &Action) -> Result<(), ClientError> {
        match action {
            Action::AddNode { node } => client
                .add_node(&AddNodeRequest {
                    node_id: node.clone(),
                    address: self.endpoints.raft_address(node),
                    role: None,
                })
                .await
                .map(|_| ()),
            Action::RemoveNode { node } => client
                .remove_node(&RemoveNodeRequest {
                    node_id: node.clone(),
                    force: false,
                })
                .await
                .map(|_| ()),
            Action::Rebalance { strategy } => client
                .rebalance(&RebalanceRequest {
                    strategy: Some(strategy.clone()),
                })
                .await
                .map(|_| ()),
            Action::MoveLeadershipsOff { from } => client
                .transfer_leadership(&TransferLeadershipRequest {
                    from_node: Some(from.clone()),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Action::Switchover { to } => client
                .transfer_leadership(&TransferLeadershipRequest {
                    target_node: Some(to.clone()),
                    shard: Some("meta".into()),
                    from_node: None,
                })
                .await
                .map(|_| ()),
            Action::ReplaceMember { node } | Action::FailOver { node } => client
                .remove_node(&RemoveNodeRequest {
                    node_id: node.clone(),
                    force: true,
                })
                .await
                .map(|_| ()),
            Action::DeletePod { .. } => Ok(()),
        }
    }
}

/// What the operator needs from `/admin/cluster/status` (and
/// `/admin/cluster/migration-status`).
pub fn observed(
    status: &ClusterStatus,
    operations: Option<&OperationsStatus>,
) -> ObservedDataPlane {
    let mut leads: BTreeMap<&str, i32> = BTreeMap::new();
    let mut leads_any: BTreeSet<&str> = BTreeSet::new();
    for group in &status.groups {
        if let Some(leader) = group.leader.as_deref() {
            leads_any.insert(leader);
            if group.name != "meta" {
                *leads.entry(leader).or_default() += 1;
            }
        }
    }
    let members = status
        .nodes
        .iter()
        .map(|n| {
            (
                n.id.clone(),
                ObservedMember {
                    reachable: n.reachable,
                    ready: n.ready,
                    replicas: n.replicas as i32,
                    leaderships: leads.get(n.id.as_str()).copied().unwrap_or(0),
                    leads_any: leads_any.contains(n.id.as_str()),
                },
            )
        })
        .collect();
    let running = operations.and_then(|o| {
        o.operations
            .iter()
            .find(|op| op.state == OperationState::Running)
    });
    ObservedDataPlane {
        leader: status.leader.clone(),
        members,
        running_operation: running.map(|op| op.kind.name().to_string()),
        data_lost: status.data_lost.clone(),
        operation_progress: running.map(|op| {
            format!(
                "{} of {} moves done, {} in progress, {} documents and {} bytes left",
                op.moves_done,
                op.moves_total,
                op.moves_in_progress,
                op.documents_left,
                op.bytes_left
            )
        }),
    }
}
