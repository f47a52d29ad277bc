//! The JSON bodies of the API: the job status, the requests and their acknowledgements, and
//! the request parsers that name the offending field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tessera_protocol::report::StepTimings;

use super::error::ApiError;

/// Where the job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// No generation yet: waiting for enough workers.
    Waiting,
    /// A generation is training.
    Running,
    /// A generation was aborted; the next one restores the last checkpoint.
    Recovering,
    /// The running generation is asked to stop at a step boundary.
    Stopping,
    /// Every step is done.
    Finished,
}

impl JobPhase {
    /// The lowercase name used in JSON and in the status table.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Waiting => "waiting",
            JobPhase::Running => "running",
            JobPhase::Recovering => "recovering",
            JobPhase::Stopping => "stopping",
            JobPhase::Finished => "finished",
        }
    }
}

/// One registered worker, as `GET /status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its id.
    pub worker: u64,
    /// Its address.
    pub addr: String,
    /// Its rank in the running generation (`None`: not part of it).
    pub rank: Option<u32>,
    /// Milliseconds since it was last heard from.
    pub seen_ms_ago: u64,
    /// Asked to leave at the next generation boundary.
    pub draining: bool,
    /// Total seconds of its last reported step.
    pub last_step_s: Option<f64>,
    /// Its last step's phases (the rank's own time is `total_s - comm_s`).
    #[serde(default)]
    pub timings: Option<StepTimings>,
    /// Its resident memory after its last step.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// Flagged as a straggler in the running generation.
    #[serde(default)]
    pub straggler: bool,
}

/// The last validation of the held-out set (scored by the ranks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationStatus {
    /// The step count at which it was scored.
    pub step: u64,
    /// Held-out loss per target modality (nats per token).
    pub loss: BTreeMap<String, f64>,
    /// Seconds the ranks spent scoring it (training waited for them).
    #[serde(default)]
    pub seconds: f64,
}

/// The answer of `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job's name.
    pub job: String,
    /// Where the job is.
    pub phase: JobPhase,
    /// The running (or last) generation.
    pub generation: u64,
    /// Ranks of the running generation (0 when none runs).
    pub world_size: u32,
    /// The next step to train (steps done).
    pub step: u64,
    /// Steps of the whole job.
    pub total_steps: u64,
    /// Loss of the last step.
    pub loss: Option<f64>,
    /// Workers the job wants.
    pub target_workers: usize,
    /// Fewest workers a generation may have.
    pub min_workers: usize,
    /// Most workers a generation may have.
    pub max_workers: usize,
    /// Step of the newest committed checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Generations aborted and restarted.
    pub restarts: u64,
    /// Version of the dataset-mixture schedule in force.
    pub schedule_version: u64,
    /// The registered workers.
    pub members: Vec<MemberStatus>,
    /// The last validation, if one ran in this process's lifetime.
    #[serde(default)]
    pub validation: Option<ValidationStatus>,
}

/// The body of `POST /scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// Desired number of workers.
    pub workers: usize,
}

/// The answer of `POST /scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleAck {
    /// The target the coordinator now works towards.
    pub target_workers: usize,
}

/// The answer of `POST /checkpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointAck {
    /// The step count the checkpoint will hold (`None`: no generation runs; it is taken at the
    /// first boundary of the next one).
    pub step: Option<u64>,
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

/// The answer of `POST /mixture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixtureAck {
    /// Version of the schedule that holds the new weights.
    pub version: u64,
    /// First step that uses them.
    pub effective_step: u64,
}

/// The body of `POST /drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    /// The worker to drain (its id, as `GET /status` lists it).
    pub worker: u64,
}

/// The answer of `POST /drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAck {
    /// The worker that leaves at the next checkpointed boundary.
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
