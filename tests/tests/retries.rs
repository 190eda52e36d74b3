//! A write whose answer is lost between the node that forwarded it and the leader that
//! applied it is sent again; the second attempt is answered with the first outcome, and the
//! write is applied once.

use grape_dataplane::collection::shard_of;
use grape_e2e::load::{self, DIMENSION};
use grape_e2e::{Cluster, NodeOptions};
use std::process::Command;
use std::time::{Duration, Instant};

/// iptables rules removed when dropped, even when the test fails.
struct Rules(Vec<Vec<String>>);

impl Rules {
    fn add(&mut self, rule: &[&str]) {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        let status = Command::new("iptables")
            .args(["-A", "OUTPUT"])
            .args(&rule)
            .status()
            .expect("iptables runs");
        assert!(status.success(), "iptables -A {rule:?}");
        self.0.push(rule);
    }

    fn clear(&mut self) {
        for rule in self.0.drain(..) {
            let _ = Command::new("iptables")
                .args(["-D", "OUTPUT"])
                .args(&rule)
                .status();
        }
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        self.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_retried_after_its_answer_was_lost_is_applied_once() {
    let cluster = Cluster::start(3, NodeOptions::dimension(DIMENSION)).await;
    let status = load::cluster_status(&cluster).await.unwrap();
    let shards = status
        .groups
        .iter()
        .filter(|g| g.name.starts_with("default/"))
        .count() as u32;
    let id = "retried";
    let group = format!("default/{}", shard_of(id, shards));
    let leader = load::leader_of(&cluster, &group).await.unwrap();
    let forwarder = if leader == 1 { 2 } else { 1 };
    let client = cluster.node(forwarder).client();
    let docs = client.default_collection();
    // Writes through the forwarder open its connection to the leader's node-to-node port.
    for i in 0..20 {
        docs.upsert(&load::doc(&format!("warm-{i}"), i))
            .await
            .unwrap();
    }
    docs.upsert(&load::doc(id, 7)).await.unwrap();

    let leader_ip = format!("{}.{leader}", cluster.network);
    let forwarder_ip = format!("{}.{forwarder}", cluster.network);
    let raft_port = cluster
        .raft_address(leader)
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    let mut rules = Rules(Vec::new());
    // The leader's answers (and acknowledgements) to the forwarder are lost.
    rules.add(&[
        "-s",
        &leader_ip,
        "-d",
        &forwarder_ip,
        "-p",
        "tcp",
        "--sport",
        &raft_port,
        "-j",
        "DROP",
    ]);
    let delete = tokio::spawn({
        let client = client.clone();
        async move { client.default_collection().delete(id).await }
    });
    // The leader applies the delete...
    let leader_client = cluster.node(leader).client();
    let on_leader = leader_client.default_collection();
    let deadline = Instant::now() + Duration::from_secs(8);
    while on_leader.get(id).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the leader never applied the delete"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the forwarder's connection breaks before the answer arrives, so it sends the
    // delete again on a new connection once the network is back.
    rules.add(&[
        "-s",
        &forwarder_ip,
        "-d",
        &leader_ip,
        "-p",
        "tcp",
        "--dport",
        &raft_port,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rules.clear();
    let answer = delete.await.unwrap();
    assert!(
        answer.is_ok(),
        "the retried delete must answer as the first attempt did (deleted), not 404: {answer:?}"
    );
    assert!(docs.get(id).await.is_err());
    load::converged(&cluster, Duration::from_secs(30))
        .await
        .unwrap();
}
