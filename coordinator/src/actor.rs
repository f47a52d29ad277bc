//! The coordinator actor: owns one job. It turns worker events, API requests and time into
//! [`Event`]s for the pure [`Control`] state machine and carries out the [`Action`]s it returns
//! (send commands, commit checkpoints, start or kill local worker processes). It is never on
//! the tensors' path: ranks step on their own and only report.

mod aggregate;
mod bridge;
mod clock;
mod journal;
mod mixture;
mod recovery;
mod request;
mod status;
mod straggler;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent, pg};

pub use aggregate::{GenerationBook, PendingCheckpoint};
pub use bridge::{ActorBridge, CALL_TIMEOUT};
pub use mixture::{MixtureChange, Mixtures, MovedChange};

use crate::api::ApiError;
use crate::control::{Action, Control, Event, GenerationPlan, NoReplacement, Policy, StopReason, WorkerId};
use crate::events::{EventLog, JobEvent};
use crate::metrics::JobMetrics;
use tessera_protocol::checkpoint;
use tessera_protocol::ledger::MixtureSchedule;
use tessera_protocol::messages::{
    COORDINATOR_GROUP, Command, CoordinatorMsg, ExitReason, GenerationStart, JobSpec, WORKERS_GROUP, Wire, WorkerEvent, WorkerMsg,
    worker_group,
};
use tessera_protocol::report::StepReport;

/// Starts and stops local worker processes (embedded mode); implemented by the CLI.
pub trait Launcher: Send + 'static {
    /// Starts `n` more worker processes; returns their pids.
    fn spawn(&mut self, n: usize) -> Result<Vec<u32>, String>;
    /// Kills a worker process (SIGKILL works on a stopped one too) and reaps it.
    fn kill(&mut self, pid: u32);
    /// Worker processes alive.
    fn live(&self) -> usize;
}

/// How the job ended, sent to whoever waits for it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Every step done (or `--max-steps` reached) and checkpointed.
    Finished {
        /// Steps completed.
        step: u64,
    },
    /// Stopped on request (SIGTERM, `shutdown`) after a checkpoint.
    Stopped {
        /// Steps completed (the newest checkpoint's, where a rerun resumes).
        step: u64,
        /// A checkpoint of `step` exists (false: stopped before any step was checkpointed).
        checkpointed: bool,
    },
    /// Too few workers remain.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Everything the coordinator actor is configured with.
pub struct CoordinatorArgs {
    /// Job name.
    pub name: String,
    /// The job as workers receive it.
    pub spec: JobSpec,
    /// Membership and checkpoint policy.
    pub policy: Policy,
    /// Where checkpoints live.
    pub checkpoint_dir: PathBuf,
    /// Checkpoints to keep.
    pub keep_last: usize,
    /// The job's output directory (train log, event log).
    pub output_dir: PathBuf,
    /// Hex secret of the collective handshake.
    pub secret: String,
    /// How often workers send heartbeats (ms).
    pub heartbeat_ms: u64,
    /// The mixture schedule at start (the job's, or the resumed checkpoint's); changes made while
    /// the job runs live in the actor's state ([`Mixtures`]).
    pub schedule: MixtureSchedule,
    /// Dataset names, by index (for mixture changes); one per dataset of `schedule`.
    pub dataset_names: Vec<String>,
    /// Samples per step over all ranks (a mixture change at step `s` starts at sample `s × B`).
    pub global_batch_size: u64,
    /// The job's event log (the caller opens `OUTPUT/events.jsonl`).
    pub events: EventLog,
    /// The job's metrics (also served by the HTTP API).
    pub metrics: Arc<JobMetrics>,
    /// Committed checkpoints found at start (ascending).
    pub committed: Vec<u64>,
    /// Train until this step count (the job's total, or fewer with `--max-steps`).
    pub stop_at: u64,
    /// Local worker processes to start and supervise (embedded mode).
    pub launcher: Option<Box<dyn Launcher>>,
    /// Worker processes to start at once (embedded mode).
    pub initial_workers: usize,
    /// Receives the outcome when the job ends.
    pub done: Option<tokio::sync::oneshot::Sender<JobOutcome>>,
    /// Where progress and log lines go (a bar on a terminal).
    pub console: crate::console::Console,
}

impl std::fmt::Debug for CoordinatorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorArgs").field("name", &self.name).field("policy", &self.policy).finish()
    }
}

/// A registered worker.
#[derive(Debug)]
struct Conn {
    actor: ActorRef<WorkerMsg>,
    cell: ActorId,
    nonce: u64,
    pid: u32,
    ring_addr: SocketAddr,
    /// Its last step's phases and resident memory (for the status).
    last_timings: Option<tessera_protocol::StepTimings>,
    last_rss: Option<u64>,
}

/// The coordinator's mutable state (built in `pre_start`).
pub struct CoordinatorState {
    args: CoordinatorArgs,
    control: Control,
    /// The state machine's time: heartbeat deadlines skip the coordinator's own absences.
    clock: clock::PresenceClock,
    workers: BTreeMap<WorkerId, Conn>,
    /// Hellos whose sender's process group is not visible yet: (event, first seen).
    pending: Vec<(WorkerEvent, Instant)>,
    next_worker: u64,
    book: GenerationBook,
    train_log: Option<tessera_protocol::jsonl::JsonLines>,
    last_loss: Option<f64>,
    /// Pids of the local processes started to replace lost workers (they join as
    /// replacements, which the crash-loop guard of rule 5 looks at).
    replacement_pids: std::collections::BTreeSet<u32>,
    /// Checkpoints whose shards are all written, waiting for the state machine's decision.
    ready: BTreeMap<(u64, u64), PendingCheckpoint>,
    /// Why the last `Launch` failed (a scale request answers with it).
    launch_error: Option<String>,
    /// The (generation, restored step) whose checkpoint was last verified after a failure.
    verified_restore: Option<(u64, u64)>,
    generation_started: Option<Instant>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    outcome: Option<JobOutcome>,
    /// The newest error a rank reported (quoted when the job fails).
    last_rank_error: Option<String>,
    /// Workers removed while maybe still running (e.g. stopped, then continued): a heartbeat
    /// from one of them is answered with `Exit`, so it never trains with a later generation.
    removed: BTreeMap<WorkerId, ActorRef<WorkerMsg>>,
    /// The mixture schedule and the changes not yet handed to a generation.
    mixtures: Mixtures,
    /// Why the running generation is ending (for its `GenerationEnded` record).
    ending: Option<String>,
    /// When the checkpoint in flight was asked for (its duration runs from here to the commit).
    checkpoint_asked: Option<Instant>,
    /// The newest step whose validation is in `eval_log.jsonl` (a generation that repeats
    /// steps after a rollback scores them again; the log keeps the first).
    validated: Option<u64>,
    /// Why a worker is about to be removed, set just before the event that removes it.
    removal: BTreeMap<WorkerId, Removal>,
}

/// Why a worker leaves the job: the text recorded, and whether it was lost (died, link lost,
/// silent) rather than asked to go (drained, scaled down, leaving on its own); the state
/// machine replaces a lost local worker (rule 5).
struct Removal {
    reason: String,
    lost: bool,
}

/// The coordinator actor (configuration lives in [`CoordinatorArgs`]).
#[derive(Debug, Default)]
pub struct Coordinator;

impl CoordinatorState {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms(Instant::now())
    }

    fn send(&self, id: WorkerId, cmd: Command) {
        if let Some(c) = self.workers.get(&id) {
            // A send to a worker whose link just broke fails; its leave event follows.
            let _ = c.actor.cast(WorkerMsg::Command(Wire::new(cmd)));
        }
    }

    fn is_alive(&self, id: WorkerId) -> bool {
        self.workers.contains_key(&id)
    }

    fn log(&self, line: &str) {
        self.args.console.log(line);
    }

    /// Feeds one event to the state machine and carries out what it decides.
    fn drive(&mut self, event: Event) {
        let now = self.now_ms();
        let actions = self.control.handle(now, event);
        for a in actions {
            self.act(a);
        }
        // Ranks may have left their loop before the decision to stop (e.g. the final step's
        // checkpoint commits after they ended): the generation is over once that is decided.
        self.check_stopped();
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Start(plan) => self.start(plan),
            Action::Checkpoint { generation, step } => {
                self.log(&format!("generation {generation}: checkpoint requested (next boundary, ≥ step {step})"));
                self.checkpoint_asked.get_or_insert_with(Instant::now);
                for id in self.book.ranks.clone() {
                    self.send(id, Command::Checkpoint { generation });
                }
            }
            Action::StopAtBoundary { generation, checkpoint, reason } => {
                self.log(&format!("generation {generation}: stop at the next step boundary ({reason:?})"));
                self.ending = Some(format!("{reason:?}"));
                if checkpoint {
                    self.checkpoint_asked.get_or_insert_with(Instant::now);
                }
                for id in self.book.ranks.clone() {
                    self.send(id, Command::Stop { generation, checkpoint });
                }
            }
            Action::Abort { generation, reason } => {
                self.log(&format!("generation {generation}: abort ({reason:?})"));
                self.book.checkpoints.clear();
                self.ready.clear();
                self.checkpoint_asked = None;
                let why = format!("{reason:?}");
                self.ending = Some(format!("aborted: {why}"));
                for id in self.book.ranks.clone() {
                    self.send(id, Command::Abort { generation, reason: why.clone() });
                }
                if matches!(reason, StopReason::MemberLost(_) | StopReason::RankFailed(_)) {
                    self.args.metrics.inc_restarts();
                }
                self.check_stopped();
            }
            Action::Remove { id } => {
                let lost = self.removal.get(&id).is_none_or(|r| r.lost);
                self.send(id, Command::Exit { why: if lost { ExitReason::Lost } else { ExitReason::Released } });
                if let Some(c) = self.workers.remove(&id) {
                    self.log(&format!("{id} (pid {}) removed", c.pid));
                    if let Some(l) = self.args.launcher.as_mut() {
                        l.kill(c.pid);
                    }
                    self.removed.insert(id, c.actor);
                }
                // With no reason set before, the state machine found it silent for too long.
                let timeout = self.control.policy().heartbeat_timeout_ms;
                let Removal { reason, .. } = self
                    .removal
                    .remove(&id)
                    .unwrap_or_else(|| Removal { reason: format!("no heartbeat for more than {timeout} ms"), lost: true });
                self.record(JobEvent::WorkerRemoved { worker: id.0, reason });
                self.workers_changed();
                self.check_stopped();
            }
            Action::Commit { generation, step } => {
                if let Some(p) = self.ready.remove(&(generation, step)) {
                    self.commit(step, p);
                }
            }
            Action::Launch { count, replacing } => self.launch(count, replacing),
            Action::StragglerFlagged { id, rank, step, own_us, median_us, drain } => {
                self.straggler_flagged(id, rank, step, own_us, median_us, drain)
            }
            Action::NotReplaced { lost, why } => {
                let text = match why {
                    NoReplacement::CrashLoop => "it was itself a replacement, lost before it trained a step (a crash loop)".to_string(),
                    NoReplacement::AtTarget { workers, target } => format!("the job has {workers} of the {target} workers it wants"),
                    NoReplacement::Ending => "the job is ending".to_string(),
                    NoReplacement::WasLeaving => "it was leaving the job".to_string(),
                };
                self.log(&format!("not replacing lost {lost}: {text}"));
            }
            Action::Finish => {
                let step = self.control.next_step();
                let outcome = if self.control.is_shutting_down() && !self.control.finished() {
                    JobOutcome::Stopped { step, checkpointed: self.control.last_committed() == Some(step) }
                } else {
                    JobOutcome::Finished { step }
                };
                self.args.console.finish();
                self.log(&format!("job done: {outcome:?}"));
                // A stopped job is not finished: it resumes from its checkpoint.
                if let JobOutcome::Finished { step } = outcome {
                    self.record(JobEvent::JobFinished { step });
                }
                for id in self.workers.keys().copied().collect::<Vec<_>>() {
                    self.send(id, Command::Exit { why: ExitReason::JobDone });
                }
                self.outcome = Some(outcome);
            }
            Action::Fail { reason } => {
                let reason = match &self.last_rank_error {
                    Some(e) => format!("{reason}; the last error: {e}"),
                    None => reason,
                };
                self.args.console.finish();
                self.log(&format!("job failed: {reason}"));
                for id in self.workers.keys().copied().collect::<Vec<_>>() {
                    self.send(id, Command::Exit { why: ExitReason::JobFailed });
                }
                self.outcome = Some(JobOutcome::Failed { reason });
            }
        }
    }

    fn start(&mut self, plan: GenerationPlan) {
        let peers: Vec<SocketAddr> = plan.ranks.iter().filter_map(|id| self.workers.get(id).map(|c| c.ring_addr)).collect();
        if peers.len() != plan.ranks.len() {
            // A rank vanished between the decision and now: its leave event aborts this plan.
            self.log(&format!("generation {}: a planned rank is gone", plan.generation));
        }
        let restore_dir = plan.restore.map(|s| self.args.checkpoint_dir.join(checkpoint::dir_name(s)));
        self.log(&format!(
            "generation {}: {} ranks {:?}, start step {}, restore {}",
            plan.generation,
            plan.ranks.len(),
            plan.ranks.iter().map(|r| r.0).collect::<Vec<_>>(),
            plan.start_step,
            restore_dir.as_ref().map_or("none (fresh)".into(), |d| d.display().to_string())
        ));
        self.book = GenerationBook::new(plan.generation, plan.ranks.clone());
        self.ready.clear();
        // A checkpoint asked for in an earlier generation is not this one's: its duration
        // would count the whole rollback.
        self.checkpoint_asked = None;
        self.generation_started = Some(Instant::now());
        self.ending = None;
        // Before any Start is sent: the metrics refuse reports of a generation not set here.
        self.args.metrics.set_generation(plan.generation, plan.ranks.len() as u32);
        self.record(JobEvent::GenerationStarted {
            generation: plan.generation,
            ranks: plan.ranks.iter().map(|r| r.0).collect(),
            start_step: plan.start_step,
            restore: plan.restore,
        });
        let schedule = self.settle_mixtures(plan.start_step);
        for (rank, id) in plan.ranks.iter().enumerate() {
            let start = GenerationStart {
                plan: plan.clone(),
                rank: rank as u32,
                peers: peers.clone(),
                restore_dir: restore_dir.clone(),
                schedule: schedule.clone(),
                stop_at: Some(self.args.stop_at),
            };
            self.send(*id, Command::Start(start));
        }
    }

    /// Declares the running generation stopped once every live rank has left its loop.
    fn check_stopped(&mut self) {
        let Some(g) = self.control.running().map(|g| g.generation) else { return };
        if g == self.book.generation && self.control.is_stopping() {
            let alive: Vec<WorkerId> = self.workers.keys().copied().collect();
            if self.book.all_ended(|id| alive.contains(&id)) {
                self.log(&format!("generation {g}: stopped"));
                let reason = self.ending.take().unwrap_or_else(|| "stopped".into());
                self.record(JobEvent::GenerationEnded { generation: g, reason });
                self.drive(Event::GenerationStopped { generation: g });
            }
        }
    }

    fn hello(&mut self, ev: WorkerEvent, first_seen: Instant) {
        let WorkerEvent::Hello { nonce, pid, ring_addr, threads } = ev else { return };
        if self.workers.values().any(|c| c.nonce == nonce) {
            return;
        }
        let Some(cell) = pg::get_members(&worker_group(nonce)).into_iter().next() else {
            if first_seen.elapsed() < Duration::from_secs(30) {
                self.pending.push((ev, first_seen));
            } else {
                self.log(&format!("hello from pid {pid} dropped: its actor never became visible"));
            }
            return;
        };
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        let conn =
            Conn { actor: ActorRef::from(cell.clone()), cell: cell.get_id(), nonce, pid, ring_addr, last_timings: None, last_rss: None };
        self.workers.insert(id, conn);
        self.log(&format!("{id} joined: pid {pid}, ring {ring_addr}, {threads} threads"));
        self.record(JobEvent::WorkerJoined { worker: id.0, addr: ring_addr.to_string() });
        self.workers_changed();
        self.send(
            id,
            Command::Welcome {
                worker: id,
                job: self.args.spec.clone(),
                secret: self.args.secret.clone(),
                heartbeat_ms: self.args.heartbeat_ms,
            },
        );
        let replacement = self.replacement_pids.contains(&pid);
        self.drive(Event::Join { id, addr: ring_addr.to_string(), replacement });
    }

    fn step_done(&mut self, reports: Vec<StepReport>) {
        let r0 = &reports[0];
        let step_s = reports.iter().map(|r| r.timings.total_s).fold(0.0, f64::max);
        for r in &reports {
            if let Some(id) = self.book.ranks.get(r.rank as usize).copied()
                && let Some(c) = self.workers.get_mut(&id)
            {
                c.last_timings = Some(r.timings);
                c.last_rss = r.rss_bytes;
            }
        }
        self.last_loss = Some(r0.loss);
        self.observe_step(&reports);
        self.rank_times(&reports);
        if let Some(log) = self.train_log.as_mut()
            && let Some(line) = tessera_protocol::TrainLogLine::of_step(&reports, tessera_protocol::report::now_ms())
            && let Err(e) = log.append(&line, false)
        {
            self.args.console.log(&format!("step {} not logged: {e}", r0.step));
        }
        self.args.console.step(
            r0.step + 1,
            &format!(
                "loss {:.4}  lr {:.2e}  |g| {:.3}  {:.2}s/step ({} ranks, generation {})",
                r0.loss,
                r0.lr,
                r0.grad_norm,
                step_s,
                reports.len(),
                r0.generation
            ),
        );
        self.drive(Event::StepDone { generation: r0.generation, step: r0.step });
    }

    fn commit(&mut self, step: u64, p: PendingCheckpoint) {
        let generation = self.book.generation;
        let root = self.args.checkpoint_dir.clone();
        let tmp = checkpoint::temp_dir(&root, step, generation);
        let files: Vec<checkpoint::FileEntry> = p.files.into_values().collect();
        // The book hands a checkpoint over only with rank 0's manifest; a missing one is refused.
        let committed = match p.manifest {
            Some(manifest) => checkpoint::commit(&root, &tmp, manifest, files),
            None => Err(tessera_protocol::ProtocolError::Checkpoint {
                path: tmp.display().to_string(),
                reason: "no manifest from rank 0".into(),
            }),
        };
        match committed {
            Ok((dir, bytes)) => {
                let _ = checkpoint::prune(&root, self.args.keep_last, generation);
                let asked = self.checkpoint_asked.take().unwrap_or(p.first_shard);
                let duration_s = asked.elapsed().as_secs_f64();
                self.args.metrics.observe_checkpoint(duration_s, bytes);
                self.record(JobEvent::CheckpointCommitted { step, dir: dir.display().to_string(), bytes, duration_s });
                self.log(&format!(
                    "checkpoint {} committed: {:.1} MiB, slowest shard write {:.2}s, commit {:.2}s after the first shard",
                    dir.display(),
                    bytes as f64 / (1 << 20) as f64,
                    p.write_s,
                    p.first_shard.elapsed().as_secs_f64()
                ));
                self.drive(Event::CheckpointCommitted { step });
            }
            Err(e) => {
                self.log(&format!("checkpoint of step {step} not committed: {e}"));
                self.checkpoint_asked = None;
                self.record(JobEvent::CheckpointFailed { step, reason: e.to_string() });
                self.drive(Event::CheckpointFailed { step, reason: e.to_string() });
            }
        }
    }

    /// Logs, prints and exports a validation the ranks reported, once per step.
    fn validated(&mut self, report: tessera_protocol::validation::ValidationReport) {
        if self.validated.is_some_and(|v| report.step <= v) {
            return;
        }
        self.validated = Some(report.step);
        for line in report.table() {
            self.args.console.relay(&line);
        }
        if let Err(e) = report.append_to_log(&self.args.output_dir) {
            self.log(&format!("validation of step {} not logged: {e}", report.step));
        }
        self.args.metrics.observe_validation(&report);
        let loss: BTreeMap<String, f64> = report.modalities.iter().map(|(m, e)| (m.clone(), e.loss)).collect();
        self.record(JobEvent::Validated { step: report.step, loss });
    }

    fn worker_event(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Hello { .. } => self.hello(ev, Instant::now()),
            WorkerEvent::Heartbeat { worker } => {
                if self.is_alive(worker) {
                    self.drive(Event::Heartbeat { id: worker });
                } else {
                    // Removed while it could not hear (e.g. stopped): it must not train again.
                    if let Some(actor) = self.removed.remove(&worker) {
                        self.log(&format!("{worker} is not a member any more; telling it to exit"));
                        let _ = actor.cast(WorkerMsg::Command(Wire::new(Command::Exit { why: ExitReason::Lost })));
                    }
                }
            }
            WorkerEvent::Step { worker, report } => {
                if report.generation == self.book.generation
                    && self.is_alive(worker)
                    && let Some(all) = self.book.step(report)
                {
                    self.step_done(all);
                }
            }
            WorkerEvent::Validated { worker, report } => {
                if self.is_alive(worker) {
                    self.validated(report);
                }
            }
            WorkerEvent::ShardWritten { worker, generation, step, rank, file, manifest, write_s } => {
                if generation == self.book.generation
                    && self.is_alive(worker)
                    && let Some(p) = self.book.shard(step, rank, file, manifest.map(|m| *m), write_s)
                {
                    // Rule 4 decides whether it may be committed.
                    self.ready.insert((generation, step), p);
                    self.drive(Event::CheckpointReady { generation, step });
                    self.ready.remove(&(generation, step));
                }
            }
            WorkerEvent::ShardFailed { worker, generation, step, reason } => {
                self.log(&format!("{worker}: checkpoint shard of step {step} failed: {reason}"));
                if generation == self.book.generation {
                    self.book.checkpoints.remove(&step);
                    self.checkpoint_asked = None;
                    let reason = format!("{worker}: {reason}");
                    self.record(JobEvent::CheckpointFailed { step, reason: reason.clone() });
                    self.drive(Event::CheckpointFailed { step, reason });
                }
            }
            WorkerEvent::GenerationEnded { worker, generation, step, error } => {
                if generation != self.book.generation {
                    return;
                }
                if let Some(e) = &error {
                    self.log(&format!("{worker} left generation {generation} at step {step}: {e}"));
                    self.last_rank_error = Some(format!("{worker}: {e}"));
                    self.check_restored_checkpoint();
                    self.drive(Event::GenerationFailed { generation, id: worker });
                }
                self.book.ended.insert(worker);
                self.check_stopped();
            }
            WorkerEvent::Draining { worker, reason } => {
                if self.is_alive(worker) {
                    self.log(&format!("{worker} asks to leave ({reason}): draining it at the next step boundary"));
                    self.removal.insert(worker, Removal { reason: format!("drained: {reason}"), lost: false });
                    self.control.drain(worker);
                    self.drive(Event::Tick);
                }
            }
            WorkerEvent::Leaving { worker, reason } => {
                self.log(&format!("{worker} is leaving: {reason}"));
                self.leave(worker, Removal { reason: format!("left: {reason}"), lost: false });
            }
        }
    }

    fn lost_cells(&mut self, cells: &[ActorId]) {
        let gone: Vec<WorkerId> = self.workers.iter().filter(|(_, c)| cells.contains(&c.cell)).map(|(id, _)| *id).collect();
        for id in gone {
            self.log(&format!("{id}: link lost"));
            self.leave(id, Removal { reason: "link lost".into(), lost: true });
        }
    }

    /// Removes `id` from the job for `why` (recorded when the state machine removes it).
    fn leave(&mut self, id: WorkerId, why: Removal) {
        let event = if why.lost { Event::Lost { id } } else { Event::Leave { id } };
        self.removal.insert(id, why);
        self.drive(event);
        // Not a member (already removed): nothing consumed the reason.
        self.removal.remove(&id);
    }

    /// The schedule for a generation starting at `start_step`, with the mixture changes queued
    /// since the last one; a change moved past where it was asked is recorded (see `mixture`).
    fn settle_mixtures(&mut self, start_step: u64) -> MixtureSchedule {
        match self.mixtures.settle(start_step) {
            Ok((schedule, moved)) => {
                for m in moved {
                    self.log(&format!(
                        "mixture version {} asked for step {} starts at step {}: the ranks had trained past it",
                        m.version, m.asked_step, m.effective_step
                    ));
                    let weights = self.mixtures.named(&m.weights);
                    self.record(JobEvent::MixtureChanged { version: u64::from(m.version), effective_step: m.effective_step, weights });
                }
                schedule
            }
            Err(e) => {
                // Unreachable by construction (validated, increasing starts); the generation still
                // starts, with the changes that made it in.
                self.log(&format!("mixture changes not applied: {e}"));
                self.mixtures.schedule().clone()
            }
        }
    }
}

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, mut args: CoordinatorArgs) -> Result<Self::State, ActorProcessingErr> {
        pg::join(COORDINATOR_GROUP.to_string(), vec![myself.get_cell()]);
        pg::monitor(WORKERS_GROUP.to_string(), myself.get_cell());
        std::fs::create_dir_all(&args.output_dir)?;
        let log_path = args.output_dir.join("train_log.jsonl");
        let train_log = tessera_protocol::jsonl::JsonLines::open(&log_path)?;
        let mut policy = args.policy;
        policy.total_steps = args.stop_at;
        // The processes this coordinator starts are what the first generation waits for.
        policy.launches = args.launcher.is_some();
        policy.initial_workers = if policy.launches { args.initial_workers } else { 0 };
        let control = Control::with_committed(policy, args.committed.clone());
        let mixtures = Mixtures::new(args.schedule.clone(), args.dataset_names.clone(), args.global_batch_size)?;
        if let Some(l) = args.launcher.as_mut()
            && args.initial_workers > 0
        {
            l.spawn(args.initial_workers).map_err(|e| format!("starting {} workers: {e}", args.initial_workers))?;
        }
        let me = myself.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                if me.cast(CoordinatorMsg::Tick(Wire::new(()))).is_err() {
                    break;
                }
            }
        });
        let validated = tessera_protocol::validation::last_logged_step(&args.output_dir);
        let mut state = CoordinatorState {
            args,
            control,
            clock: clock::PresenceClock::new(Instant::now()),
            workers: BTreeMap::new(),
            pending: Vec::new(),
            next_worker: 0,
            book: GenerationBook::default(),
            train_log: Some(train_log),
            last_loss: None,
            replacement_pids: std::collections::BTreeSet::new(),
            ready: BTreeMap::new(),
            launch_error: None,
            verified_restore: None,
            generation_started: None,
            ticker: Some(ticker),
            outcome: None,
            last_rank_error: None,
            removed: BTreeMap::new(),
            mixtures,
            ending: None,
            checkpoint_asked: None,
            removal: BTreeMap::new(),
            validated,
        };
        let resumed_step = state.control.last_committed();
        state.record(JobEvent::CoordinatorStarted { resumed_step });
        state.workers_changed();
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        let outcome = state.outcome.take().unwrap_or(JobOutcome::Failed { reason: "the coordinator stopped".into() });
        if let Some(done) = state.args.done.take() {
            let _ = done.send(outcome);
        }
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(gap) = state.clock.observe(Instant::now()) {
            state.log(&format!(
                "the coordinator was not running for {:.1}s (stopped or stalled); heartbeat deadlines skip that time",
                gap.as_secs_f64()
            ));
        }
        match msg {
            CoordinatorMsg::Worker(Wire(Ok(ev))) => state.worker_event(ev),
            CoordinatorMsg::Worker(Wire(Err(e))) => state.log(&format!("undecodable worker event: {e}")),
            CoordinatorMsg::Request(Wire(req), reply) => {
                let answer = match req {
                    Ok(r) => state.request(r),
                    Err(e) => Err(ApiError::bad("request", format!("undecodable request: {e}"))),
                };
                let _ = reply.send(Wire::new(answer));
            }
            CoordinatorMsg::ProcessExited(Wire(Ok((pid, how)))) => {
                let replacement = state.replacement_pids.remove(&pid);
                let worker = state.workers.iter().find(|(_, c)| c.pid == pid).map(|(id, _)| *id);
                match worker {
                    Some(id) => {
                        state.log(&format!("{id} (pid {pid}) exited: {how}"));
                        state.removal.insert(id, Removal { reason: format!("process exited: {how}"), lost: true });
                    }
                    None if replacement => state.log(&format!("replacement process {pid} exited before joining: {how}")),
                    None => {}
                }
                state.drive(Event::ProcessExited { worker, replacement });
                if let Some(id) = worker {
                    state.removal.remove(&id);
                }
            }
            CoordinatorMsg::ProcessExited(Wire(Err(e))) => state.log(&format!("undecodable exit notice: {e}")),
            CoordinatorMsg::Tick(_) => {
                let pending = std::mem::take(&mut state.pending);
                for (ev, since) in pending {
                    state.hello(ev, since);
                }
                // The launcher's count of live processes is what rule 6 looks at (embedded mode).
                let event = match state.args.launcher.as_ref() {
                    Some(l) => Event::Processes { live: l.live() },
                    None => Event::Tick,
                };
                state.drive(event);
            }
        }
        if state.outcome.is_some() {
            myself.stop(None);
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        ev: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(pg::GroupChangeMessage::Leave(_, group, cells)) = ev
            && group == WORKERS_GROUP
        {
            let ids: Vec<ActorId> = cells.iter().map(|c| c.get_id()).collect();
            state.lost_cells(&ids);
        }
        Ok(())
    }
}
