//! tessera's control plane, free of libtorch: the coordinator's membership/generation/checkpoint
//! decisions as a pure state machine ([`control`]) and the actor that carries them out
//! ([`actor`]), the job's Prometheus metrics ([`JobMetrics`]), the append-only job event log
//! ([`EventLog`]), the console output, and the HTTP API ([`api::serve`] over a [`JobControl`]
//! backend) with its blocking CLI client ([`ApiClient`]), and for cluster mode the durable job
//! store ([`store`]: etcd or a state directory behind one trait) and the etcd worker registry
//! ([`registry`]), and the coordinator service that hosts many jobs on a worker pool
//! ([`cluster`]), whose API may be served and called over TLS ([`tls`], [`Endpoint`]). What it
//! shares with the workers (job specs, ledger, messages, checkpoint store) is the contract
//! crate, `tessera-protocol`.

pub mod actor;
pub mod api;
pub mod client;
pub mod cluster;
pub mod console;
pub mod control;
pub mod endpoint;
pub mod error;
pub mod events;
pub mod metrics;
pub mod registry;
pub mod store;
pub mod tls;

pub use api::{ApiError, JobControl, JobPhase, JobStatus, MemberStatus};
pub use client::ApiClient;
pub use endpoint::{Endpoint, Scheme};
pub use error::{CoordinatorError, Result};
pub use events::{EventLog, JobEvent, LoggedEvent};
pub use metrics::{FlopsModel, JobMetrics};
pub use tls::{ClientTls, ServerTls};
