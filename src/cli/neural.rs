//! `tessera tokenizer train` (a neural modality tokenizer on a generated world) and
//! `tessera tokenize` (pre-tokenize a world's modality into token shards with a trained one).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::Device;
use tessera_model::tokenizer::{
    MODALITY_FILE, TokenizeOptions, Tokenizer, TokenizerConfig, TrainOptions, token_folder_name, token_modality_def, tokenize_world_split,
    train_from_world,
};

/// Arguments of `tessera tokenizer train`.
#[derive(Debug, Args)]
pub struct TrainNeuralArgs {
    /// World folder to learn (depth, normal, semseg, rgb, feature_map, global_feature, …).
    #[arg(long)]
    modality: String,
    /// The world (`tessera data generate --out DIR`): trains on DIR/train, evaluates on DIR/val.
    #[arg(long)]
    data: PathBuf,
    /// Where the tokenizer (weights, config, optimizer, eval.json) goes; an interrupted run
    /// there resumes.
    #[arg(long)]
    out: PathBuf,
    /// Image side the tokenizer works at (the preset picks grid and codebook).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
}

/// Arguments of `tessera tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// The world to tokenize.
    #[arg(long)]
    data: PathBuf,
    /// A trained tokenizer directory (`tessera tokenizer train --out`).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Splits to tokenize.
    #[arg(long, value_delimiter = ',', default_value = "train,val")]
    splits: Vec<String>,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Shards encoded concurrently, each on its own thread with its own copy of the tokenizer
    /// (the output does not depend on it).
    #[arg(long, default_value_t = 1)]
    parallel_shards: usize,
    /// Write at most this many shards per split, then stop (a rerun continues; finished
    /// shards are always kept). Default: all.
    #[arg(long)]
    max_shards: Option<usize>,
}

/// Runs `tessera tokenizer train`.
pub fn train(a: TrainNeuralArgs) -> anyhow::Result<()> {
    tch::set_num_threads(a.threads.max(1));
    let cfg = TokenizerConfig::preset(&a.modality, a.size).with_context(|| format!("--modality {}", a.modality))?;
    let opts = TrainOptions { steps: a.steps, batch_size: a.batch, checkpoint_every: a.checkpoint_every, ..TrainOptions::default() };
    let bar = ProgressBar::with_draw_target(Some(a.steps as u64), ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}").expect("a valid template"));
    bar.set_prefix(format!("tokenizer {}", a.modality));
    let report = train_from_world(&a.data, &cfg, &opts, &a.out, Device::Cpu, &mut |m| {
        bar.set_position(m.step as u64 + 1);
        bar.set_message(format!("recon {:.4}  usage {:.0}%  ppl {:.1}  {:.0} ms/step", m.recon_loss, 100.0 * m.usage, m.perplexity, m.ms));
    })?;
    bar.finish();
    let v = &report.val;
    println!(
        "{}: val MSE {:.5} (mean-image baseline {:.5}), loss {:.5} (baseline {:.5}), mIoU {:.3} (baseline {:.3}), token agreement {:.1}%, codebook usage {:.0}%, {:.1} ms/step; saved to {}",
        a.modality,
        v.mse,
        v.baseline_mse,
        v.loss,
        v.baseline_loss,
        v.miou,
        v.baseline_miou,
        100.0 * v.token_agreement,
        100.0 * v.usage,
        report.train.median_ms_per_step,
        report.out_dir.display()
    );
    Ok(())
}

/// Runs `tessera tokenize`.
pub fn tokenize(a: TokenizeArgs) -> anyhow::Result<()> {
    tch::set_num_threads(a.threads.max(1));
    let tok = Tokenizer::load(&a.tokenizer, Device::Cpu).with_context(|| format!("loading {}", a.tokenizer.display()))?;
    match token_modality_def(&tok) {
        Some(d) => println!(
            "{}: {} codes, {}x{} tokens per sample; declare it in a job as [[model.token_modalities]] (see {MODALITY_FILE} in each split's folder)",
            d.key, d.vocab_size, d.grid, d.grid
        ),
        None => println!(
            "{}: {} codes per sample do not form a square grid, so no {MODALITY_FILE} is written (4M cannot train on them yet)",
            token_folder_name(&tok),
            tok.config().tokens_per_sample()
        ),
    }
    for split in &a.splits {
        let t0 = std::time::Instant::now();
        let s =
            tokenize_world_split(&a.data, split, &tok, &TokenizeOptions { max_shards: a.max_shards, parallel_shards: a.parallel_shards })?;
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "{split}: {} samples, {} shards in {}: {} written ({} samples, {:.0} images/s), {} kept from an earlier run{}",
            s.samples,
            s.shards,
            s.folder.display(),
            s.written,
            s.encoded,
            s.encoded as f64 / secs.max(1e-9),
            s.kept,
            if s.complete { "" } else { "; stopped early (--max-shards): rerun to finish" }
        );
    }
    Ok(())
}
