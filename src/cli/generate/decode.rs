//! From generated ids back to data: the modality tokenizers `tessera tokenize` trained (found by
//! their `tok_<m>@<size>` key in one directory) decode image-like targets into maps drawn as
//! PNGs; the text tokenizer turns sequence targets into text, parsed into JSON for boxes,
//! metadata and palettes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use image::{Rgb, RgbImage};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};
use tessera_model::tokenizer::{CONFIG_FILE, ModalityTokenizer, Tokenizer, token_folder_name};
use tessera_tokenizers::Modality;
use tessera_tokenizers::serialize::det::boxes_from_text;
use tessera_tokenizers::serialize::{Metadata, Palette};
use tessera_tokenizers::text::TextTokenizer;

/// The text tokenizer's file name inside a tokenizer directory.
pub const TEXT_TOKENIZER_FILE: &str = "text_tokenizer.json";

/// The tokenizers of one model: modality tokenizers by token-modality key, and the text one.
pub struct Assets {
    dir: PathBuf,
    modality: BTreeMap<String, Tokenizer>,
    text: Option<TextTokenizer>,
}

impl Assets {
    /// Every modality tokenizer in a sub-directory of `dir` (one with a tokenizer config), and
    /// the text tokenizer `text` (default: `dir/text_tokenizer.json` when present).
    pub fn load(dir: &Path, text: Option<&Path>) -> anyhow::Result<Self> {
        let mut modality = BTreeMap::new();
        let entries = std::fs::read_dir(dir).with_context(|| format!("--tokenizers {}: not a readable directory", dir.display()))?;
        for e in entries {
            let sub = e?.path();
            if sub.join(CONFIG_FILE).is_file() {
                let tok = Tokenizer::load(&sub, Device::Cpu).with_context(|| format!("loading the tokenizer in {}", sub.display()))?;
                modality.insert(token_folder_name(&tok), tok);
            }
        }
        let text_path = text.map(Path::to_path_buf).unwrap_or_else(|| dir.join(TEXT_TOKENIZER_FILE));
        let text = if text_path.is_file() {
            Some(TextTokenizer::from_file(&text_path).with_context(|| format!("loading {}", text_path.display()))?)
        } else if text.is_some() {
            bail!("text tokenizer {} does not exist", text_path.display());
        } else {
            None
        };
        Ok(Self { dir: dir.to_path_buf(), modality, text })
    }

    /// The tokenizer of token modality `m`, or an error naming it and the directory searched.
    pub fn tokenizer(&self, m: Modality) -> anyhow::Result<&Tokenizer> {
        self.modality.get(m.key()).with_context(|| {
            format!(
                "no tokenizer for {m} in {} (found: {}); `tessera tokenize` writes one per modality",
                self.dir.display(),
                if self.modality.is_empty() { "none".to_string() } else { self.modality.keys().cloned().collect::<Vec<_>>().join(", ") }
            )
        })
    }

    /// The text tokenizer, or an error naming the file that was looked for.
    pub fn text(&self) -> anyhow::Result<&TextTokenizer> {
        self.text.as_ref().with_context(|| format!("no text tokenizer: {} is missing", self.dir.join(TEXT_TOKENIZER_FILE).display()))
    }
}

/// The text of a generated sequence: its valid ids without `[PAD]`, `[EOS]`, `[SOS]` and
/// sentinels, decoded.
pub fn sequence_text(tok: &TextTokenizer, ids: &[i64]) -> anyhow::Result<String> {
    let mut drop: Vec<u32> = tok.sentinels().map(|(_, id)| id).collect();
    drop.extend([tok.pad_id(), tok.eos_id(), tok.sos_id()].into_iter().flatten());
    let kept: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).filter(|i| !drop.contains(i)).collect();
    Ok(tok.decode(&kept, false)?)
}

/// The valid ids (input mask false) of row `row` of a generated sequence target.
pub fn row_ids(tensor: &Tensor, input_mask: &Tensor, row: i64) -> anyhow::Result<Vec<i64>> {
    let ids: Vec<i64> = Vec::try_from(tensor.get(row).to_kind(Kind::Int64).to_device(Device::Cpu))?;
    let mask: Vec<bool> = Vec::try_from(input_mask.get(row).to_device(Device::Cpu))?;
    Ok(ids.into_iter().zip(mask).filter(|(_, m)| !m).map(|(i, _)| i).collect())
}

/// The structured form of a sequence target's text (boxes, metadata, palettes); `None` for
/// free text such as captions.
pub fn parse_sequence(m: Modality, text: &str) -> anyhow::Result<Option<Value>> {
    Ok(match m {
        Modality::Det => Some(Value::Array(
            boxes_from_text(text)
                .with_context(|| format!("{m}: parsing the generated text {text:?}"))?
                .into_iter()
                .map(|b| json!({"box": b.coords, "class": b.class_name}))
                .collect(),
        )),
        Modality::Metadata => {
            let md = Metadata::from_text(text).with_context(|| format!("{m}: parsing the generated text {text:?}"))?;
            Some(Value::Object(md.values.iter().map(|(k, v)| (k.name().to_string(), json!(v))).collect()))
        }
        Modality::ColorPalette => {
            Some(json!({"colors": Palette::from_text(text).with_context(|| format!("{m}: parsing the generated text {text:?}"))?.colors}))
        }
        _ => None,
    })
}

/// Decodes `ids_bt` of token modality `m` with its tokenizer: maps `(B, …)` in the tokenizer's
/// layout (standardised depth, class ids, normals in [−1, 1]).
pub fn decode_tokens(assets: &Assets, m: Modality, ids_bt: &Tensor) -> anyhow::Result<Tensor> {
    let tok = assets.tokenizer(m)?;
    let want = tok.tokens_per_sample() as i64;
    if ids_bt.size().last() != Some(&want) {
        bail!("{m}: {} generated tokens per sample, its tokenizer takes {want}", ids_bt.size().last().unwrap_or(&0));
    }
    Ok(tok.decode(&ids_bt.to_kind(Kind::Int64).to_device(tok.device()))?.to_device(Device::Cpu))
}

/// One decoded map as a picture: depth in grey over its own range (or `range`), class maps in
/// a palette, three-channel maps in [−1, 1] as colours.
pub fn render(tokenizer_modality: &str, x: &Tensor, range: Option<(f64, f64)>) -> RgbImage {
    match tokenizer_modality {
        "depth" => {
            let (lo, hi) = range.unwrap_or_else(|| (x.min().double_value(&[]), x.max().double_value(&[])));
            grey(x, lo, hi)
        }
        "semseg" => classes(x),
        _ => signed_rgb(x),
    }
}

/// A (1, S, S) map as grey levels, `lo` black and `hi` white.
pub fn grey(x: &Tensor, lo: f64, hi: f64) -> RgbImage {
    let s = x.size()[1] as u32;
    let v: Vec<f32> = Vec::try_from(x.to_kind(Kind::Float).reshape([-1])).unwrap_or_default();
    let scale = (hi - lo).max(1e-6);
    RgbImage::from_fn(s, s, |c, r| {
        let g = ((f64::from(v[(r * s + c) as usize]) - lo) / scale * 255.0).clamp(0.0, 255.0) as u8;
        Rgb([g, g, g])
    })
}

/// A (3, S, S) map in [−1, 1] (RGB, normals) as colours.
pub fn signed_rgb(x: &Tensor) -> RgbImage {
    let s = x.size()[1] as u32;
    let v: Vec<f32> = Vec::try_from(x.to_kind(Kind::Float).reshape([-1])).unwrap_or_default();
    let at = |ch: u32, r: u32, c: u32| ((v[(ch * s * s + r * s + c) as usize] + 1.0) * 127.5).clamp(0.0, 255.0) as u8;
    RgbImage::from_fn(s, s, |c, r| Rgb([at(0, r, c), at(1, r, c), at(2, r, c)]))
}

/// A (S, S) class-id map in a fixed palette (0, the background, is dark grey).
pub fn classes(x: &Tensor) -> RgbImage {
    const PALETTE: [[u8; 3]; 8] =
        [[40, 40, 40], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240]];
    let s = x.size()[0] as u32;
    let v: Vec<i64> = Vec::try_from(x.to_kind(Kind::Int64).reshape([-1])).unwrap_or_default();
    RgbImage::from_fn(s, s, |c, r| Rgb(PALETTE[v[(r * s + c) as usize].rem_euclid(PALETTE.len() as i64) as usize]))
}
