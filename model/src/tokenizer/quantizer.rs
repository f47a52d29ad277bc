//! The quantizer seam: latents `(H, N, D)` (H heads with their own codebooks) to codes and ids
//! and back, over the two kinds of [`QuantizerKind`].
//!
//! Shape legend: H heads, N latents per head, D code dim.

use tch::{Kind, Reduction, Tensor, nn};

use super::config::{QuantizerKind, TokenizerConfig};
use super::ema::EmaCosineCodebook;
use super::fsq::Fsq;

/// A quantizer of either kind.
#[derive(Debug)]
pub enum Quantizer {
    /// EMA cosine codebook.
    EmaCosine(EmaCosineCodebook),
    /// Finite scalar quantization.
    Fsq(Fsq),
}

/// What quantizing a batch gives.
#[derive(Debug)]
pub struct Quantized {
    /// Codes with straight-through gradient to the latents `(H, N, D)`.
    pub codes_HND: Tensor,
    /// Token ids `(H, N)`.
    pub ids_HN: Tensor,
    /// Commitment loss `MSE(sg(q), z)` (zero for FSQ, whose codes are the rounded latents).
    pub commit_loss: Tensor,
    /// The latents the codebook compared (unit-norm for the cosine codebook), detached: the
    /// EMA update consumes them after the optimizer step.
    pub latents_HND: Tensor,
}

impl Quantizer {
    /// Builds the quantizer of `cfg` under `p` (caller holds the RNG lock).
    pub fn new(p: &nn::Path, cfg: &TokenizerConfig) -> Self {
        match &cfg.quantizer {
            QuantizerKind::EmaCosine { codebook_size, decay, dead_threshold } => {
                Self::EmaCosine(EmaCosineCodebook::new(p, cfg.heads(), *codebook_size, cfg.code_dim, *decay, *dead_threshold, cfg.seed))
            }
            QuantizerKind::Fsq { levels } => Self::Fsq(Fsq::new(levels)),
        }
    }

    /// Quantizes latents `(H, N, D)`.
    pub fn quantize(&self, z_HND: &Tensor) -> Quantized {
        match self {
            Self::EmaCosine(cb) => {
                let (zn_HND, q_HND, ids_HN) = cb.quantize(z_HND);
                let commit_loss = zn_HND.mse_loss(&q_HND.detach(), Reduction::Mean);
                let codes_HND = &zn_HND + (&q_HND - &zn_HND).detach();
                Quantized { codes_HND, ids_HN, commit_loss, latents_HND: zn_HND.detach() }
            }
            Self::Fsq(fsq) => {
                let (codes_HND, ids_HN) = fsq.quantize(z_HND);
                let commit_loss = Tensor::zeros([], (Kind::Float, z_HND.device()));
                Quantized { codes_HND, ids_HN, commit_loss, latents_HND: z_HND.detach() }
            }
        }
    }

    /// The codes of ids `(H, N)` → `(H, N, D)`.
    pub fn lookup(&self, ids_HN: &Tensor) -> Tensor {
        match self {
            Self::EmaCosine(cb) => cb.lookup(ids_HN),
            Self::Fsq(fsq) => fsq.lookup(ids_HN),
        }
    }

    /// The post-step codebook update (EMA and dead-code replacement); FSQ has nothing to
    /// update. Returns the number of codes replaced.
    pub fn update(&mut self, q: &Quantized) -> usize {
        match self {
            Self::EmaCosine(cb) => cb.update(&q.latents_HND, &q.ids_HN),
            Self::Fsq(_) => 0,
        }
    }
}
