//! Periodic validation of one-process `tessera train`: the job's held-out set
//! ([`ValidationSet`]) scored by the trainer's model, a table on the terminal and a line of
//! `OUT/eval_log.jsonl` (the same report and log that ranks of a multi-worker job produce).

use indicatif::ProgressBar;
use tessera_model::FourMConfig;
use tessera_protocol::{ResolvedJob, ValidationReport};
use tessera_worker::eval::ValidationSet;
use tessera_worker::trainer::eval_options;
use tessera_worker::{BatchSource, Trainer};

/// The held-out set of a one-process run.
pub struct Validation {
    set: ValidationSet,
}

impl Validation {
    /// Loads the held-out batches when the job validates and has held-out data.
    pub fn prepare(job: &ResolvedJob, cfg: &FourMConfig) -> anyhow::Result<Option<Self>> {
        Ok(ValidationSet::prepare(job, cfg)?.map(|set| Self { set }))
    }

    /// True when step count `step` is a validation point.
    pub fn due(&self, step: u64) -> bool {
        self.set.due(step)
    }

    /// Validates the trainer's model, prints a table and appends the report to
    /// `OUT/eval_log.jsonl`.
    pub fn run<S: BatchSource>(&self, trainer: &Trainer<S>, bar: &ProgressBar, plain: bool) -> anyhow::Result<ValidationReport> {
        let model = trainer.model();
        let report = self.set.report(&model.model, model.vs.device(), &eval_options(trainer.job()), trainer.state().step)?;
        for line in report.table() {
            if plain {
                tessera_protocol::say!("{line}");
            } else {
                bar.println(line);
            }
        }
        report.append_to_log(&trainer.job().output_dir)?;
        Ok(report)
    }
}
