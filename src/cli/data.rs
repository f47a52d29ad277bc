//! `tessera data …`: the data path's policies, inspected without data (mixture budgets now).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_tokenizers::ModalitySet;
use tessera_tokenizers::mixture::{AlphasConfig, BudgetConfig, BudgetReport, BudgetSampler, BudgetStats, TokenRange};

use super::output::{emit, si};

/// Data sub-commands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Sample per-sample token budgets from an ml-4m alphas mixture and summarise them.
    InspectMixture(InspectMixtureArgs),
    /// Write a seeded multi-modality dataset in ml-4m's shard layout (rgb png, caption, det,
    /// metadata, tok_rgb int16 tokens, crop_settings), for tests, benchmarks and trying the
    /// shard loader.
    WriteFixture(WriteFixtureArgs),
    /// Generate the built-in multimodal world (aligned RGB, depth, normals, segmentation,
    /// instances, edges, captions, boxes, metadata, palettes, features) as ml-4m shards with
    /// train/val splits.
    Generate(GenerateArgs),
}

/// Arguments of `data generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Samples over both splits.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Image side in pixels (a multiple of 16: 64, 128, 224, ...).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Crops per sample in crop_settings (crop 0 = the centre square).
    #[arg(long, default_value_t = 1)]
    crops: usize,
    /// Fraction of samples in the val split.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    /// Threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Arguments of `data write-fixture`.
#[derive(Debug, Args)]
pub struct WriteFixtureArgs {
    /// Output directory (one folder per modality is created inside).
    #[arg(long)]
    out: PathBuf,
    /// Shards per folder.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Samples per shard.
    #[arg(long, default_value_t = 250)]
    samples_per_shard: usize,
    /// Crops per sample.
    #[arg(long, default_value_t = 4)]
    crops: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Arguments of `data inspect-mixture`.
#[derive(Debug, Args)]
pub struct InspectMixtureArgs {
    /// ml-4m alphas YAML: a per-modality table, `sampling_weights` + `alphas_mixture`, or
    /// hyphen strings (`input_alphas: "1.0-0.5-…"`, optional `in_domains`/`out_domains`).
    #[arg(long)]
    alphas: PathBuf,
    /// Domain set (4m21, 4m7, mod11 or comma-separated keys): restricts a table to these
    /// modalities, or gives the sorted input/output domains of a hyphen-string file.
    #[arg(long)]
    modalities: Option<String>,
    /// Input tokens per sample (ml-4m num_input_tokens).
    #[arg(long, default_value_t = 256)]
    input_tokens: usize,
    /// Smallest input tokens per sample (ml-4m min_input_tokens); default: --input-tokens.
    #[arg(long)]
    min_input_tokens: Option<usize>,
    /// Target tokens per sample (ml-4m num_target_tokens).
    #[arg(long, default_value_t = 256)]
    target_tokens: usize,
    /// Smallest target tokens per sample (ml-4m min_target_tokens); default: --target-tokens.
    #[arg(long)]
    min_target_tokens: Option<usize>,
    /// Samples to draw (global indices 0..N).
    #[arg(long, default_value_t = 100_000)]
    samples: u64,
    /// Seed of the per-sample streams.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a data sub-command.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::InspectMixture(a) => inspect_mixture(a),
        DataCommand::Generate(a) => {
            let spec = tessera_tokenizers::world::WorldSpec {
                samples: a.samples,
                size: a.size,
                seed: a.seed,
                n_crops: a.crops,
                val_fraction: a.val_fraction,
                shard_size: a.shard_size,
                threads: a.threads,
            };
            let bar = indicatif::ProgressBar::new(a.samples as u64);
            let summary = tessera_tokenizers::world::generate(&a.out, &spec, &mut |p| bar.set_position(p.done as u64))?;
            bar.finish_and_clear();
            println!(
                "wrote {} samples in {:.1}s ({:.0} samples/s, {:.1} MB) to {}",
                a.samples,
                summary.elapsed.as_secs_f64(),
                summary.samples_per_second(),
                summary.bytes as f64 / 1e6,
                a.out.display()
            );
            for s in &summary.splits {
                println!("  {}: {} samples, {} shards per folder: {}", s.name, s.samples, s.shards, s.data_path);
            }
            Ok(())
        }
        DataCommand::WriteFixture(a) => {
            let spec = tessera_tokenizers::shards::FixtureSpec {
                shards: a.shards,
                samples_per_shard: a.samples_per_shard,
                n_crops: a.crops,
                n_tokens: 196,
                width: a.size,
                height: a.size,
                seed: a.seed,
            };
            let fx = tessera_tokenizers::shards::write_fixture(&a.out, &spec)?;
            println!("wrote {} samples: path = \"{}\", name_map = {{ tok_rgb = \"tok_rgb@224\" }}", fx.keys.len(), fx.pattern);
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct MixtureInspection {
    sampler: &'static str,
    alphas: String,
    seed: u64,
    input_tokens: TokenRange,
    target_tokens: TokenRange,
    component_weights: Vec<f64>,
    elapsed_s: f64,
    samples_per_s: f64,
    #[serde(flatten)]
    report: BudgetReport,
}

fn inspect_mixture(a: InspectMixtureArgs) -> anyhow::Result<()> {
    let cfg = AlphasConfig::from_yaml_file(&a.alphas)?;
    let set = a.modalities.as_deref().map(ModalitySet::parse).transpose()?;
    let mixture = cfg.resolve(set.as_ref())?;
    let budget = BudgetConfig {
        input_tokens: TokenRange::new(a.min_input_tokens.unwrap_or(a.input_tokens), a.input_tokens).context("--min-input-tokens")?,
        target_tokens: TokenRange::new(a.min_target_tokens.unwrap_or(a.target_tokens), a.target_tokens).context("--min-target-tokens")?,
        seed: a.seed,
    };
    let component_weights = mixture.components().iter().map(|c| c.weight).collect();
    let sampler = BudgetSampler::new(mixture, budget)?;
    let mut stats = BudgetStats::new(sampler.modalities(), sampler.mixture().components().len());
    let start = Instant::now();
    for i in 0..a.samples {
        stats.add(&sampler.sample(i));
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let out = MixtureInspection {
        sampler: "tessera",
        alphas: a.alphas.display().to_string(),
        seed: a.seed,
        input_tokens: budget.input_tokens,
        target_tokens: budget.target_tokens,
        component_weights,
        elapsed_s,
        samples_per_s: a.samples as f64 / elapsed_s.max(1e-9),
        report: stats.report(),
    };
    emit(a.json, &out, || render(&out))
}

fn range(r: TokenRange) -> String {
    if r.min == r.max { r.max.to_string() } else { format!("{}..={}", r.min, r.max) }
}

fn render(o: &MixtureInspection) -> String {
    let r = &o.report;
    let mut s = String::new();
    let weights: Vec<String> = o.component_weights.iter().map(|w| format!("{w:.3}")).collect();
    let _ = writeln!(s, "alphas      {} ({} components, weights {})", o.alphas, weights.len(), weights.join(" "));
    let _ = writeln!(
        s,
        "samples     {} (seed {}), input tokens {}, target tokens {}; {} samples/s",
        r.samples,
        o.seed,
        range(o.input_tokens),
        range(o.target_tokens),
        si(o.samples_per_s)
    );
    let counts: Vec<String> = r.component_counts.iter().map(u64::to_string).collect();
    let _ = writeln!(s, "components  {}\n", counts.join(" "));
    let _ = writeln!(
        s,
        "{:<22} {:>9} {:>8} {:>7}   {:>9} {:>8} {:>7}",
        "modality", "in mean", "in std", "in %", "tgt mean", "tgt std", "tgt %"
    );
    for m in &r.modalities {
        let _ = writeln!(
            s,
            "{:<22} {:>9.2} {:>8.2} {:>7.1}   {:>9.2} {:>8.2} {:>7.1}",
            m.modality.key(),
            m.input_mean,
            m.input_std,
            100.0 * m.input_freq,
            m.target_mean,
            m.target_std,
            100.0 * m.target_freq
        );
    }
    let _ = writeln!(s, "{:<22} {:>9.2} {:>8} {:>7}   {:>9.2}", "total", r.input_total_mean, "", "", r.target_total_mean);
    s
}
