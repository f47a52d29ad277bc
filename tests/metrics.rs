//! A live job's `/metrics`: `promtool check metrics` (Debian `prometheus`, installed by
//! scripts/setup.sh) accepts it, and the series users read first are there with the job label.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Running, tessera, write_job};

#[test]
fn a_live_jobs_metrics_pass_promtool_and_carry_mfu_and_per_rank_series() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(d.path(), 100_000, "");
    let mut run = Running::start(&["train", &job, "--workers", "2", "--peak-tflops", "0.5"]);
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
    drop(run);
}
