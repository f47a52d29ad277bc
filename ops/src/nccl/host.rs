//! [`Collective`] on host slices for [`NcclComm`]: each call copies its input into a device
//! staging buffer, runs the device collective, and copies the result back. Uneven shards go
//! through the padded layout of [`Padded`], so the shard contract is the ring's.
//!
//! The copies run on the communicator's stream from the owning thread, always while the stream is
//! idle (the previous collective completed or the communicator is poisoned), so a copy can never
//! wait on a collective that hangs.

use std::sync::Arc;

use bytemuck::Pod;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DriverError};

use crate::collective::{AbortHandle, Collective};
use crate::element::Element;
use crate::error::{OpsError, Result};
use crate::shard::shard_range;
use crate::types::{DType, OpKind, Rank, ReduceOp};

use super::NcclComm;
use super::engine::{Call, Kind};
use super::mapping::{Padded, host_reduction};

/// Offsets of staging regions are rounded up to this (NCCL and the copy engines prefer it).
const ALIGN: usize = 256;

/// A device buffer reused by host-slice calls; grows to the largest call seen.
#[derive(Default)]
pub(crate) struct Staging {
    buf: Option<CudaSlice<u8>>,
}

/// Where a call's send and receive regions sit in the staging buffer, in bytes.
#[derive(Clone, Copy, Debug)]
struct Regions {
    send: usize,
    recv: usize,
    /// Bytes needed in all.
    end: usize,
}

impl Regions {
    /// One region for an in-place call.
    fn in_place(bytes: usize) -> Self {
        Regions { send: 0, recv: 0, end: bytes }
    }

    /// A send region followed by an aligned receive region.
    fn split(send_bytes: usize, recv_bytes: usize) -> Self {
        let recv = send_bytes.div_ceil(ALIGN) * ALIGN;
        Regions { send: 0, recv, end: recv + recv_bytes }
    }
}

impl Staging {
    /// The buffer, at least `bytes` long.
    fn ensure(&mut self, stream: &Arc<CudaStream>, bytes: usize) -> std::result::Result<&mut CudaSlice<u8>, DriverError> {
        if self.buf.as_ref().is_none_or(|b| b.len() < bytes) {
            // Drop the old one first so peak memory is the new size only.
            self.buf = None;
            self.buf = Some(stream.alloc_zeros::<u8>(bytes.max(ALIGN))?);
        }
        Ok(self.buf.as_mut().unwrap_or_else(|| unreachable!("allocated above")))
    }
}

impl NcclComm {
    /// Copies `data` into the staging buffer at byte `at` (after sizing it for `regions`) and
    /// returns the buffer's device address.
    fn stage_in<T: Pod>(&mut self, op: OpKind, seq: u64, regions: Regions, at: usize, data: &[T]) -> Result<u64> {
        let stream = Arc::clone(&self.stream);
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let r = self.staging.ensure(&stream, regions.end).and_then(|buf| {
            if !bytes.is_empty() {
                stream.memcpy_htod(bytes, &mut buf.slice_mut(at..at + bytes.len()))?;
            }
            let (base, _read) = buf.device_ptr(&stream);
            Ok(base)
        });
        r.map_err(|e| self.copy_failed(op, seq, "copying the input to the device", e))
    }

    /// Copies `out.len()` elements from the staging buffer at byte `at` back to the host.
    fn stage_out<T: Pod>(&mut self, op: OpKind, seq: u64, at: usize, out: &mut [T]) -> Result<()> {
        let stream = Arc::clone(&self.stream);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        let r = match self.staging.buf.as_ref() {
            Some(buf) => stream.memcpy_dtoh(&buf.slice(at..at + bytes.len()), bytes).and_then(|()| stream.synchronize()),
            None => Ok(()),
        };
        r.map_err(|e| self.copy_failed(op, seq, "copying the result to the host", e))
    }

    fn copy_failed(&mut self, op: OpKind, seq: u64, what: &str, e: DriverError) -> OpsError {
        self.poison(OpsError::Device { op, seq, rank: self.rank, detail: format!("{what}: {e:?}") })
    }
}

impl Collective for NcclComm {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let seq = self.begin(OpKind::AllReduce)?;
        if buf.is_empty() {
            return Ok(());
        }
        let red = host_reduction(op, T::DTYPE);
        let base = self.stage_in(OpKind::AllReduce, seq, Regions::in_place(size_of_val(buf)), 0, buf)?;
        let kind = Kind::AllReduce(red.op);
        self.submit_nonempty(Call { op: OpKind::AllReduce, seq, kind, send: base, recv: base, count: buf.len(), dtype: T::DTYPE })?;
        self.stage_out(OpKind::AllReduce, seq, 0, buf)?;
        if red.divide_on_host {
            T::divide(buf, self.world);
        }
        Ok(())
    }

    fn reduce_scatter<T: Element>(&mut self, input: &[T], output: &mut [T], op: ReduceOp) -> Result<()> {
        let (rank, world) = (self.rank.index(), self.world);
        let seq = self.begin(OpKind::ReduceScatter)?;
        let own = shard_range(input.len(), world, rank);
        if output.len() != own.len() {
            let detail = format!("output has {} elements, shard {own:?} of {} needs {}", output.len(), input.len(), own.len());
            return Err(self.invalid(OpKind::ReduceScatter, seq, detail));
        }
        if input.is_empty() {
            return Ok(());
        }
        let layout = Padded::new(input.len(), world);
        let spread;
        let send = if layout.is_even() {
            input
        } else {
            spread = layout.spread(input);
            &spread[..]
        };
        let size = size_of::<T>();
        let regions = Regions::split(size_of_val(send), layout.chunk * size);
        let base = self.stage_in(OpKind::ReduceScatter, seq, regions, regions.send, send)?;
        let red = host_reduction(op, T::DTYPE);
        let call = Call {
            op: OpKind::ReduceScatter,
            seq,
            kind: Kind::ReduceScatter(red.op),
            send: base + regions.send as u64,
            recv: base + regions.recv as u64,
            count: layout.chunk,
            dtype: T::DTYPE,
        };
        self.submit_nonempty(call)?;
        // Our shard is the first `own.len()` elements of the padded chunk.
        self.stage_out(OpKind::ReduceScatter, seq, regions.recv, output)?;
        if red.divide_on_host {
            T::divide(output, world);
        }
        Ok(())
    }

    fn all_gather<T: Element>(&mut self, input: &[T], output: &mut [T]) -> Result<()> {
        let (rank, world) = (self.rank.index(), self.world);
        let seq = self.begin(OpKind::AllGather)?;
        let own = shard_range(output.len(), world, rank);
        if input.len() != own.len() {
            let detail = format!("input has {} elements, shard {own:?} of {} needs {}", input.len(), output.len(), own.len());
            return Err(self.invalid(OpKind::AllGather, seq, detail));
        }
        if output.is_empty() {
            return Ok(());
        }
        let layout = Padded::new(output.len(), world);
        let size = size_of::<T>();
        let regions = Regions::split(layout.chunk * size, layout.total() * size);
        // A short shard is padded with zeros up to the chunk every rank sends.
        let mut send = input.to_vec();
        send.resize(layout.chunk, T::zeroed());
        let base = self.stage_in(OpKind::AllGather, seq, regions, regions.send, &send)?;
        let call = Call {
            op: OpKind::AllGather,
            seq,
            kind: Kind::AllGather,
            send: base + regions.send as u64,
            recv: base + regions.recv as u64,
            count: layout.chunk,
            dtype: T::DTYPE,
        };
        self.submit_nonempty(call)?;
        if layout.is_even() {
            return self.stage_out(OpKind::AllGather, seq, regions.recv, output);
        }
        let mut padded = vec![T::zeroed(); layout.total()];
        self.stage_out(OpKind::AllGather, seq, regions.recv, &mut padded)?;
        layout.compact(&padded, output);
        Ok(())
    }

    fn broadcast<T: Element>(&mut self, buf: &mut [T], root: Rank) -> Result<()> {
        let seq = self.begin(OpKind::Broadcast)?;
        let root_c = self.check_root(seq, root)?;
        if buf.is_empty() {
            return Ok(());
        }
        let regions = Regions::in_place(size_of_val(buf));
        // Only the root's bytes matter; the others just need a sized buffer.
        let data: &[T] = if root == self.rank { buf } else { &[] };
        let base = self.stage_in(OpKind::Broadcast, seq, regions, 0, data)?;
        let kind = Kind::Broadcast(root_c);
        self.submit_nonempty(Call { op: OpKind::Broadcast, seq, kind, send: base, recv: base, count: buf.len(), dtype: T::DTYPE })?;
        self.stage_out(OpKind::Broadcast, seq, 0, buf)
    }

    fn barrier(&mut self) -> Result<()> {
        let seq = self.begin(OpKind::Barrier)?;
        let mut token = [1i64];
        let base = self.stage_in(OpKind::Barrier, seq, Regions::in_place(8), 0, &token)?;
        let kind = Kind::AllReduce(cudarc::nccl::sys::ncclRedOp_t::ncclSum);
        self.submit_nonempty(Call { op: OpKind::Barrier, seq, kind, send: base, recv: base, count: 1, dtype: DType::I64 })?;
        self.stage_out(OpKind::Barrier, seq, 0, &mut token)?;
        if token[0] != self.world as i64 {
            let detail = format!("barrier count {} != world {}", token[0], self.world);
            return Err(self.poison(OpsError::Device { op: OpKind::Barrier, seq, rank: self.rank, detail }));
        }
        Ok(())
    }

    fn abort_handle(&self) -> AbortHandle {
        self.handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_regions_are_aligned_and_follow_the_send_region() {
        let r = Regions::split(10, 4);
        assert_eq!((r.send, r.recv, r.end), (0, 256, 260));
        let r = Regions::split(512, 8);
        assert_eq!((r.recv, r.end), (512, 520));
        let r = Regions::in_place(24);
        assert_eq!((r.send, r.recv, r.end), (0, 0, 24));
    }
}
