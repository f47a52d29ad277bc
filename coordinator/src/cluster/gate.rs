//! The fence on a service's checkpoint commits: before a job's coordinator renames a
//! checkpoint into place, the service records it in the job store under its fence. A
//! coordinator that lost the store (a standby took over while it was frozen or cut off) is
//! refused there, so it cannot commit a checkpoint the new one does not know of.

use std::path::Path;
use std::sync::Arc;

use sha2::Digest;
use tessera_protocol::checkpoint::Manifest;

use crate::actor::CommitGate;
use crate::store::{CheckpointRecord, Fence, JobId, JobStore, StoreError};

/// A [`CommitGate`] that records each commit in the store with the holder's fence.
pub struct StoreGate<S: JobStore> {
    store: Arc<S>,
    fence: Fence,
    job: JobId,
}

impl<S: JobStore> StoreGate<S> {
    /// The gate of `job`'s commits, writing to `store` with `fence`.
    pub fn new(store: Arc<S>, fence: Fence, job: JobId) -> Self {
        Self { store, fence, job }
    }
}

impl<S: JobStore + 'static> CommitGate for StoreGate<S> {
    fn admit(&self, manifest: &Manifest, generation: u64, dir: &Path) -> Result<(), String> {
        // The manifest as the commit writes it (pretty JSON), so the digest names that file.
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| format!("encoding the manifest: {e}"))?;
        let manifest_sha256 = sha2::Sha256::digest(&json).iter().map(|b| format!("{b:02x}")).collect();
        let record = CheckpointRecord { step: manifest.state.step, generation, dir: dir.to_path_buf(), manifest_sha256 };
        // The actor's handlers are synchronous; the store is async. The service runs on a
        // multi-thread runtime, where this blocks only the actor's worker thread.
        let written = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.store.commit_checkpoint(&self.fence, self.job, record))
        });
        match written {
            // The same step committed again after a restore to an earlier checkpoint: the
            // store keeps the first record (the write was fenced all the same).
            Ok(()) | Err(StoreError::Duplicate { .. }) => Ok(()),
            Err(e) => Err(format!("the job store refused the commit: {e}")),
        }
    }
}
