//! Single-thread throughput of 4M-21 masking and collation, comparable with the peer's
//! `shared/peers/masking_stats.py` (ml-4m `UnifiedMasking` on synthetic samples).
//!
//! Set-up as the peer: the 19 4M-21 modalities, 256/256 budgets, the real alphas mixture
//! `mix_mod21_all2allmix_rgb2all_capT5bias.yaml`, a pool of synthetic samples shaped like the
//! peer's `SyntheticSource`, cycled. "masking" times the budget draw + tokenization + masking of
//! one sample (what the peer's `UnifiedMasking.__call__` does); copying the pool sample is
//! excluded, as the peer passes its pool entries by reference. "collation" stacks batches.
//!
//! Run: `cargo bench -p tessera-tokenizers --bench masking`. Environment: `MASKING_BENCH_SAMPLES`
//! (per repeat, default 2000), `MASKING_BENCH_REPEATS` (default 7), `MASKING_BENCH_BATCH`
//! (default 32), `MASKING_BENCH_SET` (a modality set for `ModalitySet::parse`, default `4m21`),
//! `PEER_MASKING_JSON` (the peer's output JSON, for the per-modality comparison).
//!
//! Collation writes ~1.9 MB per sample (RGB pixels and zero-padded T5 rows); the bench reuses
//! one batch's buffers (`collate_into`), as a loader that hands batches back would. glibc's
//! defaults serve large blocks from fresh mmaps whose pages fault in on first touch; the
//! `tessera` binary turns that off (`mallopt(M_MMAP_MAX, 0)`, no trimming, src/main.rs). To
//! measure under the same allocator settings, run the bench with
//! `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_tokenizers::masking::synthetic::SyntheticSource;
use tessera_tokenizers::masking::{CollatedBatch, MaskedSample, MaskingOptions, SampleMasker, SampleValues, collate_into};
use tessera_tokenizers::mixture::{AlphasConfig, BudgetConfig, BudgetSampler, TokenRange};
use tessera_tokenizers::text::TextTokenizer;
use tessera_tokenizers::{Modality, ModalitySet};

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m").join(rel)
}

/// Seconds spent per phase in one repeat.
#[derive(Default, Clone, Copy)]
struct Times {
    budget: Duration,
    mask: Duration,
    collate: Duration,
}

/// Picks a phase's time out of a repeat.
type Phase = fn(&Times) -> Duration;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { 0.5 * (xs[n / 2 - 1] + xs[n / 2]) }
}

fn main() -> BoxResult<()> {
    let n = env_usize("MASKING_BENCH_SAMPLES", 2000);
    let repeats = env_usize("MASKING_BENCH_REPEATS", 7);
    let batch = env_usize("MASKING_BENCH_BATCH", 32).max(1);
    let pool_size = 64;

    let tok = Arc::new(TextTokenizer::from_file(shared("text_tokenizer_4m_wordpiece_30k.json"))?);
    let set = ModalitySet::parse(&std::env::var("MASKING_BENCH_SET").unwrap_or_else(|_| "4m21".into()))?;
    let mix = AlphasConfig::from_yaml_file(&shared("configs/alphas/mix_mod21_all2allmix_rgb2all_capT5bias.yaml"))?.resolve(Some(&set))?;
    let cfg = BudgetConfig { input_tokens: TokenRange::fixed(256), target_tokens: TokenRange::fixed(256), seed: 0 };
    let sampler = BudgetSampler::new(mix, cfg)?;
    let mods: Vec<Modality> = sampler.modalities().to_vec();
    let masker = SampleMasker::new(&mods, tok.clone(), MaskingOptions { seed: 0 })?;
    let src = SyntheticSource::new(&mods, &tok);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let pool: Vec<SampleValues> = (0..pool_size).map(|_| src.sample(&mut rng)).collect();

    let mut runs = Vec::new();
    let mut sum_in = vec![0usize; mods.len()];
    let mut sum_tgt = vec![0usize; mods.len()];
    let mut counted = 0usize;
    let mut checksum = 0usize;
    // The batch is reused, as a loader that hands batches back would (see `collate_into`).
    let mut out = CollatedBatch::default();
    // One warm-up repeat (not reported) and then the measured ones.
    for rep in 0..=repeats {
        let mut t = Times::default();
        let mut pending: Vec<MaskedSample> = Vec::with_capacity(batch);
        for i in 0..n {
            let index = (rep * n + i) as u64;
            let values = pool[i % pool.len()].clone();
            let t0 = Instant::now();
            let budget = sampler.sample(index);
            let t1 = Instant::now();
            let masked = masker.mask(values, &budget)?;
            let t2 = Instant::now();
            t.budget += t1 - t0;
            t.mask += t2 - t1;
            if rep > 0 {
                for (j, m) in mods.iter().enumerate() {
                    sum_in[j] += masked[m].input_count();
                    sum_tgt[j] += masked[m].target_count();
                }
                counted += 1;
            }
            pending.push(masked);
            if pending.len() == batch || i + 1 == n {
                let t3 = Instant::now();
                collate_into(&pending, &mut out)?;
                t.collate += t3.elapsed();
                checksum = checksum.wrapping_add(out.size());
                pending.clear();
            }
        }
        if rep > 0 {
            runs.push(t);
        }
    }

    let rate = |f: Phase| median(runs.iter().map(|t| n as f64 / f(t).as_secs_f64()).collect());
    let spread = |f: Phase| {
        let xs: Vec<f64> = runs.iter().map(|t| n as f64 / f(t).as_secs_f64()).collect();
        (xs.iter().copied().fold(f64::INFINITY, f64::min), xs.iter().copied().fold(0.0, f64::max))
    };
    println!("masking on one thread: {} modalities, 256/256 budgets, alphas {}", mods.len(), sampler.mixture().origin());
    println!("{n} samples x {repeats} repeats (medians), synthetic pool of {pool_size}, collation batch {batch}");
    println!();
    println!("{:<40} {:>14} {:>12} {:>22}", "phase", "samples/s", "us/sample", "min..max samples/s");
    let phases: [(&str, Phase); 5] = [
        ("budget draw", |t| t.budget),
        ("tokenize + mask (given budget)", |t| t.mask),
        ("masking = budget + tokenize + mask", |t| t.budget + t.mask),
        ("collation", |t| t.collate),
        ("masking + collation", |t| t.budget + t.mask + t.collate),
    ];
    for (name, f) in phases {
        let r = rate(f);
        let (lo, hi) = spread(f);
        println!("{name:<40} {r:>14.0} {:>12.1} {:>22}", 1e6 / r, format!("{lo:.0}..{hi:.0}"));
    }

    let peer = std::env::var("PEER_MASKING_JSON").ok().and_then(|p| std::fs::read_to_string(p).ok());
    let peer: Option<serde_json::Value> = peer.and_then(|s| serde_json::from_str(&s).ok());
    println!();
    if let Some(p) = &peer {
        println!("peer (ml-4m UnifiedMasking, {} samples): {} samples/s", p["samples"], p["throughput"]["samples_per_s"]);
        println!();
    }
    println!("{:<22} {:>10} {:>10} {:>12} {:>12}", "modality", "in mean", "tgt mean", "peer in", "peer tgt");
    let (mut tot_in, mut tot_tgt) = (0.0, 0.0);
    for (j, m) in mods.iter().enumerate() {
        let (mi, mt) = (sum_in[j] as f64 / counted as f64, sum_tgt[j] as f64 / counted as f64);
        tot_in += mi;
        tot_tgt += mt;
        let pm = peer.as_ref().map(|p| &p["per_modality"][m.key()]);
        let fmt = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_f64).map_or("-".to_string(), |x| format!("{x:.2}"));
        println!(
            "{:<22} {mi:>10.2} {mt:>10.2} {:>12} {:>12}",
            m.key(),
            fmt(pm.map(|p| &p["input_tokens_mean"])),
            fmt(pm.map(|p| &p["target_tokens_mean"]))
        );
    }
    let fmt = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_f64).map_or("-".to_string(), |x| format!("{x:.2}"));
    println!(
        "{:<22} {tot_in:>10.2} {tot_tgt:>10.2} {:>12} {:>12}",
        "total",
        fmt(peer.as_ref().map(|p| &p["total_input_tokens"]["mean"])),
        fmt(peer.as_ref().map(|p| &p["total_target_tokens"]["mean"]))
    );
    // Keeps the collated batches observable so that nothing is optimised away.
    assert_eq!(checksum, n * (repeats + 1));
    Ok(())
}
