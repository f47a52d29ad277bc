//! Where batches come from: a [`BatchSource`] turns the ledger's sample references of one
//! micro-batch into a [`MaskedBatch`].

use tessera_coordinator::SampleRef;
use tessera_coordinator::ledger::mix;
use tessera_model::{FourMConfig, MaskedBatch, SyntheticSpec, synthetic_batch};

use crate::error::Result;

/// Produces the masked batch of a list of global samples. Implementations must be pure in the
/// references (same refs → same batch) so that resume and resize reproduce training exactly.
pub trait BatchSource: Send {
    /// The batch of `refs`, in order.
    fn batch(&mut self, refs: &[SampleRef]) -> Result<MaskedBatch>;

    /// Samples skipped as undecodable since the last call (for `skip_bad_samples`).
    fn take_skipped(&mut self) -> u64 {
        0
    }
}

/// Batches drawn directly as tensors by `tessera_model::synthetic_batch`, seeded by the
/// first sample index: no decoding and no masking pipeline, the baseline the real data path is
/// measured against ("pre-built batches").
#[derive(Debug, Clone)]
pub struct PrebuiltSynthetic {
    cfg: FourMConfig,
    seed: u64,
    input_tokens: usize,
    target_tokens: usize,
}

impl PrebuiltSynthetic {
    /// A source for `cfg` with per-sample budgets `input_tokens`/`target_tokens`.
    pub fn new(cfg: FourMConfig, seed: u64, input_tokens: usize, target_tokens: usize) -> Self {
        Self { cfg, seed, input_tokens, target_tokens }
    }
}

impl BatchSource for PrebuiltSynthetic {
    fn batch(&mut self, refs: &[SampleRef]) -> Result<MaskedBatch> {
        let first = refs.first().map_or(0, |r| r.index);
        let spec = SyntheticSpec {
            batch_size: refs.len(),
            input_tokens: self.input_tokens,
            target_tokens: self.target_tokens,
            seed: mix(&[self.seed, first, refs.len() as u64]),
        };
        Ok(synthetic_batch(&self.cfg, &spec))
    }
}
