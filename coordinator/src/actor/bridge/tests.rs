//! The coordinator actor in-process, with no launcher (or one that only counts processes):
//! driven through [`ActorBridge`], through the real HTTP API ([`serve`] on a loopback port
//! from port 0, [`ApiClient`]), and by a fake worker actor that receives the actor's commands
//! and answers with scripted worker events.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef, pg};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

use super::ActorBridge;
use crate::actor::{Coordinator, CoordinatorArgs, JobOutcome, Launcher};
use crate::api::{ApiError, JobControl, JobPhase, MixtureAck, ScaleAck, serve};
use crate::client::ApiClient;
use crate::control::{Generation, Policy, Rank, Step, StopReason, WorkerId};
use crate::error::CoordinatorError;
use crate::events::{EndReason, EventFeed, EventLog, JobEvent};
use crate::metrics::JobMetrics;
use tessera_protocol::checkpoint;
use tessera_protocol::ledger::MixtureSchedule;
use tessera_protocol::messages::{
    Command, CoordinatorMsg, ExitReason, FailureKind, GenerationStart, JobSpec, PoolLoss, RankFailure, Wire, WorkerEvent, WorkerMsg,
    worker_group,
};
use tessera_protocol::report::{StepReport, StepTimings};

const WAIT: Duration = Duration::from_secs(5);
const TOKEN: &str = "bridge-t0ken";

/// A running coordinator actor over a temp output directory.
struct Job {
    rt: Runtime,
    dir: tempfile::TempDir,
    actor: ActorRef<CoordinatorMsg>,
    metrics: Arc<JobMetrics>,
    /// The event log's feed, as `tessera train` hands it to the API.
    feed: EventFeed,
    done: Option<oneshot::Receiver<JobOutcome>>,
}

impl Job {
    fn start(policy: Policy, committed: Vec<u64>) -> Self {
        Self::start_with(policy, committed, None)
    }

    fn start_with(policy: Policy, committed: Vec<u64>, launcher: Option<Box<dyn Launcher>>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(JobMetrics::new(&Registry::new()).unwrap());
        let (done_tx, done) = oneshot::channel();
        let events = EventLog::open(&dir.path().join("events.jsonl")).unwrap();
        let feed = events.feed();
        let args = CoordinatorArgs {
            group: tessera_protocol::messages::coordinator_group(None),
            name: "bridge-test".into(),
            spec: JobSpec::new(&resolved_job(dir.path())),
            policy,
            checkpoint_dir: dir.path().join("checkpoints"),
            keep_last: 3,
            output_dir: dir.path().into(),
            secret: "00".into(),
            heartbeat_ms: 1000,
            schedule: MixtureSchedule::new(vec![1.0, 1.0]).unwrap(),
            dataset_names: vec!["cc12m".into(), "coco".into()],
            global_batch_size: 8,
            events,
            metrics: metrics.clone(),
            committed,
            launcher,
            adopt: None,
            commit_gate: None,
            done: Some(done_tx),
            console: crate::console::Console::plain("bridge-test", policy.total_steps),
        };
        let (actor, _) = rt.block_on(Actor::spawn(None, Coordinator, args)).unwrap();
        Self { rt, dir, actor, metrics, feed, done: Some(done) }
    }

    fn bridge(&self) -> ActorBridge {
        ActorBridge::new(self.actor.clone())
    }

    fn events(&self) -> Vec<JobEvent> {
        EventLog::read_all(&self.dir.path().join("events.jsonl")).unwrap().into_iter().map(|e| e.event).collect()
    }

    fn send(&self, ev: WorkerEvent) {
        self.actor.cast(CoordinatorMsg::Worker(Wire::new(ev))).unwrap();
    }

    /// Asks the job to shut down and returns how it ended.
    fn shutdown(&mut self) -> JobOutcome {
        self.rt.block_on(self.bridge().shutdown()).unwrap();
        self.outcome()
    }

    fn outcome(&mut self) -> JobOutcome {
        let done = self.done.take().unwrap();
        self.rt.block_on(async { tokio::time::timeout(WAIT, done).await }).expect("the job ends in time").unwrap()
    }
}

fn policy(min: usize, max: usize) -> Policy {
    Policy {
        min_workers: min,
        max_workers: max,
        heartbeat_timeout_ms: 60_000,
        checkpoint_every: 0,
        total_steps: 100,
        rendezvous_grace_ms: 50,
        initial_workers: 0,
        launches: false,
        stragglers: Default::default(),
    }
}

fn bad_field(e: ApiError) -> String {
    match e {
        ApiError::BadRequest { field, .. } => field,
        other => panic!("not a 400: {other:?}"),
    }
}

fn weights(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

fn http_status(r: crate::error::Result<impl std::fmt::Debug>) -> (u16, String) {
    match r {
        Err(CoordinatorError::Http { status, message, .. }) => (status, message),
        other => panic!("not an HTTP error: {other:?}"),
    }
}

#[test]
fn the_bridge_and_the_http_api_steer_a_waiting_coordinator() {
    let mut job = Job::start(policy(1, 2), vec![4]);
    let bridge = job.bridge();

    let status = job.rt.block_on(bridge.status()).unwrap();
    assert_eq!((status.phase, status.step, status.last_checkpoint, status.world_size), (JobPhase::Waiting, 4, Some(4), 0));
    assert_eq!((status.min_workers, status.max_workers, status.total_steps, status.schedule_version), (1, 2, 100, 0));
    assert!(status.members.is_empty());
    assert_eq!(bad_field(job.rt.block_on(bridge.scale(3)).unwrap_err()), "workers");
    assert!(matches!(job.rt.block_on(bridge.checkpoint()), Err(ApiError::Conflict { .. })));
    assert_eq!(bad_field(job.rt.block_on(bridge.set_mixture(weights(&[("laion", 1.0)]), None)).unwrap_err()), "weights.laion");
    let too_soon = job.rt.block_on(bridge.set_mixture(weights(&[("coco", 3.0)]), Some(5))).unwrap_err();
    assert!(too_soon.to_string().contains("at_step") && too_soon.to_string().contains("is 6"), "{too_soon}");
    let ack = job.rt.block_on(bridge.set_mixture(weights(&[("coco", 3.0)]), None)).unwrap();
    assert_eq!(ack, MixtureAck { version: 1, effective_step: 6 });

    // The same through HTTP.
    let listener = job.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let backend: Arc<dyn JobControl> = Arc::new(bridge.clone());
    let server = job.rt.spawn(serve(listener, TOKEN.into(), backend, job.metrics.clone(), job.feed.clone(), async move {
        let _ = stopped.await;
    }));
    let client = ApiClient::new(addr, TOKEN).with_timeout(WAIT);
    let status = client.status().unwrap();
    assert_eq!((status.job.as_str(), status.phase, status.step), ("bridge-test", JobPhase::Waiting, 4));
    let (code, message) = http_status(client.scale(5));
    assert!(code == 400 && message.contains("workers"), "{code} {message}");
    let (code, message) = http_status(client.checkpoint());
    assert!(code == 409 && message.contains("no generation"), "{code} {message}");
    let (code, message) = http_status(client.set_mixture(weights(&[("laion", 1.0)]), None));
    assert!(code == 400 && message.contains("weights"), "{code} {message}");
    assert_eq!(client.scale(2).unwrap(), ScaleAck { target_workers: 2 });
    // What the actor recorded is what `GET /events` answers, without asking the actor.
    let page = client.events(None, 10).unwrap();
    let recorded: Vec<&JobEvent> = page.events.iter().map(|e| &e.event).collect();
    assert!(matches!(recorded[..], [JobEvent::CoordinatorStarted { .. }, JobEvent::MixtureChanged { version: 1, .. }, ..]), "{recorded:?}");
    assert_eq!(page.next, page.events.len() as u64);
    let metrics = client.metrics().unwrap();
    assert!(metrics.lines().any(|l| l == "tessera_workers_registered 0"), "{metrics}");
    let _ = stop.send(());
    job.rt.block_on(async { tokio::time::timeout(WAIT, server).await }).unwrap().unwrap().unwrap();

    assert_eq!(job.shutdown(), JobOutcome::Stopped { step: 4, checkpointed: true });
    // A stopped coordinator answers 503-type errors, not a hang.
    assert!(matches!(job.rt.block_on(bridge.status()), Err(ApiError::Unavailable { .. })));
    assert_eq!(
        job.events(),
        vec![
            JobEvent::CoordinatorStarted { resumed_step: Some(4) },
            JobEvent::MixtureChanged { version: 1, effective_step: 6, weights: weights(&[("cc12m", 1.0), ("coco", 3.0)]) },
            JobEvent::ScaleRequested { workers: 2 },
        ]
    );
}

/// A worker actor that forwards every command it receives to the test.
struct FakeWorker;

impl Actor for FakeWorker {
    type Msg = WorkerMsg;
    type State = mpsc::UnboundedSender<Command>;
    type Arguments = (u64, mpsc::UnboundedSender<Command>);

    async fn pre_start(&self, myself: ActorRef<WorkerMsg>, (nonce, tx): Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        pg::join(worker_group(nonce), vec![myself.get_cell()]);
        Ok(tx)
    }

    async fn handle(&self, _myself: ActorRef<WorkerMsg>, msg: WorkerMsg, tx: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let WorkerMsg::Command(Wire(Ok(cmd))) = msg {
            let _ = tx.send(cmd);
        }
        Ok(())
    }
}

/// The pid every fake worker announces.
const FAKE_PID: u32 = 4242;

/// A fake worker (private group `nonce`) that says hello, is welcomed and started: its actor,
/// the commands it receives next, its id and the generation it was started in.
fn join_fake(job: &Job, nonce: u64) -> (ActorRef<WorkerMsg>, mpsc::UnboundedReceiver<Command>, WorkerId, GenerationStart) {
    join_fake_as(job, nonce, FAKE_PID)
}

/// [`join_fake`] for a fake worker that says it is process `pid`.
fn join_fake_as(job: &Job, nonce: u64, pid: u32) -> (ActorRef<WorkerMsg>, mpsc::UnboundedReceiver<Command>, WorkerId, GenerationStart) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (fake, _) = job.rt.block_on(Actor::spawn(None, FakeWorker, (nonce, tx))).unwrap();
    job.send(WorkerEvent::Hello { nonce, pid, ring_addr: "127.0.0.1:41000".parse().unwrap(), threads: 1, orphan: None });
    let Command::Welcome { worker, .. } = job_cmd(&job.rt, &mut rx) else { panic!("a welcome first") };
    let Command::Start(start) = job_cmd(&job.rt, &mut rx) else { panic!("then generation 0") };
    (fake, rx, worker, start)
}

fn report(generation: u64, step: u64) -> StepReport {
    StepReport {
        generation: Generation(generation),
        step: Step(step),
        rank: Rank(0),
        world: 1,
        loss: 2.0,
        losses: BTreeMap::new(),
        lr: 1e-3,
        grad_norm: 1.0,
        samples: 8,
        tokens: 64,
        skipped: false,
        skipped_samples: 0,
        timings: StepTimings { total_s: 0.25, ..StepTimings::default() },
        rss_bytes: None,
        counters: Default::default(),
    }
}

/// A small resolved job (what the coordinator sends its workers).
fn resolved_job(base: &Path) -> tessera_protocol::ResolvedJob {
    let toml = "[job]\nname = \"bridge-test\"\noutput_dir = \"out\"\n[model]\nmodalities = \"caption,tok_rgb@224\"\n\
                [data]\ntext_tokenizer = \"tok.json\"\n[[data.datasets]]\nname = \"syn\"\nkind = \"synthetic\"\n\
                [train]\nglobal_batch_size = 4\ntotal_steps = 8\n";
    let cfg = tessera_protocol::JobConfig::from_toml(toml, "bridge-test.toml").unwrap();
    tessera_protocol::ResolvedJob::resolve(&cfg, "bridge-test.toml", base).unwrap()
}

/// What the fake worker's rank 0 writes for a checkpoint of `step`: one shard and the manifest.
fn shard(root: &Path, worker: WorkerId, generation: u64, step: u64) -> WorkerEvent {
    let tmp = checkpoint::temp_dir(root, step, generation);
    std::fs::create_dir_all(&tmp).unwrap();
    let name = checkpoint::shard_file(0, 1);
    std::fs::write(tmp.join(&name), b"weights").unwrap();
    let file = checkpoint::file_entry(&tmp.join(&name)).unwrap();
    let mut state = checkpoint::TrainState::start(tessera_protocol::MixtureSchedule::new(vec![1.0]).unwrap());
    state.step = step;
    let manifest = Some(Box::new(checkpoint::Manifest::new("t", 0, 1, state, Vec::new())));
    WorkerEvent::ShardWritten { worker, generation: Generation(generation), step: Step(step), rank: Rank(0), file, manifest, write_s: 0.01 }
}

#[test]
fn a_mixture_change_restarts_the_generation_and_moves_past_steps_the_ranks_trained() {
    let mut job = Job::start(policy(1, 1), vec![]);
    let (fake, mut rx, worker, start) = join_fake(&job, 0xfeed);
    let mut next = || job_cmd(&job.rt, &mut rx);
    assert_eq!((start.plan.generation, start.plan.start_step, start.schedule.versions().len()), (Generation(0), Step(0), 1));

    for step in 0..3 {
        job.send(WorkerEvent::Step { worker, report: report(0, step) });
    }
    // Asked while the coordinator has steps 0..3: the earliest step is 5.
    let ack = job.rt.block_on(job.bridge().set_mixture(weights(&[("coco", 3.0)]), None)).unwrap();
    assert_eq!(ack, MixtureAck { version: 1, effective_step: 5 });
    assert_eq!(next(), Command::Stop { generation: Generation(0), checkpoint: true });
    // The rank had run ahead: it stops at boundary 7, past step 5.
    for step in 3..7 {
        job.send(WorkerEvent::Step { worker, report: report(0, step) });
    }
    job.send(shard(&job.dir.path().join("checkpoints"), worker, 0, 7));
    job.send(WorkerEvent::GenerationEnded { worker, generation: Generation(0), step: Step(7), error: None });
    let Command::Start(start) = next() else { panic!("generation 1") };
    assert_eq!((start.plan.generation, start.plan.start_step, start.plan.restore), (Generation(1), Step(7), Some(Step(7))));
    let versions: Vec<(u32, u64, Vec<f64>)> =
        start.schedule.versions().iter().map(|v| (v.version, v.start_index, v.weights.clone())).collect();
    assert_eq!(versions, vec![(0, 0, vec![1.0, 1.0]), (1, 7 * 8, vec![1.0, 3.0])], "version 1 moved to the boundary");

    let metrics = job.metrics.render().unwrap();
    for line in [
        "tessera_step 6",
        "tessera_generation 1",
        "tessera_world_size 1",
        "tessera_checkpoints_committed_total 1",
        "tessera_workers_registered 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing from\n{metrics}");
    }
    let status = job.rt.block_on(job.bridge().status()).unwrap();
    assert_eq!((status.phase, status.generation, status.schedule_version, status.members[0].rank), (JobPhase::Running, 1, 1, Some(0)));

    // Shut down: the rank checkpoints at its boundary (it fails here) and leaves.
    job.rt.block_on(job.bridge().shutdown()).unwrap();
    assert_eq!(next(), Command::Stop { generation: Generation(1), checkpoint: true });
    let error = RankFailure { kind: FailureKind::Checkpoint, rank: Rank(0), step: Step(7), message: "disk full".into() };
    job.send(WorkerEvent::ShardFailed { worker, generation: Generation(1), step: Step(7), error });
    // Interrupted before it reports leaving the loop: its removal ends the generation.
    job.send(WorkerEvent::Leaving { worker, reason: "interrupted".into() });
    assert_eq!(job.outcome(), JobOutcome::Stopped { step: 7, checkpointed: true });
    fake.stop(None);
    let metrics = job.metrics.render().unwrap();
    assert!(metrics.lines().any(|l| l == "tessera_workers_registered 0"), "{metrics}");

    let events = job.events();
    let mut kinds: Vec<&str> = Vec::new();
    for e in &events {
        kinds.push(match e {
            JobEvent::CoordinatorStarted { resumed_step } => {
                assert_eq!(*resumed_step, None);
                "started"
            }
            JobEvent::WorkerJoined { worker, addr } => {
                assert_eq!((*worker, addr.as_str()), (0, "127.0.0.1:41000"));
                "joined"
            }
            JobEvent::GenerationStarted { generation, start_step, .. } => {
                assert_eq!(*start_step, [0, 7][*generation as usize]);
                "generation started"
            }
            JobEvent::MixtureChanged { version, effective_step, weights: w } => {
                assert_eq!((*version, w), (1, &weights(&[("cc12m", 1.0), ("coco", 3.0)])));
                if *effective_step == 5 { "mixture asked" } else { "mixture moved" }
            }
            JobEvent::CheckpointCommitted { step, bytes, duration_s, dir } => {
                assert!(*step == 7 && *bytes > 7 && *duration_s >= 0.0 && dir.ends_with("step-00000007"), "{e:?}");
                "committed"
            }
            JobEvent::GenerationEnded { generation, reason } => {
                assert_eq!(*reason, EndReason::Stop([StopReason::Resize, StopReason::Shutdown][*generation as usize]));
                "generation ended"
            }
            JobEvent::CheckpointFailed { step, reason } => {
                assert!(*step == 7 && reason.contains("disk full"), "{e:?}");
                "failed"
            }
            JobEvent::WorkerRemoved { worker, reason } => {
                assert_eq!((*worker, reason.as_str()), (0, "left: interrupted"));
                "removed"
            }
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(
        kinds,
        vec![
            "started",
            "joined",
            "generation started",
            "mixture asked",
            "committed",
            "generation ended",
            "generation started",
            "mixture moved",
            "failed",
            "removed",
            "generation ended"
        ]
    );
}

/// A launcher whose live process count the test sets; it starts and kills nothing.
struct CountedLauncher(Arc<AtomicUsize>);

impl Launcher for CountedLauncher {
    fn spawn(&mut self, n: usize) -> Result<Vec<u32>, String> {
        Err(format!("this test starts no process ({n} asked)"))
    }

    fn kill(&mut self, _pid: u32) {}

    fn live(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The only worker process dies while its generation is already stopping at a boundary (no
/// abort, so no restart is counted): with none of the launcher's processes left to join, the
/// job fails with the reason instead of waiting forever.
#[test]
fn losing_the_last_worker_process_during_a_planned_stop_fails_the_job() {
    let live = Arc::new(AtomicUsize::new(1));
    let mut job = Job::start_with(Policy { launches: true, ..policy(1, 1) }, vec![], Some(Box::new(CountedLauncher(Arc::clone(&live)))));
    let (fake, mut rx, worker, start) = join_fake(&job, 0xbeef);
    let mut next = || job_cmd(&job.rt, &mut rx);
    assert_eq!(start.plan.generation, Generation(0));
    for step in 0..2 {
        job.send(WorkerEvent::Step { worker, report: report(0, step) });
    }
    job.rt.block_on(job.bridge().set_mixture(weights(&[("coco", 3.0)]), None)).unwrap();
    assert_eq!(next(), Command::Stop { generation: Generation(0), checkpoint: true });
    live.store(0, Ordering::SeqCst);
    job.actor.cast(CoordinatorMsg::ProcessExited(Wire::new((FAKE_PID, "signal: 6 (SIGABRT)".to_string())))).unwrap();
    match job.outcome() {
        JobOutcome::Failed { reason } => assert_eq!(reason, "0 workers left, the job needs at least 1"),
        other => panic!("expected a failure: {other:?}"),
    }
    fake.stop(None);
}

/// The service's pool lost a worker process (its etcd lease expired): the job's actor finds
/// the member by its host address and pid and loses it at once, as when its link breaks (it
/// is told to exit, and the removal says why). The same pid on another host is not it.
#[test]
fn a_worker_process_the_pool_lost_is_lost_to_its_job_at_once() {
    let mut job = Job::start(policy(1, 1), vec![]);
    let (fake, mut rx, worker, _) = join_fake(&job, 0xfeed);
    let loss =
        |ip: &str| CoordinatorMsg::PoolLost(Wire::new(PoolLoss { ip: ip.parse().unwrap(), pid: FAKE_PID, reason: "lease expired".into() }));
    job.actor.cast(loss("10.0.0.7")).unwrap();
    assert_eq!(job.rt.block_on(job.bridge().status()).unwrap().members.len(), 1, "another host's process 4242 is not this member");
    job.actor.cast(loss("127.0.0.1")).unwrap();
    assert_eq!(job_cmd(&job.rt, &mut rx), Command::Exit { why: ExitReason::Lost });
    // Its only member lost after a generation, a job with no launcher has nobody to go on with.
    match job.outcome() {
        JobOutcome::Failed { reason } => assert_eq!(reason, "0 workers left, the job needs at least 1"),
        other => panic!("expected a failure: {other:?}"),
    }
    let removed: Vec<(u64, String)> = job
        .events()
        .into_iter()
        .filter_map(|e| match e {
            JobEvent::WorkerRemoved { worker, reason } => Some((worker, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(removed, vec![(worker.0, "lost to the pool: lease expired".to_string())]);
    fake.stop(None);
}

/// A launcher that pretends to start processes: it counts what it was asked to start and
/// counts them alive (the test plays the processes with fake workers).
struct SpawnCounter {
    live: Arc<AtomicUsize>,
    spawned: Arc<AtomicUsize>,
}

impl Launcher for SpawnCounter {
    fn spawn(&mut self, n: usize) -> Result<Vec<u32>, String> {
        self.live.fetch_add(n, Ordering::SeqCst);
        let first = self.spawned.fetch_add(n, Ordering::SeqCst) as u32;
        Ok((0..n as u32).map(|i| 9000 + first + i).collect())
    }

    fn kill(&mut self, _pid: u32) {}

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// A lost worker is replaced (rule 5 of `control`); the replacement process joins as such, and
/// when it is lost before any step is trained it gets no successor (a crash loop): with nobody
/// left the job fails.
#[test]
fn a_lost_worker_is_replaced_but_a_replacement_lost_before_training_is_not() {
    let (live, spawned) = (Arc::new(AtomicUsize::new(1)), Arc::new(AtomicUsize::new(0)));
    let launcher = SpawnCounter { live: Arc::clone(&live), spawned: Arc::clone(&spawned) };
    let mut job = Job::start_with(Policy { launches: true, ..policy(1, 1) }, vec![], Some(Box::new(launcher)));
    let lose = |job: &Job, pid: u32| {
        live.store(0, Ordering::SeqCst);
        job.actor.cast(CoordinatorMsg::ProcessExited(Wire::new((pid, "signal: 9 (SIGKILL)".to_string())))).unwrap();
    };
    let (first, _rx1, worker, _) = join_fake(&job, 0xa1);
    job.send(WorkerEvent::Step { worker, report: report(0, 0) });
    lose(&job, FAKE_PID);
    let deadline = std::time::Instant::now() + WAIT;
    while spawned.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "no replacement asked for");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The SpawnCounter's first pid.
    let (second, _rx2, _, start) = join_fake_as(&job, 0xa2, 9000);
    assert_eq!(start.plan.generation, Generation(1));
    lose(&job, 9000);
    match job.outcome() {
        JobOutcome::Failed { reason } => assert_eq!(reason, "0 workers left, the job needs at least 1"),
        other => panic!("expected a failure: {other:?}"),
    }
    assert_eq!(spawned.load(Ordering::SeqCst), 1, "one replacement only");
    first.stop(None);
    second.stop(None);
}

/// The next command the fake worker received.
/// `POST /drain` through the actor: an unknown worker names the field, the last worker of a
/// job with `min_workers` 1 is refused; the status shows a rank's last phases, unflagged.
#[test]
fn a_drain_that_would_leave_too_few_workers_is_refused_and_the_status_shows_the_phases() {
    let mut job = Job::start(policy(1, 1), vec![]);
    let (fake, _rx, worker, _start) = join_fake(&job, 0xd4a1);
    let bridge = job.bridge();
    assert_eq!(bad_field(job.rt.block_on(bridge.drain(worker.0 + 7)).unwrap_err()), "worker");
    let refused = job.rt.block_on(bridge.drain(worker.0)).unwrap_err();
    assert!(matches!(&refused, ApiError::Conflict { reason } if reason.contains("at least 1")), "{refused:?}");
    job.send(WorkerEvent::Step { worker, report: report(0, 0) });
    let deadline = std::time::Instant::now() + WAIT;
    let member = loop {
        let status = job.rt.block_on(bridge.status()).unwrap();
        if status.step == 1 {
            break status.members[0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "step 0 not done: {status:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        (member.timings, member.last_step_s, member.straggler, member.draining),
        (Some(report(0, 0).timings), Some(0.25), false, false)
    );
    // The rank leaves when asked to stop: the job ends, stopped.
    job.rt.block_on(bridge.shutdown()).unwrap();
    job.send(WorkerEvent::Leaving { worker, reason: "interrupted".into() });
    assert!(matches!(job.outcome(), JobOutcome::Stopped { step: 0, .. }));
    fake.stop(None);
}

fn job_cmd(rt: &Runtime, rx: &mut mpsc::UnboundedReceiver<Command>) -> Command {
    rt.block_on(async { tokio::time::timeout(WAIT, rx.recv()).await }).expect("a command in time").expect("the fake worker is alive")
}

/// A coordinator stand-in that keeps every reply port and never answers.
struct Silent;

impl Actor for Silent {
    type Msg = CoordinatorMsg;
    type State = Vec<ractor::RpcReplyPort<Wire<tessera_protocol::messages::Reply>>>;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<CoordinatorMsg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
        Ok(Vec::new())
    }

    async fn handle(
        &self,
        _myself: ActorRef<CoordinatorMsg>,
        msg: CoordinatorMsg,
        held: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let CoordinatorMsg::Request(_, reply) = msg {
            held.push(reply);
        }
        Ok(())
    }
}

#[test]
fn a_coordinator_that_does_not_answer_in_time_is_unavailable() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (silent, _) = rt.block_on(Actor::spawn(None, Silent, ())).unwrap();
    let bridge = ActorBridge::new(silent.clone()).with_timeout(Duration::from_millis(50));
    match rt.block_on(bridge.scale(1)) {
        Err(ApiError::Unavailable { reason }) => assert!(reason.contains("did not answer within 50ms"), "{reason}"),
        other => panic!("expected 503: {other:?}"),
    }
    silent.stop(None);
}
