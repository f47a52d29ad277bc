//! Runs the backend-generic conformance suite on the TCP ring over loopback.

use std::net::TcpListener;
use std::time::Duration;

use tessera_ops::conformance::{self, Backend};
use tessera_ops::{JobAuth, Rank, RingConfig, Secret, TcpRing};

/// Launches a ring of `world` threads on loopback with the given chunk size.
struct Ring {
    chunk_bytes: usize,
}

impl Backend for Ring {
    type Comm = TcpRing;

    fn launch(&self, world: usize) -> Result<Vec<TcpRing>, String> {
        let listeners: Vec<TcpListener> =
            (0..world).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
        let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
        let mut config = RingConfig::new(JobAuth { job_id: 1, generation: 1, secret: Secret::new(*b"conformance-secret") });
        config.timeout = Duration::from_secs(20);
        config.connect_timeout = Duration::from_secs(10);
        config.chunk_bytes = self.chunk_bytes;
        let threads: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(r, l)| {
                let (addrs, config) = (addrs.clone(), config.clone());
                std::thread::spawn(move || TcpRing::connect(l, Rank(r as u32), &addrs, config))
            })
            .collect();
        threads.into_iter().map(|t| t.join().map_err(|_| "connect thread panicked".to_string())?.map_err(|e| e.to_string())).collect()
    }
}

#[test]
fn ring_conformance_default_chunks() {
    conformance::run(
        &Ring { chunk_bytes: RingConfig::new(JobAuth { job_id: 0, generation: 0, secret: Secret::new(*b"x") }).chunk_bytes },
        &[1, 2, 3],
        Duration::from_secs(120),
    )
    .unwrap();
}

#[test]
fn ring_conformance_tiny_chunks() {
    // 40-byte chunks: every size above a few elements spans many pipeline chunks, and chunks
    // are not a multiple of every element size.
    conformance::run(&Ring { chunk_bytes: 40 }, &[2, 3], Duration::from_secs(120)).unwrap();
}

#[test]
fn ring_conformance_four_ranks() {
    conformance::run(&Ring { chunk_bytes: 4096 }, &[4], Duration::from_secs(120)).unwrap();
}
