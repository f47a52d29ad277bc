//! tessera's contract between the control plane (`tessera-coordinator`) and the data plane
//! (`tessera-worker`): everything both sides must agree on, and nothing either side runs on
//! its own. It holds the job spec and the resolved job ([`job`]), the dataset-mixture schedule
//! and the global sample ledger ([`ledger`], the determinism contract), the learning-rate
//! schedule ([`lr`]), the actor messages with their typed ids ([`messages`], [`ids`]) and the
//! node transport they travel on ([`node`]), the per-step [`StepReport`] and the held-out
//! [`ValidationReport`], the coordinator's typed answers ([`reply`]: the job status and the
//! acknowledgements), the errors that cross processes ([`ApiError`]), the checkpoint store
//! ([`checkpoint`]), the append-only JSON-lines writer ([`JsonLines`]) and the per-worker job
//! logs that `say!` also writes ([`worker_log`]).
//!
//! Why a crate of its own: the worker links libtorch and the coordinator links the HTTP server,
//! the Prometheus registry and the terminal output; neither should link the other's, and an
//! edit to the contract is the only edit that recompiles both. `tests/deps.rs` checks that this
//! crate's dependency tree has no `tch`, HTTP server, `prometheus` or terminal UI crate.

pub mod api_error;
pub mod checkpoint;
pub mod error;
pub mod ids;
pub mod job;
pub mod jsonl;
pub mod ledger;
pub mod lr;
pub mod messages;
pub mod node;
pub mod reply;
pub mod report;
pub mod say;
pub mod seeds;
pub mod validation;
pub mod worker_log;

pub use api_error::{ApiError, ErrorBody};
pub use error::{ProtocolError, Result};
pub use ids::{Generation, ModalityName, Rank, Step, WorkerId};
pub use job::{JobConfig, ResolvedJob};
pub use jsonl::JsonLines;
pub use ledger::{DatasetId, MixtureSchedule, SampleLedger, SampleRef};
pub use lr::CosineSchedule;
pub use messages::GenerationPlan;
pub use report::{StepReport, StepTimings, TrainLogLine};
pub use validation::{ModalityScore, ValidationReport};
pub use worker_log::WorkerLogLine;
