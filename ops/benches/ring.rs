//! Bus bandwidth of the TCP ring over loopback, in real processes, next to PyTorch Gloo.
//!
//! `cargo bench -p tessera-ops --bench ring [-- --worlds 2,3 --sizes 1K,...,256M --iters 10
//!  --ops all_reduce,reduce_scatter,all_gather --arena 8M (0: all-gather on the ring) --gloo FILE]`
//!
//! Conventions follow nccl-tests (and /work/shared/peers/gloo_allreduce.py): S is the full f32
//! tensor in bytes; all-reduce busbw = S/t·2(n-1)/n, reduce-scatter and all-gather busbw =
//! S/t·(n-1)/n. Each timed iteration follows a barrier; its time is the max over ranks; we report
//! the median. Below 16 MiB we also report back-to-back ops (K = min(100, 16 MiB/S) after one
//! barrier, per-op average), where one op is shorter than the barrier-exit skew.
//! Gloo figures are read from the peer's results file (run it in the same session).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_ops::{Collective, JobAuth, JoinRequest, Rank, ReduceOp, RendezvousServer, RingConfig, Secret, TcpRing, join, shard_len};

const ROLE_ENV: &str = "TESSERA_OPS_BENCH_ROLE";
const GLOO_RESULTS: &str = "/work/shared/peers/results/gloo.json";
const OPS: [&str; 3] = ["all_reduce", "reduce_scatter", "all_gather"];

fn auth() -> JobAuth {
    JobAuth { job_id: 7, generation: 1, secret: Secret::new(*b"bench-secret") }
}

fn parse_size(s: &str) -> usize {
    let s = s.trim().to_uppercase();
    let (num, mult) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.parse::<usize>().expect("size") * mult
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Busbw factor for `op` on `n` ranks.
fn factor(op: &str, n: usize) -> f64 {
    let n = n as f64;
    if op == "all_reduce" { 2.0 * (n - 1.0) / n } else { (n - 1.0) / n }
}

struct Opts {
    worlds: Vec<usize>,
    sizes: Vec<usize>,
    iters: usize,
    chunk_bytes: usize,
    arena_bytes: usize,
    ops: Vec<String>,
    gloo: String,
}

fn opts() -> Opts {
    let argv: Vec<String> = std::env::args().collect();
    let get = |name: &str| argv.iter().position(|a| a == name).and_then(|i| argv.get(i + 1)).cloned();
    let defaults = RingConfig::new(auth());
    Opts {
        worlds: get("--worlds").unwrap_or("2,3".into()).split(',').map(|w| w.parse().expect("world")).collect(),
        sizes: get("--sizes").unwrap_or("1K,4K,16K,64K,256K,1M,4M,16M,64M,256M".into()).split(',').map(parse_size).collect(),
        iters: get("--iters").map_or(10, |i| i.parse().expect("iters")),
        chunk_bytes: get("--chunk").map_or(defaults.chunk_bytes, |c| parse_size(&c)),
        arena_bytes: get("--arena").map_or(defaults.arena_bytes, |c| parse_size(&c)),
        ops: get("--ops").map_or(OPS.map(String::from).to_vec(), |o| o.split(',').map(String::from).collect()),
        gloo: get("--gloo").unwrap_or(GLOO_RESULTS.into()),
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        worker(&role);
        return;
    }
    let o = opts();
    let memcpy = memcpy_gbps();
    println!("single-thread memcpy (256 MiB copy_from_slice, median of 10): {memcpy:.2} GB/s");
    let gloo = gloo_figures(&o.gloo);
    println!("chunk {} ; arena {} ; busbw in GB/s (1e9 B/s) ; Gloo from {}", human(o.chunk_bytes), human(o.arena_bytes), o.gloo);
    println!("{:<15} {:>2} {:>8} | {:>9} {:>9} | {:>9} {:>9} | {:>7}", "op", "n", "size", "ring", "ring btb", "gloo", "gloo btb", "ratio");
    for &world in &o.worlds {
        for line in run_world(world, &o) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (op, bytes, t, btb) =
                (f[0], f[1].parse::<usize>().unwrap_or(0), f[2].parse::<f64>().unwrap_or(0.0), f[3].parse::<f64>().unwrap_or(0.0));
            let bw = |t: f64| if t > 0.0 { bytes as f64 / t * factor(op, world) / 1e9 } else { 0.0 };
            let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
            let g = gloo.iter().find(|g| g.0 == op && g.1 == world && g.2 == bytes);
            let ratio = g.filter(|g| g.3 > 0.0).map(|g| bw(t) / g.3);
            let btb_bw = (btb > 0.0).then(|| bw(btb));
            println!(
                "{:<15} {:>2} {:>8} | {:>9.3} {:>9} | {:>9} {:>9} | {:>7}",
                op,
                world,
                human(bytes),
                bw(t),
                fmt(btb_bw),
                fmt(g.map(|g| g.3)),
                fmt(g.and_then(|g| g.4)),
                ratio.map_or("-".into(), |r| format!("{r:.2}x"))
            );
        }
    }
}

/// Median single-thread copy bandwidth of a 256 MiB buffer (bytes copied per second).
fn memcpy_gbps() -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src);
    let times: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            t.elapsed().as_secs_f64()
        })
        .collect();
    n as f64 / median(times) / 1e9
}

/// `(op, world, bytes, busbw, back-to-back busbw)` from the Gloo peer's results, if present.
fn gloo_figures(path: &str) -> Vec<(String, usize, usize, f64, Option<f64>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        println!("(no Gloo results at {path}: run .venv/bin/python ../shared/peers/gloo_allreduce.py --worlds 2,3 [--out FILE])");
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    let mut out = Vec::new();
    for w in v["worlds"].as_array().into_iter().flatten() {
        for r in w["results"].as_array().into_iter().flatten() {
            let op = r["op"].as_str().unwrap_or_default().to_string();
            let world = r["world_size"].as_u64().unwrap_or(0) as usize;
            let bytes = r["bytes"].as_u64().unwrap_or(0) as usize;
            let bus = r["busbw_GBps"].as_f64().unwrap_or(0.0);
            out.push((op, world, bytes, bus, r["back_to_back"]["busbw_GBps"].as_f64()));
        }
    }
    out
}

/// Kills and reaps the rank processes on every exit path.
struct Ranks(Vec<Child>);

impl Drop for Ranks {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `world` rank processes and returns rank 0's result lines.
fn run_world(world: usize, o: &Opts) -> Vec<String> {
    let server = RendezvousServer::bind("127.0.0.1:0", world, auth()).expect("rendezvous");
    let addr = server.local_addr().expect("addr");
    let served = server.spawn(Duration::from_secs(60));
    let sizes: Vec<String> = o.sizes.iter().map(|s| s.to_string()).collect();
    let exe = std::env::current_exe().expect("current exe");
    let mut ranks = Ranks(Vec::new());
    for rank in 0..world {
        let role = format!("{rank};{world};{addr};{};{};{};{};{}", sizes.join(","), o.iters, o.chunk_bytes, o.arena_bytes, o.ops.join(","));
        let child = Command::new(&exe).env(ROLE_ENV, role).stdout(Stdio::piped()).spawn().expect("spawn rank");
        ranks.0.push(child);
    }
    served.join().expect("rendezvous thread").expect("rendezvous");
    let stdout = ranks.0[0].stdout.take().expect("stdout");
    let lines: Vec<String> = BufReader::new(stdout).lines().map_while(Result::ok).filter(|l| !l.is_empty()).collect();
    for c in &mut ranks.0 {
        let status = c.wait().expect("wait");
        assert!(status.success(), "a rank failed: {status}");
    }
    lines
}

/// One rank: times every op at every size and (rank 0) prints `op bytes median_s btb_median_s`.
fn worker(role: &str) {
    let f: Vec<&str> = role.split(';').collect();
    let (rank, world): (u32, usize) = (f[0].parse().expect("rank"), f[1].parse().expect("world"));
    let server: SocketAddr = f[2].parse().expect("addr");
    let sizes: Vec<usize> = f[3].split(',').map(|s| s.parse().expect("size")).collect();
    let iters: usize = f[4].parse().expect("iters");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let me = listener.local_addr().expect("addr");
    let peers =
        join(server, &auth(), &JoinRequest { rank: Rank(rank), world, listen_addr: me, timeout: Duration::from_secs(30) }).expect("join");
    let mut config = RingConfig::new(auth());
    config.chunk_bytes = f[5].parse().expect("chunk");
    config.arena_bytes = f[6].parse().expect("arena");
    let ops: Vec<&str> = f[7].split(',').collect();
    config.timeout = Duration::from_secs(120);
    let mut ring = TcpRing::connect(listener, Rank(rank), &peers, config).expect("ring");
    let r = rank as usize;
    for &bytes in &sizes {
        let numel = bytes / 4;
        let mut buf = vec![1.0f32; numel];
        let input = vec![1.0f32; numel];
        let mut shard = vec![1.0f32; shard_len(numel, world, r)];
        for &op in &ops {
            let mut run = |ring: &mut TcpRing| match op {
                "all_reduce" => ring.all_reduce(&mut buf, ReduceOp::Sum),
                "reduce_scatter" => ring.reduce_scatter(&input, &mut shard, ReduceOp::Sum),
                _ => ring.all_gather(&input[..shard.len()], &mut buf),
            };
            let warmup = if bytes >= 1 << 20 { 3 } else { 20 };
            for _ in 0..warmup {
                run(&mut ring).expect("warmup");
            }
            let mut times = Vec::with_capacity(iters);
            for _ in 0..iters {
                ring.barrier().expect("barrier");
                let t = Instant::now();
                run(&mut ring).expect("op");
                times.push(t.elapsed().as_nanos() as i64);
            }
            let k = (16usize << 20).checked_div(bytes).unwrap_or(1).clamp(1, 100);
            let mut btb = Vec::new();
            if k > 1 {
                for _ in 0..iters {
                    ring.barrier().expect("barrier");
                    let t = Instant::now();
                    for _ in 0..k {
                        run(&mut ring).expect("op");
                    }
                    btb.push(t.elapsed().as_nanos() as i64 / k as i64);
                }
            }
            // The time of an iteration is its slowest rank.
            ring.all_reduce(&mut times, ReduceOp::Max).expect("gather times");
            ring.all_reduce(&mut btb, ReduceOp::Max).expect("gather times");
            if rank == 0 {
                let secs = |v: &[i64]| if v.is_empty() { 0.0 } else { median(v.iter().map(|&n| n as f64 / 1e9).collect()) };
                println!("{op} {bytes} {:.9} {:.9}", secs(&times), secs(&btb));
            }
        }
    }
}
