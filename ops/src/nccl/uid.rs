//! The NCCL unique id: created by rank 0 and carried to every rank through the same
//! authenticated rendezvous the TCP ring uses, as the rendezvous payload.

use std::net::SocketAddr;

use cudarc::nccl::sys::ncclUniqueId;

use crate::auth::JobAuth;
use crate::error::{OpsError, Result};
use crate::rendezvous::{JoinRequest, join_with_payload};
use crate::types::{OpKind, Rank};

use super::load;

/// Bytes in an NCCL unique id (`NCCL_UNIQUE_ID_BYTES`).
pub const UNIQUE_ID_BYTES: usize = 128;

/// An NCCL unique id; whoever holds it can join the communicator, so it only travels behind the
/// rendezvous handshake and is never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UniqueId([u8; UNIQUE_ID_BYTES]);

impl UniqueId {
    /// Asks NCCL for a fresh id (rank 0 only); starts NCCL's bootstrap listener in this process.
    pub fn new() -> Result<Self> {
        load::available()?;
        let id = load::guarded("ncclGetUniqueId", cudarc::nccl::result::get_uniqueid)?.map_err(|e| OpsError::Nccl {
            op: OpKind::Connect,
            seq: 0,
            rank: Rank(0),
            code: super::mapping::result_name(e.0).into(),
            detail: "ncclGetUniqueId failed".into(),
        })?;
        Ok(UniqueId(id.internal.map(|c| c as u8)))
    }

    /// Rebuilds an id from the bytes rank 0 sent; anything but 128 bytes is refused.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        <[u8; UNIQUE_ID_BYTES]>::try_from(bytes)
            .map(UniqueId)
            .map_err(|_| format!("an NCCL unique id has {UNIQUE_ID_BYTES} bytes, got {}", bytes.len()))
    }

    /// The raw bytes, as sent through the rendezvous.
    pub fn as_bytes(&self) -> &[u8; UNIQUE_ID_BYTES] {
        &self.0
    }

    /// The id in NCCL's C layout.
    pub(crate) fn to_sys(self) -> ncclUniqueId {
        ncclUniqueId { internal: self.0.map(|b| b as std::ffi::c_char) }
    }
}

impl std::fmt::Debug for UniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UniqueId(..)")
    }
}

/// Rank 0 creates an id and contributes it to the rendezvous at `server`; every other rank
/// receives it. `req.listen_addr` is carried in the address table as usual (NCCL itself needs
/// none: pass the TCP ring's listener when both run, or any placeholder).
pub fn rendezvous_unique_id(server: SocketAddr, auth: &JobAuth, req: &JoinRequest) -> Result<UniqueId> {
    let own = if req.rank == Rank(0) { Some(UniqueId::new()?) } else { None };
    let (_, payload) = join_with_payload(server, auth, req, own.as_ref().map(|id| id.as_bytes().as_slice()))?;
    UniqueId::from_bytes(&payload).map_err(|detail| OpsError::Protocol {
        op: OpKind::Rendezvous,
        seq: 0,
        peer: Rank(0),
        detail: format!("rank 0's rendezvous payload is not an NCCL unique id: {detail}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_bytes_and_c_layout() {
        let bytes: Vec<u8> = (0..UNIQUE_ID_BYTES).map(|i| (i * 37 % 256) as u8).collect();
        let id = UniqueId::from_bytes(&bytes).unwrap();
        assert_eq!(id.as_bytes().as_slice(), bytes.as_slice());
        let back = id.to_sys().internal.map(|c| c as u8);
        assert_eq!(back.as_slice(), bytes.as_slice());
        assert!(UniqueId::from_bytes(&bytes[..127]).unwrap_err().contains("got 127"));
        assert_eq!(format!("{id:?}"), "UniqueId(..)");
    }
}
