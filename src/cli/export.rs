//! `tessera export JOB --out model.safetensors`: consolidated, ml-4m-compatible weights from the
//! newest valid checkpoint of a job (one-process or sharded by FSDP ranks), or from a given
//! checkpoint directory.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use tessera_protocol::ResolvedJob;
use tessera_protocol::checkpoint as store;
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

impl ExportArgs {
    /// Exports the newest valid checkpoint of the job `config` to `out`.
    pub fn new(config: PathBuf, out: PathBuf) -> Self {
        Self { config, out, checkpoint: None }
    }
}

/// Runs `tessera export`.
pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let job = ResolvedJob::from_file(&a.config)?;
    let cfg = four_m_config(&job.model, &job.origin)?;
    let (dir, manifest) = match &a.checkpoint {
        // An explicit directory: exactly that one, verified.
        Some(dir) => (dir.clone(), store::verify(dir)?),
        None => {
            let (found, rejected) = store::latest_valid(&job.checkpoint.dir)?;
            for r in rejected {
                eprintln!("warning: skipping checkpoint: {r}");
            }
            match found {
                Some(c) => c,
                None => bail!("no valid checkpoint in {}", job.checkpoint.dir.display()),
            }
        }
    };
    let step = manifest.state.step;
    let model = checkpoint::consolidate(&cfg, &dir, &manifest)?;
    model.save(&a.out)?;
    println!("exported step {step} of job '{}' to {}", job.name, a.out.display());
    Ok(())
}
