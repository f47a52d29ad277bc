//! Append-only JSON-lines files that a crash cannot corrupt: `train_log.jsonl` and the event
//! log. A record is complete only with its terminating newline, and each record (newline
//! included) goes out in ONE `write(2)`, so a crash tears at most the record being written.
//! Text after the last newline is such a torn record, never acknowledged: [`JsonLines::open`]
//! cuts it off before appending, otherwise the next record would be glued onto it and both
//! would be lost to every reader.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{ProtocolError, Result};

/// An open JSON-lines file, appending (one writer per file).
#[derive(Debug)]
pub struct JsonLines {
    file: File,
    path: PathBuf,
}

impl JsonLines {
    /// Opens (or creates) the file at `path` for appending, cutting off a torn last line.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| ProtocolError::Io { path: path.display().to_string(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            file.set_len(complete as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        // Writes go to the end just established; no O_APPEND, because set_len above and the
        // seek here already position the file and there is a single writer.
        file.seek(SeekFrom::Start(complete as u64)).map_err(io)?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line in one write; with `durable`, also fsyncs before returning.
    pub fn append<T: Serialize + ?Sized>(&mut self, record: &T, durable: bool) -> Result<()> {
        let io = |source| ProtocolError::Io { path: self.path.display().to_string(), source };
        let mut bytes = serde_json::to_vec(record).map_err(|e| io(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        self.file.write_all(&bytes).map_err(io)?;
        if durable {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// The complete lines of the file at `path` (a torn last line is left out).
    pub fn complete_lines(path: &Path) -> Result<Vec<Vec<u8>>> {
        let text = std::fs::read(path).map_err(|source| ProtocolError::Io { path: path.display().to_string(), source })?;
        let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        Ok(text[..complete].split_inclusive(|b| *b == b'\n').map(|l| l[..l.len() - 1].to_vec()).collect())
    }

    /// The largest `step` of the complete lines of the log at `path` (a train log); `None`
    /// when it holds none or cannot be read.
    pub fn last_step(path: &Path) -> Option<u64> {
        Self::complete_lines(path).ok()?.iter().filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok()?["step"].as_u64()).max()
    }
}

#[cfg(test)]
mod tests {
    use super::JsonLines;

    /// A crash at any byte of the last record (simulated by truncating the file there) leaves
    /// the earlier records intact, and the reopened file appends a clean record after them.
    #[test]
    fn a_torn_record_is_cut_off_and_earlier_records_survive_any_crash_point() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut log = JsonLines::open(&path).unwrap();
        for step in 0..3u64 {
            log.append(&serde_json::json!({"step": step, "loss": 1.5 / (step + 1) as f64, "mod_loss": {"caption": 2.0}}), false).unwrap();
        }
        drop(log);
        let full = std::fs::read(&path).unwrap();
        let second_end = full.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(1).unwrap().0 + 1;
        // A crash anywhere inside the third record leaves a torn tail of it.
        for cut in second_end..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let mut log = JsonLines::open(&path).unwrap();
            log.append(&serde_json::json!({"step": 2, "rerun": true}), false).unwrap();
            let lines = JsonLines::complete_lines(&path).unwrap();
            assert_eq!(lines.len(), 3, "cut at {cut}");
            for line in &lines {
                serde_json::from_slice::<serde_json::Value>(line).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            }
        }
    }

    /// The newest step a train log holds, torn tail ignored (an adopting coordinator logs only
    /// the steps after it).
    #[test]
    fn last_step_is_the_largest_complete_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_log.jsonl");
        assert_eq!(JsonLines::last_step(&path), None, "no log yet");
        let mut log = JsonLines::open(&path).unwrap();
        for step in [0u64, 1, 2, 1, 3] {
            log.append(&serde_json::json!({"step": step}), false).unwrap();
        }
        drop(log);
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"{\"step\": 9");
        std::fs::write(&path, text).unwrap();
        assert_eq!(JsonLines::last_step(&path), Some(3));
    }
}
