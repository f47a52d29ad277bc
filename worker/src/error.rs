//! The error type of the worker crate.

use std::path::PathBuf;

/// Errors raised while loading data, training and checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The model crate failed (config, forward, tensor I/O).
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    /// The job spec or schedule is inconsistent.
    #[error(transparent)]
    Protocol(#[from] tessera_protocol::ProtocolError),
    /// Tokenization, masking or shard reading failed.
    #[error(transparent)]
    Tokenizers(#[from] tessera_tokenizers::Error),
    /// libtorch raised an error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A checkpoint that is incomplete, corrupt or does not fit the job.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model section that does not describe a valid model.
    #[error("{origin}: field `model.{field}`: {reason}")]
    ModelSpec {
        /// The job config file.
        origin: String,
        /// The offending field.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A sample that cannot be turned into model input.
    #[error("sample {index} ({dataset}, record {record}): {reason}")]
    Sample {
        /// Global sample index.
        index: u64,
        /// Dataset name.
        dataset: String,
        /// Record inside the dataset.
        record: u64,
        /// What is wrong.
        reason: String,
    },
    /// The coordinator removed this worker as lost (it was silent too long, e.g. stopped).
    #[error("the coordinator removed this worker as lost (no heartbeat in time, or the link broke)")]
    Dropped,
    /// Training cannot go on (e.g. a non-finite loss with skipping disabled).
    #[error("step {step}: {reason}")]
    Training {
        /// The optimizer step.
        step: u64,
        /// What happened.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, WorkerError>;

/// Maps an I/O error to [`WorkerError::Io`] with the operation and path.
pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> WorkerError {
    let path = path.into();
    move |source| WorkerError::Io { op, path, source }
}
