//! The coordinator service's HTTP API. Every route needs the bearer token (refusals are logged
//! with the peer's address):
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/jobs` | [`SubmitRequest`] | [`SubmitReply`] (after the job is stored) |
//! | `GET /v1/jobs` | | `[`[`ClusterJob`]`]` with each queued job's pending reason |
//! | `GET /v1/jobs/ID` | | [`ClusterJob`] with the live status while it runs |
//! | `POST /v1/jobs/ID/cancel` | | [`ClusterJob`] |
//! | `GET /v1/jobs/ID/logs?rank=R&since=CURSOR&limit=N` | | [`LogPage`]: every worker's lines, merged by time (any job state; see [`super::logs`]) |
//! | `GET /v1/jobs/ID/checkpoints` | | [`JobCheckpoints`](super::JobCheckpoints): its spec and committed checkpoints, in any state |
//! | `POST /v1/jobs/ID/scale` | [`crate::api::ScaleRequest`] | [`crate::api::ScaleAck`] (and caps the queue's growth of the job) |
//! | `GET/POST /v1/jobs/ID/{status,events,checkpoint,mixture,drain,metrics}` | as [`crate::api`] | as [`crate::api`], for that running job |
//! | `POST /v1/workers/NAME` | [`WorkerReport`] | [`WorkerReply`] (an idle worker's long poll) |
//! | `GET /v1/workers` | | `[`[`PooledWorker`]`]` |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tower::ServiceExt;

use super::logs::{LogPage, LogQuery};
use super::service::Service;
use super::types::{SubmitRequest, WorkerReport};
use crate::api::{ApiError, constant_time_eq, error_response};
use crate::store::{JobId, JobStore};

struct AppState<S: JobStore> {
    token: Arc<str>,
    service: Arc<Service<S>>,
}

impl<S: JobStore> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self { token: Arc::clone(&self.token), service: Arc::clone(&self.service) }
    }
}

/// The service's routes, guarded by `token`. Serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` so refusals name the peer.
pub fn router<S: JobStore + 'static>(token: String, service: Arc<Service<S>>) -> Router {
    let state = AppState { token: token.into(), service };
    Router::new()
        .route("/v1/jobs", post(submit::<S>).get(jobs::<S>))
        .route("/v1/jobs/{id}", get(job::<S>))
        .route("/v1/jobs/{id}/cancel", post(cancel::<S>))
        .route("/v1/jobs/{id}/scale", post(scale::<S>))
        .route("/v1/jobs/{id}/checkpoints", get(checkpoints::<S>))
        // Its own route (not the running job's router): logs answer for ended jobs too.
        .route("/v1/jobs/{id}/logs", get(logs::<S>))
        .route("/v1/jobs/{id}/{op}", any(per_job::<S>))
        .route("/v1/workers", get(workers::<S>))
        .route("/v1/workers/{name}", post(report::<S>))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token::<S>))
        .with_state(state)
}

async fn require_token<S: JobStore + 'static>(State(state): State<AppState<S>>, request: Request, next: Next) -> Response {
    let given = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.trim().as_bytes(), state.token.as_bytes()) => next.run(request).await,
        _ => {
            let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map_or("an unknown peer".into(), |c| c.0.to_string());
            let why = if given.is_some() { "a wrong token" } else { "no token" };
            tessera_protocol::say!("[service] refused {} {} from {peer}: {why}", request.method(), request.uri().path());
            error_response(ApiError::Unauthorized)
        }
    }
}

fn reply<T: serde::Serialize>(r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(e),
    }
}

fn job_id(text: &str) -> Result<JobId, ApiError> {
    JobId::parse(text).ok_or_else(|| ApiError::bad("job", format!("'{text}' is not a job id (job-N or N)")))
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    error_response(ApiError::NotFound { what: format!("route {method} {}", uri.path()) })
}

async fn submit<S: JobStore + 'static>(State(state): State<AppState<S>>, body: Bytes) -> Response {
    let req: SubmitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error_response(ApiError::bad("body", e.to_string())),
    };
    reply(state.service.submit(req).await)
}

async fn jobs<S: JobStore + 'static>(State(state): State<AppState<S>>) -> Response {
    reply(state.service.jobs().await)
}

async fn job<S: JobStore + 'static>(State(state): State<AppState<S>>, Path(id): Path<String>) -> Response {
    match job_id(&id) {
        Ok(id) => reply(state.service.job(id).await),
        Err(e) => error_response(e),
    }
}

async fn cancel<S: JobStore + 'static>(State(state): State<AppState<S>>, Path(id): Path<String>) -> Response {
    match job_id(&id) {
        Ok(id) => reply(state.service.cancel(id).await),
        Err(e) => error_response(e),
    }
}

async fn checkpoints<S: JobStore + 'static>(State(state): State<AppState<S>>, Path(id): Path<String>) -> Response {
    match job_id(&id) {
        Ok(id) => reply(state.service.checkpoints(id).await),
        Err(e) => error_response(e),
    }
}

/// `tessera scale` goes through the service, which caps the queue's growth of the job there.
async fn scale<S: JobStore + 'static>(State(state): State<AppState<S>>, Path(id): Path<String>, body: Bytes) -> Response {
    let req: crate::api::ScaleRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error_response(ApiError::bad("body", e.to_string())),
    };
    match job_id(&id) {
        Ok(id) => reply(state.service.scale(id, req.workers).await),
        Err(e) => error_response(e),
    }
}

async fn logs<S: JobStore + 'static>(State(state): State<AppState<S>>, Path(id): Path<String>, uri: axum::http::Uri) -> Response {
    let page: Result<LogPage, ApiError> = async {
        let (id, query) = (job_id(&id)?, LogQuery::parse(uri.query())?);
        state.service.logs(id, query).await
    }
    .await;
    reply(page)
}

/// Hands the request to the running job's own API router (the embedded mode's), as `/OP`.
async fn per_job<S: JobStore + 'static>(
    State(state): State<AppState<S>>,
    Path((id, op)): Path<(String, String)>,
    request: Request,
) -> Response {
    let id = match job_id(&id) {
        Ok(id) => id,
        Err(e) => return error_response(e),
    };
    let token = state.token.to_string();
    let router = state
        .service
        .hosted(id, |h| {
            crate::api::router(token, Arc::clone(&h.bridge) as Arc<dyn crate::api::JobControl>, Arc::clone(&h.metrics), h.events.clone())
        })
        .await;
    let router = match router {
        Ok(r) => r,
        Err(e) => return error_response(e),
    };
    let (mut parts, body) = request.into_parts();
    let query = parts.uri.query().map_or(String::new(), |q| format!("?{q}"));
    parts.uri = match format!("/{op}{query}").parse() {
        Ok(u) => u,
        Err(_) => return error_response(ApiError::bad("path", format!("'{op}' is not a route"))),
    };
    match router.oneshot(Request::from_parts(parts, Body::new(body))).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

async fn report<S: JobStore + 'static>(State(state): State<AppState<S>>, Path(name): Path<String>, body: Bytes) -> Response {
    let report: WorkerReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error_response(ApiError::bad("body", e.to_string())),
    };
    reply(state.service.report(&name, report).await)
}

async fn workers<S: JobStore + 'static>(State(state): State<AppState<S>>) -> Response {
    Json(state.service.workers().await).into_response()
}
