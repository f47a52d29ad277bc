//! Fully-sharded data parallelism applied from outside the single-device model.
//!
//! - [`units`]: the flat-parameter layout: one unit per transformer block plus one for
//!   everything else (embeddings, norms, heads); each rank owns a contiguous shard of every
//!   unit's flat vector ([`tessera_ops::shard_range`]).
//! - [`trainer`]: [`FsdpTrainer`]: each step all-gathers the units into the model, runs the
//!   rank's slice of the global batch, reduce-scatters gradients, agrees on the global gradient
//!   norm, the loss and which parameters were used, and steps AdamW on the local shard only
//!   (fp32 master shard + moments: optimizer state scales as 1/N).
//! - [`comm`]: the host collective on its own thread: unit all-gathers start one unit ahead
//!   of use (prefetch) and reduce-scatters trail the block that produced them.
//! - [`flat`]: how the flat vectors travel: through the host collective, or with NCCL on the
//!   GPU (equal-row staging for NCCL's equal shards).
//! - [`pieces`]: the `rest` unit's collectives in pieces, so no whole-unit host copy is made.
//! - [`plan`]: a step's micro-batches on each rank, and the idle passes that keep the ranks'
//!   collectives in step when the global batch does not split evenly over them.
//! - [`snapshot`]: checkpoint shards copied to host memory and written off the training thread.
//! - [`tensors`]: tch ⇄ flat `Vec` helpers for the host collective calls.
//!
//! The trainer runs on the job's device: master shards, moments and gathered units live there.
//! With `train.bf16` the forward passes (and the backward recomputations) run under bf16
//! autocast while parameters, gradients and their reduce-scatter stay fp32.

pub mod comm;
pub mod flat;
mod grads;
pub mod pieces;
pub mod plan;
pub mod snapshot;
pub mod tensors;
pub mod trainer;
pub mod units;

pub use trainer::{FsdpTrainer, Resident};
pub use units::{Unit, units_of};
