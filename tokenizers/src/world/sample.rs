//! One generated sample: the scene drawn from (seed, index), its rendered maps, annotations and
//! crop settings, and its encoding into one member per modality folder.

use std::io::Cursor;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::annotate::{ImageStats, Visible, caption, detections, image_stats, metadata, palette, visible_objects};
use super::features::{GLOBAL_DIM, MAP_DIM, PATCH, feature_map, global_feature};
use super::render::Frame;
use super::scene::Scene;
use super::spec::WorldSpec;
use crate::error::{Error, Result};
use crate::shards::rgb::{Rgb8Image, encode_png};
use crate::shards::{ArrayData, NdArray, encode_json, encode_npy};

/// One modality folder of a world: its member extension, what the member holds, and which 4M
/// modality it feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folder {
    /// Folder name (also the modality name in `ShardDataset` records).
    pub name: &'static str,
    /// Member extension.
    pub ext: &'static str,
    /// What the member holds.
    pub content: &'static str,
    /// The 4M modality it feeds, and how.
    pub feeds: &'static str,
}

const fn folder(name: &'static str, ext: &'static str, content: &'static str, feeds: &'static str) -> Folder {
    Folder { name, ext, content, feeds }
}

/// The modality folders, in pattern order.
pub const FOLDERS: [Folder; 13] = [
    folder("rgb", "png", "RGB8 image (gamma 2)", "rgb@224 (pixels; tokenize into tok_rgb@224)"),
    folder(
        "depth",
        "npy",
        "float32 (H, W): depth along the camera axis, world units; 30.0 for the sky",
        "tok_depth@224 (via the depth tokenizer)",
    ),
    folder(
        "normal",
        "png",
        "RGB8: camera-frame unit normal (x right, y up, z towards the camera) as (n + 1) / 2 * 255; sky (0, 0, 1)",
        "tok_normal@224 (via the normal tokenizer)",
    ),
    folder(
        "semseg",
        "png",
        "gray8: class id (0 background, 1 sphere, 2 cube, 3 cylinder, 4 cone)",
        "tok_semseg@224 (via the semseg tokenizer)",
    ),
    folder("instance", "png", "gray8: instance id (0 background, i + 1 object i)", "sam_instance (masks per instance)"),
    folder(
        "edges",
        "png",
        "gray8: 255 on instance boundaries (a 4-neighbour has another id), else 0",
        "tok_sam_edge@224 / tok_canny_edge@224",
    ),
    folder("caption", "json", "JSON list, one caption per crop (the whole-image caption)", "caption"),
    folder("det", "json", "ml-4m detection JSON: visible objects' tight boxes, normalized, score 1", "det"),
    folder("metadata", "json", "ml-4m metadata JSON", "metadata"),
    folder("color_palette", "json", "ml-4m colour-palette JSON, lengths 1..=7", "color_palette"),
    folder("global_feature", "npy", "float32 (64,): unit-length global descriptor", "a global feature (like tok_dinov2_global's input)"),
    folder("feature_map", "npy", "float32 (32, H/16, W/16): per-16-px-patch descriptor", "a dense feature map (like tok_clip@224's input)"),
    folder("crop_settings", "npy", "int64 (n_crops, 5): [top, left, h, w, hflip], crop 0 the whole image", "crop_settings"),
];

/// Everything known about one sample before encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldSample {
    /// Global sample index.
    pub index: usize,
    /// The shard key (`{index:09}`).
    pub key: String,
    /// The scene.
    pub scene: Scene,
    /// Its rendered maps.
    pub frame: Frame,
    /// The visible objects, in object order.
    pub visible: Vec<Visible>,
    /// The caption.
    pub caption: String,
    /// RGB statistics.
    pub stats: ImageStats,
    /// ml-4m crop settings rows `[top, left, h, w, hflip]`.
    pub crops: Vec<[i64; 5]>,
}

/// SplitMix64's finaliser: decorrelates (seed, index, stream) into one RNG seed.
fn mix(seed: u64, index: usize, stream: u64) -> u64 {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl WorldSample {
    /// Generates sample `index` of `spec` (depends only on the seed, size, crops and index).
    pub fn generate(spec: &WorldSpec, index: usize) -> Self {
        let scene = Scene::sample(&mut ChaCha8Rng::seed_from_u64(mix(spec.seed, index, 1)));
        let frame = Frame::render(&scene, spec.size);
        let visible = visible_objects(&frame);
        let caption = caption(&scene, &visible, spec.size);
        let stats = image_stats(&frame.rgb);
        // Crops have their own stream so that changing n_crops leaves the scenes alone.
        let crops = crop_settings(&mut ChaCha8Rng::seed_from_u64(mix(spec.seed, index, 2)), spec.size, spec.n_crops);
        Self { index, key: format!("{index:09}"), scene, frame, visible, caption, stats, crops }
    }

    /// The detection JSON.
    pub fn detections(&self) -> Value {
        detections(&self.scene, &self.visible, self.frame.side)
    }

    /// The metadata JSON.
    pub fn metadata(&self) -> Value {
        metadata(&self.scene, &self.frame, &self.visible, &self.caption, &self.stats)
    }

    /// The members of this sample in [`FOLDERS`] order, as `(folder, ext, bytes)`.
    pub fn members(&self) -> Result<Vec<(&'static str, &'static str, Vec<u8>)>> {
        let f = &self.frame;
        let s = f.side;
        let normal: Vec<u8> = f.normal.iter().map(|&v| (((v + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0 + 0.5) as u8).collect();
        let rgb = |data: Vec<u8>| encode_png(&Rgb8Image { width: s, height: s, data });
        let g = s / PATCH;
        let bytes = vec![
            rgb(f.rgb.clone())?,
            encode_npy(&NdArray { shape: vec![s, s], data: ArrayData::F32(f.depth.clone()) }),
            rgb(normal)?,
            encode_gray_png(&f.semseg, s)?,
            encode_gray_png(&f.instance, s)?,
            encode_gray_png(&f.edges, s)?,
            encode_json(&json!(vec![self.caption.clone(); self.crops.len()])),
            encode_json(&self.detections()),
            encode_json(&self.metadata()),
            encode_json(&palette(f)),
            encode_npy(&NdArray {
                shape: vec![GLOBAL_DIM],
                data: ArrayData::F32(global_feature(&self.scene, f, &self.visible, &self.stats)),
            }),
            encode_npy(&NdArray { shape: vec![MAP_DIM, g, g], data: ArrayData::F32(feature_map(f)) }),
            encode_npy(&NdArray { shape: vec![self.crops.len(), 5], data: ArrayData::I64(self.crops.concat()) }),
        ];
        Ok(FOLDERS.iter().zip(bytes).map(|(f, b)| (f.name, f.ext, b)).collect())
    }
}

/// Crop 0 is the whole (square) image; the others are random-resized crops (area 40–100 %,
/// aspect ratio 3/4–4/3, log-uniform) with a random horizontal flip, as torchvision's
/// `RandomResizedCrop` draws them.
fn crop_settings(rng: &mut impl Rng, side: usize, n: usize) -> Vec<[i64; 5]> {
    let s = side as i64;
    let mut crops = vec![[0, 0, s, s, 0]];
    for _ in 1..n {
        let mut crop = [0, 0, s, s, i64::from(rng.random_bool(0.5))];
        for _ in 0..10 {
            let area = rng.random_range(0.4..1.0) * (s * s) as f64;
            let ratio = rng.random_range((3f64 / 4.0).ln()..(4f64 / 3.0).ln()).exp();
            let (w, h) = ((area * ratio).sqrt().round() as i64, (area / ratio).sqrt().round() as i64);
            if (1..=s).contains(&w) && (1..=s).contains(&h) {
                crop = [rng.random_range(0..=s - h), rng.random_range(0..=s - w), h, w, crop[4]];
                break;
            }
        }
        crops.push(crop);
    }
    crops
}

/// A one-channel 8-bit PNG (label maps: exact values, no colour conversion).
fn encode_gray_png(data: &[u8], side: usize) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let err = |reason: String| Error::Encode { what: "gray png".into(), reason };
    let s = u32::try_from(side).map_err(|e| err(e.to_string()))?;
    let mut out = Cursor::new(Vec::new());
    image::codecs::png::PngEncoder::new(&mut out).write_image(data, s, s, image::ExtendedColorType::L8).map_err(|e| err(e.to_string()))?;
    Ok(out.into_inner())
}
