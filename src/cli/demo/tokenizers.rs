//! The demo's modality-tokenizer stages: train small VQ tokenizers on the world's dense maps,
//! pre-tokenize train/val into `tok_<m>@<size>` folders, and draw their reconstructions.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use image::RgbImage;
use tch::Device;
use tessera_model::tokenizer::{
    ArchKind, MODALITY_FILE, ModalityTokenizer, QuantizerKind, TokenizeOptions, Tokenizer, TokenizerConfig, TrainOptions, load_world_split,
    tokenize_world_split, train_from_world,
};
use tessera_tokenizers::TokenModalityDef;

use super::grid;
use crate::cli::generate::decode::{classes, grey, signed_rgb};

/// The world folders the demo tokenizes, in column order of the reconstruction grid.
pub const DEFAULT_TOKENIZERS: &str = "depth,semseg,normal";

/// Validation samples (rows) of the reconstruction grid.
const GRID_ROWS: usize = 6;

/// Trains (or finds) one tokenizer per world folder in `modalities` under `out/tokenizers/<m>`;
/// returns their directories. A finished tokenizer (its `eval.json`) is skipped; an interrupted
/// one resumes from its checkpoint.
pub fn train_all(world: &Path, out: &Path, modalities: &[String], size: usize, steps: usize, batch: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for m in modalities {
        let dir = out.join("tokenizers").join(m);
        let cfg = demo_config(m, size)?;
        let done = dir.join("eval.json").is_file() && Tokenizer::load(&dir, Device::Cpu).is_ok_and(|t| *t.config() == cfg);
        if done {
            println!("      {m}: {} exists, skipped", dir.display());
        } else {
            let t = Instant::now();
            let opts = TrainOptions {
                steps,
                batch_size: batch,
                lr: 3e-3,
                warmup_steps: 10,
                checkpoint_every: steps.div_ceil(4).max(1),
                ..TrainOptions::default()
            };
            let mut last = 0;
            let report = train_from_world(world, &cfg, &opts, &dir, Device::Cpu, &mut |s| {
                if (s.step + 1) * 4 / steps.max(1) > last {
                    last = (s.step + 1) * 4 / steps.max(1);
                    println!(
                        "      {m}: step {}/{steps}  recon {:.4}  usage {:.0}%  {:.0} ms/step",
                        s.step + 1,
                        s.recon_loss,
                        100.0 * s.usage,
                        s.ms
                    );
                }
            })?;
            let v = &report.val;
            let quality = if v.baseline_miou > 0.0 {
                format!("mIoU {:.3} (majority class {:.3})", v.miou, v.baseline_miou)
            } else {
                format!("MSE {:.4} (mean image {:.4})", v.mse, v.baseline_mse)
            };
            println!(
                "      {m}: {quality}, codebook usage {:.0}%, token agreement {:.0}%, {:.1} ms/step, {:.1}s",
                100.0 * v.usage,
                100.0 * v.token_agreement,
                report.train.median_ms_per_step,
                t.elapsed().as_secs_f64()
            );
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Tokenizes the train and val splits with every tokenizer, `parallel` shards at a time
/// (finished shards are kept), and returns the token modalities to declare in the job.
pub fn tokenize_all(world: &Path, tokenizers: &[PathBuf], parallel: usize) -> anyhow::Result<Vec<TokenModalityDef>> {
    let mut defs = Vec::new();
    for dir in tokenizers {
        let tok = Tokenizer::load(dir, Device::Cpu).with_context(|| format!("loading {}", dir.display()))?;
        let mut folder = None;
        for split in ["train", "val"] {
            let t = Instant::now();
            let s = tokenize_world_split(world, split, &tok, &TokenizeOptions { parallel_shards: parallel, ..TokenizeOptions::default() })?;
            let secs = t.elapsed().as_secs_f64();
            if s.written == 0 {
                println!("      {split}/{}: {} shards exist, skipped", folder_name(&s.folder), s.kept);
            } else {
                println!(
                    "      {split}/{}: {} samples in {:.1}s ({:.0} images/s)",
                    folder_name(&s.folder),
                    s.encoded,
                    secs,
                    s.encoded as f64 / secs.max(1e-9)
                );
            }
            folder = Some(s.folder);
        }
        let path = folder.context("no split was tokenized")?.join(MODALITY_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        defs.push(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?);
    }
    Ok(defs)
}

/// The demo's tokenizer for world folder `m` at side `size`: the preset's 8×8 token grid and
/// loss with a narrow conv network (8/16/32 channels), 16-wide codes and a fast EMA codebook
/// (decay 0.95, ml-4m's dead-code rule at batch 16), so a few hundred steps fit in seconds on
/// two cores.
pub fn demo_config(m: &str, size: usize) -> anyhow::Result<TokenizerConfig> {
    let mut cfg = TokenizerConfig::preset(m, size).with_context(|| format!("--tokenizers {m}"))?;
    if let ArchKind::Conv { downsample_log2, .. } = cfg.arch {
        cfg.arch = ArchKind::Conv { downsample_log2, channels: 8, res_blocks: 1 };
    }
    if let QuantizerKind::EmaCosine { codebook_size, .. } = cfg.quantizer {
        let tokens = cfg.tokens_per_sample();
        cfg.quantizer =
            QuantizerKind::EmaCosine { codebook_size, decay: 0.95, dead_threshold: (16 * tokens) as f64 / codebook_size as f64 / 32.0 };
    }
    cfg.code_dim = 16;
    cfg.validate().with_context(|| format!("the demo's {m} tokenizer"))?;
    Ok(cfg)
}

fn folder_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Draws `png`: one row per validation sample; the RGB image, then for each tokenizer the
/// original map and its reconstruction decode(encode(x)) (depth grey, segmentation in a class
/// palette, normals as RGB).
pub fn reconstruction_grid(world: &Path, tokenizers: &[PathBuf], size: usize, png: &Path) -> anyhow::Result<()> {
    let rgb = load_world_split(world, "val", &TokenizerConfig::preset("rgb", size)?, Some(GRID_ROWS))?;
    let n = rgb.size()[0] as usize;
    let mut rows: Vec<Vec<RgbImage>> = (0..n).map(|i| vec![signed_rgb(&rgb.get(i as i64))]).collect();
    for dir in tokenizers {
        let tok = Tokenizer::load(dir, Device::Cpu).with_context(|| format!("loading {}", dir.display()))?;
        let x = load_world_split(world, "val", tok.config(), Some(GRID_ROWS))?;
        let recon = tok.decode(&tok.encode(&x)?)?.to_device(Device::Cpu);
        for (i, row) in rows.iter_mut().enumerate() {
            let (a, b) = (x.get(i as i64), recon.get(i as i64));
            let (orig, rec) = match tok.config().modality.as_str() {
                "depth" => {
                    // One grey scale per sample, from the original's range, for both tiles.
                    let (lo, hi) = (a.min().double_value(&[]), a.max().double_value(&[]));
                    (grey(&a, lo, hi), grey(&b, lo, hi))
                }
                "semseg" => (classes(&a), classes(&b)),
                _ => (signed_rgb(&a), signed_rgb(&b)),
            };
            row.push(orig);
            row.push(rec);
        }
    }
    // A wider gap after the RGB column and between the tokenizers' column pairs.
    let group_starts: Vec<usize> = (0..tokenizers.len()).map(|k| 1 + 2 * k).collect();
    grid::tile_grid(&rows, 2, &group_starts, png)
}
