//! [`ApiClient`]: a small blocking HTTP/1.1 client of the coordinator's API for the CLI, on
//! `std::net::TcpStream` (the CLI needs a handful of one-shot requests, not an async runtime),
//! with a blocking rustls session on top for an `https://` [`Endpoint`] ([`conn`]). One
//! connection per request (`Connection: close`), a timeout on connect, every read and write,
//! and on the whole exchange; responses may be framed by `Content-Length`, chunked, or end at
//! connection close. It connects to the endpoint directly: proxy variables are never read.

mod conn;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::api::{CheckpointAck, DrainAck, DrainRequest, ErrorBody, JobStatus, MixtureAck, MixtureRequest, ScaleAck, ScaleRequest};
use crate::endpoint::Endpoint;
use crate::error::{CoordinatorError, Result};
use crate::events::EventPage;
use crate::tls::ClientTls;

/// Largest response accepted (a status with thousands of members is well below this).
const MAX_RESPONSE: usize = 16 << 20;

/// A client of one coordinator's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    endpoint: Endpoint,
    /// The CAs an `https://` endpoint's certificate is checked against.
    tls: Option<ClientTls>,
    token: String,
    timeout: Duration,
    /// Put before every path: `/v1/jobs/ID` for one job of a coordinator service.
    prefix: String,
}

/// A response: status code and body (de-chunked).
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl ApiClient {
    /// A client of the API at `endpoint` (a `SocketAddr` is plain HTTP), authenticating with
    /// `token`; 10 s timeout. An `https://` endpoint also needs [`ApiClient::with_tls`].
    pub fn new(endpoint: impl Into<Endpoint>, token: impl Into<String>) -> Self {
        Self { endpoint: endpoint.into(), tls: None, token: token.into(), timeout: Duration::from_secs(10), prefix: String::new() }
    }

    /// A client of the API at `url` (`http[s]://HOST:PORT`); an `https://` one trusts the CAs
    /// in `ca_file` and is refused without it ([`CoordinatorError::Untrusted`]).
    pub fn for_url(url: &str, token: impl Into<String>, ca_file: Option<&Path>) -> Result<Self> {
        let endpoint = Endpoint::parse(url)?;
        let tls = match (endpoint.is_tls(), ca_file) {
            (true, Some(ca)) => Some(ClientTls::load(ca)?),
            (true, None) => return Err(CoordinatorError::Untrusted { url: endpoint.to_string() }),
            // A CA given for a plain-HTTP URL has nothing to check (the same CA variable may
            // serve several clusters).
            (false, _) => None,
        };
        Ok(Self { tls, ..Self::new(endpoint, token) })
    }

    /// The same client trusting `tls`'s CAs for an `https://` endpoint.
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Where the API is.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The same client aimed at job `job` of a coordinator service (its per-job routes).
    pub fn for_job(&self, job: crate::store::JobId) -> Self {
        Self { prefix: format!("/v1/jobs/{}", job.0), ..self.clone() }
    }

    /// The same client with another timeout (applies to connect, each read/write, and the
    /// whole request).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<JobStatus> {
        self.call::<JobStatus, ()>("GET", "/status", None)
    }

    /// `GET /events`: the records from sequence number `since` on (pass the previous answer's
    /// `next` to get only new ones), or with `since` = `None` the newest `limit`.
    pub fn events(&self, since: Option<u64>, limit: usize) -> Result<EventPage> {
        let path = match since {
            Some(s) => format!("/events?since={s}&limit={limit}"),
            None => format!("/events?limit={limit}"),
        };
        self.call::<EventPage, ()>("GET", &path, None)
    }

    /// `POST /scale`.
    pub fn scale(&self, workers: usize) -> Result<ScaleAck> {
        self.call("POST", "/scale", Some(&ScaleRequest { workers }))
    }

    /// `POST /drain`.
    pub fn drain(&self, worker: u64) -> Result<DrainAck> {
        self.call("POST", "/drain", Some(&DrainRequest { worker }))
    }

    /// `POST /checkpoint`.
    pub fn checkpoint(&self) -> Result<CheckpointAck> {
        self.call::<CheckpointAck, ()>("POST", "/checkpoint", None)
    }

    /// `POST /mixture`.
    pub fn set_mixture(&self, weights: BTreeMap<String, f64>, at_step: Option<u64>) -> Result<MixtureAck> {
        self.call("POST", "/mixture", Some(&MixtureRequest { weights, at_step }))
    }

    /// `GET /metrics` (the text exposition).
    pub fn metrics(&self) -> Result<String> {
        let answer = self.checked(self.request("GET", "/metrics", None)?)?;
        String::from_utf8(answer.body).map_err(|e| self.bad(format!("metrics are not UTF-8: {e}")))
    }

    /// Sends a JSON request and decodes a JSON answer, turning error statuses into errors.
    pub(crate) fn call<T: DeserializeOwned, B: serde::Serialize>(&self, method: &str, path: &str, body: Option<&B>) -> Result<T> {
        let body = body.map(|b| serde_json::to_vec(b).map_err(|e| self.bad(format!("encoding the request: {e}")))).transpose()?;
        let answer = self.checked(self.request(method, path, body.as_deref())?)?;
        serde_json::from_slice(&answer.body).map_err(|e| self.bad(format!("{method} {path}: unexpected body: {e}")))
    }

    fn bad(&self, reason: String) -> CoordinatorError {
        CoordinatorError::BadResponse { addr: self.endpoint.to_string(), reason }
    }

    /// An error status becomes [`CoordinatorError::Http`] with the server's error text.
    fn checked(&self, answer: Answer) -> Result<Answer> {
        if (200..300).contains(&answer.status) {
            return Ok(answer);
        }
        let message = match serde_json::from_slice::<ErrorBody>(&answer.body) {
            Ok(e) => e.error,
            Err(_) => String::from_utf8_lossy(&answer.body).trim().to_string(),
        };
        Err(CoordinatorError::Http { addr: self.endpoint.to_string(), status: answer.status, message })
    }

    /// One HTTP/1.1 exchange on a fresh connection.
    fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Answer> {
        let net = |op, source| CoordinatorError::Net { addr: self.endpoint.to_string(), op, source };
        if self.token.bytes().any(|b| b.is_ascii_control()) {
            // A CR/LF in the token would inject headers into the request.
            return Err(CoordinatorError::Api { reason: "the bearer token contains control characters".into() });
        }
        let deadline = Instant::now() + self.timeout;
        let mut stream = conn::open(&self.endpoint, self.tls.as_ref(), self.timeout, deadline)?;

        let body = body.unwrap_or_default();
        let path = format!("{}{path}", self.prefix);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.endpoint.authority(),
            self.token,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body);
        stream.write_all(&message).map_err(|e| net("write request", e))?;
        stream.flush().map_err(|e| net("write request", e))?;

        // Read to the end of the connection (we asked for `Connection: close`), bounded in size
        // and in total time so a server that trickles bytes cannot hold the CLI forever.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 << 10];
        loop {
            if Instant::now() > deadline {
                return Err(net("read response", std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline exceeded")));
            }
            let n = stream.read(&mut buf).map_err(|e| net("read response", e))?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.len() > MAX_RESPONSE {
                return Err(self.bad(format!("response larger than {MAX_RESPONSE} bytes")));
            }
            if let Some(answer) = parse_response(&raw).map_err(|r| self.bad(r))? {
                return Ok(answer);
            }
        }
        // A plain-HTTP request to a TLS port is answered with a TLS alert record, then EOF.
        if !self.endpoint.is_tls() && matches!(raw.as_slice(), [0x15 | 0x16, 0x03, ..]) {
            return Err(self.bad("the server speaks TLS: give its https:// URL".into()));
        }
        parse_response(&raw).map_err(|r| self.bad(r))?.map_or_else(
            // At EOF a response without Content-Length or chunking ends here (RFC 9112 §6.3).
            || parse_until_close(&raw).map_err(|r| self.bad(r)),
            Ok,
        )
    }
}

/// Status, headers and where the body starts, once the head is complete.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    body_start: usize,
}

fn parse_head(raw: &[u8]) -> std::result::Result<Option<Head>, String> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&raw[..end]).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status = code.parse().map_err(|_| format!("bad status code in {status_line:?}"))?;
    let (mut content_length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.split(',').any(|c| c.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(Some(Head { status, content_length, chunked, body_start: end + 4 }))
}

/// The response, if `raw` holds all of it by its own framing (`None`: read more).
fn parse_response(raw: &[u8]) -> std::result::Result<Option<Answer>, String> {
    let Some(head) = parse_head(raw)? else {
        return Ok(None);
    };
    let rest = &raw[head.body_start..];
    if head.chunked {
        return Ok(dechunk(rest)?.map(|body| Answer { status: head.status, body }));
    }
    match head.content_length {
        Some(n) if rest.len() >= n => Ok(Some(Answer { status: head.status, body: rest[..n].to_vec() })),
        Some(_) => Ok(None),
        None => Ok(None),
    }
}

/// At connection close: a complete head whose body runs to the end of the stream.
fn parse_until_close(raw: &[u8]) -> std::result::Result<Answer, String> {
    let head = parse_head(raw)?.ok_or_else(|| format!("connection closed after {} bytes, before the response head ended", raw.len()))?;
    if head.chunked || head.content_length.is_some() {
        return Err("connection closed before the response body ended".into());
    }
    Ok(Answer { status: head.status, body: raw[head.body_start..].to_vec() })
}

/// Decodes a chunked body (`None`: incomplete). Chunk extensions and trailers are skipped.
fn dechunk(mut rest: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size line".to_string())?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // The last chunk; the body is complete once the (possibly empty) trailer section ends.
            return Ok((rest.starts_with(b"\r\n") || rest.windows(4).any(|w| w == b"\r\n\r\n")).then_some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::{dechunk, parse_response, parse_until_close};

    #[test]
    fn client_parses_chunked_and_sized_responses() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let answer = parse_response(chunked).unwrap().unwrap();
        assert_eq!((answer.status, answer.body.as_slice()), (200, &b"hello world"[..]));
        // Incomplete chunked bodies ask for more.
        assert!(parse_response(&chunked[..chunked.len() - 2]).unwrap().is_none());
        assert!(dechunk(b"5\r\nhel").unwrap().is_none());
        assert!(dechunk(b"zz\r\n").is_err());

        let sized = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope";
        let answer = parse_response(sized).unwrap().unwrap();
        assert_eq!((answer.status, answer.body.as_slice()), (401, &b"nope"[..]));
        assert!(parse_response(&sized[..sized.len() - 1]).unwrap().is_none());

        let unframed = b"HTTP/1.0 200 OK\r\n\r\nto the end";
        assert!(parse_response(unframed).unwrap().is_none());
        assert_eq!(parse_until_close(unframed).unwrap().body, b"to the end");
        assert!(parse_until_close(&sized[..sized.len() - 1]).is_err());
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
    }
}
