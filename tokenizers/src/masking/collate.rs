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

/// A collated batch of masked samples.
#[derive(Debug, Clone, PartialEq)]
pub struct CollatedBatch {
    /// Number of samples, `B`.
    pub size: usize,
    /// Every modality of the samples.
    pub modalities: BTreeMap<Modality, BatchModality>,
}

/// Stacks `samples`; every sample must have the same modalities with the same shapes.
pub fn collate(samples: &[MaskedSample]) -> Result<CollatedBatch> {
    let Some(first) = samples.first() else {
        return Err(Error::MaskSetup { reason: "cannot collate an empty list of samples".into() });
    };
    let b = samples.len();
    let mut modalities = BTreeMap::new();
    for (&m, proto) in first {
        let key = m.key();
        let shape = proto.tensor.shape();
        let len = proto.len();
        let numel: usize = shape.iter().product();
        let is_ids = matches!(proto.tensor, MaskedTensor::Ids(_));
        let mut ids = Vec::new();
        let mut floats = Vec::new();
        if is_ids {
            ids.reserve_exact(b * numel);
        } else {
            floats.reserve_exact(b * numel);
        }
        let mut input_mask = Vec::with_capacity(b * len);
        let mut target_mask = Vec::with_capacity(b * len);
        let mut dam = Vec::with_capacity(b * len);
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
                (MaskedTensor::Floats { data, .. }, false) => floats.extend_from_slice(data),
                (MaskedTensor::ZeroPaddedRows { data, .. }, false) if data.len() <= numel => {
                    floats.extend_from_slice(data);
                    // The padding is written once, here, instead of in masking and again here.
                    floats.resize(floats.len() + numel - data.len(), 0.0);
                }
                (MaskedTensor::ZeroPaddedRows { data, .. }, false) => {
                    return Err(err(format!("{} stored floats exceed the shape {shape:?}", data.len())));
                }
                _ => return Err(err("ids and floats mixed".into())),
            }
            input_mask.extend_from_slice(&x.input_mask);
            target_mask.extend_from_slice(&x.target_mask);
            dam.extend_from_slice(&x.decoder_attention_mask);
        }
        let full_shape: Vec<usize> = std::iter::once(b).chain(shape).collect();
        let tensor = if is_ids {
            BatchTensor::Ids { data: ids, shape: full_shape }
        } else {
            BatchTensor::Floats { data: floats, shape: full_shape }
        };
        modalities.insert(m, BatchModality { tensor, input_mask, target_mask, decoder_attention_mask: dam, mask_shape: [b, len] });
    }
    if let Some((i, extra)) = samples.iter().enumerate().find_map(|(i, s)| s.keys().find(|m| !first.contains_key(m)).map(|m| (i, *m))) {
        return Err(Error::Collate { modality: extra.key(), reason: format!("sample {i}: modality absent from sample 0") });
    }
    Ok(CollatedBatch { size: b, modalities })
}
