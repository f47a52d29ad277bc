//! The coordinator's HTTP API (axum on tokio), used by `tessera status|scale|checkpoint|mixture`
//! through [`crate::client::ApiClient`] and by Prometheus.
//!
//! | route | auth | body | answer |
//! |---|---|---|---|
//! | `GET /metrics` | none (scraped) | | text exposition, `text/plain; version=0.0.4` |
//! | `GET /status` | bearer | | [`JobStatus`] |
//! | `GET /events?since=SEQ&limit=N` | bearer | | [`EventPage`](crate::events::EventPage): records from `since` (the previous answer's `next`), or the newest `limit` (default 50) |
//! | `POST /scale` | bearer | `{"workers": N}` | [`ScaleAck`] |
//! | `POST /checkpoint` | bearer | | [`CheckpointAck`] |
//! | `POST /mixture` | bearer | `{"weights": {"ds": w, ...}, "at_step": S?}` | [`MixtureAck`] |
//! | `POST /drain` | bearer | `{"worker": ID}` | [`DrainAck`] |
//!
//! Errors are answered with a JSON body `{"error": "...", "field": "..."?}` and the status of
//! their [`ApiError`] variant. The server only parses and validates requests; what they mean
//! for the job is decided behind the [`JobControl`] trait (the coordinator actor), which keeps
//! this module testable without an actor.

mod error;
mod events_query;
pub(crate) mod query;
mod routes;
mod table;
mod types;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub(crate) use error::error_response;
pub use error::{ApiError, ErrorBody};
pub use events_query::EventsQuery;
pub(crate) use routes::constant_time_eq;
pub use routes::{BACKEND_TIMEOUT, METRICS_CONTENT_TYPE, router};
pub use table::StatusTable;
pub use tessera_protocol::reply::{CheckpointAck, DrainAck, JobPhase, JobStatus, MemberStatus, MixtureAck, ScaleAck, ValidationStatus};
pub use types::{DrainRequest, MixtureRequest, ScaleRequest};

use crate::error::{CoordinatorError, Result};
use crate::events::EventFeed;
use crate::metrics::JobMetrics;

/// The future a [`JobControl`] call returns (boxed so the trait stays object-safe).
pub type ApiFuture<'a, T> = Pin<Box<dyn Future<Output = std::result::Result<T, ApiError>> + Send + 'a>>;

/// What the API asks of the job; the coordinator actor implements it by sending itself a
/// message and awaiting the reply. Requests reach it already parsed and validated for shape;
/// it decides whether they are possible (bounds, unknown datasets, steps in the past).
pub trait JobControl: Send + Sync {
    /// The job's current status.
    fn status(&self) -> ApiFuture<'_, JobStatus>;
    /// Work towards `workers` workers (at least 1).
    fn scale(&self, workers: usize) -> ApiFuture<'_, ScaleAck>;
    /// Take a checkpoint at the next step boundary.
    fn checkpoint(&self) -> ApiFuture<'_, CheckpointAck>;
    /// Switch the dataset mixture to `weights` (validated: non-empty, finite, >= 0, not all
    /// zero) from step `at_step` (`None`: as soon as possible).
    fn set_mixture(&self, weights: BTreeMap<String, f64>, at_step: Option<u64>) -> ApiFuture<'_, MixtureAck>;
    /// Drain worker `worker` at the next checkpointed boundary (refused if the job would keep
    /// fewer than its `min_workers`).
    fn drain(&self, worker: u64) -> ApiFuture<'_, DrainAck>;
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes the requests in flight.
///
/// `token` is the bearer token every route but `/metrics` requires; an empty token is refused,
/// since it would make "no header" and "empty header" indistinguishable from a valid login.
/// `events` is the job's event log's feed ([`crate::EventLog::feed`]), read by `GET /events`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    backend: Arc<dyn JobControl>,
    metrics: Arc<JobMetrics>,
    events: EventFeed,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if token.trim().is_empty() {
        return Err(CoordinatorError::Api { reason: "the bearer token is empty".into() });
    }
    let addr = listener.local_addr().map_or_else(|_| "api".to_string(), |a| a.to_string());
    axum::serve(listener, router(token, backend, metrics, events))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| CoordinatorError::Net { addr, op: "serve", source })
}

#[cfg(test)]
mod tests;
