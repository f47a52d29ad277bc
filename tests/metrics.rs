//! A live job's `/metrics`: `promtool check metrics` (Debian `prometheus`, installed by
//! scripts/setup.sh) accepts it, and the series users read first are there with the job label.
//! The same job is then scraped by a real Prometheus server with the repo's scrape config and
//! rules (deploy/prometheus): every PromQL expression of the Grafana board and of the recording
//! rules returns data, every alert rule's whole expression (as Prometheus loaded it) evaluates
//! without error and every metric the alerts read exists; a SIGSTOPped worker that stays
//! registered fires the stall alert (and not worker-lost), then, once its heartbeat timeout
//! removes it, the worker-lost alert.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, signal, tessera, write_job};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `promtool ARGS`: success, and what it said.
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is not installed: run scripts/setup.sh (Debian package `prometheus`)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_repos_scrape_config_and_rules_pass_promtool() {
    let rules = deploy().join("prometheus/tessera-rules.yml");
    let (ok, says) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok && says.contains("SUCCESS: 10 rules found"), "{says}");
    let config = deploy().join("prometheus/prometheus.yml");
    let (ok, says) = promtool(&["check", "config", config.to_str().unwrap()]);
    assert!(ok, "{says}");
}

/// A Prometheus server on loopback (a free port, a temp data dir), killed and reaped on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus with the repo's config aimed at `target`, scraping and evaluating every
    /// second, and waits until it is ready.
    fn start(target: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let repo = std::fs::read_to_string(deploy().join("prometheus/prometheus.yml")).unwrap();
        let rules = deploy().join("prometheus/tessera-rules.yml");
        let config = repo
            .replace("127.0.0.1:9464", target)
            .replace("scrape_interval: 5s", "scrape_interval: 1s")
            .replace("evaluation_interval: 5s", "evaluation_interval: 1s")
            .replace("- tessera-rules.yml", &format!("- {}", rules.display()));
        assert_ne!(config, repo);
        let path = data.path().join("prometheus.yml");
        std::fs::write(&path, config).unwrap();
        // Prometheus cannot listen on port 0 and say which port it got: take a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!("--storage.tsdb.path={}", data.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is not installed: run scripts/setup.sh (Debian package `prometheus`)");
        let p = Self { child, addr, _data: data };
        p.wait_for("ready", Duration::from_secs(60), |p| p.get("/-/ready").is_some_and(|(code, _)| code == 200));
        p
    }

    /// `GET path` over HTTP/1.0: (status code, body), or `None` if nothing answered.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string())))
    }

    /// The result vector of an instant query (panics on an error answer).
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (code, body) = self.get(&format!("/api/v1/query?query={encoded}")).expect("prometheus answers");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(code == 200 && v["status"] == "success", "{promql}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every rule Prometheus loaded (from `GET /api/v1/rules`), as it parsed them.
    fn rules(&self) -> Vec<serde_json::Value> {
        let (code, body) = self.get("/api/v1/rules").expect("prometheus answers");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(code == 200 && v["status"] == "success", "{body}");
        v["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect()
    }

    /// Names of the alerts firing now.
    fn firing(&self) -> Vec<String> {
        let alerts = self.query(r#"ALERTS{alertstate="firing"}"#);
        alerts.iter().map(|a| a["metric"]["alertname"].as_str().unwrap_or("?").to_string()).collect()
    }

    /// Polls `ok` until it holds (panics after `limit`, naming `what`).
    fn wait_for(&self, what: &str, limit: Duration, ok: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !ok(self) {
            assert!(Instant::now() < deadline, "prometheus: not {what} within {limit:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

#[test]
fn a_live_jobs_metrics_pass_promtool_and_prometheus_evaluates_the_board_and_the_alerts() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "");
    // Validation too (a small held-out set), for the board's validation panel.
    let text = std::fs::read_to_string(&job).unwrap() + "\n[eval]\nevery_steps = 2\nsamples = 4\nbaseline_samples = 8\n";
    std::fs::write(&job, text).unwrap();
    let mut run = Running::start(&["train", &job, "--workers", "2", "--peak-tflops", "0.5", "--heartbeat-timeout-ms", "40000"]);
    run.wait_for_log(d.path(), 2, Duration::from_secs(180));
    let job_dir = d.path().join("out").display().to_string();
    let out = tessera(&["metrics", "--job-dir", &job_dir]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run scripts/setup.sh (Debian package `prometheus`)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let says = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && says.trim().is_empty(), "promtool check metrics:\n{says}\non:\n{text}");

    let series = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
    for name in [
        "tessera_mfu_ratio{",
        "tessera_model_flops_per_second{",
        "tessera_model_flops_per_token{",
        "tessera_peak_flops_per_second{",
        "tessera_loss{",
        "tessera_tokens_total{",
    ] {
        assert_eq!(series(name), 1, "{name}\n{text}");
    }
    for per_rank in ["tessera_rank_tokens_per_second{", "tessera_rank_data_wait_ratio{", "tessera_rank_resident_memory_bytes{"] {
        assert_eq!(series(per_rank), 2, "{per_rank}\n{text}");
    }
    assert!(text.contains(r#"tessera_peak_flops_per_second{job="cli-train"} 500000000000"#), "{text}");
    let mfu: f64 = text.lines().find(|l| l.starts_with("tessera_mfu_ratio{")).unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(mfu > 0.0 && mfu < 1.0, "MFU {mfu}");

    // A real Prometheus with the repo's config and rules, scraping this job.
    let endpoint: serde_json::Value = serde_json::from_slice(&std::fs::read(d.path().join("out/coordinator.json")).unwrap()).unwrap();
    let prom = Prometheus::start(endpoint["api"].as_str().unwrap());
    prom.wait_for("scraping the job", Duration::from_secs(120), |p| !p.query("tessera:step_seconds:median30m").is_empty());
    let board: serde_json::Value =
        serde_json::from_slice(&std::fs::read(deploy().join("grafana/tessera-dashboard.json")).unwrap()).unwrap();
    let mut exprs: Vec<String> = board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    let rules = std::fs::read_to_string(deploy().join("prometheus/tessera-rules.yml")).unwrap();
    // Recording rules: their expressions; alerts compare those or raw metrics with thresholds
    // (empty on a healthy job), so each metric an alert names must exist instead.
    let lines: Vec<&str> = rules.lines().map(str::trim).collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("- record:") {
            exprs.push(lines[i + 1].strip_prefix("expr: ").unwrap().to_string());
        }
    }
    let names: std::collections::BTreeSet<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("tessera_") || w.starts_with("tessera:"))
        .map(str::to_string)
        .collect();
    exprs.extend(names);
    assert!(exprs.len() > 30, "{exprs:?}");
    // A series appears with the scrape after the step that creates it: give every one a moment.
    for e in &exprs {
        prom.wait_for(&format!("returning data for {e}"), Duration::from_secs(60), |p| !p.query(e).is_empty());
    }

    // Every alert rule's whole expression, as Prometheus loaded it: it parses and evaluates
    // without error on this live job (a healthy job: each answers no series, not an error), and
    // Prometheus's own evaluation of every rule is healthy.
    let loaded = prom.rules();
    let alerts: Vec<&serde_json::Value> = loaded.iter().filter(|r| r["type"] == "alerting").collect();
    let alert_names: Vec<&str> = alerts.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        alert_names,
        ["TesseraJobStalled", "TesseraNonFiniteLoss", "TesseraStragglerFlagged", "TesseraCheckpointStale", "TesseraWorkerLost"]
    );
    for rule in &alerts {
        let expr = rule["query"].as_str().unwrap();
        let answer = prom.query(expr);
        // A rank of this shared, loaded machine may really be slowed for a while: only the
        // straggler alert may hold on a job that nothing was done to.
        if rule["name"] != "TesseraStragglerFlagged" {
            assert!(answer.is_empty(), "{} holds on a healthy job: {expr} = {answer:?}", rule["name"]);
        }
    }
    prom.wait_for("evaluating every rule healthily", Duration::from_secs(30), |p| {
        p.rules().iter().all(|r| r["health"] == "ok" && r["lastError"].as_str().unwrap_or("").is_empty())
    });

    // A worker that stops answering but stays registered (its heartbeat timeout, 40 s, is
    // longer than the stall threshold, 30 s on a job this fast): the job stops stepping, so the
    // stall alert fires while worker-lost does not; then the heartbeat timeout removes the
    // worker and aborts the generation, and worker-lost fires.
    let threshold = prom.query("clamp_min(10 * max by (job) (tessera:step_seconds:median30m), 30)");
    let threshold: f64 = threshold[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(threshold < 35.0, "the stall threshold ({threshold} s) must be below the heartbeat timeout for this scenario");
    let pids = run.rank_pids();
    signal("-STOP", &pids[0]);
    let stopped = Instant::now();
    prom.wait_for("firing the stall alert", Duration::from_secs(75), |p| p.firing().contains(&"TesseraJobStalled".to_string()));
    let stalled_s = stopped.elapsed().as_secs_f64();
    assert!(!prom.firing().contains(&"TesseraWorkerLost".to_string()), "worker-lost before the heartbeat timeout: {:?}", prom.firing());
    let registered = prom.query("tessera_workers_registered");
    assert_eq!(registered[0]["value"][1], "2", "the stopped worker is still registered: {registered:?}");
    prom.wait_for("firing the worker-lost alert", Duration::from_secs(75), |p| p.firing().contains(&"TesseraWorkerLost".to_string()));
    // Stated: stalled after max(10 × median step, 30 s) plus a scrape and an evaluation; lost
    // after the heartbeat timeout (40 s) plus the same.
    eprintln!("after SIGSTOP: TesseraJobStalled fired at {stalled_s:.1}s, TesseraWorkerLost at {:.1}s", stopped.elapsed().as_secs_f64());
    // The last step ended at most one step (well under 5 s here) before the SIGSTOP.
    assert!(stalled_s >= threshold - 5.0, "stalled after {stalled_s:.1}s, below its threshold {threshold}s");
    // The stopped worker was removed and killed by the coordinator, or is killed (stopped or
    // not) when `run` is dropped.
    drop(run);
}
