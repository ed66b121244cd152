//! Authentication: the users a broker knows (their SCRAM credentials, never a password), and
//! the SASL exchange of one connection (ARCHITECTURE.md, "Security").
//!
//! Users live in `users` in the data directory, written whole to a temporary file, fsynced and
//! renamed over the old one. A superuser named in `[auth] superusers` without credentials gets
//! them on start from RILL_SUPERUSER_PASSWORD (the bootstrap).

use crate::config::AuthConfig;
use rill_protocol::codec;
use rill_protocol::messages::UserSummary;
use rill_protocol::scram::{self, ClientFirst, Credential, Mechanism};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const USERS_FILE: &str = "users";
/// PBKDF2 iterations of an unknown user's decoy credential (as a real one has).
const ITERATIONS: u32 = scram::DEFAULT_ITERATIONS;
/// Longest delay before a failed attempt is answered.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// Longest an attempt from an address with failures waits for its turn; beyond it, refused.
const MAX_QUEUE: Duration = Duration::from_secs(30);
/// Failures from one address are forgotten after this long without another.
const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    users: BTreeMap<String, Vec<Credential>>,
}

#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    enabled: bool,
    superusers: BTreeSet<String>,
    users: Mutex<BTreeMap<String, Vec<Credential>>>,
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

impl Users {
    pub fn open(dir: &Path, config: &AuthConfig) -> anyhow::Result<Users> {
        let path = dir.join(USERS_FILE);
        let stored: Stored = match std::fs::read(&path) {
            Ok(bytes) => codec::decode(&bytes, "users file")
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
        let users = Users {
            path,
            enabled: config.enabled,
            superusers: config.superusers.iter().cloned().collect(),
            users: Mutex::new(stored.users),
            failures: Mutex::new(HashMap::new()),
            secret,
        };
        if let Ok(password) = std::env::var("RILL_SUPERUSER_PASSWORD") {
            for name in &config.superusers {
                if users.lock().contains_key(name) {
                    continue;
                }
                let credentials = derive_all(&password)?;
                users.upsert(name, credentials, Some(false))?;
                tracing::info!(user = %name, "created superuser from RILL_SUPERUSER_PASSWORD");
            }
        }
        if users.enabled && users.lock().is_empty() {
            tracing::warn!(
                "authentication is on but no user exists: nobody can connect; name a superuser in [auth] superusers and start once with RILL_SUPERUSER_PASSWORD"
            );
        }
        Ok(users)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Credential>>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_superuser(&self, principal: &str) -> bool {
        self.superusers.contains(principal)
    }

    /// The credential to check `user` against: the stored one, or for an unknown user a decoy
    /// with a stable salt that no proof matches.
    fn credential(&self, user: &str, mechanism: Mechanism) -> (Credential, bool) {
        let found = self
            .lock()
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

    pub fn upsert(
        &self,
        user: &str,
        credentials: Vec<Credential>,
        must_exist: Option<bool>,
    ) -> Result<(), UserError> {
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
        let mut users = self.lock();
        match (must_exist, users.contains_key(user)) {
            (Some(true), false) => return Err(UserError::Unknown(user.into())),
            (Some(false), true) => return Err(UserError::Exists(user.into())),
            _ => {}
        }
        let mut next = users.clone();
        next.insert(user.to_string(), credentials);
        self.persist(&next)?;
        *users = next;
        Ok(())
    }

    pub fn delete(&self, user: &str) -> Result<(), UserError> {
        let mut users = self.lock();
        if !users.contains_key(user) {
            return Err(UserError::Unknown(user.into()));
        }
        let mut next = users.clone();
        next.remove(user);
        self.persist(&next)?;
        *users = next;
        Ok(())
    }

    pub fn list(&self) -> Vec<UserSummary> {
        self.lock()
            .iter()
            .map(|(user, creds)| UserSummary {
                user: user.clone(),
                mechanisms: creds.iter().map(|c| c.mechanism).collect(),
                superuser: self.is_superuser(user),
            })
            .collect()
    }

    fn persist(&self, users: &BTreeMap<String, Vec<Credential>>) -> Result<(), UserError> {
        let io = |source| UserError::Io {
            path: self.path.clone(),
            source,
        };
        let mut buf = bytes::BytesMut::new();
        codec::encode(
            &Stored {
                users: users.clone(),
            },
            &mut buf,
        );
        let tmp = self.path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut &file, &buf).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
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
    pub fn step(&mut self, users: &Users, message: &[u8]) -> Result<(Vec<u8>, bool), SaslError> {
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

    fn users(dir: &Path) -> Users {
        let config = AuthConfig {
            enabled: true,
            superusers: vec!["admin".into()],
        };
        Users::open(dir, &config).unwrap()
    }

    fn login(users: &Users, m: Mechanism, user: &str, password: &str) -> Result<String, SaslError> {
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

    #[test]
    fn users_log_in_survive_a_reopen_and_strangers_look_like_wrong_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        u.upsert("alice", derive_all("secret").unwrap(), Some(false))
            .unwrap();
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
            u.upsert("alice", derive_all("x").unwrap(), Some(false)),
            Err(UserError::Exists(_))
        ));
        drop(u);
        let u = users(dir.path());
        assert_eq!(
            login(&u, Mechanism::ScramSha512, "alice", "secret").unwrap(),
            "alice"
        );
        u.delete("alice").unwrap();
        assert!(login(&u, Mechanism::ScramSha256, "alice", "secret").is_err());
        assert!(
            users(dir.path()).list().is_empty(),
            "the deletion was persisted"
        );
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
