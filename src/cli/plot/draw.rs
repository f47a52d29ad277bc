//! The figure of `tessera plot`, drawn on any plotters backend (the caller picks PNG or SVG):
//! the loss on top (training total and per modality, validation points), then learning rate,
//! gradient norm, tokens/s and the step-time breakdown; restarts, resizes and mixture changes
//! are vertical lines on every panel's step axis.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::history::{History, MarkerKind, PHASES};

/// Figure width in pixels.
pub const WIDTH: u32 = 1400;
/// Figure height in pixels.
pub const HEIGHT: u32 = 1100;
/// The font family every text uses; [`super::register_font`] embeds it.
pub const FONT: &str = "sans-serif";
/// The loss panel's y-axis label (the loss is the cross-entropy the trainer logs).
pub const LOSS_LABEL: &str = "loss (nats per target token)";

/// Drawing failed on backend `DB`.
pub type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A line to draw: legend name, points, colour, stroke width.
struct Line<'a> {
    name: &'a str,
    points: &'a [(u64, f64)],
    colour: RGBColor,
    width: u32,
}

/// Colour of the `i`-th modality (name order), shared by its training line and validation dots.
fn colour(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).rgb();
    RGBColor(r, g, b)
}

/// Colour of a marker kind's vertical lines.
fn marker_colour(kind: MarkerKind) -> RGBColor {
    match kind {
        MarkerKind::Restart => RGBColor(220, 30, 30),
        MarkerKind::Resize => RGBColor(240, 140, 0),
        MarkerKind::Mixture => RGBColor(30, 150, 30),
    }
}

/// Draws the whole figure for `h` on `root`, titled `title`.
pub fn figure<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, h: &History, title: &str) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 24))?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 * 45 / 100);
    // One step axis for every panel, so that markers line up.
    let last = [&h.loss, &h.lr, &h.grad_norm, &h.tokens_per_s].iter().flat_map(|s| s.last()).map(|p| p.0).max().unwrap_or(0);
    let steps = 0..(last + 1).max(h.markers.iter().map(|m| m.step + 1).max().unwrap_or(0));

    let mut loss = vec![Line { name: "total", points: &h.loss, colour: BLACK, width: 2 }];
    loss.extend(h.mod_loss.iter().enumerate().map(|(i, (m, p))| Line { name: m, points: p, colour: colour(i), width: 1 }));
    let dots: Vec<(&[(u64, f64)], RGBColor)> = h
        .mod_loss
        .keys()
        .chain(h.val_loss.keys().filter(|m| !h.mod_loss.contains_key(*m)))
        .enumerate()
        .filter_map(|(i, m)| h.val_loss.get(m).map(|p| (p.as_slice(), colour(i))))
        .collect();
    panel(&top, h, steps.clone(), "loss", LOSS_LABEL, &loss, &dots)?;

    let cells = bottom.split_evenly((2, 2));
    panel(
        &cells[0],
        h,
        steps.clone(),
        "learning rate",
        "learning rate",
        &[Line { name: "lr", points: &h.lr, colour: BLACK, width: 1 }],
        &[],
    )?;
    let gn = [Line { name: "gradient norm", points: &h.grad_norm, colour: BLACK, width: 1 }];
    panel(&cells[1], h, steps.clone(), "gradient norm (before clipping)", "gradient norm", &gn, &[])?;
    let tps = [Line { name: "tokens/s", points: &h.tokens_per_s, colour: BLACK, width: 1 }];
    panel(&cells[2], h, steps.clone(), "throughput (all ranks)", "tokens/s", &tps, &[])?;
    let phases: Vec<Line> = PHASES
        .iter()
        .zip(&h.phases)
        .enumerate()
        .map(|(i, (name, points))| {
            let total = *name == "total";
            Line { name, points, colour: if total { BLACK } else { colour(i) }, width: if total { 2 } else { 1 } }
        })
        .collect();
    panel(&cells[3], h, steps, "step time by phase", "seconds", &phases, &[])?;
    root.present()
}

/// One chart: `lines`, validation `dots` (points with their colour), and `h`'s markers.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    h: &History,
    steps: std::ops::Range<u64>,
    caption: &str,
    y_label: &str,
    lines: &[Line],
    dots: &[(&[(u64, f64)], RGBColor)],
) -> DrawResult<DB> {
    let values = lines.iter().flat_map(|l| l.points).chain(dots.iter().flat_map(|d| d.0.iter())).map(|p| p.1);
    let (lo, hi) = padded_range(values);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(steps, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .y_label_formatter(&|v| tick_label(*v, hi - lo))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    if lines.iter().all(|l| l.points.is_empty()) && dots.is_empty() {
        let (w, hgt) = area.dim_in_pixel();
        area.draw_text("no data in the logs", &(FONT, 16).into_text_style(area), (w as i32 / 2 - 70, hgt as i32 / 2))?;
    }
    let mut seen = Vec::new();
    for m in &h.markers {
        let c = marker_colour(m.kind);
        let s = chart.draw_series(LineSeries::new([(m.step, lo), (m.step, hi)], c.stroke_width(1)))?;
        if !seen.contains(&m.kind) {
            seen.push(m.kind);
            s.label(m.kind.name()).legend(move |(x, y)| PathElement::new([(x, y - 6), (x, y + 6)], c.stroke_width(2)));
        }
    }
    for l in lines.iter().filter(|l| !l.points.is_empty()) {
        let style = l.colour.stroke_width(l.width);
        chart
            .draw_series(LineSeries::new(l.points.iter().copied(), style))?
            .label(l.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    for (i, (points, c)) in dots.iter().enumerate() {
        let s = chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        if i == 0 {
            s.label("validation (dots)").legend(|(x, y)| Circle::new((x + 10, y), 4, BLACK.filled()));
        }
    }
    if !lines.iter().all(|l| l.points.is_empty()) || !h.markers.is_empty() {
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

/// The y range for `values`: their span plus 5% each side; a flat series gets a visible band
/// around its value and no values give 0..1.
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1e-12) * 0.1 };
    (lo - pad, hi + pad)
}

/// A y tick label with as many digits as the axis' `span` needs; tiny or huge values (learning
/// rates, token rates) in scientific notation.
fn tick_label(v: f64, span: f64) -> String {
    let scale = v.abs().max(span);
    if scale != 0.0 && !(1e-2..1e5).contains(&scale) {
        format!("{v:.2e}")
    } else if span < 0.1 {
        format!("{v:.4}")
    } else if span < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_tick_labels_fit_the_data() {
        assert_eq!(padded_range([1.0, 3.0].into_iter()), (0.9, 3.1));
        let (lo, hi) = padded_range([2.0, 2.0].into_iter());
        assert!(lo < 2.0 && hi > 2.0);
        assert_eq!(padded_range(std::iter::empty()), (0.0, 1.0));
        assert_eq!(tick_label(3e-4, 1e-4), "3.00e-4");
        assert_eq!(tick_label(2.5, 3.0), "2.50");
        assert_eq!(tick_label(1234.0, 900.0), "1234");
        assert_eq!(tick_label(0.05, 0.02), "0.0500");
    }
}
