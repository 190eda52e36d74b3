//! The certificates the operator issues (`certificates: operator`): the node certificate
//! chains to the cluster's CA for servers and clients, names every pod and the Service (and
//! nothing else), is renewed 30 days before it expires or when the CA changes, and a real
//! `grape` node serves HTTPS with it to a client that trusts only the CA.

use grape_e2e::{GrapeNode, NodeOptions, temp_file};
use grape_operator::certs::{self, CA_CERT, NOT_AFTER_ANNOTATION};
use grape_operator::crd::GrapeCluster;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use serde_json::json;

fn cluster(security: serde_json::Value) -> GrapeCluster {
    serde_json::from_value(json!({
        "apiVersion": "grape.io/v1alpha1", "kind": "GrapeCluster",
        "metadata": {"name": "g", "namespace": "default", "uid": "uid-1"},
        "spec": {"database": {"vectorDimension": 8}, "security": security},
    }))
    .unwrap()
}

fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[test]
fn the_node_certificate_chains_to_the_ca_for_servers_and_clients_and_names_only_the_cluster() {
    let cluster = cluster(json!({}));
    assert_eq!(
        cluster.spec.security.certificates(),
        "operator",
        "the default"
    );
    let now = Timestamp::now();
    let ca = certs::new_ca(&cluster, now).unwrap();
    assert_eq!(ca.metadata.name.as_deref(), Some("g-ca"));
    assert_eq!(
        ca.metadata.owner_references.as_ref().unwrap()[0].uid,
        "uid-1"
    );
    let tls = certs::node_certificate(&cluster, &ca, now).unwrap();
    assert_eq!(tls.metadata.name.as_deref(), Some("g-tls"));
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        certs::text(&tls, "ca.crt"),
        certs::text(&ca, CA_CERT),
        "clients find the CA beside the certificate"
    );

    let ca_der = der(&certs::text(&ca, CA_CERT).unwrap());
    let anchors = [webpki::anchor_from_trusted_cert(&ca_der).unwrap()];
    let leaf_der = der(&certs::text(&tls, "tls.crt").unwrap());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    let algorithms = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            algorithms,
            &anchors,
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .expect("the node certificate chains to the CA");
    }
    for name in [
        "g-1.g-headless.default.svc",
        "g-0.g-headless.default.svc.cluster.local",
        "g.default.svc",
        "g.default.svc.cluster.local",
        "g",
        "localhost",
        "127.0.0.1",
    ] {
        let name = ServerName::try_from(name).unwrap();
        leaf.verify_is_valid_for_subject_name(&name)
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
    for name in [
        "g-1.other-headless.default.svc",
        "g.other.svc",
        "evil.example",
    ] {
        let name = ServerName::try_from(name).unwrap();
        assert!(
            leaf.verify_is_valid_for_subject_name(&name).is_err(),
            "{name:?}"
        );
    }
    // Another cluster's CA does not vouch for it.
    let other = certs::new_ca(&cluster, now).unwrap();
    let other_der = der(&certs::text(&other, CA_CERT).unwrap());
    let others = [webpki::anchor_from_trusted_cert(&other_der).unwrap()];
    assert!(
        leaf.verify_for_usage(
            algorithms,
            &others,
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None
        )
        .is_err()
    );
}

#[test]
fn the_node_certificate_is_renewed_thirty_days_before_it_expires_or_when_the_ca_changes() {
    let cluster = cluster(json!({}));
    let now = Timestamp::now();
    let ca = certs::new_ca(&cluster, now).unwrap();
    let tls = certs::node_certificate(&cluster, &ca, now).unwrap();
    let expires: Timestamp = tls.metadata.annotations.as_ref().unwrap()[NOT_AFTER_ANNOTATION]
        .parse()
        .unwrap();
    assert_eq!(expires, now + days(365));
    assert!(!certs::needs_renewal(&tls, &ca, now));
    assert!(!certs::needs_renewal(&tls, &ca, now + days(334)));
    assert!(certs::needs_renewal(&tls, &ca, now + days(336)));
    assert!(certs::needs_renewal(&tls, &ca, now + days(400)));
    let other = certs::new_ca(&cluster, now).unwrap();
    assert!(
        certs::needs_renewal(&tls, &other, now),
        "signed by another CA"
    );
    let mut unknown = tls.clone();
    unknown.metadata.annotations = None;
    assert!(certs::needs_renewal(&unknown, &ca, now), "expiry unknown");
}

#[test]
fn cert_manager_is_asked_for_the_same_names_and_usages() {
    let cluster = cluster(json!({
        "certificates": "cert-manager",
        "certManagerIssuer": {"name": "corp-ca", "kind": "ClusterIssuer"},
    }));
    let certificate = certs::cert_manager_certificate(&cluster).unwrap();
    assert_eq!(certificate["kind"], "Certificate");
    assert_eq!(certificate["spec"]["secretName"], "g-tls");
    assert_eq!(
        certificate["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    let usages = certificate["spec"]["usages"].as_array().unwrap();
    assert!(usages.contains(&json!("server auth")) && usages.contains(&json!("client auth")));
    let names = certificate["spec"]["dnsNames"].as_array().unwrap();
    assert!(
        names.contains(&json!("*.g-headless.default.svc")),
        "{names:?}"
    );
    assert_eq!(
        certificate["metadata"]["ownerReferences"][0]["uid"],
        "uid-1"
    );
    // Without cert-manager there is nothing to ask.
    assert!(certs::cert_manager_certificate(&self::cluster(json!({}))).is_none());
}

#[tokio::test]
async fn a_node_serves_https_with_the_issued_certificate_to_a_client_trusting_only_the_ca() {
    let cluster = cluster(json!({}));
    let now = Timestamp::now();
    let ca = certs::new_ca(&cluster, now).unwrap();
    let tls = certs::node_certificate(&cluster, &ca, now).unwrap();
    let ca_pem = certs::text(&ca, CA_CERT).unwrap();
    let (_cert_dir, cert) = temp_file("tls.crt", &certs::text(&tls, "tls.crt").unwrap());
    let (_key_dir, key) = temp_file("tls.key", &certs::text(&tls, "tls.key").unwrap());
    let node = GrapeNode::start_tls(
        NodeOptions::dimension(2)
            .setting("SECURITY__ENABLE_TLS", "true")
            .setting("SECURITY__CERT_FILE", cert.to_str().unwrap())
            .setting("SECURITY__KEY_FILE", key.to_str().unwrap()),
        &ca_pem,
    )
    .await;
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let health = trusting
        .get(format!("{}/health", node.url))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    assert!(reqwest::get(format!("{}/health", node.url)).await.is_err());
}
