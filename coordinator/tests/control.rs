//! The coordinator's decisions, driven event by event with an explicit clock.

mod common;

use tessera_coordinator::control::{Action, Control, DrainCause, Ending, Event, GenerationPlan, Policy, StopReason, StragglerPolicy};
use tessera_coordinator::control::{Generation, Step};

use common::{join, started, w};

const POLICY: Policy = Policy {
    min_workers: 2,
    max_workers: 3,
    heartbeat_timeout_ms: 1000,
    checkpoint_every: 2,
    total_steps: 10,
    rendezvous_grace_ms: 500,
    initial_workers: 0,
    launches: false,
    stragglers: StragglerPolicy { factor: 3.0, steps: 20, drain: false },
};

/// Runs `steps` steps of the running generation, heartbeating every member, and commits the
/// checkpoints the coordinator asks for.
fn train(c: &mut Control, now: &mut u64, steps: u64) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..steps {
        *now += 100;
        let g = c.running().expect("a generation runs").clone();
        let step = c.next_step();
        let mut acts = c.handle(*now, Event::StepDone { generation: g.generation, step });
        for id in c.members().map(|m| m.id).collect::<Vec<_>>() {
            acts.extend(c.handle(*now, Event::Heartbeat { id }));
        }
        for a in acts.clone() {
            if let Action::Checkpoint { step, .. } = a {
                acts.extend(c.handle(*now, Event::CheckpointCommitted { step }));
            }
        }
        all.extend(acts);
    }
    all
}

#[test]
fn a_generation_starts_once_min_workers_joined() {
    let mut c = Control::new(POLICY);
    assert!(started(&join(&mut c, 0, 7)).is_none(), "one worker is below min_workers");
    assert!(started(&join(&mut c, 10, 3)).is_none(), "two of three: wait for the third during the grace");
    assert!(started(&c.handle(400, Event::Heartbeat { id: w(7) })).is_none());
    let plan = started(&c.handle(520, Event::Tick)).expect("grace over: start with two");
    assert_eq!(plan, GenerationPlan { generation: Generation(0), ranks: vec![w(7), w(3)], start_step: Step(0), restore: None });
    // With all three at once there is nothing to wait for.
    let mut c = Control::new(POLICY);
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    assert_eq!(started(&join(&mut c, 0, 3)).unwrap().ranks, vec![w(1), w(2), w(3)]);
}

#[test]
fn periodic_checkpoints_and_the_end_of_the_job() {
    let mut c = Control::new(Policy { total_steps: 5, max_workers: 2, ..POLICY });
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    let mut now = 0;
    let acts = train(&mut c, &mut now, 5);
    let cps: Vec<u64> = acts.iter().filter_map(|a| if let Action::Checkpoint { step, .. } = a { Some(step.0) } else { None }).collect();
    assert_eq!(cps, vec![2, 4, 5], "every 2 steps, and a final one");
    let stop = c.handle(now, Event::Tick);
    assert!(
        stop.iter().any(|a| matches!(a, Action::StopAtBoundary { reason: StopReason::Finished, .. }))
            || acts.iter().any(|a| matches!(a, Action::StopAtBoundary { reason: StopReason::Finished, .. }))
    );
    let end = c.handle(now, Event::GenerationStopped { generation: Generation(0) });
    assert_eq!(end, vec![Action::Finish { step: Step(5), ending: Ending::Finished }]);
    assert!(c.handle(now + 1, Event::Tick).is_empty(), "Finish is announced once");
}

#[test]
fn a_silent_rank_is_removed_and_the_survivors_restart_from_the_last_commit() {
    let mut c = Control::new(POLICY);
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    join(&mut c, 0, 3);
    let mut now = 0;
    train(&mut c, &mut now, 3); // committed at 2, next step 3
    assert_eq!(c.last_committed(), Some(Step(2)));
    // Worker 2 stops answering; the others keep heartbeating.
    now += 600;
    c.handle(now, Event::Heartbeat { id: w(1) });
    c.handle(now, Event::Heartbeat { id: w(3) });
    now += 600;
    let mut acts = c.handle(now, Event::Heartbeat { id: w(1) });
    acts.extend(c.handle(now, Event::Heartbeat { id: w(3) }));
    acts.extend(c.handle(now, Event::Tick));
    assert!(acts.contains(&Action::Remove { id: w(2), lost: true }), "{acts:?}");
    assert!(acts.contains(&Action::Abort { generation: Generation(0), reason: StopReason::MemberLost { worker: w(2) } }), "{acts:?}");
    let next = started(&c.handle(now, Event::GenerationStopped { generation: Generation(0) })).expect("2 survivors >= min");
    assert_eq!(next, GenerationPlan { generation: Generation(1), ranks: vec![w(1), w(3)], start_step: Step(2), restore: Some(Step(2)) });
    assert_eq!(c.next_step(), Step(2), "step 2 is redone: it was not committed");
}

#[test]
fn below_min_workers_the_job_waits_for_a_new_worker() {
    let mut c = Control::new(Policy { max_workers: 2, ..POLICY });
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    let mut now = 0;
    train(&mut c, &mut now, 2);
    assert!(
        c.handle(now, Event::Leave { id: w(2) })
            .contains(&Action::Abort { generation: Generation(0), reason: StopReason::MemberLost { worker: w(2) } })
    );
    assert!(started(&c.handle(now, Event::GenerationStopped { generation: Generation(0) })).is_none());
    let plan = started(&join(&mut c, now + 50, 9)).expect("back to min_workers");
    assert_eq!((plan.ranks, plan.restore), (vec![w(1), w(9)], Some(Step(2))));
}

#[test]
fn a_joining_worker_is_added_at_a_step_boundary_without_losing_steps() {
    let mut c = Control::new(POLICY);
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    assert!(started(&c.handle(600, Event::Tick)).is_some());
    let mut now = 600;
    train(&mut c, &mut now, 3);
    let acts = join(&mut c, now, 5);
    assert!(acts.contains(&Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Resize }), "{acts:?}");
    // The ranks finish step 3, checkpoint at 4, stop.
    c.handle(now, Event::StepDone { generation: Generation(0), step: Step(3) });
    c.handle(now, Event::CheckpointCommitted { step: Step(4) });
    let plan = started(&c.handle(now, Event::GenerationStopped { generation: Generation(0) })).unwrap();
    assert_eq!(
        plan,
        GenerationPlan { generation: Generation(1), ranks: vec![w(1), w(2), w(5)], start_step: Step(4), restore: Some(Step(4)) }
    );
}

#[test]
fn scaling_down_and_draining_keep_every_step() {
    let mut c = Control::new(POLICY);
    for id in [1, 2, 3] {
        join(&mut c, 0, id);
    }
    let mut now = 0;
    train(&mut c, &mut now, 1);
    let acts = c.handle(now, Event::Scale { workers: 2 });
    assert!(acts.contains(&Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Resize }));
    // Rule 9: the newest member beyond the target is drained.
    assert!(acts.contains(&Action::Draining { id: w(3), cause: DrainCause::ScaledDown { workers: 2 } }), "{acts:?}");
    c.handle(now, Event::StepDone { generation: Generation(0), step: Step(1) });
    c.handle(now, Event::CheckpointCommitted { step: Step(2) });
    let acts = c.handle(now, Event::GenerationStopped { generation: Generation(0) });
    assert!(acts.contains(&Action::Remove { id: w(3), lost: false }), "{acts:?}");
    let plan = started(&acts).unwrap();
    assert_eq!((plan.ranks.clone(), plan.start_step), (vec![w(1), w(2)], Step(2)));
    // Draining rank 1 while a new worker 4 waits: stop at the boundary, then rank 1 is removed
    // and 2 + 4 continue.
    join(&mut c, now, 4);
    c.drain(w(1));
    let acts = c.handle(now, Event::Tick);
    assert!(acts.contains(&Action::StopAtBoundary { generation: Generation(1), checkpoint: true, reason: StopReason::Resize }), "{acts:?}");
    c.handle(now, Event::StepDone { generation: Generation(1), step: Step(2) });
    c.handle(now, Event::CheckpointCommitted { step: Step(3) });
    let acts = c.handle(now, Event::GenerationStopped { generation: Generation(1) });
    assert!(acts.contains(&Action::Remove { id: w(1), lost: false }));
    assert_eq!(started(&acts).unwrap().ranks, vec![w(2), w(4)]);
}

#[test]
fn a_failed_checkpoint_is_never_restored_and_a_restarted_coordinator_resumes() {
    let mut c = Control::new(Policy { max_workers: 2, ..POLICY });
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    c.handle(10, Event::StepDone { generation: Generation(0), step: Step(0) });
    let acts = c.handle(20, Event::StepDone { generation: Generation(0), step: Step(1) });
    assert!(acts.contains(&Action::Checkpoint { generation: Generation(0), step: Step(2) }));
    c.handle(30, Event::CheckpointFailed { step: Step(2), reason: "disk full".into() });
    c.handle(40, Event::Leave { id: w(2) });
    c.handle(40, Event::GenerationStopped { generation: Generation(0) });
    let plan = started(&join(&mut c, 50, 3)).unwrap();
    assert_eq!((plan.restore, plan.start_step), (None, Step(0)), "the failed checkpoint does not exist for recovery");

    let mut restarted = Control::with_committed(Policy { max_workers: 2, ..POLICY }, vec![Step(6), Step(2), Step(4)]);
    join(&mut restarted, 0, 1);
    let plan = started(&join(&mut restarted, 0, 2)).unwrap();
    assert_eq!((plan.restore, plan.start_step), (Some(Step(6)), Step(6)));
}

#[test]
fn a_reconfiguration_ends_the_generation_at_a_checkpointed_boundary_once() {
    let mut c = Control::new(Policy { max_workers: 2, checkpoint_every: 0, ..POLICY });
    assert!(c.handle(0, Event::Reconfigure).is_empty(), "nothing runs: nothing to end");
    join(&mut c, 0, 1);
    let plan = started(&join(&mut c, 0, 2)).unwrap();
    let mut now = 0;
    train(&mut c, &mut now, 3);
    let acts = c.handle(now, Event::Reconfigure);
    assert_eq!(acts, vec![Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Resize }]);
    assert!(c.handle(now, Event::Reconfigure).is_empty(), "already stopping: asked once");
    c.handle(now, Event::StepDone { generation: Generation(0), step: Step(3) });
    c.handle(now, Event::CheckpointCommitted { step: Step(4) });
    let next = started(&c.handle(now, Event::GenerationStopped { generation: Generation(0) })).unwrap();
    assert_eq!(next, GenerationPlan { generation: Generation(1), ranks: plan.ranks, start_step: Step(4), restore: Some(Step(4)) });
    // The request was consumed: the new generation runs on.
    let acts = train(&mut c, &mut now, 2);
    assert!(!acts.iter().any(|a| matches!(a, Action::StopAtBoundary { .. })), "{acts:?}");
}

/// A generation that fails before its first step with every rank alive (a checkpoint that does
/// not load) is retried, but not forever: the third failure in a row fails the job. A failure
/// explained by a lost rank, or one after a trained step, does not count.
#[test]
fn generations_failing_before_their_first_step_fail_the_job_after_three() {
    let mut c = Control::new(POLICY);
    for id in 1..=3 {
        join(&mut c, 0, id);
    }
    let mut now = 0;
    train(&mut c, &mut now, 2);
    // Fails at start with every rank alive: counted, then retried with the same members.
    let fail_start = |c: &mut Control, now: &mut u64| -> Vec<Action> {
        let g = c.running().expect("a generation runs").generation;
        *now += 10;
        let aborted = c.handle(*now, Event::GenerationFailed { generation: g, id: w(1) });
        assert!(aborted.iter().any(|a| matches!(a, Action::Abort { reason: StopReason::RankFailed { .. }, .. })), "{aborted:?}");
        for id in 1..=3 {
            c.handle(*now, Event::Heartbeat { id: w(id) });
        }
        c.handle(*now, Event::GenerationStopped { generation: g })
    };
    // A failure after a trained step is a rank's problem, not the generation's start.
    let g = c.running().unwrap().generation;
    c.handle(now, Event::GenerationFailed { generation: g, id: w(2) });
    let next = started(&c.handle(now, Event::GenerationStopped { generation: g })).expect("restarted");
    assert_eq!(next.restore, Some(Step(2)));
    for round in 1..=2 {
        let acts = fail_start(&mut c, &mut now);
        assert!(started(&acts).is_some(), "round {round}: retried: {acts:?}");
    }
    // A lost rank explains the next failure: no count, a new generation of the survivors.
    let g = c.running().unwrap().generation;
    c.handle(now, Event::GenerationFailed { generation: g, id: w(1) });
    c.handle(now, Event::Leave { id: w(3) });
    let plan = started(&c.handle(now, Event::GenerationStopped { generation: g })).expect("survivors go on");
    assert_eq!(plan.ranks, vec![w(1), w(2)]);
    // The third failure with everyone alive fails the job, naming the checkpoint.
    let g = c.running().unwrap().generation;
    c.handle(now, Event::GenerationFailed { generation: g, id: w(1) });
    let acts = c.handle(now, Event::GenerationStopped { generation: g });
    assert!(started(&acts).is_none(), "{acts:?}");
    let reason = acts.iter().find_map(|a| if let Action::Fail { reason } = a { Some(reason.clone()) } else { None }).expect("Fail");
    assert!(reason.contains("3 generations") && reason.contains("step 2"), "{reason}");
    assert!(c.handle(now + 10, Event::Tick).is_empty(), "failed once, then quiet");
    // Training a step resets the count.
    let mut c2 = Control::new(POLICY);
    for id in 1..=2 {
        join(&mut c2, 0, id);
    }
    let mut t = 600;
    c2.handle(t, Event::Tick);
    for _ in 0..2 {
        fail_start(&mut c2, &mut t);
    }
    train(&mut c2, &mut t, 1);
    for _ in 0..2 {
        assert!(started(&fail_start(&mut c2, &mut t)).is_some());
    }
}

/// A deterministic error some steps after the restored checkpoint (every rank alive, each
/// generation trains a step and fails at the same step again) fails the job after three
/// retries instead of restarting forever; a generation that gets past that step resets it.
#[test]
fn generations_failing_again_at_the_same_step_fail_the_job_after_three_retries() {
    let run = |recover_after: Option<u32>| -> Vec<Action> {
        let mut c = Control::new(POLICY);
        for id in 1..=3 {
            join(&mut c, 0, id);
        }
        let mut now = 0;
        train(&mut c, &mut now, 2);
        let mut last = Vec::new();
        for attempt in 0..5u32 {
            let Some(g) = c.running().map(|g| g.generation) else { break };
            // Restored at the checkpoint of step 2, it trains step 2, and fails at step 3.
            assert_eq!(c.next_step(), Step(2), "attempt {attempt}");
            train(&mut c, &mut now, if recover_after == Some(attempt) { 2 } else { 1 });
            now += 10;
            c.handle(now, Event::GenerationFailed { generation: g, id: w(2) });
            for id in 1..=3 {
                c.handle(now, Event::Heartbeat { id: w(id) });
            }
            last = c.handle(now, Event::GenerationStopped { generation: g });
            if recover_after == Some(attempt) {
                break;
            }
        }
        last
    };
    let acts = run(None);
    let reason = acts.iter().find_map(|a| if let Action::Fail { reason } = a { Some(reason.clone()) } else { None });
    let reason = reason.unwrap_or_else(|| panic!("the job fails: {acts:?}"));
    assert!(reason.contains("3 generations") && reason.contains("past step 3") && reason.contains("step 2"), "{reason}");
    // The third attempt trains past step 3 before failing (at step 4): a new point, retried.
    let acts = run(Some(2));
    assert!(started(&acts).is_some(), "{acts:?}");
}
