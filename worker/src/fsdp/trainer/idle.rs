//! Idle passes: how a rank with fewer micro-batches in a step than another (a global batch
//! that does not split evenly over the world, see [`crate::fsdp::plan`]) still takes part in
//! every collective of the step. An idle pass calls exactly the collectives of a micro-batch
//! pass ([`FsdpTrainer::micro_step`]), in its order, and computes nothing: its gradients are
//! undefined, which reduce as zeros and mark no parameter used, as for a micro-batch without a
//! target token.

use tessera_ops::Collective;

use super::{FsdpTrainer, GradShard};
use crate::error::Result;
use crate::fsdp::plan::StepPlan;
use crate::source::BatchSource;

impl<C: Collective + 'static, S: BatchSource> FsdpTrainer<C, S> {
    /// This rank's plan for a step of the job: its micro-batches and how many passes all make.
    pub(super) fn step_plan(&self) -> StepPlan {
        let t = &self.job.train;
        StepPlan::new(t.global_batch_size, t.micro_batch_size, self.coll.world(), self.coll.rank().0 as usize)
    }

    /// Makes `n` idle passes, adding their (zero) gradient shards into `acc`.
    pub(super) fn idle_passes(&mut self, n: usize, acc: &mut [GradShard], used: &mut [Vec<i64>]) -> Result<()> {
        for _ in 0..n {
            self.idle_pass(acc, used)?;
        }
        Ok(())
    }

    /// One idle pass. The order must stay `micro_step`'s: forward, every block unit gathered
    /// (the next one started ahead with prefetch); backward, in reverse, each unit gathered
    /// again where `micro_step` recomputes the block, then its gradient reduce-scattered.
    /// Units are freed as soon as they arrive: nothing here reads them.
    fn idle_pass(&mut self, acc: &mut [GradShard], used: &mut [Vec<i64>]) -> Result<()> {
        let (enc_units, dec_units) = self.block_units()?;
        let forward: Vec<usize> = enc_units.iter().chain(&dec_units).copied().collect();
        let backward: Vec<usize> = forward.iter().rev().copied().collect();
        let recompute = self.job.train.fsdp_recompute;
        // `micro_step` keeps a block's graph from forward to backward (so its backward gathers
        // nothing) for every block without recomputation, else for the last decoder block only.
        let last_decoder_kept = recompute && !dec_units.is_empty();
        let kept = |k: usize| !recompute || (k == 0 && last_decoder_kept);
        let mut ahead = None;
        for k in 0..forward.len() {
            self.advance(&forward, k, &mut ahead)?;
            self.free_unit(forward[k])?;
        }
        // `micro_step` starts the first recomputed backward unit's gather right after the last
        // decoder block, before the loss.
        if last_decoder_kept
            && self.prefetch
            && let Some(&next) = backward.get(1)
        {
            ahead = Some(self.start_gather(next));
        }
        for (k, &u) in backward.iter().enumerate() {
            if !kept(k) {
                self.advance(&backward, k, &mut ahead)?;
            }
            self.reduce_unit_grads(u, acc, used)?;
            self.free_unit(u)?;
        }
        self.settle_reduces(acc, 0)
    }
}
