//! The thread that owns one NCCL communicator.
//!
//! An `ncclComm_t` is a raw pointer, so it is neither `Send` nor `Sync`; rather than asserting
//! otherwise, it is created, used, aborted and destroyed on this one thread, which the
//! [`super::NcclComm`] handle drives through a channel (the pattern of monarch's comm actor).
//!
//! The communicator is non-blocking (`ncclConfig.blocking = 0`): no NCCL call here waits on a
//! peer. Every call is polled to completion against its deadline: first
//! `ncclCommGetAsyncError` until the operation is enqueued, then an event on the stream; a
//! deadline, an abort request or an asynchronous error ends in `ncclCommAbort`, which unblocks
//! the device kernels, and the handle poisons itself. The raw NCCL calls are the only `unsafe`
//! code of the backend and sit in the small functions at the end of this file.

use std::ffi::{c_int, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError};
use cudarc::nccl::sys::{self, ncclComm_t, ncclRedOp_t, ncclResult_t};

use crate::collective::AbortTarget;
use crate::error::{OpsError, Result};
use crate::types::{DType, OpKind, Rank};

use super::load;
use super::mapping::{data_type, result_name};
use super::uid::UniqueId;

/// Longest a dropped communicator waits for `ncclCommFinalize` before aborting instead.
pub(crate) const LINGER: Duration = Duration::from_secs(5);
/// Polls spin (yielding) this long before sleeping, so short collectives return promptly.
const SPIN: Duration = Duration::from_micros(200);
/// Sleep between polls after the spin phase: bounds how late an abort or deadline is noticed.
const NAP: Duration = Duration::from_micros(500);

/// The collective to enqueue; counts follow NCCL's conventions.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// `ncclAllReduce` of `count` elements.
    AllReduce(ncclRedOp_t),
    /// `ncclReduceScatter`; `count` is the per-rank (output) count.
    ReduceScatter(ncclRedOp_t),
    /// `ncclAllGather`; `count` is the per-rank (input) count.
    AllGather,
    /// `ncclBroadcast` from the given rank.
    Broadcast(c_int),
}

/// One call, with the device addresses of its buffers (owned by the caller).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    /// Which op, for errors.
    pub op: OpKind,
    /// Its sequence number, for errors.
    pub seq: u64,
    /// What to enqueue.
    pub kind: Kind,
    /// Send buffer (`CUdeviceptr`).
    pub send: u64,
    /// Receive buffer (`CUdeviceptr`); equal to `send` for in-place calls.
    pub recv: u64,
    /// Element count in NCCL's convention for `kind`.
    pub count: usize,
    /// Element type.
    pub dtype: DType,
}

/// Messages to the communicator thread.
pub(crate) enum Request {
    /// Run a call and reply with its outcome once it completed on the device (or failed).
    Call(Call, Sender<Result<()>>),
    /// Sent by an abort handle so an idle thread aborts the communicator at once.
    Abort,
    /// The handle was dropped: finalize (or abort) and exit.
    Shutdown,
}

/// State shared by the handle, its thread and every `AbortHandle`.
pub(crate) struct Shared {
    aborted: AtomicBool,
    wake: Sender<Request>,
}

impl Shared {
    /// Whether `abort` was called.
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }
}

impl AbortTarget for Shared {
    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        // The thread may be gone already; then there is nothing left to abort.
        let _ = self.wake.send(Request::Abort);
    }
}

/// What the thread needs to build the communicator.
pub(crate) struct Setup {
    /// CUDA device ordinal.
    pub device: usize,
    /// This rank.
    pub rank: Rank,
    /// World size.
    pub world: usize,
    /// The id rank 0 created.
    pub id: UniqueId,
    /// Deadline of every call.
    pub timeout: Duration,
    /// Deadline of communicator initialisation.
    pub init_timeout: Duration,
}

/// The running thread as the handle sees it.
pub(crate) struct Started {
    /// The communicator's stream (for staging copies and `CudaSlice` access).
    pub stream: Arc<CudaStream>,
    /// Requests to the thread.
    pub requests: Sender<Request>,
    /// Shared abort state.
    pub shared: Arc<Shared>,
    /// The thread itself.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts the communicator thread and waits (bounded) until the communicator is ready.
pub(crate) fn start(setup: Setup) -> Result<Started> {
    let (rank, bound) = (setup.rank, setup.init_timeout + LINGER);
    let (tx, rx) = std::sync::mpsc::channel();
    let shared = Arc::new(Shared { aborted: AtomicBool::new(false), wake: tx.clone() });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread_shared = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name(format!("tessera-nccl-{}", rank))
        .spawn(move || {
            // A panic inside cudarc (a symbol this driver or NCCL lacks) becomes an error.
            let built = load::guarded("initialising the NCCL communicator", || Engine::new(&setup, thread_shared));
            let engine = match built.and_then(|r| r) {
                Ok(engine) => engine,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            if ready_tx.send(Ok(Arc::clone(&engine.stream))).is_ok() {
                engine.serve(rx);
            } else {
                // The caller gave up waiting (and flagged the abort): do not leak the communicator.
                engine.close();
            }
        })
        .map_err(|e| OpsError::Setup { op: OpKind::Connect, rank, detail: format!("spawning the NCCL thread: {e}") })?;
    let stream = match ready_rx.recv_timeout(bound) {
        Ok(r) => r?,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let detail = "the NCCL thread exited during initialisation".to_string();
            return Err(OpsError::Setup { op: OpKind::Connect, rank, detail });
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            // The thread is stuck in the driver or NCCL; it is left behind, the process goes on.
            shared.abort();
            let detail = format!("communicator initialisation did not finish within {bound:?}");
            return Err(OpsError::Setup { op: OpKind::Connect, rank, detail });
        }
    };
    Ok(Started { stream, requests: tx, shared, thread })
}

/// The communicator and its device resources; lives on the communicator thread only.
struct Engine {
    /// `None` once aborted or destroyed.
    comm: Option<ncclComm_t>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Recorded after each enqueued call; polled for completion.
    done: CudaEvent,
    rank: Rank,
    timeout: Duration,
    shared: Arc<Shared>,
}

impl Engine {
    /// Binds the device, makes a stream and initialises the communicator (non-blocking, polled).
    fn new(s: &Setup, shared: Arc<Shared>) -> Result<Self> {
        let rank = s.rank;
        let device_err =
            |what: &str, e: DriverError| OpsError::Device { op: OpKind::Connect, seq: 0, rank, detail: format!("{what}: {e:?}") };
        let ctx = load::guarded("creating the CUDA context", || CudaContext::new(s.device))?
            .map_err(|e| device_err(&format!("context on device {}", s.device), e))?;
        let stream = ctx.new_stream().map_err(|e| device_err("creating the stream", e))?;
        let done = ctx.new_event(None).map_err(|e| device_err("creating the completion event", e))?;
        let world =
            c_int::try_from(s.world).map_err(|_| OpsError::Setup { op: OpKind::Connect, rank, detail: "world size too large".into() })?;
        let (r, comm) = init_rank(&s.id, world, rank.0 as c_int);
        let mut engine = Engine { comm, ctx, stream, done, rank, timeout: s.timeout, shared };
        if !matches!(r, ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress) {
            return Err(engine.fail(OpKind::Connect, 0, r, "ncclCommInitRankConfig"));
        }
        // Non-blocking init returns at once; rank 0's bootstrap waits for every rank here.
        let deadline = Instant::now() + s.init_timeout;
        let mut poll = Poll::new();
        loop {
            if engine.shared.is_aborted() {
                engine.abort();
                return Err(OpsError::Aborted { op: OpKind::Connect, seq: 0, rank });
            }
            match engine.async_error() {
                ncclResult_t::ncclSuccess => return Ok(engine),
                ncclResult_t::ncclInProgress => {}
                e => return Err(engine.fail(OpKind::Connect, 0, e, "communicator initialisation")),
            }
            if Instant::now() >= deadline {
                engine.abort();
                return Err(OpsError::Stalled { op: OpKind::Connect, seq: 0, rank, after: s.init_timeout });
            }
            poll.wait();
        }
    }

    /// Serves requests until shutdown; the communicator is finalized or aborted on the way out.
    fn serve(mut self, rx: Receiver<Request>) {
        while let Ok(req) = rx.recv() {
            match req {
                Request::Call(call, reply) => {
                    let r = match load::guarded("running the collective", || self.run(&call)) {
                        Ok(r) => r,
                        Err(panicked) => {
                            // The communicator's state is unknown after a panic mid-call.
                            self.abort();
                            Err(panicked)
                        }
                    };
                    let _ = reply.send(r);
                }
                Request::Abort => self.abort(),
                Request::Shutdown => break,
            }
        }
        self.close();
    }

    /// Enqueues `call` and polls it to completion, deadline and abort included.
    fn run(&mut self, call: &Call) -> Result<()> {
        let (op, seq, rank) = (call.op, call.seq, self.rank);
        let Some(comm) = self.comm else {
            // Only reachable after an abort; the handle reports the original cause.
            return Err(OpsError::Aborted { op, seq, rank });
        };
        if let Err(e) = self.ctx.bind_to_thread() {
            return Err(self.device_failure(call, "binding the CUDA context", e));
        }
        let deadline = Instant::now() + self.timeout;
        let r = enqueue(comm, &self.stream, call);
        if !matches!(r, ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress) {
            return Err(self.fail(op, seq, r, "enqueueing the collective"));
        }
        let mut recorded = false;
        let mut poll = Poll::new();
        loop {
            if self.shared.is_aborted() {
                self.abort();
                return Err(OpsError::Aborted { op, seq, rank });
            }
            let state = self.async_error();
            if !matches!(state, ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress) {
                return Err(self.fail(op, seq, state, "while the collective ran"));
            }
            // A non-blocking communicator reports `ncclInProgress` until the op is on the stream;
            // only then does an event recorded on the stream cover it.
            if !recorded && state == ncclResult_t::ncclSuccess {
                if let Err(e) = self.done.record(&self.stream) {
                    return Err(self.device_failure(call, "recording the completion event", e));
                }
                recorded = true;
            }
            if recorded {
                match self.done.try_is_complete() {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => return Err(self.device_failure(call, "waiting for the collective", e)),
                }
            }
            if Instant::now() >= deadline {
                self.abort();
                return Err(OpsError::Stalled { op, seq, rank, after: self.timeout });
            }
            poll.wait();
        }
    }

    /// The communicator's asynchronous state (`ncclInProgress` while an operation is pending).
    fn async_error(&self) -> ncclResult_t {
        self.comm.map_or(ncclResult_t::ncclInvalidUsage, async_error)
    }

    /// Reads NCCL's message, aborts the communicator and names the failure.
    fn fail(&mut self, op: OpKind, seq: u64, code: ncclResult_t, during: &str) -> OpsError {
        let last = self.comm.map(last_error).unwrap_or_default();
        self.abort();
        let detail = if last.is_empty() { during.to_string() } else { format!("{during}: {last}") };
        OpsError::Nccl { op, seq, rank: self.rank, code: result_name(code).into(), detail }
    }

    /// A CUDA error during a call: the stream state is unknown, so the communicator goes too.
    fn device_failure(&mut self, call: &Call, what: &str, e: DriverError) -> OpsError {
        self.abort();
        OpsError::Device { op: call.op, seq: call.seq, rank: self.rank, detail: format!("{what}: {e:?}") }
    }

    /// Aborts the communicator (idempotent): pending kernels stop, resources are freed.
    fn abort(&mut self) {
        if let Some(comm) = self.comm.take() {
            let _ = self.ctx.bind_to_thread();
            abort(comm);
        }
    }

    /// Orderly teardown: finalize (polled, bounded by [`LINGER`]) then destroy; abort otherwise.
    fn close(mut self) {
        let Some(comm) = self.comm else { return };
        if self.shared.is_aborted() || self.ctx.bind_to_thread().is_err() {
            return self.abort();
        }
        if !matches!(finalize(comm), ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress) {
            return self.abort();
        }
        let deadline = Instant::now() + LINGER;
        let mut poll = Poll::new();
        loop {
            match async_error(comm) {
                ncclResult_t::ncclSuccess => break,
                ncclResult_t::ncclInProgress if Instant::now() < deadline => poll.wait(),
                _ => return self.abort(),
            }
        }
        self.comm = None;
        // Nothing is left to abort if destroy fails: it frees the communicator whatever it returns.
        let _ = destroy(comm);
    }
}

/// Spin briefly, then sleep in short naps: low latency for short calls, little CPU for long ones.
struct Poll {
    start: Instant,
}

impl Poll {
    fn new() -> Self {
        Poll { start: Instant::now() }
    }

    fn wait(&mut self) {
        if self.start.elapsed() < SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(NAP);
        }
    }
}

/// `NCCL_CONFIG_INITIALIZER` with `blocking = 0`: every field NCCL should default is
/// `NCCL_CONFIG_UNDEF_INT` (`INT_MIN`) or a null pointer, as in nccl.h.
fn nonblocking_config() -> sys::ncclConfig_t {
    const UNDEF: c_int = c_int::MIN;
    sys::ncclConfig_t {
        size: size_of::<sys::ncclConfig_t>(),
        magic: 0xcafe_beef,
        // NCCL_VERSION(2, 28, 0): the layout of `ncclConfig_v22800` that cudarc's nccl-02028 binds.
        version: 22800,
        blocking: 0,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: UNDEF,
        netName: std::ptr::null(),
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: std::ptr::null(),
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
    }
}

/// `ncclCommInitRankConfig` with the non-blocking config; returns the code and the handle.
#[allow(unsafe_code)]
fn init_rank(id: &UniqueId, world: c_int, rank: c_int) -> (ncclResult_t, Option<ncclComm_t>) {
    let mut config = nonblocking_config();
    let mut comm: ncclComm_t = std::ptr::null_mut();
    // SAFETY: `comm` and `config` are valid for writes for the duration of the call (NCCL copies
    // the config); the id is passed by value. `available()` ran before, so the library is loaded.
    let r = unsafe { sys::ncclCommInitRankConfig(&mut comm, world, id.to_sys(), rank, &mut config) };
    (r, (!comm.is_null()).then_some(comm))
}

/// `ncclCommGetAsyncError`, folding a failure of the query itself into the result.
#[allow(unsafe_code)]
fn async_error(comm: ncclComm_t) -> ncclResult_t {
    let mut state = ncclResult_t::ncclSuccess;
    // SAFETY: `comm` is a live communicator owned by this thread (the engine forgets it before
    // aborting or destroying it); `state` is valid for a write.
    let r = unsafe { sys::ncclCommGetAsyncError(comm, &mut state) };
    if r == ncclResult_t::ncclSuccess { state } else { r }
}

/// NCCL's last error message for `comm` (empty if none).
#[allow(unsafe_code)]
fn last_error(comm: ncclComm_t) -> String {
    // SAFETY: `comm` is live (see `async_error`); NCCL returns a NUL-terminated string it owns,
    // valid until the next NCCL call on this thread, and we copy it out at once.
    unsafe {
        let p = sys::ncclGetLastError(comm);
        if p.is_null() { String::new() } else { std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned() }
    }
}

/// Enqueues one collective on `stream`.
#[allow(unsafe_code)]
fn enqueue(comm: ncclComm_t, stream: &CudaStream, c: &Call) -> ncclResult_t {
    let (send, recv) = (c.send as *const c_void, c.recv as *mut c_void);
    let (dt, s) = (data_type(c.dtype), stream.cu_stream() as sys::cudaStream_t);
    // SAFETY: `comm` is live and owned by this thread; `s` is our stream, in the device context
    // bound to this thread. The buffers belong to the caller: the handle's raw device methods are
    // `unsafe` and require `send`/`recv` to be device memory of this device holding the counts
    // NCCL reads and writes here; the handle blocks until this call completed or the
    // communicator was aborted, so the memory outlives every access.
    unsafe {
        match c.kind {
            Kind::AllReduce(op) => sys::ncclAllReduce(send, recv, c.count, dt, op, comm, s),
            Kind::ReduceScatter(op) => sys::ncclReduceScatter(send, recv, c.count, dt, op, comm, s),
            Kind::AllGather => sys::ncclAllGather(send, recv, c.count, dt, comm, s),
            Kind::Broadcast(root) => sys::ncclBroadcast(send, recv, c.count, dt, root, comm, s),
        }
    }
}

/// `ncclCommAbort`: consumes the handle whatever it returns.
#[allow(unsafe_code)]
fn abort(comm: ncclComm_t) {
    // SAFETY: `comm` was live and the engine dropped its only copy before this call, so it is
    // never used again.
    let _ = unsafe { sys::ncclCommAbort(comm) };
}

/// `ncclCommFinalize` (non-blocking: completion is polled with `async_error`).
#[allow(unsafe_code)]
fn finalize(comm: ncclComm_t) -> ncclResult_t {
    // SAFETY: `comm` is live and owned by this thread.
    unsafe { sys::ncclCommFinalize(comm) }
}

/// `ncclCommDestroy`: consumes the handle.
#[allow(unsafe_code)]
fn destroy(comm: ncclComm_t) -> ncclResult_t {
    // SAFETY: `comm` is finalized and the engine dropped its only copy before this call.
    unsafe { sys::ncclCommDestroy(comm) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_nccl_config_initializer_but_non_blocking() {
        let c = nonblocking_config();
        assert_eq!(c.size, size_of::<sys::ncclConfig_t>());
        assert_eq!((c.magic, c.version, c.blocking), (0xcafebeef, 22800, 0));
        assert!(c.netName.is_null() && c.commName.is_null());
        assert_eq!(c.minCTAs, i32::MIN);
    }
}
