//! Reaching etcd: the one place a client is made, for the job store, the leader lease and the
//! worker registry alike, with the TLS and user options a secured etcd asks for.

use std::fmt;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::error::{StoreError, StoreResult};

/// HTTP/2 pings on a connection with open streams (watches, lease keep-alives), so that a dead
/// connection is noticed and redialled. etcd refuses pings more often than every 5 s.
const PING_EVERY: Duration = Duration::from_secs(10);

/// How a client proves itself to etcd and which server it trusts: TLS on `https://`
/// endpoints (a CA, and a client certificate for servers run with `--client-cert-auth`) and a
/// user (servers with auth enabled). The binary reads the files; this holds their contents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    /// PEM of the CA that signed the server's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and private key this client presents.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// User name and password.
    pub user: Option<(String, String)>,
}

impl fmt::Debug for EtcdAccess {
    /// Says what is set, never the key or the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish()
    }
}

impl EtcdAccess {
    /// The client options for `endpoints`: deadlines of `timeout`, TLS when they are
    /// `https://`, the user when one is set (its token refreshed when it expires).
    fn options(&self, endpoints: &[String], timeout: Duration) -> ConnectOptions {
        let mut options = ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout).with_keep_alive(PING_EVERY, timeout);
        if endpoints.iter().any(|e| e.starts_with("https://")) {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &self.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        if let Some((name, password)) = &self.user {
            options = options.with_user(name.as_str(), password.as_str()).with_auto_token_refresh(true);
        }
        options
    }
}

/// Connects to `endpoints` with `access` and the deadlines of `timeout` (with a user: signs in
/// now, so a wrong password fails here).
pub(crate) async fn connect(endpoints: &[String], timeout: Duration, access: &EtcdAccess) -> StoreResult<Client> {
    Client::connect(endpoints, Some(access.options(endpoints, timeout)))
        .await
        .map_err(|source| StoreError::Connect { endpoints: endpoints.join(","), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_what_is_set_but_never_the_secrets() {
        let access = EtcdAccess {
            ca_pem: Some(b"CA".to_vec()),
            identity: Some((b"CERT".to_vec(), b"SECRET-KEY".to_vec())),
            user: Some(("root".into(), "hunter2".into())),
        };
        let shown = format!("{access:?}");
        assert_eq!(shown, r#"EtcdAccess { ca: true, identity: true, user: Some("root") }"#);
    }
}
