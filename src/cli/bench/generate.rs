//! `tessera bench generate`: times `GenerationSampler::generate` on one conditioning batch and
//! schedule (the files `tessera generate` reads), the loop ml-4m's `GenerationSampler` runs in
//! `tools/bench/ml4m_generate.py`. Counts the tokens a run decodes: every MaskGIT/ROAR step's
//! committed tokens and every autoregressive sampling, times the batch size.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use tch::Device;
use tessera_model::generate::{GenerateOptions, GenerationSampler, ScheduleSpec, Scheme, TextSpecials};
use tessera_model::{Checkpoint, MaskedBatch};
use tessera_tokenizers::text::TextTokenizer;

use super::{Stats, stats};
use crate::cli::model::DeviceArg;
use crate::cli::output::emit;

/// Arguments of `bench generate`.
#[derive(Debug, Args)]
pub struct GenerateBenchArgs {
    /// Model weights.
    #[arg(long)]
    weights: PathBuf,
    /// Conditioning batch (full inputs and empty targets).
    #[arg(long)]
    batch: PathBuf,
    /// Schedule YAML (as `tessera generate` reads it).
    #[arg(long)]
    schedule: PathBuf,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Base seed.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Text tokenizer JSON for the special ids (default: ml-4m's layout).
    #[arg(long)]
    text_tokenizer: Option<PathBuf>,
    /// Decode autoregressive targets without the KV cache.
    #[arg(long)]
    no_kv_cache: bool,
    /// Write the last run's final batch here (to compare ids with ml-4m's).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device (CUDA for the GPU figures of `tools/gpu/check.sh`).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// bf16 autocast (CUDA only, as `tessera generate --bf16`).
    #[arg(long)]
    bf16: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct GenerateReport {
    bench: &'static str,
    threads: i32,
    device: String,
    bf16: bool,
    batch: i64,
    runs: usize,
    kv_cache: bool,
    tokens: i64,
    seconds: Stats,
    tokens_per_s_median: f64,
}

/// Runs `bench generate`.
pub fn run(a: GenerateBenchArgs) -> anyhow::Result<()> {
    tch::set_num_threads(a.threads);
    let device = a.device.device()?;
    anyhow::ensure!(!a.bf16 || device.is_cuda(), "--bf16 runs under CUDA autocast; on the CPU generation runs in fp32");
    let ckpt = Checkpoint::load(&a.weights, device)?;
    let batch = MaskedBatch::load(&a.batch)?;
    batch.check_against(ckpt.model.config(), &a.batch.display().to_string())?;
    let batch = batch.to_device(device);
    let plan = ScheduleSpec::from_file(&a.schedule)?.resolve(&a.schedule.display().to_string())?;
    let specials = match &a.text_tokenizer {
        Some(p) => TextSpecials::from_tokenizer(&TextTokenizer::from_file(p)?)?,
        None => TextSpecials::ml4m_default(),
    };
    let opts = GenerateOptions { top_k: plan.top_k, top_p: plan.top_p, seed: Some(a.seed), kv_cache: !a.no_kv_cache };
    let sampler = GenerationSampler::new(&ckpt.model, specials);
    let b = batch.batch_size();
    let grid_tokens: i64 = plan.steps.iter().filter(|s| s.scheme != Scheme::Autoregressive).filter_map(|s| s.num_tokens).sum::<i64>() * b;
    let (mut secs, mut tokens) = (Vec::new(), 0);
    for i in 0..a.warmup + a.runs.max(1) {
        let mut ar_samplings = 0i64;
        let t = Instant::now();
        let out = tch::autocast(a.bf16, || {
            sampler.generate_observed(&batch, &plan.steps, &opts, &mut |s| {
                if s.scheme == Scheme::Autoregressive {
                    ar_samplings += 1;
                }
            })
        })?;
        if let Device::Cuda(d) = device {
            // Kernels still queued would otherwise fall outside the timing.
            tch::Cuda::synchronize(d as i64);
        }
        let elapsed = t.elapsed().as_secs_f64();
        tokens = grid_tokens + ar_samplings * b;
        if i >= a.warmup {
            secs.push(elapsed);
        }
        if let (Some(path), true) = (&a.out, i + 1 == a.warmup + a.runs.max(1)) {
            out.to_device(Device::Cpu).save(path)?;
        }
    }
    let seconds = stats(secs);
    let report = GenerateReport {
        bench: "tessera_generate",
        threads: a.threads,
        device: format!("{device:?}"),
        bf16: a.bf16,
        batch: b,
        runs: a.runs.max(1),
        kv_cache: opts.kv_cache,
        tokens,
        tokens_per_s_median: tokens as f64 / seconds.median,
        seconds,
    };
    emit(a.json, &report, || {
        format!(
            "{} tokens (batch {}) in {:.3}s median of {} runs ({:.0} tokens/s, {} threads)\n",
            report.tokens, report.batch, report.seconds.median, report.runs, report.tokens_per_s_median, report.threads
        )
    })
}
