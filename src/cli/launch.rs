//! Local multi-process training: `tessera train CONFIG --workers N` starts N rank processes of
//! this binary (hidden `train-rank` sub-command), gives them a rendezvous (authenticated with a
//! fresh per-job secret passed through the environment), splits the CPU threads between them,
//! and supervises them: the first failure stops every other rank, and every child is reaped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::RngCore;
use tessera_ops::{JobAuth, Rank, RendezvousServer, RingConfig, Secret, TcpRing, join, rendezvous::JoinRequest};
use tessera_protocol::ResolvedJob;
use tessera_worker::four_m_config;
use tessera_worker::fsdp::FsdpTrainer;

/// Environment variable carrying the job secret (hex) to rank processes.
const SECRET_ENV: &str = "TESSERA_JOB_SECRET";
/// How long ranks wait for each other at start-up.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(120);

/// Arguments of the hidden `train-rank` sub-command (one rank of a local multi-process job).
#[derive(Debug, Args)]
pub struct RankArgs {
    /// The job config.
    config: PathBuf,
    /// This rank.
    #[arg(long)]
    rank: u32,
    /// Number of ranks.
    #[arg(long)]
    world: usize,
    /// Rendezvous server address.
    #[arg(long)]
    rendezvous: SocketAddr,
    /// libtorch threads of this rank.
    #[arg(long)]
    threads: i32,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Start from scratch even when a checkpoint exists.
    #[arg(long)]
    no_resume: bool,
    /// Generation number (membership epoch) this rank belongs to.
    #[arg(long, default_value_t = 0)]
    generation: u64,
}

fn auth(job: &ResolvedJob, secret: Secret, generation: u64) -> JobAuth {
    // The generation is part of every handshake: a rank of an older generation is refused.
    JobAuth { job_id: tessera_worker::agent::device::job_id(job), generation, secret }
}

/// The GPU the `i`-th local worker process should see (as `CUDA_VISIBLE_DEVICES`), round robin
/// over this process's visible GPUs, when there are at least two: every worker trains on its
/// own device 0. `None` leaves the environment as it is (no GPU, or only one to share).
pub(crate) fn visible_gpu(i: usize) -> Option<String> {
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

/// How one generation of rank processes ended.
enum Outcome {
    /// Every rank exited cleanly (done, --max-steps, or stopped by a signal).
    Completed,
    /// A rank failed; the others were stopped.
    Failed {
        /// The rank that failed first (preferring one that was killed by a signal).
        rank: usize,
        /// How it ended.
        status: std::process::ExitStatus,
    },
}

/// Runs a job on `workers` local rank processes and supervises them. When a rank fails and at
/// least `min_workers` remain, a new generation of `workers - 1` ranks starts from the last
/// committed checkpoint (sharded checkpoints load at any world size); below that, it fails.
pub fn run_local(
    config: &Path,
    job: &ResolvedJob,
    workers: usize,
    min_workers: usize,
    max_steps: Option<u64>,
    no_resume: bool,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let mut bytes = vec![0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = Secret::new(bytes);
    let mut world = workers;
    let mut generation = 0u64;
    let mut fresh = no_resume;
    loop {
        let t0 = Instant::now();
        match run_generation(config, job, world, generation, &secret, max_steps, fresh, &stop)? {
            Outcome::Completed => return Ok(()),
            Outcome::Failed { rank, status } => {
                if stop.load(Ordering::Relaxed) {
                    bail!("rank {rank} failed ({status}) while stopping");
                }
                if world - 1 < min_workers.max(1) {
                    bail!(
                        "rank {rank} failed ({status}); stopped the other ranks ({} would remain, --min-workers is {min_workers})",
                        world - 1
                    );
                }
                world -= 1;
                generation += 1;
                // The next generation must continue the run, not restart it.
                fresh = false;
                tessera_protocol::say!(
                    "rank {rank} failed ({status}) after {:.1}s: generation {generation} continues with {world} workers from the last checkpoint",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    }
}

/// One generation: rendezvous, `world` rank processes, supervision until they all exit.
#[allow(clippy::too_many_arguments)]
fn run_generation(
    config: &Path,
    job: &ResolvedJob,
    world: usize,
    generation: u64,
    secret: &Secret,
    max_steps: Option<u64>,
    no_resume: bool,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    let server = RendezvousServer::bind("127.0.0.1:0", world, auth(job, secret.clone(), generation))?;
    let addr = server.local_addr()?;
    let serving = server.spawn(RENDEZVOUS_TIMEOUT);
    let total_threads = if job.train.threads > 0 { job.train.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let threads = (total_threads / world).max(1);
    let exe = std::env::current_exe().context("locating the tessera binary")?;
    let mut children: Vec<Child> = Vec::new();
    for rank in 0..world {
        let mut cmd = Command::new(&exe);
        cmd.arg("train-rank")
            .arg(config)
            .args(["--rank", &rank.to_string(), "--world", &world.to_string(), "--rendezvous", &addr.to_string()])
            .args(["--threads", &threads.to_string(), "--generation", &generation.to_string()])
            .env(SECRET_ENV, secret.to_hex())
            .env("OMP_NUM_THREADS", threads.to_string());
        if let Some(gpu) = visible_gpu(rank) {
            cmd.env("CUDA_VISIBLE_DEVICES", gpu);
        }
        if let Some(m) = max_steps {
            cmd.args(["--max-steps", &m.to_string()]);
        }
        if no_resume {
            cmd.arg("--no-resume");
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                stop_all(&mut children);
                return Err(e).context(format!("starting rank {rank}"));
            }
        }
    }
    tessera_protocol::say!("generation {generation}: started {world} ranks ({threads} threads each), rendezvous {addr}");
    let mut forwarded = false;
    let mut done = vec![false; world];
    loop {
        if stop.load(Ordering::Relaxed) && !forwarded {
            // Each rank finishes its step, the ranks agree to stop, and they exit.
            for c in &children {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            }
            forwarded = true;
        }
        let mut failed: Vec<(usize, std::process::ExitStatus)> = Vec::new();
        for (rank, c) in children.iter_mut().enumerate() {
            if done[rank] {
                continue;
            }
            if let Some(status) = c.try_wait().context("waiting for a rank")? {
                done[rank] = true;
                if !status.success() {
                    failed.push((rank, status));
                }
            }
        }
        if !failed.is_empty() {
            use std::os::unix::process::ExitStatusExt;
            // A rank killed by a signal is the cause; the others failed because it vanished.
            let (rank, status) = failed.iter().find(|(_, s)| s.signal().is_some()).copied().unwrap_or(failed[0]);
            stop_all(&mut children);
            let _ = serving.join();
            return Ok(Outcome::Failed { rank, status });
        }
        if done.iter().all(|d| *d) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = serving.join();
    Ok(Outcome::Completed)
}

/// SIGTERM to every live child, SIGKILL after a grace period, and reap them all.
fn stop_all(children: &mut [Child]) {
    for c in children.iter() {
        let pid = Pid::from_raw(c.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        // A stopped (SIGSTOP) rank only acts on the SIGTERM once it runs again.
        let _ = kill(pid, Signal::SIGCONT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// One rank: rendezvous, ring, FSDP training; rank 0 reports progress and writes the log.
pub fn run_rank(a: RankArgs) -> anyhow::Result<()> {
    let job = ResolvedJob::from_file(&a.config)?;
    tch::set_num_threads(a.threads.max(1));
    let hex = std::env::var(SECRET_ENV)
        .with_context(|| format!("{SECRET_ENV} is not set (train-rank is started by `tessera train --workers --bare`)"))?;
    let secret = Secret::from_hex(&hex).with_context(|| format!("{SECRET_ENV} is not hex"))?;
    let auth = auth(&job, secret, a.generation);
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the ring listener")?;
    let req = JoinRequest { rank: Rank(a.rank), world: a.world, listen_addr: listener.local_addr()?, timeout: RENDEZVOUS_TIMEOUT };
    let peers = join(a.rendezvous, &auth, &req)?;
    let mut config = RingConfig::new(auth.clone());
    config.timeout = job.train.collective_timeout;
    let mut ring = TcpRing::connect(listener, Rank(a.rank), &peers, config)?;
    let nccl = tessera_worker::fsdp::flat::device_comm(&mut ring, &job, auth)?;

    let cfg = four_m_config(&job.model, &job.origin)?;
    let source = tessera_worker::data::open_job_data(&job, &cfg.all_domains())?;
    let lens = source.dataset_lens();
    let total = job.train.total_steps;
    let name = job.name.clone();
    let log_path = job.output_dir.join("train_log.jsonl");
    if a.rank == 0 {
        std::fs::create_dir_all(&job.output_dir).with_context(|| format!("creating {}", job.output_dir.display()))?;
    }
    let (every, auto_resume) = (job.checkpoint.every_steps, job.checkpoint.auto_resume && !a.no_resume);
    let held_out = if job.validates() { tessera_worker::eval::ValidationSet::prepare(&job, &cfg)? } else { None };
    let out_dir = job.output_dir.clone();
    let mut trainer = FsdpTrainer::new(job, &cfg, source, lens, ring)?.with_device_comm(nccl)?;
    if auto_resume
        && let Some(step) = trainer.resume()?
        && a.rank == 0
    {
        tessera_protocol::say!("resumed at step {step} ({} ranks)", a.world);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let mut log = if a.rank == 0 { Some(tessera_protocol::JsonLines::open(&log_path)?) } else { None };
    let mut ran = 0;
    while trainer.state().step < total && a.max_steps.is_none_or(|m| ran < m) {
        let r = trainer.step()?;
        ran += 1;
        if let Some(log) = log.as_mut() {
            let mut line = serde_json::to_value(&r)?;
            line["world_size"] = a.world.into();
            log.append(&line, false)?;
            tessera_protocol::say!(
                "{name} step {}/{total}  loss {:.4}  lr {:.2e}  |g| {:.3}  {:.2}s/step ({} ranks)",
                r.step + 1,
                r.loss,
                r.lr,
                r.grad_norm,
                r.step_s,
                a.world
            );
        }
        let step = trainer.state().step;
        if let Some(set) = &held_out
            && (set.due(step) || step >= total)
        {
            let report = trainer.validation_report(set, a.generation)?;
            if a.rank == 0 {
                report.table().iter().for_each(|l| tessera_protocol::say!("{l}"));
                report.append_to_log(&out_dir)?;
            }
        }
        if every > 0 && step % every == 0 && step < total {
            let dir = trainer.save_checkpoint()?;
            if a.rank == 0 {
                tessera_protocol::say!("checkpoint {}", dir.display());
            }
        }
        if trainer.agree_to_stop(stop.load(Ordering::Relaxed))? {
            let dir = trainer.save_checkpoint()?;
            if a.rank == 0 {
                tessera_protocol::say!("interrupted: checkpoint {} at step {step}", dir.display());
            }
            return Ok(());
        }
    }
    // The end of the run, or of this invocation (--max-steps): keep the progress.
    let dir = trainer.save_checkpoint()?;
    if a.rank == 0 {
        tessera_protocol::say!("checkpoint {} at step {}", dir.display(), trainer.state().step);
    }
    tessera_protocol::say!(
        "rank {}: peak RSS {:.1} MiB, sharded master weights + AdamW state {:.1} MiB",
        a.rank,
        peak_rss_kib() as f64 / 1024.0,
        (trainer.local_state_elements() * 4) as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// This process's peak resident set size (VmHWM) in KiB, 0 when unknown.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
