//! tessera's worker side: turning ledger samples into masked batches, the training loop, and
//! checkpoints. Model code stays single-device (`tessera-model`); this crate drives it.

pub mod agent;
pub mod checkpoint;
pub mod data;
pub mod driver;
pub mod error;
pub mod eval;
pub mod fsdp;
pub mod model_spec;
pub mod prefetch;
pub mod source;
pub mod trainer;

pub use error::{Result, WorkerError};
pub use model_spec::four_m_config;
pub use prefetch::Prefetcher;
pub use source::{BatchSource, PrebuiltSynthetic};
pub use trainer::{StepReport, Trainer};
