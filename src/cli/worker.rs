//! `tessera worker`: a worker process that joins a running job's coordinator (started by the
//! embedded launcher, or by hand to add capacity: `tessera worker --job-dir OUTPUT`), or, with
//! `--coordinator URL`, offers itself to a coordinator service's pool and trains whatever job
//! it is given, one after another ([`super::pool_worker`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tessera_worker::agent::{AgentOptions, run};

/// Arguments of `tessera worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's node address (default: read from --job-dir).
    #[arg(long, conflicts_with = "coordinator")]
    join: Option<SocketAddr>,
    /// A coordinator service's API (`http://HOST:PORT` or `https://HOST:PORT`): join its worker
    /// pool (default, when neither --join nor --job-dir is given: $TESSERA_COORDINATOR).
    #[arg(long)]
    pub(super) coordinator: Option<String>,
    /// File holding the service's bearer token (pool mode; default: $TESSERA_TOKEN_FILE).
    #[arg(long)]
    pub(super) token_file: Option<PathBuf>,
    /// PEM file of the CA certificates that an `https://` service's certificate is checked
    /// against (pool mode).
    #[arg(long, env = "TESSERA_CA_FILE")]
    pub(super) ca_file: Option<PathBuf>,
    /// This worker's name in the pool (default: HOST-PID).
    #[arg(long)]
    pub(super) name: Option<String>,
    /// Labels offered to the pool, `k=v,k=v`.
    #[arg(long, value_delimiter = ',')]
    pub(super) labels: Vec<String>,
    /// The address this host is reached at (default: the one it reaches the service from).
    #[arg(long)]
    pub(super) advertise: Option<std::net::IpAddr>,
    /// The job's output directory (holds coordinator.json and the cookie).
    #[arg(long)]
    job_dir: Option<PathBuf>,
    /// File holding the job cookie (default: $TESSERA_COOKIE, else JOB_DIR/.tessera/cookie).
    #[arg(long)]
    cookie_file: Option<PathBuf>,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    pub(super) threads: usize,
    /// On SIGTERM/SIGINT, seconds to wait for the coordinator to drain this worker at a
    /// checkpointed step boundary before leaving anyway (a second signal exits at once).
    #[arg(long, default_value_t = 120)]
    pub(super) drain_timeout_s: u64,
    /// Pool mode: when the job's coordinator dies, seconds to keep the job's state (paused at
    /// a step boundary) for a restarted or standby coordinator to adopt; then it is dropped
    /// and the worker returns to the pool. 0: leave the job at once (its next run restores
    /// the newest checkpoint).
    #[arg(long, default_value_t = 120)]
    pub(super) orphan_grace_s: u64,
    /// Pool mode: register in etcd under a lease, beside the reports.
    #[command(flatten)]
    pub(super) registry: super::pool_registry::RegistryArgs,
}

/// Runs `tessera worker`.
pub fn run_worker(mut a: WorkerArgs) -> anyhow::Result<()> {
    if a.coordinator.is_none() && a.join.is_none() && a.job_dir.is_none() {
        a.coordinator = std::env::var("TESSERA_COORDINATOR").ok();
    }
    if a.coordinator.is_some() {
        return super::pool_worker::run(a);
    }
    anyhow::ensure!(a.registry.etcd.etcd.is_empty(), "--etcd registers a pool worker: give it with --coordinator URL");
    let endpoint = a.job_dir.as_deref().map(super::orchestrate::read_endpoint).transpose()?;
    let coordinator = a.join.or(endpoint.as_ref().map(|e| e.node)).context("give --join ADDR or --job-dir DIR")?;
    let cookie = if let Some(f) = &a.cookie_file {
        std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
    } else if let Ok(c) = std::env::var("TESSERA_COOKIE") {
        c
    } else if let Some(e) = &endpoint {
        let f = e.secrets.join("cookie");
        std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
    } else {
        anyhow::bail!("no cookie: give --cookie-file, set TESSERA_COOKIE, or give --job-dir");
    };
    tch::set_num_threads(a.threads.max(1) as i32);
    let shutdown = shutdown_flag()?;
    let opts = AgentOptions {
        coordinator,
        cookie: cookie.trim().to_string(),
        group: tessera_protocol::messages::coordinator_group(None),
        threads: a.threads,
        connect_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(a.drain_timeout_s),
        reattach: None,
        log_name: None,
    };
    run(&opts, shutdown)?;
    Ok(())
}

/// The flag SIGTERM/SIGINT set: the worker drains at the next checkpointed boundary; a second
/// signal exits at once (status 130).
pub(super) fn shutdown_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Registered first, so that it sees the flag as the earlier signal left it.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&shutdown)).context("installing signal handlers")?;
        signal_hook::flag::register(sig, Arc::clone(&shutdown)).context("installing signal handlers")?;
    }
    Ok(shutdown)
}
