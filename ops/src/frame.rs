//! Data frames on a ring link: a fixed 24-byte header before every chunk of elements.
//!
//! Header (little-endian): magic `u32` ("TSRF"), op code `u8`, dtype code `u8`, step `u16`,
//! call sequence number `u64`, payload length in bytes `u64`. Both ends derive the expected
//! header of every frame from the call itself, so any mismatch (a rank that issued a different
//! op, dtype, length or call order) is caught as a protocol error instead of corrupting data.

use std::io::{self, Read};

use crate::types::{DType, OpKind};

/// Bytes in a frame header.
pub(crate) const HEADER_LEN: usize = 24;
const MAGIC: u32 = u32::from_le_bytes(*b"TSRF");

/// What identifies a frame; the receiver compares the decoded header against the one it expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The collective the frame belongs to.
    pub op: OpKind,
    /// Element type of the payload.
    pub dtype: DType,
    /// Ring step within the call (sender's numbering, identical on both ends).
    pub step: u16,
    /// Call sequence number.
    pub seq: u64,
    /// Payload bytes following the header.
    pub len: u64,
}

impl Header {
    /// Serialises the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.op.code();
        b[5] = self.dtype.code();
        b[6..8].copy_from_slice(&self.step.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Compares raw header bytes against `self`; the error says which field differs.
    pub fn check(&self, raw: &[u8; HEADER_LEN]) -> Result<(), String> {
        let want = self.encode();
        if raw == &want {
            return Ok(());
        }
        if raw[0..4] == want[0..4] && raw[4] != want[4] {
            // The likeliest desync (ranks calling different collectives): say which.
            let theirs = OpKind::from_code(raw[4]).map_or(format!("unknown op code {}", raw[4]), |op| op.to_string());
            return Err(format!("the peer called {theirs} where this rank called {} (mismatched call order)", self.op));
        }
        let field = |r: std::ops::Range<usize>| (le(&raw[r.clone()]), le(&want[r]));
        let (what, got, expected) = if raw[0..4] != want[0..4] {
            ("magic", field(0..4).0, field(0..4).1)
        } else if raw[5] != want[5] {
            ("dtype code", u64::from(raw[5]), u64::from(want[5]))
        } else if raw[8..16] != want[8..16] {
            ("sequence number", field(8..16).0, field(8..16).1)
        } else if raw[6..8] != want[6..8] {
            ("step", field(6..8).0, field(6..8).1)
        } else {
            ("payload length", field(16..24).0, field(16..24).1)
        };
        Err(format!("frame {what} is {got}, expected {expected} (mismatched call on the peer?)"))
    }
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

/// Reads one header from `r`.
pub(crate) fn read_header(mut r: impl Read) -> io::Result<[u8; HEADER_LEN]> {
    let mut b = [0u8; HEADER_LEN];
    r.read_exact(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatches_are_named() {
        let h = Header { op: OpKind::AllReduce, dtype: DType::F32, step: 3, seq: 9, len: 400 };
        assert!(h.check(&h.encode()).is_ok());
        let other = Header { seq: 10, ..h }.encode();
        assert!(h.check(&other).unwrap_err().contains("sequence number is 10, expected 9"));
        let other = Header { op: OpKind::Broadcast, ..h }.encode();
        assert_eq!(h.check(&other).unwrap_err(), "the peer called broadcast where this rank called all_reduce (mismatched call order)");
        let mut unknown = h.encode();
        unknown[4] = 99;
        assert!(h.check(&unknown).unwrap_err().contains("unknown op code 99"));
        let other = Header { len: 8, ..h }.encode();
        assert!(h.check(&other).unwrap_err().contains("payload length is 8, expected 400"));
    }
}
