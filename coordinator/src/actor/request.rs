//! The actor's answers to API requests (status, scale, checkpoint, mixture, shutdown): each
//! turns into an event for the state machine, or a refusal that says why.

use crate::api::ApiError;
use crate::control::{Event, WorkerId};
use crate::events::JobEvent;
use tessera_protocol::messages::{Reply, Request};
use tessera_protocol::reply::{Answer, CheckpointAck, DrainAck, MixtureAck, ScaleAck, ShutdownAck};

use super::{CoordinatorState, Removal};

impl CoordinatorState {
    /// Answers one API request.
    pub(super) fn request(&mut self, req: Request) -> Reply {
        match req {
            Request::Status => Ok(Answer::Status(Box::new(self.job_status()))),
            Request::Scale { workers } => {
                let p = *self.control.policy();
                if workers < p.min_workers.max(1) || workers > p.max_workers {
                    return Err(ApiError::bad(
                        "workers",
                        format!("{workers} is outside [{}, {}] (min/max workers of the job)", p.min_workers.max(1), p.max_workers),
                    ));
                }
                self.record(JobEvent::ScaleRequested { workers });
                // The state machine starts the processes a scale-up needs (embedded mode).
                self.launch_error = None;
                self.drive(Event::Scale { workers });
                if let Some(reason) = self.launch_error.take() {
                    return Err(ApiError::Internal { reason });
                }
                // Drain the newest surplus members.
                let members = self.control.members().count();
                if workers < members {
                    let mut ids: Vec<(u64, WorkerId)> = self.control.members().map(|m| (m.joined_ms, m.id)).collect();
                    ids.sort();
                    for (_, id) in ids.into_iter().skip(workers) {
                        self.removal.insert(id, Removal { reason: format!("drained: scaled to {workers} workers"), lost: false });
                        self.control.drain(id);
                    }
                    self.drive(Event::Tick);
                }
                Ok(Answer::Scale(ScaleAck { target_workers: workers }))
            }
            Request::Checkpoint => {
                if self.control.running().is_none() {
                    return Err(ApiError::Conflict { reason: "no generation is running; nothing to checkpoint".into() });
                }
                if self.control.is_stopping() {
                    return Err(ApiError::Conflict { reason: "the running generation is stopping (it checkpoints if it can)".into() });
                }
                self.drive(Event::RequestCheckpoint);
                // The boundary is where the ranks agree to stop, at or after the next step.
                Ok(Answer::Checkpoint(CheckpointAck { step: Some(self.control.next_step()) }))
            }
            Request::Mixture { weights, at_step } => {
                if self.outcome.is_some() || self.control.is_shutting_down() {
                    return Err(ApiError::Conflict { reason: "the job is ending; the mixture can no longer change".into() });
                }
                let change = self.mixtures.request(&weights, at_step, self.control.next_step(), self.control.policy().total_steps)?;
                self.log(&format!(
                    "mixture version {} from step {}: {:?}",
                    change.version,
                    change.at_step,
                    self.mixtures.named(&change.weights)
                ));
                self.record(JobEvent::MixtureChanged {
                    version: u64::from(change.version),
                    effective_step: change.at_step,
                    weights: self.mixtures.named(&change.weights),
                });
                // The ranks get the new schedule with the next generation: end this one at a
                // checkpointed boundary (a no-op when none runs or it is already stopping).
                self.drive(Event::Reconfigure);
                Ok(Answer::Mixture(MixtureAck { version: u64::from(change.version), effective_step: change.at_step }))
            }
            Request::Drain { worker } => {
                let Some(m) = self.control.members().find(|m| m.id == worker) else {
                    return Err(ApiError::bad("worker", format!("{worker} is not a member of the job")));
                };
                if m.draining {
                    return Ok(Answer::Drain(DrainAck { worker: worker.0 }));
                }
                let staying = self.control.members().filter(|m| !m.draining && m.id != worker).count();
                let min = self.control.policy().min_workers.max(1);
                if staying < min {
                    return Err(ApiError::Conflict {
                        reason: format!("draining {worker} would leave {staying} workers; the job needs at least {min}"),
                    });
                }
                self.log(&format!("{worker}: drain asked through the API; it leaves at the next checkpointed boundary"));
                self.removal.insert(worker, Removal { reason: "drained: asked through the API".into(), lost: false });
                self.control.drain(worker);
                self.drive(Event::Tick);
                Ok(Answer::Drain(DrainAck { worker: worker.0 }))
            }
            Request::Shutdown => {
                self.drive(Event::Shutdown);
                Ok(Answer::Shutdown(ShutdownAck { shutting_down: true }))
            }
        }
    }
}
