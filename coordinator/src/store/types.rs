//! What the store keeps: typed ids, the job record, queue entries, committed checkpoints, the
//! audit trail, and the fence a writer presents.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tessera_protocol::messages::JobSpec;

use super::error::{StoreError, StoreResult};

/// A job of the cluster, numbered by the store from 1 in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

impl JobId {
    /// A job id as users type it and [`fmt::Display`] writes it: `job-N`, or plain `N`.
    pub fn parse(text: &str) -> Option<Self> {
        text.strip_prefix("job-").unwrap_or(text).parse::<u64>().ok().map(JobId)
    }

    /// The zero-padded form used in keys and file names, so that they sort by id.
    pub fn key(self) -> String {
        format!("{:020}", self.0)
    }
}

/// Checks a caller-chosen name that becomes part of a key or a file name.
pub(crate) fn check_name(kind: &'static str, value: &str) -> StoreResult<()> {
    let ok = (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    // "." and ".." would name directories in the state-dir backend.
    if ok && value != "." && value != ".." { Ok(()) } else { Err(StoreError::InvalidName { kind, value: value.into() }) }
}

/// A client-chosen key that makes a retried submission return the job it already made.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates `key`: 1 to 128 characters of `[A-Za-z0-9._-]` (it becomes part of a key).
    pub fn new(key: &str) -> StoreResult<Self> {
        check_name("idempotency key", key)?;
        Ok(Self(key.into()))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who holds the store (a coordinator instance, e.g. `coordinator@host:pid`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HolderId(pub String);

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Queue priority: higher runs first; FIFO within a priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Priority(pub i32);

/// The worker counts a job runs with: it starts at `min`, grows to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRange {
    /// Fewest workers the job runs with.
    pub min: u32,
    /// Most workers the job takes.
    pub max: u32,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting in the queue.
    Queued,
    /// Holding workers and training.
    Running,
    /// Trained to its last step.
    Finished,
    /// Stopped by an error it cannot recover from.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

/// A submission, as the API hands it to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// Display name.
    pub name: String,
    /// The resolved job.
    pub spec: JobSpec,
    /// Queue priority.
    pub priority: Priority,
    /// Worker counts.
    pub workers: WorkerRange,
    /// Makes a retried submission idempotent.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Submission time (ms since the Unix epoch), as the API saw it.
    pub submitted_ms: u64,
}

impl NewJob {
    /// Whether `other` is the same submission (retries differ only in their time).
    pub fn same_submission(&self, other: &NewJob) -> bool {
        (&self.name, &self.spec, self.priority, self.workers) == (&other.name, &other.spec, other.priority, other.workers)
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// Its state.
    pub state: JobState,
    /// The submission (with the priority now in force).
    pub job: NewJob,
    /// How it ended, or why it could not start ("finished at step 6"), kept across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The outcome of [`super::JobStore::put_job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// The job's id.
    pub id: JobId,
    /// `false` when an idempotency key found an earlier submission.
    pub created: bool,
}

/// A queued job's place: higher priority first, then submission order (the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The job.
    pub job: JobId,
    /// Its priority.
    pub priority: Priority,
}

impl QueueEntry {
    /// Sorts entries into queue order.
    pub fn sort(entries: &mut [QueueEntry]) {
        entries.sort_by_key(|e| (std::cmp::Reverse(e.priority), e.job));
    }
}

/// A checkpoint the coordinator committed (its files on the shared filesystem).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Training step it holds.
    pub step: u64,
    /// Generation that wrote it.
    pub generation: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// SHA-256 (hex) of its manifest, so a replaced directory is noticed.
    pub manifest_sha256: String,
}

/// What an audit entry records; the store writes one with every change it makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AuditEvent {
    /// A holder took the store.
    LeaderAcquired,
    /// A job was submitted.
    JobSubmitted {
        /// The job.
        job: JobId,
    },
    /// A job changed state.
    StateChanged {
        /// The job.
        job: JobId,
        /// Before.
        from: JobState,
        /// After.
        to: JobState,
    },
    /// A job's priority changed.
    PriorityChanged {
        /// The job.
        job: JobId,
        /// Before.
        from: Priority,
        /// After.
        to: Priority,
    },
    /// A mixture schedule version was stored.
    ScheduleVersionAdded {
        /// The job.
        job: JobId,
        /// The version.
        version: u32,
    },
    /// A job's note (its outcome) was set.
    NoteSet {
        /// The job.
        job: JobId,
    },
    /// A checkpoint was committed.
    CheckpointCommitted {
        /// The job.
        job: JobId,
        /// Its step.
        step: u64,
    },
}

/// One line of the append-only audit trail, ordered by (fence token, seq).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Fence token of the writer (increases with every new holder).
    pub token: u64,
    /// Sequence number within that holder's writes.
    pub seq: u64,
    /// The writer.
    pub holder: HolderId,
    /// Wall-clock time of the write (ms since the Unix epoch).
    pub ts_ms: u64,
    /// What happened.
    pub event: AuditEvent,
}

/// The proof of holding the store that every write presents. A write is committed only while
/// the fence is current (the etcd leader key created at `token` still exists; the state dir's
/// epoch is still `token`), so a deposed holder cannot commit.
#[derive(Debug, Clone)]
pub struct Fence {
    holder: HolderId,
    token: u64,
    seq: Arc<AtomicU64>,
}

impl Fence {
    /// A fence for `holder` at `token` (made by a backend when it grants the store).
    pub(crate) fn new(holder: HolderId, token: u64) -> Self {
        Self { holder, token, seq: Arc::new(AtomicU64::new(0)) }
    }

    /// The holder.
    pub fn holder(&self) -> &HolderId {
        &self.holder
    }

    /// The token: increases with every grant.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The audit entry of the next write.
    pub(crate) fn audit(&self, event: AuditEvent) -> AuditEntry {
        let ts_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        AuditEntry { token: self.token, seq: self.seq.fetch_add(1, Ordering::Relaxed), holder: self.holder.clone(), ts_ms, event }
    }

    /// The refusal for this fence.
    pub(crate) fn refused(&self) -> StoreError {
        StoreError::Fenced { holder: self.holder.clone(), token: self.token }
    }
}

#[cfg(test)]
mod tests {
    use super::JobId;

    #[test]
    fn job_ids_parse_as_they_are_written() {
        assert_eq!(JobId::parse("job-7"), Some(JobId(7)));
        assert_eq!(JobId::parse("7"), Some(JobId(7)));
        assert_eq!(JobId::parse(&JobId(42).to_string()), Some(JobId(42)));
        assert_eq!(JobId::parse("job-"), None);
        assert_eq!(JobId::parse("jobs-7"), None);
        assert_eq!(JobId::parse("-1"), None);
    }
}
