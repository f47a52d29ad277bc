//! `tessera worker`: a worker process that joins a running job's coordinator (started by the
//! embedded launcher, or by hand to add capacity: `tessera worker --job-dir OUTPUT`).

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
    #[arg(long)]
    join: Option<SocketAddr>,
    /// The job's output directory (holds coordinator.json and the cookie).
    #[arg(long)]
    job_dir: Option<PathBuf>,
    /// File holding the job cookie (default: $TESSERA_COOKIE, else JOB_DIR/.tessera/cookie).
    #[arg(long)]
    cookie_file: Option<PathBuf>,
    /// libtorch threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// On SIGTERM/SIGINT, seconds to wait for the coordinator to drain this worker at a
    /// checkpointed step boundary before leaving anyway (a second signal exits at once).
    #[arg(long, default_value_t = 120)]
    drain_timeout_s: u64,
}

/// Runs `tessera worker`.
pub fn run_worker(a: WorkerArgs) -> anyhow::Result<()> {
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
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Registered first, so that it sees the flag as the earlier signal left it: a second
        // signal exits at once (status 130) instead of waiting for the drain.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&shutdown)).context("installing signal handlers")?;
        signal_hook::flag::register(sig, Arc::clone(&shutdown)).context("installing signal handlers")?;
    }
    let opts = AgentOptions {
        coordinator,
        cookie: cookie.trim().to_string(),
        threads: a.threads,
        connect_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(a.drain_timeout_s),
    };
    run(&opts, shutdown)?;
    Ok(())
}
