//! RGB members: PNG/JPEG decoding to RGB8, PNG encoding, and ml-4m's RGB transform
//! (crop → resize → horizontal flip → `to_tensor` → ImageNet normalisation, CHW f32).
//!
//! ml-4m crops with `TF.crop` (PIL `Image.crop`, zero-filled outside the image) and resizes with
//! `img.resize(size, resample=None)`, which in Pillow ≥ 7 means **bicubic**; bilinear is offered
//! too. The resampler below is a port of Pillow's `Resample.c` for 8-bit images (separable
//! convolution, antialiased when shrinking, 22-bit fixed-point coefficients, horizontal pass
//! first with an 8-bit intermediate), so PNG inputs give Pillow's pixels. JPEG decoding uses a
//! pure-Rust decoder whose IDCT and chroma upsampling differ from libjpeg's by a few levels
//! (at most 4 on the test fixture).

use std::io::Cursor;

use super::origin::Origin;
use crate::error::{Error, Result};

/// ImageNet mean used by ml-4m's `RGBTransform` (`IMAGENET_DEFAULT_MEAN`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation used by ml-4m's `RGBTransform` (`IMAGENET_DEFAULT_STD`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// An 8-bit RGB image, row-major interleaved (`data[(y * width + x) * 3 + c]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl Rgb8Image {
    /// An image from its size and interleaved RGB bytes; `None` when the length is wrong.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Option<Self> {
        (width.checked_mul(height).and_then(|n| n.checked_mul(3)) == Some(data.len())).then_some(Self { width, height, data })
    }

    /// An image filled with one colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Self {
        Self { width, height, data: rgb.iter().copied().cycle().take(width * height * 3).collect() }
    }

    /// The pixel at (`x`, `y`).
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// A float image in CHW layout, as ml-4m's transforms hand it to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChwImage {
    /// Number of channels (3).
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// `channels * height * width` values.
    pub data: Vec<f32>,
}

/// One of ml-4m's crop settings rows `[top, left, h, w, hflip]` (original-image pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropSetting {
    /// Top edge.
    pub top: i64,
    /// Left edge.
    pub left: i64,
    /// Height.
    pub height: i64,
    /// Width.
    pub width: i64,
    /// Whether the crop is flipped horizontally.
    pub hflip: bool,
}

impl CropSetting {
    /// The whole image, unflipped.
    pub fn full(width: usize, height: usize) -> Self {
        Self { top: 0, left: 0, height: height as i64, width: width as i64, hflip: false }
    }
}

/// Resampling filter of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeFilter {
    /// Pillow `BILINEAR` (triangle, support 1).
    Bilinear,
    /// Pillow `BICUBIC` (a = −0.5, support 2); what ml-4m gets from `resample=None`.
    #[default]
    Bicubic,
}

impl ResizeFilter {
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Decodes a PNG or JPEG member (by `ext`) to RGB8, dropping alpha like PIL's `convert('RGB')`.
pub fn decode_image(bytes: &[u8], ext: &str, origin: &Origin) -> Result<Rgb8Image> {
    let format = match ext.to_ascii_lowercase().as_str() {
        "png" => image::ImageFormat::Png,
        "jpg" | "jpeg" => image::ImageFormat::Jpeg,
        other => return Err(origin.error(format!("unsupported image extension '{other}'"))),
    };
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| origin.error(format!("cannot decode {ext}: {e}")))?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    Ok(Rgb8Image { width: w, height: h, data: rgb.into_raw() })
}

/// Encodes an image as PNG (for fixtures and tools).
pub fn encode_png(img: &Rgb8Image) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let err = |reason: String| Error::Encode { what: "png".into(), reason };
    let (w, h) = (u32::try_from(img.width).map_err(|e| err(e.to_string()))?, u32::try_from(img.height).map_err(|e| err(e.to_string()))?);
    let mut out = Cursor::new(Vec::new());
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&img.data, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| err(e.to_string()))?;
    Ok(out.into_inner())
}

/// PIL's `Image.crop((left, top, left + width, top + height))`: pixels outside the image are 0.
pub fn crop(img: &Rgb8Image, c: &CropSetting) -> Result<Rgb8Image> {
    if c.height <= 0 || c.width <= 0 || c.height > 1 << 16 || c.width > 1 << 16 {
        return Err(Error::ImageOp { op: "crop", reason: format!("crop size {}x{} must be in 1..=65536", c.width, c.height) });
    }
    let (w, h) = (c.width as usize, c.height as usize);
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        // Saturating arithmetic: crop settings come from files and may hold any i64.
        let sy = c.top.saturating_add(y as i64);
        if sy < 0 || sy >= img.height as i64 {
            continue;
        }
        // Clip the source span of this row once instead of testing every pixel.
        let x0 = c.left.saturating_neg().clamp(0, w as i64) as usize;
        let x1 = (img.width as i64).saturating_sub(c.left).clamp(0, w as i64) as usize;
        if x0 >= x1 {
            continue;
        }
        let src = (sy as usize * img.width + (c.left + x0 as i64) as usize) * 3;
        out[(y * w + x0) * 3..(y * w + x1) * 3].copy_from_slice(&img.data[src..src + (x1 - x0) * 3]);
    }
    Ok(Rgb8Image { width: w, height: h, data: out })
}

/// Mirrors an image left-right.
pub fn hflip(img: &Rgb8Image) -> Rgb8Image {
    let mut data = Vec::with_capacity(img.data.len());
    for row in img.data.chunks_exact(img.width * 3) {
        data.extend(row.chunks_exact(3).rev().flatten());
    }
    Rgb8Image { width: img.width, height: img.height, data }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel, the first input
/// index and fixed-point weights.
fn coefficients(in_size: usize, out_size: usize, filter: ResizeFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero; `as i64` does the same.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax.max(xmin)).map(|x| filter.weight((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let f = v * f64::from(1u32 << PRECISION_BITS);
                    (if v < 0.0 { -0.5 + f } else { 0.5 + f }) as i32
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's `Image.resize((width, height), filter)` for an RGB image.
pub fn resize(img: &Rgb8Image, width: usize, height: usize, filter: ResizeFilter) -> Result<Rgb8Image> {
    if width == 0 || height == 0 || img.width == 0 || img.height == 0 {
        return Err(Error::ImageOp { op: "resize", reason: format!("cannot resize {}x{} to {width}x{height}", img.width, img.height) });
    }
    let horizontal = (width != img.width).then(|| resize_horizontal(img, width, filter));
    let cur = horizontal.as_ref().unwrap_or(img);
    Ok(if height != cur.height { resize_vertical(cur, height, filter) } else { horizontal.unwrap_or_else(|| img.clone()) })
}

/// Pillow's `ImagingResampleHorizontal_8bpc`; the three channels share one pass over the taps.
fn resize_horizontal(img: &Rgb8Image, width: usize, filter: ResizeFilter) -> Rgb8Image {
    let coeffs = coefficients(img.width, width, filter);
    let mut out = vec![0u8; width * img.height * 3];
    for (row, orow) in img.data.chunks_exact(img.width * 3).zip(out.chunks_exact_mut(width * 3)) {
        for ((xmin, k), o) in coeffs.iter().zip(orow.chunks_exact_mut(3)) {
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (px, &kj) in row[xmin * 3..(xmin + k.len()) * 3].chunks_exact(3).zip(k) {
                ss[0] += i32::from(px[0]) * kj;
                ss[1] += i32::from(px[1]) * kj;
                ss[2] += i32::from(px[2]) * kj;
            }
            o.copy_from_slice(&ss.map(clip8));
        }
    }
    Rgb8Image { width, height: img.height, data: out }
}

/// Pillow's `ImagingResampleVertical_8bpc`, accumulating whole rows so the inner loop is a
/// contiguous multiply-add (integer sums: the order does not change the result).
fn resize_vertical(img: &Rgb8Image, height: usize, filter: ResizeFilter) -> Rgb8Image {
    let coeffs = coefficients(img.height, height, filter);
    let stride = img.width * 3;
    let mut out = vec![0u8; stride * height];
    let mut acc = vec![0i32; stride];
    for ((ymin, k), orow) in coeffs.iter().zip(out.chunks_exact_mut(stride)) {
        acc.fill(1 << (PRECISION_BITS - 1));
        for (j, &kj) in k.iter().enumerate() {
            let row = &img.data[(ymin + j) * stride..(ymin + j + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i32::from(v) * kj;
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    Rgb8Image { width: img.width, height, data: out }
}

/// `TF.to_tensor` + `TF.normalize(mean, std)` in f32, giving CHW.
pub fn to_normalized_chw(img: &Rgb8Image, mean: [f32; 3], std: [f32; 3]) -> ChwImage {
    // Same operation order as torch (divide by 255, subtract the mean, divide by std), done
    // once per possible byte value: a lookup gives bit-identical results without the divisions.
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - mean[c]) / std[c]));
    let plane = img.width * img.height;
    let mut data = vec![0f32; plane * 3];
    let (r, gb) = data.split_at_mut(plane);
    let (g, b) = gb.split_at_mut(plane);
    for (((px, r), g), b) in img.data.chunks_exact(3).zip(r).zip(g).zip(b) {
        *r = lut[0][usize::from(px[0])];
        *g = lut[1][usize::from(px[1])];
        *b = lut[2][usize::from(px[2])];
    }
    ChwImage { channels: 3, height: img.height, width: img.width, data }
}

/// ml-4m's RGB path for one crop: crop → resize to `side`×`side` → flip → ImageNet-normalised CHW.
/// (ml-4m passes `(height, width)` where PIL expects `(width, height)`; with a square side the
/// swap is harmless.)
pub fn rgb_transform(img: &Rgb8Image, c: &CropSetting, side: usize, filter: ResizeFilter) -> Result<ChwImage> {
    let cropped = crop(img, c)?;
    let resized = resize(&cropped, side, side, filter)?;
    let flipped = if c.hflip { hflip(&resized) } else { resized };
    Ok(to_normalized_chw(&flipped, IMAGENET_MEAN, IMAGENET_STD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_upscale_matches_pillow_by_hand() {
        // 2x1 [0, 255] → 4x1: Pillow weights are [1], [.75,.25], [.25,.75], [1].
        let img = Rgb8Image::new(2, 1, vec![0, 0, 0, 255, 255, 255]).unwrap();
        let out = resize(&img, 4, 1, ResizeFilter::Bilinear).unwrap();
        let reds: Vec<u8> = out.data.chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, [0, 64, 191, 255]);
    }

    #[test]
    fn downscale_is_antialiased_average() {
        // 4x1 → 2x1 bilinear: the triangle is stretched to support 2, so output 0 (centre 1.0)
        // weighs inputs 0, 1, 2 by .75, .75, .25 before normalisation.
        let img = Rgb8Image::new(4, 1, [0u8, 0, 0, 100, 100, 100, 200, 200, 200, 40, 40, 40].to_vec()).unwrap();
        let out = resize(&img, 2, 1, ResizeFilter::Bilinear).unwrap();
        let e0 = ((0.0 * 0.75 + 100.0 * 0.75 + 200.0 * 0.25) / 1.75_f64).round() as u8;
        assert_eq!(out.data[0], e0);
    }

    #[test]
    fn crop_pads_with_zero_and_flip_mirrors() {
        let img = Rgb8Image::new(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let c = crop(&img, &CropSetting { top: 0, left: -1, height: 2, width: 2, hflip: false }).unwrap();
        assert_eq!(c.data, [0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(hflip(&img).data, [4, 5, 6, 1, 2, 3]);
        assert!(crop(&img, &CropSetting { top: 0, left: 0, height: 0, width: 1, hflip: false }).is_err());
        let far = crop(&img, &CropSetting { top: i64::MAX, left: i64::MIN, height: 1, width: 2, hflip: false }).unwrap();
        assert_eq!(far.data, [0; 6]);
    }
}
