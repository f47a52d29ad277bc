//! [`ApiError`]: what a request to the coordinator can fail with, whether it came over HTTP or
//! as an actor message, and the HTTP status each kind maps to.

use serde::{Deserialize, Serialize};

/// An API request refused or failed; the HTTP status follows from the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    /// The request is malformed or asks for something impossible (400).
    #[error("field `{field}`: {reason}")]
    BadRequest {
        /// The offending field (`workers`, `weights.cc12m`, `body`).
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// No or a wrong bearer token (401).
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// What the request names does not exist (404), e.g. an unknown job id.
    #[error("{what} not found")]
    NotFound {
        /// What was asked for (`job-7`).
        what: String,
    },
    /// The request is valid but the job cannot do it now (409), e.g. the job has finished.
    #[error("{reason}")]
    Conflict {
        /// Why not now.
        reason: String,
    },
    /// The coordinator did not answer in time or is shutting down (503).
    #[error("{reason}")]
    Unavailable {
        /// What did not answer.
        reason: String,
    },
    /// A fault on the coordinator's side (500).
    #[error("{reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
}

impl ApiError {
    /// A 400 naming `field`.
    pub fn bad(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::BadRequest { field: field.into(), reason: reason.into() }
    }

    /// The HTTP status code this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            ApiError::BadRequest { .. } => 400,
            ApiError::Unauthorized => 401,
            ApiError::NotFound { .. } => 404,
            ApiError::Conflict { .. } => 409,
            ApiError::Unavailable { .. } => 503,
            ApiError::Internal { .. } => 500,
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error, as text (names the field for a 400).
    pub error: String,
    /// The offending field, for a 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
