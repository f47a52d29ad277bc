//! The coordinator actor: owns one job. It turns worker events, API requests and time into
//! [`Event`]s for the pure [`Control`] state machine and carries out the [`Action`]s it returns
//! (send commands, commit checkpoints, start or kill local worker processes). It is never on
//! the tensors' path: ranks step on their own and only report.
//!
//! This file holds the actor's state and its message loop; each submodule carries out one part:
//! `inbox` translates what arrives, `act` carries out actions, `generation`, `membership`,
//! `progress`, `commit`, `recovery`, `straggler` and `request` do the work of each, `journal`
//! records, `status` answers `GET /status`.

mod act;
mod aggregate;
mod args;
mod bridge;
mod clock;
mod commit;
mod generation;
mod inbox;
mod journal;
mod membership;
mod mixture;
mod progress;
mod recovery;
mod request;
mod status;
mod straggler;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, pg};

pub use aggregate::{GenerationBook, PendingCheckpoint};
pub use args::{CommitGate, CoordinatorArgs, JobOutcome, Launcher, ResumePoint};
pub use bridge::{ActorBridge, CALL_TIMEOUT};
pub use mixture::{MixtureChange, Mixtures, MovedChange};

use crate::api::ApiError;
use crate::control::{Control, Event, Generation, Step, WorkerId};
use crate::error::CoordinatorError;
use crate::events::JobEvent;
use tessera_protocol::messages::{Command, CoordinatorMsg, Wire, WorkerEvent, WorkerMsg};

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
    /// The newest step in the train log when this coordinator adopted its job: reports of steps
    /// up to it (re-sent by the adopted ranks) are not logged again.
    logged_through: Option<u64>,
    last_loss: Option<f64>,
    /// Checkpoints whose shards are all written, waiting for the state machine's decision.
    ready: BTreeMap<(Generation, Step), PendingCheckpoint>,
    /// Why the last `Launch` failed (a scale request answers with it).
    launch_error: Option<String>,
    /// Why the state machine refused the request being answered (rule 9).
    refusal: Option<crate::control::Refusal>,
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
    ending: Option<crate::control::StopReason>,
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
}

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, mut args: CoordinatorArgs) -> Result<Self::State, ActorProcessingErr> {
        pg::join(args.group.clone(), vec![myself.get_cell()]);
        std::fs::create_dir_all(&args.output_dir)?;
        let log_path = args.output_dir.join("train_log.jsonl");
        let train_log = tessera_protocol::jsonl::JsonLines::open(&log_path)?;
        // The policy is the one home of what this coordinator launches: a launcher without
        // `launches` (or the reverse) would leave rules 3, 5 and 6 counting processes wrongly.
        let policy = args.policy;
        if policy.launches != args.launcher.is_some() {
            return Err(CoordinatorError::LauncherMismatch { launches: policy.launches }.into());
        }
        let committed: Vec<Step> = args.committed.iter().copied().map(Step).collect();
        let (control, next_worker, logged_through) = match args.adopt.clone() {
            // Rule 11: the adopted ranks keep their ids; the train log already holds the steps
            // the lost coordinator logged, and none is written twice.
            Some(a) => {
                let next = a.ranks.iter().map(|w| w.0 + 1).max().unwrap_or(0);
                (Control::adopting(policy, committed, a), next, tessera_protocol::jsonl::JsonLines::last_step(&log_path))
            }
            None => (Control::with_committed(policy, committed), 0, None),
        };
        let mixtures = Mixtures::new(args.schedule.clone(), args.dataset_names.clone(), args.global_batch_size)?;
        if let Some(l) = args.launcher.as_mut()
            && policy.initial_workers > 0
        {
            l.spawn(policy.initial_workers).map_err(|e| format!("starting {} workers: {e}", policy.initial_workers))?;
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
            next_worker,
            logged_through,
            book: GenerationBook::default(),
            train_log: Some(train_log),
            last_loss: None,
            ready: BTreeMap::new(),
            launch_error: None,
            refusal: None,
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
        state.record(JobEvent::CoordinatorStarted { resumed_step: resumed_step.map(|s| s.0) });
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
            CoordinatorMsg::ProcessExited(Wire(Ok((pid, how)))) => state.process_exited(pid, how),
            CoordinatorMsg::ProcessExited(Wire(Err(e))) => state.log(&format!("undecodable exit notice: {e}")),
            CoordinatorMsg::Tick(_) => state.tick(),
            CoordinatorMsg::PoolLost(Wire(Ok(loss))) => state.pool_lost(&loss),
            CoordinatorMsg::PoolLost(Wire(Err(e))) => state.log(&format!("undecodable pool loss: {e}")),
            CoordinatorMsg::SessionClosed(Wire(Ok(node))) => state.session_closed(node),
            CoordinatorMsg::SessionClosed(Wire(Err(e))) => state.log(&format!("undecodable session close: {e}")),
        }
        if state.outcome.is_some() {
            myself.stop(None);
        }
        Ok(())
    }
}
