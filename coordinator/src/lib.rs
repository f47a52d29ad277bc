//! tessera's control plane, free of libtorch: job specs (TOML and ml-4m YAML import), the
//! dataset-mixture schedule and the global sample ledger (the determinism contract), and the
//! learning-rate schedule, and the coordinator's membership/generation/checkpoint decisions as a
//! pure state machine ([`control`]). Around it: the per-step [`StepReport`] of every rank, the
//! held-out [`ValidationReport`], the job's Prometheus metrics ([`JobMetrics`]), the
//! append-only job event log ([`EventLog`]), and the HTTP API ([`api::serve`] over a
//! [`JobControl`] backend) with its blocking CLI client ([`ApiClient`]).

pub mod actor;
pub mod api;
pub mod catalog;
pub mod client;
pub mod console;
pub mod control;
pub mod error;
pub mod events;
pub mod job;
pub mod jsonl;
pub mod ledger;
pub mod lr;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod report;
pub mod say;
pub mod validation;

pub use api::{ApiError, JobControl, JobPhase, JobStatus, MemberStatus};
pub use client::ApiClient;
pub use error::{CoordinatorError, Result};
pub use events::{EventLog, JobEvent, LoggedEvent};
pub use job::{JobConfig, ResolvedJob};
pub use jsonl::JsonLines;
pub use ledger::{DatasetId, MixtureSchedule, SampleLedger, SampleRef};
pub use lr::CosineSchedule;
pub use metrics::{FlopsModel, JobMetrics};
pub use report::{StepReport, StepTimings};
pub use validation::{ModalityScore, ValidationReport};
