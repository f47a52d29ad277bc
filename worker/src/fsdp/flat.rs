//! How a unit's flat vectors travel between ranks.
//!
//! - *Host path* (any [`Collective`], any device): the trainer copies the flat vector to host
//!   memory, the collective moves it, and the result goes back to the trainer's device. This is
//!   the CPU path (no copy to speak of) and the fallback for a CUDA job without NCCL.
//! - *Device path* ([`NcclComm`], CUDA): the flat vectors never leave the GPU. NCCL's
//!   all-gather and reduce-scatter need equal shards while FSDP's layout is
//!   [`shard_range`]'s (the first `numel % world` ranks own one element more), so the vectors
//!   are staged in `world` equal rows of [`padded_shard_len`] elements ([`pad_rows`] /
//!   [`unpad_rows`]); the checkpoint layout stays the same on every backend.

use tch::{Device, Kind, Tensor};
use tessera_ops::nccl::{UNIQUE_ID_BYTES, UniqueId};
use tessera_ops::{Collective, DType, NcclComm, NcclConfig, OpsError, Rank, ReduceOp, shard_range};

use tessera_ops::JobAuth;
use tessera_protocol::job::{DeviceKind, ResolvedJob};

use crate::error::{Result, WorkerError};

/// The NCCL communicator a rank of `job` uses for its flat vectors: one when the job trains on
/// CUDA and NCCL can be loaded (built over `coll`, see [`nccl_over`]), none for CPU jobs. A CUDA
/// job where any rank cannot load NCCL falls back to the host path, with a warning: correct,
/// only slower. Collective for CUDA jobs.
pub fn device_comm<C: Collective>(coll: &mut C, job: &ResolvedJob, auth: JobAuth) -> Result<Option<NcclComm>> {
    if job.train.device != DeviceKind::Cuda {
        return Ok(None);
    }
    // Ranks agree first: one rank without NCCL sends the whole world down the host path
    // rather than leaving the others waiting for a unique id.
    let here = tessera_ops::nccl::available();
    let mut missing = [i64::from(here.is_err())];
    coll.all_reduce(&mut missing, ReduceOp::Max).map_err(|source| WorkerError::Collective {
        rank: coll.rank().0,
        step: 0,
        op: "agreeing on NCCL".into(),
        source,
    })?;
    if missing[0] != 0 {
        let why = here.err().map_or_else(|| "another rank cannot load NCCL".to_string(), |e| e.to_string());
        tracing::warn!("rank {}: flat vectors go through the host collective: {why}", coll.rank().0);
        return Ok(None);
    }
    let mut config = NcclConfig::new(auth, 0);
    config.timeout = job.train.collective_timeout;
    nccl_over(coll, &config).map(Some)
}

/// Builds the NCCL communicator of `coll`'s ranks: rank 0 creates the unique id and broadcasts
/// it over `coll` (already authenticated with the job's secret), every rank then joins on
/// `config.device`. Collective; a rank 0 that cannot create an id tells the others, so nobody
/// waits for an id that never comes.
pub fn nccl_over<C: Collective>(coll: &mut C, config: &NcclConfig) -> Result<NcclComm> {
    let (rank, world) = (coll.rank(), coll.world());
    let fail = |detail: String| WorkerError::Nccl { rank: rank.0, detail };
    // Element 0: 1 when rank 0 has an id; then the id, one byte per element.
    let mut wire = [0i64; 1 + UNIQUE_ID_BYTES];
    let mut local_error = None;
    if rank == Rank(0) {
        match UniqueId::new() {
            Ok(id) => {
                wire[0] = 1;
                for (w, b) in wire[1..].iter_mut().zip(id.as_bytes()) {
                    *w = i64::from(*b);
                }
            }
            Err(e) => local_error = Some(e.to_string()),
        }
    }
    coll.broadcast(&mut wire, Rank(0)).map_err(|e| fail(format!("broadcasting the unique id: {e}")))?;
    if let Some(e) = local_error {
        return Err(fail(e));
    }
    if wire[0] != 1 {
        return Err(fail("rank 0 could not create a unique id".into()));
    }
    let bytes: Vec<u8> = wire[1..].iter().map(|&w| w as u8).collect();
    let id = UniqueId::from_bytes(&bytes).map_err(fail)?;
    NcclComm::from_unique_id(id, rank, world, config).map_err(|e| fail(e.to_string()))
}

/// Elements per rank in the equal-row layout: `ceil(numel / world)`.
pub fn padded_shard_len(numel: usize, world: usize) -> usize {
    numel.div_ceil(world)
}

/// `full` (a flat vector of `numel` elements) with shard `r` moved to the start of row `r` of
/// `world` zero-padded rows of [`padded_shard_len`] elements: the input of an equal-shard
/// reduce-scatter whose row `r` is then exactly rank `r`'s shard plus padding.
pub fn pad_rows(full: &Tensor, numel: usize, world: usize) -> Tensor {
    let m = padded_shard_len(numel, world);
    let out = Tensor::zeros([(m * world) as i64], (full.kind(), full.device()));
    tch::no_grad(|| {
        for r in 0..world {
            let s = shard_range(numel, world, r);
            if !s.is_empty() {
                let mut dst = out.narrow(0, (r * m) as i64, s.len() as i64);
                dst.copy_(&full.narrow(0, s.start as i64, s.len() as i64));
            }
        }
    });
    out
}

/// The inverse of [`pad_rows`]: the rows of an equal-shard all-gather compacted into the flat
/// vector of `numel` elements.
pub fn unpad_rows(padded: &Tensor, numel: usize, world: usize) -> Tensor {
    let m = padded_shard_len(numel, world);
    let parts: Vec<Tensor> = (0..world)
        .filter_map(|r| {
            let s = shard_range(numel, world, r);
            (!s.is_empty()).then(|| padded.narrow(0, (r * m) as i64, s.len() as i64))
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// All-gathers `shard` (this rank's [`shard_range`] slice of a `numel`-element f32 vector, on
/// the communicator's device) into the whole vector, on the device.
pub fn nccl_all_gather(comm: &mut NcclComm, shard: &Tensor, numel: usize) -> std::result::Result<Tensor, OpsError> {
    let world = comm.world();
    let m = padded_shard_len(numel, world);
    let opts = (Kind::Float, shard.device());
    let send = Tensor::zeros([m as i64], opts);
    tch::no_grad(|| send.narrow(0, 0, shard.numel() as i64).copy_(&shard.to_kind(Kind::Float)));
    let recv = Tensor::empty([(m * world) as i64], opts);
    settle(shard.device());
    // SAFETY: both tensors are contiguous f32 buffers of m and m·world elements on the
    // communicator's device (allocated by libtorch in the primary context); they stay alive and
    // untouched until the call returns, which it does only once the collective completed on
    // the device; `settle` waited for libtorch's writes to `send`.
    #[allow(unsafe_code)]
    unsafe {
        comm.all_gather_raw(ptr(&send), ptr(&recv), m, DType::F32)?
    };
    Ok(unpad_rows(&recv, numel, world))
}

/// Reduce-scatters `full` (a `numel`-element f32 vector on the communicator's device) and
/// returns this rank's [`shard_range`] slice of the reduction, on the device.
pub fn nccl_reduce_scatter(comm: &mut NcclComm, full: &Tensor, numel: usize, op: ReduceOp) -> std::result::Result<Tensor, OpsError> {
    let (world, rank) = (comm.world(), comm.rank().0 as usize);
    let m = padded_shard_len(numel, world);
    let padded = pad_rows(&full.to_kind(Kind::Float), numel, world);
    let out = Tensor::empty([m as i64], (Kind::Float, full.device()));
    settle(full.device());
    // SAFETY: as in `nccl_all_gather`: contiguous f32 device buffers of m·world and m elements,
    // alive and unwritten by anyone else until the collective completed.
    #[allow(unsafe_code)]
    unsafe {
        comm.reduce_scatter_raw(ptr(&padded), ptr(&out), m, DType::F32, op)?
    };
    Ok(out.narrow(0, 0, shard_range(numel, world, rank).len() as i64))
}

/// Waits for libtorch's queued work on `device`: NCCL runs on its own stream, so what it reads
/// must be written first.
fn settle(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A contiguous tensor's device address.
fn ptr(t: &Tensor) -> u64 {
    debug_assert!(t.is_contiguous());
    t.data_ptr() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The equal-row staging round-trips every uneven layout, and row `r` of the padded vector
    /// is exactly shard `r`: what NCCL's reduce-scatter leaves on rank `r`.
    #[test]
    fn padded_rows_hold_each_ranks_shard() {
        for (numel, world) in [(10, 3), (7, 2), (1, 3), (12, 4), (5, 8)] {
            let full = Tensor::arange(numel as i64, (Kind::Float, Device::Cpu)) + 1.0;
            let padded = pad_rows(&full, numel, world);
            let m = padded_shard_len(numel, world);
            assert_eq!(padded.numel(), m * world);
            for r in 0..world {
                let s = shard_range(numel, world, r);
                let row = padded.narrow(0, (r * m) as i64, m as i64);
                let want = Tensor::zeros([m as i64], (Kind::Float, Device::Cpu));
                if !s.is_empty() {
                    want.narrow(0, 0, s.len() as i64).copy_(&full.narrow(0, s.start as i64, s.len() as i64));
                }
                assert!(row.equal(&want), "numel {numel} world {world} rank {r}");
            }
            assert!(unpad_rows(&padded, numel, world).equal(&full), "numel {numel} world {world}");
        }
    }
}
