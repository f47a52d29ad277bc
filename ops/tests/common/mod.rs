//! Shared helpers for the integration tests: in-process rings on loopback.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tessera_ops::{JobAuth, Rank, RingConfig, Secret, TcpRing};

/// The job identity used by the tests.
pub fn auth() -> JobAuth {
    JobAuth { job_id: 1, generation: 1, secret: Secret::new(*b"integration-test-secret") }
}

/// A config with short, test-sized deadlines.
pub fn config(chunk_bytes: usize, timeout: Duration) -> RingConfig {
    let mut c = RingConfig::new(auth());
    c.timeout = timeout;
    c.connect_timeout = Duration::from_secs(10);
    c.handshake_timeout = Duration::from_millis(500);
    c.chunk_bytes = chunk_bytes;
    c
}

/// Binds `world` loopback listeners on port 0.
pub fn listeners(world: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let ls: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let addrs = ls.iter().map(|l| l.local_addr().expect("addr")).collect();
    (ls, addrs)
}

/// Builds a ring of `world` communicators, one connect thread per rank.
pub fn ring(world: usize, config: &RingConfig) -> Result<Vec<TcpRing>, String> {
    let (ls, addrs) = listeners(world);
    let threads: Vec<_> = ls
        .into_iter()
        .enumerate()
        .map(|(r, l)| {
            let (addrs, config) = (addrs.clone(), config.clone());
            std::thread::spawn(move || TcpRing::connect(l, Rank(r as u32), &addrs, config))
        })
        .collect();
    threads.into_iter().map(|t| t.join().map_err(|_| "connect thread panicked".to_string())?.map_err(|e| e.to_string())).collect()
}
