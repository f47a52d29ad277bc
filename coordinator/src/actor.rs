//! The coordinator actor: owns one job. It turns worker events, API requests and time into
//! [`Event`]s for the pure [`Control`] state machine and carries out the [`Action`]s it returns
//! (send commands, commit checkpoints, start or kill local worker processes). It is never on
//! the tensors' path: ranks step on their own and only report.

mod aggregate;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent, pg};
use serde_json::json;

pub use aggregate::{GenerationBook, PendingCheckpoint};

use crate::catalog;
use crate::control::{Action, Control, Event, GenerationPlan, Policy, StopReason, WorkerId};
use crate::ledger::MixtureSchedule;
use crate::protocol::{
    COORDINATOR_GROUP, Command, CoordinatorMsg, GenerationStart, JobSpec, Request, WORKERS_GROUP, Wire, WorkerEvent, WorkerMsg, worker_group,
};
use crate::report::StepReport;

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
        /// Steps completed (the checkpoint's).
        step: u64,
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
    /// The mixture schedule in force.
    pub schedule: MixtureSchedule,
    /// Dataset names, by index (for mixture changes).
    pub dataset_names: Vec<String>,
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
    last_step_s: Option<f64>,
}

/// The coordinator's mutable state (built in `pre_start`).
pub struct CoordinatorState {
    args: CoordinatorArgs,
    control: Control,
    t0: Instant,
    workers: BTreeMap<WorkerId, Conn>,
    /// Hellos whose sender's process group is not visible yet: (event, first seen).
    pending: Vec<(WorkerEvent, Instant)>,
    next_worker: u64,
    book: GenerationBook,
    train_log: Option<std::fs::File>,
    last_loss: Option<f64>,
    restarts: u64,
    generation_started: Option<Instant>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    outcome: Option<JobOutcome>,
    /// The running generation was aborted: none of its checkpoints may commit.
    aborted: bool,
}

/// The coordinator actor (configuration lives in [`CoordinatorArgs`]).
#[derive(Debug, Default)]
pub struct Coordinator;

impl CoordinatorState {
    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
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
        eprintln!("[coordinator] {line}");
    }

    /// Feeds one event to the state machine and carries out what it decides.
    fn drive(&mut self, event: Event) {
        let now = self.now_ms();
        let actions = self.control.handle(now, event);
        for a in actions {
            self.act(a);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Start(plan) => self.start(plan),
            Action::Checkpoint { generation, step } => {
                self.log(&format!("generation {generation}: checkpoint requested (next boundary, ≥ step {step})"));
                for id in self.book.ranks.clone() {
                    self.send(id, Command::Checkpoint { generation });
                }
            }
            Action::StopAtBoundary { generation, checkpoint, reason } => {
                self.log(&format!("generation {generation}: stop at the next step boundary ({reason:?})"));
                for id in self.book.ranks.clone() {
                    self.send(id, Command::Stop { generation, checkpoint });
                }
            }
            Action::Abort { generation, reason } => {
                self.log(&format!("generation {generation}: abort ({reason:?})"));
                self.book.checkpoints.clear();
                self.aborted = true;
                let why = format!("{reason:?}");
                for id in self.book.ranks.clone() {
                    self.send(id, Command::Abort { generation, reason: why.clone() });
                }
                if matches!(reason, StopReason::MemberLost(_) | StopReason::RankFailed(_)) {
                    self.restarts += 1;
                }
                self.check_stopped();
            }
            Action::Remove { id } => {
                self.send(id, Command::Exit { reason: "removed from the job".into() });
                if let Some(c) = self.workers.remove(&id) {
                    self.log(&format!("{id} (pid {}) removed", c.pid));
                    if let Some(l) = self.args.launcher.as_mut() {
                        l.kill(c.pid);
                    }
                }
                self.check_stopped();
            }
            Action::Finish => {
                let step = self.control.next_step();
                let outcome = if self.control.is_shutting_down() && !self.control.finished() {
                    JobOutcome::Stopped { step }
                } else {
                    JobOutcome::Finished { step }
                };
                self.log(&format!("job done: {outcome:?}"));
                for id in self.workers.keys().copied().collect::<Vec<_>>() {
                    self.send(id, Command::Exit { reason: "the job is done".into() });
                }
                self.outcome = Some(outcome);
            }
        }
    }

    fn start(&mut self, plan: GenerationPlan) {
        let peers: Vec<SocketAddr> = plan.ranks.iter().filter_map(|id| self.workers.get(id).map(|c| c.ring_addr)).collect();
        if peers.len() != plan.ranks.len() {
            // A rank vanished between the decision and now: its leave event aborts this plan.
            self.log(&format!("generation {}: a planned rank is gone", plan.generation));
        }
        let restore_dir = plan.restore.map(|s| self.args.checkpoint_dir.join(catalog::dir_name(s)));
        self.log(&format!(
            "generation {}: {} ranks {:?}, start step {}, restore {}",
            plan.generation,
            plan.ranks.len(),
            plan.ranks.iter().map(|r| r.0).collect::<Vec<_>>(),
            plan.start_step,
            restore_dir.as_ref().map_or("none (fresh)".into(), |d| d.display().to_string())
        ));
        self.book = GenerationBook::new(plan.generation, plan.ranks.clone());
        self.aborted = false;
        self.generation_started = Some(Instant::now());
        for (rank, id) in plan.ranks.iter().enumerate() {
            let start = GenerationStart {
                plan: plan.clone(),
                rank: rank as u32,
                peers: peers.clone(),
                restore_dir: restore_dir.clone(),
                schedule: self.args.schedule.clone(),
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
        let conn = Conn { actor: ActorRef::from(cell.clone()), cell: cell.get_id(), nonce, pid, ring_addr, last_step_s: None };
        self.workers.insert(id, conn);
        self.log(&format!("{id} joined: pid {pid}, ring {ring_addr}, {threads} threads"));
        self.send(
            id,
            Command::Welcome { worker: id, job: self.args.spec.clone(), secret: self.args.secret.clone(), heartbeat_ms: self.args.heartbeat_ms },
        );
        self.drive(Event::Join { id, addr: ring_addr.to_string() });
    }

    fn step_done(&mut self, reports: Vec<StepReport>) {
        let r0 = &reports[0];
        let step_s = reports.iter().map(|r| r.timings.total_s).fold(0.0, f64::max);
        let samples: u64 = reports.iter().map(|r| r.samples).sum();
        for r in &reports {
            if let Some(id) = self.book.ranks.get(r.rank as usize).copied()
                && let Some(c) = self.workers.get_mut(&id)
            {
                c.last_step_s = Some(r.timings.total_s);
            }
        }
        self.last_loss = Some(r0.loss);
        if let Some(log) = self.train_log.as_mut() {
            let line = json!({
                "step": r0.step, "loss": r0.loss, "mod_loss": r0.losses, "lr": r0.lr, "grad_norm": r0.grad_norm,
                "skipped": r0.skipped, "samples": samples, "step_s": step_s, "world_size": reports.len(),
                "generation": r0.generation,
                "rank_step_s": reports.iter().map(|r| r.timings.total_s).collect::<Vec<_>>(),
                "timings": r0.timings,
            });
            let _ = writeln!(log, "{line}");
        }
        eprintln!(
            "{} step {}/{}  loss {:.4}  lr {:.2e}  |g| {:.3}  {:.2}s/step ({} ranks, generation {})",
            self.args.name,
            r0.step + 1,
            self.args.stop_at,
            r0.loss,
            r0.lr,
            r0.grad_norm,
            step_s,
            reports.len(),
            r0.generation
        );
        self.drive(Event::StepDone { generation: r0.generation, step: r0.step });
    }

    fn commit(&mut self, step: u64, p: PendingCheckpoint) {
        let generation = self.book.generation;
        let root = self.args.checkpoint_dir.clone();
        let tmp = catalog::temp_dir(&root, step, generation);
        let files: Vec<catalog::FileEntry> = p.files.into_values().collect();
        let manifest = p.manifest.unwrap_or_default();
        match catalog::commit(&root, &tmp, manifest, files) {
            Ok((dir, bytes)) => {
                let _ = catalog::prune(&root, self.args.keep_last, generation);
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
                self.drive(Event::CheckpointFailed { step });
            }
        }
    }

    fn worker_event(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Hello { .. } => self.hello(ev, Instant::now()),
            WorkerEvent::Heartbeat { worker } => {
                if self.is_alive(worker) {
                    self.drive(Event::Heartbeat { id: worker });
                } else {
                    // Removed while it could not hear (e.g. stopped): it must not train again.
                    self.log(&format!("{worker} is not a member; telling it to exit"));
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
            WorkerEvent::ShardWritten { worker, generation, step, rank, file, manifest, write_s } => {
                if generation == self.book.generation
                    && self.is_alive(worker)
                    && !self.aborted
                    && let Some(p) = self.book.shard(step, rank, file, manifest, write_s)
                {
                    self.commit(step, p);
                }
            }
            WorkerEvent::ShardFailed { worker, generation, step, reason } => {
                self.log(&format!("{worker}: checkpoint shard of step {step} failed: {reason}"));
                if generation == self.book.generation {
                    self.book.checkpoints.remove(&step);
                    self.drive(Event::CheckpointFailed { step });
                }
            }
            WorkerEvent::GenerationEnded { worker, generation, step, error } => {
                if generation != self.book.generation {
                    return;
                }
                if let Some(e) = &error {
                    self.log(&format!("{worker} left generation {generation} at step {step}: {e}"));
                    self.drive(Event::GenerationFailed { generation, id: worker });
                }
                self.book.ended.insert(worker);
                self.check_stopped();
            }
            WorkerEvent::Leaving { worker, reason } => {
                self.log(&format!("{worker} is leaving: {reason}"));
                self.drive(Event::Leave { id: worker });
            }
        }
    }

    fn lost_cells(&mut self, cells: &[ActorId]) {
        let gone: Vec<WorkerId> = self.workers.iter().filter(|(_, c)| cells.contains(&c.cell)).map(|(id, _)| *id).collect();
        for id in gone {
            self.log(&format!("{id}: link lost"));
            self.drive(Event::Leave { id });
        }
    }

    fn status(&self) -> serde_json::Value {
        let running = self.control.running();
        let ranks: Vec<WorkerId> = running.map(|g| g.ranks.clone()).unwrap_or_default();
        let members: Vec<serde_json::Value> = self
            .control
            .members()
            .map(|m| {
                let c = self.workers.get(&m.id);
                json!({
                    "worker": m.id.0,
                    "addr": m.addr,
                    "pid": c.map(|c| c.pid),
                    "rank": ranks.iter().position(|r| *r == m.id),
                    "seen_ms_ago": self.now_ms().saturating_sub(m.last_seen_ms),
                    "draining": m.draining,
                    "last_step_s": c.and_then(|c| c.last_step_s),
                })
            })
            .collect();
        let phase = if self.outcome.is_some() {
            "finished"
        } else if running.is_none() {
            if self.restarts > 0 { "recovering" } else { "waiting" }
        } else if self.control.is_stopping() {
            "stopping"
        } else {
            "running"
        };
        json!({
            "job": self.args.name,
            "phase": phase,
            "generation": running.map(|g| g.generation),
            "world_size": ranks.len(),
            "step": self.control.next_step(),
            "total_steps": self.args.stop_at,
            "loss": self.last_loss,
            "target_workers": self.control.target(),
            "min_workers": self.control.policy().min_workers,
            "max_workers": self.control.policy().max_workers,
            "last_checkpoint": self.control.last_committed(),
            "restarts": self.restarts,
            "members": members,
        })
    }

    fn request(&mut self, req: Request) -> Result<serde_json::Value, String> {
        match req {
            Request::Status => Ok(self.status()),
            Request::Scale { workers } => {
                let p = *self.control.policy();
                if workers < p.min_workers.max(1) || workers > p.max_workers {
                    return Err(format!("workers: {workers} is outside [{}, {}] (min/max workers of the job)", p.min_workers.max(1), p.max_workers));
                }
                self.drive(Event::Scale { workers });
                // Ask for more processes (embedded mode), or drain the newest surplus members.
                let members = self.control.members().count();
                if workers > members
                    && let Some(l) = self.args.launcher.as_mut()
                {
                    let n = workers - members.max(l.live());
                    if n > 0 {
                        l.spawn(n).map_err(|e| format!("starting {n} workers: {e}"))?;
                    }
                }
                if workers < members {
                    let mut ids: Vec<(u64, WorkerId)> = self.control.members().map(|m| (m.joined_ms, m.id)).collect();
                    ids.sort();
                    for (_, id) in ids.into_iter().skip(workers) {
                        self.control.drain(id);
                    }
                    self.drive(Event::Tick);
                }
                Ok(json!({"target_workers": workers}))
            }
            Request::Checkpoint => {
                if self.control.running().is_none() {
                    return Err("no generation is running; nothing to checkpoint".into());
                }
                self.drive(Event::RequestCheckpoint);
                Ok(json!({"requested": true, "after_step": self.control.next_step()}))
            }
            Request::Mixture { .. } => Err("mixture changes are not supported by this coordinator yet".into()),
            Request::Shutdown => {
                self.drive(Event::Shutdown);
                Ok(json!({"shutting_down": true}))
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
        let train_log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut policy = args.policy;
        policy.total_steps = args.stop_at;
        let control = Control::with_committed(policy, args.committed.clone());
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
        Ok(CoordinatorState {
            args,
            control,
            t0: Instant::now(),
            workers: BTreeMap::new(),
            pending: Vec::new(),
            next_worker: 0,
            book: GenerationBook::default(),
            train_log: Some(train_log),
            last_loss: None,
            restarts: 0,
            generation_started: None,
            ticker: Some(ticker),
            outcome: None,
            aborted: false,
        })
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
        match msg {
            CoordinatorMsg::Worker(Wire(Ok(ev))) => state.worker_event(ev),
            CoordinatorMsg::Worker(Wire(Err(e))) => state.log(&format!("undecodable worker event: {e}")),
            CoordinatorMsg::Request(Wire(req), reply) => {
                let answer = match req {
                    Ok(r) => state.request(r),
                    Err(e) => Err(format!("undecodable request: {e}")),
                };
                let _ = reply.send(Wire(answer));
            }
            CoordinatorMsg::ProcessExited(Wire(Ok((pid, how)))) => {
                if let Some(id) = state.workers.iter().find(|(_, c)| c.pid == pid).map(|(id, _)| *id) {
                    state.log(&format!("{id} (pid {pid}) exited: {how}"));
                    state.drive(Event::Leave { id });
                }
            }
            CoordinatorMsg::ProcessExited(Wire(Err(e))) => state.log(&format!("undecodable exit notice: {e}")),
            CoordinatorMsg::Tick(_) => {
                let pending = std::mem::take(&mut state.pending);
                for (ev, since) in pending {
                    state.hello(ev, since);
                }
                state.drive(Event::Tick);
                let p = *state.control.policy();
                if state.control.running().is_none()
                    && !state.control.is_stopping()
                    && state.outcome.is_none()
                    && state.restarts > 0
                    && state.control.members().count() < p.min_workers.max(1)
                    && state.args.launcher.as_ref().is_none_or(|l| l.live() < p.min_workers.max(1))
                {
                    state.outcome = Some(JobOutcome::Failed {
                        reason: format!("{} workers left, the job needs at least {}", state.control.members().count(), p.min_workers.max(1)),
                    });
                }
            }
        }
        if state.outcome.is_some() {
            myself.stop(None);
        }
        Ok(())
    }

    async fn handle_supervisor_evt(&self, _myself: ActorRef<Self::Msg>, ev: SupervisionEvent, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(pg::GroupChangeMessage::Leave(_, group, cells)) = ev
            && group == WORKERS_GROUP
        {
            let ids: Vec<ActorId> = cells.iter().map(|c| c.get_id()).collect();
            state.lost_cells(&ids);
        }
        Ok(())
    }
}
