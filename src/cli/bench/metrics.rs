//! `tessera bench metrics`: the coordinator's per-step metrics path alone
//! (`JobMetrics::observe_step` on every rank's report of a step), run `--steps` times in a loop.
//! Timed from outside with farm-bench against `--steps 0`, the difference per step is its cost;
//! the figure it prints itself is an in-process cross-check.

use std::collections::BTreeMap;
use std::time::Instant;

use clap::Args;
use tessera_coordinator::{FlopsModel, JobMetrics};
use tessera_protocol::{Generation, ModalityName, Rank, Step, StepReport, StepTimings};
use tessera_tokenizers::Modality;

/// Arguments of `bench metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Steps observed.
    #[arg(long, default_value_t = 10_000)]
    steps: u64,
    /// Ranks reporting each step.
    #[arg(long, default_value_t = 2)]
    ranks: u32,
    /// Target modalities in each report (the demo trains 7).
    #[arg(long, default_value_t = 7)]
    modalities: usize,
}

/// Runs `bench metrics`.
pub fn run(a: MetricsArgs) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new_custom(None, Some([("job".to_string(), "bench".to_string())].into()))?;
    let metrics = JobMetrics::new(&registry)?;
    metrics.set_generation(Generation(1), a.ranks);
    metrics.set_flops_model(FlopsModel { flops_per_token: 1e7, peak_flops_per_rank: Some(1e11) });
    // Real keys: a report's losses are keyed by modalities the registry knows.
    let names = Modality::ALL.iter().take(a.modalities);
    anyhow::ensure!(names.len() == a.modalities, "--modalities {}: there are {} built-in modalities", a.modalities, Modality::ALL.len());
    let losses: BTreeMap<ModalityName, f64> = names.enumerate().map(|(i, m)| ((*m).into(), 3.0 + i as f64 * 0.1)).collect();
    let report = |step: u64, rank: u32| StepReport {
        generation: Generation(1),
        step: Step(step),
        rank: Rank(rank),
        world: a.ranks,
        loss: 3.5,
        losses: losses.clone(),
        lr: 1e-4,
        grad_norm: 1.0,
        samples: 4,
        tokens: 512,
        skipped: false,
        skipped_samples: 0,
        timings: StepTimings { data_s: 0.01, forward_s: 0.1, backward_s: 0.2, comm_s: 0.05, optimizer_s: 0.02, total_s: 0.4 },
        rss_bytes: Some(1 << 30),
        counters: Default::default(),
    };
    // The reports are built outside the timed loop: the coordinator receives them ready.
    let steps: Vec<Vec<StepReport>> = (0..a.steps).map(|s| (0..a.ranks).map(|r| report(s, r)).collect()).collect();
    let t = Instant::now();
    for reports in &steps {
        metrics.observe_step(reports)?;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let per_step_us = if a.steps > 0 { elapsed / a.steps as f64 * 1e6 } else { 0.0 };
    println!(
        "observe_step: {} steps of {} ranks × {} modalities in {elapsed:.3} s: {per_step_us:.2} µs per step",
        a.steps, a.ranks, a.modalities
    );
    Ok(())
}
