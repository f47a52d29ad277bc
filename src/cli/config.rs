//! `tessera config check|import-ml4m`: validate a job config, or convert ml-4m's YAML configs.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use tessera_protocol::ResolvedJob;
use tessera_protocol::job::import_ml4m;

use super::output::emit;

/// Job-config tools.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a TOML job config and print the resolved job (steps, LR schedule, mixtures).
    Check(CheckArgs),
    /// Convert an ml-4m run config (+ the data and alphas YAML it names) into a TOML job.
    ImportMl4m(ImportArgs),
}

/// Arguments of `config check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The job config.
    config: PathBuf,
    /// Print the resolved job as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `config import-ml4m`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// ml-4m run config, e.g. cfgs/default/4m/models/main/4m-b_mod21_500b.yaml.
    run_config: PathBuf,
    /// Root of an ml-4m checkout, to resolve the `cfgs/...` paths inside it. Default: look
    /// beside the run config and in its sibling `data/` and `alphas/` folders.
    #[arg(long)]
    ml4m_root: Option<PathBuf>,
    /// GPUs the ml-4m run used: its per-GPU `batch_size` times this is the global batch.
    #[arg(long, default_value_t = 1)]
    world_size: usize,
    /// Write the TOML here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs a `config` sub-command.
pub fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check(a) => {
            let job = ResolvedJob::from_file(&a.config)?;
            for n in job.notes() {
                eprintln!("note: {n}");
            }
            emit(a.json, &job, || {
                let t = &job.train;
                let mut s = format!(
                    "{}: job '{}', seed {}\n  model: {} {} ({} inputs, {} outputs)\n  steps: {} (warm-up {}), global batch {} (micro {}), peak lr {:.3e}\n  tokens per sample: {}/{}\n  checkpoints: every {} steps, keep {}, in {}\n",
                    job.origin,
                    job.name,
                    job.seed,
                    job.model.preset,
                    job.model.flavor,
                    job.model.modalities.inputs.len(),
                    job.model.modalities.outputs.len(),
                    t.total_steps,
                    t.lr.warmup_steps,
                    t.global_batch_size,
                    t.micro_batch_size,
                    t.lr.peak,
                    t.num_input_tokens,
                    t.num_target_tokens,
                    job.checkpoint.every_steps,
                    job.checkpoint.keep_last,
                    job.checkpoint.dir.display()
                );
                for (d, w) in job.datasets.iter().zip(&job.schedule.versions()[0].weights) {
                    s.push_str(&format!(
                        "  dataset '{}': {:?}, weight {w}, {} modalities, {} mixture components ({})\n",
                        d.name,
                        d.kind,
                        d.modalities.all().len(),
                        d.mixture.components().len(),
                        d.mixture.origin()
                    ));
                }
                s
            })
        }
        ConfigCommand::ImportMl4m(a) => {
            let import = import_ml4m(&a.run_config, a.ml4m_root.as_deref(), a.world_size)?;
            for w in &import.warnings {
                eprintln!("note: {w}");
            }
            let text = format!("# Imported from {} by `tessera config import-ml4m`.\n{}", a.run_config.display(), import.config.to_toml());
            match a.out {
                Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
    }
}
