//! Cluster mode: `tessera coordinator`, a long-running service that owns many jobs. Jobs are
//! submitted over the authenticated HTTP API ([`api`]) and stored before they are
//! acknowledged ([`crate::store`]); worker processes on any host offer themselves to the pool
//! ([`pool`]) by reporting to the API (and, with etcd, by a registry key under a lease:
//! [`registry_feed`]); the queue's pure rules
//! ([`crate::control::queue::schedule`]) decide which job runs on which workers
//! ([`service`]); each running job has its own coordinator actor and node ([`host`]), the
//! same actor and control rules as every other launch mode. The API is plain HTTP/1.1, or
//! HTTP/1.1 over TLS ([`tls`]) when the service is given a certificate. Every job's workers'
//! lines are read back from the shared filesystem ([`logs`]).

pub mod api;
mod client;
pub mod gate;
pub mod host;
pub mod logs;
pub mod pool;
pub mod registry_feed;
pub mod service;
pub mod targets;
pub mod tls;
pub mod types;

use std::net::SocketAddr;
use std::sync::Arc;

pub use gate::StoreGate;
pub use host::HostOptions;
pub use logs::{LogPage, LogQuery};
pub use pool::{Assignment, Beat, Evicted, Pool};
pub use service::{FlopsFn, Service, ServiceOptions};
pub use tls::TlsListener;
pub use types::{ClusterJob, JobCheckpoints, PooledWorker, SubmitReply, SubmitRequest, WorkerReply, WorkerReport};

use crate::error::{CoordinatorError, Result};
use crate::store::JobStore;

/// Where the API is served: a bound TCP listener, with TLS on top when a certificate is given.
pub struct ApiListener {
    tcp: tokio::net::TcpListener,
    tls: Option<crate::tls::ServerTls>,
}

impl ApiListener {
    /// Serves on `tcp`, over TLS with `tls` if given.
    pub fn new(tcp: tokio::net::TcpListener, tls: Option<crate::tls::ServerTls>) -> Self {
        Self { tcp, tls }
    }

    /// Serves `app` (with each request's peer address as `ConnectInfo<SocketAddr>`) until
    /// `shutdown` resolves.
    async fn serve(self, app: axum::Router, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
        use axum::serve::ListenerExt;
        let addr = self.tcp.local_addr().map_or_else(|_| "api".to_string(), |a| a.to_string());
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let served = match self.tls {
            None => axum::serve(self.tcp, app).with_graceful_shutdown(shutdown).await,
            // axum gives `ConnectInfo<SocketAddr>` for its TcpListener and for a tapped listener
            // of any kind whose address is a SocketAddr: a tap that does nothing lets the TLS
            // listener's peer addresses through, so refusals still name the peer.
            Some(tls) => axum::serve(TlsListener::new(self.tcp, &tls).tap_io(|_| ()), app).with_graceful_shutdown(shutdown).await,
        };
        served.map_err(|source| CoordinatorError::Net { addr, op: "serve", source })
    }
}

/// Serves the service's API on `listener` until `shutdown` resolves.
pub async fn serve<S: JobStore + 'static>(
    listener: ApiListener,
    token: String,
    service: Arc<Service<S>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if token.trim().is_empty() {
        return Err(CoordinatorError::Api { reason: "the bearer token is empty".into() });
    }
    listener.serve(api::router(token, service), shutdown).await
}

/// Serves `listener` with 503 answers (`reason`) until `ready` resolves: a coordinator that
/// waits for the store (a standby, or a restart before the dead holder's lease expired) holds
/// its address and tells callers to try another coordinator, instead of leaving them hanging.
pub async fn serve_waiting(
    listener: ApiListener,
    reason: String,
    ready: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let answer = move || {
        let reason = reason.clone();
        async move { crate::api::error_response(crate::api::ApiError::Unavailable { reason }) }
    };
    listener.serve(axum::Router::new().fallback(answer), ready).await
}
