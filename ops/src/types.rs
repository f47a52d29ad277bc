//! Small closed sets and ids shared by every backend: ranks, reduce ops, dtypes and op names.

use std::fmt;

/// A process's position in a communicator, `0..world`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank(pub u32);

impl Rank {
    /// The rank as an index into per-rank tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How contributions from the ranks are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise sum divided by the world size (integers: truncating division).
    Avg,
    /// Element-wise maximum.
    Max,
}

/// Element types the collectives move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16, reduced through f32 per element.
    BF16,
    /// IEEE binary16, reduced through f32 per element.
    F16,
    /// Signed 64-bit integer.
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::I64 => 8,
        }
    }

    /// Wire code of the dtype (carried in every frame header).
    pub fn code(self) -> u8 {
        match self {
            DType::F32 => 1,
            DType::BF16 => 2,
            DType::F16 => 3,
            DType::I64 => 4,
        }
    }
}

/// Which operation a communicator was performing, for errors and frame headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `Collective::all_reduce`.
    AllReduce,
    /// `Collective::reduce_scatter`.
    ReduceScatter,
    /// `Collective::all_gather`.
    AllGather,
    /// `Collective::broadcast`.
    Broadcast,
    /// `Collective::barrier`.
    Barrier,
    /// Building the ring: connecting to neighbours and the authenticated handshake.
    Connect,
    /// Exchanging listen addresses through the rendezvous server.
    Rendezvous,
}

impl OpKind {
    /// Wire code of the op (carried in every frame header).
    pub fn code(self) -> u8 {
        match self {
            OpKind::AllReduce => 1,
            OpKind::ReduceScatter => 2,
            OpKind::AllGather => 3,
            OpKind::Broadcast => 4,
            OpKind::Barrier => 5,
            OpKind::Connect => 6,
            OpKind::Rendezvous => 7,
        }
    }

    /// The op of a wire code (`None` for a code no version of [`Self::code`] produces).
    pub fn from_code(code: u8) -> Option<Self> {
        [Self::AllReduce, Self::ReduceScatter, Self::AllGather, Self::Broadcast, Self::Barrier, Self::Connect, Self::Rendezvous]
            .into_iter()
            .find(|op| op.code() == code)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::AllReduce => "all_reduce",
            OpKind::ReduceScatter => "reduce_scatter",
            OpKind::AllGather => "all_gather",
            OpKind::Broadcast => "broadcast",
            OpKind::Barrier => "barrier",
            OpKind::Connect => "connect",
            OpKind::Rendezvous => "rendezvous",
        })
    }
}
