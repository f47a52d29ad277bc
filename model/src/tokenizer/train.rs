//! Tokenizer training: [`Trainer`] runs AdamW steps (the crate's optimizer, ml-4m's VQ
//! hyper-parameters: betas (0.9, 0.99), clip 1.0, linear warmup then cosine decay), applies
//! the codebook update after each step, tracks per-step metrics and checkpoints to a
//! directory from which [`Trainer::resume`] continues bit-for-bit. [`Batches`] draws seeded
//! minibatches from an in-memory tensor; batch `s` depends only on (seed, s), so a resumed run
//! sees the batches the uninterrupted one would have.

use std::path::Path;
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::metrics::CodeUsage;
use super::mix;
use super::model::Tokenizer;
use crate::error::{ModelError, Result};
use crate::io;
use crate::optim::{AdamW, AdamWConfig};

/// File name of the optimizer state in a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainOptions {
    /// Total optimizer steps of the schedule (default 1000).
    pub steps: usize,
    /// Samples per step (default 16).
    pub batch_size: usize,
    /// Peak learning rate (default 1e-3: small tokenizers on small data train fast at it).
    pub lr: f64,
    /// Linear warmup steps (default 20).
    pub warmup_steps: usize,
    /// Learning rate at the end of the cosine decay, as a fraction of the peak (default 0.1).
    pub final_lr_fraction: f64,
    /// Decoupled weight decay on the decay group (default 0.0).
    pub weight_decay: f64,
    /// Global gradient-norm clip, 0 disables (default 1.0, ml-4m's `clip_grad`).
    pub clip_grad: f64,
    /// Batches over which codebook usage and perplexity are measured (default 20).
    pub usage_window: usize,
    /// Seed of the batch order (default 0).
    pub seed: u64,
    /// [`super::train_from_world`] checkpoints every this many steps; 0 only at the end
    /// (default 0).
    pub checkpoint_every: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 16,
            lr: 1e-3,
            warmup_steps: 20,
            final_lr_fraction: 0.1,
            weight_decay: 0.0,
            clip_grad: 1.0,
            usage_window: 20,
            seed: 0,
            checkpoint_every: 0,
        }
    }
}

impl TrainOptions {
    /// The learning rate of (0-based) step `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let lo = self.lr * self.final_lr_fraction;
        lo + (self.lr - lo) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }

    fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: &str| Err(ModelError::Config { field: format!("train.{field}"), reason: reason.into() });
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return bad("lr", "must be positive");
        }
        if !(0.0..=1.0).contains(&self.final_lr_fraction) {
            return bad("final_lr_fraction", "must be in [0, 1]");
        }
        Ok(())
    }
}

/// Metrics of one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based step number.
    pub step: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Total loss.
    pub loss: f64,
    /// Reconstruction loss.
    pub recon_loss: f64,
    /// Commitment loss.
    pub commit_loss: f64,
    /// Fraction of codes used over the usage window.
    pub usage: f64,
    /// Codebook perplexity over the usage window.
    pub perplexity: f64,
    /// Codes replaced by the dead-code rule this step.
    pub replaced: usize,
    /// Wall time of the step in milliseconds.
    pub ms: f64,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Every step's metrics, in order.
    pub steps: Vec<StepMetrics>,
    /// Median step time in milliseconds (robust to the slow first steps).
    pub median_ms_per_step: f64,
}

impl TrainReport {
    pub(crate) fn from_steps(steps: Vec<StepMetrics>) -> Self {
        let mut ms: Vec<f64> = steps.iter().map(|s| s.ms).collect();
        ms.sort_by(f64::total_cmp);
        let median_ms_per_step = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
        Self { steps, median_ms_per_step }
    }

    /// The last step's metrics.
    pub fn last(&self) -> Option<&StepMetrics> {
        self.steps.last()
    }
}

/// Seeded minibatches (without replacement inside a batch) from a tensor of samples along
/// dimension 0.
#[derive(Debug)]
pub struct Batches {
    data: Tensor,
    batch_size: usize,
    seed: u64,
    step: usize,
}

impl Batches {
    /// Batches of `batch_size` from `data`, starting at step `start_step`.
    pub fn new(data: &Tensor, batch_size: usize, seed: u64, start_step: usize) -> Self {
        Self { data: data.shallow_clone(), batch_size, seed, step: start_step }
    }
}

/// The sample indices of batch `step` over `n` samples: distinct, seeded by (seed, step) only.
pub(crate) fn batch_indices(seed: u64, step: usize, n: usize, batch_size: usize) -> Vec<i64> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, step, 0xBA7C));
    sample(&mut rng, n, batch_size.min(n)).into_iter().map(|i| i as i64).collect()
}

impl Iterator for Batches {
    type Item = Tensor;

    fn next(&mut self) -> Option<Tensor> {
        let n = self.data.size()[0] as usize;
        if n == 0 {
            return None;
        }
        let idx = batch_indices(self.seed, self.step, n, self.batch_size);
        self.step += 1;
        Some(self.data.index_select(0, &Tensor::from_slice(&idx).to_device(self.data.device())))
    }
}

/// A tokenizer under training, with its optimizer, step count and usage window.
#[derive(Debug)]
pub struct Trainer {
    tok: Tokenizer,
    opt: AdamW,
    opts: TrainOptions,
    step: usize,
    usage: CodeUsage,
}

impl Trainer {
    /// Starts training `tok` from step 0.
    pub fn new(tok: Tokenizer, opts: TrainOptions) -> Result<Self> {
        opts.validate()?;
        let cfg = AdamWConfig { lr: opts.lr, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: opts.weight_decay };
        let opt = AdamW::new(tok.var_store(), cfg)?;
        let usage = CodeUsage::new(tok.config().heads(), tok.config().vocab_size(), opts.usage_window);
        Ok(Self { tok, opt, opts, step: 0, usage })
    }

    /// Steps done so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The tokenizer being trained.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    /// Ends training, handing the tokenizer back.
    pub fn into_tokenizer(self) -> Tokenizer {
        self.tok
    }

    /// One optimizer step on `batch`, then the codebook update.
    pub fn step(&mut self, batch: &Tensor) -> Result<StepMetrics> {
        let start = Instant::now();
        let lr = self.opts.lr_at(self.step);
        self.opt.set_lr(lr)?;
        self.opt.zero_grad()?;
        let fwd = self.tok.forward(batch)?;
        fwd.loss.backward();
        if self.opts.clip_grad > 0.0 {
            let norm = self.opt.grad_sq_sum().sqrt();
            if norm > self.opts.clip_grad {
                self.opt.scale_grads(self.opts.clip_grad / (norm + 1e-6));
            }
        }
        self.opt.step()?;
        let replaced = self.tok.update_codebook(&fwd);
        self.usage.record(&fwd.ids_BT);
        self.step += 1;
        let loss = fwd.loss.double_value(&[]);
        if !loss.is_finite() {
            return Err(ModelError::Tokenizer {
                modality: self.tok.config().modality.clone(),
                reason: format!("loss {loss} at step {}", self.step),
            });
        }
        Ok(StepMetrics {
            step: self.step,
            lr,
            loss,
            recon_loss: fwd.recon_loss.double_value(&[]),
            commit_loss: fwd.commit_loss.double_value(&[]),
            usage: self.usage.usage(),
            perplexity: self.usage.perplexity(),
            replaced,
            ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Runs steps until `opts.steps` are done, drawing batches from `batches`.
    pub fn run(&mut self, batches: &mut dyn Iterator<Item = Tensor>) -> Result<TrainReport> {
        self.run_for(batches, usize::MAX)
    }

    /// Runs at most `max_steps` more steps (never past `opts.steps`), so a caller can
    /// checkpoint between chunks of one schedule.
    pub fn run_for(&mut self, batches: &mut dyn Iterator<Item = Tensor>, max_steps: usize) -> Result<TrainReport> {
        self.run_observed(batches, max_steps, &mut |_| {})
    }

    /// [`Trainer::run_for`], calling `on_step` after every step (progress, logging).
    pub fn run_observed(
        &mut self,
        batches: &mut dyn Iterator<Item = Tensor>,
        max_steps: usize,
        on_step: &mut dyn FnMut(&StepMetrics),
    ) -> Result<TrainReport> {
        let mut steps = Vec::new();
        let stop = self.opts.steps.min(self.step.saturating_add(max_steps));
        while self.step < stop {
            let Some(batch) = batches.next() else { break };
            let m = self.step(&batch)?;
            on_step(&m);
            steps.push(m);
        }
        Ok(TrainReport::from_steps(steps))
    }

    /// Writes the tokenizer (loadable by [`Tokenizer::load`]) and the optimizer state with the
    /// step count into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.tok.save(dir)?;
        let mut md = std::collections::BTreeMap::new();
        md.insert("step".to_string(), self.step.to_string());
        md.insert("train_options".to_string(), serde_json::to_string(&self.opts).unwrap_or_default());
        io::write(&dir.join(OPTIMIZER_FILE), &self.opt.state(), &md)
    }

    /// Continues a run saved by [`Trainer::save`] with options `opts` (normally the same).
    /// The usage window restarts empty: it is a diagnostic, not training state.
    pub fn resume(dir: &Path, device: Device, opts: TrainOptions) -> Result<Self> {
        let tok = Tokenizer::load(dir, device)?;
        let mut trainer = Self::new(tok, opts)?;
        let path = dir.join(OPTIMIZER_FILE);
        let (state, md) = io::read(&path)?;
        let step = md
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ModelError::Format { path: path.clone(), reason: "metadata has no integer 'step'".into() })?;
        trainer.opt.load_state(state, &path.display().to_string())?;
        trainer.step = step;
        Ok(trainer)
    }
}

/// Trains a fresh tokenizer of `cfg` on the samples of `data` (dimension 0) for
/// `opts.steps` steps on `device`.
pub fn train_tokenizer(
    cfg: &super::TokenizerConfig,
    data: &Tensor,
    opts: &TrainOptions,
    device: Device,
) -> Result<(Tokenizer, TrainReport)> {
    let mut trainer = Trainer::new(Tokenizer::new(cfg, device)?, opts.clone())?;
    let data = data.to_device(device);
    let report = trainer.run(&mut Batches::new(&data, opts.batch_size, opts.seed, 0))?;
    Ok((trainer.into_tokenizer(), report))
}

/// Encodes `data` in chunks of `chunk` samples (bounded memory) and concatenates the ids.
pub fn encode_all(tok: &dyn super::ModalityTokenizer, data: &Tensor, chunk: usize) -> Result<Tensor> {
    let n = data.size()[0];
    let parts =
        (0..n).step_by(chunk.max(1)).map(|i| tok.encode(&data.narrow(0, i, (chunk as i64).min(n - i)))).collect::<Result<Vec<_>>>()?;
    if parts.is_empty() {
        return Ok(Tensor::zeros([0, tok.tokens_per_sample() as i64], (Kind::Int64, Device::Cpu)));
    }
    Ok(Tensor::cat(&parts, 0))
}

#[cfg(test)]
mod tests {
    use super::super::config::{ArchKind, InputKind, QuantizerKind, ReconLoss, TokenizerConfig};
    use super::*;

    fn smooth_images(n: i64) -> Tensor {
        let _guard = crate::weights::RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(1);
        Tensor::randn([n, 1, 4, 4], (Kind::Float, Device::Cpu)).upsample_bilinear2d([16, 16], false, None, None)
    }

    fn cfg() -> TokenizerConfig {
        TokenizerConfig {
            modality: "depth".into(),
            input: InputKind::Image { channels: 1, size: 16 },
            arch: ArchKind::Conv { downsample_log2: 2, channels: 8, res_blocks: 1 },
            quantizer: QuantizerKind::EmaCosine { codebook_size: 16, decay: 0.9, dead_threshold: 0.5 },
            code_dim: 8,
            loss: ReconLoss::Mse,
            commitment_weight: 1.0,
            seed: 2,
        }
    }

    /// Save after N steps and resume for N more gives the very weights and codebook of 2N
    /// uninterrupted steps: optimizer moments, step count, batch order and dead-code sampling
    /// are all restored.
    #[test]
    fn tokenizer_resume_is_bit_exact() {
        // libtorch's thread count is process-global and may change a convolution's summation
        // order: every tokenizer test pins it to the same value.
        tch::set_num_threads(1);
        let data = smooth_images(64);
        let opts = TrainOptions { steps: 12, batch_size: 8, warmup_steps: 3, ..Default::default() };
        let mut full = Trainer::new(Tokenizer::new(&cfg(), Device::Cpu).unwrap(), opts.clone()).unwrap();
        let full_report = full.run(&mut Batches::new(&data, 8, 0, 0)).unwrap();
        assert!(full_report.steps.iter().any(|s| s.replaced > 0), "the run exercises dead-code replacement");

        let dir = tempfile::tempdir().unwrap();
        let mut first = Trainer::new(Tokenizer::new(&cfg(), Device::Cpu).unwrap(), opts.clone()).unwrap();
        first.run_for(&mut Batches::new(&data, 8, 0, 0), 6).unwrap();
        first.save(dir.path()).unwrap();
        let mut second = Trainer::resume(dir.path(), Device::Cpu, opts).unwrap();
        assert_eq!(second.step_count(), 6);
        let rest = second.run(&mut Batches::new(&data, 8, 0, 6)).unwrap();
        assert_eq!(rest.steps.len(), 6);
        assert_eq!(rest.steps.last().unwrap().loss, full_report.steps.last().unwrap().loss);
        let (a, b) = (full.tokenizer().var_store().variables(), second.tokenizer().var_store().variables());
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{name} differs after resume");
        }
    }

    /// The ViT encoder/decoder trains through the same seam (patch 4 → 4×4 tokens).
    #[test]
    fn tokenizer_vit_training_lowers_the_loss() {
        let data = smooth_images(128);
        let vit = TokenizerConfig { arch: ArchKind::Vit { patch: 4, width: 32, depth: 1, heads: 4 }, ..cfg() };
        assert_eq!(vit.tokens_per_sample(), 16);
        let opts = TrainOptions { steps: 80, batch_size: 16, lr: 3e-3, warmup_steps: 5, ..Default::default() };
        let (tok, report) = train_tokenizer(&vit, &data, &opts, Device::Cpu).unwrap();
        let (first, last) = (report.steps[0].recon_loss, report.last().unwrap());
        assert!(last.recon_loss < first / 2.0, "recon {first} -> {}", last.recon_loss);
        assert!(last.usage >= 0.5, "usage {}", last.usage);
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path()).unwrap();
        let back = Tokenizer::load(dir.path(), Device::Cpu).unwrap();
        assert!(encode_all(&back, &data, 64).unwrap().equal(&encode_all(&tok, &data, 64).unwrap()));
    }

    #[test]
    fn tokenizer_training_lowers_the_loss_and_keeps_codes_alive() {
        let data = smooth_images(128);
        let opts = TrainOptions { steps: 80, batch_size: 16, lr: 3e-3, warmup_steps: 5, ..Default::default() };
        let (tok, report) = train_tokenizer(&cfg(), &data, &opts, Device::Cpu).unwrap();
        let first = report.steps[0].recon_loss;
        let last = report.last().unwrap();
        assert!(last.recon_loss < first / 2.0, "recon {first} -> {}", last.recon_loss);
        assert!(last.usage >= 0.5 && last.perplexity > 4.0, "usage {} perplexity {}", last.usage, last.perplexity);
        let ids = encode_all(&tok, &data, 50).unwrap();
        assert_eq!(ids.size(), [128, 16]);
        assert!((opts.lr_at(0) - opts.lr / 5.0).abs() < 1e-12 && (opts.lr_at(80) - opts.lr * 0.1).abs() < 1e-9);
    }
}
