//! What a rank tells about a step: the report the coordinator aggregates (and a process alone
//! logs as a world of one), with the process's memory as `/proc` tells it.

use tessera_protocol::checkpoint::TrainState;
use tessera_protocol::report::{self as protocol, StepTimings};
use tessera_protocol::{Generation, Rank, Step};

use crate::trainer::StepReport;

/// Rank `rank` of `world`'s report of step `r` in `generation`, with the job's counters after
/// it (`state`).
pub fn step_report(
    generation: Generation,
    (rank, world): (Rank, u32),
    r: &StepReport,
    tokens_per_sample: u64,
    state: &TrainState,
) -> protocol::StepReport {
    let mine = tessera_ops::shard_len(r.samples, world as usize, rank.index()) as u64;
    protocol::StepReport {
        generation,
        step: Step(r.step),
        rank,
        world,
        loss: r.loss,
        losses: r.mod_loss.iter().map(|(m, l)| ((*m).into(), *l)).collect(),
        lr: r.lr,
        grad_norm: r.grad_norm,
        // Each rank trains its shard of the global batch; the coordinator sums over ranks.
        samples: mine,
        tokens: mine * tokens_per_sample,
        skipped: r.skipped,
        skipped_samples: 0,
        timings: StepTimings {
            data_s: r.data_s,
            forward_s: r.forward_s,
            backward_s: (r.compute_s - r.forward_s - r.comm_s).max(0.0),
            comm_s: r.comm_s,
            optimizer_s: r.optim_s,
            total_s: r.step_s,
        },
        rss_bytes: resident_bytes(),
        counters: state.counters,
    }
}

/// This process's resident set size from `/proc/self/status` (Linux; `None` elsewhere, so that
/// no made-up 0 is exported).
pub fn resident_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// This process's peak resident set size (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix(field))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}
