//! Helpers shared by the end-to-end tests: a small job, a supervised `tessera` process that is
//! always killed and reaped, and readers of the run's logs.
#![allow(dead_code)]

pub mod proc;
pub mod slurm;
pub mod tls;

// Each test binary uses part of these helpers (as `dead_code` above).
#[allow(unused_imports)]
pub use proc::{Proc, wait_for};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `tessera` binary under test: this build's, or `TESSERA_BIN` (to replay a test against
/// another build, e.g. the one before a fix, and see the test fail there).
pub fn bin() -> String {
    std::env::var("TESSERA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tessera").to_string())
}

/// Runs `tessera ARGS` to completion with one OpenMP thread.
pub fn tessera(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("OMP_NUM_THREADS", "1").output().expect("tessera runs")
}

/// Writes a small synthetic job of `total_steps` steps (plus `extra` lines in `[train]`) to
/// `dir/job.toml`; returns its path.
pub fn write_job(dir: &Path, total_steps: u64, extra: &str) -> String {
    let tok = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json")
        .display()
        .to_string();
    let text = format!(
        r#"
[job]
name = "cli-train"
seed = 3
output_dir = "out"

[model]
modalities = "caption,tok_rgb@224,tok_depth@224"
dim = 64
encoder_depth = 1
decoder_depth = 1
num_heads = 2

[data]
text_tokenizer = "{tok}"
input_tokens = 16
target_tokens = 16

[[data.datasets]]
name = "syn"
kind = "synthetic"
records = 64

[train]
global_batch_size = 2
total_steps = {total_steps}
threads = 1
{extra}

[checkpoint]
every_steps = 2
keep_last = 2
"#
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A job of `steps` steps with a global batch of 6 (splits over 1, 2 and 3 workers) and its
/// reference losses from one process.
pub fn job_and_reference(steps: u64) -> (tempfile::TempDir, String, Vec<f64>) {
    let one = tempfile::tempdir().unwrap();
    let job = write_job(one.path(), steps, "micro_batch_size = 1");
    let text = std::fs::read_to_string(&job).unwrap().replace("global_batch_size = 2", "global_batch_size = 6");
    std::fs::write(&job, &text).unwrap();
    let out = tessera(&["train", &job]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = losses_of(one.path());
    assert_eq!(reference.len(), steps as usize);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("job.toml"), &text).unwrap();
    let job = d.path().join("job.toml").display().to_string();
    (d, job, reference)
}

/// A `tessera train` process under test. Dropping it kills the launcher and its rank
/// processes and reaps them, whatever the test did, so no child outlives a failed assertion.
pub struct Running {
    /// The `tessera` process.
    pub child: std::process::Child,
}

impl Running {
    /// Starts `tessera ARGS` with stderr captured.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[])
    }

    /// Starts `tessera ARGS` with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self { child }
    }

    /// Waits until the run logged `n` steps (panics if it exits first or takes over `limit`).
    pub fn wait_for_log(&mut self, dir: &Path, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while log_lines(dir).len() < n {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tessera exited early ({status}): {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "fewer than {n} steps within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker processes of this run (children of the coordinator).
    pub fn rank_pids(&self) -> Vec<String> {
        let out = Command::new("pgrep").args(["-P", &self.child.id().to_string(), "-f", "worker --join"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
    }

    /// Waits for the exit (panics after `limit`); returns the status, stderr and the wait.
    pub fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, String, Duration) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, self.stderr(), start.elapsed());
            }
            assert!(start.elapsed() < limit, "tessera did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the run wrote to stderr (once it exited).
    pub fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
        }
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for pid in self.rank_pids() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (`-TERM`, `-STOP`, ...) to process `pid`, which must exist.
pub fn signal(sig: &str, pid: &str) {
    assert!(Command::new("kill").args([sig, pid]).status().unwrap().success(), "kill {sig} {pid}");
}

/// The world size of each generation the job started, in order (from `out/events.jsonl`).
pub fn generation_worlds(dir: &Path) -> Vec<usize> {
    events(dir).iter().filter(|e| e["type"] == "generation_started").map(|e| e["ranks"].as_array().unwrap().len()).collect()
}

/// Whether process `pid` is alive (a zombie is not).
pub fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(" Z ")).unwrap_or(false)
}

/// Asserts that none of `pids` is alive.
pub fn assert_gone(pids: &[String]) {
    for pid in pids {
        assert!(!alive(pid), "rank {pid} left behind");
    }
}

/// SIGKILLs its processes when dropped: for workers that are no longer the run's children
/// (their coordinator died), so that no test leaves one behind, pass or fail.
pub struct KillOnDrop(pub Vec<String>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

/// The complete lines of `out/train_log.jsonl`.
pub fn log_lines(dir: &Path) -> Vec<serde_json::Value> {
    // A line being written while we read is incomplete: only complete lines count.
    std::fs::read_to_string(dir.join("out/train_log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every logged loss, in log order.
pub fn losses_of(dir: &Path) -> Vec<f64> {
    log_lines(dir).iter().map(|l| l["loss"].as_f64().unwrap()).collect()
}

/// The job's event log (`out/events.jsonl`), one JSON value per event.
pub fn events(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("out/events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["event"].clone())
        .collect()
}

/// The last logged loss of every step (steps redone after a rollback count once, as redone).
pub fn final_losses(dir: &Path) -> std::collections::BTreeMap<u64, (f64, u64)> {
    let mut last = std::collections::BTreeMap::new();
    for l in log_lines(dir) {
        last.insert(l["step"].as_u64().unwrap(), (l["loss"].as_f64().unwrap(), l["world_size"].as_u64().unwrap_or(1)));
    }
    last
}

/// Asserts that every step's final loss equals the reference within 1e-6 relative.
pub fn assert_matches(got: &std::collections::BTreeMap<u64, (f64, u64)>, reference: &[f64]) {
    assert_eq!(got.len(), reference.len(), "steps logged: {:?}", got.keys().collect::<Vec<_>>());
    for (s, (l, _)) in got {
        let r = reference[*s as usize];
        assert!((l - r).abs() / r.abs() < 1e-6, "step {s}: {l} vs {r}");
    }
}
