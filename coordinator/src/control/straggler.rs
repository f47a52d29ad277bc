//! Rule 8 of [`Control::handle`](super::Control::handle): straggler attribution. In a
//! synchronous job every rank's step takes as long as the slowest one's (the others wait for it
//! inside the collectives), so ranks are compared by their *own* time: data loading and compute,
//! the step less the time blocked in collectives
//! ([`StepTimings::own_s`](tessera_protocol::StepTimings::own_s)). A rank whose own time
//! exceeds `factor` × the median of the other ranks' own times for `steps` steps in a row is
//! flagged, once per generation. With `drain` on it is drained at a checkpointed boundary (as a
//! scale-down is, so no step is lost) and, in embedded mode, a new local process replaces it at
//! the same boundary (rule 10); without a launcher it is drained only if the job keeps
//! `min_workers` without it.

use super::decide::Action;
use super::state::{Control, Generation, Rank, Step};

/// The median of `v` (the mean of the middle two for an even count); `v` must not be empty.
fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    let n = v.len();
    if !n.is_multiple_of(2) { v[n / 2] as f64 } else { (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0 }
}

impl Control {
    /// Rule 8: takes the own step times (µs, by rank) of one step of `generation`.
    pub(super) fn rank_times(&mut self, now_ms: u64, generation: Generation, step: Step, own_us: &[u64], actions: &mut Vec<Action>) {
        let Some(g) = self.running.as_ref().filter(|g| g.generation == generation) else { return };
        // A single rank has nobody to be compared with; a report of another world is stale.
        if own_us.len() < 2 || own_us.len() != g.ranks.len() {
            return;
        }
        let ranks = g.ranks.clone();
        let policy = self.policy.stragglers;
        self.slow_steps.resize(ranks.len(), 0);
        for (rank, &own) in own_us.iter().enumerate() {
            let mut others: Vec<u64> = own_us.iter().enumerate().filter(|(r, _)| *r != rank).map(|(_, t)| *t).collect();
            let median_us = median(&mut others);
            // Others at 0 µs (a clock that did not tick) say nothing about this rank.
            let slow = median_us > 0.0 && own as f64 > policy.factor * median_us;
            self.slow_steps[rank] = if slow { self.slow_steps[rank] + 1 } else { 0 };
            let id = ranks[rank];
            if self.slow_steps[rank] < policy.steps || self.stragglers.contains(&id) {
                continue;
            }
            self.stragglers.insert(id);
            let drain = policy.drain && self.may_drain(id);
            actions.push(Action::StragglerFlagged { id, rank: Rank(rank as u32), step, own_us: own, median_us: median_us as u64, drain });
            if drain {
                if let Some(m) = self.members.get_mut(&id) {
                    m.draining = true;
                }
                if self.policy.launches {
                    // Rule 10: the straggler stays until its successor joins, and both change at
                    // one boundary.
                    self.launching += 1;
                    self.processes += 1;
                    self.successor_due_ms = Some(now_ms + super::SUCCESSOR_WAIT_MS);
                    actions.push(Action::Launch { count: 1, replacing: Some(id) });
                }
            }
        }
    }

    /// Whether a flagged straggler may be drained: the job is not ending, it is not leaving
    /// already, and without a launcher to replace it the job keeps `min_workers` without it.
    fn may_drain(&self, id: super::WorkerId) -> bool {
        let ending = self.done || self.shutdown || self.fatal.is_some() || self.stopping && self.finished();
        let Some(m) = self.members.get(&id) else { return false };
        let staying = self.members.values().filter(|m| !m.draining && m.id != id).count();
        !ending && !m.draining && (self.policy.launches || staying >= self.policy.min_workers.max(1))
    }

    /// Workers flagged as stragglers in the running generation.
    pub fn stragglers(&self) -> impl Iterator<Item = super::WorkerId> + '_ {
        self.stragglers.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [5, 1, 3]), 3.0);
        assert_eq!(median(&mut [4, 1]), 2.5);
        assert_eq!(median(&mut [7]), 7.0);
    }
}
