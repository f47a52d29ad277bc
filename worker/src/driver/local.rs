//! The boundary of a process that trains alone: it decides for itself (SIGTERM/SIGINT are its
//! stop requests, answered with a checkpoint) and commits its own checkpoints, writes
//! `train_log.jsonl` and `eval_log.jsonl`, and shows progress through a [`Progress`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tessera_protocol::checkpoint::TrainState;
use tessera_protocol::jsonl::JsonLines;
use tessera_protocol::{Generation, Rank, TrainLogLine, ValidationReport};

use super::{Boundary, Requests};
use crate::error::Result;
use crate::fsdp::snapshot::Snapshot;
use crate::trainer::StepReport;

/// Where a process training alone shows its progress (a progress bar in the CLI).
pub trait Progress {
    /// A step was run: its report, the position after it and a one-line summary.
    fn step(&mut self, report: &StepReport, state: &TrainState, summary: &str);
    /// A line to show (a validation table row, a committed checkpoint).
    fn line(&mut self, line: &str);
}

/// Decides and commits for a process training alone.
pub struct LocalBoundary<'a> {
    stop: Arc<AtomicBool>,
    log: JsonLines,
    log_every: u64,
    total: u64,
    keep: usize,
    output_dir: PathBuf,
    tokens_per_sample: u64,
    progress: &'a mut dyn Progress,
    last_checkpoint: Option<PathBuf>,
}

impl std::fmt::Debug for LocalBoundary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBoundary").field("output_dir", &self.output_dir).field("last_checkpoint", &self.last_checkpoint).finish()
    }
}

impl<'a> LocalBoundary<'a> {
    /// The boundary of `job` trained from `state`, stopping when `stop` is raised (the caller
    /// wires it to its signals).
    pub fn new(job: &tessera_protocol::ResolvedJob, stop: Arc<AtomicBool>, progress: &'a mut dyn Progress) -> Result<Self> {
        let log = JsonLines::open(&job.output_dir.join("train_log.jsonl"))?;
        Ok(Self {
            stop,
            log,
            log_every: job.train.log_every,
            total: job.train.total_steps,
            keep: job.checkpoint.keep_last,
            output_dir: job.output_dir.clone(),
            tokens_per_sample: (job.train.num_input_tokens + job.train.num_target_tokens) as u64,
            progress,
            last_checkpoint: None,
        })
    }

    /// The newest checkpoint this boundary committed.
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }
}

impl Boundary for LocalBoundary<'_> {
    fn stepped(&mut self, r: &StepReport, state: &TrainState) -> Result<()> {
        if r.step.is_multiple_of(self.log_every) || state.step >= self.total {
            // A world of one: the line the coordinator writes from its ranks' reports.
            let report = super::report::step_report(Generation(0), (Rank(0), 1), r, self.tokens_per_sample, state);
            if let Some(line) = TrainLogLine::of_step(std::slice::from_ref(&report), tessera_protocol::report::now_ms()) {
                self.log.append(&line, false)?;
            }
        }
        let summary = format!(
            "loss {:.4}  lr {:.2e}  |g| {:.3}  {:.2}s/step (data {:.2}s){}",
            r.loss,
            r.lr,
            r.grad_norm,
            r.step_s,
            r.data_s,
            if r.skipped { "  SKIPPED (non-finite)" } else { "" }
        );
        self.progress.step(r, state, &summary);
        Ok(())
    }

    fn requests(&mut self, _step: u64) -> Requests {
        // A signal stops at the next boundary, with a checkpoint so that nothing is lost.
        let stop = self.stop.load(Ordering::Relaxed);
        Requests { stop, checkpoint: stop, pause: false }
    }

    fn validated(&mut self, report: ValidationReport) -> Result<()> {
        for line in report.table() {
            self.progress.line(&line);
        }
        report.append_to_log(&self.output_dir)?;
        Ok(())
    }

    fn validation_skipped(&mut self, step: u64) {
        self.progress.line(&format!("validation of step {step} skipped: a rank has no held-out set"));
    }

    fn checkpoint(&mut self, snap: Snapshot) -> Result<()> {
        let dir = snap.commit_alone(self.keep)?;
        self.progress.line(&format!("checkpoint {}", dir.display()));
        self.last_checkpoint = Some(dir);
        Ok(())
    }
}
