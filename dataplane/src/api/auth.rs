//! API keys, roles and limits: who may call what, from where, how often.
//!
//! Keys come from `security.api_keys_file` in the seed guide's format. A key's `permissions`
//! lists role names (`admin`, `writer`, `reader`, `searcher`) and/or permissions
//! (`data:write`, `cluster:*`, ...). Answers: 401 for a missing, unknown or expired key; 403 for
//! a missing permission or an address outside `ip_whitelist`; 429 with `Retry-After` past a rate
//! limit or a daily quota.

use crate::error::{Error, ErrorCode, Result};
use chrono::{DateTime, Utc};
use figment::Figment;
use figment::providers::{Format, Yaml};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What an endpoint requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Insert, update and delete documents.
    DataWrite,
    /// Read documents by id and list them.
    DataRead,
    /// Create and drop collections.
    DataManage,
    /// Run searches.
    SearchExecute,
    /// Read cluster state and statistics.
    ClusterRead,
    /// Change the cluster (membership, leadership, rebalancing).
    ClusterWrite,
    /// Scrape `/metrics` on the API port.
    MetricsRead,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::DataWrite => "data:write",
            Permission::DataRead => "data:read",
            Permission::DataManage => "data:manage",
            Permission::SearchExecute => "search:execute",
            Permission::ClusterRead => "cluster:read",
            Permission::ClusterWrite => "cluster:write",
            Permission::MetricsRead => "metrics:read",
        }
    }
}

/// The permissions a role name stands for. The seed guide lists `cluster:*`, `data:*` and
/// `metrics:read` for admin; searching is added, since an admin can read every document anyway.
fn role_permissions(role: &str) -> Option<&'static [&'static str]> {
    Some(match role {
        "admin" => &["cluster:*", "data:*", "metrics:read", "search:*"],
        "writer" => &["data:write", "data:read", "search:execute"],
        "reader" => &["data:read", "search:execute"],
        "searcher" => &["search:execute"],
        _ => return None,
    })
}

fn grant_allows(grant: &str, needed: &str) -> bool {
    if grant == "*" || grant == needed {
        return true;
    }
    match grant.strip_suffix(":*") {
        Some(area) => needed
            .split_once(':')
            .is_some_and(|(needed_area, _)| needed_area == area),
        None => false,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    api_keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    key: String,
    name: String,
    permissions: Vec<String>,
    #[serde(default)]
    rate_limits: Option<RateLimits>,
    #[serde(default)]
    ip_whitelist: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    quotas: Option<Quotas>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimits {
    requests_per_second: u32,
    #[serde(default)]
    burst_size: Option<u32>,
}

/// Daily allowances of a key (UTC days).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[serde(default)]
    pub documents_per_day: Option<u64>,
    #[serde(default)]
    pub searches_per_day: Option<u64>,
}

/// Usage counted against a key's quotas, for the current UTC day.
#[derive(Debug, Default)]
struct DailyUsage {
    day: i64,
    documents: u64,
    searches: u64,
}

/// One API key, resolved.
pub struct ApiKey {
    /// The key's `name`, for messages and logs (never the key itself).
    pub name: String,
    /// Expanded permissions (role names resolved).
    grants: Vec<String>,
    /// Requests per second and burst, when limited.
    rate: Option<(NonZeroU32, NonZeroU32)>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    ip_whitelist: Vec<IpNet>,
    expires_at: Option<DateTime<Utc>>,
    quotas: Option<Quotas>,
    /// Shared with this key's entry in a reloaded file, so a reload resets no quota.
    usage: Arc<Mutex<DailyUsage>>,
}

/// The SHA-256 digest of a key: keys are held and looked up only as digests, so the node's
/// memory holds no key and no comparison runs over a key's bytes.
pub type KeyDigest = [u8; 32];

/// The digest under which a presented key is looked up.
pub fn digest(key: &str) -> KeyDigest {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Documents,
    Searches,
}

impl ApiKey {
    pub fn allows(&self, permission: Permission) -> bool {
        self.grants
            .iter()
            .any(|grant| grant_allows(grant, permission.as_str()))
    }

    /// Counts `amount` against today's quota; 429 if it would go past it.
    pub fn charge(&self, usage: Usage, amount: u64) -> Result<()> {
        let Some(quotas) = self.quotas else {
            return Ok(());
        };
        let (limit, what) = match usage {
            Usage::Documents => (quotas.documents_per_day, "documents_per_day"),
            Usage::Searches => (quotas.searches_per_day, "searches_per_day"),
        };
        let Some(limit) = limit else {
            return Ok(());
        };
        let now = Utc::now();
        let today = now.timestamp().div_euclid(86_400);
        let mut used = self.usage.lock();
        if used.day != today {
            *used = DailyUsage {
                day: today,
                ..Default::default()
            };
        }
        let counter = match usage {
            Usage::Documents => &mut used.documents,
            Usage::Searches => &mut used.searches,
        };
        if *counter + amount > limit {
            let midnight = (today + 1) * 86_400;
            return Err(Error::RateLimited {
                code: ErrorCode::QuotaExceeded,
                message: format!(
                    "API key '{}' has used {} of its {what} quota of {limit}; it resets at 00:00 UTC",
                    self.name, *counter
                ),
                retry_after: Duration::from_secs((midnight - now.timestamp()).max(1) as u64),
            });
        }
        *counter += amount;
        Ok(())
    }
}

/// The loaded keys, or none when authentication is off.
#[derive(Debug, Default)]
pub struct KeyStore {
    /// Whether requests need a key at all.
    enabled: bool,
    keys: HashMap<KeyDigest, Arc<ApiKey>>,
}

impl KeyStore {
    /// No authentication: every request is allowed.
    pub fn disabled() -> KeyStore {
        KeyStore::default()
    }

    /// Loads a keys file; errors name the entry and field.
    pub fn load(path: &Path) -> Result<KeyStore> {
        KeyStore::parse(path, &read_key_file(path)?)
    }

    /// Parses a keys file's content (`path` names it in errors).
    pub fn parse(path: &Path, content: &[u8]) -> Result<KeyStore> {
        let bad = |message: String| Error::invalid(ErrorCode::InvalidApiKeys, message);
        let text = std::str::from_utf8(content)
            .map_err(|e| bad(format!("{}: not UTF-8: {e}", path.display())))?;
        let file: KeysFile = Figment::from(Yaml::string(text))
            .extract()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let mut keys = HashMap::new();
        for (i, entry) in file.api_keys.into_iter().enumerate() {
            let at = |field: &str, why: String| bad(format!("api_keys[{i}].{field}: {why}"));
            if entry.key.len() < 8 {
                return Err(at("key", "must be at least 8 characters".into()));
            }
            let mut grants = Vec::new();
            for permission in &entry.permissions {
                match role_permissions(permission) {
                    Some(expanded) => grants.extend(expanded.iter().map(|p| p.to_string())),
                    None if permission == "*" || permission.contains(':') => {
                        grants.push(permission.clone())
                    }
                    None => {
                        return Err(at(
                            "permissions",
                            format!(
                                "{permission:?} is neither a role (admin, writer, reader, searcher) nor a permission like data:read"
                            ),
                        ));
                    }
                }
            }
            let rate = match entry.rate_limits {
                Some(limits) => {
                    let rate = NonZeroU32::new(limits.requests_per_second).ok_or_else(|| {
                        at("rate_limits.requests_per_second", "must be above 0".into())
                    })?;
                    let burst =
                        NonZeroU32::new(limits.burst_size.unwrap_or(limits.requests_per_second))
                            .ok_or_else(|| {
                                at("rate_limits.burst_size", "must be above 0".into())
                            })?;
                    Some((rate, burst))
                }
                None => None,
            };
            let limiter = rate.map(|(rate, burst)| {
                Arc::new(RateLimiter::direct(
                    Quota::per_second(rate).allow_burst(burst),
                ))
            });
            let ip_whitelist = entry
                .ip_whitelist
                .iter()
                .map(|net| {
                    net.parse::<IpNet>()
                        .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            at(
                                "ip_whitelist",
                                format!("{net:?} is not an address or CIDR range"),
                            )
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            let expires_at = entry
                .expires_at
                .as_deref()
                .map(|t| {
                    DateTime::parse_from_rfc3339(t)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|e| {
                            at("expires_at", format!("{t:?} is not an RFC 3339 time: {e}"))
                        })
                })
                .transpose()?;
            let key = ApiKey {
                name: entry.name,
                grants,
                rate,
                limiter,
                ip_whitelist,
                expires_at,
                quotas: entry.quotas,
                usage: Arc::default(),
            };
            if keys.insert(digest(&entry.key), Arc::new(key)).is_some() {
                return Err(at("key", "the same key appears twice".into()));
            }
        }
        Ok(KeyStore {
            enabled: true,
            keys,
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Keys in this store.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Carries over from `earlier` what a reload must not reset: each remaining key's quota
    /// usage, and its rate limiter when its limits did not change.
    pub fn inherit(&mut self, earlier: &KeyStore) {
        for (digest, key) in &mut self.keys {
            let Some(old) = earlier.keys.get(digest) else {
                continue;
            };
            let Some(key) = Arc::get_mut(key) else {
                continue;
            };
            key.usage = Arc::clone(&old.usage);
            if key.rate == old.rate {
                key.limiter = old.limiter.clone();
            }
        }
    }

    /// Decides whether a request may proceed. Returns the caller's key (for quotas), or `None`
    /// when authentication is off.
    pub fn authorize(
        &self,
        presented: Option<&str>,
        peer: Option<IpAddr>,
        permission: Permission,
    ) -> Result<Option<Arc<ApiKey>>> {
        if !self.enabled {
            return Ok(None);
        }
        let presented = presented.ok_or_else(|| {
            Error::Unauthorized("this endpoint needs an API key in the X-API-Key header".into())
        })?;
        let key = self
            .keys
            .get(&digest(presented))
            .ok_or_else(|| Error::Unauthorized("unknown API key".into()))?;
        if let Some(expiry) = key.expires_at
            && expiry <= Utc::now()
        {
            return Err(Error::Unauthorized(format!(
                "API key '{}' expired at {}",
                key.name,
                expiry.to_rfc3339()
            )));
        }
        if !key.ip_whitelist.is_empty() {
            let allowed = peer.is_some_and(|ip| {
                let ip = canonical(ip);
                key.ip_whitelist.iter().any(|net| net.contains(&ip))
            });
            if !allowed {
                return Err(Error::Forbidden(format!(
                    "API key '{}' may not be used from {}",
                    key.name,
                    peer.map(|ip| ip.to_string())
                        .unwrap_or_else(|| "an unknown address".into())
                )));
            }
        }
        if !key.allows(permission) {
            return Err(Error::Forbidden(format!(
                "API key '{}' lacks the permission {}",
                key.name,
                permission.as_str()
            )));
        }
        if let Some(limiter) = &key.limiter
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Error::RateLimited {
                code: ErrorCode::RateLimited,
                message: format!("API key '{}' is over its rate limit", key.name),
                retry_after: wait,
            });
        }
        Ok(Some(Arc::clone(key)))
    }
}

/// The content of `security.api_keys_file`.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::invalid(
            ErrorCode::InvalidApiKeys,
            format!(
                "security.api_keys_file {} cannot be read: {e}",
                path.display()
            ),
        )
    })
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(yaml: &str) -> Result<KeyStore> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, yaml).unwrap();
        KeyStore::load(&path)
    }

    #[test]
    fn roles_grant_the_seed_permissions() {
        let keys = store(
            r#"
api_keys:
  - {key: "admin-key-1", name: admin, permissions: ["admin"]}
  - {key: "writer-key-1", name: writer, permissions: ["writer"]}
  - {key: "reader-key-1", name: reader, permissions: ["reader"]}
  - {key: "search-key-1", name: searcher, permissions: ["searcher"]}
  - {key: "custom-key-1", name: custom, permissions: ["data:read", "metrics:read"]}
"#,
        )
        .unwrap();
        use Permission::*;
        let table = [
            (
                "admin-key-1",
                vec![
                    DataWrite,
                    DataRead,
                    DataManage,
                    SearchExecute,
                    ClusterRead,
                    ClusterWrite,
                    MetricsRead,
                ],
                vec![],
            ),
            (
                "writer-key-1",
                vec![DataWrite, DataRead, SearchExecute],
                vec![DataManage, ClusterRead, ClusterWrite, MetricsRead],
            ),
            (
                "reader-key-1",
                vec![DataRead, SearchExecute],
                vec![DataWrite, DataManage, ClusterRead, MetricsRead],
            ),
            (
                "search-key-1",
                vec![SearchExecute],
                vec![DataRead, DataWrite, ClusterRead, MetricsRead],
            ),
            (
                "custom-key-1",
                vec![DataRead, MetricsRead],
                vec![SearchExecute, DataWrite],
            ),
        ];
        for (key, allowed, denied) in table {
            for p in allowed {
                assert!(
                    keys.authorize(Some(key), None, p).is_ok(),
                    "{key} should have {p:?}"
                );
            }
            for p in denied {
                let err = keys.authorize(Some(key), None, p).unwrap_err();
                assert_eq!(err.status(), 403, "{key} should lack {p:?}");
            }
        }
        assert_eq!(
            keys.authorize(None, None, DataRead).unwrap_err().status(),
            401
        );
        assert_eq!(
            keys.authorize(Some("nope-nope"), None, DataRead)
                .unwrap_err()
                .status(),
            401
        );
    }

    #[test]
    fn expiry_whitelist_rate_and_quota_are_enforced() {
        let keys = store(
            r#"
api_keys:
  - key: "expired-key"
    name: old
    permissions: ["admin"]
    expires_at: "2024-12-31T23:59:59Z"
  - key: "office-key"
    name: office
    permissions: ["reader"]
    ip_whitelist: ["10.0.0.0/8", "127.0.0.1"]
  - key: "slow-key-1"
    name: slow
    permissions: ["reader"]
    rate_limits: {requests_per_second: 1, burst_size: 2}
  - key: "quota-key-1"
    name: quota
    permissions: ["writer"]
    expires_at: null
    quotas: {documents_per_day: 5, searches_per_day: 2}
"#,
        )
        .unwrap();
        let p = Permission::DataRead;
        let err = keys.authorize(Some("expired-key"), None, p).unwrap_err();
        assert_eq!(err.status(), 401);
        assert!(err.message().contains("expired"));

        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let outside: IpAddr = "192.168.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(keys.authorize(Some("office-key"), Some(inside), p).is_ok());
        assert!(keys.authorize(Some("office-key"), Some(mapped), p).is_ok());
        assert_eq!(
            keys.authorize(Some("office-key"), Some(outside), p)
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            keys.authorize(Some("office-key"), None, p)
                .unwrap_err()
                .status(),
            403
        );

        assert!(keys.authorize(Some("slow-key-1"), None, p).is_ok());
        assert!(keys.authorize(Some("slow-key-1"), None, p).is_ok());
        match keys.authorize(Some("slow-key-1"), None, p).unwrap_err() {
            Error::RateLimited { retry_after, .. } => {
                assert!(retry_after <= Duration::from_secs(1))
            }
            other => panic!("expected 429, got {other:?}"),
        }

        let key = keys
            .authorize(Some("quota-key-1"), None, p)
            .unwrap()
            .unwrap();
        assert!(key.charge(Usage::Searches, 1).is_ok());
        assert!(key.charge(Usage::Searches, 1).is_ok());
        let err = key.charge(Usage::Searches, 1).unwrap_err();
        assert_eq!((err.status(), err.code()), (429, ErrorCode::QuotaExceeded));
        assert!(key.charge(Usage::Documents, 5).is_ok());
        assert_eq!(key.charge(Usage::Documents, 1).unwrap_err().status(), 429);
    }

    #[test]
    fn bad_key_files_name_the_problem() {
        let err = store("api_keys:\n  - {key: \"abcdefgh\", name: x, permissions: [\"root\"]}\n")
            .unwrap_err();
        assert!(
            err.message().contains("api_keys[0].permissions"),
            "{}",
            err.message()
        );
        let err = store("api_keys:\n  - {key: \"abcdefgh\", name: x, permissions: [], ip_whitelist: [\"nope\"]}\n").unwrap_err();
        assert!(err.message().contains("ip_whitelist"), "{}", err.message());
        let err =
            store("api_keys:\n  - {key: \"abcdefgh\", name: x, permissions: [], colour: red}\n")
                .unwrap_err();
        assert!(err.message().contains("colour"), "{}", err.message());
    }
}
