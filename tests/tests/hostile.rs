//! The hostile-input suite: hundreds of malformed, unauthenticated and abusive requests against
//! real nodes, on the API port and the node-to-node port, on one node and on a 3-node cluster.
//! Every one must get a 4xx (or, for well-formed calls by a trusted peer, an answer that
//! refuses it), no node may crash, and no stored data may change.

use grape_client::GrapeClient;
use grape_dataplane::cluster::raft::rpc::{
    BackupChunkRpc, BackupHoldRpc, ProposeRpc, RemoteError, RpcKind, SnapshotChunkRpc,
    SnapshotFinish,
};
use grape_dataplane::cluster::raft::snapshot::Whole;
use grape_dataplane::cluster::raft::types::{
    Request, Response, SnapshotMeta, Vote, decode, encode,
};
use grape_dataplane::shard::{NewDocument, ShardCommand, ShardResponse};
use grape_e2e::load::{self, DIMENSION};
use grape_e2e::{Cluster, GrapeNode, NodeOptions, peer_headers, temp_file};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const ADMIN: &str = "sk-hostile-admin-1";
const SEARCHER: &str = "sk-hostile-searcher-1";
/// A user allowed only to search, who logs in with HTTP Basic.
const SEARCHER_USER: (&str, &str) = ("finder", "finder-password");

/// The suite's keys and users (the user's hash made at the lowest cost: hundreds of wrong
/// passwords are checked).
fn keys() -> String {
    let hash = grape_e2e::hash_password(SEARCHER_USER.1, 4);
    format!(
        r#"
api_keys:
  - {{key: "sk-hostile-admin-1", name: admin, permissions: ["admin"]}}
  - {{key: "sk-hostile-searcher-1", name: searcher, permissions: ["searcher"]}}
rbac:
  users:
    - {{username: "{}", password_hash: "{hash}", roles: ["searcher"]}}
"#,
        SEARCHER_USER.0
    )
}

fn basic(credentials: &[u8]) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// `Authorization` headers that must get 401 whatever route they are sent to.
fn bad_authorizations() -> Vec<(&'static str, String)> {
    vec![
        (
            "Basic credentials that are not base64",
            "Basic %%%not-base64%%%".into(),
        ),
        ("Basic credentials without a colon", basic(b"finder")),
        ("Basic credentials of 10 KB", basic(&[b'a'; 10 * 1024])),
        (
            "Basic credentials that are not UTF-8",
            basic(b"finder:\xff\xfe"),
        ),
        ("a wrong password", basic(b"finder:wrong-password")),
        ("an unknown user", basic(b"nobody:finder-password")),
        ("an empty user", basic(b":finder-password")),
        ("a Bearer token", "Bearer sk-hostile-admin-1".into()),
        ("a bare Basic scheme", "Basic".into()),
    ]
}

/// Settings every node of the suite runs with: keys on, short read timeouts so stalled
/// requests are seen to end, and no lock-out per address or per user (they are tested in
/// `auth.rs` and `rbac.rs`; here one address sends hundreds of unauthenticated requests and
/// wrong passwords on purpose).
fn options(keys: &std::path::Path) -> NodeOptions {
    NodeOptions::dimension(DIMENSION)
        .setting("SECURITY__ENABLE_AUTH", "true")
        .setting("SECURITY__FAILED_AUTH_PER_MINUTE", "0")
        .setting("SECURITY__FAILED_LOGINS_PER_USER_PER_MINUTE", "0")
        .setting("PERFORMANCE__HEADER_READ_TIMEOUT_MS", "1000")
        .setting("PERFORMANCE__BODY_READ_TIMEOUT_MS", "1000")
        .setting("PERFORMANCE__MAX_REQUEST_BODY_MB", "2")
        .arg("--api-keys-file")
        .arg(keys.to_string_lossy().into_owned())
}

/// One hostile request and the answers that are acceptable for it.
struct Probe {
    what: String,
    method: Method,
    path: String,
    key: Option<&'static str>,
    /// An `Authorization` header.
    authorization: Option<String>,
    body: Option<Vec<u8>>,
    expect: &'static [u16],
}

fn probe(
    what: impl Into<String>,
    method: Method,
    path: impl Into<String>,
    key: Option<&'static str>,
    body: Option<Vec<u8>>,
    expect: &'static [u16],
) -> Probe {
    Probe {
        what: what.into(),
        method,
        path: path.into(),
        key,
        authorization: None,
        body,
        expect,
    }
}

const BAD: &[u16] = &[400];
const BAD_OR_MISSING: &[u16] = &[400, 404];
const TOO_LARGE: &[u16] = &[400, 413];

/// Every API route, with a well-formed body where it takes one.
fn routes() -> Vec<(Method, &'static str, Option<Value>)> {
    let doc = json!({"id": "h1", "vector": vec![0.5; DIMENSION]});
    let search = json!({"vector": vec![0.5; DIMENSION], "top_k": 3});
    vec![
        (Method::POST, "/api/v1/documents", Some(doc.clone())),
        (
            Method::POST,
            "/api/v1/documents/batch",
            Some(json!({"documents": [doc.clone()]})),
        ),
        (Method::GET, "/api/v1/documents/h1", None),
        (Method::DELETE, "/api/v1/documents/h1", None),
        (Method::GET, "/api/v1/documents", None),
        (Method::POST, "/api/v1/search", Some(search.clone())),
        (Method::POST, "/api/v1/vectors/search", Some(search.clone())),
        (
            Method::POST,
            "/api/v1/collections/default/documents",
            Some(doc),
        ),
        (
            Method::POST,
            "/api/v1/collections/default/search",
            Some(search),
        ),
        (Method::GET, "/api/v1/collections", None),
        (Method::GET, "/api/v1/collections/default", None),
        (
            Method::POST,
            "/api/v1/collections",
            Some(json!({"name": "h", "dimension": 2})),
        ),
        (Method::DELETE, "/api/v1/collections/default", None),
        (Method::GET, "/admin/stats", None),
        (Method::GET, "/admin/stats/shards", None),
        (Method::GET, "/admin/checksum", None),
        (Method::GET, "/admin/cluster/status", None),
        (Method::GET, "/admin/slow-queries", None),
        (Method::GET, "/metrics", None),
        (
            Method::POST,
            "/admin/cluster/add-node",
            Some(json!({"node_id": "x", "address": "127.0.0.1:1"})),
        ),
        (
            Method::POST,
            "/admin/cluster/remove-node",
            Some(json!({"node_id": "node-1"})),
        ),
        (
            Method::POST,
            "/admin/cluster/rebalance",
            Some(json!({"strategy": "even_distribution"})),
        ),
        (Method::POST, "/admin/cluster/repair", Some(json!({}))),
        (
            Method::POST,
            "/admin/cluster/transfer-leadership",
            Some(json!({"from_node": "node-1"})),
        ),
        (
            Method::POST,
            "/admin/cluster/force-recovery",
            Some(json!({"recovery_mode": "single_node", "accept_data_loss": true})),
        ),
        (Method::GET, "/admin/backups", None),
        (Method::GET, "/admin/backups/20261203T000000Z-0000", None),
        (Method::DELETE, "/admin/backups/20261203T000000Z-0000", None),
        (Method::GET, "/admin/restore", None),
        (
            Method::POST,
            "/admin/backups",
            Some(json!({"destination": "file:///nonexistent-grape-backups"})),
        ),
        (
            Method::POST,
            "/admin/restore",
            Some(json!({"source": "file:///nonexistent-grape-backups"})),
        ),
    ]
}

/// Bodies no endpoint accepts.
fn malformed_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let mut deep_array = "[".repeat(100_000);
    deep_array.push_str(&"]".repeat(100_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000));
    vec![
        ("empty", Vec::new()),
        ("whitespace", b"   \n\t ".to_vec()),
        ("null", b"null".to_vec()),
        ("an array", b"[]".to_vec()),
        ("a string", br#""hello""#.to_vec()),
        ("a number", b"42".to_vec()),
        ("truncated", br#"{"id": "x", "vector": [1,"#.to_vec()),
        ("trailing garbage", br#"{} {}"#.to_vec()),
        ("invalid UTF-8", b"{\"id\": \"\xff\xfe\"}".to_vec()),
        ("NUL bytes", b"\0\0\0\0".to_vec()),
        ("NaN literal", br#"{"vector": [NaN]}"#.to_vec()),
        ("deeply nested arrays", deep_array.into_bytes()),
        ("deeply nested objects", deep_object.into_bytes()),
        ("a 1 MB string", {
            let mut b = br#"{"x": ""#.to_vec();
            b.extend(std::iter::repeat_n(b'a', 1 << 20));
            b.extend_from_slice(br#""}"#);
            b
        }),
        (
            "binary noise",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ]
}

/// Vectors the index could not use, as documents and as queries.
fn hostile_vectors() -> Vec<(&'static str, String)> {
    let d = DIMENSION;
    let repeat = |v: &str| vec![v; d].join(", ");
    let mut tiny = vec!["0"; d];
    tiny[0] = "1e-45";
    vec![
        (
            "a vector that vanishes in f32",
            format!("[{}]", repeat("1e-30")),
        ),
        (
            "a vector whose norm overflows",
            format!("[{}]", repeat("1e20")),
        ),
        ("a denormal vector", format!("[{}]", tiny.join(", "))),
        ("a value past f32", format!("[{}]", repeat("1e39"))),
        ("a zero vector", format!("[{}]", repeat("0"))),
        ("an empty vector", "[]".into()),
        (
            "one value short",
            format!("[{}]", vec!["1"; d - 1].join(", ")),
        ),
        (
            "one value long",
            format!("[{}]", vec!["1"; d + 1].join(", ")),
        ),
        (
            "a 100,000-value vector",
            format!("[{}]", vec!["1"; 100_000].join(",")),
        ),
        ("strings", format!("[{}]", repeat("\"1\""))),
        ("nested arrays", format!("[[{}]]", repeat("1"))),
        ("booleans", format!("[{}]", repeat("true"))),
        ("null values", format!("[{}]", repeat("null"))),
        ("not an array", "\"1,2,3\"".into()),
    ]
}

/// The API-port probes: at least 300, every case the issue lists.
fn api_probes() -> Vec<Probe> {
    let mut probes = Vec::new();
    // Unauthenticated and under-privileged callers on every route.
    for (method, path, body) in routes() {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        probes.push(probe(
            format!("{method} {path} without a key"),
            method.clone(),
            path,
            None,
            body.clone(),
            &[401],
        ));
        probes.push(probe(
            format!("{method} {path} with an unknown key"),
            method.clone(),
            path,
            Some("sk-made-up-key-0000"),
            body.clone(),
            &[401],
        ));
        for (what, authorization) in bad_authorizations() {
            let mut p = probe(
                format!("{method} {path} with {what}"),
                method.clone(),
                path,
                None,
                body.clone(),
                &[401],
            );
            p.authorization = Some(authorization);
            probes.push(p);
        }
        let searchable = path.ends_with("search") || path == "/api/v1/search";
        if !searchable {
            probes.push(probe(
                format!("{method} {path} with a searcher key"),
                method.clone(),
                path,
                Some(SEARCHER),
                body.clone(),
                &[403],
            ));
            let mut p = probe(
                format!("{method} {path} as a user who may only search"),
                method.clone(),
                path,
                None,
                body,
                &[403],
            );
            let (user, password) = SEARCHER_USER;
            p.authorization = Some(basic(format!("{user}:{password}").as_bytes()));
            probes.push(p);
        }
    }
    // Malformed bodies on every route that takes one, with a key allowed to call it.
    for (method, path, body) in routes() {
        if body.is_none() {
            continue;
        }
        for (what, bytes) in malformed_bodies() {
            let expect = if what == "a 1 MB string" {
                TOO_LARGE
            } else {
                BAD
            };
            probes.push(probe(
                format!("{method} {path} with {what}"),
                method.clone(),
                path,
                Some(ADMIN),
                Some(bytes),
                expect,
            ));
        }
    }
    // Vectors the index would refuse, as writes and as searches.
    for (what, vector) in hostile_vectors() {
        for (path, body) in [
            (
                "/api/v1/documents",
                format!(r#"{{"id": "ghost", "vector": {vector}}}"#),
            ),
            (
                "/api/v1/documents/batch",
                format!(
                    r#"{{"documents": [{{"id": "ok", "vector": [{}]}}, {{"id": "ghost", "vector": {vector}}}]}}"#,
                    ["1"; DIMENSION].join(",")
                ),
            ),
            ("/api/v1/search", format!(r#"{{"vector": {vector}}}"#)),
        ] {
            probes.push(probe(
                format!("{path} with {what}"),
                Method::POST,
                path,
                Some(ADMIN),
                Some(body.into_bytes()),
                BAD,
            ));
        }
    }
    // Paths that do not decode or name nothing: never a fallback, never a 500.
    let long = "x".repeat(10_000);
    for segment in [
        "%FF",
        "%00",
        "%C3%28",
        "%",
        "%2F..%2F..%2Fetc%2Fpasswd",
        long.as_str(),
        "%E2%80%AE",
    ] {
        for (method, path) in [
            (Method::GET, format!("/api/v1/documents/{segment}")),
            (Method::DELETE, format!("/api/v1/documents/{segment}")),
            (
                Method::POST,
                format!("/api/v1/collections/{segment}/documents"),
            ),
            (
                Method::POST,
                format!("/api/v1/collections/{segment}/search"),
            ),
            (Method::GET, format!("/api/v1/collections/{segment}")),
            (Method::DELETE, format!("/api/v1/collections/{segment}")),
        ] {
            let body = (method == Method::POST).then(|| {
                serde_json::to_vec(&json!({"id": "p", "vector": vec![0.5; DIMENSION]})).unwrap()
            });
            probes.push(probe(
                format!("{method} {}", &path[..path.len().min(80)]),
                method,
                path,
                Some(ADMIN),
                body,
                BAD_OR_MISSING,
            ));
        }
    }
    // Query strings.
    for query in [
        "limit=-1",
        "limit=99999999999999999999999",
        "limit=",
        "limit=0",
        "limit=1001",
        "cursor=%FF",
        "cursor=zz",
        "cursor=",
        "colour=red",
        "limit=1&limit=2",
    ] {
        probes.push(probe(
            format!("list with {query}"),
            Method::GET,
            format!("/api/v1/documents?{query}"),
            Some(ADMIN),
            None,
            BAD,
        ));
    }
    for query in ["consistency=always", "consistency=", "x=%FF"] {
        probes.push(probe(
            format!("get with {query}"),
            Method::GET,
            format!("/api/v1/documents/h1?{query}"),
            Some(ADMIN),
            None,
            BAD,
        ));
    }
    // Filters past their limits, or shaped to be expensive.
    let vector = vec![0.5; DIMENSION];
    let many_values: Vec<u32> = (0..10_001).collect();
    let conditions: Vec<Value> = (0..65)
        .map(|i| json!({"key": format!("k{i}"), "match": i}))
        .collect();
    for (what, filter) in [
        (
            "a 10,001-value match_any",
            json!({"must": [{"key": "k", "match_any": many_values}]}),
        ),
        ("65 conditions", json!({"must": conditions})),
        (
            "a 2 KB key",
            json!({"must": [{"key": "k".repeat(2048), "match": 1}]}),
        ),
        (
            "an empty key segment",
            json!({"must": [{"key": "a..b", "match": 1}]}),
        ),
        (
            "a match on an object",
            json!({"must": [{"key": "a", "match": {"b": 1}}]}),
        ),
        ("an unknown clause", json!({"any": []})),
        (
            "a range without bounds",
            json!({"must": [{"key": "a", "range": {}}]}),
        ),
    ] {
        probes.push(probe(
            format!("search with {what}"),
            Method::POST,
            "/api/v1/search",
            Some(ADMIN),
            Some(serde_json::to_vec(&json!({"vector": vector, "filter": filter})).unwrap()),
            BAD,
        ));
    }
    // Out-of-range parameters.
    for body in [
        json!({"vector": vector, "top_k": 0}),
        json!({"vector": vector, "top_k": 10_001}),
        json!({"vector": vector, "top_k": -1}),
        json!({"vector": vector, "top_k": 1e30}),
        json!({"vector": vector, "ef": 0}),
        json!({"vector": vector, "ef": 1_000_000}),
        json!({"vector": vector, "consistency": "always"}),
        json!({"vector": vector, "include_vectors": "yes"}),
    ] {
        probes.push(probe(
            format!("search with {body}"),
            Method::POST,
            "/api/v1/search",
            Some(ADMIN),
            Some(serde_json::to_vec(&body).unwrap()),
            BAD,
        ));
    }
    for body in [
        json!({"id": "", "vector": vector}),
        json!({"id": "i".repeat(257), "vector": vector}),
        json!({"id": 7, "vector": vector}),
        json!({"id": "m", "vector": vector, "metadata": {"blob": "x".repeat(70_000)}}),
        json!({"id": "m", "vector": vector, "metadata": [1, 2]}),
        json!({"id": "m", "vector": vector, "extra": 1}),
    ] {
        probes.push(probe(
            "an invalid document",
            Method::POST,
            "/api/v1/documents",
            Some(ADMIN),
            Some(serde_json::to_vec(&body).unwrap()),
            BAD,
        ));
    }
    for body in [
        json!({"name": "", "dimension": 4}),
        json!({"name": "a/b", "dimension": 4}),
        json!({"name": "c", "dimension": 0}),
        json!({"name": "c", "dimension": 100_000_000}),
        json!({"name": "c", "dimension": 4, "shard_count": 0}),
        json!({"name": "c", "dimension": 4, "shard_count": 100_000}),
        json!({"name": "c", "dimension": 4, "replication_factor": 0}),
        json!({"name": "c", "dimension": 4, "metric": "hamming"}),
        json!({"name": "n".repeat(10_000), "dimension": 4}),
    ] {
        probes.push(probe(
            "an invalid collection",
            Method::POST,
            "/api/v1/collections",
            Some(ADMIN),
            Some(serde_json::to_vec(&body).unwrap()),
            BAD,
        ));
    }
    for (path, body) in [
        ("/admin/cluster/rebalance", json!({"strategy": "chaos"})),
        ("/admin/cluster/remove-node", json!({"node_id": 5})),
        (
            "/admin/cluster/force-recovery",
            json!({"recovery_mode": "single_node"}),
        ),
        ("/admin/cluster/transfer-leadership", json!({"to_node": []})),
        ("/admin/cluster/add-node", json!({"node_id": "x"})),
        // Backup destinations that cannot be used, and bodies that do not fit.
        ("/admin/backups", json!({})),
        ("/admin/backups", json!({"destination": 5})),
        (
            "/admin/backups",
            json!({"destination": "ftp://example.com/b"}),
        ),
        (
            "/admin/backups",
            json!({"destination": "file://relative/dir"}),
        ),
        (
            "/admin/backups",
            json!({"destination": "file:///nonexistent-grape-backups"}),
        ),
        (
            "/admin/backups",
            json!({"destination": "file:///tmp/../etc"}),
        ),
        // /tmp holds the node's data directory.
        ("/admin/backups", json!({"destination": "file:///tmp"})),
        ("/admin/backups", json!({"destination": "file:///proc"})),
        (
            "/admin/backups",
            json!({"destination": "file:///var", "tag": "a\u{0}b"}),
        ),
        (
            "/admin/backups",
            json!({"destination": "file:///var", "tag": "x".repeat(300)}),
        ),
        (
            "/admin/backups",
            json!({"destination": "file:///var", "tag": ""}),
        ),
        (
            "/admin/backups",
            json!({"destination": "s3://Not_A_Bucket/x"}),
        ),
        ("/admin/backups", json!({"destination": "s3://bucket/../x"})),
        (
            "/admin/backups",
            json!({"destination": format!("file:///{}", "a/".repeat(600))}),
        ),
        (
            "/admin/backups",
            json!({"destination": "file:///var", "collections": []}),
        ),
        (
            "/admin/backups",
            json!({"destination": "file:///var", "extra": 1}),
        ),
        ("/admin/restore", json!({})),
        (
            "/admin/restore",
            json!({"source": "file:///nonexistent-grape-backups"}),
        ),
        (
            "/admin/restore",
            json!({"source": "file:///var", "backup_id": "../../etc"}),
        ),
        (
            "/admin/restore",
            json!({"source": "file:///var", "backup_id": ""}),
        ),
        (
            "/admin/restore",
            json!({"source": "file:///var", "backup_id": "x".repeat(100)}),
        ),
        ("/admin/restore", json!({"source": "gopher://x"})),
        (
            "/admin/restore",
            json!({"source": "file:///var", "rename": {"a": 5}}),
        ),
    ] {
        probes.push(probe(
            format!("{path} with {body}"),
            Method::POST,
            path,
            Some(ADMIN),
            Some(serde_json::to_vec(&body).unwrap()),
            BAD,
        ));
    }
    // Backups and collections that do not exist.
    for (method, path, body) in [
        (Method::GET, "/admin/backups/no-such-backup", None),
        (Method::GET, "/admin/backups/..%2F..%2Fetc", None),
        (Method::DELETE, "/admin/backups/no-such-backup", None),
        (Method::DELETE, "/admin/backups/..%2F..%2Fetc", None),
        (Method::DELETE, "/admin/backups/%00", None),
        (
            Method::DELETE,
            "/admin/backups/..?destination=file:///etc",
            None,
        ),
        (
            Method::DELETE,
            "/admin/backups/passwd?destination=file:///etc",
            None,
        ),
        (
            Method::POST,
            "/admin/restore",
            Some(json!({"source": "file:///var", "backup_id": "no-such-backup"})),
        ),
        (
            Method::POST,
            "/admin/backups",
            Some(json!({"destination": "file:///var", "collections": ["no-such-collection"]})),
        ),
    ] {
        probes.push(probe(
            format!("{method} {path} with {body:?}"),
            method,
            path,
            Some(ADMIN),
            body.map(|b| serde_json::to_vec(&b).unwrap()),
            &[404],
        ));
    }
    // Deleting a backup with a bad query: an unknown parameter, a relative or unsupported
    // destination.
    for path in [
        "/admin/backups/20261203T000000Z-0000?dest=file:///tmp",
        "/admin/backups/20261203T000000Z-0000?destination=backups",
        "/admin/backups/20261203T000000Z-0000?destination=gopher://x",
        "/admin/backups/20261203T000000Z-0000?destination=file:///..%2Fetc",
    ] {
        probes.push(probe(
            format!("DELETE {path}"),
            Method::DELETE,
            path,
            Some(ADMIN),
            None,
            BAD,
        ));
    }
    // Methods and routes that do not exist.
    for (method, path) in [
        (Method::PUT, "/api/v1/documents"),
        (Method::PATCH, "/api/v1/documents/h1"),
        (Method::GET, "/api/v1/search"),
        (Method::DELETE, "/admin/stats"),
        (Method::GET, "/api/v2/documents"),
        (Method::GET, "/internal/propose"),
        (Method::POST, "/raft/append"),
    ] {
        probes.push(probe(
            format!("{method} {path}"),
            method,
            path,
            Some(ADMIN),
            None,
            &[404, 405],
        ));
    }
    probes
}

/// Sends every probe; returns the failures (wrong or 5xx answers).
async fn run(url: &str, probes: Vec<Probe>) -> (usize, Vec<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let total = probes.len();
    let mut failures = Vec::new();
    for p in probes {
        let mut request = client.request(p.method.clone(), format!("{url}{}", p.path));
        if let Some(key) = p.key {
            request = request.header("x-api-key", key);
        }
        if let Some(authorization) = &p.authorization {
            request = request.header("authorization", authorization);
        }
        if let Some(body) = p.body {
            request = request.body(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                if !p.expect.contains(&status) {
                    failures.push(format!(
                        "{}: {status} (want {:?}) {}",
                        p.what,
                        p.expect,
                        &text[..text.len().min(200)]
                    ));
                } else if status >= 400 && serde_json::from_str::<Value>(&text).is_err() {
                    failures.push(format!("{}: {status} without a JSON error body", p.what));
                }
            }
            Err(e) => failures.push(format!("{}: no answer: {e}", p.what)),
        }
    }
    (total, failures)
}

/// Raw HTTP/1.1 on a socket: requests a client library would refuse to send.
fn raw_exchange(address: &str, bytes: &[u8], pause: Option<Duration>) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    if let Some(pause) = pause {
        std::thread::sleep(pause);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Requests malformed at the HTTP level, and clients that stall.
fn raw_probes(address: &str) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let host = format!("Host: {address}\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage request line", b"HELLO\r\n\r\n".to_vec()),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec()),
        (
            "a 100 KB header",
            format!(
                "GET /health HTTP/1.1\r\n{host}X-Big: {}\r\n\r\n",
                "a".repeat(100_000)
            )
            .into_bytes(),
        ),
        (
            "a Content-Length that is not a number",
            format!("POST /api/v1/search HTTP/1.1\r\n{host}Content-Length: lots\r\n\r\n{{}}")
                .into_bytes(),
        ),
        (
            "two Content-Lengths",
            format!(
                "POST /api/v1/search HTTP/1.1\r\n{host}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
            )
            .into_bytes(),
        ),
        (
            // Sent as is: an HTTP client library would resolve the dot segment itself.
            "a write through a dot segment",
            format!(
                "POST /api/v1/collections/../documents HTTP/1.1\r\n{host}x-api-key: {ADMIN}\r\nContent-Length: 2\r\n\r\n{{}}"
            )
            .into_bytes(),
        ),
        (
            "a bad chunked body",
            format!(
                "POST /api/v1/search HTTP/1.1\r\n{host}x-api-key: {ADMIN}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
            )
            .into_bytes(),
        ),
    ];
    let total = cases.len() + 2;
    for (what, bytes) in cases {
        let answer = raw_exchange(address, &bytes, None);
        let status: u16 = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // A 4xx, or the connection closed without an answer.
        if status != 0 && !(400..500).contains(&status) {
            failures.push(format!("{what}: {status}"));
        }
    }
    // A body that declares 100 bytes and sends 7: the node stops waiting (400 or a closed
    // connection) within the body timeout, instead of holding the connection forever.
    let started = Instant::now();
    let answer = raw_exchange(
        address,
        format!(
            "POST /api/v1/search HTTP/1.1\r\n{host}x-api-key: {ADMIN}\r\nContent-Length: 100\r\n\r\n{{\"vec\""
        )
        .as_bytes(),
        None,
    );
    if started.elapsed() > Duration::from_secs(5) || answer.starts_with("HTTP/1.1 5") {
        failures.push(format!(
            "a stalled body held the connection {:?}: {answer:?}",
            started.elapsed()
        ));
    }
    // Headers that never end: the connection is closed after the header timeout.
    let started = Instant::now();
    let answer = raw_exchange(
        address,
        format!("GET /health HTTP/1.1\r\n{host}X-Slow: 1\r\n").as_bytes(),
        None,
    );
    if started.elapsed() > Duration::from_secs(5) || answer.starts_with("HTTP/1.1 5") {
        failures.push(format!(
            "stalled headers held the connection {:?}: {answer:?}",
            started.elapsed()
        ));
    }
    (total, failures)
}

type Headers = Vec<(String, String)>;

/// The node-to-node probes: strangers on every route, and a trusted peer's malformed or
/// invalid calls.
async fn raft_probes(raft: &str, secret: &str, shard_group: &str) -> (usize, Vec<String>) {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let call = |path: &str, headers: Vec<(String, String)>, body: Vec<u8>| {
        let mut request = client
            .post(format!("http://{raft}{path}"))
            .header("content-type", "application/msgpack");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.body(body).send()
    };
    let mut total = 0;
    let mut failures = Vec::new();
    let stale = {
        // A proof made with the right secret, ten minutes ago.
        let mut headers = peer_headers("node-1", Some(secret), "/x", b"");
        for (name, value) in &mut headers {
            if name == "x-grape-proof" {
                let at: u64 = value[2..value.find(',').unwrap()].parse().unwrap();
                *value = value.replacen(&format!("t={at}"), &format!("t={}", at - 600), 1);
            }
        }
        headers
    };
    for kind in RpcKind::ALL {
        let path = kind.path();
        let strangers: Vec<(&str, Headers, Vec<u8>)> = vec![
            ("no proof", vec![], b"\x80".to_vec()),
            (
                "a name and no proof",
                vec![("x-grape-node".into(), "node-1".into())],
                b"\x80".to_vec(),
            ),
            (
                "a malformed proof",
                vec![
                    ("x-grape-node".into(), "node-1".into()),
                    ("x-grape-proof".into(), "t=abc,s=zz".into()),
                ],
                b"\x80".to_vec(),
            ),
            (
                "the wrong secret",
                peer_headers("node-1", Some("not-the-cluster-secret-000"), path, b"\x80"),
                b"\x80".to_vec(),
            ),
            ("a stale proof", stale.clone(), b"\x80".to_vec()),
            (
                "a proof for another body",
                peer_headers("node-1", Some(secret), path, b"\x80"),
                b"\x81".to_vec(),
            ),
        ];
        for (what, headers, body) in strangers {
            total += 1;
            match call(path, headers, body).await {
                Ok(r) if r.status() == 401 => {}
                Ok(r) => failures.push(format!("{path} with {what}: {}", r.status())),
                Err(e) => failures.push(format!("{path} with {what}: {e}")),
            }
        }
        // A trusted peer's undecodable calls are 400s.
        for (what, body) in [
            ("garbage", b"\xc1\xc1\xc1".to_vec()),
            ("a truncated map", b"\x85\xa1a".to_vec()),
            ("JSON", br#"{"group": "meta"}"#.to_vec()),
        ] {
            total += 1;
            let headers = peer_headers("node-1", Some(secret), path, &body);
            match call(path, headers, body).await {
                Ok(r) if r.status().is_client_error() => {}
                Ok(r) => failures.push(format!("{path} from a peer with {what}: {}", r.status())),
                Err(e) => failures.push(format!("{path} from a peer with {what}: {e}")),
            }
        }
    }
    // A trusted peer proposing documents the shard cannot index: refused where applied.
    let path = RpcKind::Propose.path();
    for (what, vector) in [
        ("a vector of the wrong length", vec![1.0; DIMENSION + 3]),
        ("a vector that vanishes in f32", vec![1e-30; DIMENSION]),
        ("a vector whose norm overflows", vec![1e20; DIMENSION]),
        ("a NaN", vec![f32::NAN; DIMENSION]),
        ("an empty vector", vec![]),
    ] {
        total += 1;
        let body = encode(&ProposeRpc {
            group: shard_group.to_string(),
            request: Request::Shard(ShardCommand::upsert(vec![NewDocument {
                id: "smuggled".into(),
                vector,
                metadata: Default::default(),
            }])),
        });
        let headers = peer_headers("node-1", Some(secret), path, &body);
        match call(path, headers, body).await {
            Ok(r) if r.status() == 200 => {
                let bytes = r.bytes().await.unwrap();
                let answer: Result<Response, Value> = decode(&bytes).map_err(|_| Value::Null);
                match answer {
                    Ok(Response::Shard(ShardResponse::Rejected { .. })) | Err(_) => {}
                    Ok(other) => {
                        failures.push(format!("a proposal with {what} answered {other:?}"))
                    }
                }
            }
            Ok(r) => failures.push(format!("a proposal with {what}: {}", r.status())),
            Err(e) => failures.push(format!("a proposal with {what}: {e}")),
        }
    }
    // A trusted peer misusing snapshot transfers: refused, and nothing is installed or kept.
    let path = RpcKind::SnapshotChunk.path();
    let chunk = |group: &str, transfer: u64, offset: u64, data: &[u8], finish| SnapshotChunkRpc {
        group: group.to_string(),
        transfer,
        offset,
        data: data.to_vec(),
        finish,
    };
    let finish = |data: &[u8]| {
        Some(SnapshotFinish {
            vote: Vote::new(1, "node-1".to_string()),
            meta: SnapshotMeta::default(),
            whole: Whole {
                len: data.len() as u64,
                digest: 0xbad,
            },
        })
    };
    let misuse = [
        (
            "a chunk of a group the node does not hold",
            chunk("nope/0", 1, 0, b"x", None),
            false,
        ),
        (
            "a chunk of a transfer never started",
            chunk(shard_group, 2, 5, b"x", None),
            false,
        ),
        (
            "the start of a transfer",
            chunk(shard_group, 3, 0, &[7; 1024], None),
            true,
        ),
        (
            "a chunk with a gap",
            chunk(shard_group, 3, 2048, b"x", None),
            false,
        ),
        (
            "a chunk of another transfer",
            chunk(shard_group, 4, 1024, b"x", None),
            false,
        ),
        (
            "an end whose digest is wrong",
            chunk(shard_group, 3, 1024, b"", finish(&[7; 1024])),
            false,
        ),
        (
            "an end of a dropped transfer",
            chunk(shard_group, 3, 1024, b"", finish(&[7; 1024])),
            false,
        ),
    ];
    for (what, rpc, accepted) in misuse {
        total += 1;
        let body = encode(&rpc);
        let headers = peer_headers("node-1", Some(secret), path, &body);
        match call(path, headers, body).await {
            Ok(r) if r.status() == 200 => {
                let bytes = r.bytes().await.unwrap();
                let answer: Result<Result<Option<Value>, RemoteError>, _> = decode(&bytes);
                match answer {
                    Ok(Ok(None)) if accepted => {}
                    Ok(Err(e)) if !accepted && (400..500).contains(&e.status) => {}
                    other => failures.push(format!("{what} answered {other:?}")),
                }
            }
            Ok(r) => failures.push(format!("{what}: {}", r.status())),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    // A trusted peer misusing backup calls: refused, and nothing is paused or exported.
    let misuse = [
        (
            "a chunk of a backup never taken",
            RpcKind::BackupChunk.path(),
            encode(&BackupChunkRpc {
                backup: "no-such-backup".into(),
                group: shard_group.to_string(),
                seq: 0,
            }),
        ),
        (
            "a chunk far ahead",
            RpcKind::BackupChunk.path(),
            encode(&BackupChunkRpc {
                backup: "no-such-backup".into(),
                group: "nope/0".into(),
                seq: u64::MAX,
            }),
        ),
        (
            "a pause without a backup id",
            RpcKind::BackupHold.path(),
            encode(&BackupHoldRpc {
                backup: String::new(),
                pause: true,
            }),
        ),
        (
            "a pause with an oversized id",
            RpcKind::BackupHold.path(),
            encode(&BackupHoldRpc {
                backup: "x".repeat(10_000),
                pause: true,
            }),
        ),
    ];
    for (what, path, body) in misuse {
        total += 1;
        let headers = peer_headers("node-1", Some(secret), path, &body);
        match call(path, headers, body).await {
            Ok(r) if r.status() == 200 => {
                let bytes = r.bytes().await.unwrap();
                let answer: Result<Result<Value, RemoteError>, _> = decode(&bytes);
                match answer {
                    Ok(Err(e)) if (400..500).contains(&e.status) => {}
                    other => failures.push(format!("{what} answered {other:?}")),
                }
            }
            Ok(r) => failures.push(format!("{what}: {}", r.status())),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    (total, failures)
}

async fn checksums(client: &GrapeClient) -> Vec<(String, u32, u64, String)> {
    let mut sums: Vec<_> = client
        .checksum()
        .await
        .unwrap()
        .shards
        .into_iter()
        .map(|s| (s.collection, s.shard, s.documents, s.checksum))
        .collect();
    sums.sort();
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_node_answers_every_hostile_request_with_a_4xx_and_changes_nothing() {
    let (_keys_dir, keys) = temp_file("keys.yaml", &keys());
    let (secret_dir, secret_file) = temp_file("cluster.secret", "a-secret-for-the-hostile-suite\n");
    let node = GrapeNode::start(
        options(&keys).setting("CLUSTER__SECRET_FILE", &secret_file.to_string_lossy()),
    )
    .await;
    let admin = node.client_with_key(ADMIN);
    for i in 0..50 {
        admin
            .default_collection()
            .upsert(&load::doc(&format!("d{i}"), i))
            .await
            .unwrap();
    }
    let before = checksums(&admin).await;

    let (api_total, mut failures) = run(&node.url, api_probes()).await;
    let address = node.url.trim_start_matches("http://").to_string();
    let (raw_total, raw_failures) = tokio::task::spawn_blocking(move || raw_probes(&address))
        .await
        .unwrap();
    failures.extend(raw_failures);
    let status = admin.cluster_status().await.unwrap();
    let raft = status.nodes[0].raft_address.clone();
    let group = status
        .groups
        .iter()
        .find(|g| g.name == "default/0")
        .unwrap()
        .group
        .clone();
    let secret = std::fs::read_to_string(secret_dir.path().join("cluster.secret")).unwrap();
    let (raft_total, raft_failures) = raft_probes(&raft, secret.trim(), &group).await;
    failures.extend(raft_failures);

    assert!(
        api_total + raw_total + raft_total >= 300,
        "{api_total} + {raw_total} + {raft_total} probes"
    );
    assert!(
        failures.is_empty(),
        "{} of {} probes were answered wrongly:\n{}",
        failures.len(),
        api_total + raw_total + raft_total,
        failures.join("\n")
    );
    assert!(node.is_running(), "the node crashed");
    assert!(admin.ready().await.unwrap());
    assert_eq!(checksums(&admin).await, before, "stored data changed");
    assert!(
        admin.default_collection().get("ghost").await.is_err()
            && admin.default_collection().get("smuggled").await.is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_answers_every_hostile_request_with_a_4xx_and_changes_nothing() {
    let (_keys_dir, keys) = temp_file("keys.yaml", &keys());
    let cluster = Cluster::start(3, options(&keys)).await;
    let secret = cluster.secret().unwrap();
    let admin = cluster.node(2).client_with_key(ADMIN);
    for i in 0..50 {
        admin
            .default_collection()
            .upsert(&load::doc(&format!("d{i}"), i))
            .await
            .unwrap();
    }
    let status = admin.cluster_status().await.unwrap();
    let group = status
        .groups
        .iter()
        .find(|g| g.name == "default/0")
        .unwrap()
        .group
        .clone();
    let converged = || async {
        let mut all = Vec::new();
        for node in &cluster.nodes {
            all.push(checksums(&node.client_with_key(ADMIN)).await);
        }
        all
    };
    let before = converged().await;

    // Node 2 forwards writes it does not lead; node 3 is probed on its node-to-node port.
    let (api_total, mut failures) = run(&cluster.node(2).url, api_probes()).await;
    let (raft_total, raft_failures) = raft_probes(&cluster.raft_address(3), &secret, &group).await;
    failures.extend(raft_failures);
    assert!(api_total + raft_total >= 300);
    assert!(
        failures.is_empty(),
        "{} of {} probes were answered wrongly:\n{}",
        failures.len(),
        api_total + raft_total,
        failures.join("\n")
    );
    for node in &cluster.nodes {
        assert!(node.is_running(), "a node crashed");
    }
    let left: Vec<_> =
        std::fs::read_dir(cluster.node(3).data_dir.path().join("snapshots/incoming"))
            .unwrap()
            .collect();
    assert!(left.is_empty(), "refused snapshot data was kept: {left:?}");
    // Nothing changed on any replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = converged().await;
        if after == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stored data changed: {before:?} -> {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_listener_holds_at_most_max_connections_open() {
    let node = GrapeNode::start(
        NodeOptions::dimension(DIMENSION).setting("PERFORMANCE__MAX_CONNECTIONS", "8"),
    )
    .await;
    let address = node.url.trim_start_matches("http://").to_string();
    let (held, refused) = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..12 {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                // Closed by the node at once: over the limit.
                Ok(0) => refused += 1,
                // Still open, waiting for a request.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    held.push(stream)
                }
                other => panic!("unexpected: {other:?}"),
            }
        }
        (held, refused)
    })
    .await
    .unwrap();
    assert!(
        (1..=8).contains(&held.len()) && refused >= 4,
        "{} held open, {refused} refused",
        held.len()
    );
    // Closing them frees their places.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.client().health().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the node never took connections again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
