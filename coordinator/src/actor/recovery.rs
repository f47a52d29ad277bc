//! The actor's part in recovery: starting the local processes the state machine asks for
//! (replacements, scale-ups), and verifying a checkpoint that a generation could not restore.

use crate::control::{Event, WorkerId};
use crate::events::JobEvent;
use tessera_protocol::checkpoint;

use super::CoordinatorState;

impl CoordinatorState {
    /// A generation that fails before its first step may have failed to restore its
    /// checkpoint: verify it (sizes and SHA-256 of every shard); one that fails verification is
    /// reported bad, so the next generation restores the one before (rule 7), in-run as a
    /// restart would. Verified only then: a failure after a trained step is not the restore's.
    pub(super) fn check_restored_checkpoint(&mut self) {
        let Some(plan) = self.control.running() else { return };
        let Some(step) = plan.restore.filter(|_| self.control.next_step() == plan.start_step) else { return };
        if self.verified_restore == Some((plan.generation, step)) {
            return;
        }
        self.verified_restore = Some((plan.generation, step));
        let dir = self.args.checkpoint_dir.join(checkpoint::dir_name(step));
        if let Err(e) = checkpoint::verify(&dir) {
            let reason = format!("restoring it failed and it does not verify: {e}");
            self.log(&format!("checkpoint {} is bad ({reason}); falling back to the one before", dir.display()));
            self.record(JobEvent::CheckpointFailed { step, reason: reason.clone() });
            self.drive(Event::CheckpointBad { step, reason });
        }
    }

    /// Starts `count` local worker processes for the state machine (a replacement for
    /// `replacing`, or a scale-up); a failure is reported back to it.
    pub(super) fn launch(&mut self, count: usize, replacing: Option<WorkerId>) {
        let Some(launcher) = self.args.launcher.as_mut() else { return };
        match launcher.spawn(count) {
            Ok(pids) => {
                if let Some(lost) = replacing {
                    self.replacement_pids.extend(pids.iter().copied());
                    self.log(&format!("replacing lost {lost}: started process {pids:?}; it joins at a step boundary"));
                } else {
                    self.log(&format!("started {count} worker processes {pids:?}"));
                }
            }
            Err(e) => {
                let what = replacing.map_or(format!("starting {count} workers"), |lost| format!("starting a replacement for lost {lost}"));
                self.log(&format!("{what}: {e}"));
                self.launch_error = Some(format!("{what}: {e}"));
                self.drive(Event::LaunchFailed { count, replacement: replacing.is_some() });
            }
        }
    }
}
