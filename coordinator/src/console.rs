//! What the coordinator prints while a job runs: on a terminal, a progress bar (step, loss,
//! seconds per step, ranks, generation) with the coordinator's log lines printed above it;
//! anywhere else (log files, CI, tests that read stderr), one plain line per step and event.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The coordinator's output: a progress bar or plain lines.
#[derive(Debug, Clone)]
pub struct Console {
    name: String,
    total: u64,
    bar: Option<ProgressBar>,
}

impl Console {
    /// A bar when stderr is a terminal, plain lines otherwise; `start..total` are the steps
    /// this run will train.
    pub fn new(name: &str, start: u64, total: u64) -> Self {
        let target = ProgressDrawTarget::stderr();
        let bar = (!target.is_hidden()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), target);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            bar.set_position(start);
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Self { name: name.to_string(), total, bar }
    }

    /// Plain lines only (tests, embedded uses without a terminal).
    pub fn plain(name: &str, total: u64) -> Self {
        Self { name: name.to_string(), total, bar: None }
    }

    /// A step finished: `done` steps are complete, `msg` summarises it.
    pub fn step(&self, done: u64, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(msg.to_string());
            }
            None => tessera_protocol::say!("{} step {done}/{}  {msg}", self.name, self.total),
        }
    }

    /// A coordinator event (membership, checkpoints, generations).
    pub fn log(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("[coordinator] {line}")),
            None => tessera_protocol::say!("[coordinator] {line}"),
        }
    }

    /// A line another process wrote (a local worker's stderr), printed above the bar.
    pub fn relay(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => tessera_protocol::say!("{line}"),
        }
    }

    /// Ends the bar (leaving its last state on screen).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}
