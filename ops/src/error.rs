//! The crate's one error type. Every variant raised during a collective names the op, the call's
//! sequence number (`#seq`, counted per communicator from 0) and the peer rank involved.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::types::{OpKind, Rank};

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, OpsError>;

/// Everything that can go wrong in the data plane.
///
/// `Clone` so that a poisoned communicator can hand the original failure to every later call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpsError {
    /// The call's deadline passed while waiting on a peer.
    #[error("{op} #{seq} timed out after {after:?} waiting for rank {peer}")]
    Timeout {
        /// The op that timed out.
        op: OpKind,
        /// Sequence number of the call.
        seq: u64,
        /// The neighbour we were blocked on.
        peer: Rank,
        /// The configured deadline.
        after: Duration,
    },
    /// A socket operation with a peer failed (reset, broken pipe, ...).
    #[error("{op} #{seq}: connection with rank {peer} failed: {source}")]
    Io {
        /// The op in progress.
        op: OpKind,
        /// Sequence number of the call.
        seq: u64,
        /// The neighbour on the failing connection.
        peer: Rank,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The peer closed its connection (it exited or its communicator failed).
    #[error("{op} #{seq}: rank {peer} closed the connection")]
    PeerClosed {
        /// The op in progress.
        op: OpKind,
        /// Sequence number of the call.
        seq: u64,
        /// The neighbour that went away.
        peer: Rank,
    },
    /// A peer sent bytes that do not follow the protocol (wrong op, sequence, length, ...).
    #[error("{op} #{seq}: protocol violation from rank {peer}: {detail}")]
    Protocol {
        /// The op in progress.
        op: OpKind,
        /// Sequence number of the call.
        seq: u64,
        /// The neighbour that sent the bad frame.
        peer: Rank,
        /// What was wrong.
        detail: String,
    },
    /// `AbortHandle::abort` was called.
    #[error("{op} #{seq} aborted on rank {rank}")]
    Aborted {
        /// The op in progress (or attempted) when the abort was seen.
        op: OpKind,
        /// Sequence number of the call.
        seq: u64,
        /// This process's rank.
        rank: Rank,
    },
    /// The communicator failed earlier; it refuses every later call with the original failure.
    #[error("{op} #{seq} refused: communicator unusable since: {cause}")]
    Poisoned {
        /// The refused op.
        op: OpKind,
        /// Sequence number the refused call would have had.
        seq: u64,
        /// The failure that poisoned the communicator.
        cause: Box<OpsError>,
    },
    /// The caller passed buffers or arguments that do not fit the op.
    #[error("{op} #{seq} on rank {rank}: invalid argument: {detail}")]
    InvalidArgument {
        /// The op called.
        op: OpKind,
        /// Sequence number of the call.
        seq: u64,
        /// This process's rank.
        rank: Rank,
        /// What is wrong.
        detail: String,
    },
    /// Could not establish a connection to a peer (ring neighbour or rendezvous server).
    #[error("{op}: cannot reach rank {peer} at {addr}: {detail}")]
    Unreachable {
        /// `Connect` or `Rendezvous`.
        op: OpKind,
        /// The peer we tried to reach (the rendezvous server is reported as the world size).
        peer: Rank,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        detail: String,
    },
    /// Authentication or identity check failed (wrong secret, job, generation, rank or world).
    #[error("{op}: handshake with {addr} (expected rank {peer}) refused: {detail}")]
    Handshake {
        /// `Connect` or `Rendezvous`.
        op: OpKind,
        /// The rank we expected on the other side.
        peer: Rank,
        /// The remote address.
        addr: SocketAddr,
        /// Why it was refused.
        detail: String,
    },
    /// A backend cannot run on this machine (no CUDA driver, no NCCL library, no device).
    #[error("NCCL backend unavailable: {what}; {hint}")]
    Unavailable {
        /// What is missing.
        what: String,
        /// How to make it available.
        hint: String,
    },
    /// NCCL reported a failure (a peer died or is unreachable, a CUDA error, misuse, ...); NCCL
    /// does not say which peer.
    #[error("{op} #{seq} on rank {rank}: NCCL {code}: {detail}")]
    Nccl {
        /// The op in progress (`Connect` while building the communicator).
        op: OpKind,
        /// Sequence number of the call.
        seq: u64,
        /// This process's rank.
        rank: Rank,
        /// The `ncclResult_t` name, e.g. `ncclRemoteError`.
        code: String,
        /// NCCL's own message (`ncclGetLastError`) and what we were doing.
        detail: String,
    },
    /// A CUDA driver call failed (context, stream, copy or event).
    #[error("{op} #{seq} on rank {rank}: CUDA error: {detail}")]
    Device {
        /// The op in progress.
        op: OpKind,
        /// Sequence number of the call.
        seq: u64,
        /// This process's rank.
        rank: Rank,
        /// The driver error and what we were doing.
        detail: String,
    },
    /// A device collective missed its deadline; unlike [`OpsError::Timeout`] no peer is named,
    /// because NCCL does not report which rank is missing.
    #[error("{op} #{seq} on rank {rank} did not complete within {after:?} (a rank is missing, stalled or dead; NCCL does not say which)")]
    Stalled {
        /// The op that stalled.
        op: OpKind,
        /// Sequence number of the call.
        seq: u64,
        /// This process's rank.
        rank: Rank,
        /// The configured deadline.
        after: Duration,
    },
    /// Local setup failure (binding, invalid configuration) not tied to a peer.
    #[error("{op} on rank {rank}: {detail}")]
    Setup {
        /// `Connect` or `Rendezvous`.
        op: OpKind,
        /// This process's rank.
        rank: Rank,
        /// What failed.
        detail: String,
    },
}
