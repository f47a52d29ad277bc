//! Tokenizer data from a generated world (`tessera data generate`): one folder's members of a
//! split decoded into the tokenizer's input normalisation (reference §7.2), in memory or as
//! streamed minibatches, an evaluation against the trivial mean predictor, and
//! [`train_from_world`], the whole train → save → evaluate path the CLI calls.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use tessera_tokenizers::atomic::write_atomic;
use tessera_tokenizers::shards::{NameMap, ShardDataset};

use super::ModalityTokenizer;
use super::config::{InputKind, TokenizerConfig};
use super::loss::recon_loss;
use super::metrics::{CodeUsage, mean_iou, token_agreement};
use super::model::Tokenizer;
use super::train::{StepMetrics, TrainOptions, TrainReport, Trainer, batch_indices, encode_all};
use super::transform::{prepare, read_raw};
use crate::error::{ModelError, Result};

/// Samples encoded per chunk in evaluation (bounds memory, not results).
const EVAL_CHUNK: usize = 64;

fn data_err(dir: &Path, reason: String) -> ModelError {
    ModelError::Tokenizer { modality: dir.display().to_string(), reason }
}

/// The shard pattern of one folder of a split: `dir/split/[folder]/shard-{00000..N}.tar`.
fn folder_pattern(dir: &Path, split: &str, folder: &str) -> Result<String> {
    let fdir = dir.join(split).join(folder);
    let entries = std::fs::read_dir(&fdir).map_err(|source| ModelError::Io { op: "listing", path: fdir.clone(), source })?;
    let shards = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("shard-") && e.file_name().to_string_lossy().ends_with(".tar"))
        .count();
    if shards == 0 {
        return Err(data_err(&fdir, "no shard-*.tar files".into()));
    }
    Ok(format!("{}/{split}/[{folder}]/shard-{{00000..{:05}}}.tar", dir.display(), shards - 1))
}

/// Opens the `split` shards of the folder `cfg.modality` names.
pub(crate) fn open_folder(dir: &Path, split: &str, cfg: &TokenizerConfig) -> Result<ShardDataset> {
    Ok(ShardDataset::open(&folder_pattern(dir, split, &cfg.modality)?, &NameMap::new())?)
}

/// Reads record `i` of `ds` (a dataset of folder `cfg.modality`) as a tokenizer input: the
/// whole image resized to the tokenizer's side (crop 0 of ml-4m's settings, the centre square,
/// is the whole image for the square world maps); also returns the sample key.
pub(crate) fn read_sample(ds: &ShardDataset, i: usize, cfg: &TokenizerConfig) -> Result<(String, Tensor)> {
    let (key, raw) = read_raw(ds, i, &cfg.modality)?;
    let x = prepare(&cfg.modality, &key, &raw, None, cfg)?;
    Ok((key, x))
}

/// Decodes the samples of folder `cfg.modality` in `split` (at most `limit`) into the input
/// layout of `cfg`, maps resized to its side: `depth` (B,1,S,S) truncated-standardised,
/// `normal`/`rgb` (B,3,S,S) in [−1, 1], `semseg` (B,S,S) class ids, `feature_map` (B,C,G,G),
/// `global_feature` (B,D).
pub fn load_world_split(dir: &Path, split: &str, cfg: &TokenizerConfig, limit: Option<usize>) -> Result<Tensor> {
    let ds = open_folder(dir, split, cfg)?;
    let n = limit.map_or(ds.len(), |l| l.min(ds.len()));
    let rows = (0..n).map(|i| Ok(read_sample(&ds, i, cfg)?.1)).collect::<Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Err(data_err(dir, format!("split '{split}' has no samples")));
    }
    Ok(Tensor::stack(&rows, 0))
}

/// Seeded minibatches read from a split's shards on demand, so training memory does not grow
/// with the split. Batch `s` holds the samples [`super::Batches`] would pick from the same split
/// loaded in memory. A read error ends the iteration and is kept for [`ShardBatches::finish`].
pub struct ShardBatches {
    ds: ShardDataset,
    cfg: TokenizerConfig,
    batch_size: usize,
    seed: u64,
    step: usize,
    device: Device,
    error: Option<ModelError>,
}

impl std::fmt::Debug for ShardBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardBatches")
            .field("folder", &self.cfg.modality)
            .field("samples", &self.ds.len())
            .field("step", &self.step)
            .finish()
    }
}

impl ShardBatches {
    /// Batches of `batch_size` from folder `cfg.modality` of `split`, from step `start_step`,
    /// placed on `device`.
    pub fn open(
        dir: &Path,
        split: &str,
        cfg: &TokenizerConfig,
        batch_size: usize,
        seed: u64,
        start_step: usize,
        device: Device,
    ) -> Result<Self> {
        let ds = open_folder(dir, split, cfg)?;
        if ds.is_empty() {
            return Err(data_err(dir, format!("split '{split}' has no samples")));
        }
        Ok(Self { ds, cfg: cfg.clone(), batch_size, seed, step: start_step, device, error: None })
    }

    /// Ends the iteration: the read error that stopped it, if any.
    pub fn finish(&mut self) -> Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }
}

impl Iterator for ShardBatches {
    type Item = Tensor;

    fn next(&mut self) -> Option<Tensor> {
        if self.error.is_some() {
            return None;
        }
        let idx = batch_indices(self.seed, self.step, self.ds.len(), self.batch_size);
        let rows: Result<Vec<Tensor>> = idx.iter().map(|&i| Ok(read_sample(&self.ds, i as usize, &self.cfg)?.1)).collect();
        match rows {
            Ok(rows) => {
                self.step += 1;
                Some(Tensor::stack(&rows, 0).to_device(self.device))
            }
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

/// Training samples the baselines of [`train_from_world`]'s evaluation are computed from
/// (the first ones of the split; bounds memory on large worlds).
pub const BASELINE_SAMPLES: usize = 2048;

/// Held-out quality of a tokenizer against the trivial predictor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Samples evaluated.
    pub samples: usize,
    /// MSE of decode(encode(x)) against x (values), or 0 for class maps.
    pub mse: f64,
    /// MSE of the training mean (per pixel / per dimension) against x, or 0 for class maps.
    pub baseline_mse: f64,
    /// The config's reconstruction loss of decode(encode(x)) against x (class maps: 0, their
    /// decoded ids carry no logits).
    pub loss: f64,
    /// The config's loss of the training mean against x (class maps: 0).
    pub baseline_loss: f64,
    /// Mean IoU of decoded class maps (class maps only, else 0).
    pub miou: f64,
    /// Mean IoU of the training per-pixel majority class (class maps only, else 0).
    pub baseline_miou: f64,
    /// Fraction of tokens equal after encode → decode → encode.
    pub token_agreement: f64,
    /// Fraction of codes the held-out set uses.
    pub usage: f64,
    /// Perplexity of the held-out code distribution.
    pub perplexity: f64,
}

/// Evaluates `tok` on `val`, with baselines computed from `train`.
pub fn evaluate(tok: &Tokenizer, train: &Tensor, val: &Tensor) -> Result<EvalReport> {
    let cfg = tok.config();
    let ids = encode_all(tok, val, EVAL_CHUNK)?;
    let mut recon = Vec::new();
    for i in (0..ids.size()[0]).step_by(EVAL_CHUNK) {
        let len = (EVAL_CHUNK as i64).min(ids.size()[0] - i);
        recon.push(tok.decode(&ids.narrow(0, i, len))?.to_device(Device::Cpu));
    }
    let recon = Tensor::cat(&recon, 0);
    let again = encode_all(tok, &recon, EVAL_CHUNK)?;
    let mut usage = CodeUsage::new(cfg.heads(), cfg.vocab_size(), 1);
    usage.record(&ids);
    let val = val.to_device(Device::Cpu);
    let train = train.to_device(Device::Cpu);
    let mut report = EvalReport {
        samples: val.size()[0] as usize,
        mse: 0.0,
        baseline_mse: 0.0,
        loss: 0.0,
        baseline_loss: 0.0,
        miou: 0.0,
        baseline_miou: 0.0,
        token_agreement: token_agreement(&ids, &again),
        usage: usage.usage(),
        perplexity: usage.perplexity(),
    };
    match cfg.input {
        InputKind::ClassMap { num_classes, .. } => {
            report.miou = mean_iou(&recon, &val, num_classes);
            let counts = train.one_hot(num_classes as i64).sum_dim_intlist(0, false, Kind::Int64);
            let mode = counts.argmax(-1, false).unsqueeze(0).expand_as(&val);
            report.baseline_miou = mean_iou(&mode, &val, num_classes);
        }
        _ => {
            report.mse = (&recon - &val).square().mean(Kind::Double).double_value(&[]);
            let mean = train.mean_dim(0, true, Kind::Float).expand_as(&val);
            report.baseline_mse = (&val - &mean).square().mean(Kind::Double).double_value(&[]);
            report.loss = recon_loss(cfg.loss, &recon, &val).double_value(&[]);
            report.baseline_loss = recon_loss(cfg.loss, &mean, &val).double_value(&[]);
        }
    }
    Ok(report)
}

/// What [`train_from_world`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldTrainReport {
    /// Where the tokenizer was saved.
    pub out_dir: PathBuf,
    /// The training run.
    pub train: TrainReport,
    /// Held-out quality on the `val` split.
    pub val: EvalReport,
}

/// Trains a tokenizer of `cfg` (its `modality` names the world folder) on `dir/train`,
/// checkpoints it into `out_dir` every `opts.checkpoint_every` steps and at the end (resuming
/// from a checkpoint already there, so an interrupted run continues), evaluates it on
/// `dir/val` and writes `eval.json` beside the weights. `on_step` sees every step's metrics.
pub fn train_from_world(
    dir: &Path,
    cfg: &TokenizerConfig,
    opts: &TrainOptions,
    out_dir: &Path,
    device: Device,
    on_step: &mut dyn FnMut(&StepMetrics),
) -> Result<WorldTrainReport> {
    let val = load_world_split(dir, "val", cfg, None)?;
    let mut trainer = if out_dir.join(super::train::OPTIMIZER_FILE).exists() {
        let t = Trainer::resume(out_dir, device, opts.clone())?;
        if t.tokenizer().config() != cfg {
            return Err(ModelError::Config {
                field: "tokenizer".into(),
                reason: format!("{} holds a checkpoint of another config; use a fresh out_dir", out_dir.display()),
            });
        }
        t
    } else {
        Trainer::new(Tokenizer::new(cfg, device)?, opts.clone())?
    };
    let mut batches = ShardBatches::open(dir, "train", cfg, opts.batch_size, opts.seed, trainer.step_count(), device)?;
    let chunk = if opts.checkpoint_every == 0 { usize::MAX } else { opts.checkpoint_every };
    let mut steps = Vec::new();
    loop {
        let part = trainer.run_observed(&mut batches, chunk, on_step)?;
        batches.finish()?;
        let done = part.steps.is_empty();
        steps.extend(part.steps);
        trainer.save(out_dir)?;
        if done || trainer.step_count() >= opts.steps {
            break;
        }
    }
    let report = TrainReport::from_steps(steps);
    let train = load_world_split(dir, "train", cfg, Some(BASELINE_SAMPLES))?;
    let val_report = evaluate(trainer.tokenizer(), &train, &val)?;
    let out = WorldTrainReport { out_dir: out_dir.to_path_buf(), train: report, val: val_report };
    let json = serde_json::to_vec_pretty(&out).map_err(|e| ModelError::Config { field: "eval.json".into(), reason: e.to_string() })?;
    write_atomic(&out_dir.join("eval.json"), &json).map_err(ModelError::Write)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::config::{ArchKind, QuantizerKind, ReconLoss};
    use super::super::transform::DEPTH_CLAMP;
    use super::*;
    use tessera_tokenizers::shards::Decoded;
    use tessera_tokenizers::world::{WorldSpec, generate};

    /// A 32-px world: `train` train samples and `val` held-out ones.
    fn world(train: usize, val: usize, seed: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let total = train + val;
        let spec = WorldSpec {
            samples: total,
            size: 32,
            seed,
            val_fraction: val as f64 / total as f64,
            shard_size: 256,
            threads: 1,
            ..Default::default()
        };
        generate(dir.path(), &spec, &mut |_| {}).unwrap();
        dir
    }

    /// Tiny conv tokenizer: 32 px → 8×8 tokens, 8/16/32 channels (about 30 ms a step on one
    /// thread, so a few hundred steps fit the test budget).
    fn tiny(modality: &str, codebook_size: usize) -> TokenizerConfig {
        let mut cfg = TokenizerConfig::preset(modality, 32).unwrap();
        cfg.arch = ArchKind::Conv { downsample_log2: 2, channels: 8, res_blocks: 1 };
        cfg.code_dim = 16;
        // ml-4m's rule: batch·tokens/K/32 = 16·64/K/32.
        cfg.quantizer = QuantizerKind::EmaCosine { codebook_size, decay: 0.95, dead_threshold: 32.0 / codebook_size as f64 };
        cfg.validate().unwrap();
        cfg
    }

    fn opts(steps: usize) -> TrainOptions {
        TrainOptions { steps, batch_size: 16, lr: 3e-3, warmup_steps: 10, ..Default::default() }
    }

    #[test]
    fn tokenizer_depth_beats_the_mean_image_and_reloads_to_identical_codes() {
        tch::set_num_threads(1);
        let dir = world(256, 64, 11);
        let out = tempfile::tempdir().unwrap();
        // MSE rather than the preset's smooth-L1: standardised depth lies in about [−1, 1.5],
        // where smooth-L1 is MSE/2, and the test compares MSEs.
        let cfg = TokenizerConfig { loss: ReconLoss::Mse, ..tiny("depth", 32) };
        let report = {
            // Checkpoints at 300, 600 and 800 exercise the chunked loop; every step is observed.
            let chunked = TrainOptions { checkpoint_every: 300, ..opts(800) };
            let mut seen = 0;
            let r = train_from_world(dir.path(), &cfg, &chunked, out.path(), Device::Cpu, &mut |m| seen = m.step).unwrap();
            assert_eq!((seen, r.train.steps.len()), (800, 800));
            r
        };
        let v = report.val;
        eprintln!("depth: {v:?}, {:.1} ms/step", report.train.median_ms_per_step);
        // The mean image already holds the sky, horizon and ground gradient that every scene
        // shares, so it is a strong baseline (objects are a few pixels at 32 px); beating it 3×
        // on held-out scenes means the 64 tokens carry the scene's own objects. Measured: 3.7×.
        assert!(v.mse < v.baseline_mse / 3.0, "held-out MSE {} vs mean-image {}", v.mse, v.baseline_mse);
        // Half the codebook in use on 64 held-out images (4096 tokens, 128 per code if uniform)
        // rules out collapse onto a few codes. Measured: 100 %, perplexity ≈ 25 of 32.
        assert!(v.usage >= 0.5, "held-out codebook usage {}", v.usage);
        // Decoding and re-encoding lands in the same Voronoi cell for most tokens. Measured: 95 %.
        assert!(v.token_agreement >= 0.9, "encode→decode→encode agreement {}", v.token_agreement);
        let last = report.train.last().unwrap();
        assert!(last.usage >= 0.5, "training usage over the window {}", last.usage);
        // Reload from disk: the same codes, bit for bit.
        let val = load_world_split(dir.path(), "val", &cfg, None).unwrap();
        let loaded = Tokenizer::load(out.path(), Device::Cpu).unwrap();
        let before = {
            let again = Trainer::resume(out.path(), Device::Cpu, opts(300)).unwrap();
            encode_all(again.tokenizer(), &val, 64).unwrap()
        };
        let ids = encode_all(&loaded, &val, 64).unwrap();
        assert!(ids.equal(&before));
        assert!(out.path().join("eval.json").exists());
        // Pre-tokenized shards join the source folder key for key and hold the same ids.
        let summary = super::super::tokenize::tokenize_world_split(dir.path(), "val", &loaded, &Default::default()).unwrap();
        assert_eq!((summary.samples, summary.shards), (64, 1));
        let pattern = format!("{}/val/[depth,tok_depth@32]/shard-{{00000..00000}}.tar", dir.path().display());
        let ds = ShardDataset::open(&pattern, &NameMap::new()).unwrap();
        for i in [0, 63] {
            let rec = ds.read_decoded(i).unwrap();
            let Decoded::Array(a) = &rec.members["tok_depth@32"] else { panic!("tokens are an array") };
            assert_eq!((a.shape.clone(), a.dtype()), (vec![1, 64], "<i2"));
            assert_eq!(a.to_i64().unwrap(), Vec::<i64>::try_from(ids.get(i as i64)).unwrap());
        }
    }

    /// Normals with the cosine loss: decoded normals are unit vectors by construction.
    #[test]
    fn tokenizer_normals_with_cosine_loss_beat_the_mean_image() {
        tch::set_num_threads(1);
        let dir = world(256, 64, 17);
        let out = tempfile::tempdir().unwrap();
        let cfg = TokenizerConfig { loss: ReconLoss::Cosine, ..tiny("normal", 32) };
        let report = train_from_world(dir.path(), &cfg, &opts(400), out.path(), Device::Cpu, &mut |_| {}).unwrap();
        let v = report.val;
        eprintln!("normal: {v:?}, {:.1} ms/step", report.train.median_ms_per_step);
        // As for depth, the mean image holds the shared sky and ground normals; 2× in both the
        // trained cosine loss and the MSE of the unit decoded normals after 400 steps shows
        // per-scene objects survive tokenization. Measured: 3.3× and 2.9×.
        assert!(v.loss < v.baseline_loss / 2.0, "held-out cosine loss {} vs mean-image {}", v.loss, v.baseline_loss);
        assert!(v.mse < v.baseline_mse / 2.0, "held-out MSE {} vs mean-image {}", v.mse, v.baseline_mse);
        assert!(v.usage >= 0.5, "held-out codebook usage {}", v.usage);
    }

    /// The ViT VQ-VAE on the same depth data: patch 4 → 8×8 tokens, like the conv one.
    #[test]
    fn tokenizer_vit_depth_beats_the_mean_image() {
        tch::set_num_threads(1);
        let dir = world(256, 64, 15);
        let out = tempfile::tempdir().unwrap();
        let cfg =
            TokenizerConfig { loss: ReconLoss::Mse, arch: ArchKind::Vit { patch: 4, width: 64, depth: 2, heads: 4 }, ..tiny("depth", 32) };
        let report = train_from_world(dir.path(), &cfg, &opts(800), out.path(), Device::Cpu, &mut |_| {}).unwrap();
        let v = report.val;
        eprintln!("vit depth: {v:?}, {:.1} ms/step", report.train.median_ms_per_step);
        // Same reasoning as the conv test; the tiny ViT (2 blocks, width 64) learns the local
        // detail more slowly than convolutions do in 800 steps, hence 2.5× here. Measured: 3.05×.
        assert!(v.mse < v.baseline_mse / 2.5, "held-out MSE {} vs mean-image {}", v.mse, v.baseline_mse);
        assert!(v.usage >= 0.5, "held-out codebook usage {}", v.usage);
    }

    #[test]
    fn tokenizer_semseg_decodes_to_a_good_miou() {
        tch::set_num_threads(1);
        let dir = world(256, 64, 12);
        let out = tempfile::tempdir().unwrap();
        let cfg = tiny("semseg", 64);
        assert_eq!(cfg.loss, ReconLoss::CrossEntropy);
        let report = train_from_world(dir.path(), &cfg, &opts(600), out.path(), Device::Cpu, &mut |_| {}).unwrap();
        let v = report.val;
        eprintln!("semseg: {v:?}, {:.1} ms/step", report.train.median_ms_per_step);
        // The per-pixel majority class (background and ground) scores about 0.18 mIoU; 0.7 needs
        // every object class recovered at 4×4-pixel token resolution. Measured: 0.83.
        assert!(v.miou >= 0.7, "held-out mIoU {} (majority-class baseline {})", v.miou, v.baseline_miou);
        assert!(v.miou > 3.0 * v.baseline_miou);
        assert!(v.usage >= 0.5, "held-out codebook usage {}", v.usage);
        // Lower than for depth: the decoded map is an argmax, so one flipped boundary pixel
        // changes the embedded input discontinuously and can move its token. Measured: 82 %.
        assert!(v.token_agreement >= 0.75, "encode→decode→encode agreement {}", v.token_agreement);
    }

    /// The image folders decode to the documented layouts and ranges.
    #[test]
    fn tokenizer_world_loader_normalises_each_folder() {
        let dir = world(8, 2, 16);
        let load = |m: &str| load_world_split(dir.path(), "train", &TokenizerConfig::preset(m, 32).unwrap(), Some(4)).unwrap();
        let (rgb, normal, semseg, depth) = (load("rgb"), load("normal"), load("semseg"), load("depth"));
        assert_eq!(
            (rgb.size(), normal.size(), semseg.size(), depth.size()),
            (vec![4, 3, 32, 32], vec![4, 3, 32, 32], vec![4, 32, 32], vec![4, 1, 32, 32])
        );
        assert!(rgb.min().double_value(&[]) >= -1.0 && rgb.max().double_value(&[]) <= 1.0);
        // Normals are unit vectors up to 8-bit quantisation.
        let norms = normal.square().sum_dim_intlist(1, false, Kind::Float).sqrt();
        assert!((norms - 1.0).abs().max().double_value(&[]) < 0.03);
        assert!(semseg.min().int64_value(&[]) >= 0 && semseg.max().int64_value(&[]) <= 4 && semseg.max().int64_value(&[]) >= 1);
        // Truncated standardisation: the central 80 % of each map has mean 0 and unit variance,
        // so the whole map stays within the clamp and spans about ±1.
        assert!(depth.abs().max().double_value(&[]) <= DEPTH_CLAMP);
        assert!(depth.std(true).double_value(&[]) > 0.5);
        assert_eq!(
            load_world_split(dir.path(), "val", &TokenizerConfig::preset("global_feature", 32).unwrap(), None).unwrap().size(),
            [2, 64]
        );
        // Streamed batches are the in-memory batches, from any start step.
        let cfg = TokenizerConfig::preset("depth", 32).unwrap();
        let all = load_world_split(dir.path(), "train", &cfg, None).unwrap();
        let mut streamed = ShardBatches::open(dir.path(), "train", &cfg, 3, 9, 2, Device::Cpu).unwrap();
        for (a, b) in super::super::Batches::new(&all, 3, 9, 2).zip(&mut streamed).take(4) {
            assert!(a.equal(&b));
        }
        streamed.finish().unwrap();
    }

    /// Feature maps take one token per cell (no downsampling, like ml-4m's `patch_proj=False`);
    /// FSQ replaces the codebook. A 64-px world gives 4×4 cells of 32 channels.
    #[test]
    fn tokenizer_feature_maps_with_fsq_beat_the_mean_map() {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let spec = WorldSpec { samples: 400, size: 64, seed: 14, val_fraction: 0.2, shard_size: 256, threads: 1, ..Default::default() };
        generate(dir.path(), &spec, &mut |_| {}).unwrap();
        let mut cfg = TokenizerConfig::preset("feature_map", 64).unwrap();
        cfg.arch = ArchKind::Conv { downsample_log2: 0, channels: 16, res_blocks: 1 };
        cfg.quantizer = QuantizerKind::Fsq { levels: vec![7, 7, 7, 7, 7] };
        cfg.code_dim = 5;
        cfg.loss = ReconLoss::Mse;
        assert_eq!((cfg.tokens_per_sample(), cfg.vocab_size()), (16, 16807));
        let out = tempfile::tempdir().unwrap();
        let report = train_from_world(dir.path(), &cfg, &opts(2000), out.path(), Device::Cpu, &mut |_| {}).unwrap();
        let v = report.val;
        eprintln!("feature_map: {v:?}, {:.1} ms/step", report.train.median_ms_per_step);
        // The mean map is the trivial predictor; 3× lower MSE on held-out maps means the 16
        // tokens carry each scene's patches. Measured: 4.3×.
        assert!(v.mse < v.baseline_mse / 3.0, "held-out MSE {} vs mean map {}", v.mse, v.baseline_mse);
        // FSQ cells are small (7 levels per dimension), so a decoded map re-encodes to the same
        // cell less often than with a 32-code codebook. Measured: 72 %.
        assert!(v.token_agreement >= 0.6, "encode→decode→encode agreement {}", v.token_agreement);
    }

    #[test]
    fn tokenizer_global_vectors_use_multi_head_codes() {
        tch::set_num_threads(1);
        let dir = world(256, 64, 13);
        let out = tempfile::tempdir().unwrap();
        let mut cfg = TokenizerConfig::preset("global_feature", 32).unwrap();
        cfg.arch = ArchKind::Mlp { hidden: 128, blocks: 1, n_heads: 8 };
        cfg.code_dim = 8;
        cfg.quantizer = QuantizerKind::EmaCosine { codebook_size: 32, decay: 0.95, dead_threshold: 0.1 };
        let report = train_from_world(dir.path(), &cfg, &opts(600), out.path(), Device::Cpu, &mut |_| {}).unwrap();
        let v = report.val;
        eprintln!("global: {v:?}, {:.1} ms/step", report.train.median_ms_per_step);
        // The world's global descriptors are close to their mean (cosine ≈ 0.94), so only a
        // clear margin shows the 8 tokens encode the scene: 4× on the trained cosine loss and on
        // MSE of the decoded unit vectors. Measured at 300 steps: 10× on both.
        assert!(v.loss < v.baseline_loss / 4.0, "held-out cosine loss {} vs mean-vector {}", v.loss, v.baseline_loss);
        assert!(v.mse < v.baseline_mse / 4.0, "held-out MSE {} vs mean-vector {}", v.mse, v.baseline_mse);
        // A checkpoint of another config is refused rather than silently continued.
        let other = TokenizerConfig { seed: 1, ..cfg.clone() };
        let err = train_from_world(dir.path(), &other, &opts(600), out.path(), Device::Cpu, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("another config"), "{err}");
        // Usage is counted per head: 8 codebooks of 32 codes on 64 vectors (2 per code if
        // uniform), so a half-used codebook is what the held-out set can show.
        assert!(v.usage >= 0.5, "held-out codebook usage {}", v.usage);
    }
}
