//! Recovering a job whose ranks outlived their coordinator: the service's choice between
//! adopting their state and restoring a checkpoint (R1–R3), and the new coordinator's rule 11.

mod common;

use tessera_coordinator::control::recovery::{Recovery, recover};
use tessera_coordinator::control::{Action, Adoption, Control, Event, Generation, GenerationPlan, Policy, Rank, Step, StragglerPolicy};
use tessera_protocol::messages::Orphan;

use common::{join, started, w};

const POLICY: Policy = Policy {
    min_workers: 2,
    max_workers: 3,
    heartbeat_timeout_ms: 1000,
    checkpoint_every: 0,
    total_steps: 20,
    rendezvous_grace_ms: 500,
    initial_workers: 3,
    launches: false,
    stragglers: StragglerPolicy { factor: 3.0, steps: 20, drain: false },
};

fn orphan(worker: u64, generation: u64, step: u64, rank: u32, world: u32) -> Orphan {
    Orphan { worker: w(worker), generation: Generation(generation), step: Step(step), rank: Rank(rank), world }
}

fn adoption() -> Adoption {
    Adoption { generation: Generation(2), step: Step(13), ranks: vec![w(4), w(1), w(5)] }
}

fn adopted(actions: &[Action]) -> Option<GenerationPlan> {
    actions.iter().find_map(|a| match a {
        Action::Adopted(p) => Some(p.clone()),
        _ => None,
    })
}

#[test]
fn every_rank_of_the_newest_generation_reporting_is_adopted_by_rank() {
    // Reported out of rank order, with a rank of an older generation that had left it (R1).
    let orphans = vec![("c", orphan(5, 2, 13, 2, 3)), ("x", orphan(9, 1, 8, 0, 4)), ("a", orphan(4, 2, 13, 0, 3))];
    assert_eq!(recover(100, 0, 10_000, &orphans), Recovery::Wait, "rank 1 has not reported yet");
    let mut all = orphans.clone();
    all.push(("b", orphan(1, 2, 13, 1, 3)));
    assert_eq!(recover(100, 0, 10_000, &all), Recovery::Adopt { adoption: adoption(), workers: vec!["a", "b", "c"] }, "R2");
}

#[test]
fn a_missing_or_inconsistent_rank_restores_once_the_wait_is_over() {
    let two = vec![("a", orphan(4, 2, 13, 0, 3)), ("b", orphan(1, 2, 13, 1, 3))];
    assert_eq!(recover(9_999, 0, 10_000, &two), Recovery::Wait);
    assert_eq!(recover(10_000, 0, 10_000, &two), Recovery::Restore { reported: 2, world: 3 }, "R3: a rank died");
    let none: Vec<(&str, Orphan)> = Vec::new();
    assert_eq!(recover(10_000, 0, 10_000, &none), Recovery::Restore { reported: 0, world: 0 }, "nobody kept anything");
    // Two workers claiming one rank, or ranks at different steps, are never adopted.
    let twice = vec![("a", orphan(4, 2, 13, 0, 2)), ("b", orphan(1, 2, 13, 0, 2))];
    assert_eq!(recover(1, 0, 10_000, &twice), Recovery::Wait);
    let apart = vec![("a", orphan(4, 2, 13, 0, 2)), ("b", orphan(1, 2, 14, 1, 2))];
    assert!(matches!(recover(10_000, 0, 10_000, &apart), Recovery::Restore { .. }));
}

#[test]
fn rule_11_waits_for_every_adopted_rank_then_continues_their_generation_without_a_restore() {
    let mut c = Control::adopting(POLICY, vec![Step(10)], adoption());
    assert!(started(&join(&mut c, 0, 4)).is_none());
    let acts = join(&mut c, 10, 1);
    assert!(started(&acts).is_none() && adopted(&acts).is_none(), "two of three: rule 3 would start; rule 11 waits");
    let plan = adopted(&join(&mut c, 20, 5)).expect("all three joined");
    assert_eq!(plan, GenerationPlan { generation: Generation(2), ranks: vec![w(4), w(1), w(5)], start_step: Step(13), restore: None });
    assert_eq!(c.next_step(), Step(13), "nothing is redone");
    assert!(c.adoption().is_none());
    // Reports the adopted ranks re-send for steps before the pause move nothing back.
    c.handle(30, Event::StepDone { generation: Generation(2), step: Step(11) });
    c.handle(40, Event::StepDone { generation: Generation(2), step: Step(13) });
    assert_eq!(c.next_step(), Step(14));
    // The adopted generation's checkpoints are committed (rule 4 sees it as the newest).
    let acts = c.handle(50, Event::CheckpointReady { generation: Generation(2), step: Step(14) });
    assert_eq!(acts, vec![Action::Commit { generation: Generation(2), step: Step(14) }]);
}

#[test]
fn rule_11_gives_up_after_the_grace_and_restores_in_a_newer_generation() {
    let mut c = Control::adopting(POLICY, vec![Step(10)], adoption());
    join(&mut c, 0, 4);
    join(&mut c, 0, 1);
    assert!(started(&c.handle(499, Event::Tick)).is_none());
    let acts = c.handle(500, Event::Tick);
    assert!(acts.contains(&Action::AdoptionAbandoned { generation: Generation(2), missing: vec![w(5)] }), "{acts:?}");
    let plan = started(&acts).expect("rule 3 starts from the checkpoint");
    assert_eq!(plan, GenerationPlan { generation: Generation(3), ranks: vec![w(1), w(4)], start_step: Step(10), restore: Some(Step(10)) });
}
