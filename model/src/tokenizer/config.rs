//! The tokenizer configuration: one serde document (saved as `tokenizer.json` beside the
//! weights), validated once by [`TokenizerConfig::validate`] so that the modules building and
//! running the networks can rely on consistent shapes without re-checking.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Largest codebook (EMA codes or the FSQ product): token ids must fit the int16 arrays ml-4m
/// stores (§6.2), and usage counters are dense per code.
pub const MAX_VOCAB: usize = 1 << 15;

/// What a tokenizer consumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputKind {
    /// A float image or feature map `(B, channels, size, size)` (RGB, depth, normals, features).
    Image {
        /// Channels (1 depth, 3 RGB/normals, C for feature maps).
        channels: usize,
        /// Side in pixels (or feature cells).
        size: usize,
    },
    /// A class-id map `(B, size, size)` (semantic segmentation), embedded by a learned table.
    ClassMap {
        /// Number of classes (ids are `0..num_classes`).
        num_classes: usize,
        /// Width of the learned class embedding (ml-4m: 64).
        embed_dim: usize,
        /// Side in pixels.
        size: usize,
    },
    /// A global vector `(B, dim)` (DINOv2/ImageBind global features, poses).
    Vector {
        /// Vector length.
        dim: usize,
    },
}

/// The encoder/decoder pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ArchKind {
    /// Convolutional VQ-VAE: the encoder halves the side `downsample_log2` times (64 px with 3
    /// gives an 8×8 token grid), the decoder mirrors it with nearest upsampling.
    Conv {
        /// Number of stride-2 stages (0 keeps one token per input cell, like ml-4m's feature maps).
        downsample_log2: u32,
        /// Channels of the first stage; each stage doubles them up to 4× this.
        channels: usize,
        /// Residual blocks per stage.
        res_blocks: usize,
    },
    /// ViT VQ-VAE (ml-4m's `ViTEncoder` / `vit_b_dec`): one token per `patch`×`patch` patch.
    Vit {
        /// Patch side (the image side must be a multiple).
        patch: usize,
        /// Transformer width (a multiple of `heads` and of 4, for the 2-D sin-cos table).
        width: usize,
        /// Blocks in the encoder and in the decoder.
        depth: usize,
        /// Attention heads.
        heads: usize,
    },
    /// Bottleneck MLP (ml-4m's `BottleneckMLP`): `n_heads` codes per vector, each head with its
    /// own codebook (Memcodes-style multi-head tokens).
    Mlp {
        /// Hidden width.
        hidden: usize,
        /// Residual pre-norm MLP blocks on each side.
        blocks: usize,
        /// Codes (tokens) per vector.
        n_heads: usize,
    },
}

/// The quantizer that turns latents into token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum QuantizerKind {
    /// Cosine-similarity codebook updated by EMA, with dead-code replacement (ml-4m's `lucid`).
    EmaCosine {
        /// Codes per head.
        codebook_size: usize,
        /// EMA decay of cluster sizes and code vectors (ml-4m: 0.99).
        decay: f64,
        /// A code whose EMA cluster size falls below this is replaced by a random batch latent
        /// (ml-4m: batch·tokens/codebook_size/32).
        dead_threshold: f64,
    },
    /// Finite scalar quantization: each latent dimension bounded by tanh and rounded to one of
    /// `levels[d]` values; the implicit codebook is the product of the levels.
    Fsq {
        /// Levels per code dimension (its length is the code dimension).
        levels: Vec<usize>,
    },
}

/// Reconstruction loss (ml-4m's `compute_reconst_loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconLoss {
    /// Mean squared error.
    Mse,
    /// Mean absolute error.
    L1,
    /// Huber loss with beta 1.
    SmoothL1,
    /// Per-pixel cross-entropy over class logits (class maps only).
    CrossEntropy,
    /// 1 − cosine similarity along the channel (or vector) dimension.
    Cosine,
}

/// A complete tokenizer description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// The modality this tokenizer serves (a world folder or 4M modality name, e.g. `depth`).
    pub modality: String,
    /// What it consumes.
    pub input: InputKind,
    /// Encoder and decoder.
    pub arch: ArchKind,
    /// Quantizer.
    pub quantizer: QuantizerKind,
    /// Dimension of one code (per head for the MLP); for FSQ it equals `levels.len()`.
    pub code_dim: usize,
    /// Reconstruction loss.
    pub loss: ReconLoss,
    /// Weight of the commitment loss (ml-4m's `codebook_weight`, default 1.0).
    #[serde(default = "default_commitment_weight")]
    pub commitment_weight: f64,
    /// Seed of the initial weights and of dead-code sampling (default 0).
    #[serde(default)]
    pub seed: u64,
}

fn default_commitment_weight() -> f64 {
    1.0
}

impl TokenizerConfig {
    /// A small preset for a world folder (`depth`, `normal`, `rgb`, `semseg`, `feature_map`,
    /// `global_feature`) at image side `size`: a conv VQ-VAE for the maps, the bottleneck MLP
    /// for the global vector, each with an EMA cosine codebook.
    pub fn preset(modality: &str, size: usize) -> Result<Self> {
        let conv = |downsample_log2| ArchKind::Conv { downsample_log2, channels: 32, res_blocks: 1 };
        // 8×8 tokens from 32 to 128 px, then 16× downsampling like the 4M tokenizers (224 px →
        // 14×14); never more halvings than the side has factors of two.
        let k = size.max(1).ilog2().saturating_sub(3).min(4).min(size.trailing_zeros());
        let ema = |codebook_size: usize, tokens: usize| QuantizerKind::EmaCosine {
            codebook_size,
            decay: 0.99,
            // ml-4m's rule with batch 16 and coefficient 32, floored so tiny grids still expire codes.
            dead_threshold: ((16 * tokens) as f64 / codebook_size as f64 / 32.0).max(0.05),
        };
        let tokens = (size >> k) * (size >> k);
        let (input, arch, loss, quantizer) = match modality {
            "depth" => (InputKind::Image { channels: 1, size }, conv(k), ReconLoss::SmoothL1, ema(256, tokens)),
            "normal" => (InputKind::Image { channels: 3, size }, conv(k), ReconLoss::L1, ema(256, tokens)),
            "rgb" => (InputKind::Image { channels: 3, size }, conv(k), ReconLoss::Mse, ema(512, tokens)),
            "semseg" => (
                InputKind::ClassMap { num_classes: tessera_tokenizers::world::ShapeClass::ALL.len() + 1, embed_dim: 16, size },
                conv(k),
                ReconLoss::CrossEntropy,
                ema(128, tokens),
            ),
            "feature_map" => {
                let cells = size / tessera_tokenizers::world::features::PATCH;
                let input = InputKind::Image { channels: tessera_tokenizers::world::features::MAP_DIM, size: cells };
                // ml-4m's feature-map tokenizers use smooth-L1; cosine would drop the cell norms.
                (input, conv(0), ReconLoss::SmoothL1, ema(256, cells * cells))
            }
            "global_feature" => (
                InputKind::Vector { dim: tessera_tokenizers::world::features::GLOBAL_DIM },
                ArchKind::Mlp { hidden: 256, blocks: 2, n_heads: 8 },
                ReconLoss::Cosine,
                ema(64, 1),
            ),
            other => {
                return Err(ModelError::Config {
                    field: "modality".into(),
                    reason: format!("no tokenizer preset for '{other}' (depth, normal, rgb, semseg, feature_map, global_feature)"),
                });
            }
        };
        let cfg = Self { modality: modality.to_string(), input, arch, quantizer, code_dim: 32, loss, commitment_weight: 1.0, seed: 0 };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses inconsistent configurations, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(ModelError::Config { field: field.into(), reason });
        if self.modality.is_empty() {
            return bad("modality", "must not be empty".into());
        }
        if self.code_dim == 0 {
            return bad("code_dim", "must be at least 1".into());
        }
        match (&self.input, &self.arch) {
            (InputKind::Image { size, .. } | InputKind::ClassMap { size, .. }, ArchKind::Conv { downsample_log2, channels, .. }) => {
                if *downsample_log2 > 6 {
                    return bad("arch.downsample_log2", format!("{downsample_log2} is above 6"));
                }
                if *size == 0 || !size.is_multiple_of(1 << downsample_log2) {
                    return bad("input.size", format!("{size} is not a positive multiple of 2^{downsample_log2}"));
                }
                if *channels == 0 || !channels.is_multiple_of(GROUPS) {
                    return bad("arch.channels", format!("{channels} is not a positive multiple of {GROUPS} (group norm)"));
                }
            }
            (InputKind::Image { size, .. } | InputKind::ClassMap { size, .. }, ArchKind::Vit { patch, width, depth, heads }) => {
                if *patch == 0 || *size == 0 || !size.is_multiple_of(*patch) {
                    return bad("arch.patch", format!("input size {size} is not a positive multiple of patch {patch}"));
                }
                if *heads == 0 || *depth == 0 || *width == 0 || !width.is_multiple_of(*heads) || !width.is_multiple_of(4) {
                    return bad("arch", format!("vit width {width} must be a positive multiple of heads ({heads}) and 4, depth ≥ 1"));
                }
            }
            (InputKind::Vector { .. }, ArchKind::Mlp { hidden, blocks: _, n_heads }) => {
                if *hidden == 0 || *n_heads == 0 {
                    return bad("arch", "hidden and n_heads must be at least 1".into());
                }
            }
            (input, arch) => {
                return bad("arch", format!("{arch:?} cannot take {input:?} (images and class maps: conv or vit; vectors: mlp)"));
            }
        }
        match &self.input {
            InputKind::Image { channels, .. } if *channels == 0 => return bad("input.channels", "must be at least 1".into()),
            InputKind::ClassMap { num_classes, embed_dim, .. } if *num_classes < 2 || *embed_dim == 0 => {
                return bad("input", "a class map needs at least 2 classes and a non-empty embedding".into());
            }
            InputKind::Vector { dim } if *dim == 0 => return bad("input.dim", "must be at least 1".into()),
            _ => {}
        }
        let is_class_map = matches!(self.input, InputKind::ClassMap { .. });
        if is_class_map != (self.loss == ReconLoss::CrossEntropy) {
            return bad("loss", "cross_entropy is the loss of class maps, and class maps take only cross_entropy".into());
        }
        if self.loss == ReconLoss::Cosine && matches!(self.input, InputKind::Image { channels: 1, .. }) {
            return bad("loss", "cosine over one channel is constant; use mse or smooth_l1".into());
        }
        match &self.quantizer {
            QuantizerKind::EmaCosine { codebook_size, decay, dead_threshold } => {
                if *codebook_size < 2 || *codebook_size > MAX_VOCAB {
                    return bad("quantizer.codebook_size", format!("{codebook_size} is not in 2..={MAX_VOCAB}"));
                }
                if decay.is_nan() || *decay <= 0.0 || *decay >= 1.0 {
                    return bad("quantizer.decay", format!("{decay} is not in (0, 1)"));
                }
                if dead_threshold.is_nan() || *dead_threshold < 0.0 {
                    return bad("quantizer.dead_threshold", format!("{dead_threshold} is negative"));
                }
            }
            QuantizerKind::Fsq { levels } => {
                if levels.len() != self.code_dim {
                    return bad("quantizer.levels", format!("{} levels for code_dim {}", levels.len(), self.code_dim));
                }
                if levels.iter().any(|&l| l < 2) {
                    return bad("quantizer.levels", format!("{levels:?}: every level count must be at least 2"));
                }
                let vocab = levels.iter().try_fold(1usize, |acc, &l| acc.checked_mul(l)).unwrap_or(usize::MAX);
                if vocab > MAX_VOCAB {
                    return bad("quantizer.levels", format!("{levels:?} gives {vocab} codes, above {MAX_VOCAB}"));
                }
            }
        }
        if self.commitment_weight.is_nan() || self.commitment_weight < 0.0 {
            return bad("commitment_weight", format!("{} is negative", self.commitment_weight));
        }
        Ok(())
    }

    /// Codes per head: the codebook size, or the product of the FSQ levels.
    pub fn vocab_size(&self) -> usize {
        match &self.quantizer {
            QuantizerKind::EmaCosine { codebook_size, .. } => *codebook_size,
            QuantizerKind::Fsq { levels } => levels.iter().product(),
        }
    }

    /// Independent codebooks: `n_heads` for the MLP, one for conv.
    pub fn heads(&self) -> usize {
        match self.arch {
            ArchKind::Mlp { n_heads, .. } => n_heads,
            ArchKind::Conv { .. } | ArchKind::Vit { .. } => 1,
        }
    }

    /// Side of the token grid (1 for vectors).
    pub fn grid(&self) -> usize {
        match (&self.input, &self.arch) {
            (InputKind::Image { size, .. } | InputKind::ClassMap { size, .. }, ArchKind::Conv { downsample_log2, .. }) => {
                size >> downsample_log2
            }
            (InputKind::Image { size, .. } | InputKind::ClassMap { size, .. }, ArchKind::Vit { patch, .. }) => size / patch,
            _ => 1,
        }
    }

    /// Tokens per sample: the grid cells, or the heads for vectors.
    pub fn tokens_per_sample(&self) -> usize {
        match self.arch {
            ArchKind::Conv { .. } | ArchKind::Vit { .. } => self.grid() * self.grid(),
            ArchKind::Mlp { n_heads, .. } => n_heads,
        }
    }
}

/// Group-norm groups of the conv stages (channels must be a multiple).
pub const GROUPS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_roundtrip_through_json() {
        for m in ["depth", "normal", "rgb", "semseg", "feature_map", "global_feature"] {
            let cfg = TokenizerConfig::preset(m, 64).unwrap();
            let back: TokenizerConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(back, cfg);
        }
        let d = TokenizerConfig::preset("depth", 64).unwrap();
        assert_eq!((d.grid(), d.tokens_per_sample(), d.vocab_size()), (8, 64, 256));
        assert_eq!(TokenizerConfig::preset("rgb", 224).unwrap().grid(), 14);
        let g = TokenizerConfig::preset("global_feature", 64).unwrap();
        assert_eq!((g.heads(), g.tokens_per_sample()), (8, 8));
    }

    #[test]
    fn inconsistent_tokenizer_configs_are_refused_by_field() {
        let mut cfg = TokenizerConfig::preset("depth", 32).unwrap();
        cfg.loss = ReconLoss::CrossEntropy;
        assert!(cfg.validate().unwrap_err().to_string().contains("'loss'"));
        let mut cfg = TokenizerConfig::preset("depth", 32).unwrap();
        cfg.quantizer = QuantizerKind::Fsq { levels: vec![8, 5, 5] };
        assert!(cfg.validate().unwrap_err().to_string().contains("quantizer.levels"));
        cfg.code_dim = 3;
        cfg.validate().unwrap();
        cfg.input = InputKind::Image { channels: 1, size: 34 };
        assert!(cfg.validate().unwrap_err().to_string().contains("input.size"));
        let err = serde_json::from_str::<TokenizerConfig>(r#"{"modality":"x","bogus":1}"#).unwrap_err();
        assert!(err.to_string().contains("bogus") || err.to_string().contains("unknown"));
    }
}
