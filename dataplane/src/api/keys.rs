//! The API keys a node serves with: reloaded when `security.api_keys_file` changes or the
//! process gets SIGHUP (a revoked key stops working without a restart), and failed
//! authentications limited per client address.

use super::auth::{ApiKey, KeyStore, Permission, read_key_file};
use crate::error::{Error, ErrorCode, Result};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the key file is checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The window over which failed authentications from one address are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at once; past it, new addresses are not counted (the table cannot grow
/// without bound under a flood from many addresses).
const MAX_TRACKED: usize = 100_000;

/// The unit an address is counted in: itself for IPv4, its /64 for IPv6 (one host usually
/// holds a whole /64).
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

/// Keys in force, and where they come from.
pub struct Keys {
    /// The key file, when authentication is on.
    path: Option<PathBuf>,
    current: RwLock<Arc<KeyStore>>,
    /// Digest of the file content in force, to skip reloading an unchanged file.
    loaded: Mutex<[u8; 32]>,
    failures: Failures,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("path", &self.path)
            .field("keys", &self.current.read().len())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// No authentication: every request is allowed.
    pub fn disabled() -> Keys {
        Keys {
            path: None,
            current: RwLock::new(Arc::new(KeyStore::disabled())),
            loaded: Mutex::new([0; 32]),
            failures: Failures::new(0),
        }
    }

    /// Loads the key file; errors name the entry and field. `failures_per_minute` failed
    /// authentications from one address within a minute block it until the minute ends (0:
    /// no limit).
    pub fn load(path: PathBuf, failures_per_minute: u32) -> Result<Keys> {
        let (store, digest) = read(&path)?;
        Ok(Keys {
            path: Some(path),
            current: RwLock::new(Arc::new(store)),
            loaded: Mutex::new(digest),
            failures: Failures::new(failures_per_minute),
        })
    }

    pub fn enabled(&self) -> bool {
        self.current.read().enabled()
    }

    /// Reads the key file again if its content changed. Returns whether the keys changed; a
    /// file that does not parse leaves the keys in force (and says why).
    pub fn reload(&self) -> Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let content = read_key_file(path)?;
        let digest = digest_of(&content);
        if digest == *self.loaded.lock() {
            return Ok(false);
        }
        let mut store = KeyStore::parse(path, &content)?;
        let mut current = self.current.write();
        store.inherit(&current);
        *current = Arc::new(store);
        *self.loaded.lock() = digest;
        Ok(true)
    }

    /// Reloads and logs the outcome.
    pub fn reload_and_log(&self, why: &str) {
        match self.reload() {
            Ok(true) => tracing::info!(
                keys = self.current.read().len(),
                "API keys reloaded ({why})"
            ),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "API keys not reloaded; the previous keys stay in force")
            }
        }
        self.failures.forget_expired();
    }

    /// Decides whether a request may proceed (see [`KeyStore::authorize`]); an address past
    /// its failed-authentication limit gets 429 whatever key it shows.
    pub fn authorize(
        &self,
        presented: Option<&str>,
        peer: Option<IpAddr>,
        permission: Permission,
    ) -> Result<Option<Arc<ApiKey>>> {
        let store = Arc::clone(&self.current.read());
        if !store.enabled() {
            return Ok(None);
        }
        if let Some(ip) = peer
            && let Some(wait) = self.failures.blocked(ip)
        {
            return Err(Error::RateLimited {
                code: ErrorCode::RateLimited,
                message: format!(
                    "too many failed authentications from {ip} (security.failed_auth_per_minute)"
                ),
                retry_after: wait,
            });
        }
        let outcome = store.authorize(presented, peer, permission);
        if let (Err(Error::Unauthorized(_)), Some(ip)) = (&outcome, peer) {
            self.failures.record(ip);
        }
        outcome
    }

    /// Reloads the key file every [`RELOAD_EVERY`] when it changed, and at once on SIGHUP,
    /// until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => Some(signal),
                Err(error) => {
                    tracing::warn!(%error, "no SIGHUP handler; the key file is still polled");
                    None
                }
            };
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            let why = tokio::select! {
                _ = tick.tick() => "the file changed",
                Some(()) = async {
                    match hangups.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
            };
            let keys = Arc::clone(&self);
            let why = why.to_string();
            let _ = tokio::task::spawn_blocking(move || keys.reload_and_log(&why)).await;
        }
    }
}

fn read(path: &std::path::Path) -> Result<(KeyStore, [u8; 32])> {
    let content = read_key_file(path)?;
    let store = KeyStore::parse(path, &content)?;
    Ok((store, digest_of(&content)))
}

fn digest_of(content: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(content).into()
}

/// Failed authentications per client address, counted over a fixed window.
struct Failures {
    /// Failures allowed per window (0: no limit).
    limit: u32,
    by_address: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Failures {
    fn new(limit: u32) -> Failures {
        Failures {
            limit,
            by_address: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` stays blocked, if it is.
    fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let by_address = self.by_address.lock();
        let (start, count) = by_address.get(&counted_as(ip))?;
        let left = FAILURE_WINDOW.checked_sub(start.elapsed())?;
        (*count >= self.limit).then_some(left)
    }

    fn record(&self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let ip = counted_as(ip);
        let mut by_address = self.by_address.lock();
        if by_address.len() >= MAX_TRACKED && !by_address.contains_key(&ip) {
            by_address.retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
            if by_address.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = by_address.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    fn forget_expired(&self) {
        self.by_address
            .lock()
            .retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "api_keys:\n  - {key: \"key-one-0001\", name: one, permissions: [\"reader\"], quotas: {searches_per_day: 2}}\n  - {key: \"key-two-0001\", name: two, permissions: [\"reader\"]}\n";
    const TWO: &str = "api_keys:\n  - {key: \"key-one-0001\", name: one, permissions: [\"reader\"], quotas: {searches_per_day: 2}}\n";

    #[test]
    fn a_reload_revokes_removed_keys_and_keeps_quota_usage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, ONE).unwrap();
        let keys = Keys::load(path.clone(), 0).unwrap();
        let read = Permission::DataRead;
        let one = keys.authorize(Some("key-one-0001"), None, read).unwrap();
        one.unwrap()
            .charge(super::super::auth::Usage::Searches, 2)
            .unwrap();
        assert!(keys.authorize(Some("key-two-0001"), None, read).is_ok());
        assert!(!keys.reload().unwrap(), "unchanged file: nothing to do");

        std::fs::write(&path, TWO).unwrap();
        assert!(keys.reload().unwrap());
        let err = keys
            .authorize(Some("key-two-0001"), None, read)
            .unwrap_err();
        assert_eq!(err.status(), 401);
        let one = keys
            .authorize(Some("key-one-0001"), None, read)
            .unwrap()
            .unwrap();
        let err = one
            .charge(super::super::auth::Usage::Searches, 1)
            .unwrap_err();
        assert_eq!(
            err.code(),
            ErrorCode::QuotaExceeded,
            "usage survived the reload"
        );

        std::fs::write(&path, "api_keys: [nonsense").unwrap();
        assert!(keys.reload().is_err());
        assert!(
            keys.authorize(Some("key-one-0001"), None, read).is_ok(),
            "a broken file leaves the keys in force"
        );
    }

    #[test]
    fn an_address_past_its_failures_is_blocked_whatever_key_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, ONE).unwrap();
        let keys = Keys::load(path, 3).unwrap();
        let read = Permission::DataRead;
        let bad: IpAddr = "10.0.0.1".parse().unwrap();
        let good: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            let err = keys
                .authorize(Some("guess-0000"), Some(bad), read)
                .unwrap_err();
            assert_eq!(err.status(), 401);
        }
        // A missing permission is not a failed authentication.
        assert_eq!(
            keys.authorize(Some("key-one-0001"), Some(good), Permission::DataWrite)
                .unwrap_err()
                .status(),
            403
        );
        for key in ["guess-0000", "key-one-0001"] {
            match keys.authorize(Some(key), Some(bad), read).unwrap_err() {
                Error::RateLimited { retry_after, .. } => {
                    assert!(retry_after <= FAILURE_WINDOW)
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        assert!(
            keys.authorize(Some("key-one-0001"), Some(good), read)
                .is_ok()
        );
    }
}
