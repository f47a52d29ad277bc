//! The TCP ring backend of [`Collective`].

mod algo;
mod arena;
mod connect;
mod guard;
mod mapping;
mod pipe;
mod shm;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::JobAuth;
use crate::collective::{AbortHandle, Collective};
use crate::element::Element;
use crate::error::{OpsError, Result};
use crate::frame::Header;
use crate::shard::shard_range;
use crate::types::{DType, OpKind, Rank, ReduceOp};

use guard::{Fired, Guard};
use pipe::{Fault, Link};

/// Settings of a ring communicator; every rank must use the same values.
#[derive(Clone, Debug)]
pub struct RingConfig {
    /// Job identity and shared secret checked in the handshake.
    pub auth: JobAuth,
    /// Deadline of every collective call (default 60 s).
    pub timeout: Duration,
    /// Deadline for building the ring (default 60 s).
    pub connect_timeout: Duration,
    /// Bound on one incoming connection's handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// Pipeline chunk size in bytes (default 1 MiB; also the shared-memory slot size); must
    /// match on every rank.
    pub chunk_bytes: usize,
    /// Carry payloads of large calls through a `/dev/shm` file per link when the neighbour can
    /// open it (same host), keeping headers and flow control on TCP (default true). A link whose
    /// neighbour cannot open the file carries payloads on TCP; see [`TcpRing::shared_memory_links`].
    pub shared_memory: bool,
    /// Size of each of the two buffers of this rank's same-host all-gather arena (default
    /// 8 MiB; 0 turns it off): when every rank of the ring can map every other's arena,
    /// all-gathers above 32 KiB (and, with two ranks, up to 16 MiB) copy each shard in once
    /// and out once instead of passing it around the ring (`ring/arena.rs`). Needs `shared_memory`; must match on every rank.
    pub arena_bytes: usize,
}

impl RingConfig {
    /// Defaults for the given job.
    pub fn new(auth: JobAuth) -> Self {
        RingConfig {
            auth,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(5),
            chunk_bytes: 1024 * 1024,
            shared_memory: true,
            arena_bytes: 8 << 20,
        }
    }
}

/// The two neighbour connections and their guard (absent when the world has one rank).
struct Links {
    left: TcpStream,
    right: TcpStream,
    guard: Guard,
    outbox: Option<shm::Outbox>,
    inbox: Option<shm::Inbox>,
}

/// A ring communicator over TCP: rank r reads from r-1 and writes to r+1.
pub struct TcpRing {
    rank: Rank,
    world: usize,
    links: Option<Links>,
    /// Abort target for a world of one, which has no guard.
    solo: Arc<SoloAbort>,
    config: RingConfig,
    seq: u64,
    poisoned: Option<OpsError>,
    /// Reduce-scatter partial sums, kept between calls: a fresh buffer per call would cost a
    /// page fault per 4 KiB. `u64` words so any element type can be laid over it.
    scratch: Vec<u64>,
    /// Every rank's all-gather arena, when all ranks share this host (see `ring/arena.rs`).
    arena: Option<arena::Arena>,
}

/// All-gathers above this size (output bytes) go through the arena when there is one; smaller
/// ones are latency-bound and stay on the ring, whose frames carry them inline.
const ARENA_MIN_BYTES: usize = 32 * 1024;
/// With two ranks the arena touches as many bytes as the ring; it wins up to this size (no
/// sender thread, no per-chunk frames: 16 MiB 2.5 vs 2.0 GB/s bus bandwidth, medians of 3
/// runs) and loses above, where the ring's 1 MiB chunks are read back while still in cache
/// (256 MiB: 2.1 vs 2.7 GB/s). From three ranks on it moves fewer bytes and wins at every size.
const ARENA_MAX_BYTES_TWO_RANKS: usize = 16 << 20;

impl TcpRing {
    /// Builds the ring: `listener` is this rank's bound listener, `peers[i]` rank i's listener
    /// address (`peers.len()` is the world size). Blocks until both neighbours have
    /// authenticated or `config.connect_timeout` passes.
    pub fn connect(listener: TcpListener, rank: Rank, peers: &[SocketAddr], config: RingConfig) -> Result<Self> {
        let world = peers.len();
        let setup = |detail: String| OpsError::Setup { op: OpKind::Connect, rank, detail };
        if rank.index() >= world {
            return Err(setup(format!("rank {rank} out of world size {world}")));
        }
        if config.chunk_bytes < 8 {
            return Err(setup(format!("chunk_bytes {} must be at least 8", config.chunk_bytes)));
        }
        let links = if world == 1 {
            None
        } else {
            let dial = connect::Dial {
                rank,
                peers,
                auth: &config.auth,
                deadline: Instant::now() + config.connect_timeout,
                handshake_timeout: config.handshake_timeout,
            };
            let (left, right) = connect::establish(listener, &dial)?;
            // Always exchanged (an empty offer when disabled), so ranks that disagree on
            // `shared_memory` still stay in step and simply use TCP for that link.
            let (outbox, inbox) = shm::negotiate(&left, &right, config.chunk_bytes, config.shared_memory, config.handshake_timeout)
                .map_err(|e| setup(format!("shared-memory setup with the neighbours: {e}")))?;
            let clones = [left.try_clone(), right.try_clone()].into_iter().collect::<std::io::Result<Vec<_>>>();
            let guard = clones.and_then(Guard::new).map_err(|e| setup(format!("watchdog: {e}")))?;
            Some(Links { left, right, guard, outbox, inbox })
        };
        let mut ring =
            TcpRing { rank, world, links, solo: Arc::default(), config, seq: 0, poisoned: None, scratch: Vec::new(), arena: None };
        if world > 1 {
            ring.join_arena().map_err(|e| setup(format!("all-gather arena exchange: {e}")))?;
        }
        Ok(ring)
    }

    /// Sets up the same-host all-gather arena if every rank can map every other's (see
    /// `ring/arena.rs`). Always runs on every rank (an empty record when off) so that ranks
    /// configured differently stay in step and agree on the ring algorithm instead.
    fn join_arena(&mut self) -> Result<()> {
        let half = if self.config.shared_memory { self.config.arena_bytes } else { 0 };
        let offer = arena::Offer::new(half);
        let mut records = vec![0i64; arena::RECORD_WORDS * self.world];
        self.all_gather(&offer.record(), &mut records)?;
        let theirs = offer.accept(&records, self.rank.index(), self.world);
        let mut everyone = [i64::from(theirs.is_some())];
        self.all_reduce(&mut everyone, ReduceOp::Sum)?;
        let world = self.world as i64;
        self.arena = theirs.filter(|_| everyone[0] == world).and_then(|t| offer.into_arena(t));
        // Callers number their calls from 0.
        self.seq = 0;
        Ok(())
    }

    /// Whether all-gathers above 32 KiB (up to 16 MiB with two ranks) go through the same-host
    /// arena.
    pub fn same_host_arena(&self) -> bool {
        self.arena.is_some()
    }

    /// All-gather through the arena; `output` already holds this rank's shard.
    fn arena_all_gather<T: Element>(&mut self, arena: &mut arena::Arena, output: &mut [T]) -> Result<()> {
        for round in arena.plan::<T>(output.len(), self.world) {
            if let Err(e) = arena.put(&round, self.rank.index(), output) {
                return Err(self.invalid(OpKind::AllGather, format!("arena copy in: {e}")));
            }
            let token = round.number as i64;
            self.call(OpKind::AllGather, DType::I64, |link, h, ring| {
                let mut tokens = vec![0i64; ring.world];
                algo::all_gather(link, h, ring, &[token], &mut tokens)?;
                match tokens.iter().find(|&&t| t != token) {
                    Some(t) => Err(Fault::Protocol(format!("arena round {token}, but a rank is at round {t}"))),
                    None => Ok(()),
                }
            })?;
            if let Err(e) = arena.take(&round, output) {
                return Err(self.invalid(OpKind::AllGather, format!("arena copy out: {e}")));
            }
        }
        Ok(())
    }

    /// Whether payloads to the right and from the left neighbour go through shared memory.
    pub fn shared_memory_links(&self) -> (bool, bool) {
        self.links.as_ref().map_or((false, false), |l| (l.outbox.is_some(), l.inbox.is_some()))
    }

    /// The configuration the ring was built with.
    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Runs one call: sequence numbering, fail-fast when poisoned, deadline, error mapping.
    fn call<R>(
        &mut self,
        op: OpKind,
        dtype: DType,
        body: impl FnOnce(&mut Link<'_>, Header, algo::Ring) -> std::result::Result<R, Fault>,
    ) -> Result<R>
    where
        R: Default,
    {
        let seq = self.seq;
        self.seq += 1;
        if let Some(cause) = &self.poisoned {
            return Err(OpsError::Poisoned { op, seq, cause: Box::new(cause.clone()) });
        }
        let Some(links) = &mut self.links else {
            if self.solo.is_aborted() {
                return Err(self.poison(OpsError::Aborted { op, seq, rank: self.rank }));
            }
            return Ok(R::default());
        };
        let shared = links.guard.shared();
        if let Some(fired) = shared.fired() {
            // Aborted between calls, or the previous call's deadline fired as it completed.
            let e = match fired {
                Fired::Aborted => OpsError::Aborted { op, seq, rank: self.rank },
                Fired::Timeout { op, seq } => OpsError::Timeout { op, seq, peer: self.left(), after: self.config.timeout },
            };
            return Err(self.poison(e));
        }
        let chunk = (self.config.chunk_bytes / dtype.size_bytes()).max(1);
        let ring = algo::Ring { rank: self.rank.index(), world: self.world, chunk };
        let template = Header { op, dtype, step: 0, seq, len: 0 };
        links.guard.arm(Instant::now() + self.config.timeout, op, seq);
        let mut link = Link { left: &links.left, right: &links.right, shared, outbox: links.outbox.as_mut(), inbox: links.inbox.as_mut() };
        let result = body(&mut link, template, ring);
        links.guard.disarm();
        result.map_err(|fault| {
            let e = self.classify(op, seq, fault);
            self.poison(e)
        })
    }

    /// Names the failure: the guard's reason wins over the I/O error it caused.
    fn classify(&self, op: OpKind, seq: u64, fault: Fault) -> OpsError {
        let peer = if matches!(fault, Fault::Send(_)) { self.right() } else { self.left() };
        let fired = self.links.as_ref().and_then(|l| l.guard.shared().fired());
        match (fired, fault) {
            (Some(Fired::Aborted), _) => OpsError::Aborted { op, seq, rank: self.rank },
            (Some(Fired::Timeout { op, seq }), _) => OpsError::Timeout { op, seq, peer, after: self.config.timeout },
            (None, Fault::Recv(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => OpsError::PeerClosed { op, seq, peer },
            (None, Fault::Recv(e) | Fault::Send(e)) => OpsError::Io { op, seq, peer, source: Arc::new(e) },
            (None, Fault::Protocol(detail)) => OpsError::Protocol { op, seq, peer, detail },
        }
    }

    /// The neighbour we read from.
    fn left(&self) -> Rank {
        Rank(((self.rank.index() + self.world - 1) % self.world) as u32)
    }

    /// The neighbour we write to.
    fn right(&self) -> Rank {
        Rank(((self.rank.index() + 1) % self.world) as u32)
    }

    /// Marks the communicator unusable and closes its sockets so the neighbours fail fast too.
    fn poison(&mut self, e: OpsError) -> OpsError {
        if let Some(l) = &self.links {
            l.guard.shared().shutdown_streams();
        }
        self.poisoned = Some(e.clone());
        e
    }

    fn invalid(&mut self, op: OpKind, detail: String) -> OpsError {
        // A rank that skips a call desynchronises the ring: poison so the peers fail fast.
        let e = OpsError::InvalidArgument { op, seq: self.seq, rank: self.rank, detail };
        self.seq += 1;
        self.poison(e)
    }
}

impl Collective for TcpRing {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce<T: Element>(&mut self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        self.call(OpKind::AllReduce, T::DTYPE, |link, h, ring| algo::all_reduce(link, h, ring, buf, op))
    }

    fn reduce_scatter<T: Element>(&mut self, input: &[T], output: &mut [T], op: ReduceOp) -> Result<()> {
        let own = shard_range(input.len(), self.world, self.rank.index());
        if output.len() != own.len() {
            let detail = format!("output has {} elements, shard {own:?} of {} needs {}", output.len(), input.len(), own.len());
            return Err(self.invalid(OpKind::ReduceScatter, detail));
        }
        if self.world == 1 {
            output.copy_from_slice(input);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let len = if self.world > 2 { input.len() } else { 0 };
        let words = (len * size_of::<T>()).div_ceil(8);
        if scratch.len() < words {
            scratch.resize(words, 0);
        }
        // Every element size divides 8 and u64 alignment covers every element type.
        let partial: &mut [T] = bytemuck::cast_slice_mut(&mut scratch[..words]);
        let r = self.call(OpKind::ReduceScatter, T::DTYPE, |link, h, ring| algo::reduce_scatter(link, h, ring, input, output, partial, op));
        self.scratch = scratch;
        r
    }

    fn all_gather<T: Element>(&mut self, input: &[T], output: &mut [T]) -> Result<()> {
        let own = shard_range(output.len(), self.world, self.rank.index());
        if input.len() != own.len() {
            let detail = format!("input has {} elements, shard {own:?} of {} needs {}", input.len(), output.len(), own.len());
            return Err(self.invalid(OpKind::AllGather, detail));
        }
        if self.world == 1 {
            output.copy_from_slice(input);
        }
        if let Some(mut arena) = self.arena.take() {
            let bytes = size_of_val(output);
            if bytes > ARENA_MIN_BYTES && (self.world > 2 || bytes <= ARENA_MAX_BYTES_TWO_RANKS) {
                output[own].copy_from_slice(input);
                let r = self.arena_all_gather(&mut arena, output);
                self.arena = Some(arena);
                return r;
            }
            self.arena = Some(arena);
        }
        self.call(OpKind::AllGather, T::DTYPE, |link, h, ring| algo::all_gather(link, h, ring, input, output))
    }

    fn broadcast<T: Element>(&mut self, buf: &mut [T], root: Rank) -> Result<()> {
        if root.index() >= self.world {
            return Err(self.invalid(OpKind::Broadcast, format!("root {root} out of world size {}", self.world)));
        }
        self.call(OpKind::Broadcast, T::DTYPE, |link, h, ring| algo::broadcast(link, h, ring, buf, root.index()))
    }

    fn barrier(&mut self) -> Result<()> {
        let world = self.world as i64;
        let mut token = [1i64];
        self.call(OpKind::Barrier, DType::I64, |link, h, ring| {
            algo::all_reduce(link, h, ring, &mut token, ReduceOp::Sum)?;
            if token[0] == world { Ok(()) } else { Err(Fault::Protocol(format!("barrier count {} != world {world}", token[0]))) }
        })
    }

    fn abort_handle(&self) -> AbortHandle {
        match &self.links {
            Some(l) => AbortHandle::new(Arc::clone(l.guard.shared()) as Arc<dyn crate::collective::AbortTarget>),
            None => AbortHandle::new(Arc::clone(&self.solo) as Arc<dyn crate::collective::AbortTarget>),
        }
    }
}

impl Drop for TcpRing {
    /// Closes gracefully: stop writing, then read until the neighbours have closed too (bounded by
    /// [`LINGER`]). Closing a socket that still holds unread bytes (the neighbour's last credit
    /// bytes) makes the kernel send a reset, which would fail a neighbour still finishing its last
    /// call.
    fn drop(&mut self) {
        let Some(links) = &self.links else { return };
        for s in [&links.left, &links.right] {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let deadline = Instant::now() + LINGER;
        let mut sink = [0u8; 4096];
        for mut s in [&links.left, &links.right] {
            loop {
                let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { return };
                if s.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                match std::io::Read::read(&mut s, &mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Longest a dropped ring waits for its neighbours to close their side.
const LINGER: Duration = Duration::from_secs(1);

/// Abort flag of a one-rank ring (nothing to unblock, but later calls must fail).
#[derive(Default)]
struct SoloAbort(std::sync::atomic::AtomicBool);

impl SoloAbort {
    fn is_aborted(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl crate::collective::AbortTarget for SoloAbort {
    fn abort(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}
