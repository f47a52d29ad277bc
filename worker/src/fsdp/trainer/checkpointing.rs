//! Checkpoints of an FSDP rank: the manifest and unit layout it records, the collective save
//! and resume of ranks that run without a coordinator, the host snapshot that is written off
//! the training thread, and restoring a checkpoint of any world size (and a mixture schedule).

use std::time::Instant;

use tch::Device;
use tessera_ops::Collective;
use tessera_protocol::SampleLedger;
use tessera_protocol::checkpoint::{self as store, Manifest, UnitRecord};

use super::FsdpTrainer;
use crate::checkpoint as sharded;
use crate::error::{Result, WorkerError};
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

    /// Writes a checkpoint of the current state under the job's checkpoint directory
    /// (collective: every rank must call it at the same step; rank 0 commits) and keeps the
    /// newest `keep_last`. For ranks that run without a coordinator. Returns the committed
    /// directory.
    pub fn save_checkpoint(&mut self) -> Result<std::path::PathBuf> {
        let (world, rank) = (self.coll.world(), self.coll.rank().0 as usize);
        let root = self.job.checkpoint.dir.clone();
        let tmp = store::temp_dir(&root, self.state.step, 0);
        let units = self.unit_records();
        sharded::write_shards(&tmp, rank, world, &units, &self.shards)?;
        let r = self.coll.barrier();
        self.comm(r)?;
        // Rank 0 commits; the others learn the outcome so nobody goes on past a failed commit.
        let mut ok = [1i64];
        let mut committed = None;
        if rank == 0 {
            let done = (0..world)
                .map(|r| store::file_entry(&tmp.join(store::shard_file(r, world))))
                .collect::<tessera_protocol::Result<Vec<_>>>()
                .and_then(|files| store::commit(&root, &tmp, self.manifest(units), files))
                .and_then(|(d, _)| store::prune(&root, self.job.checkpoint.keep_last, store::NO_LIVE_GENERATION).map(|_| d));
            match done {
                Ok(d) => committed = Some(d),
                Err(e) => {
                    ok[0] = 0;
                    tracing::error!("checkpoint commit failed: {e}");
                }
            }
        }
        let r = self.coll.broadcast(&mut ok, tessera_ops::Rank(0));
        self.comm(r)?;
        if ok[0] == 0 {
            return Err(WorkerError::Checkpoint {
                path: tmp,
                reason: format!("rank 0 could not commit the checkpoint of step {}", self.state.step),
            });
        }
        Ok(committed.unwrap_or_else(|| root.join(store::dir_name(self.state.step))))
    }

    /// Resumes every rank from the newest valid checkpoint (rank 0 chooses, all load it
    /// resharded to this world size). Collective. Returns the step resumed at, if any.
    pub fn resume(&mut self) -> Result<Option<u64>> {
        let rank = self.coll.rank().0 as usize;
        let root = self.job.checkpoint.dir.clone();
        let mut chosen = [-1i64];
        if rank == 0 {
            let (found, rejected) = store::latest_valid(&root)?;
            for r in rejected {
                tracing::warn!("skipping checkpoint: {r}");
            }
            if let Some((_, m)) = found {
                chosen[0] = m.state.step as i64;
            }
        }
        let r = self.coll.broadcast(&mut chosen, tessera_ops::Rank(0));
        self.comm(r)?;
        if chosen[0] < 0 {
            return Ok(None);
        }
        let dir = root.join(store::dir_name(chosen[0] as u64));
        let m = store::verify(&dir).map_err(|e| WorkerError::Checkpoint {
            path: dir.clone(),
            reason: format!("rank 0 chose it but it no longer verifies: {e}"),
        })?;
        self.install(&dir, &m).map(Some)
    }

    /// Copies this rank's shards and the training position to host memory so they can be
    /// written in the background while training goes on (the copy is the only stall).
    /// `generation` names the temp directory; rank 0's snapshot carries the manifest.
    pub fn snapshot(&self, generation: u64) -> Snapshot {
        let (world, rank) = (self.coll.world(), self.coll.rank().0 as usize);
        let units = self.unit_records();
        // Deep copies in host memory: the live shards keep changing while the copy is written.
        let tensors = sharded::named_shards(&units, &self.shards)
            .into_iter()
            .map(|(n, t)| (n, if t.device() == Device::Cpu { t.copy() } else { t.to_device(Device::Cpu) }))
            .collect();
        let manifest = (rank == 0).then(|| self.manifest(units));
        Snapshot {
            root: self.job.checkpoint.dir.clone(),
            generation,
            step: self.state.step,
            rank,
            world,
            tensors,
            manifest,
            taken: Instant::now(),
        }
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
