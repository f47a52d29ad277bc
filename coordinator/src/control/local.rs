//! Rules 5 and 6 of [`Control::handle`](super::Control::handle): losing a worker, replacing it
//! with a new local process (embedded mode), starting processes for a scale-up, and failing a
//! job that nobody can join any more.

use super::decide::{Action, NoReplacement, StopReason};
use super::state::{Control, WorkerId};

impl Control {
    /// Rule 5: `id` was lost (silent, link broken, process dead). It is removed, its generation
    /// aborted if it was a rank, and in embedded mode a new process replaces it unless the job
    /// is ending, already has the workers it wants, or `id` was itself a replacement that was
    /// lost before training a step (a crash loop). The guard is per worker, not per job step:
    /// several originals lost at once each get a successor.
    pub(super) fn lose(&mut self, id: WorkerId, actions: &mut Vec<Action>) {
        let Some(lost) = self.members.remove(&id) else { return };
        actions.push(Action::Remove { id, lost: true });
        if self.is_rank(id) {
            self.abort(StopReason::MemberLost { worker: id }, actions);
        }
        if !self.policy.launches {
            return;
        }
        let workers = self.members.values().filter(|m| !m.draining).count() + self.launching;
        let why = if self.done || self.shutdown || self.fatal.is_some() {
            Some(NoReplacement::Ending)
        } else if lost.draining {
            Some(NoReplacement::WasLeaving)
        } else if lost.replacement && !lost.trained {
            Some(NoReplacement::CrashLoop)
        } else if workers >= self.target {
            Some(NoReplacement::AtTarget { workers, target: self.target })
        } else {
            None
        };
        match why {
            Some(why) => actions.push(Action::NotReplaced { lost: id, why }),
            None => {
                self.launching += 1;
                self.processes += 1;
                actions.push(Action::Launch { count: 1, replacing: Some(id) });
            }
        }
    }

    /// After a scale request (embedded mode): starts the processes that bring the job up to
    /// its target, counting members and processes already started but not joined.
    pub(super) fn launch_for_target(&mut self, actions: &mut Vec<Action>) {
        if !self.policy.launches || self.done || self.shutdown {
            return;
        }
        let have = self.members.values().filter(|m| !m.draining).count().max(self.processes);
        if self.target > have {
            let count = self.target - have;
            self.processes += count;
            actions.push(Action::Launch { count, replacing: None });
        }
    }

    /// Rule 6: with no generation running and fewer members than `min_workers`, fails the job
    /// when nobody can come: fewer local processes alive than `min_workers` (embedded mode),
    /// or, with workers joined by hand, once a generation was lost.
    pub(super) fn fail_if_stranded(&mut self, actions: &mut Vec<Action>) {
        if self.done || self.running.is_some() || self.stopping {
            return;
        }
        let min = self.policy.min_workers.max(1);
        let members = self.members.len();
        if members >= min {
            return;
        }
        let stranded = if self.policy.launches { self.processes < min } else { self.lost_generations > 0 };
        if stranded {
            actions.push(Action::Fail { reason: format!("{members} workers left, the job needs at least {min}") });
            self.done = true;
        }
    }
}
