//! [`MaskedModality`]: the masked form of one modality of one sample (ml-4m's per-modality dict
//! of `tensor`, `input_mask`, `target_mask`, `decoder_attention_mask`; reference §3.5), and the
//! all-masked "empty" form of a missing modality (ml-4m `make_empty_mod_dict`).

use crate::modality::{Modality, ModalityKind};

/// The data of a masked modality.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskedTensor {
    /// Token ids, one per mask position (image grids and text sequences); i64 everywhere.
    Ids(Vec<i64>),
    /// Floats (pixels `(C, H, W)`) with their shape.
    Floats {
        /// The values, row major.
        data: Vec<f32>,
        /// The shape, without a batch axis.
        shape: Vec<usize>,
    },
    /// A `(rows, width)` float tensor of which only the leading rows are stored; every row past
    /// them is zero (sequence embeddings: the input rows, then zero padding). Saves writing and
    /// copying the padding twice; collation writes the zeros once.
    ZeroPaddedRows {
        /// The stored leading rows, row major (a multiple of `shape[1]` long).
        data: Vec<f32>,
        /// The full shape `[rows, width]`, without a batch axis.
        shape: [usize; 2],
    },
}

impl MaskedTensor {
    /// The shape without a batch axis.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::Ids(ids) => vec![ids.len()],
            Self::Floats { shape, .. } => shape.clone(),
            Self::ZeroPaddedRows { shape, .. } => shape.to_vec(),
        }
    }

    /// The ids, if this is an id tensor.
    pub fn ids(&self) -> Option<&[i64]> {
        match self {
            Self::Ids(ids) => Some(ids),
            Self::Floats { .. } | Self::ZeroPaddedRows { .. } => None,
        }
    }

    /// The stored floats (for [`MaskedTensor::ZeroPaddedRows`] only the leading rows), if any.
    pub fn floats(&self) -> Option<&[f32]> {
        match self {
            Self::Ids(_) => None,
            Self::Floats { data, .. } | Self::ZeroPaddedRows { data, .. } => Some(data),
        }
    }

    /// All floats of the full shape, zero padding included, if this is a float tensor.
    pub fn dense_floats(&self) -> Option<Vec<f32>> {
        match self {
            Self::Ids(_) => None,
            Self::Floats { data, .. } => Some(data.clone()),
            Self::ZeroPaddedRows { data, shape } => {
                let mut dense = data.clone();
                dense.resize(shape[0] * shape[1], 0.0);
                Some(dense)
            }
        }
    }
}

/// One masked modality of one sample. Masks use ml-4m's polarity: `true` = excluded.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedModality {
    /// The data: unchanged for image-like modalities, input + target ids for sequences.
    pub tensor: MaskedTensor,
    /// Per position: `true` = not an encoder input.
    pub input_mask: Vec<bool>,
    /// Per position: `true` = not a decoder target.
    pub target_mask: Vec<bool>,
    /// ml-4m's compressed decoder attention mask (image: target count at the first target;
    /// sequence: 1 on every target position, i.e. causal).
    pub decoder_attention_mask: Vec<i64>,
}

impl MaskedModality {
    /// ml-4m's `make_empty_mod_dict` entry: zeros of the batch shape, every position excluded.
    pub fn empty(modality: Modality) -> Self {
        let s = modality.spec();
        let len = s.batch_len();
        let tensor = match s.kind {
            ModalityKind::Pixels => MaskedTensor::Floats {
                data: vec![0.0; s.channels * s.image_size * s.image_size],
                shape: vec![s.channels, s.image_size, s.image_size],
            },
            ModalityKind::SequenceEmbedding => MaskedTensor::ZeroPaddedRows { data: Vec::new(), shape: [len, s.channels] },
            ModalityKind::ImageTokens | ModalityKind::GlobalTokens | ModalityKind::Sequence => MaskedTensor::Ids(vec![0; len]),
        };
        Self { tensor, input_mask: vec![true; len], target_mask: vec![true; len], decoder_attention_mask: vec![0; len] }
    }

    /// Number of encoder input positions (`input_mask == false`).
    pub fn input_count(&self) -> usize {
        self.input_mask.iter().filter(|m| !**m).count()
    }

    /// Number of decoder target positions (`target_mask == false`).
    pub fn target_count(&self) -> usize {
        self.target_mask.iter().filter(|m| !**m).count()
    }

    /// Length of the masks (the modality's [`crate::ModalitySpec::batch_len`]).
    pub fn len(&self) -> usize {
        self.input_mask.len()
    }

    /// True when the masks have no positions (never for a registry modality).
    pub fn is_empty(&self) -> bool {
        self.input_mask.is_empty()
    }
}
