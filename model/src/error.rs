//! The error type of the model crate: every variant names the file, key or modality at fault.

use std::path::PathBuf;

/// Errors raised while configuring, loading, saving or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration field is missing or invalid.
    #[error("invalid model config field '{field}': {reason}")]
    Config {
        /// The field name (ml-4m's name where one exists).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", …).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A safetensors file is corrupt or not safetensors at all.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A checkpoint's tensors do not match the model built from its config.
    #[error("{path}: checkpoint does not match the model: {}", describe_mismatch(missing, unexpected, mismatched))]
    StateDict {
        /// The file.
        path: PathBuf,
        /// Keys the model needs that the file lacks.
        missing: Vec<String>,
        /// Keys in the file that the model does not have.
        unexpected: Vec<String>,
        /// `key: expected [..] got [..]` entries for shape or dtype mismatches.
        mismatched: Vec<String>,
    },
    /// A masked batch is malformed.
    #[error("batch {source_name}: modality '{modality}', key '{key}': {reason}")]
    Batch {
        /// The file (or "<memory>").
        source_name: String,
        /// The modality at fault.
        modality: String,
        /// The tensor key at fault (e.g. `caption.input_mask`).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A modality tokenizer was given input it cannot take, or is misconfigured at run time.
    #[error("tokenizer '{modality}': {reason}")]
    Tokenizer {
        /// The modality the tokenizer serves.
        modality: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be written atomically (names the operation and the file).
    #[error("{0}")]
    Write(tessera_tokenizers::Error),
    /// Reading a dataset through the tokenizers crate failed.
    #[error("data: {0}")]
    Data(#[from] tessera_tokenizers::Error),
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A generation schedule file could not be parsed.
    #[error("generation schedule {source_name}: {source}")]
    ScheduleParse {
        /// The file (or "<memory>").
        source_name: String,
        /// The YAML parser's error.
        source: serde_yaml::Error,
    },
    /// A per-target list of a generation schedule has the wrong length.
    #[error("generation schedule {source_name}: '{key}' has {len} entries, but 'target_domains' has {expected}")]
    ScheduleLength {
        /// The file (or "<memory>").
        source_name: String,
        /// The list's key (ml-4m's keyword argument).
        key: &'static str,
        /// Its length.
        len: usize,
        /// The number of targets.
        expected: usize,
    },
    /// A value of a generation schedule is not one of the accepted forms.
    #[error("generation schedule {source_name}: '{key}'[{index}] = '{value}' is not {expected}")]
    ScheduleValue {
        /// The file (or "<memory>").
        source_name: String,
        /// The key (ml-4m's keyword argument).
        key: &'static str,
        /// The entry's position in the list.
        index: usize,
        /// The value as written.
        value: String,
        /// What is accepted there.
        expected: &'static str,
    },
    /// A decoding scheme does not apply to the target's kind of data.
    #[error("generation target '{modality}': scheme '{scheme}' does not apply to {kind} modalities")]
    SchemeMismatch {
        /// The target modality.
        modality: String,
        /// The scheme requested.
        scheme: &'static str,
        /// ml-4m's type of the modality (`img`, `seq`, …).
        kind: &'static str,
    },
    /// A multi-condition guided schedule has a step ml-4m's multi-condition sampler cannot run
    /// (an autoregressive target, or a step without weights beside steps with them).
    #[error(
        "generation target '{modality}': multi-condition guidance needs every step image-like (maskgit or roar) with a list of weights in cfg_scales"
    )]
    MultiGuidance {
        /// The target of the offending step.
        modality: String,
    },
    /// Generation needs a modality that the model or the batch lacks.
    #[error("generation: modality '{modality}' {missing}")]
    GenerationModality {
        /// The modality.
        modality: String,
        /// What is missing.
        missing: MissingPart,
    },
    /// A step asks to decode more tokens than are still masked, or a negative number.
    #[error("generation step {step} for '{modality}': {requested} tokens requested, {available} still masked")]
    StepTokens {
        /// The step index in the chained schedule.
        step: usize,
        /// The target modality.
        modality: String,
        /// Tokens the schedule asks for.
        requested: i64,
        /// Masked tokens left.
        available: i64,
    },
    /// top-k as a fraction of the vocabulary keeps no token.
    #[error("top_k = {top_k} of a {vocab}-token vocabulary keeps no token")]
    TopKEmpty {
        /// The fraction given.
        top_k: f64,
        /// The vocabulary size.
        vocab: i64,
    },
    /// A special text token that generation needs is not in the text vocabulary.
    #[error("text vocabulary {source_name} has no '{token}' token, which generation needs")]
    MissingTextToken {
        /// Where the vocabulary came from.
        source_name: String,
        /// The token (e.g. `[S_1]`, `[PAD]`).
        token: String,
    },
    /// Two tensors an in-place operation writes through share memory, so the update would read
    /// what it has just written (and, on the fused CPU path, alias mutable slices).
    #[error("{op}: '{first}' and '{second}' overlap in memory")]
    Overlap {
        /// The operation (e.g. `adamw_update`).
        op: &'static str,
        /// One of the overlapping arguments.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
}

/// What a generation run found missing for a modality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingPart {
    /// The model has no decoder embedding for it, so it cannot be a target.
    DecoderEmbedding,
    /// The model has no encoder embedding for it, so it cannot condition.
    EncoderEmbedding,
    /// The batch does not hold it (a target must be initialised as an empty target, a
    /// guidance condition must be present).
    InBatch,
}

impl std::fmt::Display for MissingPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DecoderEmbedding => "has no decoder embedding in the model (it cannot be a target)",
            Self::EncoderEmbedding => "has no encoder embedding in the model (it cannot condition)",
            Self::InBatch => "is not in the batch",
        })
    }
}

fn describe_mismatch(missing: &[String], unexpected: &[String], mismatched: &[String]) -> String {
    let mut parts = Vec::new();
    let show = |v: &[String]| {
        let head: Vec<_> = v.iter().take(8).cloned().collect();
        let more = if v.len() > 8 { format!(" … and {} more", v.len() - 8) } else { String::new() };
        format!("{}{more}", head.join(", "))
    };
    if !missing.is_empty() {
        parts.push(format!("missing keys: {}", show(missing)));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected keys: {}", show(unexpected)));
    }
    if !mismatched.is_empty() {
        parts.push(format!("mismatched: {}", show(mismatched)));
    }
    parts.join("; ")
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
