//! The job queue's rules Q1–Q4 (`control::queue`): starts, growth, FIFO within a priority,
//! shrinking lower priorities for a waiting higher one, and the reason of every pending job.

use tessera_coordinator::control::queue::{Decision, JobView, PendingReason, Phase, schedule};
use tessera_coordinator::store::{JobId, Priority, WorkerRange};

fn queued(id: u64, priority: i32, min: u32, max: u32) -> JobView {
    JobView { id: JobId(id), priority: Priority(priority), range: WorkerRange { min, max }, phase: Phase::Queued }
}

fn running(id: u64, priority: i32, (min, max): (u32, u32), workers: u32, releasing: u32) -> JobView {
    JobView { id: JobId(id), priority: Priority(priority), range: WorkerRange { min, max }, phase: Phase::Running { workers, releasing } }
}

fn pending(job: u64, reason: PendingReason) -> Decision {
    Decision::Pending { job: JobId(job), reason }
}

/// Q2: two jobs that cannot both run at their minimum on a pool of 3: the second waits with
/// its reason; once the first ends, it starts (and Q3 grows it to its maximum).
#[test]
fn a_second_job_waits_for_workers_and_starts_when_the_first_ends() {
    let jobs = [running(1, 0, (2, 2), 2, 0), queued(2, 0, 2, 3)];
    assert_eq!(schedule(3, 1, &jobs), vec![pending(2, PendingReason::NotEnoughWorkers { free: 1, min: 2 })]);
    assert_eq!(
        PendingReason::NotEnoughWorkers { free: 1, min: 2 }.to_string(),
        "waiting for workers: 1 free, needs 2",
        "the text `tessera jobs` shows"
    );
    // The first job ended (or was cancelled): its workers are free.
    assert_eq!(schedule(3, 3, &[queued(2, 0, 2, 3)]), vec![Decision::Start { job: JobId(2), workers: 3 }]);
}

/// Q1: FIFO within a priority (no overtaking by a smaller job), higher priority first.
#[test]
fn the_queue_is_fifo_within_a_priority_and_priority_goes_first() {
    let jobs = [queued(1, 0, 3, 3), queued(2, 0, 1, 1)];
    assert_eq!(
        schedule(4, 2, &jobs),
        vec![pending(1, PendingReason::NotEnoughWorkers { free: 2, min: 3 }), pending(2, PendingReason::BehindInQueue { ahead: JobId(1) }),]
    );
    // A later submission of higher priority goes first.
    let jobs = [queued(1, 0, 2, 2), queued(2, 5, 2, 2)];
    assert_eq!(
        schedule(3, 3, &jobs),
        vec![Decision::Start { job: JobId(2), workers: 2 }, pending(1, PendingReason::NotEnoughWorkers { free: 1, min: 2 })]
    );
}

/// Q2 + Q3: queued jobs start at their minimum first, then what is left grows the jobs in
/// queue order (so a greedy first job does not starve the second).
#[test]
fn jobs_start_at_their_minimum_then_grow_in_queue_order() {
    let jobs = [queued(1, 0, 2, 6), queued(2, 0, 2, 2), running(3, 0, (1, 4), 1, 0)];
    assert_eq!(schedule(7, 6, &jobs), vec![Decision::Start { job: JobId(1), workers: 4 }, Decision::Start { job: JobId(2), workers: 2 }]);
    // With more workers the running job grows too; a shrinking one does not.
    let jobs = [running(3, 0, (1, 4), 1, 0), running(4, 0, (1, 4), 3, 1)];
    assert_eq!(schedule(9, 5, &jobs), vec![Decision::Grow { job: JobId(3), by: 3 }]);
}

/// Q4: a waiting higher-priority job shrinks lower-priority ones (lowest priority first, newest
/// first, never below their minimum) and waits for them; equal priorities are never shrunk.
#[test]
fn a_higher_priority_job_shrinks_lower_ones_at_a_checkpoint() {
    let jobs = [running(1, 0, (1, 4), 4, 0), running(2, 0, (2, 4), 3, 0), running(3, 1, (1, 4), 2, 0), queued(9, 5, 4, 4)];
    // Free 0; spare: job 3 (prio 1) 1, job 1 (prio 0) 3, job 2 (prio 0) 1. Lowest priority
    // first, newest first: job 2 gives 1, job 1 gives 3.
    assert_eq!(
        schedule(9, 0, &jobs),
        vec![
            Decision::Shrink { job: JobId(2), by: 1, for_job: JobId(9) },
            Decision::Shrink { job: JobId(1), by: 3, for_job: JobId(9) },
            pending(9, PendingReason::WaitingForShrink { from: vec![JobId(2), JobId(1)] }),
        ]
    );
    // The next pass, with those workers on their way, asks for nothing more.
    let jobs = [running(1, 0, (1, 4), 4, 3), running(2, 0, (2, 4), 3, 1), running(3, 1, (1, 4), 2, 0), queued(9, 5, 4, 4)];
    assert_eq!(schedule(9, 0, &jobs), vec![pending(9, PendingReason::WaitingForShrink { from: vec![JobId(1), JobId(2)] })]);
    // Equal priority: no shrink, the job waits for workers.
    let jobs = [running(1, 5, (1, 4), 4, 0), queued(9, 5, 2, 2)];
    assert_eq!(schedule(4, 0, &jobs), vec![pending(9, PendingReason::NotEnoughWorkers { free: 0, min: 2 })]);
}

/// Q4: a shrink that cannot make the waiting job fit is not asked for (it would only slow the
/// lower-priority jobs down).
#[test]
fn no_shrink_that_cannot_help() {
    let jobs = [running(1, 0, (2, 3), 3, 0), queued(2, 5, 3, 3)];
    assert_eq!(schedule(4, 1, &jobs), vec![pending(2, PendingReason::NotEnoughWorkers { free: 1, min: 3 })]);
}

/// Q1: a job larger than the whole pool blocks nobody; the text says why it waits.
#[test]
fn a_job_larger_than_the_pool_blocks_nobody() {
    let jobs = [queued(1, 0, 8, 8), queued(2, 0, 2, 2)];
    assert_eq!(
        schedule(4, 4, &jobs),
        vec![Decision::Start { job: JobId(2), workers: 2 }, pending(1, PendingReason::LargerThanPool { pool: 4, min: 8 })]
    );
    assert_eq!(PendingReason::LargerThanPool { pool: 4, min: 8 }.to_string(), "needs 8 workers, the pool has 4");
    assert_eq!(
        PendingReason::WaitingForShrink { from: vec![JobId(2), JobId(1)] }.to_string(),
        "waiting for job-2, job-1 to shrink at a checkpoint"
    );
}
