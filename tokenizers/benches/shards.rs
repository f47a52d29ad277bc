//! Shard loader throughput: generates an ml-4m-layout dataset in a temp dir (tok_rgb int16
//! (4,196) .npy, crop_settings, caption/det/metadata JSON, 64x64 PNG rgb), then times the index
//! build and random-access reads in a seeded permutation order with 1 and 2 decode threads;
//! then a C4-style JSON-lines corpus (index build, random-access reads).
//!
//! Run: `cargo bench -p tessera-tokenizers --bench shards`. Environment knobs:
//! `SHARDS_BENCH_SAMPLES` (default 4000), `SHARDS_BENCH_REPEATS` (default 5), and
//! `SHARDS_BENCH_THREADS` (default `1,2`). Reported figures are medians over the repeats;
//! files are in the page cache (just written), so this measures CPU cost, not disk.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tessera_tokenizers::shards::{
    Decoded, FixtureSpec, ParallelReader, ResizeFilter, ShardDataset, TextCorpus, TextFormat, TokenArray, crop_settings_from_array,
    rgb_transform, write_fixture,
};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Reads + decodes every member of `i`, then does the per-sample work of ml-4m's transform for
/// the RGB and token members (typed token view, crop settings, crop → 224 → normalise).
fn full_sample(ds: &ShardDataset, i: usize) -> tessera_tokenizers::Result<usize> {
    let raw = ds.read(i)?;
    let rec = raw.decode()?;
    let (Some(Decoded::Array(tok)), Some(Decoded::Array(cs)), Some(Decoded::Image(img))) =
        (rec.members.get("tok_rgb@224"), rec.members.get("crop_settings"), rec.members.get("rgb"))
    else {
        return Err(raw.origin("rgb").error("fixture sample lacks tok_rgb@224, crop_settings or rgb"));
    };
    let tokens = TokenArray::from_array(tok, Some(196), &raw.origin("tok_rgb@224"))?;
    let crops = crop_settings_from_array(cs, &raw.origin("crop_settings"))?;
    let idx = i % crops.len();
    let chw = rgb_transform(img, &crops[idx], 224, ResizeFilter::Bicubic)?;
    Ok(chw.data.len() + tokens.crop(idx).map_or(0, <[i64]>::len))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = env_or("SHARDS_BENCH_SAMPLES", "4000").parse()?;
    let repeats: usize = env_or("SHARDS_BENCH_REPEATS", "5").parse::<usize>()?.max(3);
    let threads: Vec<usize> = env_or("SHARDS_BENCH_THREADS", "1,2").split(',').map(str::parse).collect::<Result<_, _>>()?;
    let per_shard = 1000.min(n.max(1));
    let spec = FixtureSpec {
        shards: n.div_ceil(per_shard),
        samples_per_shard: per_shard,
        n_crops: 4,
        n_tokens: 196,
        width: 64,
        height: 64,
        seed: 0,
    };
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let fx = write_fixture(dir.path(), &spec)?;
    let gen_s = t.elapsed().as_secs_f64();
    let bytes: u64 = walk_size(dir.path())?;
    println!(
        "dataset: {} samples in {} shards x 6 folders, {:.1} MiB on disk, written in {gen_s:.2} s",
        fx.keys.len(),
        spec.shards,
        bytes as f64 / (1 << 20) as f64
    );

    let mut index_times = Vec::new();
    let mut ds = None;
    for _ in 0..repeats {
        let t = Instant::now();
        let d = ShardDataset::open(&fx.pattern, &fx.name_map)?;
        index_times.push(t.elapsed());
        ds = Some(d);
    }
    let ds = ds.ok_or("no repeats")?;
    let idx = median(index_times);
    println!(
        "index build (rayon global pool, {} shards x 6 tars): median {:.1} ms = {:.0} samples/s",
        spec.shards,
        idx.as_secs_f64() * 1e3,
        ds.len() as f64 / idx.as_secs_f64()
    );

    let mut order: Vec<usize> = (0..ds.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(0));
    println!("\nrandom-access order (seeded permutation), medians of {repeats} repeats, samples/s:");
    println!("| threads | read only | read + decode all members | + typed tokens/crops + rgb crop->224 bicubic->CHW |");
    println!("|---|---|---|---|");
    for &t in &threads {
        let pool = ParallelReader::new(t)?;
        let time = |f: &(dyn Fn(usize) -> tessera_tokenizers::Result<usize> + Sync)| -> Result<f64, tessera_tokenizers::Error> {
            let mut v = Vec::new();
            for _ in 0..repeats {
                let start = Instant::now();
                // Batches of 256 keep memory bounded, like a loader feeding batches.
                for chunk in order.chunks(256) {
                    std::hint::black_box(pool.map(chunk, f)?);
                }
                v.push(start.elapsed());
            }
            Ok(order.len() as f64 / median(v).as_secs_f64())
        };
        let read = time(&|i| ds.read(i).map(|r| r.members.len()))?;
        let decode = time(&|i| ds.read_decoded(i).map(|r| r.members.len()))?;
        let full = time(&|i| full_sample(&ds, i))?;
        println!("| {t} | {read:.0} | {decode:.0} | {full:.0} |");
    }
    text_corpus(dir.path(), repeats)
}

/// C4-style JSON lines: index build and random-access reads (one thread).
fn text_corpus(dir: &std::path::Path, repeats: usize) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let n_docs = 20_000;
    for f in 0..2 {
        let mut w = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("c4-{f}.json")))?);
        for d in 0..n_docs / 2 {
            let text = format!("document {f}-{d} ").repeat(1 + d % 60);
            writeln!(w, "{}", serde_json::json!({ "text": text, "timestamp": "2019-04-25T12:57:54Z", "url": "https://example.com" }))?;
        }
    }
    let pattern = format!("{}/c4-{{0..1}}.json", dir.display());
    let mut build = Vec::new();
    let mut corpus = None;
    for _ in 0..repeats {
        let t = Instant::now();
        corpus = Some(TextCorpus::open(&pattern, TextFormat::c4())?);
        build.push(t.elapsed());
    }
    let corpus = corpus.ok_or("no repeats")?;
    let mut order: Vec<usize> = (0..corpus.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(1));
    let mut reads = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        for &i in &order {
            std::hint::black_box(corpus.read(i)?);
        }
        reads.push(t.elapsed());
    }
    println!(
        "\ntext corpus ({} JSON lines, 2 files): index build median {:.1} ms; random-access read + parse, 1 thread: {:.0} docs/s",
        corpus.len(),
        median(build).as_secs_f64() * 1e3,
        corpus.len() as f64 / median(reads).as_secs_f64()
    );
    Ok(())
}

fn walk_size(p: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() { walk_size(&e.path())? } else { m.len() };
    }
    Ok(total)
}
