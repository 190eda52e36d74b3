//! The API keys, users and roles a node serves with: reloaded when `security.api_keys_file` or
//! `security.rbac_file` changes or the process gets SIGHUP (a revoked key or removed user stops
//! working without a restart); failed authentications limited per client address, failed
//! logins per user; password checks run off the request threads, a few at a time.

use super::auth::{KeyStore, Permission, Principal, Source, canonical, read_security_file};
use super::rbac::{Flight, Keyed, decode_basic};
use crate::error::{Error, ErrorCode, Result};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

/// The window over which failed authentications are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at once; past it, new ones are not counted (the table cannot grow without
/// bound under a flood from many addresses).
const MAX_TRACKED: usize = 100_000;

/// Failed logins are counted per user and address in this many buckets, by a keyed digest of
/// both: a fixed table, in which a name that exists and one that does not are counted alike
/// (answers do not tell them apart) and which no flood of made-up names can grow.
const LOGIN_BUCKETS: usize = 65_536;

/// Logins waiting for a password check at once; past it, a login answers 503 at once rather
/// than queueing (each check is up to a few hundred milliseconds of a core).
const MAX_WAITING_LOGINS: usize = 256;

/// The unit an address is counted in: itself for IPv4, its /64 for IPv6 (one host usually
/// holds a whole /64).
fn counted_as(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
        v4 => v4,
    }
}

/// What a request shows to say who it is.
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    /// Nothing.
    Missing,
    /// `X-API-Key`.
    Key(&'a str),
    /// `Authorization: Basic`, the value after the scheme.
    Basic(&'a str),
    /// An `Authorization` header of another scheme, or not text.
    Unsupported,
    /// An `X-API-Key` that is not text.
    BadKey,
}

/// Limits on failed authentications (0: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct FailureLimits {
    /// Per client address, whatever it shows.
    pub per_address: u32,
    /// Per user and address: failed logins of one user from one address.
    pub per_user: u32,
}

/// The security files.
#[derive(Debug, Clone, Default)]
pub struct SecurityFiles {
    /// `security.api_keys_file`: `api_keys`, and maybe `rbac`.
    pub keys: Option<PathBuf>,
    /// `security.rbac_file`: `rbac`.
    pub rbac: Option<PathBuf>,
}

impl SecurityFiles {
    fn any(&self) -> bool {
        self.keys.is_some() || self.rbac.is_some()
    }

    /// The keys in both files, and a digest of their content; `None` without parsing them
    /// when their digest is `unchanged_from` (a poll of unchanged files reads, never parses).
    fn read(&self, unchanged_from: Option<[u8; 32]>) -> Result<Option<(KeyStore, [u8; 32])>> {
        use sha2::Digest;
        let keys = self.keys.as_deref().map(read_security_file).transpose()?;
        let rbac = self.rbac.as_deref().map(read_security_file).transpose()?;
        let mut digest = sha2::Sha256::new();
        for content in [&keys, &rbac] {
            match content {
                Some(content) => {
                    digest.update([1]);
                    digest.update((content.len() as u64).to_le_bytes());
                    digest.update(content);
                }
                None => digest.update([0]),
            }
        }
        let digest: [u8; 32] = digest.finalize().into();
        if unchanged_from == Some(digest) {
            return Ok(None);
        }
        fn source<'a>(
            path: &'a Option<PathBuf>,
            content: &'a Option<Vec<u8>>,
        ) -> Option<Source<'a>> {
            path.as_deref()
                .zip(content.as_deref())
                .map(|(path, content)| Source { path, content })
        }
        let store = KeyStore::parse(source(&self.keys, &keys), source(&self.rbac, &rbac))?;
        Ok(Some((store, digest)))
    }
}

/// Keys and users in force, and where they come from.
pub struct Keys {
    files: SecurityFiles,
    current: RwLock<Arc<KeyStore>>,
    /// Digest of the files' content in force, to skip reloading unchanged files.
    loaded: Mutex<[u8; 32]>,
    failures: Failures<IpAddr>,
    /// Failed logins by bucket of user and address (see [`LOGIN_BUCKETS`]).
    failed_logins: Failures<usize>,
    /// Draws the buckets of `failed_logins` (kept across reloads, like the counts).
    buckets: Keyed,
    /// Password checks running at once (each is a bcrypt computation of up to a few hundred
    /// milliseconds): half the cores, so logins never take the whole machine.
    checking: Arc<tokio::sync::Semaphore>,
    /// Logins waiting for `checking`.
    waiting: AtomicUsize,
    /// Proxies whose `X-Real-IP` names the client (`security.trusted_proxies`).
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("files", &self.files)
            .field("store", &self.current.read())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// No authentication: every request is allowed.
    pub fn disabled() -> Keys {
        Keys::with(
            SecurityFiles::default(),
            KeyStore::disabled(),
            [0; 32],
            FailureLimits::default(),
        )
    }

    fn with(
        files: SecurityFiles,
        store: KeyStore,
        digest: [u8; 32],
        limits: FailureLimits,
    ) -> Keys {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Keys {
            files,
            current: RwLock::new(Arc::new(store)),
            loaded: Mutex::new(digest),
            failures: Failures::new(limits.per_address),
            failed_logins: Failures::new(limits.per_user),
            buckets: Keyed::default(),
            checking: Arc::new(tokio::sync::Semaphore::new((cores / 2).max(1))),
            waiting: AtomicUsize::new(0),
            trusted_proxies: Vec::new(),
        }
    }

    /// Loads the security files; errors name the file, entry and field. An address past
    /// `limits.per_address` failed authentications within a minute, or a user past
    /// `limits.per_user` failed logins, is refused until the minute ends.
    pub fn load(files: SecurityFiles, limits: FailureLimits) -> Result<Keys> {
        if !files.any() {
            return Err(Error::invalid(
                ErrorCode::InvalidApiKeys,
                "authentication is on but neither security.api_keys_file nor security.rbac_file is set",
            ));
        }
        let (store, digest) = files.read(None)?.expect("nothing to compare with");
        Ok(Keys::with(files, store, digest, limits))
    }

    pub fn enabled(&self) -> bool {
        self.current.read().enabled()
    }

    /// Takes the client's address from `X-Real-IP` on connections from these proxies.
    pub fn trusting(mut self, proxies: Vec<ipnet::IpNet>) -> Keys {
        self.trusted_proxies = proxies;
        self
    }

    /// The client a request comes from: the connection's address, or the `X-Real-IP` it
    /// carries when the connection comes from a trusted proxy.
    pub fn client_address(&self, peer: Option<IpAddr>, real_ip: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        let from = canonical(peer);
        if !self.trusted_proxies.iter().any(|net| net.contains(&from)) {
            return Some(peer);
        }
        match real_ip.and_then(|ip| ip.trim().parse().ok()) {
            Some(client) => Some(client),
            None => Some(peer),
        }
    }

    /// Whether any user may log in with a password (401 answers then invite Basic).
    pub fn has_users(&self) -> bool {
        self.current.read().users() > 0
    }

    /// Reads the security files again if their content changed. Returns whether anything
    /// changed; files that do not parse leave the keys and users in force (and say why).
    pub fn reload(&self) -> Result<bool> {
        if !self.files.any() {
            return Ok(false);
        }
        let loaded = *self.loaded.lock();
        let Some((mut store, digest)) = self.files.read(Some(loaded))? else {
            return Ok(false);
        };
        let mut current = self.current.write();
        store.inherit(&current);
        *current = Arc::new(store);
        *self.loaded.lock() = digest;
        Ok(true)
    }

    /// Reloads and logs the outcome.
    pub fn reload_and_log(&self, why: &str) {
        match self.reload() {
            Ok(true) => {
                let store = self.current.read();
                tracing::info!(
                    keys = store.len(),
                    users = store.users(),
                    "API keys and users reloaded ({why})"
                )
            }
            Ok(false) => {}
            Err(error) => tracing::error!(
                %error,
                "API keys and users not reloaded; the previous ones stay in force"
            ),
        }
        self.failures.forget_expired();
        self.failed_logins.forget_expired();
    }

    /// Decides whether a request may proceed (see [`KeyStore::admit`]). Returns the caller
    /// (for quotas), or `None` when authentication is off. An address past its
    /// failed-authentication limit gets 429 whatever it shows.
    pub async fn authorize(
        &self,
        credentials: Credentials<'_>,
        peer: Option<IpAddr>,
        permission: Permission,
    ) -> Result<Option<Arc<Principal>>> {
        let store = Arc::clone(&self.current.read());
        if !store.enabled() {
            return Ok(None);
        }
        if let Some(ip) = peer
            && let Some(wait) = self.failures.blocked(&counted_as(ip))
        {
            return Err(address_blocked(ip, wait));
        }
        let outcome = match credentials {
            Credentials::Missing => Err(Error::Unauthorized(store.credentials_needed())),
            Credentials::Unsupported => Err(Error::Unauthorized(
                "the Authorization header must use the Basic scheme (API keys go in X-API-Key)"
                    .into(),
            )),
            Credentials::BadKey => Err(Error::Unauthorized("X-API-Key must be text".into())),
            Credentials::Key(key) => store.identify_key(key),
            // Counts its own failures, before it does any work.
            Credentials::Basic(value) => {
                return self
                    .login(&store, value, peer.map(counted_as))
                    .await
                    .and_then(|caller| {
                        store.admit(&caller, peer, permission)?;
                        Ok(Some(caller))
                    });
            }
        }
        .and_then(|caller| {
            store.admit(&caller, peer, permission)?;
            Ok(caller)
        });
        if let (Err(Error::Unauthorized(_)), Some(ip)) = (&outcome, peer) {
            self.failures.record(counted_as(ip));
        }
        outcome.map(Some)
    }

    /// The user whose `Authorization: Basic` value this is. Credentials that passed and were
    /// used within the last 30 s are let in without bcrypt (also while their user is over its
    /// failed-login limit, so a guesser sharing the address, a proxy's, cannot lock a busy
    /// client out). Requests showing the same credentials at once share one check, counted
    /// once. Malformed credentials count as a failure of the address.
    async fn login(
        &self,
        store: &KeyStore,
        value: &str,
        address: Option<IpAddr>,
    ) -> Result<Arc<Principal>> {
        let (name, password) = match decode_basic(value) {
            Ok(credentials) => credentials,
            Err(error) => {
                if let Some(ip) = address {
                    self.failures.record(ip);
                }
                return Err(error);
            }
        };
        loop {
            if let Some(caller) = store.verified().get(&name, &password) {
                return Ok(caller);
            }
            match store.verified().board(&name, &password) {
                Flight::Follow(mut done) => {
                    // Passed: remembered now. Dropped before checking: take over.
                    if let Ok(passed) = done.wait_for(Option::is_some).await
                        && *passed == Some(false)
                    {
                        return Err(wrong_password());
                    }
                }
                Flight::Lead(lead) => {
                    let outcome = self.counted_check(store, &name, &password, address).await;
                    match &outcome {
                        Ok(_) => lead.finish(true),
                        Err(Error::Unauthorized(_)) => lead.finish(false),
                        Err(_) => drop(lead),
                    }
                    return outcome;
                }
            }
        }
    }

    /// [`Keys::check_password`], counted as a failure of the address before any work is done
    /// (so that guesses sent in parallel cannot all pass the limit); only a 401 stays counted.
    async fn counted_check(
        &self,
        store: &KeyStore,
        name: &str,
        password: &str,
        address: Option<IpAddr>,
    ) -> Result<Arc<Principal>> {
        let counted = match address {
            Some(ip) => match self.failures.attempt(ip) {
                Ok(since) => Some((ip, since)),
                Err(wait) => return Err(address_blocked(ip, wait)),
            },
            None => None,
        };
        let outcome = self.check_password(store, name, password, address).await;
        if let Some((ip, since)) = counted
            && !matches!(outcome, Err(Error::Unauthorized(_)))
        {
            self.failures.forgive(&ip, since);
        }
        outcome
    }

    /// Checks a password against its user's bcrypt hash, counting it against the user from
    /// this address first (and forgiving it when it passes). An unknown user's password is
    /// checked against one of the users' hashes, so that its answer takes as long as a wrong
    /// password's.
    async fn check_password(
        &self,
        store: &KeyStore,
        name: &str,
        password: &str,
        address: Option<IpAddr>,
    ) -> Result<Arc<Principal>> {
        let address_bytes = match address {
            Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
            Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
            None => Vec::new(),
        };
        let bucket = self
            .buckets
            .index(&[name.as_bytes(), &address_bytes], LOGIN_BUCKETS);
        let since = match self.failed_logins.attempt(bucket) {
            Ok(since) => since,
            Err(wait) => {
                return Err(Error::RateLimited {
                    code: ErrorCode::RateLimited,
                    message: format!(
                        "too many failed logins for user '{name}' from this address \
                         (security.failed_logins_per_user_per_minute)"
                    ),
                    retry_after: wait,
                });
            }
        };
        let user = store.user(name);
        let Some(hash) = user
            .map(|u| u.hash())
            .or_else(|| store.decoy_hash(name))
            .map(str::to_string)
        else {
            return Err(wrong_password());
        };
        let Some(waiting) = Waiting::join(&self.waiting) else {
            self.failed_logins.forgive(&bucket, since);
            return Err(Error::Unavailable {
                code: ErrorCode::Overloaded,
                message: "too many logins are waiting for their password check".into(),
            });
        };
        // A request dropped while it waits (its client gone) leaves the queue too.
        let turn = Arc::clone(&self.checking)
            .acquire_owned()
            .await
            .expect("never closed");
        drop(waiting);
        // The slot goes with the check: a request dropped meanwhile does not free it early.
        let checked = {
            let password = password.to_string();
            tokio::task::spawn_blocking(move || {
                let _turn = turn;
                bcrypt::verify(password, &hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false)
        };
        match user {
            Some(user) if checked => {
                self.failed_logins.forgive(&bucket, since);
                store
                    .verified()
                    .remember(name, password, Arc::clone(&user.principal));
                Ok(Arc::clone(&user.principal))
            }
            _ => Err(wrong_password()),
        }
    }

    /// Reloads the security files every `every` when they changed (never when `None`), and
    /// at once on SIGHUP, until the task is dropped.
    pub async fn watch(self: Arc<Self>, every: Option<Duration>) {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "no SIGHUP handler; the security files are still polled");
                None
            }
        };
        let mut tick = every.map(tokio::time::interval);
        loop {
            let why = tokio::select! {
                _ = async {
                    match tick.as_mut() {
                        Some(tick) => tick.tick().await,
                        None => std::future::pending().await,
                    }
                } => "a file changed",
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

/// The one answer to an unknown user and a wrong password.
fn wrong_password() -> Error {
    Error::Unauthorized("unknown user or wrong password".into())
}

/// A place among the logins waiting for a password check, given back when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Takes a place, unless [`MAX_WAITING_LOGINS`] are taken.
    fn join(waiting: &'a AtomicUsize) -> Option<Waiting<'a>> {
        if waiting.fetch_add(1, AtomicOrdering::AcqRel) >= MAX_WAITING_LOGINS {
            waiting.fetch_sub(1, AtomicOrdering::AcqRel);
            return None;
        }
        Some(Waiting(waiting))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::AcqRel);
    }
}

/// The answer to an address over its failed-authentication limit.
fn address_blocked(ip: IpAddr, wait: Duration) -> Error {
    Error::RateLimited {
        code: ErrorCode::RateLimited,
        message: format!(
            "too many failed authentications from {ip} (security.failed_auth_per_minute)"
        ),
        retry_after: wait,
    }
}

/// Failed authentications per address (or login bucket), counted over a fixed window.
struct Failures<K> {
    /// Failures allowed per window (0: no limit).
    limit: u32,
    by_key: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq> Failures<K> {
    fn new(limit: u32) -> Failures<K> {
        Failures {
            limit,
            by_key: Mutex::new(HashMap::new()),
        }
    }

    /// How long `key` stays blocked, if it is.
    fn blocked(&self, key: &K) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let by_key = self.by_key.lock();
        let (start, count) = by_key.get(key)?;
        let left = FAILURE_WINDOW.checked_sub(start.elapsed())?;
        (*count >= self.limit).then_some(left)
    }

    /// Counts an attempt as a failure ahead of its outcome, unless `key` is over its limit
    /// already: then how long it stays blocked. Checking and counting are one step, so
    /// attempts made at once cannot all pass the limit. Returns the start of the window it
    /// was counted in, for [`Failures::forgive`].
    fn attempt(&self, key: K) -> std::result::Result<Instant, Duration> {
        let now = Instant::now();
        if self.limit == 0 {
            return Ok(now);
        }
        let mut by_key = self.by_key.lock();
        match Self::count(&mut by_key, key) {
            Some(entry) if entry.1 >= self.limit => {
                Err(FAILURE_WINDOW.saturating_sub(entry.0.elapsed()))
            }
            Some(entry) => {
                entry.1 += 1;
                Ok(entry.0)
            }
            None => Ok(now),
        }
    }

    /// Takes back an attempt counted ahead (in the window that started at `since`) that
    /// turned out not to be a failure. An attempt from a window that has ended is gone
    /// already.
    fn forgive(&self, key: &K, since: Instant) {
        if let Some(entry) = self.by_key.lock().get_mut(key)
            && entry.0 == since
        {
            entry.1 = entry.1.saturating_sub(1);
        }
    }

    /// The entry of `key`, its window restarted when over; `None` when the table is full.
    fn count(by_key: &mut HashMap<K, (Instant, u32)>, key: K) -> Option<&mut (Instant, u32)> {
        if by_key.len() >= MAX_TRACKED && !by_key.contains_key(&key) {
            by_key.retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
            if by_key.len() >= MAX_TRACKED {
                return None;
            }
        }
        let entry = by_key.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        Some(entry)
    }

    fn record(&self, key: K) {
        if self.limit == 0 {
            return;
        }
        if let Some(entry) = Self::count(&mut self.by_key.lock(), key) {
            entry.1 = entry.1.saturating_add(1);
        }
    }

    fn forget_expired(&self) {
        self.by_key
            .lock()
            .retain(|_, (start, _)| start.elapsed() < FAILURE_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_file(path: &std::path::Path) -> SecurityFiles {
        SecurityFiles {
            keys: Some(path.to_path_buf()),
            rbac: None,
        }
    }

    const ONE: &str = "api_keys:\n  - {key: \"key-one-0001\", name: one, permissions: [\"reader\"], quotas: {searches_per_day: 2}}\n  - {key: \"key-two-0001\", name: two, permissions: [\"reader\"]}\n";
    const TWO: &str = "api_keys:\n  - {key: \"key-one-0001\", name: one, permissions: [\"reader\"], quotas: {searches_per_day: 2}}\n";

    #[tokio::test]
    async fn a_reload_revokes_removed_keys_and_keeps_quota_usage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, ONE).unwrap();
        let keys = Keys::load(keys_file(&path), FailureLimits::default()).unwrap();
        let read = Permission::DataRead;
        let one = keys
            .authorize(Credentials::Key("key-one-0001"), None, read)
            .await
            .unwrap();
        one.unwrap()
            .charge(super::super::auth::Usage::Searches, 2)
            .unwrap();
        assert!(
            keys.authorize(Credentials::Key("key-two-0001"), None, read)
                .await
                .is_ok()
        );
        assert!(!keys.reload().unwrap(), "unchanged file: nothing to do");

        std::fs::write(&path, TWO).unwrap();
        assert!(keys.reload().unwrap());
        let err = keys
            .authorize(Credentials::Key("key-two-0001"), None, read)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 401);
        let one = keys
            .authorize(Credentials::Key("key-one-0001"), None, read)
            .await
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
            keys.authorize(Credentials::Key("key-one-0001"), None, read)
                .await
                .is_ok(),
            "a broken file leaves the keys in force"
        );
    }

    #[tokio::test]
    async fn an_address_past_its_failures_is_blocked_whatever_key_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, ONE).unwrap();
        let keys = Keys::load(
            keys_file(&path),
            FailureLimits {
                per_address: 3,
                per_user: 0,
            },
        )
        .unwrap();
        let read = Permission::DataRead;
        let bad: IpAddr = "10.0.0.1".parse().unwrap();
        let good: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            let err = keys
                .authorize(Credentials::Key("guess-0000"), Some(bad), read)
                .await
                .unwrap_err();
            assert_eq!(err.status(), 401);
        }
        // A missing permission is not a failed authentication.
        assert_eq!(
            keys.authorize(
                Credentials::Key("key-one-0001"),
                Some(good),
                Permission::DataWrite
            )
            .await
            .unwrap_err()
            .status(),
            403
        );
        for key in ["guess-0000", "key-one-0001"] {
            match keys
                .authorize(Credentials::Key(key), Some(bad), read)
                .await
                .unwrap_err()
            {
                Error::RateLimited { retry_after, .. } => {
                    assert!(retry_after <= FAILURE_WINDOW)
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        assert!(
            keys.authorize(Credentials::Key("key-one-0001"), Some(good), read)
                .await
                .is_ok()
        );
    }

    fn basic(user: &str, password: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    }

    fn users_file(users: &[(&str, &str, &str)]) -> String {
        let mut yaml = String::from("rbac:\n  users:\n");
        for (name, password, role) in users {
            let hash = bcrypt::hash(password, 4).unwrap();
            yaml += &format!(
                "    - {{username: {name}, password_hash: \"{hash}\", roles: [{role}]}}\n"
            );
        }
        yaml
    }

    #[tokio::test]
    async fn users_log_in_with_basic_and_are_limited_per_user() {
        let limits = FailureLimits {
            per_address: 0,
            per_user: 3,
        };
        let users = users_file(&[("ann", "ann-pass", "writer"), ("bob", "bob-pass", "reader")]);
        let (_dir, path, keys) = rbac_keys(&users, limits);
        assert!(keys.has_users());
        let write = Permission::DataWrite;
        let login = |user: &str, password: &str| basic(user, password);
        let ann = login("ann", "ann-pass");
        let caller = keys
            .authorize(Credentials::Basic(&ann), None, write)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(caller.label(), "user 'ann'");
        let bob = login("bob", "bob-pass");
        let err = keys
            .authorize(Credentials::Basic(&bob), None, write)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 403);
        assert!(err.message().contains("user 'bob'"), "{}", err.message());
        for (user, password) in [("ann", "wrong"), ("nobody", "ann-pass"), ("ann", "")] {
            let err = keys
                .authorize(Credentials::Basic(&login(user, password)), None, write)
                .await
                .unwrap_err();
            assert_eq!(err.status(), 401, "{user}:{password}");
            assert_eq!(err.message(), "unknown user or wrong password");
        }
        // A third wrong password for ann: her logins are refused for the rest of the minute,
        // except with the credentials verified a moment ago.
        let third = login("ann", "guess");
        assert_eq!(
            keys.authorize(Credentials::Basic(&third), None, write)
                .await
                .unwrap_err()
                .status(),
            401
        );
        let err = keys
            .authorize(Credentials::Basic(&third), None, write)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 429, "{}", err.message());
        assert!(
            keys.authorize(Credentials::Basic(&ann), None, write)
                .await
                .is_ok()
        );
        // A name that does not exist is counted like one that does: locked out after as many
        // failures, so the answers do not tell which names exist.
        let nobody = login("nobody", "x");
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let err = keys
                .authorize(Credentials::Basic(&nobody), None, write)
                .await
                .unwrap_err();
            statuses.push(err.status());
        }
        assert_eq!(statuses, [401, 401, 429]);
        // Bob was not the one guessed at.
        assert!(
            keys.authorize(Credentials::Basic(&bob), None, Permission::DataRead)
                .await
                .is_ok()
        );
        for credentials in [Credentials::Missing, Credentials::Unsupported] {
            let err = keys.authorize(credentials, None, write).await.unwrap_err();
            assert_eq!(err.status(), 401, "{credentials:?}");
        }

        // Removing bob locks him out at the reload, although his credentials were just
        // remembered.
        std::fs::write(&path, users_file(&[("ann", "ann-pass", "writer")])).unwrap();
        assert!(keys.reload().unwrap());
        let err = keys
            .authorize(Credentials::Basic(&bob), None, Permission::DataRead)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 401);
    }

    /// Ann's logins with these passwords, all sent at once from `from`: each one's status.
    async fn at_once(keys: &Arc<Keys>, from: IpAddr, passwords: Vec<String>) -> Vec<u16> {
        let logins = passwords.into_iter().map(|password| {
            let keys = Arc::clone(keys);
            tokio::spawn(async move {
                let value = basic("ann", &password);
                match keys
                    .authorize(Credentials::Basic(&value), Some(from), Permission::DataRead)
                    .await
                {
                    Ok(_) => 200,
                    Err(e) => e.status(),
                }
            })
        });
        futures::future::join_all(logins)
            .await
            .into_iter()
            .map(|s| s.unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn guesses_sent_at_once_cannot_pass_the_limits_together() {
        let limits = FailureLimits {
            per_address: 100,
            per_user: 3,
        };
        let users = users_file(&[("ann", "ann-pass", "writer")]);
        let (_dir, _, keys) = rbac_keys(&users, limits);
        let keys = Arc::new(keys);
        let from: IpAddr = "10.0.0.7".parse().unwrap();
        let guesses = (0..40).map(|i| format!("guess-{i}")).collect();
        let statuses = at_once(&keys, from, guesses).await;
        let checked = statuses.iter().filter(|s| **s == 401).count();
        assert_eq!(checked, 3, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 37);
        // Ann is locked out from that address for the minute (her password was never
        // verified there), not from another.
        let right = basic("ann", "ann-pass");
        let read = Permission::DataRead;
        let err = keys
            .authorize(Credentials::Basic(&right), Some(from), read)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 429);
        let elsewhere: IpAddr = "10.0.0.8".parse().unwrap();
        assert!(
            keys.authorize(Credentials::Basic(&right), Some(elsewhere), read)
                .await
                .is_ok()
        );
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let keys = Keys::disabled().trusting(vec!["172.20.0.100/32".parse().unwrap()]);
        let proxy: IpAddr = "172.20.0.100".parse().unwrap();
        let mapped: IpAddr = "::ffff:172.20.0.100".parse().unwrap();
        let other: IpAddr = "172.20.0.5".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            keys.client_address(Some(proxy), Some("203.0.113.9")),
            Some(client)
        );
        assert_eq!(
            keys.client_address(Some(mapped), Some(" 203.0.113.9 ")),
            Some(client)
        );
        assert_eq!(
            keys.client_address(Some(other), Some("203.0.113.9")),
            Some(other)
        );
        assert_eq!(
            keys.client_address(Some(proxy), Some("not an address")),
            Some(proxy)
        );
        assert_eq!(keys.client_address(Some(proxy), None), Some(proxy));
        assert_eq!(keys.client_address(None, Some("203.0.113.9")), None);
    }

    #[test]
    fn the_login_queue_is_bounded_and_dropped_places_are_given_back() {
        let waiting = AtomicUsize::new(0);
        let places: Vec<Waiting> = (0..MAX_WAITING_LOGINS)
            .map(|_| Waiting::join(&waiting).unwrap())
            .collect();
        assert!(Waiting::join(&waiting).is_none());
        drop(places);
        assert_eq!(waiting.load(AtomicOrdering::Acquire), 0);
        assert!(Waiting::join(&waiting).is_some());
    }

    /// Keys with these users in an rbac file (rewrite it at the path to reload).
    fn rbac_keys(
        users: &str,
        limits: FailureLimits,
    ) -> (tempfile::TempDir, std::path::PathBuf, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rbac.yaml");
        std::fs::write(&path, users).unwrap();
        let files = SecurityFiles {
            keys: None,
            rbac: Some(path.clone()),
        };
        (dir, path, Keys::load(files, limits).unwrap())
    }

    #[tokio::test]
    async fn only_a_401_stays_counted_against_the_address() {
        let limits = FailureLimits {
            per_address: 3,
            per_user: 1,
        };
        let users = users_file(&[("ann", "ann-pass", "reader"), ("bob", "bob-pass", "reader")]);
        let (_dir, _, keys) = rbac_keys(&users, limits);
        let from: IpAddr = "10.0.0.9".parse().unwrap();
        let read = Permission::DataRead;
        let status = |value: String| {
            let keys = &keys;
            async move {
                match keys
                    .authorize(Credentials::Basic(&value), Some(from), read)
                    .await
                {
                    Ok(_) => 200,
                    Err(e) => e.status(),
                }
            }
        };
        // Ann's first wrong password counts against her and the address; her next logins
        // from there are 429 (her limit), which the address does not pay for.
        assert_eq!(status(basic("ann", "wrong")).await, 401);
        for _ in 0..5 {
            assert_eq!(status(basic("ann", "ann-pass")).await, 429);
        }
        assert_eq!(status(basic("bob", "bob-pass")).await, 200);
        // Malformed credentials are failures of the address: two more and it is blocked.
        assert_eq!(status("%%%".into()).await, 401);
        assert_eq!(status(basic("bob", "")).await, 401);
        assert_eq!(status(basic("bob", "bob-pass")).await, 429);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_burst_of_the_same_login_shares_one_check() {
        let limits = FailureLimits {
            per_address: 5,
            per_user: 2,
        };
        let users = users_file(&[("ann", "ann-pass", "reader")]);
        let (_dir, _, keys) = rbac_keys(&users, limits);
        let keys = Arc::new(keys);
        let from: IpAddr = "10.0.0.10".parse().unwrap();
        let same = vec!["ann-pass".to_string(); 30];
        assert_eq!(at_once(&keys, from, same).await, vec![200; 30]);
    }

    #[tokio::test]
    async fn a_reload_keeps_the_logins_of_unchanged_users() {
        let limits = FailureLimits {
            per_address: 0,
            per_user: 1,
        };
        let ann = users_file(&[("ann", "ann-pass", "reader")]);
        let (_dir, path, keys) = rbac_keys(&ann, limits);
        let read = Permission::DataRead;
        let right = basic("ann", "ann-pass");
        assert!(
            keys.authorize(Credentials::Basic(&right), None, read)
                .await
                .is_ok()
        );
        let wrong = basic("ann", "wrong");
        let err = keys
            .authorize(Credentials::Basic(&wrong), None, read)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 401);
        // Ann is over her limit now: only her remembered login lets her in, and it survives a
        // reload that does not change her.
        let with_bob = format!(
            "{ann}    - {{username: bob, password_hash: \"{}\", roles: [reader]}}\n",
            bcrypt::hash("b", 4).unwrap()
        );
        std::fs::write(&path, with_bob).unwrap();
        assert!(keys.reload().unwrap());
        assert!(
            keys.authorize(Credentials::Basic(&right), None, read)
                .await
                .is_ok()
        );
        // A changed role is a changed user: the remembered login is dropped.
        std::fs::write(&path, ann.replace("[reader]", "[writer]")).unwrap();
        assert!(keys.reload().unwrap());
        let err = keys
            .authorize(Credentials::Basic(&right), None, read)
            .await
            .unwrap_err();
        assert_eq!(err.status(), 429);
    }
}
