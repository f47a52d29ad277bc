//! A small line-chart renderer for training logs (no plotting dependency): total and
//! per-modality loss against the step, as a PNG, labelled with a built-in bitmap font.

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

/// Background colour.
const WHITE: [u8; 3] = [255, 255, 255];
/// Axes, text and total-loss colour.
const BLACK: [u8; 3] = [0, 0, 0];
/// Image width; the height follows from how many legend rows the modality names need.
const WIDTH: i64 = 900;
/// Height of the plotting area, fixed so that a long legend adds rows instead of squashing the curves.
const PLOT_H: i64 = 400;
/// Blank border around everything.
const PAD: i64 = 10;
/// All chart text is drawn at this scale: 5x7 glyphs become 10x14 pixels, readable at 900 pixels wide.
const TEXT_SCALE: i64 = 2;
/// Length of a legend colour swatch.
const SWATCH_W: i64 = 20;
/// Thickness of a legend colour swatch, thicker than the lines so its colour is easy to tell.
const SWATCH_THICK: i64 = 3;
/// Space between a swatch and its name.
const LABEL_GAP: i64 = 6;
/// Space between one legend entry's name and the next entry's swatch.
const ENTRY_GAP: i64 = 18;
/// Length of an axis tick mark.
const TICK: i64 = 4;
/// The chart title; the loss is the cross-entropy the trainer logs.
const TITLE: &str = "loss (nats/target token) vs step";

/// Draws every step's total loss (black, thick) and each modality's loss (colours) from a
/// `train_log.jsonl` into `png`, with a title, a legend naming each line (wrapped over as many
/// rows as the names need) and labelled axis ticks.
pub fn loss_curves(log: &Path, png: &Path) -> anyhow::Result<()> {
    let curves = Curves::read(log)?;
    let chart = Chart::new(&curves);
    let mut img = RgbImage::from_pixel(WIDTH as u32, chart.height as u32, Rgb(WHITE));
    draw_title(&mut img);
    draw_legend(&mut img, &chart.legend);
    draw_axes(&mut img, &chart);
    for (i, series) in curves.per.values().enumerate() {
        polyline(&mut img, series.iter().map(|(s, l)| chart.to_px(*s, *l)), modality_colour(i), 1);
    }
    // The total last, so that it stays visible on top of the modalities.
    polyline(&mut img, curves.total.iter().map(|(s, l)| chart.to_px(*s, *l)), BLACK, 2);
    img.save(png).with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}

/// The losses of a training log, by step.
struct Curves {
    /// Total loss per step.
    total: BTreeMap<u64, f64>,
    /// Loss per step of each modality, by modality name (so in legend order).
    per: BTreeMap<String, BTreeMap<u64, f64>>,
}

impl Curves {
    /// Reads the `step`, `loss` and `mod_loss` fields of every line of a `train_log.jsonl`.
    fn read(log: &Path) -> anyhow::Result<Self> {
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
                    // A zero means the modality had no targets in that batch, not a perfect fit.
                    if let Some(l) = l.as_f64().filter(|l| *l > 0.0) {
                        per.entry(m.clone()).or_default().insert(step, l);
                    }
                }
            }
        }
        Ok(Self { total, per })
    }
}

/// The colour of the `i`-th modality (in name order), shared by its line and its swatch.
fn modality_colour(i: usize) -> [u8; 3] {
    PALETTE[i % PALETTE.len()]
}

/// Where everything goes, worked out before drawing because the legend's row count sets the
/// plot's top and the widest y label its left edge.
struct Chart {
    /// Image height.
    height: i64,
    /// Plot area edges: the y axis is at `left`, the x axis at `bottom`.
    left: i64,
    right: i64,
    top: i64,
    bottom: i64,
    /// The step at the right end of the x axis (which starts at 0).
    max_step: u64,
    /// The loss at the top of the y axis (which starts at 0).
    max_loss: f64,
    /// The placed legend entries.
    legend: Vec<LegendEntry>,
}

impl Chart {
    /// Lays the chart out for `curves`.
    fn new(curves: &Curves) -> Self {
        let max_step = curves.total.keys().last().copied().unwrap_or(1).max(1);
        let max_loss = curves.per.values().flat_map(|s| s.values()).chain(curves.total.values()).copied().fold(0.0f64, f64::max).max(1e-6);
        let label_w = y_ticks(max_loss).iter().map(|(_, l)| text_width(l, TEXT_SCALE)).max().unwrap_or(0);
        let left = PAD + label_w + TICK + LABEL_GAP;
        // Room on the right for half of the last step label, which is centred on its tick.
        let right = WIDTH - 4 * PAD;
        let items = std::iter::once(("total".to_string(), BLACK))
            .chain(curves.per.keys().enumerate().map(|(i, m)| (m.clone(), modality_colour(i))))
            .collect();
        let (legend, legend_bottom) = layout_legend(items, left, WIDTH - PAD, PAD + 2 * text_height(TEXT_SCALE));
        let top = legend_bottom + text_height(TEXT_SCALE);
        let bottom = top + PLOT_H;
        let height = bottom + TICK + LABEL_GAP + text_height(TEXT_SCALE) + PAD;
        Self { height, left, right, top, bottom, max_step, max_loss, legend }
    }

    /// The pixel of a (step, loss) point.
    fn to_px(&self, step: u64, loss: f64) -> (i64, i64) {
        let x = self.left as f64 + step as f64 / self.max_step as f64 * (self.right - self.left) as f64;
        let y = self.bottom as f64 - loss / self.max_loss * (self.bottom - self.top) as f64;
        (x as i64, y as i64)
    }
}

/// The y axis ticks: both ends and the middle, with their labels.
fn y_ticks(max_loss: f64) -> [(f64, String); 3] {
    [0.0, max_loss / 2.0, max_loss].map(|v| (v, format!("{v:.2}")))
}

/// The x axis ticks: the first step, the middle and the last, with their labels.
fn x_ticks(max_step: u64) -> [(u64, String); 3] {
    [0, max_step / 2, max_step].map(|s| (s, s.to_string()))
}

/// One legend entry: a colour swatch with its name beside it.
struct LegendEntry {
    /// Top-left corner of the entry (the swatch's left end, the name's top).
    x: i64,
    y: i64,
    /// The name, shortened if it could not fit on a row by itself.
    name: String,
    /// The swatch colour.
    colour: [u8; 3],
}

impl LegendEntry {
    /// Top-left corner of the name.
    fn label_origin(&self) -> (i64, i64) {
        (self.x + SWATCH_W + LABEL_GAP, self.y)
    }
}

/// Flows `items` (name, colour) left to right from (`left`, `top`), starting a new row whenever
/// the next entry would pass `right`; returns them placed and the bottom of the last row.
fn layout_legend(items: Vec<(String, [u8; 3])>, left: i64, right: i64, top: i64) -> (Vec<LegendEntry>, i64) {
    let row_h = text_height(TEXT_SCALE) + LABEL_GAP;
    // A name longer than a whole row is cut, as it would otherwise run off the image.
    let max_chars = ((right - left - SWATCH_W - LABEL_GAP) / (ADVANCE * TEXT_SCALE)).max(1) as usize;
    let (mut x, mut y) = (left, top);
    let mut placed = Vec::new();
    for (name, colour) in items {
        let name: String = name.chars().take(max_chars).collect();
        let w = SWATCH_W + LABEL_GAP + text_width(&name, TEXT_SCALE);
        if x > left && x + w > right {
            (x, y) = (left, y + row_h);
        }
        placed.push(LegendEntry { x, y, name, colour });
        x += w + ENTRY_GAP;
    }
    (placed, y + text_height(TEXT_SCALE))
}

/// Draws the title centred above the legend.
fn draw_title(img: &mut RgbImage) {
    draw_text(img, ((WIDTH - text_width(TITLE, TEXT_SCALE)) / 2, PAD), TITLE, TEXT_SCALE, BLACK);
}

/// Draws each legend entry's swatch, vertically centred on its name, and the name.
fn draw_legend(img: &mut RgbImage, legend: &[LegendEntry]) {
    for e in legend {
        // Centred on the letters proper (descenders aside); the thick line extends right and
        // down from each point, hence the shifts that keep it within SWATCH_W.
        let mid = e.y + (GLYPH_H * TEXT_SCALE - SWATCH_THICK) / 2;
        line(img, (e.x, mid), (e.x + SWATCH_W - SWATCH_THICK, mid), e.colour, SWATCH_THICK);
        draw_text(img, e.label_origin(), &e.name, TEXT_SCALE, BLACK);
    }
}

/// Draws both axes with their tick marks and labels (y labels right-aligned left of the axis,
/// x labels centred under their ticks but kept on the image).
fn draw_axes(img: &mut RgbImage, c: &Chart) {
    line(img, (c.left, c.bottom), (c.right, c.bottom), BLACK, 1);
    line(img, (c.left, c.top), (c.left, c.bottom), BLACK, 1);
    // Labels are digits, which have no descenders: centre them on the glyph height.
    let half_text = GLYPH_H * TEXT_SCALE / 2;
    for (loss, label) in y_ticks(c.max_loss) {
        let (_, y) = c.to_px(0, loss);
        line(img, (c.left - TICK, y), (c.left, y), BLACK, 1);
        draw_text(img, (c.left - TICK - LABEL_GAP - text_width(&label, TEXT_SCALE), y - half_text), &label, TEXT_SCALE, BLACK);
    }
    for (step, label) in x_ticks(c.max_step) {
        let (x, _) = c.to_px(step, 0.0);
        line(img, (x, c.bottom), (x, c.bottom + TICK), BLACK, 1);
        let w = text_width(&label, TEXT_SCALE);
        draw_text(img, ((x - w / 2).clamp(PAD, WIDTH - PAD - w), c.bottom + TICK + LABEL_GAP), &label, TEXT_SCALE, BLACK);
    }
}

/// Joins consecutive `points` with lines.
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
        fill_square(img, (x, y), width, colour);
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

/// Fills the `size`×`size` square whose top-left corner is (x, y), skipping pixels off the
/// image so that callers need not clip.
fn fill_square(img: &mut RgbImage, (x, y): (i64, i64), size: i64, colour: [u8; 3]) {
    for py in y.max(0)..(y + size).min(img.height() as i64) {
        for px in x.max(0)..(x + size).min(img.width() as i64) {
            img.put_pixel(px as u32, py as u32, Rgb(colour));
        }
    }
}

/// Glyph width in font pixels.
const GLYPH_W: i64 = 5;
/// Glyph height in font pixels, from the top of a capital to the baseline.
const GLYPH_H: i64 = 7;
/// Letters whose glyph hangs below the baseline: drawn `DESCENT` rows lower, so their bowls
/// line up with the other lower-case letters and they don't read as digits (g/9) or capitals.
const DESCENDERS: &str = "gpqy";
/// How far descenders drop, in font pixels.
const DESCENT: i64 = 2;
/// Distance between the starts of consecutive characters, in font pixels (one blank column).
const ADVANCE: i64 = GLYPH_W + 1;

/// Height in image pixels of a line of text at `scale`, descenders included.
fn text_height(scale: i64) -> i64 {
    (GLYPH_H + DESCENT) * scale
}

/// Width in image pixels of `text` at `scale`, without the blank column after the last character.
fn text_width(text: &str, scale: i64) -> i64 {
    (text.chars().count() as i64 * ADVANCE - 1).max(0) * scale
}

/// Draws `text` with its top-left corner at (x, y), each font pixel a `scale`×`scale` square.
fn draw_text(img: &mut RgbImage, (x, y): (i64, i64), text: &str, scale: i64, colour: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        let x0 = x + i as i64 * ADVANCE * scale;
        let y0 = y + if DESCENDERS.contains(c.to_ascii_lowercase()) { DESCENT * scale } else { 0 };
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits >> (GLYPH_W - 1 - col) & 1 == 1 {
                    fill_square(img, (x0 + col * scale, y0 + row as i64 * scale), scale, colour);
                }
            }
        }
    }
}

/// The 5x7 bitmap of `c`, one row per byte from the top, the row's bit 4 being its leftmost
/// column (shapes mostly after the HD44780 character ROM). The `DESCENDERS` start at the
/// x-height and end two rows below the baseline, as `draw_text` lowers them. Upper case reuses the lower-case shapes,
/// which keeps the font small (modality names are lower case anyway); any other uncovered
/// character is drawn as `?`.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        ' ' => [0; 7],
        'a' => [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111],
        'b' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110],
        'c' => [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110],
        'd' => [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111],
        'e' => [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110],
        'f' => [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000],
        'g' => [0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        'h' => [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'i' => [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110],
        'j' => [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b10010, 0b01100],
        'k' => [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010],
        'l' => [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'm' => [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001],
        'n' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'o' => [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110],
        'p' => [0b11110, 0b10001, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000],
        'q' => [0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001],
        'r' => [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000],
        's' => [0b00000, 0b00000, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110],
        't' => [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110],
        'u' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101],
        'v' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'w' => [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010],
        'x' => [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001],
        'y' => [0b10001, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        'z' => [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111],
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],
        '_' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111],
        '@' => [0b01110, 0b10001, 0b10111, 0b10101, 0b10111, 0b10000, 0b01110],
        '.' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100],
        '-' => [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000],
        ':' => [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000],
        '(' => [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010],
        ')' => [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000],
        '/' => [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000],
        '%' => [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011],
        _ => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100],
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the pixel at (x, y) is not background.
    fn inked(img: &RgbImage, x: i64, y: i64) -> bool {
        img.get_pixel(x as u32, y as u32).0 != WHITE
    }

    #[test]
    fn draw_text_sets_exactly_the_glyph_pixels() {
        let mut img = RgbImage::from_pixel(2 * ADVANCE as u32, GLYPH_H as u32, Rgb(WHITE));
        draw_text(&mut img, (0, 0), "11", 1, BLACK);
        for y in 0..GLYPH_H {
            // "1" is a vertical bar in the middle column; the outer columns and the gap stay blank.
            assert!(inked(&img, 2, y) && inked(&img, ADVANCE + 2, y), "stem row {y}");
            assert!(!inked(&img, 0, y) && !inked(&img, 4, y) && !inked(&img, 5, y), "blank columns row {y}");
        }
        // The serif on the second row and the foot on the last.
        assert!(inked(&img, 1, 1) && !inked(&img, 3, 1));
        assert!(inked(&img, 1, 6) && inked(&img, 3, 6));
        // At scale 2 a font pixel covers a 2x2 block.
        let mut big = RgbImage::from_pixel(12, 14, Rgb(WHITE));
        draw_text(&mut big, (0, 0), "1", 2, BLACK);
        assert!([(4, 0), (5, 0), (4, 1), (5, 1)].iter().all(|&(x, y)| inked(&big, x, y)));
        assert!(!inked(&big, 3, 0) && !inked(&big, 6, 0));
        // A descender is lowered: "p"'s stem runs from the x-height to below the baseline.
        let mut p = RgbImage::from_pixel(ADVANCE as u32, text_height(1) as u32, Rgb(WHITE));
        draw_text(&mut p, (0, 0), "p", 1, BLACK);
        assert!((0..DESCENT).all(|y| !inked(&p, 0, y)) && (DESCENT..text_height(1)).all(|y| inked(&p, 0, y)));
    }

    #[test]
    fn font_covers_the_chart_alphabet() {
        let fallback = glyph('?');
        for c in ('a'..='z').chain('0'..='9').chain("_@.-:()/% ".chars()) {
            assert_ne!(glyph(c), fallback, "{c:?} has no glyph");
        }
        assert_eq!(glyph('Q'), glyph('q'));
        assert_eq!(text_width("ab", 1), 11);
    }

    #[test]
    fn loss_curves_labels_every_legend_entry() {
        let names = ["caption", "color_palette", "det", "metadata", "tok_depth@64", "tok_normal@64", "tok_semseg@64", "tok_rgb@224"];
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("train_log.jsonl");
        let lines: Vec<String> = (0..20)
            .map(|step| {
                let mods: serde_json::Map<String, serde_json::Value> =
                    names.iter().enumerate().map(|(i, m)| (m.to_string(), (10.0 - step as f64 * 0.2 - i as f64 * 0.5).into())).collect();
                serde_json::json!({"step": step, "loss": 8.0 - step as f64 * 0.1, "mod_loss": mods}).to_string()
            })
            .collect();
        std::fs::write(&log, lines.join("\n")).unwrap();
        let png = dir.path().join("loss.png");
        loss_curves(&log, &png).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        let chart = Chart::new(&Curves::read(&log).unwrap());
        assert_eq!((img.width() as i64, img.height() as i64), (WIDTH, chart.height));
        assert_eq!(chart.legend.len(), names.len() + 1);
        assert_eq!(chart.legend[0].name, "total");
        assert!(chart.legend.iter().any(|e| e.y > chart.legend[0].y), "nine long names should wrap to a second row");
        for (e, next) in chart.legend.iter().zip(chart.legend.iter().skip(1).map(Some).chain([None])) {
            let (lx, ly) = e.label_origin();
            let end = lx + text_width(&e.name, TEXT_SCALE);
            assert!(end <= WIDTH - PAD && ly + text_height(TEXT_SCALE) < chart.top, "{} runs off the legend", e.name);
            assert!(next.is_none_or(|n| n.y > e.y || n.x > end), "{} overlaps the next entry", e.name);
            let ink = (lx..end).flat_map(|x| (ly..ly + text_height(TEXT_SCALE)).map(move |y| (x, y)));
            assert!(ink.filter(|&(x, y)| inked(&img, x, y)).count() > 10, "no label drawn for {}", e.name);
        }
    }
}
