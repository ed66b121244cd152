//! TLS to the broker: which CA to trust, and the client's own certificate where the broker
//! requires one (mutual TLS). Files are read at each connection attempt, so a rotated client
//! certificate is used from the next reconnection on.

use crate::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// A client's TLS settings (`ClientConfig::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CA certificates the broker's certificate must chain to. There are no
    /// built-in roots: the CA is always named.
    pub ca: PathBuf,
    /// PEM files of this client's certificate (chain) and key, for a broker that verifies
    /// clients (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the broker's certificate must hold; by default the host of the address
    /// connected to (a name or an IP address).
    pub server_name: Option<String>,
}

impl TlsSettings {
    /// Trust the CAs in `ca` (PEM); no client certificate.
    pub fn new(ca: impl Into<PathBuf>) -> Self {
        TlsSettings {
            ca: ca.into(),
            identity: None,
            server_name: None,
        }
    }

    /// Present this certificate (chain) and key, both PEM.
    pub fn identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Expect this name in the broker's certificate instead of the address's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The connector these settings make; an error names the file that is wrong.
    pub(crate) fn connector(&self) -> Result<TlsConnector, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&self.ca)? {
            roots.add(cert).map_err(|e| {
                Error::InvalidArgument(format!("bad CA certificate in {}: {e}", self.ca.display()))
            })?;
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "cannot read a private key from {}: {e}",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "client certificate {} and its key do not match: {e}",
                        cert.display()
                    ))
                })?
            }
        };
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// The name to verify for a connection to `addr` (`host:port`).
    pub(crate) fn name_for(&self, addr: &str) -> Result<ServerName<'static>, Error> {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => host_of(addr),
        };
        ServerName::try_from(host.to_string()).map_err(|e| {
            Error::InvalidArgument(format!("{host:?} cannot be a TLS server name: {e}"))
        })
    }
}

/// The host of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address_unless_given() {
        assert_eq!(host_of("localhost:7171"), "localhost");
        assert_eq!(host_of("127.0.0.1:7171"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7171"), "::1");
        assert_eq!(host_of("broker"), "broker");
        let s = TlsSettings::new("ca.pem");
        assert!(matches!(
            s.name_for("127.0.0.1:1").unwrap(),
            ServerName::IpAddress(_)
        ));
        let named = s
            .server_name("rill.example")
            .name_for("127.0.0.1:1")
            .unwrap();
        assert_eq!(named.to_str(), "rill.example");
    }
}
