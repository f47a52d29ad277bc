//! [`Endpoint`]: where a coordinator's API is, parsed once from the URL a user gives
//! (`--coordinator`, `TESSERA_COORDINATOR`): `http://HOST:PORT`, `https://HOST:PORT`, or a bare
//! `HOST:PORT` (plain HTTP). The host is kept as written, because a TLS client checks the
//! server's certificate against it (a name, or an IP address in the certificate's SAN); the
//! socket address is resolved once, here.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::{CoordinatorError, Result};

/// How the API is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP/1.1.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
}

/// A coordinator API's address: scheme, host as written, port, and the resolved socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    scheme: Scheme,
    host: String,
    port: u16,
    addr: SocketAddr,
}

impl Endpoint {
    /// Parses `http://HOST:PORT`, `https://HOST:PORT` or `HOST:PORT` (a trailing `/` is
    /// allowed, a path is not) and resolves the host; an IPv6 host is written `[::1]`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason| CoordinatorError::Url { url: url.to_string(), reason };
        let text = url.trim();
        let (scheme, rest) = match text.split_once("://") {
            Some(("http", rest)) => (Scheme::Http, rest),
            Some(("https", rest)) => (Scheme::Https, rest),
            Some(_) => return Err(bad("the scheme is neither http:// nor https://")),
            None => (Scheme::Http, text),
        };
        let hostport = rest.strip_suffix('/').unwrap_or(rest);
        if hostport.contains('/') || hostport.contains('?') {
            return Err(bad("a coordinator URL is HOST:PORT with no path"));
        }
        if hostport.contains('@') {
            return Err(bad("a coordinator URL carries no user name (the token goes in --token-file)"));
        }
        let (host, port) = hostport.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 0 to 65535"))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').ok_or_else(|| bad("an unclosed [ in the host"))?,
            None if host.contains(':') => return Err(bad("write an IPv6 host in brackets, [::1]:PORT")),
            None => host,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let resolve = |source| CoordinatorError::Resolve { url: url.to_string(), host: host.to_string(), source };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(resolve)?
            .next()
            .ok_or_else(|| resolve(std::io::Error::new(std::io::ErrorKind::NotFound, "the host resolves to no address")))?;
        Ok(Self { scheme, host: host.to_string(), port, addr })
    }

    /// A plain-HTTP endpoint at `addr` (a job's own API, or a test's server).
    pub fn http(addr: SocketAddr) -> Self {
        Self { scheme: Scheme::Http, host: addr.ip().to_string(), port: addr.port(), addr }
    }

    /// How the API is spoken.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Whether the API is spoken over TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Https
    }

    /// The host as written (without IPv6 brackets): the name a TLS certificate must carry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The socket address the host resolved to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `HOST:PORT` as the `Host` header wants it (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::http(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, Scheme};
    use crate::error::CoordinatorError;

    fn reason(url: &str) -> &'static str {
        match Endpoint::parse(url) {
            Err(CoordinatorError::Url { reason, .. }) => reason,
            other => panic!("{url}: expected a URL error, got {other:?}"),
        }
    }

    #[test]
    fn endpoints_parse_scheme_host_and_port_once() {
        let e = Endpoint::parse("https://127.0.0.1:7450/").unwrap();
        assert_eq!((e.scheme(), e.host(), e.addr().to_string()), (Scheme::Https, "127.0.0.1", "127.0.0.1:7450".to_string()));
        assert!(e.is_tls());
        assert_eq!(e.to_string(), "https://127.0.0.1:7450");

        let plain = Endpoint::parse(" http://127.0.0.1:80 ").unwrap();
        assert_eq!((plain.scheme(), plain.addr().port()), (Scheme::Http, 80));
        let bare = Endpoint::parse("127.0.0.1:9").unwrap();
        assert_eq!(bare, Endpoint::http("127.0.0.1:9".parse().unwrap()), "a bare HOST:PORT is plain HTTP");

        // A name stays the name (the certificate is checked against it); it resolves once.
        let named = Endpoint::parse("https://localhost:7450").unwrap();
        assert_eq!((named.host(), named.addr().ip().is_loopback()), ("localhost", true));
        assert_eq!(named.authority(), "localhost:7450");

        let v6 = Endpoint::parse("https://[::1]:7450").unwrap();
        assert_eq!((v6.host(), v6.authority(), v6.to_string()), ("::1", "[::1]:7450".to_string(), "https://[::1]:7450".to_string()));
        assert_eq!(Endpoint::from("[::1]:5".parse::<std::net::SocketAddr>().unwrap()).to_string(), "http://[::1]:5");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert!(reason("ftp://127.0.0.1:1").contains("neither http:// nor https://"));
        assert!(reason("http://127.0.0.1:1/v1/jobs").contains("no path"));
        assert!(reason("https://user@127.0.0.1:1").contains("user name"));
        assert!(reason("https://127.0.0.1").contains("no :PORT"));
        assert!(reason("http://127.0.0.1:99999").contains("port"));
        assert!(reason("http://:80").contains("no host"));
        assert!(reason("http://::1:80").contains("brackets"));
        assert!(reason("http://[::1:80").contains("unclosed"));
        // (A name that does not resolve is `CoordinatorError::Resolve`; not tried here, as a
        // DNS look-up is neither quick nor certain on every test machine.)
    }
}
