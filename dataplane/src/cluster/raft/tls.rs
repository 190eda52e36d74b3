//! TLS for node-to-node traffic (`cluster.enable_tls`): the server's certificate and, with
//! `cluster.tls_config.verify_peer`, client-certificate checks; the peer client's identity and
//! trusted CA.

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use std::net::SocketAddr;
use std::sync::Arc;

fn tls_files(config: &Config) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let tls = &config.cluster.tls_config;
    let read = |key: &str, path: &Option<std::path::PathBuf>| -> Result<Vec<u8>> {
        let path = path.as_ref().ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidConfig,
                format!("cluster.enable_tls needs cluster.tls_config.{key}"),
            )
        })?;
        std::fs::read(path).map_err(|e| {
            Error::invalid(
                ErrorCode::InvalidConfig,
                format!("cluster.tls_config.{key} {}: {e}", path.display()),
            )
        })
    };
    Ok((
        read("cert_file", &tls.cert_file)?,
        read("key_file", &tls.key_file)?,
        read("ca_file", &tls.ca_file)?,
    ))
}

pub fn server_tls(config: &Config) -> Result<axum_server::tls_rustls::RustlsConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (cert, key, ca) = tls_files(config)?;
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::invalid(ErrorCode::InvalidConfig, format!("cluster TLS {what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad("key", &e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = if config.cluster.tls_config.verify_peer {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&ca) {
            roots
                .add(ca.map_err(|e| bad("CA", &e))?)
                .map_err(|e| bad("CA", &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| bad("CA", &e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate", &e))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(server),
    ))
}

/// The client for calls to peers: HTTP/2 over one connection per peer, from this node's Raft
/// address (so that a firewall or a test can tell nodes apart), TLS when the cluster uses it.
pub fn peer_http_client(config: &Config, raft_bound: SocketAddr) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_millis(500))
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .http2_keep_alive_interval(std::time::Duration::from_secs(1))
        .http2_keep_alive_timeout(std::time::Duration::from_secs(3))
        .http2_keep_alive_while_idle(true);
    if !raft_bound.ip().is_unspecified() {
        builder = builder.local_address(raft_bound.ip());
    }
    if config.cluster.enable_tls {
        let (cert, key, ca) = tls_files(config)?;
        let bad = |e: reqwest::Error| {
            Error::invalid(ErrorCode::InvalidConfig, format!("cluster TLS: {e}"))
        };
        let mut identity = cert;
        identity.extend_from_slice(&key);
        builder = builder
            .tls_certs_only(vec![reqwest::Certificate::from_pem(&ca).map_err(bad)?])
            .identity(reqwest::Identity::from_pem(&identity).map_err(bad)?);
    } else {
        builder = builder.http2_prior_knowledge();
    }
    builder
        .build()
        .map_err(|e| Error::Internal(format!("cannot build the peer client: {e}")))
}
