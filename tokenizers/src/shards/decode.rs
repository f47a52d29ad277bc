//! Member decoding by extension, following ml-4m's `wds_decoder` plus webdataset's basic
//! handlers, and typed views of the arrays ml-4m stores (tokens, crop settings, T5 embeddings).

use std::collections::BTreeMap;

use serde_json::Value;

use super::npy::{NdArray, decode_npy, decode_npz};
use super::origin::Origin;
use super::rgb::{CropSetting, Rgb8Image, decode_image};
use crate::error::Result;

/// A decoded member.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// `.png`, `.jpg`, `.jpeg`: an RGB8 image.
    Image(Rgb8Image),
    /// `.npy`: one array.
    Array(NdArray),
    /// `.npz`: named arrays (`emb`, `mask_valid` for t5_caption).
    Arrays(BTreeMap<String, NdArray>),
    /// `.json`, `.jsn`: a JSON value.
    Json(Value),
    /// `.txt`, `.text`: UTF-8 text.
    Text(String),
    /// Any other extension (including compressed `.gz`): the raw bytes, undecoded.
    Bytes(Vec<u8>),
}

/// Decodes `bytes` according to the member extension `ext` (case-insensitive; the last
/// dot-separated component decides, as in webdataset).
pub fn decode_member(ext: &str, bytes: &[u8], origin: &Origin) -> Result<Decoded> {
    let last = ext.rsplit('.').next().unwrap_or(ext).to_ascii_lowercase();
    Ok(match last.as_str() {
        "png" | "jpg" | "jpeg" => Decoded::Image(decode_image(bytes, &last, origin)?),
        "npy" => Decoded::Array(decode_npy(bytes, origin)?),
        "npz" => Decoded::Arrays(decode_npz(bytes, origin)?),
        "json" | "jsn" => Decoded::Json(decode_json(bytes, origin)?),
        "txt" | "text" => Decoded::Text(decode_text(bytes, origin)?),
        _ => Decoded::Bytes(bytes.to_vec()),
    })
}

/// Parses a JSON member; errors name the file, key, member and serde's line/column.
pub fn decode_json(bytes: &[u8], origin: &Origin) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| origin.error(format!("malformed JSON: {e}")))
}

/// Reads a UTF-8 text member.
pub fn decode_text(bytes: &[u8], origin: &Origin) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| origin.error(format!("not UTF-8 text: {e}")))
}

/// Encodes a JSON member (compact, as Python's `json.dumps` without indent would, modulo spacing).
pub fn encode_json(value: &Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// Encodes a text member (UTF-8 bytes).
pub fn encode_text(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// Pre-computed tokens `(n_crops, n_tokens)`, widened to i64 as ml-4m's `tok_to_int64` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenArray {
    /// Number of crops (rows).
    pub n_crops: usize,
    /// Tokens per crop (columns).
    pub n_tokens: usize,
    /// `n_crops * n_tokens` token ids, row-major.
    pub ids: Vec<i64>,
}

impl TokenArray {
    /// Checks that `array` is a 2-D integer array (with `n_tokens` columns when given).
    pub fn from_array(array: &NdArray, n_tokens: Option<usize>, origin: &Origin) -> Result<Self> {
        let ids = array.to_i64().ok_or_else(|| origin.error(format!("token arrays must be integers, got dtype '{}'", array.dtype())))?;
        let [rows, cols] = array.shape[..] else {
            return Err(origin.error(format!("token arrays must have shape (n_crops, n_tokens), got {:?}", array.shape)));
        };
        if let Some(n) = n_tokens.filter(|&n| n != cols) {
            return Err(origin.error(format!("expected {n} tokens per crop, got shape {:?}", array.shape)));
        }
        if rows == 0 {
            return Err(origin.error("token array has no crops"));
        }
        Ok(Self { n_crops: rows, n_tokens: cols, ids })
    }

    /// The tokens of crop `i` (ml-4m picks row `rand_aug_idx`).
    pub fn crop(&self, i: usize) -> Option<&[i64]> {
        self.ids.get(i * self.n_tokens..(i + 1) * self.n_tokens)
    }
}

/// Parses a crop-settings array `(n_crops, 5)` = `[top, left, h, w, hflip]`.
pub fn crop_settings_from_array(array: &NdArray, origin: &Origin) -> Result<Vec<CropSetting>> {
    let v = array.to_i64().ok_or_else(|| origin.error(format!("crop settings must be integers, got dtype '{}'", array.dtype())))?;
    if array.shape.len() != 2 || array.shape[1] != 5 || array.shape[0] == 0 {
        return Err(origin.error(format!("crop settings must have shape (n_crops, 5), got {:?}", array.shape)));
    }
    v.chunks_exact(5)
        .enumerate()
        .map(|(i, r)| {
            if r[2] <= 0 || r[3] <= 0 || !(0..=1).contains(&r[4]) {
                return Err(origin.error(format!("crop {i} {r:?}: need h > 0, w > 0 and hflip in {{0, 1}}")));
            }
            Ok(CropSetting { top: r[0], left: r[1], height: r[2], width: r[3], hflip: r[4] == 1 })
        })
        .collect()
}

/// ml-4m's t5_caption `.npz`: `emb` `(n_caps, L, D)` as f32 and `mask_valid` `(n_caps, L)`.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Embeddings {
    /// `(n_caps, L, D)`.
    pub shape: [usize; 3],
    /// The embeddings, row-major.
    pub emb: Vec<f32>,
    /// `n_caps * L` validity flags.
    pub mask_valid: Vec<bool>,
}

impl T5Embeddings {
    /// Checks and converts the arrays of a t5_caption `.npz`.
    pub fn from_arrays(arrays: &BTreeMap<String, NdArray>, origin: &Origin) -> Result<Self> {
        let get = |name: &str| {
            arrays.get(name).ok_or_else(|| origin.error(format!("npz has no '{name}' array (has {:?})", arrays.keys().collect::<Vec<_>>())))
        };
        let (emb, mask) = (get("emb")?, get("mask_valid")?);
        let [n, l, d] = emb.shape[..] else { return Err(origin.error(format!("'emb' must be (n_caps, L, D), got {:?}", emb.shape))) };
        if mask.shape != [n, l] {
            return Err(origin.error(format!("'mask_valid' must be {:?} to match 'emb', got {:?}", [n, l], mask.shape)));
        }
        let m = mask.to_i64().ok_or_else(|| origin.error(format!("'mask_valid' must be bool or integer, got '{}'", mask.dtype())))?;
        Ok(Self { shape: [n, l, d], emb: emb.to_f32(), mask_valid: m.iter().map(|&x| x != 0).collect() })
    }
}
