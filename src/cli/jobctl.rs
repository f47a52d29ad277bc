//! Commands that steer a running job through its coordinator's HTTP API: `tessera status`,
//! `tessera scale`, `tessera checkpoint`, `tessera mixture`, `tessera metrics`. The API address
//! and bearer token come from the job's output directory (`--job-dir`), or are given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use tessera_coordinator::ApiClient;
use tessera_coordinator::api::StatusTable;

/// Where the job's API is: a job of a coordinator service (`JOB` with `--coordinator` or
/// `TESSERA_COORDINATOR`), or the job of an output directory (`--job-dir`).
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// A coordinator service's job (`job-N` or `N`).
    pub(super) job: Option<String>,
    /// The coordinator service's API, `http[s]://HOST:PORT` (default: $TESSERA_COORDINATOR).
    #[arg(long)]
    pub(super) coordinator: Option<String>,
    /// PEM file of the CA certificates that an `https://` service's certificate is checked
    /// against.
    #[arg(long, env = "TESSERA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The job's output directory (holds coordinator.json and the API token).
    #[arg(long, default_value = ".")]
    pub(super) job_dir: PathBuf,
    /// The API address (default: from --job-dir).
    #[arg(long)]
    pub(super) api: Option<SocketAddr>,
    /// File holding the bearer token (default: JOB_DIR/.tessera/token, or for a service's job
    /// $TESSERA_TOKEN_FILE).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Target {
    /// The coordinator service's URL: `--coordinator`, else `$TESSERA_COORDINATOR`.
    pub(super) fn coordinator_url(&self) -> Option<String> {
        self.coordinator.clone().or_else(|| std::env::var("TESSERA_COORDINATOR").ok())
    }

    /// The service's client and the job, when the target is a coordinator service's job (a
    /// JOB and a service URL).
    pub(super) fn service(&self) -> anyhow::Result<Option<(ApiClient, tessera_coordinator::store::JobId)>> {
        let (Some(job), Some(url)) = (&self.job, self.coordinator_url()) else { return Ok(None) };
        let token_file = self
            .token_file
            .clone()
            .or_else(|| std::env::var_os("TESSERA_TOKEN_FILE").map(PathBuf::from))
            .context("give --token-file (or set TESSERA_TOKEN_FILE) with a JOB")?;
        let token = std::fs::read_to_string(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
        let client = super::cluster::active(&url, token.trim(), self.ca_file.as_deref())?;
        Ok(Some((client, super::cluster::parse_job_id(job)?)))
    }

    /// The client of the job's API: a service's job, or the job of `--job-dir`/`--api`.
    pub(super) fn client(&self) -> anyhow::Result<ApiClient> {
        if let Some((service, job)) = self.service()? {
            return Ok(service.for_job(job));
        }
        if let Some(job) = &self.job {
            anyhow::bail!("{job} is a coordinator service's job: give --coordinator URL (or set TESSERA_COORDINATOR)");
        }
        self.embedded_client()
    }

    /// The client of the job that `tessera train` runs (`--job-dir`, or `--api`).
    pub(super) fn embedded_client(&self) -> anyhow::Result<ApiClient> {
        let endpoint = super::orchestrate::read_endpoint(&self.job_dir);
        let api = match (self.api, &endpoint) {
            (Some(a), _) => a,
            // A crashed coordinator leaves its coordinator.json behind: say so rather than
            // printing a bare "Connection refused".
            (None, Ok(e)) if nix::sys::signal::kill(nix::unistd::Pid::from_raw(e.pid as i32), None) == Err(nix::errno::Errno::ESRCH) => {
                anyhow::bail!(
                    "the job in {} is not running: its coordinator (pid {}) is gone and {} is stale; run the job again to resume it",
                    self.job_dir.display(),
                    e.pid,
                    self.job_dir.join("coordinator.json").display()
                )
            }
            (None, Ok(e)) => e.api.context("the coordinator serves no API")?,
            (None, Err(e)) => anyhow::bail!("{e:#}"),
        };
        let token_file = self
            .token_file
            .clone()
            .or_else(|| endpoint.as_ref().ok().map(|e| e.secrets.join("token")))
            .unwrap_or_else(|| super::orchestrate::secrets_dir(&self.job_dir).join("token"));
        let token = std::fs::read_to_string(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
        Ok(ApiClient::new(api, token.trim()))
    }
}

/// Job-control commands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Print the running job's state (generation, step, members, checkpoints) as a table.
    Status {
        /// Where the job is.
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask for a number of workers: more are started (embedded mode) or may join; extra ones
    /// are drained at the next step boundary after a checkpoint.
    Scale {
        /// Where the job is.
        #[command(flatten)]
        target: Target,
        /// Desired worker count.
        #[arg(long)]
        workers: usize,
    },
    /// Checkpoint at the next step boundary.
    Checkpoint {
        /// Where the job is.
        #[command(flatten)]
        target: Target,
    },
    /// Change dataset mixture weights from a step on (`--weight name=w`, repeatable).
    Mixture {
        /// Where the job is.
        #[command(flatten)]
        target: Target,
        /// `dataset=weight`.
        #[arg(long = "weight", required = true)]
        weights: Vec<String>,
        /// First step with the new weights (default: the earliest allowed).
        #[arg(long)]
        at_step: Option<u64>,
    },
    /// Drain one worker (its id, as `status` lists it) at the next checkpointed boundary.
    Drain {
        /// Where the job is.
        #[command(flatten)]
        target: Target,
        /// The worker's id.
        #[arg(long)]
        worker: u64,
    },
    /// Print the Prometheus metrics.
    Metrics {
        /// Where the job is.
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a job-control command.
pub fn run(cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Status { target, json } => {
            if let Some((service, job)) = target.service()? {
                // The service's record: also for a queued or ended job.
                let j = service.job(job)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&j)?);
                } else {
                    let why = j.pending.as_deref().or(j.note.as_deref()).unwrap_or("");
                    println!(
                        "{} '{}': {:?}, step {}/{}, {} workers ({}:{}) {why}",
                        j.id,
                        j.name,
                        j.state,
                        j.step.map_or("-".into(), |s| s.to_string()),
                        j.total_steps,
                        j.holds,
                        j.workers.min,
                        j.workers.max
                    );
                    if let Some(live) = &j.live {
                        print!("{}", live.table());
                    }
                }
                return Ok(());
            }
            let s = target.client()?.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.table());
            }
        }
        JobCommand::Scale { target, workers } => {
            let ack = target.client()?.scale(workers)?;
            println!("{}", serde_json::to_string(&ack)?);
        }
        JobCommand::Checkpoint { target } => {
            let ack = target.client()?.checkpoint()?;
            println!("{}", serde_json::to_string(&ack)?);
        }
        JobCommand::Mixture { target, weights, at_step } => {
            let mut w = BTreeMap::new();
            for kv in &weights {
                let (k, v) = kv.split_once('=').with_context(|| format!("--weight {kv}: expected dataset=weight"))?;
                w.insert(k.to_string(), v.parse::<f64>().with_context(|| format!("--weight {kv}: not a number"))?);
            }
            let ack = target.client()?.set_mixture(w, at_step)?;
            println!("{}", serde_json::to_string(&ack)?);
        }
        JobCommand::Drain { target, worker } => {
            let ack = target.client()?.drain(worker)?;
            println!("{}", serde_json::to_string(&ack)?);
        }
        JobCommand::Metrics { target } => print!("{}", target.client()?.metrics()?),
    }
    Ok(())
}
