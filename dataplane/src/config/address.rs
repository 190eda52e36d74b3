//! Addresses: `HOST:PORT` parsing, loopback detection, and what a node advertises for a
//! wildcard bind.

use std::net::SocketAddr;

/// The address others should use for a bound address: wildcard hosts become this machine's
/// host name.
pub fn advertised(configured: Option<&str>, bound: SocketAddr) -> String {
    if let Some(address) = configured {
        return address.to_string();
    }
    if bound.ip().is_unspecified() {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        return join_host_port(&host, bound.port());
    }
    bound.to_string()
}

/// Splits `HOST:PORT` (`[v6]:PORT` too).
pub fn parse_host_port(address: &str) -> Option<(String, u16)> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Some((socket.ip().to_string(), socket.port()));
    }
    let (host, port) = address.rsplit_once(':')?;
    if host.is_empty() || host.contains(':') {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

pub(super) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub(super) fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}
