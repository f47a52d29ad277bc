//! `tessera bench step`: times one training step (forward + 'mod' loss, backward, AdamW) of
//! the 4M model, the same step ml-4m's peer script `fourm_step.py` times, optionally on the very
//! batches that script builds (dumped by tools/ml4m_reference/dump_batches.py).
//! `tessera bench text` (in `text`) times caption tokenization against the peers' method;
//! `tessera bench generate` (in `generate`) times any-to-any generation.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use tch::Device;
use tessera_model::{AdamW, AdamWConfig, Checkpoint, ForwardOptions, MaskedBatch, SyntheticSpec, synthetic_batch};

use super::model::ArchArgs;
use super::output::emit;

mod data_path;
mod generate;
mod metrics;
mod text;

/// Benchmark sub-commands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time training steps of the model.
    Step(StepArgs),
    /// Caption tokenization throughput (captions/s) of the text tokenizer.
    Text(text::TextArgs),
    /// Loader throughput and training steps through the full data path vs pre-built batches.
    DataPath(data_path::DataPathArgs),
    /// The coordinator's per-step metrics path (observe every rank's report of a step).
    Metrics(metrics::MetricsArgs),
    /// Generation throughput (tokens/s) of a schedule on a conditioning batch.
    Generate(generate::GenerateBenchArgs),
}

/// Arguments of `bench step`.
#[derive(Debug, Args)]
pub struct StepArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Samples per step (ignored with --batches, whose files fix it).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Directory of batch-NNNNN.safetensors files to cycle through (else synthetic batches).
    #[arg(long)]
    batches: Option<PathBuf>,
    /// Encoder token budget.
    #[arg(long, default_value_t = 256)]
    num_input_tokens: usize,
    /// Decoder token budget.
    #[arg(long, default_value_t = 256)]
    num_target_tokens: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a bench sub-command.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Step(a) => step(a),
        BenchCommand::Text(a) => text::run(a),
        BenchCommand::DataPath(a) => data_path::run(a),
        BenchCommand::Metrics(a) => metrics::run(a),
        BenchCommand::Generate(a) => generate::run(a),
    }
}

#[derive(Serialize)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    let median = if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Stats { median, min: v.first().copied().unwrap_or(f64::NAN), max: v.last().copied().unwrap_or(f64::NAN) }
}

#[derive(Serialize)]
struct StepReport {
    bench: &'static str,
    preset: tessera_model::Preset,
    modalities: String,
    batch: i64,
    threads: i32,
    timed_steps: usize,
    params_total: usize,
    step_s: Stats,
    forward_loss_s: Stats,
    backward_s: Stats,
    adamw_s: Stats,
    tokens_per_s_median: f64,
    loss_first: f64,
    loss_last: f64,
    peak_rss_mib: f64,
    batch_source: String,
}

fn peak_rss_mib() -> f64 {
    tessera_worker::driver::report::peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))
}

fn step(a: StepArgs) -> anyhow::Result<()> {
    tch::set_num_threads(a.threads);
    let cfg = a.arch.config()?;
    let batches: Vec<MaskedBatch> = match &a.batches {
        Some(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{}: no .safetensors batch files", dir.display());
            }
            files.iter().map(|f| MaskedBatch::load(f)).collect::<Result<_, _>>()?
        }
        None => (0..a.warmup + a.steps)
            .map(|i| {
                let spec = SyntheticSpec {
                    batch_size: a.batch,
                    input_tokens: a.num_input_tokens,
                    target_tokens: a.num_target_tokens,
                    seed: a.seed + i as u64,
                };
                synthetic_batch(&cfg, &spec)
            })
            .collect(),
    };
    for (i, b) in batches.iter().enumerate() {
        b.check_against(&cfg, &format!("batch {i}"))?;
    }
    let batch_size = batches[0].batch_size();
    let ckpt = Checkpoint::init(&cfg, Device::Cpu, a.seed as i64)?;
    // ml-4m: lr = blr * batch / 256 with blr 1e-4.
    let mut opt = AdamW::new(&ckpt.vs, AdamWConfig { lr: 1e-4 * batch_size as f64 / 256.0, ..AdamWConfig::default() })?;
    let opts = ForwardOptions {
        num_encoder_tokens: a.num_input_tokens as i64,
        num_decoder_tokens: a.num_target_tokens as i64,
        ..ForwardOptions::default()
    };
    let (mut step_t, mut fwd_t, mut bwd_t, mut opt_t, mut losses) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..a.warmup + a.steps {
        let batch = &batches[i % batches.len()];
        let s0 = Instant::now();
        opt.zero_grad()?;
        let out = ckpt.model.forward(batch, &opts)?;
        let loss = out.loss.double_value(&[]);
        let _per_mod: Vec<f64> = out.mod_loss.values().map(|l| l.double_value(&[])).collect();
        let s1 = Instant::now();
        out.loss.backward();
        let s2 = Instant::now();
        opt.step()?;
        let s3 = Instant::now();
        if i >= a.warmup {
            step_t.push((s3 - s0).as_secs_f64());
            fwd_t.push((s1 - s0).as_secs_f64());
            bwd_t.push((s2 - s1).as_secs_f64());
            opt_t.push((s3 - s2).as_secs_f64());
        }
        losses.push(loss);
    }
    let step_s = stats(step_t);
    let tokens = (batch_size as usize * (a.num_input_tokens + a.num_target_tokens)) as f64;
    let report = StepReport {
        bench: "tessera_train_step",
        preset: a.arch.preset,
        modalities: a.arch.modalities.clone(),
        batch: batch_size,
        threads: a.threads,
        timed_steps: a.steps,
        params_total: cfg.param_counts().total,
        tokens_per_s_median: tokens / step_s.median,
        step_s,
        forward_loss_s: stats(fwd_t),
        backward_s: stats(bwd_t),
        adamw_s: stats(opt_t),
        loss_first: losses[0],
        loss_last: *losses.last().unwrap_or(&f64::NAN),
        peak_rss_mib: peak_rss_mib(),
        batch_source: a.batches.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "synthetic".into()),
    };
    emit(a.json, &report, || {
        format!(
            "{} {} batch {} threads {}: step {:.3}s (fwd {:.3} bwd {:.3} adamw {:.3}), {:.0} tokens/s, loss {:.4} -> {:.4}, peak RSS {:.0} MiB\n",
            report.preset,
            report.modalities,
            report.batch,
            report.threads,
            report.step_s.median,
            report.forward_loss_s.median,
            report.backward_s.median,
            report.adamw_s.median,
            report.tokens_per_s_median,
            report.loss_first,
            report.loss_last,
            report.peak_rss_mib
        )
    })
}
