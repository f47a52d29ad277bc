//! `tessera export JOB --out model.safetensors`: consolidated, ml-4m-compatible weights from the
//! newest valid checkpoint of a job (one-process or sharded by FSDP ranks), or from a given
//! checkpoint directory.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use tessera_coordinator::ResolvedJob;
use tessera_worker::fsdp::checkpoint::{self as sharded, AnyCheckpoint};
use tessera_worker::{checkpoint, four_m_config};

/// Arguments of `tessera export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The job config.
    config: PathBuf,
    /// Output safetensors file (ml-4m state-dict names, FM config in the metadata).
    #[arg(long)]
    out: PathBuf,
    /// A checkpoint directory (default: the job's newest valid one).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

/// Runs `tessera export`.
pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let job = ResolvedJob::from_file(&a.config)?;
    let cfg = four_m_config(&job.model, &job.origin)?;
    let found = match &a.checkpoint {
        Some(dir) => {
            let root = dir.parent().context("checkpoint directory has no parent")?;
            let (all, _) = sharded::latest_any(root)?;
            // latest_any picks the newest; for an explicit directory verify exactly that one.
            match all {
                Some(c) if c.dir() == dir.as_path() => c,
                _ => match sharded::verify(dir) {
                    Ok(m) => AnyCheckpoint::Sharded((dir.clone(), m)),
                    Err(_) => AnyCheckpoint::Single(checkpoint::ValidCheckpoint { dir: dir.clone(), manifest: checkpoint::verify(dir)? }),
                },
            }
        }
        None => {
            let (found, rejected) = sharded::latest_any(&job.checkpoint.dir)?;
            for r in rejected {
                eprintln!("warning: skipping checkpoint: {r}");
            }
            match found {
                Some(c) => c,
                None => bail!("no valid checkpoint in {}", job.checkpoint.dir.display()),
            }
        }
    };
    let step = found.state().step;
    let model = sharded::consolidate(&cfg, &found)?;
    model.save(&a.out)?;
    println!("exported step {step} of job '{}' to {}", job.name, a.out.display());
    Ok(())
}
