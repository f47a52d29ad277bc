//! Text serializers of 4M's sequence modalities (reference §2.2): each turns ml-4m's JSON
//! value into the exact string ml-4m's `modality_transforms.py` feeds the text tokenizer, and
//! parses such a string back (within binning precision, as ml-4m's `plotting_utils.py` does).
//!
//! - [`det`]: object detections ([`Detections`]), with crop + horizontal flip.
//! - [`metadata`]: the 21 metadata types ([`Metadata`]), key order shuffled per call.
//! - [`palette`]: color palettes ([`ColorPalettes`], [`Palette`]), length sampled per call.
//! - [`poses`]: HMR2.0 human poses ([`HumanPoses`]), crop only, group order shuffled per call.
//! - [`sam`]: SAM instances of one crop ([`SamInstances`]), query points drawn per call.
//!
//! Every random choice takes a caller-supplied `&mut impl rand::Rng`, so callers control
//! determinism. Numbers are rounded the way Python's `round` does (half to even).

pub mod det;
pub mod metadata;
pub mod palette;
pub mod poses;
pub mod sam;

pub use det::{DetBox, DetInstance, Detections};
pub use metadata::{Metadata, MetadataBinning, MetadataKey};
pub use palette::{ColorPalettes, Palette};
pub use poses::{HumanPose, HumanPoses};
pub use sam::{SamInstance, SamInstances, SamQuery};

use serde_json::Value;

use crate::error::{Error, Result};

/// Number of coordinate bins of ml-4m's `vK=n` tokens (`coord_bins=1000`).
pub const COORD_BINS: u32 = 1000;

/// A crop of the original image, as ml-4m's crop settings give it (pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    /// Top edge of the crop in the original image.
    pub top: f64,
    /// Left edge of the crop in the original image.
    pub left: f64,
    /// Crop height.
    pub height: f64,
    /// Crop width.
    pub width: f64,
    /// Height of the original image.
    pub orig_height: f64,
    /// Width of the original image.
    pub orig_width: f64,
}

impl Crop {
    /// The identity crop of an image of `height` × `width` pixels.
    pub fn full(height: f64, width: f64) -> Self {
        Self { top: 0.0, left: 0.0, height, width, orig_height: height, orig_width: width }
    }

    /// Albumentations' `bbox_crop`: maps a normalized box of the original image to normalized
    /// coordinates of the crop (no clipping).
    pub fn apply(&self, b: [f64; 4]) -> [f64; 4] {
        [
            (b[0] * self.orig_width - self.left) / self.width,
            (b[1] * self.orig_height - self.top) / self.height,
            (b[2] * self.orig_width - self.left) / self.width,
            (b[3] * self.orig_height - self.top) / self.height,
        ]
    }
}

/// Python's `round(x)` on a float: round half to even.
pub(crate) fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// `round(x * (bins - 1))` for a normalized coordinate.
pub(crate) fn quantize(x: f64) -> i64 {
    py_round(x * f64::from(COORD_BINS - 1))
}

/// A parsed `vK=n` token: `(K, n)`.
pub(crate) fn parse_coord(modality: &'static str, token: &str) -> Result<(u32, i64)> {
    let bad = |reason: &str| Error::ParseText { modality, token: token.to_string(), reason: reason.to_string() };
    let rest = token.strip_prefix('v').ok_or_else(|| bad("expected a `vK=n` token"))?;
    let (axis, value) = rest.split_once('=').ok_or_else(|| bad("expected a `vK=n` token"))?;
    let axis: u32 = axis.parse().map_err(|_| bad("axis is not an integer"))?;
    let value: i64 = value.parse().map_err(|_| bad("value is not an integer"))?;
    Ok((axis, value))
}

/// Whether `token` looks like a `vK=n` coordinate token (ml-4m tests `"=" in token`).
pub(crate) fn is_coord(token: &str) -> bool {
    token.contains('=')
}

/// JSON access helpers whose errors name the offending key path.
pub(crate) struct Json {
    pub(crate) modality: &'static str,
}

impl Json {
    pub(crate) fn err(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::Field { modality: self.modality, key: key.to_string(), reason: reason.into() }
    }

    pub(crate) fn parse(&self, text: &str) -> Result<Value> {
        serde_json::from_str(text).map_err(|source| Error::Json { origin: self.modality.to_string(), source })
    }

    pub(crate) fn get<'a>(&self, v: &'a Value, key: &str, path: &str) -> Result<&'a Value> {
        let obj = v.as_object().ok_or_else(|| self.err(path, "expected an object"))?;
        obj.get(key).ok_or_else(|| self.err(&join(path, key), "missing"))
    }

    pub(crate) fn array<'a>(&self, v: &'a Value, path: &str) -> Result<&'a Vec<Value>> {
        v.as_array().ok_or_else(|| self.err(path, "expected an array"))
    }

    pub(crate) fn f64(&self, v: &Value, path: &str) -> Result<f64> {
        v.as_f64().ok_or_else(|| self.err(path, format!("expected a number, got {v}")))
    }

    pub(crate) fn str<'a>(&self, v: &'a Value, path: &str) -> Result<&'a str> {
        v.as_str().ok_or_else(|| self.err(path, format!("expected a string, got {v}")))
    }

    /// A flat array of exactly `n` numbers (nested arrays are flattened, like `np.flatten`).
    pub(crate) fn numbers(&self, v: &Value, n: Option<usize>, path: &str) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        self.flatten(v, path, &mut out)?;
        match n {
            Some(n) if out.len() != n => Err(self.err(path, format!("expected {n} numbers, got {}", out.len()))),
            _ => Ok(out),
        }
    }

    fn flatten(&self, v: &Value, path: &str, out: &mut Vec<f64>) -> Result<()> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|x| self.flatten(x, path, out)),
            _ => {
                out.push(self.f64(v, path)?);
                Ok(())
            }
        }
    }
}

/// `path.key` (or `key` at the root).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}
