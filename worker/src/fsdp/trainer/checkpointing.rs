//! Checkpoints of an FSDP rank: the manifest and unit layout it records, the host snapshot
//! that is written off the training thread (and committed by whoever commits: see
//! [`crate::driver`]), and restoring a checkpoint of any world size (and a mixture schedule).

use std::time::Instant;

use tch::Device;
use tessera_ops::Collective;
use tessera_protocol::SampleLedger;
use tessera_protocol::checkpoint::{self as store, Manifest, UnitRecord};

use super::FsdpTrainer;
use crate::checkpoint as sharded;
use crate::error::Result;
use crate::fsdp::snapshot::Snapshot;
use crate::source::BatchSource;

impl<C: Collective + 'static, S: BatchSource> FsdpTrainer<C, S> {
    /// The manifest of a checkpoint of the current state (its `files` are filled in on commit).
    pub(super) fn manifest(&self, units: Vec<UnitRecord>) -> Manifest {
        Manifest::new(&self.job.name, self.job.seed, self.coll.world(), self.state.clone(), units)
    }

    /// The flat layout as recorded in checkpoints.
    pub(super) fn unit_records(&self) -> Vec<UnitRecord> {
        sharded::unit_records(&self.units, Some(&self.steps))
    }

    /// Copies this rank's shards and the training position to host memory so they can be
    /// written in the background while training goes on (the copy is the only stall).
    /// `generation` names the temp directory; rank 0's snapshot carries the manifest.
    pub fn snapshot(&self, generation: u64) -> Snapshot {
        let started = Instant::now();
        let (world, rank) = (self.coll.world(), self.coll.rank().0 as usize);
        let units = self.unit_records();
        // Deep copies in host memory: the live shards keep changing while the copy is written.
        let tensors = sharded::named_shards(&units, &self.shards)
            .into_iter()
            .map(|(n, t)| (n, if t.device() == Device::Cpu { t.copy() } else { t.to_device(Device::Cpu) }))
            .collect();
        let manifest = (rank == 0).then(|| self.manifest(units));
        Snapshot::new(self.job.checkpoint.dir.clone(), (generation, self.state.step), (rank, world), tensors, manifest, started)
    }

    /// Loads the checkpoint in `dir` (written at any world size, or a one-process checkpoint of
    /// the old format), resharded to this world. Each rank reads what it needs; no collective.
    /// The caller chose `dir` among committed checkpoints; sizes and layout are checked here,
    /// checksums when it was chosen.
    pub fn restore_from(&mut self, dir: &std::path::Path) -> Result<u64> {
        let m = store::read_manifest(dir)?;
        self.install(dir, &m)
    }

    /// Loads a chosen checkpoint resharded to this world: shards, update counts, training
    /// position and ledger. Returns the step it holds.
    pub(super) fn install(&mut self, dir: &std::path::Path, m: &Manifest) -> Result<u64> {
        let (world, rank) = (self.coll.world(), self.coll.rank().0 as usize);
        sharded::check_seed(dir, m, self.job.seed)?;
        let (shards, steps) = sharded::load_any(dir, m, &self.unit_records(), rank, world)?;
        self.shards = shards.into_iter().map(|s| s.to_device(self.device)).collect();
        self.steps = steps;
        self.ledger = SampleLedger::new(self.job.seed, m.state.schedule.clone(), self.ledger.dataset_lens().to_vec())?;
        self.source.set_ledger(&self.ledger);
        self.state = m.state.clone();
        Ok(self.state.step)
    }

    /// Installs a mixture schedule (a new generation may carry versions added while the job
    /// ran; versions already in force are unchanged, so earlier samples keep their sources).
    pub fn set_schedule(&mut self, schedule: tessera_protocol::MixtureSchedule) -> Result<()> {
        self.ledger = SampleLedger::new(self.job.seed, schedule.clone(), self.ledger.dataset_lens().to_vec())?;
        self.source.set_ledger(&self.ledger);
        self.state.schedule = schedule;
        Ok(())
    }
}
