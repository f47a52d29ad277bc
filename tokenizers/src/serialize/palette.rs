//! Color palettes [modality_transforms.py: ColorPaletteTransform]: the file holds one palette
//! per length 1..=7; a length is sampled per call and written as
//! `v1={n} v0={r1} v0={g1} v0={b1} ...`. Palettes ignore crops and flips.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{Json, parse_coord, py_round};
use crate::error::{Error, Result};

const MODALITY: &str = "color_palette";

/// Longest palette (`randint(1, 7)`).
pub const MAX_COLORS: usize = 7;

/// One palette: RGB colors (values as stored; rounded when serialized).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Palette {
    /// The colors, `[r, g, b]` each.
    pub colors: Vec<[f64; 3]>,
}

impl Palette {
    /// `v1={n} v0={r1} v0={g1} v0={b1} ...` (values rounded half to even).
    pub fn to_text(&self) -> String {
        let mut out = vec![format!("v1={}", self.colors.len())];
        out.extend(self.colors.iter().flatten().map(|&c| format!("v0={}", py_round(c))));
        out.join(" ")
    }

    /// Parses a palette string; the `v1=` count must match the number of colors.
    pub fn from_text(text: &str) -> Result<Self> {
        let bad = |token: &str, reason: &str| Error::ParseText { modality: MODALITY, token: token.to_string(), reason: reason.to_string() };
        let mut tokens = text.split_whitespace();
        let first = tokens.next().ok_or_else(|| bad(text, "empty palette"))?;
        let (axis, n) = parse_coord(MODALITY, first)?;
        if axis != 1 {
            return Err(bad(first, "expected the `v1=` color count"));
        }
        let values = tokens
            .map(|t| match parse_coord(MODALITY, t)? {
                (0, v) => Ok(v as f64),
                _ => Err(bad(t, "expected a `v0=` color value")),
            })
            .collect::<Result<Vec<f64>>>()?;
        if values.len() % 3 != 0 || values.len() / 3 != n as usize {
            return Err(bad(text, &format!("`v1={n}` announces {n} colors but {} values follow", values.len())));
        }
        Ok(Self { colors: values.chunks(3).map(|c| [c[0], c[1], c[2]]).collect() })
    }
}

/// A palette file: `[{"1": [[r, g, b]], "2": [[..], [..]], ..., "7": [...]}]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ColorPalettes {
    /// Palettes by number of colors.
    pub by_length: BTreeMap<usize, Palette>,
}

impl<'de> Deserialize<'de> for ColorPalettes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Self::from_value(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl ColorPalettes {
    /// Parses ml-4m's palette JSON; errors name the offending key (`[0]."3"`).
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_value(&Json { modality: MODALITY }.parse(text)?)
    }

    /// Converts a parsed JSON value; errors name the offending key.
    pub fn from_value(root: &Value) -> Result<Self> {
        let j = Json { modality: MODALITY };
        let first = j.array(root, "")?.first().ok_or_else(|| j.err("[0]", "missing"))?;
        let obj = first.as_object().ok_or_else(|| j.err("[0]", "expected an object"))?;
        let mut by_length = BTreeMap::new();
        for (key, v) in obj {
            let path = format!("[0].\"{key}\"");
            let n: usize = key.parse().map_err(|_| j.err(&path, "palette length is not an integer"))?;
            let values = j.numbers(v, Some(3 * n), &path)?;
            by_length.insert(n, Palette { colors: values.chunks(3).map(|c| [c[0], c[1], c[2]]).collect() });
        }
        Ok(Self { by_length })
    }

    /// Samples a length in 1..=7 (`random.randint(1, 7)`) and returns that palette.
    pub fn sample(&self, rng: &mut impl Rng) -> Result<&Palette> {
        let n = rng.random_range(1..=MAX_COLORS);
        self.by_length.get(&n).ok_or_else(|| Error::Field {
            modality: MODALITY,
            key: format!("[0].\"{n}\""),
            reason: "missing".to_string(),
        })
    }

    /// The string of a randomly sampled palette length.
    pub fn to_text(&self, rng: &mut impl Rng) -> Result<String> {
        Ok(self.sample(rng)?.to_text())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn file() -> String {
        let lengths: Vec<String> = (1..=7)
            .map(|n| {
                let colors: Vec<String> = (0..n).map(|i| format!("[{}, {}, {}]", 10 * n + i, 100 + i, 200.5 + i as f64)).collect();
                format!("\"{n}\": [{}]", colors.join(", "))
            })
            .collect();
        format!("[{{{}}}]", lengths.join(", "))
    }

    #[test]
    fn string_layout() {
        let p = Palette { colors: vec![[255.0, 0.0, 12.4], [1.5, 2.5, 3.6]] };
        assert_eq!(p.to_text(), "v1=2 v0=255 v0=0 v0=12 v0=2 v0=2 v0=4");
        let palettes = ColorPalettes::from_json(&file()).unwrap();
        assert_eq!(palettes.by_length[&3].to_text(), "v1=3 v0=30 v0=100 v0=200 v0=31 v0=101 v0=202 v0=32 v0=102 v0=202");
    }

    #[test]
    fn length_is_sampled_from_the_rng() {
        let palettes: ColorPalettes = serde_json::from_str(&file()).unwrap();
        assert_eq!(palettes.by_length.len(), 7);
        let mut seen = [false; MAX_COLORS + 1];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..200 {
            let text = palettes.to_text(&mut rng).unwrap();
            let n = Palette::from_text(&text).unwrap().colors.len();
            assert!(text.starts_with(&format!("v1={n} ")));
            assert_eq!(text.split(' ').count(), 1 + 3 * n);
            seen[n] = true;
        }
        assert!(seen[1..].iter().all(|&s| s), "{seen:?}");
        let a = palettes.to_text(&mut ChaCha8Rng::seed_from_u64(5)).unwrap();
        assert_eq!(a, palettes.to_text(&mut ChaCha8Rng::seed_from_u64(5)).unwrap());
    }

    #[test]
    fn round_trip_within_rounding() {
        let p = Palette { colors: vec![[12.3, 45.6, 78.9], [0.0, 255.0, 127.5]] };
        let back = Palette::from_text(&p.to_text()).unwrap();
        assert_eq!(back.colors.len(), 2);
        for (a, b) in back.colors.iter().flatten().zip(p.colors.iter().flatten()) {
            assert!((a - b).abs() <= 0.5, "{a} vs {b}");
        }
        assert_eq!(back.to_text(), p.to_text());
    }

    #[test]
    fn malformed_input_is_named() {
        let err = ColorPalettes::from_json(r#"[{"1": [[1, 2, 3]], "2": [[1, 2, 3]]}]"#).unwrap_err();
        assert!(err.to_string().contains("\"2\""), "{err}");
        let err = ColorPalettes::from_json(r#"[{"x": []}]"#).unwrap_err();
        assert!(err.to_string().contains("\"x\""), "{err}");
        let only_one = ColorPalettes::from_json(r#"[{"1": [[1, 2, 3]]}]"#).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let missing = (0..50).find_map(|_| only_one.to_text(&mut rng).err()).unwrap();
        assert!(missing.to_string().contains("color_palette"), "{missing}");
        assert!(Palette::from_text("v1=2 v0=1 v0=2 v0=3").is_err());
        assert!(Palette::from_text("v0=1").is_err());
        assert!(Palette::from_text("").is_err());
    }
}
