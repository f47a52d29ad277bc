//! A training step's plan on one rank: which of the global batch's samples it trains on, in
//! which micro-batches, and how many micro-batch passes every rank makes.
//!
//! The global batch is split by sample into contiguous slices ([`shard_range`]), so when it
//! does not split evenly over the world (5 samples on 2 ranks, 8 in micro-batches of 2 on 3
//! ranks) the ranks get different numbers of micro-batches. Every micro-batch pass gathers
//! and reduce-scatters each block unit, so all ranks must make the same number of passes: a
//! rank with fewer micro-batches makes up the difference with idle passes (the collectives of
//! a pass, nothing computed, zero gradients). When every rank has the same count (every even
//! split) there is no idle pass and nothing changes.

use std::ops::Range;

use tessera_ops::shard_range;

/// One rank's part of a training step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// This rank's micro-batches, as ranges of the step's sample positions (`0..global`):
    /// its contiguous slice in chunks of `micro`, the last one possibly shorter.
    pub micro_batches: Vec<Range<usize>>,
    /// Micro-batch passes every rank makes this step: the most micro-batches any rank has.
    pub passes: usize,
}

impl StepPlan {
    /// Rank `rank`'s plan among `world` ranks for a global batch of `global` samples in
    /// micro-batches of at most `micro` samples.
    pub fn new(global: usize, micro: usize, world: usize, rank: usize) -> Self {
        // Resolved jobs have micro ≥ 1; a zero would divide by zero below.
        let micro = micro.max(1);
        let chunks = |r: usize| {
            let slice = shard_range(global, world, r);
            (slice.start..slice.end).step_by(micro).map(move |s| s..(s + micro).min(slice.end))
        };
        let passes = (0..world).map(|r| shard_range(global, world, r).len().div_ceil(micro)).max().unwrap_or(0);
        Self { micro_batches: chunks(rank).collect(), passes }
    }

    /// Passes this rank makes without a micro-batch of its own, so that it still calls every
    /// collective the other ranks call.
    pub fn idle_passes(&self) -> usize {
        self.passes - self.micro_batches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rank's plan for `global`/`micro` on `world` ranks.
    fn plans(global: usize, micro: usize, world: usize) -> Vec<StepPlan> {
        (0..world).map(|r| StepPlan::new(global, micro, world, r)).collect()
    }

    #[test]
    fn the_micro_batches_cover_the_global_batch_once_in_order() {
        for (global, micro, world) in [(5, 1, 2), (6, 2, 4), (8, 2, 3), (8, 1, 3), (12, 4, 2), (7, 3, 7)] {
            let all: Vec<Range<usize>> = plans(global, micro, world).into_iter().flat_map(|p| p.micro_batches).collect();
            let flat: Vec<usize> = all.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(flat, (0..global).collect::<Vec<_>>(), "{global}/{micro} on {world}");
            assert!(all.iter().all(|r| !r.is_empty() && r.len() <= micro));
        }
    }

    #[test]
    fn ranks_with_fewer_micro_batches_make_it_up_with_idle_passes() {
        let idle = |global, micro, world| plans(global, micro, world).iter().map(StepPlan::idle_passes).collect::<Vec<_>>();
        // 5 on 2: 3 and 2 samples.
        assert_eq!(idle(5, 1, 2), [0, 1]);
        // 8 in micro-batches of 2 on 3: 3, 3 and 2 samples, in 2, 2 and 1 micro-batches.
        assert_eq!(idle(8, 2, 3), [0, 0, 1]);
        assert_eq!(idle(6, 1, 4), [0, 0, 1, 1]);
        // Even splits (also 6 in micro-batches of 2 on 2: 2 + 1 samples each) need none.
        for (global, micro, world) in [(6, 2, 2), (6, 2, 3), (8, 2, 4), (8, 1, 2), (6, 2, 4)] {
            assert!(idle(global, micro, world).iter().all(|&n| n == 0), "{global}/{micro} on {world}");
        }
        for p in plans(8, 2, 3) {
            assert_eq!(p.passes, 2);
        }
    }
}
