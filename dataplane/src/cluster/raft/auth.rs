//! Who may call a node's node-to-node port. Every call ([`Peers::call`]) carries the caller's
//! node id and, with a cluster secret, a proof; the server checks both in one place before any
//! handler runs:
//!
//! - **Cluster secret** (`cluster.secret_file`): the proof is an HMAC-SHA256, keyed with the
//!   secret, of the caller's id, the path, a timestamp and the SHA-256 of the body. The secret
//!   itself never travels; a proof is valid for [`PROOF_WINDOW`] and only for that request
//!   (a sniffer can replay it within the window: use TLS on a network you do not trust).
//!   The file may hold several secrets, one per line: the first signs, all verify, so a secret
//!   is rotated by adding the new one everywhere, moving it first, then removing the old.
//! - **Mutual TLS** (`cluster.enable_tls` with `cluster.tls_config.verify_peer`): the TLS
//!   handshake already refused a certificate that does not chain to `ca_file`; here the
//!   certificate must also name the host of the node the caller claims to be.
//!
//! A node with neither accepts every call; the configuration refuses that for a clustered
//! node unless `cluster.insecure` says so.
//!
//! [`Peers::call`]: super::peers::Peers::call

use super::ids::NodeId;
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use hmac::{Hmac, Mac};
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Header naming the calling node.
pub const NODE_HEADER: &str = "x-grape-node";
/// Header carrying the proof of the cluster secret: `t=<unix seconds>,s=<hex HMAC>`.
pub const PROOF_HEADER: &str = "x-grape-proof";
/// Header carrying the hex SHA-256 of the body the proof covers, so that the proof is checked
/// before the body is read: a call without it is refused unread.
pub const DIGEST_HEADER: &str = "x-grape-body-sha256";
/// How far a proof's time may be from the receiver's clock.
pub const PROOF_WINDOW: Duration = Duration::from_secs(300);

/// A cluster secret; never printed.
struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How this node proves itself to peers and checks their calls.
#[derive(Debug)]
pub struct PeerAuth {
    /// This node's id, sent with every call.
    node_id: NodeId,
    /// Accepted secrets; the first signs. Empty: no secret in use.
    secrets: Vec<Secret>,
    /// Callers must present a certificate naming the host of the node they claim to be.
    verify_certificates: bool,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl PeerAuth {
    /// From `cluster.secret_file` and `cluster.tls_config.verify_peer`.
    pub fn from_config(config: &Config) -> Result<PeerAuth> {
        let secrets = match &config.cluster.secret_file {
            Some(path) => read_secrets(path)?,
            None => Vec::new(),
        };
        Ok(PeerAuth {
            node_id: config.node.id.clone(),
            secrets,
            verify_certificates: config.cluster.enable_tls && config.cluster.tls_config.verify_peer,
        })
    }

    /// Whether calls are checked at all.
    pub fn is_enforced(&self) -> bool {
        !self.secrets.is_empty() || self.verify_certificates
    }

    /// The headers that let a call to `path` with `body` through a peer's check.
    pub fn headers(&self, path: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        let mut headers = vec![(NODE_HEADER, self.node_id.clone())];
        if let Some(secret) = self.secrets.first() {
            let at = unix_seconds(SystemTime::now());
            let digest = hex(&Sha256::digest(body));
            let signature = sign(secret, &self.node_id, path, at, &digest);
            headers.push((PROOF_HEADER, format!("t={at},s={}", hex(&signature))));
            headers.push((DIGEST_HEADER, digest));
        }
        headers
    }

    /// Checks a call to `path`: the claimed node, its proof of the secret, and its certificate
    /// (`host_of` gives the host a node id is known to listen on).
    pub fn check(
        &self,
        call: &Call<'_>,
        host_of: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<(), Refusal> {
        self.precheck(call, &host_of)?;
        self.check_body(call)
    }

    /// After [`PeerAuth::precheck`] passed and the body arrived: the body must be the one whose
    /// digest the proof covers.
    pub fn check_body(&self, call: &Call<'_>) -> std::result::Result<(), Refusal> {
        if self.secrets.is_empty() {
            return Ok(());
        }
        let digest = hex(&Sha256::digest(call.body));
        if call.digest.is_some_and(|d| d.eq_ignore_ascii_case(&digest)) {
            Ok(())
        } else {
            Err(Refusal("the body is not the one the proof covers".into()))
        }
    }

    /// What is checked before the body is read: the claimed node, its certificate, and the
    /// proof over the declared digest of the body. A stranger is refused before the node
    /// buffers anything.
    pub fn precheck(
        &self,
        call: &Call<'_>,
        host_of: &impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<(), Refusal> {
        if !self.is_enforced() {
            return Ok(());
        }
        let caller = call.node.filter(|n| !n.is_empty()).ok_or_else(|| {
            Refusal(format!(
                "a node-to-node call needs the {NODE_HEADER} header"
            ))
        })?;
        if self.verify_certificates {
            check_certificate(caller, call.certificates, host_of)?;
        }
        if self.secrets.is_empty() {
            return Ok(());
        }
        let digest = call.digest.ok_or_else(|| {
            Refusal(format!(
                "a node-to-node call needs the {DIGEST_HEADER} header (nodes of the previous version do not send it: upgrade them)"
            ))
        })?;
        self.check_proof(caller, call, digest)
    }

    /// Checks the proof against the hex SHA-256 of the body it claims to cover.
    fn check_proof(
        &self,
        caller: &str,
        call: &Call<'_>,
        digest: &str,
    ) -> std::result::Result<(), Refusal> {
        let refused = || Refusal("the cluster secret's proof is missing or wrong".into());
        let (at, signature) = call.proof.and_then(parse_proof).ok_or_else(refused)?;
        fresh(at)?;
        let message = message(caller, call.path, at, &digest.to_ascii_lowercase());
        let valid = self.secrets.iter().any(|secret| {
            let mut mac = mac(secret);
            mac.update(&message);
            // Constant-time comparison.
            mac.verify_slice(&signature).is_ok()
        });
        if valid { Ok(()) } else { Err(refused()) }
    }
}

/// What a node-to-node call presents.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The path called.
    pub path: &'a str,
    /// The claimed caller ([`NODE_HEADER`]).
    pub node: Option<&'a str>,
    /// The proof ([`PROOF_HEADER`]).
    pub proof: Option<&'a str>,
    /// The hex SHA-256 of the body the proof covers ([`DIGEST_HEADER`]), if declared.
    pub digest: Option<&'a str>,
    /// The body as received.
    pub body: &'a [u8],
    /// The client certificate chain of the TLS connection, leaf first (DER).
    pub certificates: &'a [Vec<u8>],
}

fn check_certificate(
    caller: &str,
    certificates: &[Vec<u8>],
    host_of: &impl Fn(&str) -> Option<String>,
) -> std::result::Result<(), Refusal> {
    let leaf = certificates
        .first()
        .ok_or_else(|| Refusal("a node-to-node call needs a client certificate".into()))?;
    let host = host_of(caller)
        .ok_or_else(|| Refusal(format!("'{caller}' is not a node this node knows")))?;
    let name = ServerName::try_from(host.as_str())
        .map_err(|_| Refusal(format!("'{caller}' listens on {host:?}, not a host name")))?;
    let der = CertificateDer::from(leaf.as_slice());
    let certificate = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| Refusal(format!("unreadable client certificate: {e}")))?;
    certificate
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| {
            Refusal(format!(
                "the client certificate does not name {host}, where '{caller}' listens"
            ))
        })
}

/// Reads secrets, one per line (blank lines and `#` comments skipped).
fn read_secrets(path: &std::path::Path) -> Result<Vec<Secret>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid(
            ErrorCode::InvalidConfig,
            format!("cluster.secret_file {}: {e}", path.display()),
        )
    })?;
    let secrets: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Secret(l.as_bytes().to_vec()))
        .collect();
    if secrets.is_empty() {
        return Err(Error::invalid(
            ErrorCode::InvalidConfig,
            format!("cluster.secret_file {} holds no secret", path.display()),
        ));
    }
    if let Some(short) = secrets.iter().find(|s| s.0.len() < MIN_SECRET_BYTES) {
        return Err(Error::invalid(
            ErrorCode::InvalidConfig,
            format!(
                "cluster.secret_file {}: a secret of {} characters is too easy to guess; use at \
                 least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                path.display(),
                short.0.len()
            ),
        ));
    }
    Ok(secrets)
}

/// Shortest secret accepted.
const MIN_SECRET_BYTES: usize = 16;

fn mac(secret: &Secret) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(&secret.0).unwrap_or_else(|_| unreachable!())
}

/// What the proof signs (the body by its hex SHA-256).
fn message(caller: &str, path: &str, at: u64, digest: &str) -> Vec<u8> {
    format!("grape-peer-v1\n{caller}\n{path}\n{at}\n{digest}").into_bytes()
}

fn sign(secret: &Secret, caller: &str, path: &str, at: u64, digest: &str) -> Vec<u8> {
    let mut mac = mac(secret);
    mac.update(&message(caller, path, at, digest));
    mac.finalize().into_bytes().to_vec()
}

/// `t=<seconds>,s=<hex>` into its parts.
/// Refuses a proof made too far from this node's clock.
fn fresh(at: u64) -> std::result::Result<(), Refusal> {
    let now = unix_seconds(SystemTime::now());
    if now.abs_diff(at) > PROOF_WINDOW.as_secs() {
        return Err(Refusal(format!(
            "the proof is {} s away from this node's clock (at most {} s): check the clocks",
            now.abs_diff(at),
            PROOF_WINDOW.as_secs()
        )));
    }
    Ok(())
}

fn parse_proof(proof: &str) -> Option<(u64, Vec<u8>)> {
    let (t, s) = proof.split_once(',')?;
    let at = t.strip_prefix("t=")?.parse().ok()?;
    let hex = s.strip_prefix("s=")?;
    if hex.len() != 64 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((at, bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(node: &str, secrets: &[&str]) -> PeerAuth {
        PeerAuth {
            node_id: node.into(),
            secrets: secrets
                .iter()
                .map(|s| Secret(s.as_bytes().to_vec()))
                .collect(),
            verify_certificates: false,
        }
    }

    fn call<'a>(path: &'a str, headers: &'a [(&'static str, String)], body: &'a [u8]) -> Call<'a> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        Call {
            path,
            node: get(NODE_HEADER),
            proof: get(PROOF_HEADER),
            digest: get(DIGEST_HEADER),
            body,
            certificates: &[],
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn a_call_signed_with_the_secret_passes_and_anything_else_is_refused() {
        let sender = auth("node-1", &[SECRET]);
        let receiver = auth("node-2", &[SECRET]);
        let body = b"payload";
        let headers = sender.headers("/internal/propose", body);
        let none = |_: &str| None;
        assert_eq!(
            receiver.check(&call("/internal/propose", &headers, body), none),
            Ok(())
        );
        // Another body, another path, another claimed node, no proof, another secret.
        assert!(
            receiver
                .check(&call("/internal/propose", &headers, b"other"), none)
                .is_err()
        );
        assert!(
            receiver
                .check(&call("/internal/admin", &headers, body), none)
                .is_err()
        );
        let mut forged = headers.clone();
        forged[0].1 = "node-3".into();
        assert!(
            receiver
                .check(&call("/internal/propose", &forged, body), none)
                .is_err()
        );
        let unsigned = auth("node-1", &[]).headers("/internal/propose", body);
        assert!(
            receiver
                .check(&call("/internal/propose", &unsigned, body), none)
                .is_err()
        );
        let wrong = auth("node-1", &[OTHER]).headers("/internal/propose", body);
        assert!(
            receiver
                .check(&call("/internal/propose", &wrong, body), none)
                .is_err()
        );
    }

    #[test]
    fn a_secret_rotates_without_refusals() {
        // Every node accepts both while the new one is rolled out; the first one signs.
        let old_signer = auth("node-1", &[SECRET, OTHER]);
        let new_signer = auth("node-2", &[OTHER, SECRET]);
        let receiver = auth("node-3", &[OTHER, SECRET]);
        for signer in [old_signer, new_signer] {
            let headers = signer.headers("/raft/append", b"x");
            assert_eq!(
                receiver.check(&call("/raft/append", &headers, b"x"), |_| None),
                Ok(())
            );
        }
    }

    #[test]
    fn a_proof_is_checked_before_the_body_arrives() {
        let sender = auth("node-1", &[SECRET]);
        let receiver = auth("node-2", &[SECRET]);
        let none = |_: &str| None;
        let body = b"a large snapshot";
        let headers = sender.headers("/raft/snapshot", body);
        // Before the body: the proof over the declared digest is verified.
        assert_eq!(
            receiver.precheck(&call("/raft/snapshot", &headers, b""), &none),
            Ok(())
        );
        // A forged signature or a wrong secret is refused before the body is read.
        let mut forged = headers.clone();
        forged[1].1 = format!(
            "{},s={}",
            &forged[1].1[..forged[1].1.find(',').unwrap()],
            "0".repeat(64)
        );
        assert!(
            receiver
                .precheck(&call("/raft/snapshot", &forged, b""), &none)
                .is_err()
        );
        let wrong = auth("node-1", &[OTHER]).headers("/raft/snapshot", body);
        assert!(
            receiver
                .precheck(&call("/raft/snapshot", &wrong, b""), &none)
                .is_err()
        );
        // After the body: it must be the one the digest names.
        assert_eq!(
            receiver.check(&call("/raft/snapshot", &headers, body), none),
            Ok(())
        );
        let refusal = receiver
            .check(&call("/raft/snapshot", &headers, b"another body"), none)
            .unwrap_err();
        assert!(refusal.0.contains("not the one"), "{refusal:?}");
        // A call without the digest (as the previous version sent them) is refused unread.
        let legacy: Vec<_> = headers
            .iter()
            .filter(|(name, _)| *name != DIGEST_HEADER)
            .cloned()
            .collect();
        let refusal = receiver
            .precheck(&call("/raft/snapshot", &legacy, b""), &none)
            .unwrap_err();
        assert!(refusal.0.contains(DIGEST_HEADER), "{refusal:?}");
    }

    #[test]
    fn an_old_proof_is_refused() {
        let secret = Secret(SECRET.as_bytes().to_vec());
        let at = unix_seconds(SystemTime::now()) - PROOF_WINDOW.as_secs() - 5;
        let signature = sign(
            &secret,
            "node-1",
            "/raft/vote",
            at,
            &hex(&Sha256::digest(b"")),
        );
        let headers = vec![
            (NODE_HEADER, "node-1".to_string()),
            (PROOF_HEADER, format!("t={at},s={}", hex(&signature))),
            (DIGEST_HEADER, hex(&Sha256::digest(b""))),
        ];
        let refusal = auth("node-2", &[SECRET])
            .check(&call("/raft/vote", &headers, b""), |_| None)
            .unwrap_err();
        assert!(refusal.0.contains("clock"), "{refusal:?}");
    }

    #[test]
    fn a_malformed_proof_is_refused_not_panicked_on() {
        let receiver = auth("node-2", &[SECRET]);
        for proof in [
            "",
            "t=,s=",
            "t=1,s=zz",
            "s=00,t=1",
            "t=99999999999999999999,s=00",
            "t=1,s=ééééééééééééééééééééééééééééééééé",
        ] {
            let headers = vec![
                (NODE_HEADER, "node-1".to_string()),
                (PROOF_HEADER, proof.to_string()),
            ];
            assert!(
                receiver
                    .check(&call("/raft/vote", &headers, b""), |_| None)
                    .is_err(),
                "{proof:?}"
            );
        }
    }

    #[test]
    fn without_a_secret_or_certificates_nothing_is_checked() {
        let open = auth("node-2", &[]);
        assert!(!open.is_enforced());
        assert_eq!(open.check(&call("/raft/vote", &[], b""), |_| None), Ok(()));
    }
}
