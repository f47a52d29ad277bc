//! The NCCL backend. Without a GPU (CI): constructors fail cleanly with `Unavailable`, and the
//! unique id travels through the authenticated rendezvous. With a GPU, the same `cargo test`
//! runs the conformance suite, the device APIs and abort on the real thing (no `--ignored`
//! needed, so a GPU CI runs them by default); on a host without one those tests print
//! `SKIPPED` with the reason.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tessera_ops::conformance::{self, Backend};
use tessera_ops::nccl::{self, UNIQUE_ID_BYTES, UniqueId, rendezvous_unique_id};
use tessera_ops::{
    Collective, DType, JoinRequest, NcclComm, NcclConfig, OpKind, OpsError, Rank, ReduceOp, RendezvousServer, join_with_payload,
};

/// The reason this host cannot run NCCL, printed by every GPU test it skips.
fn skip_reason() -> Option<String> {
    nccl::available().err().map(|e| e.to_string())
}

fn config(device: usize) -> NcclConfig {
    let mut c = NcclConfig::new(common::auth(), device);
    c.timeout = Duration::from_secs(30);
    c.init_timeout = Duration::from_secs(30);
    c
}

fn rendezvous(world: usize) -> (SocketAddr, std::thread::JoinHandle<tessera_ops::Result<Vec<SocketAddr>>>) {
    let server = RendezvousServer::bind("127.0.0.1:0", world, common::auth()).expect("bind");
    let addr = server.local_addr().expect("addr");
    (addr, server.spawn(Duration::from_secs(30)))
}

#[test]
fn without_a_gpu_every_constructor_returns_unavailable_naming_what_is_missing() {
    let Some(reason) = skip_reason() else {
        println!("SKIPPED: this host can run NCCL, so there is no unavailability to check");
        return;
    };
    assert!(reason.starts_with("NCCL backend unavailable: "), "{reason}");
    assert!(reason.contains("libcuda.so") || reason.contains("libnccl.so") || reason.contains("device"), "{reason}");
    let start = Instant::now();
    // No rendezvous server exists at this address: connect must fail before trying it.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let errors = [
        NcclComm::connect(nowhere, Rank(0), 1, &config(0)).err(),
        NcclComm::connect(nowhere, Rank(1), 2, &config(0)).err(),
        NcclComm::from_unique_id(UniqueId::from_bytes(&[0; UNIQUE_ID_BYTES]).unwrap(), Rank(0), 1, &config(0)).err(),
        UniqueId::new().err(),
    ];
    for e in errors {
        let e = e.expect("must fail without a GPU");
        assert!(matches!(e, OpsError::Unavailable { .. }), "{e:?}");
        assert_eq!(e.to_string(), reason);
    }
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
}

#[test]
fn the_unique_id_travels_through_the_authenticated_rendezvous() {
    // Rank 0's side stands in for `UniqueId::new` (which needs NCCL): any 128 bytes will do for
    // the transport; ranks 1 and 2 go through the NCCL backend's own receiving path.
    let world = 3;
    let (addr, served) = rendezvous(world);
    let id: Vec<u8> = (0..UNIQUE_ID_BYTES).map(|i| (255 - i) as u8).collect();
    let req = move |r: u32| JoinRequest {
        rank: Rank(r),
        world,
        listen_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        timeout: Duration::from_secs(10),
    };
    let receivers: Vec<_> =
        (1..world as u32).map(|r| std::thread::spawn(move || rendezvous_unique_id(addr, &common::auth(), &req(r)))).collect();
    join_with_payload(addr, &common::auth(), &req(0), Some(&id)).expect("rank 0");
    for t in receivers {
        assert_eq!(t.join().unwrap().expect("receiver").as_bytes().as_slice(), id.as_slice());
    }
    served.join().unwrap().expect("serve");
}

#[test]
fn a_payload_that_is_not_a_unique_id_is_a_protocol_error_from_rank_zero() {
    let (addr, served) = rendezvous(2);
    let req = move |r: u32| JoinRequest {
        rank: Rank(r),
        world: 2,
        listen_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        timeout: Duration::from_secs(10),
    };
    let receiver = std::thread::spawn(move || rendezvous_unique_id(addr, &common::auth(), &req(1)));
    join_with_payload(addr, &common::auth(), &req(0), Some(&[1, 2, 3])).expect("rank 0");
    let e = receiver.join().unwrap().unwrap_err();
    assert!(matches!(e, OpsError::Protocol { op: OpKind::Rendezvous, peer: Rank(0), .. }), "{e:?}");
    assert!(e.to_string().contains("128 bytes, got 3"), "{e}");
    served.join().unwrap().expect("serve");
}

/// One communicator per GPU, ranks on threads, joined through a real rendezvous.
struct Gpus;

impl Backend for Gpus {
    type Comm = NcclComm;

    fn launch(&self, world: usize) -> Result<Vec<NcclComm>, String> {
        let (addr, served) = rendezvous(world);
        let ranks: Vec<_> =
            (0..world).map(|r| std::thread::spawn(move || NcclComm::connect(addr, Rank(r as u32), world, &config(r)))).collect();
        let comms =
            ranks.into_iter().map(|t| t.join().map_err(|_| "connect thread panicked".to_string())?.map_err(|e| e.to_string())).collect();
        served.join().map_err(|_| "rendezvous thread panicked".to_string())?.map_err(|e| e.to_string())?;
        comms
    }
}

/// GPUs on this host (NCCL refuses two ranks on one device).
fn gpu_count() -> usize {
    cudarc::driver::CudaContext::device_count().map_or(0, |n| n as usize)
}

#[test]
fn nccl_conformance_on_the_gpus_of_this_host() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED nccl_conformance_on_the_gpus_of_this_host: {reason}");
        return;
    }
    let mut worlds = vec![1];
    if gpu_count() >= 2 {
        worlds.push(gpu_count());
    }
    println!("NCCL conformance on worlds {worlds:?}");
    conformance::run(&Gpus, &worlds, Duration::from_secs(600)).unwrap();
}

#[test]
fn device_apis_reduce_in_place_on_one_gpu() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED device_apis_reduce_in_place_on_one_gpu: {reason}");
        return;
    }
    let mut comm = Gpus.launch(1).unwrap().pop().unwrap();
    let stream = comm.stream().clone();
    let host: Vec<f32> = (0..1000).map(|i| i as f32 - 500.0).collect();
    // Safe slice API: world 1, so Sum, Max and Avg all return the input.
    let mut slice = stream.clone_htod(&host).unwrap();
    for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Avg] {
        comm.all_reduce_slice(&mut slice, op).unwrap();
        assert_eq!(stream.clone_dtoh(&slice).unwrap(), host, "{op:?}");
    }
    let mut gathered = stream.alloc_zeros::<f32>(1000).unwrap();
    comm.all_gather_slice(&slice, &mut gathered).unwrap();
    assert_eq!(stream.clone_dtoh(&gathered).unwrap(), host);
    let mut shard = stream.alloc_zeros::<i64>(3).unwrap();
    let ints = stream.clone_htod(&[5i64, -7, 9]).unwrap();
    comm.reduce_scatter_slice(&ints, &mut shard, ReduceOp::Avg).unwrap();
    assert_eq!(stream.clone_dtoh(&shard).unwrap(), [5, -7, 9]);
    // Raw API, as the trainer uses it with a tensor's data_ptr.
    let mut raw = stream.clone_htod(&host).unwrap();
    let ptr = {
        use cudarc::driver::DevicePtrMut;
        let (ptr, _sync) = raw.device_ptr_mut(&stream);
        ptr
    };
    stream.synchronize().unwrap();
    #[allow(unsafe_code)]
    // SAFETY: `raw` holds 1000 f32 on this communicator's device, is alive until after the call
    // and its upload completed (synchronized above).
    unsafe { comm.broadcast_raw(ptr, raw.len(), DType::F32, Rank(0)) }.unwrap();
    assert_eq!(stream.clone_dtoh(&raw).unwrap(), host);
    // A wrong shape is refused and poisons, like the ring.
    let mut short = stream.alloc_zeros::<f32>(2).unwrap();
    let e = comm.all_gather_slice(&slice, &mut short).unwrap_err();
    assert!(matches!(e, OpsError::InvalidArgument { op: OpKind::AllGather, .. }), "{e:?}");
    let e = comm.barrier().unwrap_err();
    assert!(matches!(e, OpsError::Poisoned { op: OpKind::Barrier, .. }), "{e:?}");
}

#[test]
fn abort_poisons_the_communicator_and_the_process_goes_on() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED abort_poisons_the_communicator_and_the_process_goes_on: {reason}");
        return;
    }
    let mut comm = Gpus.launch(1).unwrap().pop().unwrap();
    comm.barrier().unwrap();
    comm.abort_handle().abort();
    let start = Instant::now();
    let e = comm.all_reduce(&mut [1.0f32; 8], ReduceOp::Sum).unwrap_err();
    assert!(matches!(e, OpsError::Aborted { op: OpKind::AllReduce, seq: 1, rank: Rank(0) }), "{e:?}");
    let e = comm.barrier().unwrap_err();
    assert!(
        matches!(&e, OpsError::Poisoned { op: OpKind::Barrier, seq: 2, cause } if matches!(**cause, OpsError::Aborted { .. })),
        "{e:?}"
    );
    drop(comm);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    // A fresh communicator (new unique id) works in the same process.
    let mut again = Gpus.launch(1).unwrap().pop().unwrap();
    let mut x = [3i64, -4];
    again.all_reduce(&mut x, ReduceOp::Avg).unwrap();
    assert_eq!(x, [3, -4]);
}

#[test]
fn a_wrong_secret_gets_no_unique_id() {
    let (addr, served) = rendezvous(2);
    let req = move |r: u32| JoinRequest {
        rank: Rank(r),
        world: 2,
        listen_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        timeout: Duration::from_secs(10),
    };
    let intruder = tessera_ops::JobAuth { secret: tessera_ops::Secret::new(*b"guessed-secret"), ..common::auth() };
    let e = rendezvous_unique_id(addr, &intruder, &req(1)).unwrap_err();
    assert!(matches!(e, OpsError::Handshake { op: OpKind::Rendezvous, .. }), "{e:?}");
    // The legitimate ranks still complete.
    let receiver = std::thread::spawn(move || rendezvous_unique_id(addr, &common::auth(), &req(1)));
    join_with_payload(addr, &common::auth(), &req(0), Some(&[4; UNIQUE_ID_BYTES])).expect("rank 0");
    assert_eq!(receiver.join().unwrap().expect("rank 1").as_bytes(), &[4; UNIQUE_ID_BYTES]);
    served.join().unwrap().expect("serve");
}

/// A peer process (`tessera-ops-peer --backend nccl`) on GPU `rank`. `TESSERA_OPS_PEER` names
/// the binary where this test runs away from its build tree (`tools/gpu/check.sh`).
fn nccl_peer(rendezvous: SocketAddr, rank: usize, world: usize, timeout_ms: u64) -> std::process::Child {
    let exe = std::env::var_os("TESSERA_OPS_PEER").unwrap_or_else(|| env!("CARGO_BIN_EXE_tessera-ops-peer").into());
    std::process::Command::new(exe)
        .args(["--backend", "nccl", "--rendezvous", &rendezvous.to_string(), "--rank", &rank.to_string(), "--world", &world.to_string()])
        .args(["--secret", "integration-test-secret", "--len", "1000000", "--timeout-ms", &timeout_ms.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn peer")
}

#[test]
fn a_killed_peer_process_cannot_hang_the_survivor() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED a_killed_peer_process_cannot_hang_the_survivor: {reason}");
        return;
    }
    if gpu_count() < 2 {
        println!("SKIPPED a_killed_peer_process_cannot_hang_the_survivor: needs two GPUs, found {}", gpu_count());
        return;
    }
    use std::io::{BufRead, BufReader};
    // The peer binary's job identity: job 42, generation 1, the secret passed on its command line.
    let auth = tessera_ops::JobAuth { job_id: 42, generation: 1, secret: tessera_ops::Secret::new(*b"integration-test-secret") };
    let server = RendezvousServer::bind("127.0.0.1:0", 2, auth).expect("bind");
    let addr = server.local_addr().expect("addr");
    let served = server.spawn(Duration::from_secs(60));
    let mut survivor = nccl_peer(addr, 0, 2, 3000);
    let mut victim = nccl_peer(addr, 1, 2, 3000);
    let mut lines = BufReader::new(survivor.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().and_then(|l| l.ok()).as_deref(), Some("ready"), "rank 0 never got going");
    served.join().unwrap().expect("serve");
    victim.kill().expect("kill rank 1");
    let _ = victim.wait();
    // Rank 0 must give up by itself: the 3 s deadline, abort and exit, well before 30 s.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = survivor.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = survivor.kill();
            panic!("rank 0 still running 30 s after its peer died");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut survivor.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("all_reduce #"), "{stderr}");
}

#[test]
fn without_a_gpu_an_nccl_peer_process_exits_with_the_clean_error() {
    let Some(reason) = skip_reason() else {
        println!("SKIPPED: this host can run NCCL");
        return;
    };
    // It must fail before joining, so no rendezvous server is needed (nothing listens there).
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let out = nccl_peer(nowhere, 0, 1, 1000).wait_with_output().expect("peer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit code 3 is the peer's own error path: a panic would exit with 101.
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.trim(), format!("error: {reason}"));
}
