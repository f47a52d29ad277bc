//! The error type of the coordinator crate.

/// Errors raised while reading job configs, computing schedules, exporting metrics, writing the
/// event log and serving or calling the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A socket operation of the HTTP API or its client failed (bind, connect, read, write).
    #[error("{addr}: {op}: {source}")]
    Net {
        /// The address served or called.
        addr: String,
        /// What was being done (`connect`, `read response`, `serve`, ...).
        op: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The API answered a request with an error status.
    #[error("{addr}: HTTP {status}: {message}")]
    Http {
        /// The API's address.
        addr: String,
        /// The HTTP status code.
        status: u16,
        /// The server's `error` text (or the raw body when it is not the API's JSON).
        message: String,
    },
    /// The API's answer is not well-formed HTTP or not the expected JSON.
    #[error("{addr}: bad response: {reason}")]
    BadResponse {
        /// The API's address.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A coordinator URL that is not `http[s]://HOST:PORT`.
    #[error("{url}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host of a coordinator URL does not resolve.
    #[error("{url}: resolving {host}: {source}")]
    Resolve {
        /// The URL as given.
        url: String,
        /// Its host.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// An `https://` coordinator was given without a CA to check its certificate against.
    #[error("{url}: an https:// coordinator needs the CA that signed its certificate: give --ca-file PEM (or set TESSERA_CA_FILE)")]
    Untrusted {
        /// The URL.
        url: String,
    },
    /// A PEM file for TLS (a certificate chain, a private key, trusted CAs) cannot be read or
    /// holds none of what it should.
    #[error("{path}: {what}: {source}")]
    Pem {
        /// The file.
        path: String,
        /// What it should hold (`the certificate chain`, `the private key`, `the CA certificates`).
        what: &'static str,
        /// The PEM reader's error.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refuses a TLS file's contents: a key that does not go with its certificate, an
    /// unsupported key type, or a CA certificate that does not parse.
    #[error("{path}: {source}")]
    TlsConfig {
        /// The file (for a key that does not fit: the key, naming its certificate).
        path: String,
        /// rustls' error.
        source: rustls::Error,
    },
    /// The coordinator's policy and its launcher disagree: `launches` without a launcher to
    /// start processes, or a launcher the policy does not count.
    #[error("the policy says launches = {launches}, but the coordinator was {} a launcher", if *launches { "given no" } else { "given" })]
    LauncherMismatch {
        /// What the policy says.
        launches: bool,
    },
    /// The API cannot be started as configured.
    #[error("api: {reason}")]
    Api {
        /// Why it was refused.
        reason: String,
    },
    /// The metrics registry refused a metric (duplicate name) or could not be encoded.
    #[error("metrics: {source}")]
    Metrics {
        /// The registry's error.
        #[from]
        source: prometheus::Error,
    },
    /// Step reports that cannot be aggregated (empty, mixed steps, rank out of range, stale).
    #[error("step reports: {reason}")]
    StepReports {
        /// Why they were refused.
        reason: String,
    },
    /// A line of the job event log that does not parse (not the torn last line of a crash).
    #[error("{path}:{line}: {reason}")]
    EventLog {
        /// The log file.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// The parser's error.
        reason: String,
    },
    /// An error of the contract crate: a job config, the mixture schedule, the checkpoint
    /// store, a JSON-lines file or an actor node link.
    #[error(transparent)]
    Protocol(#[from] tessera_protocol::ProtocolError),
    /// An error of the modality registry or the budget policy.
    #[error(transparent)]
    Tokenizers(#[from] tessera_tokenizers::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, CoordinatorError>;
