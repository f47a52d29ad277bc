//! The actor's records: the job event log (`OUTPUT/events.jsonl`) and the Prometheus metrics.
//! Both are observers: a failure to write one is reported and never stops the job.

use crate::events::JobEvent;
use tessera_protocol::report::StepReport;

use super::CoordinatorState;

impl CoordinatorState {
    /// Appends `event` to the event log; a write failure is reported, not fatal (the job's
    /// progress does not depend on its audit trail, and the next record may succeed).
    pub(super) fn record(&mut self, event: JobEvent) {
        if let Err(e) = self.args.events.record(&event) {
            tessera_protocol::say!("[coordinator] event log {}: {e} (event {event:?} not recorded)", self.args.events.path().display());
        }
    }

    /// Exports one completed step; reports the metrics refuse (they would be a bug) are logged.
    pub(super) fn observe_step(&self, reports: &[StepReport]) {
        if let Err(e) = self.args.metrics.observe_step(reports) {
            tessera_protocol::say!("[coordinator] metrics: step not exported: {e}");
        }
    }

    /// Registered workers changed.
    pub(super) fn workers_changed(&self) {
        self.args.metrics.set_workers(self.workers.len());
    }
}
