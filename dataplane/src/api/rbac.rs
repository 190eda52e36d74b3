//! Roles and users: the seed guide's `rbac` block.
//!
//! Roles name permission patterns (`cluster:*`, `data:write`, ...); API keys and users name
//! roles. Users log in with HTTP Basic: their passwords are checked against bcrypt hashes
//! (`$2a$`, `$2b$`, `$2y$`, at most [`MAX_BCRYPT_COST`]), and credentials checked once are
//! remembered for [`VERIFIED_FOR`] so a busy client does not pay bcrypt on every request.

use super::auth::{Principal, RateLimits, rate_limit};
use crate::error::{Error, ErrorCode, Result};
use base64::Engine;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The highest bcrypt cost a password hash may have. Each step doubles the work of a login:
/// at 12 (the guide's) one check takes a few hundred milliseconds on one core; a higher cost
/// would let each login request cost the node seconds.
pub const MAX_BCRYPT_COST: u32 = 12;

/// How long credentials checked against their hash are remembered (until the next reload of
/// the security files at the latest).
pub const VERIFIED_FOR: Duration = Duration::from_secs(30);

/// Remembered credentials at once; past it, the oldest are dropped.
const MAX_VERIFIED: usize = 10_000;

/// The longest `Authorization: Basic` value read: a longer one is refused before decoding.
const MAX_BASIC_LEN: usize = 1024;

/// Every permission an endpoint can require.
pub const PERMISSIONS: [&str; 7] = [
    "data:write",
    "data:read",
    "data:manage",
    "search:execute",
    "cluster:read",
    "cluster:write",
    "metrics:read",
];

/// Whether `grant` is a permission, a whole area (`data:*`) or everything (`*`).
pub fn valid_grant(grant: &str) -> bool {
    if grant == "*" || PERMISSIONS.contains(&grant) {
        return true;
    }
    grant.strip_suffix(":*").is_some_and(|area| {
        PERMISSIONS
            .iter()
            .any(|p| p.split_once(':').is_some_and(|(a, _)| a == area))
    })
}

/// Whether `grant` covers the permission `needed`.
pub fn grant_allows(grant: &str, needed: &str) -> bool {
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

/// The `rbac` block, in `security.api_keys_file` beside `api_keys` or in
/// `security.rbac_file`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacSection {
    /// Absent: the guide's four roles (see [`Roles::defaults`]).
    #[serde(default)]
    roles: Option<Vec<RoleEntry>>,
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    name: String,
    permissions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    username: String,
    password_hash: String,
    roles: Vec<String>,
    /// As for API keys (not in the guide, which gives users none).
    #[serde(default)]
    rate_limits: Option<RateLimits>,
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserEntry")
            .field("username", &self.username)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

fn invalid(message: String) -> Error {
    Error::invalid(ErrorCode::InvalidApiKeys, message)
}

/// Roles by name, each with its permission patterns.
#[derive(Debug, Clone)]
pub struct Roles(HashMap<String, Vec<String>>);

impl Roles {
    /// The guide's four roles; admin may also search (it can read every document anyway).
    pub fn defaults() -> Roles {
        let roles: [(&str, &[&str]); 4] = [
            (
                "admin",
                &["cluster:*", "data:*", "metrics:read", "search:*"],
            ),
            ("writer", &["data:write", "data:read", "search:execute"]),
            ("reader", &["data:read", "search:execute"]),
            ("searcher", &["search:execute"]),
        ];
        Roles(
            roles
                .into_iter()
                .map(|(name, grants)| {
                    (
                        name.to_string(),
                        grants.iter().map(|g| g.to_string()).collect(),
                    )
                })
                .collect(),
        )
    }

    fn names(&self) -> String {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }

    /// The permissions `entries` stand for: each names a role, or (when `grants_allowed`) is
    /// itself a permission pattern. Errors name `at` and the entry's position.
    pub fn expand(
        &self,
        entries: &[String],
        grants_allowed: bool,
        at: &str,
    ) -> Result<Vec<String>> {
        let mut grants = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match self.0.get(entry) {
                Some(expanded) => grants.extend(expanded.iter().cloned()),
                None if grants_allowed && valid_grant(entry) => grants.push(entry.clone()),
                None if grants_allowed => {
                    return Err(invalid(format!(
                        "{at}[{i}]: {entry:?} is neither a role ({}) nor a permission ({}, or an area like data:*)",
                        self.names(),
                        PERMISSIONS.join(", ")
                    )));
                }
                None => {
                    return Err(invalid(format!(
                        "{at}[{i}]: {entry:?} is not a role ({})",
                        self.names()
                    )));
                }
            }
        }
        Ok(grants)
    }
}

/// A user who logs in with a password.
pub struct User {
    hash: String,
    pub principal: Arc<Principal>,
}

/// Roles and users as read from a security file.
pub struct Rbac {
    pub roles: Roles,
    pub users: HashMap<String, User>,
}

impl RbacSection {
    /// Checks every role, user and hash; errors name the entry (`rbac.users[2].password_hash`).
    pub fn resolve(self) -> Result<Rbac> {
        let roles = match self.roles {
            None => Roles::defaults(),
            Some(entries) => {
                let mut roles = HashMap::new();
                for (i, role) in entries.into_iter().enumerate() {
                    let at = format!("rbac.roles[{i}]");
                    if role.name.is_empty() || role.name.contains([':', '*']) {
                        return Err(invalid(format!(
                            "{at}.name: {:?} must be non-empty and hold no ':' or '*' (it would read as a permission)",
                            role.name
                        )));
                    }
                    for (j, grant) in role.permissions.iter().enumerate() {
                        if !valid_grant(grant) {
                            return Err(invalid(format!(
                                "{at}.permissions[{j}]: {grant:?} is not a permission ({}, an area like data:*, or *)",
                                PERMISSIONS.join(", ")
                            )));
                        }
                    }
                    if roles.insert(role.name.clone(), role.permissions).is_some() {
                        return Err(invalid(format!(
                            "{at}.name: the role {:?} is defined twice",
                            role.name
                        )));
                    }
                }
                Roles(roles)
            }
        };
        let mut users = HashMap::new();
        for (i, user) in self.users.into_iter().enumerate() {
            let at = format!("rbac.users[{i}]");
            if user.username.is_empty() || user.username.contains(':') {
                return Err(invalid(format!(
                    "{at}.username: must be non-empty and hold no ':' (HTTP Basic splits at it)"
                )));
            }
            check_hash(&user.password_hash)
                .map_err(|why| invalid(format!("{at}.password_hash: {why}")))?;
            let grants = roles.expand(&user.roles, false, &format!("{at}.roles"))?;
            let rate = rate_limit(user.rate_limits, |field, why| {
                invalid(format!("{at}.{field}: {why}"))
            })?;
            let principal = Arc::new(Principal::user(&user.username, grants, rate));
            let entry = User {
                hash: user.password_hash,
                principal,
            };
            if users.insert(user.username.clone(), entry).is_some() {
                return Err(invalid(format!(
                    "{at}.username: {:?} appears twice",
                    user.username
                )));
            }
        }
        Ok(Rbac { roles, users })
    }
}

/// Whether `hash` is a bcrypt hash Grape verifies: `$2a$`, `$2b$` or `$2y$`, a cost from 4
/// to [`MAX_BCRYPT_COST`], and 53 characters of bcrypt's base64.
fn check_hash(hash: &str) -> std::result::Result<(), String> {
    if hash.len() != 60 || !hash.is_ascii() {
        return Err("not a bcrypt hash (60 characters: $2b$<cost>$<salt and hash>); make one with `grape hash-password`".into());
    }
    if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        return Err(
            "not a bcrypt hash ($2a$, $2b$ or $2y$); make one with `grape hash-password`".into(),
        );
    }
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|_| "not a whole bcrypt hash ($2b$<cost>$<53 characters>)".to_string())?;
    let cost = parts.get_cost();
    if !(4..=MAX_BCRYPT_COST).contains(&cost) {
        return Err(format!(
            "cost {cost} is outside 4 to {MAX_BCRYPT_COST} (each step doubles the work of every login)"
        ));
    }
    let salted = &hash[hash.len() - 53..];
    if !salted
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    {
        return Err("holds characters outside bcrypt's base64".into());
    }
    Ok(())
}

impl Rbac {
    /// Every user's hash, in the order of their names: a login of an unknown user is checked
    /// against one of them (picked by its name), so that it costs what a known user's costs.
    pub fn decoy_hashes(&self) -> Vec<String> {
        let mut users: Vec<(&String, &User)> = self.users.iter().collect();
        users.sort_by_key(|(name, _)| *name);
        users.into_iter().map(|(_, u)| u.hash.clone()).collect()
    }
}

impl User {
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// A username and password from `Authorization: Basic`. Every malformed value is a 401.
pub fn decode_basic(value: &str) -> Result<(String, String)> {
    let unauthorized = |why: &str| Error::Unauthorized(format!("Authorization: Basic {why}"));
    if value.len() > MAX_BASIC_LEN {
        return Err(unauthorized("credentials are too long"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| unauthorized("credentials are not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| unauthorized("credentials are not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| unauthorized("credentials hold no ':' between user and password"))?;
    if user.is_empty() {
        return Err(unauthorized("credentials name no user"));
    }
    Ok((user.to_string(), password.to_string()))
}

/// HMAC-SHA-256 under a key drawn at start: digests of names and passwords that nobody
/// without the key can compute or invert by guessing.
#[derive(Clone)]
pub struct Keyed([u8; 32]);

impl Default for Keyed {
    fn default() -> Self {
        Keyed(rand::random())
    }
}

impl Keyed {
    /// The digest of `parts`, each prefixed by its length (so no two lists of parts collide).
    pub fn digest(&self, parts: &[&[u8]]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// `digest(parts)` folded into `0..n`.
    pub fn index(&self, parts: &[&[u8]], n: usize) -> usize {
        let digest = self.digest(parts);
        (u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % n.max(1) as u64) as usize
    }
}

/// Credentials checked against their hash lately, by a keyed digest of the user and the
/// password: neither passwords nor plain digests of them are held. Also the checks running
/// now, so that requests showing the same credentials at once share one check.
#[derive(Default)]
pub struct Verified {
    key: Keyed,
    /// By digest: when last used, and who.
    entries: Mutex<HashMap<[u8; 32], Remembered>>,
    /// Checks running, by digest: `Some(passed)` once done.
    flights: Mutex<HashMap<[u8; 32], watch::Receiver<Option<bool>>>>,
}

/// A request's part in checking credentials: it checks them, or waits for the request
/// already checking the same ones.
pub enum Flight<'a> {
    Lead(Lead<'a>),
    Follow(watch::Receiver<Option<bool>>),
}

/// The request that checks credentials for every request showing them meanwhile. Dropped
/// without [`Lead::finish`] (its request cancelled, or refused before checking), it lets a
/// follower take over.
pub struct Lead<'a> {
    verified: &'a Verified,
    digest: [u8; 32],
    done: watch::Sender<Option<bool>>,
}

impl Lead<'_> {
    /// Tells the followers whether the credentials passed.
    pub fn finish(self, passed: bool) {
        let _ = self.done.send(Some(passed));
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.verified.flights.lock().remove(&self.digest);
    }
}

/// When credentials were last used, and whose they are.
type Remembered = (Instant, Arc<Principal>);

impl Verified {
    fn digest(&self, user: &str, password: &str) -> [u8; 32] {
        self.key.digest(&[user.as_bytes(), password.as_bytes()])
    }

    /// The user, if these credentials passed and were used within [`VERIFIED_FOR`]; a use
    /// keeps them remembered for another [`VERIFIED_FOR`].
    pub fn get(&self, user: &str, password: &str) -> Option<Arc<Principal>> {
        let digest = self.digest(user, password);
        let mut entries = self.entries.lock();
        let (at, principal) = entries.get_mut(&digest)?;
        if at.elapsed() >= VERIFIED_FOR {
            return None;
        }
        *at = Instant::now();
        Some(Arc::clone(principal))
    }

    pub fn remember(&self, user: &str, password: &str, principal: Arc<Principal>) {
        let digest = self.digest(user, password);
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_VERIFIED {
            entries.retain(|_, (at, _)| at.elapsed() < VERIFIED_FOR);
            if entries.len() >= MAX_VERIFIED {
                entries.clear();
            }
        }
        entries.insert(digest, (Instant::now(), principal));
    }

    /// Joins the check of these credentials running now, or leads a new one.
    pub fn board(&self, user: &str, password: &str) -> Flight<'_> {
        let digest = self.digest(user, password);
        let mut flights = self.flights.lock();
        if let Some(done) = flights.get(&digest) {
            return Flight::Follow(done.clone());
        }
        let (done, watching) = watch::channel(None);
        flights.insert(digest, watching);
        Flight::Lead(Lead {
            verified: self,
            digest,
            done,
        })
    }

    /// Keeps what `earlier` remembered (and its key, so digests still match) for users
    /// `now` maps to their current principal; forgets the others.
    pub fn carry_over(
        &mut self,
        earlier: &Verified,
        now: impl Fn(&Principal) -> Option<Arc<Principal>>,
    ) {
        self.key = earlier.key.clone();
        let entries = earlier.entries.lock();
        let mut kept = self.entries.lock();
        for (digest, (at, principal)) in entries.iter() {
            if let Some(current) = now(principal) {
                kept.insert(*digest, (*at, current));
            }
        }
    }

    /// Which of `n` things an unknown user's name is matched with (the same one every time).
    pub fn pick(&self, user: &str, n: usize) -> usize {
        self.key.index(&[b"decoy", user.as_bytes()], n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_permissions_areas_or_everything() {
        for good in ["*", "data:*", "search:*", "metrics:read", "cluster:write"] {
            assert!(valid_grant(good), "{good}");
        }
        for bad in ["data:wirte", "root", "backup:*", ":*", "data", ""] {
            assert!(!valid_grant(bad), "{bad}");
        }
        assert!(grant_allows("data:*", "data:manage"));
        assert!(!grant_allows("data:*", "search:execute"));
    }

    #[test]
    fn basic_credentials_are_decoded_or_refused() {
        let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            decode_basic(&encode("ann:pa:ss")).unwrap(),
            ("ann".into(), "pa:ss".into())
        );
        assert_eq!(
            decode_basic(&encode("ann:")).unwrap(),
            ("ann".into(), String::new())
        );
        for (value, why) in [
            ("%%%".to_string(), "base64"),
            (encode("no-colon"), "':'"),
            (encode(":password"), "no user"),
            (
                base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'x']),
                "UTF-8",
            ),
            ("A".repeat(10_000), "too long"),
        ] {
            let err = decode_basic(&value).unwrap_err();
            assert_eq!(err.status(), 401);
            assert!(err.message().contains(why), "{why}: {}", err.message());
        }
    }

    #[test]
    fn hashes_outside_the_bounds_are_refused() {
        let at_4 = bcrypt::hash("pw", 4).unwrap();
        assert!(check_hash(&at_4).is_ok());
        assert!(check_hash(&at_4.replacen("$2b$", "$2y$", 1)).is_ok());
        assert!(check_hash(&at_4.replacen("$2b$", "$2x$", 1)).is_err());
        let too_costly = at_4.replacen("$04$", "$13$", 1);
        assert!(check_hash(&too_costly).unwrap_err().contains("cost 13"));
        assert!(check_hash("$2b$12$...").is_err());
        assert!(check_hash("plain-text").is_err());
        // bcrypt's own parser skips empty parts: 60 bytes, but not a hash (and not ASCII).
        let odd = format!("$2b$04$\u{e9}{}$", "a".repeat(51));
        assert!(check_hash(&odd).is_err());
        let mut bad_char = at_4.clone();
        bad_char.replace_range(bad_char.len() - 1.., "!");
        assert!(check_hash(&bad_char).is_err());
    }

    #[test]
    fn verified_credentials_are_remembered_by_user_and_password() {
        let verified = Verified::default();
        let ann = Arc::new(Principal::user("ann", vec!["data:read".into()], None));
        verified.remember("ann", "right", Arc::clone(&ann));
        assert!(verified.get("ann", "right").is_some());
        assert!(verified.get("ann", "wrong").is_none());
        assert!(verified.get("bob", "right").is_none());
        // Length prefixes keep "an" + "nright" apart from "ann" + "right".
        assert!(verified.get("an", "nright").is_none());
    }
}
