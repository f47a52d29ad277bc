//! Where a member came from, so decoding errors name the file, the sample key and the member.

use std::fmt;

use crate::error::Error;

/// The file, sample key and member a piece of bytes was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The shard (or other) file.
    pub file: String,
    /// The sample key.
    pub key: String,
    /// The member name (`tok_rgb@224.npy`, or a field such as `emb` inside it).
    pub member: String,
}

impl Origin {
    /// An origin from its three parts.
    pub fn new(file: impl Into<String>, key: impl Into<String>, member: impl Into<String>) -> Self {
        Self { file: file.into(), key: key.into(), member: member.into() }
    }

    /// The crate error for this member with `reason`.
    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::Member { file: self.file.clone(), key: self.key.clone(), member: self.member.clone(), reason: reason.into() }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: sample '{}', member '{}'", self.file, self.key, self.member)
    }
}
