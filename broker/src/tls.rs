//! TLS on the client listener and between the nodes of a cluster: rustls configurations read
//! from PEM files, the servers' replaced on SIGHUP without a restart (ARCHITECTURE.md,
//! "Security").

use crate::config::TlsConfig;
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// How long a connection may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes of plaintext a connection's TLS layer takes in before writing to the socket.
pub const BUFFER_LIMIT: usize = 1 << 20;

/// The listener's TLS settings and the configuration built from them; new connections are
/// served the configuration current when they arrive.
#[derive(Debug)]
pub struct Reloader {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloader {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn new(settings: TlsConfig) -> anyhow::Result<Reloader> {
        let config = server_config(&settings)?;
        Ok(Reloader {
            settings,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(current.clone())
    }

    /// Reads the files again and serves them to new connections; on error the old ones stay.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = Arc::new(server_config(&self.settings)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn verifies_clients(&self) -> bool {
        self.settings.client_ca.is_some()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, at least one.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

fn server_config(settings: &TlsConfig) -> anyhow::Result<ServerConfig> {
    let certs = read_certs(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| {
        anyhow::anyhow!(
            "cannot read a private key from {}: {e}",
            settings.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("bad CA certificate in {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| anyhow::anyhow!("client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        anyhow::anyhow!(
            "certificate {} and key {} do not make a TLS identity: {e}",
            settings.cert.display(),
            settings.key.display()
        )
    })
}

/// TLS between the nodes of a cluster (`[cluster] tls_ca`): mutual, every node presenting the
/// `[tls]` certificate both when it accepts and when it connects, and trusting only
/// certificates signed by the cluster's CA.
#[derive(Debug)]
pub struct ClusterTls {
    /// The cluster listener's side (client certificates required, against the cluster CA);
    /// SIGHUP reloads it with the client listener's.
    pub acceptor: Arc<Reloader>,
    identity: TlsConfig,
}

impl ClusterTls {
    pub fn new(identity: &TlsConfig, ca: &Path) -> anyhow::Result<ClusterTls> {
        let identity = TlsConfig {
            cert: identity.cert.clone(),
            key: identity.key.clone(),
            client_ca: Some(ca.to_path_buf()),
        };
        Ok(ClusterTls {
            acceptor: Arc::new(Reloader::new(identity.clone())?),
            identity,
        })
    }

    /// The connecting side, from the files as they are now (each new connection to a peer
    /// reads them, so rotated certificates are used from the next reconnection).
    pub fn connector(&self) -> anyhow::Result<tokio_rustls::TlsConnector> {
        let ca = self.identity.client_ca.as_deref().unwrap_or(Path::new(""));
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("bad CA certificate in {}: {e}", ca.display()))?;
        }
        let key = PrivateKeyDer::from_pem_file(&self.identity.key).map_err(|e| {
            anyhow::anyhow!(
                "cannot read a private key from {}: {e}",
                self.identity.key.display()
            )
        })?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(read_certs(&self.identity.cert)?, key)
            .map_err(|e| anyhow::anyhow!("node certificate: {e}"))?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// The principal a verified client certificate names: its subject's common name (CN), or, if
/// it has none, the whole subject (`O=..., OU=...`). `None` if the certificate does not parse
/// (rustls verified it, so that is not expected).
pub fn subject_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    cn.or_else(|| Some(subject.to_string()).filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_identity(dir: &Path, name: &str) -> TlsConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        TlsConfig {
            cert: c,
            key: k,
            client_ca: None,
        }
    }

    #[test]
    fn bad_files_are_named_and_a_failed_reload_keeps_the_old_identity() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_identity(dir.path(), "a");
        let b = write_identity(dir.path(), "b");
        let reloader = Reloader::new(a.clone()).unwrap();

        // A key that belongs to another certificate.
        let mismatched = TlsConfig {
            key: b.key.clone(),
            ..a.clone()
        };
        let err = Reloader::new(mismatched).unwrap_err().to_string();
        assert!(err.contains("do not make a TLS identity"), "{err}");
        let missing = TlsConfig {
            cert: dir.path().join("nope.pem"),
            ..a.clone()
        };
        let err = Reloader::new(missing).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");

        // The certificate file replaced by garbage: the reload fails, the old one stays.
        let before = reloader.current.read().unwrap().clone();
        std::fs::write(&a.cert, "not a certificate").unwrap();
        let err = reloader.reload().unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        assert!(Arc::ptr_eq(&before, &reloader.current.read().unwrap()));
        // Replaced by a good one: the reload takes it.
        std::fs::copy(&b.cert, &a.cert).unwrap();
        std::fs::copy(&b.key, &a.key).unwrap();
        reloader.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &reloader.current.read().unwrap()));
    }
}
