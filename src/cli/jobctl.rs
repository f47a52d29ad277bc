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

/// Where the job's API is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The job's output directory (holds coordinator.json and the API token).
    #[arg(long, default_value = ".")]
    pub(super) job_dir: PathBuf,
    /// The API address (default: from --job-dir).
    #[arg(long)]
    pub(super) api: Option<SocketAddr>,
    /// File holding the bearer token (default: JOB_DIR/.tessera/token).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl Target {
    pub(super) fn client(&self) -> anyhow::Result<ApiClient> {
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
