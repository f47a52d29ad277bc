//! The orchestrator end to end, with real processes on loopback: a worker joining mid-run and a
//! drain by `tessera scale`, SIGTERM of the coordinator and a restart, a worker dying while it
//! writes a checkpoint, and a checkpoint corrupted on disk. Losses are compared with one
//! uninterrupted process: FSDP losses do not depend on the world size, so any skipped or
//! repeated sample would show.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn generations(dir: &std::path::Path) -> Vec<serde_json::Value> {
    events(dir).into_iter().filter(|e| e["type"] == "generation_started").collect()
}

#[test]
fn a_joining_worker_is_used_from_the_next_generation_and_a_drain_loses_no_step() {
    // Enough steps that the scale request below lands before the job ends on a loaded machine
    // (with 10, CI once finished on three ranks before the drain).
    let (d, job, reference) = job_and_reference(40);
    let mut run = Running::start(&["train", &job, "--workers", "2", "--max-workers", "3"]);
    run.wait_for_log(d.path(), 2, Duration::from_secs(180));
    let out_dir = d.path().join("out").display().to_string();
    let mut joined = Running::start(&["worker", "--job-dir", &out_dir]);
    // Wait until a step ran on three ranks, then drain back to two.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !log_lines(d.path()).iter().any(|l| l["world_size"] == 3) {
        assert!(std::time::Instant::now() < deadline, "no step on 3 workers: {:?}", generations(d.path()));
        assert!(run.child.try_wait().unwrap().is_none(), "the job ended early: {}", run.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let scale = tessera(&["scale", "--job-dir", &out_dir, "--workers", "2"]);
    assert!(scale.status.success(), "{}", String::from_utf8_lossy(&scale.stderr));
    // The live job answers `status`: running, or already stopping its generation for the resize
    // just asked for, or between that generation and the next.
    let status = tessera(&["status", "--job-dir", &out_dir]);
    let table = String::from_utf8_lossy(&status.stdout);
    let phase = table.lines().find_map(|l| l.strip_prefix("phase")).map(str::trim);
    assert!(
        status.status.success() && table.contains("cli-train") && matches!(phase, Some("running" | "stopping" | "waiting")),
        "{table}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(240));
    assert!(status.success(), "{stderr}");
    let _ = joined.wait_exit(Duration::from_secs(30));
    let worlds = generation_worlds(d.path());
    assert!(worlds.starts_with(&[2, 3]) && worlds.last() == Some(&2), "generations: {worlds:?}");
    // A resize redoes no step: each generation restores the checkpoint its predecessor wrote
    // at the boundary where it stopped.
    let steps: Vec<u64> = log_lines(d.path()).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (0..40).collect::<Vec<u64>>(), "every step trained once");
    let got = final_losses(d.path());
    assert!(got.values().any(|(_, w)| *w == 3), "{got:?}");
    assert_matches(&got, &reference);
}

#[test]
fn sigterm_checkpoints_and_a_restart_resumes_at_the_same_step() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 1000, "");
    // No periodic checkpoint: the only one is the stop's, at the boundary after the signal.
    let text = std::fs::read_to_string(&job).unwrap().replace("every_steps = 2", "every_steps = 0");
    std::fs::write(&job, text).unwrap();
    let mut run = Running::start(&["train", &job, "--workers", "2"]);
    run.wait_for_log(d.path(), 3, Duration::from_secs(180));
    assert!(Command::new("kill").args(["-TERM", &run.child.id().to_string()]).status().unwrap().success());
    let (status, stderr, took) = run.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    let committed: Vec<u64> =
        events(d.path()).iter().filter(|e| e["type"] == "checkpoint_committed").map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(committed.len(), 1, "{committed:?}");
    let last = committed[0];
    // Every step trained before the stop is in it: the ranks report the boundary checkpoint
    // written before they report the generation ended.
    let trained = log_lines(d.path()).len() as u64;
    assert_eq!(last, trained, "{stderr}");
    assert!(stderr.contains(&format!("stopped at step {last}")), "{stderr}");
    assert!(took < Duration::from_secs(30), "stopping took {took:?}");
    let out = tessera(&["train", &job, "--workers", "2", "--max-steps", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains(&format!("start step {last}, restore")), "{err}");
    let steps: Vec<u64> = log_lines(d.path()).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps.last(), Some(&last), "the restart trains step {last} next: {steps:?}");
    // The embedded workers wrote their lines to the job's per-worker logs too, as pool workers
    // do (`tessera logs` of cluster mode reads these files), named after their id.
    let logs: Vec<std::path::PathBuf> = std::fs::read_dir(d.path().join("out/logs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(logs.len() >= 2, "{logs:?}");
    for path in &logs {
        let name = path.file_stem().unwrap().to_str().unwrap();
        assert!(name.starts_with("worker-") && path.extension().is_some_and(|e| e == "jsonl"), "{path:?}");
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.iter().all(|l| l["worker"] == name && l["ts_ms"].is_u64()), "{path:?}: {lines:?}");
        assert!(lines.iter().any(|l| l["rank"].is_u64() && l["generation"].is_u64()), "{path:?}: a line printed as a rank");
    }
    // `tessera logs --job-dir` reads them: every line once, merged by time; `--rank 1` only
    // rank 1's.
    let out_dir = d.path().join("out").display().to_string();
    let in_files: usize = logs.iter().map(|p| std::fs::read_to_string(p).unwrap().lines().count()).sum();
    let shown = tessera(&["logs", "--job-dir", &out_dir, "--json"]);
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let shown: Vec<serde_json::Value> = String::from_utf8_lossy(&shown.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(shown.len(), in_files);
    assert!(shown.windows(2).all(|w| w[0]["ts_ms"].as_u64() <= w[1]["ts_ms"].as_u64()), "merged by time");
    let rank1 = String::from_utf8(tessera(&["logs", "--job-dir", &out_dir, "--rank", "1"]).stdout).unwrap();
    assert!(!rank1.is_empty() && rank1.lines().all(|l| l.contains(" r1 ")), "{rank1}");
}

/// A worker process killed with SIGKILL is replaced by a new local process: the survivor goes
/// on at once in a smaller generation, and the replacement joins at a checkpointed boundary;
/// the losses are those of an uninterrupted process.
#[test]
fn a_killed_worker_process_is_replaced() {
    let (d, job, reference) = job_and_reference(40);
    let mut run = Running::start(&["train", &job, "--workers", "2"]);
    run.wait_for_log(d.path(), 2, Duration::from_secs(180));
    let pids = run.rank_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    signal("-KILL", &pids[1]);
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(240));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("replacing lost worker#") && stderr.contains(": started process"), "{stderr}");
    let worlds = generation_worlds(d.path());
    assert!(worlds.starts_with(&[2, 1]) && worlds.last() == Some(&2), "generations: {worlds:?}\n{stderr}");
    assert_matches(&final_losses(d.path()), &reference);
    // The job has ended: `tessera logs --job-dir --follow` prints its lines and exits.
    let out_dir = d.path().join("out").display().to_string();
    let mut follow =
        Command::new(bin()).args(["logs", "--job-dir", &out_dir, "--follow"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while follow.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = follow.kill();
            panic!("tessera logs --follow did not end with the ended job");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let followed = follow.wait_with_output().unwrap();
    assert!(followed.status.success() && !followed.stdout.is_empty());
}

/// A worker interrupted with SIGTERM (a preemption notice) asks to be drained: the generation
/// ends at a checkpointed boundary, the next one goes on without it from that checkpoint, and
/// no step is trained twice; the worker process exits.
#[test]
fn an_interrupted_worker_is_drained_without_a_rollback() {
    let (d, job, reference) = job_and_reference(40);
    let mut run = Running::start(&["train", &job, "--workers", "3"]);
    run.wait_for_log(d.path(), 2, Duration::from_secs(180));
    let pids = run.rank_pids();
    assert_eq!(pids.len(), 3, "{pids:?}");
    signal("-TERM", &pids[2]);
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(240));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("asks to leave (interrupted): draining it"), "{stderr}");
    assert!(!stderr.contains("abort"), "{stderr}");
    let worlds = generation_worlds(d.path());
    assert_eq!(worlds, vec![3, 2], "{stderr}");
    let steps: Vec<u64> = log_lines(d.path()).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (0..40).collect::<Vec<u64>>(), "every step trained once");
    assert_matches(&final_losses(d.path()), &reference);
    assert_gone(&pids);
}

/// The coordinator stopped (SIGSTOP) for longer than the heartbeat timeout, then continued:
/// the workers' heartbeats of that time were only queued, so it removes nobody and the job goes
/// on in the same generation.
#[test]
fn a_paused_coordinator_keeps_its_workers() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "");
    let mut run = Running::start(&["train", &job, "--workers", "2", "--heartbeat-timeout-ms", "2000"]);
    run.wait_for_log(d.path(), 2, Duration::from_secs(180));
    let pid = run.child.id().to_string();
    signal("-STOP", &pid);
    std::thread::sleep(Duration::from_secs(5));
    signal("-CONT", &pid);
    let logged = log_lines(d.path()).len();
    run.wait_for_log(d.path(), logged + 3, Duration::from_secs(120));
    signal("-TERM", &pid);
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("the coordinator was not running for"), "{stderr}");
    assert!(!stderr.contains("removed"), "{stderr}");
    assert_eq!(generations(d.path()).len(), 1, "{stderr}");
}

#[test]
fn a_checkpoint_whose_writer_dies_is_never_committed_and_a_corrupt_one_is_skipped() {
    let (d, job, reference) = job_and_reference(8);
    // Rank 1 dies half-way through writing its shard of step 4.
    let mut run = Running::start_with(&["train", &job, "--workers", "2"], &[("TESSERA_FAULT_ABORT_IN_SHARD_WRITE", "4:1")]);
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(300));
    assert!(status.success(), "{stderr}");
    let ev = events(d.path());
    let g1 = ev.iter().position(|e| e["type"] == "generation_started" && e["generation"] == 1).expect("a second generation");
    assert!(
        !ev[..g1].iter().any(|e| e["type"] == "checkpoint_committed" && e["step"] == 4),
        "the checkpoint of step 4 was committed although a shard writer died: {ev:?}"
    );
    assert_eq!(ev[g1]["restore"], 2, "recovery restores the previous checkpoint: {:?}", ev[g1]);
    assert_matches(&final_losses(d.path()), &reference);

    // Corrupt the newest checkpoint on disk: a restart skips it (checksum) and resumes from the
    // one before; the steps after it are trained again with the same losses.
    let ckpt = d.path().join("out/checkpoints/step-00000008");
    let shard =
        std::fs::read_dir(&ckpt).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "safetensors")).unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let out = tessera(&["train", &job, "--workers", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("not resuming from") && err.contains("step-00000008") && err.contains("start step 6, restore"), "{err}");
    assert_matches(&final_losses(d.path()), &reference);
}

/// Slows process `pid` down by SIGSTOP/SIGCONT pulses (it may run 5 ms in every 105 ms) until
/// `stop` is set or the process is gone; leaves it continued.
fn pulse(pid: i32, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if kill(Pid::from_raw(pid), Signal::SIGSTOP).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
            if kill(Pid::from_raw(pid), Signal::SIGCONT).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// One rank of three slowed on purpose (SIGSTOP/SIGCONT pulses): every rank's step takes as
/// long, but its own time (data and compute, not waiting in collectives) is several times the
/// others', so rule 8 flags it within `[stragglers] steps` of its slow steps, `tessera status`
/// marks it, and with `drain = true` it leaves at a checkpointed boundary where a new process
/// replaces it (one generation restart). No step is lost or trained twice: the losses are an
/// uninterrupted process's.
#[test]
fn a_slowed_rank_is_flagged_as_a_straggler_drained_and_replaced() {
    const K: u64 = 5;
    let (d, job, reference) = job_and_reference(40);
    let text = std::fs::read_to_string(&job).unwrap() + &format!("\n[stragglers]\ndrain = true\nsteps = {K}\n");
    std::fs::write(&job, text).unwrap();
    let mut run = Running::start(&["train", &job, "--workers", "3"]);
    run.wait_for_log(d.path(), 3, Duration::from_secs(180));
    let pids = run.rank_pids();
    assert_eq!(pids.len(), 3, "{pids:?}");
    let slow: i32 = pids[1].parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (slowed_ms, slowed_at) = (unix_ms(), log_lines(d.path()).len() as u64);
    let pulser = pulse(slow, stop.clone());
    let out_dir = d.path().join("out").display().to_string();
    // While it is flagged (before it leaves) the status marks it.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let marked = loop {
        assert!(std::time::Instant::now() < deadline, "never marked a straggler: {:?}", events(d.path()));
        assert!(run.child.try_wait().unwrap().is_none(), "the job ended early");
        let status = tessera(&["status", "--job-dir", &out_dir]);
        let table = String::from_utf8_lossy(&status.stdout).to_string();
        if let Some(row) = table.lines().find(|l| l.split_whitespace().last() == Some("yes") && l.starts_with(char::is_numeric)) {
            break row.to_string();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pulser.join().unwrap();
    assert!(status.success(), "{stderr}");
    let ev = events(d.path());
    let flagged: Vec<&serde_json::Value> = ev.iter().filter(|e| e["type"] == "straggler_flagged").collect();
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    let worker = flagged[0]["worker"].as_u64().unwrap();
    assert!(
        stderr.contains(&format!("worker#{worker} joined: pid {slow},")),
        "the slowed process is the one flagged: {flagged:?}\n{stderr}"
    );
    assert_eq!(flagged[0]["drain"], true);
    assert_eq!(marked.split_whitespace().next(), Some(worker.to_string().as_str()), "status row: {marked}");
    // Flagged after K slow steps in a row; the step running when the pulses began may be fast.
    let at = flagged[0]["step"].as_u64().unwrap();
    assert!(at + 1 >= slowed_at + K && at < slowed_at + K + 2, "flagged at step {at}; slowed from step {slowed_at}, K = {K}");
    let removed = ev
        .iter()
        .find(|e| e["type"] == "worker_removed" && e["worker"] == worker)
        .unwrap_or_else(|| panic!("the straggler was not removed: {ev:?}"));
    assert!(removed["reason"].as_str().unwrap().starts_with("drained: straggler"), "{removed}");
    assert!(stderr.contains(&format!("replacing lost worker#{worker}: started process")), "{stderr}");
    let worlds = generation_worlds(d.path());
    // Rule 9: the straggler leaves and its successor joins at the same boundary, so one
    // generation restart, not two (drain, then admit).
    assert_eq!(worlds, [3, 3], "generations");
    let steps: Vec<u64> = log_lines(d.path()).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (0..40).collect::<Vec<u64>>(), "a drain redoes no step");
    assert_matches(&final_losses(d.path()), &reference);
    // The figures the issue asks for (wall clock, printed, not asserted).
    let ts = |e: &serde_json::Value| -> u64 {
        let text = std::fs::read_to_string(d.path().join("out/events.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|l| &l["event"] == e).unwrap()["ts_ms"]
            .as_u64()
            .unwrap()
    };
    eprintln!(
        "straggler: slowed at step {slowed_at}, flagged at step {at} after {} ms, drained after {} ms",
        ts(flagged[0]) - slowed_ms,
        ts(removed) - slowed_ms
    );
}
