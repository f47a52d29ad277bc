//! `tessera top`: a terminal UI over a running job's API, refreshed about once a second (see
//! [`view`] for what it shows). Keys act through the same authenticated API calls as the CLI:
//! `c` checkpoint, `s` scale (type the worker count, Enter), `d` drain the selected rank (↑/↓),
//! `q` quit. When stdout is not a terminal it prints one plain table and exits.

pub mod view;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use tessera_coordinator::ApiClient;

use view::{Gauges, Snapshot, Ui};

/// Points kept per loss series (more than an 80-column sparkline shows).
const HISTORY: usize = 200;

/// Event lines kept for the events pane (more than an 80×24 screen shows).
const EVENT_LINES: usize = 24;

/// `tessera top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Where the job is: `JOB --coordinator URL` for a coordinator service's job; else
    /// `--job-dir`, or the job's own API as `--coordinator URL` or `--api` (with
    /// `--token-file`), where a JOB is its name (refused if the coordinator runs another job).
    #[command(flatten)]
    target: super::jobctl::Target,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
}

/// What `top` reads besides the API: the job directory's logs, when it has one.
struct Source {
    client: ApiClient,
    dir: Option<PathBuf>,
    job: Option<String>,
    /// Polled history when there is no train log to read (a remote coordinator).
    polled: BTreeMap<String, Vec<f64>>,
    polled_step: Option<f64>,
    validation: BTreeMap<String, Vec<(u64, f64)>>,
    /// (when, step) samples for the ETA.
    rate: Vec<(Instant, u64)>,
    /// The cursor of `GET /events` (`None` before the first answer), the newest event lines,
    /// and the newest committed checkpoint seen in them (step, UNIX ms).
    events_next: Option<u64>,
    events: std::collections::VecDeque<String>,
    committed: Option<(u64, u64)>,
}

/// The last `max` bytes of `path` as complete lines (the first, maybe cut, dropped).
fn tail_lines(path: &Path, max: u64) -> Vec<serde_json::Value> {
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map_or(0, |m| m.len());
    let from = len.saturating_sub(max);
    let mut text = String::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    let skip = usize::from(from > 0);
    text.lines().skip(skip).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The value of an unlabelled-or-job-labelled gauge `name` in Prometheus text.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = if rest.starts_with('{') { &rest[rest.find('}')? + 1..] } else { rest };
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One event as a line: time, type, and its fields.
fn event_line(e: &serde_json::Value) -> String {
    let ts = e["ts_ms"].as_u64().unwrap_or(0) / 1000;
    let ev = &e["event"];
    let ty = ev["type"].as_str().unwrap_or("?");
    // What tells events apart first; paths and byte counts do not fit 80 columns.
    const FIRST: [&str; 6] = ["step", "worker", "rank", "generation", "ranks", "reason"];
    let mut fields: Vec<(usize, String)> = ev
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !["type", "dir", "bytes", "addr"].contains(&k.as_str()))
                .map(|(k, v)| (FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()), format!("{k}={}", field_text(v))))
                .collect()
        })
        .unwrap_or_default();
    fields.sort_by_key(|(rank, _)| *rank);
    let fields: Vec<String> = fields.into_iter().take(4).map(|(_, f)| f).collect();
    format!("{:02}:{:02}:{:02} {ty} {}", (ts / 3600) % 24, (ts / 60) % 60, ts % 60, fields.join(" "))
}

/// A field's value in an event line: a typed reason (`{"kind": "member_lost", "worker": 3}`)
/// as `member_lost(worker=3)`, anything else as its JSON.
fn field_text(v: &serde_json::Value) -> String {
    let Some((kind, o)) = v.as_object().and_then(|o| Some((o.get("kind")?.as_str()?, o))) else { return v.to_string() };
    let rest: Vec<String> = o.iter().filter(|(k, _)| *k != "kind").map(|(k, v)| format!("{k}={v}")).collect();
    if rest.is_empty() { kind.to_string() } else { format!("{kind}({})", rest.join(",")) }
}

impl Source {
    fn new(args: &TopArgs) -> anyhow::Result<Self> {
        let mut target = args.target.clone();
        let (client, dir, name) = if let Some((service, job)) = target.service()? {
            (service.for_job(job), None, None)
        } else {
            // Only the flag: $TESSERA_COORDINATOR names a service, not this job's own API.
            let url = target.coordinator.clone();
            if let Some(url) = &url {
                let endpoint = tessera_coordinator::Endpoint::parse(url)?;
                anyhow::ensure!(
                    !endpoint.is_tls(),
                    "{url}: the API of a job that tessera train runs is plain HTTP; for a coordinator service's job give JOB too"
                );
                target.api = Some(endpoint.addr());
            }
            // The logs are read only where the job's own directory is (not with a remote API).
            let dir = (url.is_none() && target.api.is_none()).then(|| target.job_dir.clone());
            (target.embedded_client()?, dir, target.job.clone())
        };
        let client = client.with_timeout(Duration::from_secs(3));
        Ok(Self {
            client,
            dir,
            job: name,
            polled: BTreeMap::new(),
            polled_step: None,
            validation: BTreeMap::new(),
            rate: Vec::new(),
            events_next: None,
            events: std::collections::VecDeque::new(),
            committed: None,
        })
    }

    /// Polls `GET /events` from the cursor: the first call reads the newest page (enough to
    /// find the last checkpoint's commit time), later ones only what was recorded since.
    fn poll_events(&mut self) -> anyhow::Result<()> {
        let limit = if self.events_next.is_none() { tessera_coordinator::events::MAX_PAGE } else { 200 };
        let page = self.client.events(self.events_next, limit)?;
        if page.missed > 0 {
            self.events.push_back(format!("({} events not shown: see events.jsonl)", page.missed));
        }
        for e in &page.events {
            if let tessera_coordinator::JobEvent::CheckpointCommitted { step, .. } = e.event {
                self.committed = Some((step, e.ts_ms));
            }
            self.events.push_back(event_line(&serde_json::to_value(e)?));
        }
        while self.events.len() > EVENT_LINES {
            self.events.pop_front();
        }
        self.events_next = Some(page.next);
        Ok(())
    }

    fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let status = self.client.status()?;
        if let Some(job) = &self.job
            && *job != status.job
        {
            anyhow::bail!("the coordinator runs job {:?}, not {job:?}", status.job);
        }
        let metrics = self.client.metrics()?;
        let gauges = Gauges {
            tokens_per_s: gauge(&metrics, "tessera_tokens_per_second"),
            samples_per_s: gauge(&metrics, "tessera_samples_per_second"),
            mfu: gauge(&metrics, "tessera_mfu_ratio"),
        };
        let now = Instant::now();
        self.rate.push((now, status.step));
        self.rate.retain(|(t, _)| now.duration_since(*t) < Duration::from_secs(60));
        let eta_s = match (self.rate.first(), self.rate.last()) {
            (Some((t0, s0)), Some((t1, s1))) if s1 > s0 => {
                let per_s = (s1 - s0) as f64 / t1.duration_since(*t0).as_secs_f64();
                Some(status.total_steps.saturating_sub(status.step) as f64 / per_s)
            }
            _ => None,
        };
        if let Some(v) = &status.validation {
            for (m, l) in &v.loss {
                let points = self.validation.entry(m.to_string()).or_default();
                if points.last().is_none_or(|(s, _)| *s < v.step) {
                    points.push((v.step, *l));
                }
            }
        }
        let mut train: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        match &self.dir {
            Some(dir) => {
                for l in tail_lines(&dir.join("train_log.jsonl"), 64 << 10).iter().rev().take(HISTORY).rev() {
                    if let Some(loss) = l["loss"].as_f64() {
                        train.entry("total".into()).or_default().push(loss);
                    }
                    for (m, v) in l["mod_loss"].as_object().into_iter().flatten() {
                        if let Some(v) = v.as_f64() {
                            train.entry(m.clone()).or_default().push(v);
                        }
                    }
                }
            }
            None => {
                let step = gauge(&metrics, "tessera_step");
                if step.is_some() && step != self.polled_step {
                    self.polled_step = step;
                    if let Some(l) = status.loss {
                        self.polled.entry("total".into()).or_default().push(l);
                    }
                    for line in metrics.lines().filter(|l| l.starts_with("tessera_modality_loss{")) {
                        let m = line.split("modality=\"").nth(1).and_then(|r| r.split('"').next());
                        if let (Some(m), Some(v)) = (m, line.rsplit(' ').next().and_then(|v| v.parse().ok())) {
                            self.polled.entry(m.to_string()).or_default().push(v);
                        }
                    }
                    for v in self.polled.values_mut() {
                        let cut = v.len().saturating_sub(HISTORY);
                        v.drain(..cut);
                    }
                }
                train = self.polled.clone();
            }
        }
        // Events come from the API in both forms (a remote coordinator has no readable log); a
        // coordinator that cannot answer them still shows the rest.
        let mut events: Vec<String> = match self.poll_events() {
            Ok(()) => self.events.iter().cloned().collect(),
            Err(e) => vec![format!("(events: {e:#})")],
        };
        if events.is_empty() {
            events.push("(no events yet)".into());
        }
        let checkpoint_age_s = self
            .committed
            .filter(|(step, _)| Some(*step) == status.last_checkpoint)
            .map(|(_, ts)| now_ms().saturating_sub(ts) as f64 / 1000.0);
        Ok(Snapshot { status, gauges, train, validation: self.validation.clone(), checkpoint_age_s, eta_s, events })
    }
}

/// Runs `tessera top`.
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let mut source = Source::new(&args)?;
    if !std::io::stdout().is_terminal() {
        print!("{}", view::plain(&source.snapshot()?, 100));
        return Ok(());
    }
    let mut terminal = ratatui::init();
    let result = interact(&mut terminal, &mut source, Duration::from_secs_f64(args.interval.max(0.1)));
    ratatui::restore();
    result
}

/// A key's effect: the text to show.
fn act(source: &Source, snap: &Snapshot, ui: &mut Ui, prompt: &mut Option<String>, key: KeyCode) -> Option<bool> {
    if let Some(typed) = prompt.as_mut() {
        match key {
            KeyCode::Char(c) if c.is_ascii_digit() => typed.push(c),
            KeyCode::Backspace => {
                typed.pop();
            }
            KeyCode::Enter => {
                let n: usize = typed.parse().unwrap_or(0);
                ui.message = match source.client.scale(n) {
                    Ok(ack) => format!("scaling to {} workers", ack.target_workers),
                    Err(e) => format!("scale: {e}"),
                };
                *prompt = None;
                return Some(false);
            }
            KeyCode::Esc => *prompt = None,
            _ => {}
        }
        ui.message = prompt.as_ref().map_or_else(String::new, |t| format!("scale to: {t}_"));
        return Some(false);
    }
    let ranks = view::rows(&snap.status);
    match key {
        KeyCode::Char('q') | KeyCode::Esc => return Some(true),
        KeyCode::Char('c') => {
            ui.message = match source.client.checkpoint() {
                Ok(ack) => format!("checkpoint asked (step {})", ack.step.map_or("-".into(), |s| s.to_string())),
                Err(e) => format!("checkpoint: {e}"),
            }
        }
        KeyCode::Char('s') => {
            *prompt = Some(String::new());
            ui.message = "scale to: _".into();
        }
        KeyCode::Char('d') => {
            ui.message = match ranks.get(ui.selected) {
                Some(m) => match source.client.drain(m.worker) {
                    Ok(_) => format!("draining worker {} at the next checkpointed boundary", m.worker),
                    Err(e) => format!("drain: {e}"),
                },
                None => "no rank selected".into(),
            }
        }
        KeyCode::Up => ui.selected = ui.selected.saturating_sub(1),
        KeyCode::Down => ui.selected = (ui.selected + 1).min(ranks.len().saturating_sub(1)),
        _ => return None,
    }
    Some(false)
}

fn interact(terminal: &mut ratatui::DefaultTerminal, source: &mut Source, every: Duration) -> anyhow::Result<()> {
    let mut ui = Ui::default();
    let mut prompt: Option<String> = None;
    let mut snap = source.snapshot()?;
    let mut next = Instant::now() + every;
    loop {
        terminal.draw(|f| view::render(&snap, &ui, f.area(), f.buffer_mut()))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
                && act(source, &snap, &mut ui, &mut prompt, k.code) == Some(true)
            {
                return Ok(());
            }
            continue;
        }
        next = Instant::now() + every;
        match source.snapshot() {
            Ok(s) => snap = s,
            // A coordinator that stopped answering: keep the last screen, say why.
            Err(e) => ui.message = format!("{e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_coordinator::JobEvent;
    use tessera_coordinator::control::{StopReason, WorkerId};
    use tessera_coordinator::events::{EndReason, SeqEvent};

    use super::event_line;

    /// A record as `GET /events` answers it becomes one line that leads with what tells events
    /// apart (worker, rank, step) and leaves out paths and byte counts.
    #[test]
    fn an_api_event_becomes_one_short_line() {
        let e = SeqEvent {
            seq: 7,
            ts_ms: 3_600_000 + 61_000,
            event: JobEvent::StragglerFlagged {
                worker: 4,
                rank: 1,
                generation: 2,
                step: 90,
                own_s: 1.5,
                others_median_s: 0.2,
                drain: true,
            },
        };
        assert_eq!(event_line(&serde_json::to_value(&e).unwrap()), "01:01:01 straggler_flagged step=90 worker=4 rank=1 generation=2");
        let e = SeqEvent {
            seq: 8,
            ts_ms: 0,
            event: JobEvent::CheckpointCommitted { step: 100, dir: "/long/path/step-100".into(), bytes: 1 << 30, duration_s: 0.5 },
        };
        assert_eq!(event_line(&serde_json::to_value(&e).unwrap()), "00:00:00 checkpoint_committed step=100 duration_s=0.5");
        // A typed end reason reads as its kind; a schema-1 one as the text it was.
        let ended = |reason: EndReason| SeqEvent { seq: 9, ts_ms: 0, event: JobEvent::GenerationEnded { generation: 3, reason } };
        let lost = ended(StopReason::MemberLost { worker: WorkerId(5) }.into());
        assert_eq!(
            event_line(&serde_json::to_value(&lost).unwrap()),
            "00:00:00 generation_ended generation=3 reason=member_lost(worker=5)"
        );
        let resize = ended(StopReason::Resize.into());
        assert_eq!(event_line(&serde_json::to_value(&resize).unwrap()), "00:00:00 generation_ended generation=3 reason=resize");
        let old = ended(EndReason::Legacy("Resize".into()));
        assert_eq!(event_line(&serde_json::to_value(&old).unwrap()), "00:00:00 generation_ended generation=3 reason=\"Resize\"");
    }
}
