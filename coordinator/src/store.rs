//! The durable job store: what the coordinator must not lose, behind one trait ([`JobStore`])
//! with two backends — etcd v3 ([`EtcdStore`], cluster mode) and a state directory
//! ([`DirStore`], the embedded single-machine default). One conformance suite
//! ([`conformance`]) runs against both.
//!
//! What it holds: jobs with their resolved specs and states, the queue (priority, then
//! submission order), mixture schedule versions, committed checkpoints and an append-only audit
//! trail that every change writes in the same commit.
//!
//! Guarantees, on both backends:
//! - A call that returns `Ok` is durable (etcd: committed by the cluster; state dir: written,
//!   fsynced and renamed), so the API acknowledges a submission only after [`JobStore::put_job`].
//! - A submission with an idempotency key already stored returns the job it made; the same
//!   key with a different submission is refused ([`StoreError::IdempotencyConflict`]).
//! - Writes are fenced: a writer first takes the store ([`JobStore::acquire`]) and every write
//!   presents its [`Fence`]; once another holder took over (or the holder's etcd lease
//!   expired), the old fence is refused ([`StoreError::Fenced`]) and nothing is written.
//!   Reads need no fence.

mod dir;
mod error;
mod etcd;
mod etcd_access;
mod types;

pub mod conformance;

use std::future::Future;

pub use dir::{DirLeadership, DirStore};
pub(crate) use error::etcd_error;
pub use error::{StoreError, StoreResult};
pub use etcd::{EtcdConfig, EtcdLeadership, EtcdStore, LeaseState};
pub(crate) use etcd::{decode as decode_kv, encode as encode_value, revoke_lease, spawn_keepalive as spawn_lease_keepalive};
pub use etcd_access::EtcdAccess;
pub(crate) use etcd_access::connect as etcd_connect;
pub(crate) use types::check_name;
pub use types::{
    AuditEntry, AuditEvent, CheckpointRecord, Fence, HolderId, IdempotencyKey, JobId, JobRecord, JobState, NewJob, Priority, QueueEntry,
    Submitted, WorkerRange,
};

use tessera_protocol::ledger::ScheduleVersion;

/// Holding the store: keeps the holder's claim alive (etcd lease keep-alive, state-dir lock)
/// until resigned or dropped.
pub trait Leadership: Send + Sync {
    /// The fence every write of this holder presents.
    fn fence(&self) -> &Fence;

    /// Gives the store up at once (dropping it gives it up too: at once for the state dir,
    /// after the lease TTL for etcd, as a crash would).
    fn resign(self) -> impl Future<Output = StoreResult<()>> + Send;
}

/// The coordinator's durable state. Every method is one durable step; see the module doc.
pub trait JobStore: Send + Sync {
    /// The claim [`JobStore::acquire`] returns.
    type Leadership: Leadership;

    /// Takes the store for `holder`; [`StoreError::Held`] while another live holder has it.
    fn acquire(&self, holder: HolderId) -> impl Future<Output = StoreResult<Self::Leadership>> + Send;

    /// Stores a new job (queued) and returns its id, or the id an earlier submission with the
    /// same idempotency key got.
    fn put_job(&self, fence: &Fence, job: NewJob) -> impl Future<Output = StoreResult<Submitted>> + Send;

    /// The job `id`, if stored.
    fn job(&self, id: JobId) -> impl Future<Output = StoreResult<Option<JobRecord>>> + Send;

    /// Every stored job, by id.
    fn jobs(&self) -> impl Future<Output = StoreResult<Vec<JobRecord>>> + Send;

    /// Moves job `id` from state `from` to `to` ([`StoreError::StateConflict`] when it is not
    /// in `from`); leaving `Queued` takes it off the queue, entering it puts it back.
    fn set_state(&self, fence: &Fence, id: JobId, from: JobState, to: JobState) -> impl Future<Output = StoreResult<()>> + Send;

    /// Sets job `id`'s priority (its queue place follows).
    fn set_priority(&self, fence: &Fence, id: JobId, priority: Priority) -> impl Future<Output = StoreResult<()>> + Send;

    /// Sets job `id`'s note: how it ended, or why it could not start.
    fn set_note(&self, fence: &Fence, id: JobId, note: String) -> impl Future<Output = StoreResult<()>> + Send;

    /// The queued jobs in queue order (see [`QueueEntry::sort`]).
    fn queue(&self) -> impl Future<Output = StoreResult<Vec<QueueEntry>>> + Send;

    /// Stores a mixture schedule version of job `id` (append-only: a stored version number is
    /// refused with [`StoreError::Duplicate`]).
    fn put_schedule_version(&self, fence: &Fence, id: JobId, version: ScheduleVersion) -> impl Future<Output = StoreResult<()>> + Send;

    /// Job `id`'s schedule versions, by version number.
    fn schedule_versions(&self, id: JobId) -> impl Future<Output = StoreResult<Vec<ScheduleVersion>>> + Send;

    /// Records a committed checkpoint of job `id` (append-only, by step).
    fn commit_checkpoint(&self, fence: &Fence, id: JobId, checkpoint: CheckpointRecord) -> impl Future<Output = StoreResult<()>> + Send;

    /// Job `id`'s committed checkpoints, by step.
    fn checkpoints(&self, id: JobId) -> impl Future<Output = StoreResult<Vec<CheckpointRecord>>> + Send;

    /// The audit trail, oldest first.
    fn audit(&self) -> impl Future<Output = StoreResult<Vec<AuditEntry>>> + Send;
}
