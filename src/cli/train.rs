//! `tessera train CONFIG`: one-process training of a TOML job, with auto-resume, a progress
//! bar, a JSON-lines log, periodic checkpoints and a checkpoint on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tessera_protocol::ResolvedJob;
use tessera_worker::driver::local::{LocalBoundary, Progress};
use tessera_worker::driver::{Ended, HeldOut, Plan, Validation, drive};
use tessera_worker::{Trainer, four_m_config};

use super::data_source;

/// Arguments of `tessera train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The job config (TOML).
    config: PathBuf,
    /// Stop after this many steps in this invocation (the job's length is unchanged; a later
    /// run resumes).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Start from scratch even when a checkpoint exists.
    #[arg(long)]
    no_resume: bool,
    /// Train on this many local worker processes under an in-process coordinator (FSDP over a
    /// TCP ring on loopback; membership, recovery, resizing and metrics by the coordinator).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// With --workers: keep training after a worker fails as long as this many remain (a new
    /// generation resumes from the last committed checkpoint). Default: 1.
    #[arg(long, default_value_t = 1)]
    min_workers: usize,
    /// With --workers: the most workers the job may grow to (`tessera scale`, joining
    /// workers). Default: --workers.
    #[arg(long)]
    max_workers: Option<usize>,
    /// Run through the orchestrator even with one worker.
    #[arg(long)]
    fsdp: bool,
    /// A worker silent for this long (ms) is declared dead.
    #[arg(long, default_value_t = 5000)]
    heartbeat_timeout_ms: u64,
    /// Address the coordinator's node listens on (workers join here).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Address of the HTTP API (status, scale, checkpoint, /metrics).
    #[arg(long, default_value = "127.0.0.1:0")]
    api: std::net::SocketAddr,
    /// Peak TFLOP/s of one rank's device, for MFU in /metrics (default: a known GPU's dense
    /// peak on CUDA, a measured f32 matmul peak on CPU).
    #[arg(long)]
    peak_tflops: Option<f64>,
}

impl TrainArgs {
    /// Arguments that train `config` to the end in one process, resuming when possible.
    pub fn new(config: PathBuf) -> Self {
        Self {
            config,
            max_steps: None,
            no_resume: false,
            workers: 1,
            min_workers: 1,
            max_workers: None,
            fsdp: false,
            heartbeat_timeout_ms: 5000,
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            api: "127.0.0.1:0".parse().expect("a socket address"),
            peak_tflops: None,
        }
    }

    /// The same, on `n` local worker processes under the embedded coordinator (one process
    /// when `n` is 1).
    pub fn with_workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
}

/// Runs `tessera train`.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let job = ResolvedJob::from_file(&a.config)?;
    anyhow::ensure!(a.workers >= 1, "--workers must be at least 1");
    // Held until this run ends, whatever the launch mode: one run per job directory.
    std::fs::create_dir_all(&job.output_dir).with_context(|| format!("creating {}", job.output_dir.display()))?;
    let _lock = super::joblock::JobDirLock::acquire(&job.output_dir)?;
    // Once, here, whatever the launch mode: workers and ranks do not repeat them.
    for n in job.notes() {
        tessera_protocol::say!("note: {n}");
    }
    if a.workers > 1 || a.fsdp {
        let o = super::orchestrate::EmbeddedOptions {
            workers: a.workers,
            min_workers: a.min_workers,
            max_workers: a.max_workers.unwrap_or(a.workers),
            max_steps: a.max_steps,
            no_resume: a.no_resume,
            heartbeat_timeout: std::time::Duration::from_millis(a.heartbeat_timeout_ms),
            listen: a.listen,
            api: a.api,
            peak_tflops: a.peak_tflops,
        };
        return super::orchestrate::run_embedded(&job, &o);
    }
    if job.train.threads > 0 {
        tch::set_num_threads(job.train.threads as i32);
    }
    let cfg = four_m_config(&job.model, &job.origin)?;
    std::fs::create_dir_all(&job.output_dir).with_context(|| format!("creating {}", job.output_dir.display()))?;
    let resolved_path = job.output_dir.join("resolved_job.json");
    std::fs::write(&resolved_path, serde_json::to_vec_pretty(&job)?).with_context(|| format!("writing {}", resolved_path.display()))?;

    let pipeline = data_source::open(&job, &cfg)?;
    let lens = pipeline.dataset_lens();
    // Load the next micro-batches while the current step computes.
    let ledger = tessera_protocol::SampleLedger::new(job.seed, job.schedule.clone(), lens.clone())?;
    let source = tessera_worker::Prefetcher::new(pipeline, ledger, job.train.micro_batch_size, 2);
    let auto_resume = job.checkpoint.auto_resume && !a.no_resume;
    let mut trainer = Trainer::new(job.clone(), &cfg, source, lens)?;
    if auto_resume {
        let (from, rejected) = trainer.resume()?;
        for r in rejected {
            tessera_protocol::say!("warning: skipping checkpoint: {r}");
        }
        if let Some(dir) = from {
            tessera_protocol::say!("resumed from {} at step {}", dir.display(), trainer.state().step);
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let total = job.train.total_steps;
    let start = trainer.state().step;
    let plan = Plan {
        generation: tessera_protocol::Generation(0),
        stop_at: a.max_steps.map_or(total, |m| start.saturating_add(m).min(total)),
        total,
        checkpoint_every: job.checkpoint.every_steps,
        validate_every: if job.validates() { job.eval.every_steps } else { 0 },
        checkpoint_at_end: true,
    };
    let mut bar = Bar::new(&job, start);
    let mut held_out = HeldOut::default();
    let validation = Validation { job: &job, cfg: &cfg, held_out: &mut held_out, who: "" };
    let mut boundary = LocalBoundary::new(&job, stop, &mut bar)?;
    let ended = drive(&mut trainer, &mut boundary, &plan, validation)?;
    let saved = boundary.last_checkpoint().map(|d| d.display().to_string()).unwrap_or_default();
    let step = trainer.state().step;
    let msg = match ended {
        Ended::Stopped => format!("interrupted: checkpoint {saved} at step {step}"),
        // Stopped by --max-steps: the checkpoint keeps the progress so a later run resumes here.
        Ended::Reached if step < total => format!("stopped after {} steps: checkpoint {saved}", step - start),
        Ended::Reached => format!("done: {step} steps, log {}", job.output_dir.join("train_log.jsonl").display()),
    };
    bar.finish(msg);
    Ok(())
}

/// The progress bar of one-process training (plain lines when stderr is not a terminal).
struct Bar {
    bar: ProgressBar,
    plain: bool,
    name: String,
    total: u64,
    log_every: u64,
}

impl Bar {
    fn new(job: &ResolvedJob, start: u64) -> Self {
        let total = job.train.total_steps;
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(job.name.clone());
        bar.set_position(start);
        let plain = bar.is_hidden();
        Self { bar, plain, name: job.name.clone(), total, log_every: job.train.log_every }
    }

    /// Ends the progress bar with `msg`, printing it when the bar is hidden (not a terminal).
    fn finish(&self, msg: String) {
        if self.plain {
            tessera_protocol::say!("{msg}");
        }
        self.bar.abandon_with_message(msg);
    }
}

impl Progress for Bar {
    fn step(&mut self, r: &tessera_worker::StepReport, state: &tessera_protocol::checkpoint::TrainState, summary: &str) {
        if self.plain && r.step.is_multiple_of(self.log_every) {
            tessera_protocol::say!("{} step {}/{}  {summary}", self.name, r.step + 1, self.total);
        }
        self.bar.set_message(summary.to_string());
        self.bar.set_position(state.step);
    }

    fn line(&mut self, line: &str) {
        if self.plain {
            tessera_protocol::say!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}
