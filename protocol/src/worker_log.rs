//! A job's per-worker log files: every line a worker process prints with [`crate::say!`] while
//! it serves a job also goes to `OUTPUT_DIR/logs/WORKER.jsonl`, one [`WorkerLogLine`] per line,
//! on the filesystem every host mounts, so that `tessera logs JOB` can show every rank's lines,
//! also after the job ended (the coordinator service reads them back).
//!
//! Why a process-wide sink: the lines come from every thread of the process (the actor, the
//! device thread, checkpoint writers, the pool worker's heartbeat thread) through one macro;
//! handing a writer to each call site would touch every `say!`. The sink is set when the
//! coordinator welcomes the worker to a job ([`open`]), carries the rank and generation the
//! process has at the moment ([`set_rank`]), and is closed when the worker leaves the job
//! ([`close`]). Lines are written under one lock, each (newline included) in one `write(2)`
//! and unbuffered, so lines of several threads never interleave and a reader sees each line
//! as soon as it is printed. stderr gets every line as before.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ids::{Generation, Rank};
use crate::jsonl::JsonLines;

/// The directory of a job's per-worker logs, under its output directory.
pub const LOGS_DIR: &str = "logs";

/// The extension of a worker's log file.
pub const LOG_EXT: &str = "jsonl";

/// One line of a worker's log file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLogLine {
    /// When it was printed (ms since the Unix epoch).
    pub ts_ms: u64,
    /// The worker that printed it (its pool name; the file is named after it).
    pub worker: String,
    /// The rank the process had when it printed the line (`None`: it had none then).
    pub rank: Option<Rank>,
    /// The generation of that rank (`None`: none then).
    pub generation: Option<Generation>,
    /// The line, without its newline.
    pub line: String,
}

/// The log file of worker `worker` of the job whose output directory is `output_dir`.
pub fn log_path(output_dir: &Path, worker: &str) -> PathBuf {
    output_dir.join(LOGS_DIR).join(format!("{worker}.{LOG_EXT}"))
}

/// True when `name` may name a log file: 1 to 128 characters of `[A-Za-z0-9._-]`, the pool's
/// worker names (so that names are safe in a file name and in the reader's cursor).
pub fn is_log_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The open sink: the file and who is speaking.
struct Sink {
    file: JsonLines,
    worker: String,
    rank: Option<(Rank, Generation)>,
}

/// The process's sink (`None`: lines go to stderr only).
static SINK: Mutex<Option<Sink>> = Mutex::new(None);

fn sink() -> std::sync::MutexGuard<'static, Option<Sink>> {
    // A thread that panicked while writing a line leaves nothing half done worth refusing.
    SINK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes every further line of this process also go to `worker`'s log file of the job whose
/// output directory is `output_dir` (creating `logs/`; a torn last line of an earlier run is
/// cut off). Replaces a sink already open. Returns the file's path.
pub fn open(output_dir: &Path, worker: &str) -> Result<PathBuf> {
    if !is_log_name(worker) {
        return Err(crate::ProtocolError::BadLogName { name: worker.to_string() });
    }
    let path = log_path(output_dir, worker);
    let dir = output_dir.join(LOGS_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| crate::ProtocolError::Io { path: dir.display().to_string(), source })?;
    let file = JsonLines::open(&path)?;
    *sink() = Some(Sink { file, worker: worker.to_string(), rank: None });
    Ok(path)
}

/// Sets the rank (and its generation) that the following lines carry; `None` between
/// generations.
pub fn set_rank(rank: Option<(Rank, Generation)>) {
    if let Some(s) = sink().as_mut() {
        s.rank = rank;
    }
}

/// Stops writing lines to the job's log (the worker left the job).
pub fn close() {
    *sink() = None;
}

/// Appends `text` to the open sink, if any. A failed write closes the sink and says so on
/// stderr once: a full disk must not cost a log line per line printed, nor the job.
pub(crate) fn record(text: &str) {
    let mut guard = sink();
    let Some(s) = guard.as_mut() else { return };
    let (rank, generation) = s.rank.map_or((None, None), |(r, g)| (Some(r), Some(g)));
    let line = WorkerLogLine { ts_ms: crate::report::now_ms(), worker: s.worker.clone(), rank, generation, line: text.to_string() };
    if let Err(e) = s.file.append(&line, false) {
        *guard = None;
        drop(guard);
        crate::say::line(format!("[{}] the job's log file is not written any more: {e}", line.worker));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of several threads land whole, one JSON object per line, with the rank the
    /// process had when each was printed; closed, nothing more is written. (The only test that
    /// opens the process-wide sink: other tests' lines may land in it meanwhile, so only this
    /// test's own lines are counted.)
    #[test]
    fn lines_of_many_threads_land_whole_with_their_rank_and_stop_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = open(dir.path(), "host-1").unwrap();
        assert_eq!(path, dir.path().join("logs/host-1.jsonl"));
        crate::say!("sinktest before any generation");
        set_rank(Some((Rank(1), Generation(2))));
        let threads: Vec<_> = (0..4)
            // `record` is the hook `say!` calls; called directly so that the test's stderr
            // stays quiet (direct stderr writes are not captured).
            .map(|t| {
                std::thread::spawn(move || (0..200).for_each(|i| record(&format!("sinktest thread {t} line {i} {}", "x".repeat(300)))))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        set_rank(None);
        crate::say!("sinktest after the generation");
        close();
        crate::say!("sinktest after close");
        let lines: Vec<WorkerLogLine> = JsonLines::complete_lines(&path)
            .unwrap()
            .iter()
            .map(|l| serde_json::from_slice(l).expect("every line is a whole JSON object"))
            .filter(|l: &WorkerLogLine| l.line.starts_with("sinktest"))
            .collect();
        assert_eq!(lines.len(), 1 + 4 * 200 + 1, "the line after close is not written");
        assert_eq!((lines[0].rank, lines[0].generation), (None, None));
        assert_eq!(lines[0].worker, "host-1");
        assert!(lines[1..801].iter().all(|l| l.rank == Some(Rank(1)) && l.generation == Some(Generation(2))));
        assert_eq!(lines[801].line, "sinktest after the generation");
        assert_eq!(lines[801].rank, None);
        assert!(lines.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw.contains(r#""rank":1,"generation":2,"#), "rank and generation are bare numbers: {}", &raw[..raw.len().min(400)]);
    }

    #[test]
    fn log_names_are_the_pool_worker_names() {
        assert!(is_log_name("host3-1234") && is_log_name("w0") && is_log_name("worker-7.a_b"));
        assert!(!is_log_name("") && !is_log_name("a/b") && !is_log_name("a:b") && !is_log_name("a,b") && !is_log_name(&"x".repeat(129)));
        assert!(open(Path::new("/nonexistent"), "../escape").is_err());
    }
}
