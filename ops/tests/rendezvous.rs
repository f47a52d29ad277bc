//! The rendezvous payload (how the NCCL unique id travels): rank 0's bytes reach every rank, plain
//! `join` clients keep the original exchange, and the handshake still refuses a wrong secret.

mod common;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tessera_ops::rendezvous::MAX_PAYLOAD;
use tessera_ops::{JobAuth, JoinRequest, OpsError, Rank, RendezvousServer, Secret, join, join_with_payload};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A server for `world` ranks on a loopback port 0, serving on its own thread.
fn server(world: usize) -> (SocketAddr, JoinHandle<tessera_ops::Result<Vec<SocketAddr>>>) {
    let server = RendezvousServer::bind("127.0.0.1:0", world, common::auth()).expect("bind");
    let addr = server.local_addr().expect("addr");
    (addr, server.spawn(TIMEOUT))
}

/// Each rank's announced address: distinct, so the table's order is checkable.
fn listen(rank: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000 + rank as u16))
}

fn request(rank: usize, world: usize) -> JoinRequest {
    JoinRequest { rank: Rank(rank as u32), world, listen_addr: listen(rank), timeout: TIMEOUT }
}

/// Runs one client thread per rank; rank 0 contributes `payload`.
fn exchange(world: usize, payload: Vec<u8>) -> Vec<tessera_ops::Result<(Vec<SocketAddr>, Vec<u8>)>> {
    let (addr, served) = server(world);
    let clients: Vec<_> = (0..world)
        .map(|r| {
            let payload = payload.clone();
            std::thread::spawn(move || {
                let own = (r == 0).then_some(payload.as_slice());
                join_with_payload(addr, &common::auth(), &request(r, world), own)
            })
        })
        .collect();
    let results = clients.into_iter().map(|t| t.join().expect("client thread")).collect();
    served.join().expect("server thread").expect("serve");
    results
}

#[test]
fn rank_zeros_payload_reaches_every_rank_for_worlds_one_to_three() {
    for world in 1..=3 {
        // 128 bytes, the size of an NCCL unique id, with every byte value class.
        let payload: Vec<u8> = (0..128).map(|i| (i * 97 + world) as u8).collect();
        for (rank, result) in exchange(world, payload.clone()).into_iter().enumerate() {
            let (table, got) = result.unwrap_or_else(|e| panic!("world {world} rank {rank}: {e}"));
            assert_eq!(table, (0..world).map(listen).collect::<Vec<_>>(), "world {world} rank {rank}");
            assert_eq!(got, payload, "world {world} rank {rank}");
        }
    }
}

#[test]
fn empty_and_largest_payloads_are_carried() {
    for payload in [Vec::new(), vec![0xa5; MAX_PAYLOAD]] {
        for result in exchange(2, payload.clone()) {
            assert_eq!(result.expect("join").1, payload);
        }
    }
}

#[test]
fn plain_join_and_payload_join_share_one_rendezvous() {
    // Rank 0 contributes; rank 1 is a plain (TCP ring) client that never asked for the payload
    // and must see the original exchange; rank 2 asks for it.
    let (addr, served) = server(3);
    let payload = vec![7u8; 128];
    let p0 = payload.clone();
    let r0 = std::thread::spawn(move || join_with_payload(addr, &common::auth(), &request(0, 3), Some(&p0)));
    let r1 = std::thread::spawn(move || join(addr, &common::auth(), &request(1, 3)));
    let r2 = std::thread::spawn(move || join_with_payload(addr, &common::auth(), &request(2, 3), None));
    let table: Vec<SocketAddr> = (0..3).map(listen).collect();
    assert_eq!(r0.join().unwrap().unwrap(), (table.clone(), payload.clone()));
    assert_eq!(r1.join().unwrap().unwrap(), table);
    assert_eq!(r2.join().unwrap().unwrap(), (table.clone(), payload));
    assert_eq!(served.join().unwrap().unwrap(), table);
}

#[test]
fn payload_from_a_plain_rank_zero_is_empty() {
    let (addr, served) = server(2);
    let r0 = std::thread::spawn(move || join(addr, &common::auth(), &request(0, 2)));
    let r1 = std::thread::spawn(move || join_with_payload(addr, &common::auth(), &request(1, 2), None));
    r0.join().unwrap().unwrap();
    assert_eq!(r1.join().unwrap().unwrap().1, Vec::<u8>::new());
    served.join().unwrap().unwrap();
}

#[test]
fn wrong_secret_is_refused_and_the_job_still_completes() {
    let (addr, served) = server(2);
    let intruder = JobAuth { secret: Secret::new(*b"not-the-job-secret"), ..common::auth() };
    let start = Instant::now();
    let refused = join_with_payload(addr, &intruder, &request(1, 2), None).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(matches!(refused, OpsError::Handshake { op: tessera_ops::OpKind::Rendezvous, .. }), "{refused:?}");
    // The intruder took no slot: the legitimate ranks still meet and get the payload.
    let payload = vec![1u8, 2, 3];
    let p0 = payload.clone();
    let r0 = std::thread::spawn(move || join_with_payload(addr, &common::auth(), &request(0, 2), Some(&p0)));
    let r1 = join_with_payload(addr, &common::auth(), &request(1, 2), None).unwrap();
    assert_eq!(r1.1, payload);
    r0.join().unwrap().unwrap();
    served.join().unwrap().unwrap();
}

#[test]
fn only_rank_zero_contributes_and_within_the_size_bound() {
    // Both refusals happen before any connection, so no server is needed.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let e = join_with_payload(nowhere, &common::auth(), &request(1, 2), Some(&[1])).unwrap_err();
    assert!(e.to_string().contains("only rank 0"), "{e}");
    let big = vec![0u8; MAX_PAYLOAD + 1];
    let e = join_with_payload(nowhere, &common::auth(), &request(0, 2), Some(&big)).unwrap_err();
    assert!(e.to_string().contains("exceeds"), "{e}");
}

#[test]
fn a_missing_rank_times_out_the_payload_exchange() {
    let server = RendezvousServer::bind("127.0.0.1:0", 2, common::auth()).expect("bind");
    let addr = server.local_addr().expect("addr");
    let served = server.spawn(Duration::from_millis(500));
    let req = JoinRequest { timeout: Duration::from_millis(700), ..request(0, 2) };
    let start = Instant::now();
    let e = join_with_payload(addr, &common::auth(), &req, Some(&[9; 128])).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    assert!(matches!(e, OpsError::Unreachable { .. }), "{e:?}");
    let e = served.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("ranks 1 did not join"), "{e}");
}
