//! The `Collective` trait every backend implements, and the handle that aborts a blocked call.

use std::sync::Arc;

use crate::element::Element;
use crate::error::Result;
use crate::types::{Rank, ReduceOp};

/// Collective communication over a fixed group of ranks.
///
/// Driven by one owning thread per rank; every rank issues the same calls in the same order. Each
/// call either completes on every rank or fails with an error naming the op, the call's sequence
/// number and the peer involved; after a failure the communicator refuses every later call with
/// that original error (it must be rebuilt), while the process stays healthy.
///
/// Buffer lengths are counted in elements. Uneven shards follow [`crate::shard::shard_range`].
pub trait Collective: Send {
    /// This process's rank.
    fn rank(&self) -> Rank;

    /// Number of ranks in the group.
    fn world(&self) -> usize;

    /// Reduces `buf` element-wise over all ranks, in place; every rank ends with the same bytes.
    fn all_reduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()>;

    /// Reduces `input` (same length on every rank) and leaves shard `rank` of the result in
    /// `output`, whose length must be `shard_len(input.len(), world, rank)`.
    fn reduce_scatter<T: Element>(&mut self, input: &[T], output: &mut [T], op: ReduceOp) -> Result<()>;

    /// Concatenates every rank's `input` (shard `rank` of `output.len()`) into `output`.
    fn all_gather<T: Element>(&mut self, input: &[T], output: &mut [T]) -> Result<()>;

    /// Copies `root`'s `buf` into `buf` on every other rank.
    fn broadcast<T: Element>(&mut self, buf: &mut [T], root: Rank) -> Result<()>;

    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<()>;

    /// A handle that aborts the communicator from any thread.
    fn abort_handle(&self) -> AbortHandle;
}

/// What an [`AbortHandle`] acts on; implemented by each backend's shared state.
pub trait AbortTarget: Send + Sync {
    /// Makes any blocked call return promptly with `Aborted` and poisons the communicator.
    fn abort(&self);
}

/// Cloneable, thread-safe handle that aborts one communicator (e.g. from a supervisor thread).
#[derive(Clone)]
pub struct AbortHandle(Arc<dyn AbortTarget>);

impl AbortHandle {
    /// Wraps a backend's abort target.
    pub fn new(target: Arc<dyn AbortTarget>) -> Self {
        AbortHandle(target)
    }

    /// Aborts the communicator: a blocked call returns promptly, later calls fail fast.
    pub fn abort(&self) {
        self.0.abort();
    }

    /// One handle that aborts every communicator of `handles` (e.g. a rank's TCP ring and the
    /// NCCL communicator built over it).
    pub fn all(handles: Vec<AbortHandle>) -> Self {
        AbortHandle(Arc::new(Several(handles)))
    }
}

/// The target of [`AbortHandle::all`].
struct Several(Vec<AbortHandle>);

impl AbortTarget for Several {
    fn abort(&self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

impl std::fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AbortHandle")
    }
}
