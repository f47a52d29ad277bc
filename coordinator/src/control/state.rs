//! The coordinator's view of a job: members, the running generation, committed checkpoints.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A worker process, as the coordinator names it (unique for the job's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker#{}", self.0)
    }
}

/// Membership and checkpoint policy of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// A generation: the ranks that train together until the membership changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationPlan {
    /// Generation number (strictly increasing).
    pub generation: u64,
    /// Rank `i` is `ranks[i]`.
    pub ranks: Vec<WorkerId>,
    /// First step it trains.
    pub start_step: u64,
    /// Step of the committed checkpoint it restores (`None`: fresh start).
    pub restore: Option<u64>,
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
    },
    /// A worker is alive.
    Heartbeat {
        /// Its id.
        id: WorkerId,
    },
    /// A worker left or its link broke.
    Leave {
        /// Its id.
        id: WorkerId,
    },
    /// Every rank of `generation` finished `step` (the coordinator has all step reports).
    StepDone {
        /// The generation.
        generation: u64,
        /// The step completed (0-based).
        step: u64,
    },
    /// A checkpoint was committed (every shard durable, manifest renamed into place).
    CheckpointCommitted {
        /// The step count it holds (training resumes at this step).
        step: u64,
    },
    /// A checkpoint attempt failed (it is not committed and never used).
    CheckpointFailed {
        /// The step it was for.
        step: u64,
    },
    /// A rank of `generation` left its loop with an error (e.g. a collective timed out): the
    /// generation is aborted; its members stay (a dead one is found by its heartbeat).
    GenerationFailed {
        /// The generation.
        generation: u64,
        /// The rank's worker.
        id: WorkerId,
    },
    /// The generation stopped (all ranks left their loop), as asked or after an abort.
    GenerationStopped {
        /// The generation.
        generation: u64,
    },
    /// The user asked for this many workers.
    Scale {
        /// Desired worker count.
        workers: usize,
    },
    /// The user (or SIGTERM) asked for a checkpoint.
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
    pub(super) next_step: u64,
    /// Committed checkpoints (their step counts), ascending.
    pub(super) committed: Vec<u64>,
    /// A checkpoint is in flight for this step.
    pub(super) checkpoint_in_flight: Option<u64>,
    /// Desired number of workers.
    pub(super) target: usize,
    pub(super) next_generation: u64,
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
    pub(super) failed_at: Option<u64>,
}

/// After this many generations in a row fail with all ranks alive without getting past the
/// point of the failure before them, the job fails instead of restarting forever.
pub const MAX_FAILED_STARTS: u32 = 3;

impl Control {
    /// A job with no members yet; it wants `policy.max_workers` workers.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            members: BTreeMap::new(),
            running: None,
            stopping: false,
            next_step: 0,
            committed: Vec::new(),
            checkpoint_in_flight: None,
            target: policy.max_workers,
            next_generation: 0,
            checkpoint_requested: false,
            done: false,
            ready_since: None,
            shutdown: false,
            reconfigure: false,
            progressed: false,
            rank_failed: false,
            failed_starts: 0,
            failed_at: None,
        }
    }

    /// A job restarted from its state directory: committed checkpoints already exist.
    pub fn with_committed(policy: Policy, committed: Vec<u64>) -> Self {
        let mut c = Self::new(policy);
        c.committed = committed;
        c.committed.sort_unstable();
        c.next_step = c.committed.last().copied().unwrap_or(0);
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
    pub fn next_step(&self) -> u64 {
        self.next_step
    }

    /// The newest committed checkpoint.
    pub fn last_committed(&self) -> Option<u64> {
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

    /// True when every step of the job is done.
    pub fn finished(&self) -> bool {
        self.next_step >= self.policy.total_steps
    }
}
