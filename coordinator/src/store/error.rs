//! The error type of the durable store and the worker registry.

use std::path::PathBuf;

use super::types::{HolderId, IdempotencyKey, JobId, JobState};

/// Errors of the job store (etcd or state dir) and of the etcd worker registry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No etcd endpoint could be reached.
    #[error("etcd {endpoints}: connect: {}", Chain(.source))]
    Connect {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// An etcd request failed (timeout, connection lost, refused).
    #[error("etcd: {op} {key}: {}", Chain(.source))]
    Etcd {
        /// The request (`txn`, `get`, `grant`, `watch`, ...).
        op: &'static str,
        /// The key (or prefix) it was about.
        key: String,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// A file operation of the state-dir backend failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// What was being done (`write`, `rename`, `lock`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored value does not decode (written by another version, or damaged).
    #[error("{key}: does not decode: {source}")]
    Decode {
        /// Its key (etcd) or path (state dir).
        key: String,
        /// The decoder's error.
        source: serde_json::Error,
    },
    /// The writer no longer holds the store: another coordinator took over (or its lease
    /// expired). Nothing was written.
    #[error("{holder} (fence {token}) no longer holds the store: write refused")]
    Fenced {
        /// The deposed holder.
        holder: HolderId,
        /// Its fence token.
        token: u64,
    },
    /// The store is held by another live holder.
    #[error("the store is held by {holder}")]
    Held {
        /// The current holder.
        holder: HolderId,
    },
    /// No job with this id.
    #[error("{job}: no such job")]
    UnknownJob {
        /// The id asked for.
        job: JobId,
    },
    /// A conditional state change found the job in another state.
    #[error("{job}: expected state {expected:?}, found {found:?}")]
    StateConflict {
        /// The job.
        job: JobId,
        /// The state the caller expected.
        expected: JobState,
        /// The stored state.
        found: JobState,
    },
    /// An idempotency key reused for a different submission.
    #[error("idempotency key {key} already names {job}, submitted with another spec")]
    IdempotencyConflict {
        /// The key.
        key: IdempotencyKey,
        /// The job it names.
        job: JobId,
    },
    /// A key (idempotency key, worker name) with characters or a length the store refuses.
    #[error("{kind} {value:?}: 1 to 128 characters of [A-Za-z0-9._-] expected")]
    InvalidName {
        /// What it names (`idempotency key`, `worker name`).
        kind: &'static str,
        /// The refused text.
        value: String,
    },
    /// An append-only record (schedule version, checkpoint) already stored under this key.
    #[error("{key}: already stored (append-only)")]
    Duplicate {
        /// Its key.
        key: String,
    },
    /// Optimistic transactions kept losing to concurrent writers.
    #[error("{key}: gave up after {attempts} conflicting attempts")]
    Contention {
        /// The contended key.
        key: String,
        /// Attempts made.
        attempts: usize,
    },
    /// A watch stream closed by the server (cancelled or compacted).
    #[error("etcd: watch {key}: stream ended")]
    WatchEnded {
        /// The watched prefix.
        key: String,
    },
    /// A blocking task of the state-dir backend did not complete (panicked or cancelled).
    #[error("{}: background task failed: {source}", dir.display())]
    Task {
        /// The state dir.
        dir: PathBuf,
        /// The join error.
        source: tokio::task::JoinError,
    },
}

/// An error and its sources, `: `-separated: etcd's client keeps the cause of a failed
/// connection (a refused TLS certificate, a wrong password) in the sources.
struct Chain<'a>(&'a etcd_client::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut source = std::error::Error::source(self.0);
        while let Some(e) = source {
            let more = e.to_string();
            if !text.contains(&more) {
                text = format!("{text}: {more}");
            }
            source = e.source();
        }
        f.write_str(&text)
    }
}

/// Result alias of the store.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// The error of etcd request `op` about `key`, for `map_err`.
pub(crate) fn etcd_error(op: &'static str, key: &str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    let key = key.to_string();
    move |source| StoreError::Etcd { op, key, source }
}
