//! Rules 8 and 9: straggler attribution by each rank's own step time, the drain it may lead to,
//! and the successor admitted at the same boundary.

mod common;

use tessera_coordinator::control::{Action, Control, Event, Policy, SUCCESSOR_WAIT_MS, StopReason, StragglerPolicy};
use tessera_coordinator::control::{Generation, Rank, Step};

use common::{join, join_replacement, pid, started, w};

const POLICY: Policy = Policy {
    min_workers: 2,
    max_workers: 3,
    heartbeat_timeout_ms: 10_000,
    checkpoint_every: 0,
    total_steps: 100,
    rendezvous_grace_ms: 500,
    initial_workers: 0,
    launches: false,
    stragglers: StragglerPolicy { factor: 3.0, steps: 4, drain: false },
};

/// A running generation of workers 1, 2, 3 (ranks 0, 1, 2).
fn three(policy: Policy) -> Control {
    let mut c = Control::new(policy);
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    assert!(started(&join(&mut c, 0, 3)).is_some());
    c
}

/// One step with these own times (µs, by rank); returns what the coordinator decided.
fn step(c: &mut Control, now: &mut u64, own_us: &[u64]) -> Vec<Action> {
    *now += 100;
    let generation = c.running().expect("a generation runs").generation;
    let step = c.next_step();
    let mut acts = c.handle(*now, Event::RankTimes { generation, step, own_us: own_us.to_vec() });
    acts.extend(c.handle(*now, Event::StepDone { generation, step }));
    acts
}

fn flags(acts: &[Action]) -> Vec<(u64, u32, bool)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::StragglerFlagged { id, rank, drain, .. } => Some((id.0, rank.0, *drain)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rank_slow_for_k_steps_in_a_row_is_flagged_once_and_not_drained_by_default() {
    let mut c = three(POLICY);
    let mut now = 0;
    // Every rank's step takes as long in a synchronous job; the own times differ: rank 1 takes
    // 6× the others' median.
    for _ in 0..3 {
        assert!(flags(&step(&mut c, &mut now, &[100_000, 600_000, 110_000])).is_empty());
    }
    let acts = step(&mut c, &mut now, &[100_000, 600_000, 110_000]);
    assert_eq!(flags(&acts), vec![(2, 1, false)], "{acts:?}");
    assert!(acts.contains(&Action::StragglerFlagged {
        id: w(2),
        rank: Rank(1),
        step: Step(3),
        own_us: 600_000,
        median_us: 105_000,
        drain: false
    }));
    assert_eq!(c.stragglers().collect::<Vec<_>>(), vec![w(2)]);
    for _ in 0..10 {
        let acts = step(&mut c, &mut now, &[100_000, 600_000, 110_000]);
        assert!(flags(&acts).is_empty(), "flagged once per generation: {acts:?}");
        assert!(!acts.iter().any(|a| matches!(a, Action::StopAtBoundary { .. } | Action::Launch { .. })), "{acts:?}");
    }
}

#[test]
fn a_step_at_normal_speed_restarts_the_count_and_mild_slowness_is_not_flagged() {
    let mut c = three(POLICY);
    let mut now = 0;
    for _ in 0..3 {
        step(&mut c, &mut now, &[100, 500, 100]);
    }
    step(&mut c, &mut now, &[100, 120, 100]);
    for _ in 0..3 {
        assert!(flags(&step(&mut c, &mut now, &[100, 500, 100])).is_empty());
    }
    // Exactly the factor is not above it; 2.9× never is.
    let mut c = three(POLICY);
    for _ in 0..10 {
        assert!(flags(&step(&mut c, &mut now, &[100, 300, 100])).is_empty());
        assert!(flags(&step(&mut c, &mut now, &[100, 290, 100])).is_empty());
    }
    assert_eq!(c.stragglers().count(), 0);
}

#[test]
fn two_ranks_compare_with_each_other_and_stale_or_malformed_times_are_ignored() {
    let mut c = Control::new(Policy { max_workers: 2, ..POLICY });
    join(&mut c, 0, 1);
    assert!(started(&join(&mut c, 0, 2)).is_some());
    let mut now = 0;
    for _ in 0..3 {
        // Another generation's times, or one rank's too few, count for nothing.
        assert!(c.handle(now, Event::RankTimes { generation: Generation(7), step: Step(0), own_us: vec![1, 100] }).is_empty());
        assert!(c.handle(now, Event::RankTimes { generation: Generation(0), step: Step(0), own_us: vec![100] }).is_empty());
        step(&mut c, &mut now, &[1_000, 5_000]);
    }
    assert_eq!(flags(&step(&mut c, &mut now, &[1_000, 5_000])), vec![(2, 1, false)]);
}

/// Flags worker 3 (rank 2) of a launched job with drain on; returns the flag's actions.
fn flag_rank_2(c: &mut Control, now: &mut u64) -> Vec<Action> {
    for _ in 0..3 {
        step(c, now, &[100, 100, 900]);
    }
    step(c, now, &[100, 100, 900])
}

fn stops(acts: &[Action]) -> bool {
    acts.iter().any(|a| matches!(a, Action::StopAtBoundary { .. }))
}

#[test]
fn with_drain_on_a_launched_straggler_and_its_replacement_change_places_at_one_checkpointed_boundary() {
    let stragglers = StragglerPolicy { drain: true, ..POLICY.stragglers };
    let mut c = three(Policy { launches: true, initial_workers: 3, stragglers, ..POLICY });
    let mut now = 0;
    let acts = flag_rank_2(&mut c, &mut now);
    assert_eq!(flags(&acts), vec![(3, 2, true)]);
    assert!(acts.contains(&Action::Launch { count: 1, replacing: Some(w(3)) }), "{acts:?}");
    assert!(c.members().any(|m| m.id == w(3) && m.draining));
    // Rule 10: while its successor starts, the straggler trains on (slowly) instead of leaving
    // at once and the successor being admitted at a second restart.
    assert!(!stops(&acts), "{acts:?}");
    for _ in 0..5 {
        assert!(!stops(&step(&mut c, &mut now, &[100, 100, 900])));
    }
    assert!(!stops(&c.handle(now, Event::Tick)));
    // The successor joins: one stop with a checkpoint, at the next boundary.
    let acts = join_replacement(&mut c, now, 4);
    assert!(acts.contains(&Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Resize }), "{acts:?}");
    let step_now = c.next_step();
    assert!(
        c.handle(now, Event::CheckpointReady { generation: Generation(0), step: step_now })
            .contains(&Action::Commit { generation: Generation(0), step: step_now })
    );
    c.handle(now, Event::CheckpointCommitted { step: step_now });
    let acts = c.handle(now, Event::GenerationStopped { generation: Generation(0) });
    assert!(acts.contains(&Action::Remove { id: w(3), lost: false }), "{acts:?}");
    let plan = started(&acts).expect("the survivors and the successor go on");
    assert_eq!((plan.ranks.clone(), plan.restore), (vec![w(1), w(2), w(4)], Some(step_now)));
    assert_eq!(c.stragglers().count(), 0, "a new generation starts unflagged");
    // Nothing further to change: the new generation keeps running.
    assert!(!stops(&step(&mut c, &mut now, &[100, 100, 100])));
}

#[test]
fn a_successor_that_fails_to_start_or_is_too_slow_lets_the_drain_go_ahead_alone() {
    let stragglers = StragglerPolicy { drain: true, ..POLICY.stragglers };
    let policy = Policy { launches: true, initial_workers: 3, stragglers, ..POLICY };

    // Its start failed: the straggler leaves at the next boundary.
    let mut c = three(policy);
    let mut now = 0;
    assert!(!stops(&flag_rank_2(&mut c, &mut now)));
    let acts = c.handle(now, Event::LaunchFailed { count: 1, replacement: true });
    assert!(acts.contains(&Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Resize }), "{acts:?}");

    // Its process died before joining: the same.
    let mut c = three(policy);
    let mut now = 0;
    assert!(!stops(&flag_rank_2(&mut c, &mut now)));
    c.handle(now, Event::Launched { pids: vec![pid(4)], replacement: true });
    let acts = c.handle(now, Event::ProcessExited { worker: None, pid: pid(4) });
    assert!(stops(&acts), "{acts:?}");

    // It has not joined within the wait: the drain goes ahead, and the successor joining later
    // is admitted at a later boundary (two restarts, as without rule 9).
    let mut c = three(policy);
    let mut now = 0;
    assert!(!stops(&flag_rank_2(&mut c, &mut now)));
    let flagged_at = now;
    // The members stay alive meanwhile (heartbeats), so nobody is lost.
    let beat = |c: &mut Control, at: u64| (1..=3).flat_map(|id| c.handle(at, Event::Heartbeat { id: w(id) })).collect::<Vec<_>>();
    for at in (flagged_at + 5_000..flagged_at + SUCCESSOR_WAIT_MS).step_by(5_000).chain([flagged_at + SUCCESSOR_WAIT_MS - 1]) {
        let acts = beat(&mut c, at);
        assert!(!stops(&acts) && !acts.iter().any(|a| matches!(a, Action::Remove { .. })), "at {at}: {acts:?}");
    }
    now = flagged_at + SUCCESSOR_WAIT_MS;
    let acts = beat(&mut c, now);
    assert!(acts.contains(&Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Resize }), "{acts:?}");
    let at = c.next_step();
    c.handle(now, Event::CheckpointCommitted { step: at });
    let plan = started(&c.handle(now, Event::GenerationStopped { generation: Generation(0) })).expect("the survivors go on");
    assert_eq!(plan.ranks, vec![w(1), w(2)]);
    let acts = join_replacement(&mut c, now, 4);
    assert!(acts.contains(&Action::StopAtBoundary { generation: Generation(1), checkpoint: true, reason: StopReason::Resize }), "{acts:?}");
}

#[test]
fn without_a_launcher_a_straggler_is_drained_only_if_the_job_keeps_min_workers() {
    let stragglers = StragglerPolicy { drain: true, ..POLICY.stragglers };
    let mut now = 0;
    let mut c = three(Policy { min_workers: 3, stragglers, ..POLICY });
    for _ in 0..3 {
        step(&mut c, &mut now, &[900, 100, 100]);
    }
    let acts = step(&mut c, &mut now, &[900, 100, 100]);
    assert_eq!(flags(&acts), vec![(1, 0, false)], "draining it would stop the job: flag only");
    assert!(!acts.iter().any(|a| matches!(a, Action::StopAtBoundary { .. } | Action::Launch { .. })), "{acts:?}");

    let mut c = three(Policy { min_workers: 2, stragglers, ..POLICY });
    for _ in 0..3 {
        step(&mut c, &mut now, &[900, 100, 100]);
    }
    let acts = step(&mut c, &mut now, &[900, 100, 100]);
    assert_eq!(flags(&acts), vec![(1, 0, true)]);
    assert!(!acts.iter().any(|a| matches!(a, Action::Launch { .. })), "nobody to launch a successor: {acts:?}");
    assert!(acts.iter().any(|a| matches!(a, Action::StopAtBoundary { checkpoint: true, .. })), "{acts:?}");
}
