//! Authentication: the users a broker knows (their SCRAM credentials, never a password), and
//! the SASL exchange of one connection (ARCHITECTURE.md, "Security").
//!
//! Users and ACLs change only through a [`Change`], checked first and then applied where it
//! cannot fail: on a single node to the state saved whole in `security` in the data directory
//! (a temporary file, fsynced, renamed over the old one, with a CRC); in a cluster through the
//! metadata log, so every node applies the same changes in the same order. A superuser named in
//! `[auth] superusers` without credentials gets them on start from RILL_SUPERUSER_PASSWORD (the
//! bootstrap). Requests are checked with [`Security::allows`] in the dispatcher.

use crate::config::AuthConfig;
use rill_protocol::acl::{self, Acl, AclFilter, Operation, ResourceType};
use rill_protocol::codec;
use rill_protocol::messages::{Quota, UserSummary};
use rill_protocol::scram::{self, ClientFirst, Credential, Mechanism};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Where a single node keeps its users and ACLs.
const SECURITY_FILE: &str = "security";
/// The file of users alone that came before it; read once and replaced.
const OLD_USERS_FILE: &str = "users";
/// PBKDF2 iterations of an unknown user's decoy credential (as a real one has).
const ITERATIONS: u32 = scram::DEFAULT_ITERATIONS;
/// Longest delay before a failed attempt is answered.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Longest an attempt from an address with failures waits for its turn; beyond it, refused.
const MAX_QUEUE: Duration = Duration::from_secs(30);
/// Failures from one address are forgotten after this long without another.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Users (their SCRAM credentials) and ACLs: what [`Change`]s build, saved whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    users: BTreeMap<String, Vec<Credential>>,
    acls: BTreeSet<Acl>,
    /// Per principal (`*`: everyone without one of their own).
    quotas: BTreeMap<String, Quota>,
}

/// One change to the users or ACLs, checked before it is made (`Security::check`); applying
/// it cannot fail, so every replica that applies it ends in the same state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    UpsertUser {
        user: String,
        credentials: Vec<Credential>,
    },
    DeleteUser {
        user: String,
    },
    /// A superuser's first credentials: made only if the user does not exist when applied, so
    /// every node of a cluster may propose it at every start.
    BootstrapUser {
        user: String,
        credentials: Vec<Credential>,
    },
    AddAcls(Vec<Acl>),
    RemoveAcls(Vec<Acl>),
    /// Sets (or with `None` removes) a principal's quota.
    SetQuota {
        principal: String,
        quota: Option<Quota>,
    },
}

impl SecurityState {
    /// Makes the change; how many users or entries it added, replaced or removed.
    pub fn apply(&mut self, change: &Change) -> u32 {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match change {
            Change::UpsertUser { user, credentials } => {
                self.users.insert(user.clone(), credentials.clone());
                1
            }
            Change::DeleteUser { user } => count(usize::from(self.users.remove(user).is_some())),
            Change::BootstrapUser { user, credentials } => {
                if self.users.contains_key(user) {
                    return 0;
                }
                self.users.insert(user.clone(), credentials.clone());
                1
            }
            Change::AddAcls(acls) => count(
                acls.iter()
                    .filter(|a| self.acls.insert((*a).clone()))
                    .count(),
            ),
            Change::RemoveAcls(acls) => count(acls.iter().filter(|a| self.acls.remove(*a)).count()),
            Change::SetQuota { principal, quota } => {
                let before = match quota {
                    Some(q) => self.quotas.insert(principal.clone(), *q),
                    None => self.quotas.remove(principal),
                };
                count(usize::from(before != *quota))
            }
        }
    }
}

/// Who a request is checked as: everything passes for the superusers of a broker with
/// authentication, and for everyone on an anonymous one; anyone else gets what the ACLs allow.
#[derive(Debug, Clone)]
pub enum Access {
    All,
    User(Arc<str>),
}

#[derive(Debug)]
pub struct Security {
    /// The single node's file; `None` in a cluster, whose metadata log holds the changes.
    path: Option<PathBuf>,
    enabled: bool,
    superusers: BTreeSet<String>,
    state: RwLock<Arc<SecurityState>>,
    /// Failed attempts per client address, and when the last one was.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Salts of users that do not exist are derived from this, so asking twice gives the same
    /// salt and a stranger cannot tell which users exist.
    secret: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Security {
    /// The users and ACLs of the data directory `dir` (a single node), or an empty set that the
    /// cluster's metadata log fills (`replicated`).
    pub fn open(dir: &Path, config: &AuthConfig, replicated: bool) -> anyhow::Result<Security> {
        let disk = crate::storage::Disk;
        let state = if replicated {
            SecurityState::default()
        } else {
            match crate::storage::load::<SecurityState>(&disk, dir, SECURITY_FILE)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                Some(state) => state,
                None => {
                    let old = dir.join(OLD_USERS_FILE);
                    match std::fs::read(&old) {
                        Ok(bytes) => SecurityState {
                            users: codec::decode(&bytes, "users file")
                                .map_err(|e| anyhow::anyhow!("{}: {e}", old.display()))?,
                            acls: BTreeSet::new(),
                            quotas: BTreeMap::new(),
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            SecurityState::default()
                        }
                        Err(e) => anyhow::bail!("cannot read {}: {e}", old.display()),
                    }
                }
            }
        };
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
        let security = Security {
            path: (!replicated).then(|| dir.join(SECURITY_FILE)),
            enabled: config.enabled,
            superusers: config.superusers.iter().cloned().collect(),
            state: RwLock::new(Arc::new(state)),
            failures: Mutex::new(HashMap::new()),
            secret,
        };
        if !replicated {
            while let Some(change) = security.bootstrap()? {
                security.commit(change.clone())?;
                if let Change::BootstrapUser { user, .. } = change {
                    tracing::info!(user = %user, "created superuser from RILL_SUPERUSER_PASSWORD");
                }
            }
            // Written in the new file's format once, then the old one goes.
            let old = dir.join(OLD_USERS_FILE);
            if old.exists() {
                security.persist(&security.read())?;
                std::fs::remove_file(&old)?;
            }
            if security.enabled && security.read().users.is_empty() {
                tracing::warn!(
                    "authentication is on but no user exists: nobody can connect; name a superuser in [auth] superusers and start once with RILL_SUPERUSER_PASSWORD"
                );
            }
        }
        Ok(security)
    }

    /// The change that gives the first superuser without credentials those of
    /// RILL_SUPERUSER_PASSWORD, if it is set.
    pub fn bootstrap(&self) -> anyhow::Result<Option<Change>> {
        let Ok(password) = std::env::var("RILL_SUPERUSER_PASSWORD") else {
            return Ok(None);
        };
        let state = self.read();
        let Some(user) = self
            .superusers
            .iter()
            .find(|u| !state.users.contains_key(*u))
        else {
            return Ok(None);
        };
        Ok(Some(Change::BootstrapUser {
            user: user.clone(),
            credentials: derive_all(&password)?,
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<SecurityState>> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<SecurityState>> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_superuser(&self, principal: &str) -> bool {
        self.superusers.contains(principal)
    }

    /// How requests of a connection that authenticated as `principal` are checked.
    pub fn access(&self, principal: Option<&Arc<str>>) -> Access {
        match principal {
            _ if !self.enabled => Access::All,
            Some(p) if self.is_superuser(p) => Access::All,
            Some(p) => Access::User(p.clone()),
            // Not reached: nothing but SASL is served before authentication.
            None => Access::User(Arc::from("")),
        }
    }

    /// Whether `access` may do `op` on the resource.
    pub fn allows(
        &self,
        access: &Access,
        resource: ResourceType,
        name: &str,
        op: Operation,
    ) -> bool {
        match access {
            Access::All => true,
            Access::User(p) => {
                let state = self.read();
                acl::authorize(state.acls.iter(), p, resource, name, op)
            }
        }
    }

    /// The credential to check `user` against: the stored one, or for an unknown user a decoy
    /// with a stable salt that no proof matches.
    fn credential(&self, user: &str, mechanism: Mechanism) -> (Credential, bool) {
        let found = self
            .read()
            .users
            .get(user)
            .and_then(|c| c.iter().find(|c| c.mechanism == mechanism).cloned());
        match found {
            Some(c) => (c, true),
            None => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret);
                let salt = ring::hmac::sign(&key, user.as_bytes()).as_ref()[..16].to_vec();
                let mut decoy = Credential::derive(mechanism, "", &salt, ITERATIONS);
                // Keys no password derives: every proof fails.
                decoy.stored_key.iter_mut().for_each(|b| *b = !*b);
                (decoy, false)
            }
        }
    }

    /// Checks a change against the current state: a user to create must not exist (or to
    /// change must), names and keys must be well formed. Returns what applying it now would
    /// count ([`SecurityState::apply`]).
    pub fn check(&self, change: &Change, must_exist: Option<bool>) -> Result<u32, UserError> {
        let exists = |user: &str| self.read().users.contains_key(user);
        match change {
            Change::UpsertUser { user, credentials } => {
                if user.is_empty() || user.len() > 255 || user.chars().any(|c| c.is_control()) {
                    return Err(UserError::Invalid(
                        "a user name is 1 to 255 characters, no control characters".into(),
                    ));
                }
                if credentials.is_empty() || !credentials.iter().all(Credential::is_well_formed) {
                    return Err(UserError::Invalid(format!(
                        "credentials must be well-formed SCRAM keys with at least {} iterations",
                        scram::MIN_ITERATIONS
                    )));
                }
                match (must_exist, exists(user)) {
                    (Some(true), false) => Err(UserError::Unknown(user.clone())),
                    (Some(false), true) => Err(UserError::Exists(user.clone())),
                    _ => Ok(1),
                }
            }
            Change::DeleteUser { user } if !exists(user) => Err(UserError::Unknown(user.clone())),
            Change::DeleteUser { .. } | Change::BootstrapUser { .. } => Ok(1),
            Change::SetQuota { principal, quota } => {
                if principal.is_empty() {
                    return Err(UserError::Invalid(
                        "a quota needs a principal (a user name, or * for everyone)".into(),
                    ));
                }
                if let Some(q) = quota
                    && [
                        q.produce_bytes_per_sec,
                        q.fetch_bytes_per_sec,
                        q.requests_per_sec,
                    ]
                    .contains(&Some(0))
                {
                    return Err(UserError::Invalid(
                        "a rate of 0 would stop the principal; delete the user or deny it by ACL instead"
                            .into(),
                    ));
                }
                Ok(1)
            }
            Change::AddAcls(acls) | Change::RemoveAcls(acls) => {
                acls.iter()
                    .try_for_each(Acl::validate)
                    .map_err(UserError::Invalid)?;
                // What applying it would count: the distinct entries it adds or removes.
                let state = self.read();
                let distinct: BTreeSet<&Acl> = acls.iter().collect();
                let adding = matches!(change, Change::AddAcls(_));
                let n = distinct
                    .into_iter()
                    .filter(|a| state.acls.contains(*a) != adding)
                    .count();
                Ok(u32::try_from(n).unwrap_or(u32::MAX))
            }
        }
    }

    /// Makes a checked change on a single node: saved (synced) before it takes effect.
    /// Returns what [`SecurityState::apply`] counted.
    pub fn commit(&self, change: Change) -> Result<u32, UserError> {
        let mut state = self.write();
        let mut next = SecurityState::clone(&state);
        let n = next.apply(&change);
        self.persist(&next)?;
        *state = Arc::new(next);
        Ok(n)
    }

    /// Takes the state the cluster's metadata log built (saved there already).
    pub fn replace(&self, state: Arc<SecurityState>) {
        *self.write() = state;
    }

    pub fn list(&self) -> Vec<UserSummary> {
        self.read()
            .users
            .iter()
            .map(|(user, creds)| UserSummary {
                user: user.clone(),
                mechanisms: creds.iter().map(|c| c.mechanism).collect(),
                superuser: self.is_superuser(user),
            })
            .collect()
    }

    /// The quota that applies to `principal`: its own, or else the one for `*`.
    pub fn quota_for(&self, principal: &str) -> Option<Quota> {
        let state = self.read();
        if state.quotas.is_empty() {
            return None;
        }
        state
            .quotas
            .get(principal)
            .or_else(|| state.quotas.get("*"))
            .copied()
    }

    pub fn quotas(&self) -> Vec<(String, Quota)> {
        self.read()
            .quotas
            .iter()
            .map(|(p, q)| (p.clone(), *q))
            .collect()
    }

    pub fn acls(&self, filter: &AclFilter) -> Vec<Acl> {
        self.read()
            .acls
            .iter()
            .filter(|a| filter.matches(a))
            .cloned()
            .collect()
    }

    fn persist(&self, state: &SecurityState) -> Result<(), UserError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let (dir, name) = (
            path.parent().unwrap_or(Path::new(".")),
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(SECURITY_FILE),
        );
        crate::storage::save(&crate::storage::Disk, dir, name, state, true).map_err(|source| {
            UserError::Io {
                path: path.clone(),
                source,
            }
        })
    }

    /// How long to hold the answer to a failed attempt from `ip`; counts this failure. Each
    /// failure in a row adds a delay that doubles, 100 ms to 5 s, after the answer of the one
    /// before: attempts on parallel connections queue up rather than overlap.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        failures.retain(|_, (_, due)| now.saturating_duration_since(*due) < FORGET_AFTER);
        let entry = failures.entry(ip).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let doubled = 1u32
            .checked_shl(entry.0.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let delay = (Duration::from_millis(100) * doubled).min(MAX_DELAY);
        entry.1 = entry.1.max(now) + delay;
        entry.1.saturating_duration_since(now)
    }

    /// Whether a new attempt from `ip` may start, and after how long: an address with recent
    /// failures waits until the last one's answer is due, so parallel connections cannot guess
    /// faster than one at a time. `None`: the queue is longer than 30 s; refuse the attempt.
    pub fn admit(&self, ip: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let wait = failures.get(&ip).map_or(Duration::ZERO, |(_, due)| {
            due.saturating_duration_since(Instant::now())
        });
        (wait <= MAX_QUEUE).then_some(wait)
    }

    /// A successful login clears the address's failures.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

/// Credentials for `password` with every mechanism, fresh salts.
pub fn derive_all(password: &str) -> anyhow::Result<Vec<Credential>> {
    scram::credentials_for(password).ok_or_else(|| anyhow::anyhow!("no randomness from the system"))
}

/// One connection's SASL exchange.
#[derive(Debug, Default)]
pub enum Sasl {
    /// Waiting for SaslHandshake.
    #[default]
    Start,
    /// Mechanism chosen; waiting for client-first.
    Chosen(Mechanism),
    /// PLAIN chosen (on a TLS connection only); waiting for user and password.
    Plain,
    /// Server-first sent; waiting for client-final.
    Challenged {
        first: Box<ClientFirst>,
        server_first: String,
        credential: Box<Credential>,
    },
    /// Authenticated as this principal.
    Done(String),
}

/// Why a SASL step failed; every failure ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum SaslError {
    #[error("{0}")]
    OutOfTurn(&'static str),
    #[error("authentication failed for {user:?}: {reason}")]
    Failed { user: String, reason: String },
}

impl Sasl {
    /// Takes the client's message of the step the exchange is at; the server's answer, and
    /// whether the connection is now authenticated.
    pub fn step(&mut self, users: &Security, message: &[u8]) -> Result<(Vec<u8>, bool), SaslError> {
        match std::mem::take(self) {
            Sasl::Chosen(mechanism) => {
                let first = scram::parse_client_first(message).map_err(|e| SaslError::Failed {
                    user: String::new(),
                    reason: e.to_string(),
                })?;
                let (credential, _) = users.credential(&first.user, mechanism);
                let nonce = scram::nonce().ok_or(SaslError::OutOfTurn("no randomness"))?;
                let server_first = scram::server_first(&first, &nonce, &credential);
                let reply = server_first.clone().into_bytes();
                *self = Sasl::Challenged {
                    first: Box::new(first),
                    server_first,
                    credential: Box::new(credential),
                };
                Ok((reply, false))
            }
            Sasl::Challenged {
                first,
                server_first,
                credential,
            } => match scram::verify_client_final(&first, &server_first, &credential, message) {
                Ok(server_final) => {
                    *self = Sasl::Done(first.user.clone());
                    Ok((server_final.into_bytes(), true))
                }
                Err(e) => Err(SaslError::Failed {
                    user: first.user.clone(),
                    reason: e.to_string(),
                }),
            },
            Sasl::Plain => {
                let (user, password) =
                    scram::parse_plain(message).map_err(|e| SaslError::Failed {
                        user: String::new(),
                        reason: e.to_string(),
                    })?;
                // The stored keys (or an unknown user's decoy) are derived again either way, so
                // an unknown user takes as long as a wrong password.
                let (credential, _) = users.credential(&user, Mechanism::ScramSha256);
                if !credential.matches_password(&password) {
                    return Err(SaslError::Failed {
                        user,
                        reason: scram::ScramError::Proof.to_string(),
                    });
                }
                *self = Sasl::Done(user);
                Ok((Vec::new(), true))
            }
            Sasl::Start => Err(SaslError::OutOfTurn(
                "SaslAuthenticate before SaslHandshake",
            )),
            done @ Sasl::Done(_) => {
                *self = done;
                Err(SaslError::OutOfTurn("already authenticated"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_protocol::scram::ClientExchange;

    fn users(dir: &Path) -> Security {
        let config = AuthConfig {
            enabled: true,
            superusers: vec!["admin".into()],
        };
        Security::open(dir, &config, false).unwrap()
    }

    fn login(
        users: &Security,
        m: Mechanism,
        user: &str,
        password: &str,
    ) -> Result<String, SaslError> {
        let mut client = ClientExchange::new(m, user, password, "fyko+d2lbbFgONRv9qkxdawL");
        let mut sasl = Sasl::Chosen(m);
        let (server_first, _) = sasl.step(users, client.client_first().as_bytes())?;
        let fin = client.client_final(&server_first).unwrap();
        let (server_final, done) = sasl.step(users, fin.as_bytes())?;
        assert!(done);
        client.verify_server_final(&server_final).unwrap();
        match sasl {
            Sasl::Done(p) => Ok(p),
            other => panic!("not done: {other:?}"),
        }
    }

    impl Security {
        fn upsert(
            &self,
            user: &str,
            password: &str,
            must_exist: Option<bool>,
        ) -> Result<u32, UserError> {
            let change = Change::UpsertUser {
                user: user.into(),
                credentials: derive_all(password).unwrap(),
            };
            self.check(&change, must_exist)?;
            self.commit(change)
        }
    }

    #[test]
    fn users_log_in_survive_a_reopen_and_strangers_look_like_wrong_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        u.upsert("alice", "secret", Some(false)).unwrap();
        for m in Mechanism::ALL {
            assert_eq!(login(&u, m, "alice", "secret").unwrap(), "alice");
            assert!(matches!(
                login(&u, m, "alice", "guess"),
                Err(SaslError::Failed { .. })
            ));
            assert!(matches!(
                login(&u, m, "mallory", "secret"),
                Err(SaslError::Failed { .. })
            ));
        }
        // An unknown user's salt is stable (asking twice does not tell it apart).
        let a = u.credential("nobody", Mechanism::ScramSha256).0.salt;
        assert_eq!(a, u.credential("nobody", Mechanism::ScramSha256).0.salt);
        assert!(matches!(
            u.upsert("alice", "x", Some(false)),
            Err(UserError::Exists(_))
        ));
        drop(u);
        let u = users(dir.path());
        assert_eq!(
            login(&u, Mechanism::ScramSha512, "alice", "secret").unwrap(),
            "alice"
        );
        let delete = Change::DeleteUser {
            user: "alice".into(),
        };
        u.check(&delete, None).unwrap();
        u.commit(delete.clone()).unwrap();
        assert!(matches!(u.check(&delete, None), Err(UserError::Unknown(_))));
        assert!(login(&u, Mechanism::ScramSha256, "alice", "secret").is_err());
        assert!(
            users(dir.path()).list().is_empty(),
            "the deletion was persisted"
        );
    }

    #[test]
    fn acls_decide_for_users_only_and_survive_a_reopen() {
        use rill_protocol::acl::{PatternType, Permission};
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        let read = Acl {
            principal: "alice".into(),
            resource: ResourceType::Topic,
            pattern: PatternType::Prefix,
            name: "orders.".into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        };
        let add = Change::AddAcls(vec![read.clone(), read.clone()]);
        u.check(&add, None).unwrap();
        assert_eq!(u.commit(add).unwrap(), 1, "an entry is kept once");
        let alice = u.access(Some(&Arc::from("alice")));
        let admin = u.access(Some(&Arc::from("admin")));
        let allows = |u: &Security, a: &Access, topic: &str| {
            u.allows(a, ResourceType::Topic, topic, Operation::Read)
        };
        assert!(allows(&u, &alice, "orders.eu"));
        assert!(!allows(&u, &alice, "payments"));
        assert!(allows(&u, &admin, "payments"), "a superuser passes");
        drop(u);
        let u = users(dir.path());
        assert!(allows(&u, &alice, "orders.eu"), "the entry was saved");
        assert_eq!(u.acls(&AclFilter::default()), vec![read.clone()]);
        let mut bad = read.clone();
        bad.name.clear();
        bad.pattern = PatternType::Literal;
        assert!(matches!(
            u.check(&Change::AddAcls(vec![bad]), None),
            Err(UserError::Invalid(_))
        ));
        assert_eq!(u.commit(Change::RemoveAcls(vec![read])).unwrap(), 1);
        assert!(!allows(&users(dir.path()), &alice, "orders.eu"));
        // An anonymous broker checks nothing.
        let open = Security::open(dir.path(), &AuthConfig::default(), false).unwrap();
        assert!(allows(&open, &open.access(None), "payments"));
    }

    #[test]
    fn failures_from_one_address_are_answered_ever_later() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // Eight failures at once (parallel connections): their answers queue, each delay
        // doubling, capped at 5 s: 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 11.3, 16.3 s from now.
        let waits: Vec<Duration> = (0..8).map(|_| u.failed(ip)).collect();
        let expected_ms = [100u64, 300, 700, 1500, 3100, 6300, 11300, 16300];
        for (wait, ms) in waits.iter().zip(expected_ms) {
            let ms = Duration::from_millis(ms);
            assert!(
                *wait <= ms && ms - *wait < Duration::from_millis(50),
                "{waits:?}"
            );
        }
        // A new attempt from that address waits for its turn (after the last answer); one
        // whose turn is over 30 s away is refused outright.
        let wait = u.admit(ip).unwrap();
        assert!(wait > Duration::from_secs(16) && wait <= Duration::from_millis(16300));
        for _ in 0..3 {
            u.failed(ip);
        }
        assert_eq!(u.admit(ip), None, "31.3 s of queue");
        assert_eq!(u.admit("10.0.0.3".parse().unwrap()), Some(Duration::ZERO));
        let other = u.failed("10.0.0.2".parse().unwrap());
        assert!(
            other <= Duration::from_millis(100),
            "another address is not held up"
        );
        u.succeeded(ip);
        assert!(u.failed(ip) <= Duration::from_millis(100));
    }
}
