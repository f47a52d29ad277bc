//! Positional reads and a bounded cache of open files, shared by the tar and text readers.
//!
//! Records are read by index with `pread` (`read_exact_at`), which needs no seek position and
//! therefore lets many threads share one `File`. A dataset may span thousands of shards per
//! folder, more than the process may keep open, so handles live in a small bounded cache.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Default number of files a [`FileCache`] keeps open.
pub const DEFAULT_OPEN_FILES: usize = 64;

/// A bounded cache of read-only file handles, keyed by a caller-chosen file id.
#[derive(Debug)]
pub struct FileCache {
    capacity: usize,
    inner: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    open: HashMap<usize, Arc<File>>,
    order: VecDeque<usize>,
}

impl FileCache {
    /// A cache keeping at most `capacity` files open (at least one).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::new(CacheState::default()) }
    }

    /// The open handle of file `id` at `path`, opening it (and evicting the oldest) if needed.
    pub fn get(&self, id: usize, path: &Path) -> Result<Arc<File>> {
        if let Some(f) = self.lock().open.get(&id) {
            return Ok(Arc::clone(f));
        }
        // Open outside the lock so a slow filesystem does not serialise every reader.
        let file = Arc::new(File::open(path).map_err(|source| io_error(path, source))?);
        let mut state = self.lock();
        if !state.open.contains_key(&id) {
            while state.open.len() >= self.capacity {
                match state.order.pop_front() {
                    Some(old) => {
                        state.open.remove(&old);
                    }
                    None => break,
                }
            }
            state.open.insert(id, Arc::clone(&file));
            state.order.push_back(id);
        }
        Ok(file)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A poisoned cache only means another reader panicked mid-update; the map is still valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads exactly `len` bytes at `offset` of `file`; a short file is an error naming `path`.
pub fn read_exact_at(file: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    pread_exact(file, &mut buf, offset).map_err(|source| io_error(path, source))?;
    Ok(buf)
}

/// Reads up to `buf.len()` bytes at `offset`, returning how many were read (0 at end of file).
pub fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<usize> {
    pread(file, buf, offset).map_err(|source| io_error(path, source))
}

#[cfg(unix)]
fn pread(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(windows)]
fn pread(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use std::os::windows::fs::FileExt;
    file.seek_read(buf, offset)
}

fn pread_exact(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match pread(file, buf, offset)? {
            0 => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file ends before the record")),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// The crate's I/O error for `path`.
pub fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source }
}

/// The temp name a [`super::TarWriter`] fills before renaming it to `path`: unique per process,
/// so concurrent writers never clash; `tessera tokenize` recognises (and removes) the ones a
/// killed run left behind by it. Whole small files go through [`crate::atomic::write_atomic`].
pub fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}
