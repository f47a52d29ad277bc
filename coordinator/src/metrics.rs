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
//!   so in practice all ranks agree);
//! - model FLOP/s is `sum(tokens) · flops_per_token / max(total_s)` and MFU that over
//!   `world · peak` (the per-token FLOPs and the peak of one rank's device are set once by the
//!   launcher, which knows the model: [`JobMetrics::set_flops_model`]);
//! - per rank: its tokens over its own `total_s`, its data wait `data_s / total_s`, its
//!   resident memory, its own time (`total_s` less the time blocked in collectives, which is
//!   what tells a straggler in a synchronous job) and whether it is flagged as a straggler
//!   (0 or 1, see rule 8 of the state machine).
//!
//! Which series exist when: counters (and the checkpoint histogram) from the first scrape, at
//! 0; gauges of the running state (world size, generation, registered workers) from the first
//! scrape; gauges that describe a step (`tessera_step`, the losses, learning rate, gradient
//! norm, throughput, phase times, model FLOP/s, MFU) only from the first step a generation
//! completes. Before that they are absent rather than a made-up 0, which would read as a
//! perfect loss or a stalled job; `absent(tessera_loss)` tells "no step yet". Series with a
//! `rank` label appear with that rank's first step and are dropped when a generation starts.
//! Every series carries the job's name as the `job` label when the caller builds the
//! registry with it (see the README: a scrape config then needs `honor_labels: true`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::api::ValidationStatus;
use crate::error::{CoordinatorError, Result};
use tessera_protocol::report::StepReport;
use tessera_protocol::validation::ValidationReport;
use tessera_protocol::{Generation, Rank};

/// The step phases exported as values of the `phase` label, in report order.
pub const PHASES: [&str; 6] = ["data", "forward", "backward", "comm", "optimizer", "total"];

/// Every metric of one job, registered on a caller-owned [`Registry`].
#[derive(Debug)]
pub struct JobMetrics {
    registry: Registry,
    step: IntGaugeVec,
    loss: GaugeVec,
    modality_loss: GaugeVec,
    lr: GaugeVec,
    grad_norm: GaugeVec,
    tokens_per_second: GaugeVec,
    samples_per_second: GaugeVec,
    model_flops_per_token: GaugeVec,
    peak_flops_per_second: GaugeVec,
    model_flops_per_second: GaugeVec,
    mfu: GaugeVec,
    rank_tokens_per_second: GaugeVec,
    rank_data_wait: GaugeVec,
    rank_resident_memory: GaugeVec,
    rank_own_step_seconds: GaugeVec,
    rank_straggler: GaugeVec,
    stragglers_flagged: IntCounter,
    last_step_timestamp: Gauge,
    last_checkpoint_timestamp: Gauge,
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
    /// Model FLOPs per token and one rank's peak FLOP/s, once set.
    flops_model: Mutex<Option<FlopsModel>>,
    /// The running generation and its world size, once [`JobMetrics::set_generation`] was
    /// called: reports of other generations are refused so that no stale rank label comes back.
    current: Mutex<Option<(Generation, u32)>>,
}

/// How throughput converts to model FLOP/s and MFU: what the launcher, which knows the model,
/// tells the metrics once per job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlopsModel {
    /// Training FLOPs per token of the model at the job's token budgets.
    pub flops_per_token: f64,
    /// Peak FLOP/s of one rank's device; `None` when unknown (no MFU then).
    pub peak_flops_per_rank: Option<f64>,
}

/// A gauge without labels that is absent from the exposition until its first value (a
/// `GaugeVec` with no label names exports nothing before `with_label_values(&[])`).
fn late_gauge(name: &str, help: &str) -> prometheus::Result<GaugeVec> {
    GaugeVec::new(Opts::new(name, help), &[])
}

/// Sets a [`late_gauge`].
fn set(g: &GaugeVec, v: f64) {
    g.with_label_values::<&str>(&[]).set(v);
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
            step: register(r, IntGaugeVec::new(Opts::new("tessera_step", "Last step completed by every rank (0-based)."), &[])?)?,
            loss: register(r, late_gauge("tessera_loss", "Total loss of the last step.")?)?,
            modality_loss: register(
                r,
                GaugeVec::new(Opts::new("tessera_modality_loss", "Loss of the last step per target modality."), &["modality"])?,
            )?,
            lr: register(r, late_gauge("tessera_learning_rate", "Learning rate of the last step.")?)?,
            grad_norm: register(r, late_gauge("tessera_grad_norm", "Global gradient norm of the last step, before clipping.")?)?,
            tokens_per_second: register(
                r,
                late_gauge("tessera_tokens_per_second", "Tokens of the last step (sum over ranks) / its time (max over ranks).")?,
            )?,
            samples_per_second: register(
                r,
                late_gauge("tessera_samples_per_second", "Samples of the last step (sum over ranks) / its time (max over ranks).")?,
            )?,
            model_flops_per_token: register(
                r,
                late_gauge("tessera_model_flops_per_token", "Training FLOPs per token of the model (6N + attention, see the README).")?,
            )?,
            peak_flops_per_second: register(
                r,
                late_gauge("tessera_peak_flops_per_second", "Peak FLOP/s of one rank's device (--peak-tflops, or the measured default).")?,
            )?,
            model_flops_per_second: register(
                r,
                late_gauge("tessera_model_flops_per_second", "Model FLOPs of the last step (all ranks) / its time (max over ranks).")?,
            )?,
            mfu: register(
                r,
                late_gauge("tessera_mfu_ratio", "Model FLOPs utilisation of the last step: model FLOP/s / (world size * peak FLOP/s).")?,
            )?,
            rank_tokens_per_second: register(
                r,
                GaugeVec::new(
                    Opts::new("tessera_rank_tokens_per_second", "Tokens of the last step per rank / that rank's step time."),
                    &["rank"],
                )?,
            )?,
            rank_data_wait: register(
                r,
                GaugeVec::new(
                    Opts::new("tessera_rank_data_wait_ratio", "Fraction of the last step a rank waited for its data loader."),
                    &["rank"],
                )?,
            )?,
            rank_resident_memory: register(
                r,
                GaugeVec::new(Opts::new("tessera_rank_resident_memory_bytes", "Resident memory (RSS) of each rank's process."), &["rank"])?,
            )?,
            rank_own_step_seconds: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "tessera_rank_own_step_seconds",
                        "Seconds of the last step per rank less its time blocked in collectives (data and compute).",
                    ),
                    &["rank"],
                )?,
            )?,
            rank_straggler: register(
                r,
                GaugeVec::new(
                    Opts::new("tessera_rank_straggler", "1 while a rank is flagged as a straggler in this generation, else 0."),
                    &["rank"],
                )?,
            )?,
            stragglers_flagged: register(
                r,
                IntCounter::new("tessera_stragglers_flagged_total", "Ranks flagged as stragglers (own step time far above the others').")?,
            )?,
            last_step_timestamp: register(
                r,
                Gauge::new(
                    "tessera_last_step_timestamp_seconds",
                    "UNIX time of the last completed step (the coordinator's start before the first): a stall shows as its age.",
                )?,
            )?,
            last_checkpoint_timestamp: register(
                r,
                Gauge::new(
                    "tessera_last_checkpoint_timestamp_seconds",
                    "UNIX time of the newest checkpoint commit (the coordinator's start before the first).",
                )?,
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
            flops_model: Mutex::new(None),
            current: Mutex::new(None),
        })
        .inspect(|m: &Self| {
            // Exported from the first scrape so that a job that never steps still shows a stall.
            m.last_step_timestamp.set(unix_now());
            m.last_checkpoint_timestamp.set(unix_now());
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
        self.step.with_label_values::<&str>(&[]).set(i64::try_from(step.0).unwrap_or(i64::MAX));
        set(&self.loss, weighted_mean(reports.iter().map(|r| (r.loss, r.samples))));
        let mut per_modality: BTreeMap<&str, Vec<(f64, u64)>> = BTreeMap::new();
        for r in reports {
            for (m, l) in &r.losses {
                per_modality.entry(m.as_str()).or_default().push((*l, r.samples));
            }
        }
        for (m, v) in per_modality {
            self.modality_loss.with_label_values(&[m]).set(weighted_mean(v.into_iter()));
        }
        set(&self.lr, reports[0].lr);
        set(&self.grad_norm, reports[0].grad_norm);
        if step_s > 0.0 {
            set(&self.tokens_per_second, tokens as f64 / step_s);
            set(&self.samples_per_second, samples as f64 / step_s);
            if let Some(m) = *self.flops_model.lock().unwrap_or_else(|e| e.into_inner()) {
                let achieved = tokens as f64 * m.flops_per_token / step_s;
                set(&self.model_flops_per_second, achieved);
                if let Some(peak) = m.peak_flops_per_rank.filter(|p| *p > 0.0) {
                    set(&self.mfu, achieved / (peak * f64::from(reports[0].world)));
                }
            }
        }
        self.last_step_timestamp.set(unix_now());
        self.tokens_total.inc_by(tokens);
        self.samples_total.inc_by(samples);
        for (phase, secs) in PHASES.iter().zip(phases) {
            self.phase_seconds.with_label_values(&[*phase]).set(secs);
        }
        for r in reports {
            let rank = [r.rank.to_string()];
            self.rank_step_seconds.with_label_values(&rank).set(r.timings.total_s);
            self.rank_own_step_seconds.with_label_values(&rank).set(r.timings.own_s());
            // Created at 0 with the rank's first step, so an alert sees the series before it fires.
            self.rank_straggler.with_label_values(&rank).add(0.0);
            if r.timings.total_s > 0.0 {
                self.rank_tokens_per_second.with_label_values(&rank).set(r.tokens as f64 / r.timings.total_s);
                self.rank_data_wait.with_label_values(&rank).set((r.timings.data_s / r.timings.total_s).clamp(0.0, 1.0));
            }
            if let Some(bytes) = r.rss_bytes {
                self.rank_resident_memory.with_label_values(&rank).set(bytes as f64);
            }
        }
        if reports.iter().any(|r| r.skipped) {
            self.skipped_steps.inc();
        }
        self.skipped_samples.inc_by(reports.iter().map(|r| r.skipped_samples).sum());
        Ok(())
    }

    /// A generation started with `world` ranks: updates the gauges and drops every per-rank
    /// series, so ranks of the previous generation (a larger world) do not linger.
    pub fn set_generation(&self, generation: Generation, world: u32) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, world));
        self.generation.set(i64::try_from(generation.0).unwrap_or(i64::MAX));
        self.world_size.set(i64::from(world));
        self.rank_step_seconds.reset();
        self.rank_tokens_per_second.reset();
        self.rank_data_wait.reset();
        self.rank_resident_memory.reset();
        self.rank_own_step_seconds.reset();
        self.rank_straggler.reset();
    }

    /// Rank `rank` of the running generation was flagged as a straggler.
    pub fn flag_straggler(&self, rank: Rank) {
        self.rank_straggler.with_label_values(&[rank.to_string()]).set(1.0);
        self.stragglers_flagged.inc();
    }

    /// The model's training FLOPs per token and one rank's peak FLOP/s, for model FLOP/s and
    /// MFU from the next step on.
    pub fn set_flops_model(&self, m: FlopsModel) {
        *self.flops_model.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
        set(&self.model_flops_per_token, m.flops_per_token);
        match m.peak_flops_per_rank {
            Some(p) => set(&self.peak_flops_per_second, p),
            None => {
                self.peak_flops_per_second.reset();
                self.mfu.reset();
            }
        }
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
        self.last_checkpoint_timestamp.set(unix_now());
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

/// The wall clock as UNIX seconds, for the timestamp gauges (what Prometheus compares with its
/// `time()`); 0 on a clock before 1970.
fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Checks that `reports` are one step of one generation, each rank at most once.
fn validate(reports: &[StepReport], current: Option<(Generation, u32)>) -> Result<()> {
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
        if r.rank.0 >= r.world {
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
