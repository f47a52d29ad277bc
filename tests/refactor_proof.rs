//! The bitwise refactor proof of issue 17: `tools/refactor_proof/record.sh`, run on this
//! build's binary, must print exactly `tools/refactor_proof/fixture.json`: every step's loss
//! (as `train_log.jsonl` wrote it, so equal text is equal bits), the validation losses, the
//! world sizes and the final parameters' SHA-256 of one process, 2 and 3 coordinated FSDP
//! ranks, an elastic job with a killed worker, and a shortened demo.
//!
//! The scenarios are defined once, in the script: a refactor is checked by the same commands
//! whether they are run by hand (`record.sh BIN > new.json; diff`) or here, and the script
//! can be run on the binary of the commit before the change.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The script, run in a process group of its own, SIGKILLed and reaped when dropped with all
/// its descendants: the script, its `tessera` processes and their workers (which a coordinator
/// starts in process groups of their own) never outlive the test, pass or fail.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let kill = |sig: &str, target: &str| {
            let _ = Command::new("kill").args([sig, "--", target]).stderr(Stdio::null()).status();
        };
        let group = format!("-{}", self.0.id());
        // Frozen first, so that no coordinator starts a worker between the listing and the kill.
        kill("-STOP", &group);
        let mut all = vec![self.0.id().to_string()];
        let mut i = 0;
        while i < all.len() {
            let out = Command::new("pgrep").args(["-P", &all[i]]).output().map(|o| o.stdout).unwrap_or_default();
            all.extend(String::from_utf8_lossy(&out).split_whitespace().map(str::to_string));
            i += 1;
        }
        kill("-KILL", &group);
        for pid in &all[1..] {
            kill("-KILL", pid);
        }
        let _ = self.0.wait();
    }
}

/// Differences between `want` and `got` as `path: want != got`, depth first.
fn differences(path: &str, want: &serde_json::Value, got: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::{Array, Object};
    match (want, got) {
        (Object(w), Object(g)) => {
            for k in w.keys().chain(g.keys().filter(|k| !w.contains_key(*k))) {
                let null = serde_json::Value::Null;
                differences(&format!("{path}.{k}"), w.get(k).unwrap_or(&null), g.get(k).unwrap_or(&null), out);
            }
        }
        (Array(w), Array(g)) if w.len() == g.len() => {
            for (i, (w, g)) in w.iter().zip(g).enumerate() {
                differences(&format!("{path}[{i}]"), w, g, out);
            }
        }
        _ if want != got => out.push(format!("{path}: fixture {want}, now {got}")),
        _ => {}
    }
}

#[test]
fn every_training_driver_reproduces_the_recorded_bits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proof = root.join("tools/refactor_proof");
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("recorded.json"), dir.path().join("record.log"));
    let start = Instant::now();
    let mut run = Group(
        Command::new("bash")
            .arg(proof.join("record.sh"))
            .arg(env!("CARGO_BIN_EXE_tessera"))
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    // About 3 minutes on 2 cores; the limit leaves room for a loaded CI machine.
    let limit = Duration::from_secs(900);
    let status = loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < limit, "record.sh ran over {limit:?}:\n{}", std::fs::read_to_string(&err).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&err).unwrap_or_default();
    eprintln!("record.sh took {:.1}s", start.elapsed().as_secs_f64());
    assert!(status.success(), "record.sh failed ({status}):\n{log}");
    let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(proof.join("fixture.json")).unwrap()).unwrap();
    let mut diff = Vec::new();
    differences("", &want, &got, &mut diff);
    assert!(
        diff.is_empty(),
        "the training drivers no longer reproduce tools/refactor_proof/fixture.json bit for bit ({} differences):\n{}\n\n{log}",
        diff.len(),
        diff.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}
