//! Fault injection with real processes: a rank is SIGKILLed or SIGSTOPped in the middle of a
//! stream of all-reduces (or all-gathers, which go through the same-host arena); every other rank must fail with a clear error within its deadline,
//! and no process may be left behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use tessera_ops::{JobAuth, JoinRequest, Rank, RendezvousServer, Secret, join};

const SECRET: &str = "process-test-secret";

/// The spawned ranks; dropping the group kills and reaps every child still running.
struct Group {
    children: Vec<Child>,
    /// One `ready` message per rank arrives here (from stdout reader threads).
    ready: Receiver<usize>,
}

impl Drop for Group {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Group {
    /// Spawns `world` ranks running `iters` calls of `op` (0: until failure).
    fn spawn_with(world: usize, rendezvous: SocketAddr, timeout_ms: u64, iters: u64, op: &str) -> Group {
        let (tx, ready) = mpsc::channel();
        let mut group = Group { children: Vec::new(), ready };
        for rank in 0..world {
            let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-ops-peer"))
                .args(["--rendezvous", &rendezvous.to_string(), "--rank", &rank.to_string(), "--world", &world.to_string()])
                .args([
                    "--secret",
                    SECRET,
                    "--len",
                    "262144",
                    "--timeout-ms",
                    &timeout_ms.to_string(),
                    "--iters",
                    &iters.to_string(),
                    "--op",
                    op,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn peer");
            let stdout = child.stdout.take().expect("stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line == "ready" {
                        let _ = tx.send(rank);
                    }
                }
            });
            group.children.push(child);
        }
        group
    }

    fn wait_ready(&mut self, world: usize) {
        for _ in 0..world {
            if self.ready.recv_timeout(Duration::from_secs(60)).is_err() {
                // Say why: kill everyone and show what each rank reported.
                let mut report = String::new();
                for (rank, c) in self.children.iter_mut().enumerate() {
                    let _ = c.kill();
                    let status = c.wait();
                    let mut err = String::new();
                    if let Some(mut s) = c.stderr.take() {
                        let _ = s.read_to_string(&mut err);
                    }
                    report.push_str(&format!("rank {rank} ({status:?}): {}\n", err.trim()));
                }
                panic!("not every rank completed a first all-reduce within 60 s:\n{report}");
            }
        }
    }

    /// Waits (bounded) for rank `rank` to exit; returns its exit code and stderr.
    fn wait_exit(&mut self, rank: usize, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        let child = &mut self.children[rank];
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                return (status.code(), err);
            }
            assert!(Instant::now() < deadline, "rank {rank} still running after {within:?}: it hangs");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rendezvous(world: usize) -> SocketAddr {
    rendezvous_with_table(world).0
}

fn rendezvous_with_table(world: usize) -> (SocketAddr, std::thread::JoinHandle<tessera_ops::Result<Vec<SocketAddr>>>) {
    let server = RendezvousServer::bind("127.0.0.1:0", world, auth(SECRET)).expect("bind rendezvous");
    let addr = server.local_addr().expect("addr");
    // serve returns by itself once everyone joined or after its timeout.
    (addr, server.spawn(Duration::from_secs(60)))
}

fn auth(secret: &str) -> JobAuth {
    JobAuth { job_id: 42, generation: 1, secret: Secret::new(secret.as_bytes()) }
}

/// No link file of the given processes is left in /dev/shm (they are unlinked once opened).
fn assert_no_shm_files(pids: &[u32]) {
    let names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    for pid in pids {
        let prefix = format!("tessera-ops-{pid}-");
        assert!(!names.iter().any(|n| n.starts_with(&prefix)), "leftover shared-memory file of pid {pid}");
    }
}

#[test]
fn strays_at_the_rendezvous_and_ring_ports_do_not_disturb_the_job() {
    let world = 3;
    let (addr, served) = rendezvous_with_table(world);
    // Before the job: a random client and a client with the wrong secret.
    let mut garbage = TcpStream::connect(addr).expect("connect");
    garbage.write_all(b"\x00\x01garbage").expect("write");
    let fake = "127.0.0.1:9".parse().expect("addr");
    let req = JoinRequest { rank: Rank(0), world, listen_addr: fake, timeout: Duration::from_secs(5) };
    let refused = join(addr, &auth("wrong secret"), &req).expect_err("wrong secret must be refused");
    assert!(refused.to_string().contains("handshake"), "{refused}");

    let mut group = Group::spawn_with(world, addr, 10_000, 200, "all_gather");
    let table = served.join().expect("rendezvous thread").expect("rendezvous");
    // While the ranks build their ring and run: strays at every ring port.
    for ring_addr in &table {
        if let Ok(mut s) = TcpStream::connect(ring_addr) {
            let _ = s.write_all(&[0xAB; 100]);
        }
        let _ = join(*ring_addr, &auth("wrong secret"), &req);
    }
    for rank in 0..world {
        let (code, err) = group.wait_exit(rank, Duration::from_secs(60));
        assert_eq!(code, Some(0), "rank {rank} stderr: {err}");
    }
    let pids: Vec<u32> = group.children.iter().map(Child::id).collect();
    assert_no_shm_files(&pids);
}

#[test]
fn killed_rank_makes_the_others_fail_promptly() {
    for op in ["all_reduce", "all_gather"] {
        killed_rank_during(op);
    }
}

fn killed_rank_during(op: &str) {
    let world = 3;
    // A long deadline: the survivors must notice the dead peer through the closed sockets, not
    // through the deadline.
    let mut group = Group::spawn_with(world, rendezvous(world), 30_000, 0, op);
    group.wait_ready(world);
    let start = Instant::now();
    group.children[1].kill().expect("SIGKILL rank 1");
    for rank in [0, 2] {
        let (code, err) = group.wait_exit(rank, Duration::from_secs(10));
        eprintln!("rank {rank} after {:?}: {}", start.elapsed(), err.trim());
        assert_eq!(code, Some(3), "rank {rank} stderr: {err}");
        assert!(err.contains(&format!("{op} #")) && err.contains("rank "), "{op}: rank {rank}: {err}");
    }
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    let pids: Vec<u32> = group.children.iter().map(Child::id).collect();
    drop(group);
    assert_no_shm_files(&pids);
}

#[test]
fn stopped_rank_makes_the_others_time_out() {
    for op in ["all_reduce", "all_gather"] {
        stopped_rank_during(op);
    }
}

fn stopped_rank_during(op: &str) {
    let world = 3;
    let timeout = Duration::from_millis(1500);
    let mut group = Group::spawn_with(world, rendezvous(world), timeout.as_millis() as u64, 0, op);
    group.wait_ready(world);
    let pid = group.children[2].id().to_string();
    let status = Command::new("kill").args(["-STOP", &pid]).status().expect("run kill");
    assert!(status.success());
    let start = Instant::now();
    for rank in [0, 1] {
        let (code, err) = group.wait_exit(rank, timeout + Duration::from_secs(10));
        eprintln!("rank {rank} after {:?}: {}", start.elapsed(), err.trim());
        assert_eq!(code, Some(3), "rank {rank} stderr: {err}");
        assert!(err.contains(&format!("{op} #")) && err.contains("rank "), "{op}: rank {rank}: {err}");
    }
    // The one whose neighbour is stopped times out; the other may learn it from closed sockets.
    assert!(start.elapsed() < timeout + Duration::from_secs(10));
    // Drop kills (SIGKILL also ends a stopped process) and reaps rank 2.
}
