//! Collated flat buffers → tch tensors of a [`MaskedBatch`].

use std::collections::BTreeMap;

use tch::Tensor;
use tessera_model::{MaskedBatch, ModalityTensors};
use tessera_tokenizers::masking::{BatchTensor, CollatedBatch};

/// Moves a collated batch into tensors (ids and the attention mask as i64, masks as bool).
pub fn to_masked_batch(batch: CollatedBatch) -> MaskedBatch {
    let mut modalities = BTreeMap::new();
    for (m, b) in batch.into_modalities() {
        let shape = |s: &[usize]| s.iter().map(|&d| d as i64).collect::<Vec<i64>>();
        let tensor = match &b.tensor {
            BatchTensor::Ids { data, shape: s } => Tensor::from_slice(data).reshape(shape(s)),
            BatchTensor::Floats { data, shape: s } => Tensor::from_slice(data).reshape(shape(s)),
        };
        let ms = shape(&b.mask_shape);
        modalities.insert(
            m,
            ModalityTensors {
                tensor,
                input_mask: Tensor::from_slice(&b.input_mask).reshape(&ms),
                target_mask: Tensor::from_slice(&b.target_mask).reshape(&ms),
                decoder_attention_mask: Tensor::from_slice(&b.decoder_attention_mask).reshape(&ms),
            },
        );
    }
    MaskedBatch { modalities }
}
