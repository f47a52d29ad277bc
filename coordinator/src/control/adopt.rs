//! Rule 11 of [`Control::handle`](super::Control::handle): adopting a generation whose ranks
//! outlived their coordinator. A coordinator that recovers a job while every rank of its
//! running generation kept its state (paused at one agreed step boundary, see
//! `tessera_worker::agent::link`) is started with an [`Adoption`]: it starts no generation of
//! its own until those ranks have joined again; then the generation runs on from the paused
//! step with nothing restored and no step trained twice. If they have not all joined within
//! the rendezvous grace, the adoption is abandoned and rule 3 starts a new generation from the
//! newest committed checkpoint (its number is past the adopted one's, so a paused rank drops
//! its state and joins it).

use serde::{Deserialize, Serialize};

use super::decide::Action;
use super::state::{Control, Generation, GenerationPlan, Policy, Step, WorkerId};

/// A generation to adopt: its number, the step every rank paused after, and its ranks'
/// workers by rank (their ids under the lost coordinator, kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    /// The generation.
    pub generation: Generation,
    /// Steps completed (the next step to train).
    pub step: Step,
    /// Rank `i` is `ranks[i]`.
    pub ranks: Vec<WorkerId>,
}

impl Control {
    /// A job recovered by a new coordinator, waiting for the ranks of `adoption` (rule 11).
    pub fn adopting(policy: Policy, committed: Vec<Step>, adoption: Adoption) -> Self {
        let mut c = Self::with_committed(policy, committed);
        c.next_generation = adoption.generation.next();
        c.adopting = Some(adoption);
        c
    }

    /// The generation waiting to be adopted.
    pub fn adoption(&self) -> Option<&Adoption> {
        self.adopting.as_ref()
    }

    /// Rule 11, with no generation running: true while the adoption waits for its ranks (or
    /// has just started the adopted generation); false when rule 3 decides instead.
    pub(super) fn adopt(&mut self, now_ms: u64, actions: &mut Vec<Action>) -> bool {
        let Some(a) = &self.adopting else { return false };
        if a.ranks.iter().all(|id| self.members.contains_key(id)) {
            let plan = GenerationPlan { generation: a.generation, ranks: a.ranks.clone(), start_step: a.step, restore: None };
            self.adopting = None;
            self.adopt_since = None;
            self.commit_barred = false;
            self.periodic_asked = None;
            self.slow_steps.clear();
            self.stragglers.clear();
            self.ready_since = None;
            self.next_step = plan.start_step;
            self.running = Some(plan.clone());
            actions.push(Action::Adopted(plan));
            return true;
        }
        let since = *self.adopt_since.get_or_insert(now_ms);
        if now_ms < since + self.policy.rendezvous_grace_ms {
            return true;
        }
        let missing = a.ranks.iter().filter(|id| !self.members.contains_key(id)).copied().collect();
        actions.push(Action::AdoptionAbandoned { generation: a.generation, missing });
        self.adopting = None;
        self.adopt_since = None;
        false
    }
}
