//! The axum router: bearer-token check, request parsing, and a timeout on every call into the
//! [`JobControl`] backend (a stuck coordinator must answer 503, not hang the CLI).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::JobControl;
use super::error::{ApiError, error_response};
use super::events_query::EventsQuery;
use super::types::{DrainRequest, MixtureRequest, ScaleRequest};
use crate::events::EventFeed;
use crate::metrics::JobMetrics;
use tessera_protocol::reply::{CheckpointAck, DrainAck, JobStatus, MixtureAck, ScaleAck};

/// Content type of `GET /metrics` (Prometheus text exposition format 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// How long a request waits for the backend before answering 503.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct AppState {
    token: Arc<str>,
    backend: Arc<dyn JobControl>,
    metrics: Arc<JobMetrics>,
    events: EventFeed,
}

/// The API's routes (see [`crate::api`]) over `backend`, guarded by `token`; `GET /events`
/// answers from `events` (the job's event log) without asking the backend.
pub fn router(token: String, backend: Arc<dyn JobControl>, metrics: Arc<JobMetrics>, events: EventFeed) -> Router {
    let state = AppState { token: token.into(), backend, metrics, events };
    let protected = Router::new()
        .route("/status", get(status))
        .route("/events", get(serve_events))
        .route("/scale", post(scale))
        .route("/checkpoint", post(checkpoint))
        .route("/mixture", post(mixture))
        .route("/drain", post(drain))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new().route("/metrics", get(serve_metrics)).merge(protected).fallback(not_found).with_state(state)
}

/// Equality whose time depends only on the expected token's length, not on where the first
/// mismatch is, so the token cannot be guessed byte by byte from response times.
pub(crate) fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let given = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.trim().as_bytes(), state.token.as_bytes()) => next.run(request).await,
        _ => error_response(ApiError::Unauthorized),
    }
}

/// Awaits a backend call with [`BACKEND_TIMEOUT`] and answers its value as JSON.
async fn answer<T: serde::Serialize>(what: &str, call: super::ApiFuture<'_, T>) -> Response {
    answer_within(BACKEND_TIMEOUT, what, call).await
}

async fn answer_within<T: serde::Serialize>(limit: Duration, what: &str, call: super::ApiFuture<'_, T>) -> Response {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => error_response(e),
        Err(_) => error_response(ApiError::Unavailable { reason: format!("{what}: the coordinator did not answer within {limit:?}") }),
    }
}

/// Unknown paths answer 404 with the same JSON error body as every other error.
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let error = format!("no route {method} {}", uri.path());
    (axum::http::StatusCode::NOT_FOUND, Json(super::ErrorBody { error, field: None })).into_response()
}

async fn serve_metrics(State(state): State<AppState>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(e) => error_response(ApiError::Internal { reason: e.to_string() }),
    }
}

async fn status(State(state): State<AppState>) -> Response {
    answer::<JobStatus>("status", state.backend.status()).await
}

async fn serve_events(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    match EventsQuery::parse(query.as_deref()) {
        Ok(q) => Json(state.events.page(q.since, q.limit)).into_response(),
        Err(e) => error_response(e),
    }
}

async fn scale(State(state): State<AppState>, body: Bytes) -> Response {
    match ScaleRequest::from_json(&body) {
        Ok(req) => answer::<ScaleAck>("scale", state.backend.scale(req.workers)).await,
        Err(e) => error_response(e),
    }
}

async fn checkpoint(State(state): State<AppState>) -> Response {
    answer::<CheckpointAck>("checkpoint", state.backend.checkpoint()).await
}

async fn mixture(State(state): State<AppState>, body: Bytes) -> Response {
    match MixtureRequest::from_json(&body) {
        Ok(req) => answer::<MixtureAck>("mixture", state.backend.set_mixture(req.weights, req.at_step)).await,
        Err(e) => error_response(e),
    }
}

async fn drain(State(state): State<AppState>, body: Bytes) -> Response {
    match DrainRequest::from_json(&body) {
        Ok(req) => answer::<DrainAck>("drain", state.backend.drain(req.worker)).await,
        Err(e) => error_response(e),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;

    use super::{answer_within, constant_time_eq};
    use crate::api::{ApiFuture, ScaleAck};

    #[test]
    fn a_backend_that_does_not_answer_gives_503() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let stuck: ApiFuture<'_, ScaleAck> = Box::pin(std::future::pending());
        let response = rt.block_on(answer_within(Duration::from_millis(20), "scale", stuck));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let ready: ApiFuture<'_, ScaleAck> = Box::pin(async { Ok(ScaleAck { target_workers: 2 }) });
        let response = rt.block_on(answer_within(Duration::from_millis(20), "scale", ready));
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn constant_time_eq_compares_whole_tokens() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3cretX", b"s3cret"));
        assert!(!constant_time_eq(b"s3creT", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }
}
