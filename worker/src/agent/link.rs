//! What a pool worker keeps across a coordinator's death: the [`Link`] to the coordinator it
//! reports to (swapped when it re-attaches to a new one), and the [`Reattach`] slot it shares
//! with the pool loop (the orphaned state it reports, the new coordinator it is sent to).
//!
//! The contract: when its coordinator's process group empties, a pool worker does not exit.
//! Its ranks pause at the next step boundary they all agree on, keep the model, optimizer and
//! ring in memory, and publish an [`Orphan`]. The pool loop reports it to the service; a
//! service that adopts the generation (every rank reported) hands back the job's new node,
//! the worker links to it and announces itself with the orphan, and the new coordinator
//! continues the generation from the paused step. Without an adoption within the grace the
//! state is dropped and the worker returns to the pool.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::ActorRef;
use tessera_ops::Secret;
use tessera_protocol::WorkerId;
use tessera_protocol::messages::{CoordinatorMsg, Orphan, Wire, WorkerEvent};

/// The coordinator a worker reports to, its id there and the job's collective secret; shared by
/// the worker actor, the device thread and the link watcher.
#[derive(Clone)]
pub struct Link(Arc<Mutex<LinkState>>);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("worker", &self.worker()).finish_non_exhaustive()
    }
}

struct LinkState {
    coordinator: ActorRef<CoordinatorMsg>,
    worker: Option<WorkerId>,
    secret: Option<Secret>,
}

impl Link {
    /// A link to `coordinator`, before the welcome.
    pub fn new(coordinator: ActorRef<CoordinatorMsg>) -> Self {
        Self(Arc::new(Mutex::new(LinkState { coordinator, worker: None, secret: None })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `ev` to the current coordinator (a broken link drops it: the watcher sees it).
    pub fn send(&self, ev: WorkerEvent) {
        let _ = self.lock().coordinator.cast(CoordinatorMsg::Worker(Wire::new(ev)));
    }

    /// The current coordinator.
    pub fn coordinator(&self) -> ActorRef<CoordinatorMsg> {
        self.lock().coordinator.clone()
    }

    /// Reports go to `coordinator` from now on.
    pub fn set_coordinator(&self, coordinator: ActorRef<CoordinatorMsg>) {
        self.lock().coordinator = coordinator;
    }

    /// This worker's id under the current coordinator (`None` before the welcome).
    pub fn worker(&self) -> Option<WorkerId> {
        self.lock().worker
    }

    /// The welcome's id and collective secret.
    pub fn welcomed(&self, worker: WorkerId, secret: Secret) {
        let mut s = self.lock();
        s.worker = Some(worker);
        s.secret = Some(secret);
    }

    /// The job's collective secret (set at the welcome).
    pub fn secret(&self) -> Option<Secret> {
        self.lock().secret.clone()
    }
}

/// Where a re-attaching worker links: the job's node under its new coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// The node's address.
    pub node: SocketAddr,
    /// Its cookie.
    pub cookie: String,
    /// The job's coordinator process group.
    pub group: String,
}

/// The slot a pool worker's agent shares with its pool loop while it may be orphaned.
#[derive(Debug)]
pub struct Reattach {
    grace: Duration,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    orphan: Option<Orphan>,
    attach: Option<Attach>,
    release: bool,
}

impl Reattach {
    /// A slot whose orphaned state is kept for `grace` (zero: a lost coordinator ends the job
    /// in hand at once, as an embedded worker does).
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self { grace, state: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long an orphaned state is kept.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Forgets everything (a new job starts).
    pub fn clear(&self) {
        *self.lock() = SlotState::default();
    }

    /// The paused state to report (`None`: not orphaned).
    pub fn orphan(&self) -> Option<Orphan> {
        self.lock().orphan
    }

    /// Sets (or clears) the paused state to report.
    pub fn set_orphan(&self, orphan: Option<Orphan>) {
        self.lock().orphan = orphan;
    }

    /// The service adopted the orphan: link to `attach`.
    pub fn attach(&self, attach: Attach) {
        self.lock().attach = Some(attach);
    }

    /// Where to link, once (the watcher takes it).
    pub fn take_attach(&self) -> Option<Attach> {
        self.lock().attach.take()
    }

    /// The service will not adopt the orphan: drop the state.
    pub fn release(&self) {
        self.lock().release = true;
    }

    /// True once after [`Reattach::release`].
    pub fn take_release(&self) -> bool {
        std::mem::take(&mut self.lock().release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_hands_each_attach_and_release_over_once_and_clears_for_a_new_job() {
        let slot = Reattach::new(Duration::from_secs(5));
        let attach = Attach { node: "127.0.0.1:7000".parse().unwrap(), cookie: "c".into(), group: "g".into() };
        slot.attach(attach.clone());
        slot.release();
        assert_eq!(slot.take_attach(), Some(attach));
        assert_eq!(slot.take_attach(), None);
        assert!(slot.take_release() && !slot.take_release());
        slot.set_orphan(Some(Orphan {
            worker: WorkerId(1),
            generation: tessera_protocol::Generation(0),
            step: tessera_protocol::Step(3),
            rank: tessera_protocol::Rank(0),
            world: 1,
        }));
        slot.clear();
        assert_eq!(slot.orphan(), None);
    }
}
