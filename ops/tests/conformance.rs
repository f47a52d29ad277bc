//! Runs the backend-generic conformance suite on the TCP ring over loopback.

mod common;

use std::time::Duration;

use tessera_ops::conformance::{self, Backend};
use tessera_ops::{RingConfig, TcpRing};

/// Launches a ring of `world` threads on loopback with the given chunk size and transport.
struct Ring {
    chunk_bytes: usize,
    shared_memory: bool,
}

impl Backend for Ring {
    type Comm = TcpRing;

    fn launch(&self, world: usize) -> Result<Vec<TcpRing>, String> {
        let mut config = common::config(self.chunk_bytes, Duration::from_secs(20));
        config.shared_memory = self.shared_memory;
        let comms = common::ring(world, &config)?;
        // The suite must exercise the transport it claims to.
        let expect = self.shared_memory && world > 1;
        if comms.iter().any(|c| c.shared_memory_links() != (expect, expect)) {
            return Err(format!("shared-memory links not as configured ({expect})"));
        }
        Ok(comms)
    }
}

#[test]
fn ring_conformance_default_chunks_shared_memory() {
    let chunk_bytes = RingConfig::new(common::auth()).chunk_bytes;
    conformance::run(&Ring { chunk_bytes, shared_memory: true }, &[1, 2, 3], Duration::from_secs(120)).unwrap();
}

#[test]
fn ring_conformance_default_chunks_tcp() {
    let chunk_bytes = RingConfig::new(common::auth()).chunk_bytes;
    conformance::run(&Ring { chunk_bytes, shared_memory: false }, &[2, 3], Duration::from_secs(120)).unwrap();
}

#[test]
fn ring_conformance_tiny_chunks_tcp() {
    // 40-byte chunks: every size above a few elements spans many pipeline chunks, and chunks
    // are not a multiple of every element size.
    conformance::run(&Ring { chunk_bytes: 40, shared_memory: false }, &[2, 3], Duration::from_secs(120)).unwrap();
}

#[test]
fn ring_conformance_small_chunks_shared_memory_four_ranks() {
    // Many chunks per call: the slot ring of each link file wraps around many times.
    conformance::run(&Ring { chunk_bytes: 4000, shared_memory: true }, &[4], Duration::from_secs(120)).unwrap();
}
