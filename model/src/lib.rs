//! The single-device 4M model in tch, numerically the same model as apple/ml-4m's `FourM`.
//!
//! Main types: [`FourMConfig`] (presets and the ml-4m FM config), [`FourM`] (embeddings,
//! encoder, decoder, losses), [`MaskedBatch`] (the model's input, ml-4m's `mod_dict`) and
//! [`Checkpoint`] (a `VarStore` with the model, saved and loaded as ml-4m-named safetensors).
//! [`tokenizer`] holds the neural modality tokenizers (VQ-VAE, FSQ, bottleneck MLP) that make
//! the model's discrete tokens. Parallelism is applied from outside (worker/ops); nothing here
//! knows about ranks. [`generate`] ports ml-4m's any-to-any generation (MaskGIT, ROAR,
//! autoregression, guidance, chained schedules).

mod batch;
mod config;
mod embeddings;
mod error;
mod flops;
mod fourm;
pub mod generate;
pub mod io;
mod layers;
mod optim;
mod posemb;
mod synthetic;
pub mod tokenizer;
mod weights;

pub use batch::{MaskedBatch, ModalityTensors};
pub use config::{Activation, Flavor, FourMConfig, ParamCounts, Preset, TOKEN_MODALITIES_KEY};
pub use error::{MissingPart, ModelError, Result};
pub use flops::TrainFlops;
pub use fourm::{ForwardOptions, ForwardOutput, FourM, LossType, Staged};
pub use optim::{AdamW, AdamWConfig, adamw_update, is_no_decay};
pub use synthetic::{SyntheticSpec, synthetic_batch};
pub use weights::Checkpoint;
