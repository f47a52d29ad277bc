//! Built-in world generator throughput: generates `WORLD_BENCH_SAMPLES` samples (default 2000)
//! into a temp dir at each size of `WORLD_BENCH_SIZES` (default `64,128`) with each thread count
//! of `WORLD_BENCH_THREADS` (default `1,2`), `WORLD_BENCH_REPEATS` times (default 3), and prints
//! the median samples/s, including PNG/npy/JSON encoding and the tar writes.
//!
//! Run: `cargo bench -p tessera-tokenizers --bench world`.

use std::time::Duration;

use tessera_tokenizers::world::{WorldSpec, generate};

fn env_list(name: &str, default: &str) -> Result<Vec<usize>, std::num::ParseIntError> {
    std::env::var(name).unwrap_or_else(|_| default.to_string()).split(',').map(str::parse).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let samples = env_list("WORLD_BENCH_SAMPLES", "2000")?[0];
    let repeats = env_list("WORLD_BENCH_REPEATS", "3")?[0].max(1);
    let sizes = env_list("WORLD_BENCH_SIZES", "64,128")?;
    let threads = env_list("WORLD_BENCH_THREADS", "1,2")?;
    println!("| size | threads | samples | median s | samples/s | MB written |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &size in &sizes {
        for &t in &threads {
            let mut times: Vec<Duration> = Vec::new();
            let mut mb = 0.0;
            for _ in 0..repeats {
                let dir = tempfile::tempdir()?;
                let spec = WorldSpec { samples, size, seed: 0, threads: t, ..WorldSpec::default() };
                let summary = generate(dir.path(), &spec, &mut |_| {})?;
                times.push(summary.elapsed);
                mb = summary.bytes as f64 / 1e6;
            }
            times.sort();
            let median = times[times.len() / 2].as_secs_f64();
            println!("| {size} | {t} | {samples} | {median:.3} | {:.0} | {mb:.1} |", samples as f64 / median);
        }
    }
    Ok(())
}
