//! Workers coming and going: registering a hello (once its process group is visible), and
//! turning a broken link, a loss the service's pool reports, or a departure into the state
//! machine's `Lost`/`Leave` events.

use std::time::{Duration, Instant};

use ractor::{ActorId, ActorRef, pg};

use crate::control::{Event, WorkerId};
use crate::events::JobEvent;
use tessera_protocol::messages::{Command, PoolLoss, WorkerEvent, worker_group};

use super::{Conn, CoordinatorState, Removal};

impl CoordinatorState {
    /// Registers the sender of a hello first seen at `first_seen` (retried on later ticks until
    /// its actor is visible).
    pub(super) fn hello(&mut self, ev: WorkerEvent, first_seen: Instant) {
        let WorkerEvent::Hello { nonce, pid, ring_addr, threads, orphan } = ev else { return };
        if self.workers.values().any(|c| c.nonce == nonce) {
            return;
        }
        let Some(cell) = pg::get_members(&worker_group(nonce)).into_iter().next() else {
            if first_seen.elapsed() < Duration::from_secs(30) {
                self.pending.push((ev, first_seen));
            } else {
                self.log(&format!("hello from pid {pid} dropped: its actor never became visible"));
            }
            return;
        };
        // Rule 11: a rank of the adopted generation keeps its id (the plan names it).
        let adopted = orphan.filter(|o| {
            self.control.adoption().is_some_and(|a| a.generation == o.generation && a.ranks.get(o.rank.index()) == Some(&o.worker))
                && !self.workers.contains_key(&o.worker)
        });
        let id = match adopted {
            Some(o) => o.worker,
            None => {
                self.next_worker += 1;
                WorkerId(self.next_worker - 1)
            }
        };
        let conn =
            Conn { actor: ActorRef::from(cell.clone()), cell: cell.get_id(), nonce, pid, ring_addr, last_timings: None, last_rss: None };
        self.workers.insert(id, conn);
        self.log(&format!("{id} joined: pid {pid}, ring {ring_addr}, {threads} threads"));
        self.record(JobEvent::WorkerJoined { worker: id.0, addr: ring_addr.to_string() });
        self.workers_changed();
        self.send(
            id,
            Command::Welcome {
                worker: id,
                job: self.args.spec.clone(),
                secret: self.args.secret.clone(),
                heartbeat_ms: self.args.heartbeat_ms,
            },
        );
        self.drive(Event::Join { id, addr: ring_addr.to_string(), pid });
    }

    /// Removes the workers whose actors came over the node session `node`, which closed (the
    /// process ended or its link broke). Why a session and not a process-group leave: see
    /// [`tessera_protocol::node::CoordinatorNode::watch_sessions`].
    pub(super) fn session_closed(&mut self, node: u64) {
        let gone: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, c)| matches!(c.cell, ActorId::Remote { node_id, .. } if node_id == node))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.log(&format!("{id}: link lost"));
            self.leave(id, Removal { reason: "link lost".into(), lost: true });
        }
    }

    /// The service's pool lost the process `loss` names (its etcd lease expired, or it went
    /// silent): its member is lost now, as when its link breaks, instead of after this job's
    /// own heartbeat timeout. A process that is no member (never joined, already removed) is
    /// ignored.
    pub(super) fn pool_lost(&mut self, loss: &PoolLoss) {
        let member = self.workers.iter().find(|(_, c)| c.pid == loss.pid && c.ring_addr.ip() == loss.ip).map(|(id, _)| *id);
        if let Some(id) = member {
            self.log(&format!("{id}: lost to the pool ({})", loss.reason));
            self.leave(id, Removal { reason: format!("lost to the pool: {}", loss.reason), lost: true });
        }
    }

    /// Removes `id` from the job for `why` (recorded when the state machine removes it).
    pub(super) fn leave(&mut self, id: WorkerId, why: Removal) {
        let event = if why.lost { Event::Lost { id } } else { Event::Leave { id } };
        self.removal.insert(id, why);
        self.drive(event);
        // Not a member (already removed): nothing consumed the reason.
        self.removal.remove(&id);
    }
}
