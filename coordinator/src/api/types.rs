//! The JSON bodies of the API's requests and their parsers, which name the offending field.
//! The answers (the job status, the acknowledgements) are the contract crate's
//! [`tessera_protocol::reply`] types, re-exported by [`crate::api`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ApiError;

/// The body of `POST /scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// Desired number of workers.
    pub workers: usize,
}

/// The body of `POST /mixture`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureRequest {
    /// Weight per dataset name (relative; need not sum to 1).
    pub weights: BTreeMap<String, f64>,
    /// First step to use it (`None`: the next step the coordinator can still change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_step: Option<u64>,
}

/// The body of `POST /drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    /// The worker to drain (its id, as `GET /status` lists it).
    pub worker: u64,
}

impl DrainRequest {
    /// Parses a `POST /drain` body.
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let map = object(body, &["worker"])?;
        let v = map.get("worker").ok_or_else(|| ApiError::bad("worker", "missing"))?;
        Ok(Self { worker: uint("worker", v)? })
    }
}

/// A request body as a JSON object, refusing keys outside `known` (a typo must not be ignored).
fn object(body: &[u8], known: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad("body", format!("not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad("body", "must be a JSON object"));
    };
    if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad(key, format!("unknown field (expected one of: {})", known.join(", "))));
    }
    Ok(map)
}

/// A field that must be a non-negative integer.
fn uint(field: &str, v: &Value) -> Result<u64, ApiError> {
    v.as_u64().ok_or_else(|| ApiError::bad(field, format!("must be a non-negative integer, got {v}")))
}

impl ScaleRequest {
    /// Parses a `POST /scale` body.
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let map = object(body, &["workers"])?;
        let v = map.get("workers").ok_or_else(|| ApiError::bad("workers", "missing"))?;
        let workers = usize::try_from(uint("workers", v)?).map_err(|_| ApiError::bad("workers", "too large"))?;
        if workers == 0 {
            return Err(ApiError::bad("workers", "must be at least 1 (cancel a job to stop it)"));
        }
        Ok(Self { workers })
    }
}

impl MixtureRequest {
    /// Parses and validates a `POST /mixture` body: at least one dataset, every weight finite
    /// and non-negative, and not all zero (the ledger cannot draw from an empty mixture).
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let map = object(body, &["weights", "at_step"])?;
        let at_step = match map.get("at_step") {
            None | Some(Value::Null) => None,
            Some(v) => Some(uint("at_step", v)?),
        };
        let Some(Value::Object(raw)) = map.get("weights") else {
            return Err(ApiError::bad("weights", "missing or not an object of dataset name -> weight"));
        };
        if raw.is_empty() {
            return Err(ApiError::bad("weights", "names no dataset"));
        }
        let mut weights = BTreeMap::new();
        for (name, v) in raw {
            let field = format!("weights.{name}");
            if name.is_empty() {
                return Err(ApiError::bad(field, "empty dataset name"));
            }
            let w = v.as_f64().ok_or_else(|| ApiError::bad(&field, format!("must be a number, got {v}")))?;
            if !w.is_finite() || w < 0.0 {
                return Err(ApiError::bad(&field, format!("must be finite and >= 0, got {w}")));
            }
            weights.insert(name.clone(), w);
        }
        if weights.values().all(|w| *w == 0.0) {
            return Err(ApiError::bad("weights", "all weights are zero"));
        }
        Ok(Self { weights, at_step })
    }
}
