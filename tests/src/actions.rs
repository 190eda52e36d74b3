//! Every kind of API call, sent as a given caller: for tests of who may do what.

use crate::GrapeNode;
use reqwest::Method;
use serde_json::{Value, json};

/// One call of each kind a permission guards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Upsert,
    Batch,
    Get,
    List,
    Delete,
    Search,
    SearchAlias,
    ListCollections,
    CreateCollection,
    DropCollection,
    AdminStats,
    AdminShards,
    Checksum,
    ClusterStatus,
    /// `cluster:write`.
    Rebalance,
    Metrics,
}

use Action::*;

pub const ALL: [Action; 16] = [
    Upsert,
    Batch,
    Get,
    List,
    Delete,
    Search,
    SearchAlias,
    ListCollections,
    CreateCollection,
    DropCollection,
    AdminStats,
    AdminShards,
    Checksum,
    ClusterStatus,
    Rebalance,
    Metrics,
];

/// Who a request comes from.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// No credentials.
    Nobody,
    /// An API key in `X-API-Key`.
    Key(&'a str),
    /// A user and password in `Authorization: Basic`.
    User(&'a str, &'a str),
}

/// Sends one action as `who` and returns the status. `tag` keeps the ids and collection
/// names of different callers apart.
pub async fn perform(node: &GrapeNode, who: Who<'_>, action: Action, tag: &str) -> u16 {
    let client = match who {
        Who::Key(key) => node.client_with_key(key),
        Who::Nobody | Who::User(..) => node.client(),
    };
    let (method, path, body): (Method, String, Option<Value>) = match action {
        Upsert => (
            Method::POST,
            "/api/v1/documents".into(),
            Some(json!({"id": format!("u-{tag}"), "vector": [1, 2]})),
        ),
        Batch => (
            Method::POST,
            "/api/v1/documents/batch".into(),
            Some(json!({"documents": [{"id": format!("b-{tag}"), "vector": [2, 1]}]})),
        ),
        Get => (Method::GET, "/api/v1/documents/seed".into(), None),
        List => (Method::GET, "/api/v1/documents?limit=5".into(), None),
        Delete => (Method::DELETE, format!("/api/v1/documents/u-{tag}"), None),
        Search => (
            Method::POST,
            "/api/v1/search".into(),
            Some(json!({"vector": [1, 1], "top_k": 2})),
        ),
        SearchAlias => (
            Method::POST,
            "/api/v1/vectors/search".into(),
            Some(json!({"vector": [1, 1]})),
        ),
        ListCollections => (Method::GET, "/api/v1/collections".into(), None),
        CreateCollection => (
            Method::POST,
            "/api/v1/collections".into(),
            Some(json!({"name": format!("c-{tag}"), "dimension": 2})),
        ),
        DropCollection => (Method::DELETE, format!("/api/v1/collections/c-{tag}"), None),
        AdminStats => (Method::GET, "/admin/stats".into(), None),
        AdminShards => (Method::GET, "/admin/stats/shards".into(), None),
        Checksum => (Method::GET, "/admin/checksum".into(), None),
        ClusterStatus => (Method::GET, "/admin/cluster/status".into(), None),
        Rebalance => (
            Method::POST,
            "/admin/cluster/rebalance".into(),
            Some(json!({})),
        ),
        Metrics => (Method::GET, "/metrics".into(), None),
    };
    let mut request = client.request(method, &path);
    if let Who::User(user, password) = who {
        request = request.basic_auth(user, Some(password));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().status().as_u16()
}

/// What the built-in writer role may do.
pub const WRITER: &[Action] = &[
    Upsert,
    Batch,
    Get,
    List,
    Delete,
    Search,
    SearchAlias,
    ListCollections,
];

/// What the built-in reader role may do.
pub const READER: &[Action] = &[Get, List, Search, SearchAlias, ListCollections];

/// What the built-in searcher role may do.
pub const SEARCHER: &[Action] = &[Search, SearchAlias];

/// Sends every action as `who` (`tag` names it in ids and messages) and lists the answers
/// that differ from `allowed`: 2xx for an allowed action, 403 for any other.
pub async fn wrong_answers(
    node: &GrapeNode,
    who: Who<'_>,
    allowed: &[Action],
    tag: &str,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for action in ALL {
        let status = perform(node, who, action, tag).await;
        let expected = allowed.contains(&action);
        let ok = if expected {
            (200..300).contains(&status)
        } else {
            status == 403
        };
        if !ok {
            wrong.push(format!(
                "{who:?} ({tag}) {action:?}: {status} (allowed: {expected})"
            ));
        }
    }
    wrong
}
