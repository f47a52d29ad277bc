//! `tessera logs JOB [--follow] [--rank R] [--json]`: the lines every worker of a coordinator
//! service's job printed (read by the service from `OUTPUT_DIR/logs/WORKER.jsonl` on the
//! shared filesystem), merged by time, for a queued, running or ended job. `--follow` asks
//! again every 500 ms with the previous page's cursor, so it prints only new lines, and exits
//! once the job has ended and no worker serves it any more (its last lines are written then),
//! or [`ENDED_GRACE`] after the end at most. `tessera logs --job-dir OUT` reads the same files
//! of a job that `tessera train --workers N` runs (embedded mode) directly; its `--follow`
//! ends once the job's `events.jsonl` records its end.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tessera_coordinator::cluster::logs::{LogCursor, LogPage, LogQuery, MAX_LIMIT, read_page};
use tessera_coordinator::store::JobState;
use tessera_protocol::WorkerLogLine;

use super::cluster::{Service, parse_job_id};

/// How often `--follow` asks for new lines.
const POLL: Duration = Duration::from_millis(500);

/// How long `--follow` waits after the job's end for workers that still say they serve it. A
/// worker prints its last lines when the coordinator tells it to exit, just before the job is
/// recorded as ended; one that still says so later was given the job but never joined it (it
/// waits out its connect timeout) and prints nothing to its log.
const ENDED_GRACE: Duration = Duration::from_secs(10);

/// Arguments of `tessera logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job (`job-N` or `N`) of a coordinator service.
    #[arg(required_unless_present = "job_dir")]
    job: Option<String>,
    /// The output directory of a job that `tessera train --workers N` runs, read directly.
    #[arg(long, conflicts_with = "job")]
    job_dir: Option<PathBuf>,
    /// Keep printing new lines until the job has ended and its workers have left it.
    #[arg(long)]
    follow: bool,
    /// Only the lines a worker printed while it was this rank.
    #[arg(long)]
    rank: Option<u32>,
    /// Print each line as its JSON object (`ts_ms`, `worker`, `rank`, `generation`, `line`).
    #[arg(long)]
    json: bool,
    /// The service.
    #[command(flatten)]
    service: Service,
}

/// One line as `tessera logs` prints it: `[WORKER rR gG] LINE` (rank and generation left out
/// when the worker had none).
fn plain(l: &WorkerLogLine) -> String {
    let mut who = l.worker.clone();
    if let Some(r) = l.rank {
        who.push_str(&format!(" r{r}"));
    }
    if let Some(g) = l.generation {
        who.push_str(&format!(" g{g}"));
    }
    format!("[{who}] {}", l.line)
}

/// True for the states a job does not leave.
fn ended(state: JobState) -> bool {
    matches!(state, JobState::Finished | JobState::Failed | JobState::Cancelled)
}

/// Whether `tessera logs` is done after a page with nothing new (`state` and `writing` as the
/// page says, read before its files; `ended_for`: since it was first seen ended): without
/// `--follow` at once; with it once the job has ended and no worker serves it any more (no line
/// can follow), or [`ENDED_GRACE`] after the end.
fn done(follow: bool, state: JobState, writing: u32, ended_for: Option<Duration>) -> bool {
    !follow || (ended(state) && (writing == 0 || ended_for.is_some_and(|t| t > ENDED_GRACE)))
}

/// Whether an embedded job's `events.jsonl` records its end, read again only when the file
/// grew (`--follow` polls twice a second; the log grows with every checkpoint and generation).
#[derive(Debug, Default)]
struct EndSeen {
    /// The file's length when it was last read.
    len: u64,
    /// Whether it recorded the end then (an end stays recorded).
    finished: bool,
}

impl EndSeen {
    /// Whether the job under `dir` has ended, reading its events if they changed.
    fn check(&mut self, dir: &std::path::Path) -> anyhow::Result<bool> {
        let events = dir.join("events.jsonl");
        let len = std::fs::metadata(&events).map_or(0, |m| m.len());
        if !self.finished && len != self.len {
            self.len = len;
            self.finished = len > 0
                && tessera_coordinator::EventLog::read_all(&events)?
                    .iter()
                    .any(|e| matches!(e.event, tessera_coordinator::JobEvent::JobFinished { .. }));
        }
        Ok(self.finished)
    }
}

/// An embedded job's page, read from its output directory: it has ended once its events
/// record the end (no pool worker serves it).
fn local_page(dir: &std::path::Path, query: &LogQuery, end: &mut EndSeen) -> anyhow::Result<LogPage> {
    let state = if end.check(dir)? { JobState::Finished } else { JobState::Running };
    read_page(dir, query, state, 0).with_context(|| format!("reading the logs under {}", dir.display()))
}

/// Runs `tessera logs`.
pub fn run(a: LogsArgs) -> anyhow::Result<()> {
    let mut query = LogQuery { rank: a.rank.map(tessera_protocol::Rank), since: LogCursor::default(), limit: MAX_LIMIT };
    let mut out = std::io::stdout().lock();
    let mut ended_at: Option<std::time::Instant> = None;
    let mut end = EndSeen::default();
    let mut service = match &a.job_dir {
        Some(_) => None,
        None => Some((a.service.client()?, parse_job_id(a.job.as_deref().context("give JOB or --job-dir")?)?)),
    };
    loop {
        let fetched = match (&a.job_dir, &service) {
            (Some(dir), _) => Ok(local_page(dir, &query, &mut end)?),
            (None, Some((client, id))) => client.logs(*id, &query).map_err(|e| (e, *id)),
            (None, None) => unreachable!("a service client without --job-dir"),
        };
        let page = match fetched {
            Ok(p) => p,
            // A bad job or query stays bad; anything else may be a failover: ask again.
            Err((e @ tessera_coordinator::CoordinatorError::Http { status: 400 | 404, .. }, _)) => return Err(e.into()),
            Err((e, id)) if a.follow => {
                tessera_protocol::say!("[logs] {e} (asking again)");
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(c) = a.service.client() {
                    service = Some((c, id));
                }
                continue;
            }
            Err((e, id)) => return Err(e).with_context(|| format!("reading {id}'s logs")),
        };
        for s in &page.skipped {
            tessera_protocol::say!("[logs] skipped a malformed line of {} at byte {}: {}", s.file, s.offset, s.error);
        }
        let mut text = String::new();
        for l in &page.lines {
            text.push_str(&if a.json { serde_json::to_string(l)? } else { plain(l) });
            text.push('\n');
        }
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            // The reader went away (`tessera logs JOB | head`): nothing more to do.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.context("writing to stdout")?,
        }
        let next = LogCursor::parse(&page.next).map_err(|e| anyhow::anyhow!("the service's cursor {:?}: {e}", page.next))?;
        if next != query.since {
            // The page consumed lines: there may be more at once.
            query.since = next;
            continue;
        }
        if ended(page.state) && ended_at.is_none() {
            ended_at = Some(std::time::Instant::now());
        }
        if done(a.follow, page.state, page.writing, ended_at.map(|t| t.elapsed())) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_ends_with_the_job_once_no_worker_serves_it_or_after_the_grace() {
        let s = Some(Duration::from_secs(1));
        assert!(done(false, JobState::Running, 3, None), "without --follow: what there is");
        assert!(!done(true, JobState::Queued, 0, None) && !done(true, JobState::Running, 0, None), "not ended yet");
        assert!(!done(true, JobState::Finished, 1, s), "a worker may still print its last lines");
        for state in [JobState::Finished, JobState::Failed, JobState::Cancelled] {
            assert!(done(true, state, 0, s));
        }
        assert!(done(true, JobState::Cancelled, 2, Some(ENDED_GRACE + Duration::from_millis(1))), "the grace is over");
    }

    /// The end is found once it is recorded, and a file that did not change is not read again
    /// (a torn, undecodable middle would fail a read: it is never reached once the end is seen).
    #[test]
    fn an_embedded_jobs_end_is_seen_once_recorded_and_unchanged_events_are_not_read_again() {
        use tessera_coordinator::{EventLog, JobEvent};
        let dir = tempfile::tempdir().unwrap();
        let mut end = EndSeen::default();
        assert!(!end.check(dir.path()).unwrap(), "no events yet");
        let mut log = EventLog::open(&dir.path().join("events.jsonl")).unwrap();
        log.record(&JobEvent::WorkerJoined { worker: 0, addr: "127.0.0.1:1".into() }).unwrap();
        assert!(!end.check(dir.path()).unwrap());
        log.record(&JobEvent::JobFinished { step: 3 }).unwrap();
        assert!(end.check(dir.path()).unwrap());
        // Garbage after the end: the answer stands without a read that would fail on it.
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("events.jsonl")).unwrap();
        std::io::Write::write_all(&mut f, b"{not json}\n{\"also\": \"not an event\"}\n").unwrap();
        assert!(end.check(dir.path()).unwrap());
    }

    #[test]
    fn plain_lines_name_the_worker_and_its_rank_and_generation_when_it_had_them() {
        let mut l = WorkerLogLine { ts_ms: 1, worker: "host-1".into(), rank: None, generation: None, line: "hello".into() };
        assert_eq!(plain(&l), "[host-1] hello");
        (l.rank, l.generation) = (Some(tessera_protocol::Rank(1)), Some(tessera_protocol::Generation(2)));
        assert_eq!(plain(&l), "[host-1 r1 g2] hello");
    }
}
