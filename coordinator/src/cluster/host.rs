//! Hosting one job of a coordinator service: its coordinator actor on the service's actor node
//! (one per process, bound on the service host's real address: see
//! [`CoordinatorNode::watch_sessions`] for why not one per job), with the same control rules as
//! every other launch mode, its event log, train log and metrics — the actor is the one the
//! embedded mode runs; only who brings the workers differs (the pool, not a launcher).

use std::net::IpAddr;
use std::sync::Arc;

use ractor::{Actor, ActorRef};
use tessera_protocol::ResolvedJob;
use tessera_protocol::messages::{CoordinatorMsg, coordinator_group};
use tessera_protocol::node::CoordinatorNode;

use super::pool::Assignment;
use crate::actor::{ActorBridge, CommitGate, Coordinator, CoordinatorArgs, JobOutcome, ResumePoint};
use crate::console::Console;
use crate::control::Policy;
use crate::error::Result;
use crate::events::{EventFeed, EventLog};
use crate::metrics::{FlopsModel, JobMetrics};
use crate::store::{JobId, JobRecord};

/// A running job of the service.
pub struct HostedJob {
    /// What its workers are told (node, cookie, group).
    pub assignment: Assignment,
    /// The API's view of it.
    pub bridge: Arc<ActorBridge>,
    /// Its metrics (served under `/v1/jobs/ID/metrics`).
    pub metrics: Arc<JobMetrics>,
    /// Its event log, read by `/v1/jobs/ID/events`.
    pub events: EventFeed,
    /// Its actor.
    pub actor: ActorRef<CoordinatorMsg>,
    node: Arc<CoordinatorNode>,
}

impl std::fmt::Debug for HostedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedJob").field("job", &self.assignment.job).field("node", &self.assignment.node).finish()
    }
}

impl HostedJob {
    /// Stops watching the node's sessions for the job (it ended; its workers were told to
    /// exit, and a worker that missed it finds the job's actor gone from its process group).
    pub fn close(&self) {
        self.node.unwatch_sessions(&watch_id(self.assignment.job));
    }
}

/// How the service starts a job.
#[derive(Debug, Clone, Copy)]
pub struct HostOptions {
    /// The address the service's actor node binds (the host's real address; its port is picked
    /// when the first job starts).
    pub node_ip: IpAddr,
    /// A worker silent this long (ms) is lost to its job.
    pub heartbeat_timeout_ms: u64,
}

/// The name of job `id`'s watch on the node's sessions.
fn watch_id(id: JobId) -> String {
    format!("tessera.sessions.{}", id.key())
}

/// A fresh random secret (a cookie, a ring secret), hex.
pub(super) fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Where a service hosts its jobs: its actor node, and how.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    /// The service's actor node.
    pub node: &'a Arc<CoordinatorNode>,
    /// How jobs are hosted.
    pub options: HostOptions,
}

/// Starts job `record` on `host` expecting `workers` pool workers, its commits passing `gate`
/// (and, recovering it, adopting the ranks of `adopt`); returns it and the receiver of its
/// outcome.
pub async fn start(
    host: Host<'_>,
    record: &JobRecord,
    job: &ResolvedJob,
    workers: u32,
    flops: Option<FlopsModel>,
    gate: Box<dyn CommitGate>,
    adopt: Option<crate::control::Adoption>,
) -> Result<(HostedJob, tokio::sync::oneshot::Receiver<JobOutcome>)> {
    let (node, o) = (host.node, host.options);
    let id: JobId = record.id;
    std::fs::create_dir_all(&job.output_dir)
        .map_err(|source| tessera_protocol::ProtocolError::Io { path: format!("creating {}", job.output_dir.display()), source })?;
    let resume = ResumePoint::of(job, false)?;
    let group = coordinator_group(Some(&id.key()));
    let registry = prometheus::Registry::new_custom(None, Some([("job".to_string(), record.job.name.clone())].into()))?;
    let metrics = Arc::new(JobMetrics::new(&registry)?);
    if let Some(f) = flops {
        metrics.set_flops_model(f);
    }
    let events = EventLog::open(&job.output_dir.join("events.jsonl"))?;
    let feed = events.feed();
    let policy = Policy {
        min_workers: record.job.workers.min as usize,
        max_workers: record.job.workers.max as usize,
        heartbeat_timeout_ms: o.heartbeat_timeout_ms,
        // Ranks take periodic checkpoints themselves, at exact multiples of the interval.
        checkpoint_every: 0,
        total_steps: job.train.total_steps,
        rendezvous_grace_ms: 20_000,
        initial_workers: workers as usize,
        launches: false,
        stragglers: job.stragglers,
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let args = CoordinatorArgs {
        name: format!("{id} {}", record.job.name),
        group: group.clone(),
        spec: record.job.spec.clone(),
        policy,
        checkpoint_dir: job.checkpoint.dir.clone(),
        keep_last: job.checkpoint.keep_last,
        output_dir: job.output_dir.clone(),
        secret: random_hex(),
        heartbeat_ms: (o.heartbeat_timeout_ms / 5).max(50),
        schedule: resume.schedule,
        dataset_names: job.datasets.iter().map(|d| d.name.clone()).collect(),
        global_batch_size: job.train.global_batch_size as u64,
        events,
        metrics: Arc::clone(&metrics),
        committed: resume.committed,
        launcher: None,
        adopt,
        commit_gate: Some(gate),
        done: Some(done_tx),
        console: Console::plain(&id.to_string(), job.train.total_steps),
    };
    let (actor, _handle) = Actor::spawn(None, Coordinator, args)
        .await
        .map_err(|e| crate::CoordinatorError::Api { reason: format!("starting {id}'s coordinator: {e}") })?;
    if let Err(e) = node.watch_sessions(actor.clone(), &watch_id(id)) {
        actor.stop(None);
        return Err(e.into());
    }
    let assignment = Assignment { job: id, node: node.addr, cookie: node.cookie().to_string(), group };
    let bridge = Arc::new(ActorBridge::new(actor.clone()));
    Ok((HostedJob { assignment, bridge, metrics, events: feed, actor, node: Arc::clone(node) }, done_rx))
}
