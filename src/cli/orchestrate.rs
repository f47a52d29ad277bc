//! Embedded mode: `tessera train CONFIG --workers N` runs the coordinator actor in this process
//! (membership in memory), starts N worker processes of this binary that join it over
//! loopback, supervises them, and serves the HTTP API and metrics. The job's connection facts
//! go to `OUTPUT/coordinator.json` and its secrets to `OUTPUT/.tessera/` (mode 0600) so that
//! `tessera worker --job-dir`, `tessera status|scale|checkpoint --job-dir` find them.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ractor::{Actor, ActorRef};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tessera_coordinator::EventLog;
use tessera_coordinator::actor::ActorBridge;
use tessera_coordinator::actor::{Coordinator, CoordinatorArgs, JobOutcome, Launcher, ResumePoint};
use tessera_coordinator::console::Console;
use tessera_coordinator::control::Policy;
use tessera_coordinator::metrics::JobMetrics;
use tessera_protocol::ResolvedJob;
use tessera_protocol::messages::{CoordinatorMsg, JobSpec, Wire};
use tessera_protocol::node::CoordinatorNode;

/// Where a running job can be reached (written to `OUTPUT/coordinator.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEndpoint {
    /// The coordinator's node address (`tessera worker --join`).
    pub node: SocketAddr,
    /// The HTTP API address.
    pub api: Option<SocketAddr>,
    /// The coordinator's pid.
    pub pid: u32,
    /// The secrets directory (cookie, API token).
    pub secrets: PathBuf,
}

/// Options of an embedded run.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Worker processes to start.
    pub workers: usize,
    /// Fewest workers a generation may have.
    pub min_workers: usize,
    /// Most workers a generation may have.
    pub max_workers: usize,
    /// Stop after this many steps in this invocation.
    pub max_steps: Option<u64>,
    /// Ignore existing checkpoints.
    pub no_resume: bool,
    /// A worker silent this long is dead.
    pub heartbeat_timeout: Duration,
    /// Coordinator node address to bind.
    pub listen: SocketAddr,
    /// HTTP API address to bind.
    pub api: SocketAddr,
    /// Peak TFLOP/s of one rank's device (`None`: the default of [`super::peak::per_rank`]).
    pub peak_tflops: Option<f64>,
}

pub(super) fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes a secret as a new file of mode 0600 renamed over `path`: a file that existed with a
/// wider mode (say 0644) is replaced, never reused, so the secret is never world-readable.
pub(super) fn write_secret(path: &Path, value: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&tmp)?;
        f.write_all(value.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("writing {}: {e}", path.display())
    })
}

/// Creates the secrets directory with mode 0700 (also when it existed with a wider mode,
/// or the umask would give one).
pub fn secrets_dir_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.is_dir() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private", dir.display()))
}

/// The secrets directory of a job's output directory.
pub fn secrets_dir(output: &Path) -> PathBuf {
    output.join(".tessera")
}

/// Reads `OUTPUT/coordinator.json`.
pub fn read_endpoint(job_dir: &Path) -> anyhow::Result<JobEndpoint> {
    let path = job_dir.join("coordinator.json");
    let text = std::fs::read(&path).with_context(|| format!("reading {} (is the job running?)", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Starts worker processes of this binary and reports their exits to the coordinator.
struct LocalLauncher {
    exe: PathBuf,
    node: SocketAddr,
    cookie: String,
    threads: usize,
    /// Workers started so far (round robin over the GPUs).
    spawned: usize,
    live: Arc<Mutex<HashSet<u32>>>,
    coordinator: Arc<Mutex<Option<ActorRef<CoordinatorMsg>>>>,
    /// Workers' stderr lines are printed through it, so they do not tear the progress bar.
    console: Console,
    /// The threads relaying them (joined at the end so that no last line is lost).
    relays: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Launcher for LocalLauncher {
    fn spawn(&mut self, n: usize) -> Result<Vec<u32>, String> {
        let mut pids = Vec::with_capacity(n);
        for _ in 0..n {
            let mut cmd = Command::new(&self.exe);
            cmd.args(["worker", "--join", &self.node.to_string(), "--threads", &self.threads.to_string()])
                .env("TESSERA_COOKIE", &self.cookie)
                .env("OMP_NUM_THREADS", self.threads.to_string());
            if let Some(gpu) = visible_gpu(self.spawned) {
                cmd.env("CUDA_VISIBLE_DEVICES", gpu);
            }
            self.spawned += 1;
            // Own process group: a Ctrl-C at the terminal reaches the coordinator only, which
            // checkpoints and then releases the workers.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            cmd.stderr(Stdio::piped());
            let mut child: Child = cmd.spawn().map_err(|e| format!("starting {}: {e}", self.exe.display()))?;
            let pid = child.id();
            if let Some(err) = child.stderr.take() {
                let console = self.console.clone();
                // Ends when the worker exits (its end of the pipe closes).
                let relay = std::thread::spawn(move || {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        console.relay(&line);
                    }
                });
                self.relays.lock().expect("relays").push(relay);
            }
            self.live.lock().expect("live set").insert(pid);
            let (live, coord) = (Arc::clone(&self.live), Arc::clone(&self.coordinator));
            std::thread::spawn(move || {
                let how = child.wait().map_or_else(|e| format!("wait failed: {e}"), |s| s.to_string());
                live.lock().expect("live set").remove(&pid);
                if let Some(c) = coord.lock().expect("coordinator ref").as_ref() {
                    let _ = c.cast(CoordinatorMsg::ProcessExited(Wire::new((pid, how))));
                }
            });
            pids.push(pid);
        }
        Ok(pids)
    }

    fn kill(&mut self, pid: u32) {
        if self.live.lock().expect("live set").contains(&pid) {
            // SIGKILL also ends a stopped (SIGSTOP) process; the waiter thread reaps it.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    fn live(&self) -> usize {
        self.live.lock().expect("live set").len()
    }
}

/// Waits at most `within` for every live worker to exit.
fn wait_for_exits(live: &Mutex<HashSet<u32>>, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while !live.lock().expect("live set").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to every live worker, SIGKILL after a grace period.
fn stop_workers(live: &Arc<Mutex<HashSet<u32>>>) {
    let pids: Vec<u32> = live.lock().expect("live set").iter().copied().collect();
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGCONT);
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    wait_for_exits(live, Duration::from_secs(15));
    for pid in live.lock().expect("live set").iter() {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// Waits (at most `within`) for the threads relaying the stopped workers' stderr to print
/// their last lines.
fn finish_relays(relays: &Mutex<Vec<std::thread::JoinHandle<()>>>, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    for relay in std::mem::take(&mut *relays.lock().expect("relays")) {
        while !relay.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if relay.is_finished() {
            let _ = relay.join();
        }
    }
}

/// Model FLOPs per token of `job` and the peak of one of its ranks (each on `threads` CPU
/// threads), for model FLOP/s and MFU.
pub(super) fn flops_model(job: &ResolvedJob, peak_tflops: Option<f64>, threads: usize) -> anyhow::Result<tessera_coordinator::FlopsModel> {
    let cfg = tessera_worker::four_m_config(&job.model, &job.origin)?;
    let flops = cfg.train_flops(job.train.num_input_tokens, job.train.num_target_tokens);
    let peak = super::peak::per_rank(job, peak_tflops, threads);
    if peak.is_none() {
        tessera_protocol::say!("note: unknown GPU, no MFU in /metrics; give `--peak-tflops` (one rank's dense peak)");
    }
    Ok(tessera_coordinator::FlopsModel { flops_per_token: flops.per_token, peak_flops_per_rank: peak })
}

/// Runs the job with an in-process coordinator and local worker processes.
pub fn run_embedded(job: &ResolvedJob, o: &EmbeddedOptions) -> anyhow::Result<()> {
    // First of all, so that a signal at any moment stops the job truthfully (before the
    // coordinator runs, the default action would end the process silently with 143).
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted)).context("installing signal handlers")?;
    }
    anyhow::ensure!(o.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(o.min_workers >= 1 && o.min_workers <= o.workers, "--min-workers must be in [1, --workers]");
    anyhow::ensure!(o.max_workers >= o.workers, "--max-workers must be at least --workers");
    std::fs::create_dir_all(&job.output_dir).with_context(|| format!("creating {}", job.output_dir.display()))?;
    let secrets = secrets_dir(&job.output_dir);
    secrets_dir_private(&secrets)?;
    let (cookie, secret, token) = (random_hex(), random_hex(), random_hex());
    write_secret(&secrets.join("cookie"), &cookie)?;
    write_secret(&secrets.join("token"), &token)?;

    let resume = ResumePoint::of(job, o.no_resume)?;
    for r in &resume.rejected {
        tessera_protocol::say!("warning: not resuming from {r}");
    }
    let (committed, start, schedule) = (resume.committed, resume.start, resume.schedule);
    let stop_at = o.max_steps.map_or(job.train.total_steps, |m| (start + m).min(job.train.total_steps));
    let total_threads = if job.train.threads > 0 { job.train.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let threads = (total_threads / o.workers).max(1);
    let spec = JobSpec::new(job);
    let heartbeat_ms = o.heartbeat_timeout.as_millis() as u64;
    let policy = Policy {
        min_workers: o.min_workers,
        max_workers: o.max_workers,
        heartbeat_timeout_ms: heartbeat_ms,
        // Ranks take periodic checkpoints themselves, at exact multiples of the interval.
        checkpoint_every: 0,
        total_steps: stop_at,
        rendezvous_grace_ms: 20_000,
        // This coordinator starts the workers (the first generation waits for them).
        initial_workers: o.workers,
        launches: true,
        stragglers: job.stragglers,
    };

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let live = Arc::new(Mutex::new(HashSet::new()));
    let relays = Arc::new(Mutex::new(Vec::new()));
    let result = rt.block_on(async {
        let node = CoordinatorNode::serve(o.listen, &cookie).await?;
        let coordinator_ref = Arc::new(Mutex::new(None));
        let console = Console::new(&job.name, start, stop_at);
        let launcher = LocalLauncher {
            exe: std::env::current_exe().context("locating the tessera binary")?,
            node: node.addr,
            cookie: cookie.clone(),
            threads,
            spawned: 0,
            live: Arc::clone(&live),
            coordinator: Arc::clone(&coordinator_ref),
            console: console.clone(),
            relays: Arc::clone(&relays),
        };
        // Every series carries the job's name (scrape with `honor_labels: true` to keep it).
        let registry = prometheus::Registry::new_custom(None, Some([("job".to_string(), job.name.clone())].into()))?;
        let metrics = Arc::new(JobMetrics::new(&registry)?);
        metrics.set_flops_model(flops_model(job, o.peak_tflops, threads)?);
        let events = EventLog::open(&job.output_dir.join("events.jsonl"))?;
        let event_feed = events.feed();
        let api_listener = tokio::net::TcpListener::bind(o.api).await.with_context(|| format!("binding the API at {}", o.api))?;
        let api_addr = api_listener.local_addr()?;
        let endpoint = JobEndpoint { node: node.addr, api: Some(api_addr), pid: std::process::id(), secrets: secrets.clone() };
        tessera_tokenizers::atomic::write_atomic(&job.output_dir.join("coordinator.json"), &serde_json::to_vec_pretty(&endpoint)?)?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let args = CoordinatorArgs {
            group: tessera_protocol::messages::coordinator_group(None),
            name: job.name.clone(),
            spec,
            policy,
            checkpoint_dir: job.checkpoint.dir.clone(),
            keep_last: job.checkpoint.keep_last,
            output_dir: job.output_dir.clone(),
            secret,
            heartbeat_ms: (heartbeat_ms / 5).max(50),
            schedule,
            global_batch_size: job.train.global_batch_size as u64,
            events,
            metrics: Arc::clone(&metrics),
            dataset_names: job.datasets.iter().map(|d| d.name.clone()).collect(),
            committed,
            launcher: Some(Box::new(launcher)),
            adopt: None,
        commit_gate: None,
        done: Some(done_tx),
            console,
        };
        tessera_protocol::say!(
            "coordinator {} (API http://{api_addr}/status, /metrics; {} workers × {threads} threads, steps {start}..{stop_at}); watch with `tessera status --job-dir {}`",
            node.addr,
            o.workers,
            job.output_dir.display()
        );
        let (actor, handle) = Actor::spawn(None, Coordinator, args).await.map_err(|e| anyhow::anyhow!("starting the coordinator: {e}"))?;
        node.watch_sessions(actor.clone(), "job")?;
        *coordinator_ref.lock().expect("coordinator ref") = Some(actor.clone());
        let bridge = Arc::new(ActorBridge::new(actor.clone()));
        let (api_stop_tx, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let api = tokio::spawn(tessera_coordinator::api::serve(api_listener, token.clone(), bridge.clone(), metrics, event_feed, async move {
            let _ = api_stop_rx.await;
        }));
        // SIGTERM / SIGINT (also one that came before this point): checkpoint at the next
        // boundary, then stop.
        let signals = tokio::spawn(async move {
            loop {
                if interrupted.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    tessera_protocol::say!("[coordinator] signal: stopping (with a checkpoint if any step was trained)");
                    if let Err(e) = bridge.shutdown().await {
                        tessera_protocol::say!("[coordinator] shutdown request failed: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let outcome = done_rx.await.unwrap_or(JobOutcome::Failed { reason: "the coordinator ended without an outcome".into() });
        // The workers of a finished or stopped job were told to exit: a moment for that while
        // the node still carries the message, before the link drops or any signal reaches them
        // (not when nothing was checkpointed: there is nothing to flush, and workers that never
        // joined were told nothing; SIGTERM ends them at once).
        if matches!(outcome, JobOutcome::Finished { .. } | JobOutcome::Stopped { checkpointed: true, .. }) {
            tokio::task::block_in_place(|| wait_for_exits(&live, Duration::from_secs(5)));
        }
        let _ = handle.await;
        signals.abort();
        let _ = api_stop_tx.send(());
        let _ = api.await;
        node.stop();
        Ok::<_, anyhow::Error>(outcome)
    });
    stop_workers(&live);
    finish_relays(&relays, Duration::from_secs(2));
    let _ = std::fs::remove_file(job.output_dir.join("coordinator.json"));
    match result? {
        JobOutcome::Finished { step } => {
            tessera_protocol::say!("done: {step} steps; checkpoints in {}", job.checkpoint.dir.display());
            Ok(())
        }
        JobOutcome::Stopped { step, checkpointed: true } => {
            tessera_protocol::say!("stopped at step {step} (checkpointed); run the same command to resume");
            Ok(())
        }
        JobOutcome::Stopped { step: 0, checkpointed: false } => {
            tessera_protocol::say!("stopped before any step was trained; nothing to checkpoint");
            Ok(())
        }
        JobOutcome::Stopped { step, checkpointed: false } => {
            tessera_protocol::say!("stopped; the newest checkpoint is at step {step}, where the same command resumes");
            Ok(())
        }
        JobOutcome::Failed { reason } => bail!("job failed: {reason}"),
    }
}

/// The GPU the `i`-th local worker process should see (as `CUDA_VISIBLE_DEVICES`), round robin
/// over this process's visible GPUs, when there are at least two: every worker trains on its
/// own device 0. `None` leaves the environment as it is (no GPU, or only one to share).
fn visible_gpu(i: usize) -> Option<String> {
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    if count < 2 {
        return None;
    }
    let listed: Vec<String> = std::env::var("CUDA_VISIBLE_DEVICES")
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    let gpus = if listed.len() >= count { listed } else { (0..count).map(|g| g.to_string()).collect() };
    Some(gpus[i % gpus.len()].clone())
}
