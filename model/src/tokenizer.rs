//! Neural modality tokenizers in tch (reference §7): they turn image-like modalities, feature
//! maps and global vectors into the discrete tokens 4M consumes, and tokens back into data.
//!
//! - [`ModalityTokenizer`]: the seam the data pipeline and generation use (encode/decode).
//! - [`TokenizerConfig`] (`config`): input kind, architecture, quantizer, loss; validated once.
//! - `conv`: convolutional VQ-VAE encoder/decoder; `vit`: the ViT one; `mlp`: ml-4m's
//!   Bottleneck MLP.
//! - `ema`: EMA cosine-similarity codebook with dead-code replacement; `fsq`: finite scalar
//!   quantization; `quantizer`: the two behind one type.
//! - `loss`: MSE, L1, smooth-L1, cross-entropy, cosine reconstruction losses.
//! - [`Tokenizer`] (`model`): network + quantizer in one store, save/load.
//! - [`Trainer`] (`train`): AdamW steps, metrics, checkpoint and resume; [`train_tokenizer`].
//! - `metrics`: codebook usage, perplexity, mIoU, token agreement.
//! - `transform`: world member → tokenizer input (crop, flip, resize, normalise).
//! - `world`: data from a generated world, evaluation, [`train_from_world`] for the CLI.
//! - `tokenize`: [`tokenize_world_split`] writes ml-4m `tok_<modality>@<size>` token shards.

// Tensor names carry shape suffixes (`z_HND`) with a legend in each file (style guide §17).
#![allow(non_snake_case)]

use tch::Tensor;

use crate::error::Result;

mod config;
mod conv;
mod ema;
mod fsq;
mod loss;
mod metrics;
mod mlp;
mod model;
mod quantizer;
mod tokenize;
mod train;
mod transform;
mod vit;
mod world;

pub use config::{ArchKind, InputKind, MAX_VOCAB, QuantizerKind, ReconLoss, TokenizerConfig};
pub use ema::EmaCosineCodebook;
pub use fsq::Fsq;
pub use loss::recon_loss;
pub use metrics::{CodeUsage, mean_iou, token_agreement};
pub use model::{CONFIG_FILE, Tokenizer, TokenizerForward, WEIGHTS_FILE};
pub use quantizer::{Quantized, Quantizer};
pub use tokenize::{
    MODALITY_FILE, TOKENIZE_MANIFEST, TokenizeOptions, TokenizeSummary, token_folder_name, token_modality_def, tokenize_world_split,
    tokenizer_digest,
};
pub use train::{Batches, OPTIMIZER_FILE, StepMetrics, TrainOptions, TrainReport, Trainer, encode_all, train_tokenizer};
pub use transform::{DEPTH_CLAMP, prepare, read_crops, read_raw, truncated_standardize};
pub use world::{BASELINE_SAMPLES, EvalReport, ShardBatches, WorldTrainReport, evaluate, load_world_split, train_from_world};

/// A modality's tokenizer: data ↔ int64 token ids `(B, tokens_per_sample)`.
pub trait ModalityTokenizer {
    /// The modality it serves.
    fn modality(&self) -> &str;
    /// Token ids lie in `0..vocab_size()` (per head for multi-head tokenizers).
    fn vocab_size(&self) -> usize;
    /// Tokens per sample.
    fn tokens_per_sample(&self) -> usize;
    /// Data `(B, …)` in the tokenizer's input layout → ids `(B, tokens_per_sample)`.
    fn encode(&self, x: &Tensor) -> Result<Tensor>;
    /// Ids `(B, tokens_per_sample)` → data in the input layout (class ids for class maps).
    fn decode(&self, codes: &Tensor) -> Result<Tensor>;
}

/// SplitMix64's finaliser over (seed, counter, stream): independent, reproducible RNG seeds
/// for batch order and dead-code sampling.
fn mix(seed: u64, counter: usize, stream: u64) -> u64 {
    let mut z = seed ^ (counter as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Gaussian test data from a fixed seed: libtorch's generator is process-global, so draw
/// under the crate's lock or a concurrently running test changes the numbers.
#[cfg(test)]
pub(crate) fn seeded_randn(seed: i64, shape: &[i64]) -> Tensor {
    let _guard = crate::weights::RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    Tensor::randn(shape, (tch::Kind::Float, tch::Device::Cpu))
}
