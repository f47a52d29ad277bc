//! Carrying out the state machine's [`Action`]s: commands to the ranks, removals, commits,
//! launches, and the job's end.

use std::time::Instant;

use crate::control::{Action, DrainCause, Ending, NoReplacement};
use crate::events::JobEvent;
use tessera_protocol::messages::{Command, ExitReason};

use super::{CoordinatorState, JobOutcome, Removal};

impl CoordinatorState {
    /// Carries out one action of the state machine.
    pub(super) fn act(&mut self, action: Action) {
        match action {
            Action::Start(plan) => self.start(plan, false),
            Action::Adopted(plan) => {
                self.log(&format!(
                    "generation {}: adopted from the lost coordinator, going on from step {} with the ranks' state (nothing redone)",
                    plan.generation, plan.start_step
                ));
                self.start(plan, true);
            }
            Action::AdoptionAbandoned { generation, missing } => {
                let missing: Vec<u64> = missing.iter().map(|w| w.0).collect();
                self.log(&format!("generation {generation} not adopted: workers {missing:?} did not join in time; restoring instead"));
            }
            Action::Checkpoint { generation, step } => {
                self.log(&format!("generation {generation}: checkpoint requested (next boundary, ≥ step {step})"));
                self.checkpoint_asked.get_or_insert_with(Instant::now);
                for id in self.book.ranks.clone() {
                    self.send(id, Command::Checkpoint { generation, asked_at: step });
                }
            }
            Action::StopAtBoundary { generation, checkpoint, reason } => {
                self.log(&format!("generation {generation}: stop at the next step boundary ({reason})"));
                self.ending = Some(reason);
                if checkpoint {
                    self.checkpoint_asked.get_or_insert_with(Instant::now);
                }
                for id in self.book.ranks.clone() {
                    self.send(id, Command::Stop { generation, checkpoint });
                }
            }
            Action::Abort { generation, reason } => {
                self.log(&format!("generation {generation}: abort ({reason})"));
                // What this generation still hands over is refused by rule 4, not here.
                self.checkpoint_asked = None;
                // The ranks only print it: text is what they need.
                let why = reason.to_string();
                self.ending = Some(reason);
                for id in self.book.ranks.clone() {
                    self.send(id, Command::Abort { generation, reason: why.clone() });
                }
                if reason.is_loss() {
                    self.args.metrics.inc_restarts();
                }
                self.check_stopped();
            }
            Action::Remove { id, lost } => {
                self.send(id, Command::Exit { why: if lost { ExitReason::Lost } else { ExitReason::Released } });
                if let Some(c) = self.workers.remove(&id) {
                    self.log(&format!("{id} (pid {}) removed", c.pid));
                    if let Some(l) = self.args.launcher.as_mut() {
                        l.kill(c.pid);
                    }
                    self.removed.insert(id, c.actor);
                }
                // With no reason set before, the state machine found it silent for too long.
                let timeout = self.control.policy().heartbeat_timeout_ms;
                let reason = self.removal.remove(&id).map_or_else(|| format!("no heartbeat for more than {timeout} ms"), |r| r.reason);
                self.record(JobEvent::WorkerRemoved { worker: id.0, reason });
                self.workers_changed();
                self.check_stopped();
            }
            Action::Commit { generation, step } => {
                if let Some(p) = self.ready.remove(&(generation, step)) {
                    self.commit(step, p);
                }
            }
            Action::Launch { count, replacing } => self.launch(count, replacing),
            Action::StragglerFlagged { id, rank, step, own_us, median_us, drain } => {
                self.straggler_flagged(id, rank, step, own_us, median_us, drain)
            }
            Action::NotReplaced { lost, why } => {
                let text = match why {
                    NoReplacement::CrashLoop => "it was itself a replacement, lost before it trained a step (a crash loop)".to_string(),
                    NoReplacement::AtTarget { workers, target } => format!("the job has {workers} of the {target} workers it wants"),
                    NoReplacement::Ending => "the job is ending".to_string(),
                    NoReplacement::WasLeaving => "it was leaving the job".to_string(),
                };
                self.log(&format!("not replacing lost {lost}: {text}"));
            }
            Action::VerifyRestore { step } => self.verify_restore(step),
            Action::Refused(why) => self.refusal = Some(why),
            Action::Draining { id, cause } => {
                let reason = match cause {
                    DrainCause::ScaledDown { workers } => format!("drained: scaled to {workers} workers"),
                    DrainCause::Asked => {
                        self.log(&format!("{id}: drain asked through the API; it leaves at the next checkpointed boundary"));
                        "drained: asked through the API".to_string()
                    }
                };
                self.removal.insert(id, Removal { reason, lost: false });
            }
            Action::Finish { step, ending } => {
                let step = step.0;
                let outcome = match ending {
                    Ending::Finished => JobOutcome::Finished { step },
                    Ending::Stopped { checkpointed } => JobOutcome::Stopped { step, checkpointed },
                };
                self.args.console.finish();
                self.log(&format!("job done: {outcome:?}"));
                // A stopped job is not finished: it resumes from its checkpoint.
                if let JobOutcome::Finished { step } = outcome {
                    self.record(JobEvent::JobFinished { step });
                }
                for id in self.workers.keys().copied().collect::<Vec<_>>() {
                    self.send(id, Command::Exit { why: ExitReason::JobDone });
                }
                self.outcome = Some(outcome);
            }
            Action::Fail { reason } => {
                let reason = match &self.last_rank_error {
                    Some(e) => format!("{reason}; the last error: {e}"),
                    None => reason,
                };
                self.args.console.finish();
                self.log(&format!("job failed: {reason}"));
                for id in self.workers.keys().copied().collect::<Vec<_>>() {
                    self.send(id, Command::Exit { why: ExitReason::JobFailed });
                }
                self.outcome = Some(JobOutcome::Failed { reason });
            }
        }
    }
}
