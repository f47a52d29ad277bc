//! The single-process training loop: for step `s` it takes global samples `[s·B, (s+1)·B)` from
//! the ledger, runs forward/backward per micro-batch, checks the loss and gradient norm,
//! clips, steps AdamW with the scheduled LR, and checkpoints.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use tch::Device;
use tessera_model::{AdamW, AdamWConfig, Checkpoint, ForwardOptions, FourMConfig, LossType};
use tessera_protocol::job::{DeviceKind, LossKind, ResolvedJob, ResolvedTrain};
use tessera_protocol::{SampleLedger, SampleRef};
use tessera_tokenizers::Modality;

use crate::checkpoint;
use crate::error::{Result, WorkerError};
use crate::source::BatchSource;
use tessera_protocol::checkpoint::{self as store, TrainState};

/// The forward settings a job's training steps use (budgets and loss; the decoder order seed
/// and loss normaliser are set per micro-batch).
pub fn forward_options(t: &ResolvedTrain) -> ForwardOptions {
    ForwardOptions {
        num_encoder_tokens: t.num_input_tokens as i64,
        num_decoder_tokens: t.num_target_tokens as i64,
        loss: match t.loss {
            LossKind::Mod => LossType::Mod,
            LossKind::Token => LossType::Token,
        },
        decoder_order_seed: None,
        return_logits: false,
        loss_normalizer: None,
    }
}

/// The forward settings validation uses for a job: the training budgets with a fixed decoder
/// order seed, so that every evaluation of the job (in training or on a checkpoint after a
/// multi-worker run) scores the same tokens.
pub fn eval_options(job: &ResolvedJob) -> ForwardOptions {
    ForwardOptions { decoder_order_seed: Some(tessera_protocol::seeds::validation_decoder_order(job.seed)), ..forward_options(&job.train) }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step index (0-based) that was run.
    pub step: u64,
    /// Loss of the step's whole batch (the sum of its micro-batches' contributions).
    pub loss: f64,
    /// Per-modality losses of the whole batch.
    pub mod_loss: BTreeMap<Modality, f64>,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// True when the update was skipped (non-finite loss or gradient).
    pub skipped: bool,
    /// Samples in the step.
    pub samples: usize,
    /// Seconds spent producing batches.
    pub data_s: f64,
    /// Seconds in forward and backward (including the collectives inside them under FSDP).
    pub compute_s: f64,
    /// Seconds of `compute_s` in forward passes (block recomputation counts as backward).
    pub forward_s: f64,
    /// Seconds in collectives (all-gathers, reduce-scatters, all-reduces); 0 in one process.
    pub comm_s: f64,
    /// Seconds in clipping and the optimizer.
    pub optim_s: f64,
    /// Wall seconds of the whole step.
    pub step_s: f64,
}

/// A model, its optimizer, the ledger and a batch source, advancing step by step.
pub struct Trainer<S: BatchSource> {
    job: ResolvedJob,
    model: Checkpoint,
    opt: AdamW,
    ledger: SampleLedger,
    source: S,
    state: TrainState,
    fwd: ForwardOptions,
    skipped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The libtorch device of the job's `train.device`; an error when it asks for CUDA and this
/// process has none.
pub fn job_device(train: &ResolvedTrain) -> Result<Device> {
    match train.device {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceKind::Cuda => Err(WorkerError::Device { wanted: "cuda".into(), found: "this process has no CUDA device".into() }),
    }
}

impl<S: BatchSource> std::fmt::Debug for Trainer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("job", &self.job.name).field("state", &self.state).finish()
    }
}

impl<S: BatchSource> Trainer<S> {
    /// Builds the model (seeded init, or the job's initial weights), the optimizer and the
    /// ledger over datasets of `dataset_lens` records.
    pub fn new(job: ResolvedJob, cfg: &FourMConfig, source: S, dataset_lens: Vec<u64>) -> Result<Self> {
        let device = job_device(&job.train)?;
        let model = match &job.model.init {
            Some(path) => {
                let m = Checkpoint::init(cfg, device, job.seed as i64)?;
                let (weights, _) = tessera_model::io::read(path)?;
                m.copy_from(weights, path)?;
                m
            }
            None => Checkpoint::init(cfg, device, job.seed as i64)?,
        };
        let t = &job.train;
        let opt = AdamW::new(
            &model.vs,
            AdamWConfig { lr: t.lr.at(0), beta1: t.betas[0], beta2: t.betas[1], eps: t.eps, weight_decay: t.weight_decay },
        )?;
        let ledger = SampleLedger::new(job.seed, job.schedule.clone(), dataset_lens)?;
        let state = TrainState::start(job.schedule.clone());
        let fwd = forward_options(t);
        let skipped = source.skipped_counter();
        Ok(Self { job, model, opt, ledger, source, state, fwd, skipped })
    }

    /// Resumes from the newest valid checkpoint of the job's checkpoint directory, if any;
    /// returns it and the reasons newer ones were rejected.
    pub fn resume(&mut self) -> Result<(Option<PathBuf>, Vec<String>)> {
        let (found, rejected) = store::latest_valid(&self.job.checkpoint.dir)?;
        let Some((dir, m)) = found else { return Ok((None, rejected)) };
        checkpoint::check_seed(&dir, &m, self.job.seed)?;
        checkpoint::restore_whole_model(&dir, &m, &self.model, &mut self.opt)?;
        let state = m.state;
        self.ledger = SampleLedger::new(self.job.seed, state.schedule.clone(), self.ledger.dataset_lens().to_vec())?;
        self.source.set_ledger(&self.ledger);
        self.state = state;
        Ok((Some(dir), rejected))
    }

    /// Runs optimizer step `state.step` and advances the data position.
    pub fn step(&mut self) -> Result<StepReport> {
        let t0 = Instant::now();
        let step = self.state.step;
        let t = &self.job.train;
        let (global, micro) = (t.global_batch_size, t.micro_batch_size);
        let lr = t.lr.at(step);
        self.opt.set_lr(lr)?;
        self.opt.zero_grad()?;
        let refs: Vec<SampleRef> = self.ledger.locate_range(self.state.next_sample_index, global as u64);
        let (mut data_s, mut compute_s, mut forward_s) = (0.0, 0.0, 0.0);
        let mut loss_sum = 0.0;
        let mut mod_sum: BTreeMap<Modality, f64> = BTreeMap::new();
        let n_micro = global / micro;
        // Load every micro-batch first: the whole step's target counts normalise each part's
        // loss, so the accumulated loss and gradient equal those of one batch of `global`
        // samples however it is split (micro-batches here, ranks under FSDP).
        let mut batches = Vec::with_capacity(n_micro);
        let mut counts: BTreeMap<Modality, i64> = BTreeMap::new();
        for chunk in refs.chunks(micro) {
            let td = Instant::now();
            let batch = self.source.batch(chunk)?.to_device(self.model.vs.device());
            data_s += td.elapsed().as_secs_f64();
            // The decoder modality order is shuffled per micro-batch (ml-4m: per batch, with
            // Python's unseeded `random`); seeding it by (seed, step, first sample) makes resume
            // exact and matches what an FSDP rank loading the same chunk does.
            let opts = ForwardOptions {
                decoder_order_seed: Some(tessera_protocol::seeds::decoder_order(self.job.seed, step, chunk[0].index)),
                ..self.fwd.clone()
            };
            for (m, n) in self.model.model.target_counts(&batch, &opts)? {
                *counts.entry(m).or_default() += n;
            }
            batches.push((batch, opts));
        }
        for (batch, opts) in batches {
            let tc = Instant::now();
            let opts = ForwardOptions { loss_normalizer: Some(counts.clone()), ..opts };
            let out = if self.job.train.bf16 {
                tch::autocast(true, || self.model.model.forward(&batch, &opts))?
            } else {
                self.model.model.forward(&batch, &opts)?
            };
            forward_s += tc.elapsed().as_secs_f64();
            // A micro-batch without a single target token (short texts can give one) has a
            // constant loss: it adds nothing to any gradient, and has no graph to go back through.
            if out.loss.requires_grad() {
                out.loss.f_backward()?;
            }
            loss_sum += out.loss.double_value(&[]);
            for (m, l) in &out.mod_loss {
                *mod_sum.entry(*m).or_default() += l.double_value(&[]);
            }
            compute_s += tc.elapsed().as_secs_f64();
        }
        let to = Instant::now();
        let loss = loss_sum;
        let grad_norm = self.opt.grad_sq_sum().sqrt();
        let finite = loss.is_finite() && grad_norm.is_finite();
        let skipped = !finite;
        if !finite {
            if !t.skip_nonfinite {
                return Err(WorkerError::NonFinite { step, loss, grad_norm });
            }
            self.opt.zero_grad()?;
            self.state.counters.skipped_steps += 1;
        } else {
            if let Some(clip) = t.clip_grad
                && grad_norm > clip
            {
                // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6).
                self.opt.scale_grads(clip / (grad_norm + 1e-6));
            }
            self.opt.step()?;
        }
        let optim_s = to.elapsed().as_secs_f64();
        self.state.advance(
            global as u64,
            (t.num_input_tokens + t.num_target_tokens) as u64,
            self.skipped.swap(0, std::sync::atomic::Ordering::Relaxed),
        );
        Ok(StepReport {
            step,
            loss,
            mod_loss: mod_sum,
            lr,
            grad_norm,
            skipped,
            samples: global,
            data_s,
            compute_s,
            forward_s,
            comm_s: 0.0,
            optim_s,
            step_s: t0.elapsed().as_secs_f64(),
        })
    }

    /// Writes a checkpoint of the current state and prunes to `keep_last`.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        self.snapshot_at(0)?.commit_alone(self.job.checkpoint.keep_last)
    }

    /// The model and optimizer at the current step as a world of one's checkpoint snapshot.
    fn snapshot_at(&self, generation: u64) -> Result<crate::fsdp::snapshot::Snapshot> {
        let j = &self.job;
        checkpoint::whole_model_snapshot(&j.checkpoint.dir, &j.name, j.seed, &self.state, &self.model, &self.opt, generation)
    }

    /// True when the configured number of steps has been run.
    pub fn finished(&self) -> bool {
        self.state.step >= self.job.train.total_steps
    }

    /// Training position.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The model.
    pub fn model(&self) -> &Checkpoint {
        &self.model
    }

    /// The optimizer (its state is what a checkpoint stores besides the weights).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// The resolved job.
    pub fn job(&self) -> &ResolvedJob {
        &self.job
    }

    /// The ledger in force.
    pub fn ledger(&self) -> &SampleLedger {
        &self.ledger
    }
}

impl<S: BatchSource> crate::driver::Engine for Trainer<S> {
    fn step(&mut self) -> Result<StepReport> {
        Trainer::step(self)
    }

    fn state(&self) -> &TrainState {
        &self.state
    }

    fn rank(&self) -> u32 {
        0
    }

    fn agree(&mut self, _flags: &mut [i64]) -> Result<()> {
        // A world of one agrees with itself.
        Ok(())
    }

    fn validation_report(
        &mut self,
        set: &crate::eval::ValidationSet,
        generation: tessera_protocol::Generation,
    ) -> Result<tessera_protocol::ValidationReport> {
        let mut report = set.report(&self.model.model, self.model.vs.device(), &eval_options(&self.job), self.state.step)?;
        report.generation = generation.0;
        Ok(report)
    }

    fn snapshot(&mut self, generation: tessera_protocol::Generation) -> Result<crate::fsdp::snapshot::Snapshot> {
        self.snapshot_at(generation.0)
    }
}
