//! Cluster mode's commands: `tessera coordinator` (the service) and the clients `submit`,
//! `jobs`, `cancel` and `wait`. The clients find the service through `--coordinator URL` or
//! `TESSERA_COORDINATOR`, its bearer token through `--token-file` or `TESSERA_TOKEN_FILE`, and
//! for an `https://` URL the CA to trust through `--ca-file` or `TESSERA_CA_FILE`; they connect
//! to it directly (no `HTTP_PROXY`: cluster traffic stays on the cluster).

mod etcd_args;
mod service;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tessera_coordinator::ApiClient;
use tessera_coordinator::cluster::{ClusterJob, SubmitRequest};
use tessera_coordinator::store::{JobId, JobState, WorkerRange};

pub use etcd_args::EtcdArgs;
pub use service::{CoordinatorArgs, run_coordinator};

/// How a client reaches the coordinator service (read when the command runs, so that a
/// missing one is named with both ways to give it).
#[derive(Debug, Clone, Args)]
pub struct Service {
    /// The service's API, `http://HOST:PORT` or `https://HOST:PORT`, or several (the active
    /// one and standbys), comma-separated (default: $TESSERA_COORDINATOR).
    #[arg(long)]
    coordinator: Option<String>,
    /// File holding the service's bearer token (default: $TESSERA_TOKEN_FILE).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM file of the CA certificates that an `https://` service's certificate is checked
    /// against (needed for https; no system roots are used).
    #[arg(long, env = "TESSERA_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl Service {
    /// No service given on the command line (the environment may still name one).
    pub fn none() -> Self {
        Self { coordinator: None, token_file: None, ca_file: None }
    }

    /// A client of the service: of the first coordinator listed that answers as the active one.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        let url = self.coordinator.clone().or_else(|| std::env::var("TESSERA_COORDINATOR").ok());
        let url = url.context("give --coordinator URL or set TESSERA_COORDINATOR")?;
        let token_file = self.token_file.clone().or_else(|| std::env::var_os("TESSERA_TOKEN_FILE").map(PathBuf::from));
        let token_file = token_file.context("give --token-file F or set TESSERA_TOKEN_FILE")?;
        let token = std::fs::read_to_string(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
        active(&url, token.trim(), self.ca_file.as_deref())
    }
}

/// The client of the first of `urls` (comma-separated) that answers as the active coordinator
/// (a standby answers 503, a dead one not at all); with one URL, that one, unprobed. An
/// `https://` URL trusts the CAs in `ca_file`.
pub fn active(urls: &str, token: &str, ca_file: Option<&Path>) -> anyhow::Result<ApiClient> {
    let list: Vec<&str> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    if let [one] = list.as_slice() {
        return Ok(ApiClient::for_url(one, token, ca_file)?);
    }
    let mut failures = Vec::new();
    for url in &list {
        let client = ApiClient::for_url(url, token, ca_file)?;
        match client.clone().with_timeout(Duration::from_secs(5)).workers() {
            Ok(_) => return Ok(client),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    bail!("no coordinator answers as the active one: {}", failures.join("; "))
}

/// A job id as users type it: `job-3` or `3`.
pub fn parse_job_id(text: &str) -> anyhow::Result<JobId> {
    JobId::parse(text).with_context(|| format!("'{text}' is not a job id (job-N or N)"))
}

/// `MIN:MAX` (or `N` for N:N).
fn parse_range(text: &str) -> anyhow::Result<WorkerRange> {
    let (min, max) = text.split_once(':').unwrap_or((text, text));
    let parse = |s: &str| s.trim().parse::<u32>().with_context(|| format!("--workers {text}: expected MIN:MAX"));
    let range = WorkerRange { min: parse(min)?, max: parse(max)? };
    anyhow::ensure!(range.min >= 1 && range.max >= range.min, "--workers {text}: need 1 <= MIN <= MAX");
    Ok(range)
}

/// Arguments of `tessera submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job config (TOML); its relative paths are relative to its directory, which every
    /// host must see at the same path.
    config: PathBuf,
    /// Display name (default: the config's `job.name`).
    #[arg(long)]
    name: Option<String>,
    /// Worker counts, `MIN:MAX` (or `N`): the job starts when MIN are free and grows to MAX.
    #[arg(long, default_value = "1")]
    workers: String,
    /// Queue priority (higher runs first).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// A key that makes a retried submit return the job it already made.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Print JSON (`{"id": ..., "created": ...}`) instead of the bare id.
    #[arg(long)]
    json: bool,
    /// The service.
    #[command(flatten)]
    service: Service,
}

/// Runs `tessera submit`.
pub fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let toml = std::fs::read_to_string(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    let path = std::path::absolute(&a.config).with_context(|| format!("locating {}", a.config.display()))?;
    let req = SubmitRequest {
        toml,
        origin: path.display().to_string(),
        base_dir: path.parent().map(PathBuf::from).unwrap_or_default(),
        name: a.name,
        workers: Some(parse_range(&a.workers)?),
        priority: a.priority,
        idempotency_key: a.idempotency_key,
    };
    let reply = a.service.client()?.submit(&req).context("submitting")?;
    if a.json {
        println!("{}", serde_json::to_string(&reply)?);
    } else {
        println!("{}", reply.id);
    }
    Ok(())
}

/// Arguments of `tessera jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The service.
    #[command(flatten)]
    service: Service,
}

/// One line of `tessera jobs`.
fn job_line(j: &ClusterJob) -> String {
    let step = j.step.map_or("-".into(), |s| s.to_string());
    let why = j.pending.as_deref().or(j.note.as_deref()).unwrap_or("");
    format!(
        "{:<8} {:<20} {:<10} {:>3}/{}:{:<3} {:>7}/{:<7} {:>4}  {why}",
        j.id.to_string(),
        j.name,
        format!("{:?}", j.state).to_lowercase(),
        j.holds,
        j.workers.min,
        j.workers.max,
        step,
        j.total_steps,
        j.priority
    )
}

/// Runs `tessera jobs`.
pub fn jobs(a: JobsArgs) -> anyhow::Result<()> {
    let jobs = a.service.client()?.jobs()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    println!("{:<8} {:<20} {:<10} {:>9} {:>15} {:>4}  WHY", "JOB", "NAME", "STATE", "WORKERS", "STEP", "PRIO");
    for j in &jobs {
        println!("{}", job_line(j));
    }
    Ok(())
}

/// Arguments of `tessera cancel` and `tessera wait`.
#[derive(Debug, Args)]
pub struct OneJobArgs {
    /// The job (`job-N` or `N`).
    job: String,
    /// Give up after this many seconds (`wait` only; default: no limit).
    #[arg(long)]
    timeout_s: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The service.
    #[command(flatten)]
    service: Service,
}

/// Runs `tessera cancel`.
pub fn cancel(a: OneJobArgs) -> anyhow::Result<()> {
    let job = a.service.client()?.cancel(parse_job_id(&a.job)?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        println!("{}", job_line(&job));
    }
    Ok(())
}

/// Runs `tessera wait`: returns when the job has ended; an error unless it finished.
pub fn wait(a: OneJobArgs) -> anyhow::Result<()> {
    let (mut client, id) = (a.service.client()?, parse_job_id(&a.job)?);
    let deadline = a.timeout_s.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        // The service may be restarting (failover): keep asking until the deadline.
        match client.job(id) {
            Ok(job) if matches!(job.state, JobState::Finished | JobState::Failed | JobState::Cancelled) => {
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&job)?);
                } else {
                    println!("{}", job_line(&job));
                }
                return match job.state {
                    JobState::Finished => Ok(()),
                    other => bail!("{id} ended {other:?}: {}", job.note.unwrap_or_default()),
                };
            }
            Ok(_) => {}
            Err(e @ tessera_coordinator::CoordinatorError::Http { status: 404, .. }) => return Err(e.into()),
            Err(e) => {
                // The active coordinator may have changed (failover to a standby).
                tessera_protocol::say!("[wait] {e} (asking again)");
                if let Ok(c) = a.service.client() {
                    client = c;
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            bail!("{id} has not ended within {} s", a.timeout_s.unwrap_or(0));
        }
        // Each ask reads the job store (an etcd read): once a second is prompt enough.
        std::thread::sleep(Duration::from_secs(1));
    }
}
