//! The job's Prometheus metrics, aggregated from the ranks' [`StepReport`]s and the
//! coordinator's own events, on a [`Registry`] the caller passes in (no global registry, so two
//! coordinators in one test process do not collide).
//!
//! Aggregation rule for one step (all ranks' reports of that step):
//! - samples and tokens are the **sum** over ranks (each rank trains its slice of the global
//!   batch);
//! - the step's time is the **max** of the ranks' `total_s` (the ranks wait for each other in the
//!   collectives, so the slowest rank sets the pace); the same max is taken per phase;
//! - throughput is therefore `sum(tokens) / max(total_s)` (and likewise for samples); a step
//!   whose max time is not positive leaves the throughput gauges unchanged rather than reporting
//!   infinity;
//! - the loss (total and per modality) is the samples-weighted mean over the ranks that report
//!   it, which equals every rank's value when the worker all-reduces the loss;
//! - a step counts as skipped when any rank skipped its optimizer step (gradients are global,
//!   so in practice all ranks agree).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry, TextEncoder};

use crate::api::ValidationStatus;
use crate::error::{CoordinatorError, Result};
use tessera_protocol::report::StepReport;
use tessera_protocol::validation::ValidationReport;

/// The step phases exported as values of the `phase` label, in report order.
pub const PHASES: [&str; 6] = ["data", "forward", "backward", "comm", "optimizer", "total"];

/// Every metric of one job, registered on a caller-owned [`Registry`].
#[derive(Debug)]
pub struct JobMetrics {
    registry: Registry,
    step: IntGauge,
    loss: Gauge,
    modality_loss: GaugeVec,
    lr: Gauge,
    grad_norm: Gauge,
    tokens_per_second: Gauge,
    samples_per_second: Gauge,
    tokens_total: IntCounter,
    samples_total: IntCounter,
    phase_seconds: GaugeVec,
    rank_step_seconds: GaugeVec,
    world_size: IntGauge,
    generation: IntGauge,
    restarts: IntCounter,
    checkpoint_duration: Histogram,
    checkpoint_bytes_total: IntCounter,
    checkpoint_last_bytes: IntGauge,
    checkpoints_committed: IntCounter,
    skipped_steps: IntCounter,
    skipped_samples: IntCounter,
    workers_registered: IntGauge,
    val_step: IntGauge,
    val_loss: GaugeVec,
    val_seconds: Gauge,
    /// The last validation as observed (for `GET /status`).
    last_validation: Mutex<Option<ValidationStatus>>,
    /// The running generation and its world size, once [`JobMetrics::set_generation`] was
    /// called: reports of other generations are refused so that no stale rank label comes back.
    current: Mutex<Option<(u64, u32)>>,
}

/// Gauges and counters are plain values here; a constructor failure only means a duplicate name
/// on the registry, which the caller must see.
fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> Result<T> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl JobMetrics {
    /// Creates every metric and registers it on `registry` (fails on a name already registered).
    pub fn new(registry: &Registry) -> Result<Self> {
        let r = registry;
        // Checkpoints take from well under a second (tiny models) to many minutes (XL, slow disks).
        let ckpt_buckets = prometheus::exponential_buckets(0.1, 2.0, 14)?;
        Ok(Self {
            registry: registry.clone(),
            step: register(r, IntGauge::new("tessera_step", "Last step completed by every rank (0-based).")?)?,
            loss: register(r, Gauge::new("tessera_loss", "Total loss of the last step.")?)?,
            modality_loss: register(
                r,
                GaugeVec::new(Opts::new("tessera_modality_loss", "Loss of the last step per target modality."), &["modality"])?,
            )?,
            lr: register(r, Gauge::new("tessera_learning_rate", "Learning rate of the last step.")?)?,
            grad_norm: register(r, Gauge::new("tessera_grad_norm", "Global gradient norm of the last step, before clipping.")?)?,
            tokens_per_second: register(
                r,
                Gauge::new("tessera_tokens_per_second", "Tokens of the last step (sum over ranks) / its time (max over ranks).")?,
            )?,
            samples_per_second: register(
                r,
                Gauge::new("tessera_samples_per_second", "Samples of the last step (sum over ranks) / its time (max over ranks).")?,
            )?,
            tokens_total: register(r, IntCounter::new("tessera_tokens_total", "Tokens trained on, summed over ranks.")?)?,
            samples_total: register(r, IntCounter::new("tessera_samples_total", "Samples trained on, summed over ranks.")?)?,
            phase_seconds: register(
                r,
                GaugeVec::new(Opts::new("tessera_step_phase_seconds", "Seconds of the last step per phase (max over ranks)."), &["phase"])?,
            )?,
            rank_step_seconds: register(
                r,
                GaugeVec::new(
                    Opts::new("tessera_rank_step_seconds", "Total seconds of the last step per rank (spots stragglers)."),
                    &["rank"],
                )?,
            )?,
            world_size: register(r, IntGauge::new("tessera_world_size", "Ranks of the running generation.")?)?,
            generation: register(r, IntGauge::new("tessera_generation", "Number of the running generation.")?)?,
            restarts: register(r, IntCounter::new("tessera_restarts_total", "Generations aborted and restarted from a checkpoint.")?)?,
            checkpoint_duration: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("tessera_checkpoint_duration_seconds", "Seconds from checkpoint request to commit.")
                        .buckets(ckpt_buckets),
                )?,
            )?,
            checkpoint_bytes_total: register(r, IntCounter::new("tessera_checkpoint_bytes_total", "Bytes of committed checkpoints.")?)?,
            checkpoint_last_bytes: register(r, IntGauge::new("tessera_checkpoint_last_bytes", "Bytes of the last committed checkpoint.")?)?,
            checkpoints_committed: register(r, IntCounter::new("tessera_checkpoints_committed_total", "Checkpoints committed.")?)?,
            skipped_steps: register(r, IntCounter::new("tessera_skipped_steps_total", "Steps whose optimizer step was skipped.")?)?,
            skipped_samples: register(r, IntCounter::new("tessera_skipped_samples_total", "Samples dropped by the ranks, summed.")?)?,
            workers_registered: register(r, IntGauge::new("tessera_workers_registered", "Workers currently registered.")?)?,
            val_step: register(r, IntGauge::new("tessera_validation_step", "Step count of the last validation.")?)?,
            val_loss: register(
                r,
                GaugeVec::new(
                    Opts::new("tessera_validation_loss", "Held-out loss per target modality at the last validation."),
                    &["modality"],
                )?,
            )?,
            val_seconds: register(r, Gauge::new("tessera_validation_seconds", "Seconds the ranks spent on the last validation.")?)?,
            last_validation: Mutex::new(None),
            current: Mutex::new(None),
        })
    }

    /// Records one step from all ranks' reports of it (see the module docs for the rule).
    ///
    /// Refuses an empty slice, reports of different steps or generations, a rank outside the
    /// world, a rank reported twice, and reports of a generation other than the one last set
    /// with [`JobMetrics::set_generation`].
    pub fn observe_step(&self, reports: &[StepReport]) -> Result<()> {
        let current = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        validate(reports, current)?;

        let samples: u64 = reports.iter().map(|r| r.samples).sum();
        let tokens: u64 = reports.iter().map(|r| r.tokens).sum();
        let max_of = |f: fn(&StepReport) -> f64| reports.iter().map(f).fold(0.0_f64, f64::max);
        let phases = [
            max_of(|r| r.timings.data_s),
            max_of(|r| r.timings.forward_s),
            max_of(|r| r.timings.backward_s),
            max_of(|r| r.timings.comm_s),
            max_of(|r| r.timings.optimizer_s),
            max_of(|r| r.timings.total_s),
        ];
        let step_s = phases[5];

        let step = reports[0].step;
        self.step.set(i64::try_from(step).unwrap_or(i64::MAX));
        self.loss.set(weighted_mean(reports.iter().map(|r| (r.loss, r.samples))));
        let mut per_modality: BTreeMap<&str, Vec<(f64, u64)>> = BTreeMap::new();
        for r in reports {
            for (m, l) in &r.losses {
                per_modality.entry(m).or_default().push((*l, r.samples));
            }
        }
        for (m, v) in per_modality {
            self.modality_loss.with_label_values(&[m]).set(weighted_mean(v.into_iter()));
        }
        self.lr.set(reports[0].lr);
        self.grad_norm.set(reports[0].grad_norm);
        if step_s > 0.0 {
            self.tokens_per_second.set(tokens as f64 / step_s);
            self.samples_per_second.set(samples as f64 / step_s);
        }
        self.tokens_total.inc_by(tokens);
        self.samples_total.inc_by(samples);
        for (phase, secs) in PHASES.iter().zip(phases) {
            self.phase_seconds.with_label_values(&[*phase]).set(secs);
        }
        for r in reports {
            self.rank_step_seconds.with_label_values(&[r.rank.to_string()]).set(r.timings.total_s);
        }
        if reports.iter().any(|r| r.skipped) {
            self.skipped_steps.inc();
        }
        self.skipped_samples.inc_by(reports.iter().map(|r| r.skipped_samples).sum());
        Ok(())
    }

    /// A generation started with `world` ranks: updates the gauges and drops every per-rank
    /// series, so ranks of the previous generation (a larger world) do not linger.
    pub fn set_generation(&self, generation: u64, world: u32) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, world));
        self.generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.world_size.set(i64::from(world));
        self.rank_step_seconds.reset();
    }

    /// A generation was aborted and training restarts from a checkpoint.
    pub fn inc_restarts(&self) {
        self.restarts.inc();
    }

    /// A checkpoint was committed after `duration_s` seconds, holding `bytes` bytes.
    pub fn observe_checkpoint(&self, duration_s: f64, bytes: u64) {
        self.checkpoint_duration.observe(duration_s);
        self.checkpoint_bytes_total.inc_by(bytes);
        self.checkpoint_last_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.checkpoints_committed.inc();
    }

    /// The ranks scored the held-out set: its step, loss per target modality and duration.
    pub fn observe_validation(&self, report: &ValidationReport) {
        self.val_step.set(i64::try_from(report.step).unwrap_or(i64::MAX));
        self.val_seconds.set(report.seconds);
        let mut loss = BTreeMap::new();
        for (modality, score) in &report.modalities {
            self.val_loss.with_label_values(&[modality.as_str()]).set(score.loss);
            loss.insert(modality.clone(), score.loss);
        }
        *self.last_validation.lock().expect("validation lock") =
            Some(ValidationStatus { step: report.step, loss, seconds: report.seconds });
    }

    /// The last validation observed.
    pub fn last_validation(&self) -> Option<ValidationStatus> {
        self.last_validation.lock().expect("validation lock").clone()
    }

    /// `n` workers are registered (members, whether or not they hold a rank).
    pub fn set_workers(&self, n: usize) {
        self.workers_registered.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The whole registry (these metrics and anything else registered on it) in the Prometheus
    /// text exposition format (version 0.0.4).
    pub fn render(&self) -> Result<String> {
        Ok(TextEncoder::new().encode_to_string(&self.registry.gather())?)
    }
}

/// Checks that `reports` are one step of one generation, each rank at most once.
fn validate(reports: &[StepReport], current: Option<(u64, u32)>) -> Result<()> {
    let refuse = |reason: String| Err(CoordinatorError::StepReports { reason });
    let Some(first) = reports.first() else {
        return refuse("no report".into());
    };
    if let Some((generation, _)) = current
        && first.generation != generation
    {
        return refuse(format!("generation {} is not the running generation {generation}", first.generation));
    }
    let mut ranks = BTreeSet::new();
    for r in reports {
        if (r.generation, r.step, r.world) != (first.generation, first.step, first.world) {
            return refuse(format!(
                "rank {} reports generation {} step {} world {}, rank {} generation {} step {} world {}",
                r.rank, r.generation, r.step, r.world, first.rank, first.generation, first.step, first.world
            ));
        }
        if r.rank >= r.world {
            return refuse(format!("rank {} outside world {}", r.rank, r.world));
        }
        if !ranks.insert(r.rank) {
            return refuse(format!("rank {} reported twice for step {}", r.rank, r.step));
        }
    }
    if let Some((_, world)) = current
        && first.world != world
    {
        return refuse(format!("world {} is not the running world {world}", first.world));
    }
    Ok(())
}

/// Mean of `(value, weight)` pairs weighted by sample count; a plain mean when every weight is
/// zero (a step where every rank dropped all of its samples still has a loss value to show).
fn weighted_mean(values: impl Iterator<Item = (f64, u64)>) -> f64 {
    let (mut num, mut den, mut sum, mut n) = (0.0, 0.0, 0.0, 0.0);
    for (v, w) in values {
        num += v * w as f64;
        den += w as f64;
        sum += v;
        n += 1.0;
    }
    if den > 0.0 { num / den } else { sum / n }
}

#[cfg(test)]
mod tests;
