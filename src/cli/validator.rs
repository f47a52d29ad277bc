//! `[eval]` for multi-worker runs: the ranks hold only shards, so validation scores committed
//! checkpoints, put back together in the coordinator's process. While the job runs, a thread
//! takes every checkpoint the coordinator commits at a validation step (the ranks checkpoint at
//! those steps for this) and scores it; the ranks never wait for it. Scores are the same as
//! one-process training's (same held-out batches, unigram baseline, table, `eval_log.jsonl`)
//! and also go to the job's metrics (`tessera_validation_loss`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use anyhow::{Context, bail};
use tessera_coordinator::ResolvedJob;
use tessera_coordinator::console::Console;
use tessera_coordinator::metrics::JobMetrics;
use tessera_model::FourMConfig;
use tessera_worker::fsdp::checkpoint as sharded;

use super::validation::Validation;

/// The running validation thread and its inbox of committed checkpoints.
pub struct Validator {
    tx: Option<Sender<(u64, PathBuf)>>,
    /// Returns the steps it scored.
    thread: JoinHandle<BTreeSet<u64>>,
}

impl Validator {
    /// Starts the thread when the job validates periodically and has a held-out split.
    /// Tables go to `console` (above the progress bar on a terminal).
    pub fn spawn(job: &ResolvedJob, metrics: Arc<JobMetrics>, console: Console) -> anyhow::Result<Option<Self>> {
        let every = job.eval.every_steps;
        if every == 0 || !tessera_worker::data::has_val_split(job) {
            return Ok(None);
        }
        let (tx, rx) = channel::<(u64, PathBuf)>();
        let job = job.clone();
        let thread = std::thread::Builder::new()
            .name("validator".into())
            .spawn(move || {
                // Prepared at the first due checkpoint: loading the held-out set is not free.
                let mut prepared: Option<Option<(FourMConfig, Validation)>> = None;
                let mut scored = BTreeSet::new();
                for (step, dir) in rx {
                    if !step.is_multiple_of(every) || scored.contains(&step) {
                        continue;
                    }
                    match score(&job, &mut prepared, step, &dir, &metrics, &console) {
                        Ok(()) => {
                            scored.insert(step);
                        }
                        Err(e) => tessera_coordinator::say!("warning: validation of step {step} skipped: {e:#}"),
                    }
                }
                scored
            })
            .context("starting the validation thread")?;
        Ok(Some(Self { tx: Some(tx), thread }))
    }

    /// Where the coordinator reports committed checkpoints.
    pub fn sender(&self) -> Option<Sender<(u64, PathBuf)>> {
        self.tx.clone()
    }

    /// Waits until every checkpoint already reported is scored (the coordinator, holding the
    /// other sender, must have stopped); returns the steps scored.
    pub fn finish(mut self) -> BTreeSet<u64> {
        self.tx = None;
        self.thread.join().unwrap_or_else(|_| {
            tessera_coordinator::say!("warning: the validation thread panicked");
            BTreeSet::new()
        })
    }
}

/// Scores the checkpoint of step `step` in `dir`.
fn score(
    job: &ResolvedJob,
    prepared: &mut Option<Option<(FourMConfig, Validation)>>,
    step: u64,
    dir: &std::path::Path,
    metrics: &JobMetrics,
    console: &Console,
) -> anyhow::Result<()> {
    if prepared.is_none() {
        // One thread: the ranks train on the other cores meanwhile.
        tch::set_num_threads(1);
        let cfg = tessera_worker::four_m_config(&job.model, &job.origin)?;
        *prepared = Some(Validation::prepare(job, &cfg)?.map(|v| (cfg, v)));
    }
    let Some(Some((cfg, validation))) = prepared.as_ref() else { return Ok(()) };
    // The coordinator verified the shards' checksums when it committed them.
    let manifest = sharded::read_manifest(dir)?;
    if manifest.state.step != step {
        bail!("{} holds step {}, not {step}", dir.display(), manifest.state.step);
    }
    let model = sharded::consolidate(cfg, &sharded::AnyCheckpoint::Sharded((dir.to_path_buf(), manifest)))
        .with_context(|| format!("reading {} (pruned by a newer checkpoint?)", dir.display()))?;
    let report = validation.run_model(job, &model.model, step, &job.output_dir, |l| console.relay(l))?;
    metrics.observe_validation(step, report.modalities.iter().map(|(m, e)| (m.key(), e.loss)));
    Ok(())
}

/// The step of the last line of `OUTPUT/eval_log.jsonl` (the log is appended to across runs).
fn last_logged_step(job: &ResolvedJob) -> Option<u64> {
    std::fs::read_to_string(job.output_dir.join("eval_log.jsonl"))
        .ok()?
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
}

/// Validation after a multi-worker run ends: scores the final committed checkpoint unless it
/// was scored already (by the thread, in `scored`, or by an earlier run of a finished job).
pub fn validate_final(job: &ResolvedJob, step: u64, scored: &BTreeSet<u64>) -> anyhow::Result<()> {
    if scored.contains(&step) || last_logged_step(job) == Some(step) {
        return Ok(());
    }
    let cfg = tessera_worker::four_m_config(&job.model, &job.origin)?;
    let Some(validation) = Validation::prepare(job, &cfg)? else { return Ok(()) };
    let (found, rejected) = sharded::latest_any(&job.checkpoint.dir)?;
    for r in rejected {
        tessera_coordinator::say!("warning: validation skips checkpoint: {r}");
    }
    let found = found.with_context(|| format!("no valid checkpoint in {} to validate", job.checkpoint.dir.display()))?;
    if found.state().step != step {
        bail!("the newest valid checkpoint holds step {}, the job finished at {step}", found.state().step);
    }
    if job.train.threads > 0 {
        tch::set_num_threads(job.train.threads as i32);
    }
    let model = sharded::consolidate(&cfg, &found)?;
    validation.run_model(job, &model.model, step, &job.output_dir, |l| tessera_coordinator::say!("{l}"))?;
    Ok(())
}
