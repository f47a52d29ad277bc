//! A long-running `tessera` process of a cluster test (coordinator or worker), killed and reaped
//! on drop, its stderr in a file the test reads; and waiting for a condition with a limit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process of the test: killed and reaped on drop; its stderr goes to `log`.
pub struct Proc {
    /// The process.
    pub child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` (one libtorch thread), its stderr written to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Self {
        let file = std::fs::File::create(log).unwrap();
        let child = cmd.env("OMP_NUM_THREADS", "1").stdout(Stdio::null()).stderr(file).spawn().expect("spawn");
        Self { child, log: log.to_path_buf() }
    }

    /// A process already started, its stderr going to `log`.
    pub fn of(child: Child, log: PathBuf) -> Self {
        Self { child, log }
    }

    /// What it has printed to stderr so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills and reaps it (again on drop: harmless).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for `cond`, failing after `limit` with `what`; returns how long it took.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}
