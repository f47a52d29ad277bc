//! The cluster API's request and reply bodies (JSON), shared by the service and the CLI.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::pool::{Assignment, Beat};
use crate::registry::WorkerAd;
use crate::store::{CheckpointRecord, JobId, JobState, WorkerRange};
use tessera_protocol::messages::JobSpec;
use tessera_protocol::reply::JobStatus;

/// `POST /v1/jobs`: a job config as its TOML text, resolved by the service against
/// `base_dir` (where the file was: its relative paths are relative to it, on the shared
/// filesystem).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The config's text.
    pub toml: String,
    /// The config's file name (named in errors).
    pub origin: String,
    /// The directory its relative paths are relative to (absolute).
    pub base_dir: PathBuf,
    /// Display name (default: the config's `job.name`).
    #[serde(default)]
    pub name: Option<String>,
    /// Worker counts (default: 1..=1).
    #[serde(default)]
    pub workers: Option<WorkerRange>,
    /// Queue priority (higher first).
    #[serde(default)]
    pub priority: i32,
    /// Makes a retried submission return the job it already made.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The answer to a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitReply {
    /// The job's id.
    pub id: JobId,
    /// `false` when the idempotency key found an earlier submission.
    pub created: bool,
}

/// A job as `tessera jobs` and `tessera status JOB` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterJob {
    /// Its id.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Its state in the store.
    pub state: JobState,
    /// Queue priority.
    pub priority: i32,
    /// Worker counts it runs with.
    pub workers: WorkerRange,
    /// Pool workers it holds now.
    pub holds: u32,
    /// Steps done: the live step while it runs, else its newest committed checkpoint's.
    pub step: Option<u64>,
    /// Steps of the whole job.
    pub total_steps: u64,
    /// Why it is not running (queued jobs).
    pub pending: Option<String>,
    /// How it ended, or what went wrong starting it.
    pub note: Option<String>,
    /// Its output directory (train log, events, checkpoints beneath).
    pub output_dir: PathBuf,
    /// Submission time (ms since the Unix epoch).
    pub submitted_ms: u64,
    /// The running job's coordinator node (where its workers link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<std::net::SocketAddr>,
    /// The live status of a running job (`tessera status JOB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<JobStatus>,
}

/// `POST /v1/workers/NAME`: a worker's report (also its heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// What it offers and what it does.
    pub beat: Beat,
    /// An idle worker waits this long (ms, at most 10 s) for an assignment.
    #[serde(default)]
    pub wait_ms: u64,
}

/// The answer to a worker's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReply {
    /// The job to join, if one was given to it (to a worker that keeps orphaned state of
    /// that job: the job's new coordinator, which adopts it).
    pub assignment: Option<Assignment>,
    /// The worker's orphaned state will not be adopted: drop it and return to the pool.
    #[serde(default)]
    pub release: bool,
}

/// A pooled worker as `GET /v1/workers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PooledWorker {
    /// Its name.
    pub name: String,
    /// What it offers.
    pub ad: WorkerAd,
    /// The job it serves.
    pub job: Option<JobId>,
}

/// `GET /v1/jobs/ID/checkpoints`: what `tessera export JOB` needs to consolidate a job's
/// weights on the shared filesystem: its resolved spec and its committed checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCheckpoints {
    /// The job.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Its resolved spec (model config, checkpoint directory).
    pub spec: JobSpec,
    /// Its checkpoints as the store recorded them at commit (fenced), by step.
    pub checkpoints: Vec<CheckpointRecord>,
}
