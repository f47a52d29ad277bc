//! `tessera export JOB --out model.safetensors [--step S]`: consolidated, ml-4m-compatible
//! weights from a checkpoint of a job (one-process or sharded by FSDP ranks). JOB is a job
//! config (its checkpoint directory is read directly) or the id of a coordinator service's job
//! (`job-3`: the service names its spec and committed checkpoints, which lie on the shared
//! filesystem); the checkpoint is the newest valid one, the one of step S, or a given directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use tessera_protocol::ResolvedJob;
use tessera_protocol::checkpoint::{self as store, Found};
use tessera_worker::{checkpoint, four_m_config};

/// Arguments of `tessera export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The job config, or the job id (`job-3`) of a coordinator service's job.
    job: String,
    /// Output safetensors file (ml-4m state-dict names, FM config in the metadata).
    #[arg(long)]
    out: PathBuf,
    /// The checkpoint of this step (default: the newest valid one).
    #[arg(long, conflicts_with = "checkpoint")]
    step: Option<u64>,
    /// A checkpoint directory (default: the job's newest valid one).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Print JSON (`{"job", "step", "checkpoint", "out"}`) instead of a sentence.
    #[arg(long)]
    json: bool,
    /// The service, for a job id.
    #[command(flatten)]
    service: super::cluster::Service,
}

impl ExportArgs {
    /// Exports the newest valid checkpoint of the job `config` to `out`.
    pub fn new(config: PathBuf, out: PathBuf) -> Self {
        let service = super::cluster::Service::none();
        Self { job: config.display().to_string(), out, step: None, checkpoint: None, json: false, service }
    }
}

/// The job and the checkpoint directory it names.
struct Chosen {
    job: ResolvedJob,
    checkpoint: Found,
}

/// Runs `tessera export`.
pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let chosen = if Path::new(&a.job).is_file() {
        from_config(&a)?
    } else if let Some(id) = tessera_coordinator::store::JobId::parse(&a.job) {
        from_service(&a, id)?
    } else {
        bail!("{}: neither a job config file nor a job id (job-N)", a.job)
    };
    let Chosen { job, checkpoint: (dir, manifest) } = chosen;
    let cfg = four_m_config(&job.model, &job.origin)?;
    let step = manifest.state.step;
    let model = checkpoint::consolidate(&cfg, &dir, &manifest)?;
    model.save(&a.out)?;
    if a.json {
        let said = serde_json::json!({"job": job.name, "step": step, "checkpoint": dir, "out": a.out});
        println!("{said}");
    } else {
        println!("exported step {step} of job '{}' to {}", job.name, a.out.display());
    }
    Ok(())
}

/// A job config: the checkpoint given, the one of `--step`, or the newest valid one.
fn from_config(a: &ExportArgs) -> anyhow::Result<Chosen> {
    let job = ResolvedJob::from_file(Path::new(&a.job))?;
    let checkpoint = match (&a.checkpoint, a.step) {
        // An explicit directory: exactly that one, verified.
        (Some(dir), _) => (dir.clone(), store::verify(dir)?),
        (None, Some(step)) => {
            let dir = job.checkpoint.dir.join(store::dir_name(step));
            if !dir.is_dir() {
                let have: Vec<String> = store::list(&job.checkpoint.dir)?.iter().rev().map(|(s, _)| s.to_string()).collect();
                bail!("no checkpoint of step {step} in {} (steps there: {})", job.checkpoint.dir.display(), none_if_empty(&have));
            }
            verified_at(&dir, step)?
        }
        (None, None) => {
            let (found, rejected) = store::latest_valid(&job.checkpoint.dir)?;
            for r in rejected {
                eprintln!("warning: skipping checkpoint: {r}");
            }
            found.with_context(|| format!("no valid checkpoint in {}", job.checkpoint.dir.display()))?
        }
    };
    Ok(Chosen { job, checkpoint })
}

/// A service's job: its committed checkpoint of `--step` (or its newest that verifies), as
/// the store recorded it; a manifest that differs from the record is named.
fn from_service(a: &ExportArgs, id: tessera_coordinator::store::JobId) -> anyhow::Result<Chosen> {
    let client = a.service.client()?;
    let answer = client.job_checkpoints(id)?;
    let job = answer.spec.open().with_context(|| format!("{id}'s spec from the service"))?;
    if let Some(dir) = &a.checkpoint {
        return Ok(Chosen { job, checkpoint: (dir.clone(), store::verify(dir)?) });
    }
    let mut records = answer.checkpoints;
    records.sort_by_key(|c| std::cmp::Reverse(c.step));
    let candidates: Vec<_> = match a.step {
        Some(step) => records.iter().filter(|c| c.step == step).collect(),
        None => records.iter().collect(),
    };
    if candidates.is_empty() {
        let have: Vec<String> = records.iter().rev().map(|c| c.step.to_string()).collect();
        let which = a.step.map_or("no checkpoint".into(), |s| format!("no checkpoint of step {s}"));
        bail!("{id} ('{}') has {which} committed (steps committed: {})", answer.name, none_if_empty(&have));
    }
    let mut failures = Vec::new();
    for c in candidates {
        match verified_at(&c.dir, c.step) {
            Ok(found) => {
                if manifest_sha256(&c.dir).is_ok_and(|sha| sha != c.manifest_sha256) {
                    eprintln!(
                        "warning: {}: the manifest differs from the one committed for step {} (written again after a restore)",
                        c.dir.display(),
                        c.step
                    );
                }
                return Ok(Chosen { job, checkpoint: found });
            }
            // Older ones may have been pruned (`keep_last`) or be unreadable from this host.
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    bail!("{id}: no committed checkpoint verifies on this host: {}", failures.join("; "))
}

/// `dir` verified, holding step `step`.
fn verified_at(dir: &Path, step: u64) -> anyhow::Result<Found> {
    let manifest = store::verify(dir)?;
    if manifest.state.step != step {
        bail!("{}: its manifest says step {}, not {step}", dir.display(), manifest.state.step);
    }
    Ok((dir.to_path_buf(), manifest))
}

/// SHA-256 (hex) of `dir`'s manifest file, as the commit gate records it.
fn manifest_sha256(dir: &Path) -> anyhow::Result<String> {
    Ok(store::digest(&dir.join(store::MANIFEST))?.1)
}

fn none_if_empty(steps: &[String]) -> String {
    if steps.is_empty() { "none".into() } else { steps.join(", ") }
}
