//! An orphaned rank at its paused boundary: it publishes its state, waits for the coordinator
//! that adopts it, and on resuming sends that coordinator the reports the dead one may have
//! lost (the new coordinator logs only the steps its train log lacks).

use std::collections::VecDeque;
use std::sync::mpsc::Receiver;

use tessera_protocol::messages::{GenerationStart, Orphan, WorkerEvent};
use tessera_protocol::{Generation, Rank, Step};

use super::{DeviceCmd, DeviceCtx};

/// Step and validation reports kept for a new coordinator: more steps than a rank trains
/// between its coordinator's death and the pause (one boundary, as soon as it hears).
pub const KEPT_REPORTS: usize = 64;

/// The reports a rank sent lately, re-sent to a coordinator that adopts it.
#[derive(Debug, Default)]
pub struct Recent(VecDeque<WorkerEvent>);

impl Recent {
    /// Remembers `ev` (a step or validation report).
    pub fn keep(&mut self, ev: WorkerEvent) {
        if self.0.len() == KEPT_REPORTS {
            self.0.pop_front();
        }
        self.0.push_back(ev);
    }

    fn resend(&self, ctx: &DeviceCtx) {
        let worker = ctx.worker();
        for ev in &self.0 {
            let ev = match ev.clone() {
                WorkerEvent::Step { report, .. } => WorkerEvent::Step { worker, report },
                WorkerEvent::Validated { report, .. } => WorkerEvent::Validated { worker, report },
                other => other,
            };
            ctx.send(ev);
        }
    }
}

/// How a pause ended.
#[derive(Debug)]
pub enum Resumed {
    /// A coordinator adopted the generation: train on.
    Adopted,
    /// A coordinator started another generation instead (the state is dropped; that one runs
    /// next).
    Replaced(Box<GenerationStart>),
    /// No coordinator adopted it in time (or the process is ending): leave the job.
    Exit,
}

/// Where a rank paused.
#[derive(Debug, Clone, Copy)]
pub struct Paused {
    /// Its generation.
    pub generation: Generation,
    /// Its rank.
    pub rank: Rank,
    /// The generation's world size.
    pub world: u32,
    /// Steps completed.
    pub step: Step,
}

/// Publishes the paused state and waits until a coordinator adopts it, starts another
/// generation, or the agent ends (the grace ran out: it stops, and the channel says so).
pub fn wait_adopted(ctx: &DeviceCtx, rx: &Receiver<DeviceCmd>, at: Paused, recent: &Recent) -> Resumed {
    let orphan = Orphan { worker: ctx.worker(), generation: at.generation, step: at.step, rank: at.rank, world: at.world };
    if let Some(r) = &ctx.reattach {
        r.set_orphan(Some(orphan));
    }
    tessera_protocol::say!(
        "[{}] coordinator lost: paused after step {} of generation {} (rank {} of {}), state kept for a coordinator to adopt",
        orphan.worker,
        at.step,
        at.generation,
        at.rank,
        at.world
    );
    let resumed = loop {
        match rx.recv() {
            Ok(DeviceCmd::Start(g)) if g.plan.generation == at.generation && g.rank == at.rank && g.plan.start_step == at.step => {
                tessera_protocol::say!(
                    "[{}] adopted: generation {} goes on from step {} (nothing redone)",
                    ctx.worker(),
                    at.generation,
                    at.step
                );
                recent.resend(ctx);
                break Resumed::Adopted;
            }
            Ok(DeviceCmd::Start(g)) => break Resumed::Replaced(g),
            Ok(DeviceCmd::Exit) | Err(_) => break Resumed::Exit,
            // Commands of the lost coordinator, or the loss noticed again.
            Ok(DeviceCmd::Orphaned | DeviceCmd::Checkpoint { .. } | DeviceCmd::Stop { .. }) => {}
        }
    };
    if let Some(r) = &ctx.reattach {
        r.set_orphan(None);
    }
    resumed
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::WorkerId;

    #[test]
    fn the_newest_reports_are_kept() {
        let mut recent = Recent::default();
        for i in 0..(KEPT_REPORTS as u64 + 5) {
            recent.keep(WorkerEvent::Heartbeat { worker: WorkerId(i) });
        }
        assert_eq!(recent.0.len(), KEPT_REPORTS);
        assert_eq!(recent.0.front(), Some(&WorkerEvent::Heartbeat { worker: WorkerId(5) }), "the oldest go first");
    }
}
