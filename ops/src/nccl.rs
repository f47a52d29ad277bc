//! The NCCL backend of [`Collective`](crate::Collective), through cudarc with dynamic loading.
//!
//! *Availability* ([`available`]): the CUDA driver and `libnccl.so` are loaded at run time, so the
//! crate builds and its CPU tests run on machines without CUDA; there every constructor returns
//! [`OpsError::Unavailable`] naming what is missing (never a panic).
//!
//! *Unique id* ([`rendezvous_unique_id`]): rank 0 creates it and it travels as the payload of the
//! same authenticated [`crate::rendezvous`] the TCP ring uses, so a stray or another job cannot
//! learn it from the rendezvous. (The rendezvous authenticates but does not encrypt, and NCCL's own
//! bootstrap connections are unauthenticated: run NCCL jobs on a trusted network.)
//!
//! *Two APIs on one communicator* ([`NcclComm`], one CUDA device, its own stream):
//! - device buffers, for the trainer: the `*_raw` methods take `CUdeviceptr`s (e.g. a libtorch
//!   tensor's `data_ptr`) and never copy; the `*_slice` methods are their safe form on cudarc
//!   [`CudaSlice`]s. Reduce-scatter and all-gather on device buffers need equal shards
//!   (`len % world == 0`, as FSDP pads its flat parameters).
//! - host slices, through [`Collective`](crate::Collective): staged through device buffers, with any shard layout,
//!   so the backend-generic [`crate::conformance`] suite runs unchanged.
//!
//! Every call returns once its collective completed on the device (there is no split
//! start/wait form yet, so a collective does not overlap the caller's next call). Calls make
//! the device's primary context current on the calling thread, the context libtorch uses too.
//! `CudaSlice<bf16>`/`CudaSlice<f16>` need cudarc's `f16` feature (not enabled here); bf16 tensors
//! go through the `*_raw` methods.
//!
//! *Failure model*: the communicator is non-blocking (`ncclConfig.blocking = 0`) and owned by one
//! thread (see `nccl::engine`); every call is polled against its deadline
//! ([`NcclConfig::timeout`]) for completion and for NCCL's asynchronous errors. A deadline, an
//! error or [`AbortHandle::abort`] aborts the communicator (`ncclCommAbort`), the call returns an
//! error naming the op and its sequence number (NCCL does not say which peer failed, hence
//! [`OpsError::Stalled`] rather than [`OpsError::Timeout`]), and every later call fails fast with
//! [`OpsError::Poisoned`]. The process stays healthy; a new communicator needs a new unique id.

mod engine;
mod host;
mod load;
mod mapping;
mod uid;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use crate::auth::JobAuth;
use crate::collective::{AbortHandle, AbortTarget};
use crate::element::Element;
use crate::error::{OpsError, Result};
use crate::rendezvous::JoinRequest;
use crate::types::{DType, OpKind, Rank, ReduceOp};

use engine::{Call, Kind, Request, Setup, Shared};

pub use load::available;
pub use uid::{UNIQUE_ID_BYTES, UniqueId, rendezvous_unique_id};

/// Beyond the call deadline, how long the handle waits for its thread's own verdict (the thread
/// enforces the deadline; this only bounds a thread stuck inside the driver).
const GRACE: Duration = Duration::from_secs(10);

/// Settings of an NCCL communicator.
#[derive(Clone, Debug)]
pub struct NcclConfig {
    /// Job identity and shared secret for the rendezvous that carries the unique id.
    pub auth: JobAuth,
    /// CUDA device ordinal this rank runs on (default 0).
    pub device: usize,
    /// Deadline of every collective call (default 60 s).
    pub timeout: Duration,
    /// Deadline of the rendezvous and of communicator initialisation, each (default 120 s).
    pub init_timeout: Duration,
}

impl NcclConfig {
    /// Defaults for the given job, on device `device`.
    pub fn new(auth: JobAuth, device: usize) -> Self {
        NcclConfig { auth, device, timeout: Duration::from_secs(60), init_timeout: Duration::from_secs(120) }
    }
}

/// One rank's NCCL communicator on one CUDA device, driven from one owning thread.
pub struct NcclComm {
    rank: Rank,
    world: usize,
    device: usize,
    timeout: Duration,
    seq: u64,
    poisoned: Option<OpsError>,
    /// The stream every call of this communicator is ordered on.
    stream: Arc<CudaStream>,
    requests: Sender<Request>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Device scratch for the host-slice path, kept between calls.
    staging: host::Staging,
}

impl NcclComm {
    /// Joins the rendezvous at `rendezvous` (rank 0 contributes the unique id, every rank receives
    /// it) and builds the communicator. The address this rank announces in the rendezvous table is
    /// `0.0.0.0:0`: NCCL dials its peers itself.
    pub fn connect(rendezvous: SocketAddr, rank: Rank, world: usize, config: &NcclConfig) -> Result<Self> {
        // Before the rendezvous: a rank that cannot run NCCL fails here, not inside cudarc.
        available()?;
        check_world(rank, world)?;
        let listen_addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let req = JoinRequest { rank, world, listen_addr, timeout: config.init_timeout };
        let id = rendezvous_unique_id(rendezvous, &config.auth, &req)?;
        Self::from_unique_id(id, rank, world, config)
    }

    /// Builds the communicator from an id already distributed (every rank passes the same id).
    pub fn from_unique_id(id: UniqueId, rank: Rank, world: usize, config: &NcclConfig) -> Result<Self> {
        available()?;
        check_world(rank, world)?;
        let setup = Setup { device: config.device, rank, world, id, timeout: config.timeout, init_timeout: config.init_timeout };
        let started = engine::start(setup)?;
        Ok(NcclComm {
            rank,
            world,
            device: config.device,
            timeout: config.timeout,
            seq: 0,
            poisoned: None,
            stream: started.stream,
            requests: started.requests,
            shared: started.shared,
            thread: Some(started.thread),
            staging: host::Staging::default(),
        })
    }

    /// The CUDA device ordinal.
    pub fn device(&self) -> usize {
        self.device
    }

    /// The stream the collectives run on (allocate `CudaSlice`s for the `*_slice` methods on it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// In-place all-reduce of `len` elements of `dtype` at device address `buf`.
    ///
    /// Returns once the reduction completed on the device, so any stream may read `buf` next.
    ///
    /// # Safety
    /// `buf` must point to at least `len` elements of `dtype` in memory of this communicator's
    /// device (allocated in its primary context, as libtorch and cudarc do), not freed or
    /// written by anyone else until this call returns; every write the caller made to it must
    /// have completed (e.g. synchronize the producing stream first).
    #[allow(unsafe_code)]
    pub unsafe fn all_reduce_raw(&mut self, buf: u64, len: usize, dtype: DType, op: ReduceOp) -> Result<()> {
        let seq = self.begin(OpKind::AllReduce)?;
        self.check_ptrs(OpKind::AllReduce, seq, &[(buf, len)])?;
        let kind = Kind::AllReduce(mapping::device_reduction(op));
        self.submit_nonempty(Call { op: OpKind::AllReduce, seq, kind, send: buf, recv: buf, count: len, dtype })
    }

    /// Reduces `output_len * world` elements at `input` and leaves shard `rank` (`output_len`
    /// elements, equal shards) at `output`.
    ///
    /// # Safety
    /// As [`NcclComm::all_reduce_raw`], for `input` (read) and `output` (written); the two regions
    /// must not overlap unless `output == input + rank * output_len` elements (NCCL's in-place form).
    #[allow(unsafe_code)]
    pub unsafe fn reduce_scatter_raw(&mut self, input: u64, output: u64, output_len: usize, dtype: DType, op: ReduceOp) -> Result<()> {
        let seq = self.begin(OpKind::ReduceScatter)?;
        let total = self.total_of(OpKind::ReduceScatter, seq, output_len)?;
        self.check_ptrs(OpKind::ReduceScatter, seq, &[(input, total), (output, output_len)])?;
        let kind = Kind::ReduceScatter(mapping::device_reduction(op));
        self.submit_nonempty(Call { op: OpKind::ReduceScatter, seq, kind, send: input, recv: output, count: output_len, dtype })
    }

    /// Concatenates every rank's `input_len` elements at `input` into `output`
    /// (`input_len * world` elements, rank order).
    ///
    /// # Safety
    /// As [`NcclComm::reduce_scatter_raw`] with the roles of the buffers swapped.
    #[allow(unsafe_code)]
    pub unsafe fn all_gather_raw(&mut self, input: u64, output: u64, input_len: usize, dtype: DType) -> Result<()> {
        let seq = self.begin(OpKind::AllGather)?;
        let total = self.total_of(OpKind::AllGather, seq, input_len)?;
        self.check_ptrs(OpKind::AllGather, seq, &[(input, input_len), (output, total)])?;
        self.submit_nonempty(Call { op: OpKind::AllGather, seq, kind: Kind::AllGather, send: input, recv: output, count: input_len, dtype })
    }

    /// Copies `root`'s `len` elements at `buf` into `buf` on every other rank.
    ///
    /// # Safety
    /// As [`NcclComm::all_reduce_raw`].
    #[allow(unsafe_code)]
    pub unsafe fn broadcast_raw(&mut self, buf: u64, len: usize, dtype: DType, root: Rank) -> Result<()> {
        let seq = self.begin(OpKind::Broadcast)?;
        let root = self.check_root(seq, root)?;
        self.check_ptrs(OpKind::Broadcast, seq, &[(buf, len)])?;
        self.submit_nonempty(Call { op: OpKind::Broadcast, seq, kind: Kind::Broadcast(root), send: buf, recv: buf, count: len, dtype })
    }

    /// [`NcclComm::all_reduce_raw`] on a cudarc slice of this device; waits for the slice's
    /// pending work first (cudarc's event tracking).
    pub fn all_reduce_slice<T: Element>(&mut self, buf: &mut CudaSlice<T>, op: ReduceOp) -> Result<()> {
        let seq = self.begin(OpKind::AllReduce)?;
        self.check_context(OpKind::AllReduce, seq, &[buf.context()])?;
        let (stream, len) = (Arc::clone(&self.stream), buf.len());
        let (ptr, _written) = buf.device_ptr_mut(&stream);
        let kind = Kind::AllReduce(mapping::device_reduction(op));
        self.submit_nonempty(Call { op: OpKind::AllReduce, seq, kind, send: ptr, recv: ptr, count: len, dtype: T::DTYPE })
    }

    /// [`NcclComm::reduce_scatter_raw`] on cudarc slices: `input.len() == output.len() * world`.
    pub fn reduce_scatter_slice<T: Element>(&mut self, input: &CudaSlice<T>, output: &mut CudaSlice<T>, op: ReduceOp) -> Result<()> {
        let seq = self.begin(OpKind::ReduceScatter)?;
        self.check_context(OpKind::ReduceScatter, seq, &[input.context(), output.context()])?;
        let total = self.total_of(OpKind::ReduceScatter, seq, output.len())?;
        self.check_len(OpKind::ReduceScatter, seq, input.len(), total)?;
        let (stream, count) = (Arc::clone(&self.stream), output.len());
        let (send, _read) = input.device_ptr(&stream);
        let (recv, _written) = output.device_ptr_mut(&stream);
        let kind = Kind::ReduceScatter(mapping::device_reduction(op));
        self.submit_nonempty(Call { op: OpKind::ReduceScatter, seq, kind, send, recv, count, dtype: T::DTYPE })
    }

    /// [`NcclComm::all_gather_raw`] on cudarc slices: `output.len() == input.len() * world`.
    pub fn all_gather_slice<T: Element>(&mut self, input: &CudaSlice<T>, output: &mut CudaSlice<T>) -> Result<()> {
        let seq = self.begin(OpKind::AllGather)?;
        self.check_context(OpKind::AllGather, seq, &[input.context(), output.context()])?;
        let total = self.total_of(OpKind::AllGather, seq, input.len())?;
        self.check_len(OpKind::AllGather, seq, output.len(), total)?;
        let (stream, count) = (Arc::clone(&self.stream), input.len());
        let (send, _read) = input.device_ptr(&stream);
        let (recv, _written) = output.device_ptr_mut(&stream);
        self.submit_nonempty(Call { op: OpKind::AllGather, seq, kind: Kind::AllGather, send, recv, count, dtype: T::DTYPE })
    }

    /// [`NcclComm::broadcast_raw`] on a cudarc slice of this device.
    pub fn broadcast_slice<T: Element>(&mut self, buf: &mut CudaSlice<T>, root: Rank) -> Result<()> {
        let seq = self.begin(OpKind::Broadcast)?;
        let root = self.check_root(seq, root)?;
        self.check_context(OpKind::Broadcast, seq, &[buf.context()])?;
        let (stream, len) = (Arc::clone(&self.stream), buf.len());
        let (ptr, _written) = buf.device_ptr_mut(&stream);
        self.submit_nonempty(Call {
            op: OpKind::Broadcast,
            seq,
            kind: Kind::Broadcast(root),
            send: ptr,
            recv: ptr,
            count: len,
            dtype: T::DTYPE,
        })
    }

    /// Starts a call: numbers it, and fails fast when poisoned or aborted.
    fn begin(&mut self, op: OpKind) -> Result<u64> {
        let seq = self.seq;
        self.seq += 1;
        if let Some(cause) = &self.poisoned {
            return Err(OpsError::Poisoned { op, seq, cause: Box::new(cause.clone()) });
        }
        if self.shared.is_aborted() {
            return Err(self.poison(OpsError::Aborted { op, seq, rank: self.rank }));
        }
        Ok(seq)
    }

    /// Runs `call` on the communicator thread and waits for its verdict; empty calls are skipped
    /// (every rank sees the same length, so every rank skips).
    fn submit_nonempty(&mut self, call: Call) -> Result<()> {
        if call.count == 0 {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel();
        let (op, seq, rank) = (call.op, call.seq, self.rank);
        if self.requests.send(Request::Call(call, tx)).is_err() {
            let detail = "the NCCL communicator thread is gone".to_string();
            return Err(self.poison(OpsError::Device { op, seq, rank, detail }));
        }
        match rx.recv_timeout(self.timeout + GRACE) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.poison(e)),
            Err(RecvTimeoutError::Timeout) => {
                // The thread is stuck inside the driver: abort what can be aborted, leave it behind.
                self.shared.abort();
                Err(self.poison(OpsError::Stalled { op, seq, rank, after: self.timeout }))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let detail = "the NCCL communicator thread exited during the call".to_string();
                Err(self.poison(OpsError::Device { op, seq, rank, detail }))
            }
        }
    }

    /// Marks the communicator unusable; peers fail through their own deadline or NCCL's errors.
    fn poison(&mut self, e: OpsError) -> OpsError {
        self.shared.abort();
        self.poisoned = Some(e.clone());
        e
    }

    /// Rejects a call's arguments; poisons, as a rank that skips a call desynchronises the group.
    fn invalid(&mut self, op: OpKind, seq: u64, detail: String) -> OpsError {
        self.poison(OpsError::InvalidArgument { op, seq, rank: self.rank, detail })
    }

    /// `per_rank * world`, the full length of an equal-shard call.
    fn total_of(&mut self, op: OpKind, seq: u64, per_rank: usize) -> Result<usize> {
        per_rank.checked_mul(self.world).ok_or_else(|| self.invalid(op, seq, format!("{per_rank} elements per rank overflow")))
    }

    fn check_len(&mut self, op: OpKind, seq: u64, got: usize, want: usize) -> Result<()> {
        if got == want {
            return Ok(());
        }
        Err(self.invalid(op, seq, format!("buffer has {got} elements, equal shards over {} ranks need {want}", self.world)))
    }

    fn check_root(&mut self, seq: u64, root: Rank) -> Result<std::ffi::c_int> {
        if root.index() < self.world {
            return Ok(root.0 as std::ffi::c_int);
        }
        Err(self.invalid(OpKind::Broadcast, seq, format!("root {root} out of world size {}", self.world)))
    }

    /// Raw buffers: a null address with elements to move is certainly wrong.
    fn check_ptrs(&mut self, op: OpKind, seq: u64, bufs: &[(u64, usize)]) -> Result<()> {
        if bufs.iter().any(|&(ptr, len)| ptr == 0 && len > 0) {
            return Err(self.invalid(op, seq, "null device pointer".into()));
        }
        Ok(())
    }

    /// Slices must live in this communicator's context (same device).
    fn check_context(&mut self, op: OpKind, seq: u64, ctxs: &[&Arc<cudarc::driver::CudaContext>]) -> Result<()> {
        let ours = Arc::clone(self.stream.context());
        if let Some(other) = ctxs.iter().find(|c| c.as_ref() != ours.as_ref()) {
            let detail = format!("slice on device {} but the communicator is on device {}", other.ordinal(), ours.ordinal());
            return Err(self.invalid(op, seq, detail));
        }
        Ok(())
    }
}

/// Rejects a rank outside the world before any resource is created.
fn check_world(rank: Rank, world: usize) -> Result<()> {
    if world == 0 || rank.index() >= world {
        return Err(OpsError::Setup { op: OpKind::Connect, rank, detail: format!("rank {rank} out of world size {world}") });
    }
    Ok(())
}

impl NcclComm {
    /// The abort handle of this communicator (also reached through [`crate::Collective`]).
    fn handle(&self) -> AbortHandle {
        AbortHandle::new(Arc::clone(&self.shared) as Arc<dyn AbortTarget>)
    }
}

impl Drop for NcclComm {
    /// Tells the thread to finalize (or abort) the communicator and waits a bounded time for it.
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Shutdown);
        let Some(thread) = self.thread.take() else { return };
        let deadline = Instant::now() + engine::LINGER + Duration::from_secs(1);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}
