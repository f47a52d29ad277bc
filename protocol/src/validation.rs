//! Held-out validation results as they leave the ranks: per target modality the tokens scored,
//! the model's mean cross-entropy and the unigram baseline's on the same tokens. One type for
//! every path (one process, `--bare` ranks, a coordinated job) so that the table on the
//! terminal and the lines of `OUTPUT/eval_log.jsonl` read the same whoever scored them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ProtocolError, Result};
use crate::ids::ModalityName;

/// The file, under a job's output directory, that validations are appended to.
pub const EVAL_LOG: &str = "eval_log.jsonl";

/// One modality's validation score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModalityScore {
    /// Target tokens scored.
    pub tokens: u64,
    /// Mean cross-entropy of the model (nats per token).
    pub loss: f64,
    /// Mean cross-entropy of the unigram baseline, when one was fitted for this modality.
    pub unigram: Option<f64>,
}

/// One validation of the held-out set at a step count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// The generation whose ranks scored it (0 outside a coordinated job).
    pub generation: u64,
    /// Optimizer steps done when it was scored.
    pub step: u64,
    /// Held-out samples scored.
    pub samples: u64,
    /// Scores by modality key (`caption`, `tok_rgb@224`, ...).
    pub modalities: BTreeMap<ModalityName, ModalityScore>,
    /// Wall-clock seconds the scoring took (training waits for it).
    pub seconds: f64,
}

impl ValidationReport {
    /// The table printed on the terminal, one line per element (no trailing newline).
    pub fn table(&self) -> Vec<String> {
        let mut lines = vec![
            format!("validation at step {} ({} samples, {:.2}s):", self.step, self.samples, self.seconds),
            format!("  {:<22} {:>9} {:>9} {:>8}", "modality", "loss", "unigram", "tokens"),
        ];
        for (m, e) in &self.modalities {
            let unigram = e.unigram.map_or("-".into(), |u| format!("{u:.4}"));
            lines.push(format!("  {m:<22} {:>9.4} {unigram:>9} {:>8}", e.loss, e.tokens));
        }
        lines
    }

    /// Appends this validation as one line of `out/eval_log.jsonl` (`{"step", "modalities",
    /// "seconds"}`).
    pub fn append_to_log(&self, out: &Path) -> Result<()> {
        let path = out.join(EVAL_LOG);
        let io = |source| ProtocolError::Io { path: path.display().to_string(), source };
        let line = serde_json::json!({ "step": self.step, "modalities": self.modalities, "seconds": self.seconds });
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        // One write per line: a crash leaves at most a torn last line, which readers skip.
        f.write_all(format!("{line}\n").as_bytes()).map_err(io)
    }
}

/// The step of the last complete line of `out/eval_log.jsonl` (the log is appended to across
/// runs of a job), `None` without one.
pub fn last_logged_step(out: &Path) -> Option<u64> {
    std::fs::read_to_string(out.join(EVAL_LOG))
        .ok()?
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_tokenizers::Modality;

    fn report(step: u64) -> ValidationReport {
        ValidationReport {
            generation: 1,
            step,
            samples: 6,
            modalities: BTreeMap::from([
                (Modality::Caption.into(), ModalityScore { tokens: 40, loss: 2.5, unigram: Some(3.25) }),
                (Modality::TokRgb224.into(), ModalityScore { tokens: 7, loss: 9.0, unigram: None }),
            ]),
            seconds: 1.25,
        }
    }

    #[test]
    fn the_table_has_a_line_per_modality_with_a_dash_for_no_baseline() {
        let t = report(12).table();
        assert_eq!(t[0], "validation at step 12 (6 samples, 1.25s):");
        assert_eq!(t.len(), 4);
        assert!(t[2].contains("caption") && t[2].contains("2.5000") && t[2].contains("3.2500") && t[2].ends_with("40"), "{}", t[2]);
        assert!(t[3].contains("tok_rgb@224") && t[3].contains(" - "), "{}", t[3]);
    }

    /// The log keeps the layout readers (the demo, plots) parse, and the last step survives a
    /// torn line at the end.
    #[test]
    fn log_lines_append_and_the_last_step_is_found() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(last_logged_step(d.path()), None);
        report(3).append_to_log(d.path()).unwrap();
        report(6).append_to_log(d.path()).unwrap();
        let text = std::fs::read_to_string(d.path().join(EVAL_LOG)).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["step"], 6);
        assert_eq!(lines[1]["modalities"]["caption"]["tokens"], 40);
        assert_eq!(lines[1]["modalities"]["tok_rgb@224"]["unigram"], serde_json::Value::Null);
        std::fs::OpenOptions::new().append(true).open(d.path().join(EVAL_LOG)).unwrap().write_all(b"{\"step\": 9, \"mod").unwrap();
        assert_eq!(last_logged_step(d.path()), Some(6));
    }
}
