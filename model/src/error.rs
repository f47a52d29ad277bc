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
    /// Reading a dataset through the tokenizers crate failed.
    #[error("data: {0}")]
    Data(#[from] tessera_tokenizers::Error),
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
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
