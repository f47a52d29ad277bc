//! [`ModalityValue`]: one modality of one sample after its transform and before masking, as
//! ml-4m's transforms hand it to `UnifiedMasking`, checked against the modality's spec.

use crate::error::{Error, Result};
use crate::modality::{Modality, ModalityKind};

/// One modality's transformed (pre-masking) value.
#[derive(Debug, Clone, PartialEq)]
pub enum ModalityValue {
    /// Image or global token ids, one per grid position (`max_tokens` of them).
    Tokens(Vec<i64>),
    /// Raw pixels, `C * H * W` floats in CHW order.
    Pixels(Vec<f32>),
    /// A serialized sequence (caption, det, poses, palette, SAM instances), tokenized by masking.
    Text(String),
    /// A sequence as chunks masked whole (metadata's `v1=.. v0=..` pairs), tokenized by masking.
    Chunks(Vec<String>),
    /// Precomputed vectors (T5-XXL caption embeddings): `rows * dim` floats, row major.
    Embeddings {
        /// Number of vectors (rows beyond `max_tokens` are dropped by masking).
        rows: usize,
        /// Width of each vector.
        dim: usize,
        /// The vectors, row major.
        data: Vec<f32>,
    },
}

impl ModalityValue {
    /// A short name of the variant, for error messages.
    pub fn variant_name(&self) -> &'static str {
        match self {
            Self::Tokens(_) => "Tokens",
            Self::Pixels(_) => "Pixels",
            Self::Text(_) => "Text",
            Self::Chunks(_) => "Chunks",
            Self::Embeddings { .. } => "Embeddings",
        }
    }

    /// Checks that this value is the kind `modality` carries, with the lengths its spec fixes.
    pub fn validate(&self, modality: Modality) -> Result<()> {
        let s = modality.spec();
        let err = |reason: String| Error::MaskValue { modality: s.key, reason };
        match (s.kind, self) {
            (ModalityKind::ImageTokens | ModalityKind::GlobalTokens, Self::Tokens(ids)) => {
                if ids.len() != s.max_tokens {
                    return Err(err(format!("{} token ids, expected {}", ids.len(), s.max_tokens)));
                }
                // An out-of-vocabulary id would only fail later, inside the embedding lookup.
                if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| !(0..s.vocab_size as i64).contains(id)) {
                    return Err(err(format!("token id {id} at position {i} is outside the vocabulary [0, {})", s.vocab_size)));
                }
                Ok(())
            }
            (ModalityKind::Pixels, Self::Pixels(px)) => {
                let want = s.channels * s.image_size * s.image_size;
                if px.len() != want {
                    return Err(err(format!(
                        "{} pixel values, expected {want} ({}x{}x{})",
                        px.len(),
                        s.channels,
                        s.image_size,
                        s.image_size
                    )));
                }
                Ok(())
            }
            (ModalityKind::Sequence, Self::Text(_) | Self::Chunks(_)) => Ok(()),
            (ModalityKind::SequenceEmbedding, Self::Embeddings { rows, dim, data }) => {
                if *dim != s.channels {
                    return Err(err(format!("vectors of width {dim}, expected {}", s.channels)));
                }
                if data.len() != rows * dim {
                    return Err(err(format!("{} floats for {rows} x {dim} vectors", data.len())));
                }
                Ok(())
            }
            (kind, v) => Err(err(format!("a {} value cannot be masked as a {kind:?} modality", v.variant_name()))),
        }
    }
}
