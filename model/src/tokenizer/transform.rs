//! From a world member to a tokenizer input: decode the raw map, apply one ml-4m crop setting
//! `[top, left, h, w, hflip]` (§6.3), resize to the tokenizer's side and normalise (§7.2). The
//! crop comes before normalisation, as in ml-4m, so a depth crop is standardised on its own
//! statistics.
//!
//! Raw layouts: `depth` (1,H,W) world units, `normal`/`rgb` (3,H,W) in [−1, 1], `semseg` (H,W)
//! class ids, `feature_map` (C,G,G), `global_feature` (D).

use tch::{Kind, Tensor};
use tessera_tokenizers::shards::{CropSetting, Decoded, ShardDataset, crop_settings_from_array};

use super::config::{InputKind, TokenizerConfig};
use crate::error::{ModelError, Result};

/// Standardised depth is clamped to this many (truncated) standard deviations: a map whose
/// central 80 % is nearly constant would otherwise send its few outliers to huge values.
pub const DEPTH_CLAMP: f64 = 4.0;

fn bad(folder: &str, key: &str, reason: String) -> ModelError {
    ModelError::Tokenizer { modality: folder.to_string(), reason: format!("sample {key}: {reason}") }
}

/// ml-4m's truncated standardisation of one depth map: mean and variance of the values
/// between the 10th and 90th percentile, then `(x − mean) / sqrt(var + 1e-6)`.
pub fn truncated_standardize(depth: &[f32]) -> Vec<f32> {
    let mut sorted = depth.to_vec();
    sorted.sort_by(f32::total_cmp);
    let (lo, hi) = (sorted.len() / 10, sorted.len() - sorted.len() / 10);
    let kept = if hi > lo + 1 { &sorted[lo..hi] } else { &sorted[..] };
    let n = kept.len() as f64;
    let mean = kept.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = kept.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let std = (var + 1e-6).sqrt();
    depth.iter().map(|&v| ((v as f64 - mean) / std).clamp(-DEPTH_CLAMP, DEPTH_CLAMP) as f32).collect()
}

/// Reads record `i` of `ds` and decodes member `folder` into its raw layout; also returns the
/// sample key.
pub fn read_raw(ds: &ShardDataset, i: usize, folder: &str) -> Result<(String, Tensor)> {
    let rec = ds.read_only(i, &[folder])?.decode()?;
    let key = rec.key.clone();
    let member = rec.members.get(folder).ok_or_else(|| bad(folder, &key, format!("no '{folder}' member")))?;
    let t = match (folder, member) {
        ("depth", Decoded::Array(a)) if a.shape.len() == 2 => {
            Tensor::from_slice(&a.to_f32()).reshape([1, a.shape[0] as i64, a.shape[1] as i64])
        }
        ("normal" | "rgb", Decoded::Image(img)) => {
            let (h, w) = (img.height as i64, img.width as i64);
            Tensor::from_slice(&img.data).reshape([h, w, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 127.5 - 1.0
        }
        ("semseg", Decoded::Image(img)) => {
            // Gray PNGs decode to equal R, G, B: channel 0 is the class id.
            let (h, w) = (img.height as i64, img.width as i64);
            Tensor::from_slice(&img.data).reshape([h, w, 3]).select(2, 0).to_kind(Kind::Int64)
        }
        ("feature_map" | "global_feature", Decoded::Array(a)) => {
            let shape: Vec<i64> = a.shape.iter().map(|&s| s as i64).collect();
            Tensor::from_slice(&a.to_f32()).reshape(&shape)
        }
        ("depth" | "feature_map" | "global_feature", _) => return Err(bad(folder, &key, "not an array of the expected rank".into())),
        ("normal" | "rgb" | "semseg", _) => return Err(bad(folder, &key, "not an image".into())),
        _ => return Err(bad(folder, &key, format!("no tokenizer input transform for folder '{folder}'"))),
    };
    Ok((key, t))
}

/// The crop settings of record `i` of `ds` (which must join a `crop_settings` folder).
pub fn read_crops(ds: &ShardDataset, i: usize) -> Result<Vec<CropSetting>> {
    let raw = ds.read_only(i, &["crop_settings"])?;
    let origin = raw.origin("crop_settings");
    match raw.decode()?.members.remove("crop_settings") {
        Some(Decoded::Array(a)) => Ok(crop_settings_from_array(&a, &origin)?),
        _ => Err(bad("crop_settings", &raw.key, "missing, or not an array".into())),
    }
}

/// Turns a raw map (see the module doc) into the input of `cfg`: crop (image folders only),
/// horizontal flip (normals also negate x, ml-4m's `NormalTransform.image_hflip`), resize to
/// the tokenizer's side (bilinear; nearest for class ids), then depth standardisation.
pub fn prepare(folder: &str, key: &str, raw: &Tensor, crop: Option<&CropSetting>, cfg: &TokenizerConfig) -> Result<Tensor> {
    let spatial = matches!(folder, "depth" | "normal" | "rgb" | "semseg");
    if !spatial {
        return match crop {
            None => Ok(raw.shallow_clone()),
            Some(_) => Err(bad(folder, key, "feature folders have no per-crop version; tokenize single-crop worlds".into())),
        };
    }
    let size = match cfg.input {
        InputKind::Image { size, .. } | InputKind::ClassMap { size, .. } => size as i64,
        InputKind::Vector { .. } => return Err(bad(folder, key, "an image folder needs an image tokenizer".into())),
    };
    let is_class = folder == "semseg";
    let mut x_CHW = if is_class { raw.unsqueeze(0).to_kind(Kind::Float) } else { raw.shallow_clone() };
    if let Some(c) = crop {
        let (h, w) = (x_CHW.size()[1], x_CHW.size()[2]);
        if c.top < 0 || c.left < 0 || c.top + c.height > h || c.left + c.width > w {
            return Err(bad(folder, key, format!("crop {c:?} leaves the {h}×{w} map")));
        }
        x_CHW = x_CHW.narrow(1, c.top, c.height).narrow(2, c.left, c.width);
        if c.hflip {
            x_CHW = x_CHW.flip([2]);
            if folder == "normal" {
                // A mirrored scene's normals point the other way along x.
                x_CHW = Tensor::cat(&[-x_CHW.narrow(0, 0, 1), x_CHW.narrow(0, 1, 2)], 0);
            }
        }
    }
    if x_CHW.size()[1] != size || x_CHW.size()[2] != size {
        let x = x_CHW.unsqueeze(0);
        x_CHW =
            if is_class { x.upsample_nearest2d([size, size], None, None) } else { x.upsample_bilinear2d([size, size], false, None, None) }
                .squeeze_dim(0);
    }
    Ok(match folder {
        "semseg" => x_CHW.squeeze_dim(0).round().to_kind(Kind::Int64),
        "depth" => {
            let v: Vec<f32> = Vec::try_from(x_CHW.contiguous().reshape([-1]))?;
            Tensor::from_slice(&truncated_standardize(&v)).reshape([1, size, size])
        }
        _ => x_CHW.contiguous(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn cfg(modality: &str, size: usize) -> TokenizerConfig {
        TokenizerConfig::preset(modality, size).unwrap()
    }

    #[test]
    fn tokenizer_crops_flip_and_resize_like_ml4m() {
        let ramp = Tensor::arange(16, (Kind::Int64, Device::Cpu)).reshape([4, 4]);
        // Semseg: nearest resize keeps ids exact; the crop picks the right window.
        let crop = CropSetting { top: 0, left: 2, height: 2, width: 2, hflip: true };
        let out = prepare("semseg", "k", &ramp, Some(&crop), &cfg("semseg", 16)).unwrap();
        assert_eq!(out.size(), [16, 16]);
        assert_eq!(
            Vec::<i64>::try_from(out.get(0).narrow(0, 0, 16)).unwrap()[..],
            [3; 8].iter().chain(&[2; 8]).copied().collect::<Vec<_>>()[..]
        );
        // Normals: a flip negates x and only x.
        let n = Tensor::from_slice(&[0.5f32, 0.25, 0.75]).reshape([3, 1, 1]).expand([3, 16, 16], false).contiguous();
        let full = CropSetting { top: 0, left: 0, height: 16, width: 16, hflip: true };
        let out = prepare("normal", "k", &n, Some(&full), &cfg("normal", 16)).unwrap();
        assert_eq!(Vec::<f32>::try_from(out.select(2, 3).select(1, 5)).unwrap(), [-0.5, 0.25, 0.75]);
        // Out-of-bounds crops and cropped feature maps are refused.
        let outside = CropSetting { top: 3, left: 0, height: 2, width: 2, hflip: false };
        assert!(prepare("semseg", "k", &ramp, Some(&outside), &cfg("semseg", 16)).unwrap_err().to_string().contains("leaves"));
        let fm = Tensor::zeros([32, 4, 4], (Kind::Float, Device::Cpu));
        assert!(prepare("feature_map", "k", &fm, Some(&full), &cfg("feature_map", 64)).is_err());
    }
}
