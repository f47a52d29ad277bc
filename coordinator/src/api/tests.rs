//! The API end to end: a real server on a loopback port from port 0, driven through the real
//! [`ApiClient`] (and raw sockets where the client cannot misbehave on purpose), over a
//! [`JobControl`] implementation that records what reached it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Registry;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use super::{
    ApiError, ApiFuture, CheckpointAck, DrainAck, JobControl, JobPhase, JobStatus, MemberStatus, MixtureAck, ScaleAck, StatusTable,
    ValidationStatus, serve,
};
use crate::client::ApiClient;
use crate::error::{CoordinatorError, Result};
use crate::events::{EventLog, JobEvent};
use crate::metrics::JobMetrics;
use tessera_protocol::report::{StepReport, StepTimings};
use tessera_protocol::{Generation, Rank, Step};
use tessera_tokenizers::Modality;

const TOKEN: &str = "t0ken-for-tests";
const WAIT: Duration = Duration::from_secs(5);

/// A job the API can steer: answers from fixed data and records every call it receives.
struct RecordingJob {
    status: JobStatus,
    calls: Mutex<Vec<String>>,
}

impl RecordingJob {
    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

impl JobControl for RecordingJob {
    fn status(&self) -> ApiFuture<'_, JobStatus> {
        self.log("status".into());
        Box::pin(async move { Ok(self.status.clone()) })
    }

    fn scale(&self, workers: usize) -> ApiFuture<'_, ScaleAck> {
        self.log(format!("scale {workers}"));
        Box::pin(async move {
            if workers > self.status.max_workers {
                return Err(ApiError::bad("workers", format!("{workers} is above max_workers {}", self.status.max_workers)));
            }
            Ok(ScaleAck { target_workers: workers })
        })
    }

    fn checkpoint(&self) -> ApiFuture<'_, CheckpointAck> {
        self.log("checkpoint".into());
        Box::pin(async move { Ok(CheckpointAck { step: Some(self.status.step) }) })
    }

    fn drain(&self, worker: u64) -> ApiFuture<'_, DrainAck> {
        self.log(format!("drain {worker}"));
        Box::pin(async move {
            if !self.status.members.iter().any(|m| m.worker == worker) {
                return Err(ApiError::bad("worker", format!("worker#{worker} is not a member of the job")));
            }
            Ok(DrainAck { worker })
        })
    }

    fn set_mixture(&self, weights: BTreeMap<String, f64>, at_step: Option<u64>) -> ApiFuture<'_, MixtureAck> {
        self.log(format!("mixture {weights:?} {at_step:?}"));
        Box::pin(async move {
            if let Some(name) = weights.keys().find(|n| !["cc12m", "coco"].contains(&n.as_str())) {
                return Err(ApiError::bad(format!("weights.{name}"), "unknown dataset"));
            }
            Ok(MixtureAck { version: self.status.schedule_version + 1, effective_step: at_step.unwrap_or(self.status.step + 1) })
        })
    }
}

fn sample_status() -> JobStatus {
    JobStatus {
        job: "m4-tiny".into(),
        phase: JobPhase::Running,
        generation: 3,
        world_size: 2,
        step: 1200,
        total_steps: 10_000,
        loss: Some(2.345_71),
        target_workers: 2,
        min_workers: 1,
        max_workers: 4,
        last_checkpoint: Some(1000),
        restarts: 1,
        schedule_version: 2,
        validation: Some(ValidationStatus {
            step: 1000,
            loss: [(Modality::Caption.into(), 2.5), (Modality::TokRgb224.into(), 4.25)].into(),
            seconds: 3.5,
        }),
        members: vec![
            MemberStatus {
                worker: 9,
                addr: "127.0.0.1:41002".into(),
                rank: None,
                seen_ms_ago: 50,
                draining: false,
                last_step_s: None,
                timings: None,
                rss_bytes: None,
                straggler: false,
            },
            MemberStatus {
                worker: 4,
                addr: "127.0.0.1:41001".into(),
                rank: Some(1),
                seen_ms_ago: 1500,
                draining: true,
                last_step_s: Some(0.5),
                timings: Some(StepTimings { data_s: 0.1, comm_s: 0.05, total_s: 0.5, ..StepTimings::default() }),
                rss_bytes: Some(1 << 30),
                straggler: true,
            },
            MemberStatus {
                worker: 2,
                addr: "127.0.0.1:41000".into(),
                rank: Some(0),
                seen_ms_ago: 120,
                draining: false,
                last_step_s: Some(0.25),
                timings: Some(StepTimings { data_s: 0.01, comm_s: 0.2, total_s: 0.25, ..StepTimings::default() }),
                rss_bytes: Some(1 << 29),
                straggler: false,
            },
        ],
    }
}

/// A running API server; stopped (and its clean exit checked) by [`Server::stop`].
struct Server {
    rt: Runtime,
    addr: SocketAddr,
    job: Arc<RecordingJob>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    /// The job's event log (in a temp dir), whose feed `GET /events` reads.
    log: EventLog,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let job = Arc::new(RecordingJob { status: sample_status(), calls: Mutex::new(Vec::new()) });
        let metrics = Arc::new(JobMetrics::new(&Registry::new()).unwrap());
        metrics.set_generation(Generation(3), 1);
        let timings = StepTimings { total_s: 0.5, ..StepTimings::default() };
        let report = StepReport {
            generation: Generation(3),
            step: Step(1199),
            rank: Rank(0),
            world: 1,
            loss: 2.5,
            losses: BTreeMap::new(),
            lr: 1e-3,
            grad_norm: 1.0,
            samples: 4,
            tokens: 512,
            skipped: false,
            skipped_samples: 0,
            timings,
            rss_bytes: None,
            counters: Default::default(),
        };
        metrics.observe_step(&[report]).unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let backend: Arc<dyn JobControl> = job.clone();
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(&dir.path().join("events.jsonl")).unwrap();
        let task = rt.spawn(serve(listener, TOKEN.into(), backend, metrics, log.feed(), async move {
            // A dropped sender also stops the server.
            let _ = stopped.await;
        }));
        Server { rt, addr, job, stop: Some(stop), task: Some(task), log, _dir: dir }
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(self.addr, TOKEN).with_timeout(WAIT)
    }

    fn calls(&self) -> Vec<String> {
        self.job.calls.lock().unwrap().clone()
    }

    fn stop(mut self) {
        drop(self.stop.take());
        let task = self.task.take().unwrap();
        let result = self.rt.block_on(async { tokio::time::timeout(WAIT, task).await }).expect("server stops within the timeout");
        result.unwrap().unwrap();
    }
}

/// A raw HTTP/1.1 exchange, for requests the client never sends (no token, bad JSON).
fn raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String, String) {
    raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn http_error(result: Result<impl std::fmt::Debug>) -> (u16, String) {
    match result {
        Err(CoordinatorError::Http { status, message, .. }) => (status, message),
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[test]
fn api_status_round_trips_and_renders_a_table() {
    let server = Server::start();
    let status = server.client().status().unwrap();
    assert_eq!(status, sample_status());
    let table = status.table();
    assert!(table.contains("job          m4-tiny"), "{table}");
    assert!(table.contains("phase        running"), "{table}");
    assert!(table.contains("step         1200/10000 (12.0%)"), "{table}");
    assert!(table.contains("loss         2.3457"), "{table}");
    assert!(table.contains("checkpoint   1000"), "{table}");
    assert!(table.contains("validation   step 1000 (3.50s): caption 2.5000, tok_rgb@224 4.2500"), "{table}");
    let rows: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("WORKER")).collect();
    assert_eq!(rows[0], "WORKER  ADDR             RANK  SEEN  DRAINING  STEP_S  OWN_S  STRAGGLER");
    // Ranked members first, by rank; the spare worker last. Own time is the step less comm.
    assert_eq!(rows[1], "2       127.0.0.1:41000  0     0.1s  no        0.250   0.050  no");
    assert_eq!(rows[2], "4       127.0.0.1:41001  1     1.5s  yes       0.500   0.450  yes");
    assert_eq!(rows[3], "9       127.0.0.1:41002  -     0.1s  no        -       -      no");
    assert_eq!(server.calls(), ["status"]);
    server.stop();
}

#[test]
fn api_scale_checkpoint_and_mixture_reach_the_backend() {
    let server = Server::start();
    let client = server.client();
    assert_eq!(client.scale(3).unwrap(), ScaleAck { target_workers: 3 });
    assert_eq!(client.checkpoint().unwrap(), CheckpointAck { step: Some(1200) });
    let weights = BTreeMap::from([("cc12m".to_string(), 3.0), ("coco".to_string(), 1.0)]);
    assert_eq!(client.set_mixture(weights.clone(), Some(1500)).unwrap(), MixtureAck { version: 3, effective_step: 1500 });
    assert_eq!(client.set_mixture(weights.clone(), None).unwrap(), MixtureAck { version: 3, effective_step: 1201 });
    assert_eq!(
        server.calls(),
        ["scale 3".to_string(), "checkpoint".to_string(), format!("mixture {weights:?} Some(1500)"), format!("mixture {weights:?} None")]
    );
    // The backend's own refusal comes back as a 400 naming the field.
    let (status, message) = http_error(client.scale(5));
    assert_eq!(status, 400);
    assert!(message.contains("`workers`") && message.contains("max_workers 4"), "{message}");
    server.stop();
}

#[test]
fn api_drain_reaches_the_backend_and_names_a_bad_worker() {
    let server = Server::start();
    let client = server.client();
    assert_eq!(client.drain(4).unwrap(), DrainAck { worker: 4 });
    let (status, message) = http_error(client.drain(77));
    assert_eq!(status, 400);
    assert!(message.contains("`worker`") && message.contains("worker#77"), "{message}");
    assert_eq!(server.calls(), ["drain 4", "drain 77"]);
    server.stop();
}

#[test]
fn api_mixture_and_scale_validation_name_the_field() {
    let server = Server::start();
    let client = server.client();
    let (status, message) = http_error(client.set_mixture(BTreeMap::from([("coco".to_string(), -1.0)]), None));
    assert_eq!(status, 400);
    assert!(message.contains("`weights.coco`") && message.contains(">= 0"), "{message}");
    let (status, message) = http_error(client.set_mixture(BTreeMap::new(), None));
    assert_eq!((status, message.contains("`weights`")), (400, true), "{message}");
    let (status, message) = http_error(client.set_mixture(BTreeMap::from([("laion".to_string(), 1.0)]), None));
    assert_eq!((status, message.contains("`weights.laion`: unknown dataset")), (400, true), "{message}");
    // Only the request that passed the shape checks reached the backend.
    assert_eq!(server.calls().len(), 1);

    let (status, _, body) = post(server.addr, "/mixture", r#"{"weights": {"coco": 1}, "at_stp": 5}"#);
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["field"], "at_stp");
    assert!(body["error"].as_str().unwrap().contains("unknown field"), "{body}");
    let (status, _, body) = post(server.addr, "/mixture", r#"{"weights": {"coco": "1"}}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("weights.coco"), "{body}");
    let (status, _, body) = post(server.addr, "/scale", r#"{"workers": "x"}"#);
    assert_eq!((status, body.contains("`workers`")), (400, true), "{body}");
    let (status, _, body) = post(server.addr, "/scale", r#"{"workers": 0}"#);
    assert_eq!((status, body.contains("`workers`")), (400, true), "{body}");
    let (status, _, body) = post(server.addr, "/scale", "{");
    assert_eq!((status, body.contains("`body`")), (400, true), "{body}");
    assert_eq!(server.calls().len(), 1);
    server.stop();
}

#[test]
fn api_refuses_missing_or_wrong_token() {
    let server = Server::start();
    let wrong = ApiClient::new(server.addr, "t0ken-for-tesTs").with_timeout(WAIT);
    assert_eq!(http_error(wrong.status()).0, 401);
    assert_eq!(http_error(wrong.scale(2)).0, 401);
    assert_eq!(http_error(wrong.checkpoint()).0, 401);
    assert_eq!(http_error(wrong.events(None, 10)).0, 401);
    let prefix = ApiClient::new(server.addr, "t0ken").with_timeout(WAIT);
    assert_eq!(http_error(prefix.status()).0, 401);
    let (status, message) = http_error(ApiClient::new(server.addr, "").with_timeout(WAIT).status());
    assert_eq!(status, 401);
    assert!(message.contains("bearer token"), "{message}");

    let (status, head, _) = raw(server.addr, "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let (status, _, body) = raw(server.addr, "GET /events?since=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 401, "{body}");
    let (status, ..) =
        raw(server.addr, &format!("GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {TOKEN}\r\nConnection: close\r\n\r\n"));
    assert_eq!(status, 401);
    // Nothing unauthenticated reached the job.
    assert!(server.calls().is_empty(), "{:?}", server.calls());
    server.stop();
}

#[test]
fn api_serves_metrics_without_token() {
    let server = Server::start();
    let (status, head, body) = raw(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("tessera_tokens_per_second 1024"), "{body}");
    // The client reads the same through its own framing, whatever the token.
    let text = ApiClient::new(server.addr, "wrong").with_timeout(WAIT).metrics().unwrap();
    assert!(text.contains("tessera_step 1199"), "{text}");
    let (status, _, body) = raw(server.addr, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 404);
    assert!(body.contains(r#""error":"no route GET /nope""#), "{body}");
    server.stop();
}

#[test]
fn api_refuses_an_empty_token_and_client_names_the_address() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let job: Arc<dyn JobControl> = Arc::new(RecordingJob { status: sample_status(), calls: Mutex::new(Vec::new()) });
    let metrics = Arc::new(JobMetrics::new(&Registry::new()).unwrap());
    let served = rt
        .block_on(async {
            tokio::time::timeout(WAIT, serve(listener, " ".into(), job, metrics, Default::default(), std::future::pending())).await
        })
        .unwrap();
    assert!(matches!(served, Err(CoordinatorError::Api { .. })), "{served:?}");

    // The listener is gone: the client's error names where it tried to connect.
    let err = ApiClient::new(addr, TOKEN).with_timeout(WAIT).status().unwrap_err();
    assert!(matches!(err, CoordinatorError::Net { op: "connect", .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// `GET /events` answers the event log's records with their sequence numbers; a poller that
/// passes the previous answer's `next` gets only what was recorded since; bad parameters are
/// named. Nothing of it goes through the job backend.
#[test]
fn api_events_answer_the_log_from_a_cursor() {
    let mut server = Server::start();
    let client = server.client();
    let empty = client.events(None, 10).unwrap();
    assert_eq!((empty.events.len(), empty.next, empty.missed), (0, 0, 0));
    server.log.record_at(1_000, &JobEvent::WorkerJoined { worker: 4, addr: "127.0.0.1:41001".into() }).unwrap();
    server.log.record_at(1_001, &JobEvent::ScaleRequested { workers: 3 }).unwrap();
    let first = client.events(Some(empty.next), 10).unwrap();
    assert_eq!(first.events.iter().map(|e| (e.seq, e.ts_ms)).collect::<Vec<_>>(), [(0, 1_000), (1, 1_001)]);
    assert_eq!(first.events[1].event, JobEvent::ScaleRequested { workers: 3 });
    assert_eq!(first.next, 2);
    // Polled again with its cursor: nothing new, then only the new record.
    assert!(client.events(Some(first.next), 10).unwrap().events.is_empty());
    let flagged =
        JobEvent::StragglerFlagged { worker: 4, rank: 1, generation: 3, step: 1190, own_s: 2.0, others_median_s: 0.25, drain: true };
    server.log.record_at(1_002, &flagged).unwrap();
    let second = client.events(Some(first.next), 10).unwrap();
    assert_eq!(second.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    assert_eq!((second.events[0].event.clone(), second.next, second.missed), (flagged, 3, 0));
    // Without a cursor: the newest `limit`.
    assert_eq!(client.events(None, 1).unwrap().events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    let (status, message) = http_error(client.events(None, 5000));
    assert_eq!(status, 400);
    assert!(message.contains("limit"), "{message}");
    let (status, _, body) =
        raw(server.addr, &format!("GET /events?after=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"));
    assert_eq!((status, body.contains(r#""field":"after""#)), (400, true), "{body}");
    assert!(server.calls().is_empty(), "{:?}", server.calls());
    server.stop();
}
