//! Straggler attribution in the actor: it hands the ranks' own step times to the state machine
//! (rule 8 decides) and carries out a flag: log line, event, metric, and the reason a drained
//! straggler leaves with.

use tessera_protocol::report::StepReport;

use super::{CoordinatorState, Removal};
use crate::control::{Event, Rank, Step, WorkerId};
use crate::events::JobEvent;

impl CoordinatorState {
    /// Feeds the own times of one complete step (reports sorted by rank) to rule 8.
    pub(super) fn rank_times(&mut self, reports: &[StepReport]) {
        let Some(r0) = reports.first() else { return };
        // Microseconds: the state machine's events are exact values (no floats to compare).
        let own_us = reports.iter().map(|r| (r.timings.own_s() * 1e6).round() as u64).collect();
        self.drive(Event::RankTimes { generation: r0.generation, step: r0.step, own_us });
    }

    /// Carries out `Action::StragglerFlagged`.
    pub(super) fn straggler_flagged(&mut self, id: WorkerId, rank: Rank, step: Step, own_us: u64, median_us: u64, drain: bool) {
        let (own_s, others_median_s) = (own_us as f64 / 1e6, median_us as f64 / 1e6);
        let factor = self.control.policy().stragglers.factor;
        let then = if drain { "draining it at the next checkpointed boundary" } else { "not drained ([stragglers] drain = false)" };
        self.log(&format!(
            "{id} (rank {rank}) is a straggler at step {step}: own step time {own_s:.3}s vs the others' median {others_median_s:.3}s (> {factor}×); {then}"
        ));
        self.args.metrics.flag_straggler(rank);
        self.record(JobEvent::StragglerFlagged {
            worker: id.0,
            rank: rank.0,
            generation: self.book.generation.0,
            step: step.0,
            own_s,
            others_median_s,
            drain,
        });
        if drain {
            let reason = format!("drained: straggler (own step {own_s:.3}s vs {others_median_s:.3}s)");
            self.removal.insert(id, Removal { reason, lost: false });
        }
    }
}
