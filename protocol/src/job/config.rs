//! The job config as written (TOML). Every section rejects unknown fields; every default is
//! documented on its field. [`crate::job::resolve`] turns it into a [`crate::ResolvedJob`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_tokenizers::TokenModalityDef;

use crate::error::{ProtocolError, Result};

/// A training job: `[job]`, `[model]`, `[data]`, `[train]`, `[checkpoint]`, `[eval]`,
/// `[stragglers]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Identity, seed and output place.
    pub job: JobSection,
    /// The 4M model to train.
    pub model: ModelSection,
    /// Datasets, token budgets and loading.
    pub data: DataSection,
    /// Optimisation. Default: every field's default.
    #[serde(default)]
    pub train: TrainSection,
    /// Checkpointing. Default: every field's default.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Periodic validation. Default: off.
    #[serde(default)]
    pub eval: EvalSection,
    /// Straggler detection (and, if asked, replacement). Default: every field's default.
    #[serde(default)]
    pub stragglers: StragglersSection,
}

/// `[stragglers]`: a rank whose own step time (compute and data, not the time it waits inside
/// collectives for the others) exceeds `factor` × the median of the other ranks' for `steps`
/// steps in a row is flagged (metric, event, status); with `drain` it is drained at the next
/// checkpointed boundary and, when the coordinator launched it, replaced by a new process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StragglersSection {
    /// How many times the others' median own step time a rank must take. Default: 3 (a rank
    /// 5–10× slower is caught; the jitter of a shared machine rarely triples a step 20 times
    /// in a row).
    #[serde(default = "default_straggler_factor")]
    pub factor: f64,
    /// Consecutive slow steps before the rank is flagged. Default: 20.
    #[serde(default = "default_straggler_steps")]
    pub steps: u32,
    /// Drain a flagged rank at the next checkpointed boundary (and replace it when the
    /// coordinator launched it). Default: false (flag only).
    #[serde(default)]
    pub drain: bool,
}

fn default_straggler_factor() -> f64 {
    3.0
}
fn default_straggler_steps() -> u32 {
    20
}

impl Default for StragglersSection {
    fn default() -> Self {
        toml::from_str("").expect("every [stragglers] field has a default")
    }
}

/// `[eval]`: validation on held-out records beside a unigram baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Validate every this many steps (and at the end); 0 = never. Default: 0.
    #[serde(default)]
    pub every_steps: u64,
    /// Validation samples (a fixed set, the same every time). Default: 64.
    #[serde(default = "default_eval_samples")]
    pub samples: u64,
    /// Training samples the unigram baseline is fitted on. Default: 256.
    #[serde(default = "default_baseline_samples")]
    pub baseline_samples: u64,
}

fn default_eval_samples() -> u64 {
    64
}
fn default_baseline_samples() -> u64 {
    256
}

impl Default for EvalSection {
    fn default() -> Self {
        toml::from_str("").expect("every [eval] field has a default")
    }
}

/// `[job]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// Run name (shown in logs and metrics).
    pub name: String,
    /// Seed of everything random (data order, budgets, masks, init). Default: 0.
    #[serde(default)]
    pub seed: u64,
    /// Where checkpoints and logs go; relative paths are relative to the config file.
    pub output_dir: PathBuf,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Size preset: tiny, small, base, large, xlarge. Default: tiny.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Block flavour: swiglu_nobias (4M-21) or gelu. Default: swiglu_nobias.
    #[serde(default = "default_flavor")]
    pub flavor: String,
    /// Modality set: `4m21`, `4m7`, `mod11` or a comma-separated list of ml-4m keys (and keys
    /// declared in `token_modalities`). Default: 4m21.
    #[serde(default = "default_modalities")]
    pub modalities: String,
    /// Tokenizer-defined token modalities (`[[model.token_modalities]]`: `key =
    /// "tok_depth@32"`, `vocab_size`, `grid`, optional `kind`), registered before any key is
    /// resolved; `tessera tokenize` writes each one's `modality.json`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_modalities: Vec<TokenModalityDef>,
    /// Width override. Default: the preset's.
    #[serde(default)]
    pub dim: Option<usize>,
    /// Encoder depth override. Default: the preset's.
    #[serde(default)]
    pub encoder_depth: Option<usize>,
    /// Decoder depth override. Default: the preset's.
    #[serde(default)]
    pub decoder_depth: Option<usize>,
    /// Head count override. Default: the preset's.
    #[serde(default)]
    pub num_heads: Option<usize>,
    /// Initial weights (ml-4m-compatible safetensors; ml-4m's `finetune`). Default: random init.
    #[serde(default)]
    pub init: Option<PathBuf>,
}

fn default_preset() -> String {
    "tiny".into()
}
fn default_flavor() -> String {
    "swiglu_nobias".into()
}
fn default_modalities() -> String {
    "4m21".into()
}

/// A per-sample token count: a fixed number or an inclusive `[min, max]` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokensSpec {
    /// Always this many.
    Fixed(usize),
    /// Uniform in `[min, max]` (ml-4m `min_*_tokens`, `num_*_tokens`).
    Range([usize; 2]),
}

impl TokensSpec {
    /// The largest count.
    pub fn max(self) -> usize {
        match self {
            Self::Fixed(n) => n,
            Self::Range([_, hi]) => hi,
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Encoder tokens per sample. Default: 256 (4M-21).
    #[serde(default = "default_tokens")]
    pub input_tokens: TokensSpec,
    /// Decoder tokens per sample. Default: 256 (4M-21).
    #[serde(default = "default_tokens")]
    pub target_tokens: TokensSpec,
    /// WordPiece tokenizer JSON for the sequence modalities. Required when a dataset has one.
    #[serde(default)]
    pub text_tokenizer: Option<PathBuf>,
    /// Threads reading and decoding samples. Default: 2.
    #[serde(default = "default_decode_threads")]
    pub decode_threads: usize,
    /// Skip (and count) samples that fail to decode instead of failing the job. Default: false.
    #[serde(default)]
    pub skip_bad_samples: bool,
    /// The datasets mixed per sample, at least one.
    pub datasets: Vec<DatasetSection>,
}

fn default_tokens() -> TokensSpec {
    TokensSpec::Fixed(256)
}
fn default_decode_threads() -> usize {
    2
}

/// What a dataset is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// ml-4m tar shards, one folder per modality (`path` is a `[a,b]/shard-{0..9}.tar` pattern).
    Shards,
    /// A text-only corpus (JSON lines or plain text) trained as `caption` (C4 co-training).
    Text,
    /// Seeded random records with valid values for every modality (for smoke tests and benchmarks).
    Synthetic,
}

/// One `[[data.datasets]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// Name (for logs and metrics).
    pub name: String,
    /// Storage kind.
    pub kind: DatasetKind,
    /// Shard or file pattern (shards, text). Relative paths are relative to the config file.
    #[serde(default)]
    pub path: Option<String>,
    /// Held-out split of the same layout, used by `[eval]`. Default: none (the dataset is not
    /// validated; synthetic datasets use records drawn with another seed).
    #[serde(default)]
    pub val_path: Option<String>,
    /// Relative sampling weight. Default: 1.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Modality set of this dataset (same syntax as `model.modalities`). Default: the model's;
    /// for `text` datasets: `caption`.
    #[serde(default)]
    pub modalities: Option<String>,
    /// ml-4m alphas YAML (a Dirichlet mixture). Default: `input_alphas`/`target_alphas`.
    #[serde(default)]
    pub alphas: Option<PathBuf>,
    /// ml-4m hyphen-string input alphas (one value, or one per sorted input modality). Default: "1.0".
    #[serde(default)]
    pub input_alphas: Option<String>,
    /// ml-4m hyphen-string target alphas. Default: "1.0".
    #[serde(default)]
    pub target_alphas: Option<String>,
    /// Folder name → modality key (ml-4m `modality_name_map`). Default: none.
    #[serde(default)]
    pub name_map: BTreeMap<String, String>,
    /// JSON field holding the text of a `text` dataset in JSON lines. Default: "text".
    #[serde(default)]
    pub text_field: Option<String>,
    /// Number of records of a `synthetic` dataset. Default: 4096.
    #[serde(default)]
    pub records: Option<u64>,
    /// Override of `data.input_tokens` for this dataset.
    #[serde(default)]
    pub input_tokens: Option<TokensSpec>,
    /// Override of `data.target_tokens` for this dataset.
    #[serde(default)]
    pub target_tokens: Option<TokensSpec>,
}

fn default_weight() -> f64 {
    1.0
}

/// Loss normalisation (ml-4m `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Mean over modalities of each modality's mean token loss (4M-21).
    Mod,
    /// Mean over all target tokens.
    Token,
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// CPU (deterministic with fixed threads).
    Cpu,
    /// The first CUDA device.
    Cuda,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Samples per optimizer step over all workers. Default: 8.
    #[serde(default = "default_batch")]
    pub global_batch_size: usize,
    /// Samples per forward/backward; the step accumulates `global/micro` of them. Default: global.
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
    /// Base LR per 256 samples: peak LR = blr · global_batch / 256. Default: 1e-4.
    #[serde(default = "default_blr")]
    pub blr: f64,
    /// Final LR per 256 samples. Default: 0.
    #[serde(default)]
    pub min_blr: f64,
    /// Absolute peak LR (overrides `blr`). Default: none.
    #[serde(default)]
    pub lr: Option<f64>,
    /// Warm-up length in optimizer steps (exclusive with `warmup_tokens`). Default: 0.
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Warm-up length in tokens, (N_in + N_tgt) per sample as ml-4m counts them.
    #[serde(default)]
    pub warmup_tokens: Option<u64>,
    /// Run length in optimizer steps (exactly one of this and `total_tokens`).
    #[serde(default)]
    pub total_steps: Option<u64>,
    /// Run length in tokens.
    #[serde(default)]
    pub total_tokens: Option<u64>,
    /// AdamW decoupled weight decay. Default: 0.05.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// AdamW betas. Default: [0.9, 0.95].
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// AdamW epsilon. Default: 1e-8.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this value. Default: no clipping (the norm is still logged).
    #[serde(default)]
    pub clip_grad: Option<f64>,
    /// Skip (and count) steps whose loss or gradient norm is not finite. Default: true.
    #[serde(default = "default_true")]
    pub skip_nonfinite: bool,
    /// Loss normalisation. Default: mod.
    #[serde(default = "default_loss")]
    pub loss: LossKind,
    /// Device. Default: cpu.
    #[serde(default = "default_device")]
    pub device: DeviceKind,
    /// bf16 autocast (CUDA only). Default: false.
    #[serde(default)]
    pub bf16: bool,
    /// libtorch CPU threads (0 = libtorch's default). Default: 0.
    #[serde(default)]
    pub threads: usize,
    /// Write a log line every this many steps. Default: 1.
    #[serde(default = "default_one")]
    pub log_every: u64,
    /// Deadline of every collective call between workers, in seconds: a rank that does not
    /// answer for this long (killed, stopped, partitioned) fails the step. Default: 300.
    #[serde(default = "default_collective_timeout")]
    pub collective_timeout_s: u64,
    /// FSDP over the host collective: run it on a thread of its own, each unit's all-gather
    /// starting one unit ahead of use and each reduce-scatter trailing its block. Pays off when
    /// cores are left for that thread; where the ranks already use every core (e.g. 2 ranks on
    /// 2 cores) it measured 7% slower, hence off by default. Default: false.
    #[serde(default)]
    pub fsdp_prefetch: bool,
    /// FSDP: recompute each block in the backward pass (activation checkpointing: only block
    /// inputs are kept, each unit is gathered again for its backward). `false` keeps every
    /// block's autograd graph and its gathered parameters from the forward to the backward
    /// pass: no recomputation and no second all-gather, for the memory of all parameters and
    /// activations during the step (like PyTorch FSDP without checkpointing). Default: true.
    #[serde(default = "default_true")]
    pub fsdp_recompute: bool,
}

fn default_collective_timeout() -> u64 {
    300
}

fn default_batch() -> usize {
    8
}
fn default_blr() -> f64 {
    1e-4
}
fn default_wd() -> f64 {
    0.05
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.95]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_true() -> bool {
    true
}
fn default_loss() -> LossKind {
    LossKind::Mod
}
fn default_device() -> DeviceKind {
    DeviceKind::Cpu
}
fn default_one() -> u64 {
    1
}

impl Default for TrainSection {
    fn default() -> Self {
        toml::from_str("").expect("every [train] field has a default")
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Save every this many steps (0 = only at the end and on SIGTERM). Default: 100.
    #[serde(default = "default_every")]
    pub every_steps: u64,
    /// Keep this many newest checkpoints. Default: 3.
    #[serde(default = "default_keep")]
    pub keep_last: usize,
    /// Directory of checkpoints. Default: `<output_dir>/checkpoints`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Resume from the newest valid checkpoint in `dir` when there is one. Default: true.
    #[serde(default = "default_true")]
    pub auto_resume: bool,
}

fn default_every() -> u64 {
    100
}
fn default_keep() -> usize {
    3
}

impl Default for CheckpointSection {
    fn default() -> Self {
        toml::from_str("").expect("every [checkpoint] field has a default")
    }
}

impl JobConfig {
    /// Reads and parses a TOML job config (no validation beyond field names and types).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ProtocolError::Io { path: path.display().to_string(), source })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses a TOML document; `origin` is named in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| ProtocolError::Toml { path: origin.to_string(), source: Box::new(e) })
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a job config serialises")
    }
}
