//! The error type of the tokenizers crate.

/// Errors raised by the modality registry and the (future) tokenization code.
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
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
