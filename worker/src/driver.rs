//! The step-boundary driver: the one loop that every launch mode trains with. After each
//! step, at the same step on every rank: agree on the requests (stop, checkpoint) → validate
//! if due → snapshot if due → hand the snapshot to whoever commits → stop if agreed.
//!
//! What differs between launch modes is *who decides and commits*, and that is the
//! [`Boundary`]: [`local::LocalBoundary`] when a process trains alone (it takes its own
//! signals as requests and commits its own checkpoints), the device thread's boundary in
//! [`crate::agent::device`] when a coordinator decides (its commands are the requests, and
//! it commits the shards the ranks write). The [`Engine`] is the trainer: one process's
//! [`crate::Trainer`] or an FSDP rank.

pub mod local;
pub mod report;

use tessera_protocol::checkpoint::TrainState;
use tessera_protocol::{Generation, ValidationReport};

use crate::error::Result;
use crate::eval::ValidationSet;
use crate::fsdp::snapshot::Snapshot;
use crate::trainer::StepReport;

/// A trainer as the driver sees it.
pub trait Engine {
    /// Runs one optimizer step.
    fn step(&mut self) -> Result<StepReport>;
    /// The training position.
    fn state(&self) -> &TrainState;
    /// This rank (0 in a world of one).
    fn rank(&self) -> u32;
    /// Element-wise maximum of `flags` over every rank (nothing to do in a world of one).
    fn agree(&mut self, flags: &mut [i64]) -> Result<()>;
    /// Scores the held-out set with the current parameters (collective under FSDP).
    fn validation_report(&mut self, set: &ValidationSet, generation: Generation) -> Result<ValidationReport>;
    /// This rank's checkpoint state, to be written (and committed) by the boundary: copied to
    /// host memory, so training may go on meanwhile, except a world of one's
    /// ([`Snapshot::live`]), which streams the live tensors and is written before the next step.
    fn snapshot(&mut self, generation: Generation) -> Result<Snapshot>;
}

/// What this rank asks for at a boundary; every rank acts on the union.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// Leave the loop at this boundary.
    pub stop: bool,
    /// Checkpoint at this boundary.
    pub checkpoint: bool,
    /// Pause at this boundary (the coordinator is gone): every rank keeps its state and waits
    /// in [`Boundary::pause`] for a coordinator to adopt it.
    pub pause: bool,
}

/// Who decides and commits: the process itself, or its coordinator.
pub trait Boundary {
    /// A step was run (`state` is the position after it): report it, log it, print it.
    fn stepped(&mut self, report: &StepReport, state: &TrainState) -> Result<()>;
    /// This rank's requests at the boundary after step count `step` (not asked at the plan's
    /// last step: what arrives then is for the boundary's end-of-plan handling).
    fn requests(&mut self, step: u64) -> Requests;
    /// The held-out scores at this boundary (called on rank 0 only).
    fn validated(&mut self, report: ValidationReport) -> Result<()>;
    /// Validation at step count `step` was skipped because a rank has no held-out set
    /// (called on rank 0 only).
    fn validation_skipped(&mut self, step: u64);
    /// Writes `snap` and has it committed: at once when alone, by the coordinator otherwise.
    fn checkpoint(&mut self, snap: Snapshot) -> Result<()>;
    /// Every rank agreed to pause after step count `step` (a rank asked for it in
    /// [`Requests::pause`]): waits, holding the state, until the loop goes on (`true`) or
    /// must stop (`false`). A process alone never asks to pause.
    fn pause(&mut self, _step: u64) -> Result<bool> {
        Ok(true)
    }
}

/// What one run of the loop is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Membership epoch (names temp directories and reports; 0 when alone).
    pub generation: Generation,
    /// Step count at which the loop ends (the job's end, `--max-steps`, or a coordinator's
    /// planned stop).
    pub stop_at: u64,
    /// The job's total steps (validation is also due at the end of the job).
    pub total: u64,
    /// Periodic checkpoint interval in steps (0: none).
    pub checkpoint_every: u64,
    /// Validation interval in steps (0: none).
    pub validate_every: u64,
    /// Checkpoint at `stop_at` too. A process alone keeps its progress this way; a
    /// coordinator asks for the end-of-plan checkpoint itself (and again after a failed write).
    pub checkpoint_at_end: bool,
}

impl Plan {
    /// True when the boundary after step count `step` takes a periodic checkpoint.
    pub fn periodic_checkpoint(&self, step: u64) -> bool {
        self.checkpoint_every > 0 && step.is_multiple_of(self.checkpoint_every) && step < self.stop_at
    }

    /// True when the boundary after step count `step` validates: every `validate_every` steps
    /// and at the end of the job.
    pub fn validation_due(&self, step: u64) -> bool {
        self.validate_every > 0 && (step.is_multiple_of(self.validate_every) || step >= self.total)
    }
}

/// How a run of the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The plan's `stop_at` was reached.
    Reached,
    /// Every rank agreed to stop earlier (a signal, a coordinator's stop, a lost coordinator).
    Stopped,
}

/// The held-out set as a rank holds it: loaded at the first validation point, and kept.
/// The rule for a held-out set that cannot be read is the same in every launch mode: the
/// rank says why, the validations are skipped (every rank agrees first, so nobody waits in
/// a scoring collective for a rank that has nothing to score) and training goes on; a new
/// generation tries again (a file being rewritten, a mount that was away).
#[derive(Debug, Default)]
pub struct HeldOut {
    loaded: Option<Option<ValidationSet>>,
}

impl HeldOut {
    /// Forgets a failed load so that the next validation point tries again.
    pub fn retry_failed(&mut self) {
        if matches!(self.loaded, Some(None)) {
            self.loaded = None;
        }
    }

    fn get(&mut self, job: &tessera_protocol::ResolvedJob, cfg: &tessera_model::FourMConfig, who: &str) -> Option<&ValidationSet> {
        self.loaded
            .get_or_insert_with(|| match ValidationSet::prepare(job, cfg) {
                Ok(set) => set,
                Err(e) => {
                    tessera_protocol::say!("{who}cannot load the held-out set; validation is off: {e}");
                    None
                }
            })
            .as_ref()
    }
}

/// Where the driver finds the job's held-out data and how it names this rank in messages.
#[derive(Debug)]
pub struct Validation<'a> {
    /// The job.
    pub job: &'a tessera_protocol::ResolvedJob,
    /// Its model config.
    pub cfg: &'a tessera_model::FourMConfig,
    /// The held-out set, kept across runs of the loop.
    pub held_out: &'a mut HeldOut,
    /// Prefix of this rank's messages (e.g. `"[worker-3] "`).
    pub who: &'a str,
}

/// Trains from the engine's position to `plan.stop_at`, taking every step-boundary decision
/// the same way in every launch mode. A pause is agreed like a stop (so every rank pauses after
/// the same step) and taken after the boundary's validation and checkpoint.
pub fn drive<E: Engine, B: Boundary>(engine: &mut E, boundary: &mut B, plan: &Plan, mut val: Validation<'_>) -> Result<Ended> {
    let mut step = engine.state().step;
    while step < plan.stop_at {
        let report = engine.step()?;
        step = engine.state().step;
        boundary.stepped(&report, engine.state())?;
        // At the plan's last step the requests wait for the boundary's own end handling, which
        // serves each once: taken here by one rank and agreed, a request still queued for the
        // others would make them write the same step twice (into the same temp files).
        let mine = if step < plan.stop_at { boundary.requests(step) } else { Requests::default() };
        let mut flags = [i64::from(mine.stop), i64::from(mine.checkpoint), i64::from(mine.pause)];
        engine.agree(&mut flags)?;
        if plan.validation_due(step) {
            validate(engine, boundary, plan, &mut val)?;
        }
        let at_end = step >= plan.stop_at && plan.checkpoint_at_end;
        if flags[1] != 0 || plan.periodic_checkpoint(step) || at_end {
            let snap = engine.snapshot(plan.generation)?;
            boundary.checkpoint(snap)?;
        }
        if flags[0] != 0 || (flags[2] != 0 && !boundary.pause(step)?) {
            return Ok(Ended::Stopped);
        }
    }
    Ok(Ended::Reached)
}

/// Scores the held-out set with every rank; rank 0 hands the report to the boundary.
fn validate<E: Engine, B: Boundary>(engine: &mut E, boundary: &mut B, plan: &Plan, val: &mut Validation<'_>) -> Result<()> {
    let step = engine.state().step;
    let set = val.held_out.get(val.job, val.cfg, val.who);
    let mut missing = [i64::from(set.is_none())];
    engine.agree(&mut missing)?;
    let Some(set) = set.filter(|_| missing[0] == 0) else {
        if engine.rank() == 0 {
            boundary.validation_skipped(step);
        }
        return Ok(());
    };
    let report = engine.validation_report(set, plan.generation)?;
    if engine.rank() == 0 {
        boundary.validated(report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan { generation: Generation(0), stop_at: 10, total: 12, checkpoint_every: 5, validate_every: 4, checkpoint_at_end: true }
    }

    #[test]
    fn periodic_checkpoints_stop_short_of_the_plans_end() {
        let p = plan();
        assert!(p.periodic_checkpoint(5));
        assert!(!p.periodic_checkpoint(10), "the end is the end-of-plan checkpoint's, not a second write");
        assert!(!p.periodic_checkpoint(7));
        assert!(!Plan { checkpoint_every: 0, ..p }.periodic_checkpoint(5));
    }

    #[test]
    fn validation_is_due_on_its_interval_and_at_the_jobs_end() {
        let p = plan();
        assert!(p.validation_due(4) && p.validation_due(8) && p.validation_due(12));
        assert!(!p.validation_due(10), "the plan's end is not the job's");
        assert!(!Plan { validate_every: 0, ..p }.validation_due(12));
    }
}
