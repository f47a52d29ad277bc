//! 4M's per-sample input/target masking (reference §3.4–3.5; ml-4m `fourm/data/masking.py:
//! UnifiedMasking`, `unified_datasets.py: make_empty_mod_dict`), given the per-modality budgets
//! that [`crate::mixture::BudgetSampler`] draws.
//!
//! - [`ModalityValue`]: one modality's transformed value (token grid, pixels, text, chunks,
//!   embeddings), validated against its [`crate::ModalitySpec`].
//! - [`SampleMasker`]: tokenizes text, applies the masker of each modality kind (image
//!   permutation masking, sentinel span masking over tokens or chunks, embedding span masking)
//!   and fills missing modalities with all-masked empties: a [`MaskedSample`] of
//!   [`MaskedModality`]s with ml-4m's shapes and mask polarity (`true` = excluded).
//! - [`collate`] / [`collate_into`]: stack masked samples into a [`CollatedBatch`] of flat
//!   buffers plus shapes (the latter reusing a previous batch's buffers).
//! - [`synthetic`]: format-valid random samples for tests and benchmarks.
//!
//! Randomness: sample `i` is masked with [`masking_rng`]`(seed, i)`, a ChaCha8 stream that is a
//! pure function of (seed, i) and distinct from the budget sampler's stream, so any worker can
//! reproduce any masked sample. Distributions equal ml-4m's; the draws themselves differ.

mod collate;
mod image;
mod masked;
mod sample;
mod sequence;
mod span;
pub mod synthetic;
mod value;

pub use collate::{BatchModality, BatchTensor, CollatedBatch, collate, collate_into};
pub use masked::{MaskedModality, MaskedTensor};
pub use sample::{MaskedSample, MaskingOptions, SampleMasker, SampleValues, masking_rng};
pub use span::KEEP_PROB_DECAY;
pub use value::ModalityValue;
