//! `tessera bench text`: caption tokenization throughput of [`TextTokenizer`], measured the way
//! the peer script `shared/peers/tokenize_text.py` measures Python `tokenizers`: an encode loop
//! and a batch encode on one thread, plus the batch encode on a thread pool.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::Args;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tessera_tokenizers::text::TextTokenizer;

use super::super::output::{emit, si};
use super::{Stats, stats};

/// Arguments of `bench text`.
#[derive(Debug, Args)]
pub struct TextArgs {
    /// HuggingFace tokenizer JSON (ml-4m: text_tokenizer_4m_wordpiece_30k.json).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Captions, one per line (e.g. the peer script's own, dumped by
    /// tools/bench/peer_captions.py); else --captions synthetic ones are generated.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Synthetic captions to generate (the peer's recipe, tessera's RNG).
    #[arg(long, default_value_t = 100_000)]
    captions: usize,
    /// Seed of the synthetic captions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Timed passes over all captions per mode.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Threads of the parallel batch mode (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ModeReport {
    mode: String,
    threads: usize,
    time_s: Stats,
    captions_per_s_median: f64,
    tokens_per_s_median: f64,
    mb_per_s_median: f64,
}

#[derive(Serialize)]
struct TextReport {
    bench: &'static str,
    tokenizer: String,
    captions_source: String,
    captions: usize,
    repeats: usize,
    total_bytes: usize,
    total_tokens: usize,
    tokens_per_caption_mean: f64,
    modes: Vec<ModeReport>,
}

/// Runs `bench text`.
pub fn run(a: TextArgs) -> anyhow::Result<()> {
    ensure!(a.repeats > 0, "--repeats must be at least 1");
    let tok = TextTokenizer::from_file(&a.tokenizer)?;
    let (captions, source) = match &a.input {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            (text.lines().map(str::to_string).collect::<Vec<_>>(), path.display().to_string())
        }
        None => (synthetic_captions(&tok, a.captions, a.seed)?, format!("synthetic (seed {})", a.seed)),
    };
    if captions.is_empty() {
        bail!("no captions to encode");
    }
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = |n: usize| rayon::ThreadPoolBuilder::new().num_threads(n).build().context("building a thread pool");
    let (one, many) = (pool(1)?, pool(threads)?);

    let warm = &captions[..captions.len().min(2000)];
    for c in warm {
        tok.encode(c)?;
    }
    one.install(|| tok.encode_batch(warm))?;
    many.install(|| tok.encode_batch(warm))?;

    let total_tokens = captions.iter().map(|c| tok.encode(c).map(|ids| ids.len())).sum::<Result<usize, _>>()?;
    let total_bytes: usize = captions.iter().map(String::len).sum();
    let mut modes = Vec::new();
    let mut time = |mode: &str, n_threads: usize, f: &dyn Fn() -> anyhow::Result<usize>| -> anyhow::Result<()> {
        let mut times = Vec::with_capacity(a.repeats);
        for _ in 0..a.repeats {
            let t0 = Instant::now();
            let ntok = f()?;
            times.push(t0.elapsed().as_secs_f64());
            ensure!(ntok == total_tokens, "{mode}: {ntok} tokens, expected {total_tokens}");
        }
        let time_s = stats(times);
        modes.push(ModeReport {
            mode: mode.into(),
            threads: n_threads,
            captions_per_s_median: captions.len() as f64 / time_s.median,
            tokens_per_s_median: total_tokens as f64 / time_s.median,
            mb_per_s_median: total_bytes as f64 / time_s.median / 1e6,
            time_s,
        });
        Ok(())
    };
    time("encode_loop", 1, &|| {
        let mut n = 0;
        for c in &captions {
            n += tok.encode(c)?.len();
        }
        Ok(n)
    })?;
    time("encode_batch", 1, &|| Ok(one.install(|| tok.encode_batch(&captions))?.iter().map(Vec::len).sum()))?;
    time("encode_batch", threads, &|| Ok(many.install(|| tok.encode_batch(&captions))?.iter().map(Vec::len).sum()))?;

    let report = TextReport {
        bench: "tessera_wordpiece_encode",
        tokenizer: a.tokenizer.display().to_string(),
        captions_source: source,
        captions: captions.len(),
        repeats: a.repeats,
        total_bytes,
        total_tokens,
        tokens_per_caption_mean: total_tokens as f64 / captions.len() as f64,
        modes,
    };
    emit(a.json, &report, || render(&report))
}

fn render(r: &TextReport) -> String {
    let mut s = format!(
        "{} captions ({}), {:.2} tokens/caption, median of {} passes\n{:<14} {:>7} {:>12} {:>12} {:>8}\n",
        r.captions, r.captions_source, r.tokens_per_caption_mean, r.repeats, "mode", "threads", "captions/s", "tokens/s", "MB/s"
    );
    for m in &r.modes {
        s += &format!(
            "{:<14} {:>7} {:>12} {:>12} {:>8.2}\n",
            m.mode,
            m.threads,
            si(m.captions_per_s_median),
            si(m.tokens_per_s_median),
            m.mb_per_s_median
        );
    }
    s
}

/// The peer's caption recipe (shared/peers/tokenize_text.py `make_captions`) with tessera's RNG:
/// 5..40 words, each a COCO class (5%), a coordinate token (3%), a whole word plus a
/// continuation piece (10%) or a whole word, 25% capitalised, then a period.
fn synthetic_captions(tok: &TextTokenizer, n: usize, seed: u64) -> anyhow::Result<Vec<String>> {
    let lower = |w: &str| w.len() >= 2 && w.bytes().all(|b| b.is_ascii_lowercase());
    let vocab = tok.vocab();
    let mut words: Vec<&str> = vocab.keys().map(String::as_str).filter(|w| lower(w)).collect();
    let mut pieces: Vec<&str> = vocab.keys().filter_map(|w| w.strip_prefix("##")).filter(|w| lower(w)).collect();
    let added = tok.added_tokens();
    let mut classes: Vec<&str> = added.iter().map(String::as_str).filter(|t| !is_bracketed(t) && !is_coord(t)).collect();
    words.sort_unstable();
    pieces.sort_unstable();
    classes.sort_unstable();
    ensure!(!words.is_empty() && !pieces.is_empty() && !classes.is_empty(), "{}: no words, pieces or classes", tok.origin());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let caps = (0..n)
        .map(|_| {
            let k = rng.random_range(5..=40);
            let ws: Vec<String> = (0..k)
                .map(|_| {
                    let r: f64 = rng.random();
                    let pick = |rng: &mut ChaCha8Rng, v: &[&str]| v.choose(rng).copied().unwrap_or_default().to_string();
                    let w = if r < 0.05 {
                        pick(&mut rng, &classes)
                    } else if r < 0.08 {
                        format!("v{}={}", rng.random_range(0..=3), rng.random_range(0..=999))
                    } else if r < 0.18 {
                        pick(&mut rng, &words) + &pick(&mut rng, &pieces)
                    } else {
                        pick(&mut rng, &words)
                    };
                    if rng.random_bool(0.25) { capitalize(&w) } else { w }
                })
                .collect();
            ws.join(" ") + "."
        })
        .collect();
    Ok(caps)
}

/// `\[[A-Z_0-9]+\]`: `[PAD]`, `[S_12]`, …
fn is_bracketed(t: &str) -> bool {
    t.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
}

/// `v\d=\d+`: coordinate tokens.
fn is_coord(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 4 && b[0] == b'v' && b[1].is_ascii_digit() && b[2] == b'=' && b[3..].iter().all(u8::is_ascii_digit)
}

fn capitalize(w: &str) -> String {
    let mut c = w.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_classes_follow_the_peer_regexes() {
        assert!(is_bracketed("[PAD]") && is_bracketed("[S_12]") && !is_bracketed("[s_1]") && !is_bracketed("[]"));
        assert!(is_coord("v0=0") && is_coord("v3=999") && !is_coord("v0=") && !is_coord("v10=1"));
        assert_eq!(capitalize("dining table"), "Dining table");
    }
}
