//! TLS for the coordinator service's API, configured from PEM files: [`ServerTls`] (the
//! service's certificate chain and key, `tessera coordinator --tls-cert/--tls-key`) and
//! [`ClientTls`] (the CAs a client trusts, `--ca-file`). Both use rustls with the aws-lc-rs
//! provider named explicitly rather than the process default, which rustls cannot pick when
//! another crate of the build turns on a second provider. No system roots: a cluster names
//! its own CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{CoordinatorError, Result};

/// The crypto provider of every TLS configuration here.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in the PEM file `path` (at least one).
fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = |source| CoordinatorError::Pem { path: path.display().to_string(), what, source };
    let certs = CertificateDer::pem_file_iter(path).map_err(pem)?.collect::<std::result::Result<Vec<_>, _>>().map_err(pem)?;
    if certs.is_empty() {
        return Err(pem(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The TLS server configuration of the service's API.
#[derive(Debug, Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>);

impl ServerTls {
    /// The certificate chain in `cert` (PEM, the server's certificate first) with its private
    /// key in `key` (PEM: PKCS#8, PKCS#1 or SEC1). A key that does not go with the
    /// certificate is refused here, naming both files.
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let chain = certificates(cert, "the certificate chain")?;
        let secret = PrivateKeyDer::from_pem_file(key).map_err(|source| CoordinatorError::Pem {
            path: key.display().to_string(),
            what: "the private key",
            source,
        })?;
        let refused = |source| CoordinatorError::TlsConfig { path: format!("{} (the key of {})", key.display(), cert.display()), source };
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(refused)?
            .with_no_client_auth()
            .with_single_cert(chain, secret)
            .map_err(refused)?;
        Ok(Self(Arc::new(config)))
    }

    /// The acceptor that runs the server side of a handshake.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.0))
    }
}

/// The TLS client configuration of an API client: the CAs it trusts.
#[derive(Debug, Clone)]
pub struct ClientTls(Arc<rustls::ClientConfig>);

impl ClientTls {
    /// Trusts the CA certificates in the PEM file `ca` (and nothing else).
    pub fn load(ca: &Path) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca, "the CA certificates")? {
            roots.add(cert).map_err(|source| CoordinatorError::TlsConfig { path: ca.display().to_string(), source })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| CoordinatorError::TlsConfig { path: ca.display().to_string(), source })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(Arc::new(config)))
    }

    /// The rustls configuration a connection is made with.
    pub(crate) fn config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::{ClientTls, ServerTls};
    use crate::error::CoordinatorError;

    #[test]
    fn files_that_are_missing_or_not_pem_are_named_with_what_they_should_hold() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();

        let err = ServerTls::load(&missing, &junk).unwrap_err();
        assert!(matches!(&err, CoordinatorError::Pem { what: "the certificate chain", .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("{}: the certificate chain: ", missing.display())), "{err}");

        let err = ClientTls::load(&junk).unwrap_err();
        assert_eq!(err.to_string(), format!("{}: the CA certificates: no items found", junk.display()));
    }
}
