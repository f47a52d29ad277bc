//! Rule 9 of `control`: the user's requests (scale, drain, checkpoint) are honoured or refused
//! by the state machine, so the actor only turns a refusal into an HTTP error.

mod common;

use tessera_coordinator::control::{Action, Control, DrainCause, Event, Policy, Refusal, StopReason, StragglerPolicy};
use tessera_coordinator::control::{Generation, Step};

use common::{join, started, w};

const POLICY: Policy = Policy {
    min_workers: 2,
    max_workers: 4,
    heartbeat_timeout_ms: 10_000,
    checkpoint_every: 0,
    total_steps: 50,
    rendezvous_grace_ms: 500,
    initial_workers: 0,
    launches: false,
    stragglers: StragglerPolicy { factor: 3.0, steps: 20, drain: false },
};

fn refusal(actions: &[Action]) -> Option<Refusal> {
    actions.iter().find_map(|a| if let Action::Refused(r) = a { Some(r.clone()) } else { None })
}

/// Three members in a running generation.
fn three() -> Control {
    let mut c = Control::new(Policy { max_workers: 3, ..POLICY });
    join(&mut c, 0, 1);
    join(&mut c, 0, 2);
    assert!(started(&join(&mut c, 0, 3)).is_some(), "all three the job wants are there");
    c
}

#[test]
fn a_scale_outside_the_bounds_is_refused_and_changes_nothing() {
    let mut c = three();
    for workers in [0, 1, 4] {
        let acts = c.handle(600, Event::Scale { workers });
        assert_eq!(acts, vec![Action::Refused(Refusal::ScaleOutOfBounds { workers, min: 2, max: 3 })]);
    }
    assert_eq!(c.target(), 3);
    // A min_workers of 0 still means at least one worker.
    let mut any = Control::new(Policy { min_workers: 0, ..POLICY });
    assert_eq!(refusal(&any.handle(0, Event::Scale { workers: 0 })), Some(Refusal::ScaleOutOfBounds { workers: 0, min: 1, max: 4 }));
}

#[test]
fn a_scale_down_drains_the_newest_members_beyond_the_target() {
    let mut c = Control::new(Policy { max_workers: 3, ..POLICY });
    join(&mut c, 0, 5);
    join(&mut c, 10, 2);
    join(&mut c, 20, 9);
    c.handle(600, Event::Tick);
    let acts = c.handle(600, Event::Scale { workers: 2 });
    assert_eq!(refusal(&acts), None);
    let drained: Vec<_> =
        acts.iter().filter_map(|a| if let Action::Draining { id, cause } = a { Some((*id, *cause)) } else { None }).collect();
    assert_eq!(drained, vec![(w(9), DrainCause::ScaledDown { workers: 2 })], "the last to join goes");
    assert!(acts.contains(&Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Resize }), "{acts:?}");
    assert_eq!(c.target(), 2);
}

#[test]
fn a_drain_is_refused_for_a_stranger_and_below_min_workers() {
    let mut c = three();
    assert_eq!(refusal(&c.handle(600, Event::Drain { id: w(8) })), Some(Refusal::NotAMember(w(8))));
    let acts = c.handle(600, Event::Drain { id: w(2) });
    assert!(acts.contains(&Action::Draining { id: w(2), cause: DrainCause::Asked }), "{acts:?}");
    assert!(acts.contains(&Action::StopAtBoundary { generation: Generation(0), checkpoint: true, reason: StopReason::Resize }), "{acts:?}");
    // Asked again: already leaving, nothing more to do.
    assert!(c.handle(600, Event::Drain { id: w(2) }).is_empty());
    // Two stay (1 and 3); draining one of them would leave one, below min_workers = 2.
    assert_eq!(refusal(&c.handle(600, Event::Drain { id: w(3) })), Some(Refusal::TooFewLeft { id: w(3), staying: 1, min: 2 }));
    assert!(c.members().any(|m| m.id == w(3) && !m.draining));
}

#[test]
fn a_checkpoint_is_refused_without_a_generation_or_while_it_stops() {
    let mut c = Control::new(POLICY);
    join(&mut c, 0, 1);
    assert_eq!(refusal(&c.handle(0, Event::RequestCheckpoint)), Some(Refusal::NothingRunning));
    join(&mut c, 0, 2);
    let plan = started(&c.handle(600, Event::Tick)).expect("min_workers after the grace");
    let acts = c.handle(600, Event::StepDone { generation: plan.generation, step: Step(0) });
    assert!(acts.is_empty(), "{acts:?}");
    let acts = c.handle(700, Event::RequestCheckpoint);
    assert_eq!(acts, vec![Action::Checkpoint { generation: Generation(0), step: Step(1) }]);
    c.handle(700, Event::Shutdown);
    assert_eq!(refusal(&c.handle(700, Event::RequestCheckpoint)), Some(Refusal::Stopping));
}
