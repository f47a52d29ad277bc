//! What the coordinator collects from the ranks of a generation before it acts: all reports of
//! a step (then the step is done), all shards of a checkpoint (then it can be committed), and
//! every rank's exit from the training loop (then the generation has stopped).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::control::{Generation, Rank, Step, WorkerId};
use tessera_protocol::checkpoint::{FileEntry, Manifest};
use tessera_protocol::report::StepReport;

/// The checkpoint shards of one (generation, step) received so far.
#[derive(Debug)]
pub struct PendingCheckpoint {
    /// Shard file by rank.
    pub files: BTreeMap<Rank, FileEntry>,
    /// Rank 0's manifest.
    pub manifest: Option<Manifest>,
    /// When the first shard arrived (the commit latency is measured from here).
    pub first_shard: Instant,
    /// Slowest shard write (snapshot to durable), seconds.
    pub write_s: f64,
}

/// Collections for the running generation; replaced when a generation starts.
#[derive(Debug, Default)]
pub struct GenerationBook {
    /// Generation number.
    pub generation: Generation,
    /// Ranks.
    pub ranks: Vec<WorkerId>,
    /// Step reports by step.
    pub steps: BTreeMap<Step, Vec<StepReport>>,
    /// Checkpoints by step.
    pub checkpoints: BTreeMap<Step, PendingCheckpoint>,
    /// Ranks that left the training loop.
    pub ended: BTreeSet<WorkerId>,
}

impl GenerationBook {
    /// A book for a new generation.
    pub fn new(generation: Generation, ranks: Vec<WorkerId>) -> Self {
        Self { generation, ranks, ..Self::default() }
    }

    /// Records a step report; returns every rank's reports once the step is complete.
    pub fn step(&mut self, report: StepReport) -> Option<Vec<StepReport>> {
        let step = report.step;
        let list = self.steps.entry(step).or_default();
        if list.iter().any(|r| r.rank == report.rank) {
            return None;
        }
        list.push(report);
        if list.len() == self.ranks.len() {
            let mut done = self.steps.remove(&step).unwrap_or_default();
            done.sort_by_key(|r| r.rank);
            return Some(done);
        }
        None
    }

    /// Records a durable shard; returns the checkpoint once every rank's shard and the
    /// manifest are in.
    pub fn shard(
        &mut self,
        step: Step,
        rank: Rank,
        file: FileEntry,
        manifest: Option<Manifest>,
        write_s: f64,
    ) -> Option<PendingCheckpoint> {
        let p = self.checkpoints.entry(step).or_insert_with(|| PendingCheckpoint {
            files: BTreeMap::new(),
            manifest: None,
            first_shard: Instant::now(),
            write_s: 0.0,
        });
        p.files.insert(rank, file);
        p.write_s = p.write_s.max(write_s);
        if manifest.is_some() {
            p.manifest = manifest;
        }
        if p.files.len() == self.ranks.len() && p.manifest.is_some() { self.checkpoints.remove(&step) } else { None }
    }

    /// Records that a rank left the loop; true once every rank still alive has.
    pub fn ended(&mut self, id: WorkerId, alive: impl Fn(WorkerId) -> bool) -> bool {
        self.ended.insert(id);
        self.all_ended(alive)
    }

    /// True when every rank still alive has left the loop.
    pub fn all_ended(&self, alive: impl Fn(WorkerId) -> bool) -> bool {
        self.ranks.iter().all(|r| self.ended.contains(r) || !alive(*r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step: u64, rank: u32) -> StepReport {
        StepReport {
            generation: Generation(0),
            step: Step(step),
            rank: Rank(rank),
            world: 2,
            loss: 1.0,
            losses: BTreeMap::new(),
            lr: 0.0,
            grad_norm: 0.0,
            samples: 1,
            tokens: 1,
            skipped: false,
            skipped_samples: 0,
            timings: Default::default(),
            rss_bytes: None,
            counters: Default::default(),
        }
    }

    #[test]
    fn a_step_completes_with_every_rank_once() {
        let mut b = GenerationBook::new(Generation(0), vec![WorkerId(3), WorkerId(5)]);
        assert!(b.step(report(0, 1)).is_none());
        assert!(b.step(report(0, 1)).is_none(), "a duplicate does not complete the step");
        let done = b.step(report(0, 0)).unwrap();
        assert_eq!(done.iter().map(|r| r.rank.0).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn a_checkpoint_needs_every_shard_and_the_manifest() {
        let mut b = GenerationBook::new(Generation(0), vec![WorkerId(3), WorkerId(5)]);
        let f = |n: &str| FileEntry { name: n.into(), bytes: 1, sha256: "00".into() };
        assert!(b.shard(Step(4), Rank(1), f("r1"), None, 0.5).is_none());
        let state = tessera_protocol::checkpoint::TrainState::start(tessera_protocol::MixtureSchedule::new(vec![1.0]).unwrap());
        let manifest = Manifest::new("t", 0, 2, state, Vec::new());
        let c = b.shard(Step(4), Rank(0), f("r0"), Some(manifest), 0.25).unwrap();
        assert_eq!(c.files.len(), 2);
        assert_eq!(c.write_s, 0.5);
        assert!(b.checkpoints.is_empty());
    }

    #[test]
    fn a_dead_rank_is_not_waited_for() {
        let mut b = GenerationBook::new(Generation(0), vec![WorkerId(3), WorkerId(5)]);
        assert!(!b.ended(WorkerId(3), |_| true));
        assert!(b.all_ended(|w| w != WorkerId(5)));
    }
}
