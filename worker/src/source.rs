//! Where batches come from: a [`BatchSource`] turns the ledger's sample references of one
//! micro-batch into a [`MaskedBatch`].

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tessera_model::{FourMConfig, MaskedBatch, SyntheticSpec, synthetic_batch};
use tessera_protocol::SampleRef;

use crate::error::Result;

/// Produces the masked batch of a list of global samples. Implementations must be pure in the
/// references (same refs → same batch) so that resume and resize reproduce training exactly.
pub trait BatchSource: Send {
    /// The batch of `refs`, in order.
    fn batch(&mut self, refs: &[SampleRef]) -> Result<MaskedBatch>;

    /// Counter of samples skipped as undecodable (`skip_bad_samples`), shared so that a
    /// wrapper running the source on another thread still reports them.
    fn skipped_counter(&self) -> Arc<AtomicU64>;

    /// Told when the trainer's ledger changes (resume, schedule change), for sources that
    /// predict future requests. Default: nothing to do.
    fn set_ledger(&mut self, _ledger: &tessera_protocol::SampleLedger) {}
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
    skipped: Arc<AtomicU64>,
}

impl PrebuiltSynthetic {
    /// A source for `cfg` with per-sample budgets `input_tokens`/`target_tokens`.
    pub fn new(cfg: FourMConfig, seed: u64, input_tokens: usize, target_tokens: usize) -> Self {
        Self { cfg, seed, input_tokens, target_tokens, skipped: Arc::default() }
    }
}

impl BatchSource for PrebuiltSynthetic {
    fn batch(&mut self, refs: &[SampleRef]) -> Result<MaskedBatch> {
        let first = refs.first().map_or(0, |r| r.index);
        let spec = SyntheticSpec {
            batch_size: refs.len(),
            input_tokens: self.input_tokens,
            target_tokens: self.target_tokens,
            seed: tessera_protocol::seeds::synthetic_batch(self.seed, first, refs.len() as u64),
        };
        Ok(synthetic_batch(&self.cfg, &spec))
    }

    fn skipped_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.skipped)
    }
}
