//! Token-modality inputs from pictures: `--input tok_depth@64=depth.png` reads the picture in
//! the world's own file layout, prepares it exactly as `tessera tokenize` prepares a world
//! member (centre square, resize to the tokenizer's side, depth standardisation) and encodes it
//! with the modality tokenizer `tessera tokenize` trained, so a user gives an image, not ids.
//!
//! Picture layouts (those the world writes, and those `tessera generate` draws): depth as grey
//! levels (8 or 16 bit; the tokenizer standardises each map, so any increasing scale works),
//! segmentation as grey levels equal to the class ids, normals and RGB as colours in [0, 255]
//! for [−1, 1].

use std::path::Path;

use anyhow::{Context, bail};
use tch::{Device, Kind, Tensor};
use tessera_model::tokenizer::{ModalityTokenizer, prepare};
use tessera_tokenizers::Modality;
use tessera_tokenizers::shards::CropSetting;

use super::decode::Assets;

/// The picture at `path` as the raw map `prepare` takes for tokenizer modality `folder`:
/// depth (1, H, W), semseg (H, W) class ids, normal/rgb (3, H, W) in [−1, 1].
fn read_map(path: &Path, folder: &str, arg: &str) -> anyhow::Result<Tensor> {
    let img = image::open(path).with_context(|| format!("--input {arg}: not a readable image"))?;
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    Ok(match folder {
        "depth" => {
            let levels: Vec<f32> = img.to_luma16().into_raw().into_iter().map(f32::from).collect();
            Tensor::from_slice(&levels).reshape([1, h, w])
        }
        "semseg" => Tensor::from_slice(&img.to_luma8().into_raw()).to_kind(Kind::Int64).reshape([h, w]),
        "normal" | "rgb" => {
            Tensor::from_slice(&img.to_rgb8().into_raw()).reshape([h, w, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 127.5 - 1.0
        }
        other => bail!("--input {arg}: the {other} tokenizer does not take pictures; give the token ids as a JSON list"),
    })
}

/// Encodes the picture at `path` into the ids (1, T) of token modality `m` with its tokenizer
/// from `assets` (an error naming `m` and the `--tokenizers` directory when there is none).
pub fn image_to_tokens(m: Modality, path: &Path, assets: Option<&Assets>) -> anyhow::Result<Tensor> {
    let arg = format!("{m}={}", path.display());
    let assets = assets.with_context(|| {
        format!(
            "--input {arg}: a picture for a token modality is encoded with its tokenizer; give --tokenizers DIR (`tessera tokenize` output)"
        )
    })?;
    let tok = assets.tokenizer(m).with_context(|| format!("--input {arg}"))?;
    let folder = tok.config().modality.clone();
    let raw = read_map(path, &folder, &arg)?;
    let (h, w) = (raw.size()[raw.dim() - 2], raw.size()[raw.dim() - 1]);
    let s = h.min(w);
    // The centre square, as the RGB input of the user form.
    let crop = CropSetting { top: (h - s) / 2, left: (w - s) / 2, height: s, width: s, hflip: false };
    let x = prepare(&folder, &path.display().to_string(), &raw, Some(&crop), tok.config())?;
    let ids = tok.encode(&x.unsqueeze(0).to_device(tok.device()))?.to_device(Device::Cpu).to_kind(Kind::Int64);
    let want = m.spec().max_tokens as i64;
    if ids.size() != [1, want] {
        bail!("--input {arg}: its tokenizer gives {:?} ids, {m} has {want} tokens", ids.size());
    }
    Ok(ids)
}
