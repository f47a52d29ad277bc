//! The worker counts the service has asked of each running job's coordinator (its *target*),
//! and the ceilings users set with `tessera scale`. Pure bookkeeping for
//! [`super::Service::reschedule`]: the queue ([`crate::control::queue`]) decides shrinks and
//! growth in worker counts; this turns them into the target to ask the job's coordinator for,
//! and tells the queue how many of a job's workers are already on their way out.
//!
//! A job's coordinator starts with its target at the job's maximum, so a job that only ever
//! grows is never asked anything. A Q4 shrink lowers the target (the coordinator drains the
//! newest members beyond it at its next checkpointed boundary); a later growth raises it
//! again before the new workers are sent, or the coordinator would leave them waiting.

use std::collections::BTreeMap;

use crate::store::JobId;

/// The targets asked and the users' ceilings, by job.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Targets {
    /// The target last asked of a job's coordinator (absent: its maximum, never asked).
    asked: BTreeMap<JobId, u32>,
    /// The most workers a user scaled the job to (absent: the job's maximum).
    ceiling: BTreeMap<JobId, u32>,
}

impl Targets {
    /// The most workers the queue may give `job`, whose range allows `max`.
    pub fn max(&self, job: JobId, max: u32) -> u32 {
        self.ceiling.get(&job).map_or(max, |&c| c.min(max))
    }

    /// Of the `held` workers `job` holds, those beyond its asked target: leaving it at its
    /// next checkpointed boundary.
    pub fn releasing(&self, job: JobId, held: u32) -> u32 {
        self.asked.get(&job).map_or(0, |&t| held.saturating_sub(t))
    }

    /// Q4: `job`, holding `held`, gives up `by` more workers; the target to ask for.
    pub fn shrink(&mut self, job: JobId, held: u32, by: u32) -> u32 {
        let staying = held - self.releasing(job, held);
        let target = staying.saturating_sub(by);
        self.asked.insert(job, target);
        target
    }

    /// Q3: `job`, holding `held`, is given `by` more workers; the target to ask for first, when
    /// its coordinator's target is below its new count.
    pub fn grow(&mut self, job: JobId, held: u32, by: u32) -> Option<u32> {
        let want = held + by;
        match self.asked.get(&job) {
            Some(&t) if t < want => {
                self.asked.insert(job, want);
                Some(want)
            }
            _ => None,
        }
    }

    /// A user scaled `job` to `workers` (its coordinator accepted): the new target and ceiling.
    pub fn scaled(&mut self, job: JobId, workers: u32) {
        self.asked.insert(job, workers);
        self.ceiling.insert(job, workers);
    }

    /// A target the coordinator refused: it keeps the one it had, which the service no longer
    /// knows; forget it, so no worker counts as leaving on its account.
    pub fn refused(&mut self, job: JobId) {
        self.asked.remove(&job);
    }

    /// `job` ended (or its coordinator is replaced): a new coordinator starts at its maximum.
    pub fn forget(&mut self, job: JobId) {
        self.asked.remove(&job);
        self.ceiling.remove(&job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const J: JobId = JobId(1);

    #[test]
    fn a_job_never_asked_releases_nothing_and_grows_without_asking() {
        let mut t = Targets::default();
        assert_eq!(t.releasing(J, 3), 0);
        assert_eq!(t.grow(J, 2, 1), None);
        assert_eq!(t.max(J, 4), 4);
    }

    #[test]
    fn a_shrink_asks_below_what_stays_and_counts_the_leavers_until_they_left() {
        let mut t = Targets::default();
        assert_eq!(t.shrink(J, 3, 2), 1);
        assert_eq!(t.releasing(J, 3), 2);
        // A second shrink while the first is under way counts from those staying.
        assert_eq!(t.shrink(J, 3, 0), 1);
        // One left, then the other.
        assert_eq!(t.releasing(J, 2), 1);
        assert_eq!(t.releasing(J, 1), 0);
    }

    #[test]
    fn growth_after_a_shrink_raises_the_target_first() {
        let mut t = Targets::default();
        t.shrink(J, 3, 2);
        assert_eq!(t.grow(J, 1, 2), Some(3));
        assert_eq!(t.releasing(J, 3), 0);
        // Already at or above what it is given: nothing to ask.
        assert_eq!(t.grow(J, 3, 0), None);
    }

    #[test]
    fn a_users_scale_caps_growth_and_a_refusal_or_end_forgets() {
        let mut t = Targets::default();
        t.scaled(J, 2);
        assert_eq!(t.max(J, 4), 2);
        assert_eq!(t.max(J, 1), 1);
        assert_eq!(t.releasing(J, 3), 1);
        t.refused(J);
        assert_eq!(t.releasing(J, 3), 0);
        assert_eq!(t.max(J, 4), 2);
        t.forget(J);
        assert_eq!(t.max(J, 4), 4);
    }
}
