//! With `cluster.enable_tls`, node-to-node traffic is TLS with peer verification: the cluster
//! forms and replicates, a peer without a certificate from the cluster's CA is refused, and a
//! certificate from that CA speaks only for a node whose host it names.

use grape_e2e::load::{self, DIMENSION, doc};
use grape_e2e::{Cluster, NodeOptions, temp_file};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_talk_over_mutually_verified_tls() {
    let network = Cluster::new_network();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let node_key = KeyPair::generate().unwrap();
    let sans: Vec<String> = (1..=3).map(|i| format!("{network}.{i}")).collect();
    let node_cert = CertificateParams::new(sans)
        .unwrap()
        .signed_by(&node_key, &ca)
        .unwrap();
    let (_a, ca_path) = temp_file("ca.crt", &ca_cert.pem());
    let (_b, cert_path) = temp_file("node.crt", &node_cert.pem());
    let (_c, key_path) = temp_file("node.key", &node_key.serialize_pem());

    // Verified TLS alone authenticates the nodes: no cluster secret.
    let mut options = NodeOptions::dimension(DIMENSION);
    options.no_cluster_secret = true;
    let options = options
        .setting("CLUSTER__ENABLE_TLS", "true")
        .setting("CLUSTER__TLS_CONFIG__VERIFY_PEER", "true")
        .setting("CLUSTER__TLS_CONFIG__CA_FILE", ca_path.to_str().unwrap())
        .setting(
            "CLUSTER__TLS_CONFIG__CERT_FILE",
            cert_path.to_str().unwrap(),
        )
        .setting("CLUSTER__TLS_CONFIG__KEY_FILE", key_path.to_str().unwrap());
    let cluster = Cluster::start_on(&network, 3, options).await;
    let batch: Vec<_> = (0..20).map(|i| doc(&format!("t{i}"), i)).collect();
    cluster
        .node(2)
        .client()
        .default_collection()
        .upsert_batch(&batch)
        .await
        .unwrap();
    let sums = load::converged(&cluster, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(sums.iter().map(|s| s.documents).sum::<u64>(), 20);

    // The node-to-node port: its address from the cluster status.
    let status = load::cluster_status(&cluster).await.unwrap();
    let raft = status.nodes[0].raft_address.clone();
    // Plain HTTP is not spoken there.
    let plain = reqwest::Client::new()
        .post(format!("http://{raft}/internal/ping"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // TLS without a client certificate is refused by peer verification.
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .post(format!("https://{raft}/internal/ping"))
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate got through: {anonymous:?}"
    );

    // A certificate from the cluster's CA passes the handshake, but it must name the host of
    // the node the caller claims to be.
    let call = |cert_pem: String, key_pem: String, claimed: &'static str| {
        let ca_pem = ca_cert.pem();
        let raft = raft.clone();
        async move {
            let identity = reqwest::Identity::from_pem((cert_pem + &key_pem).as_bytes()).unwrap();
            reqwest::Client::builder()
                .tls_certs_only(vec![
                    reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap(),
                ])
                .identity(identity)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap()
                .post(format!("https://{raft}/internal/ping"))
                .header("x-grape-node", claimed)
                .header("content-type", "application/msgpack")
                .body(vec![0xc0])
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    let stranger_key = KeyPair::generate().unwrap();
    let stranger = CertificateParams::new(vec![format!("{network}.9")])
        .unwrap()
        .signed_by(&stranger_key, &ca)
        .unwrap();
    assert_eq!(
        call(stranger.pem(), stranger_key.serialize_pem(), "node-2")
            .await
            .unwrap(),
        401,
        "a certificate that does not name node-2's host cannot speak as node-2"
    );
    assert_eq!(
        call(node_cert.pem(), node_key.serialize_pem(), "node-1")
            .await
            .unwrap(),
        200,
        "the nodes' own certificate names node-1's host"
    );
}
