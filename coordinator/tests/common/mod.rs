//! Helpers shared by the state-machine tests: worker ids, joins and the plan a step started.
#![allow(dead_code)]

pub mod etcd;
pub mod netns;

use tessera_coordinator::control::{Action, Control, Event, GenerationPlan, WorkerId};

/// Worker `i`.
pub fn w(i: u64) -> WorkerId {
    WorkerId(i)
}

/// Worker `id` joins at `now` (an original worker, not a replacement).
pub fn join(c: &mut Control, now: u64, id: u64) -> Vec<Action> {
    c.handle(now, Event::Join { id: w(id), addr: format!("127.0.0.1:{}", 9000 + id), replacement: false })
}

/// The generation `actions` start, if any.
pub fn started(actions: &[Action]) -> Option<GenerationPlan> {
    actions.iter().find_map(|a| match a {
        Action::Start(p) => Some(p.clone()),
        _ => None,
    })
}
