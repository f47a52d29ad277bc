//! Fully-sharded data parallelism applied from outside the single-device model.
//!
//! - [`units`]: the flat-parameter layout: one unit per transformer block plus one for
//!   everything else (embeddings, norms, heads); each rank owns a contiguous shard of every
//!   unit's flat vector ([`tessera_ops::shard_range`]).
//! - [`trainer`]: [`FsdpTrainer`]: each step all-gathers the units into the model, runs the
//!   rank's slice of the global batch, reduce-scatters gradients, agrees on the global gradient
//!   norm, the loss and which parameters were used, and steps AdamW on the local shard only
//!   (fp32 master shard + moments: optimizer state scales as 1/N).
//! - [`tensors`]: tch ⇄ flat `Vec` helpers for the collective calls.

pub mod checkpoint;
pub mod tensors;
pub mod trainer;
pub mod units;

pub use trainer::{FsdpTrainer, Resident};
pub use units::{Unit, units_of};
