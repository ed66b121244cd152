//! The SCRAM parsers of both sides, and the PLAIN parser, on arbitrary bytes: never panic, and never accept a final
//! message that was not made with the password.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rill_protocol::scram::{self, ClientExchange, Credential, Mechanism};

fuzz_target!(|data: &[u8]| {
    // Server: a client-first message, then (after a real first message) a client-final one.
    if let Ok(first) = scram::parse_client_first(data) {
        assert!(!first.user.is_empty() && !first.nonce.is_empty());
    }
    static CREDENTIAL: std::sync::OnceLock<Credential> = std::sync::OnceLock::new();
    let credential = CREDENTIAL
        .get_or_init(|| Credential::derive(Mechanism::ScramSha256, "pencil", b"salt", 4096));
    let first =
        scram::parse_client_first(b"n,,n=user,r=clientnonce").expect("a valid first message");
    let server_first = scram::server_first(&first, "servernonce", credential);
    assert!(scram::verify_client_final(&first, &server_first, credential, data).is_err());
    // PLAIN: whatever parses names a user and a password.
    if let Ok((user, password)) = scram::parse_plain(data) {
        assert!(!user.is_empty() && !password.is_empty());
    }
    // Client: a server-first message, then a server-final one.
    let mut client = ClientExchange::new(Mechanism::ScramSha256, "user", "pencil", "clientnonce");
    let _ = client.client_final(data);
    let _ = client.verify_server_final(data);
});
