//! tessera's data plane without libtorch: the [`Collective`] trait (all-reduce, reduce-scatter,
//! all-gather, broadcast, barrier over f32 / bf16 / f16 / i64 slices), its TCP ring backend
//! [`TcpRing`], its [`nccl`] backend [`NcclComm`] for GPUs (cudarc, loaded at run time), an
//! authenticated [`rendezvous`] for ring addresses and the NCCL unique id, the shard layout shared
//! with FSDP ([`shard::shard_range`]) and a backend-generic [`conformance`] suite.
//!
//! # Wire protocol
//! Each rank binds a listener; rank r dials rank r+1 and accepts rank r-1, so every rank owns
//! one outgoing (write-only) and one incoming (read-only) connection, both `TCP_NODELAY`.
//!
//! *Handshake* ([`auth`]): the dialler sends a 72-byte hello (magic, version, purpose, byte
//! order, job id, generation, world size, own rank, expected peer rank, 32-byte nonce); the
//! acceptor checks every field and answers with its own hello; then the dialler and the acceptor,
//! in that order, send HMAC-SHA256(secret, role label ‖ hello₁ ‖ hello₂). Either side closes on
//! any mismatch, so a stray client, a wrong secret, another job or an older generation never gets
//! a ring slot, and the listener keeps waiting for the legitimate neighbour.
//!
//! *Frames* ([`frame`]): every chunk travels behind a 24-byte header (magic, op, dtype, step,
//! call sequence number, payload length). The receiver knows exactly which frame must come next
//! and rejects anything else as a protocol error naming the op, sequence number and peer.
//! Elements travel in native byte order (the handshake refuses a peer of the other order).
//! Calls whose writes can never wait on a neighbour (up to 32 KiB on the socket, or at most 4
//! shared-memory frames) write from the calling thread instead of starting a sender thread. A
//! dropped ring closes gracefully (stops writing, drains until the neighbours close, at most
//! 1 s), so a rank that finished never resets a neighbour still finishing the same call.
//!
//! *Same-host payloads* (`ring::shm`, [`RingConfig::shared_memory`]): after the handshake each
//! rank offers its right neighbour a `/dev/shm` file of 8 chunk-sized slots (mode 0600, unlinked
//! as soon as the neighbour has mapped it). For calls above 32 KiB the sender copies a chunk
//! into the next slot of the shared mapping and sends only the header on TCP; the receiver
//! copies the slot out and returns one credit byte on the same connection. Loopback TCP spends
//! most of its time in the kernel's socket path; the shared-page copy runs at memcpy speed. All
//! waiting stays on sockets, so deadlines, aborts and peer death behave exactly as on plain TCP.
//! The mapping (`ring::mapping`, on `memmap2::MmapRaw`) holds the ring's only `unsafe` code: two bounds-checked copies.
//! The rest of the crate's `unsafe` is the NCCL backend's FFI: one small function per raw NCCL
//! call in `nccl::engine`, the two library probes in `nccl::load`, and the `*_raw` device methods
//! of [`NcclComm`], which are `unsafe fn` because their caller vouches for the device pointers.
//!
//! # Algorithms
//! Bandwidth-optimal ring algorithms (see `ring::algo`): reduce-scatter and all-gather move
//! `(n-1)/n` of the tensor per rank, all-reduce is the two back to back (`2(n-1)/n`), broadcast
//! is a pipelined chain. Segments are split into chunks (`RingConfig::chunk_bytes`); a sender
//! thread per call writes chunk k to the right neighbour while the owning thread receives and
//! reduces chunk k+1 from the left, with no copy of the caller's data.
//!
//! # Failure model
//! Every call has a deadline ([`RingConfig::timeout`]). On timeout, peer failure, protocol
//! violation or [`AbortHandle::abort`], the call returns an [`OpsError`] naming op, sequence
//! number and peer; the communicator closes its sockets (so neighbours fail fast instead of
//! waiting for their own deadline) and refuses later calls with [`OpsError::Poisoned`] carrying
//! the original error. Nothing panics on network input.

pub mod auth;
pub mod collective;
pub mod conformance;
pub mod element;
pub mod error;
pub mod frame;
pub mod nccl;
pub mod rendezvous;
pub mod ring;
pub mod shard;
pub mod types;

pub use auth::{JobAuth, Secret};
pub use collective::{AbortHandle, AbortTarget, Collective};
pub use element::Element;
pub use error::{OpsError, Result};
pub use nccl::{NcclComm, NcclConfig};
pub use rendezvous::{JoinRequest, RendezvousServer, join, join_with_payload};
pub use ring::{RingConfig, TcpRing};
pub use shard::{shard_len, shard_range};
pub use types::{DType, OpKind, Rank, ReduceOp};
