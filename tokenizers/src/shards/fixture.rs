//! Writes small, deterministic multi-modality datasets in ml-4m's sharded layout, for tests,
//! benchmarks and a later data generator.
//!
//! Folders: `rgb` (PNG), `caption` (JSON list, one caption per crop), `det` (ml-4m detection
//! JSON), `metadata` (JSON dict), `tok_rgb` (int16 `(n_crops, n_tokens)` .npy; mapped to
//! `tok_rgb@224` by [`Fixture::name_map`]) and `crop_settings` (int64 `(n_crops, 5)` .npy,
//! crop 0 the centre square, as ml-4m's `save_vq_tokens.py` writes them).

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::dataset::NameMap;
use super::decode::encode_json;
use super::files::io_error;
use super::npy::{ArrayData, NdArray, encode_npy};
use super::rgb::{Rgb8Image, encode_png};
use super::tar::TarWriter;
use crate::error::{Error, Result};

/// The folders [`write_fixture`] creates, in pattern order.
pub const FIXTURE_FOLDERS: [&str; 6] = ["rgb", "caption", "det", "metadata", "tok_rgb", "crop_settings"];

/// What [`write_fixture`] generates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureSpec {
    /// Number of shards per folder.
    pub shards: usize,
    /// Samples per shard.
    pub samples_per_shard: usize,
    /// Crops per sample (rows of tok_rgb, crop_settings and caption).
    pub n_crops: usize,
    /// Tokens per crop in tok_rgb (196 for 224-pixel images and 16-pixel patches).
    pub n_tokens: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// RNG seed; equal specs write byte-identical files.
    pub seed: u64,
}

impl Default for FixtureSpec {
    fn default() -> Self {
        Self { shards: 2, samples_per_shard: 5, n_crops: 2, n_tokens: 196, width: 40, height: 32, seed: 0 }
    }
}

/// A written fixture: how to open it and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixture {
    /// The ml-4m data_path pattern of the dataset.
    pub pattern: String,
    /// `tok_rgb` → `tok_rgb@224`.
    pub name_map: NameMap,
    /// All sample keys in order.
    pub keys: Vec<String>,
}

const WORDS: [&str; 12] = ["a", "dog", "cat", "on", "the", "red", "grass", "with", "blue", "sky", "near", "house"];
const CLASSES: [&str; 5] = ["person", "dog", "cat", "car", "chair"];

/// The generated members of one sample, as `(folder, ext, bytes)`.
pub fn fixture_sample(spec: &FixtureSpec, index: usize) -> Result<Vec<(&'static str, &'static str, Vec<u8>)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (w, h) = (spec.width, spec.height);
    // A gradient plus noise: compresses like a photo rather than like a flat colour.
    let mut img = Rgb8Image::filled(w, h, [0, 0, 0]);
    let base: [u8; 3] = rng.random();
    for y in 0..h {
        for x in 0..w {
            for (c, &b) in base.iter().enumerate() {
                let v = u32::from(b)
                    + (x * 255 / w.max(1)) as u32 * (c as u32 + 1) / 3
                    + (y * 97 / h.max(1)) as u32
                    + rng.random_range(0..16u32);
                img.data[(y * w + x) * 3 + c] = (v % 256) as u8;
            }
        }
    }
    let side = w.min(h) as i64;
    let mut crops = vec![((h as i64 - side) / 2), ((w as i64 - side) / 2), side, side, 0];
    for _ in 1..spec.n_crops {
        let ch = rng.random_range((side * 8 / 10).max(1)..=side);
        let cw = rng.random_range((side * 8 / 10).max(1)..=side);
        crops.extend([rng.random_range(0..=h as i64 - ch), rng.random_range(0..=w as i64 - cw), ch, cw, rng.random_range(0..=1)]);
    }
    let tokens: Vec<i16> = (0..spec.n_crops * spec.n_tokens).map(|_| rng.random_range(0..8192)).collect();
    let captions: Vec<String> = (0..spec.n_crops)
        .map(|_| (0..rng.random_range(3..9)).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" "))
        .collect();
    let instances: Vec<_> = (0..rng.random_range(0..4))
        .map(|_| {
            let (x0, y0) = (rng.random_range(0.0..0.6f64), rng.random_range(0.0..0.6f64));
            json!({
                "boxes": [x0, y0, x0 + rng.random_range(0.05..0.4), y0 + rng.random_range(0.05..0.4)],
                "class_name": CLASSES[rng.random_range(0..CLASSES.len())],
                "score": rng.random_range(0.3..1.0f64),
            })
        })
        .collect();
    let metadata = json!({
        "original_width": w, "original_height": h, "n_humans": rng.random_range(0..3),
        "brightness": rng.random_range(0.0..255.0f64), "entropy": rng.random_range(0.0..10.0f64),
    });
    Ok(vec![
        ("rgb", "png", encode_png(&img)?),
        ("caption", "json", encode_json(&json!(captions))),
        ("det", "json", encode_json(&json!({ "instances": instances }))),
        ("metadata", "json", encode_json(&metadata)),
        ("tok_rgb", "npy", encode_npy(&NdArray { shape: vec![spec.n_crops, spec.n_tokens], data: ArrayData::I16(tokens) })),
        ("crop_settings", "npy", encode_npy(&NdArray { shape: vec![spec.n_crops, 5], data: ArrayData::I64(crops) })),
    ])
}

/// Writes the fixture under `root` (`root/<folder>/shard-NNNNN.tar`) and returns its pattern.
pub fn write_fixture(root: &Path, spec: &FixtureSpec) -> Result<Fixture> {
    if spec.shards == 0 || spec.samples_per_shard == 0 || spec.n_crops == 0 || spec.width == 0 || spec.height == 0 {
        return Err(Error::Encode { what: "fixture".into(), reason: format!("every count and size of {spec:?} must be at least 1") });
    }
    for folder in FIXTURE_FOLDERS {
        let dir = root.join(folder);
        std::fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
    }
    let mut keys = Vec::with_capacity(spec.shards * spec.samples_per_shard);
    for shard in 0..spec.shards {
        let mut writers = FIXTURE_FOLDERS
            .iter()
            .map(|f| TarWriter::create(&root.join(f).join(format!("shard-{shard:05}.tar"))))
            .collect::<Result<Vec<_>>>()?;
        for s in 0..spec.samples_per_shard {
            let index = shard * spec.samples_per_shard + s;
            let key = format!("{index:09}");
            for (writer, (_, ext, bytes)) in writers.iter_mut().zip(fixture_sample(spec, index)?) {
                writer.append(&format!("{key}.{ext}"), &bytes)?;
            }
            keys.push(key);
        }
        for w in writers {
            w.finish()?;
        }
    }
    let last = spec.shards.saturating_sub(1);
    let pattern = format!("{}/[{}]/shard-{{00000..{last:05}}}.tar", root.display(), FIXTURE_FOLDERS.join(","));
    let name_map = NameMap::from([("tok_rgb".to_string(), "tok_rgb@224".to_string())]);
    Ok(Fixture { pattern, name_map, keys })
}
