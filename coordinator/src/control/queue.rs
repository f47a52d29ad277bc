//! The job queue's decisions (cluster mode): which queued job starts on the pool's free
//! workers, which running job grows, and which lower-priority job shrinks for a waiting
//! higher-priority one. A pure function of the pool and the jobs ([`schedule`]); every
//! decision carries its reason, so `tessera jobs` can say why a job is pending. Rules:
//!
//! - **Q1** Queue order: higher priority first, submission order (the job id) within a
//!   priority. A job waits while one ahead of it waits (no overtaking: a large job is never
//!   starved by a stream of small ones), except a job larger than the whole pool, which can
//!   never start and so blocks nobody.
//! - **Q2** A queued job starts when its minimum is free, with its minimum.
//! - **Q3** When no job waits for workers, the free workers left grow the jobs (those just
//!   started included) toward their maximum, in queue order; a shrinking job does not grow.
//! - **Q4** A queued job that lacks workers may take them from running jobs of *lower*
//!   priority: they shrink (never below their minimum; lowest priority first, newest first) at
//!   their next checkpointed boundary, and the job waits for those workers. Workers already
//!   being released count first; a shrink that cannot make the job fit is not asked for.

use std::fmt;

use crate::store::{JobId, Priority, WorkerRange};

/// A job as the scheduler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobView {
    /// The job.
    pub id: JobId,
    /// Its queue priority.
    pub priority: Priority,
    /// The worker counts it runs with.
    pub range: WorkerRange,
    /// Queued or running.
    pub phase: Phase,
}

/// Where a job the scheduler considers stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting in the queue.
    Queued,
    /// Training on `workers` workers, of which `releasing` are being shrunk away.
    Running {
        /// Workers it holds.
        workers: u32,
        /// Workers it gives up at its next checkpointed boundary.
        releasing: u32,
    },
}

/// What the scheduler decides for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Q2 (+Q3): start the queued job on this many free workers.
    Start {
        /// The job.
        job: JobId,
        /// Workers to give it.
        workers: u32,
    },
    /// Q3: give the running job this many more free workers.
    Grow {
        /// The job.
        job: JobId,
        /// Workers to add.
        by: u32,
    },
    /// Q4: shrink the running job by this many workers at its next checkpointed boundary.
    Shrink {
        /// The job that shrinks.
        job: JobId,
        /// Workers it gives up.
        by: u32,
        /// The higher-priority job that gets them.
        for_job: JobId,
    },
    /// The queued job waits.
    Pending {
        /// The job.
        job: JobId,
        /// Why.
        reason: PendingReason,
    },
}

/// Why a queued job is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingReason {
    /// Q2: fewer workers are free than its minimum, and lower-priority jobs cannot make up the
    /// difference.
    NotEnoughWorkers {
        /// Free workers.
        free: u32,
        /// Its minimum.
        min: u32,
    },
    /// Q1: a job ahead of it in the queue waits.
    BehindInQueue {
        /// The first waiting job ahead.
        ahead: JobId,
    },
    /// Q4: lower-priority jobs are shrinking to free workers for it.
    WaitingForShrink {
        /// The jobs giving workers up.
        from: Vec<JobId>,
    },
    /// Q1: its minimum exceeds the whole pool; it cannot start until workers join.
    LargerThanPool {
        /// Workers in the pool.
        pool: u32,
        /// Its minimum.
        min: u32,
    },
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEnoughWorkers { free, min } => write!(f, "waiting for workers: {free} free, needs {min}"),
            Self::BehindInQueue { ahead } => write!(f, "behind {ahead} in the queue"),
            Self::WaitingForShrink { from } => {
                let names: Vec<String> = from.iter().map(|j| j.to_string()).collect();
                write!(f, "waiting for {} to shrink at a checkpoint", names.join(", "))
            }
            Self::LargerThanPool { pool, min } => write!(f, "needs {min} workers, the pool has {pool}"),
        }
    }
}

/// The decisions for a pool of `pool` workers of which `free` are idle, and its jobs (queued
/// and running, any order). Decisions come in queue order; at most one per job, except that a
/// waiting job's [`Decision::Shrink`]s precede its [`Decision::Pending`].
pub fn schedule(pool: u32, free: u32, jobs: &[JobView]) -> Vec<Decision> {
    let mut order: Vec<&JobView> = jobs.iter().collect();
    order.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.id));
    let mut free = free;
    let mut releasing: u32 = jobs.iter().map(|j| if let Phase::Running { releasing, .. } = j.phase { releasing } else { 0 }).sum();
    // Workers each running job can still give up (Q4), shrunk as this pass asks for them.
    let mut spare: Vec<(JobView, u32)> = order
        .iter()
        .filter_map(|j| match j.phase {
            Phase::Running { workers, releasing } => Some((**j, workers.saturating_sub(releasing).saturating_sub(j.range.min))),
            Phase::Queued => None,
        })
        .collect();
    let mut out = Vec::new();
    let mut started: Vec<(JobId, u32, u32)> = Vec::new(); // (job, workers, max)
    let mut blocked: Option<JobId> = None;
    for j in order.iter().filter(|j| j.phase == Phase::Queued) {
        let min = j.range.min.max(1);
        if min > pool {
            out.push(Decision::Pending { job: j.id, reason: PendingReason::LargerThanPool { pool, min } });
            continue;
        }
        if let Some(ahead) = blocked {
            out.push(Decision::Pending { job: j.id, reason: PendingReason::BehindInQueue { ahead } });
            continue;
        }
        if free >= min {
            free -= min;
            started.push((j.id, min, j.range.max.max(min)));
            continue;
        }
        blocked = Some(j.id);
        out.extend(take_from_lower(j, min, free, &mut releasing, &mut spare, jobs));
    }
    if blocked.is_none() {
        // Q3: grow in queue order, the jobs started in this pass included.
        for j in &order {
            if free == 0 {
                break;
            }
            match j.phase {
                Phase::Queued => {
                    if let Some(s) = started.iter_mut().find(|s| s.0 == j.id) {
                        let by = (s.2 - s.1).min(free);
                        s.1 += by;
                        free -= by;
                    }
                }
                Phase::Running { workers, releasing: 0 } if workers < j.range.max => {
                    let by = (j.range.max - workers).min(free);
                    free -= by;
                    out.push(Decision::Grow { job: j.id, by });
                }
                Phase::Running { .. } => {}
            }
        }
    }
    let mut starts: Vec<Decision> = started.into_iter().map(|(job, workers, _)| Decision::Start { job, workers }).collect();
    starts.append(&mut out);
    starts
}

/// Q4 for queued job `j` that needs `min` workers with `free` idle: the shrinks of
/// lower-priority jobs that make it fit, and its pending decision.
fn take_from_lower(j: &JobView, min: u32, free: u32, releasing: &mut u32, spare: &mut [(JobView, u32)], jobs: &[JobView]) -> Vec<Decision> {
    let shrinking_now = || -> Vec<JobId> {
        jobs.iter().filter(|o| matches!(o.phase, Phase::Running { releasing, .. } if releasing > 0)).map(|o| o.id).collect()
    };
    // Workers already on their way cover the need first.
    if free + *releasing >= min {
        *releasing -= min.saturating_sub(free);
        return vec![Decision::Pending { job: j.id, reason: PendingReason::WaitingForShrink { from: shrinking_now() } }];
    }
    let mut need = min - free - *releasing;
    // Lowest priority first, newest first among equals.
    let mut lower: Vec<usize> = (0..spare.len()).filter(|&i| spare[i].0.priority < j.priority && spare[i].1 > 0).collect();
    lower.sort_by_key(|&i| (spare[i].0.priority, std::cmp::Reverse(spare[i].0.id)));
    let available: u32 = lower.iter().map(|&i| spare[i].1).sum();
    if available < need {
        return vec![Decision::Pending { job: j.id, reason: PendingReason::NotEnoughWorkers { free, min } }];
    }
    let mut out = Vec::new();
    let mut from = shrinking_now();
    for i in lower {
        if need == 0 {
            break;
        }
        let by = spare[i].1.min(need);
        spare[i].1 -= by;
        need -= by;
        out.push(Decision::Shrink { job: spare[i].0.id, by, for_job: j.id });
        if !from.contains(&spare[i].0.id) {
            from.push(spare[i].0.id);
        }
    }
    // What is already being released was counted for this job.
    *releasing = 0;
    out.push(Decision::Pending { job: j.id, reason: PendingReason::WaitingForShrink { from } });
    out
}
