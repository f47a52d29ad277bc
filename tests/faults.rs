//! Regressions for the defects an independent fault-injection run found in the one-machine
//! orchestrator (issue 21), end to end with real processes and files: two runs of one job, the
//! modes of the secrets, a torn `train_log.jsonl` record, the first generation's rendezvous with
//! `--max-workers`, SIGTERM before the workers joined, a full disk (a real tmpfs) at the final
//! checkpoint, two workers killed at once, a global batch that does not split evenly, and a
//! corrupt newest checkpoint found during a run.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Defect 3: a second run of the same job was not refused; both trained into one directory.
#[test]
fn a_second_run_of_a_running_job_is_refused_naming_the_first() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "");
    let mut first = Running::start(&["train", &job, "--workers", "2"]);
    first.wait_for_log(d.path(), 1, Duration::from_secs(120));
    let token = std::fs::read(d.path().join("out/.tessera/token")).unwrap();
    for args in [vec!["train", &job, "--workers", "2"], vec!["train", &job]] {
        // Refused at once; a second run that is not refused would train on (bounded here).
        let (status, err, _) = Running::start(&args).wait_exit(Duration::from_secs(30));
        assert!(!status.success(), "{err}");
        assert!(
            err.contains("is in use by tessera pid") && err.contains(&first.child.id().to_string()) && err.contains("API http://"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(d.path().join("out/.tessera/token")).unwrap(), token, "the first run's secrets are untouched");
    let logged = log_lines(d.path()).len();
    first.wait_for_log(d.path(), logged + 2, Duration::from_secs(60));
    signal("-TERM", &first.child.id().to_string());
    let (status, stderr, _) = first.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let steps: Vec<u64> = log_lines(d.path()).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (0..steps.len() as u64).collect::<Vec<_>>(), "one writer: every step once, in order");
    // The lock went with the process: the job runs again (and resumes).
    let again = tessera(&["train", &job, "--workers", "2", "--max-steps", "1"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}

/// Defect 9: secrets kept a wider pre-existing mode and their directory followed the umask.
/// Also defect 6: a record torn by a crash was glued to the next run's first record.
#[test]
fn secrets_are_private_and_a_torn_log_record_is_cut_before_appending() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 6, "");
    let run = |extra: &[&str]| {
        let mut args = vec!["train", job.as_str()];
        args.extend_from_slice(extra);
        // umask 000: without an explicit mode the directory would be world-writable.
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("umask 000; exec \"$0\" {}", args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")))
            .arg(bin())
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["--workers", "2", "--max-steps", "2"]);
    let secrets = d.path().join("out/.tessera");
    assert_eq!(mode(&secrets), 0o700);
    for f in ["token", "cookie"] {
        assert_eq!(mode(&secrets.join(f)), 0o600, "{f}");
        std::fs::set_permissions(secrets.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A crash tore the last record: the next run must not glue its first record onto it.
    let log = d.path().join("out/train_log.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str(r#"{"ts_ms":1796563840123,"step":2,"lo"#);
    std::fs::write(&log, text).unwrap();
    run(&["--workers", "2", "--max-steps", "2"]);
    assert_eq!(mode(&secrets), 0o700, "the directory is made private again");
    for f in ["token", "cookie"] {
        assert_eq!(mode(&secrets.join(f)), 0o600, "{f}: a new file, not the old 0644 one");
    }
    // The same through the one-process trainer.
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str(r#"{"step":4,"loss":"#);
    std::fs::write(&log, text).unwrap();
    run(&[]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    let steps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (0..6).collect::<Vec<u64>>(), "{text}");
}

/// Defect 7: with `--max-workers` above `--workers`, generation 0 waited the 20 s rendezvous
/// grace for workers nobody starts (the events then show ≥ 20 s between the coordinator's start
/// and the first generation); it starts once the launched workers are there.
#[test]
fn max_workers_above_workers_does_not_delay_the_start() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 3, "");
    let out = tessera(&["train", &job, "--workers", "2", "--max-workers", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ts = |ty: &str| -> u64 {
        let text = std::fs::read_to_string(d.path().join("out/events.jsonl")).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["event"]["type"] == ty)
            .unwrap_or_else(|| panic!("no {ty}"))["ts_ms"]
            .as_u64()
            .unwrap()
    };
    let waited = ts("generation_started") - ts("coordinator_started");
    assert_eq!(generation_worlds(d.path())[0], 2);
    // Two worker processes start in a few seconds; the grace it no longer waits is 20 s.
    assert!(waited < 15_000, "the first generation started {waited} ms after the coordinator");
}

/// Whether `pid` has a handler for SIGTERM installed (its `SigCgt` mask has bit 15).
fn catches_sigterm(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << 14) != 0)
}

/// Defect 8: SIGTERM before the workers joined took about 20 s and claimed a checkpoint that
/// does not exist. Now the stop is prompt and says that nothing was trained.
#[test]
fn sigterm_before_the_workers_joined_stops_promptly_and_truthfully() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 1000, "");
    let mut run = Running::start(&["train", &job, "--workers", "2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !catches_sigterm(run.child.id()) {
        assert!(Instant::now() < deadline, "no SIGTERM handler within 30 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    signal("-TERM", &run.child.id().to_string());
    let (status, stderr, took) = run.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopped before any step was trained"), "{stderr}");
    assert!(!stderr.contains("(checkpointed)"), "{stderr}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}: {stderr}");
    assert!(log_lines(d.path()).is_empty());
}

/// A tmpfs mounted for one test and always unmounted (after the processes using it are gone:
/// declare it before them).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (root, CAP_SYS_ADMIN) to fill a disk for real: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` up to the last byte.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// Defect 4: on a full disk the coordinator asked for the final checkpoint forever and SIGTERM
/// could not end the job. Now the final checkpoint is tried a bounded number of times, the job
/// fails naming ENOSPC, and the last good checkpoint stays intact (a rerun resumes from it).
#[test]
fn a_full_disk_at_the_final_checkpoint_fails_the_job_naming_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let _disk = Tmpfs::mount(d.path(), "400m");
    let job = write_job(d.path(), 12, "");
    let text =
        std::fs::read_to_string(&job).unwrap().replace("every_steps = 2", "every_steps = 4").replace("keep_last = 2", "keep_last = 1");
    std::fs::write(&job, text).unwrap();
    let mut run = Running::start(&["train", &job, "--workers", "2"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !events(d.path()).iter().any(|e| e["type"] == "checkpoint_committed" && e["step"] == 4) {
        assert!(Instant::now() < deadline, "no checkpoint of step 4: {}", run.stderr());
        assert!(run.child.try_wait().unwrap().is_none(), "the job ended early: {}", run.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    fill(d.path());
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("job failed: the final checkpoint (step 12) failed 3 times"), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let kept = stderr.lines().find(|l| l.contains("job failed")).unwrap();
    assert!(kept.contains("is intact"), "{kept}");
    // Space again: a rerun resumes from the newest committed checkpoint, which verifies.
    std::fs::remove_file(d.path().join("filler")).unwrap();
    let out = tessera(&["train", &job, "--workers", "2", "--max-steps", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains(", restore") && !err.contains("not resuming"), "{err}");
}

/// Defect 2: of two workers lost at once only one was replaced (the crash-loop guard keyed on
/// job progress); with `--min-workers 3` the job failed. Both are replaced now, and every
/// step's loss equals one uninterrupted process's.
#[test]
fn two_workers_killed_at_once_are_both_replaced() {
    let (d, job, reference) = job_and_reference(30);
    let mut run = Running::start(&["train", &job, "--workers", "3", "--min-workers", "3"]);
    run.wait_for_log(d.path(), 6, Duration::from_secs(180));
    let pids = run.rank_pids();
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(Command::new("kill").args(["-KILL", &pids[1], &pids[2]]).status().unwrap().success());
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(300));
    assert!(status.success(), "{stderr}");
    assert_eq!(stderr.matches("replacing lost worker#").count(), 2, "{stderr}");
    assert_eq!(generation_worlds(d.path()).last(), Some(&3), "{stderr}");
    assert_matches(&final_losses(d.path()), &reference);
    assert_gone(&pids);
}

/// Defect 1: a global batch that does not split evenly over the ranks (5 samples on 2 ranks)
/// made the ranks call different collectives and every generation failed at its first step.
/// The ranks with fewer micro-batches now make idle passes; the losses equal one process's.
#[test]
fn a_global_batch_that_does_not_split_evenly_trains_like_one_process() {
    let one = tempfile::tempdir().unwrap();
    let job = write_job(one.path(), 6, "micro_batch_size = 1");
    let text = std::fs::read_to_string(&job).unwrap().replace("global_batch_size = 2", "global_batch_size = 5");
    std::fs::write(&job, &text).unwrap();
    let out = tessera(&["train", &job]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = losses_of(one.path());
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("job.toml"), &text).unwrap();
    let job = d.path().join("job.toml").display().to_string();
    let (status, stderr, _) = Running::start(&["train", &job, "--workers", "2"]).wait_exit(Duration::from_secs(180));
    assert!(status.success(), "{stderr}");
    assert_eq!(generation_worlds(d.path()), vec![2], "{stderr}");
    assert_matches(&final_losses(d.path()), &reference);
}

/// Defect 5: a committed checkpoint found corrupt during a run (a truncated shard of the newest
/// one, then a worker lost) was retried by every new generation until the job failed, although
/// the one before verifies. The coordinator now verifies it when a generation cannot restore
/// it, forgets it and restores the one before; every step's loss equals one process's.
#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_one_before_in_run() {
    let (d, job, reference) = job_and_reference(16);
    let text = std::fs::read_to_string(&job).unwrap().replace("every_steps = 2", "every_steps = 3");
    std::fs::write(&job, text).unwrap();
    let mut run = Running::start(&["train", &job, "--workers", "2"]);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !events(d.path()).iter().any(|e| e["type"] == "checkpoint_committed" && e["step"] == 6) {
        assert!(Instant::now() < deadline, "no checkpoint of step 6");
        assert!(run.child.try_wait().unwrap().is_none(), "the job ended early: {}", run.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Freeze the ranks (no further checkpoint), damage the newest one, lose a rank.
    let pids = run.rank_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for p in &pids {
        signal("-STOP", p);
    }
    let ckpt = d.path().join("out/checkpoints/step-00000006");
    let shard =
        std::fs::read_dir(&ckpt).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "safetensors")).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&shard).unwrap();
    f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    drop(f);
    signal("-KILL", &pids[1]);
    signal("-CONT", &pids[0]);
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(240));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("step-00000006 is bad") && stderr.contains("falling back to the one before"), "{stderr}");
    let restores: Vec<serde_json::Value> =
        events(d.path()).iter().filter(|e| e["type"] == "generation_started").map(|e| e["restore"].clone()).collect();
    let bad = restores.iter().position(|r| r == 6).expect("a generation tried step 6");
    assert_eq!(restores[bad + 1], 3, "the next one restores step 3: {restores:?}");
    assert_eq!(restores.iter().filter(|r| **r == 6).count(), 1, "step 6 is tried once: {restores:?}");
    assert_matches(&final_losses(d.path()), &reference);
}

/// Also from issue 21: a coordinator that crashed leaves `coordinator.json` behind, and job
/// commands answered a bare "Connection refused"; they now say the job is not running.
#[test]
fn a_stale_coordinator_file_says_the_job_is_not_running() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    std::fs::create_dir_all(out.join(".tessera")).unwrap();
    std::fs::write(out.join(".tessera/token"), "t0ken").unwrap();
    // A pid that existed and is gone (reaped).
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let endpoint = serde_json::json!({"node": "127.0.0.1:9", "api": "127.0.0.1:9", "pid": pid, "secrets": out.join(".tessera")});
    std::fs::write(out.join("coordinator.json"), endpoint.to_string()).unwrap();
    let status = tessera(&["status", "--job-dir", &out.display().to_string()]);
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success(), "{err}");
    assert!(err.contains("is not running") && err.contains(&format!("pid {pid}")) && err.contains("stale"), "{err}");
    assert!(!err.contains("Connection refused"), "{err}");
}

/// Also from issue 21: a worker removed for missing heartbeats (stopped, then continued) exited
/// 0, so whatever supervised it saw a clean exit; it now fails, saying it was removed as lost.
#[test]
fn a_worker_removed_as_lost_exits_with_a_failure() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "");
    let mut run = Running::start(&["train", &job, "--workers", "1", "--fsdp", "--max-workers", "2", "--heartbeat-timeout-ms", "2000"]);
    run.wait_for_log(d.path(), 1, Duration::from_secs(120));
    let out_dir = d.path().join("out").display().to_string();
    let mut joined = Running::start(&["worker", "--job-dir", &out_dir]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log_lines(d.path()).iter().any(|l| l["world_size"] == 2) {
        assert!(Instant::now() < deadline, "the joined worker never trained");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = joined.child.id().to_string();
    signal("-STOP", &pid);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !events(d.path()).iter().any(|e| e["type"] == "worker_removed" && e["reason"].as_str().is_some_and(|r| r.contains("heartbeat"))) {
        assert!(Instant::now() < deadline, "the stopped worker was not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal("-CONT", &pid);
    let (status, stderr, _) = joined.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("removed from the job as lost"), "{stderr}");
    signal("-TERM", &run.child.id().to_string());
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
}
