//! The error type of the contract crate.

/// Errors raised while reading job configs, computing schedules, linking actor nodes and
/// reading or writing checkpoints and JSON-lines logs.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A TOML job config that does not parse (unknown field, wrong type, ...).
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: String,
        /// The parser's error (names the field and line).
        source: Box<toml::de::Error>,
    },
    /// A YAML file (ml-4m config) that does not parse.
    #[error("{path}: {source}")]
    Yaml {
        /// The file.
        path: String,
        /// The parser's error.
        source: serde_yaml::Error,
    },
    /// A config that parses but cannot run.
    #[error("{origin}: field `{field}`: {reason}")]
    Config {
        /// The config file (or other origin).
        origin: String,
        /// The offending field as a dotted path (`data.datasets[1].weight`).
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// A name outside a closed set (a model preset or block flavour).
    #[error("unknown {kind} '{name}' ({known})")]
    UnknownName {
        /// What was named (`preset`, `flavor`).
        kind: &'static str,
        /// The name given.
        name: String,
        /// The names that exist, comma-separated.
        known: &'static str,
    },
    /// A mixture schedule that is inconsistent (weights, versions, dataset sizes).
    #[error("mixture schedule: {reason}")]
    Schedule {
        /// Why it was refused.
        reason: String,
    },
    /// A checkpoint directory that cannot be committed or does not verify.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The directory.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The control plane (actors, node links, a worker or the coordinator) failed.
    #[error("{context}: {reason}")]
    Actor {
        /// What was being done (names the worker, generation or address).
        context: String,
        /// Why it failed.
        reason: String,
    },
    /// A name that cannot name a worker's log file ([`crate::worker_log`]).
    #[error("'{name}' cannot name a worker log: it must be 1 to 128 characters of [A-Za-z0-9._-]")]
    BadLogName {
        /// The name given.
        name: String,
    },
    /// An error of the modality registry or the budget policy.
    #[error(transparent)]
    Tokenizers(#[from] tessera_tokenizers::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ProtocolError>;
