//! The unit executor's collectives: all-gathering a unit's parameters before it runs (inline,
//! or one unit ahead on the comm thread; the `rest` unit in pieces), freeing them after, and
//! reduce-scattering its gradients into this rank's shard.

use std::time::Instant;

use tch::Tensor;
use tessera_ops::{Collective, ReduceOp};

use super::{FsdpTrainer, GradShard, Ticket};
use crate::error::{Result, WorkerError};
use crate::fsdp::flat;
use crate::fsdp::pieces::{piece_len, pieces};
use crate::fsdp::tensors::append_f32;
use crate::fsdp::units::free_param;
use crate::source::BatchSource;

impl<C: Collective + 'static, S: BatchSource> FsdpTrainer<C, S> {
    /// The pieces unit `ui` moves in on the host path, when it is large enough to need more
    /// than one and stays allocated (the `rest` unit); `None`: it moves whole.
    pub(super) fn rest_pieces(&self, ui: usize) -> Option<Vec<Vec<std::ops::Range<usize>>>> {
        let u = &self.units[ui];
        let allocated = u.params.iter().all(|p| p.tensor.numel() == p.numel);
        let ps = pieces(u.numel, self.coll.world(), self.piece_per_rank);
        (self.nccl.is_none() && allocated && ps.len() > 1).then_some(ps)
    }

    /// All-gathers unit `ui` (the `rest` unit, gathered for the whole step) into its
    /// parameters: in place and in pieces when it is large, so no whole-unit copy is made.
    pub(super) fn gather_rest(&mut self, ui: usize) -> Result<()> {
        let Some(ps) = self.rest_pieces(ui) else { return self.gather_unit(ui) };
        let rank = self.coll.rank().0 as usize;
        let start = self.units[ui].shard.start;
        for piece in &ps {
            let mine = &piece[rank];
            let mut local = Vec::with_capacity(mine.len());
            append_f32(&self.shards[ui].master.narrow(0, (mine.start - start) as i64, mine.len() as i64), &mut local);
            let tc = Instant::now();
            let full = self.coll.start_all_gather(local, piece_len(piece)).wait();
            self.comm_s += tc.elapsed().as_secs_f64();
            let full = full.map_err(|e| unit_failed(self.coll.rank().0, self.state.step, "all-gather", &self.units[ui].name, e))?;
            let mut at = 0;
            for range in piece {
                self.units[ui].write_flat(range.clone(), &full[at..at + range.len()]);
                at += range.len();
            }
        }
        Ok(())
    }

    /// Reduce-scatters unit `ui`'s gradients (the `rest` unit, at the end of a step): in
    /// pieces when it is large, so the whole flat gradient vector is never copied out.
    pub(super) fn reduce_rest(&mut self, ui: usize, acc: &mut [GradShard], used: &mut [Vec<i64>]) -> Result<()> {
        let Some(ps) = self.rest_pieces(ui) else { return self.reduce_unit_grads(ui, acc, used) };
        let rank = self.coll.rank().0 as usize;
        let u = &self.units[ui];
        u.mark_used(&mut used[ui]);
        for piece in &ps {
            let u = &self.units[ui];
            let mut input = Vec::with_capacity(piece_len(piece));
            for range in piece {
                u.append_flat_grads(range.clone(), &mut input);
            }
            let tc = Instant::now();
            let shard = self.coll.start_reduce_scatter(input, piece[rank].len()).wait();
            self.comm_s += tc.elapsed().as_secs_f64();
            let shard = shard.map_err(|e| unit_failed(self.coll.rank().0, self.state.step, "reduce-scatter", &u.name, e))?;
            acc[ui].add_host_at(piece[rank].start - u.shard.start, &shard);
        }
        self.free_grads(ui)
    }

    /// Frees every block unit: only the shards (and the `rest` unit) stay resident.
    pub(super) fn free_blocks(&mut self) -> Result<()> {
        for ui in 0..self.units.len() {
            if self.units[ui].name != "rest" {
                self.free_unit(ui)?;
            }
        }
        Ok(())
    }

    /// All-gathers unit `ui`'s shards into the model's parameters, now.
    pub(super) fn gather_unit(&mut self, ui: usize) -> Result<()> {
        let pending = self.start_gather(ui);
        self.finish_gather(ui, pending)
    }

    /// Starts unit `ui`'s all-gather: on the comm thread for the host path (it runs while the
    /// caller computes); the NCCL path gathers in [`Self::finish_gather`].
    pub(super) fn start_gather(&mut self, ui: usize) -> Gather {
        if self.nccl.is_some() {
            return Gather::Later;
        }
        let u = &self.units[ui];
        let mut local = Vec::with_capacity(u.shard.len());
        append_f32(&self.shards[ui].master, &mut local);
        // Without `fsdp_prefetch` the call runs inline, here, and waits for the peers: that
        // wait is communication, not this rank's own time (straggler attribution reads it).
        let tc = Instant::now();
        let ticket = self.coll.start_all_gather(local, u.numel);
        self.comm_s += tc.elapsed().as_secs_f64();
        Gather::Host(ticket)
    }

    /// Waits for unit `ui`'s all-gather and installs it into the model's parameters
    /// (re-allocating them). Each parameter gets its own allocation rather than a view into the
    /// flat vector: a view at an arbitrary element offset is misaligned for the GEMM kernels,
    /// which measurably slowed the CPU step.
    pub(super) fn finish_gather(&mut self, ui: usize, pending: Gather) -> Result<()> {
        let u = &self.units[ui];
        let tc = Instant::now();
        let (rank, step) = (self.coll.rank().0, self.state.step);
        let failed = |e| unit_failed(rank, step, "all-gather", &u.name, e);
        match (pending, self.nccl.as_mut()) {
            (Gather::Later, Some(comm)) => {
                let full = flat::nccl_all_gather(comm, &self.shards[ui].master, u.numel).map_err(failed)?;
                self.comm_s += tc.elapsed().as_secs_f64();
                for p in &u.params {
                    let mut var = p.tensor.shallow_clone();
                    var.set_data(&full.narrow(0, p.offset as i64, p.numel as i64).view(p.shape.as_slice()).copy());
                }
            }
            (Gather::Host(ticket), _) => {
                let full = ticket.wait().map_err(failed)?;
                self.comm_s += tc.elapsed().as_secs_f64();
                for p in &u.params {
                    let mut var = p.tensor.shallow_clone();
                    let t = Tensor::from_slice(&full[p.offset..p.offset + p.numel]).view(p.shape.as_slice());
                    if var.numel() == p.numel {
                        // Still gathered (the `rest` unit, from the step before): overwrite in
                        // place rather than hold the old and the new copy of it at once.
                        tch::no_grad(|| var.copy_(&t));
                    } else {
                        var.set_data(&t.to_device(self.device));
                    }
                }
            }
            (Gather::Later, None) => unreachable!("start_gather defers only on the NCCL path"),
        }
        Ok(())
    }

    /// Installs `order[k]` (started ahead as `ahead`, or gathered now) and, with prefetch,
    /// starts `order[k + 1]` before the caller computes with `order[k]`.
    pub(super) fn advance(&mut self, order: &[usize], k: usize, ahead: &mut Option<Gather>) -> Result<()> {
        let pending = match ahead.take() {
            Some(p) => p,
            None => self.start_gather(order[k]),
        };
        self.finish_gather(order[k], pending)?;
        if self.prefetch
            && let Some(&next) = order.get(k + 1)
        {
            *ahead = Some(self.start_gather(next));
        }
        Ok(())
    }

    /// Releases unit `ui`'s gathered parameters (and gradients): only the shards stay resident.
    pub(super) fn free_unit(&mut self, ui: usize) -> Result<()> {
        self.free_grads(ui)?;
        for p in &self.units[ui].params {
            free_param(&p.tensor, self.device);
        }
        Ok(())
    }

    /// All-gathers every unit (for export and checks).
    pub(super) fn gather_all(&mut self) -> Result<()> {
        for ui in 0..self.units.len() {
            self.gather_unit(ui)?;
        }
        Ok(())
    }

    /// Reduce-scatters unit `ui`'s gradients (zeros where undefined; in fp32 whatever the
    /// compute precision) into its shard gradient accumulator, records which parameters got a
    /// gradient here, and drops the full gradients.
    pub(super) fn reduce_unit_grads(&mut self, ui: usize, acc: &mut [GradShard], used: &mut [Vec<i64>]) -> Result<()> {
        let u = &self.units[ui];
        u.mark_used(&mut used[ui]);
        let mut tc = Instant::now();
        let r = match self.nccl.as_mut() {
            Some(comm) => {
                let parts: Vec<Tensor> = u
                    .params
                    .iter()
                    .map(|p| {
                        let g = p.tensor.grad();
                        if g.defined() {
                            g.to_kind(tch::Kind::Float).view([-1])
                        } else {
                            Tensor::zeros([p.numel as i64], (tch::Kind::Float, self.device))
                        }
                    })
                    .collect();
                flat::nccl_reduce_scatter(comm, &Tensor::cat(&parts, 0), u.numel, ReduceOp::Sum).map(|g| acc[ui].add_tensor(&g))
            }
            None => {
                let mut full = Vec::with_capacity(u.numel);
                for p in &u.params {
                    let g = p.tensor.grad();
                    if g.defined() {
                        append_f32(&g, &mut full);
                    } else {
                        full.resize(full.len() + p.numel, 0.0);
                    }
                }
                // Runs on the comm thread while the next block computes; at most two trail.
                tc = Instant::now();
                self.reducing.push_back((ui, self.coll.start_reduce_scatter(full, u.shard.len())));
                Ok(())
            }
        };
        self.comm_s += tc.elapsed().as_secs_f64();
        r.map_err(|e| unit_failed(self.coll.rank().0, self.state.step, "reduce-scatter", &u.name, e))?;
        self.free_grads(ui)?;
        self.settle_reduces(acc, 2)
    }

    /// Adds finished reduce-scatters into their gradient shards until at most `keep` trail.
    pub(super) fn settle_reduces(&mut self, acc: &mut [GradShard], keep: usize) -> Result<()> {
        while self.reducing.len() > keep {
            let (ui, ticket) = self.reducing.pop_front().expect("longer than keep");
            let tc = Instant::now();
            let shard =
                ticket.wait().map_err(|e| unit_failed(self.coll.rank().0, self.state.step, "reduce-scatter", &self.units[ui].name, e))?;
            self.comm_s += tc.elapsed().as_secs_f64();
            acc[ui].add_host(&shard);
        }
        Ok(())
    }

    /// Drops unit `ui`'s full gradients.
    pub(super) fn free_grads(&mut self, ui: usize) -> Result<()> {
        Ok(self.grad_resets[ui].zero_grad()?)
    }
}

/// A unit all-gather started by [`FsdpTrainer::start_gather`].
pub(super) enum Gather {
    /// Running on the comm thread.
    Host(Ticket<Vec<f32>>),
    /// Done by `finish_gather` (NCCL: synchronous on the device).
    Later,
}

/// The error of rank `rank`'s collective `op` on unit `unit` failing at `step`.
pub(super) fn unit_failed(rank: u32, step: u64, op: &str, unit: &str, source: tessera_ops::OpsError) -> WorkerError {
    WorkerError::Collective { rank, step, op: format!("{op} of {unit}"), source }
}
