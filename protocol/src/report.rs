//! The per-step report every rank sends the coordinator after each optimizer step. It is small
//! (a few hundred bytes) because the coordinator is off the tensors' critical path: it only
//! aggregates these into metrics ([`crate::metrics::JobMetrics::observe_step`]) and status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Wall-clock seconds one rank spent in each phase of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTimings {
    /// Waiting for the data loader (batch assembly, masking).
    pub data_s: f64,
    /// Forward pass (including FSDP all-gathers that are not overlapped).
    pub forward_s: f64,
    /// Backward pass (including recompute).
    pub backward_s: f64,
    /// Collective time not hidden behind compute (reduce-scatter, all-reduce of the loss).
    pub comm_s: f64,
    /// Optimizer step on the local shard.
    pub optimizer_s: f64,
    /// The whole step, start of data to end of optimizer (not the sum of the phases: they may
    /// overlap).
    pub total_s: f64,
}

/// What one rank reports after finishing one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The generation the rank trains in (reports of an older generation are stale).
    pub generation: u64,
    /// The step just finished (0-based).
    pub step: u64,
    /// The reporting rank.
    pub rank: u32,
    /// World size of the generation.
    pub world: u32,
    /// Total loss of the step (the same on every rank after the loss all-reduce).
    pub loss: f64,
    /// Loss per target modality (modality name -> loss).
    pub losses: BTreeMap<String, f64>,
    /// Learning rate used for the step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Samples this rank trained on in this step.
    pub samples: u64,
    /// Tokens (input + target) this rank trained on in this step.
    pub tokens: u64,
    /// The optimizer step was skipped (non-finite loss or gradients).
    pub skipped: bool,
    /// Samples this rank dropped in this step (undecodable records, empty modalities).
    pub skipped_samples: u64,
    /// Where the time went.
    pub timings: StepTimings,
    /// The rank's resident memory (RSS) after the step, when its platform tells it.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{StepReport, StepTimings};

    #[test]
    fn step_report_round_trips_through_json() {
        let report = StepReport {
            generation: 2,
            step: 17,
            rank: 1,
            world: 4,
            loss: 3.25,
            losses: BTreeMap::from([("rgb@224".to_string(), 3.0), ("caption".to_string(), 3.5)]),
            lr: 2e-4,
            grad_norm: 1.125,
            samples: 32,
            tokens: 8192,
            skipped: false,
            skipped_samples: 1,
            timings: StepTimings { data_s: 0.01, total_s: 0.5, ..StepTimings::default() },
            rss_bytes: Some(1 << 30),
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<StepReport>(&json).unwrap(), report);
        assert!(json.contains(r#""timings":{"data_s":0.01,"forward_s":0.0"#), "{json}");
    }
}
