//! [`Control::handle`]: applies an event, then decides. The rules, in order:
//! 1. a member silent for longer than the heartbeat timeout is dead: it is removed (as lost,
//!    see rule 5) and, if it is a rank of the running generation, the generation is aborted
//!    (its work since the last committed checkpoint is redone);
//! 2. while a generation runs: periodic and requested checkpoints; a planned membership change
//!    (a new worker below the target, a draining rank, a scale-down) or a reconfiguration (a
//!    mixture change) ends the generation at the next step boundary with a checkpoint, so no
//!    step is lost; at the end of the job a final checkpoint, then a stop. The final
//!    checkpoint is tried at most [`MAX_FINAL_CHECKPOINT_ATTEMPTS`] times, then the job fails
//!    with the write error (the last good checkpoint stays intact); a shutdown always ends the
//!    generation, at the next boundary, checkpointing if it still can;
//! 3. with no generation running: a job that cannot go on fails; otherwise, if enough members
//!    exist (all that the first generation waits for, or at least `min_workers` once the
//!    rendezvous grace has passed), the next generation starts with the longest-standing ones,
//!    restoring the newest committed checkpoint. The first generation waits for the workers
//!    the coordinator started (`initial_workers`), not for `max_workers`;
//! 4. a checkpoint whose shards are all written is committed only if the newest generation
//!    wrote it and was not aborted (an aborted generation's state is not trusted): this rule
//!    alone bars it, the actor hands over every complete checkpoint;
//! 5. (embedded mode, see `local`) every lost worker is replaced by a new local process while
//!    the job has fewer workers than it wants, except a replacement that is lost before it
//!    trained a step (it would crash-loop). A replacement is a process [`Event::Launched`] as
//!    one, known by its pid when it joins or exits; a lost worker is told it was lost
//!    ([`Action::Remove`] says so), one that left or was drained that it was released;
//! 6. (see `local`) with no generation running and fewer members than `min_workers`, the job
//!    fails when nobody can come: fewer local processes alive than `min_workers` (embedded),
//!    or, with workers joined by hand, once a generation was lost;
//! 7. a generation that restored a checkpoint and fails before its first step may have failed
//!    to restore it: the checkpoint is sent for verification ([`Action::VerifyRestore`], once
//!    per generation; a failure after a trained step is not the restore's). One found bad is
//!    forgotten: the next generation restores the newest good one before it, as a restarted
//!    job would, instead of retrying the bad one until the job fails;
//! 8. (see `straggler`) a rank whose own step time exceeds the configured factor × the median of
//!    the other ranks' for the configured number of steps in a row is flagged once per
//!    generation; with `drain` on it is drained at the next checkpointed boundary (rule 2) and,
//!    in embedded mode, replaced by a new local process;
//! 9. (see `requests`) a user's request (scale, drain, checkpoint) that the job cannot honour
//!    is refused ([`Action::Refused`]); a scale-down drains the newest members beyond the new
//!    target;
//! 10. a straggler drained with a successor starting (rule 8) stays a rank until the successor
//!     has joined, so the drain and the admission happen at one boundary: one generation restart
//!     (checkpoint, rendezvous, restore) instead of two. If the successor fails to start, dies
//!     before joining, or has not joined within [`SUCCESSOR_WAIT_MS`](super::SUCCESSOR_WAIT_MS), the drain goes ahead
//!     alone, and a successor that joins later is admitted at a later boundary (rule 2).
//! 11. (see `adopt`) a coordinator that recovers a job whose ranks kept their state starts no
//!     generation until they have all joined again, then continues theirs from the paused step
//!     ([`Action::Adopted`]); after the rendezvous grace it gives up and rule 3 restores.

use serde::{Deserialize, Serialize};

use super::requests::{DrainCause, Refusal};
use super::state::{
    Control, Event, Generation, GenerationPlan, MAX_FAILED_STARTS, MAX_FINAL_CHECKPOINT_ATTEMPTS, Member, Rank, Step, WorkerId,
};

/// Why a generation ends. The event log records it as is (`generation_ended`), tagged by
/// `kind` in snake_case: `{"kind": "member_lost", "worker": 3}`, `{"kind": "resize"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// A rank died or left; the generation is aborted.
    MemberLost {
        /// The rank's worker.
        worker: WorkerId,
    },
    /// A rank failed (its error names the cause); the generation is aborted.
    RankFailed {
        /// The rank's worker.
        worker: WorkerId,
    },
    /// The membership should change (join, drain, scale).
    Resize,
    /// Every step is done.
    Finished,
    /// The job is shutting down (SIGTERM or a user's request).
    Shutdown,
    /// The final checkpoint keeps failing; the job fails.
    CheckpointFailing,
}

impl StopReason {
    /// The generation was lost to a rank's death or failure (it counts as a restart), rather
    /// than ended as planned.
    pub fn is_loss(self) -> bool {
        matches!(self, StopReason::MemberLost { .. } | StopReason::RankFailed { .. })
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MemberLost { worker } => write!(f, "{worker} was lost"),
            Self::RankFailed { worker } => write!(f, "{worker} failed"),
            Self::Resize => f.write_str("the membership changes"),
            Self::Finished => f.write_str("every step is done"),
            Self::Shutdown => f.write_str("the job is shutting down"),
            Self::CheckpointFailing => f.write_str("the final checkpoint keeps failing"),
        }
    }
}

/// How a job ends when it does not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// Every step is done (and checkpointed).
    Finished,
    /// Stopped on request before the last step; a rerun resumes from the newest checkpoint.
    Stopped {
        /// A checkpoint of the step reached exists.
        checkpointed: bool,
    },
}

/// Why a lost worker gets no replacement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoReplacement {
    /// It was itself a replacement, lost before it trained a step: a successor would most
    /// likely crash the same way (a crash loop).
    CrashLoop,
    /// The job already has (or is starting) as many workers as it wants.
    AtTarget {
        /// Members plus replacements starting.
        workers: usize,
        /// Workers the job wants.
        target: usize,
    },
    /// The job is ending (done, failing or shutting down).
    Ending,
    /// It was draining (asked to leave) when it was lost.
    WasLeaving,
}

/// What the coordinator must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Start a generation (send every rank its plan).
    Start(GenerationPlan),
    /// Continue an adopted generation (rule 11): every rank goes on from `start_step` with the
    /// state it kept; nothing is restored.
    Adopted(GenerationPlan),
    /// The adopted generation's ranks did not all join within the grace (rule 11): a new
    /// generation restores the newest checkpoint instead.
    AdoptionAbandoned {
        /// The generation that was to be adopted.
        generation: Generation,
        /// Its ranks that never joined.
        missing: Vec<WorkerId>,
    },
    /// Checkpoint the running generation at the boundary of `step` (before training it).
    Checkpoint {
        /// The generation.
        generation: Generation,
        /// The step count the checkpoint will hold.
        step: Step,
    },
    /// Finish the current step, write a checkpoint if asked, then leave the training loop.
    StopAtBoundary {
        /// The generation.
        generation: Generation,
        /// Write a checkpoint at that boundary first.
        checkpoint: bool,
        /// Why.
        reason: StopReason,
    },
    /// Abort the generation's collectives now (a rank is gone).
    Abort {
        /// The generation.
        generation: Generation,
        /// Why.
        reason: StopReason,
    },
    /// Forget this worker (and tell it to exit if it can still be reached).
    Remove {
        /// The worker.
        id: WorkerId,
        /// It was lost (died, link broken, silent), not released (left, drained): it exits
        /// with a failure.
        lost: bool,
    },
    /// Verify the checkpoint of `step` that the failing generation restored (rule 7); one
    /// that does not verify is reported back as [`Event::CheckpointBad`].
    VerifyRestore {
        /// The step it holds.
        step: Step,
    },
    /// Commit the checkpoint of `step` that `generation` wrote (rule 4).
    Commit {
        /// The generation.
        generation: Generation,
        /// The step count it holds.
        step: Step,
    },
    /// Start `count` local worker processes (embedded mode).
    Launch {
        /// How many.
        count: usize,
        /// The lost worker they replace (`None`: a scale-up).
        replacing: Option<WorkerId>,
    },
    /// A lost worker is not replaced (rule 5).
    NotReplaced {
        /// The lost worker.
        lost: WorkerId,
        /// Why not.
        why: NoReplacement,
    },
    /// A rank was flagged as a straggler (rule 8).
    StragglerFlagged {
        /// Its worker.
        id: WorkerId,
        /// Its rank in the running generation.
        rank: Rank,
        /// The step at which it was flagged.
        step: Step,
        /// Its own time in that step (µs).
        own_us: u64,
        /// The median own time of the other ranks in that step (µs).
        median_us: u64,
        /// It is drained at the next checkpointed boundary.
        drain: bool,
    },
    /// A request is refused (rule 9); nothing changed.
    Refused(Refusal),
    /// A member is drained at the next checkpointed boundary by a request (rule 9).
    Draining {
        /// The member.
        id: WorkerId,
        /// Why.
        cause: DrainCause,
    },
    /// The job is complete (or stopped on request).
    Finish {
        /// Steps completed.
        step: Step,
        /// Finished or stopped.
        ending: Ending,
    },
    /// The job cannot go on: generations keep failing before their first step although no
    /// rank was lost (the ranks' errors say why).
    Fail {
        /// What the coordinator concluded.
        reason: String,
    },
}

impl Control {
    /// Applies `event` observed at `now_ms` and returns what to do.
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        self.apply(now_ms, event, &mut actions);
        self.reap_dead(now_ms, &mut actions);
        if self.running.is_some() {
            self.while_running(now_ms, &mut actions);
        } else if !self.stopping && !self.adopt(now_ms, &mut actions) {
            self.when_idle(now_ms, &mut actions);
            self.fail_if_stranded(&mut actions);
        }
        actions
    }

    pub(super) fn is_rank(&self, id: WorkerId) -> bool {
        self.running.as_ref().is_some_and(|g| g.ranks.contains(&id))
    }

    pub(super) fn abort(&mut self, reason: StopReason, actions: &mut Vec<Action>) {
        if let Some(g) = &self.running
            && !self.stopping
        {
            actions.push(Action::Abort { generation: g.generation, reason });
            // Rule 4: what the aborted generation wrote is not committed.
            self.commit_barred = true;
            if reason.is_loss() {
                self.lost_generations += 1;
            }
        }
        // An abort also ends a planned stop: nothing in flight will be committed.
        self.stopping = true;
        self.checkpoint_in_flight = None;
    }

    fn apply(&mut self, now_ms: u64, event: Event, actions: &mut Vec<Action>) {
        match event {
            Event::Join { id, addr, pid } => {
                let replacement = self.replacement_pids.remove(&pid);
                if replacement && !self.members.contains_key(&id) {
                    self.launching = self.launching.saturating_sub(1);
                }
                let m = self.members.entry(id).or_insert(Member {
                    id,
                    addr: addr.clone(),
                    joined_ms: now_ms,
                    last_seen_ms: now_ms,
                    draining: false,
                    replacement,
                    trained: false,
                });
                m.addr = addr;
                m.last_seen_ms = now_ms;
            }
            Event::Heartbeat { id } => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.last_seen_ms = now_ms;
                }
            }
            Event::Leave { id } => {
                if self.members.remove(&id).is_some() {
                    actions.push(Action::Remove { id, lost: false });
                }
                if self.is_rank(id) {
                    self.abort(StopReason::MemberLost { worker: id }, actions);
                }
            }
            Event::Lost { id } => self.lose(id, actions),
            Event::ProcessExited { worker, pid } => {
                let replacement = self.replacement_pids.remove(&pid);
                self.processes = self.processes.saturating_sub(1);
                match worker {
                    Some(id) => self.lose(id, actions),
                    // A replacement that died before joining never trained: no successor.
                    None if replacement => self.launching = self.launching.saturating_sub(1),
                    None => {}
                }
            }
            Event::Launched { pids, replacement } => {
                if replacement {
                    self.replacement_pids.extend(pids);
                }
            }
            Event::Processes { live } => self.processes = live,
            Event::LaunchFailed { count, replacement } => {
                self.processes = self.processes.saturating_sub(count);
                if replacement {
                    self.launching = self.launching.saturating_sub(count);
                }
            }
            Event::RankTimes { generation, step, own_us } => self.rank_times(now_ms, generation, step, &own_us, actions),
            Event::StepDone { generation, step } => {
                if let Some(g) = &self.running
                    && g.generation == generation
                {
                    self.next_step = self.next_step.max(step.next());
                    self.progressed = true;
                    // Past the point where the last failure happened: that failure was transient.
                    if self.failed_at.is_none_or(|f| step.next() > f) {
                        self.failed_starts = 0;
                        self.failed_at = None;
                    }
                    for id in g.ranks.clone() {
                        if let Some(m) = self.members.get_mut(&id) {
                            m.last_seen_ms = now_ms;
                            m.trained = true;
                        }
                    }
                }
            }
            Event::CheckpointCommitted { step } => {
                if !self.committed.contains(&step) {
                    self.committed.push(step);
                    self.committed.sort_unstable();
                }
                self.checkpoint_in_flight = None;
                self.final_failures = 0;
            }
            Event::CheckpointBad { step, .. } => {
                // Rule 7: the previous good one is restored next; that is a new attempt, not
                // a repeat of the failures that restoring the bad one caused.
                self.committed.retain(|&s| s != step);
                self.failed_starts = 0;
                self.failed_at = None;
            }
            Event::CheckpointReady { generation, step } => {
                // Rule 4: only the newest generation, and only if it was not aborted.
                if generation.next() == self.next_generation && !self.commit_barred {
                    actions.push(Action::Commit { generation, step });
                }
            }
            Event::CheckpointFailed { step, reason } => {
                // Each rank reports its own failed shard: one attempt counts once.
                if self.checkpoint_in_flight == Some(step) && self.running.is_some() && self.finished() {
                    self.final_failures += 1;
                }
                self.checkpoint_in_flight = None;
                self.last_checkpoint_error = Some(reason);
            }
            Event::GenerationFailed { generation, id } => {
                if let Some(g) = self.running.as_ref().filter(|g| g.generation == generation) {
                    // Rule 7: failing before the first step may be the restore's fault.
                    if let Some(step) = g.restore.filter(|_| !self.progressed && self.verify_asked != Some(generation)) {
                        self.verify_asked = Some(generation);
                        actions.push(Action::VerifyRestore { step });
                    }
                    self.rank_failed = true;
                    self.abort(StopReason::RankFailed { worker: id }, actions);
                }
            }
            Event::GenerationStopped { generation } => {
                if let Some(g) = self.running.as_ref().filter(|g| g.generation == generation) {
                    // A lost rank explains a failure; a failure with every rank alive that did not
                    // get past the previous one (no step trained, or failing at the same step
                    // again) would happen again.
                    let all_alive = g.ranks.iter().all(|id| self.members.contains_key(id));
                    if self.rank_failed && all_alive {
                        let reached = self.next_step;
                        if !self.progressed || self.failed_at.is_some_and(|f| reached <= f) {
                            self.failed_starts += 1;
                        }
                        self.failed_at = Some(self.failed_at.map_or(reached, |f| f.max(reached)));
                    }
                    self.progressed = false;
                    self.rank_failed = false;
                    self.running = None;
                    self.stopping = false;
                    self.reconfigure = false;
                    self.checkpoint_in_flight = None;
                    // Whatever ran after the newest commit is redone by the next generation.
                    self.next_step = self.last_committed().unwrap_or_default();
                }
            }
            Event::Scale { workers } => self.scale(workers, actions),
            Event::Drain { id } => self.drain_asked(id, actions),
            Event::RequestCheckpoint => self.checkpoint_asked(actions),
            Event::Shutdown => self.shutdown = true,
            // Only a generation that is not already ending needs to be ended for it.
            Event::Reconfigure => self.reconfigure = self.running.is_some() && !self.stopping,
            Event::Tick => {}
        }
    }

    fn reap_dead(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let timeout = self.policy.heartbeat_timeout_ms;
        let dead: Vec<WorkerId> = self.members.values().filter(|m| now_ms.saturating_sub(m.last_seen_ms) > timeout).map(|m| m.id).collect();
        for id in dead {
            self.lose(id, actions);
        }
    }

    fn while_running(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if self.stopping {
            return;
        }
        let g = self.running.clone().expect("called while running");
        let step = self.next_step;
        if self.finished() {
            if self.last_committed() == Some(step) {
                actions.push(Action::StopAtBoundary { generation: g.generation, checkpoint: false, reason: StopReason::Finished });
                self.stopping = true;
            } else if self.checkpoint_in_flight.is_some() {
                // Wait for it: it commits or fails, and either way this rule runs again.
            } else if self.final_failures >= MAX_FINAL_CHECKPOINT_ATTEMPTS {
                let cause = self.last_checkpoint_error.clone().unwrap_or_else(|| "no cause reported".into());
                let kept = self
                    .last_committed()
                    .map_or("no checkpoint was committed".to_string(), |s| format!("the checkpoint of step {s} is intact"));
                self.fatal = Some(format!("the final checkpoint (step {step}) failed {} times: {cause}; {kept}", self.final_failures));
                actions.push(Action::StopAtBoundary { generation: g.generation, checkpoint: false, reason: StopReason::CheckpointFailing });
                self.stopping = true;
            } else if self.shutdown {
                // One last attempt as part of the stop; the generation ends whatever it gives.
                actions.push(Action::StopAtBoundary { generation: g.generation, checkpoint: true, reason: StopReason::Shutdown });
                self.stopping = true;
            } else {
                actions.push(Action::Checkpoint { generation: g.generation, step });
                self.checkpoint_in_flight = Some(step);
            }
            return;
        }
        if self.shutdown {
            actions.push(Action::StopAtBoundary { generation: g.generation, checkpoint: true, reason: StopReason::Shutdown });
            self.stopping = true;
            return;
        }
        let every = self.policy.checkpoint_every;
        // A periodic checkpoint that failed is not asked for again at the same step: the next
        // interval tries again (a full disk would otherwise be hammered at every answer).
        let periodic = every > 0
            && step > g.start_step
            && step.0.is_multiple_of(every)
            && self.last_committed() != Some(step)
            && self.periodic_asked != Some(step);
        if (periodic || self.checkpoint_requested) && self.checkpoint_in_flight.is_none() {
            actions.push(Action::Checkpoint { generation: g.generation, step });
            self.checkpoint_in_flight = Some(step);
            self.checkpoint_requested = false;
            if periodic {
                self.periodic_asked = Some(step);
            }
        }
        let waiting = self.members.values().filter(|m| !m.draining && !g.ranks.contains(&m.id)).count();
        // Rule 10: a drain waits for the successor that is starting for it (a failed or dead
        // start lowers `launching`), unless someone else is already waiting to be admitted.
        let successor_coming = waiting == 0 && self.launching > 0 && self.successor_due_ms.is_some_and(|due| now_ms < due);
        let draining = !successor_coming && g.ranks.iter().any(|id| self.members.get(id).is_some_and(|m| m.draining));
        let grow = waiting > 0 && g.ranks.len() < self.target.min(self.policy.max_workers);
        let shrink = g.ranks.len() > self.target;
        if grow || shrink || draining || self.reconfigure {
            self.reconfigure = false;
            actions.push(Action::StopAtBoundary { generation: g.generation, checkpoint: true, reason: StopReason::Resize });
            self.stopping = true;
        }
    }

    fn when_idle(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if let Some(reason) = &self.fatal {
            if !self.done {
                actions.push(Action::Fail { reason: reason.clone() });
                self.done = true;
            }
            return;
        }
        if self.finished() || self.shutdown {
            if !self.done {
                let step = self.next_step;
                // A stopped job is not finished: a rerun resumes from its newest checkpoint.
                let ending = if self.shutdown && !self.finished() {
                    Ending::Stopped { checkpointed: self.last_committed() == Some(step) }
                } else {
                    Ending::Finished
                };
                actions.push(Action::Finish { step, ending });
                self.done = true;
            }
            return;
        }
        if self.failed_starts >= MAX_FAILED_STARTS {
            if !self.done {
                let from = self.last_committed().map_or("the start".to_string(), |s| format!("the checkpoint of step {s}"));
                let at = self.failed_at.unwrap_or_default();
                actions.push(Action::Fail {
                    reason: format!(
                        "{} generations in a row failed again without getting past step {at}, restoring {from}, with every rank alive",
                        self.failed_starts
                    ),
                });
                self.done = true;
            }
            return;
        }
        // Draining members leave once their generation has stopped.
        let drained: Vec<WorkerId> = self.members.values().filter(|m| m.draining).map(|m| m.id).collect();
        for id in drained {
            self.members.remove(&id);
            actions.push(Action::Remove { id, lost: false });
        }
        let mut eligible: Vec<&Member> = self.members.values().collect();
        if eligible.len() < self.policy.min_workers.max(1) {
            self.ready_since = None;
            return;
        }
        let mut want = self.target.min(self.policy.max_workers);
        if self.policy.initial_workers > 0 && self.next_generation == Generation(0) {
            // Nobody may ever start the rest up to `max_workers`; joiners come in later.
            want = want.min(self.policy.initial_workers);
        }
        let since = *self.ready_since.get_or_insert(now_ms);
        // Only the first generation waits: after a failure the survivors go on at once.
        if self.next_generation == Generation(0) && eligible.len() < want && now_ms < since + self.policy.rendezvous_grace_ms {
            return; // more workers may still be coming
        }
        eligible.sort_by_key(|m| (m.joined_ms, m.id));
        let n = eligible.len().min(self.target).min(self.policy.max_workers).max(self.policy.min_workers.max(1));
        let restore = self.last_committed();
        let plan = GenerationPlan {
            generation: self.next_generation,
            ranks: eligible.iter().take(n).map(|m| m.id).collect(),
            start_step: restore.unwrap_or_default(),
            restore,
        };
        self.next_generation = self.next_generation.next();
        self.commit_barred = false;
        self.periodic_asked = None;
        // Rule 8 compares the ranks of one generation: a new world starts from scratch.
        self.slow_steps.clear();
        self.stragglers.clear();
        self.successor_due_ms = None;
        self.ready_since = None;
        self.next_step = plan.start_step;
        self.running = Some(plan.clone());
        actions.push(Action::Start(plan));
    }

    /// Marks a member as draining: it leaves at the next step boundary (`tessera scale`).
    pub fn drain(&mut self, id: WorkerId) {
        if let Some(m) = self.members.get_mut(&id) {
            m.draining = true;
        }
    }
}
