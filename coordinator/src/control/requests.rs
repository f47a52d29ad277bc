//! Rule 9 of [`Control::handle`](super::Control::handle): what the user asks through the API
//! (`tessera scale|drain|checkpoint`). A request the job cannot honour is refused with
//! [`Action::Refused`] and changes nothing; one it can honour is applied here, so the actor
//! only translates the request into an event and the refusal into an HTTP error:
//! - a scale to a worker count outside `[max(1, min_workers), max_workers]` is refused;
//!   otherwise the count becomes the target (rule 5 launches what a scale-up needs), and the
//!   newest members beyond it are drained at the next checkpointed boundary (the
//!   longest-standing stay, as rule 3 forms generations from them);
//! - draining a worker that is not a member is refused, as is one that would leave fewer than
//!   `min_workers` members not already leaving; a worker already draining is left as it is;
//! - a checkpoint is refused when no generation runs (nothing to checkpoint) or when the
//!   running one is stopping (it checkpoints at its stop if it can).

use serde::{Deserialize, Serialize};

use super::decide::Action;
use super::state::{Control, WorkerId};

/// Why a request is refused (rule 9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// A worker count outside the job's bounds.
    ScaleOutOfBounds {
        /// The count asked for.
        workers: usize,
        /// The fewest workers the job may have (at least 1).
        min: usize,
        /// The most workers the job may have.
        max: usize,
    },
    /// The worker to drain is not a member of the job.
    NotAMember(WorkerId),
    /// Draining the worker would leave fewer members than the job needs.
    TooFewLeft {
        /// The worker.
        id: WorkerId,
        /// Members that would stay.
        staying: usize,
        /// The fewest the job needs.
        min: usize,
    },
    /// No generation runs: there is nothing to checkpoint.
    NothingRunning,
    /// The running generation is stopping already.
    Stopping,
}

/// Why a member is drained by a request (rule 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrainCause {
    /// The job was scaled down to this many workers and it is among the newest beyond them.
    ScaledDown {
        /// The new target.
        workers: usize,
    },
    /// The user asked for it by name.
    Asked,
}

impl Control {
    /// Rule 9: the user asks for `workers` workers.
    pub(super) fn scale(&mut self, workers: usize, actions: &mut Vec<Action>) {
        let (min, max) = (self.policy.min_workers.max(1), self.policy.max_workers);
        if workers < min || workers > max {
            actions.push(Action::Refused(Refusal::ScaleOutOfBounds { workers, min, max }));
            return;
        }
        self.target = workers;
        self.launch_for_target(actions);
        let mut by_age: Vec<(u64, WorkerId)> = self.members.values().map(|m| (m.joined_ms, m.id)).collect();
        by_age.sort_unstable();
        for (_, id) in by_age.into_iter().skip(workers) {
            self.drain(id);
            actions.push(Action::Draining { id, cause: DrainCause::ScaledDown { workers } });
        }
    }

    /// Rule 9: the user asks to drain `id`.
    pub(super) fn drain_asked(&mut self, id: WorkerId, actions: &mut Vec<Action>) {
        let Some(m) = self.members.get(&id) else {
            actions.push(Action::Refused(Refusal::NotAMember(id)));
            return;
        };
        if m.draining {
            return;
        }
        let staying = self.members.values().filter(|m| !m.draining && m.id != id).count();
        let min = self.policy.min_workers.max(1);
        if staying < min {
            actions.push(Action::Refused(Refusal::TooFewLeft { id, staying, min }));
            return;
        }
        self.drain(id);
        actions.push(Action::Draining { id, cause: DrainCause::Asked });
    }

    /// Rule 9: the user asks for a checkpoint at the next boundary.
    pub(super) fn checkpoint_asked(&mut self, actions: &mut Vec<Action>) {
        if self.running.is_none() {
            actions.push(Action::Refused(Refusal::NothingRunning));
        } else if self.stopping {
            actions.push(Action::Refused(Refusal::Stopping));
        } else {
            self.checkpoint_requested = true;
        }
    }
}
