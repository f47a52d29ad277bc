//! Runs the backend-generic conformance suite on the TCP ring over loopback.

mod common;

use std::time::Duration;

use tessera_ops::conformance::{self, Backend};
use tessera_ops::{RingConfig, TcpRing};

/// Launches a ring of `world` threads on loopback with the given chunk size and transport.
struct Ring {
    chunk_bytes: usize,
    shared_memory: bool,
    /// Half size of the same-host all-gather arena (0: the ring algorithm).
    arena_bytes: usize,
}

/// The default arena size.
fn default_arena() -> usize {
    RingConfig::new(common::auth()).arena_bytes
}

impl Backend for Ring {
    type Comm = TcpRing;

    fn launch(&self, world: usize) -> Result<Vec<TcpRing>, String> {
        let mut config = common::config(self.chunk_bytes, Duration::from_secs(20));
        config.shared_memory = self.shared_memory;
        config.arena_bytes = self.arena_bytes;
        let comms = common::ring(world, &config)?;
        // The suite must exercise the transport it claims to.
        let expect = self.shared_memory && world > 1;
        if comms.iter().any(|c| c.shared_memory_links() != (expect, expect)) {
            return Err(format!("shared-memory links not as configured ({expect})"));
        }
        let arena = expect && self.arena_bytes > 0;
        if comms.iter().any(|c| c.same_host_arena() != arena) {
            return Err(format!("all-gather arena not as configured ({arena})"));
        }
        Ok(comms)
    }
}

#[test]
fn ring_conformance_default_chunks_shared_memory() {
    let chunk_bytes = RingConfig::new(common::auth()).chunk_bytes;
    conformance::run(&Ring { chunk_bytes, shared_memory: true, arena_bytes: default_arena() }, &[1, 2, 3], Duration::from_secs(120))
        .unwrap();
}

#[test]
fn ring_conformance_default_chunks_tcp() {
    let chunk_bytes = RingConfig::new(common::auth()).chunk_bytes;
    conformance::run(&Ring { chunk_bytes, shared_memory: false, arena_bytes: default_arena() }, &[2, 3], Duration::from_secs(120)).unwrap();
}

#[test]
fn ring_conformance_tiny_chunks_tcp() {
    // 40-byte chunks: every size above a few elements spans many pipeline chunks, and chunks
    // are not a multiple of every element size.
    conformance::run(&Ring { chunk_bytes: 40, shared_memory: false, arena_bytes: 0 }, &[2, 3], Duration::from_secs(120)).unwrap();
}

#[test]
fn ring_conformance_small_chunks_shared_memory_four_ranks() {
    // Many chunks per call: the slot ring of each link file wraps around many times.
    // The arena off: all-gathers take the ring through the link files too.
    conformance::run(&Ring { chunk_bytes: 4000, shared_memory: true, arena_bytes: 0 }, &[4], Duration::from_secs(120)).unwrap();
}

#[test]
fn ring_conformance_small_arena_many_rounds() {
    // 4 KiB halves: large all-gathers run in many rounds, alternating halves across calls.
    conformance::run(&Ring { chunk_bytes: 4000, shared_memory: true, arena_bytes: 4096 }, &[2, 3], Duration::from_secs(120)).unwrap();
}

#[test]
fn ranks_that_disagree_on_the_arena_all_use_the_ring_and_stay_correct() {
    use tessera_ops::{Collective, Rank};
    // Rank 1 offers an arena of another size, then (second world) none at all.
    for odd in [4096, 0] {
        let (ls, addrs) = common::listeners(3);
        let threads: Vec<_> = ls
            .into_iter()
            .enumerate()
            .map(|(r, l)| {
                let addrs = addrs.clone();
                std::thread::spawn(move || {
                    let mut config = common::config(1 << 20, Duration::from_secs(20));
                    if r == 1 {
                        config.arena_bytes = odd;
                    }
                    let mut ring = TcpRing::connect(l, Rank(r as u32), &addrs, config).unwrap();
                    let n = 100_003;
                    let own = tessera_ops::shard_range(n, 3, r);
                    let input: Vec<f32> = own.clone().map(|i| (i % 1000) as f32).collect();
                    let mut out = vec![0f32; n];
                    ring.all_gather(&input, &mut out).unwrap();
                    (ring.same_host_arena(), out.iter().enumerate().all(|(i, &x)| x == (i % 1000) as f32))
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), (false, true), "rank 1 offered {odd}");
        }
    }
}
