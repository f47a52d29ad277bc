//! The demo's image grids (tokenizer reconstructions): tiles copied into one PNG, pixel by
//! pixel, no plotting involved.

use std::path::Path;

use anyhow::Context;
use image::{Rgb, RgbImage};

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
