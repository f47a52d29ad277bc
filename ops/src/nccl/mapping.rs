//! How tessera's dtypes, reduce ops and uneven shards map onto NCCL, as pure functions.

use std::ops::Range;

use cudarc::nccl::sys::{ncclDataType_t, ncclRedOp_t, ncclResult_t};

use crate::shard::shard_range;
use crate::types::{DType, ReduceOp};

/// The NCCL element type of a dtype.
pub(crate) fn data_type(d: DType) -> ncclDataType_t {
    match d {
        DType::F32 => ncclDataType_t::ncclFloat32,
        DType::BF16 => ncclDataType_t::ncclBfloat16,
        DType::F16 => ncclDataType_t::ncclFloat16,
        DType::I64 => ncclDataType_t::ncclInt64,
    }
}

/// A reduce op as NCCL runs it, plus whether the host finishes an average afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reduction {
    /// The op handed to NCCL.
    pub op: ncclRedOp_t,
    /// The host divides the summed result by the world size with [`crate::Element::divide`].
    pub divide_on_host: bool,
}

/// The reduction on device buffers: NCCL's native ops. `ncclAvg` pre-multiplies floats by
/// `1/world` and, for integers, divides the sum truncating toward zero (as the ring does).
pub(crate) fn device_reduction(op: ReduceOp) -> ncclRedOp_t {
    match op {
        ReduceOp::Sum => ncclRedOp_t::ncclSum,
        ReduceOp::Avg => ncclRedOp_t::ncclAvg,
        ReduceOp::Max => ncclRedOp_t::ncclMax,
    }
}

/// The reduction on host slices: floats use `ncclAvg`; i64 sums on the device and divides on the
/// host with the ring's own `Element::divide` (wrapping sum, truncating division), so the two
/// backends give the same integers by construction.
pub(crate) fn host_reduction(op: ReduceOp, dtype: DType) -> Reduction {
    match (op, dtype) {
        (ReduceOp::Avg, DType::I64) => Reduction { op: ncclRedOp_t::ncclSum, divide_on_host: true },
        _ => Reduction { op: device_reduction(op), divide_on_host: false },
    }
}

/// The name of an NCCL result code, for error messages.
pub(crate) fn result_name(r: ncclResult_t) -> &'static str {
    match r {
        ncclResult_t::ncclSuccess => "ncclSuccess",
        ncclResult_t::ncclUnhandledCudaError => "ncclUnhandledCudaError",
        ncclResult_t::ncclSystemError => "ncclSystemError",
        ncclResult_t::ncclInternalError => "ncclInternalError",
        ncclResult_t::ncclInvalidArgument => "ncclInvalidArgument",
        ncclResult_t::ncclInvalidUsage => "ncclInvalidUsage",
        ncclResult_t::ncclRemoteError => "ncclRemoteError",
        ncclResult_t::ncclInProgress => "ncclInProgress",
        ncclResult_t::ncclNumResults => "ncclNumResults",
    }
}

/// NCCL's reduce-scatter and all-gather need equal shards; [`shard_range`] gives the first
/// `len % world` ranks one extra element. Uneven calls go through a padded layout: every rank's
/// shard sits at `rank * chunk` in a buffer of `world * chunk` elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Padded {
    /// Logical (unpadded) length.
    pub len: usize,
    /// World size.
    pub world: usize,
    /// Elements per padded shard: `ceil(len / world)`.
    pub chunk: usize,
}

impl Padded {
    /// The padded layout of `len` elements over `world` ranks.
    pub fn new(len: usize, world: usize) -> Self {
        Padded { len, world, chunk: len.div_ceil(world) }
    }

    /// Whether the padded layout is the logical one (no copy needed).
    pub fn is_even(&self) -> bool {
        self.chunk * self.world == self.len
    }

    /// Total padded length.
    pub fn total(&self) -> usize {
        self.chunk * self.world
    }

    /// Rank `r`'s logical range and where it sits in the padded buffer.
    pub fn shard(&self, r: usize) -> (Range<usize>, Range<usize>) {
        let logical = shard_range(self.len, self.world, r);
        let at = r * self.chunk;
        (logical.clone(), at..at + logical.len())
    }

    /// Lays `logical` (of `len` elements) out padded, zeros in the gaps.
    pub fn spread<T: bytemuck::Pod>(&self, logical: &[T]) -> Vec<T> {
        let mut out = vec![T::zeroed(); self.total()];
        for r in 0..self.world {
            let (from, to) = self.shard(r);
            out[to].copy_from_slice(&logical[from]);
        }
        out
    }

    /// The inverse of [`Padded::spread`]: gathers the shards back into `logical`.
    pub fn compact<T: bytemuck::Pod>(&self, padded: &[T], logical: &mut [T]) {
        for r in 0..self.world {
            let (to, from) = self.shard(r);
            logical[to].copy_from_slice(&padded[from]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_map_to_the_nccl_types_of_the_same_width() {
        assert_eq!(data_type(DType::F32), ncclDataType_t::ncclFloat32);
        assert_eq!(data_type(DType::BF16), ncclDataType_t::ncclBfloat16);
        assert_eq!(data_type(DType::F16), ncclDataType_t::ncclFloat16);
        assert_eq!(data_type(DType::I64), ncclDataType_t::ncclInt64);
        // The enum values are NCCL's ABI (nccl.h), not just names.
        assert_eq!(data_type(DType::BF16) as u32, 9);
        assert_eq!(data_type(DType::I64) as u32, 4);
    }

    #[test]
    fn averages_of_integers_finish_on_the_host_and_floats_use_nccl_avg() {
        let i64_avg = host_reduction(ReduceOp::Avg, DType::I64);
        assert_eq!(i64_avg, Reduction { op: ncclRedOp_t::ncclSum, divide_on_host: true });
        for d in [DType::F32, DType::BF16, DType::F16] {
            assert_eq!(host_reduction(ReduceOp::Avg, d), Reduction { op: ncclRedOp_t::ncclAvg, divide_on_host: false });
        }
        for d in [DType::F32, DType::BF16, DType::F16, DType::I64] {
            assert_eq!(host_reduction(ReduceOp::Sum, d).op, ncclRedOp_t::ncclSum);
            assert_eq!(host_reduction(ReduceOp::Max, d).op, ncclRedOp_t::ncclMax);
            assert!(!host_reduction(ReduceOp::Max, d).divide_on_host);
        }
        assert_eq!(device_reduction(ReduceOp::Avg), ncclRedOp_t::ncclAvg);
        // The host's division for i64 is the ring's: truncation toward zero of the wrapped sum.
        let mut sums = [7i64, -7, 5];
        <i64 as crate::Element>::divide(&mut sums, 2);
        assert_eq!(sums, [3, -3, 2]);
    }

    #[test]
    fn result_codes_have_their_nccl_names() {
        assert_eq!(result_name(ncclResult_t::ncclRemoteError), "ncclRemoteError");
        assert_eq!(result_name(ncclResult_t::ncclInProgress), "ncclInProgress");
    }

    #[test]
    fn padded_layout_round_trips_uneven_shards() {
        for len in 0..40 {
            for world in 1..6 {
                let p = Padded::new(len, world);
                assert!(p.total() >= len && p.total() < len + world, "len {len} world {world}");
                assert_eq!(p.is_even(), len % world == 0);
                let logical: Vec<i64> = (0..len as i64).map(|x| x * 3 + 1).collect();
                let padded = p.spread(&logical);
                for r in 0..world {
                    let (from, to) = p.shard(r);
                    assert_eq!(&padded[to.clone()], &logical[from], "len {len} world {world} rank {r}");
                    // Gaps are zero, so a Max or Sum over padding never leaks into a shard.
                    assert!(padded[to.end..(r + 1) * p.chunk].iter().all(|&x| x == 0));
                }
                let mut back = vec![0i64; len];
                p.compact(&padded, &mut back);
                assert_eq!(back, logical);
            }
        }
        assert_eq!(Padded::new(10, 3), Padded { len: 10, world: 3, chunk: 4 });
        assert_eq!(Padded::new(10, 3).shard(2), (7..10, 8..11));
    }
}
