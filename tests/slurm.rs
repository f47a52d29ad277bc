//! Cluster mode under a real Slurm (issue 18): a one-node cluster of Debian's munged, slurmctld
//! and slurmd ([`common::slurm`]) runs a trivial three-task job (the harness itself), then the
//! documented `scripts/cluster/tessera.sbatch` with three worker tasks to the end, and once more
//! interrupted by the time-limit warning (SIGTERM to the batch script), requeued and resumed.
//! Losses are compared with one uninterrupted process.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::slurm::{JobInfo, Slurm, run_bounded};
use common::*;

/// One cluster at a time: each test starts its own, and three training workers per test are
/// already more than a 2-core machine has.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}

/// The documented batch script.
fn tessera_sbatch() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster/tessera.sbatch")
}

/// `sbatch` for `slurm` run from `dir` (the submit dir), its output in `dir/slurm-%j.out`, with
/// the test's `tessera` binary and no proxy variables (the job inherits this environment).
fn sbatch(slurm: &Slurm, dir: &Path, ntasks: usize) -> Command {
    let mut cmd = slurm.sbatch();
    cmd.current_dir(dir)
        .arg(format!("--ntasks={ntasks}"))
        .arg(format!("--output={}/slurm-%j.out", dir.display()))
        .env("TESSERA_BIN", bin())
        .env("OMP_NUM_THREADS", "1");
    for v in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(v);
    }
    cmd
}

/// The batch job's output file.
fn output(dir: &Path, id: u64) -> String {
    std::fs::read_to_string(dir.join(format!("slurm-{id}.out"))).unwrap_or_default()
}

/// Asserts that the job completed with exit code 0.
fn assert_completed(info: &JobInfo, dir: &Path, id: u64, slurm: &Slurm) {
    assert!(
        info.state() == "COMPLETED" && info.get("ExitCode") == "0:0",
        "job {id}: {} {}\n--- output\n{}\n--- daemons\n{}",
        info.state(),
        info.get("ExitCode"),
        output(dir, id),
        slurm.logs()
    );
}

/// `job_and_reference`'s job with an absolute output dir (the coordinator service, not the
/// job file's directory, resolves paths).
fn cluster_job(steps: u64) -> (tempfile::TempDir, String, Vec<f64>) {
    let (d, job, reference) = job_and_reference(steps);
    let out = d.path().join("out");
    let text =
        std::fs::read_to_string(&job).unwrap().replace("output_dir = \"out\"", &format!("output_dir = {:?}", out.display().to_string()));
    std::fs::write(&job, text).unwrap();
    (d, job, reference)
}

#[test]
fn the_harness_runs_a_three_task_batch_job_to_the_end() {
    let _one = one_cluster();
    let slurm = Slurm::start(4).expect("a one-node Slurm cluster");
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("three.sbatch");
    std::fs::write(
        &script,
        "#!/bin/bash\nset -euo pipefail\n\
         srun bash -c 'echo \"$SLURM_PROCID $SLURM_NTASKS $SLURM_JOB_NODELIST $SLURM_STEP_ID\" > \"$0/task-$SLURM_PROCID\"' \"$PWD\"\n\
         echo batch done on \"$SLURMD_NODENAME\"\n",
    )
    .unwrap();
    let mut cmd = sbatch(&slurm, d.path(), 3);
    cmd.arg(&script);
    let id = slurm.submit(cmd).unwrap();
    let info = slurm.wait_final(id, Duration::from_secs(60)).unwrap();
    assert_completed(&info, d.path(), id, &slurm);
    for rank in 0..3 {
        let line = std::fs::read_to_string(d.path().join(format!("task-{rank}"))).unwrap();
        assert_eq!(line.trim(), format!("{rank} 3 {} 0", slurm.node()), "task {rank}");
    }
    assert!(output(d.path(), id).contains(&format!("batch done on {}", slurm.node())));
    // Drop cancels, stops and removes everything: nothing of the cluster is left.
    let dir = slurm.dir().to_path_buf();
    drop(slurm);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn the_batch_script_refuses_to_run_outside_slurm_or_without_a_job() {
    let mut cmd = Command::new("bash");
    cmd.arg(tessera_sbatch()).arg("job.toml").env_remove("SLURM_JOB_ID");
    let (status, _, err) = run_bounded(cmd, Duration::from_secs(10)).unwrap();
    assert!(!status.success() && err.contains("not in a Slurm job"), "{err}");
    let mut cmd = Command::new("bash");
    cmd.arg(tessera_sbatch()).env("SLURM_JOB_ID", "7");
    let (status, _, err) = run_bounded(cmd, Duration::from_secs(10)).unwrap();
    assert!(!status.success() && err.contains("usage: sbatch tessera.sbatch JOB.toml"), "{err}");
    let mut cmd = Command::new("bash");
    cmd.arg(tessera_sbatch()).arg("/nonexistent/job.toml").env("SLURM_JOB_ID", "7");
    let (status, _, err) = run_bounded(cmd, Duration::from_secs(10)).unwrap();
    assert!(!status.success() && err.contains("/nonexistent/job.toml: no such file"), "{err}");
    // TLS: half the pair, no CA for the workers, an unreadable file: refused before anything starts.
    let d = tempfile::tempdir().unwrap();
    let job = d.path().join("job.toml");
    std::fs::write(&job, "").unwrap();
    let (cert, missing) = (d.path().join("job.toml"), d.path().join("missing.pem"));
    let cases: [(&[(&str, &Path)], &str); 3] = [
        (&[("TESSERA_TLS_CERT", &cert)], "TESSERA_TLS_CERT and TESSERA_TLS_KEY go together"),
        (&[("TESSERA_TLS_CERT", &cert), ("TESSERA_TLS_KEY", &cert)], "TESSERA_CA_FILE is not"),
        (&[("TESSERA_TLS_CERT", &cert), ("TESSERA_TLS_KEY", &missing), ("TESSERA_CA_FILE", &cert)], "missing.pem: cannot read"),
    ];
    for (env, said) in cases {
        let mut cmd = Command::new("bash");
        cmd.arg(tessera_sbatch()).arg(&job).env("SLURM_JOB_ID", "7").envs(env.iter().copied()).env("TESSERA_BIN", "/nonexistent/tessera");
        let (status, _, err) = run_bounded(cmd, Duration::from_secs(10)).unwrap();
        assert!(!status.success() && err.contains(said), "{env:?}: {err}");
    }
}

/// Over TLS (the time-limit test runs it over plain HTTP): the workers and the script's own
/// clients trust only the CA given.
#[test]
fn the_documented_batch_script_trains_a_job_on_three_worker_tasks() {
    let steps = 12;
    let (d, job, reference) = cluster_job(steps);
    let tls = d.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = common::tls::make_ca(&tls, "slurm");
    let (cert, key) = common::tls::make_server_cert(&tls, "slurm");
    let _one = one_cluster();
    let slurm = Slurm::start(4).expect("a one-node Slurm cluster");
    let mut cmd = sbatch(&slurm, d.path(), 3);
    cmd.arg(tessera_sbatch()).arg(&job).env("TESSERA_TLS_CERT", &cert).env("TESSERA_TLS_KEY", &key).env("TESSERA_CA_FILE", &ca);
    let id = slurm.submit(cmd).unwrap();
    let info = slurm.wait_final(id, Duration::from_secs(420)).unwrap();
    assert_completed(&info, d.path(), id, &slurm);
    let steps_logged: Vec<u64> = log_lines(d.path()).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps_logged.last(), Some(&(steps - 1)), "{}", output(d.path(), id));
    let got = final_losses(d.path());
    assert!(got.values().all(|(_, w)| *w == 3), "every step on the three worker tasks: {got:?}");
    assert_matches(&got, &reference);
    // The state dir is where the script documents it: under the submit dir, per Slurm job.
    assert!(d.path().join(format!("tessera-state/slurm-{id}/token")).exists());
    let said = output(d.path(), id);
    assert!(said.contains("coordinator ready at https://127.0.0.1:"), "{said}");
}

#[test]
fn the_time_limit_warning_checkpoints_requeues_and_the_requeued_run_resumes() {
    let steps = 30;
    let (d, job, reference) = cluster_job(steps);
    let _one = one_cluster();
    let slurm = Slurm::start(4).expect("a one-node Slurm cluster");
    let mut cmd = sbatch(&slurm, d.path(), 3);
    cmd.arg(tessera_sbatch()).arg(&job);
    let id = slurm.submit(cmd).unwrap();
    // A few steps in, what `--signal=B:SIGTERM@120` sends 120 s before the time limit: SIGTERM
    // to the batch script only.
    let deadline = Instant::now() + Duration::from_secs(300);
    while log_lines(d.path()).len() < 3 {
        let info = slurm.job(id).unwrap();
        assert!(!info.is_final(), "job {id} ended early: {}\n{}", info.state(), output(d.path(), id));
        assert!(Instant::now() < deadline, "fewer than 3 steps within 300 s\n{}", output(d.path(), id));
        std::thread::sleep(Duration::from_millis(100));
    }
    slurm.scancel(&["--batch", "--signal=TERM", &id.to_string()]).unwrap();
    // The script requeues the job; Slurm holds a requeued job back (BeginTime, about 2 min):
    // release it at once.
    let requeued = slurm.wait_job(id, Duration::from_secs(180), |j| j.restarts() >= 1 && j.state() != "COMPLETING").unwrap();
    let stopped_at = log_lines(d.path()).len() as u64;
    assert!(stopped_at < steps, "the job ended before the warning took effect: {:?}", requeued.0);
    if requeued.state() == "PENDING" {
        slurm.scontrol(&["update", &format!("JobId={id}"), "StartTime=now"]).unwrap();
    }
    let info = slurm.wait_final(id, Duration::from_secs(420)).unwrap();
    assert_completed(&info, d.path(), id, &slurm);
    assert_eq!(info.restarts(), 1);
    let out = output(d.path(), id);
    // Both runs submitted with the same idempotency key and got the same tessera job.
    let jobs: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("(idempotency key"))
        .filter_map(|l| l.split("] tessera job ").nth(1))
        .map(|r| r.split(' ').next().unwrap())
        .collect();
    assert!(jobs.len() == 2 && jobs[0] == jobs[1], "tessera jobs of the two runs: {jobs:?}\n{out}");
    assert!(out.contains("requeueing job"), "{out}");
    // The warning stopped training at a checkpointed boundary and the second run resumed there:
    // a checkpoint of every step the first run trained, no step trained twice, and the losses of
    // one uninterrupted process.
    let committed: Vec<u64> =
        events(d.path()).iter().filter(|e| e["type"] == "checkpoint_committed").filter_map(|e| e["step"].as_u64()).collect();
    assert!(committed.contains(&stopped_at), "checkpoints {committed:?}, stopped after {stopped_at} steps");
    let trained: Vec<u64> = log_lines(d.path()).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(trained, (0..steps).collect::<Vec<u64>>(), "every step trained once\n{out}");
    assert_matches(&final_losses(d.path()), &reference);
}
