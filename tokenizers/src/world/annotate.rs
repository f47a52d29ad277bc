//! Annotations computed from the rendered maps: per-instance pixel statistics and boxes,
//! ml-4m's detection, metadata and colour-palette JSON, and the caption of the visible objects.

use serde_json::{Value, json};

use super::caption::{Mention, Placed, describe};
use super::render::Frame;
use super::scene::Scene;

/// The visible part of one object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Visible {
    /// Index of the object in [`Scene::objects`] (instance id − 1).
    pub object: usize,
    /// Number of visible pixels (at least 1).
    pub pixels: usize,
    /// Tight pixel box `[x0, y0, x1, y1]`, `x1`/`y1` exclusive.
    pub bbox: [usize; 4],
    /// Mean visible-pixel position `(x, y)` in pixels (pixel centres at +0.5).
    pub centroid: (f64, f64),
}

/// The visible objects, in object order, from the instance map.
pub fn visible_objects(frame: &Frame) -> Vec<Visible> {
    let n = frame.visible.len();
    let mut acc: Vec<Visible> =
        (0..n).map(|object| Visible { object, pixels: 0, bbox: [usize::MAX, usize::MAX, 0, 0], centroid: (0.0, 0.0) }).collect();
    let side = frame.side;
    for (p, &id) in frame.instance.iter().enumerate() {
        if id == 0 {
            continue;
        }
        let (x, y) = (p % side, p / side);
        let v = &mut acc[usize::from(id) - 1];
        v.pixels += 1;
        v.bbox = [v.bbox[0].min(x), v.bbox[1].min(y), v.bbox[2].max(x + 1), v.bbox[3].max(y + 1)];
        v.centroid.0 += x as f64 + 0.5;
        v.centroid.1 += y as f64 + 0.5;
    }
    acc.into_iter()
        .filter(|v| v.pixels > 0)
        .map(|mut v| {
            v.centroid = (v.centroid.0 / v.pixels as f64, v.centroid.1 / v.pixels as f64);
            v
        })
        .collect()
}

/// The caption of the visible objects (see [`super::caption`]).
pub fn caption(scene: &Scene, visible: &[Visible], side: usize) -> String {
    let placed: Vec<Placed> = visible
        .iter()
        .map(|v| {
            let o = &scene.objects[v.object];
            Placed {
                mention: Mention { size: o.size_name(), colour: o.colour_name(), class: o.class },
                centroid_x: v.centroid.0 / side as f64,
                depth: scene.camera.depth_of(o.centre()),
            }
        })
        .collect();
    describe(&placed).0
}

/// ml-4m's detection JSON: one instance per visible object, its box the tight box of its
/// visible pixels normalized by the side, score 1 (the labels are exact).
pub fn detections(scene: &Scene, visible: &[Visible], side: usize) -> Value {
    let s = side as f64;
    let instances: Vec<Value> = visible
        .iter()
        .map(|v| {
            let b = v.bbox;
            json!({
                "boxes": [b[0] as f64 / s, b[1] as f64 / s, b[2] as f64 / s, b[3] as f64 / s],
                "class_name": scene.objects[v.object].class.name(),
                "score": 1.0,
            })
        })
        .collect();
    json!({ "instances": instances })
}

/// Image statistics over the RGB map, with ml-4m's formulas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageStats {
    /// Mean grayscale (PIL `L`: 0.299 R + 0.587 G + 0.114 B), 0..255.
    pub brightness: f64,
    /// Standard deviation of the grayscale, 0..127.5.
    pub contrast: f64,
    /// Mean HSV saturation × 255.
    pub saturation: f64,
    /// Hasler–Süsstrunk colourfulness.
    pub colourfulness: f64,
    /// Shannon entropy (bits) of the 256-bin grayscale histogram.
    pub entropy: f64,
}

/// Computes [`ImageStats`] of interleaved RGB8 pixels.
pub fn image_stats(rgb: &[u8]) -> ImageStats {
    let n = (rgb.len() / 3).max(1) as f64;
    let mut hist = [0usize; 256];
    let (mut sum_l, mut sum_l2, mut sum_s) = (0.0, 0.0, 0.0);
    let (mut rg, mut rg2, mut yb, mut yb2) = (0.0, 0.0, 0.0, 0.0);
    for px in rgb.chunks_exact(3) {
        let [r, g, b] = [px[0], px[1], px[2]].map(f64::from);
        let l = 0.299 * r + 0.587 * g + 0.114 * b;
        hist[((l + 0.5) as usize).min(255)] += 1;
        sum_l += l;
        sum_l2 += l * l;
        let (mx, mn) = (r.max(g).max(b), r.min(g).min(b));
        sum_s += if mx > 0.0 { (mx - mn) / mx * 255.0 } else { 0.0 };
        let (a, c) = (r - g, 0.5 * (r + g) - b);
        rg += a;
        rg2 += a * a;
        yb += c;
        yb2 += c * c;
    }
    let mean = sum_l / n;
    let var = |s: f64, s2: f64| (s2 / n - (s / n) * (s / n)).max(0.0);
    let entropy = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    ImageStats {
        brightness: mean,
        contrast: var(sum_l, sum_l2).sqrt(),
        saturation: sum_s / n,
        colourfulness: (var(rg, rg2) + var(yb, yb2)).sqrt() + 0.3 * ((rg / n).powi(2) + (yb / n).powi(2)).sqrt(),
        entropy,
    }
}

/// ml-4m's metadata JSON, keyed by the reference's metadata names. Definitions here:
/// `n_sam_instances` the visible objects, `semantic_diversity` the distinct visible classes,
/// `objectness` the fraction of pixels on objects, `walkability` the fraction on the ground,
/// `occlusion_score` the hidden fraction of the objects' in-image (amodal) area.
pub fn metadata(scene: &Scene, frame: &Frame, visible: &[Visible], caption: &str, stats: &ImageStats) -> Value {
    let n = frame.instance.len().max(1) as f64;
    let mut classes: Vec<_> = visible.iter().map(|v| scene.objects[v.object].class).collect();
    classes.sort();
    classes.dedup();
    let object_px: usize = frame.visible.iter().sum();
    let amodal_px: usize = frame.amodal.iter().sum();
    let ground_px = frame.instance.iter().zip(&frame.sky).filter(|&(&id, &sky)| id == 0 && !sky).count();
    let occlusion = if amodal_px > 0 { 1.0 - object_px as f64 / amodal_px as f64 } else { 0.0 };
    json!({
        "original_width": frame.side,
        "original_height": frame.side,
        "caption_n_chars": caption.chars().count(),
        "caption_n_words": caption.split_whitespace().count(),
        "caption_n_sentences": 1,
        "n_humans": 0,
        "n_sam_instances": visible.len(),
        "semantic_diversity": classes.len(),
        "brightness": stats.brightness,
        "contrast": stats.contrast,
        "saturation": stats.saturation,
        "colorfulness": stats.colourfulness,
        "entropy": stats.entropy,
        "objectness": object_px as f64 / n,
        "walkability": ground_px as f64 / n,
        "occlusion_score": occlusion,
    })
}

/// ml-4m's colour-palette JSON `[{"1": [[r, g, b]], ..., "7": [...]}]`. The candidate colours
/// are the mean RGB of each region (sky, ground, each visible object) by decreasing area, then
/// each region's brighter and darker halves (split at the region's mean luminance); palette `k`
/// is the first `k` candidates (repeated cyclically in the rare case of fewer than seven).
pub fn palette(frame: &Frame) -> Value {
    let regions = frame.visible.len() + 2;
    // Region per pixel: 0 sky, 1 ground, 2 + i object i.
    let region_of = |p: usize| match frame.instance[p] {
        0 if frame.sky[p] => 0,
        0 => 1,
        id => usize::from(id) + 1,
    };
    let lum =
        |p: usize| 0.299 * f64::from(frame.rgb[3 * p]) + 0.587 * f64::from(frame.rgb[3 * p + 1]) + 0.114 * f64::from(frame.rgb[3 * p + 2]);
    let mut sums = vec![([0.0f64; 3], 0usize, 0.0f64); regions];
    for p in 0..frame.instance.len() {
        let r = &mut sums[region_of(p)];
        (0..3).for_each(|c| r.0[c] += f64::from(frame.rgb[3 * p + c]));
        r.1 += 1;
        r.2 += lum(p);
    }
    let mut order: Vec<usize> = (0..regions).filter(|&r| sums[r].1 > 0).collect();
    order.sort_by(|&a, &b| sums[b].1.cmp(&sums[a].1).then(a.cmp(&b)));
    let mean = |s: &([f64; 3], usize, f64)| s.0.map(|v| (v / s.1 as f64).round());
    let mut candidates: Vec<[f64; 3]> = order.iter().map(|&r| mean(&sums[r])).collect();
    // Halves: [bright, dark] per region.
    let mut halves = vec![[([0.0f64; 3], 0usize, 0.0f64); 2]; regions];
    for p in 0..frame.instance.len() {
        let r = region_of(p);
        let half = usize::from(lum(p) < sums[r].2 / sums[r].1 as f64);
        let h = &mut halves[r][half];
        (0..3).for_each(|c| h.0[c] += f64::from(frame.rgb[3 * p + c]));
        h.1 += 1;
    }
    for &r in &order {
        candidates.extend(halves[r].iter().filter(|h| h.1 > 0 && h.1 < sums[r].1).map(mean));
    }
    let mut by_length = serde_json::Map::new();
    for k in 1..=7usize {
        let colours: Vec<Value> = (0..k).map(|i| json!(candidates[i % candidates.len()])).collect();
        by_length.insert(k.to_string(), Value::Array(colours));
    }
    json!([by_length])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_stats_of_known_images() {
        let gray = image_stats(&[100u8; 3 * 16]);
        assert!((gray.brightness - 100.0).abs() < 1e-9);
        assert_eq!((gray.contrast, gray.saturation, gray.colourfulness, gray.entropy), (0.0, 0.0, 0.0, 0.0));
        // Half black, half white: contrast 127.5, entropy 1 bit, no colour.
        let mut bw = vec![0u8; 3 * 8];
        bw.extend([255u8; 3 * 8]);
        let s = image_stats(&bw);
        assert!((s.brightness - 127.5).abs() < 1e-6 && (s.contrast - 127.5).abs() < 1e-6 && (s.entropy - 1.0).abs() < 1e-12);
        assert_eq!(s.saturation, 0.0);
        // Pure red: full saturation; colourfulness = 0.3 * |(255, 127.5)|.
        let red = image_stats(&[255, 0, 0].repeat(4));
        assert_eq!(red.saturation, 255.0);
        assert!((red.colourfulness - 0.3 * (255f64.powi(2) + 127.5f64.powi(2)).sqrt()).abs() < 1e-9);
    }
}
