//! The job's status as `GET /status` shows it, built from the coordinator's state.

use crate::api::{JobPhase, JobStatus, MemberStatus};

use super::CoordinatorState;

impl CoordinatorState {
    /// The status: the API's own type, so what the actor sends is what the API answers.
    pub(super) fn job_status(&self) -> JobStatus {
        let running = self.control.running();
        let ranks = running.map(|g| g.ranks.as_slice()).unwrap_or_default();
        let now = self.now_ms();
        let stragglers: Vec<_> = self.control.stragglers().collect();
        let members = self
            .control
            .members()
            .map(|m| MemberStatus {
                worker: m.id.0,
                addr: m.addr.clone(),
                rank: ranks.iter().position(|r| *r == m.id).map(|r| r as u32),
                seen_ms_ago: now.saturating_sub(m.last_seen_ms),
                draining: m.draining,
                last_step_s: self.workers.get(&m.id).and_then(|c| c.last_timings).map(|t| t.total_s),
                timings: self.workers.get(&m.id).and_then(|c| c.last_timings),
                rss_bytes: self.workers.get(&m.id).and_then(|c| c.last_rss),
                straggler: stragglers.contains(&m.id),
            })
            .collect();
        let phase = if self.outcome.is_some() {
            JobPhase::Finished
        } else if running.is_none() {
            if self.control.lost_generations() > 0 { JobPhase::Recovering } else { JobPhase::Waiting }
        } else if self.control.is_stopping() {
            JobPhase::Stopping
        } else {
            JobPhase::Running
        };
        let p = self.control.policy();
        JobStatus {
            job: self.args.name.clone(),
            phase,
            // The last generation started (0 before the first): the book is replaced at a start.
            generation: running.map_or(self.book.generation, |g| g.generation).0,
            world_size: ranks.len() as u32,
            step: self.control.next_step().0,
            total_steps: p.total_steps,
            loss: self.last_loss,
            target_workers: self.control.target(),
            min_workers: p.min_workers,
            max_workers: p.max_workers,
            last_checkpoint: self.control.last_committed().map(|s| s.0),
            restarts: self.control.lost_generations(),
            schedule_version: u64::from(self.mixtures.version_at(self.control.next_step().0)),
            members,
            validation: self.args.metrics.last_validation(),
        }
    }
}
