//! What the coordinator actor is started with: its configuration, the local-process launcher
//! it drives in embedded mode, and the outcome it reports when the job ends.

use std::path::PathBuf;
use std::sync::Arc;

use crate::control::Policy;
use crate::events::EventLog;
use crate::metrics::JobMetrics;
use tessera_protocol::ledger::MixtureSchedule;
use tessera_protocol::messages::JobSpec;

/// Starts and stops local worker processes (embedded mode); implemented by the CLI.
pub trait Launcher: Send + 'static {
    /// Starts `n` more worker processes; returns their pids.
    fn spawn(&mut self, n: usize) -> Result<Vec<u32>, String>;
    /// Kills a worker process (SIGKILL works on a stopped one too) and reaps it.
    fn kill(&mut self, pid: u32);
    /// Worker processes alive.
    fn live(&self) -> usize;
}

/// Asked before each checkpoint commit. A coordinator service records the checkpoint in its
/// job store under its fence first, so a deposed coordinator (another one took the store)
/// cannot commit: the store refuses its fence.
pub trait CommitGate: Send + Sync + 'static {
    /// `Err(why)` refuses committing `manifest` (of `generation`) into `dir`.
    fn admit(
        &self,
        manifest: &tessera_protocol::checkpoint::Manifest,
        generation: tessera_protocol::Generation,
        dir: &std::path::Path,
    ) -> Result<(), String>;
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
    /// The process group this job's workers find the actor by
    /// ([`tessera_protocol::messages::coordinator_group`]).
    pub group: String,
    /// The job as workers receive it.
    pub spec: JobSpec,
    /// Membership and checkpoint policy: also the one home of the steps to train
    /// (`total_steps`: the job's, or fewer with `--max-steps`) and of the worker processes
    /// this coordinator starts (`launches` with a `launcher`, `initial_workers` at once).
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
    /// Local worker processes to start and supervise (embedded mode; exactly when
    /// `policy.launches`).
    pub launcher: Option<Box<dyn Launcher>>,
    /// Asked before every commit (cluster mode: the store's fence); `None` commits freely.
    pub commit_gate: Option<Box<dyn CommitGate>>,
    /// A generation whose ranks outlived their coordinator, to continue from their state
    /// (cluster mode's recovery; rule 11). `None`: start as usual.
    pub adopt: Option<crate::control::Adoption>,
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

/// Where a job (re)starts: its committed checkpoints and the mixture schedule in force.
#[derive(Debug, Clone)]
pub struct ResumePoint {
    /// Committed checkpoints, ascending (empty with `no_resume`).
    pub committed: Vec<u64>,
    /// The first step to train (the newest checkpoint's, else 0).
    pub start: u64,
    /// The schedule in force: the newest checkpoint's (mixture changes made while it ran), else
    /// the job's.
    pub schedule: MixtureSchedule,
    /// Checkpoint directories not resumed from, with why.
    pub rejected: Vec<String>,
}

impl ResumePoint {
    /// Reads `job`'s checkpoint directory (`no_resume`: start afresh).
    pub fn of(job: &tessera_protocol::ResolvedJob, no_resume: bool) -> crate::Result<Self> {
        use tessera_protocol::checkpoint;
        let (committed, rejected) = if no_resume { (Vec::new(), Vec::new()) } else { checkpoint::committed(&job.checkpoint.dir)? };
        let schedule = match committed.last() {
            Some(step) => checkpoint::read_manifest(&job.checkpoint.dir.join(checkpoint::dir_name(*step)))?.state.schedule,
            None => job.schedule.clone(),
        };
        Ok(Self { start: committed.last().copied().unwrap_or(0), committed, schedule, rejected })
    }
}
