//! The actor's answers to API requests (status, scale, drain, checkpoint, mixture, shutdown):
//! each turns into an event for the state machine, and a refusal of its rule 9 into the API
//! error that says why.

use crate::api::ApiError;
use crate::control::{Event, Refusal};
use crate::events::JobEvent;
use tessera_protocol::messages::{Reply, Request};
use tessera_protocol::reply::{Answer, CheckpointAck, DrainAck, MixtureAck, ScaleAck, ShutdownAck};

use super::CoordinatorState;

impl CoordinatorState {
    /// Answers one API request.
    pub(super) fn request(&mut self, req: Request) -> Reply {
        match req {
            Request::Status => Ok(Answer::Status(Box::new(self.job_status()))),
            Request::Scale { workers } => {
                // Rule 9 refuses a count out of bounds; the state machine starts the processes
                // a scale-up needs (embedded mode) and drains the newest surplus members.
                self.launch_error = None;
                self.ask(Event::Scale { workers })?;
                self.record(JobEvent::ScaleRequested { workers });
                if let Some(reason) = self.launch_error.take() {
                    return Err(ApiError::Internal { reason });
                }
                Ok(Answer::Scale(ScaleAck { target_workers: workers }))
            }
            Request::Checkpoint => {
                self.ask(Event::RequestCheckpoint)?;
                // The boundary is where the ranks agree to stop, at or after the next step.
                Ok(Answer::Checkpoint(CheckpointAck { step: Some(self.control.next_step().0) }))
            }
            Request::Mixture { weights, at_step } => {
                if self.outcome.is_some() || self.control.is_shutting_down() {
                    return Err(ApiError::Conflict { reason: "the job is ending; the mixture can no longer change".into() });
                }
                let change = self.mixtures.request(&weights, at_step, self.control.next_step().0, self.control.policy().total_steps)?;
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
                self.ask(Event::Drain { id: worker })?;
                Ok(Answer::Drain(DrainAck { worker: worker.0 }))
            }
            Request::Shutdown => {
                self.drive(Event::Shutdown);
                Ok(Answer::Shutdown(ShutdownAck { shutting_down: true }))
            }
        }
    }
}

impl CoordinatorState {
    /// Drives a request's event; a refusal of rule 9 becomes the API's error.
    fn ask(&mut self, event: Event) -> Result<(), ApiError> {
        self.refusal = None;
        self.drive(event);
        self.refusal.take().map_or(Ok(()), |r| Err(refused(r)))
    }
}

/// The API error for a refusal: a bad value names its field (400), a request the job's state
/// does not allow now is a conflict (409).
fn refused(why: Refusal) -> ApiError {
    match why {
        Refusal::ScaleOutOfBounds { workers, min, max } => {
            ApiError::bad("workers", format!("{workers} is outside [{min}, {max}] (min/max workers of the job)"))
        }
        Refusal::NotAMember(id) => ApiError::bad("worker", format!("{id} is not a member of the job")),
        Refusal::TooFewLeft { id, staying, min } => {
            ApiError::Conflict { reason: format!("draining {id} would leave {staying} workers; the job needs at least {min}") }
        }
        Refusal::NothingRunning => ApiError::Conflict { reason: "no generation is running; nothing to checkpoint".into() },
        Refusal::Stopping => ApiError::Conflict { reason: "the running generation is stopping (it checkpoints if it can)".into() },
    }
}
