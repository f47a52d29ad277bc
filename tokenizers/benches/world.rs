//! Built-in world generator throughput: generates `WORLD_BENCH_SAMPLES` samples (default 2000)
//! into a temp dir at each size of `WORLD_BENCH_SIZES` (default `64,128`) with each thread count
//! of `WORLD_BENCH_THREADS` (default `1,2`), `WORLD_BENCH_REPEATS` times (default 3), and prints
//! the median samples/s, including PNG/npy/JSON encoding and the tar writes. It also prints
//! samples per CPU-second of the process (from `/proc/self/stat`, Linux), a figure that other
//! jobs on a shared machine disturb much less than wall time.
//!
//! Run: `cargo bench -p tessera-tokenizers --bench world`.

use std::time::Duration;

use tessera_tokenizers::world::{WorldSpec, generate};

fn env_list(name: &str, default: &str) -> Result<Vec<usize>, std::num::ParseIntError> {
    std::env::var(name).unwrap_or_else(|_| default.to_string()).split(',').map(str::parse).collect()
}

/// User + system CPU time of this process so far (`/proc/self/stat`, in USER_HZ = 100 ticks/s);
/// zero where unavailable.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let samples = env_list("WORLD_BENCH_SAMPLES", "2000")?[0];
    let repeats = env_list("WORLD_BENCH_REPEATS", "3")?[0].max(1);
    let sizes = env_list("WORLD_BENCH_SIZES", "64,128")?;
    let threads = env_list("WORLD_BENCH_THREADS", "1,2")?;
    println!("| size | threads | samples | median s | samples/s | samples/CPU-s | MB written |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &size in &sizes {
        for &t in &threads {
            let mut times: Vec<Duration> = Vec::new();
            let mut mb = 0.0;
            let cpu0 = cpu_seconds();
            for _ in 0..repeats {
                let dir = tempfile::tempdir()?;
                let spec = WorldSpec { samples, size, seed: 0, threads: t, ..WorldSpec::default() };
                let summary = generate(dir.path(), &spec, &mut |_| {})?;
                times.push(summary.elapsed);
                mb = summary.bytes as f64 / 1e6;
            }
            let per_cpu = (samples * repeats) as f64 / (cpu_seconds() - cpu0).max(1e-9);
            times.sort();
            let median = times[times.len() / 2].as_secs_f64();
            println!("| {size} | {t} | {samples} | {median:.3} | {:.0} | {per_cpu:.0} | {mb:.1} |", samples as f64 / median);
        }
    }
    Ok(())
}
