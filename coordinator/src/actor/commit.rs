//! Committing a checkpoint the state machine allowed (rule 4): every shard durable, the
//! manifest renamed into place, old checkpoints pruned.

use crate::control::{Event, Step};
use crate::events::JobEvent;
use tessera_protocol::checkpoint;

use super::{CoordinatorState, PendingCheckpoint};

impl CoordinatorState {
    /// Commits the checkpoint of `step` whose shards are all written.
    pub(super) fn commit(&mut self, step: Step, p: PendingCheckpoint) {
        let generation = self.book.generation;
        let root = self.args.checkpoint_dir.clone();
        let tmp = checkpoint::temp_dir(&root, step.0, generation.0);
        let files: Vec<checkpoint::FileEntry> = p.files.into_values().collect();
        // The book hands a checkpoint over only with rank 0's manifest; a missing one is refused.
        let gate = |m: &checkpoint::Manifest| match &self.args.commit_gate {
            Some(g) => g.admit(m, generation, &root.join(checkpoint::dir_name(step.0))).map_err(|reason| {
                tessera_protocol::ProtocolError::Checkpoint { path: tmp.display().to_string(), reason: format!("refused: {reason}") }
            }),
            None => Ok(()),
        };
        let committed = match p.manifest {
            // The gate records the manifest's digest: with its files listed, as the commit
            // writes it, so that the record names the file on disk.
            Some(mut manifest) => {
                manifest.files.clone_from(&files);
                gate(&manifest).and_then(|()| checkpoint::commit(&root, &tmp, manifest, files))
            }
            None => Err(tessera_protocol::ProtocolError::Checkpoint {
                path: tmp.display().to_string(),
                reason: "no manifest from rank 0".into(),
            }),
        };
        match committed {
            Ok((dir, bytes)) => {
                let _ = checkpoint::prune(&root, self.args.keep_last, generation.0);
                let asked = self.checkpoint_asked.take().unwrap_or(p.first_shard);
                let duration_s = asked.elapsed().as_secs_f64();
                self.args.metrics.observe_checkpoint(duration_s, bytes);
                self.record(JobEvent::CheckpointCommitted { step: step.0, dir: dir.display().to_string(), bytes, duration_s });
                self.log(&format!(
                    "checkpoint {} committed: {:.1} MiB, slowest shard write {:.2}s, commit {:.2}s after the first shard",
                    dir.display(),
                    bytes as f64 / (1 << 20) as f64,
                    p.write_s,
                    p.first_shard.elapsed().as_secs_f64()
                ));
                self.drive(Event::CheckpointCommitted { step });
            }
            Err(e) => {
                self.log(&format!("checkpoint of step {step} not committed: {e}"));
                self.checkpoint_asked = None;
                self.record(JobEvent::CheckpointFailed { step: step.0, reason: e.to_string() });
                self.drive(Event::CheckpointFailed { step, reason: e.to_string() });
            }
        }
    }
}
