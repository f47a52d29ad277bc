//! What arrives at the actor, translated: worker events, exits of local processes, ticks.

use std::time::Instant;

use tessera_protocol::messages::{Command, ExitReason, Wire, WorkerEvent, WorkerMsg};

use crate::control::Event;
use crate::events::JobEvent;

use super::{CoordinatorState, Removal};

impl CoordinatorState {
    /// Handles one event from a worker.
    pub(super) fn worker_event(&mut self, ev: WorkerEvent) {
        match ev {
            WorkerEvent::Hello { .. } => self.hello(ev, Instant::now()),
            WorkerEvent::Heartbeat { worker } => {
                if self.is_alive(worker) {
                    self.drive(Event::Heartbeat { id: worker });
                } else {
                    // Removed while it could not hear (e.g. stopped): it must not train again.
                    if let Some(actor) = self.removed.remove(&worker) {
                        self.log(&format!("{worker} is not a member any more; telling it to exit"));
                        let _ = actor.cast(WorkerMsg::Command(Wire::new(Command::Exit { why: ExitReason::Lost })));
                    }
                }
            }
            WorkerEvent::Step { worker, report } => {
                if report.generation == self.book.generation
                    && self.is_alive(worker)
                    && let Some(all) = self.book.step(report)
                {
                    self.step_done(all);
                }
            }
            WorkerEvent::Validated { worker, report } => {
                if self.is_alive(worker) {
                    self.validated(report);
                }
            }
            WorkerEvent::ShardWritten { worker, generation, step, rank, file, manifest, write_s } => {
                if generation == self.book.generation
                    && self.is_alive(worker)
                    && let Some(p) = self.book.shard(step, rank, file, manifest.map(|m| *m), write_s)
                {
                    // Rule 4 decides whether it may be committed.
                    self.ready.insert((generation, step), p);
                    self.drive(Event::CheckpointReady { generation, step });
                    self.ready.remove(&(generation, step));
                }
            }
            WorkerEvent::ShardFailed { worker, generation, step, error } => {
                let reason = &error.message;
                self.log(&format!("{worker}: checkpoint shard of step {step} failed: {reason}"));
                if generation == self.book.generation {
                    self.book.checkpoints.remove(&step);
                    self.checkpoint_asked = None;
                    let reason = format!("{worker}: {reason}");
                    self.record(JobEvent::CheckpointFailed { step: step.0, reason: reason.clone() });
                    self.drive(Event::CheckpointFailed { step, reason });
                }
            }
            WorkerEvent::GenerationEnded { worker, generation, step, error } => {
                if generation != self.book.generation {
                    return;
                }
                if let Some(e) = &error {
                    self.log(&format!("{worker} left generation {generation} at step {step}: {e}"));
                    self.last_rank_error = Some(format!("{worker}: {e}"));
                    self.drive(Event::GenerationFailed { generation, id: worker });
                }
                self.book.ended.insert(worker);
                self.check_stopped();
            }
            WorkerEvent::Draining { worker, reason } => {
                if self.is_alive(worker) {
                    self.log(&format!("{worker} asks to leave ({reason}): draining it at the next step boundary"));
                    self.removal.insert(worker, Removal { reason: format!("drained: {reason}"), lost: false });
                    self.control.drain(worker);
                    self.drive(Event::Tick);
                }
            }
            WorkerEvent::Leaving { worker, reason } => {
                self.log(&format!("{worker} is leaving: {reason}"));
                self.leave(worker, Removal { reason: format!("left: {reason}"), lost: false });
            }
        }
    }

    /// A local worker process `pid` exited (`how`: its status).
    pub(super) fn process_exited(&mut self, pid: u32, how: String) {
        let replacement = self.control.is_pending_replacement(pid);
        let worker = self.workers.iter().find(|(_, c)| c.pid == pid).map(|(id, _)| *id);
        match worker {
            Some(id) => {
                self.log(&format!("{id} (pid {pid}) exited: {how}"));
                self.removal.insert(id, Removal { reason: format!("process exited: {how}"), lost: true });
            }
            None if replacement => self.log(&format!("replacement process {pid} exited before joining: {how}")),
            None => {}
        }
        self.drive(Event::ProcessExited { worker, pid });
        if let Some(id) = worker {
            self.removal.remove(&id);
        }
    }

    /// Time passed: retries pending hellos and feeds the state machine the time (and, in
    /// embedded mode, the launcher's count of live processes).
    pub(super) fn tick(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (ev, since) in pending {
            self.hello(ev, since);
        }
        // The launcher's count of live processes is what rule 6 looks at (embedded mode).
        let event = match self.args.launcher.as_ref() {
            Some(l) => Event::Processes { live: l.live() },
            None => Event::Tick,
        };
        self.drive(event);
    }
}
