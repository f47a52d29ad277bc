//! Collation: N masked samples stacked into per-modality contiguous buffers with a leading
//! batch axis (ml-4m's `default_collate` of the masked dicts), as flat `Vec`s plus shapes so
//! that the tch side can wrap them without knowing about masking.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::modality::Modality;

use super::masked::MaskedTensor;
use super::sample::MaskedSample;

/// A stacked tensor: `(B, L)` ids, or `(B, C, H, W)` / `(B, L, E)` floats.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchTensor {
    /// Token ids, row major.
    Ids {
        /// The ids.
        data: Vec<i64>,
        /// Shape including the batch axis.
        shape: Vec<usize>,
    },
    /// Floats, row major.
    Floats {
        /// The values.
        data: Vec<f32>,
        /// Shape including the batch axis.
        shape: Vec<usize>,
    },
}

impl BatchTensor {
    /// Shape including the batch axis.
    pub fn shape(&self) -> &[usize] {
        match self {
            Self::Ids { shape, .. } | Self::Floats { shape, .. } => shape,
        }
    }
}

/// One modality of a collated batch; masks are `(B, L)` row major, `true` = excluded.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchModality {
    /// The stacked data.
    pub tensor: BatchTensor,
    /// `(B, L)`: `true` = not an encoder input.
    pub input_mask: Vec<bool>,
    /// `(B, L)`: `true` = not a decoder target.
    pub target_mask: Vec<bool>,
    /// `(B, L)`: ml-4m's compressed decoder attention mask.
    pub decoder_attention_mask: Vec<i64>,
    /// `[B, L]`, the shape of the three masks.
    pub mask_shape: [usize; 2],
}

/// A collated batch of masked samples. Read-only from outside, so that [`collate_into`] can
/// trust what it wrote last time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CollatedBatch {
    size: usize,
    modalities: BTreeMap<Modality, BatchModality>,
    /// Per float modality and sample: how many leading values may be non-zero (the rest of the
    /// sample's slot is zero), so that a reuse only re-zeroes what was written.
    written: BTreeMap<Modality, Vec<usize>>,
}

impl CollatedBatch {
    /// Number of samples, `B`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Every modality of the samples.
    pub fn modalities(&self) -> &BTreeMap<Modality, BatchModality> {
        &self.modalities
    }

    /// Takes the per-modality buffers out (the batch cannot be reused afterwards).
    pub fn into_modalities(self) -> BTreeMap<Modality, BatchModality> {
        self.modalities
    }
}

/// Stacks `samples`; every sample must have the same modalities with the same shapes.
pub fn collate(samples: &[MaskedSample]) -> Result<CollatedBatch> {
    let mut out = CollatedBatch::default();
    collate_into(samples, &mut out)?;
    Ok(out)
}

/// [`collate`] into an existing batch, reusing its buffers: a loader that hands each batch
/// back after converting it allocates (and page-faults) its tens of MB only once, and zero
/// padding (T5 rows) that is already zero is not written again. On error `out` is left empty.
pub fn collate_into(samples: &[MaskedSample], out: &mut CollatedBatch) -> Result<()> {
    let result = fill(samples, out);
    if result.is_err() {
        *out = CollatedBatch::default();
    }
    result
}

fn fill(samples: &[MaskedSample], out: &mut CollatedBatch) -> Result<()> {
    let Some(first) = samples.first() else {
        return Err(Error::MaskSetup { reason: "cannot collate an empty list of samples".into() });
    };
    if let Some((i, extra)) = samples.iter().enumerate().find_map(|(i, s)| s.keys().find(|m| !first.contains_key(m)).map(|m| (i, *m))) {
        return Err(Error::Collate { modality: extra.key(), reason: format!("sample {i}: modality absent from sample 0") });
    }
    let b = samples.len();
    out.size = b;
    out.modalities.retain(|m, _| first.contains_key(m));
    out.written.retain(|m, _| first.contains_key(m));
    for (&m, proto) in first {
        let key = m.key();
        let shape = proto.tensor.shape();
        let len = proto.len();
        let numel: usize = shape.iter().product();
        let is_ids = matches!(proto.tensor, MaskedTensor::Ids(_));
        let full_shape: Vec<usize> = std::iter::once(b).chain(shape.iter().copied()).collect();
        let slot = out.modalities.entry(m).or_insert_with(|| BatchModality {
            tensor: BatchTensor::Ids { data: Vec::new(), shape: Vec::new() },
            input_mask: Vec::new(),
            target_mask: Vec::new(),
            decoder_attention_mask: Vec::new(),
            mask_shape: [0, 0],
        });
        // Take the old buffers (keeping their capacity) whatever kind they held.
        let (mut ids, mut floats) = match std::mem::replace(&mut slot.tensor, BatchTensor::Ids { data: Vec::new(), shape: Vec::new() }) {
            BatchTensor::Ids { data, .. } => (data, Vec::new()),
            BatchTensor::Floats { data, .. } => (Vec::new(), data),
        };
        let mut written = out.written.remove(&m).unwrap_or_default();
        ids.clear();
        if is_ids {
            ids.reserve(b * numel);
        } else if floats.len() != b * numel || written.len() != b {
            // Not the layout of last time: start from an all-zero buffer.
            floats.clear();
            floats.resize(b * numel, 0.0);
            written.clear();
            written.resize(b, 0);
        }
        slot.input_mask.clear();
        slot.target_mask.clear();
        slot.decoder_attention_mask.clear();
        for (i, sample) in samples.iter().enumerate() {
            let err = |reason: String| Error::Collate { modality: key, reason: format!("sample {i}: {reason}") };
            let x = sample.get(&m).ok_or_else(|| err("modality missing".into()))?;
            if x.tensor.shape() != shape {
                return Err(err(format!("tensor shape {:?}, sample 0 has {shape:?}", x.tensor.shape())));
            }
            if x.input_mask.len() != len || x.target_mask.len() != len || x.decoder_attention_mask.len() != len {
                return Err(err(format!(
                    "mask lengths {}/{}/{}, sample 0 has {len}",
                    x.input_mask.len(),
                    x.target_mask.len(),
                    x.decoder_attention_mask.len()
                )));
            }
            match (&x.tensor, is_ids) {
                (MaskedTensor::Ids(v), true) => ids.extend_from_slice(v),
                (MaskedTensor::Floats { data, .. } | MaskedTensor::ZeroPaddedRows { data, .. }, false) if data.len() <= numel => {
                    let slot_data = &mut floats[i * numel..(i + 1) * numel];
                    slot_data[..data.len()].copy_from_slice(data);
                    // Zero only what an earlier batch wrote past this sample's data.
                    if written[i] > data.len() {
                        slot_data[data.len()..written[i]].fill(0.0);
                    }
                    written[i] = data.len();
                }
                (MaskedTensor::Floats { data, .. } | MaskedTensor::ZeroPaddedRows { data, .. }, false) => {
                    return Err(err(format!("{} floats exceed the shape {shape:?}", data.len())));
                }
                _ => return Err(err("ids and floats mixed".into())),
            }
            slot.input_mask.extend_from_slice(&x.input_mask);
            slot.target_mask.extend_from_slice(&x.target_mask);
            slot.decoder_attention_mask.extend_from_slice(&x.decoder_attention_mask);
        }
        slot.tensor = if is_ids {
            BatchTensor::Ids { data: ids, shape: full_shape }
        } else {
            out.written.insert(m, written);
            BatchTensor::Floats { data: floats, shape: full_shape }
        };
        slot.mask_shape = [b, len];
    }
    Ok(())
}
