//! A small line-chart renderer for training logs (no plotting dependency): total and
//! per-modality loss against the step, as a PNG.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use image::{Rgb, RgbImage};

/// Distinct line colours; the total loss is black.
const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Draws every step's total loss (black, thick) and each modality's loss (colours, in the
/// order of the legend strip at the top) from a `train_log.jsonl` into `png`.
pub fn loss_curves(log: &Path, png: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let mut total: BTreeMap<u64, f64> = BTreeMap::new();
    let mut per: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let step = v["step"].as_u64().unwrap_or(0);
        if let Some(l) = v["loss"].as_f64() {
            total.insert(step, l);
        }
        if let Some(mods) = v["mod_loss"].as_object() {
            for (m, l) in mods {
                if let Some(l) = l.as_f64().filter(|l| *l > 0.0) {
                    per.entry(m.clone()).or_default().insert(step, l);
                }
            }
        }
    }
    let (w, h, margin) = (900u32, 500u32, 40u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let max_step = total.keys().last().copied().unwrap_or(1).max(1) as f64;
    let max_loss = per.values().flat_map(|s| s.values()).chain(total.values()).copied().fold(0.0f64, f64::max).max(1e-6);
    let to_px = |step: u64, loss: f64| -> (i64, i64) {
        let x = margin as f64 + (step as f64 / max_step) * (w - 2 * margin) as f64;
        let y = (h - margin) as f64 - (loss / max_loss) * (h - 2 * margin) as f64;
        (x as i64, y as i64)
    };
    // Axes.
    line(&mut img, (margin as i64, (h - margin) as i64), ((w - margin) as i64, (h - margin) as i64), [0, 0, 0], 1);
    line(&mut img, (margin as i64, margin as i64), (margin as i64, (h - margin) as i64), [0, 0, 0], 1);
    for (i, series) in per.values().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        polyline(&mut img, series.iter().map(|(s, l)| to_px(*s, *l)), colour, 1);
        // Legend swatch, in modality-name order.
        let x0 = margin as i64 + i as i64 * 30;
        line(&mut img, (x0, 12), (x0 + 20, 12), colour, 3);
    }
    polyline(&mut img, total.iter().map(|(s, l)| to_px(*s, *l)), [0, 0, 0], 2);
    img.save(png).with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}

fn polyline(img: &mut RgbImage, points: impl Iterator<Item = (i64, i64)>, colour: [u8; 3], width: i64) {
    let mut prev = None;
    for p in points {
        if let Some(q) = prev {
            line(img, q, p, colour, width);
        }
        prev = Some(p);
    }
}

/// Bresenham's line, `width` pixels thick.
fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), colour: [u8; 3], width: i64) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        for ox in 0..width {
            for oy in 0..width {
                let (px, py) = (x + ox, y + oy);
                if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                    img.put_pixel(px as u32, py as u32, Rgb(colour));
                }
            }
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Lays `rows` of equally sized tiles out as a grid (each tile scaled up `scale`× by pixel
/// repetition, a small white gap between tiles and a wider one before each column listed in
/// `group_starts`) and writes it as a PNG.
pub fn tile_grid(rows: &[Vec<RgbImage>], scale: u32, group_starts: &[usize], png: &Path) -> anyhow::Result<()> {
    let (tw, th) = rows.first().and_then(|r| r.first()).map(|t| (t.width() * scale, t.height() * scale)).context("no tiles to draw")?;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let gap = 4u32;
    let group_gap = |c: usize| group_starts.iter().filter(|&&s| s <= c).count() as u32 * 3 * gap;
    let x_of = |c: usize| gap + c as u32 * (tw + gap) + group_gap(c);
    let width = x_of(cols.saturating_sub(1)) + tw + gap;
    let height = gap + rows.len() as u32 * (th + gap);
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        for (c, tile) in row.iter().enumerate() {
            anyhow::ensure!(tile.width() * scale == tw && tile.height() * scale == th, "tile ({r}, {c}) has another size");
            let (x0, y0) = (x_of(c), gap + r as u32 * (th + gap));
            for y in 0..th {
                for x in 0..tw {
                    img.put_pixel(x0 + x, y0 + y, *tile.get_pixel(x / scale, y / scale));
                }
            }
        }
    }
    img.save(png).with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}
