//! A generation's life in the actor: sending every rank its start (with the mixture schedule
//! settled for it), and declaring it stopped once every live rank has left its loop.

use std::net::SocketAddr;
use std::time::Instant;

use crate::control::{Event, GenerationPlan, Rank, Step, WorkerId};
use crate::events::JobEvent;
use tessera_protocol::checkpoint;
use tessera_protocol::ledger::MixtureSchedule;
use tessera_protocol::messages::{Command, GenerationStart};

use super::{CoordinatorState, GenerationBook};

impl CoordinatorState {
    /// Starts the generation the state machine planned (`adopted`: one that went on under the
    /// coordinator before this one; its ranks resume from their kept state).
    pub(super) fn start(&mut self, plan: GenerationPlan, adopted: bool) {
        let peers: Vec<SocketAddr> = plan.ranks.iter().filter_map(|id| self.workers.get(id).map(|c| c.ring_addr)).collect();
        if peers.len() != plan.ranks.len() {
            // A rank vanished between the decision and now: its leave event aborts this plan.
            self.log(&format!("generation {}: a planned rank is gone", plan.generation));
        }
        let restore_dir = plan.restore.map(|s| self.args.checkpoint_dir.join(checkpoint::dir_name(s.0)));
        self.log(&format!(
            "generation {}: {} ranks {:?}, start step {}, restore {}",
            plan.generation,
            plan.ranks.len(),
            plan.ranks.iter().map(|r| r.0).collect::<Vec<_>>(),
            plan.start_step,
            restore_dir.as_ref().map_or("none (fresh)".into(), |d| d.display().to_string())
        ));
        self.book = GenerationBook::new(plan.generation, plan.ranks.clone());
        self.ready.clear();
        // A checkpoint asked for in an earlier generation is not this one's: its duration
        // would count the whole rollback.
        self.checkpoint_asked = None;
        self.generation_started = Some(Instant::now());
        self.ending = None;
        // Before any Start is sent: the metrics refuse reports of a generation not set here.
        self.args.metrics.set_generation(plan.generation, plan.ranks.len() as u32);
        let ranks = plan.ranks.iter().map(|r| r.0).collect();
        self.record(if adopted {
            JobEvent::GenerationAdopted { generation: plan.generation.0, ranks, start_step: plan.start_step.0 }
        } else {
            JobEvent::GenerationStarted {
                generation: plan.generation.0,
                ranks,
                start_step: plan.start_step.0,
                restore: plan.restore.map(|s| s.0),
            }
        });
        let schedule = self.settle_mixtures(plan.start_step);
        for (rank, id) in plan.ranks.iter().enumerate() {
            let start = GenerationStart {
                plan: plan.clone(),
                rank: Rank(rank as u32),
                peers: peers.clone(),
                restore_dir: restore_dir.clone(),
                schedule: schedule.clone(),
                stop_at: Some(Step(self.control.policy().total_steps)),
            };
            self.send(*id, Command::Start(start));
        }
    }

    /// Declares the running generation stopped once every live rank has left its loop.
    pub(super) fn check_stopped(&mut self) {
        let Some(g) = self.control.running().map(|g| g.generation) else { return };
        if g == self.book.generation && self.control.is_stopping() {
            let alive: Vec<WorkerId> = self.workers.keys().copied().collect();
            if self.book.all_ended(|id| alive.contains(&id)) {
                self.log(&format!("generation {g}: stopped"));
                // The state machine stops a generation only through a `StopAtBoundary` or an
                // `Abort`, which set `ending`; without one there is no true reason to record.
                match self.ending.take() {
                    Some(reason) => self.record(JobEvent::GenerationEnded { generation: g.0, reason: reason.into() }),
                    None => self.log(&format!("generation {g}: stopped with no reason decided (not recorded)")),
                }
                self.drive(Event::GenerationStopped { generation: g });
            }
        }
    }

    /// The schedule for a generation starting at `start_step`, with the mixture changes queued
    /// since the last one; a change moved past where it was asked is recorded (see `mixture`).
    pub(super) fn settle_mixtures(&mut self, start_step: Step) -> MixtureSchedule {
        match self.mixtures.settle(start_step.0) {
            Ok((schedule, moved)) => {
                for m in moved {
                    self.log(&format!(
                        "mixture version {} asked for step {} starts at step {}: the ranks had trained past it",
                        m.version, m.asked_step, m.effective_step
                    ));
                    let weights = self.mixtures.named(&m.weights);
                    self.record(JobEvent::MixtureChanged { version: u64::from(m.version), effective_step: m.effective_step, weights });
                }
                schedule
            }
            Err(e) => {
                // Unreachable by construction (validated, increasing starts); the generation still
                // starts, with the changes that made it in.
                self.log(&format!("mixture changes not applied: {e}"));
                self.mixtures.schedule().clone()
            }
        }
    }
}
