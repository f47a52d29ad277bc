//! The coordinator's view of a job: members, the running generation, committed checkpoints.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
pub use tessera_protocol::job::StragglerPolicy;
pub use tessera_protocol::{Generation, GenerationPlan, Rank, Step, WorkerId};

/// Membership, checkpoint and straggler policy of a job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Fewest workers a generation may have.
    pub min_workers: usize,
    /// Most workers a generation may have.
    pub max_workers: usize,
    /// A member not heard from for this long (ms) is dead.
    pub heartbeat_timeout_ms: u64,
    /// Checkpoint every this many steps (0 = only on request / before planned changes).
    pub checkpoint_every: u64,
    /// Steps of the whole job.
    pub total_steps: u64,
    /// With at least `min_workers` but fewer than the target, wait this long (ms) for more
    /// before starting the first generation (so a job launched with N workers starts with N).
    pub rendezvous_grace_ms: u64,
    /// Workers the coordinator starts with the job (0: none, they join by hand): the first
    /// generation waits for these, not for `max_workers` that nobody may ever start.
    #[serde(default)]
    pub initial_workers: usize,
    /// The coordinator starts the job's worker processes itself (embedded mode): it replaces
    /// lost ones and knows when none are left to come.
    #[serde(default)]
    pub launches: bool,
    /// When a rank counts as a straggler and whether it is drained (rule 8).
    #[serde(default)]
    pub stragglers: StragglerPolicy,
}

/// One registered worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: WorkerId,
    /// Where it can be reached (actor / collective address).
    pub addr: String,
    /// When it joined (ms).
    pub joined_ms: u64,
    /// When it was last heard from (ms).
    pub last_seen_ms: u64,
    /// Asked to leave at the next step boundary.
    pub draining: bool,
    /// Started by the coordinator to replace a lost worker.
    #[serde(default)]
    pub replacement: bool,
    /// Has completed a step as a rank.
    #[serde(default)]
    pub trained: bool,
}

/// What happened (a message arrived, or time passed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A worker registered.
    Join {
        /// Its id.
        id: WorkerId,
        /// Its address.
        addr: String,
        /// Its process id: a process [`Event::Launched`] as a replacement joins as one (rule 5).
        pid: u32,
    },
    /// A worker is alive.
    Heartbeat {
        /// Its id.
        id: WorkerId,
    },
    /// A worker left on its own (it asked to, or was told to go).
    Leave {
        /// Its id.
        id: WorkerId,
    },
    /// A worker was lost: its link broke or its process died (a silent one is found by the
    /// heartbeat rule). A lost local worker is replaced (rule 5).
    Lost {
        /// Its id.
        id: WorkerId,
    },
    /// A local worker process that the coordinator started exited (embedded mode).
    ProcessExited {
        /// The member it was, if it had joined.
        worker: Option<WorkerId>,
        /// Its process id.
        pid: u32,
    },
    /// Local worker processes started (after an [`Action::Launch`](super::Action)).
    Launched {
        /// Their process ids.
        pids: Vec<u32>,
        /// They replace lost workers (rule 5 looks at how such a process ends).
        replacement: bool,
    },
    /// How many local worker processes are alive (embedded mode; observed by the launcher,
    /// it corrects the state machine's own count, e.g. for processes that never joined).
    Processes {
        /// Processes alive.
        live: usize,
    },
    /// Starting local worker processes failed (after an [`Action::Launch`](super::Action)).
    LaunchFailed {
        /// How many did not start.
        count: usize,
        /// They were to replace lost workers.
        replacement: bool,
    },
    /// Every rank's own time (data and compute, not waiting in collectives) for `step` of
    /// `generation`, in microseconds, by rank (rule 8).
    RankTimes {
        /// The generation.
        generation: Generation,
        /// The step.
        step: Step,
        /// Own time of rank `i` at index `i`.
        own_us: Vec<u64>,
    },
    /// Every rank of `generation` finished `step` (the coordinator has all step reports).
    StepDone {
        /// The generation.
        generation: Generation,
        /// The step completed (0-based).
        step: Step,
    },
    /// A checkpoint was committed (every shard durable, manifest renamed into place).
    CheckpointCommitted {
        /// The step count it holds (training resumes at this step).
        step: Step,
    },
    /// Every rank of `generation` wrote its shard of the checkpoint of `step`: commit it?
    CheckpointReady {
        /// The generation that wrote it.
        generation: Generation,
        /// The step count it holds.
        step: Step,
    },
    /// A committed checkpoint turned out bad (it failed verification when a generation could
    /// not restore it): it is never restored again (rule 7).
    CheckpointBad {
        /// The step it holds.
        step: Step,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint attempt failed (it is not committed and never used).
    CheckpointFailed {
        /// The step it was for.
        step: Step,
        /// What failed (e.g. a write error such as a full disk).
        reason: String,
    },
    /// A rank of `generation` left its loop with an error (e.g. a collective timed out): the
    /// generation is aborted; its members stay (a dead one is found by its heartbeat).
    GenerationFailed {
        /// The generation.
        generation: Generation,
        /// The rank's worker.
        id: WorkerId,
    },
    /// The generation stopped (all ranks left their loop), as asked or after an abort.
    GenerationStopped {
        /// The generation.
        generation: Generation,
    },
    /// The user asked for this many workers (rule 9).
    Scale {
        /// Desired worker count.
        workers: usize,
    },
    /// The user asked to drain this worker at the next checkpointed boundary (rule 9).
    Drain {
        /// The worker.
        id: WorkerId,
    },
    /// The user asked for a checkpoint at the next boundary (rule 9).
    RequestCheckpoint,
    /// Stop the job: checkpoint at the next boundary, then finish (it can be resumed later).
    Shutdown,
    /// What every rank must be told at generation start changed (e.g. the dataset mixture):
    /// the running generation ends at the next step boundary with a checkpoint, and the next
    /// generation starts from it with the new settings. Ignored when no generation runs or the
    /// running one is already stopping (the next generation gets the new settings anyway).
    Reconfigure,
    /// Time passed; nothing else happened.
    Tick,
}

/// The coordinator's state; see the module docs of [`crate::control`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    pub(super) policy: Policy,
    pub(super) members: BTreeMap<WorkerId, Member>,
    pub(super) running: Option<GenerationPlan>,
    /// The generation is asked to stop (planned or abort) and has not confirmed yet.
    pub(super) stopping: bool,
    /// Steps completed by the running generation (the next step to train).
    pub(super) next_step: Step,
    /// Committed checkpoints (their step counts), ascending.
    pub(super) committed: Vec<Step>,
    /// A checkpoint is in flight for this step.
    pub(super) checkpoint_in_flight: Option<Step>,
    /// Desired number of workers.
    pub(super) target: usize,
    pub(super) next_generation: Generation,
    /// A checkpoint was requested and not yet started.
    pub(super) checkpoint_requested: bool,
    /// `Finish` was announced.
    pub(super) done: bool,
    /// The job is shutting down (checkpoint, stop, finish).
    pub(super) shutdown: bool,
    /// Since when (ms) enough members for a generation have been waiting.
    pub(super) ready_since: Option<u64>,
    /// The running generation must end at a boundary so the next one gets new settings.
    #[serde(default)]
    pub(super) reconfigure: bool,
    /// The running generation has trained at least one step.
    #[serde(default)]
    pub(super) progressed: bool,
    /// The running generation was aborted because a rank failed.
    #[serde(default)]
    pub(super) rank_failed: bool,
    /// Generations in a row that failed with every rank alive without getting past the point
    /// where the one before them failed (before their first step, or at the same step again):
    /// a failure that restarting cannot fix (a checkpoint that does not load, a bad job, a
    /// deterministic error at some step).
    #[serde(default)]
    pub(super) failed_starts: u32,
    /// The step count the last generation that failed with every rank alive had reached.
    #[serde(default)]
    pub(super) failed_at: Option<Step>,
    /// The checkpoints of the newest generation may not be committed (it was aborted).
    #[serde(default)]
    pub(super) commit_barred: bool,
    /// Failed attempts at the final checkpoint of the job, and the newest failure's cause.
    #[serde(default)]
    pub(super) final_failures: u32,
    /// The cause of the newest failed checkpoint.
    #[serde(default)]
    pub(super) last_checkpoint_error: Option<String>,
    /// The job cannot go on: it fails with this reason once no generation runs.
    #[serde(default)]
    pub(super) fatal: Option<String>,
    /// Local worker processes started and not yet exited (embedded mode).
    #[serde(default)]
    pub(super) processes: usize,
    /// Replacement processes started that have not joined (or exited) yet.
    #[serde(default)]
    pub(super) launching: usize,
    /// Generations aborted because a rank was lost or failed.
    #[serde(default)]
    pub(super) lost_generations: u64,
    /// The step at which the newest periodic checkpoint was asked for.
    #[serde(default)]
    pub(super) periodic_asked: Option<Step>,
    /// Consecutive steps each rank of the running generation was slow (rule 8), by rank.
    #[serde(default)]
    pub(super) slow_steps: Vec<u32>,
    /// Workers flagged as stragglers in the running generation.
    #[serde(default)]
    pub(super) stragglers: BTreeSet<WorkerId>,
    /// A drained straggler's successor is starting: its generation runs on until the successor
    /// joins or until this time (ms), so both changes take one generation restart (rule 10).
    #[serde(default)]
    pub(super) successor_due_ms: Option<u64>,
    /// Processes launched as replacements that have not joined or exited yet (rule 5).
    #[serde(default)]
    pub(super) replacement_pids: BTreeSet<u32>,
    /// The generation whose restored checkpoint was last sent for verification (rule 7).
    #[serde(default)]
    pub(super) verify_asked: Option<Generation>,
    /// A generation whose ranks outlived their coordinator, waiting to be adopted (rule 11).
    #[serde(default)]
    pub(super) adopting: Option<super::adopt::Adoption>,
    /// Since when (ms) the adoption has waited for its ranks.
    #[serde(default)]
    pub(super) adopt_since: Option<u64>,
}

/// After this many generations in a row fail with all ranks alive without getting past the
/// point of the failure before them, the job fails instead of restarting forever.
pub const MAX_FAILED_STARTS: u32 = 3;

/// How long (ms) a drained straggler's generation waits for its successor to join (rule 10).
/// A worker process starts in seconds (the binary, libtorch, a handshake); a minute covers a
/// loaded machine, and past it the straggler has cost more than a second restart would.
pub const SUCCESSOR_WAIT_MS: u64 = 60_000;

/// Attempts at the job's final checkpoint before the job fails with the write error (a full
/// disk does not empty itself; the last good checkpoint stays intact).
pub const MAX_FINAL_CHECKPOINT_ATTEMPTS: u32 = 3;

impl Control {
    /// A job with no members yet; it wants `policy.max_workers` workers (and, in embedded
    /// mode, has started `policy.initial_workers` processes).
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            members: BTreeMap::new(),
            running: None,
            stopping: false,
            next_step: Step(0),
            committed: Vec::new(),
            checkpoint_in_flight: None,
            target: policy.max_workers,
            next_generation: Generation(0),
            checkpoint_requested: false,
            done: false,
            ready_since: None,
            shutdown: false,
            reconfigure: false,
            progressed: false,
            rank_failed: false,
            failed_starts: 0,
            failed_at: None,
            commit_barred: false,
            final_failures: 0,
            last_checkpoint_error: None,
            fatal: None,
            processes: if policy.launches { policy.initial_workers } else { 0 },
            launching: 0,
            lost_generations: 0,
            periodic_asked: None,
            slow_steps: Vec::new(),
            stragglers: BTreeSet::new(),
            successor_due_ms: None,
            replacement_pids: BTreeSet::new(),
            verify_asked: None,
            adopting: None,
            adopt_since: None,
        }
    }

    /// A job restarted from its state directory: committed checkpoints already exist.
    pub fn with_committed(policy: Policy, committed: Vec<Step>) -> Self {
        let mut c = Self::new(policy);
        c.committed = committed;
        c.committed.sort_unstable();
        c.next_step = c.committed.last().copied().unwrap_or_default();
        c
    }

    /// The members.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The running generation.
    pub fn running(&self) -> Option<&GenerationPlan> {
        self.running.as_ref()
    }

    /// The next step to train.
    pub fn next_step(&self) -> Step {
        self.next_step
    }

    /// The newest committed checkpoint.
    pub fn last_committed(&self) -> Option<Step> {
        self.committed.last().copied()
    }

    /// The worker count the job wants.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// True while the running generation is asked to stop (planned or abort).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// True once the job is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown
    }

    /// Generations aborted because a rank was lost or failed.
    pub fn lost_generations(&self) -> u64 {
        self.lost_generations
    }

    /// Local worker processes started and not yet exited (embedded mode).
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// True while process `pid` was launched as a replacement and has not joined or exited.
    pub fn is_pending_replacement(&self, pid: u32) -> bool {
        self.replacement_pids.contains(&pid)
    }

    /// True when every step of the job is done.
    pub fn finished(&self) -> bool {
        self.next_step.0 >= self.policy.total_steps
    }
}
