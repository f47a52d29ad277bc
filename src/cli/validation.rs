//! Periodic validation during `tessera train`: a fixed held-out set, a unigram baseline fitted
//! on training samples, a table on the terminal and `OUT/eval_log.jsonl`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use indicatif::ProgressBar;
use tessera_coordinator::{ResolvedJob, SampleLedger};
use tessera_model::{ForwardOptions, FourM, FourMConfig, MaskedBatch};
use tessera_worker::data::{open_job_data, open_val_data};
use tessera_worker::eval::{EvalReport, UnigramBaseline, evaluate};
use tessera_worker::trainer::eval_options;
use tessera_worker::{BatchSource, Trainer};

/// The validation set, the baseline's training batches and the schedule.
pub struct Validation {
    every: u64,
    val: Vec<MaskedBatch>,
    fit: Vec<MaskedBatch>,
    baseline: std::cell::OnceCell<UnigramBaseline>,
}

impl Validation {
    /// Loads the fixed validation batches (and the baseline's training batches) when the job
    /// asks for validation and has held-out data.
    pub fn prepare(job: &ResolvedJob, cfg: &FourMConfig) -> anyhow::Result<Option<Self>> {
        let e = &job.eval;
        if e.every_steps == 0 {
            return Ok(None);
        }
        let mods = cfg.all_domains();
        let Some((mut pipeline, ledger)) = open_val_data(job, &mods)? else {
            eprintln!("note: [eval] is set but no dataset has a held-out split (val_path); validation is off");
            return Ok(None);
        };
        let batch = job.train.micro_batch_size as u64;
        let chunks =
            |p: &mut dyn FnMut(&[tessera_coordinator::SampleRef]) -> tessera_worker::Result<MaskedBatch>, l: &SampleLedger, n: u64| {
                (0..n.div_ceil(batch))
                    .map(|k| p(&l.locate_range(k * batch, batch.min(n - k * batch))))
                    .collect::<tessera_worker::Result<Vec<_>>>()
            };
        let val = chunks(&mut |r| pipeline.batch(r), &ledger, e.samples)?;
        let mut train = open_job_data(job, &mods)?;
        let train_ledger = SampleLedger::new(job.seed, job.schedule.clone(), train.dataset_lens())?;
        let fit = chunks(&mut |r| train.batch(r), &train_ledger, e.baseline_samples)?;
        Ok(Some(Self { every: e.every_steps, val, fit, baseline: std::cell::OnceCell::new() }))
    }

    /// True when step count `step` is a validation point.
    pub fn due(&self, step: u64) -> bool {
        step.is_multiple_of(self.every)
    }

    /// Validates the one-process trainer's model, prints a table and appends the report to
    /// `OUT/eval_log.jsonl`.
    pub fn run<S: BatchSource>(&self, trainer: &Trainer<S>, out: &Path, bar: &ProgressBar, plain: bool) -> anyhow::Result<EvalReport> {
        let model = &trainer.model().model;
        let on_device: Vec<MaskedBatch> = self.val.iter().map(|b| b.to_device(trainer.model().vs.device())).collect();
        let report = self.score(model, &on_device, &eval_options(trainer.job()))?;
        let text = self.table(trainer.state().step, &report);
        if plain {
            eprint!("{text}");
        } else {
            bar.println(text.trim_end());
        }
        append(out, trainer.state().step, &report)?;
        Ok(report)
    }

    /// Validates a whole model loaded from a checkpoint of step `step` (after a multi-worker
    /// run, whose ranks hold only shards): same batches, baseline and log as [`Self::run`].
    /// Each line of the table goes to `print`.
    pub fn run_model(&self, job: &ResolvedJob, model: &FourM, step: u64, out: &Path, print: impl Fn(&str)) -> anyhow::Result<EvalReport> {
        let report = self.score(model, &self.val, &eval_options(job))?;
        self.table(step, &report).lines().for_each(print);
        append(out, step, &report)?;
        Ok(report)
    }

    fn score(&self, model: &FourM, val: &[MaskedBatch], opts: &ForwardOptions) -> anyhow::Result<EvalReport> {
        let baseline = match self.baseline.get() {
            Some(b) => b,
            None => {
                let b = UnigramBaseline::fitted(model, &self.fit, opts)?;
                self.baseline.get_or_init(|| b)
            }
        };
        Ok(evaluate(model, val, opts, Some(baseline))?)
    }

    fn table(&self, step: u64, report: &EvalReport) -> String {
        let mut text = format!(
            "validation at step {step} ({} samples):\n  {:<22} {:>9} {:>9} {:>8}\n",
            self.val.iter().map(|b| b.batch_size()).sum::<i64>(),
            "modality",
            "loss",
            "unigram",
            "tokens"
        );
        for (m, e) in &report.modalities {
            text.push_str(&format!(
                "  {:<22} {:>9.4} {:>9} {:>8}\n",
                m.key(),
                e.loss,
                e.unigram.map_or("-".into(), |u| format!("{u:.4}")),
                e.tokens
            ));
        }
        text
    }
}

/// Appends one validation to `OUT/eval_log.jsonl`.
fn append(out: &Path, step: u64, report: &EvalReport) -> anyhow::Result<()> {
    let path = out.join("eval_log.jsonl");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{}", serde_json::json!({ "step": step, "modalities": report.modalities }))?;
    Ok(())
}
