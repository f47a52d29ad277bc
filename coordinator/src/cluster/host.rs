//! Hosting one job of a coordinator service: its own actor node (its own cookie, bound on the
//! service host's real address), its coordinator actor with the same control rules as every
//! other launch mode, its event log, train log and metrics — the actor is the one the embedded
//! mode runs; only who brings the workers differs (the pool, not a launcher).

use std::net::{IpAddr, SocketAddr};
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
    node: CoordinatorNode,
}

impl std::fmt::Debug for HostedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedJob").field("job", &self.assignment.job).field("node", &self.assignment.node).finish()
    }
}

impl HostedJob {
    /// Closes the job's node (its workers have been told to exit).
    pub fn close(&self) {
        self.node.stop();
    }
}

/// How the service starts a job.
#[derive(Debug, Clone, Copy)]
pub struct HostOptions {
    /// The address job nodes bind (the host's real address; port 0 picks one per job).
    pub node_ip: IpAddr,
    /// A worker silent this long (ms) is lost to its job.
    pub heartbeat_timeout_ms: u64,
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Starts job `record` expecting `workers` pool workers, its commits passing `gate` (and,
/// recovering it, adopting the ranks of `adopt`); returns it and the receiver of its outcome.
pub async fn start(
    record: &JobRecord,
    job: &ResolvedJob,
    workers: u32,
    flops: Option<FlopsModel>,
    gate: Box<dyn CommitGate>,
    o: HostOptions,
    adopt: Option<crate::control::Adoption>,
) -> Result<(HostedJob, tokio::sync::oneshot::Receiver<JobOutcome>)> {
    let id: JobId = record.id;
    std::fs::create_dir_all(&job.output_dir)
        .map_err(|source| tessera_protocol::ProtocolError::Io { path: format!("creating {}", job.output_dir.display()), source })?;
    let resume = ResumePoint::of(job, false)?;
    let cookie = random_hex();
    let node = CoordinatorNode::serve(SocketAddr::new(o.node_ip, 0), &cookie).await?;
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
    let (actor, _handle) = match Actor::spawn(None, Coordinator, args).await {
        Ok(spawned) => spawned,
        Err(e) => {
            node.stop();
            return Err(crate::CoordinatorError::Api { reason: format!("starting {id}'s coordinator: {e}") });
        }
    };
    if let Err(e) = node.watch_sessions(actor.clone()) {
        actor.stop(None);
        node.stop();
        return Err(e.into());
    }
    let assignment = Assignment { job: id, node: node.addr, cookie, group };
    let bridge = Arc::new(ActorBridge::new(actor.clone()));
    Ok((HostedJob { assignment, bridge, metrics, events: feed, actor, node }, done_rx))
}
