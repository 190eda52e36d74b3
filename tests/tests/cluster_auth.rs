//! Node-to-node calls need proof: a stranger who reaches a node's Raft port, with no proof or
//! with the wrong cluster secret, is refused on every internal route and changes nothing; so
//! is a proven call meant for another incarnation of the node; a clustered node with no way to
//! authenticate its peers refuses to start.

use grape_client::DocumentInput;
use grape_dataplane::cluster::raft::ids::NodeAddr;
use grape_dataplane::cluster::raft::meta_commands::MetaCommand;
use grape_dataplane::cluster::raft::rpc::{AdminRpc, PingRpc, ProposeRpc, RpcKind};
use grape_dataplane::cluster::raft::types::{Request, encode};
use grape_dataplane::collection::validate_document;
use grape_dataplane::shard::ShardCommand;
use grape_e2e::load::{self, DIMENSION};
use grape_e2e::{Cluster, GrapeNode, NodeOptions, peer_headers, vector};
use std::time::Duration;

fn signed(node: &str, secret: Option<&str>, path: &str, body: &[u8]) -> Vec<(String, String)> {
    peer_headers(node, secret, path, body)
}

async fn call(raft: &str, path: &str, headers: &[(String, String)], body: Vec<u8>) -> u16 {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut request = client
        .post(format!("http://{raft}{path}"))
        .header("content-type", "application/msgpack");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.body(body).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_are_refused_on_every_internal_route_and_change_nothing() {
    let cluster = Cluster::start(3, NodeOptions::dimension(DIMENSION)).await;
    let secret = cluster
        .secret()
        .expect("the harness gives clusters a secret");
    let client = cluster.node(1).client();
    client
        .default_collection()
        .upsert(&load::doc("before", 1))
        .await
        .unwrap();
    let before = load::converged(&cluster, Duration::from_secs(30))
        .await
        .unwrap();
    let status = client.cluster_status().await.unwrap();
    let raft = status.nodes[1].raft_address.clone();
    let shard = status
        .groups
        .iter()
        .find(|g| g.name == "default/0")
        .unwrap()
        .group
        .clone();

    // A well-formed write and a well-formed membership change, as an attacker would send them.
    let collection_config = grape_client::CollectionConfig::new("default", DIMENSION);
    let document = validate_document(
        &collection_config,
        DocumentInput {
            id: Some("intruder".into()),
            vector: vector(666, DIMENSION),
            metadata: None,
        },
        None,
    )
    .unwrap();
    let propose = encode(&ProposeRpc {
        group: shard,
        request: Request::Shard(ShardCommand::Upsert {
            request: None,
            documents: vec![document],
        }),
    });
    let add_node = encode(&AdminRpc::AddNode {
        id: "intruder".into(),
        address: "127.0.0.1:1".into(),
    });
    let register = encode(&ProposeRpc {
        group: "meta".into(),
        request: Request::Meta(MetaCommand::RegisterNode {
            id: "intruder".into(),
            addr: NodeAddr::default(),
            incarnation: Some(1),
        }),
    });
    let wrong_secret = "an-entirely-different-secret-0123456789";
    for kind in RpcKind::ALL {
        let path = kind.path();
        let body = match kind {
            RpcKind::Propose => propose.clone(),
            RpcKind::Admin => add_node.clone(),
            _ => encode(&()),
        };
        let anonymous = call(&raft, path, &[], body.clone()).await;
        assert_eq!(anonymous, 401, "{path} without any proof");
        let only_a_name = vec![("x-grape-node".to_string(), "node-1".to_string())];
        assert_eq!(
            call(&raft, path, &only_a_name, body.clone()).await,
            401,
            "{path} with a node name and no proof"
        );
        let wrong = signed("node-1", Some(wrong_secret), path, &body);
        assert_eq!(
            call(&raft, path, &wrong, body.clone()).await,
            401,
            "{path} with the wrong secret"
        );
    }
    // The same proof does not carry over to another body (a replayed header on a new write).
    let ping = encode(&PingRpc);
    let good = signed("node-1", Some(&secret), RpcKind::Ping.path(), &ping);
    assert_eq!(
        call(&raft, RpcKind::Ping.path(), &good, ping).await,
        200,
        "the cluster's own secret passes"
    );
    let path = RpcKind::Propose.path();
    let other = signed("node-1", Some(&secret), path, &register);
    assert_eq!(call(&raft, path, &other, propose.clone()).await, 401);

    // A call meant for another incarnation of the node (its data directory was replaced) is
    // refused even with a valid proof; a malformed one too; a stranger still gets 401 first.
    let proven = signed("node-1", Some(&secret), path, &propose);
    for (value, expected) in [("12345", 421), ("not-a-number", 400), ("", 400)] {
        let mut headers = proven.clone();
        headers.push(("x-grape-incarnation".to_string(), value.to_string()));
        assert_eq!(
            call(&raft, path, &headers, propose.clone()).await,
            expected,
            "a proven write naming incarnation {value:?}"
        );
        let stranger = vec![("x-grape-incarnation".to_string(), value.to_string())];
        assert_eq!(call(&raft, path, &stranger, propose.clone()).await, 401);
    }
    // Raft's own calls and pings too (refused before the body is read); a status answers,
    // marked with the node's real incarnation.
    let ping = encode(&PingRpc);
    for kind in [
        RpcKind::Vote,
        RpcKind::Append,
        RpcKind::PreVote,
        RpcKind::Ping,
    ] {
        let mut headers = signed("node-1", Some(&secret), kind.path(), &ping);
        headers.push(("x-grape-incarnation".to_string(), "12345".to_string()));
        assert_eq!(
            call(&raft, kind.path(), &headers, ping.clone()).await,
            421,
            "{} naming another incarnation",
            kind.path()
        );
    }
    let status_path = RpcKind::Status.path();
    let mut headers = signed("node-1", Some(&secret), status_path, &ping);
    headers.push(("x-grape-incarnation".to_string(), "12345".to_string()));
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut request = http
        .post(format!("http://{raft}{status_path}"))
        .header("content-type", "application/msgpack");
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let answer = request.body(ping.clone()).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let marked = answer
        .headers()
        .get("x-grape-incarnation")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert!(
        marked.is_some_and(|m| m != "12345" && m.parse::<u64>().is_ok()),
        "a status for another incarnation is marked with the real one"
    );

    // Nothing changed: no document, no member.
    let after = load::converged(&cluster, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(after, before);
    let members = client.cluster_status().await.unwrap().nodes;
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.id != "intruder"));
    assert!(
        client
            .default_collection()
            .get("intruder")
            .await
            .is_err_and(|e| e.status().map(|s| s.as_u16()) == Some(404))
    );
}

#[test]
fn a_clustered_node_without_a_secret_or_verified_tls_refuses_to_start() {
    let options = NodeOptions::dimension(DIMENSION).setting("CLUSTER__ENABLED", "true");
    let (code, output) = GrapeNode::run_to_exit(&options, &["--data-dir", "/nonexistent"]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("cluster.secret_file"), "{output}");
    assert!(output.contains("verify_peer"), "{output}");
    // Opting out explicitly starts (it is only warned about): check the configuration alone.
    let insecure = options.setting("CLUSTER__INSECURE", "true");
    let (code, output) = GrapeNode::run_to_exit(&insecure, &["--print-config"]);
    assert_eq!(code, 0, "{output}");
}
