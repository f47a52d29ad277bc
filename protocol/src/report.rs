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
    /// Time blocked in collectives (waits not hidden behind compute: all-gathers,
    /// reduce-scatters, the loss all-reduce). It includes waiting for slower ranks, which is
    /// why a straggler is found by [`StepTimings::own_s`], not by `total_s`.
    pub comm_s: f64,
    /// Optimizer step on the local shard.
    pub optimizer_s: f64,
    /// The whole step, start of data to end of optimizer (not the sum of the phases: they may
    /// overlap).
    pub total_s: f64,
}

impl StepTimings {
    /// The rank's own time: the step less the time it was blocked in collectives, i.e. its
    /// data loading and compute. In a synchronous job every rank's `total_s` is the same (the
    /// fast ones wait for the slow one inside the collectives); this is what differs.
    pub fn own_s(&self) -> f64 {
        (self.total_s - self.comm_s).max(0.0)
    }
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

    #[test]
    fn own_time_excludes_the_wait_in_collectives() {
        let waited = StepTimings { data_s: 0.01, forward_s: 0.02, comm_s: 0.9, total_s: 1.0, ..StepTimings::default() };
        assert!((waited.own_s() - 0.1).abs() < 1e-12);
        // Phases measured apart may add up past the whole: never a negative time.
        assert_eq!(StepTimings { comm_s: 1.2, total_s: 1.0, ..StepTimings::default() }.own_s(), 0.0);
    }
}
