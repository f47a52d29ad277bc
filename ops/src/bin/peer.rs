//! Helper process for multi-process tests: joins a rendezvous, builds a TCP ring (or an NCCL
//! communicator on GPU `--device`, default the rank) and runs f32 all-reduces (or all-gathers) until done or failed. Prints `ready` after its first successful call and
//! `error: …` (exit code 3) on failure, so a test can inject faults and check the messages.
//!
//! Usage: tessera-ops-peer --rendezvous ADDR --rank R --world N --secret S [--len ELEMS]
//!        [--iters K (0 = until failure)] [--timeout-ms MS] [--backend tcp|nccl] [--device D]
//!        [--op all_reduce|all_gather]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use tessera_ops::{Collective, JobAuth, JoinRequest, NcclComm, NcclConfig, Rank, ReduceOp, RingConfig, Secret, TcpRing, join};

struct Args {
    rendezvous: SocketAddr,
    rank: u32,
    world: usize,
    secret: String,
    len: usize,
    iters: u64,
    timeout: Duration,
    nccl: bool,
    device: usize,
    /// Run all-gathers (of a `len`-element output) instead of all-reduces.
    gather: bool,
}

fn parse() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| argv.iter().position(|a| a == name).and_then(|i| argv.get(i + 1)).cloned();
    let need = |name: &str| get(name).ok_or_else(|| format!("missing {name}"));
    let num = |name: &str, default: u64| get(name).map_or(Ok(default), |v| v.parse::<u64>().map_err(|e| format!("{name}: {e}")));
    Ok(Args {
        rendezvous: need("--rendezvous")?.parse().map_err(|e| format!("--rendezvous: {e}"))?,
        rank: num("--rank", u64::MAX)? as u32,
        world: num("--world", 0)? as usize,
        secret: need("--secret")?,
        len: num("--len", 1 << 20)? as usize,
        iters: num("--iters", 0)?,
        timeout: Duration::from_millis(num("--timeout-ms", 5000)?),
        nccl: match get("--backend").as_deref() {
            None | Some("tcp") => false,
            Some("nccl") => true,
            Some(other) => return Err(format!("--backend: unknown backend {other}")),
        },
        device: num("--device", num("--rank", 0)?)? as usize,
        gather: match get("--op").as_deref() {
            None | Some("all_reduce") => false,
            Some("all_gather") => true,
            Some(other) => return Err(format!("--op: unknown op {other}")),
        },
    })
}

fn run(a: &Args) -> Result<(), String> {
    let auth = JobAuth { job_id: 42, generation: 1, secret: Secret::new(a.secret.as_bytes()) };
    if a.nccl {
        let mut config = NcclConfig::new(auth, a.device);
        config.timeout = a.timeout;
        config.init_timeout = Duration::from_secs(30);
        let mut comm = NcclComm::connect(a.rendezvous, Rank(a.rank), a.world, &config).map_err(|e| e.to_string())?;
        return drive(&mut comm, a);
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let listen_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let req = JoinRequest { rank: Rank(a.rank), world: a.world, listen_addr, timeout: Duration::from_secs(30) };
    let peers = join(a.rendezvous, &auth, &req).map_err(|e| e.to_string())?;
    let mut config = RingConfig::new(auth);
    config.timeout = a.timeout;
    config.connect_timeout = Duration::from_secs(30);
    let mut ring = TcpRing::connect(listener, Rank(a.rank), &peers, config).map_err(|e| e.to_string())?;
    drive(&mut ring, a)
}

/// The all-reduce (or all-gather) loop, the same on every backend.
fn drive<C: Collective>(comm: &mut C, a: &Args) -> Result<(), String> {
    let mut buf = vec![1.0f32; a.len];
    let shard = vec![1.0f32; tessera_ops::shard_len(a.len, comm.world(), comm.rank().index())];
    let mut i = 0u64;
    while a.iters == 0 || i < a.iters {
        let r = if a.gather { comm.all_gather(&shard, &mut buf) } else { comm.all_reduce(&mut buf, ReduceOp::Avg) };
        r.map_err(|e| e.to_string())?;
        if i == 0 {
            println!("ready");
            let _ = std::io::stdout().flush();
        }
        i += 1;
    }
    println!("done");
    Ok(())
}

fn main() -> ExitCode {
    match parse().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}
