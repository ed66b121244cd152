//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677): the messages of both sides, parsed
//! and made here, and the keys a server stores instead of a password. No I/O and no state
//! beyond what the caller carries from one message to the next, so the parsers can be fuzzed
//! and both the broker and the client use the same code.
//!
//! Supported: no channel binding (`n,,` or `y,,` GS2 headers), no authorization identity other
//! than the user itself, no mandatory extensions. User names and passwords are used as given
//! (no SASLprep), so non-ASCII names must be written the same way on both sides.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;

/// Fewest PBKDF2 iterations accepted (RFC 7677's minimum), by a client from a server and by a
/// server for a stored credential.
pub const MIN_ITERATIONS: u32 = 4096;
/// Most iterations a client computes for a server: a hostile server cannot make it spin.
pub const MAX_ITERATIONS: u32 = 1 << 20;
/// PBKDF2 iterations of credentials made by [`credentials_for`].
pub const DEFAULT_ITERATIONS: u32 = 8192;

/// Credentials for `password` with every mechanism, each with a fresh random salt (what a
/// client sends to create a user, so the password never leaves it). `None` if the system has
/// no randomness to give.
pub fn credentials_for(password: &str) -> Option<Vec<Credential>> {
    let random = ring::rand::SystemRandom::new();
    Mechanism::ALL
        .into_iter()
        .map(|m| {
            let mut salt = [0u8; 16];
            ring::rand::SecureRandom::fill(&random, &mut salt).ok()?;
            Some(Credential::derive(m, password, &salt, DEFAULT_ITERATIONS))
        })
        .collect()
}

/// Longest SCRAM message either side accepts.
pub const MAX_MESSAGE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mechanism {
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 2] = [Mechanism::ScramSha256, Mechanism::ScramSha512];

    /// The SASL name: `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Mechanism::ScramSha256 => hmac::HMAC_SHA256,
            Mechanism::ScramSha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Mechanism::ScramSha256 => &digest::SHA256,
            Mechanism::ScramSha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Mechanism::ScramSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Mechanism::ScramSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn key_len(self) -> usize {
        self.digest().output_len()
    }

    fn mac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), key), data)
            .as_ref()
            .to_vec()
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest(), data).as_ref().to_vec()
    }

    fn salted_password(self, password: &str, salt: &[u8], iterations: NonZeroU32) -> Vec<u8> {
        let mut out = vec![0u8; self.key_len()];
        pbkdf2::derive(
            self.pbkdf2(),
            iterations,
            salt,
            password.as_bytes(),
            &mut out,
        );
        out
    }
}

/// What a server keeps for one user and mechanism: enough to check a proof and to prove itself,
/// not enough to log in as the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub mechanism: Mechanism,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Credential {
    /// The credential for `password` with this salt and iteration count (at least
    /// [`MIN_ITERATIONS`]; fewer are raised to it).
    pub fn derive(mechanism: Mechanism, password: &str, salt: &[u8], iterations: u32) -> Self {
        let iterations = iterations.max(MIN_ITERATIONS);
        let n = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        let salted = mechanism.salted_password(password, salt, n);
        let client_key = mechanism.mac(&salted, b"Client Key");
        Credential {
            mechanism,
            salt: salt.to_vec(),
            iterations,
            stored_key: mechanism.hash(&client_key),
            server_key: mechanism.mac(&salted, b"Server Key"),
        }
    }

    /// Whether `password` is the one this credential was made from (for SASL PLAIN, which
    /// sends the password itself): derives the keys again with the stored salt and iterations.
    pub fn matches_password(&self, password: &str) -> bool {
        let again = Credential::derive(self.mechanism, password, &self.salt, self.iterations);
        constant_time_eq(&again.stored_key, &self.stored_key)
    }

    /// Whether the parts have the sizes its mechanism makes (a damaged store is refused).
    pub fn is_well_formed(&self) -> bool {
        let n = self.mechanism.key_len();
        self.stored_key.len() == n
            && self.server_key.len() == n
            && !self.salt.is_empty()
            && self.iterations >= MIN_ITERATIONS
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("an authorization identity other than the user is not supported")]
    Authzid,
    #[error("the nonce does not continue this exchange")]
    Nonce,
    #[error("the channel-binding data differs from the first message's header")]
    Binding,
    #[error("the proof is wrong (wrong password or unknown user)")]
    Proof,
    #[error("the server's signature is wrong: it does not know this user's password")]
    ServerSignature,
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("the server asks for {0} iterations (accepted: {MIN_ITERATIONS} to {MAX_ITERATIONS})")]
    Iterations(u64),
}

/// The one message of SASL PLAIN (RFC 4616): `[authzid] NUL user NUL password`, UTF-8. An
/// authorization identity other than the user is refused, as with SCRAM.
pub fn parse_plain(msg: &[u8]) -> Result<(String, String), ScramError> {
    if msg.len() > MAX_MESSAGE {
        return Err(ScramError::Malformed("longer than a SASL message may be"));
    }
    let text = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ScramError::Malformed(
            "PLAIN needs authzid, user and password separated by NUL",
        ));
    };
    if user.is_empty() || password.is_empty() {
        return Err(ScramError::Malformed("PLAIN needs a user and a password"));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(ScramError::Authzid);
    }
    Ok((user.to_string(), password.to_string()))
}

/// A client's first message, as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The GS2 header (`n,,` or `y,,`), echoed base64-encoded in the final message.
    pub gs2_header: String,
    pub user: String,
    pub nonce: String,
    /// The message without its GS2 header: part of what both proofs sign.
    pub bare: String,
}

/// Parses a client-first message.
pub fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, ScramError> {
    let msg = text(msg)?;
    let (cbind, rest) = msg
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    match cbind {
        "n" | "y" => {}
        c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad channel-binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let gs2_len = cbind
        .len()
        .checked_add(authzid.len())
        .and_then(|n| n.checked_add(2))
        .ok_or(ScramError::Malformed("too long"))?;
    let gs2_header = msg
        .get(..gs2_len)
        .ok_or(ScramError::Malformed("no GS2 header"))?;
    let mut attrs = attributes(bare);
    let user = match attrs.next() {
        Some(("m", _)) => return Err(ScramError::Malformed("mandatory extension")),
        Some(("n", v)) => unescape_name(v)?,
        _ => return Err(ScramError::Malformed("no user name")),
    };
    if user.is_empty() {
        return Err(ScramError::Malformed("empty user name"));
    }
    if !authzid.is_empty()
        && authzid.strip_prefix("a=").map(unescape_name) != Some(Ok(user.clone()))
    {
        return Err(ScramError::Authzid);
    }
    let nonce = match attrs.next() {
        Some(("r", v)) if valid_nonce(v) => v.to_string(),
        _ => return Err(ScramError::Malformed("no client nonce")),
    };
    // Optional extensions (none are known) must at least be `x=value`.
    if bare.split(',').skip(2).any(|a| {
        a.split_once('=')
            .is_none_or(|(k, _)| k.len() != 1 || !k.bytes().all(|b| b.is_ascii_alphabetic()))
    }) {
        return Err(ScramError::Malformed("bad extension"));
    }
    Ok(ClientFirst {
        gs2_header: gs2_header.to_string(),
        user,
        nonce,
        bare: bare.to_string(),
    })
}

/// The server's first message: the full nonce (the client's, then `server_nonce`), the user's
/// salt and iteration count.
pub fn server_first(first: &ClientFirst, server_nonce: &str, credential: &Credential) -> String {
    format!(
        "r={}{},s={},i={}",
        first.nonce,
        server_nonce,
        B64.encode(&credential.salt),
        credential.iterations
    )
}

/// Checks a client-final message against `credential`; on success, the server-final message
/// (its signature, which proves to the client that the server knows the credential).
pub fn verify_client_final(
    first: &ClientFirst,
    server_first: &str,
    credential: &Credential,
    msg: &[u8],
) -> Result<String, ScramError> {
    let msg = text(msg)?;
    let (without_proof, proof) = msg
        .rsplit_once(",p=")
        .ok_or(ScramError::Malformed("no proof"))?;
    let mut attrs = attributes(without_proof);
    match attrs.next() {
        Some(("c", v)) if v == B64.encode(&first.gs2_header) => {}
        Some(("c", _)) => return Err(ScramError::Binding),
        _ => return Err(ScramError::Malformed("no channel binding")),
    }
    let expected_nonce = attributes(server_first)
        .find(|(k, _)| *k == "r")
        .map(|(_, v)| v)
        .unwrap_or_default();
    match attrs.next() {
        Some(("r", v)) if v == expected_nonce && !v.is_empty() => {}
        Some(("r", _)) => return Err(ScramError::Nonce),
        _ => return Err(ScramError::Malformed("no nonce")),
    }
    let proof = B64
        .decode(proof)
        .map_err(|_| ScramError::Malformed("proof is not base64"))?;
    let m = credential.mechanism;
    let auth = format!("{},{},{}", first.bare, server_first, without_proof);
    let signature = m.mac(&credential.stored_key, auth.as_bytes());
    if proof.len() != signature.len() {
        return Err(ScramError::Proof);
    }
    let client_key = xor(&proof, &signature);
    if !constant_time_eq(&m.hash(&client_key), &credential.stored_key) {
        return Err(ScramError::Proof);
    }
    Ok(format!(
        "v={}",
        B64.encode(m.mac(&credential.server_key, auth.as_bytes()))
    ))
}

/// A client's side of one exchange.
#[derive(Debug, Clone)]
pub struct ClientExchange {
    mechanism: Mechanism,
    user: String,
    password: String,
    nonce: String,
    /// Set once the final message is made: the signature the server must answer with.
    expected_server_signature: Option<Vec<u8>>,
}

impl ClientExchange {
    /// `nonce`: fresh random printable characters (no comma), at least 16 of them.
    pub fn new(mechanism: Mechanism, user: &str, password: &str, nonce: &str) -> Self {
        ClientExchange {
            mechanism,
            user: user.to_string(),
            password: password.to_string(),
            nonce: nonce.to_string(),
            expected_server_signature: None,
        }
    }

    fn bare(&self) -> String {
        format!("n={},r={}", escape_name(&self.user), self.nonce)
    }

    pub fn client_first(&self) -> String {
        format!("n,,{}", self.bare())
    }

    /// The final message answering the server's first.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let server_first = text(server_first)?;
        if let Some(e) = server_first.strip_prefix("e=") {
            return Err(ScramError::Refused(e.to_string()));
        }
        let mut attrs = attributes(server_first);
        let nonce = match attrs.next() {
            Some(("r", v))
                if v.starts_with(&self.nonce) && v.len() > self.nonce.len() && valid_nonce(v) =>
            {
                v
            }
            _ => return Err(ScramError::Nonce),
        };
        let salt = match attrs.next() {
            Some(("s", v)) => B64
                .decode(v)
                .map_err(|_| ScramError::Malformed("salt is not base64"))?,
            _ => return Err(ScramError::Malformed("no salt")),
        };
        let iterations = match attrs.next() {
            Some(("i", v)) => v
                .parse::<u64>()
                .map_err(|_| ScramError::Malformed("iteration count is not a number"))?,
            _ => return Err(ScramError::Malformed("no iteration count")),
        };
        let n = u32::try_from(iterations)
            .ok()
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
            .and_then(NonZeroU32::new)
            .ok_or(ScramError::Iterations(iterations))?;
        let m = self.mechanism;
        let salted = m.salted_password(&self.password, &salt, n);
        let client_key = m.mac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c={},r={}", B64.encode("n,,"), nonce);
        let auth = format!("{},{},{}", self.bare(), server_first, without_proof);
        let proof = xor(&client_key, &m.mac(&stored_key, auth.as_bytes()));
        let server_key = m.mac(&salted, b"Server Key");
        self.expected_server_signature = Some(m.mac(&server_key, auth.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server's final message: it must prove it knows the credential.
    pub fn verify_server_final(&self, msg: &[u8]) -> Result<(), ScramError> {
        let msg = text(msg)?;
        if let Some(e) = msg.strip_prefix("e=") {
            return Err(ScramError::Refused(e.to_string()));
        }
        let got = msg
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v.split(',').next().unwrap_or_default()).ok())
            .ok_or(ScramError::Malformed("no server signature"))?;
        match &self.expected_server_signature {
            Some(expected) if constant_time_eq(expected, &got) => Ok(()),
            _ => Err(ScramError::ServerSignature),
        }
    }
}

fn text(msg: &[u8]) -> Result<&str, ScramError> {
    if msg.len() > MAX_MESSAGE {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))
}

/// `k=v` attributes separated by commas (a value may hold `=`, as base64 does).
fn attributes(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(',').map(|a| a.split_once('=').unwrap_or((a, "")))
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// `=2C` and `=3D` stand for `,` and `=` in a SCRAM name; any other `=` is malformed.
fn unescape_name(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((head, tail)) = rest.split_once('=') {
        out.push_str(head);
        match tail.get(..2) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name")),
        }
        rest = tail.get(2..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

fn escape_name(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// A fresh nonce for either side: 24 random bytes as base64 (printable, no comma). `None` if
/// the system has no randomness to give.
pub fn nonce() -> Option<String> {
    let mut raw = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).ok()?;
    Some(base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw))
}

/// Equality that takes as long whatever the contents (for secrets and proofs).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credential() -> Credential {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Credential::derive(Mechanism::ScramSha256, "pencil", &salt, 4096)
    }

    #[test]
    fn plain_names_a_user_and_a_password_checked_against_the_stored_keys() {
        assert_eq!(
            parse_plain(b"\0user\0pencil").unwrap(),
            ("user".into(), "pencil".into())
        );
        assert_eq!(parse_plain(b"user\0user\0pencil").unwrap().0, "user");
        assert_eq!(
            parse_plain(b"admin\0user\0pencil"),
            Err(ScramError::Authzid)
        );
        for bad in [
            &b"user\0pencil"[..],
            b"\0\0pencil",
            b"\0user\0",
            b"\0u\0p\0x",
            b"\xff\0u\0p",
        ] {
            assert!(
                matches!(parse_plain(bad), Err(ScramError::Malformed(_))),
                "{bad:?}"
            );
        }
        let c = rfc_credential();
        assert!(c.matches_password("pencil"));
        assert!(!c.matches_password("pencil2"));
    }

    #[test]
    fn both_sides_reproduce_the_rfc_7677_exchange() {
        let mut client =
            ClientExchange::new(Mechanism::ScramSha256, "user", "pencil", CLIENT_NONCE);
        assert_eq!(client.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let first = parse_client_first(client.client_first().as_bytes()).unwrap();
        assert_eq!(
            (first.user.as_str(), first.gs2_header.as_str()),
            ("user", "n,,")
        );
        let credential = rfc_credential();
        assert_eq!(
            server_first(&first, SERVER_NONCE, &credential),
            SERVER_FIRST
        );
        assert_eq!(
            client.client_final(SERVER_FIRST.as_bytes()).unwrap(),
            CLIENT_FINAL
        );
        let reply = verify_client_final(&first, SERVER_FIRST, &credential, CLIENT_FINAL.as_bytes())
            .unwrap();
        assert_eq!(reply, SERVER_FINAL);
        client.verify_server_final(reply.as_bytes()).unwrap();
    }

    #[test]
    fn wrong_passwords_replays_and_tampering_are_refused() {
        let credential = rfc_credential();
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        // Wrong password: the proof does not check.
        let mut wrong =
            ClientExchange::new(Mechanism::ScramSha256, "user", "pencils", CLIENT_NONCE);
        let bad = wrong.client_final(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            verify_client_final(&first, SERVER_FIRST, &credential, bad.as_bytes()),
            Err(ScramError::Proof)
        );
        // A recorded final message replayed into a new exchange (a new server nonce) fails on
        // the nonce; with the nonce rewritten, on the proof.
        let fresh_first = server_first(&first, "another-server-nonce", &credential);
        assert_eq!(
            verify_client_final(&first, &fresh_first, &credential, CLIENT_FINAL.as_bytes()),
            Err(ScramError::Nonce)
        );
        let rewritten =
            CLIENT_FINAL.replace("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", "another-server-nonce");
        assert_eq!(
            verify_client_final(&first, &fresh_first, &credential, rewritten.as_bytes()),
            Err(ScramError::Proof)
        );
        // Truncated: no proof at all, or half of one.
        for cut in [10, CLIENT_FINAL.len() - 20] {
            assert!(
                verify_client_final(
                    &first,
                    SERVER_FIRST,
                    &credential,
                    &CLIENT_FINAL.as_bytes()[..cut]
                )
                .is_err()
            );
        }
        // Every single-character change of the final message is refused.
        for i in 0..CLIENT_FINAL.len() {
            let mut m = CLIENT_FINAL.as_bytes().to_vec();
            m[i] = if m[i] == b'A' { b'B' } else { b'A' };
            assert!(
                verify_client_final(&first, SERVER_FIRST, &credential, &m).is_err(),
                "changed at {i}"
            );
        }
        // A server that does not know the credential cannot forge the final message.
        let mut client =
            ClientExchange::new(Mechanism::ScramSha256, "user", "pencil", CLIENT_NONCE);
        client.client_final(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(
            client.verify_server_final(b"v=AAAA"),
            Err(ScramError::ServerSignature)
        );
        assert_eq!(
            client.verify_server_final(b"e=invalid-proof"),
            Err(ScramError::Refused("invalid-proof".into()))
        );
    }

    #[test]
    fn client_first_messages_are_parsed_strictly() {
        let ok = parse_client_first(b"y,a=we=2Cird=3D,n=we=2Cird=3D,r=abc").unwrap();
        assert_eq!(ok.user, "we,ird=");
        assert_eq!(ok.gs2_header, "y,a=we=2Cird=3D,");
        assert_eq!(escape_name("we,ird="), "we=2Cird=3D");
        for bad in [
            &b""[..],
            b"n,,",
            b"n,,r=abc",
            b"p=tls-unique,,n=u,r=abc",
            b"x,,n=u,r=abc",
            b"n,a=other,n=u,r=abc",
            b"n,,n=u=XY,r=abc",
            b"n,,n=u,r=a,b",
            b"n,,m=ext,n=u,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=u,r=",
            b"\xff,,n=u,r=abc",
        ] {
            assert!(
                parse_client_first(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_client_first(&vec![b'a'; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn a_client_refuses_a_server_that_would_make_it_spin_or_changes_its_nonce() {
        let mut c = ClientExchange::new(Mechanism::ScramSha512, "u", "p", "abcdefghijklmnop");
        assert_eq!(
            c.client_final(b"r=abcdefghijklmnopXYZ,s=c2FsdA==,i=100000000"),
            Err(ScramError::Iterations(100_000_000))
        );
        assert_eq!(
            c.client_final(b"r=abcdefghijklmnopXYZ,s=c2FsdA==,i=1"),
            Err(ScramError::Iterations(1))
        );
        assert_eq!(
            c.client_final(b"r=zzz,s=c2FsdA==,i=4096"),
            Err(ScramError::Nonce)
        );
        assert_eq!(
            c.client_final(b"r=abcdefghijklmnop,s=c2FsdA==,i=4096"),
            Err(ScramError::Nonce)
        );
        // SHA-512 end to end.
        let cred = Credential::derive(Mechanism::ScramSha512, "p", b"salt", 4096);
        assert!(cred.is_well_formed());
        let first = parse_client_first(c.client_first().as_bytes()).unwrap();
        let sf = server_first(&first, "XYZ", &cred);
        let fin = c.client_final(sf.as_bytes()).unwrap();
        let reply = verify_client_final(&first, &sf, &cred, fin.as_bytes()).unwrap();
        c.verify_server_final(reply.as_bytes()).unwrap();
    }
}
