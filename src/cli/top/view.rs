//! The screen of `tessera top` as a pure function of a [`Snapshot`]: job line, throughput and
//! checkpoint line, loss sparklines (train, with the last validation beside), one row per rank
//! (step time, its phases, own time, memory, straggler mark), the latest events and the keys.
//! It draws into a ratatui [`Buffer`], so the terminal, the plain-text output and the tests
//! share one rendering.

use std::collections::BTreeMap;

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Row, Sparkline, StatefulWidget, Table, TableState, Widget};
use tessera_coordinator::api::{JobStatus, MemberStatus};

/// Loss series shown (total first); more do not fit 24 lines with the rank rows.
pub const MAX_SERIES: usize = 4;

/// Throughput figures read from `/metrics` (absent before a generation's first step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Tokens per second, all ranks.
    pub tokens_per_s: Option<f64>,
    /// Samples per second, all ranks.
    pub samples_per_s: Option<f64>,
    /// Model FLOPs utilisation (0..1), when the peak is known.
    pub mfu: Option<f64>,
}

/// Everything one screen shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `GET /status`.
    pub status: JobStatus,
    /// Throughput.
    pub gauges: Gauges,
    /// Train loss per series ("total", then per modality), oldest first.
    pub train: BTreeMap<String, Vec<f64>>,
    /// Validation points per modality: (step, loss), oldest first.
    pub validation: BTreeMap<String, Vec<(u64, f64)>>,
    /// Seconds since the newest checkpoint was committed, when known.
    pub checkpoint_age_s: Option<f64>,
    /// Seconds to the end of the job at the recent step rate, when known.
    pub eta_s: Option<f64>,
    /// The latest events, oldest first, one line each.
    pub events: Vec<String>,
}

/// What the user is doing: the selected rank row and the line at the bottom.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ui {
    /// Index of the selected row of the rank table.
    pub selected: usize,
    /// The answer to the last key (or the prompt being typed).
    pub message: String,
}

/// `1h02m`, `4m05s`, `12s`.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// `12.3k`, `4.5M`, `678`.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

fn bytes(b: u64) -> String {
    let mib = b as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 { format!("{:.1}G", mib / 1024.0) } else { format!("{mib:.0}M") }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// The members in table order: ranks ascending, then spare workers.
pub fn rows(status: &JobStatus) -> Vec<&MemberStatus> {
    let mut m: Vec<&MemberStatus> = status.members.iter().collect();
    m.sort_by_key(|m| (m.rank.is_none(), m.rank, m.worker));
    m
}

/// Bar heights out of [`SPARK_MAX`] for the last `width` values of `v`, the lowest value at
/// [`SPARK_MIN`]: a one-row sparkline has 8 levels and draws a value under 1/8 of the maximum as
/// a blank, which would read as a missing step.
fn heights(v: &[f64], width: usize) -> Vec<u64> {
    let tail = &v[v.len().saturating_sub(width)..];
    let (lo, hi) = tail.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| (l.min(*x), h.max(*x)));
    let span = (SPARK_MAX - SPARK_MIN) as f64;
    tail.iter().map(|x| if hi > lo { SPARK_MIN + ((x - lo) / (hi - lo) * span).round() as u64 } else { SPARK_MIN }).collect()
}

/// The scale of the sparklines and the height of their lowest value (just over 1/8).
const SPARK_MAX: u64 = 800;
const SPARK_MIN: u64 = 101;

/// Draws the whole screen into `area` of `buf`.
pub fn render(snap: &Snapshot, ui: &Ui, area: Rect, buf: &mut Buffer) {
    let s = &snap.status;
    let series: Vec<(&String, &Vec<f64>)> = {
        let mut v: Vec<_> = snap.train.iter().filter(|(k, _)| *k == "total").collect();
        v.extend(snap.train.iter().filter(|(k, _)| *k != "total"));
        v.truncate(MAX_SERIES);
        v
    };
    let ranks = rows(s);
    let [head, losses, table, events, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(series.len().max(1) as u16),
        Constraint::Length(ranks.len() as u16 + 1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);

    let pct = if s.total_steps > 0 { 100.0 * s.step as f64 / s.total_steps as f64 } else { 0.0 };
    let line1 = format!(
        "{}  {}  gen {}  world {}  step {}/{} ({pct:.0}%)  ETA {}",
        s.job,
        s.phase.as_str(),
        s.generation,
        s.world_size,
        s.step,
        s.total_steps,
        opt(snap.eta_s, duration)
    );
    let ckpt = match (s.last_checkpoint, snap.checkpoint_age_s) {
        (Some(c), Some(age)) => format!("ckpt {c} ({} ago)", duration(age)),
        (Some(c), None) => format!("ckpt {c}"),
        (None, _) => "ckpt -".to_string(),
    };
    let g = &snap.gauges;
    let line2 = format!(
        "loss {}  tok/s {}  smp/s {}  MFU {}  {ckpt}  restarts {}",
        opt(s.loss, |l| format!("{l:.4}")),
        opt(g.tokens_per_s, si),
        opt(g.samples_per_s, si),
        opt(g.mfu, |m| format!("{:.2}%", m * 100.0)),
        s.restarts
    );
    Paragraph::new(vec![Line::styled(line1, Style::new().add_modifier(Modifier::BOLD)), Line::raw(line2)]).render(head, buf);

    if series.is_empty() {
        Paragraph::new("loss: no step yet").render(losses, buf);
    }
    for (i, (name, values)) in series.iter().enumerate() {
        let row = Rect { y: losses.y + i as u16, height: 1, ..losses };
        let val = snap.validation.get(*name).and_then(|v| v.last());
        let right = val.map_or_else(String::new, |(step, l)| format!(" val {l:.3}@{step}"));
        let label = format!("{:<12.12} {:>7}", name, values.last().map_or("-".to_string(), |l| format!("{l:.4}")));
        let [l, spark, r] =
            Layout::horizontal([Constraint::Length(label.len() as u16 + 1), Constraint::Min(4), Constraint::Length(right.len() as u16)])
                .areas(row);
        Paragraph::new(label).render(l, buf);
        Sparkline::default().max(SPARK_MAX).data(heights(values, spark.width as usize)).render(spark, buf);
        Paragraph::new(right).render(r, buf);
    }

    let header = Row::new(["RK", "WKR", "STEP", "DATA", "FWD", "BWD", "COMM", "OPT", "OWN", "RSS", ""])
        .style(Style::new().add_modifier(Modifier::UNDERLINED));
    let body: Vec<Row> = ranks
        .iter()
        .map(|m| {
            let t = m.timings;
            let f = |v: Option<f64>| opt(v, |x| format!("{x:.3}"));
            let mark = if m.straggler {
                "STRAGGLER"
            } else if m.draining {
                "draining"
            } else {
                ""
            };
            Row::new([
                m.rank.map_or("-".to_string(), |r| r.to_string()),
                m.worker.to_string(),
                f(m.last_step_s),
                f(t.map(|t| t.data_s)),
                f(t.map(|t| t.forward_s)),
                f(t.map(|t| t.backward_s)),
                f(t.map(|t| t.comm_s)),
                f(t.map(|t| t.optimizer_s)),
                f(t.map(|t| t.own_s())),
                m.rss_bytes.map_or("-".to_string(), bytes),
                mark.to_string(),
            ])
        })
        .collect();
    let widths = [2, 3, 6, 5, 5, 5, 5, 5, 5, 6, 9].map(Constraint::Length);
    let mut state = TableState::default().with_selected((!ranks.is_empty()).then_some(ui.selected.min(ranks.len().saturating_sub(1))));
    let t = Table::new(body, widths).header(header).row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    StatefulWidget::render(t, table, buf, &mut state);

    let shown = snap.events.len().saturating_sub(events.height as usize);
    Paragraph::new(snap.events[shown..].iter().map(|e| Line::raw(e.as_str())).collect::<Vec<_>>()).render(events, buf);
    let keys = "c ckpt  s scale  d drain  ↑↓ rank  q quit";
    let text = if ui.message.is_empty() { keys.to_string() } else { format!("{}  | {keys}", ui.message) };
    Paragraph::new(text).style(Style::new().add_modifier(Modifier::REVERSED)).render(foot, buf);
}

/// The screen as plain text lines (trailing blanks cut), `width` wide: what `top` prints when
/// stdout is not a terminal.
pub fn plain(snap: &Snapshot, width: u16) -> String {
    let series = snap.train.len().clamp(1, MAX_SERIES);
    let height = 2 + series + snap.status.members.len() + 1 + snap.events.len().max(1) + 1;
    let area = Rect::new(0, 0, width, height as u16);
    let mut buf = Buffer::empty(area);
    render(snap, &Ui::default(), area, &mut buf);
    lines(&buf).join("\n") + "\n"
}

/// The rows of `buf` as strings, trailing blanks cut.
pub fn lines(buf: &Buffer) -> Vec<String> {
    let a = buf.area;
    (a.y..a.y + a.height).map(|y| (a.x..a.x + a.width).map(|x| buf[(x, y)].symbol()).collect::<String>().trim_end().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    /// A status as `GET /status` answered it for a 3-rank job with rank 2 flagged.
    const STATUS: &str = r#"{"job":"cli-train","phase":"running","generation":1,"world_size":3,"step":120,"total_steps":400,
      "loss":3.4567,"target_workers":3,"min_workers":1,"max_workers":3,"last_checkpoint":100,"restarts":0,"schedule_version":0,
      "members":[
        {"worker":4,"addr":"127.0.0.1:40003","rank":2,"seen_ms_ago":30,"draining":true,"last_step_s":1.25,
         "timings":{"data_s":0.02,"forward_s":0.4,"backward_s":0.7,"comm_s":0.05,"optimizer_s":0.03,"total_s":1.25},
         "rss_bytes":536870912,"straggler":true},
        {"worker":0,"addr":"127.0.0.1:40000","rank":0,"seen_ms_ago":10,"draining":false,"last_step_s":1.25,
         "timings":{"data_s":0.01,"forward_s":0.05,"backward_s":0.1,"comm_s":1.05,"optimizer_s":0.02,"total_s":1.25},
         "rss_bytes":314572800,"straggler":false},
        {"worker":1,"addr":"127.0.0.1:40001","rank":1,"seen_ms_ago":12,"draining":false,"last_step_s":1.25,
         "timings":{"data_s":0.01,"forward_s":0.06,"backward_s":0.1,"comm_s":1.0,"optimizer_s":0.02,"total_s":1.25},
         "rss_bytes":314572800,"straggler":false}],
      "validation":{"step":100,"loss":{"caption":3.9},"seconds":0.5}}"#;

    fn snapshot() -> Snapshot {
        let status = serde_json::from_str(STATUS).unwrap();
        let train = BTreeMap::from([
            ("total".to_string(), vec![4.0, 3.9, 3.7, 3.5, 3.4567]),
            ("caption".to_string(), vec![4.2, 4.1, 4.0, 3.8, 3.75]),
            ("tok_rgb@224".to_string(), vec![4.0, 3.8, 3.6, 3.3, 3.2]),
        ]);
        Snapshot {
            status,
            gauges: Gauges { tokens_per_s: Some(12_345.0), samples_per_s: Some(4.8), mfu: Some(0.0123) },
            train,
            validation: BTreeMap::from([("caption".to_string(), vec![(100, 3.9)])]),
            checkpoint_age_s: Some(75.0),
            eta_s: Some(3_725.0),
            events: vec!["18:20:01 straggler_flagged worker=4 rank=2".into(), "18:20:05 checkpoint_committed step=100".into()],
        }
    }

    fn screen(snap: &Snapshot, ui: &Ui, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(snap, ui, f.area(), f.buffer_mut())).unwrap();
        lines(t.backend().buffer())
    }

    #[test]
    fn an_80_by_24_screen_shows_the_job_losses_ranks_and_events() {
        let rows = screen(&snapshot(), &Ui::default(), 80, 24);
        let text = rows.join("\n");
        assert_eq!(rows[0], "cli-train  running  gen 1  world 3  step 120/400 (30%)  ETA 1h02m", "{text}");
        assert_eq!(rows[1], "loss 3.4567  tok/s 12.3k  smp/s 4.8  MFU 1.23%  ckpt 100 (1m15s ago)  restarts 0", "{text}");
        // Sparklines: total first, then the modalities; the last validation beside its series.
        assert!(rows[2].starts_with("total         3.4567 "), "{text}");
        assert!(rows[3].starts_with("caption       3.7500 ") && rows[3].ends_with("val 3.900@100"), "{text}");
        assert!(rows[4].starts_with("tok_rgb@224   3.2000 "), "{text}");
        // The sparkline: the newest (lowest) value is the lowest bar, the first the highest,
        // and no step is drawn as a blank.
        assert!(rows[2].ends_with("█▆▄▁▁"), "{text}");
        // The rank table: ranks in order, own time = step - comm, memory, the straggler mark.
        assert!(rows[5].starts_with("RK WKR STEP   DATA  FWD   BWD   COMM  OPT   OWN   RSS"), "{text}");
        assert_eq!(rows[6], "0  0   1.250  0.010 0.050 0.100 1.050 0.020 0.200 300M", "{text}");
        assert_eq!(rows[7], "1  1   1.250  0.010 0.060 0.100 1.000 0.020 0.250 300M", "{text}");
        assert_eq!(rows[8], "2  4   1.250  0.020 0.400 0.700 0.050 0.030 1.200 512M   STRAGGLER", "{text}");
        assert!(text.contains("18:20:01 straggler_flagged worker=4 rank=2"), "{text}");
        assert!(rows[23].contains("c ckpt  s scale  d drain") && rows[23].contains("q quit"), "{text}");
        assert!(rows.iter().all(|r| r.chars().count() <= 80));
    }

    #[test]
    fn the_plain_table_has_every_rank_and_the_selection_moves_the_highlight() {
        let text = plain(&snapshot(), 100);
        assert!(text.lines().any(|l| l.starts_with("2  4") && l.ends_with("STRAGGLER")), "{text}");
        assert!(text.contains("checkpoint_committed step=100"), "{text}");
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let ui = Ui { selected: 2, message: "draining worker 4".into() };
        t.draw(|f| render(&snapshot(), &ui, f.area(), f.buffer_mut())).unwrap();
        let buf = t.backend().buffer();
        assert!(buf[(0, 8)].modifier.contains(Modifier::REVERSED), "the selected rank 2 row is highlighted");
        assert!(!buf[(0, 6)].modifier.contains(Modifier::REVERSED));
        assert!(lines(buf)[23].starts_with("draining worker 4"));
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(12.4), "12s");
        assert_eq!(duration(245.0), "4m05s");
        assert_eq!(duration(3_725.0), "1h02m");
    }
}
