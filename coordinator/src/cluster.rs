//! Cluster mode: `tessera coordinator`, a long-running service that owns many jobs. Jobs are
//! submitted over the authenticated HTTP API ([`api`]) and stored before they are
//! acknowledged ([`crate::store`]); worker processes on any host offer themselves to the pool
//! ([`pool`]) by reporting to the API; the queue's pure rules
//! ([`crate::control::queue::schedule`]) decide which job runs on which workers
//! ([`service`]); each running job has its own coordinator actor and node ([`host`]), the
//! same actor and control rules as every other launch mode. Every job's workers' lines are
//! read back from the shared filesystem ([`logs`]).

pub mod api;
mod client;
pub mod gate;
pub mod host;
pub mod logs;
pub mod pool;
pub mod service;
pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;

pub use gate::StoreGate;
pub use host::HostOptions;
pub use logs::{LogPage, LogQuery};
pub use pool::{Assignment, Beat, Pool};
pub use service::{FlopsFn, Service, ServiceOptions};
pub use types::{ClusterJob, PooledWorker, SubmitReply, SubmitRequest, WorkerReply, WorkerReport};

use crate::error::{CoordinatorError, Result};
use crate::store::JobStore;

/// Serves the service's API on `listener` until `shutdown` resolves.
pub async fn serve<S: JobStore + 'static>(
    listener: tokio::net::TcpListener,
    token: String,
    service: Arc<Service<S>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if token.trim().is_empty() {
        return Err(CoordinatorError::Api { reason: "the bearer token is empty".into() });
    }
    let addr = listener.local_addr().map_or_else(|_| "api".to_string(), |a| a.to_string());
    axum::serve(listener, api::router(token, service).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| CoordinatorError::Net { addr, op: "serve", source })
}

/// Serves `listener` with 503 answers (`reason`) until `ready` resolves: a coordinator that
/// waits for the store (a standby, or a restart before the dead holder's lease expired) holds
/// its address and tells callers to try another coordinator, instead of leaving them hanging.
pub async fn serve_waiting(
    listener: tokio::net::TcpListener,
    reason: String,
    ready: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().map_or_else(|_| "api".to_string(), |a| a.to_string());
    let answer = move || {
        let reason = reason.clone();
        async move { crate::api::error_response(crate::api::ApiError::Unavailable { reason }) }
    };
    axum::serve(listener, axum::Router::new().fallback(answer))
        .with_graceful_shutdown(ready)
        .await
        .map_err(|source| CoordinatorError::Net { addr, op: "serve", source })
}
