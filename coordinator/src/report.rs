//! The per-step report each rank sends to the coordinator (placeholder until the metrics branch
//! lands; the fields are the agreed contract).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Wall-clock seconds of one rank's step, by phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTimings {
    /// Loading and masking the batch.
    pub data_s: f64,
    /// Forward passes.
    pub forward_s: f64,
    /// Backward passes (with recomputation).
    pub backward_s: f64,
    /// Collective communication.
    pub comm_s: f64,
    /// Optimizer step.
    pub optimizer_s: f64,
    /// The whole step.
    pub total_s: f64,
}

/// One rank's report of one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Generation.
    pub generation: u64,
    /// Step (0-based).
    pub step: u64,
    /// Rank.
    pub rank: u32,
    /// World size.
    pub world: u32,
    /// Loss of the whole global batch.
    pub loss: f64,
    /// Loss per modality.
    pub losses: BTreeMap<String, f64>,
    /// Learning rate.
    pub lr: f64,
    /// Global gradient norm.
    pub grad_norm: f64,
    /// Samples this rank trained.
    pub samples: u64,
    /// Tokens this rank trained.
    pub tokens: u64,
    /// The step was skipped (non-finite).
    pub skipped: bool,
    /// Samples replaced as undecodable.
    pub skipped_samples: u64,
    /// Timings.
    pub timings: StepTimings,
}
