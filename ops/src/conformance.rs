//! Backend-generic conformance suite for [`Collective`]: every op × dtype × size with exact
//! expected values, for any world size. A backend provides a [`Backend`] that launches a world of
//! communicators; `tests/conformance.rs` runs it on the TCP ring, an NCCL backend runs the same.
//!
//! Data are small integers (|x| ≤ 8, scaled by the world size for `Avg`) so every sum, average
//! and maximum is exact in f32, bf16, f16 and i64, independent of reduction order.

use std::sync::mpsc;
use std::time::Duration;

use half::{bf16, f16};

use crate::collective::Collective;
use crate::element::Element;
use crate::shard::shard_range;
use crate::types::{Rank, ReduceOp};

/// Element counts exercised: empty, single, fewer than the world, odd, uneven shards, and sizes
/// that span many pipeline chunks.
pub const SIZES: &[usize] = &[0, 1, 2, 3, 5, 17, 100, 1001, 65_537, 300_007];

/// Builds worlds of communicators for the suite.
pub trait Backend {
    /// The communicator type.
    type Comm: Collective + 'static;

    /// Returns `world` connected communicators, index = rank.
    fn launch(&self, world: usize) -> Result<Vec<Self::Comm>, String>;
}

/// Runs the whole suite for each world size; `timeout` bounds each world's run.
pub fn run<B: Backend>(backend: &B, worlds: &[usize], timeout: Duration) -> Result<(), String> {
    for &world in worlds {
        let comms = backend.launch(world)?;
        let handles: Vec<_> = comms.iter().map(|c| c.abort_handle()).collect();
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = comms
            .into_iter()
            .map(|mut comm| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(script(&mut comm));
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + timeout;
        let mut errors = Vec::new();
        for _ in 0..world {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                // Keep collecting: the first error to arrive is often a neighbour's consequence.
                Ok(Err(e)) => errors.push(e),
                Err(_) => {
                    errors.push(format!("world {world}: suite did not finish within {timeout:?}"));
                    break;
                }
            }
            if !errors.is_empty() {
                handles.iter().for_each(|h| h.abort());
            }
        }
        let outcome = if errors.is_empty() { Ok(()) } else { Err(errors.join("\n")) };
        for t in threads {
            t.join().map_err(|_| format!("world {world}: a rank thread panicked"))?;
        }
        outcome?;
    }
    Ok(())
}

/// Element types of the suite, built from small integers.
trait Sample: Element {
    fn from_int(x: i64) -> Self;
}

impl Sample for f32 {
    fn from_int(x: i64) -> Self {
        x as f32
    }
}

impl Sample for i64 {
    fn from_int(x: i64) -> Self {
        x
    }
}

impl Sample for bf16 {
    fn from_int(x: i64) -> Self {
        bf16::from_f32(x as f32)
    }
}

impl Sample for f16 {
    fn from_int(x: i64) -> Self {
        f16::from_f32(x as f32)
    }
}

/// Rank `rank`'s input value at index `i`, in [-8, 8].
fn value(rank: usize, i: usize) -> i64 {
    ((i * 7 + rank * 13 + 3) % 17) as i64 - 8
}

/// The same sequence of calls on every rank, checking each result.
fn script<C: Collective>(comm: &mut C) -> Result<(), String> {
    for &len in SIZES {
        cases::<C, f32>(comm, len)?;
        cases::<C, bf16>(comm, len)?;
        cases::<C, f16>(comm, len)?;
        cases::<C, i64>(comm, len)?;
    }
    comm.barrier().map_err(|e| e.to_string())
}

fn check<T: Sample>(what: &str, comm_rank: Rank, world: usize, got: &[T], want: impl Fn(usize) -> i64) -> Result<(), String> {
    if let Some(i) = (0..got.len()).find(|&i| got[i] != T::from_int(want(i))) {
        return Err(format!(
            "world {world} rank {comm_rank} {what} {:?} len {}: index {i}: got {:?}, want {}",
            T::DTYPE,
            got.len(),
            got[i],
            want(i)
        ));
    }
    Ok(())
}

fn cases<C: Collective, T: Sample>(comm: &mut C, len: usize) -> Result<(), String> {
    let (rank, n) = (comm.rank(), comm.world());
    let r = rank.index();
    let err = |e: crate::OpsError| e.to_string();
    let sum = |i: usize| (0..n).map(|q| value(q, i)).sum::<i64>();
    let max = |i: usize| (0..n).map(|q| value(q, i)).max().unwrap_or(0);
    // Avg inputs are multiples of the world size so the average is exact.
    let input = |op: ReduceOp| -> Vec<T> {
        (0..len).map(|i| T::from_int(if op == ReduceOp::Avg { value(r, i) * n as i64 } else { value(r, i) })).collect()
    };
    let want = |op: ReduceOp, i: usize| if op == ReduceOp::Max { max(i) } else { sum(i) };

    for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max] {
        let mut buf = input(op);
        comm.all_reduce(&mut buf, op).map_err(err)?;
        check(&format!("all_reduce {op:?}"), rank, n, &buf, |i| want(op, i))?;

        let own = shard_range(len, n, r);
        let mut out = vec![T::zeroed(); own.len()];
        comm.reduce_scatter(&input(op), &mut out, op).map_err(err)?;
        check(&format!("reduce_scatter {op:?}"), rank, n, &out, |i| want(op, own.start + i))?;
    }

    let global = |i: usize| ((i * 5 + 1) % 23) as i64 - 11;
    let own = shard_range(len, n, r);
    let mine: Vec<T> = own.clone().map(|i| T::from_int(global(i))).collect();
    let mut gathered = vec![T::from_int(99); len];
    comm.all_gather(&mine, &mut gathered).map_err(err)?;
    check("all_gather", rank, n, &gathered, global)?;

    for root in 0..n {
        let mut buf: Vec<T> = (0..len).map(|i| T::from_int(if r == root { value(root, i) } else { 100 })).collect();
        comm.broadcast(&mut buf, Rank(root as u32)).map_err(err)?;
        check(&format!("broadcast from {root}"), rank, n, &buf, |i| value(root, i))?;
    }
    comm.barrier().map_err(err)
}
