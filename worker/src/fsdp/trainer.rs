//! [`FsdpTrainer`]: one rank of sharded data-parallel training (see the module docs of
//! [`crate::fsdp`]). Every rank calls the same collectives in the same order; the world's
//! result equals one process training the whole global batch (same seed, same ledger),
//! because the global batch is split by sample and each part's loss is normalised by the
//! global target counts (`ForwardOptions::loss_normalizer`).

use std::collections::BTreeMap;
use std::time::Instant;

use tch::{Device, Tensor};
use tessera_model::{Checkpoint, ForwardOptions, FourMConfig};
use tessera_ops::{Collective, NcclComm, ReduceOp, shard_range};
use tessera_protocol::job::ResolvedJob;
use tessera_protocol::{SampleLedger, SampleRef};
use tessera_tokenizers::Modality;

use super::comm::{CommThread, Ticket};
use super::grads::GradShard;
use super::units::{Unit, block_params, flat_slice, free_param, units_with_shapes};
use crate::checkpoint::ShardTensors;
use crate::error::{Result, WorkerError};
use crate::source::BatchSource;
use crate::trainer::{StepReport, forward_options, job_device};
use tessera_protocol::checkpoint::TrainState;

mod checkpointing;
mod eval;
mod gather;
mod idle;
mod optimizer;

/// One rank of an FSDP job.
pub struct FsdpTrainer<C: Collective + 'static, S: BatchSource> {
    job: ResolvedJob,
    model: Checkpoint,
    /// The rank's host collective: inline, or on its own thread (prefetching gathers, trailing
    /// reduces) with `train.fsdp_prefetch`.
    coll: CommThread<C>,
    /// Whether unit all-gathers start one unit ahead of use (host path).
    prefetch: bool,
    /// Reduce-scatters started and not yet added into the gradient shards: (unit, result).
    reducing: std::collections::VecDeque<(usize, Ticket<Vec<f32>>)>,
    /// Where the model, shards and optimizer state live (the job's `train.device`).
    device: Device,
    /// Moves the units' flat vectors on the GPU when set; otherwise they go through `coll`.
    nccl: Option<NcclComm>,
    units: Vec<Unit>,
    /// Per unit: holds its parameters only to reset their gradients to undefined (PyTorch's
    /// `set_to_none`), which frees them and keeps "no gradient" distinguishable from zero.
    grad_resets: Vec<tch::COptimizer>,
    shards: Vec<ShardTensors>,
    /// Updates applied per parameter, per unit (replicated: every rank agrees).
    steps: Vec<Vec<i64>>,
    ledger: SampleLedger,
    source: S,
    state: TrainState,
    fwd: ForwardOptions,
    outputs: Vec<Modality>,
    skipped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Seconds spent in collectives during the current step.
    comm_s: f64,
    /// Seconds spent in forward passes during the current step.
    forward_s: f64,
    /// Elements per rank per piece when the `rest` unit moves in pieces (host path).
    piece_per_rank: usize,
}

/// Default [`FsdpTrainer::with_piece_elems`]: 16 MiB of f32 per rank per piece, large enough
/// for the ring's full bandwidth.
pub const PIECE_PER_RANK: usize = 4 << 20;

impl<C: Collective + 'static, S: BatchSource> std::fmt::Debug for FsdpTrainer<C, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsdpTrainer")
            .field("rank", &self.coll.rank())
            .field("world", &self.coll.world())
            .field("state", &self.state)
            .finish()
    }
}

/// What one rank keeps from a generation to the next: the single-device model (its structure;
/// parameter values come from shards), its parameter units (re-sharded for every world) and
/// the data source (pure in the sample references, so reusing it changes no batch).
pub struct Resident<S> {
    device: Device,
    model: Checkpoint,
    units: Vec<Unit>,
    grad_resets: Vec<tch::COptimizer>,
    source: S,
    dataset_lens: Vec<u64>,
}

impl<S: BatchSource> Resident<S> {
    /// The model's structure on the job's device, with its units, around `source`, for a
    /// trainer whose values come from a checkpoint: each block is freed as soon as it is drawn,
    /// so building it never holds more than the `rest` unit and one block.
    pub fn new(cfg: &FourMConfig, job: &ResolvedJob, source: S, dataset_lens: Vec<u64>) -> Result<Self> {
        Ok(Self::build(cfg, job, source, dataset_lens, None)?.0)
    }

    /// Draws the model from the job's seed, freeing each block right after it is drawn; with
    /// `keep = Some((world, rank))`, that rank's fp32 master shard of each block is copied out
    /// first (returned by unit name; the `rest` unit stays whole in the model).
    fn build(
        cfg: &FourMConfig,
        job: &ResolvedJob,
        source: S,
        dataset_lens: Vec<u64>,
        keep: Option<(usize, usize)>,
    ) -> Result<(Self, BTreeMap<String, Tensor>)> {
        let device = job_device(&job.train)?;
        let mut masters = BTreeMap::new();
        let mut freed = BTreeMap::new();
        let model = Checkpoint::init_with(cfg, device, job.seed as i64, &mut |vs, block| {
            let params = block_params(vs, block);
            if let Some((world, rank)) = keep {
                let numel = params.iter().map(|(_, t)| t.numel()).sum();
                masters.insert(block.to_string(), flat_slice(params.iter().map(|(_, t)| t), shard_range(numel, world, rank), device));
            }
            for (name, t) in params {
                freed.insert(name, t.size());
                free_param(&t, device);
            }
        })?;
        // The world-1 layout; `assemble` sets each rank's shard ranges.
        let units = units_with_shapes(&model.vs, 1, 0, &freed);
        let mut grad_resets = Vec::with_capacity(units.len());
        for u in &units {
            let mut opt = tch::COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)?;
            for p in &u.params {
                opt.add_parameters(&p.tensor, 0)?;
            }
            grad_resets.push(opt);
        }
        Ok((Self { device, model, units, grad_resets, source, dataset_lens }, masters))
    }
}

impl<S> std::fmt::Debug for Resident<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resident").field("units", &self.units.len()).field("dataset_lens", &self.dataset_lens).finish()
    }
}

impl<C: Collective + 'static, S: BatchSource> FsdpTrainer<C, S> {
    /// Builds rank `coll.rank()`'s trainer. Every rank initialises the model from the job seed,
    /// so the shards start consistent without communication.
    pub fn new(job: ResolvedJob, cfg: &FourMConfig, source: S, dataset_lens: Vec<u64>, coll: C) -> Result<Self> {
        let keep = (coll.world(), coll.rank().0 as usize);
        // Each block's shard is taken while the model is drawn, and the block freed at once:
        // a rank never holds the whole model (at 4M-21 XL that is 15.8 GB).
        let (resident, mut masters) = Resident::build(cfg, &job, source, dataset_lens, Some(keep))?;
        let mut me = Self::assemble(job, cfg, resident, coll)?;
        let mut shards = Vec::with_capacity(me.units.len());
        for u in &me.units {
            let master = match masters.remove(&u.name) {
                Some(m) => m,
                None => flat_slice(u.params.iter().map(|p| &p.tensor), u.shard.clone(), me.device),
            };
            if master.numel() != u.shard.len() {
                return Err(WorkerError::Layout {
                    rank: me.coll.rank().0,
                    step: 0,
                    detail: format!("unit {}: initial shard has {} elements, its range {:?}", u.name, master.numel(), u.shard),
                });
            }
            shards.push(ShardTensors { exp_avg: master.zeros_like(), exp_avg_sq: master.zeros_like(), master });
        }
        me.shards = shards;
        me.free_blocks()?;
        Ok(me)
    }

    /// Builds rank `coll.rank()`'s trainer from what this rank kept of an earlier generation
    /// (or a fresh [`Resident`]) and the checkpoint in `dir`, resharded to this world: no model
    /// initialisation and no data indexing, which is most of a recovery's restore time.
    pub fn restored(job: ResolvedJob, cfg: &FourMConfig, resident: Resident<S>, coll: C, dir: &std::path::Path) -> Result<Self> {
        let mut me = Self::assemble(job, cfg, resident, coll)?;
        me.restore_from(dir)?;
        me.free_blocks()?;
        Ok(me)
    }

    /// Gives back what a later generation of this rank can reuse (model structure, units, data
    /// source); the shards and optimizer state are dropped, they come from a checkpoint.
    pub fn into_resident(mut self) -> Result<Resident<S>> {
        // A generation aborted mid-step may have left units gathered and gradients defined,
        // and reduce-scatters in flight.
        self.reducing.clear();
        self.free_blocks()?;
        if let Some(r) = self.units.iter().position(|u| u.name == "rest") {
            self.free_grads(r)?;
        }
        Ok(Resident {
            device: self.device,
            model: self.model,
            units: self.units,
            grad_resets: self.grad_resets,
            source: self.source,
            dataset_lens: self.ledger.dataset_lens().to_vec(),
        })
    }

    /// The trainer around `resident` for this collective's world and rank, with empty shards
    /// (the caller fills them from the model or a checkpoint).
    fn assemble(job: ResolvedJob, cfg: &FourMConfig, resident: Resident<S>, coll: C) -> Result<Self> {
        let (world, rank) = (coll.world(), coll.rank().0 as usize);
        if job.train.global_batch_size < world {
            return Err(WorkerError::BatchSmallerThanWorld { global: job.train.global_batch_size, world });
        }
        let Resident { device, model, mut units, grad_resets, source, dataset_lens } = resident;
        let wanted = job_device(&job.train)?;
        if device != wanted {
            return Err(WorkerError::Device { wanted: format!("{wanted:?}"), found: format!("the kept model is on {device:?}") });
        }
        for u in &mut units {
            u.shard = shard_range(u.numel, world, rank);
        }
        let steps = units.iter().map(|u| vec![0; u.params.len()]).collect();
        let prefetch = job.train.fsdp_prefetch;
        let coll = if prefetch {
            CommThread::spawn(coll).map_err(crate::error::io_err("starting the communication thread", "comm"))?
        } else {
            CommThread::inline(coll)
        };
        let ledger = SampleLedger::new(job.seed, job.schedule.clone(), dataset_lens)?;
        let state = TrainState::start(job.schedule.clone());
        let fwd = forward_options(&job.train);
        let outputs = cfg.domains_out.clone();
        let skipped = source.skipped_counter();
        Ok(Self {
            job,
            model,
            coll,
            prefetch,
            reducing: Default::default(),
            device,
            nccl: None,
            units,
            grad_resets,
            shards: Vec::new(),
            steps,
            ledger,
            source,
            state,
            fwd,
            outputs,
            skipped,
            comm_s: 0.0,
            forward_s: 0.0,
            piece_per_rank: PIECE_PER_RANK,
        })
    }

    /// Moves the units' flat vectors through `comm` on the GPU instead of through the host
    /// collective. `comm` must span the same ranks as the collective, on this trainer's device.
    fn with_nccl(mut self, comm: NcclComm) -> Result<Self> {
        let same = comm.world() == self.coll.world() && comm.rank() == self.coll.rank();
        if !same || self.device != Device::Cuda(comm.device()) {
            return Err(WorkerError::Nccl {
                rank: self.coll.rank().0,
                detail: format!(
                    "NCCL communicator (rank {} of {}, cuda:{}) does not match the trainer (rank {} of {}, {:?})",
                    comm.rank().0,
                    comm.world(),
                    comm.device(),
                    self.coll.rank().0,
                    self.coll.world(),
                    self.device
                ),
            });
        }
        self.nccl = Some(comm);
        Ok(self)
    }

    /// [`Self::with_nccl`] when `comm` is given; the trainer unchanged otherwise.
    pub fn with_device_comm(self, comm: Option<NcclComm>) -> Result<Self> {
        match comm {
            Some(c) => self.with_nccl(c),
            None => Ok(self),
        }
    }

    /// Sets how many elements per rank a piece of the `rest` unit holds when it is gathered and
    /// reduced in pieces (see [`super::pieces`]); results do not depend on it (tests use small
    /// pieces to cover many).
    pub fn with_piece_elems(mut self, per_rank: usize) -> Self {
        self.piece_per_rank = per_rank.max(1);
        self
    }

    fn comm<T>(&self, r: tessera_ops::Result<T>) -> Result<T> {
        r.map_err(|source| WorkerError::Collective { rank: self.coll.rank().0, step: self.state.step, op: "collective".into(), source })
    }

    /// The units of the encoder blocks and of the decoder blocks, in model order.
    fn block_units(&self) -> Result<(Vec<usize>, Vec<usize>)> {
        let unit = |name: String| {
            self.units.iter().position(|u| u.name == name).ok_or_else(|| WorkerError::Layout {
                rank: self.coll.rank().0,
                step: self.state.step,
                detail: format!("block {name} has no trainable parameters to shard"),
            })
        };
        let (n_enc, n_dec) = (self.model.model.num_encoder_blocks(), self.model.model.num_decoder_blocks());
        let enc = (0..n_enc).map(|i| unit(format!("encoder.{i}"))).collect::<Result<Vec<usize>>>()?;
        let dec = (0..n_dec).map(|j| unit(format!("decoder.{j}"))).collect::<Result<Vec<usize>>>()?;
        Ok((enc, dec))
    }

    /// Forward and backward of one micro-batch, block by block: each block's unit is gathered
    /// just before it runs and freed after; the stacks run without autograd in the forward pass
    /// (keeping only block inputs) and each block is recomputed with autograd in the backward
    /// pass (all but the last decoder block, whose graph is kept), whose gradients are
    /// reduce-scattered and freed at once. Returns the loss output. `idle` repeats its collectives.
    fn micro_step(
        &mut self,
        batch: &tessera_model::MaskedBatch,
        opts: &ForwardOptions,
        acc: &mut [GradShard],
        used: &mut [Vec<i64>],
    ) -> Result<tessera_model::ForwardOutput> {
        // bf16 autocast around every forward computation (and recomputation); backward passes
        // run outside it, as PyTorch recommends. Gradients and their reduction stay fp32.
        let bf16 = self.job.train.bf16;
        let (enc_units, dec_units) = self.block_units()?;
        let (n_enc, n_dec) = (enc_units.len(), dec_units.len());
        // The order units are used in; each gather starts while the unit before it computes.
        let forward: Vec<usize> = enc_units.iter().chain(&dec_units).copied().collect();
        let backward: Vec<usize> = dec_units.iter().rev().chain(enc_units.iter().rev()).copied().collect();
        let mut ahead = None;

        let tf = Instant::now();
        let comm_before = self.comm_s;
        // Embeddings (the `rest` unit is resident for the whole step), with autograd.
        let staged = amp(bf16, || self.model.model.stage_embed(batch, opts))?;
        let x0 = staged.encoder_input();
        let emb = staged.encoder_emb();
        let y0 = staged.decoder_input();
        // Forward through the stacks without autograd, keeping each block's input.
        // Without recomputation: each block's (input leaf, output with its graph), and its unit
        // stays gathered until its backward (the graph holds the parameters).
        let recompute = self.job.train.fsdp_recompute;
        let mut enc_graphs: Vec<(Tensor, Tensor)> = Vec::new();
        let mut dec_graphs: Vec<(Tensor, Tensor)> = Vec::new();
        let mut xs = vec![x0.detach()];
        for (i, &u) in enc_units.iter().enumerate() {
            self.advance(&forward, i, &mut ahead)?;
            if recompute {
                let next = tch::no_grad(|| amp(bf16, || self.model.model.stage_encoder_block(i, &xs[i], &staged)));
                xs.push(next);
                self.free_unit(u)?;
            } else {
                let input = xs[i].detach().set_requires_grad(true);
                let out = amp(bf16, || self.model.model.stage_encoder_block(i, &input, &staged));
                xs.push(out.detach());
                enc_graphs.push((input, out));
            }
        }
        let x_last = xs[n_enc].detach().set_requires_grad(true);
        let emb_leaf = emb.detach().set_requires_grad(true);
        let context = amp(bf16, || self.model.model.stage_context_with(&x_last, &emb_leaf));
        let ctx_leaf = context.detach().set_requires_grad(true);
        let mut ys = vec![y0.detach()];
        for (j, &u) in dec_units.iter().enumerate() {
            self.advance(&forward, n_enc + j, &mut ahead)?;
            // The last decoder block's backward comes first, right after the loss: keeping its
            // graph holds one block's activations through the loss (its recomputation would
            // need them right after it anyway) and saves one block forward and one all-gather
            // per micro-batch. The next backward unit's gather starts now and overlaps the loss.
            if recompute && j + 1 == n_dec {
                let input = ys[j].detach().set_requires_grad(true);
                let out = amp(bf16, || self.model.model.stage_decoder_block(j, &input, &ctx_leaf, &staged));
                ys.push(out.detach());
                dec_graphs.push((input, out));
                if self.prefetch
                    && let Some(&next) = backward.get(1)
                {
                    ahead = Some(self.start_gather(next));
                }
            } else if recompute {
                let next = tch::no_grad(|| amp(bf16, || self.model.model.stage_decoder_block(j, &ys[j], &ctx_leaf, &staged)));
                ys.push(next);
                self.free_unit(u)?;
            } else {
                let input = ys[j].detach().set_requires_grad(true);
                let out = amp(bf16, || self.model.model.stage_decoder_block(j, &input, &ctx_leaf, &staged));
                ys.push(out.detach());
                dec_graphs.push((input, out));
            }
        }
        let y_last = ys[n_dec].detach().set_requires_grad(true);
        let out = amp(bf16, || self.model.model.stage_losses(&y_last, &staged, opts))?;
        // Forward time excludes the all-gathers it waited for (they count as communication).
        self.forward_s += tf.elapsed().as_secs_f64() - (self.comm_s - comm_before);
        // A micro-batch without a single target token (short texts can give one) has a
        // constant loss and no gradient anywhere; the ranks still gather and reduce every unit
        // below, in the same order as the others (undefined gradients reduce as zeros).
        let has_graph = out.loss.requires_grad();
        if has_graph {
            out.loss.f_backward()?;
        }

        // Backward: decoder blocks in reverse, recomputed (or from their kept graphs).
        let mut g = if has_graph { y_last.grad() } else { Tensor::new() };
        for (k, (j, &u)) in dec_units.iter().enumerate().rev().enumerate() {
            let kept = dec_graphs.pop();
            if kept.is_none() {
                self.advance(&backward, k, &mut ahead)?;
            }
            if has_graph {
                let (input, output) = match kept {
                    Some(kept) => kept,
                    None => {
                        let input = ys[j].detach().set_requires_grad(true);
                        let recomputed = amp(bf16, || self.model.model.stage_decoder_block(j, &input, &ctx_leaf, &staged));
                        (input, recomputed)
                    }
                };
                (output * &g).sum(tch::Kind::Float).f_backward()?;
                g = input.grad();
            }
            self.reduce_unit_grads(u, acc, used)?;
            self.free_unit(u)?;
        }
        let gy0 = g;
        if has_graph {
            (&context * ctx_leaf.grad()).sum(tch::Kind::Float).f_backward()?;
        }
        let mut g = if has_graph { x_last.grad() } else { Tensor::new() };
        for (k, (i, &u)) in enc_units.iter().enumerate().rev().enumerate() {
            let kept = enc_graphs.pop();
            if kept.is_none() {
                self.advance(&backward, n_dec + k, &mut ahead)?;
            }
            if has_graph {
                let (input, output) = match kept {
                    Some(kept) => kept,
                    None => {
                        let input = xs[i].detach().set_requires_grad(true);
                        let recomputed = amp(bf16, || self.model.model.stage_encoder_block(i, &input, &staged));
                        (input, recomputed)
                    }
                };
                (output * &g).sum(tch::Kind::Float).f_backward()?;
                g = input.grad();
            }
            self.reduce_unit_grads(u, acc, used)?;
            self.free_unit(u)?;
        }
        // One backward through the embedding graph with every gradient that reached it.
        if has_graph {
            let emb_grad = emb_leaf.grad();
            let mut total = (&x0 * &g).sum(tch::Kind::Float) + (&y0 * &gy0).sum(tch::Kind::Float);
            if emb_grad.defined() {
                total += (&emb * &emb_grad).sum(tch::Kind::Float);
            }
            total.f_backward()?;
        }
        self.settle_reduces(acc, 0)?;
        Ok(out)
    }

    /// Runs optimizer step `state.step` on this rank's part of the global batch.
    pub fn step(&mut self) -> Result<StepReport> {
        let t0 = Instant::now();
        self.comm_s = 0.0;
        self.forward_s = 0.0;
        let step = self.state.step;
        let global = self.job.train.global_batch_size;
        let plan = self.step_plan();
        let lr = self.job.train.lr.at(step);

        let rest = self.units.iter().position(|u| u.name == "rest");
        if let Some(r) = rest {
            self.gather_rest(r)?;
            self.free_grads(r)?;
        }
        // This rank's contiguous slice of the step's samples in micro-batches (and idle passes).
        let refs: Vec<SampleRef> = self.ledger.locate_range(self.state.next_sample_index, global as u64);
        let td = Instant::now();
        let mut batches = Vec::new();
        let mut local_counts: BTreeMap<Modality, i64> = BTreeMap::new();
        for chunk in plan.micro_batches.iter().map(|r| &refs[r.clone()]) {
            let batch = self.source.batch(chunk)?.to_device(self.device);
            // Seeded by the chunk's first global index, as the single-process trainer does.
            let opts = ForwardOptions {
                decoder_order_seed: Some(tessera_protocol::seeds::decoder_order(self.job.seed, step, chunk[0].index)),
                ..self.fwd.clone()
            };
            for (m, n) in self.model.model.target_counts(&batch, &opts)? {
                *local_counts.entry(m).or_default() += n;
            }
            batches.push((batch, opts));
        }
        let data_s = td.elapsed().as_secs_f64();
        let mut counts: Vec<i64> = self.outputs.iter().map(|m| local_counts.get(m).copied().unwrap_or(0)).collect();
        let tcomm = Instant::now();
        let r = self.coll.all_reduce(&mut counts, ReduceOp::Sum);
        self.comm_s += tcomm.elapsed().as_secs_f64();
        self.comm(r)?;
        let normalizer: BTreeMap<Modality, i64> = self.outputs.iter().copied().zip(counts).collect();

        let tc = Instant::now();
        // Partial losses: [total, per output modality...], summed over micro-batches then ranks.
        let mut partial = vec![0f32; 1 + self.outputs.len()];
        let mut acc: Vec<GradShard> = self.units.iter().map(|u| GradShard::new(u.shard.len(), self.nccl.is_some())).collect();
        let mut used: Vec<Vec<i64>> = self.units.iter().map(|u| vec![0i64; u.params.len()]).collect();
        for (batch, opts) in batches {
            let opts = ForwardOptions { loss_normalizer: Some(normalizer.clone()), ..opts };
            let out = self.micro_step(&batch, &opts, &mut acc, &mut used)?;
            partial[0] += out.loss.double_value(&[]) as f32;
            for (i, m) in self.outputs.iter().enumerate() {
                if let Some(l) = out.mod_loss.get(m) {
                    partial[1 + i] += l.double_value(&[]) as f32;
                }
            }
        }
        self.idle_passes(plan.idle_passes(), &mut acc, &mut used)?;
        if let Some(r) = rest {
            self.reduce_rest(r, &mut acc, &mut used)?;
        }
        // Every reduce-scatter lands in its shard before the norm and the update read them.
        self.settle_reduces(&mut acc, 0)?;
        let compute_s = tc.elapsed().as_secs_f64();

        let to = Instant::now();
        let comm_in_compute = self.comm_s;
        let r = self.coll.all_reduce(&mut partial, ReduceOp::Sum);
        self.comm(r)?;
        // A parameter counts as used when any rank produced a gradient for it (the
        // single-process rule for skipping AdamW).
        for flags in used.iter_mut() {
            let r = self.coll.all_reduce(flags, ReduceOp::Max);
            self.comm(r)?;
        }
        // One vectorised pass per shard (torch's cascade-summed f32 norm); no f64 copy of the
        // gradients, which for the embeddings' unit would be hundreds of MiB per step.
        let sq_sum: f64 = acc.iter().map(GradShard::sq_sum).sum();
        let grad_shards: Vec<Tensor> = acc.into_iter().map(|g| g.into_tensor(self.device)).collect();
        let mut norm_sq = [sq_sum as f32];
        let r = self.coll.all_reduce(&mut norm_sq, ReduceOp::Sum);
        self.comm(r)?;
        let grad_norm = f64::from(norm_sq[0]).sqrt();
        // The loss/flag/norm all-reduces above are communication too.
        self.comm_s = comm_in_compute + to.elapsed().as_secs_f64();
        let to = Instant::now();
        let loss = f64::from(partial[0]);
        let finite = loss.is_finite() && grad_norm.is_finite();
        if !finite && !self.job.train.skip_nonfinite {
            return Err(WorkerError::NonFinite { step, loss, grad_norm });
        }
        if finite {
            self.apply_update(&grad_shards, &used, lr, grad_norm)?;
        } else {
            self.state.counters.skipped_steps += 1;
        }
        let t = &self.job.train;
        let optim_s = to.elapsed().as_secs_f64();
        self.state.advance(
            global as u64,
            (t.num_input_tokens + t.num_target_tokens) as u64,
            self.skipped.swap(0, std::sync::atomic::Ordering::Relaxed),
        );
        Ok(StepReport {
            step,
            loss,
            mod_loss: self.outputs.iter().enumerate().map(|(i, m)| (*m, f64::from(partial[1 + i]))).collect(),
            lr,
            grad_norm,
            skipped: !finite,
            samples: global,
            data_s,
            compute_s,
            forward_s: self.forward_s,
            comm_s: self.comm_s,
            optim_s,
            step_s: t0.elapsed().as_secs_f64(),
        })
    }

    /// Every trainable parameter, gathered, by name (for checks and export).
    pub fn full_parameters(&mut self) -> Result<BTreeMap<String, Tensor>> {
        self.gather_all()?;
        Ok(self.units.iter().flat_map(|u| u.params.iter().map(|p| (p.name.clone(), p.tensor.detach().copy()))).collect())
    }

    /// Elements of parameters and optimizer state this rank holds (master + 2 moments).
    pub fn local_state_elements(&self) -> usize {
        self.shards.iter().map(|s| 3 * s.master.numel()).sum()
    }

    /// Training position.
    pub fn state(&self) -> &TrainState {
        &self.state
    }
}

impl<C: Collective + 'static, S: BatchSource> FsdpTrainer<C, S> {
    /// Element-wise maximum of `flags` over all ranks, in place: how ranks agree on decisions
    /// taken at a step boundary (stop, checkpoint) so that all take them at the same step.
    pub fn agree(&mut self, flags: &mut [i64]) -> Result<()> {
        let r = self.coll.all_reduce(flags, ReduceOp::Max);
        self.comm(r)
    }
}

/// Runs `f` under bf16 autocast when `on` (CUDA; the job refuses bf16 elsewhere).
fn amp<T>(on: bool, f: impl FnOnce() -> T) -> T {
    if on { tch::autocast(true, f) } else { f() }
}

impl<C: Collective + 'static, S: BatchSource> crate::driver::Engine for FsdpTrainer<C, S> {
    fn step(&mut self) -> Result<StepReport> {
        FsdpTrainer::step(self)
    }

    fn state(&self) -> &TrainState {
        &self.state
    }

    fn rank(&self) -> u32 {
        self.coll.rank().0
    }

    fn agree(&mut self, flags: &mut [i64]) -> Result<()> {
        FsdpTrainer::agree(self, flags)
    }

    fn validation_report(
        &mut self,
        set: &crate::eval::ValidationSet,
        generation: tessera_protocol::Generation,
    ) -> Result<tessera_protocol::ValidationReport> {
        FsdpTrainer::validation_report(self, set, generation.0)
    }

    fn snapshot(&mut self, generation: tessera_protocol::Generation) -> Result<crate::fsdp::snapshot::Snapshot> {
        Ok(FsdpTrainer::snapshot(self, generation.0))
    }
}
