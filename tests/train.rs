//! `tessera train` end to end: resume across invocations, SIGTERM checkpoints, config errors.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn stops_and_resumes_where_it_left_off() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 5, "");
    let out = tessera(&["train", &job, "--max-steps", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(d.path().join("out/checkpoints/step-00000003/manifest.json").is_file());
    let out = tessera(&["train", &job]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resumed from") && err.contains("step 3"), "{err}");
    let steps: Vec<u64> = log_lines(d.path()).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4], "every step logged exactly once");
    // keep_last = 2: step 5 (final) and step 4 remain.
    let mut kept: Vec<String> = std::fs::read_dir(d.path().join("out/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-00000004", "step-00000005"]);
}

#[test]
fn sigterm_checkpoints_then_exits_and_the_next_run_resumes() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "");
    let mut run = Running::start(&["train", &job]);
    run.wait_for_log(d.path(), 3, Duration::from_secs(120));
    assert!(Command::new("kill").args(["-TERM", &run.child.id().to_string()]).status().unwrap().success());
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("interrupted: checkpoint"), "{stderr}");
    let logged = log_lines(d.path()).len() as u64;
    let out = tessera(&["train", &job, "--max-steps", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("at step {logged}")), "checkpoint should hold every logged step ({logged}): {err}");
}

#[test]
fn config_errors_name_file_and_field() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 5, "learning_rate = 3.0");
    let out = tessera(&["train", &job]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job.toml") && err.contains("learning_rate"), "{err}");

    let job = write_job(d.path(), 5, "clip_grad = -1.0");
    let err = String::from_utf8_lossy(&tessera(&["config", "check", &job]).stderr).into_owned();
    assert!(err.contains("job.toml") && err.contains("train.clip_grad"), "{err}");
}

/// Two and three local worker processes (FSDP over the TCP ring) log the same losses as one
/// process, step by step.
#[test]
fn workers_train_like_one_process() {
    let one = tempfile::tempdir().unwrap();
    let job = write_job(one.path(), 4, "micro_batch_size = 1");
    std::fs::write(
        one.path().join("job.toml"),
        std::fs::read_to_string(one.path().join("job.toml")).unwrap().replace("global_batch_size = 2", "global_batch_size = 6"),
    )
    .unwrap();
    let out = tessera(&["train", &job, "--no-resume"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = losses_of(one.path());
    assert_eq!(reference.len(), 4);
    for workers in ["2", "3"] {
        let d = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(one.path().join("job.toml")).unwrap();
        std::fs::write(d.path().join("job.toml"), text).unwrap();
        let job = d.path().join("job.toml").display().to_string();
        let out = tessera(&["train", &job, "--workers", workers]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got = losses_of(d.path());
        assert_eq!(got.len(), 4, "{workers} workers");
        for (s, (a, b)) in got.iter().zip(&reference).enumerate() {
            assert!((a - b).abs() / b.abs() < 1e-6, "{workers} workers, step {s}: {a} vs {b}");
        }
    }
    // Resize between invocations: 3 workers stop after 2 steps (sharded checkpoint), 2 workers
    // resume from it and finish; the losses are still those of one process.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("job.toml"), std::fs::read_to_string(one.path().join("job.toml")).unwrap()).unwrap();
    let job = d.path().join("job.toml").display().to_string();
    let out = tessera(&["train", &job, "--workers", "3", "--max-steps", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tessera(&["train", &job, "--workers", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("start step 2, restore"), "{err}");
    let got = losses_of(d.path());
    assert_eq!(got.len(), 4);
    for (s, (a, b)) in got.iter().zip(&reference).enumerate() {
        assert!((a - b).abs() / b.abs() < 1e-6, "resized run, step {s}: {a} vs {b}");
    }
}

/// A rank stopped with SIGSTOP mid-run: the other rank's collective times out after the job's
/// `collective_timeout_s`, the stopped rank is removed (its process killed) and replaced, and
/// the job trains on in a new generation; nobody hangs.
#[test]
fn a_stopped_rank_is_detected_within_the_deadline() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "collective_timeout_s = 3");
    let mut run = Running::start(&["train", &job, "--workers", "2", "--min-workers", "2"]);
    run.wait_for_log(d.path(), 2, Duration::from_secs(120));
    let pids = run.rank_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    signal("-STOP", &pids[1]);
    let stopped = Instant::now();
    while !log_lines(d.path()).iter().any(|l| l["generation"].as_u64().is_some_and(|g| g > 0)) {
        assert!(stopped.elapsed() < Duration::from_secs(60), "no step of a new generation within 60 s");
        assert!(run.child.try_wait().unwrap().is_none(), "the job ended: {}", run.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Detection by the 3 s collective deadline (or the 5 s heartbeat), a replacement process
    // starting and joining, and the restore.
    let took = stopped.elapsed();
    eprintln!("SIGSTOP -> first step of the next generation: {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(!alive(&pids[1]), "the stopped rank was killed");
    signal("-TERM", &run.child.id().to_string());
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("replacing lost worker#") && stderr.contains(": started process"), "{stderr}");
    assert_gone(&pids);
}

/// A rank killed with SIGKILL mid-run is replaced by a new local process; when the replacement
/// dies too before it joins, no other is started: below `--min-workers` the job fails naming
/// the cause, and no worker process is left behind.
#[test]
fn a_killed_rank_stops_the_job_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "");
    let mut run = Running::start(&["train", &job, "--workers", "2", "--min-workers", "2"]);
    run.wait_for_log(d.path(), 2, Duration::from_secs(120));
    let mut pids = run.rank_pids();
    assert_eq!(pids.len(), 2, "two rank processes: {pids:?}");
    signal("-KILL", &pids[1]);
    // The replacement cannot train alone (min 2): kill it as soon as it exists.
    let deadline = Instant::now() + Duration::from_secs(60);
    let replacement = loop {
        if let Some(p) = run.rank_pids().into_iter().find(|p| !pids.contains(p)) {
            break p;
        }
        assert!(Instant::now() < deadline, "no replacement started");
        std::thread::sleep(Duration::from_millis(10));
    };
    signal("-KILL", &replacement);
    pids.push(replacement);
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    assert!(stderr.contains("replacing lost worker#") && stderr.contains(": started process"), "{stderr}");
    assert!(stderr.contains("job failed") && stderr.contains("1 workers left"), "{stderr}");
    assert_gone(&pids);
}

/// The coordinator killed with SIGKILL (it cannot release anyone): its worker processes see
/// the link drop and exit on their own within seconds instead of training on.
#[test]
fn workers_exit_when_the_coordinator_is_killed() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "");
    let mut run = Running::start(&["train", &job, "--workers", "2"]);
    run.wait_for_log(d.path(), 2, Duration::from_secs(120));
    let pids = run.rank_pids();
    assert_eq!(pids.len(), 2, "two worker processes: {pids:?}");
    let _reap = KillOnDrop(pids.clone());
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|p| alive(p)) {
        assert!(Instant::now() < deadline, "workers still running 30 s after their coordinator died: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checkpoints move between one process and several: 1 worker for a step, 2 workers for two,
/// then 1 worker to the end; the losses are those of an uninterrupted single process.
#[test]
fn checkpoints_move_between_one_and_many_workers() {
    let one = tempfile::tempdir().unwrap();
    let job = write_job(one.path(), 4, "micro_batch_size = 2");
    let text = std::fs::read_to_string(&job).unwrap().replace("global_batch_size = 2", "global_batch_size = 4");
    std::fs::write(&job, &text).unwrap();
    assert!(tessera(&["train", &job]).status.success());
    let reference = losses_of(one.path());

    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("job.toml"), &text).unwrap();
    let job = d.path().join("job.toml").display().to_string();
    for args in [vec!["--max-steps", "1"], vec!["--workers", "2", "--max-steps", "2"], vec![]] {
        let mut all = vec!["train", job.as_str()];
        all.extend(args.iter().copied());
        let out = tessera(&all);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let got = losses_of(d.path());
    assert_eq!(got.len(), 4);
    for (s, (a, b)) in got.iter().zip(&reference).enumerate() {
        assert!((a - b).abs() / b.abs() < 1e-6, "step {s}: {a} vs {b}");
    }
}

/// kill -9 of a worker mid-run: the job continues on the remaining workers from the last
/// committed checkpoint without intervention, and every step's final loss equals that of an
/// uninterrupted one-process run (FSDP losses do not depend on the world size). Validations
/// (every 2 steps, 5 held-out batches over 3 and then 2 ranks) have one process's scores and
/// are logged once per step (if the kill lands between a validation and the next commit, the
/// rollback scores that step again).
#[test]
fn a_killed_worker_is_replaced_by_a_smaller_generation() {
    let one = tempfile::tempdir().unwrap();
    let job = write_job(one.path(), 8, "micro_batch_size = 1");
    let eval = "\n[eval]\nevery_steps = 2\nsamples = 5\nbaseline_samples = 4\n";
    let text = std::fs::read_to_string(&job).unwrap().replace("global_batch_size = 2", "global_batch_size = 6") + eval;
    std::fs::write(&job, &text).unwrap();
    assert!(tessera(&["train", &job]).status.success());
    let reference = losses_of(one.path());
    assert_eq!(reference.len(), 8);

    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("job.toml"), &text).unwrap();
    let job = d.path().join("job.toml").display().to_string();
    let mut run = Running::start(&["train", &job, "--workers", "3"]);
    run.wait_for_log(d.path(), 3, Duration::from_secs(240));
    let pids = run.rank_pids();
    assert_eq!(pids.len(), 3, "{pids:?}");
    let logged = log_lines(d.path()).len();
    assert!(Command::new("kill").args(["-KILL", &pids[2]]).status().unwrap().success());
    let killed = Instant::now();
    run.wait_for_log(d.path(), logged + 1, Duration::from_secs(120));
    eprintln!("recovery: kill -> first step of the new generation logged in {:?}", killed.elapsed());
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(240));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("generation 1: 2 ranks"), "{stderr}");
    // The last entry of each step is the one that counts (rolled-back steps are redone).
    let mut last = std::collections::BTreeMap::new();
    for l in log_lines(d.path()) {
        last.insert(l["step"].as_u64().unwrap(), (l["loss"].as_f64().unwrap(), l["world_size"].as_u64().unwrap()));
    }
    assert_eq!(last.len(), 8);
    assert!(last.values().any(|(_, w)| *w == 2) && last.values().any(|(_, w)| *w == 3));
    for (s, (l, _)) in &last {
        let r = reference[*s as usize];
        assert!((l - r).abs() / r.abs() < 1e-6, "step {s}: {l} vs {r}");
    }
    let evals = |dir: &std::path::Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(dir.join("out/eval_log.jsonl")).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (want, got) = (evals(one.path()), evals(d.path()));
    let steps = |v: &[serde_json::Value]| v.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(steps(&want), vec![2, 4, 6, 8]);
    assert_eq!(steps(&got), vec![2, 4, 6, 8], "each validation step once, in order");
    for (a, b) in want.iter().zip(&got) {
        for (m, ea) in a["modalities"].as_object().unwrap() {
            let eb = &b["modalities"][m];
            assert_eq!((&ea["tokens"], &ea["unigram"]), (&eb["tokens"], &eb["unigram"]), "step {}: {m}", a["step"]);
            let (la, lb) = (ea["loss"].as_f64().unwrap(), eb["loss"].as_f64().unwrap());
            assert!((la - lb).abs() / la.abs() < 1e-5, "step {}: {m}: one process {la}, workers {lb}", a["step"]);
        }
    }
}

/// `[eval]`: a fixed held-out set is scored every K steps and at the end, beside the unigram
/// baseline, into eval_log.jsonl.
#[test]
fn periodic_validation_with_a_unigram_baseline() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 4, "");
    let text = std::fs::read_to_string(&job).unwrap() + "\n[eval]\nevery_steps = 2\nsamples = 6\nbaseline_samples = 8\n";
    std::fs::write(&job, text).unwrap();
    let out = tessera(&["train", &job]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("validation at step 2") && err.contains("unigram"), "{err}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(d.path().join("out/eval_log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 4]);
    for l in &lines {
        let mods = l["modalities"].as_object().unwrap();
        assert!(!mods.is_empty());
        for (m, e) in mods {
            assert!(e["loss"].as_f64().unwrap() > 0.0 && e["tokens"].as_u64().unwrap() > 0, "{m}: {e}");
            assert!(e["unigram"].as_f64().is_some(), "{m}: {e}");
        }
    }
}

/// `[eval]` with workers: the ranks score the held-out set together (forward only, each on its
/// share of the held-out batches, several batches per unit gather) at every validation step,
/// with exactly one process's scores, on 2 and on 3 workers.
/// 7 held-out batches: the shares (4/3, 3/2/2) are uneven, and so are the ranks' groups.
#[test]
fn periodic_validation_of_a_multi_worker_run_scores_like_one_process() {
    let eval = "\n[eval]\nevery_steps = 3\nsamples = 7\nbaseline_samples = 8\n";
    let run = |workers: &[&str]| {
        let d = tempfile::tempdir().unwrap();
        // A learning rate that moves the model between validations (the default is ~1e-6 here):
        // scoring stale parameters would show.
        // Ranks that disagree on the collectives to call would wait for each other until the
        // collective timeout: a short one makes such a bug fail fast.
        let job = write_job(d.path(), 6, "micro_batch_size = 1\nlr = 0.01\ncollective_timeout_s = 30");
        let text = std::fs::read_to_string(&job).unwrap().replace("global_batch_size = 2", "global_batch_size = 6");
        std::fs::write(&job, text + eval).unwrap();
        let out = tessera(&[&["train", job.as_str()][..], workers].concat());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let log = std::fs::read_to_string(d.path().join("out/eval_log.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (d, lines, err)
    };
    let (_one_dir, one, _) = run(&[]);
    let (many_dir, many, err) = run(&["--workers", "2"]);
    let (_three_dir, three, three_err) = run(&["--workers", "3"]);
    // The workers' stderr reaches the launcher's (through the coordinator's console), to the
    // last line: told that the job is done, each exits on its own, before any signal.
    for w in ["[worker#0] welcomed: ", "[worker#1] welcomed: ", "[worker#0] exit: the job is done", "[worker#1] exit: the job is done"] {
        assert!(err.lines().any(|l| l.starts_with(w)), "no line {w:?} in:\n{err}");
    }
    assert!(err.contains("validation at step 3 (7 samples, "), "{err}");
    assert!(three_err.contains("validation at step 6 (7 samples, "), "{three_err}");
    let steps = |v: &[serde_json::Value]| v.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(steps(&one), vec![3, 6]);
    assert_eq!(steps(&many), vec![3, 6], "each validation step once, in order");
    assert_eq!(steps(&three), vec![3, 6]);
    let caption = |v: &serde_json::Value| v["modalities"]["caption"]["loss"].as_f64().unwrap();
    assert!((caption(&one[0]) - caption(&one[1])).abs() > 1e-3, "the model moved between validations: {one:?}");
    for (a, b) in one.iter().flat_map(|a| [a, a]).zip(many.iter().zip(&three).flat_map(|(m, b)| [m, b])) {
        let (a, b) = (a["modalities"].as_object().unwrap(), b["modalities"].as_object().unwrap());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (m, ea) in a {
            let eb = &b[m];
            assert_eq!(ea["tokens"], eb["tokens"], "{m}");
            // The baseline's per-batch sums travel bit for bit and are added in batch order.
            assert_eq!(ea["unigram"], eb["unigram"], "{m}: the same baseline");
            let (la, lb) = (ea["loss"].as_f64().unwrap(), eb["loss"].as_f64().unwrap());
            assert!((la - lb).abs() / la.abs() < 1e-5, "{m}: one process {la}, workers {lb}");
        }
    }
    // The ranks validate in place: no checkpoint off the interval (2) for it, and the job's
    // event log records each validation.
    let ev = events(many_dir.path());
    let committed: Vec<u64> = ev.iter().filter(|e| e["type"] == "checkpoint_committed").map(|e| e["step"].as_u64().unwrap()).collect();
    assert!(!committed.contains(&3), "committed: {committed:?}");
    let validated: Vec<u64> = ev.iter().filter(|e| e["type"] == "validated").map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(validated, vec![3, 6]);
}

/// `tessera export` writes the weights of a multi-worker checkpoint as one ml-4m-compatible
/// file, equal to the export of a one-process run of the same steps (which writes the same
/// format, as a world of one).
#[test]
fn export_consolidates_a_sharded_checkpoint() {
    let one = tempfile::tempdir().unwrap();
    let job1 = write_job(one.path(), 2, "");
    assert!(tessera(&["train", &job1]).status.success());
    assert!(one.path().join("out/checkpoints/step-00000002/rank-00000-of-00001.safetensors").is_file(), "one process is a world of one");
    let single = one.path().join("single.safetensors");
    let step2 = one.path().join("out/checkpoints/step-00000002").display().to_string();
    let out = tessera(&["export", &job1, "--out", &single.display().to_string(), "--checkpoint", &step2]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let many = tempfile::tempdir().unwrap();
    let job2 = write_job(many.path(), 2, "");
    assert!(tessera(&["train", &job2, "--workers", "2"]).status.success());
    assert!(!many.path().join("out/checkpoints/step-00000002/model.safetensors").exists(), "sharded checkpoints hold shards");
    let exported = many.path().join("model.safetensors");
    let out = tessera(&["export", &job2, "--out", &exported.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (a, _) = tessera_model::io::read(&single).unwrap();
    let (b, _) = tessera_model::io::read(&exported).unwrap();
    let b: std::collections::BTreeMap<String, tch::Tensor> = b.into_iter().collect();
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let u = &b[name];
        let diff = (t - u).norm().double_value(&[]);
        let scale = t.norm().double_value(&[]).max(1e-6);
        assert!(diff / scale < 1e-5, "{name}: relative difference {}", diff / scale);
    }
}

/// `write_job` (with `extra` in `[train]`) over a text corpus of 40 short documents
/// (`train.jsonl`) instead of the synthetic dataset, with `val.jsonl` holding `val` as its
/// held-out split when given, and `eval` appended; returns the job and the corpus lines.
fn text_corpus_job(dir: &std::path::Path, total_steps: u64, extra: &str, val: Option<&str>, eval: &str) -> (String, Vec<String>) {
    let job = write_job(dir, total_steps, extra);
    let lines: Vec<String> =
        (0..40).map(|i| serde_json::json!({ "text": format!("document {i}: a red dog near a blue house") }).to_string()).collect();
    std::fs::write(dir.join("train.jsonl"), lines.join("\n") + "\n").unwrap();
    let mut dataset = "name = \"corpus\"\nkind = \"text\"\npath = \"train.jsonl\"".to_string();
    if let Some(val) = val {
        std::fs::write(dir.join("val.jsonl"), val).unwrap();
        dataset.push_str("\nval_path = \"val.jsonl\"");
    }
    let text = std::fs::read_to_string(&job).unwrap().replace("name = \"syn\"\nkind = \"synthetic\"\nrecords = 64", &dataset);
    assert!(text.contains("train.jsonl"), "the fixture's dataset block changed: {text}");
    std::fs::write(&job, text + eval).unwrap();
    (job, lines)
}

/// A held-out split that no rank can read (a corrupt file behind `val_path`): each rank says
/// why, the ranks agree to skip every validation instead of waiting for each other in a
/// collective, and the job trains to its end.
#[test]
fn workers_skip_validation_when_the_held_out_set_cannot_be_read() {
    let d = tempfile::tempdir().unwrap();
    let eval = "\n[eval]\nevery_steps = 2\nsamples = 2\nbaseline_samples = 4\n";
    let (job, _) = text_corpus_job(d.path(), 4, "collective_timeout_s = 30", Some("this is not json\n{\"text\": 3}\n"), eval);
    let out = tessera(&["train", &job, "--workers", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for w in ["[worker#0]", "[worker#1]"] {
        assert!(
            err.lines().any(|l| l.starts_with(w) && l.contains("cannot load the held-out set") && l.contains("val.jsonl")),
            "{w}: {err}"
        );
    }
    for step in [2, 4] {
        assert!(err.contains(&format!("validation of step {step} skipped: a rank has no held-out set")), "step {step}: {err}");
    }
    assert!(!err.contains("validation at step"), "{err}");
    assert!(!d.path().join("out/eval_log.jsonl").exists());
    assert_eq!(log_lines(d.path()).last().unwrap()["step"].as_u64(), Some(3), "trained to the end");
}

/// A coordinated rank that could not read the held-out set tries again in the next generation:
/// once the file is readable and the job is resized, validation resumes.
#[test]
fn a_rank_loads_the_held_out_set_again_in_a_new_generation() {
    let d = tempfile::tempdir().unwrap();
    let eval = "\n[eval]\nevery_steps = 2\nsamples = 2\nbaseline_samples = 4\n";
    let (job, lines) = text_corpus_job(d.path(), 100_000, "collective_timeout_s = 30", Some("{\"text\": 3}\n"), eval);
    let mut run = Running::start(&["train", &job, "--workers", "2"]);
    // Step 2's validation has been tried (and skipped) once step index 2 is logged.
    run.wait_for_log(d.path(), 3, Duration::from_secs(120));
    let eval_log = d.path().join("out/eval_log.jsonl");
    assert!(!eval_log.exists(), "nothing to validate with yet");
    std::fs::write(d.path().join("val.jsonl"), lines[..4].join("\n") + "\n").unwrap();
    let out_dir = d.path().join("out").display().to_string();
    let scale = tessera(&["scale", "--job-dir", &out_dir, "--workers", "1"]);
    assert!(scale.status.success(), "{}", String::from_utf8_lossy(&scale.stderr));
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&eval_log).map(|t| t.lines().count()).unwrap_or(0) == 0 {
        if Instant::now() > deadline {
            let _reap = KillOnDrop(run.rank_pids());
            let _ = run.child.kill();
            panic!("no validation after the resize: {}", run.stderr());
        }
        assert!(run.child.try_wait().unwrap().is_none(), "the job ended early: {}", run.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    signal("-TERM", &run.child.id().to_string());
    let (status, stderr, _) = run.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("cannot load the held-out set") && stderr.contains("a rank has no held-out set"), "{stderr}");
    let worlds = generation_worlds(d.path());
    assert_eq!(worlds.last(), Some(&1), "resized to one rank: {worlds:?}");
    let first: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&eval_log).unwrap().lines().next().unwrap()).unwrap();
    assert!(first["step"].as_u64().unwrap() > 2, "{first}");
    assert!(first["modalities"]["caption"]["tokens"].as_u64().unwrap() > 0, "{first}");
}

/// `[eval]` on a job whose datasets have no held-out split: every launch mode says once, at
/// start, that validation is off (coordinated workers do not repeat it), and trains on.
#[test]
fn eval_without_a_held_out_split_is_noted_once() {
    let d = tempfile::tempdir().unwrap();
    let (job, _) = text_corpus_job(d.path(), 1, "", None, "\n[eval]\nevery_steps = 1\nsamples = 2\nbaseline_samples = 2\n");
    let note = "[eval] every_steps = 1 but no dataset has a held-out split (val_path); validation is off";

    let out = tessera(&["config", "check", &job]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains(note), "{err}");
    for args in [vec!["train", &job, "--no-resume"], vec!["train", &job, "--no-resume", "--workers", "2"]] {
        let out = tessera(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert_eq!(err.matches(note).count(), 1, "{args:?}: {err}");
        assert!(!d.path().join("out/eval_log.jsonl").exists(), "{args:?}");
        assert_eq!(log_lines(d.path()).last().unwrap()["step"].as_u64(), Some(0), "{args:?}: trained");
    }
}
