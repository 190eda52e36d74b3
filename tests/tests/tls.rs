//! With `security.enable_tls` the API speaks HTTPS only, with the configured certificate.

use grape_e2e::{GrapeNode, NodeOptions, temp_file};

#[tokio::test]
async fn the_api_serves_https_with_the_configured_certificate() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let (_cert_dir, cert_path) = temp_file("server.crt", &cert.cert.pem());
    let (_key_dir, key_path) = temp_file("server.key", &cert.signing_key.serialize_pem());
    let node = GrapeNode::start_tls(
        NodeOptions::dimension(2)
            .setting("SECURITY__ENABLE_TLS", "true")
            .setting("SECURITY__CERT_FILE", cert_path.to_str().unwrap())
            .setting("SECURITY__KEY_FILE", key_path.to_str().unwrap()),
        &cert.cert.pem(),
    )
    .await;
    assert!(node.url.starts_with("https://"), "{}", node.url);

    let trusted = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let health: serde_json::Value = trusted
        .get(format!("{}/health", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");

    // Plain HTTP on the same port is refused, and an untrusting client fails the handshake.
    let plain = node.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/health")).await.is_err());
    assert!(reqwest::get(format!("{}/health", node.url)).await.is_err());
}
