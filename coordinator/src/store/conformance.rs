//! The store conformance suite: one set of checks that every [`JobStore`] backend must pass,
//! run by `coordinator/tests/store.rs` on etcd (a real server) and on a state directory. A
//! backend provides a [`Backend`]; each check panics like a test on a wrong value and returns
//! store errors as errors.

use std::future::Future;
use std::path::PathBuf;

use tessera_protocol::ledger::ScheduleVersion;
use tessera_protocol::messages::JobSpec;

use super::{
    AuditEvent, CheckpointRecord, HolderId, IdempotencyKey, JobId, JobState, JobStore, Leadership, NewJob, Priority, StoreError,
    StoreResult, WorkerRange,
};

/// Opens stores for the suite.
pub trait Backend {
    /// The store type.
    type Store: JobStore;

    /// A store over fresh, empty state.
    fn fresh(&mut self) -> impl Future<Output = StoreResult<Self::Store>>;

    /// Drops `store`, crashes and restarts the medium under it where there is one (etcd is
    /// killed with SIGKILL and started again), and opens the same state again.
    fn restart(&mut self, store: Self::Store) -> impl Future<Output = StoreResult<Self::Store>>;
}

/// Every check but [`durable_across_restart`] (which may disturb a shared server).
pub async fn run<B: Backend>(backend: &mut B) -> StoreResult<()> {
    submit_and_read(&backend.fresh().await?).await?;
    idempotent_submit(&backend.fresh().await?).await?;
    queue_order_and_states(&backend.fresh().await?).await?;
    schedules_and_checkpoints(&backend.fresh().await?).await?;
    stale_holder_is_fenced(&backend.fresh().await?).await?;
    Ok(())
}

/// A submission named `name` with a one-field spec (the store keeps specs opaque).
pub fn new_job(name: &str, priority: i32, key: Option<&str>) -> NewJob {
    NewJob {
        name: name.into(),
        spec: JobSpec { token_modalities: Vec::new(), job: format!("{{\"name\":\"{name}\"}}") },
        priority: Priority(priority),
        workers: WorkerRange { min: 1, max: 3 },
        idempotency_key: key.map(|k| IdempotencyKey::new(k).expect("a valid key")),
        submitted_ms: 1_700_000_000_000,
    }
}

/// Submissions get increasing ids, read back equal; unknown ids are absent.
pub async fn submit_and_read<S: JobStore>(store: &S) -> StoreResult<()> {
    let lead = store.acquire(HolderId("a".into())).await?;
    let a = store.put_job(lead.fence(), new_job("a", 0, None)).await?;
    let b = store.put_job(lead.fence(), new_job("b", 0, None)).await?;
    assert!(a.created && b.created && a.id < b.id, "{a:?} {b:?}");
    let read = store.job(b.id).await?.expect("job b stored");
    assert_eq!((read.id, read.state, &read.job), (b.id, JobState::Queued, &new_job("b", 0, None)));
    let all = store.jobs().await?;
    assert_eq!(all.iter().map(|j| j.id).collect::<Vec<_>>(), vec![a.id, b.id]);
    assert!(store.job(JobId(b.id.0 + 100)).await?.is_none());
    let events: Vec<AuditEvent> = store.audit().await?.into_iter().map(|e| e.event).collect();
    assert_eq!(events, vec![AuditEvent::LeaderAcquired, AuditEvent::JobSubmitted { job: a.id }, AuditEvent::JobSubmitted { job: b.id }]);
    lead.resign().await
}

/// A retried submission with the same key returns the first job; never a second one.
pub async fn idempotent_submit<S: JobStore>(store: &S) -> StoreResult<()> {
    let lead = store.acquire(HolderId("a".into())).await?;
    let first = store.put_job(lead.fence(), new_job("x", 1, Some("retry-1"))).await?;
    let mut retry = new_job("x", 1, Some("retry-1"));
    retry.submitted_ms += 5_000;
    let again = store.put_job(lead.fence(), retry).await?;
    assert_eq!((again.id, again.created), (first.id, false));
    let other = store.put_job(lead.fence(), new_job("x", 1, Some("retry-2"))).await?;
    assert!(other.created && other.id != first.id);
    assert_eq!(store.jobs().await?.len(), 2, "a retry must not make a second job");
    match store.put_job(lead.fence(), new_job("changed", 1, Some("retry-1"))).await {
        Err(StoreError::IdempotencyConflict { job, .. }) => assert_eq!(job, first.id),
        other => panic!("same key, other spec: {other:?}"),
    }
    assert!(matches!(IdempotencyKey::new("../etc"), Err(StoreError::InvalidName { .. })));
    assert!(matches!(IdempotencyKey::new(""), Err(StoreError::InvalidName { .. })));
    lead.resign().await
}

/// Queue: priority first, then submission order; leaving `Queued` leaves the queue; state
/// changes are compare-and-set.
pub async fn queue_order_and_states<S: JobStore>(store: &S) -> StoreResult<()> {
    let lead = store.acquire(HolderId("a".into())).await?;
    let f = lead.fence();
    let mut ids = Vec::new();
    for (name, priority) in [("a", 0), ("b", 5), ("c", 0), ("d", 5)] {
        ids.push(store.put_job(f, new_job(name, priority, None)).await?.id);
    }
    let [a, b, c, d] = ids[..] else { unreachable!() };
    let order = |q: Vec<super::QueueEntry>| q.into_iter().map(|e| e.job).collect::<Vec<_>>();
    assert_eq!(order(store.queue().await?), vec![b, d, a, c]);
    store.set_priority(f, c, Priority(9)).await?;
    assert_eq!(order(store.queue().await?), vec![c, b, d, a]);
    store.set_state(f, b, JobState::Queued, JobState::Running).await?;
    assert_eq!(order(store.queue().await?), vec![c, d, a]);
    match store.set_state(f, b, JobState::Queued, JobState::Cancelled).await {
        Err(StoreError::StateConflict { job, expected, found }) => {
            assert_eq!((job, expected, found), (b, JobState::Queued, JobState::Running))
        }
        other => panic!("stale state change: {other:?}"),
    }
    // Preempted back into the queue: it keeps its submission place.
    store.set_state(f, b, JobState::Running, JobState::Queued).await?;
    assert_eq!(order(store.queue().await?), vec![c, b, d, a]);
    assert_eq!(store.job(a).await?.expect("a").note, None);
    store.set_state(f, a, JobState::Queued, JobState::Cancelled).await?;
    store.set_note(f, a, "cancelled while queued".into()).await?;
    let a_record = store.job(a).await?.expect("a");
    assert_eq!((a_record.state, a_record.note.as_deref()), (JobState::Cancelled, Some("cancelled while queued")));
    assert!(matches!(store.set_priority(f, JobId(999), Priority(1)).await, Err(StoreError::UnknownJob { .. })));
    assert!(matches!(store.set_note(f, JobId(999), "x".into()).await, Err(StoreError::UnknownJob { .. })));
    let audit = store.audit().await?;
    let last_two: Vec<_> = audit[audit.len() - 2..].iter().map(|e| e.event.clone()).collect();
    assert_eq!(
        last_two,
        vec![AuditEvent::StateChanged { job: a, from: JobState::Queued, to: JobState::Cancelled }, AuditEvent::NoteSet { job: a }]
    );
    lead.resign().await
}

/// Schedule versions and checkpoints: stored per job in order, append-only.
pub async fn schedules_and_checkpoints<S: JobStore>(store: &S) -> StoreResult<()> {
    let lead = store.acquire(HolderId("a".into())).await?;
    let f = lead.fence();
    let job = store.put_job(f, new_job("j", 0, None)).await?.id;
    let v = |version: u32, start_index: u64| ScheduleVersion { version, start_index, weights: vec![1.0, version as f64] };
    for version in [v(0, 0), v(1, 640), v(2, 1280)] {
        store.put_schedule_version(f, job, version).await?;
    }
    assert_eq!(store.schedule_versions(job).await?, vec![v(0, 0), v(1, 640), v(2, 1280)]);
    assert!(matches!(store.put_schedule_version(f, job, v(1, 700)).await, Err(StoreError::Duplicate { .. })));
    let ck =
        |step: u64| CheckpointRecord { step, generation: 1, dir: PathBuf::from(format!("/ck/{step}")), manifest_sha256: "ab".repeat(32) };
    // Steps past 9 check numeric (not text) order.
    for step in [5, 10, 100] {
        store.commit_checkpoint(f, job, ck(step)).await?;
    }
    assert_eq!(store.checkpoints(job).await?, vec![ck(5), ck(10), ck(100)]);
    assert!(matches!(store.commit_checkpoint(f, job, ck(10)).await, Err(StoreError::Duplicate { .. })));
    assert!(matches!(store.commit_checkpoint(f, JobId(999), ck(1)).await, Err(StoreError::UnknownJob { .. })));
    assert!(store.checkpoints(JobId(999)).await?.is_empty());
    lead.resign().await
}

/// One holder at a time; once a successor holds the store, the old fence writes nothing.
pub async fn stale_holder_is_fenced<S: JobStore>(store: &S) -> StoreResult<()> {
    let a = store.acquire(HolderId("a".into())).await?;
    match store.acquire(HolderId("b".into())).await {
        Err(StoreError::Held { holder }) => assert_eq!(holder, HolderId("a".into())),
        other => panic!("a second holder while the first holds: {:?}", other.map(|l| l.fence().clone())),
    }
    let stale = a.fence().clone();
    let job = store.put_job(&stale, new_job("before", 0, None)).await?.id;
    a.resign().await?;
    let b = store.acquire(HolderId("b".into())).await?;
    assert!(b.fence().token() > stale.token(), "fence tokens increase");
    let audit_before = store.audit().await?.len();
    let refused = |r: StoreResult<()>| matches!(r, Err(StoreError::Fenced { token, .. }) if token == stale.token());
    assert!(matches!(store.put_job(&stale, new_job("late", 0, None)).await, Err(StoreError::Fenced { .. })));
    assert!(refused(store.set_state(&stale, job, JobState::Queued, JobState::Running).await));
    assert!(refused(store.set_priority(&stale, job, Priority(3)).await));
    assert!(refused(store.set_note(&stale, job, "late".into()).await));
    let ck = CheckpointRecord { step: 1, generation: 1, dir: PathBuf::from("/ck"), manifest_sha256: String::new() };
    assert!(refused(store.commit_checkpoint(&stale, job, ck.clone()).await));
    let version = ScheduleVersion { version: 0, start_index: 0, weights: vec![1.0] };
    assert!(refused(store.put_schedule_version(&stale, job, version).await));
    assert_eq!(store.jobs().await?.len(), 1, "the deposed holder made no job");
    assert_eq!(store.job(job).await?.expect("job").state, JobState::Queued);
    assert_eq!(store.audit().await?.len(), audit_before, "refused writes leave no audit entry");
    // The successor writes.
    store.commit_checkpoint(b.fence(), job, ck).await?;
    let holders: Vec<String> = store.audit().await?.iter().map(|e| e.holder.0.clone()).collect();
    assert_eq!(holders.last().map(String::as_str), Some("b"));
    b.resign().await
}

/// Everything written before a restart (or re-open) is there after it, and writing goes on
/// with fresh ids.
pub async fn durable_across_restart<B: Backend>(backend: &mut B) -> StoreResult<()> {
    let store = backend.fresh().await?;
    let lead = store.acquire(HolderId("a".into())).await?;
    let f = lead.fence();
    let a = store.put_job(f, new_job("a", 2, Some("k1"))).await?.id;
    let b = store.put_job(f, new_job("b", 0, None)).await?.id;
    store.set_state(f, a, JobState::Queued, JobState::Running).await?;
    store.put_schedule_version(f, a, ScheduleVersion { version: 0, start_index: 0, weights: vec![1.0] }).await?;
    let ck = CheckpointRecord { step: 7, generation: 2, dir: PathBuf::from("/ck/7"), manifest_sha256: "cd".repeat(32) };
    store.commit_checkpoint(f, a, ck.clone()).await?;
    let jobs = store.jobs().await?;
    let audit = store.audit().await?;
    lead.resign().await?;

    let store = backend.restart(store).await?;
    assert_eq!(store.jobs().await?, jobs);
    assert_eq!(store.audit().await?, audit);
    assert_eq!(store.queue().await?.iter().map(|e| e.job).collect::<Vec<_>>(), vec![b]);
    assert_eq!(store.checkpoints(a).await?, vec![ck]);
    assert_eq!(store.schedule_versions(a).await?.len(), 1);
    let lead = store.acquire(HolderId("a2".into())).await?;
    let again = store.put_job(lead.fence(), new_job("a", 2, Some("k1"))).await?;
    assert_eq!((again.id, again.created), (a, false), "idempotency keys survive a restart");
    let c = store.put_job(lead.fence(), new_job("c", 0, None)).await?;
    assert!(c.created && c.id > b, "ids go on after a restart: {c:?}");
    lead.resign().await
}
