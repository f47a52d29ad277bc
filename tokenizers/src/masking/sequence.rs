//! Sequence masking (ml-4m `UnifiedMasking.sequence_mask` and `sequence_emb_mask_span`): span
//! masking placed into ml-4m's fixed-length layout, input at 0 and target at offset `b_in`.

use rand::Rng;

use crate::error::{Error, Result};
use crate::mixture::Keep;
use crate::modality::ModalitySpec;

use super::masked::{MaskedModality, MaskedTensor};
use super::span::{Sentinels, Units, choose_keep, span_mask, truncate_target};

/// The special ids sequence masking writes.
#[derive(Debug, Clone)]
pub(crate) struct TextIds {
    /// `[PAD]`: fills the unused positions of a sequence tensor.
    pub pad: i64,
    /// `[EOS]`: appended to every sequence (or as its own final chunk) before truncation.
    pub eos: i64,
    /// The `[S_k]` sentinels.
    pub sentinels: Sentinels,
}

/// Buffers reused across the sequence modalities of a sample.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    keep: Vec<bool>,
    input: Vec<i64>,
    target: Vec<i64>,
}

/// One modality's budgets and keep scheme in this sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModalityBudget {
    /// Input tokens `b_in` (also the offset of the target block).
    pub input: usize,
    /// Target tokens `b_tgt`.
    pub target: usize,
    /// The component's keep scheme for this modality.
    pub keep: Keep,
}

/// Masks a tokenized sequence (`units` already carry EOS and the `max_tokens` truncation) into
/// the `2 * (max_tokens + 1)` layout of reference §3.4.
pub(crate) fn mask_sequence(
    rng: &mut impl Rng,
    spec: &ModalitySpec,
    units: Units<'_>,
    budget: ModalityBudget,
    ids: &TextIds,
    scratch: &mut Scratch,
) -> Result<MaskedModality> {
    let len = spec.batch_len();
    if budget.input > spec.max_tokens {
        return Err(Error::MaskBudget {
            modality: spec.key,
            reason: format!("input budget {} exceeds max_tokens {}", budget.input, spec.max_tokens),
        });
    }
    choose_keep(rng, budget.keep, budget.input, units, &mut scratch.keep);
    span_mask(spec.key, units, &scratch.keep, &ids.sentinels, &mut scratch.input, &mut scratch.target)?;
    if budget.input == 0 {
        // ml-4m discards the input of the all-dropped masking: the whole sequence is target.
        scratch.input.clear();
    }
    let (inp, tgt) = (&scratch.input, &scratch.target);
    let kept = truncate_target(rng, tgt, budget.target, &ids.sentinels);
    let tgt = &tgt[kept];
    // Target block at offset b_in, not len(input) (pitfall 2); it always fits: b_in <= max_tokens
    // and a span-masked target has at most max_tokens + 2 tokens.
    let (start, end) = (budget.input, budget.input + tgt.len());
    if end > len {
        return Err(Error::MaskBudget { modality: spec.key, reason: format!("target block {start}..{end} exceeds length {len}") });
    }
    let mut tensor = vec![ids.pad; len];
    let mut input_mask = vec![true; len];
    let mut target_mask = vec![true; len];
    let mut dam = vec![0; len];
    tensor[..inp.len()].copy_from_slice(inp);
    input_mask[..inp.len()].fill(false);
    tensor[start..end].copy_from_slice(tgt);
    target_mask[start..end].fill(false);
    dam[start..end].fill(1);
    Ok(MaskedModality { tensor: MaskedTensor::Ids(tensor), input_mask, target_mask, decoder_attention_mask: dam })
}

/// Masks sequence embeddings (T5 captions) as inputs only: rows beyond `max_tokens` are
/// dropped, kept rows are moved to the front in order, and each dropped run leaves one zero
/// row (ml-4m's sentinel placeholder); the rest of the `(max_tokens, dim)` tensor is zero.
/// Target mask all true, dam all zero; `b_tgt` is unused.
pub(crate) fn mask_embeddings(
    rng: &mut impl Rng,
    spec: &ModalitySpec,
    (rows, dim, mut data): (usize, usize, Vec<f32>),
    b_in: usize,
    keep: Keep,
    scratch: &mut Scratch,
) -> MaskedModality {
    let len = spec.max_tokens;
    let rows = rows.min(len);
    // Row indices stand in for ml-4m's surrogate ids; only their order matters.
    scratch.input.clear();
    scratch.input.extend(0..rows as i64);
    let units = Units { tokens: &scratch.input, lens: None };
    choose_keep(rng, keep, b_in, units, &mut scratch.keep);
    // Reuse the caller's buffer: every unit adds at most one input row, so the row written
    // (`pos`) never passes the row read (`r`) and a forward in-place compaction is safe.
    let mut pos = 0;
    if b_in > 0 {
        let mut prev_dropped = false;
        for (r, &k) in scratch.keep.iter().enumerate() {
            if k {
                if pos != r {
                    data.copy_within(r * dim..(r + 1) * dim, pos * dim);
                }
                pos += 1;
                prev_dropped = false;
            } else {
                if !prev_dropped {
                    data[pos * dim..(pos + 1) * dim].fill(0.0);
                    pos += 1;
                }
                prev_dropped = true;
            }
        }
    }
    // The rows past the input are zero: store only the input rows.
    data.truncate(pos * dim);
    let mut input_mask = vec![true; len];
    input_mask[..pos].fill(false);
    MaskedModality {
        tensor: MaskedTensor::ZeroPaddedRows { data, shape: [len, dim] },
        input_mask,
        target_mask: vec![true; len],
        decoder_attention_mask: vec![0; len],
    }
}
