//! API keys, users, roles and limits: who may call what, from where, how often.
//!
//! Keys come from `security.api_keys_file` in the seed guide's format; roles and users from its
//! `rbac` block (beside `api_keys`, or in `security.rbac_file`; see [`super::rbac`]). A key's
//! `permissions` lists role names (the guide's `admin`, `writer`, `reader`, `searcher` unless
//! `rbac.roles` defines others) and/or permissions (`data:write`, `cluster:*`, ...). Answers:
//! 401 for a missing, unknown or expired key and for wrong credentials; 403 for a missing
//! permission or an address outside `ip_whitelist`; 429 with `Retry-After` past a rate limit
//! or a daily quota.

use super::rbac::{RbacSection, User, Verified, grant_allows};
use crate::config::parse_net;
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    api_keys: Vec<KeyEntry>,
    #[serde(default)]
    rbac: Option<RbacSection>,
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

/// `rate_limits` of a key or a user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    requests_per_second: u32,
    #[serde(default)]
    burst_size: Option<u32>,
}

/// A rate and burst, and the limiter that enforces them.
pub type Limit = ((NonZeroU32, NonZeroU32), Arc<DefaultDirectRateLimiter>);

/// Checks `rate_limits` (`at(field, why)` names a bad field) and builds its limiter.
pub fn rate_limit(
    limits: Option<RateLimits>,
    at: impl Fn(&str, String) -> Error,
) -> Result<Option<Limit>> {
    let Some(limits) = limits else {
        return Ok(None);
    };
    let rate = NonZeroU32::new(limits.requests_per_second)
        .ok_or_else(|| at("rate_limits.requests_per_second", "must be above 0".into()))?;
    let burst = NonZeroU32::new(limits.burst_size.unwrap_or(limits.requests_per_second))
        .ok_or_else(|| at("rate_limits.burst_size", "must be above 0".into()))?;
    let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(burst));
    Ok(Some(((rate, burst), Arc::new(limiter))))
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

/// Who a request comes from: an API key or a user, resolved.
pub struct Principal {
    /// The key's `name` or the user's `username`, for messages and logs (never the key).
    pub name: String,
    /// "API key" or "user", for messages.
    kind: &'static str,
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

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("kind", &self.kind)
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

impl Principal {
    /// A user: its roles' permissions and maybe a rate limit; no address list, expiry or
    /// quotas (the guide's users have none).
    pub fn user(name: &str, grants: Vec<String>, limit: Option<Limit>) -> Principal {
        let (rate, limiter) = limit.unzip();
        Principal {
            name: name.to_string(),
            kind: "user",
            grants,
            rate,
            limiter,
            ip_whitelist: Vec::new(),
            expires_at: None,
            quotas: None,
            usage: Arc::default(),
        }
    }

    /// How messages name it: `API key 'ingest'`, `user 'ann'`.
    pub fn label(&self) -> String {
        format!("{} '{}'", self.kind, self.name)
    }

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
                    "{} has used {} of its {what} quota of {limit}; it resets at 00:00 UTC",
                    self.label(),
                    *counter
                ),
                retry_after: Duration::from_secs((midnight - now.timestamp()).max(1) as u64),
            });
        }
        *counter += amount;
        Ok(())
    }
}

/// One security file: its path (for messages) and content.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub path: &'a Path,
    pub content: &'a [u8],
}

impl Source<'_> {
    fn bad(&self, why: String) -> Error {
        Error::invalid(
            ErrorCode::InvalidApiKeys,
            format!("{}: {why}", self.path.display()),
        )
    }

    fn yaml(&self) -> Result<Figment> {
        let text =
            std::str::from_utf8(self.content).map_err(|e| self.bad(format!("not UTF-8: {e}")))?;
        Ok(Figment::from(Yaml::string(text)))
    }

    /// The whole file (the keys file).
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        self.yaml()?.extract().map_err(|e| self.bad(e.to_string()))
    }

    /// The file's `rbac` block (the rbac file, which may be the node's configuration file:
    /// its other keys are not read here).
    fn parse_rbac(&self) -> Result<RbacSection> {
        let yaml = self.yaml()?;
        if !yaml.contains("rbac") {
            return Err(self.bad("holds no rbac block".into()));
        }
        yaml.extract_inner("rbac")
            .map_err(|e| self.bad(e.to_string()))
    }
}

/// The loaded keys and users, or none when authentication is off.
#[derive(Default)]
pub struct KeyStore {
    /// Whether requests need credentials at all.
    enabled: bool,
    keys: HashMap<KeyDigest, Arc<Principal>>,
    users: HashMap<String, User>,
    /// What logins of unknown users are checked against (see
    /// [`super::rbac::Rbac::decoy_hashes`]).
    decoys: Vec<String>,
    /// Logins checked lately; a reload starts afresh, so a removed user is locked out at once.
    verified: Verified,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("enabled", &self.enabled)
            .field("keys", &self.keys.len())
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// No authentication: every request is allowed.
    pub fn disabled() -> KeyStore {
        KeyStore::default()
    }

    /// Loads the keys file and/or the rbac file; errors name the entry and field.
    pub fn load(keys: Option<&Path>, rbac: Option<&Path>) -> Result<KeyStore> {
        let keys_content = keys.map(read_security_file).transpose()?;
        let rbac_content = rbac.map(read_security_file).transpose()?;
        KeyStore::parse(
            keys.zip(keys_content.as_deref())
                .map(|(path, content)| Source { path, content }),
            rbac.zip(rbac_content.as_deref())
                .map(|(path, content)| Source { path, content }),
        )
    }

    /// Parses the keys file's and the rbac file's content. Roles and users come from the keys
    /// file's `rbac` block or from the rbac file, not both.
    pub fn parse(keys: Option<Source<'_>>, rbac: Option<Source<'_>>) -> Result<KeyStore> {
        let bad = |message: String| Error::invalid(ErrorCode::InvalidApiKeys, message);
        let file: KeysFile = match &keys {
            Some(source) => source.parse()?,
            None => KeysFile::default(),
        };
        let section = match (file.rbac, &rbac) {
            (Some(_), Some(other)) => {
                return Err(bad(format!(
                    "{} and {} both define rbac: keep roles and users in one of them",
                    keys.map_or_else(String::new, |k| k.path.display().to_string()),
                    other.path.display()
                )));
            }
            (Some(section), None) => section,
            (None, Some(source)) => source.parse_rbac()?,
            (None, None) => RbacSection::default(),
        };
        let rbac = section.resolve()?;
        let mut keys = HashMap::new();
        for (i, entry) in file.api_keys.into_iter().enumerate() {
            let at = |field: &str, why: String| bad(format!("api_keys[{i}].{field}: {why}"));
            if entry.key.len() < 8 {
                return Err(at("key", "must be at least 8 characters".into()));
            }
            let grants = rbac.roles.expand(
                &entry.permissions,
                true,
                &format!("api_keys[{i}].permissions"),
            )?;
            let (rate, limiter) = rate_limit(entry.rate_limits, at)?.unzip();
            let ip_whitelist = entry
                .ip_whitelist
                .iter()
                .map(|net| {
                    parse_net(net).ok_or_else(|| {
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
            let key = Principal {
                name: entry.name,
                kind: "API key",
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
            decoys: rbac.decoy_hashes(),
            users: rbac.users,
            verified: Verified::default(),
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

    /// Users in this store.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The hash a login of the unknown user `name` is checked against: always the same one
    /// of the users' hashes for a name, so that its answer costs what a known user's costs.
    /// `None` when there are no users.
    pub fn decoy_hash(&self, name: &str) -> Option<&str> {
        if self.decoys.is_empty() {
            return None;
        }
        Some(&self.decoys[self.verified.pick(name, self.decoys.len())])
    }

    pub fn verified(&self) -> &Verified {
        &self.verified
    }

    /// Carries over from `earlier` what a reload must not reset: each remaining key's quota
    /// usage, and its rate limiter when its limits did not change.
    pub fn inherit(&mut self, earlier: &KeyStore) {
        let keys = self
            .keys
            .iter_mut()
            .filter_map(|(digest, key)| earlier.keys.get(digest).map(|old| (key, old)));
        let users = self.users.iter_mut().filter_map(|(name, user)| {
            earlier
                .users
                .get(name)
                .map(|old| (&mut user.principal, &old.principal))
        });
        for (principal, old) in keys.chain(users) {
            let Some(principal) = Arc::get_mut(principal) else {
                continue;
            };
            principal.usage = Arc::clone(&old.usage);
            if principal.rate == old.rate {
                principal.limiter = old.limiter.clone();
            }
        }
        // Logins remembered stay remembered for users whose hash and permissions did not
        // change (a reload does not make every client pay bcrypt again).
        let KeyStore {
            users, verified, ..
        } = self;
        verified.carry_over(&earlier.verified, |old| {
            let now = users.get(&old.name)?;
            let before = earlier.users.get(&old.name)?;
            (now.hash() == before.hash() && now.principal.grants == old.grants)
                .then(|| Arc::clone(&now.principal))
        });
    }

    /// Decides whether a request showing an API key (or nothing) may proceed. Returns the
    /// caller (for quotas), or `None` when authentication is off.
    pub fn authorize(
        &self,
        presented: Option<&str>,
        peer: Option<IpAddr>,
        permission: Permission,
    ) -> Result<Option<Arc<Principal>>> {
        if !self.enabled {
            return Ok(None);
        }
        let presented = presented.ok_or_else(|| Error::Unauthorized(self.credentials_needed()))?;
        let key = self.identify_key(presented)?;
        self.admit(&key, peer, permission)?;
        Ok(Some(key))
    }

    /// What a request without credentials is told.
    pub fn credentials_needed(&self) -> String {
        if self.users.is_empty() {
            "this endpoint needs an API key in the X-API-Key header".into()
        } else {
            "this endpoint needs an API key in the X-API-Key header or a user's credentials in Authorization: Basic".into()
        }
    }

    /// The key presented, if it is one of this store's (401 otherwise).
    pub fn identify_key(&self, presented: &str) -> Result<Arc<Principal>> {
        self.keys
            .get(&digest(presented))
            .cloned()
            .ok_or_else(|| Error::Unauthorized("unknown API key".into()))
    }

    /// Whether an identified caller may make this request: not expired (401), from an allowed
    /// address and holding the permission (403), within its rate limit (429).
    pub fn admit(
        &self,
        caller: &Principal,
        peer: Option<IpAddr>,
        permission: Permission,
    ) -> Result<()> {
        if let Some(expiry) = caller.expires_at
            && expiry <= Utc::now()
        {
            return Err(Error::Unauthorized(format!(
                "{} expired at {}",
                caller.label(),
                expiry.to_rfc3339()
            )));
        }
        if !caller.ip_whitelist.is_empty() {
            let allowed = peer.is_some_and(|ip| {
                let ip = canonical(ip);
                caller.ip_whitelist.iter().any(|net| net.contains(&ip))
            });
            if !allowed {
                return Err(Error::Forbidden(format!(
                    "{} may not be used from {}",
                    caller.label(),
                    peer.map(|ip| ip.to_string())
                        .unwrap_or_else(|| "an unknown address".into())
                )));
            }
        }
        if !caller.allows(permission) {
            return Err(Error::Forbidden(format!(
                "{} lacks the permission {}",
                caller.label(),
                permission.as_str()
            )));
        }
        if let Some(limiter) = &caller.limiter
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Error::RateLimited {
                code: ErrorCode::RateLimited,
                message: format!("{} is over its rate limit", caller.label()),
                retry_after: wait,
            });
        }
        Ok(())
    }
}

/// The content of a security file (`security.api_keys_file`, `security.rbac_file`).
pub fn read_security_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::invalid(
            ErrorCode::InvalidApiKeys,
            format!("{} cannot be read: {e}", path.display()),
        )
    })
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
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
        KeyStore::load(Some(&path), None)
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
    fn custom_roles_replace_the_guides_and_keys_may_name_them() {
        let keys = store(
            r#"
rbac:
  roles:
    - {name: ingest, permissions: ["data:write"]}
    - {name: admin, permissions: ["cluster:*", "data:*", "metrics:read"]}
api_keys:
  - {key: "ingest-key-1", name: loader, permissions: ["ingest"]}
  - {key: "admin-key-01", name: ops, permissions: ["admin"]}
  - {key: "mixed-key-01", name: mixed, permissions: ["ingest", "search:execute"]}
"#,
        )
        .unwrap();
        use Permission::*;
        let allowed = |key: &str, p: Permission| keys.authorize(Some(key), None, p).is_ok();
        assert!(allowed("ingest-key-1", DataWrite));
        for p in [
            DataRead,
            SearchExecute,
            DataManage,
            ClusterRead,
            MetricsRead,
        ] {
            assert!(!allowed("ingest-key-1", p), "ingest has {p:?}");
        }
        // The guide's admin, verbatim: everything but searching.
        assert!(allowed("admin-key-01", ClusterWrite));
        assert!(allowed("admin-key-01", DataManage));
        assert!(!allowed("admin-key-01", SearchExecute));
        assert!(allowed("mixed-key-01", SearchExecute));
        assert!(allowed("mixed-key-01", DataWrite));
        // Defining roles replaces the defaults: "reader" is no longer a role.
        let err = store(
            "rbac:\n  roles:\n    - {name: ingest, permissions: [\"data:write\"]}\napi_keys:\n  - {key: \"abcdefgh\", name: x, permissions: [\"reader\"]}\n",
        )
        .unwrap_err();
        assert!(
            err.message().contains("api_keys[0].permissions[0]")
                && err.message().contains("ingest"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn bad_roles_and_users_name_the_entry() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let cases = [
            (
                "rbac:\n  roles:\n    - {name: a, permissions: [\"data:read\", \"data:wirte\"]}\n".to_string(),
                "rbac.roles[0].permissions[1]",
            ),
            (
                "rbac:\n  roles:\n    - {name: a, permissions: []}\n    - {name: a, permissions: []}\n".to_string(),
                "rbac.roles[1].name",
            ),
            (
                format!("rbac:\n  users:\n    - {{username: ann, password_hash: \"{hash}\", roles: [\"root\"]}}\n"),
                "rbac.users[0].roles[0]",
            ),
            (
                "rbac:\n  users:\n    - {username: ann, password_hash: \"$2b$12$...\", roles: [reader]}\n".to_string(),
                "rbac.users[0].password_hash",
            ),
            (
                format!("rbac:\n  users:\n    - {{username: \"a:b\", password_hash: \"{hash}\", roles: [reader]}}\n"),
                "rbac.users[0].username",
            ),
            (
                format!("rbac:\n  users:\n    - {{username: ann, password_hash: \"{hash}\", roles: [reader]}}\n    - {{username: ann, password_hash: \"{hash}\", roles: [reader]}}\n"),
                "rbac.users[1].username",
            ),
            (
                "rbac:\n  groups: []\n".to_string(),
                "groups",
            ),
        ];
        for (yaml, names) in cases {
            let err = store(&yaml).unwrap_err();
            assert!(err.message().contains(names), "{names}: {}", err.message());
        }
    }

    #[test]
    fn roles_and_users_come_from_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.yaml");
        let rbac = dir.path().join("config.yaml");
        std::fs::write(
            &keys,
            "api_keys:\n  - {key: \"ingest-key-1\", name: loader, permissions: [\"ingest\"]}\n",
        )
        .unwrap();
        // The rbac file may be the node's configuration file: its other keys are not read.
        std::fs::write(
            &rbac,
            "node:\n  id: n1\nrbac:\n  roles:\n    - {name: ingest, permissions: [\"data:write\"]}\n",
        )
        .unwrap();
        let store = KeyStore::load(Some(&keys), Some(&rbac)).unwrap();
        assert!(
            store
                .authorize(Some("ingest-key-1"), None, Permission::DataWrite)
                .is_ok()
        );
        std::fs::write(&rbac, "node:\n  id: n1\n").unwrap();
        let err = KeyStore::load(Some(&keys), Some(&rbac)).unwrap_err();
        assert!(err.message().contains("no rbac block"), "{}", err.message());
        std::fs::write(&rbac, "rbac: {}\n").unwrap();
        std::fs::write(&keys, "rbac: {}\napi_keys: []\n").unwrap();
        let err = KeyStore::load(Some(&keys), Some(&rbac)).unwrap_err();
        assert!(
            err.message().contains("both define rbac"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn the_compose_clusters_key_file_holds_the_documented_development_user() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/api_keys.yaml");
        let store = KeyStore::load(Some(&path), None).unwrap();
        assert_eq!((store.len(), store.users()), (3, 1));
        let admin = store.user("admin").unwrap();
        assert!(bcrypt::verify("grape-dev-admin-password", admin.hash()).unwrap());
        assert!(admin.principal.allows(Permission::ClusterWrite));
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
