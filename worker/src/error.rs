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
    /// A collective (TCP ring or NCCL) failed: a peer vanished or closed, a deadline passed, the
    /// communicator was aborted.
    #[error("rank {rank}, step {step}: {op}: {source}")]
    Collective {
        /// This rank.
        rank: u32,
        /// The step count when it failed.
        step: u64,
        /// What the rank was doing (e.g. `all-gather of encoder.3`).
        op: String,
        /// The collective's error.
        #[source]
        source: tessera_ops::OpsError,
    },
    /// NCCL could not be set up for the generation (no unique id, a communicator that does not
    /// match the trainer).
    #[error("rank {rank}: NCCL: {detail}")]
    Nccl {
        /// This rank.
        rank: u32,
        /// What went wrong, as NCCL or the check says it.
        detail: String,
    },
    /// The coordinator aborted the generation this rank was starting or training.
    #[error("rank {rank}: generation {generation} was aborted")]
    Aborted {
        /// This rank.
        rank: u32,
        /// The aborted generation.
        generation: u64,
    },
    /// A step's loss or gradient norm is not finite and `train.skip_nonfinite` is off.
    #[error("step {step}: non-finite loss {loss} / gradient norm {grad_norm} (train.skip_nonfinite = false)")]
    NonFinite {
        /// The step.
        step: u64,
        /// Its loss.
        loss: f64,
        /// Its gradient norm before clipping.
        grad_norm: f64,
    },
    /// A dataset of the job that cannot give samples.
    #[error("{origin}: dataset '{dataset}' {problem}")]
    Dataset {
        /// The job config file.
        origin: String,
        /// The dataset's name.
        dataset: String,
        /// What is wrong with it.
        problem: DatasetProblem,
    },
    /// The global batch cannot give every rank a sample.
    #[error("global batch {global} is smaller than the world size {world}")]
    BatchSmallerThanWorld {
        /// `train.global_batch_size`.
        global: usize,
        /// Ranks of the generation.
        world: usize,
    },
    /// The job asks for a device this process does not have (or a kept model lives on another).
    #[error("train.device: the job trains on {wanted}, {found}")]
    Device {
        /// The job's device.
        wanted: String,
        /// What this process has.
        found: String,
    },
    /// The model and its sharded layout disagree (a model or checkpoint that does not fit the
    /// job's units).
    #[error("rank {rank}, step {step}: model layout: {detail}")]
    Layout {
        /// This rank.
        rank: u32,
        /// The step count.
        step: u64,
        /// Which unit, block or modality does not fit, and how.
        detail: String,
    },
    /// A restored checkpoint holds another step than the coordinator's plan starts at.
    #[error("rank {rank}: restored step {restored}, the plan starts at {planned}")]
    PlanMismatch {
        /// This rank.
        rank: u32,
        /// The step the checkpoint holds.
        restored: u64,
        /// The step the plan starts at.
        planned: u64,
    },
    /// The coordinator's welcome cannot be acted on.
    #[error("the coordinator's welcome: {0}")]
    Welcome(&'static str),
    /// A thread or task this worker relies on could not start or ended.
    #[error("{thread}: {detail}")]
    Thread {
        /// Which thread or task.
        thread: &'static str,
        /// What happened to it.
        detail: String,
    },
}

/// What is wrong with a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetProblem {
    /// A non-synthetic dataset without `path`.
    NoPath,
    /// The split has no records.
    Empty {
        /// `train` or `val`.
        split: &'static str,
    },
}

impl std::fmt::Display for DatasetProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoPath => write!(f, "has no path"),
            Self::Empty { split } => write!(f, "has no {split} records"),
        }
    }
}

impl WorkerError {
    /// What kind of failure this is, as it crosses to the coordinator.
    pub fn kind(&self) -> tessera_protocol::messages::FailureKind {
        use tessera_protocol::messages::FailureKind as K;
        match self {
            Self::Collective { .. } | Self::Nccl { .. } | Self::Aborted { .. } | Self::Dropped => K::Collective,
            Self::Checkpoint { .. } | Self::PlanMismatch { .. } => K::Checkpoint,
            Self::NonFinite { .. } => K::Numerics,
            Self::Tokenizers(_) | Self::Sample { .. } | Self::Dataset { .. } => K::Data,
            Self::Model(_) | Self::Torch(_) | Self::ModelSpec { .. } | Self::Layout { .. } | Self::Device { .. } => K::Model,
            Self::Protocol(_) | Self::BatchSmallerThanWorld { .. } => K::Job,
            Self::Io { .. } | Self::Welcome(_) | Self::Thread { .. } => K::Worker,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, WorkerError>;

/// Maps an I/O error to [`WorkerError::Io`] with the operation and path.
pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> WorkerError {
    let path = path.into();
    move |source| WorkerError::Io { op, path, source }
}
