//! [`Snapshot`]: a rank's checkpoint shards copied to host memory, written off the training
//! thread (see `FsdpTrainer::snapshot`), and the shard-write fault injection of the end-to-end
//! tests.

use std::time::Instant;

use tch::Tensor;
use tessera_model::io::Stored;

use crate::error::Result;

/// Fault injection for the end-to-end tests: `TESSERA_FAULT_ABORT_IN_SHARD_WRITE=STEP:RANK`
/// makes that rank die (SIGABRT) half-way through writing its shard of that step, the way a
/// killed or crashed worker leaves a partial file behind.
pub const FAULT_ABORT_IN_SHARD_WRITE: &str = "TESSERA_FAULT_ABORT_IN_SHARD_WRITE";

/// A rank's checkpoint shards copied to host memory, ready to be written off the training
/// thread (see [`super::FsdpTrainer::snapshot`]).
#[derive(Debug)]
pub struct Snapshot {
    pub(super) root: std::path::PathBuf,
    /// Generation that took it.
    pub generation: u64,
    /// Step count it holds.
    pub step: u64,
    /// Rank.
    pub rank: usize,
    pub(super) world: usize,
    pub(super) tensors: Vec<(String, Stored)>,
    /// It refers to the live tensors (a world of one's, [`Self::live`]): write it before the
    /// next step changes them.
    pub live: bool,
    /// The manifest to commit (rank 0 only; `files` is filled in by the committer).
    pub manifest: Option<tessera_protocol::checkpoint::Manifest>,
    /// Seconds the copy to host memory took (the only stall of the training thread).
    pub copy_s: f64,
    pub(super) taken: Instant,
}

impl Snapshot {
    /// A snapshot of rank `rank` of `world` at step count `step`, to be written under `root`,
    /// whose copy began at `started`.
    pub(crate) fn new(
        root: std::path::PathBuf,
        (generation, step): (u64, u64),
        (rank, world): (usize, usize),
        tensors: Vec<(String, Tensor)>,
        manifest: Option<tessera_protocol::checkpoint::Manifest>,
        started: Instant,
    ) -> Self {
        let copy_s = started.elapsed().as_secs_f64();
        let tensors = tensors.into_iter().map(|(n, t)| (n, Stored::Tensor(t))).collect();
        Self { root, generation, step, rank, world, tensors, live: false, manifest, copy_s, taken: Instant::now() }
    }

    /// A world of one's snapshot that streams the live parameters and moments when written
    /// (no copy): the boundary writes it before the next step ([`Self::live`] is set).
    pub(crate) fn live(
        root: std::path::PathBuf,
        (generation, step): (u64, u64),
        tensors: Vec<(String, Stored)>,
        manifest: tessera_protocol::checkpoint::Manifest,
        started: Instant,
    ) -> Self {
        let copy_s = started.elapsed().as_secs_f64();
        Self { root, generation, step, rank: 0, world: 1, tensors, live: true, manifest: Some(manifest), copy_s, taken: Instant::now() }
    }

    /// The checkpoint root it is written under.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    fn fault_injection(&self, path: &std::path::Path) {
        let Ok(spec) = std::env::var(FAULT_ABORT_IN_SHARD_WRITE) else { return };
        let target = spec.split_once(':').and_then(|(s, r)| Some((s.parse::<u64>().ok()?, r.parse::<usize>().ok()?)));
        if target == Some((self.step, self.rank)) {
            let _ = std::fs::write(path, b"partial shard: the writer died here");
            tessera_protocol::say!("fault injection: rank {} dies writing its shard of step {}", self.rank, self.step);
            std::process::abort();
        }
    }

    /// Writes the shard file durably (temp, fsync, rename) into the generation's temp
    /// directory; returns its entry and the seconds since the snapshot was taken.
    pub fn write(self) -> Result<(tessera_protocol::checkpoint::FileEntry, f64)> {
        let tmp = tessera_protocol::checkpoint::temp_dir(&self.root, self.step, self.generation);
        std::fs::create_dir_all(&tmp).map_err(crate::error::io_err("creating", &tmp))?;
        let path = tmp.join(tessera_protocol::checkpoint::shard_file(self.rank, self.world));
        self.fault_injection(&path);
        tessera_model::io::write_stored(&path, &self.tensors, &Default::default())?;
        let entry = tessera_protocol::checkpoint::file_entry(&path)?;
        Ok((entry, self.taken.elapsed().as_secs_f64()))
    }

    /// Writes and commits the snapshot of a world of one (a process training alone commits its
    /// own checkpoints; ranks under a coordinator [`Self::write`] and the coordinator commits),
    /// then keeps the newest `keep`. Returns the committed directory.
    pub fn commit_alone(mut self, keep: usize) -> Result<std::path::PathBuf> {
        use tessera_protocol::checkpoint as store;
        let root = self.root.clone();
        let manifest = self.manifest.take().ok_or_else(|| crate::error::WorkerError::Checkpoint {
            path: root.clone(),
            reason: format!("the snapshot of rank {} of {} has no manifest to commit", self.rank, self.world),
        })?;
        let tmp = store::temp_dir(&root, self.step, self.generation);
        // What an earlier, interrupted write of the same step left there is not ours to keep.
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(crate::error::io_err("removing stale", &tmp))?;
        }
        let (file, _) = self.write()?;
        let (dir, _) = store::commit(&root, &tmp, manifest, vec![file])?;
        store::prune(&root, keep, store::NO_LIVE_GENERATION)?;
        Ok(dir)
    }
}
