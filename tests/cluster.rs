//! Cluster mode end to end: `tessera coordinator` with a worker pool, `submit`, `jobs`,
//! `cancel`, `wait`, `logs`, token refusals, and — on network-namespace hosts with a real etcd — a
//! worker host's link cut and restored, and the coordinator killed with -9 and restarted.

mod common;
#[path = "../coordinator/tests/common/etcd.rs"]
mod etcd;
#[path = "../coordinator/tests/common/netns.rs"]
mod netns;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, assert_matches, bin, final_losses, job_and_reference, wait_for};

/// Starts `tessera ARGS` as a client of the service at `url` with `token`, its stdout going
/// to `out` (killed and reaped on drop, as every process of the test).
fn client_in_background(url: &str, token: &Path, args: &[&str], out: &Path) -> Proc {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("TESSERA_COORDINATOR", url).env("TESSERA_TOKEN_FILE", token);
    let log = out.with_extension("stderr");
    let child = cmd.stdout(std::fs::File::create(out).unwrap()).stderr(std::fs::File::create(&log).unwrap()).spawn().expect("spawn");
    Proc::of(child, log)
}

/// Waits (at most `limit`) for `p` to exit and asserts it succeeded.
fn exits_ok(what: &str, p: &mut Proc, limit: Duration) {
    let mut status = None;
    wait_for(what, limit, || {
        status = p.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{what}: {}", p.text());
}

/// `tessera logs --json` output as JSON values.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// Runs `tessera ARGS` as a client of the service at `url` with `token`.
fn client(url: &str, token: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).env("TESSERA_COORDINATOR", url).env("TESSERA_TOKEN_FILE", token).output().expect("tessera runs")
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The state of job `id` as `tessera jobs --json` shows it.
fn job_json(url: &str, token: &Path, id: u64) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&ok(client(url, token, &["jobs", "--json"]))).unwrap();
    jobs.into_iter().find(|j| j["id"] == id).unwrap_or_else(|| panic!("job {id} not listed"))
}

/// A copy of `job` (a config file) in its own directory, with `steps` steps.
fn job_copy(root: &Path, name: &str, job: &str, steps: u64) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(job).unwrap();
    let text = with_steps(&text, steps).replace("name = \"cli-train\"", &format!("name = \"{name}\""));
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn with_steps(text: &str, steps: u64) -> String {
    text.lines()
        .map(|l| if l.starts_with("total_steps = ") { format!("total_steps = {steps}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The service's URL once it printed it.
fn service_url(coordinator: &Proc) -> String {
    let mut url = String::new();
    wait_for("the coordinator's API line", Duration::from_secs(30), || {
        url = coordinator
            .text()
            .lines()
            .find_map(|l| l.split("API http://").nth(1).map(|r| format!("http://{}", r.split_whitespace().next().unwrap())))
            .unwrap_or_default();
        !url.is_empty()
    });
    url
}

#[test]
fn a_pool_trains_submitted_jobs_queues_with_reasons_cancels_and_refuses_bad_tokens() {
    let (dir, job, reference) = job_and_reference(6);
    let root = dir.path();
    let state = root.join("state");
    let mut coordinator = Command::new(bin());
    coordinator.args(["coordinator", "--listen", "127.0.0.1:0", "--state-dir", state.to_str().unwrap()]);
    let mut coordinator = Proc::spawn(coordinator, &root.join("coordinator.log"));
    let url = service_url(&coordinator);
    let token = state.join("token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    // The workers also register in etcd (the coordinator, on a state dir, does not watch it).
    let mut etcd = etcd::Etcd::start().expect("etcd");
    let prefix = etcd::unique_prefix("pool");
    let workers: Vec<Proc> = (0..3)
        .map(|i| {
            let mut w = Command::new(bin());
            w.args(["worker", "--name", &format!("w{i}"), "--etcd", &etcd.url(), "--etcd-prefix", &prefix, "--lease-ttl-s", "2"])
                .env("TESSERA_COORDINATOR", &url)
                .env("TESSERA_TOKEN_FILE", &token);
            Proc::spawn(w, &root.join(format!("w{i}.log")))
        })
        .collect();

    // One job on three pool workers: every step's loss equals one process's.
    let id = ok(client(&url, &token, &["submit", &job, "--workers", "3:3", "--idempotency-key", "first"]));
    assert_eq!(id.trim(), "job-1");
    let again = ok(client(&url, &token, &["submit", &job, "--workers", "3:3", "--idempotency-key", "first", "--json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap(),
        serde_json::json!({"id": 1, "created": false}),
        "a retried submit makes no second job"
    );
    ok(client(&url, &token, &["wait", "job-1", "--timeout-s", "180"]));
    assert_matches(&final_losses(root), &reference);
    let status: serde_json::Value = serde_json::from_str(&ok(client(&url, &token, &["status", "1", "--json"]))).unwrap();
    assert_eq!((status["state"].as_str(), status["step"].as_u64()), (Some("Finished"), Some(6)), "{status}");
    // Export through the service: its committed checkpoint of step 6, the same bytes as the
    // export of the job's config.
    let (by_id, by_config) = (root.join("by-id.safetensors"), root.join("by-config.safetensors"));
    let said = ok(client(&url, &token, &["export", "job-1", "--step", "6", "--out", by_id.to_str().unwrap(), "--json"]));
    let said: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(
        (&said["step"], said["checkpoint"].as_str().and_then(|c| c.rsplit("step-").next()?.parse::<u64>().ok())),
        (&serde_json::json!(6), Some(6)),
        "{said}"
    );
    ok(client(&url, &token, &["export", &job, "--step", "6", "--out", by_config.to_str().unwrap()]));
    assert_eq!(weights(&by_id), weights(&by_config), "the same weights either way");
    let missing = client(&url, &token, &["export", "job-1", "--step", "999", "--out", by_id.to_str().unwrap()]);
    let why = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && why.contains("no checkpoint of step 999 committed (steps committed: ") && why.contains("6)"),
        "{why}"
    );

    // Its logs after it ended: every worker's lines (in OUTPUT_DIR/logs/NAME.jsonl), merged
    // by time; `--rank 1` only the lines printed as rank 1; `--json` objects with every field.
    let rank1 = json_lines(&ok(client(&url, &token, &["logs", "job-1", "--rank", "1", "--json"])));
    let all = json_lines(&ok(client(&url, &token, &["logs", "1", "--json"])));
    for w in ["w0", "w1", "w2"] {
        assert!(all.iter().any(|l| l["worker"] == w), "no line of {w}: {all:?}");
        assert!(root.join(format!("out/logs/{w}.jsonl")).is_file());
    }
    for l in &all {
        assert!(l["ts_ms"].is_u64() && l["line"].is_string() && l["worker"].is_string(), "{l}");
        assert!(l["rank"].is_null() == l["generation"].is_null() && (l["rank"].is_null() || l["rank"].is_u64()), "{l}");
    }
    assert!(all.windows(2).all(|w| w[0]["ts_ms"].as_u64() <= w[1]["ts_ms"].as_u64()), "merged by time");
    assert!(all.iter().any(|l| l["rank"].is_null()) && all.iter().any(|l| l["rank"] == 2), "lines with and without a rank");
    assert!(!rank1.is_empty() && rank1.iter().all(|l| l["rank"] == 1), "{rank1:?}");
    let of_rank1: Vec<&serde_json::Value> = all.iter().filter(|l| l["rank"] == 1).collect();
    assert!(of_rank1.len() >= rank1.len(), "{of_rank1:?}\n{rank1:?}");
    assert_eq!(of_rank1[..rank1.len()].iter().copied().cloned().collect::<Vec<_>>(), rank1, "--rank 1 is rank 1's lines");
    let plain = ok(client(&url, &token, &["logs", "job-1", "--rank", "1"]));
    assert!(!plain.is_empty() && plain.lines().all(|l| l.starts_with("[w") && l.contains(" r1 g")), "{plain}");
    eprintln!("tessera logs job-1: {} lines of 3 workers, {} of rank 1; e.g. {}", all.len(), rank1.len(), plain.lines().next().unwrap());

    // Two jobs that cannot both run at their minimum on three workers: the second waits, and
    // says why, until the first is cancelled.
    let long = job_copy(root, "long", &job, 400);
    let second = job_copy(root, "second", &job, 4);
    assert_eq!(ok(client(&url, &token, &["submit", &long, "--workers", "2:2"])).trim(), "job-2");
    assert_eq!(ok(client(&url, &token, &["submit", &second, "--workers", "2:3"])).trim(), "job-3");
    wait_for("job-3 pending with its reason", Duration::from_secs(30), || {
        job_json(&url, &token, 3)["pending"].as_str() == Some("waiting for workers: 1 free, needs 2")
    });
    let table = ok(client(&url, &token, &["jobs"]));
    assert!(
        table.lines().any(|l| l.starts_with("job-3") && l.contains("queued") && l.ends_with("waiting for workers: 1 free, needs 2")),
        "{table}"
    );

    // `logs --follow` of the running job-2 and of the queued job-3: each prints the lines
    // written after it started and exits once its job has ended (cancelled, finished), having
    // printed every line once.
    let started_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let follow_out = |job: &str| root.join(format!("follow-{job}.out"));
    let mut follow2 = client_in_background(&url, &token, &["logs", "job-2", "--follow", "--json"], &follow_out("2"));
    let mut follow3 = client_in_background(&url, &token, &["logs", "job-3", "--follow", "--json"], &follow_out("3"));

    // Refusals while job-2 trains: no token file, a wrong token, random bytes on the API port.
    let no_token = Command::new(bin()).args(["jobs"]).env("TESSERA_COORDINATOR", &url).env_remove("TESSERA_TOKEN_FILE").output().unwrap();
    assert!(!no_token.status.success());
    let wrong = root.join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let refused = client(&url, &wrong, &["submit", &second]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("HTTP 401"), "{refused:?}");
    // A worker with a wrong token is refused: logged, never pooled (job-3 still lacks one).
    let mut intruder = Command::new(bin());
    intruder.args(["worker", "--name", "intruder"]).env("TESSERA_COORDINATOR", &url).env("TESSERA_TOKEN_FILE", &wrong);
    let mut intruder = Proc::spawn(intruder, &root.join("intruder.log"));
    wait_for("the intruder refused", Duration::from_secs(30), || {
        coordinator.text().contains("refused POST /v1/workers/intruder from 127.0.0.1:") && intruder.child.try_wait().unwrap().is_some()
    });
    assert!(!intruder.child.wait().unwrap().success());
    assert!(intruder.text().contains("the service refused this worker's token"), "{}", intruder.text());
    assert!(!coordinator.text().contains("worker intruder joined the pool"));
    assert_eq!(job_json(&url, &token, 3)["pending"], "waiting for workers: 1 free, needs 2");
    drop(intruder);
    let addr = url.trim_start_matches("http://").to_string();
    let mut junk = std::net::TcpStream::connect(&addr).unwrap();
    let _ = junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0x00, 0x13, 0x37, b'\r', b'\n', b'\r', b'\n']);
    drop(junk);
    wait_for("the refusal logged with the peer", Duration::from_secs(5), || {
        coordinator.text().contains("refused POST /v1/jobs from 127.0.0.1:")
    });
    // Random bytes on the job's actor node and on a rank's ring listener.
    let live: serde_json::Value = serde_json::from_str(&ok(client(&url, &token, &["status", "2", "--json"]))).unwrap();
    let ring = live["live"]["members"][0]["addr"].as_str().expect("a member's ring address").to_string();
    for port in [live["node"].as_str().expect("the job's node").to_string(), ring] {
        let mut junk = std::net::TcpStream::connect(&port).unwrap();
        let _ = junk.write_all(b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n\xff\xfe random bytes");
    }
    let logged = common::log_lines(&root.join("long")).len();
    wait_for("job-2 training on after the junk", Duration::from_secs(60), || common::log_lines(&root.join("long")).len() >= logged + 3);
    assert_eq!(job_json(&url, &token, 2)["state"], "Running", "the running job is undisturbed");

    // etcd stops for 10 s: the workers train on, and once it is back each registers again
    // under a new lease (its old one ran out unanswered).
    let registrations = |i: usize| workers[i].text().matches(&format!("[w{i}] registered /")).count();
    assert!((0..3).all(|i| registrations(i) == 1), "each worker registered once");
    etcd.stop();
    let logged = common::log_lines(&root.join("long")).len();
    std::thread::sleep(Duration::from_secs(10));
    let trained = common::log_lines(&root.join("long")).len() - logged;
    assert!(trained >= 3, "only {trained} steps trained while etcd was down");
    etcd.restart().expect("etcd back");
    let t = wait_for("every worker registered again", Duration::from_secs(30), || (0..3).all(|i| registrations(i) >= 2));
    eprintln!("etcd down 10 s: {trained} steps trained meanwhile; every worker registered again {t:?} after it was back");

    ok(client(&url, &token, &["cancel", "job-2"]));
    ok(client(&url, &token, &["wait", "job-3", "--timeout-s", "180"]));
    let job3_ended = Instant::now();
    let cancelled = client(&url, &token, &["wait", "2", "--timeout-s", "60"]);
    assert!(!cancelled.status.success(), "waiting for a cancelled job fails");
    assert_eq!(job_json(&url, &token, 2)["state"], "Cancelled");
    assert_eq!(job_json(&url, &token, 3)["step"], 4);
    for (job, follow) in [("2", &mut follow2), ("3", &mut follow3)] {
        exits_ok(&format!("logs job-{job} --follow ending with the job"), follow, Duration::from_secs(60));
        if job == "3" {
            eprintln!("tessera logs job-3 --follow exited {:?} after `tessera wait job-3` returned", job3_ended.elapsed());
        }
        let mut followed = json_lines(&std::fs::read_to_string(follow_out(job)).unwrap());
        assert!(followed.iter().any(|l| l["ts_ms"].as_u64() > Some(started_ms)), "job-{job}: no line written after --follow started");
        let mut all = json_lines(&ok(client(&url, &token, &["logs", job, "--json"])));
        // Pages merge by time; a line can come a page after a later-stamped one: same lines.
        let by_text = |l: &serde_json::Value| l.to_string();
        followed.sort_by_key(by_text);
        all.sort_by_key(by_text);
        assert_eq!(followed, all, "job-{job}: --follow printed every line once");
    }

    // Q4: a higher-priority job takes workers from a lower one, which shrinks at a checkpoint
    // and grows back when they are free again.
    let low = job_copy(root, "low", &job, 5000);
    let high = job_copy(root, "high", &job, 4);
    assert_eq!(ok(client(&url, &token, &["submit", &low, "--workers", "1:3"])).trim(), "job-4");
    let worlds = || common::log_lines(&root.join("low")).iter().map(|l| l["world_size"].as_u64().unwrap()).collect::<Vec<_>>();
    wait_for("job-4 training on 3 workers", Duration::from_secs(60), || worlds().last() == Some(&3));
    assert_eq!(ok(client(&url, &token, &["submit", &high, "--workers", "2:2", "--priority", "5"])).trim(), "job-5");
    ok(client(&url, &token, &["wait", "job-5", "--timeout-s", "180"]));
    assert_eq!(job_json(&url, &token, 5)["step"], 4);
    let back = Instant::now();
    loop {
        // Generations of 3 workers, then 1 after the shrink, then 3 again (from the events: a
        // generation may end before it logs a step).
        let w: Vec<u64> = common::generation_worlds(&root.join("low")).into_iter().map(|n| n as u64).collect();
        let after = |from: usize, n: u64| w[from..].iter().position(|&x| x == n).map(|i| from + i);
        if after(0, 3).and_then(|i| after(i, 1)).and_then(|j| after(j, 3)).is_some() {
            break;
        }
        let said = coordinator.text();
        let tail: Vec<&str> = said.lines().skip(said.lines().count().saturating_sub(40)).collect();
        assert!(back.elapsed() < Duration::from_secs(120), "job-4 not back on 3 workers: worlds {w:?}\n{}", tail.join("\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("Q4: job-5 ended -> job-4 back on 3 workers: {:?}", back.elapsed());
    let said = coordinator.text();
    assert!(said.contains("job-4 gives 2 workers to job-5 (Q4) at its next checkpoint: asked for 1 workers"), "{said}");
    assert_eq!(job_json(&url, &token, 4)["state"], "Running");
    ok(client(&url, &token, &["cancel", "job-4"]));
    wait_for("job-4 cancelled", Duration::from_secs(60), || job_json(&url, &token, 4)["state"] == "Cancelled");

    // How jobs ended is stored: a coordinator restarted on the same state dir still says it.
    coordinator.kill();
    let mut again = Command::new(bin());
    again.args(["coordinator", "--listen", url.trim_start_matches("http://"), "--state-dir", state.to_str().unwrap()]);
    let _again = Proc::spawn(again, &root.join("coordinator-2.log"));
    wait_for("the restarted coordinator", Duration::from_secs(30), || client(&url, &token, &["jobs"]).status.success());
    assert_eq!(job_json(&url, &token, 1)["note"], "finished at step 6");
    assert_eq!(job_json(&url, &token, 5)["note"], "finished at step 4");
    let note = job_json(&url, &token, 4)["note"].as_str().unwrap_or_default().to_string();
    assert!(note.starts_with("cancelled at step "), "{note}");
}

/// A safetensors file's metadata and tensors (name, dtype, shape, bytes), in name order: the
/// header's own order is not fixed.
type Weights = (std::collections::BTreeMap<String, String>, Vec<(String, String, Vec<usize>, Vec<u8>)>);

fn weights(path: &Path) -> Weights {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> =
        file.tensors().into_iter().map(|(n, t)| (n, format!("{:?}", t.dtype()), t.shape().to_vec(), t.data().to_vec())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    (meta.metadata().clone().unwrap_or_default().into_iter().collect(), tensors)
}

/// The steps logged more than once in `lines` (a train log's), ascending.
fn repeated_steps(lines: &[serde_json::Value]) -> Vec<u64> {
    let mut seen = std::collections::BTreeSet::new();
    let mut twice: Vec<u64> = lines.iter().filter_map(|l| l["step"].as_u64()).filter(|s| !seen.insert(*s)).collect();
    twice.sort_unstable();
    twice.dedup();
    twice
}

/// The step a coordinator's log says it adopted its generation at.
fn paused_step(log: &str) -> Option<u64> {
    let rest = log.split("adopted from the lost coordinator, going on from step ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Waits for `coordinator` to adopt its job and for the first step trained under it (the lines
/// logged before it are the reports the dead coordinator lost, re-sent by the ranks); returns
/// the step it adopted at and the time from `killed` to that step's line.
fn first_trained_step(coordinator: &Proc, root: &Path, killed: Instant) -> (u64, Duration) {
    wait_for("the adoption", Duration::from_secs(120), || paused_step(&coordinator.text()).is_some());
    let paused = paused_step(&coordinator.text()).unwrap();
    wait_for("a step trained after the adoption", Duration::from_secs(60), || {
        common::log_lines(root).iter().any(|l| l["step"].as_u64() == Some(paused))
    });
    (paused, killed.elapsed())
}

/// Asserts that the train log's lines from index `from` on continue it: each step after the
/// one before, none redone.
fn assert_no_redo(lines: &[serde_json::Value], from: usize) {
    let steps: Vec<u64> = lines.iter().filter_map(|l| l["step"].as_u64()).collect();
    let before = steps[..from].iter().max().copied();
    for (i, s) in steps[from..].iter().enumerate() {
        let prev = if i == 0 { before } else { Some(steps[from + i - 1]) };
        assert!(prev.is_none_or(|p| *s == p + 1), "step {s} logged after step {prev:?}: {steps:?}");
    }
}

/// A coordinator killed with -9 and restarted on its address (state in a directory): its
/// workers keep the job's state, paused at one step boundary, and the new coordinator adopts
/// them (no step trained or logged twice). Killed again together with a worker, the job
/// restores its newest checkpoint on the two that are left.
#[test]
fn a_restarted_coordinator_adopts_its_workers_state_and_restores_when_a_rank_died() {
    let (dir, job, reference) = job_and_reference(40);
    let root = dir.path();
    let state = root.join("state");
    let start_coordinator = |listen: &str, log: &str| {
        let mut c = Command::new(bin());
        c.args(["coordinator", "--listen", listen, "--state-dir", state.to_str().unwrap(), "--reattach-wait-s", "3"]);
        Proc::spawn(c, &root.join(log))
    };
    let mut coordinator = start_coordinator("127.0.0.1:0", "coordinator.log");
    let url = service_url(&coordinator);
    let listen = url.trim_start_matches("http://").to_string();
    let token = state.join("token");
    let mut workers: Vec<Proc> = (0..3)
        .map(|i| {
            let mut w = Command::new(bin());
            w.args(["worker", "--name", &format!("w{i}"), "--orphan-grace-s", "60"])
                .env("TESSERA_COORDINATOR", &url)
                .env("TESSERA_TOKEN_FILE", &token);
            Proc::spawn(w, &root.join(format!("w{i}.log")))
        })
        .collect();
    assert_eq!(ok(client(&url, &token, &["submit", &job, "--workers", "2:3"])).trim(), "job-1");
    wait_for("step 8", Duration::from_secs(120), || final_losses(root).len() >= 8);

    // kill -9 and a restart on the same address: every rank re-attaches, nothing is redone.
    coordinator.kill();
    let killed = Instant::now();
    let before = common::log_lines(root).len();
    let restarted = start_coordinator(&listen, "restarted.log");
    let t = wait_for("a step after the restart", Duration::from_secs(60), || common::log_lines(root).len() > before);
    eprintln!("coordinator kill -9 + restart, workers re-attached -> next step logged: {t:?}");
    let (paused, t) = first_trained_step(&restarted, root, killed);
    eprintln!("  adopted at step {paused}: the first step trained under the new coordinator logged {t:?} after the kill");
    wait_for("four more steps", Duration::from_secs(60), || common::log_lines(root).len() >= before + 4);
    let lines = common::log_lines(root);
    assert_eq!(repeated_steps(&lines), Vec::<u64>::new(), "no step is logged twice after an adoption");
    assert_no_redo(&lines, 0);
    let world = &lines[before - 1]["world_size"];
    assert!(lines[before..].iter().all(|l| l["world_size"] == *world), "the same ranks go on");
    let adoptions: Vec<serde_json::Value> = common::events(root).into_iter().filter(|e| e["type"] == "generation_adopted").collect();
    assert_eq!(adoptions.len(), 1, "the adoption is its own event: {adoptions:?}");
    assert_eq!(adoptions[0]["start_step"], paused);
    let adopted_through = lines.len();

    // Killed again with a worker: two ranks report their state, one is missing; after the
    // wait the job restores its newest checkpoint on the two (steps after it are redone).
    let mut restarted = restarted;
    restarted.kill();
    workers[2].kill();
    let killed = Instant::now();
    let before = common::log_lines(root).len();
    let again = start_coordinator(&listen, "again.log");
    let t = wait_for("a step after the restore", Duration::from_secs(90), || common::log_lines(root).len() > before);
    eprintln!(
        "coordinator and a worker kill -9 + restart -> next step (restored on two ranks): {t:?} ({:?} since the kill)",
        killed.elapsed()
    );
    assert!(again.text().contains("ranks re-attached in time; it restores"), "{}", again.text());
    ok(client(&url, &token, &["wait", "1", "--timeout-s", "180"]));
    assert_matches(&final_losses(root), &reference);
    let lines = common::log_lines(root);
    assert_eq!(repeated_steps(&lines[..adopted_through]), Vec::<u64>::new());
    assert!(lines.last().is_some_and(|l| l["world_size"] == 2), "the job finished on the two workers left");
}

/// A service on its own host (network namespace) with etcd and a standby beside it, three
/// worker hosts.
#[test]
fn hosts_in_namespaces_lose_a_link_rejoin_and_survive_coordinator_kills() {
    let hosts = netns::Hosts::new(4).expect("hosts");
    let (dir, job, reference) = job_and_reference(80);
    let root = dir.path();
    let etcd = etcd::Etcd::start_at(etcd::Placement { ip: hosts.hosts[0].ip, netns: hosts.hosts[0].netns.clone() }).expect("etcd");
    let token = root.join("token");
    let head = hosts.hosts[0].ip;
    let prefix = etcd::unique_prefix("cluster");
    // Fixed ports: the head host's address exists only in this test (its own namespace, or a
    // 127.x address of this run), so they are free.
    let start_coordinator = |port: u16, log: &str, standby: bool| {
        let mut c = hosts.command(0, &bin());
        c.args(["coordinator", "--listen", &format!("{head}:{port}"), "--etcd", &etcd.url(), "--etcd-prefix", &prefix]).args([
            "--token-file",
            token.to_str().unwrap(),
            // Above the workers' lease TTL (2 s) with a margin: a cut-off worker is lost by its
            // lease, not by silence (the heartbeat path: 4.3 s at a 4 s timeout, README).
            "--heartbeat-timeout-s",
            "10",
        ]);
        if standby {
            c.arg("--standby");
        }
        Proc::spawn(c, &root.join(log))
    };
    let mut primary = start_coordinator(7450, "primary.log", false);
    assert_eq!(service_url(&primary), format!("http://{head}:7450"));
    let mut standby = start_coordinator(7451, "standby.log", true);
    wait_for("the standby waiting", Duration::from_secs(30), || standby.text().contains("standby at"));
    let urls = format!("http://{head}:7450,http://{head}:7451");
    // host2 has no etcd lease: only heartbeats find it lost.
    let workers: Vec<Proc> = (1..4)
        .map(|i| {
            let mut w = hosts.command(i, &bin());
            w.args(["worker", "--coordinator", &urls, "--token-file", token.to_str().unwrap(), "--name", &format!("host{i}")]);
            if i != 2 {
                w.args(["--etcd", &etcd.url(), "--etcd-prefix", &prefix, "--lease-ttl-s", "2"]);
            }
            Proc::spawn(w, &root.join(format!("w{i}.log")))
        })
        .collect();
    // The client runs on the head host too: the service's address exists only there.
    let cli = |args: &[&str]| {
        let mut c = hosts.command(0, &bin());
        c.args(args).env("TESSERA_COORDINATOR", &urls).env("TESSERA_TOKEN_FILE", &token);
        c.output().unwrap()
    };
    let submitted = Instant::now();
    assert_eq!(ok(cli(&["submit", &job, "--workers", "2:3"])).trim(), "job-1");
    let t = wait_for("the first step", Duration::from_secs(120), || !common::log_lines(root).is_empty());
    eprintln!("submit -> first step logged: {t:?} (since the submit command started: {:?})", submitted.elapsed());
    wait_for("step 8", Duration::from_secs(120), || final_losses(root).len() >= 8);

    let registered = |w: &Proc| w.text().matches("[host3] registered /").count();
    wait_for("host3 registered in etcd", Duration::from_secs(10), || registered(&workers[2]) == 1);
    if hosts.isolated() {
        // The worker's etcd lease (TTL 2 s) runs out: the service loses it at once and tells
        // its job, which goes on with two at the next boundary, long before any heartbeat
        // timeout (10 s here).
        hosts.link_down(3).unwrap();
        let cut = Instant::now();
        let t = wait_for("the service losing host3 by its lease", Duration::from_secs(10), || {
            primary.text().contains("worker host3 lost: lease expired (it served job-1)")
        });
        eprintln!("link down -> the service logs host3 lost by its etcd lease (TTL 2 s): {t:?}");
        wait_for("the job going on with two", Duration::from_secs(60), || {
            common::log_lines(root).last().is_some_and(|l| l["world_size"] == 2)
        });
        eprintln!("link down -> first step with two ranks: {:?}", cut.elapsed());
        hosts.link_up(3).unwrap();
        let up = Instant::now();
        let (mut rejoined, mut again) = (None, None);
        while rejoined.is_none() || again.is_none() {
            if rejoined.is_none() && common::log_lines(root).last().is_some_and(|l| l["world_size"] == 3) {
                rejoined = Some(up.elapsed());
            }
            if again.is_none() && registered(&workers[2]) >= 2 {
                again = Some(up.elapsed());
            }
            let tail = |p: &Proc| p.text().lines().rev().take(30).collect::<Vec<_>>().join("\n");
            assert!(
                up.elapsed() < Duration::from_secs(90),
                "90 s after the link came back: rejoined {rejoined:?}, registered again {again:?}\nhost3 (newest first):\n{}\nservice:\n{}",
                tail(&workers[2]),
                tail(&primary)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("link up -> first step with three ranks again: {:?}", rejoined.unwrap());
        eprintln!("link up -> host3 registered again under a new lease: {:?}", again.unwrap());
        assert!(workers[2].text().contains("expired: registering again under a new lease"), "{}", workers[2].text());

        // host2, without a lease, is found by silence: the pool's heartbeat timeout (or the
        // job's own), 10 s here; the pool tells the job too.
        hosts.link_down(2).unwrap();
        let cut = Instant::now();
        let t = wait_for("the service losing host2 by silence", Duration::from_secs(30), || {
            primary.text().contains("worker host2 lost: silent for over 10000 ms")
        });
        eprintln!("link down (no lease) -> the service logs host2 lost by silence (10 s heartbeat timeout): {t:?}");
        wait_for("the job going on with two", Duration::from_secs(60), || {
            common::log_lines(root).last().is_some_and(|l| l["world_size"] == 2)
        });
        eprintln!("link down (no lease) -> first step with two ranks: {:?}", cut.elapsed());
        hosts.link_up(2).unwrap();
        let t =
            wait_for("host2 rejoining", Duration::from_secs(90), || common::log_lines(root).last().is_some_and(|l| l["world_size"] == 3));
        eprintln!("link up (no lease) -> first step with three ranks again: {t:?}");
    }

    let adopted_from = common::log_lines(root).len();
    // kill -9 of the active coordinator: the standby takes the store when the dead one's
    // lease expires and recovers the job. The workers keep the job's state, paused, and the
    // standby adopts it: no step is redone. Only a coordinator writes the train log, so a new
    // line is a step under the new one.
    primary.kill();
    let killed = Instant::now();
    let before = common::log_lines(root).len();
    let t = wait_for("a step under the standby", Duration::from_secs(120), || common::log_lines(root).len() > before);
    eprintln!("active coordinator kill -9 -> next step logged under the standby (workers re-attached): {t:?}");
    let (paused, t) = first_trained_step(&standby, root, killed);
    eprintln!("  adopted at step {paused}: the first step trained under the standby logged {t:?} after the kill");
    assert!(standby.text().contains("took the job store"), "{}", standby.text());

    // kill -9 of that one and a restart on the same address: it binds at once, waits out its
    // own dead lease, and recovers the job from etcd.
    standby.kill();
    let killed = Instant::now();
    let before = common::log_lines(root).len();
    let restarted = start_coordinator(7451, "restarted.log", false);
    let t = wait_for("a step after the restart", Duration::from_secs(120), || common::log_lines(root).len() > before);
    eprintln!("coordinator kill -9 + restart on the same address -> next step logged: {t:?}");
    let (paused, t) = first_trained_step(&restarted, root, killed);
    eprintln!("  adopted at step {paused}: the first step trained under the restarted coordinator logged {t:?} after the kill");
    ok(cli(&["wait", "1", "--timeout-s", "300"]));
    assert_matches(&final_losses(root), &reference);
    assert!(restarted.text().contains(&format!("API http://{head}:7451")), "{}", restarted.text());
    assert_no_redo(&common::log_lines(root), adopted_from);
    drop(workers);
}

/// A standby outlives an etcd outage: it keeps waiting while etcd is down, and takes the store
/// when the active coordinator dies after it.
#[test]
fn a_standby_outlives_an_etcd_outage_and_takes_over_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut etcd = etcd::Etcd::start().expect("etcd");
    let prefix = etcd::unique_prefix("standby");
    let token = root.join("token");
    let start = |standby: bool, log: &str| {
        let mut c = Command::new(bin());
        c.args(["coordinator", "--listen", "127.0.0.1:0", "--etcd", &etcd.url(), "--etcd-prefix", &prefix])
            .args(["--token-file", token.to_str().unwrap()]);
        if standby {
            c.arg("--standby");
        }
        Proc::spawn(c, &root.join(log))
    };
    let mut primary = start(false, "primary.log");
    let url = service_url(&primary);
    let mut standby = start(true, "standby.log");
    wait_for("the standby waiting", Duration::from_secs(30), || standby.text().contains("standby at"));
    etcd.stop();
    wait_for("the standby finding etcd unreachable", Duration::from_secs(30), || standby.text().contains("trying again every second"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(standby.child.try_wait().unwrap().is_none(), "the standby exited during the outage: {}", standby.text());
    etcd.restart().expect("etcd back");
    wait_for("the standby reaching etcd again", Duration::from_secs(30), || standby.text().contains("etcd answers again"));
    // The outage was shorter than the active coordinator's lease (10 s): it still serves.
    assert!(!standby.text().contains("took the job store"), "{}", standby.text());
    ok(client(&url, &token, &["jobs", "--json"]));
    primary.kill();
    let t = wait_for("the standby taking the store", Duration::from_secs(30), || standby.text().contains("took the job store"));
    eprintln!("etcd down ~3 s under a waiting standby; active kill -9 -> the standby held the store {t:?} later");
}
