//! How a coordinator service recovers a job that was running when its coordinator died: adopt
//! the workers' in-memory state, or restore the newest committed checkpoint. Pure, with the
//! clock passed in; the service only gathers the orphans its pool workers report.
//!
//! R1. Orphans of the job's newest generation (the highest one reported) count; an orphan of
//!     an older generation is a rank that had already left it.
//! R2. When every rank `0..world` of that generation has reported exactly once, all at the
//!     same step and with the same world, the job is adopted by exactly those workers.
//! R3. Otherwise the service waits for more reports until `wait_ms` after the recovery began,
//!     then queues the job to restore its newest checkpoint; the orphans drop their state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_protocol::messages::Orphan;

use super::adopt::Adoption;

/// What to do with a recovered job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recovery<W> {
    /// Keep waiting for its ranks to report (R3).
    Wait,
    /// Continue the generation on these workers, by rank (R2).
    Adopt {
        /// What the new coordinator adopts.
        adoption: Adoption,
        /// The workers, rank `i` at index `i`.
        workers: Vec<W>,
    },
    /// Queue it to restore its newest checkpoint (R3).
    Restore {
        /// Ranks of the newest generation that reported.
        reported: usize,
        /// The generation's world size (0: nobody reported).
        world: u32,
    },
}

/// Decides for one job whose recovery began at `since_ms`, given every orphan of it reported
/// so far (R1–R3).
pub fn recover<W: Clone>(now_ms: u64, since_ms: u64, wait_ms: u64, orphans: &[(W, Orphan)]) -> Recovery<W> {
    let newest = orphans.iter().map(|(_, o)| o.generation).max();
    let of_newest: Vec<&(W, Orphan)> = orphans.iter().filter(|(_, o)| Some(o.generation) == newest).collect();
    let world = of_newest.first().map_or(0, |(_, o)| o.world);
    let mut by_rank: BTreeMap<u32, &(W, Orphan)> = BTreeMap::new();
    let mut consistent = true;
    for entry in &of_newest {
        let o = &entry.1;
        let first = &of_newest[0].1;
        consistent &= o.world == world && o.step == first.step && o.rank.0 < world;
        consistent &= by_rank.insert(o.rank.0, entry).is_none();
    }
    if consistent && world > 0 && by_rank.len() == world as usize {
        let first = of_newest[0].1;
        let ranks = by_rank.values().map(|(_, o)| o.worker).collect();
        let workers = by_rank.values().map(|(w, _)| w.clone()).collect();
        return Recovery::Adopt { adoption: Adoption { generation: first.generation, step: first.step, ranks }, workers };
    }
    if now_ms < since_ms + wait_ms {
        return Recovery::Wait;
    }
    Recovery::Restore { reported: by_rank.len(), world }
}
