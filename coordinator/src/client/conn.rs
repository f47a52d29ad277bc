//! One connection of [`super::ApiClient`]: a blocking TCP stream with its timeouts, with a
//! rustls client session on top for an `https://` endpoint. The handshake is completed here,
//! so a certificate that does not verify is reported as such, naming the URL.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::endpoint::Endpoint;
use crate::error::{CoordinatorError, Result};
use crate::tls::ClientTls;

/// An open connection to the API.
pub(super) enum Conn {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTP over TLS, handshake done.
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// Connects to `endpoint` (every socket operation bounded by `timeout`, the handshake also by
/// `deadline`), over TLS trusting `tls` when the endpoint is `https://`.
pub(super) fn open(endpoint: &Endpoint, tls: Option<&ClientTls>, timeout: Duration, deadline: Instant) -> Result<Conn> {
    let net = |op, source| CoordinatorError::Net { addr: endpoint.to_string(), op, source };
    // Checked before connecting: without a CA there is nothing to verify the server against.
    let tls = match (endpoint.is_tls(), tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls),
        (true, None) => return Err(CoordinatorError::Untrusted { url: endpoint.to_string() }),
    };
    let mut tcp = TcpStream::connect_timeout(&endpoint.addr(), timeout).map_err(|e| net("connect", e))?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| net("set read timeout", e))?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| net("set write timeout", e))?;
    let Some(tls) = tls else { return Ok(Conn::Plain(tcp)) };
    // An IP address as host is checked against the certificate's IP SANs, a name against its
    // DNS names.
    let name = ServerName::try_from(endpoint.host().to_string())
        .map_err(|_| CoordinatorError::Url { url: endpoint.to_string(), reason: "the host is not a name a TLS certificate can carry" })?;
    let mut session = ClientConnection::new(tls.config(), name).map_err(|e| net("TLS handshake", std::io::Error::other(e)))?;
    while session.is_handshaking() {
        if Instant::now() > deadline {
            return Err(net("TLS handshake", std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline exceeded")));
        }
        session.complete_io(&mut tcp).map_err(|e| net("TLS handshake", e))?;
    }
    Ok(Conn::Tls(Box::new(StreamOwned::new(session, tcp))))
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            // A server that closes without TLS's close_notify reads as UnexpectedEof: taken as
            // the end of the stream, as over plain TCP. The API frames every body
            // (Content-Length or chunked), so a cut answer is still caught by its framing.
            Self::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}
