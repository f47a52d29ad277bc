//! The coordinator's decisions under faults (rules 2 to 7 of `control`): a final checkpoint that
//! keeps failing, a shutdown at the end of the job, the first generation's rendezvous, lost
//! workers and their replacements, commits of aborted generations, stranded jobs, and a bad
//! checkpoint found when a generation restores it.

mod common;

use tessera_coordinator::control::{
    Action, Control, Ending, Event, GenerationPlan, NoReplacement, Policy, StopReason, StragglerPolicy, WorkerId,
};
use tessera_coordinator::control::{Generation, Step};

use common::{join, join_replacement, pid, started, w};

const POLICY: Policy = Policy {
    min_workers: 1,
    max_workers: 2,
    heartbeat_timeout_ms: 1000,
    checkpoint_every: 2,
    total_steps: 5,
    rendezvous_grace_ms: 500,
    initial_workers: 0,
    launches: false,
    stragglers: StragglerPolicy { factor: 3.0, steps: 20, drain: false },
};

const ENOSPC: &str = "worker#0: writing shard 0: No space left on device (os error 28)";

fn fail_reason(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| if let Action::Fail { reason } = a { Some(reason.clone()) } else { None })
}

fn launches(actions: &[Action]) -> Vec<Option<WorkerId>> {
    actions.iter().filter_map(|a| if let Action::Launch { replacing, .. } = a { Some(*replacing) } else { None }).collect()
}

/// Trains `steps` steps of the running generation, heartbeating every member; checkpoints the
/// coordinator asks for are committed when `commit` says so, else they fail with `ENOSPC`.
fn train(c: &mut Control, now: &mut u64, steps: u64, commit: impl Fn(u64) -> bool) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..steps {
        *now += 100;
        let g = c.running().expect("a generation runs").clone();
        let mut acts = c.handle(*now, Event::StepDone { generation: g.generation, step: c.next_step() });
        for id in c.members().map(|m| m.id).collect::<Vec<_>>() {
            acts.extend(c.handle(*now, Event::Heartbeat { id }));
        }
        acts.extend(settle_checkpoints(c, *now, &acts.clone(), &commit));
        all.extend(acts);
    }
    all
}

/// Answers every checkpoint asked for in `acts`, and those asked for in turn (a retry);
/// returns the actions the answers gave.
fn settle_checkpoints(c: &mut Control, now: u64, acts: &[Action], commit: &impl Fn(u64) -> bool) -> Vec<Action> {
    let mut out = Vec::new();
    let mut queue: Vec<Action> = acts.to_vec();
    while let Some(a) = queue.pop() {
        if let Action::Checkpoint { step, .. } = a {
            let ev =
                if commit(step.0) { Event::CheckpointCommitted { step } } else { Event::CheckpointFailed { step, reason: ENOSPC.into() } };
            let more = c.handle(now, ev);
            queue.extend(more.iter().cloned());
            out.extend(more);
        }
    }
    out
}

/// Defect 4 of issue 21: on a full disk the final checkpoint was asked for again forever and a
/// SIGTERM could not end the job. Now it is tried three times, then the generation stops
/// without a checkpoint and the job fails with the write error, naming the intact checkpoint.
#[test]
fn a_final_checkpoint_that_keeps_failing_fails_the_job_with_its_cause() {
    let mut c = Control::new(POLICY);
    join(&mut c, 0, 1);
    let mut now = 600;
    assert!(started(&c.handle(now, Event::Tick)).is_some());
    // Periodic checkpoints at 2 and 4 commit; the disk is full from step 5 on.
    let mut acts = train(&mut c, &mut now, 5, |s| s < 5);
    assert_eq!(c.last_committed(), Some(Step(4)));
    for _ in 0..10 {
        now += 10;
        let more = c.handle(now, Event::Tick);
        let retried = settle_checkpoints(&mut c, now, &more, &|s| s < 5);
        acts.extend(more);
        acts.extend(retried);
    }
    let attempts = acts.iter().filter(|a| matches!(a, Action::Checkpoint { step: Step(5), .. })).count();
    assert_eq!(attempts, 3, "three attempts at the final checkpoint: {acts:?}");
    let stop = Action::StopAtBoundary { generation: Generation(0), checkpoint: false, reason: StopReason::CheckpointFailing };
    assert_eq!(acts.iter().filter(|a| **a == stop).count(), 1, "{acts:?}");
    let end = c.handle(now, Event::GenerationStopped { generation: Generation(0) });
    let reason = fail_reason(&end).unwrap_or_else(|| panic!("the job fails: {end:?}"));
    assert!(reason.contains("No space left on device") && reason.contains("step 4 is intact") && reason.contains("3 times"), "{reason}");
    assert!(started(&end).is_none());
    assert!(c.handle(now + 10, Event::Tick).is_empty(), "failed once, then quiet");
}

/// A shutdown (SIGTERM) at the end of the job always ends it: while the final checkpoint is
/// in flight the coordinator waits for it; once it failed, the generation stops with one last
/// attempt, and the job stops at its newest committed checkpoint.
#[test]
fn a_shutdown_ends_a_job_whose_final_checkpoint_is_failing() {
    let mut c = Control::new(POLICY);
    join(&mut c, 0, 1);
    let mut now = 600;
    c.handle(now, Event::Tick);
    // The periodic checkpoint of step 4 fails; the final one is asked for and stays in flight.
    let acts = train(&mut c, &mut now, 4, |s| s < 4);
    assert!(acts.contains(&Action::Checkpoint { generation: Generation(0), step: Step(4) }));
    assert_eq!(c.last_committed(), Some(Step(2)));
    now += 10;
    let last = c.handle(now, Event::StepDone { generation: Generation(0), step: Step(4) });
    assert_eq!(last, vec![Action::Checkpoint { generation: Generation(0), step: Step(5) }]);
    let waiting = c.handle(now, Event::Shutdown);
    assert!(waiting.is_empty(), "the final checkpoint is in flight: wait for it: {waiting:?}");
    let stop = c.handle(now, Event::CheckpointFailed { step: Step(5), reason: ENOSPC.into() });
    assert_eq!(stop, vec![Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Shutdown }]);
    // The stop's checkpoint fails too; the generation ends all the same.
    assert!(c.handle(now, Event::CheckpointFailed { step: Step(5), reason: ENOSPC.into() }).is_empty());
    let end = c.handle(now, Event::GenerationStopped { generation: Generation(0) });
    // Stopped, not finished: a rerun resumes from the checkpoint of step 2.
    assert_eq!(end, vec![Action::Finish { step: Step(2), ending: Ending::Stopped { checkpointed: true } }]);
    assert_eq!(c.next_step(), Step(2), "stopped at the newest committed checkpoint");
}

/// Defect 7 of issue 21: with `--max-workers` above `--workers`, the first generation waited
/// the rendezvous grace for workers nobody starts. It waits for the processes started; a later
/// joiner is taken in at a checkpointed boundary.
#[test]
fn the_first_generation_waits_for_the_workers_started_not_for_max_workers() {
    let policy = Policy { max_workers: 3, initial_workers: 2, launches: true, total_steps: 20, ..POLICY };
    let mut c = Control::new(policy);
    assert!(started(&join(&mut c, 0, 1)).is_none(), "the second started worker is coming");
    let plan = started(&join(&mut c, 10, 2)).expect("both started workers are there: no grace wait");
    assert_eq!(plan.ranks, vec![w(1), w(2)]);
    let mut now = 10;
    train(&mut c, &mut now, 1, |_| true);
    let grow = join(&mut c, now, 3);
    assert!(grow.contains(&Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Resize }), "{grow:?}");
    // Without processes of its own (workers join by hand), the target is still max_workers.
    let mut by_hand = Control::new(Policy { max_workers: 3, total_steps: 20, ..POLICY });
    join(&mut by_hand, 0, 1);
    assert!(started(&join(&mut by_hand, 10, 2)).is_none(), "waits the grace for a third");
    assert!(started(&by_hand.handle(600, Event::Tick)).is_some());
}

/// Defect 2 of issue 21: the crash-loop guard keyed on job progress, so of two workers lost at
/// once only one was replaced. Now every lost original worker gets a successor; a replacement
/// lost before it trained a step gets none, and the job, with too few processes left, fails.
#[test]
fn every_lost_worker_is_replaced_but_a_replacement_lost_before_training_is_not() {
    let policy = Policy { min_workers: 3, max_workers: 3, initial_workers: 3, launches: true, total_steps: 20, ..POLICY };
    let mut c = Control::new(policy);
    for id in 1..=3 {
        join(&mut c, 0, id);
    }
    let mut now = 0;
    train(&mut c, &mut now, 6, |_| true);
    // Two processes killed in one command.
    let mut acts = c.handle(now, Event::ProcessExited { worker: Some(w(2)), pid: pid(2) });
    acts.extend(c.handle(now, Event::ProcessExited { worker: Some(w(3)), pid: pid(3) }));
    assert_eq!(launches(&acts), vec![Some(w(2)), Some(w(3))], "{acts:?}");
    assert!(acts.contains(&Action::Abort { generation: Generation(0), reason: StopReason::MemberLost { worker: w(2) } }), "{acts:?}");
    let idle = c.handle(now, Event::GenerationStopped { generation: Generation(0) });
    assert!(started(&idle).is_none() && fail_reason(&idle).is_none(), "waits for the replacements: {idle:?}");
    join_replacement(&mut c, now + 50, 4);
    let plan = started(&join_replacement(&mut c, now + 60, 5)).expect("three workers again");
    assert_eq!(
        plan,
        GenerationPlan { generation: Generation(1), ranks: vec![w(1), w(4), w(5)], start_step: Step(6), restore: Some(Step(6)) }
    );
    now += 60;
    train(&mut c, &mut now, 1, |_| true);
    // A replacement that trained is an ordinary worker: replaced when lost.
    let acts = c.handle(now, Event::ProcessExited { worker: Some(w(5)), pid: pid(5) });
    assert_eq!(launches(&acts), vec![Some(w(5))], "{acts:?}");
    c.handle(now, Event::GenerationStopped { generation: Generation(1) });
    // Its successor dies before training a step: no successor for it (a crash loop).
    let plan = started(&join_replacement(&mut c, now + 10, 6)).expect("three again");
    let acts = c.handle(now + 20, Event::ProcessExited { worker: Some(w(6)), pid: pid(6) });
    assert!(launches(&acts).is_empty(), "{acts:?}");
    assert!(acts.contains(&Action::NotReplaced { lost: w(6), why: NoReplacement::CrashLoop }), "{acts:?}");
    let end = c.handle(now + 20, Event::GenerationStopped { generation: plan.generation });
    assert_eq!(fail_reason(&end).as_deref(), Some("2 workers left, the job needs at least 3"), "{end:?}");
}

/// Rule 5's other limits: a replacement that dies before joining is not replaced, a lost
/// worker is not replaced while the job has the workers it wants (after a scale-down), nor
/// when the job is ending; a scale-up starts exactly the missing processes.
#[test]
fn replacements_respect_the_target_and_the_end_of_the_job() {
    let policy = Policy { min_workers: 1, max_workers: 3, initial_workers: 2, launches: true, total_steps: 20, ..POLICY };
    let mut c = Control::new(policy);
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    let mut now = 0;
    train(&mut c, &mut now, 2, |_| true);
    let acts = c.handle(now, Event::Scale { workers: 3 });
    assert_eq!(acts.iter().filter(|a| matches!(a, Action::Launch { count: 1, replacing: None })).count(), 1, "{acts:?}");
    // That process dies before joining: counted, nothing else.
    assert!(launches(&c.handle(now, Event::ProcessExited { worker: None, pid: 4242 })).is_empty());
    assert_eq!(c.processes(), 2);
    // Scaled down to one: the drained surplus is not replaced, nor is a later joiner beyond
    // the target.
    c.handle(now, Event::Scale { workers: 1 });
    let acts = c.handle(now, Event::Lost { id: w(2) });
    assert!(acts.contains(&Action::NotReplaced { lost: w(2), why: NoReplacement::WasLeaving }), "{acts:?}");
    join(&mut c, now, 7);
    let acts = c.handle(now, Event::Lost { id: w(7) });
    assert!(acts.contains(&Action::NotReplaced { lost: w(7), why: NoReplacement::AtTarget { workers: 1, target: 1 } }), "{acts:?}");
    c.handle(now, Event::GenerationStopped { generation: Generation(0) });
    c.handle(now, Event::Shutdown);
    let acts = c.handle(now, Event::Lost { id: w(1) });
    assert!(acts.contains(&Action::NotReplaced { lost: w(1), why: NoReplacement::Ending }), "{acts:?}");
}

/// Rule 4: a checkpoint is committed only if the newest generation wrote it and was not
/// aborted (its shards may hold state the aborted step half-changed).
#[test]
fn only_the_newest_unaborted_generation_commits() {
    let mut c = Control::new(Policy { max_workers: 2, total_steps: 20, ..POLICY });
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    let mut now = 0;
    train(&mut c, &mut now, 2, |_| true);
    assert_eq!(
        c.handle(now, Event::CheckpointReady { generation: Generation(0), step: Step(2) }),
        vec![Action::Commit { generation: Generation(0), step: Step(2) }]
    );
    c.handle(now, Event::Lost { id: w(2) });
    assert!(c.handle(now, Event::CheckpointReady { generation: Generation(0), step: Step(3) }).is_empty(), "aborted");
    let next = started(&c.handle(now, Event::GenerationStopped { generation: Generation(0) })).expect("the survivor goes on");
    assert!(c.handle(now, Event::CheckpointReady { generation: Generation(0), step: Step(3) }).is_empty(), "an older generation");
    assert_eq!(
        c.handle(now, Event::CheckpointReady { generation: next.generation, step: Step(4) }),
        vec![Action::Commit { generation: Generation(1), step: Step(4) }]
    );
}

/// Rule 6: below `min_workers` with nobody to come, the job fails instead of waiting forever:
/// in embedded mode once fewer processes are alive than the minimum, with workers joined by
/// hand once a generation was lost (before that, joiners are awaited).
#[test]
fn a_stranded_job_fails_with_how_many_workers_are_left() {
    let mut c = Control::new(Policy { min_workers: 2, max_workers: 2, total_steps: 20, ..POLICY });
    join(&mut c, 0, 1);
    assert!(fail_reason(&c.handle(10_000, Event::Heartbeat { id: w(1) })).is_none(), "joiners may still come");
    join(&mut c, 10_000, 2);
    let mut now = 10_000;
    train(&mut c, &mut now, 1, |_| true);
    c.handle(now, Event::Lost { id: w(2) });
    let end = c.handle(now, Event::GenerationStopped { generation: Generation(0) });
    assert_eq!(fail_reason(&end).as_deref(), Some("1 workers left, the job needs at least 2"), "{end:?}");

    let mut local = Control::new(Policy { min_workers: 2, max_workers: 2, initial_workers: 2, launches: true, ..POLICY });
    join(&mut local, 0, 1);
    assert!(fail_reason(&local.handle(5, Event::Processes { live: 2 })).is_none(), "the second process is starting");
    let end = local.handle(6, Event::Processes { live: 1 });
    assert_eq!(fail_reason(&end).as_deref(), Some("1 workers left, the job needs at least 2"), "{end:?}");
}

/// Defect 5 of issue 21 (rule 7): a committed checkpoint that turns out bad when a generation
/// restores it was retried until the job failed, although the one before verifies. Reported
/// bad, it is forgotten and the next generation restores the one before.
#[test]
fn a_bad_checkpoint_is_forgotten_and_the_one_before_restored() {
    let mut c = Control::new(Policy { max_workers: 2, checkpoint_every: 3, total_steps: 20, ..POLICY });
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    let mut now = 0;
    train(&mut c, &mut now, 7, |_| true);
    assert_eq!(c.last_committed(), Some(Step(6)));
    c.handle(now, Event::Lost { id: w(2) });
    let plan = started(&c.handle(now, Event::GenerationStopped { generation: Generation(0) })).expect("the survivor goes on");
    assert_eq!(plan.restore, Some(Step(6)));
    // It cannot restore step 6 (a truncated shard): the failure before the first step has
    // the checkpoint verified, once; the coordinator reports it bad.
    let acts = c.handle(now, Event::GenerationFailed { generation: plan.generation, id: w(1) });
    assert!(acts.contains(&Action::VerifyRestore { step: Step(6) }), "{acts:?}");
    let again = c.handle(now, Event::GenerationFailed { generation: plan.generation, id: w(1) });
    assert!(!again.iter().any(|a| matches!(a, Action::VerifyRestore { .. })), "verified once per generation: {again:?}");
    c.handle(now, Event::CheckpointBad { step: Step(6), reason: "rank-00000-of-00002.safetensors: size 10 != 1000".into() });
    let next = started(&c.handle(now, Event::GenerationStopped { generation: plan.generation })).expect("retried at once");
    assert_eq!(next, GenerationPlan { generation: Generation(2), ranks: vec![w(1)], start_step: Step(3), restore: Some(Step(3)) });
    assert_eq!(c.last_committed(), Some(Step(3)));
}

/// Rule 7 asks for a verification only when the failure can be the restore's: a generation
/// that trained a step, or restored nothing, fails without one.
#[test]
fn a_restore_is_verified_only_when_the_generation_failed_before_its_first_step() {
    let mut c = Control::new(Policy { max_workers: 1, checkpoint_every: 2, total_steps: 20, ..POLICY });
    let fresh = started(&join(&mut c, 0, 1)).expect("one worker is all the job wants");
    let mut now = 0;
    assert_eq!(fresh.restore, None);
    let acts = c.handle(now, Event::GenerationFailed { generation: Generation(0), id: w(1) });
    assert!(!acts.iter().any(|a| matches!(a, Action::VerifyRestore { .. })), "nothing was restored: {acts:?}");
    let plan = started(&c.handle(now, Event::GenerationStopped { generation: Generation(0) })).expect("retried");
    train(&mut c, &mut now, 3, |_| true);
    assert_eq!((plan.restore, c.last_committed()), (None, Some(Step(2))));
    c.handle(now, Event::GenerationFailed { generation: plan.generation, id: w(1) });
    let plan = started(&c.handle(now, Event::GenerationStopped { generation: plan.generation })).expect("retried");
    assert_eq!(plan.restore, Some(Step(2)));
    train(&mut c, &mut now, 1, |_| true);
    let acts = c.handle(now, Event::GenerationFailed { generation: plan.generation, id: w(1) });
    assert!(!acts.iter().any(|a| matches!(a, Action::VerifyRestore { .. })), "it trained past the restore: {acts:?}");
}

/// Rule 5 knows a replacement by the pid it was launched with: only such a process, lost
/// before training a step, is left unreplaced; a process started for a scale-up is an
/// original, and a replacement that exits before joining is forgotten.
#[test]
fn a_replacement_is_the_process_launched_as_one() {
    let policy = Policy { min_workers: 1, max_workers: 3, initial_workers: 2, launches: true, total_steps: 20, ..POLICY };
    let mut c = Control::new(policy);
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    let mut now = 0;
    train(&mut c, &mut now, 2, |_| true);
    // A scale-up's process joins as an original: lost before training, it is still replaced.
    c.handle(now, Event::Scale { workers: 3 });
    c.handle(now, Event::Launched { pids: vec![pid(3)], replacement: false });
    join(&mut c, now, 3);
    let acts = c.handle(now, Event::ProcessExited { worker: Some(w(3)), pid: pid(3) });
    assert_eq!(launches(&acts), vec![Some(w(3))], "{acts:?}");
    // Its replacement exits before joining: forgotten (its pid may be reused by an original).
    c.handle(now, Event::Launched { pids: vec![pid(4)], replacement: true });
    assert!(c.is_pending_replacement(pid(4)));
    c.handle(now, Event::ProcessExited { worker: None, pid: pid(4) });
    assert!(!c.is_pending_replacement(pid(4)));
    let g = c.running().map(|g| g.generation);
    if let Some(generation) = g {
        c.handle(now, Event::GenerationStopped { generation });
    }
    let acts = c.handle(now, Event::ProcessExited { worker: Some(w(2)), pid: pid(2) });
    assert_eq!(launches(&acts), vec![Some(w(2))], "{acts:?}");
    // The replacement for worker 2 joins by its pid and dies before training: a crash loop.
    let acts = join_replacement(&mut c, now, 5);
    let acts = [acts, c.handle(now, Event::ProcessExited { worker: Some(w(5)), pid: pid(5) })].concat();
    assert!(acts.contains(&Action::NotReplaced { lost: w(5), why: NoReplacement::CrashLoop }), "{acts:?}");
}
