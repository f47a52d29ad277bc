//! The worker pool of a coordinator service: which worker processes offered themselves, when
//! each was last heard from, and which job each one serves. Plain bookkeeping with the clock
//! passed in, so the rules (a silent worker is lost, and so is one whose etcd registry key is
//! gone; a worker that asks for work again has left its job) are tested without processes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use tessera_protocol::messages::Orphan;

use crate::registry::{WorkerAd, WorkerName};
use crate::store::JobId;

/// What a worker is told to do: join this job's coordinator node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The job's coordinator node (the service host's real address).
    pub node: std::net::SocketAddr,
    /// The job's node cookie: reaches the worker only over the authenticated API.
    pub cookie: String,
    /// The job's coordinator process group.
    pub group: String,
}

/// One pooled worker.
#[derive(Debug, Clone)]
struct Pooled {
    ad: WorkerAd,
    last_seen_ms: u64,
    /// The job it was given (`delivered`: the worker has been told).
    job: Option<(Assignment, bool)>,
    /// The state it keeps of a job whose coordinator died (while it holds no assignment).
    orphan: Option<(JobId, Orphan)>,
    /// Its orphaned state will not be adopted: it is told to drop it.
    release: bool,
    /// The job it last said it trains.
    busy_with: Option<JobId>,
}

/// The pool: every worker that offered itself and has not gone silent.
#[derive(Debug, Default)]
pub struct Pool {
    workers: BTreeMap<WorkerName, Pooled>,
    /// The workers the etcd registry holds a key of (its watch said so), pooled or not yet.
    registered: BTreeSet<WorkerName>,
}

/// A worker the pool lost, with what it offered and the job it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// Its name.
    pub name: WorkerName,
    /// What it offered (its address and process id name its member in a job).
    pub ad: WorkerAd,
    /// The job it was given.
    pub job: Option<JobId>,
}

/// What a worker says when it reports in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// What it offers.
    pub ad: WorkerAd,
    /// The job it is training now (`None`: idle, asking for work).
    pub busy_with: Option<JobId>,
    /// It lost that job's coordinator and keeps the job's state, paused, for a coordinator
    /// to adopt (absent from workers that predate re-attaching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphan: Option<Orphan>,
}

impl Pool {
    /// Records a report from `name` at `now_ms`. A worker that reports idle after it was told
    /// its job has left that job (finished, drained or dropped) and is free again; returns the
    /// job it left.
    pub fn beat(&mut self, name: &WorkerName, beat: Beat, now_ms: u64) -> Option<JobId> {
        let w = self.workers.entry(name.clone()).or_insert_with(|| Pooled {
            ad: beat.ad.clone(),
            last_seen_ms: now_ms,
            job: None,
            orphan: None,
            release: false,
            busy_with: None,
        });
        w.busy_with = beat.busy_with;
        w.ad = beat.ad;
        w.last_seen_ms = now_ms;
        w.orphan = match (beat.busy_with, beat.orphan) {
            (Some(job), Some(o)) if w.job.is_none() => Some((job, o)),
            _ => None,
        };
        if w.orphan.is_none() {
            w.release = false;
        }
        match (&w.job, beat.busy_with) {
            (Some((a, true)), None) => {
                let left = a.job;
                w.job = None;
                Some(left)
            }
            _ => None,
        }
    }

    /// The assignment `name` has not been told yet (marked told).
    pub fn take_assignment(&mut self, name: &WorkerName) -> Option<Assignment> {
        let w = self.workers.get_mut(name)?;
        match &mut w.job {
            Some((a, delivered)) if !*delivered => {
                *delivered = true;
                Some(a.clone())
            }
            _ => None,
        }
    }

    /// Removes the workers not heard from since `now_ms - timeout_ms`; returns them with the job
    /// each was given.
    pub fn evict_silent(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<Evicted> {
        let gone: Vec<WorkerName> =
            self.workers.iter().filter(|(_, w)| now_ms.saturating_sub(w.last_seen_ms) > timeout_ms).map(|(n, _)| n.clone()).collect();
        gone.into_iter().filter_map(|n| self.evict(n)).collect()
    }

    fn evict(&mut self, name: WorkerName) -> Option<Evicted> {
        let w = self.workers.remove(&name)?;
        Some(Evicted { name, ad: w.ad, job: w.job.map(|(a, _)| a.job) })
    }

    /// The etcd registry holds `name`'s key (it registered, or registered again under a new
    /// lease). It joins the pool by reporting, as every worker does.
    pub fn registry_joined(&mut self, name: &WorkerName) {
        self.registered.insert(name.clone());
    }

    /// `name`'s registry key is gone (its lease expired, or it left): it is lost to the pool at
    /// once, whatever its last report; returns it if it was pooled. A report after this (it was
    /// cut off from etcd only, or it is back) pools it again.
    pub fn registry_lost(&mut self, name: &WorkerName) -> Option<Evicted> {
        self.registered.remove(name);
        self.evict(name.clone())
    }

    /// The registry's members as a watch (re)started reads them: a worker registered before
    /// but absent now lost its key while nobody watched, and is lost to the pool. Returns those.
    pub fn registry_members(&mut self, members: &BTreeSet<WorkerName>) -> Vec<Evicted> {
        let gone: Vec<WorkerName> = self.registered.difference(members).cloned().collect();
        self.registered = members.clone();
        gone.into_iter().filter_map(|n| self.evict(n)).collect()
    }

    /// Workers in the pool.
    pub fn size(&self) -> u32 {
        self.workers.len() as u32
    }

    /// Workers that serve no job, in name order (one that says it trains a job this pool did
    /// not give it, e.g. under a coordinator that died, is not free until it says it is idle).
    pub fn free(&self) -> Vec<WorkerName> {
        self.workers.iter().filter(|(_, w)| w.job.is_none() && w.busy_with.is_none()).map(|(n, _)| n.clone()).collect()
    }

    /// The job `name` says it trains although this pool did not give it one (it was given
    /// by a coordinator that died).
    pub fn stray(&self, name: &WorkerName) -> Option<JobId> {
        self.workers.get(name).filter(|w| w.job.is_none()).and_then(|w| w.busy_with)
    }

    /// The workers that keep orphaned state of `job`, with it.
    pub fn orphans(&self, job: JobId) -> Vec<(WorkerName, Orphan)> {
        self.workers.iter().filter_map(|(n, w)| w.orphan.filter(|(j, _)| *j == job && !w.release).map(|(_, o)| (n.clone(), o))).collect()
    }

    /// Gives `name`, which keeps orphaned state, back its job under a new coordinator.
    pub fn adopt(&mut self, name: &WorkerName, assignment: Assignment) -> bool {
        match self.workers.get_mut(name) {
            Some(w) if w.job.is_none() => {
                w.orphan = None;
                w.job = Some((assignment, false));
                true
            }
            _ => false,
        }
    }

    /// Tells every worker that keeps orphaned state of `job` to drop it (at its next report).
    pub fn release_orphans(&mut self, job: JobId) {
        for w in self.workers.values_mut() {
            if w.orphan.is_some_and(|(j, _)| j == job) {
                w.release = true;
            }
        }
    }

    /// True when `name` is to drop its orphaned state.
    pub fn released(&self, name: &WorkerName) -> bool {
        self.workers.get(name).is_some_and(|w| w.release)
    }

    /// Gives the free worker `name` to a job (the worker learns of it at its next report).
    pub fn assign(&mut self, name: &WorkerName, assignment: Assignment) -> bool {
        match self.workers.get_mut(name) {
            Some(w) if w.job.is_none() => {
                w.job = Some((assignment, false));
                true
            }
            _ => false,
        }
    }

    /// Workers given to `job`.
    pub fn held_by(&self, job: JobId) -> u32 {
        self.workers.values().filter(|w| w.job.as_ref().is_some_and(|(a, _)| a.job == job)).count() as u32
    }

    /// Workers that say they train `job` now (they may still print lines to its logs).
    pub fn serving(&self, job: JobId) -> u32 {
        self.workers.values().filter(|w| w.busy_with == Some(job)).count() as u32
    }

    /// Takes back the workers given to `job` that were not told yet (the job ended first).
    pub fn withdraw(&mut self, job: JobId) {
        for w in self.workers.values_mut() {
            if w.job.as_ref().is_some_and(|(a, delivered)| a.job == job && !delivered) {
                w.job = None;
            }
        }
    }

    /// Every worker: name, what it offers, and the job it serves.
    pub fn list(&self) -> Vec<(WorkerName, WorkerAd, Option<JobId>)> {
        self.workers.iter().map(|(n, w)| (n.clone(), w.ad.clone(), w.job.as_ref().map(|(a, _)| a.job))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::{Generation, Rank, Step, WorkerId};

    fn ad() -> WorkerAd {
        WorkerAd { addr: "10.0.0.2".into(), threads: 1, labels: Default::default(), pid: 7 }
    }

    fn idle() -> Beat {
        Beat { ad: ad(), busy_with: None, orphan: None }
    }

    fn assignment(job: u64) -> Assignment {
        Assignment { job: JobId(job), node: "10.0.0.1:7000".parse().unwrap(), cookie: "c".into(), group: "g".into() }
    }

    #[test]
    fn a_worker_is_free_until_assigned_and_free_again_when_it_reports_idle_after_being_told() {
        let mut pool = Pool::default();
        let a = WorkerName::new("a").unwrap();
        assert_eq!(pool.beat(&a, idle(), 0), None);
        assert_eq!(pool.free(), vec![a.clone()]);
        assert!(pool.assign(&a, assignment(1)));
        assert!(!pool.assign(&a, assignment(2)), "a worker serves one job");
        assert_eq!(pool.held_by(JobId(1)), 1);
        // An idle report before it was told does not free it: the assignment is still to come.
        assert_eq!(pool.beat(&a, idle(), 1), None);
        assert_eq!(pool.take_assignment(&a), Some(assignment(1)));
        assert_eq!(pool.take_assignment(&a), None, "told once");
        assert_eq!(pool.serving(JobId(1)), 0, "told, but it has not said it trains yet");
        assert_eq!(pool.beat(&a, Beat { ad: ad(), busy_with: Some(JobId(1)), orphan: None }, 2), None);
        assert!(pool.free().is_empty());
        assert_eq!((pool.serving(JobId(1)), pool.serving(JobId(2))), (1, 0));
        assert_eq!(pool.beat(&a, idle(), 3), Some(JobId(1)), "reporting idle after the job means it left");
        assert_eq!(pool.serving(JobId(1)), 0);
        assert_eq!(pool.free(), vec![a]);
    }

    #[test]
    fn silent_workers_are_evicted_with_their_job_and_untold_assignments_can_be_withdrawn() {
        let mut pool = Pool::default();
        let (a, b) = (WorkerName::new("a").unwrap(), WorkerName::new("b").unwrap());
        pool.beat(&a, idle(), 0);
        pool.beat(&b, idle(), 5_000);
        pool.assign(&a, assignment(7));
        pool.assign(&b, assignment(7));
        assert_eq!(pool.evict_silent(10_001, 10_000), vec![Evicted { name: a, ad: ad(), job: Some(JobId(7)) }]);
        assert_eq!(pool.size(), 1);
        pool.withdraw(JobId(7));
        assert_eq!(pool.free(), vec![b]);
    }

    #[test]
    fn a_lost_registration_evicts_at_once_a_report_pools_again_and_a_resync_finds_losses_missed() {
        let mut pool = Pool::default();
        let (a, b, c) = (WorkerName::new("a").unwrap(), WorkerName::new("b").unwrap(), WorkerName::new("c").unwrap());
        for n in [&a, &b, &c] {
            pool.registry_joined(n);
            pool.beat(n, idle(), 0);
        }
        pool.assign(&a, assignment(3));
        // Reported a moment ago, yet its lease expired: lost now, with its job.
        assert_eq!(pool.registry_lost(&a), Some(Evicted { name: a.clone(), ad: ad(), job: Some(JobId(3)) }));
        assert_eq!((pool.size(), pool.held_by(JobId(3))), (2, 0));
        assert_eq!(pool.registry_lost(&a), None, "lost once");
        // It reports again (cut off from etcd only, or back): pooled and free again.
        pool.beat(&a, idle(), 1);
        assert_eq!(pool.free(), vec![a.clone(), b.clone(), c.clone()]);
        // A watch started again reads the members: `b` lost its key while nobody watched;
        // `a` (not registered again yet) and unregistered workers are left alone.
        pool.registry_joined(&a);
        let members = BTreeSet::from([a.clone(), c.clone()]);
        assert_eq!(pool.registry_members(&members), vec![Evicted { name: b.clone(), ad: ad(), job: None }]);
        assert_eq!(pool.registry_members(&members), vec![], "nothing more is lost");
        pool.beat(&b, idle(), 2);
        assert_eq!(pool.registry_members(&BTreeSet::new()).len(), 2, "a and c, not b (no key since it came back)");
        assert_eq!(pool.free(), vec![b]);
    }

    #[test]
    fn orphans_are_not_free_are_adopted_by_their_job_or_released_and_strays_are_known() {
        let mut pool = Pool::default();
        let (a, b) = (WorkerName::new("a").unwrap(), WorkerName::new("b").unwrap());
        let o = Orphan { worker: WorkerId(4), generation: Generation(2), step: Step(9), rank: Rank(0), world: 2 };
        // After a coordinator's death: `a` kept its state, `b` still says it trains (not paused yet).
        pool.beat(&a, Beat { ad: ad(), busy_with: Some(JobId(1)), orphan: Some(o) }, 0);
        pool.beat(&b, Beat { ad: ad(), busy_with: Some(JobId(1)), orphan: None }, 0);
        assert!(pool.free().is_empty(), "neither is free for another job");
        assert_eq!(pool.orphans(JobId(1)), vec![(a.clone(), o)]);
        assert_eq!((pool.stray(&a), pool.stray(&b)), (Some(JobId(1)), Some(JobId(1))));
        assert!(pool.adopt(&a, assignment(1)));
        assert_eq!((pool.stray(&a), pool.held_by(JobId(1))), (None, 1), "adopted: it serves its job again");
        assert!(pool.orphans(JobId(1)).is_empty());
        pool.beat(&b, Beat { ad: ad(), busy_with: Some(JobId(1)), orphan: Some(o) }, 1);
        pool.release_orphans(JobId(1));
        assert!(pool.released(&b) && pool.orphans(JobId(1)).is_empty());
        pool.beat(&b, idle(), 2);
        assert!(!pool.released(&b), "it dropped its state");
        assert_eq!(pool.free(), vec![b]);
    }
}
