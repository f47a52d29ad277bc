//! Reading a job's per-worker logs (`OUTPUT_DIR/logs/WORKER.jsonl`, written by the workers'
//! [`tessera_protocol::worker_log`]) a page at a time, for `GET /v1/jobs/ID/logs` and
//! `tessera logs JOB [--follow]`.
//!
//! - **Order.** Each file is in the order its process printed; the files are merged by
//!   `ts_ms` (ties: by file name), so a page reads as one timeline.
//! - **Cursor.** [`LogCursor`] is the byte offset reached in each file, written
//!   `NAME:OFFSET,NAME:OFFSET` (log names are `[A-Za-z0-9._-]`, so it needs no escaping in a
//!   query). A page answers only lines after the cursor, and its `next` covers exactly the
//!   lines it consumed: asking again with it (`--follow`) gives only new lines, none twice.
//!   Lines that the rank filter leaves out are consumed too, so a cursor belongs to its filter.
//! - **Whole lines only.** A line is answered once its newline is there; text after a file's
//!   last newline is a line being written (or torn by a crash) and is left for a later page.
//! - **Malformed lines are skipped and reported**, not fatal: the page lists each one's file
//!   and byte offset in `skipped` (the CLI prints them on stderr). One garbled line must not
//!   hide every other line of a job.
//! - **Bounded.** At most [`MAX_READ`] bytes are read from each file per page; a file cut there
//!   ends the page when its lines run out, so that its later lines are never overtaken by
//!   another file's. A file shorter than its cursor offset was replaced and is read from its
//!   start. No `logs/` directory (a job no worker has joined yet) is an empty page.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tessera_protocol::worker_log::{LOG_EXT, LOGS_DIR, WorkerLogLine, is_log_name};
use tessera_protocol::{ProtocolError, Rank};

use crate::api::ApiError;
use crate::api::query::{limit, number, pairs};
use crate::store::JobState;

/// The most bytes read from one file for one page.
pub const MAX_READ: usize = 1 << 20;

/// Lines a page holds when the query names no `limit`.
pub const DEFAULT_LIMIT: usize = 500;

/// The most lines a page may hold.
pub const MAX_LIMIT: usize = 5000;

/// How far each log file has been read: bytes, by log name (files not named: from the start).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor(pub BTreeMap<String, u64>);

impl std::fmt::Display for LogCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(name, offset)| format!("{name}:{offset}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl LogCursor {
    /// Parses `NAME:OFFSET,…` (empty: the start of every file); a bad one names `since`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut offsets = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let bad = || ApiError::bad("since", format!("{part:?} is not NAME:OFFSET (pass the previous page's `next`)"));
            let (name, offset) = part.rsplit_once(':').ok_or_else(bad)?;
            let offset = offset.parse::<u64>().map_err(|_| bad())?;
            if !is_log_name(name) {
                return Err(bad());
            }
            offsets.insert(name.to_string(), offset);
        }
        Ok(Self(offsets))
    }
}

/// What `GET /v1/jobs/ID/logs` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// Only the lines printed with this rank.
    pub rank: Option<Rank>,
    /// Where the previous page ended.
    pub since: LogCursor,
    /// The most lines wanted (1..=[`MAX_LIMIT`], default [`DEFAULT_LIMIT`]).
    pub limit: usize,
}

impl LogQuery {
    /// Parses a raw query string (`None`: no `?`). Unknown parameters are refused, as a
    /// typo'd `rnak=1` would otherwise answer every rank.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut query = Self { rank: None, since: LogCursor::default(), limit: DEFAULT_LIMIT };
        for (name, value) in pairs(raw) {
            match name {
                "rank" => query.rank = Some(Rank(u32::try_from(number(name, value)?).map_err(|_| ApiError::bad("rank", "too large"))?)),
                "since" => query.since = LogCursor::parse(value)?,
                "limit" => query.limit = limit(value, MAX_LIMIT)?,
                _ => return Err(ApiError::bad(name, "unknown parameter (expected rank, since, limit)")),
            }
        }
        Ok(query)
    }

    /// The query string asking for this (what the client sends).
    pub fn to_query(&self) -> String {
        let mut q = format!("since={}&limit={}", self.since, self.limit);
        if let Some(r) = self.rank {
            q.push_str(&format!("&rank={r}"));
        }
        q
    }
}

/// A line that is not a [`WorkerLogLine`], left out of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedLine {
    /// The log file.
    pub file: String,
    /// The byte offset its line starts at.
    pub offset: u64,
    /// Why it does not parse.
    pub error: String,
}

/// A page of a job's logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogPage {
    /// The lines, merged by time.
    pub lines: Vec<WorkerLogLine>,
    /// The cursor to ask with next (`since=next`).
    pub next: String,
    /// Malformed lines consumed by this page (left out of `lines`).
    #[serde(default)]
    pub skipped: Vec<SkippedLine>,
    /// The job's state, read before the files: once it has ended and `writing` is 0, a page
    /// with fewer than `limit` lines means every line has been answered.
    pub state: JobState,
    /// Pool workers that still say they serve the job (they may print more lines).
    pub writing: u32,
}

/// The lines of one file read for a page.
struct Pending {
    name: String,
    path: String,
    /// Complete lines after the cursor: (start offset, end offset, text).
    lines: VecDeque<(u64, u64, Vec<u8>)>,
    /// More of the file lies beyond what was read (it was cut at [`MAX_READ`]).
    cut: bool,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ProtocolError + '_ {
    move |source| ProtocolError::Io { path: path.display().to_string(), source }
}

/// Reads the complete lines of `path` from `offset` (from 0 when the file is shorter).
fn read_from(path: &Path, name: &str, mut offset: u64) -> Result<Pending, ProtocolError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len < offset {
        offset = 0;
    }
    file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    let mut buf = Vec::new();
    (&mut file).take(MAX_READ as u64).read_to_end(&mut buf).map_err(io_err(path))?;
    let cut = offset + (buf.len() as u64) < len;
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut lines = VecDeque::new();
    let mut start = offset;
    for line in buf[..complete].split_inclusive(|b| *b == b'\n') {
        let end = start + line.len() as u64;
        lines.push_back((start, end, line[..line.len() - 1].to_vec()));
        start = end;
    }
    if complete == 0 && cut {
        // A line longer than a page can read: consumed as malformed once its newline is there.
        if let Some(end) = find_newline(&mut file, offset + buf.len() as u64).map_err(io_err(path))? {
            lines.push_back((offset, end, Vec::new()));
        }
    }
    Ok(Pending { name: name.to_string(), path: path.display().to_string(), lines, cut })
}

/// The offset just past the first newline at or after `from` (`None`: no newline yet).
fn find_newline(file: &mut std::fs::File, from: u64) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(from))?;
    let mut at = from;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(i) = chunk[..n].iter().position(|b| *b == b'\n') {
            return Ok(Some(at + i as u64 + 1));
        }
        at += n as u64;
    }
}

/// The log files of `output_dir`'s `logs/`, by name (empty when it does not exist).
fn log_files(output_dir: &Path) -> Result<BTreeMap<String, std::path::PathBuf>, ProtocolError> {
    let dir = output_dir.join(LOGS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(io_err(&dir))?.path();
        let name = path.file_stem().and_then(|s| s.to_str()).filter(|n| is_log_name(n));
        if let (Some(name), Some(LOG_EXT)) = (name, path.extension().and_then(|e| e.to_str())) {
            files.insert(name.to_string(), path.clone());
        }
    }
    Ok(files)
}

/// The lines of the job whose output directory is `output_dir` after `q.since`, merged by time,
/// at most `q.limit` (see the module doc); `state` and `writing` are passed through.
pub fn read_page(output_dir: &Path, q: &LogQuery, state: JobState, writing: u32) -> Result<LogPage, ProtocolError> {
    let mut cursor = q.since.clone();
    let mut pending = Vec::new();
    for (name, path) in log_files(output_dir)? {
        let offset = cursor.0.get(&name).copied().unwrap_or(0);
        pending.push(read_from(&path, &name, offset)?);
    }
    let (mut lines, mut skipped) = (Vec::new(), Vec::new());
    // Parsed heads, so that each line is parsed once.
    let mut heads: Vec<Option<Result<WorkerLogLine, String>>> = vec![None; pending.len()];
    while lines.len() < q.limit {
        for (p, head) in pending.iter().zip(heads.iter_mut()) {
            if head.is_none()
                && let Some((_, _, text)) = p.lines.front()
            {
                *head = Some(serde_json::from_slice::<WorkerLogLine>(text).map_err(|e| e.to_string()));
            }
        }
        // A malformed head goes first (it has no time); else the earliest line.
        let next = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|h| (i, h)))
            .min_by_key(|(i, h)| match h {
                Ok(l) => (1, l.ts_ms, *i),
                Err(_) => (0, 0, *i),
            })
            .map(|(i, _)| i);
        let Some(i) = next else {
            break;
        };
        let (start, end, _) = pending[i].lines.pop_front().expect("a head has its line");
        cursor.0.insert(pending[i].name.clone(), end);
        match heads[i].take().expect("chosen head") {
            Ok(line) if q.rank.is_none() || line.rank == q.rank => lines.push(line),
            Ok(_) => {}
            Err(error) => skipped.push(SkippedLine { file: pending[i].path.clone(), offset: start, error }),
        }
        // A cut file's later lines may be older than the other files' heads: stop here.
        if pending[i].lines.is_empty() && pending[i].cut {
            break;
        }
    }
    Ok(LogPage { lines, next: cursor.to_string(), skipped, state, writing })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tessera_protocol::Generation;

    fn line(ts_ms: u64, worker: &str, rank: Option<u32>, text: &str) -> String {
        let l = WorkerLogLine {
            ts_ms,
            worker: worker.into(),
            rank: rank.map(Rank),
            generation: rank.map(|_| Generation(1)),
            line: text.into(),
        };
        format!("{}\n", serde_json::to_string(&l).unwrap())
    }

    fn append(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("logs").join(format!("{name}.jsonl"))).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn query(raw: &str) -> LogQuery {
        LogQuery::parse(Some(raw)).unwrap()
    }

    fn page(dir: &Path, raw: &str) -> LogPage {
        read_page(dir, &query(raw), JobState::Running, 0).unwrap()
    }

    fn texts(p: &LogPage) -> Vec<&str> {
        p.lines.iter().map(|l| l.line.as_str()).collect()
    }

    #[test]
    fn files_merge_by_time_and_the_rank_filter_keeps_one_ranks_lines() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "a", &(line(10, "a", None, "a1") + &line(30, "a", Some(0), "a3") + &line(50, "a", Some(0), "a5")));
        append(dir.path(), "b", &(line(20, "b", Some(1), "b2") + &line(40, "b", Some(1), "b4")));
        append(dir.path(), "c", &line(30, "c", Some(2), "c3"));
        std::fs::write(dir.path().join("logs/notes.txt"), "not a log").unwrap();
        assert_eq!(texts(&page(dir.path(), "")), ["a1", "b2", "a3", "c3", "b4", "a5"], "ties go by file name");
        let ranked = page(dir.path(), "rank=1");
        assert_eq!(texts(&ranked), ["b2", "b4"]);
        assert!(ranked.lines.iter().all(|l| l.rank == Some(Rank(1)) && l.worker == "b"));
    }

    #[test]
    fn the_cursor_answers_each_line_once_across_pages_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "a", &(line(1, "a", None, "a1") + &line(3, "a", None, "a3")));
        append(dir.path(), "b", &line(2, "b", None, "b2"));
        let first = page(dir.path(), "limit=2");
        assert_eq!(texts(&first), ["a1", "b2"]);
        let second = page(dir.path(), &format!("limit=2&since={}", first.next));
        assert_eq!(texts(&second), ["a3"]);
        let empty = page(dir.path(), &format!("since={}", second.next));
        assert!(empty.lines.is_empty());
        assert_eq!(empty.next, second.next, "nothing new: the cursor stays");
        append(dir.path(), "b", &line(4, "b", None, "b4"));
        append(dir.path(), "new", &line(5, "new", None, "n5"));
        assert_eq!(texts(&page(dir.path(), &format!("since={}", empty.next))), ["b4", "n5"], "only lines written since");
        // The cursor round-trips through its text.
        assert_eq!(LogCursor::parse(&first.next).unwrap().to_string(), first.next);
    }

    #[test]
    fn a_partly_written_last_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let whole = line(7, "a", Some(0), "second");
        let (head, tail) = whole.split_at(whole.len() / 2);
        append(dir.path(), "a", &(line(5, "a", Some(0), "first") + head));
        let p = page(dir.path(), "");
        assert_eq!(texts(&p), ["first"]);
        assert!(p.skipped.is_empty(), "a half line is not malformed, only unfinished");
        append(dir.path(), "a", tail);
        assert_eq!(texts(&page(dir.path(), &format!("since={}", p.next))), ["second"]);
    }

    #[test]
    fn no_logs_directory_is_an_empty_page() {
        let dir = tempfile::tempdir().unwrap();
        let p = read_page(&dir.path().join("never-created"), &query("since=a:10"), JobState::Queued, 0).unwrap();
        assert!(p.lines.is_empty() && p.skipped.is_empty());
        assert_eq!((p.next.as_str(), p.state), ("a:10", JobState::Queued));
    }

    #[test]
    fn malformed_lines_are_skipped_and_named_by_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let first = line(1, "a", None, "ok1");
        append(dir.path(), "a", &(first.clone() + "{not json\n" + &line(2, "a", None, "ok2")));
        let p = page(dir.path(), "");
        assert_eq!(texts(&p), ["ok1", "ok2"]);
        assert_eq!(p.skipped.len(), 1);
        assert!(p.skipped[0].file.ends_with("logs/a.jsonl"), "{:?}", p.skipped);
        assert_eq!(p.skipped[0].offset, first.len() as u64);
        assert!(page(dir.path(), &format!("since={}", p.next)).skipped.is_empty(), "reported once");
    }

    #[test]
    fn a_line_longer_than_a_page_can_read_is_skipped_once_whole() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "a", &"z".repeat(MAX_READ + 10));
        let p = page(dir.path(), "");
        assert!(p.lines.is_empty() && p.skipped.is_empty(), "not whole yet: {:?}", p.skipped);
        append(dir.path(), "a", &("\n".to_string() + &line(1, "a", None, "after")));
        let p = page(dir.path(), "");
        assert_eq!((p.skipped.len(), p.skipped.first().map(|s| s.offset)), (1, Some(0)));
        assert_eq!(texts(&page(dir.path(), &format!("since={}", p.next))), ["after"]);
    }

    #[test]
    fn a_file_shorter_than_its_cursor_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "a", &line(1, "a", None, "x"));
        assert_eq!(texts(&page(dir.path(), "since=a:100000")), ["x"]);
    }

    #[test]
    fn a_file_cut_at_the_read_limit_ends_the_page_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let long = "y".repeat(1000);
        let n = MAX_READ / line(0, "a", None, &long).len() + 10;
        let a: String = (0..n as u64).map(|i| line(i * 2, "a", None, &long)).collect();
        append(dir.path(), "a", &a);
        append(dir.path(), "b", &line(n as u64 * 2 - 1, "b", None, "late"));
        let mut since = String::new();
        let mut all = Vec::new();
        for _ in 0..4 {
            let p = page(dir.path(), &format!("limit=5000&since={since}"));
            all.extend(p.lines.iter().map(|l| l.ts_ms));
            since = p.next;
        }
        assert_eq!(all.len(), n + 1, "every line once");
        assert!(all.windows(2).all(|w| w[0] <= w[1]), "merged in time order across pages");
    }

    #[test]
    fn queries_parse_and_bad_ones_name_their_parameter() {
        let q = query("rank=1&since=host-1:20,w0:7&limit=3");
        assert_eq!(q.rank, Some(Rank(1)));
        assert_eq!(q.limit, 3);
        assert_eq!(q.since.to_string(), "host-1:20,w0:7");
        assert_eq!(LogQuery::parse(Some(&q.to_query())).unwrap(), q, "what the client sends parses back");
        let field = |raw| match LogQuery::parse(Some(raw)) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{raw}: {other:?}"),
        };
        assert_eq!(field("rank=-1"), "rank");
        assert_eq!(field("limit=0"), "limit");
        assert_eq!(field("since=a/b:1"), "since");
        assert_eq!(field("since=a:x"), "since");
        assert_eq!(field("rnak=1"), "rnak");
    }
}
