//! `tessera top` against a live job: inside `tmux` (a real terminal of 80×24) it shows the job
//! and its ranks, and `c` asks for a checkpoint through the API, which the job commits and whose
//! event then appears in the events pane (polled from `GET /events`); with stdout not a
//! terminal it prints one plain table and exits, from `--job-dir` or from `--coordinator URL`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, bin, events, tessera, write_job};

/// A tmux server of its own (a private socket), killed on drop with whatever runs in it.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux is installed (scripts/setup.sh)");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Polls the screen until `ok` holds (panics with the screen after `limit`).
    fn wait_for(&self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "not {what} within {limit:?}:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Already gone when top quit with its session's only pane.
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).stderr(Stdio::null()).status();
    }
}

#[test]
fn top_in_tmux_shows_the_job_and_c_commits_a_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "");
    // No periodic checkpoint: the only one is the one `c` asks for.
    let text = std::fs::read_to_string(&job).unwrap().replace("every_steps = 2", "every_steps = 0");
    std::fs::write(&job, text).unwrap();
    let mut run = Running::start(&["train", &job, "--workers", "2"]);
    run.wait_for_log(d.path(), 2, Duration::from_secs(180));
    let out_dir = d.path().join("out").display().to_string();

    // Not a terminal: one plain table, then exit.
    let plain = tessera(&["top", "--job-dir", &out_dir]);
    let table = String::from_utf8_lossy(&plain.stdout);
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    assert!(table.starts_with("cli-train  running  gen 0  world 2  step "), "{table}");
    assert!(table.lines().any(|l| l.starts_with("RK WKR STEP")), "{table}");
    assert_eq!(table.lines().filter(|l| l.starts_with("0  ") || l.starts_with("1  ")).count(), 2, "{table}");
    // The events pane, from `GET /events`: both workers joined, generation 0 started.
    assert_eq!(table.lines().filter(|l| l.contains(" worker_joined worker=")).count(), 2, "{table}");
    assert!(table.contains(" generation_started generation=0 "), "{table}");
    // The same through a remote coordinator's URL (no log read from the directory; the token
    // file is the job directory's).
    let endpoint: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("out/coordinator.json")).unwrap()).unwrap();
    let url = format!("http://{}", endpoint["api"].as_str().unwrap());
    let token = Path::new(endpoint["secrets"].as_str().unwrap()).join("token").display().to_string();
    let remote = tessera(&["top", "--coordinator", &url, "--token-file", &token]);
    let remote_table = String::from_utf8_lossy(&remote.stdout);
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    assert!(remote_table.starts_with("cli-train  running  gen 0  world 2  step "), "{remote_table}");
    assert!(remote_table.contains(" generation_started generation=0 "), "{remote_table}");

    let tmux = Tmux { socket: format!("tessera-top-test-{}", std::process::id()) };
    let cmd = format!("exec '{}' top --job-dir '{out_dir}'", bin());
    tmux.run(&["new-session", "-d", "-s", "top", "-x", "80", "-y", "24", &cmd]);
    let screen = tmux.wait_for("showing both ranks", Duration::from_secs(60), |s| {
        s.contains("cli-train  running") && s.lines().filter(|l| l.starts_with("0  0") || l.starts_with("1  1")).count() == 2
    });
    assert!(screen.contains("tok/s") && screen.contains("q quit"), "{screen}");
    assert!(screen.lines().any(|l| l.starts_with("total ")), "a loss sparkline: {screen}");
    assert!(!events(d.path()).iter().any(|e| e["type"] == "checkpoint_committed"), "no checkpoint before `c`");

    tmux.run(&["send-keys", "-t", "top", "c"]);
    tmux.wait_for("acknowledging the checkpoint", Duration::from_secs(30), |s| s.contains("checkpoint asked (step "));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !events(d.path()).iter().any(|e| e["type"] == "checkpoint_committed") {
        assert!(Instant::now() < deadline, "the checkpoint asked from top was not committed: {:?}", events(d.path()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let step = events(d.path()).iter().find(|e| e["type"] == "checkpoint_committed").unwrap()["step"].as_u64().unwrap();
    tmux.wait_for("showing the new checkpoint and its event", Duration::from_secs(30), |s| {
        s.contains(&format!("ckpt {step} (")) && s.contains(&format!(" checkpoint_committed step={step} "))
    });

    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    // `q` ends top, and with it the session's only pane.
    while Command::new("tmux").args(["-L", &tmux.socket, "has-session", "-t", "top"]).stderr(Stdio::null()).status().unwrap().success() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(run);
}
