//! A worker process under a coordinator (`tessera worker --join ADDR`): it links to the
//! coordinator's node, announces itself, and then its actor relays commands to the device
//! thread ([`device`]), sends heartbeats on its own timer (so a busy device thread never looks
//! dead, while a stopped process does), and aborts collectives when told a peer is gone.
//! A pool worker whose coordinator dies keeps the job's state for a new coordinator to adopt
//! ([`link`] has the contract); any other worker leaves the job then.

pub mod device;
pub mod link;

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, pg};
use tessera_ops::Secret;
use tessera_protocol::WorkerId;
use tessera_protocol::messages::{Command, ExitReason, JobSpec, Wire, WorkerEvent, WorkerMsg, worker_group};

use device::{AbortState, DeviceCmd, DeviceCtx, device_main};
use link::{Link, Reattach};

use crate::error::{Result, WorkerError};

/// How a worker process joins a job.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The coordinator's node address.
    pub coordinator: SocketAddr,
    /// The job's cookie (node authentication).
    pub cookie: String,
    /// The job's coordinator process group ([`tessera_protocol::messages::coordinator_group`]).
    pub group: String,
    /// libtorch threads for this worker.
    pub threads: usize,
    /// How long to wait for the coordinator link.
    pub connect_timeout: Duration,
    /// Interrupted, how long to wait for the coordinator to drain this worker before leaving
    /// anyway (which makes the others roll back to the last checkpoint).
    pub drain_timeout: Duration,
    /// Pool mode: a lost coordinator does not end the job in hand; the ranks pause and wait
    /// (for the slot's grace) for a new coordinator to adopt them. `None`: it ends it.
    pub reattach: Option<Arc<Reattach>>,
    /// The name of this process's log file in the job's `logs/` directory
    /// ([`tessera_protocol::worker_log`]): a pool worker's pool name; `None`: `worker-N`
    /// after the id the coordinator welcomes it with.
    pub log_name: Option<String>,
}

/// The worker actor (configuration lives in its arguments).
#[derive(Debug, Default)]
pub struct WorkerAgent;

/// The worker actor's arguments.
pub struct AgentArgs {
    link: Link,
    reattach: Option<Arc<Reattach>>,
    log_name: Option<String>,
    nonce: u64,
    listener: Option<TcpListener>,
    ring_addr: SocketAddr,
    threads: usize,
    /// Hands the device loop (context and command channel) to the process's main thread,
    /// which runs it: libtorch then allocates from the main malloc arena, exactly as in a
    /// one-process run (a device loop on a spawned thread measured up to 16% slower steps).
    device_home: Option<std::sync::mpsc::Sender<(DeviceCtx, std::sync::mpsc::Receiver<DeviceCmd>)>>,
    /// Set when the coordinator removes this worker as lost: the process then exits with a
    /// failure status.
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

/// The worker actor's state.
pub struct AgentState {
    args: AgentArgs,
    id: Option<WorkerId>,
    device: Option<Sender<DeviceCmd>>,
    abort: Arc<Mutex<AbortState>>,
    beat: Option<tokio::task::JoinHandle<()>>,
}

impl AgentState {
    fn send(&self, ev: WorkerEvent) {
        self.args.link.send(ev);
    }

    fn hello(&self, orphan: Option<tessera_protocol::messages::Orphan>) -> WorkerEvent {
        let args = &self.args;
        WorkerEvent::Hello { nonce: args.nonce, pid: std::process::id(), ring_addr: args.ring_addr, threads: args.threads, orphan }
    }

    fn to_device(&self, cmd: DeviceCmd) {
        if let Some(tx) = &self.device {
            let _ = tx.send(cmd);
        }
    }

    fn welcome(&mut self, myself: &ActorRef<WorkerMsg>, worker: WorkerId, spec: JobSpec, secret: String, heartbeat_ms: u64) -> Result<()> {
        let secret = Secret::from_hex(&secret).ok_or_else(|| WorkerError::Welcome("the job secret is not hex"))?;
        if self.device.is_some() {
            // Re-attached: the device thread keeps its state; it reports under this id now.
            tessera_protocol::say!("[{worker}] welcomed by the job's new coordinator");
            self.args.link.welcomed(worker, secret);
            self.id = Some(worker);
            return Ok(());
        }
        let job = spec.open()?;
        let origin = job.origin.clone();
        // From here on this process's lines also go to the job's log (closed when `run` ends).
        let log_name = self.args.log_name.clone().unwrap_or_else(|| format!("worker-{}", worker.0));
        if let Err(e) = tessera_protocol::worker_log::open(&job.output_dir, &log_name) {
            tessera_protocol::say!("[{worker}] its lines go to stderr only: cannot open its job log: {e}");
        }
        self.args.link.welcomed(worker, secret);
        let listener = self.args.listener.take().ok_or_else(|| WorkerError::Welcome("welcomed twice"))?;
        let ctx = DeviceCtx {
            job,
            listener,
            threads: self.args.threads,
            link: self.args.link.clone(),
            reattach: self.args.reattach.clone(),
            abort: Arc::clone(&self.abort),
        };
        let (tx, rx) = channel();
        let home = self.args.device_home.take().ok_or_else(|| WorkerError::Welcome("welcomed twice"))?;
        home.send((ctx, rx)).map_err(|_| WorkerError::Thread { thread: "the worker's main thread", detail: "it is gone".into() })?;
        self.device = Some(tx);
        self.id = Some(worker);
        let me = myself.clone();
        self.beat = Some(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(10)));
            loop {
                every.tick().await;
                if me.cast(WorkerMsg::Beat(Wire::new(()))).is_err() {
                    break;
                }
            }
        }));
        tessera_protocol::say!("[{worker}] welcomed: job '{origin}', ring {}", self.args.ring_addr);
        Ok(())
    }
}

impl Actor for WorkerAgent {
    type Msg = WorkerMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: AgentArgs) -> std::result::Result<Self::State, ActorProcessingErr> {
        pg::join(worker_group(args.nonce), vec![myself.get_cell()]);
        let state = AgentState { args, id: None, device: None, abort: Arc::default(), beat: None };
        state.send(state.hello(None));
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> std::result::Result<(), ActorProcessingErr> {
        if let Some(b) = state.beat.take() {
            b.abort();
        }
        if let Some(tx) = state.device.take() {
            let _ = tx.send(DeviceCmd::Exit);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let cmd = match msg {
            WorkerMsg::Beat(_) => {
                if let Some(worker) = state.id {
                    state.send(WorkerEvent::Heartbeat { worker });
                }
                return Ok(());
            }
            WorkerMsg::Interrupted(Wire(reason)) => {
                let reason = reason.unwrap_or_else(|e| e.to_string());
                match state.id {
                    // Trains on until the coordinator releases it at a checkpointed boundary.
                    Some(worker) => state.send(WorkerEvent::Draining { worker, reason }),
                    None => myself.stop(None),
                }
                return Ok(());
            }
            WorkerMsg::Orphaned(_) => {
                state.to_device(DeviceCmd::Orphaned);
                return Ok(());
            }
            WorkerMsg::Reattached(_) => {
                // The device thread published where it paused (or has nothing to keep).
                let orphan = state.args.reattach.as_ref().and_then(|r| r.orphan());
                state.send(state.hello(orphan));
                return Ok(());
            }
            WorkerMsg::Command(Wire(Ok(cmd))) => cmd,
            WorkerMsg::Command(Wire(Err(e))) => {
                tessera_protocol::say!("[worker] undecodable command from the coordinator: {e}");
                return Ok(());
            }
        };
        match cmd {
            Command::Welcome { worker, job, secret, heartbeat_ms } => {
                if let Err(e) = state.welcome(&myself, worker, job, secret, heartbeat_ms) {
                    tessera_protocol::say!("[{worker}] cannot serve this job: {e}");
                    state.send(WorkerEvent::Leaving { worker, reason: e.to_string() });
                    myself.stop(None);
                }
            }
            Command::Start(g) => state.to_device(DeviceCmd::Start(Box::new(g))),
            Command::Checkpoint { generation, asked_at } => state.to_device(DeviceCmd::Checkpoint { generation, asked_at }),
            Command::Stop { generation, checkpoint } => state.to_device(DeviceCmd::Stop { generation, checkpoint }),
            Command::Abort { generation, reason } => {
                tessera_protocol::say!("[{}] abort generation {generation}: {reason}", state.id.map_or("worker".into(), |w| w.to_string()));
                state.abort.lock().expect("abort state").abort(generation);
            }
            Command::Exit { why } => {
                tessera_protocol::say!("[{}] exit: {why}", state.id.map_or("worker".into(), |w| w.to_string()));
                if why == ExitReason::Lost {
                    state.args.dropped.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                myself.stop(None);
            }
        }
        Ok(())
    }
}

/// The local address this host uses to reach `peer` (advertised to the ring peers).
fn local_ip_towards(peer: SocketAddr) -> std::net::IpAddr {
    std::net::UdpSocket::bind(if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .and_then(|s| s.connect(peer).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(peer.ip())
}

/// A pool worker whose coordinator is gone: waits (at most the slot's grace) for the service
/// to send it to the job's new coordinator and links there; returns the new node, coordinator
/// and its group, or `None` when the state is to be dropped (grace over, released, interrupted).
async fn await_adoption(
    r: &Reattach,
    name: &str,
    shutdown: &std::sync::atomic::AtomicBool,
) -> Option<(ActorRef<ractor_cluster::NodeServerMessage>, ActorRef<tessera_protocol::messages::CoordinatorMsg>, String)> {
    let grace = r.grace();
    tessera_protocol::say!(
        "[worker] lost the coordinator: pausing at the next step boundary; waiting up to {}s to be adopted",
        grace.as_secs()
    );
    let deadline = std::time::Instant::now() + grace;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if shutdown.load(std::sync::atomic::Ordering::Relaxed) {
            tessera_protocol::say!("[worker] interrupted while orphaned: leaving the job");
            return None;
        }
        if r.take_release() {
            tessera_protocol::say!("[worker] the service will not adopt this job's state: dropping it");
            return None;
        }
        if std::time::Instant::now() > deadline {
            tessera_protocol::say!("[worker] not adopted within {}s: dropping the job's state", grace.as_secs());
            return None;
        }
        let Some(a) = r.take_attach() else { continue };
        match tessera_protocol::node::connect(a.node, &a.cookie, &a.group, name, Duration::from_secs(30)).await {
            Ok((node, coordinator)) => {
                tessera_protocol::say!("[worker] re-attached to the job's coordinator at {}", a.node);
                return Some((node, coordinator, a.group));
            }
            // The service sends it again with its next answer, or the grace runs out.
            Err(e) => tessera_protocol::say!("[worker] cannot re-attach to {}: {e}", a.node),
        }
    }
}

/// Runs a worker process until the coordinator tells it to exit (or the link breaks, or
/// `shutdown` fires); waits for its pending checkpoint writes before returning.
pub fn run(opts: &AgentOptions, shutdown: Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(crate::error::io_err("starting the worker runtime", "tokio"))?;
    let (home_tx, home_rx) = channel();
    let opts = opts.clone();
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control = rt.spawn(async move {
        let name = format!("worker-{}", std::process::id());
        // A signal before this worker has joined ends it at once: there is nothing to drain.
        let early = Arc::clone(&shutdown);
        let interrupted = async move {
            while !early.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let (node, coordinator) = tokio::select! {
            connected = tessera_protocol::node::connect(opts.coordinator, &opts.cookie, &opts.group, &name, opts.connect_timeout) => connected?,
            () = interrupted => {
                tessera_protocol::say!("[worker] interrupted before joining: exiting");
                return Ok(());
            }
        };
        let ip = local_ip_towards(opts.coordinator);
        let listener = TcpListener::bind((ip, 0)).map_err(crate::error::io_err("binding the ring listener", format!("{ip}")))?;
        let ring_addr = listener.local_addr().map_err(crate::error::io_err("reading the ring address", format!("{ip}")))?;
        let link = Link::new(coordinator);
        let args = AgentArgs {
            link: link.clone(),
            reattach: opts.reattach.clone().filter(|r| !r.grace().is_zero()),
            log_name: opts.log_name.clone(),
            nonce: rand::random(),
            listener: Some(listener),
            ring_addr,
            threads: opts.threads,
            device_home: Some(home_tx),
            dropped: Arc::clone(&dropped),
        };
        let (actor, join) = Actor::spawn(None, WorkerAgent, args)
            .await
            .map_err(|e| WorkerError::Thread { thread: "the worker actor", detail: format!("cannot start: {e}") })?;
        // The link to the coordinator is gone when its process group empties: exit then too.
        // Interrupted, the worker asks to be drained and leaves on its own only if it is not
        // released within `drain_timeout` (a second signal ends the process at once).
        let drain_timeout = opts.drain_timeout;
        let mut group = opts.group.clone();
        let node = Arc::new(Mutex::new(node));
        let reattach = opts.reattach.clone().filter(|r| !r.grace().is_zero());
        let watch = {
            let (actor, node) = (actor.clone(), Arc::clone(&node));
            tokio::spawn(async move {
                let mut interrupted: Option<std::time::Instant> = None;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if interrupted.is_none() && shutdown.load(std::sync::atomic::Ordering::Relaxed) {
                        tessera_protocol::say!(
                            "[worker] interrupted: asking to leave at the next step boundary (at most {}s; a second signal exits now)",
                            drain_timeout.as_secs()
                        );
                        interrupted = Some(std::time::Instant::now());
                        let _ = actor.cast(WorkerMsg::Interrupted(Wire::new("interrupted".to_string())));
                    }
                    if interrupted.is_some_and(|t| t.elapsed() > drain_timeout) {
                        tessera_protocol::say!("[worker] not released within {}s: leaving the job now", drain_timeout.as_secs());
                        actor.stop(None);
                        break;
                    }
                    if pg::get_members(&group).is_empty() {
                        let Some(r) = &reattach else {
                            tessera_protocol::say!("[worker] lost the coordinator: exiting");
                            actor.stop(None);
                            break;
                        };
                        let _ = actor.cast(WorkerMsg::Orphaned(Wire::new(())));
                        match await_adoption(r, &name, &shutdown).await {
                            Some((new_node, coordinator, new_group)) => {
                                let old = std::mem::replace(&mut *node.lock().expect("node"), new_node);
                                old.stop(None);
                                link.set_coordinator(coordinator);
                                group = new_group;
                                let _ = actor.cast(WorkerMsg::Reattached(Wire::new(())));
                            }
                            None => {
                                actor.stop(None);
                                break;
                            }
                        }
                    }
                }
            })
        };
        let _ = join.await;
        watch.abort();
        node.lock().expect("node").stop(None);
        if dropped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(WorkerError::Dropped);
        }
        Ok::<_, WorkerError>(())
    });
    // The device loop runs here, on the main thread, once the coordinator has welcomed this
    // worker; if the actor ends first (refused, link lost) the channel closes instead.
    if let Ok((ctx, rx)) = home_rx.recv() {
        device_main(ctx, rx);
    }
    let result = rt.block_on(control).map_err(|e| WorkerError::Thread { thread: "the worker's control task", detail: e.to_string() });
    rt.shutdown_timeout(Duration::from_secs(1));
    // The job is left: the next job (of a pool worker) opens its own log.
    tessera_protocol::worker_log::close();
    result?
}
