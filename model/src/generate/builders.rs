//! Building generation batches as ml-4m's `generate.py` does: full inputs
//! (`init_full_input_modality`), empty targets (`init_empty_target_modality`), text infill
//! prompts (`custom_text`) and the blanking of conditions for the unconditional pass of
//! guidance (`empty_img_modality`, `empty_seq_modality`, `empty_seq_emb_modality`).
//!
//! Sequence layouts use the text vocabulary's special ids ([`TextSpecials`]).

use std::collections::BTreeSet;

use tch::{Device, Kind, Tensor};
use tessera_tokenizers::text::{EOS, PAD, TextTokenizer};
use tessera_tokenizers::{Modality, ModalityKind};

use crate::batch::ModalityTensors;
use crate::error::{ModelError, Result};

/// The special text ids generation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSpecials {
    /// `[PAD]`: right padding of merged sequences.
    pub pad: i64,
    /// `[EOS]`: end of an input sequence.
    pub eos: i64,
    /// `[S_1]`: the first sentinel, start of every target span.
    pub s1: i64,
    /// `[S_2]`: the closing sentinel of an empty target, the autoregressive stop token.
    pub s2: i64,
    /// Every sentinel id `[S_k]` (ml-4m's `get_sentinel_to_id_mapping` values).
    pub sentinels: BTreeSet<i64>,
}

impl TextSpecials {
    /// The ids of ml-4m's published WordPiece vocabulary (and of tessera's trained ones):
    /// `[PAD]` 0, `[EOS]` 3, `[S_k]` = 4 + k for k < 200.
    pub fn ml4m_default() -> Self {
        Self { pad: 0, eos: 3, s1: 5, s2: 6, sentinels: (4..204).collect() }
    }

    /// The ids of a text tokenizer's vocabulary; names the missing token otherwise.
    pub fn from_tokenizer(tok: &TextTokenizer) -> Result<Self> {
        let missing = |token: &str| ModelError::MissingTextToken { source_name: tok.origin().to_string(), token: token.to_string() };
        let pad = tok.pad_id().ok_or_else(|| missing(PAD))?;
        let eos = tok.eos_id().ok_or_else(|| missing(EOS))?;
        let s1 = tok.sentinel_id(1).ok_or_else(|| missing("[S_1]"))?;
        let s2 = tok.sentinel_id(2).ok_or_else(|| missing("[S_2]"))?;
        Ok(Self {
            pad: i64::from(pad),
            eos: i64::from(eos),
            s1: i64::from(s1),
            s2: i64::from(s2),
            sentinels: tok.sentinels().map(|(_, id)| i64::from(id)).collect(),
        })
    }
}

fn bool_full(shape: &[i64], value: bool, device: Device) -> Tensor {
    Tensor::full(shape, i64::from(value), (Kind::Bool, device))
}

/// `init_full_input_modality`: every token of `tensor` is an input. Images: all positions.
/// Sequences: up to and including the first `[EOS]` (found in row-major order, so the first
/// row that has one decides for every row, as in ml-4m; build one row at a time when rows
/// differ); without any `[EOS]`, position 0 of every row becomes `[EOS]`. Sequence
/// embeddings: `mask_valid` (B, L, true = valid) decides.
pub fn full_input(m: Modality, tensor: Tensor, mask_valid: Option<&Tensor>, specials: &TextSpecials) -> Result<ModalityTensors> {
    let device = tensor.device();
    let b = tensor.size()[0];
    let len = match m.kind() {
        ModalityKind::Pixels => m.spec().max_tokens as i64,
        _ => tensor.size()[1],
    };
    let shape = [b, len];
    let dam = Tensor::zeros(shape, (Kind::Int64, device));
    match m.kind() {
        ModalityKind::Pixels | ModalityKind::ImageTokens | ModalityKind::GlobalTokens => Ok(ModalityTensors {
            tensor,
            input_mask: bool_full(&shape, false, device),
            target_mask: bool_full(&shape, true, device),
            decoder_attention_mask: dam,
        }),
        ModalityKind::Sequence => {
            let mut tensor = tensor.to_kind(Kind::Int64);
            let hits = tensor.eq(specials.eos).nonzero();
            let eos_idx = if hits.size()[0] > 0 {
                hits.int64_value(&[0, 1])
            } else {
                // ml-4m writes into the caller's tensor; a copy keeps the caller's intact.
                tensor = tensor.copy();
                let _ = tensor.narrow(1, 0, 1).fill_(specials.eos);
                0
            };
            let input_mask = Tensor::arange(len, (Kind::Int64, device)).gt(eos_idx).unsqueeze(0).expand(shape, false).contiguous();
            Ok(ModalityTensors { tensor, input_mask, target_mask: bool_full(&shape, true, device), decoder_attention_mask: dam })
        }
        ModalityKind::SequenceEmbedding => {
            let valid = mask_valid
                .ok_or(ModelError::GenerationModality { modality: m.key().to_string(), missing: crate::error::MissingPart::InBatch })?;
            Ok(ModalityTensors {
                tensor,
                input_mask: valid.logical_not(),
                target_mask: bool_full(&shape, true, device),
                decoder_attention_mask: dam,
            })
        }
    }
}

/// The empty sequence layout `[S_1] [S_1] 0 … 0 [S_2]`: position 0 is the input, the rest
/// targets (ml-4m `empty_seq_modality`, which writes `s1 + 1` as the closing sentinel).
fn empty_sequence(b: i64, len: i64, specials: &TextSpecials, device: Device) -> ModalityTensors {
    let tensor = Tensor::zeros([b, len], (Kind::Int64, device));
    let _ = tensor.narrow(1, 0, 2.min(len)).fill_(specials.s1);
    let _ = tensor.narrow(1, len - 1, 1).fill_(specials.s1 + 1);
    let input_mask = bool_full(&[b, len], true, device);
    let _ = input_mask.narrow(1, 0, 1).fill_(0);
    let target_mask = input_mask.logical_not();
    let dam = Tensor::ones([b, len], (Kind::Int64, device));
    let _ = dam.narrow(1, 0, 1).fill_(0);
    ModalityTensors { tensor, input_mask, target_mask, decoder_attention_mask: dam }
}

/// `init_empty_target_modality`: a target still to be generated. Images: zeros, every position
/// a target. Sequences: the empty layout over `max(num_tokens, 2)` positions.
pub fn empty_target(m: Modality, batch_size: i64, num_tokens: i64, specials: &TextSpecials, device: Device) -> Result<ModalityTensors> {
    match m.kind() {
        ModalityKind::ImageTokens | ModalityKind::GlobalTokens => {
            let shape = [batch_size, num_tokens];
            Ok(ModalityTensors {
                tensor: Tensor::zeros(shape, (Kind::Int64, device)),
                input_mask: bool_full(&shape, true, device),
                target_mask: bool_full(&shape, false, device),
                decoder_attention_mask: Tensor::zeros(shape, (Kind::Int64, device)),
            })
        }
        ModalityKind::Sequence => Ok(empty_sequence(batch_size, num_tokens.max(2), specials, device)),
        ModalityKind::Pixels | ModalityKind::SequenceEmbedding => {
            Err(ModelError::GenerationModality { modality: m.key().to_string(), missing: crate::error::MissingPart::DecoderEmbedding })
        }
    }
}

/// `custom_text`: a span-infilling prompt, `input_ids` as the input followed by the target
/// `[S_1] [PAD]×(target_max_len − 2) stop` (`stop` is ml-4m's `eos_token` argument's id).
pub fn custom_text(input_ids: &[i64], target_max_len: usize, stop: i64, specials: &TextSpecials, device: Device) -> ModalityTensors {
    let mut ids = input_ids.to_vec();
    let n_in = ids.len() as i64;
    ids.push(specials.s1);
    ids.extend(std::iter::repeat_n(specials.pad, target_max_len.saturating_sub(2)));
    ids.push(stop);
    let len = ids.len() as i64;
    let tensor = Tensor::from_slice(&ids).view([1, len]).to_device(device);
    let input_mask = Tensor::arange(len, (Kind::Int64, device)).ge(n_in).view([1, len]);
    let target_mask = input_mask.logical_not();
    ModalityTensors { tensor, input_mask, target_mask, decoder_attention_mask: Tensor::zeros([1, len], (Kind::Int64, device)) }
}

/// The unconditional version of a condition (ml-4m's blanking for guidance): a sequence
/// becomes the empty layout (its encoder input is one `[S_1]`), an image is masked fully, a
/// sequence embedding keeps only its first position valid, with zero vectors.
pub fn blank_condition(m: Modality, t: &ModalityTensors, specials: &TextSpecials) -> ModalityTensors {
    let device = t.tensor.device();
    let (b, len) = (t.input_mask.size()[0], t.input_mask.size()[1]);
    match m.kind() {
        ModalityKind::Sequence => empty_sequence(b, len, specials, device),
        ModalityKind::SequenceEmbedding => {
            let input_mask = bool_full(&[b, len], true, device);
            let _ = input_mask.narrow(1, 0, 1).fill_(0);
            ModalityTensors {
                tensor: t.tensor.zeros_like(),
                input_mask,
                target_mask: bool_full(&[b, len], true, device),
                decoder_attention_mask: Tensor::zeros([b, len], (Kind::Int64, device)),
            }
        }
        _ => ModalityTensors {
            tensor: t.tensor.shallow_clone(),
            input_mask: bool_full(&[b, len], true, device),
            target_mask: bool_full(&[b, len], false, device),
            decoder_attention_mask: t.decoder_attention_mask.shallow_clone(),
        },
    }
}

/// ml-4m's `merge_span_masking`: each sentinel of `input` is replaced by the tokens that follow
/// the same sentinel in `decoded` (up to the next sentinel; repeated spans are concatenated).
pub fn merge_span_masking(input: &[i64], decoded: &[i64], sentinels: &BTreeSet<i64>) -> Vec<i64> {
    let mut spans: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    let mut current = None;
    for &t in decoded {
        if sentinels.contains(&t) {
            current = Some(t);
        } else if let Some(s) = current {
            spans.entry(s).or_default().push(t);
        }
    }
    let mut out = Vec::new();
    for &t in input {
        if sentinels.contains(&t) {
            out.extend(spans.get(&t).map(Vec::as_slice).unwrap_or(&[]));
        } else {
            out.push(t);
        }
    }
    out
}

/// ml-4m's `merge_sequences_batched`: per row, the input tokens merged with the decoded spans,
/// right-padded with `[PAD]` to the longest row. Every merged token is an input; as in ml-4m
/// (which copies the input mask into the target mask), the target mask equals the input mask.
pub fn merge_sequences(t: &ModalityTensors, decoded_bl: &Tensor, specials: &TextSpecials) -> Result<ModalityTensors> {
    let device = t.tensor.device();
    let b = t.tensor.size()[0];
    let mut rows = Vec::with_capacity(b as usize);
    for i in 0..b {
        let ids: Vec<i64> = Vec::try_from(t.tensor.get(i).to_device(Device::Cpu))?;
        let mask: Vec<bool> = Vec::try_from(t.input_mask.get(i).to_device(Device::Cpu))?;
        let mut input: Vec<i64> = ids.iter().zip(&mask).filter(|(_, m)| !**m).map(|(id, _)| *id).collect();
        if input.is_empty() {
            input.push(specials.s1);
        }
        let decoded: Vec<i64> = Vec::try_from(decoded_bl.get(i).to_device(Device::Cpu))?;
        rows.push(merge_span_masking(&input, &decoded, &specials.sentinels));
    }
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut flat = Vec::with_capacity(b as usize * len);
    let mut pad_mask = Vec::with_capacity(b as usize * len);
    for r in &rows {
        flat.extend(r.iter().copied().chain(std::iter::repeat_n(specials.pad, len - r.len())));
        pad_mask.extend(std::iter::repeat_n(false, r.len()).chain(std::iter::repeat_n(true, len - r.len())));
    }
    let shape = [b, len as i64];
    let input_mask = Tensor::from_slice(&pad_mask).view(shape).to_device(device);
    Ok(ModalityTensors {
        tensor: Tensor::from_slice(&flat).view(shape).to_device(device),
        target_mask: input_mask.copy(),
        input_mask,
        decoder_attention_mask: Tensor::zeros(shape, (Kind::Int64, device)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_fills_sentinels_and_drops_tokens_before_the_first() {
        let s: BTreeSet<i64> = (4..204).collect();
        assert_eq!(merge_span_masking(&[5], &[5, 310, 311, 6, 312], &s), vec![310, 311]);
        assert_eq!(merge_span_masking(&[320, 5, 321, 6], &[309, 5, 310, 6, 311, 5, 312], &s), vec![320, 310, 312, 321, 311]);
    }

    #[test]
    fn full_input_sequence_stops_at_first_eos_of_row_zero() {
        let sp = TextSpecials::ml4m_default();
        let t = Tensor::from_slice(&[7i64, 8, 3, 9, 7, 3, 0, 0]).view([2, 4]);
        let mt = full_input(Modality::Caption, t, None, &sp).unwrap();
        let mask: Vec<bool> = Vec::try_from(mt.input_mask.view([-1])).unwrap();
        assert_eq!(mask, vec![false, false, false, true, false, false, false, true]);
    }
}
