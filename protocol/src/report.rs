//! The per-step report every rank sends the coordinator after each optimizer step. It is small
//! (a few hundred bytes) because the coordinator is off the tensors' critical path: it only
//! aggregates these into metrics ([`crate::metrics::JobMetrics::observe_step`]) and status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checkpoint::Counters;
use crate::ids::{Generation, ModalityName, Rank, Step};

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
    pub generation: Generation,
    /// The step just finished (0-based).
    pub step: Step,
    /// The reporting rank.
    pub rank: Rank,
    /// World size of the generation.
    pub world: u32,
    /// Total loss of the step (the same on every rank after the loss all-reduce).
    pub loss: f64,
    /// Loss per target modality.
    pub losses: BTreeMap<ModalityName, f64>,
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
    /// The job's counters after the step as this rank counts them (samples and tokens seen,
    /// skipped steps and samples); rank 0's go to `train_log.jsonl`.
    #[serde(default)]
    pub counters: Counters,
}

/// Version of the `train_log.jsonl` line schema ([`TrainLogLine::v`]). Lines without `v` were
/// written before there was one schema (one process wrote flat timings, the coordinator a
/// `timings` object); readers accept both.
pub const TRAIN_LOG_SCHEMA: u32 = 1;

/// One line of `OUT/train_log.jsonl`: one optimizer step of the job, the same schema in every
/// launch mode (a process training alone is a world of one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLogLine {
    /// Schema version: [`TRAIN_LOG_SCHEMA`].
    pub v: u32,
    /// UNIX time in milliseconds when the step was logged.
    pub ts_ms: u64,
    /// The step (0-based).
    pub step: u64,
    /// Membership epoch that trained it (0 for a process alone).
    pub generation: u64,
    /// Ranks that trained it.
    pub world_size: u32,
    /// Total loss of the step.
    pub loss: f64,
    /// Loss per target modality.
    pub mod_loss: BTreeMap<ModalityName, f64>,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The update was skipped (non-finite loss or gradient).
    pub skipped: bool,
    /// Samples of the step, over all ranks.
    pub samples: u64,
    /// Tokens (input + target) of the step, over all ranks.
    pub tokens: u64,
    /// Wall seconds of the step (the slowest rank's).
    pub step_s: f64,
    /// Rank 0's phases.
    pub timings: StepTimings,
    /// Each rank's whole step, by rank.
    pub rank_step_s: Vec<f64>,
    /// Samples consumed by the job so far (including those of skipped steps).
    pub samples_seen: u64,
    /// Tokens consumed by the job so far.
    pub tokens_seen: u64,
    /// Steps skipped so far for a non-finite loss or gradient.
    pub skipped_steps: u64,
    /// Samples skipped so far as undecodable.
    pub skipped_samples: u64,
}

impl TrainLogLine {
    /// The line of one step from every rank's report of it (rank order), logged at `ts_ms`.
    pub fn of_step(reports: &[StepReport], ts_ms: u64) -> Option<Self> {
        let r0 = reports.first()?;
        Some(Self {
            v: TRAIN_LOG_SCHEMA,
            ts_ms,
            step: r0.step.0,
            generation: r0.generation.0,
            world_size: reports.len() as u32,
            loss: r0.loss,
            mod_loss: r0.losses.clone(),
            lr: r0.lr,
            grad_norm: r0.grad_norm,
            skipped: r0.skipped,
            samples: reports.iter().map(|r| r.samples).sum(),
            tokens: reports.iter().map(|r| r.tokens).sum(),
            step_s: reports.iter().map(|r| r.timings.total_s).fold(0.0, f64::max),
            timings: r0.timings,
            rank_step_s: reports.iter().map(|r| r.timings.total_s).collect(),
            samples_seen: r0.counters.samples_seen,
            tokens_seen: r0.counters.tokens_seen,
            skipped_steps: r0.counters.skipped_steps,
            skipped_samples: r0.counters.skipped_samples,
        })
    }
}

/// Milliseconds since the UNIX epoch (0 for a clock before it), as logs record time.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{StepReport, StepTimings};
    use crate::ids::{Generation, Rank, Step};
    use tessera_tokenizers::Modality;

    #[test]
    fn step_report_round_trips_through_json() {
        let report = StepReport {
            generation: Generation(2),
            step: Step(17),
            rank: Rank(1),
            world: 4,
            loss: 3.25,
            losses: BTreeMap::from([(Modality::Rgb224.into(), 3.0), (Modality::Caption.into(), 3.5)]),
            lr: 2e-4,
            grad_norm: 1.125,
            samples: 32,
            tokens: 8192,
            skipped: false,
            skipped_samples: 1,
            timings: StepTimings { data_s: 0.01, total_s: 0.5, ..StepTimings::default() },
            rss_bytes: Some(1 << 30),
            counters: Default::default(),
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
