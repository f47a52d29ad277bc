//! Image metadata [modality_transforms.py: MetadataTransform]: each key becomes the chunk
//! `v1={type id} v0={binned value}`; the key order is shuffled per call. Decoding follows
//! [plotting_utils.py: decode_metadata].

use std::collections::BTreeMap;

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::parse_coord;
use crate::error::{Error, Result};

const MODALITY: &str = "metadata";

/// Largest value token (`special_vmax`).
const VMAX: i64 = 999;

/// Bin size of image dimensions (`image_dim_bin_size`).
pub const IMAGE_DIM_BIN_SIZE: i64 = 32;

/// How a metadata type is turned into its `v0=` value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetadataBinning {
    /// `value // 32`, clamped to [0, 999]; decoded as `k * 32`.
    ImageDim,
    /// An integer clamped to [0, 999].
    Int,
    /// The number of thresholds `<=` the value; decoded as the bin index.
    Manual(&'static [f64]),
    /// `int(clamp((v - vmin) / (vmax - vmin), 0, 1) * (bins - 1))`; decoded as
    /// `(vmax - vmin) * k / bins + vmin` (sic: `bins`, not `bins - 1`).
    MinMax {
        /// Lower end of the range.
        vmin: f64,
        /// Upper end of the range.
        vmax: f64,
        /// Number of bins.
        bins: u32,
    },
}

macro_rules! metadata_keys {
    ($($variant:ident = $id:literal, $name:literal, $binning:expr;)*) => {
        /// The 21 metadata types of 4M-21, with ml-4m's type ids (`v1={id}`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum MetadataKey {
            $(
                #[doc = concat!("`", $name, "` (`v1=", stringify!($id), "`).")]
                $variant = $id,
            )*
        }

        impl MetadataKey {
            /// All types, in type-id order.
            pub const ALL: [MetadataKey; 21] = [$(MetadataKey::$variant),*];

            /// The JSON key.
            pub fn name(self) -> &'static str {
                match self { $(MetadataKey::$variant => $name),* }
            }

            /// How the value is binned.
            pub fn binning(self) -> MetadataBinning {
                match self { $(MetadataKey::$variant => $binning),* }
            }
        }
    };
}

const fn min_max(vmin: f64, vmax: f64) -> MetadataBinning {
    MetadataBinning::MinMax { vmin, vmax, bins: 50 }
}

use MetadataBinning::{ImageDim, Int, Manual};

metadata_keys! {
    OriginalWidth = 0, "original_width", ImageDim;
    OriginalHeight = 1, "original_height", ImageDim;
    CaptionNChars = 2, "caption_n_chars", Int;
    CaptionNWords = 3, "caption_n_words", Int;
    CaptionNSentences = 4, "caption_n_sentences", Int;
    NHumans = 5, "n_humans", Int;
    NSamInstances = 6, "n_sam_instances", Int;
    NCocoInstances = 7, "n_coco_instances", Int;
    CocoInstanceDiversity = 8, "coco_instance_diversity", Int;
    Colorfulness = 9, "colorfulness", min_max(0.0, 150.0);
    Brightness = 10, "brightness", min_max(0.0, 255.0);
    Contrast = 11, "contrast", min_max(0.0, 127.0);
    Saturation = 12, "saturation", min_max(0.0, 255.0);
    Entropy = 13, "entropy", min_max(0.0, 10.0);
    Walkability = 14, "walkability", min_max(0.0, 1.0);
    Objectness = 15, "objectness", min_max(0.0, 1.0);
    SemanticDiversity = 16, "semantic_diversity", Int;
    GeometricComplexity = 17, "geometric_complexity", min_max(0.0, 0.75);
    OcclusionScore = 18, "occlusion_score", min_max(0.0, 0.25);
    WatermarkScore = 19, "watermark_score", Manual(&[0.5]);
    AestheticScore = 20, "aesthetic_score", Manual(&[4.5, 5.5]);
}

impl MetadataKey {
    /// The type id written as `v1={id}`.
    pub fn type_id(self) -> u32 {
        self as u32
    }

    /// The type with this JSON key.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The type with this id.
    pub fn from_type_id(id: u32) -> Option<Self> {
        Self::ALL.get(id as usize).copied()
    }

    /// Whether the raw value must be an integer (image dims and integer types; ml-4m would
    /// otherwise write a float such as `v0=20.0`).
    pub fn is_integer(self) -> bool {
        matches!(self.binning(), ImageDim | Int)
    }

    /// The `v0=` value of a raw metadata value.
    pub fn bin(self, value: f64) -> i64 {
        match self.binning() {
            ImageDim => (value as i64).div_euclid(IMAGE_DIM_BIN_SIZE).clamp(0, VMAX),
            Int => (value as i64).clamp(0, VMAX),
            Manual(thresholds) => thresholds.iter().take_while(|&&t| value >= t).count() as i64,
            MetadataBinning::MinMax { vmin, vmax, bins } => {
                let v = vmin.max(value.min(vmax));
                (((v - vmin) / (vmax - vmin)) * f64::from(bins - 1)) as i64
            }
        }
    }

    /// The value decoded from a bin, as ml-4m's `decode_metadata` does.
    pub fn unbin(self, k: i64) -> f64 {
        match self.binning() {
            ImageDim => (k * IMAGE_DIM_BIN_SIZE) as f64,
            Int | Manual(_) => k as f64,
            MetadataBinning::MinMax { vmin, vmax, bins } => (vmax - vmin) * (k as f64 / f64::from(bins)) + vmin,
        }
    }
}

/// A metadata file: raw values by type (integers for image dims and integer types).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metadata {
    /// The values present, by type.
    pub values: BTreeMap<MetadataKey, f64>,
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        Self::from_map(&map).map_err(serde::de::Error::custom)
    }
}

impl Metadata {
    /// Parses ml-4m's metadata JSON; an unknown or mistyped key is an error naming it.
    pub fn from_json(text: &str) -> Result<Self> {
        let map: Map<String, Value> = serde_json::from_str(text).map_err(|source| Error::Json { origin: MODALITY.to_string(), source })?;
        Self::from_map(&map)
    }

    /// Converts a JSON object; an unknown or mistyped key is an error naming it.
    pub fn from_map(map: &Map<String, Value>) -> Result<Self> {
        let err = |key: &str, reason: String| Error::Field { modality: MODALITY, key: key.to_string(), reason };
        let mut values = BTreeMap::new();
        for (name, v) in map {
            let key = MetadataKey::from_name(name).ok_or_else(|| err(name, "unknown metadata key".to_string()))?;
            let value = if key.is_integer() {
                v.as_i64().ok_or_else(|| err(name, format!("expected an integer, got {v}")))? as f64
            } else {
                v.as_f64().ok_or_else(|| err(name, format!("expected a number, got {v}")))?
            };
            values.insert(key, value);
        }
        Ok(Self { values })
    }

    /// The chunks `v1={id} v0={bin}` in a random key order (ml-4m's `return_chunks=True`).
    pub fn to_chunks(&self, rng: &mut impl Rng) -> Vec<String> {
        let mut keys: Vec<MetadataKey> = self.values.keys().copied().collect();
        keys.shuffle(rng);
        keys.into_iter().map(|k| format!("v1={} v0={}", k.type_id(), k.bin(self.values[&k]))).collect()
    }

    /// The chunks joined by spaces (ml-4m's `return_chunks=False`).
    pub fn to_text(&self, rng: &mut impl Rng) -> String {
        self.to_chunks(rng).join(" ")
    }

    /// Parses `v1={id} v0={bin}` pairs back into decoded values (`decode_metadata`).
    pub fn from_text(text: &str) -> Result<Self> {
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let mut values = BTreeMap::new();
        for pair in tokens.chunks(2) {
            let bad =
                |token: &str, reason: &str| Error::ParseText { modality: MODALITY, token: token.to_string(), reason: reason.to_string() };
            let [id_tok, value_tok] = pair else { return Err(bad(pair[0], "type without a value")) };
            let (axis, id) = parse_coord(MODALITY, id_tok)?;
            if axis != 1 {
                return Err(bad(id_tok, "expected a `v1=` type token"));
            }
            let key = u32::try_from(id).ok().and_then(MetadataKey::from_type_id).ok_or_else(|| bad(id_tok, "unknown metadata type id"))?;
            let (axis, k) = parse_coord(MODALITY, value_tok)?;
            if axis != 0 {
                return Err(bad(value_tok, "expected a `v0=` value token"));
            }
            values.insert(key, key.unbin(k));
        }
        Ok(Self { values })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use MetadataKey as K;

    #[test]
    fn type_ids_and_names() {
        assert_eq!(MetadataKey::ALL.len(), 21);
        for (i, k) in MetadataKey::ALL.into_iter().enumerate() {
            assert_eq!(k.type_id() as usize, i);
            assert_eq!(MetadataKey::from_name(k.name()), Some(k));
        }
        assert_eq!(K::OriginalHeight.name(), "original_height");
        assert_eq!(K::SemanticDiversity.type_id(), 16);
        assert_eq!(K::AestheticScore.type_id(), 20);
        assert_eq!(MetadataKey::from_type_id(21), None);
    }

    #[test]
    fn binning_edge_cases() {
        // width // 32, clamped to [0, 999].
        assert_eq!(K::OriginalWidth.bin(31.0), 0);
        assert_eq!(K::OriginalWidth.bin(32.0), 1);
        assert_eq!(K::OriginalWidth.bin(640.0), 20);
        assert_eq!(K::OriginalHeight.bin(31_999.0), 999);
        assert_eq!(K::OriginalHeight.bin(40_000.0), 999);
        assert_eq!(K::OriginalHeight.bin(-1.0), 0);
        // Integer types: clamp only.
        assert_eq!(K::CaptionNChars.bin(1234.0), 999);
        assert_eq!(K::NHumans.bin(3.0), 3);
        assert_eq!(K::NHumans.bin(-2.0), 0);
        // Manual bins: number of thresholds <= value.
        assert_eq!(K::WatermarkScore.bin(0.4999), 0);
        assert_eq!(K::WatermarkScore.bin(0.5), 1);
        assert_eq!(K::AestheticScore.bin(4.49), 0);
        assert_eq!(K::AestheticScore.bin(4.5), 1);
        assert_eq!(K::AestheticScore.bin(5.49), 1);
        assert_eq!(K::AestheticScore.bin(5.5), 2);
        assert_eq!(K::AestheticScore.bin(9.0), 2);
        // Min/max, 50 bins: int(clamp(..) * 49).
        assert_eq!(K::Brightness.bin(-5.0), 0);
        assert_eq!(K::Brightness.bin(255.0), 49);
        assert_eq!(K::Brightness.bin(300.0), 49);
        assert_eq!(K::Brightness.bin(254.0), 48); // 254/255*49 = 48.8 -> 48 (truncation, not rounding)
        assert_eq!(K::Walkability.bin(0.5), 24); // 24.5 -> 24
        assert_eq!(K::Entropy.bin(1.0 / 49.0 * 10.0 + 1e-9), 1);
        assert_eq!(K::OcclusionScore.bin(0.125), 24);
        assert_eq!(K::GeometricComplexity.bin(0.75), 49);
        assert_eq!(K::Colorfulness.bin(75.0), 24);
        assert_eq!(K::Contrast.bin(127.0), 49);
    }

    #[test]
    fn decoding_follows_plotting_utils() {
        assert_eq!(K::OriginalWidth.unbin(20), 640.0);
        assert_eq!(K::AestheticScore.unbin(2), 2.0);
        // (vmax - vmin) * k / 50 + vmin: divides by bins, not bins - 1.
        assert!((K::Brightness.unbin(49) - 249.9).abs() < 1e-9);
        assert_eq!(K::Walkability.unbin(25), 0.5);
    }

    fn sample() -> &'static str {
        r#"{"original_width": 640, "original_height": 480, "caption_n_chars": 57, "caption_n_words": 11,
            "caption_n_sentences": 1, "n_humans": 2, "n_sam_instances": 1500, "n_coco_instances": 4,
            "coco_instance_diversity": 3, "colorfulness": 41.3, "brightness": 120.0, "contrast": 60.5,
            "saturation": 99.9, "entropy": 7.2, "walkability": 0.33, "objectness": 0.81,
            "semantic_diversity": 9, "geometric_complexity": 0.4, "occlusion_score": 0.07,
            "watermark_score": 0.1, "aesthetic_score": 5.1}"#
    }

    #[test]
    fn text_is_shuffled_chunks_driven_by_the_rng() {
        let m = Metadata::from_json(sample()).unwrap();
        assert_eq!(m.values.len(), 21);
        let a = m.to_chunks(&mut ChaCha8Rng::seed_from_u64(1));
        let b = m.to_chunks(&mut ChaCha8Rng::seed_from_u64(1));
        let c = m.to_chunks(&mut ChaCha8Rng::seed_from_u64(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut sorted = a.clone();
        sorted.sort_by_key(|s| s[3..s.find(' ').unwrap()].parse::<u32>().unwrap());
        let expected = [
            "v1=0 v0=20",
            "v1=1 v0=15",
            "v1=2 v0=57",
            "v1=3 v0=11",
            "v1=4 v0=1",
            "v1=5 v0=2",
            "v1=6 v0=999",
            "v1=7 v0=4",
            "v1=8 v0=3",
            "v1=9 v0=13",
            "v1=10 v0=23",
            "v1=11 v0=23",
            "v1=12 v0=19",
            "v1=13 v0=35",
            "v1=14 v0=16",
            "v1=15 v0=39",
            "v1=16 v0=9",
            "v1=17 v0=26",
            "v1=18 v0=13",
            "v1=19 v0=0",
            "v1=20 v0=1",
        ];
        assert_eq!(sorted, expected);
        assert_eq!(m.to_text(&mut ChaCha8Rng::seed_from_u64(1)), a.join(" "));
    }

    #[test]
    fn round_trip_within_bin_precision() {
        let m = Metadata::from_json(sample()).unwrap();
        let text = m.to_text(&mut ChaCha8Rng::seed_from_u64(7));
        let back = Metadata::from_text(&text).unwrap();
        assert_eq!(back.values.len(), m.values.len());
        for (&k, &v) in &m.values {
            let d = back.values[&k];
            match k.binning() {
                ImageDim => assert!(v - d >= 0.0 && v - d < 32.0, "{k:?}: {v} vs {d}"),
                Int => assert_eq!(d, v.clamp(0.0, 999.0), "{k:?}"),
                Manual(_) => assert_eq!(d as i64, k.bin(v), "{k:?}"),
                MetadataBinning::MinMax { vmin, vmax, .. } => {
                    // Encoding uses 49 steps and decoding 50, so allow two bins.
                    assert!((v - d).abs() <= 2.0 * (vmax - vmin) / 49.0, "{k:?}: {v} vs {d}")
                }
            }
        }
    }

    #[test]
    fn unknown_or_mistyped_keys_are_named() {
        let err = Metadata::from_json(r#"{"original_width": 640, "n_dogs": 3}"#).unwrap_err();
        assert!(err.to_string().contains("n_dogs") && err.to_string().contains("unknown"), "{err}");
        let err = Metadata::from_json(r#"{"n_humans": 2.5}"#).unwrap_err();
        assert!(err.to_string().contains("n_humans"), "{err}");
        let err = Metadata::from_json(r#"{"entropy": "high"}"#).unwrap_err();
        assert!(err.to_string().contains("entropy"), "{err}");
        let err = serde_json::from_str::<Metadata>(r#"{"n_dogs": 3}"#).unwrap_err();
        assert!(err.to_string().contains("n_dogs"), "{err}");
        assert!(Metadata::from_text("v1=21 v0=3").is_err());
        assert!(Metadata::from_text("v1=2").is_err());
        assert!(Metadata::from_text("v0=2 v0=3").is_err());
    }
}
