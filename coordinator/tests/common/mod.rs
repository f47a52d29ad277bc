//! Helpers shared by the state-machine tests: worker ids, joins and the plan a step started.
#![allow(dead_code)]

pub mod etcd;
pub mod netns;

use tessera_coordinator::control::{Action, Control, Event, GenerationPlan, WorkerId};

/// Worker `i`.
pub fn w(i: u64) -> WorkerId {
    WorkerId(i)
}

/// The process id of worker `id` in these tests.
pub fn pid(id: u64) -> u32 {
    1000 + id as u32
}

/// Worker `id` joins at `now` (an original worker, not a replacement).
pub fn join(c: &mut Control, now: u64, id: u64) -> Vec<Action> {
    c.handle(now, Event::Join { id: w(id), addr: format!("127.0.0.1:{}", 9000 + id), pid: pid(id) })
}

/// Worker `id` joins at `now` from a process launched as a replacement (rule 5).
pub fn join_replacement(c: &mut Control, now: u64, id: u64) -> Vec<Action> {
    let mut acts = c.handle(now, Event::Launched { pids: vec![pid(id)], replacement: true });
    acts.extend(join(c, now, id));
    acts
}

/// The generation `actions` start, if any.
pub fn started(actions: &[Action]) -> Option<GenerationPlan> {
    actions.iter().find_map(|a| match a {
        Action::Start(p) => Some(p.clone()),
        _ => None,
    })
}
