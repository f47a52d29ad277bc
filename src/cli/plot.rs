//! `tessera plot (--job-dir DIR | JOB) [--out FILE]`: a job's training curves drawn with
//! plotters, as PNG or SVG (by the file's extension). Text uses DejaVu Sans embedded in the
//! binary (through plotters' `ab_glyph` feature), so a machine without system fonts still draws
//! every label. The demo's `loss_curve.png` is this figure.

mod draw;
mod history;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use clap::Args;
use plotters::prelude::{BitMapBackend, IntoDrawingArea, SVGBackend};
use tessera_protocol::ResolvedJob;

use draw::{HEIGHT, WIDTH};

/// Arguments of `tessera plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The job config (TOML or ml-4m YAML); its output directory holds the logs.
    #[arg(required_unless_present = "job_dir", conflicts_with = "job_dir")]
    job: Option<PathBuf>,
    /// The job's output directory (holds train_log.jsonl, eval_log.jsonl, events.jsonl).
    #[arg(long)]
    job_dir: Option<PathBuf>,
    /// The figure to write: `.png` or `.svg` (default: JOB_DIR/loss_curve.png).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `tessera plot`.
pub fn run(a: PlotArgs) -> anyhow::Result<()> {
    let (dir, title) = match (a.job_dir, a.job) {
        (Some(dir), _) => {
            let title = dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
            (dir, title.unwrap_or_else(|| "job".into()))
        }
        (None, Some(config)) => {
            let job = ResolvedJob::from_file(&config)?;
            (job.output_dir, job.name)
        }
        (None, None) => anyhow::bail!("give a job config or --job-dir"),
    };
    let out = a.out.unwrap_or_else(|| dir.join("loss_curve.png"));
    write(&dir, &out, &title)?;
    println!("{}", out.display());
    Ok(())
}

/// The figure's file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Png,
    Svg,
}

impl Format {
    /// The format `path`'s extension names.
    fn of(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => anyhow::bail!("{}: the figure is written as .png or .svg", path.display()),
        }
    }
}

/// Draws the curves of the job whose output directory is `job_dir` into `out` (PNG or SVG by
/// its extension), titled `title`.
pub fn write(job_dir: &Path, out: &Path, title: &str) -> anyhow::Result<()> {
    let format = Format::of(out)?;
    let h = history::History::read(job_dir)?;
    register_font()?;
    let title = format!("{title}: training curves");
    let failed = |e: String| anyhow::anyhow!("drawing {}: {e}", out.display());
    match format {
        Format::Png => {
            let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
                draw::figure(&root, &h, &title).map_err(|e| failed(e.to_string()))?;
            }
            let img = image::RgbImage::from_raw(WIDTH, HEIGHT, rgb).context("the bitmap has the figure's size")?;
            img.save(out).with_context(|| format!("writing {}", out.display()))?;
        }
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
                draw::figure(&root, &h, &title).map_err(|e| failed(e.to_string()))?;
                root.present().map_err(|e| failed(e.to_string()))?;
            }
            std::fs::write(out, svg).with_context(|| format!("writing {}", out.display()))?;
        }
    }
    Ok(())
}

/// Registers the embedded DejaVu Sans as plotters' [`draw::FONT`] (once per process: plotters
/// keeps its font table in a static).
fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(draw::FONT, plotters::style::FontStyle::Normal, dejavu::sans::regular()).is_ok());
    anyhow::ensure!(ok, "the embedded DejaVu Sans font does not parse");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::draw::LOSS_LABEL;
    use super::*;

    /// A job directory as a coordinated job leaves it: 30 steps, two modalities, validations at
    /// steps 10 and 20, a restart at step 12 and a resize at step 20.
    fn job_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let train: Vec<String> = (0..30)
            .map(|s| {
                let f = s as f64;
                serde_json::json!({"step": s, "loss": 6.0 - f * 0.1, "mod_loss": {"caption": 6.5 - f * 0.1, "tok_rgb@224": 5.5 - f * 0.05},
                    "lr": 1e-4 * (f + 1.0) / 30.0, "grad_norm": 2.0 - f * 0.03, "tokens": 4096,
                    "timings": {"data_s": 0.01, "forward_s": 0.1, "backward_s": 0.2, "comm_s": 0.05, "optimizer_s": 0.02, "total_s": 0.4}})
                .to_string()
            })
            .collect();
        std::fs::write(dir.path().join("train_log.jsonl"), train.join("\n") + "\n").unwrap();
        let eval: Vec<String> = [10, 20]
            .iter()
            .map(|s| {
                serde_json::json!({"step": s, "modalities": {"caption": {"tokens": 10, "loss": 6.0, "unigram": 7.0}}, "seconds": 0.1})
                    .to_string()
            })
            .collect();
        std::fs::write(dir.path().join("eval_log.jsonl"), eval.join("\n") + "\n").unwrap();
        let mut events = tessera_coordinator::EventLog::open(&dir.path().join("events.jsonl")).unwrap();
        for (g, world, start, restore) in [(1, 2, 0, None), (2, 2, 12, Some(12)), (3, 3, 20, Some(20))] {
            let e =
                tessera_coordinator::JobEvent::GenerationStarted { generation: g, ranks: (0..world).collect(), start_step: start, restore };
            events.record_at(0, &e).unwrap();
        }
        dir
    }

    #[test]
    fn png_has_the_figure_size_curves_markers_and_text() {
        let dir = job_dir();
        let png = dir.path().join("curves.png");
        write(dir.path(), &png, "demo").unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(inked > 20_000, "only {inked} pixels drawn");
        // The restart and resize markers are drawn in their own colours.
        for marker in [[220, 30, 30], [240, 140, 0]] {
            assert!(img.pixels().any(|p| p.0 == marker), "no {marker:?} marker line");
        }
        // The title is text from the embedded font: the band above the panels has dark pixels.
        let title_ink = (0..WIDTH).flat_map(|x| (0..30).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0[0] < 128).count();
        assert!(title_ink > 100, "title not drawn ({title_ink} dark pixels)");
    }

    #[test]
    fn svg_names_every_panel_axis_and_legend_entry() {
        let dir = job_dir();
        let svg = dir.path().join("curves.svg");
        write(dir.path(), &svg, "demo").unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..100.min(text.len())]);
        // The contents of every <text> element, trimmed.
        let texts: Vec<&str> = text.split("</text>").filter_map(|part| part.rsplit_once('>').map(|(_, t)| t.trim())).collect();
        for label in [LOSS_LABEL, "step", "learning rate", "gradient norm", "tokens/s", "seconds", "demo: training curves"] {
            assert!(texts.contains(&label), "no {label:?} text in the SVG: {texts:?}");
        }
        for entry in ["total", "caption", "tok_rgb@224", "validation (dots)", "restart", "resize", "data", "backward", "optimizer"] {
            assert!(texts.contains(&entry), "no {entry:?} legend entry in the SVG: {texts:?}");
        }
        assert!(!texts.contains(&"mixture change"), "no mixture changed in this job");
        assert!(texts.iter().filter(|t| **t == "step").count() == 5, "one step axis per panel: {texts:?}");
    }

    #[test]
    fn refuses_other_formats_and_directories_without_a_log() {
        let dir = job_dir();
        let err = write(dir.path(), &dir.path().join("curves.jpg"), "x").unwrap_err().to_string();
        assert!(err.contains(".png or .svg"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = write(empty.path(), &empty.path().join("c.png"), "x").unwrap_err().to_string();
        assert!(err.contains("train_log.jsonl"), "{err}");
    }
}
