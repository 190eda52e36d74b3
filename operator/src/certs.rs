//! The nodes' TLS certificates when the operator issues them (`certificates: operator`): a
//! CA per cluster (Secret `<cluster>-ca`, created once) signs the nodes' certificate (Secret
//! `<cluster>-tls`, one for every pod: its names cover each pod's stable DNS name and the
//! client Service). The node certificate is valid a year and renewed 30 days before it
//! expires, or when the CA changed; a renewal changes the Secret, which rolls the pods (the
//! Secret's content is part of their revision). With `certificates: cert-manager`, a
//! cert-manager `Certificate` asks for the same names instead.
//!
//! Pure: the controller reads and writes the Secrets.

use crate::crd::GrapeCluster;
use crate::resources::{Names, meta};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Where the generated node certificate says when it expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "grape.io/not-after";
/// The CA's certificate and key in `<cluster>-ca`.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

const CA_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 3650);
const NODE_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 365);
/// A node certificate with less than this left is renewed.
pub const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(24 * 30);
/// Clocks differ: certificates start an hour in the past.
const BACKDATE: SignedDuration = SignedDuration::from_hours(1);

/// The names every node's certificate covers: each pod's stable name under the headless
/// Service (`<pod>.<cluster>-headless.<ns>.svc`, the address peers and the operator use), the
/// client Service, and the loopback address for a port-forward.
pub fn dns_names(names: &Names) -> Vec<String> {
    let (headless, ns, client) = (names.headless(), &names.namespace, names.client_service());
    vec![
        format!("*.{headless}.{ns}.svc"),
        format!("*.{headless}.{ns}.svc.cluster.local"),
        format!("{client}.{ns}.svc"),
        format!("{client}.{ns}.svc.cluster.local"),
        format!("{client}.{ns}"),
        client,
        "localhost".into(),
    ]
}

fn time(at: Timestamp) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::from_unix_timestamp(at.as_second()).map_err(|e| e.to_string())
}

/// The CA's parameters: its name is fixed by the cluster, so that a node certificate signed
/// later (by a new process, from the stored key) names the same issuer.
fn ca_params(names: &Names, now: Timestamp) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("grape {}/{} CA", names.namespace, names.cluster),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time(now - BACKDATE)?;
    params.not_after = time(now + CA_VALIDITY)?;
    Ok(params)
}

fn secret_with(
    cluster: &GrapeCluster,
    name: String,
    type_: &str,
    data: BTreeMap<String, String>,
) -> Secret {
    let names = Names::of(cluster);
    Secret {
        metadata: meta(cluster, &names, name),
        type_: Some(type_.into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A new CA for `cluster`: Secret `<cluster>-ca` with `ca.crt` and `ca.key`.
pub fn new_ca(cluster: &GrapeCluster, now: Timestamp) -> Result<Secret, String> {
    let names = Names::of(cluster);
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = ca_params(&names, now)?
        .self_signed(&key)
        .map_err(|e| e.to_string())?;
    Ok(secret_with(
        cluster,
        names.ca_secret(),
        "Opaque",
        BTreeMap::from([
            (CA_CERT.to_string(), cert.pem()),
            (CA_KEY.to_string(), key.serialize_pem()),
        ]),
    ))
}

/// A key of a Secret as text.
pub fn text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The nodes' certificate, signed by the CA in `ca` (from [`new_ca`]): Secret `<cluster>-tls`
/// of type `kubernetes.io/tls` with `tls.crt`, `tls.key` and `ca.crt`, valid a year, for
/// servers and clients (the nodes verify each other).
pub fn node_certificate(
    cluster: &GrapeCluster,
    ca: &Secret,
    now: Timestamp,
) -> Result<Secret, String> {
    let names = Names::of(cluster);
    let ca_cert = text(ca, CA_CERT).ok_or("the CA Secret has no ca.crt")?;
    let ca_key = text(ca, CA_KEY).ok_or("the CA Secret has no ca.key")?;
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|e| format!("the CA key: {e}"))?;
    let issuer = Issuer::new(ca_params(&names, now)?, ca_key);
    let mut sans = dns_names(&names);
    sans.push("127.0.0.1".into());
    let mut params = CertificateParams::new(sans).map_err(|e| e.to_string())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}", names.cluster, names.namespace),
    );
    // An ECDSA key signs; it does not encipher keys (RFC 5480).
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let not_after = now + NODE_VALIDITY;
    params.not_before = time(now - BACKDATE)?;
    params.not_after = time(not_after)?;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let mut secret = secret_with(
        cluster,
        names.tls_secret(),
        "kubernetes.io/tls",
        BTreeMap::from([
            ("tls.crt".to_string(), cert.pem()),
            ("tls.key".to_string(), key.serialize_pem()),
            ("ca.crt".to_string(), ca_cert),
        ]),
    );
    secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(NOT_AFTER_ANNOTATION.into(), not_after.to_string());
    Ok(secret)
}

/// Whether the node certificate in `tls` must be issued again: missing, expiring within
/// [`RENEW_BEFORE`], of unknown expiry, or signed by another CA than `ca`'s.
pub fn needs_renewal(tls: &Secret, ca: &Secret, now: Timestamp) -> bool {
    let expires = tls
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NOT_AFTER_ANNOTATION))
        .and_then(|t| t.parse::<Timestamp>().ok());
    let fresh = expires.is_some_and(|at| at.duration_since(now) > RENEW_BEFORE);
    let same_ca = text(tls, "ca.crt").is_some() && text(tls, "ca.crt") == text(ca, CA_CERT);
    let complete = text(tls, "tls.crt").is_some() && text(tls, "tls.key").is_some();
    !(fresh && same_ca && complete)
}

/// The cert-manager `Certificate` for `<cluster>-tls` (`certificates: cert-manager`), for a
/// server-side apply.
pub fn cert_manager_certificate(cluster: &GrapeCluster) -> Option<Value> {
    let names = Names::of(cluster);
    let issuer = cluster.spec.security.cert_manager_issuer.as_ref()?;
    let metadata = meta(cluster, &names, names.tls_secret());
    Some(json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": metadata,
        "spec": {
            "secretName": names.tls_secret(),
            "commonName": format!("{}.{}", names.cluster, names.namespace),
            "dnsNames": dns_names(&names),
            "ipAddresses": ["127.0.0.1"],
            "usages": ["server auth", "client auth", "digital signature"],
            "duration": "8760h",
            "renewBefore": "720h",
            "privateKey": {"rotationPolicy": "Always"},
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        },
    }))
}
