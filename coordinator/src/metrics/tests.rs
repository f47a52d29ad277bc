use std::collections::BTreeMap;

use prometheus::Registry;

use super::{FlopsModel, JobMetrics};
use crate::api::ValidationStatus;
use crate::error::CoordinatorError;
use tessera_protocol::report::{StepReport, StepTimings};
use tessera_protocol::validation::{ModalityScore, ValidationReport};
use tessera_protocol::{Generation, Rank, Step};
use tessera_tokenizers::Modality;

fn report(generation: u64, step: u64, rank: u32, world: u32, samples: u64, tokens: u64, total_s: f64) -> StepReport {
    StepReport {
        generation: Generation(generation),
        step: Step(step),
        rank: Rank(rank),
        world,
        loss: 1.5,
        losses: BTreeMap::from([(Modality::Rgb224.into(), 1.0 + f64::from(rank) * 2.0), (Modality::Caption.into(), 2.0)]),
        lr: 1e-4,
        grad_norm: 0.75,
        samples,
        tokens,
        skipped: false,
        skipped_samples: u64::from(rank),
        timings: StepTimings {
            data_s: 0.125 * f64::from(rank + 1),
            forward_s: 0.0625,
            backward_s: 0.125,
            comm_s: 0.03125,
            optimizer_s: 0.015625,
            total_s,
        },
        rss_bytes: Some(u64::from(rank + 1) << 20),
        counters: Default::default(),
    }
}

/// The value of the series `series` (name plus label set, exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' '))).map(|v| v.parse().unwrap())
}

#[test]
fn metrics_aggregate_two_ranks_and_drop_stale_rank_labels() {
    let registry = Registry::new();
    let m = JobMetrics::new(&registry).unwrap();
    m.set_generation(Generation(1), 2);
    m.set_workers(3);
    // Rank 0 is fast, rank 1 is the straggler: the step takes 0.5 s for both.
    m.observe_step(&[report(1, 41, 0, 2, 8, 1000, 0.25), report(1, 41, 1, 2, 8, 1200, 0.5)]).unwrap();
    let text = m.render().unwrap();

    assert_eq!(value(&text, "tessera_step"), Some(41.0));
    assert_eq!(value(&text, "tessera_tokens_per_second"), Some(2200.0 / 0.5));
    assert_eq!(value(&text, "tessera_samples_per_second"), Some(16.0 / 0.5));
    assert_eq!(value(&text, "tessera_tokens_total"), Some(2200.0));
    assert_eq!(value(&text, "tessera_loss"), Some(1.5));
    // Equal sample counts: the per-modality loss is the plain mean of 1.0 and 3.0.
    assert_eq!(value(&text, r#"tessera_modality_loss{modality="rgb@224"}"#), Some(2.0));
    assert_eq!(value(&text, r#"tessera_modality_loss{modality="caption"}"#), Some(2.0));
    assert_eq!(value(&text, r#"tessera_step_phase_seconds{phase="data"}"#), Some(0.25));
    assert_eq!(value(&text, r#"tessera_step_phase_seconds{phase="total"}"#), Some(0.5));
    assert_eq!(value(&text, r#"tessera_step_phase_seconds{phase="optimizer"}"#), Some(0.015625));
    assert_eq!(value(&text, r#"tessera_rank_step_seconds{rank="0"}"#), Some(0.25));
    assert_eq!(value(&text, r#"tessera_rank_step_seconds{rank="1"}"#), Some(0.5));
    assert_eq!(value(&text, "tessera_world_size"), Some(2.0));
    assert_eq!(value(&text, "tessera_generation"), Some(1.0));
    assert_eq!(value(&text, "tessera_workers_registered"), Some(3.0));
    assert_eq!(value(&text, "tessera_skipped_samples_total"), Some(1.0));
    assert_eq!(value(&text, "tessera_skipped_steps_total"), Some(0.0));
    assert_eq!(value(&text, "tessera_learning_rate"), Some(1e-4));
    assert!(text.contains("# TYPE tessera_tokens_total counter"), "{text}");

    // A restart into a smaller world: rank 1's series must disappear, not linger at 0.5.
    m.inc_restarts();
    m.set_generation(Generation(2), 1);
    let text = m.render().unwrap();
    assert_eq!(value(&text, r#"tessera_rank_step_seconds{rank="1"}"#), None, "{text}");
    assert_eq!(value(&text, r#"tessera_rank_step_seconds{rank="0"}"#), None, "{text}");
    let mut skipped = report(2, 40, 0, 1, 16, 2000, 0.25);
    skipped.skipped = true;
    m.observe_step(&[skipped]).unwrap();
    // A late report of the old generation is refused, so rank 1 cannot come back.
    let stale = m.observe_step(&[report(1, 42, 1, 2, 8, 1200, 0.5)]);
    assert!(matches!(stale, Err(CoordinatorError::StepReports { .. })), "{stale:?}");

    m.observe_checkpoint(1.5, 1000);
    m.observe_checkpoint(2.5, 3000);
    let text = m.render().unwrap();
    assert_eq!(value(&text, r#"tessera_rank_step_seconds{rank="0"}"#), Some(0.25));
    assert_eq!(value(&text, r#"tessera_rank_step_seconds{rank="1"}"#), None, "{text}");
    assert_eq!(value(&text, "tessera_tokens_per_second"), Some(8000.0));
    assert_eq!(value(&text, "tessera_tokens_total"), Some(4200.0));
    assert_eq!(value(&text, "tessera_world_size"), Some(1.0));
    assert_eq!(value(&text, "tessera_restarts_total"), Some(1.0));
    assert_eq!(value(&text, "tessera_skipped_steps_total"), Some(1.0));
    assert_eq!(value(&text, "tessera_checkpoints_committed_total"), Some(2.0));
    assert_eq!(value(&text, "tessera_checkpoint_bytes_total"), Some(4000.0));
    assert_eq!(value(&text, "tessera_checkpoint_last_bytes"), Some(3000.0));
    assert_eq!(value(&text, "tessera_checkpoint_duration_seconds_sum"), Some(4.0));
    assert_eq!(value(&text, "tessera_checkpoint_duration_seconds_count"), Some(2.0));
}

#[test]
fn metrics_refuse_inconsistent_reports() {
    let m = JobMetrics::new(&Registry::new()).unwrap();
    let bad = |reports: &[StepReport]| matches!(m.observe_step(reports), Err(CoordinatorError::StepReports { .. }));
    assert!(bad(&[]));
    assert!(bad(&[report(1, 1, 0, 2, 1, 1, 1.0), report(1, 2, 1, 2, 1, 1, 1.0)]), "mixed steps");
    assert!(bad(&[report(1, 1, 0, 2, 1, 1, 1.0), report(1, 1, 0, 2, 1, 1, 1.0)]), "rank twice");
    assert!(bad(&[report(1, 1, 2, 2, 1, 1, 1.0)]), "rank outside world");
    m.set_generation(Generation(3), 2);
    assert!(bad(&[report(3, 1, 0, 4, 1, 1, 1.0)]), "world other than the generation's");
}

#[test]
fn metrics_refuse_a_second_registration_on_one_registry() {
    let registry = Registry::new();
    let _first = JobMetrics::new(&registry).unwrap();
    assert!(matches!(JobMetrics::new(&registry), Err(CoordinatorError::Metrics { .. })));
}

#[test]
fn validation_scores_are_gauges_per_modality() {
    let m = JobMetrics::new(&Registry::new()).unwrap();
    let report = |step: u64, scores: &[(Modality, f64)], seconds: f64| ValidationReport {
        generation: 0,
        step,
        samples: 8,
        modalities: scores.iter().map(|(m, l)| ((*m).into(), ModalityScore { tokens: 10, loss: *l, unigram: None })).collect(),
        seconds,
    };
    m.observe_validation(&report(100, &[(Modality::Rgb224, 2.5), (Modality::Caption, 4.0)], 1.5));
    m.observe_validation(&report(200, &[(Modality::Rgb224, 2.0)], 2.25));
    let text = m.render().unwrap();
    assert_eq!(value(&text, "tessera_validation_step"), Some(200.0));
    assert_eq!(value(&text, "tessera_validation_seconds"), Some(2.25));
    assert_eq!(value(&text, r#"tessera_validation_loss{modality="rgb@224"}"#), Some(2.0));
    // A modality without targets this time keeps its last score.
    assert_eq!(value(&text, r#"tessera_validation_loss{modality="caption"}"#), Some(4.0));
    // The status shows the last validation as it was.
    assert_eq!(m.last_validation(), Some(ValidationStatus { step: 200, loss: [(Modality::Rgb224.into(), 2.0)].into(), seconds: 2.25 }));
}

#[test]
fn step_gauges_are_absent_before_the_first_step_and_counters_start_at_zero() {
    let m = JobMetrics::new(&Registry::new()).unwrap();
    m.set_generation(Generation(1), 2);
    let text = m.render().unwrap();
    for gauge in
        ["tessera_step", "tessera_loss", "tessera_learning_rate", "tessera_grad_norm", "tessera_tokens_per_second", "tessera_mfu_ratio"]
    {
        assert_eq!(value(&text, gauge), None, "{gauge} before any step:\n{text}");
    }
    for counter in ["tessera_tokens_total", "tessera_samples_total", "tessera_restarts_total", "tessera_skipped_steps_total"] {
        assert_eq!(value(&text, counter), Some(0.0), "{counter}:\n{text}");
    }
    assert_eq!(value(&text, "tessera_world_size"), Some(2.0));
    m.observe_step(&[report(1, 0, 0, 2, 8, 1000, 0.25), report(1, 0, 1, 2, 8, 1000, 0.5)]).unwrap();
    let text = m.render().unwrap();
    assert_eq!(value(&text, "tessera_step"), Some(0.0));
    assert_eq!(value(&text, "tessera_loss"), Some(1.5));
    // No FLOPs model was set: no made-up FLOP/s or MFU either.
    assert_eq!(value(&text, "tessera_model_flops_per_second"), None);
    assert_eq!(value(&text, "tessera_mfu_ratio"), None);
}

#[test]
fn flops_mfu_and_per_rank_series_follow_the_reports() {
    let registry = Registry::new_custom(None, Some([("job".to_string(), "demo".to_string())].into())).unwrap();
    let m = JobMetrics::new(&registry).unwrap();
    m.set_generation(Generation(1), 2);
    m.set_flops_model(FlopsModel { flops_per_token: 1e6, peak_flops_per_rank: Some(4e9) });
    // Rank 1 is the slow one: 2200 tokens in 0.5 s for the step, 2.2e9 model FLOP/s.
    m.observe_step(&[report(1, 3, 0, 2, 8, 1000, 0.25), report(1, 3, 1, 2, 8, 1200, 0.5)]).unwrap();
    let text = m.render().unwrap();
    let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(v(r#"tessera_model_flops_per_token{job="demo"}"#), 1e6);
    assert_eq!(v(r#"tessera_peak_flops_per_second{job="demo"}"#), 4e9);
    assert_eq!(v(r#"tessera_model_flops_per_second{job="demo"}"#), 2200.0 * 1e6 / 0.5);
    assert_eq!(v(r#"tessera_mfu_ratio{job="demo"}"#), 2200.0 * 1e6 / 0.5 / (2.0 * 4e9));
    assert_eq!(v(r#"tessera_rank_tokens_per_second{rank="0",job="demo"}"#), 1000.0 / 0.25);
    assert_eq!(v(r#"tessera_rank_tokens_per_second{rank="1",job="demo"}"#), 1200.0 / 0.5);
    // data_s is 0.125 · (rank + 1).
    assert_eq!(v(r#"tessera_rank_data_wait_ratio{rank="0",job="demo"}"#), 0.125 / 0.25);
    assert_eq!(v(r#"tessera_rank_data_wait_ratio{rank="1",job="demo"}"#), 0.25 / 0.5);
    assert_eq!(v(r#"tessera_rank_resident_memory_bytes{rank="1",job="demo"}"#), f64::from(2u32 << 20));
    // A new generation drops every per-rank series.
    m.set_generation(Generation(2), 1);
    let text = m.render().unwrap();
    for family in ["tessera_rank_tokens_per_second", "tessera_rank_data_wait_ratio", "tessera_rank_resident_memory_bytes"] {
        assert!(!text.lines().any(|l| l.starts_with(&format!("{family}{{"))), "{family} lingers:\n{text}");
    }
    // An unknown peak leaves FLOP/s but no MFU.
    m.set_flops_model(FlopsModel { flops_per_token: 1e6, peak_flops_per_rank: None });
    let text = m.render().unwrap();
    assert_eq!(value(&text, r#"tessera_peak_flops_per_second{job="demo"}"#), None, "{text}");
}

#[test]
fn own_step_time_and_the_straggler_flag_are_per_rank() {
    let m = JobMetrics::new(&Registry::new()).unwrap();
    m.set_generation(Generation(3), 2);
    let text = m.render().unwrap();
    assert_eq!(value(&text, "tessera_stragglers_flagged_total"), Some(0.0), "a counter from the first scrape:\n{text}");
    m.observe_step(&[report(3, 0, 0, 2, 8, 1000, 0.5), report(3, 0, 1, 2, 8, 1000, 0.5)]).unwrap();
    let text = m.render().unwrap();
    // comm_s is 0.03125 in every report: own = total - comm.
    assert_eq!(value(&text, r#"tessera_rank_own_step_seconds{rank="1"}"#), Some(0.5 - 0.03125));
    assert_eq!(value(&text, r#"tessera_rank_straggler{rank="0"}"#), Some(0.0), "{text}");
    assert_eq!(value(&text, r#"tessera_rank_straggler{rank="1"}"#), Some(0.0));
    let since = value(&text, "tessera_last_step_timestamp_seconds").unwrap();
    assert!(since > 1.7e9, "a UNIX time from the start: {since}");
    m.flag_straggler(Rank(1));
    m.observe_step(&[report(3, 1, 0, 2, 8, 1000, 0.5), report(3, 1, 1, 2, 8, 1000, 0.5)]).unwrap();
    let text = m.render().unwrap();
    assert_eq!(value(&text, r#"tessera_rank_straggler{rank="1"}"#), Some(1.0), "a later step keeps the flag:\n{text}");
    assert_eq!(value(&text, r#"tessera_rank_straggler{rank="0"}"#), Some(0.0));
    assert_eq!(value(&text, "tessera_stragglers_flagged_total"), Some(1.0));
    m.set_generation(Generation(4), 2);
    let text = m.render().unwrap();
    assert!(!text.contains("tessera_rank_straggler{"), "a new generation starts unflagged:\n{text}");
    assert_eq!(value(&text, "tessera_stragglers_flagged_total"), Some(1.0));
}
