//! Synthetic, format-valid transformed samples for tests and benchmarks, shaped like the peer
//! benchmark's `SyntheticSource` (shared/peers/common.py): captions of 5–40 vocabulary words,
//! 0–12 detection boxes, 19 metadata chunks, 1–7 palette colours, no human or 1–3 humans, 7 SAM
//! query points with 0–2 instances, T5 embeddings of 5–77 rows, random token grids and pixels.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::modality::{Modality, ModalityKind};
use crate::serialize::{Metadata, MetadataBinning, MetadataKey};
use crate::text::{COCO_CLASSES, TextTokenizer};

use super::sample::SampleValues;
use super::value::ModalityValue;

/// Generates [`SampleValues`] for a modality list from a caller's random stream.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    modalities: Vec<Modality>,
    words: Vec<String>,
}

impl SyntheticSource {
    /// A source over `modalities`, drawing caption words from the tokenizer's plain
    /// lower-case vocabulary entries (as the peer does: `[a-z]{2,}`).
    pub fn new(modalities: &[Modality], tokenizer: &TextTokenizer) -> Self {
        let mut words: Vec<String> =
            tokenizer.vocab().into_keys().filter(|w| w.len() >= 2 && w.bytes().all(|b| b.is_ascii_lowercase())).collect();
        // Sorted so that the same seed gives the same captions (the vocabulary is a hash map).
        words.sort_unstable();
        if words.is_empty() {
            words.push("word".into());
        }
        Self { modalities: modalities.to_vec(), words }
    }

    /// One sample with a value for every modality.
    pub fn sample(&self, rng: &mut impl Rng) -> SampleValues {
        self.modalities.iter().map(|&m| (m, self.value(m, rng))).collect()
    }

    /// One modality's value.
    pub fn value(&self, m: Modality, rng: &mut impl Rng) -> ModalityValue {
        let s = m.spec();
        match s.kind {
            ModalityKind::Pixels => {
                ModalityValue::Pixels((0..s.channels * s.image_size * s.image_size).map(|_| rng.random::<f32>() - 0.5).collect())
            }
            ModalityKind::ImageTokens | ModalityKind::GlobalTokens => {
                ModalityValue::Tokens((0..s.max_tokens).map(|_| rng.random_range(0..s.vocab_size as i64)).collect())
            }
            ModalityKind::SequenceEmbedding => {
                let rows = rng.random_range(5..=s.max_tokens);
                let data = (0..rows * s.channels).map(|_| rng.random::<f32>() - 0.5).collect();
                ModalityValue::Embeddings { rows, dim: s.channels, data }
            }
            ModalityKind::Sequence => match m {
                Modality::Caption => ModalityValue::Text(self.caption(rng)),
                Modality::Det => ModalityValue::Text(det(rng)),
                Modality::Metadata => ModalityValue::Chunks(metadata(rng)),
                Modality::ColorPalette => ModalityValue::Text(palette(rng)),
                Modality::HumanPoses => ModalityValue::Text(poses(rng)),
                _ => ModalityValue::Text(sam(rng)),
            },
        }
    }

    fn caption(&self, rng: &mut impl Rng) -> String {
        let n = rng.random_range(5..=40);
        (0..n).filter_map(|_| self.words.choose(rng).map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

/// A unit-square coordinate as a 1000-bin token value.
fn bin(x: f64) -> i64 {
    (x * 999.0).round() as i64
}

fn sorted_pair(rng: &mut impl Rng) -> (f64, f64) {
    let (a, b) = (rng.random::<f64>(), rng.random::<f64>());
    (a.min(b), a.max(b))
}

fn det(rng: &mut impl Rng) -> String {
    let n = rng.random_range(0..=12);
    let mut boxes: Vec<(f64, f64, f64, f64, &str)> = (0..n)
        .map(|_| {
            let ((x0, x1), (y0, y1)) = (sorted_pair(rng), sorted_pair(rng));
            (x0, y0, x1, y1, *COCO_CLASSES.choose(rng).unwrap_or(&"person"))
        })
        .collect();
    boxes.sort_by(|a, b| (a.0 * a.0 + a.1 * a.1).total_cmp(&(b.0 * b.0 + b.1 * b.1)));
    let parts: Vec<String> =
        boxes.iter().map(|(x0, y0, x1, y1, c)| format!("v0={} v1={} v2={} v3={} {c}", bin(*x0), bin(*y0), bin(*x1), bin(*y1))).collect();
    parts.join(" ")
}

fn metadata(rng: &mut impl Rng) -> Vec<String> {
    let mut keys = MetadataKey::ALL.to_vec();
    keys.shuffle(rng);
    let mut md = Metadata::default();
    for k in keys.into_iter().take(19) {
        let v = match (k, k.binning()) {
            (MetadataKey::OriginalWidth | MetadataKey::OriginalHeight, _) => f64::from(rng.random_range(200..=2000)),
            (_, MetadataBinning::Int) => f64::from(rng.random_range(0..=50)),
            (_, MetadataBinning::Manual(_)) => rng.random_range(0.0..8.0),
            (_, MetadataBinning::MinMax { vmin, vmax, .. }) => rng.random_range(vmin..vmax),
            (_, MetadataBinning::ImageDim) => 512.0,
        };
        md.values.insert(k, v);
    }
    md.to_chunks(rng)
}

fn palette(rng: &mut impl Rng) -> String {
    let n = rng.random_range(1..=7);
    let mut s = format!("v1={n}");
    for _ in 0..3 * n {
        s.push_str(&format!(" v0={}", rng.random_range(0..=255)));
    }
    s
}

/// A pose/SAM code: `v0=id` below 512, else `v1=id-512`.
fn code(id: u32) -> String {
    if id < 512 { format!("v0={id}") } else { format!("v1={}", id - 512) }
}

fn poses(rng: &mut impl Rng) -> String {
    if rng.random::<bool>() {
        return "none".into();
    }
    let mut out = String::new();
    for _ in 0..rng.random_range(1..=3) {
        let ((x0, x1), (y0, y1)) = (sorted_pair(rng), sorted_pair(rng));
        out.push_str(&format!("human v0={} v1={} v2={} v3={}", bin(x0), bin(y0), bin(x1), bin(y1)));
        let mut groups = [0, 1, 2, 3];
        groups.shuffle(rng);
        for g in groups {
            let vals: Vec<String> = match g {
                0 => std::iter::once("pose".to_string()).chain((0..8).map(|_| code(rng.random_range(0..1024)))).collect(),
                1 => std::iter::once("global".to_string())
                    .chain((0..9).map(|_| format!("v0={}", (499.5 * rng.random_range(-1.0..1.0) + 499.5f64).round())))
                    .collect(),
                2 => std::iter::once("camera".to_string())
                    .chain((0..3).map(|_| format!("v0={}", (49.95 * rng.random_range(-1.0..19.0) + 49.95f64).round())))
                    .collect(),
                _ => std::iter::once("shape".to_string())
                    .chain((0..10).map(|_| format!("v0={}", (166.5 * rng.random_range(-3.0..3.0) + 499.5f64).round())))
                    .collect(),
            };
            out.push(' ');
            out.push_str(&vals.join(" "));
        }
        // ml-4m joins humans with a trailing space.
        out.push(' ');
    }
    out
}

fn sam(rng: &mut impl Rng) -> String {
    let mut parts: Vec<String> = Vec::new();
    for _ in 0..7 {
        parts.push(format!("point v0={} v1={}", rng.random_range(0..224), rng.random_range(0..224)));
        let n = rng.random_range(0..=2);
        if n == 0 {
            parts.push("none".into());
        }
        for _ in 0..n {
            let (y0, y1) = (rng.random_range(0..224), rng.random_range(0..224));
            let (x0, x1) = (rng.random_range(0..224), rng.random_range(0..224));
            let (y0, y1, x0, x1): (u32, u32, u32, u32) = (y0.min(y1), y0.max(y1), x0.min(x1), x0.max(x1));
            parts.push(format!("polygon v0={x0} v1={y0} v2={x1} v3={y1}"));
            parts.extend((0..16).map(|_| code(rng.random_range(0..1024))));
        }
    }
    parts.join(" ")
}
