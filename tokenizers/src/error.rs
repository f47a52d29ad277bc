//! The error type of the tokenizers crate.

/// Errors raised by the modality registry, the mixture/budget policy and the text
/// tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A modality key that the registry does not know.
    #[error("unknown modality '{key}' (known: {known})")]
    UnknownModality {
        /// The key as given.
        key: String,
        /// The known keys, comma separated, to help the user.
        known: String,
    },
    /// A named or listed modality set that cannot be resolved.
    #[error("invalid modality set '{spec}': {reason}")]
    InvalidModalitySet {
        /// The set as given.
        spec: String,
        /// Why it was refused.
        reason: String,
    },
    /// A config file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A YAML document that does not parse or does not have the expected layout.
    #[error("{origin}: {source}")]
    Yaml {
        /// The file (or other origin) of the document.
        origin: String,
        /// The parser's error (with line and column where known).
        source: serde_yaml::Error,
    },
    /// An alphas (Dirichlet mixture) config that parses but is invalid.
    #[error("{origin}: field `{field}`: {reason}")]
    Alphas {
        /// The file (or other origin) of the config.
        origin: String,
        /// The offending field, as a dotted path (`alphas_mixture.caption.keep`).
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// A JSON document that does not parse or does not have the expected layout.
    #[error("{origin}: {source}")]
    Json {
        /// The file (or other origin) of the document.
        origin: String,
        /// The parser's error (with line and column where known).
        source: serde_json::Error,
    },
    /// A HuggingFace `tokenizers` operation (load, encode, decode, train, save) that failed.
    #[error("{origin}: cannot {op}: {source}")]
    Tokenizer {
        /// The tokenizer file (or the training files) involved.
        origin: String,
        /// What was being done.
        op: &'static str,
        /// The `tokenizers` crate's error.
        source: tokenizers::Error,
    },
    /// A tokenizer-training spec that cannot produce ml-4m's token layout.
    #[error("invalid text tokenizer training spec: `{field}`: {reason}")]
    TrainSpec {
        /// The offending field of [`crate::text::TrainSpec`].
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A serializer input (JSON value) with a missing, mistyped or unknown field.
    #[error("{modality}: field `{key}`: {reason}")]
    Field {
        /// The modality being serialized (`det`, `metadata`, ...).
        modality: &'static str,
        /// The offending key, as a dotted path (`instances[2].score`).
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// A serialized modality string that cannot be parsed back.
    #[error("{modality}: cannot parse token `{token}`: {reason}")]
    ParseText {
        /// The modality being parsed.
        modality: &'static str,
        /// The offending token (or the whole text when it is empty or too short).
        token: String,
        /// Why it was refused.
        reason: String,
    },
    /// A modality value handed to masking that does not fit the modality's spec.
    #[error("{modality}: cannot mask value: {reason}")]
    MaskValue {
        /// The modality's ml-4m key.
        modality: &'static str,
        /// What does not fit (kind, length, id range, missing sentinel).
        reason: String,
    },
    /// A per-modality token budget that the modality cannot be masked with.
    #[error("{modality}: invalid masking budget: {reason}")]
    MaskBudget {
        /// The modality's ml-4m key.
        modality: &'static str,
        /// Which budget is out of range, and the limit.
        reason: String,
    },
    /// A masker that cannot be set up or a sample budget that belongs to another modality list.
    #[error("masking set-up: {reason}")]
    MaskSetup {
        /// Why it was refused.
        reason: String,
    },
    /// Masked samples that cannot be stacked into one batch.
    #[error("{modality}: cannot collate: {reason}")]
    Collate {
        /// The modality's ml-4m key.
        modality: &'static str,
        /// Which sample differs, and how.
        reason: String,
    },
    /// Token-budget settings that cannot be sampled from.
    #[error("invalid token budget settings: {reason}")]
    Budget {
        /// Why they were refused.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
