//! The actor's part in recovery: starting the local processes the state machine asks for
//! (replacements, scale-ups), and verifying a checkpoint that a generation could not restore.

use crate::control::{Event, Step, WorkerId};
use crate::events::JobEvent;
use tessera_protocol::checkpoint;

use super::CoordinatorState;

impl CoordinatorState {
    /// Carries out `Action::VerifyRestore` (rule 7 decides when): verifies the checkpoint of
    /// `step` (sizes and SHA-256 of every shard); one that fails is reported bad, so the next
    /// generation restores the one before, in-run as a restart would.
    pub(super) fn verify_restore(&mut self, step: Step) {
        let dir = self.args.checkpoint_dir.join(checkpoint::dir_name(step.0));
        if let Err(e) = checkpoint::verify(&dir) {
            let reason = format!("restoring it failed and it does not verify: {e}");
            self.log(&format!("checkpoint {} is bad ({reason}); falling back to the one before", dir.display()));
            self.record(JobEvent::CheckpointFailed { step: step.0, reason: reason.clone() });
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
                    self.log(&format!("replacing lost {lost}: started process {pids:?}; it joins at a step boundary"));
                } else {
                    self.log(&format!("started {count} worker processes {pids:?}"));
                }
                // Rule 5 knows a replacement by its pid when it joins or exits.
                self.drive(Event::Launched { pids, replacement: replacing.is_some() });
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
