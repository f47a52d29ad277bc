//! Records of ml-4m tar shards and text corpora, transformed like ml-4m's
//! `UnifiedDataTransform` with `PreTokenizedImageAugmenter` (reference §6.3): one crop index
//! per sample (uniform over the stored crops, drawn from the sample's own stream), applied to
//! every modality — token rows, RGB crop/resize/flip, det boxes cropped and flipped, human poses
//! cropped (not flipped), captions/SAM/T5 by crop index; metadata and palettes unchanged.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tessera_protocol::SampleRef;
use tessera_tokenizers::masking::{ModalityValue, SampleValues};
use tessera_tokenizers::serialize::{ColorPalettes, Crop, Detections, HumanPoses, Metadata, SamInstances};
use tessera_tokenizers::shards::{
    CropSetting, Decoded, DecodedRecord, NameMap, RawRecord, ResizeFilter, ShardDataset, T5Embeddings, TextCorpus, TextFormat, TokenArray,
    crop_settings_from_array, rgb_transform,
};
use tessera_tokenizers::{Error as TokError, Modality, ModalityKind};

use super::records::RecordReader;
use crate::error::Result;

/// Member holding the crop settings `(n_crops, 5)`.
const CROP_SETTINGS: &str = "crop_settings";

/// A multi-folder ml-4m shard dataset read by record index.
#[derive(Debug)]
pub struct ShardRecords {
    dataset: ShardDataset,
    modalities: Vec<Modality>,
    seed: u64,
}

impl ShardRecords {
    /// Opens (indexes) the shards of `pattern`; `modalities` are the ones the dataset provides.
    pub fn open(pattern: &str, name_map: &BTreeMap<String, String>, modalities: &[Modality], seed: u64) -> Result<Self> {
        let map: NameMap = name_map.clone().into_iter().collect();
        Ok(Self { dataset: ShardDataset::open(pattern, &map)?, modalities: modalities.to_vec(), seed })
    }
}

impl RecordReader for ShardRecords {
    fn len(&self) -> u64 {
        self.dataset.len() as u64
    }

    fn values(&self, r: &SampleRef) -> Result<SampleValues> {
        let raw = self.dataset.read(r.record as usize)?;
        let mut rng = ChaCha8Rng::seed_from_u64(tessera_protocol::seeds::augmentation(self.seed, r.index));
        Ok(transform(&raw, &self.modalities, &mut rng)?)
    }
}

/// The decoded member of modality `m` (looked up by modality key, then by its default folder).
fn member(rec: &DecodedRecord, m: Modality) -> Option<(&str, &Decoded)> {
    [m.key(), m.spec().folder].into_iter().find_map(|name| rec.members.get(name).map(|d| (name, d)))
}

/// ml-4m's transform of one decoded record into the values masking takes.
pub fn transform(raw: &RawRecord, modalities: &[Modality], rng: &mut ChaCha8Rng) -> std::result::Result<SampleValues, TokError> {
    let rec = &raw.decode()?;
    let crops: Option<Vec<CropSetting>> = match rec.members.get(CROP_SETTINGS) {
        Some(Decoded::Array(a)) => Some(crop_settings_from_array(a, &raw.origin(CROP_SETTINGS))?),
        Some(_) => return Err(raw.origin(CROP_SETTINGS).error("crop settings must be an .npy array")),
        None => None,
    };
    let n_crops = crops.as_ref().map_or(1, Vec::len).max(1);
    let c = rng.random_range(0..n_crops);
    // The original image size comes from the RGB member (ml-4m's `main_augment_domain`).
    let image = modalities.iter().find_map(|&m| match member(rec, m) {
        Some((_, Decoded::Image(img))) => Some(img),
        _ => None,
    });
    let image = image.or_else(|| match rec.members.get("rgb") {
        Some(Decoded::Image(img)) => Some(img),
        _ => None,
    });
    let setting = match (&crops, image) {
        (Some(cs), _) => Some(cs[c]),
        // Without crop settings: the square centre crop, unflipped (ml-4m's crop 0).
        (None, Some(img)) => {
            let side = img.width.min(img.height) as i64;
            Some(CropSetting {
                top: (img.height as i64 - side) / 2,
                left: (img.width as i64 - side) / 2,
                height: side,
                width: side,
                hflip: false,
            })
        }
        (None, None) => None,
    };
    let crop = match (setting, image) {
        (Some(s), Some(img)) => Some(Crop {
            top: s.top as f64,
            left: s.left as f64,
            height: s.height as f64,
            width: s.width as f64,
            orig_height: img.height as f64,
            orig_width: img.width as f64,
        }),
        _ => None,
    };
    let flip = setting.is_some_and(|s| s.hflip);

    let mut out = SampleValues::new();
    for &m in modalities {
        let Some((name, value)) = member(rec, m) else {
            return Err(raw.origin(m.key()).error(format!("no member for modality {m} (members: {})", members(rec))));
        };
        let origin = raw.origin(name);
        let wrong = |what: &str| origin.error(format!("expected {what} for {m}"));
        let spec = m.spec();
        let v = match spec.kind {
            ModalityKind::ImageTokens | ModalityKind::GlobalTokens => {
                let Decoded::Array(a) = value else { return Err(wrong("an .npy token array")) };
                let tokens = TokenArray::from_array(a, Some(spec.max_tokens), &origin)?;
                let row = tokens.crop(c % tokens.n_crops.max(1)).ok_or_else(|| origin.error("token array has no rows"))?;
                ModalityValue::Tokens(row.to_vec())
            }
            ModalityKind::Pixels => {
                let Decoded::Image(img) = value else { return Err(wrong("an image")) };
                let s = setting.expect("an image gives a crop setting");
                ModalityValue::Pixels(rgb_transform(img, &s, spec.image_size, ResizeFilter::Bicubic)?.data)
            }
            ModalityKind::SequenceEmbedding => {
                let Decoded::Arrays(arrays) = value else { return Err(wrong("an .npz with emb and mask_valid")) };
                let t5 = T5Embeddings::from_arrays(arrays, &origin)?;
                let [n, l, e] = t5.shape;
                let k = c % n.max(1);
                let mut data = Vec::new();
                for row in 0..l {
                    if t5.mask_valid[k * l + row] {
                        data.extend_from_slice(&t5.emb[(k * l + row) * e..(k * l + row + 1) * e]);
                    }
                }
                ModalityValue::Embeddings { rows: data.len() / e.max(1), dim: e, data }
            }
            ModalityKind::Sequence => sequence_value(m, value, c, crop.as_ref(), flip, rng).map_err(|e| origin.error(e.to_string()))?,
        };
        out.insert(m, v);
    }
    Ok(out)
}

fn members(rec: &DecodedRecord) -> String {
    rec.members.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Entry `c` of a per-crop list (aligned captions, SAM instances), or the value itself.
fn per_crop(v: &Value, c: usize) -> &Value {
    match v {
        Value::Array(items) if !items.is_empty() => &items[c % items.len()],
        other => other,
    }
}

fn sequence_value(
    m: Modality,
    value: &Decoded,
    c: usize,
    crop: Option<&Crop>,
    flip: bool,
    rng: &mut ChaCha8Rng,
) -> std::result::Result<ModalityValue, TokError> {
    let json = match value {
        Decoded::Json(v) => v,
        Decoded::Text(t) => return Ok(ModalityValue::Text(t.trim().to_string())),
        _ => return Err(TokError::Field { modality: m.key(), key: String::new(), reason: "expected a .json or .txt member".into() }),
    };
    let bad = |reason: &str| TokError::Field { modality: m.key(), key: String::new(), reason: reason.into() };
    Ok(match m {
        Modality::Caption => match per_crop(json, c) {
            Value::String(s) => ModalityValue::Text(s.clone()),
            Value::Object(o) => ModalityValue::Text(
                o.get("caption").and_then(Value::as_str).ok_or_else(|| bad("entry has no string 'caption'"))?.to_string(),
            ),
            _ => return Err(bad("captions must be strings or {\"caption\": ...} objects")),
        },
        Modality::Det => ModalityValue::Text(Detections::from_json(&json.to_string())?.to_text(crop, flip)),
        Modality::Metadata => {
            let map = json.as_object().ok_or_else(|| bad("metadata must be a JSON object"))?;
            ModalityValue::Chunks(Metadata::from_map(map)?.to_chunks(rng))
        }
        Modality::ColorPalette => ModalityValue::Text(ColorPalettes::from_value(json)?.to_text(rng)?),
        Modality::HumanPoses => {
            let full = crop.copied().unwrap_or_else(|| Crop::full(224.0, 224.0));
            ModalityValue::Text(HumanPoses::from_value(per_crop(json, 0))?.to_text(&full, rng))
        }
        Modality::SamInstance => ModalityValue::Text(SamInstances::from_value(per_crop(json, c))?.to_text(rng)),
        _ => match json {
            Value::String(s) => ModalityValue::Text(s.clone()),
            _ => return Err(bad("no JSON transform for this modality; store it as text")),
        },
    })
}

/// A text corpus (C4-style co-training) whose documents become `caption` values.
#[derive(Debug)]
pub struct TextRecords {
    corpus: TextCorpus,
}

impl TextRecords {
    /// Opens (indexes) the files of `pattern`: JSON lines with `field` holding the text, or
    /// plain text when the files end in `.txt`.
    pub fn open(pattern: &str, field: &str) -> Result<Self> {
        let format = if pattern.ends_with(".txt") { TextFormat::Lines } else { TextFormat::JsonLines { field: field.to_string() } };
        Ok(Self { corpus: TextCorpus::open(pattern, format)? })
    }
}

impl RecordReader for TextRecords {
    fn len(&self) -> u64 {
        self.corpus.len() as u64
    }

    fn values(&self, r: &SampleRef) -> Result<SampleValues> {
        let rec = self.corpus.read(r.record as usize)?;
        Ok(SampleValues::from([(Modality::Caption, ModalityValue::Text(rec.text))]))
    }
}
