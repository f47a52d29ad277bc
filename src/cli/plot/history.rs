//! What `tessera plot` draws, read from a job's output directory: `train_log.jsonl` (either
//! form: the coordinator's lines with a `timings` object, or one process's flat lines),
//! `eval_log.jsonl` and `events.jsonl` (restarts, resizes and mixture changes, by step).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use tessera_coordinator::{EventLog, JobEvent};
use tessera_protocol::JsonLines;

/// The step phases drawn in the step-time panel, in legend order.
pub const PHASES: [&str; 6] = ["data", "forward", "backward", "comm", "optimizer", "total"];

/// A job's history, each series a list of (step, value) in log order.
#[derive(Debug, Default)]
pub struct History {
    /// Total training loss.
    pub loss: Vec<(u64, f64)>,
    /// Training loss per modality.
    pub mod_loss: BTreeMap<String, Vec<(u64, f64)>>,
    /// Held-out loss per modality, at each validation.
    pub val_loss: BTreeMap<String, Vec<(u64, f64)>>,
    /// Learning rate.
    pub lr: Vec<(u64, f64)>,
    /// Gradient norm before clipping.
    pub grad_norm: Vec<(u64, f64)>,
    /// Tokens per second (all ranks).
    pub tokens_per_s: Vec<(u64, f64)>,
    /// Seconds per step of each of [`PHASES`].
    pub phases: [Vec<(u64, f64)>; 6],
    /// Restarts, resizes and mixture changes, by the first step they affect.
    pub markers: Vec<Marker>,
}

/// Something that changed the run at a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Marker {
    /// The first step it affects.
    pub step: u64,
    /// What happened.
    pub kind: MarkerKind,
}

/// The kinds of [`Marker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MarkerKind {
    /// Training restarted from a checkpoint with the same world size.
    Restart,
    /// Training restarted from a checkpoint with another world size.
    Resize,
    /// The dataset mixture changed.
    Mixture,
}

impl MarkerKind {
    /// The legend name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Resize => "resize",
            Self::Mixture => "mixture change",
        }
    }
}

/// One line of `train_log.jsonl`; every field but the step is optional so that both forms parse.
#[derive(Debug, Deserialize)]
struct TrainLine {
    step: u64,
    /// `null` when the loss was not finite (JSON has no NaN).
    loss: Option<f64>,
    #[serde(default)]
    mod_loss: BTreeMap<String, Option<f64>>,
    lr: Option<f64>,
    grad_norm: Option<f64>,
    step_s: Option<f64>,
    tokens: Option<u64>,
    /// The coordinator's form: phases of the reporting rank.
    timings: Option<Timings>,
    /// One process's form: flat phase fields.
    data_s: Option<f64>,
    forward_s: Option<f64>,
    compute_s: Option<f64>,
    comm_s: Option<f64>,
    optim_s: Option<f64>,
}

/// `timings` of a coordinator log line (`tessera_coordinator::StepTimings`).
#[derive(Debug, Deserialize)]
struct Timings {
    data_s: f64,
    forward_s: f64,
    backward_s: f64,
    comm_s: f64,
    optimizer_s: f64,
    total_s: f64,
}

/// One line of `eval_log.jsonl`.
#[derive(Debug, Deserialize)]
struct EvalLine {
    step: u64,
    modalities: BTreeMap<String, EvalScore>,
}

/// One modality of an [`EvalLine`].
#[derive(Debug, Deserialize)]
struct EvalScore {
    loss: Option<f64>,
}

impl History {
    /// Reads the logs under `job_dir`; `train_log.jsonl` must exist, the others may not.
    pub fn read(job_dir: &Path) -> anyhow::Result<Self> {
        let mut h = Self::default();
        let train = job_dir.join("train_log.jsonl");
        anyhow::ensure!(train.is_file(), "{} has no train_log.jsonl: is it a job's output directory?", job_dir.display());
        for (i, line) in JsonLines::complete_lines(&train)?.iter().enumerate() {
            let l: TrainLine = serde_json::from_slice(line).with_context(|| format!("{} line {}", train.display(), i + 1))?;
            h.push_train(l);
        }
        let eval = job_dir.join(tessera_protocol::validation::EVAL_LOG);
        if eval.is_file() {
            for (i, line) in JsonLines::complete_lines(&eval)?.iter().enumerate() {
                let l: EvalLine = serde_json::from_slice(line).with_context(|| format!("{} line {}", eval.display(), i + 1))?;
                for (m, s) in l.modalities {
                    if let Some(loss) = s.loss {
                        h.val_loss.entry(m).or_default().push((l.step, loss));
                    }
                }
            }
        }
        let events = job_dir.join("events.jsonl");
        if events.is_file() {
            h.markers = markers(EventLog::read_all(&events)?.into_iter().map(|e| e.event));
        }
        Ok(h)
    }

    fn push_train(&mut self, l: TrainLine) {
        let s = l.step;
        let put = |series: &mut Vec<(u64, f64)>, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                series.push((s, v));
            }
        };
        put(&mut self.loss, l.loss);
        put(&mut self.lr, l.lr);
        put(&mut self.grad_norm, l.grad_norm);
        for (m, v) in l.mod_loss {
            // A zero means the modality had no targets in that batch, not a perfect fit.
            put(self.mod_loss.entry(m).or_default(), v.filter(|v| *v > 0.0));
        }
        let step_s = l.timings.as_ref().map(|t| t.total_s).or(l.step_s);
        put(&mut self.tokens_per_s, l.tokens.zip(step_s.filter(|t| *t > 0.0)).map(|(n, t)| n as f64 / t));
        let phases = match l.timings {
            Some(t) => [Some(t.data_s), Some(t.forward_s), Some(t.backward_s), Some(t.comm_s), Some(t.optimizer_s), Some(t.total_s)],
            // One process times forward and backward together (its collectives inside them).
            None => {
                let backward = l.compute_s.zip(l.forward_s).map(|(c, f)| (c - f - l.comm_s.unwrap_or(0.0)).max(0.0));
                [l.data_s, l.forward_s, backward, l.comm_s, l.optim_s, l.step_s]
            }
        };
        for (series, v) in self.phases.iter_mut().zip(phases) {
            put(series, v);
        }
    }
}

/// The restarts, resizes and mixture changes among `events`, each once, by step: a generation
/// that restores a checkpoint is a restart, or a resize when its world differs from the
/// previous generation's (a job resumed by a new coordinator is a restart too).
pub fn markers(events: impl IntoIterator<Item = JobEvent>) -> Vec<Marker> {
    let mut out = Vec::new();
    let mut world = None;
    for e in events {
        match e {
            JobEvent::GenerationStarted { ranks, start_step, restore, .. } => {
                if restore.is_some() {
                    let kind = if world.is_some_and(|w| w != ranks.len()) { MarkerKind::Resize } else { MarkerKind::Restart };
                    out.push(Marker { step: start_step, kind });
                }
                world = Some(ranks.len());
            }
            // Nothing restarted: the same generation goes on under a new coordinator.
            JobEvent::GenerationAdopted { ranks, .. } => world = Some(ranks.len()),
            JobEvent::MixtureChanged { effective_step, .. } => out.push(Marker { step: effective_step, kind: MarkerKind::Mixture }),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(generation: u64, world: u64, start_step: u64, restore: Option<u64>) -> JobEvent {
        JobEvent::GenerationStarted { generation, ranks: (0..world).collect(), start_step, restore }
    }

    #[test]
    fn markers_tell_restarts_from_resizes_and_mixture_changes() {
        let events = vec![
            JobEvent::CoordinatorStarted { resumed_step: None },
            generation(1, 2, 0, None),
            generation(2, 2, 10, Some(10)),
            JobEvent::MixtureChanged { version: 1, effective_step: 12, weights: BTreeMap::new() },
            generation(3, 3, 20, Some(20)),
            generation(4, 3, 30, Some(30)),
        ];
        let kinds: Vec<(u64, MarkerKind)> = markers(events).into_iter().map(|m| (m.step, m.kind)).collect();
        assert_eq!(kinds, vec![(10, MarkerKind::Restart), (12, MarkerKind::Mixture), (20, MarkerKind::Resize), (30, MarkerKind::Restart)]);
        // A coordinator resuming a job starts with a restoring generation: a restart.
        assert_eq!(markers(vec![generation(1, 2, 40, Some(40))]), vec![Marker { step: 40, kind: MarkerKind::Restart }]);
    }

    #[test]
    fn both_train_log_forms_give_the_same_series() {
        let coordinator = r#"{"step":3,"loss":2.5,"mod_loss":{"caption":2.0,"det":0.0},"lr":0.001,"grad_norm":1.5,"tokens":512,
            "timings":{"data_s":0.25,"forward_s":0.5,"backward_s":1.0,"comm_s":0.0,"optimizer_s":0.25,"total_s":2.0}}"#;
        let single = r#"{"step":3,"loss":2.5,"mod_loss":{"caption":2.0,"det":0.0},"lr":0.001,"grad_norm":1.5,"tokens":512,
            "data_s":0.25,"forward_s":0.5,"compute_s":1.5,"comm_s":0.0,"optim_s":0.25,"step_s":2.0}"#;
        let read = |line: &str| {
            let mut h = History::default();
            h.push_train(serde_json::from_str(&line.replace('\n', "")).unwrap());
            h
        };
        for h in [read(coordinator), read(single)] {
            assert_eq!(h.loss, vec![(3, 2.5)]);
            // det had no targets (0.0): no point rather than a fake perfect loss.
            assert_eq!(h.mod_loss["caption"], vec![(3, 2.0)]);
            assert!(h.mod_loss.get("det").is_none_or(Vec::is_empty));
            assert_eq!(h.tokens_per_s, vec![(3, 256.0)]);
            let phases: Vec<f64> = h.phases.iter().map(|p| p[0].1).collect();
            assert_eq!(phases, vec![0.25, 0.5, 1.0, 0.0, 0.25, 2.0]);
        }
        // A non-finite loss is logged as null and leaves a gap.
        let h = read(r#"{"step":4,"loss":null,"mod_loss":{"caption":null}}"#);
        assert!(h.loss.is_empty() && h.mod_loss["caption"].is_empty());
    }
}
