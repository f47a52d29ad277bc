//! A completed step and a validation as the actor records them: the train log, the console,
//! the metrics and the event log.

use std::collections::BTreeMap;

use crate::control::Event;
use crate::events::JobEvent;
use tessera_protocol::ModalityName;
use tessera_protocol::report::StepReport;

use super::CoordinatorState;

impl CoordinatorState {
    /// Records a step every rank has reported (reports sorted by rank).
    pub(super) fn step_done(&mut self, reports: Vec<StepReport>) {
        let r0 = &reports[0];
        let step_s = reports.iter().map(|r| r.timings.total_s).fold(0.0, f64::max);
        for r in &reports {
            if let Some(id) = self.book.ranks.get(r.rank.index()).copied()
                && let Some(c) = self.workers.get_mut(&id)
            {
                c.last_timings = Some(r.timings);
                c.last_rss = r.rss_bytes;
            }
        }
        self.last_loss = Some(r0.loss);
        self.observe_step(&reports);
        self.rank_times(&reports);
        let logged = self.logged_through.is_some_and(|s| r0.step.0 <= s);
        if !logged
            && let Some(log) = self.train_log.as_mut()
            && let Some(line) = tessera_protocol::TrainLogLine::of_step(&reports, tessera_protocol::report::now_ms())
            && let Err(e) = log.append(&line, false)
        {
            self.args.console.log(&format!("step {} not logged: {e}", r0.step));
        }
        self.args.console.step(
            r0.step.0 + 1,
            &format!(
                "loss {:.4}  lr {:.2e}  |g| {:.3}  {:.2}s/step ({} ranks, generation {})",
                r0.loss,
                r0.lr,
                r0.grad_norm,
                step_s,
                reports.len(),
                r0.generation
            ),
        );
        self.drive(Event::StepDone { generation: r0.generation, step: r0.step });
    }

    /// Logs, prints and exports a validation the ranks reported, once per step.
    pub(super) fn validated(&mut self, report: tessera_protocol::validation::ValidationReport) {
        if self.validated.is_some_and(|v| report.step <= v) {
            return;
        }
        self.validated = Some(report.step);
        for line in report.table() {
            self.args.console.relay(&line);
        }
        if let Err(e) = report.append_to_log(&self.args.output_dir) {
            self.log(&format!("validation of step {} not logged: {e}", report.step));
        }
        self.args.metrics.observe_validation(&report);
        let loss: BTreeMap<ModalityName, f64> = report.modalities.iter().map(|(m, e)| (m.clone(), e.loss)).collect();
        self.record(JobEvent::Validated { step: report.step, loss });
    }
}
