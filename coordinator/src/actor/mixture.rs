//! Mixture changes while the job runs (`POST /mixture`, `tessera mixture`): the coordinator's
//! book of the [`MixtureSchedule`] and of the changes not yet handed to a generation. Pure: no
//! I/O and no clock, so every rule is unit-tested.
//!
//! How a change takes effect, deterministically:
//! 1. [`Mixtures::request`] validates it against the job's datasets and the coordinator's next
//!    step `n` and queues it as a new schedule version starting at sample
//!    `at_step × global_batch_size`; `at_step` defaults to, and must be at least, `n + 2`, so
//!    that ranks that already started step `n` (they step ahead of their reports) normally
//!    have not reached it yet.
//! 2. The actor then ends the running generation at a step boundary `b` with a checkpoint
//!    (`Event::Reconfigure`), and the next generation receives the schedule with the change
//!    ([`Mixtures::settle`]); workers install it and store it in their checkpoints.
//! 3. A version whose start is already behind that generation's start step (the ranks ran
//!    past `at_step` before they stopped, so steps `at_step..b` were trained with the old
//!    weights) is refused where it was asked for and moved to the first step it can still
//!    govern: the generation's start step, or one step after the version before it so that
//!    starts stay strictly increasing. The actor records the move in a `MixtureChanged` event.
//!    Steps already trained are never re-attributed to another mixture, so the ledger stays a
//!    pure function of (seed, index, schedule) for every step any checkpoint holds.
//!
//! A request names a subset of the datasets: those it names get the new weights, the others
//! keep their weights of the newest version (a patch, so that changing one dataset's weight
//! does not silently disable the rest).

use std::collections::BTreeMap;

use crate::api::ApiError;
use crate::error::Result;
use tessera_protocol::ProtocolError;
use tessera_protocol::ledger::MixtureSchedule;

/// A change accepted but not yet handed to a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct MixtureChange {
    /// Version number it will have in the schedule.
    pub version: u32,
    /// First step it governs (as asked, until settled).
    pub at_step: u64,
    /// Weight per dataset, by index.
    pub weights: Vec<f64>,
}

/// A queued change that could not start where asked; see the module docs, rule 3.
#[derive(Debug, Clone, PartialEq)]
pub struct MovedChange {
    /// The version.
    pub version: u32,
    /// The step it was asked for.
    pub asked_step: u64,
    /// The first step it governs instead.
    pub effective_step: u64,
    /// Weight per dataset, by index.
    pub weights: Vec<f64>,
}

/// The schedule handed to generations so far, and the changes queued since.
#[derive(Debug, Clone)]
pub struct Mixtures {
    names: Vec<String>,
    global_batch_size: u64,
    installed: MixtureSchedule,
    pending: Vec<MixtureChange>,
}

impl Mixtures {
    /// A book over `schedule` (the job's, or the one of the checkpoint resumed from) for datasets
    /// `names` (by index) and `global_batch_size` samples per step.
    pub fn new(schedule: MixtureSchedule, names: Vec<String>, global_batch_size: u64) -> Result<Self> {
        if names.len() != schedule.num_datasets() {
            return Err(ProtocolError::Schedule {
                reason: format!("{} dataset names for a schedule of {} datasets", names.len(), schedule.num_datasets()),
            }
            .into());
        }
        if global_batch_size == 0 {
            return Err(ProtocolError::Schedule { reason: "the global batch size is 0".into() }.into());
        }
        Ok(Self { names, global_batch_size, installed: schedule, pending: Vec::new() })
    }

    /// Dataset names, by index.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The schedule handed to the last generation (or given at start).
    pub fn schedule(&self) -> &MixtureSchedule {
        &self.installed
    }

    /// Changes accepted and not yet handed to a generation.
    pub fn pending(&self) -> &[MixtureChange] {
        &self.pending
    }

    /// `weights` by dataset name (for events and humans).
    pub fn named(&self, weights: &[f64]) -> BTreeMap<String, f64> {
        self.names.iter().cloned().zip(weights.iter().copied()).collect()
    }

    /// The newest version (queued or installed): number, first sample index, weights.
    fn newest(&self) -> (u32, u64, &[f64]) {
        match self.pending.last() {
            Some(c) => (c.version, c.at_step * self.global_batch_size, &c.weights),
            None => {
                let v = self.installed.versions().last().expect("a schedule has a version");
                (v.version, v.start_index, &v.weights)
            }
        }
    }

    /// Validates a change asked while the coordinator's next step is `next_step` and the run ends
    /// at `stop_at`, and queues it; the error names the offending field.
    pub fn request(
        &mut self,
        weights: &BTreeMap<String, f64>,
        at_step: Option<u64>,
        next_step: u64,
        stop_at: u64,
    ) -> std::result::Result<MixtureChange, ApiError> {
        if weights.is_empty() {
            return Err(ApiError::bad("weights", "names no dataset"));
        }
        let (newest_version, newest_start, newest_weights) = self.newest();
        let mut full = newest_weights.to_vec();
        for (name, w) in weights {
            let field = format!("weights.{name}");
            let Some(i) = self.names.iter().position(|n| n == name) else {
                return Err(ApiError::bad(field, format!("unknown dataset (the job's datasets: {})", self.names.join(", "))));
            };
            if !w.is_finite() || *w < 0.0 {
                return Err(ApiError::bad(field, format!("must be finite and >= 0, got {w}")));
            }
            full[i] = *w;
        }
        if full.iter().sum::<f64>() <= 0.0 {
            return Err(ApiError::bad("weights", "every dataset would have weight 0"));
        }
        let earliest = next_step + 2;
        // One step past the newest version's start keeps version starts strictly increasing.
        let after_newest = newest_start / self.global_batch_size + 1;
        let step = at_step.unwrap_or(earliest.max(after_newest));
        if step < earliest {
            return Err(ApiError::bad(
                "at_step",
                format!("step {step} is too soon: the earliest step a change can take effect at is {earliest}"),
            ));
        }
        if step < after_newest {
            return Err(ApiError::bad(
                "at_step",
                format!("step {step} is not after the start of mixture version {newest_version}; the earliest step is {after_newest}"),
            ));
        }
        if step >= stop_at {
            return Err(ApiError::bad("at_step", format!("step {step} is not before the end of the run (step {stop_at})")));
        }
        if step.checked_mul(self.global_batch_size).is_none() {
            return Err(ApiError::bad("at_step", format!("step {step} is out of range")));
        }
        let change = MixtureChange { version: newest_version + 1, at_step: step, weights: full };
        self.pending.push(change.clone());
        Ok(change)
    }

    /// Hands the queued changes to a generation starting at `start_step`: returns the schedule it
    /// trains with and the changes moved because their step was already behind it (module docs,
    /// rule 3). The queue is empty afterwards.
    pub fn settle(&mut self, start_step: u64) -> Result<(MixtureSchedule, Vec<MovedChange>)> {
        let b = self.global_batch_size;
        let mut moved = Vec::new();
        for change in std::mem::take(&mut self.pending) {
            let last = self.installed.versions().last().expect("a schedule has a version").start_index;
            let step = change.at_step.max(start_step).max(last / b + 1);
            let version = self.installed.push(step * b, change.weights.clone())?;
            if step != change.at_step {
                moved.push(MovedChange { version, asked_step: change.at_step, effective_step: step, weights: change.weights });
            }
        }
        Ok((self.installed.clone(), moved))
    }

    /// The version that governs `step` (queued changes included).
    pub fn version_at(&self, step: u64) -> u32 {
        let index = step.saturating_mul(self.global_batch_size);
        let installed = self.installed.versions().iter().rev().find(|v| v.start_index <= index).map_or(0, |v| v.version);
        self.pending.iter().rev().find(|c| c.at_step <= step).map_or(installed, |c| c.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Mixtures {
        let names = vec!["cc12m".to_string(), "coco".to_string()];
        Mixtures::new(MixtureSchedule::new(vec![1.0, 1.0]).unwrap(), names, 8).unwrap()
    }

    fn w(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    fn field(e: ApiError) -> String {
        match e {
            ApiError::BadRequest { field, .. } => field,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn mixture_requests_are_validated_and_name_the_field() {
        let mut m = book();
        assert_eq!(field(m.request(&w(&[("laion", 1.0)]), None, 0, 100).unwrap_err()), "weights.laion");
        assert_eq!(field(m.request(&w(&[("coco", f64::NAN)]), None, 0, 100).unwrap_err()), "weights.coco");
        assert_eq!(field(m.request(&w(&[("coco", -1.0)]), None, 0, 100).unwrap_err()), "weights.coco");
        assert_eq!(field(m.request(&w(&[("coco", 0.0), ("cc12m", 0.0)]), None, 0, 100).unwrap_err()), "weights");
        assert_eq!(field(m.request(&BTreeMap::new(), None, 0, 100).unwrap_err()), "weights");
        let too_soon = m.request(&w(&[("coco", 2.0)]), Some(11), 10, 100).unwrap_err();
        assert!(too_soon.to_string().contains("earliest step a change can take effect at is 12"), "{too_soon}");
        assert_eq!(field(m.request(&w(&[("coco", 2.0)]), Some(100), 10, 100).unwrap_err()), "at_step", "past the run's end");
        assert!(m.pending().is_empty(), "refused requests queue nothing");

        // Default: the earliest allowed step; unnamed datasets keep their weight.
        let c = m.request(&w(&[("coco", 3.0)]), None, 10, 100).unwrap();
        assert_eq!(c, MixtureChange { version: 1, at_step: 12, weights: vec![1.0, 3.0] });
        // A later change patches the newest one and must start after it.
        assert_eq!(field(m.request(&w(&[("cc12m", 0.0)]), Some(12), 10, 100).unwrap_err()), "at_step");
        let c = m.request(&w(&[("cc12m", 0.0)]), None, 10, 100).unwrap();
        assert_eq!(c, MixtureChange { version: 2, at_step: 13, weights: vec![0.0, 3.0] });
        assert_eq!((m.version_at(11), m.version_at(12), m.version_at(40)), (0, 1, 2));
    }

    #[test]
    fn settled_changes_start_where_asked_or_at_the_first_step_still_untrained() {
        // The generation stopped before the asked steps: both start where asked.
        let mut m = book();
        m.request(&w(&[("coco", 3.0)]), Some(20), 10, 100).unwrap();
        let (s, moved) = m.settle(12).unwrap();
        assert!(moved.is_empty());
        assert_eq!(s.versions().iter().map(|v| (v.version, v.start_index)).collect::<Vec<_>>(), vec![(0, 0), (1, 160)]);
        assert!(m.pending().is_empty());
        assert_eq!(m.version_at(19), 0);
        assert_eq!(m.version_at(20), 1);

        // The ranks ran ahead to boundary 15: changes asked for 12 and 13 move to 15 and 16.
        let mut m = book();
        m.request(&w(&[("coco", 3.0)]), None, 10, 100).unwrap();
        m.request(&w(&[("cc12m", 2.0)]), None, 10, 100).unwrap();
        let (s, moved) = m.settle(15).unwrap();
        assert_eq!(
            moved,
            vec![
                MovedChange { version: 1, asked_step: 12, effective_step: 15, weights: vec![1.0, 3.0] },
                MovedChange { version: 2, asked_step: 13, effective_step: 16, weights: vec![2.0, 3.0] },
            ]
        );
        assert_eq!(s.versions().iter().map(|v| v.start_index).collect::<Vec<_>>(), vec![0, 15 * 8, 16 * 8]);
        // Settling again with nothing queued changes nothing.
        assert_eq!(m.settle(30).unwrap(), (s, vec![]));
    }

    #[test]
    fn a_book_needs_a_name_per_dataset_and_a_batch() {
        let s = MixtureSchedule::new(vec![1.0, 1.0]).unwrap();
        assert!(Mixtures::new(s.clone(), vec!["a".into()], 8).is_err());
        assert!(Mixtures::new(s, vec!["a".into(), "b".into()], 0).is_err());
    }
}
