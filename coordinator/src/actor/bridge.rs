//! [`ActorBridge`]: the HTTP API's [`JobControl`] over the coordinator actor. Each call sends
//! [`CoordinatorMsg::Request`] and waits for the actor's [`Reply`] with a timeout, so a busy or
//! dead actor answers 503 instead of hanging a request.

use std::collections::BTreeMap;
use std::time::Duration;

use ractor::ActorRef;
use ractor::rpc::CallResult;

use crate::api::{ApiError, ApiFuture, CheckpointAck, DrainAck, JobControl, JobStatus, MixtureAck, ScaleAck};
use tessera_protocol::messages::{CoordinatorMsg, Reply, Request, Wire};
use tessera_protocol::reply::Answer;

/// How long a call waits for the actor by default: below the API's own
/// [`crate::api::BACKEND_TIMEOUT`], so the caller sees which part did not answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`JobControl`] that asks the coordinator actor.
#[derive(Debug, Clone)]
pub struct ActorBridge {
    actor: ActorRef<CoordinatorMsg>,
    timeout: Duration,
}

impl ActorBridge {
    /// A bridge to `actor` with [`CALL_TIMEOUT`].
    pub fn new(actor: ActorRef<CoordinatorMsg>) -> Self {
        Self { actor, timeout: CALL_TIMEOUT }
    }

    /// The same bridge with another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Asks the job to checkpoint and stop (what SIGTERM does); `Ok` once the actor has it.
    pub async fn shutdown(&self) -> Result<(), ApiError> {
        self.ask(Request::Shutdown, |a| if let Answer::Shutdown(_) = a { Ok(()) } else { Err(a) }).await
    }

    /// Sends `req` and takes the answer it expects with `pick` (which hands back any other).
    async fn ask<T>(&self, req: Request, pick: fn(Answer) -> Result<T, Answer>) -> Result<T, ApiError> {
        let what = request_name(&req);
        let call = self.actor.call(|reply| CoordinatorMsg::Request(Wire::new(req), reply), Some(self.timeout)).await;
        let reply: Reply = match call {
            Ok(CallResult::Success(Wire(reply))) => {
                reply.map_err(|e| ApiError::Internal { reason: format!("{what}: undecodable reply: {e}") })?
            }
            Ok(CallResult::Timeout) => {
                return Err(ApiError::Unavailable { reason: format!("{what}: the coordinator did not answer within {:?}", self.timeout) });
            }
            // The actor dropped the reply port (it stopped while handling) or is gone.
            Ok(CallResult::SenderError) | Err(_) => {
                return Err(ApiError::Unavailable { reason: format!("{what}: the coordinator is not running") });
            }
        };
        pick(reply?).map_err(|other| ApiError::Internal { reason: format!("{what}: answered as if asked for {}", other.kind()) })
    }
}

fn request_name(req: &Request) -> &'static str {
    match req {
        Request::Status => "status",
        Request::Scale { .. } => "scale",
        Request::Checkpoint => "checkpoint",
        Request::Mixture { .. } => "mixture",
        Request::Shutdown => "shutdown",
        Request::Drain { .. } => "drain",
    }
}

impl JobControl for ActorBridge {
    fn status(&self) -> ApiFuture<'_, JobStatus> {
        Box::pin(self.ask(Request::Status, |a| if let Answer::Status(s) = a { Ok(*s) } else { Err(a) }))
    }

    fn scale(&self, workers: usize) -> ApiFuture<'_, ScaleAck> {
        Box::pin(self.ask(Request::Scale { workers }, |a| if let Answer::Scale(x) = a { Ok(x) } else { Err(a) }))
    }

    fn checkpoint(&self) -> ApiFuture<'_, CheckpointAck> {
        Box::pin(self.ask(Request::Checkpoint, |a| if let Answer::Checkpoint(x) = a { Ok(x) } else { Err(a) }))
    }

    fn set_mixture(&self, weights: BTreeMap<String, f64>, at_step: Option<u64>) -> ApiFuture<'_, MixtureAck> {
        Box::pin(self.ask(Request::Mixture { weights, at_step }, |a| if let Answer::Mixture(x) = a { Ok(x) } else { Err(a) }))
    }

    fn drain(&self, worker: u64) -> ApiFuture<'_, DrainAck> {
        Box::pin(
            self.ask(
                Request::Drain { worker: tessera_protocol::WorkerId(worker) },
                |a| if let Answer::Drain(x) = a { Ok(x) } else { Err(a) },
            ),
        )
    }
}

#[cfg(test)]
mod tests;
