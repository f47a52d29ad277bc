//! tessera's control plane, free of libtorch: job specs (TOML and ml-4m YAML import), the
//! dataset-mixture schedule and the global sample ledger (the determinism contract), and the
//! learning-rate schedule, and the coordinator's membership/generation/checkpoint decisions as a
//! pure state machine ([`control`]).

pub mod actor;
pub mod catalog;
pub mod control;
pub mod error;
pub mod job;
pub mod ledger;
pub mod lr;
pub mod node;
pub mod protocol;
pub mod report;

pub use error::{CoordinatorError, Result};
pub use job::{JobConfig, ResolvedJob};
pub use ledger::{DatasetId, MixtureSchedule, SampleLedger, SampleRef};
pub use lr::CosineSchedule;
