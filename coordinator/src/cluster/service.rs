//! The coordinator service: the durable store, the worker pool and the running jobs, and the
//! one routine that applies the queue's decisions ([`crate::control::queue::schedule`]).
//! Every change (a submission, a worker reporting in or going silent, a job ending, a cancel)
//! ends in [`Service::reschedule`]; nothing else starts or grows a job.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tessera_protocol::ResolvedJob;
use tessera_protocol::api_error::ApiError;
use tessera_protocol::messages::{CoordinatorMsg, JobSpec, PoolLoss, Wire};
use tessera_protocol::report::now_ms;

use super::host::{self, HostOptions, HostedJob};
use super::pool::{Evicted, Pool};
use super::targets::Targets;
use super::types::{ClusterJob, JobCheckpoints, PooledWorker, SubmitReply, SubmitRequest, WorkerReply, WorkerReport};
use crate::actor::JobOutcome;
use crate::control::Adoption;
use crate::control::queue::{Decision, JobView, PendingReason, Phase, schedule};
use crate::control::recovery::{Recovery, recover};
use crate::metrics::FlopsModel;
use crate::registry::WorkerName;
use crate::store::{Fence, IdempotencyKey, JobId, JobRecord, JobState, JobStore, Leadership, NewJob, Priority, StoreError, WorkerRange};
use tessera_protocol::node::CoordinatorNode;

/// Model FLOPs of a job (the binary computes them with the model crate, which this crate does
/// not link).
pub type FlopsFn = Arc<dyn Fn(&ResolvedJob) -> Option<FlopsModel> + Send + Sync>;

/// How the service runs.
#[derive(Debug, Clone, Copy)]
pub struct ServiceOptions {
    /// How jobs are hosted.
    pub host: HostOptions,
    /// A pooled worker not heard from for this long (ms) is lost to the pool.
    pub pool_timeout_ms: u64,
    /// A job that was running when its coordinator died waits this long (ms) for every rank
    /// of its generation to report its kept state, to be adopted with no step redone; then it
    /// restores its newest checkpoint (0: at once).
    pub reattach_wait_ms: u64,
}

/// What the service knows beyond the store (lost on restart; rebuilt from reports).
#[derive(Default)]
struct Inner {
    pool: Pool,
    running: BTreeMap<JobId, HostedJob>,
    pending: BTreeMap<JobId, PendingReason>,
    cancelling: BTreeSet<JobId>,
    notes: BTreeMap<JobId, String>,
    /// Jobs recovered from the store, waiting for their ranks' orphaned state: since when (ms).
    recovering: BTreeMap<JobId, u64>,
    /// The worker counts asked of running jobs' coordinators (Q4 shrinks, users' scales).
    targets: Targets,
}

/// The service (shared by the API and its background tasks).
pub struct Service<S: JobStore> {
    store: Arc<S>,
    fence: Fence,
    _leadership: S::Leadership,
    options: ServiceOptions,
    flops: FlopsFn,
    inner: tokio::sync::Mutex<Inner>,
    assigned: tokio::sync::Notify,
    /// Outcomes of ended jobs, handled by one task (a job's end starts others: a loop, not a
    /// recursion of tasks).
    outcomes: tokio::sync::mpsc::UnboundedSender<(JobId, JobOutcome)>,
    /// The actor node every job's coordinator and workers use, bound when the first job starts
    /// (one per process: see [`CoordinatorNode::watch_sessions`]).
    node: tokio::sync::OnceCell<Arc<CoordinatorNode>>,
}

fn store_err(e: StoreError) -> ApiError {
    match e {
        StoreError::IdempotencyConflict { .. } => ApiError::Conflict { reason: e.to_string() },
        StoreError::InvalidName { kind, .. } => ApiError::bad(kind.replace(' ', "_"), e.to_string()),
        other => ApiError::Unavailable { reason: format!("the job store: {other}") },
    }
}

impl<S: JobStore + 'static> Service<S> {
    /// Takes the store as `leadership` and recovers its jobs: a job the store says is running
    /// was cut off with its coordinator. It is adopted by its workers if every rank of its
    /// generation reports the state it kept within `reattach_wait_ms` (no step redone), and
    /// otherwise queues again (it resumes from its newest committed checkpoint when workers
    /// are free).
    pub async fn start(
        store: S,
        leadership: S::Leadership,
        options: ServiceOptions,
        flops: FlopsFn,
    ) -> crate::store::StoreResult<Arc<Self>> {
        let fence = leadership.fence().clone();
        let mut inner = Inner::default();
        for job in store.jobs().await? {
            if job.state == JobState::Running {
                store.set_state(&fence, job.id, JobState::Running, JobState::Queued).await?;
                if options.reattach_wait_ms > 0 {
                    inner.recovering.insert(job.id, now_ms());
                    inner.notes.insert(job.id, "recovering: waiting for its workers to re-attach".into());
                }
                tessera_protocol::say!(
                    "[service] {} '{}' was running when its coordinator stopped: {}",
                    job.id,
                    job.job.name,
                    if options.reattach_wait_ms > 0 {
                        format!("waiting up to {} ms for its workers' state, else it queues again", options.reattach_wait_ms)
                    } else {
                        "queued again".into()
                    }
                );
            }
        }
        let (outcomes, mut ended) = tokio::sync::mpsc::unbounded_channel();
        let service = Arc::new(Self {
            store: Arc::new(store),
            fence,
            _leadership: leadership,
            options,
            flops,
            inner: tokio::sync::Mutex::new(inner),
            assigned: tokio::sync::Notify::new(),
            outcomes,
            node: tokio::sync::OnceCell::new(),
        });
        let me = Arc::downgrade(&service);
        tokio::spawn(async move {
            while let Some((id, outcome)) = ended.recv().await {
                let Some(service) = me.upgrade() else { break };
                service.ended(id, outcome).await;
            }
        });
        let tick = Arc::downgrade(&service);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(service) = tick.upgrade() else { break };
                service.evict_silent().await;
                if !service.inner.lock().await.recovering.is_empty() {
                    service.reschedule().await;
                }
            }
        });
        service.reschedule().await;
        Ok(service)
    }

    /// Resolves and stores a submission (acknowledged only once stored), then schedules.
    pub async fn submit(self: &Arc<Self>, req: SubmitRequest) -> Result<SubmitReply, ApiError> {
        let cfg = tessera_protocol::job::JobConfig::from_toml(&req.toml, &req.origin).map_err(|e| ApiError::bad("toml", e.to_string()))?;
        let job = ResolvedJob::resolve(&cfg, &req.origin, &req.base_dir).map_err(|e| ApiError::bad("toml", e.to_string()))?;
        let workers = req.workers.unwrap_or(WorkerRange { min: 1, max: 1 });
        if workers.min == 0 || workers.max < workers.min {
            return Err(ApiError::bad("workers", format!("{}:{} is not MIN:MAX with 1 <= MIN <= MAX", workers.min, workers.max)));
        }
        let idempotency_key = req.idempotency_key.as_deref().map(IdempotencyKey::new).transpose().map_err(store_err)?;
        let new = NewJob {
            name: req.name.unwrap_or_else(|| job.name.clone()),
            spec: JobSpec::new(&job),
            priority: Priority(req.priority),
            workers,
            idempotency_key,
            submitted_ms: now_ms(),
        };
        let submitted = self.store.put_job(&self.fence, new).await.map_err(store_err)?;
        if submitted.created {
            tessera_protocol::say!("[service] {} submitted: '{}', workers {}:{}", submitted.id, job.name, workers.min, workers.max);
        }
        self.reschedule().await;
        Ok(SubmitReply { id: submitted.id, created: submitted.created })
    }

    async fn record(&self, id: JobId) -> Result<JobRecord, ApiError> {
        self.store.job(id).await.map_err(store_err)?.ok_or_else(|| ApiError::NotFound { what: id.to_string() })
    }

    /// Every job, by id.
    pub async fn jobs(&self) -> Result<Vec<ClusterJob>, ApiError> {
        let records = self.store.jobs().await.map_err(store_err)?;
        let inner = self.inner.lock().await;
        Ok(records.iter().map(|r| view(r, &inner)).collect())
    }

    /// One job, with its live status while it runs.
    pub async fn job(&self, id: JobId) -> Result<ClusterJob, ApiError> {
        let record = self.record(id).await?;
        let (mut job, bridge) = {
            let inner = self.inner.lock().await;
            (view(&record, &inner), inner.running.get(&id).map(|h| Arc::clone(&h.bridge)))
        };
        if let Some(bridge) = bridge {
            use crate::api::JobControl;
            if let Ok(status) = bridge.status().await {
                job.step = Some(status.step);
                job.live = Some(status);
            }
        }
        Ok(job)
    }

    /// Job `id`'s spec and committed checkpoints (for `tessera export JOB`), in any state.
    pub async fn checkpoints(&self, id: JobId) -> Result<JobCheckpoints, ApiError> {
        let record = self.record(id).await?;
        let checkpoints = self.store.checkpoints(id).await.map_err(store_err)?;
        Ok(JobCheckpoints { id, name: record.job.name, spec: record.job.spec, checkpoints })
    }

    /// The running job's API backend, router pieces included.
    pub async fn hosted<T>(&self, id: JobId, f: impl FnOnce(&HostedJob) -> T) -> Result<T, ApiError> {
        let inner = self.inner.lock().await;
        match inner.running.get(&id) {
            Some(h) => Ok(f(h)),
            None => {
                drop(inner);
                let record = self.record(id).await?;
                Err(ApiError::Conflict { reason: format!("{id} is {:?}, not running", record.state) })
            }
        }
    }

    /// A page of job `id`'s per-worker logs (any state: they are files in its output
    /// directory, see [`super::logs`]).
    pub async fn logs(&self, id: JobId, query: super::logs::LogQuery) -> Result<super::logs::LogPage, ApiError> {
        let record = self.record(id).await?;
        let job = record.job.spec.open().map_err(|e| ApiError::Internal { reason: format!("{id}'s stored spec: {e}") })?;
        // Read before the files, so that an ended job with no writer left has nothing after them.
        let writing = self.inner.lock().await.pool.serving(id);
        let read = move || super::logs::read_page(&job.output_dir, &query, record.state, writing);
        match tokio::task::spawn_blocking(read).await {
            Ok(page) => page.map_err(|e| ApiError::Internal { reason: format!("reading {id}'s logs: {e}") }),
            Err(e) => Err(ApiError::Internal { reason: format!("reading {id}'s logs: {e}") }),
        }
    }

    /// Cancels a job: a queued one at once; a running one checkpoints at its next boundary
    /// and stops (its workers return to the pool).
    pub async fn cancel(self: &Arc<Self>, id: JobId) -> Result<ClusterJob, ApiError> {
        let record = self.record(id).await?;
        match record.state {
            JobState::Queued => {
                self.store.set_state(&self.fence, id, JobState::Queued, JobState::Cancelled).await.map_err(store_err)?;
                self.inner.lock().await.pending.remove(&id);
                tessera_protocol::say!("[service] {id} cancelled while queued");
                self.keep_note(id, "cancelled while queued".into()).await;
                self.reschedule().await;
            }
            JobState::Running => {
                let bridge = {
                    let mut inner = self.inner.lock().await;
                    inner.cancelling.insert(id);
                    inner.running.get(&id).map(|h| Arc::clone(&h.bridge))
                };
                if let Some(b) = bridge {
                    b.shutdown().await?;
                }
                tessera_protocol::say!("[service] {id} cancelling: checkpoint at the next step boundary, then stop");
            }
            other => return Err(ApiError::Conflict { reason: format!("{id} has already ended ({other:?})") }),
        }
        self.job(id).await
    }

    /// A worker reports in; an idle one may wait (at most 10 s) for an assignment.
    pub async fn report(self: &Arc<Self>, name: &str, report: WorkerReport) -> Result<WorkerReply, ApiError> {
        let name = WorkerName::new(name).map_err(|e| ApiError::bad("name", e.to_string()))?;
        let idle = report.beat.busy_with.is_none();
        let orphan = report.beat.orphan.is_some();
        let left = {
            let mut inner = self.inner.lock().await;
            let fresh = !inner.pool.list().iter().any(|(n, ..)| *n == name);
            // A worker that trained a job of a coordinator that died is free once it says idle.
            let unstrayed = idle && inner.pool.stray(&name).is_some();
            let left = inner.pool.beat(&name, report.beat, now_ms());
            if fresh {
                tessera_protocol::say!("[service] worker {name} joined the pool");
            }
            if let Some(job) = left {
                tessera_protocol::say!("[service] worker {name} left {job}");
            }
            fresh || unstrayed || left.is_some() || (orphan && !inner.recovering.is_empty())
        };
        if left {
            self.reschedule().await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(report.wait_ms.min(10_000));
        loop {
            let waiting = self.assigned.notified();
            let mut inner = self.inner.lock().await;
            if let Some(a) = inner.pool.take_assignment(&name) {
                return Ok(WorkerReply { assignment: Some(a), release: false });
            }
            // Its kept state will not be adopted, or it trains a job no coordinator runs now.
            let stray = inner.pool.stray(&name).is_some_and(|j| !inner.recovering.contains_key(&j) && !inner.running.contains_key(&j));
            let release = inner.pool.released(&name) || stray;
            drop(inner);
            if !idle || tokio::time::timeout_at(deadline, waiting).await.is_err() {
                return Ok(WorkerReply { assignment: None, release });
            }
        }
    }

    /// The pool's workers.
    pub async fn workers(&self) -> Vec<PooledWorker> {
        let inner = self.inner.lock().await;
        inner.pool.list().into_iter().map(|(n, ad, job)| PooledWorker { name: n.to_string(), ad, job }).collect()
    }

    async fn evict_silent(self: &Arc<Self>) {
        let gone = self.inner.lock().await.pool.evict_silent(now_ms(), self.options.pool_timeout_ms);
        self.lost(gone, &format!("silent for over {} ms", self.options.pool_timeout_ms)).await;
    }

    /// The etcd registry holds `name`'s key (from the registry watch).
    pub async fn registry_joined(&self, name: &WorkerName) {
        self.inner.lock().await.pool.registry_joined(name);
    }

    /// `name`'s registry key is gone (from the registry watch): its lease expired, or it left.
    pub async fn registry_lost(self: &Arc<Self>, name: &WorkerName) {
        let gone = self.inner.lock().await.pool.registry_lost(name);
        self.lost(gone.into_iter().collect(), "lease expired").await;
    }

    /// The registry's members as a (re)started watch read them; see [`Pool::registry_members`].
    pub async fn registry_members(self: &Arc<Self>, members: BTreeSet<WorkerName>) {
        let gone = self.inner.lock().await.pool.registry_members(&members);
        self.lost(gone, "lease expired while the registry was not watched").await;
    }

    /// Logs each worker lost to the pool with `why`, tells the job it served that its member
    /// is lost (it goes on without it at the next boundary instead of waiting for its own
    /// heartbeat timeout), and schedules.
    async fn lost(self: &Arc<Self>, gone: Vec<Evicted>, why: &str) {
        if gone.is_empty() {
            return;
        }
        {
            let inner = self.inner.lock().await;
            for w in &gone {
                let served = w.job.map_or(String::new(), |j| format!(" (it served {j})"));
                tessera_protocol::say!("[service] worker {} lost: {why}{served}", w.name);
                let actor = w.job.and_then(|j| inner.running.get(&j)).map(|h| &h.actor);
                let ip = w.ad.addr.parse::<IpAddr>().ok().or_else(|| w.ad.addr.parse::<SocketAddr>().ok().map(|a| a.ip()));
                if let (Some(actor), Some(ip)) = (actor, ip.filter(|_| w.ad.pid != 0)) {
                    let loss = PoolLoss { ip, pid: w.ad.pid, reason: why.to_string() };
                    // A job that just ended has no actor to tell: nothing is lost then.
                    let _ = actor.cast(CoordinatorMsg::PoolLost(Wire::new(loss)));
                }
            }
        }
        self.reschedule().await;
    }

    /// Applies the queue's decisions to the pool and the jobs.
    pub async fn reschedule(self: &Arc<Self>) {
        // Read under the lock: a pass that read the store before another pass started a job
        // would see it queued and start it twice.
        let mut inner = self.inner.lock().await;
        let records = match self.store.jobs().await {
            Ok(r) => r,
            Err(e) => {
                tessera_protocol::say!("[service] cannot read the job store to schedule: {e}");
                return;
            }
        };
        self.recover_orphans(&mut inner, &records).await;
        let views: Vec<JobView> = records
            .iter()
            .filter(|r| !inner.recovering.contains_key(&r.id))
            .filter_map(|r| {
                let phase = match r.state {
                    JobState::Queued => Phase::Queued,
                    JobState::Running => {
                        let held = inner.pool.held_by(r.id);
                        Phase::Running { workers: held, releasing: inner.targets.releasing(r.id, held) }
                    }
                    _ => return None,
                };
                let range = WorkerRange { min: r.job.workers.min, max: inner.targets.max(r.id, r.job.workers.max).max(r.job.workers.min) };
                Some(JobView { id: r.id, priority: r.job.priority, range, phase })
            })
            .collect();
        let free = inner.pool.free();
        let decisions = schedule(inner.pool.size(), free.len() as u32, &views);
        let mut free = free.into_iter();
        // Targets to ask of running jobs' coordinators, once the lock is let go.
        let mut asks: Vec<(JobId, Arc<crate::actor::ActorBridge>, u32, String)> = Vec::new();
        inner.pending.clear();
        for d in decisions {
            match d {
                Decision::Start { job, workers } => {
                    let Some(record) = records.iter().find(|r| r.id == job) else { continue };
                    match self.launch(record, workers, None).await {
                        Ok(hosted) => {
                            for name in free.by_ref().take(workers as usize) {
                                inner.pool.assign(&name, hosted.assignment.clone());
                            }
                            inner.running.insert(job, hosted);
                        }
                        Err(e) => {
                            tessera_protocol::say!("[service] {job} cannot start: {e}");
                            let note = format!("failed to start: {e}");
                            inner.notes.insert(job, note.clone());
                            if self.store.set_state(&self.fence, job, JobState::Queued, JobState::Failed).await.is_ok() {
                                self.keep_note(job, note).await;
                            }
                        }
                    }
                }
                Decision::Grow { job, by } => {
                    let Some((a, bridge)) = inner.running.get(&job).map(|h| (h.assignment.clone(), Arc::clone(&h.bridge))) else {
                        continue;
                    };
                    let held = inner.pool.held_by(job);
                    if let Some(target) = inner.targets.grow(job, held, by) {
                        asks.push((job, bridge, target, format!("grows by {by}")));
                    }
                    for name in free.by_ref().take(by as usize) {
                        inner.pool.assign(&name, a.clone());
                    }
                }
                Decision::Shrink { job, by, for_job } => {
                    let Some(bridge) = inner.running.get(&job).map(|h| Arc::clone(&h.bridge)) else { continue };
                    let held = inner.pool.held_by(job);
                    let target = inner.targets.shrink(job, held, by);
                    asks.push((job, bridge, target, format!("gives {by} workers to {for_job} (Q4) at its next checkpoint")));
                }
                Decision::Pending { job, reason } => {
                    inner.pending.insert(job, reason);
                }
            }
        }
        drop(inner);
        for (job, bridge, target, why) in asks {
            use crate::api::JobControl;
            match bridge.scale(target as usize).await {
                Ok(_) => tessera_protocol::say!("[service] {job} {why}: asked for {target} workers"),
                Err(e) => {
                    tessera_protocol::say!("[service] {job} {why}: its coordinator refused {target} workers: {e}");
                    self.inner.lock().await.targets.refused(job);
                }
            }
        }
        self.assigned.notify_waiters();
    }

    /// `tessera scale JOB --workers N`: asks the running job's coordinator for `workers`
    /// (refused outside the job's range), then caps the queue's growth of it there.
    pub async fn scale(self: &Arc<Self>, id: JobId, workers: usize) -> Result<crate::api::ScaleAck, ApiError> {
        use crate::api::JobControl;
        let bridge = self.hosted(id, |h| Arc::clone(&h.bridge)).await?;
        let ack = bridge.scale(workers).await?;
        self.inner.lock().await.targets.scaled(id, workers as u32);
        tessera_protocol::say!("[service] {id} scaled to {workers} workers by a user");
        self.reschedule().await;
        Ok(ack)
    }

    /// Decides for every recovered job whether its orphans are adopted (the job starts on them
    /// at once) or it queues to restore (they drop their state); see [`recover`].
    async fn recover_orphans(self: &Arc<Self>, inner: &mut Inner, records: &[JobRecord]) {
        let now = now_ms();
        for (id, since) in inner.recovering.clone() {
            let Some(record) = records.iter().find(|r| r.id == id && r.state == JobState::Queued) else {
                inner.recovering.remove(&id);
                continue;
            };
            let orphans = inner.pool.orphans(id);
            match recover(now, since, self.options.reattach_wait_ms, &orphans) {
                Recovery::Wait => {}
                Recovery::Adopt { adoption, workers } => {
                    inner.recovering.remove(&id);
                    let (generation, step) = (adoption.generation, adoption.step);
                    match self.launch(record, workers.len() as u32, Some(adoption)).await {
                        Ok(hosted) => {
                            for name in &workers {
                                inner.pool.adopt(name, hosted.assignment.clone());
                            }
                            inner.running.insert(id, hosted);
                            inner.notes.insert(id, format!("adopted: generation {generation} goes on from step {step}"));
                            tessera_protocol::say!(
                                "[service] {id}: every rank kept its state; generation {generation} goes on from step {step} on {} workers",
                                workers.len()
                            );
                        }
                        Err(e) => {
                            tessera_protocol::say!("[service] {id} cannot be adopted: {e}; it queues to restore");
                            inner.notes.insert(id, format!("not adopted: {e}"));
                            inner.pool.release_orphans(id);
                        }
                    }
                }
                Recovery::Restore { reported, world } => {
                    inner.recovering.remove(&id);
                    inner.pool.release_orphans(id);
                    inner.notes.insert(id, format!("restoring: {reported} of {world} ranks kept their state"));
                    tessera_protocol::say!(
                        "[service] {id}: {reported} of {world} ranks re-attached in time; it restores its newest checkpoint"
                    );
                }
            }
        }
    }

    /// Marks `record` running and starts its coordinator (adopting `adopt`'s ranks, if given);
    /// a task waits for its outcome.
    async fn launch(self: &Arc<Self>, record: &JobRecord, workers: u32, adopt: Option<Adoption>) -> Result<HostedJob, String> {
        let job = record.job.spec.open().map_err(|e| e.to_string())?;
        self.store.set_state(&self.fence, record.id, JobState::Queued, JobState::Running).await.map_err(|e| e.to_string())?;
        let node = self
            .node
            .get_or_try_init(|| async {
                let bind = std::net::SocketAddr::new(self.options.host.node_ip, 0);
                CoordinatorNode::serve(bind, &host::random_hex()).await.map(Arc::new)
            })
            .await
            .map_err(|e| format!("the service's actor node: {e}"))?;
        let gate = Box::new(super::gate::StoreGate::new(Arc::clone(&self.store), self.fence.clone(), record.id));
        let (hosted, done) = match host::start(
            host::Host { node, options: self.options.host },
            record,
            &job,
            workers,
            (self.flops)(&job),
            gate,
            adopt,
        )
        .await
        {
            Ok(started) => started,
            Err(e) => return Err(e.to_string()),
        };
        tessera_protocol::say!(
            "[service] {} '{}' started on {workers} workers (node {})",
            record.id,
            record.job.name,
            hosted.assignment.node
        );
        let (to, id) = (self.outcomes.clone(), record.id);
        tokio::spawn(async move {
            let outcome = done.await.unwrap_or(JobOutcome::Failed { reason: "its coordinator ended without an outcome".into() });
            let _ = to.send((id, outcome));
        });
        Ok(hosted)
    }

    /// Records how job `id` ended, frees its workers and schedules.
    async fn ended(self: &Arc<Self>, id: JobId, outcome: JobOutcome) {
        let (to, note) = {
            let mut inner = self.inner.lock().await;
            let cancelled = inner.cancelling.remove(&id);
            match &outcome {
                JobOutcome::Finished { step } => (JobState::Finished, format!("finished at step {step}")),
                JobOutcome::Stopped { step, .. } if cancelled => (JobState::Cancelled, format!("cancelled at step {step}")),
                // Stopped without a cancel: the service itself is stopping; the job stays
                // running in the store, and the next coordinator resumes it.
                JobOutcome::Stopped { step, .. } => (JobState::Running, format!("interrupted at step {step}")),
                JobOutcome::Failed { reason } => (JobState::Failed, format!("failed: {reason}")),
            }
        };
        if to != JobState::Running {
            match self.store.set_state(&self.fence, id, JobState::Running, to).await {
                Ok(()) => self.keep_note(id, note.clone()).await,
                Err(e) => tessera_protocol::say!("[service] {id} ended ({note}) but the store refused it: {e}"),
            }
        }
        tessera_protocol::say!("[service] {id} {note}");
        let hosted = {
            let mut inner = self.inner.lock().await;
            inner.notes.insert(id, note);
            inner.targets.forget(id);
            inner.pool.withdraw(id);
            inner.running.remove(&id)
        };
        // The shared node stays open (the exit commands cross on their own): nothing to wait for.
        if let Some(h) = hosted {
            h.close();
        }
        self.reschedule().await;
    }

    /// Stores how job `id` ended (or why it could not start), so `tessera status` says it
    /// after a restart too; a failure to store it loses only the note.
    async fn keep_note(&self, id: JobId, note: String) {
        if let Err(e) = self.store.set_note(&self.fence, id, note).await {
            tessera_protocol::say!("[service] {id}: its note was not stored: {e}");
        }
    }

    /// Stops every running job at its next boundary (with a checkpoint) and waits for them, at
    /// most `within`; they stay running in the store, so the next coordinator resumes them.
    pub async fn shutdown(&self, within: Duration) {
        let bridges: Vec<_> = self.inner.lock().await.running.values().map(|h| Arc::clone(&h.bridge)).collect();
        for b in &bridges {
            let _ = b.shutdown().await;
        }
        let deadline = tokio::time::Instant::now() + within;
        while !self.inner.lock().await.running.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(node) = self.node.get() {
            node.stop();
        }
    }
}

/// A record as the API shows it (without the live status).
fn view(r: &JobRecord, inner: &Inner) -> ClusterJob {
    let job = r.job.spec.open().ok();
    let step = match (&job, r.state) {
        (_, JobState::Running) | (None, _) => None,
        // The newest committed directory by name: listing jobs (and `tessera wait`, which
        // polls) must not hash every checkpoint file of every job (`checkpoint::committed`).
        (Some(j), _) => tessera_protocol::checkpoint::list(&j.checkpoint.dir).ok().and_then(|l| l.into_iter().map(|(step, _)| step).max()),
    };
    ClusterJob {
        id: r.id,
        name: r.job.name.clone(),
        state: r.state,
        priority: r.job.priority.0,
        workers: r.job.workers,
        holds: inner.pool.held_by(r.id),
        step,
        total_steps: job.as_ref().map_or(0, |j| j.train.total_steps),
        pending: inner.pending.get(&r.id).map(ToString::to_string),
        note: inner.notes.get(&r.id).cloned().or_else(|| r.note.clone()),
        output_dir: job.map(|j| j.output_dir).unwrap_or_default(),
        submitted_ms: r.job.submitted_ms,
        node: inner.running.get(&r.id).map(|h| h.assignment.node),
        live: None,
    }
}
