//! Atomic file writes, the one implementation every crate uses (shard index files, model
//! weights, tokenizer configs, checkpoint manifests, `coordinator.json`): it lives here because
//! this is the lowest crate that all of them depend on.
//!
//! A reader sees the old file or the whole new one, never a prefix, and a crash after the call
//! returns cannot lose the new file: a temp sibling is filled, fsynced, renamed over the target
//! and the directory fsynced; a failure removes the temp file and leaves the target as it was.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically and durably (see the module doc).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with the content streamed by `fill` into a buffered temp file, so a
/// large file (model weights) need not be built in memory first.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    let io = |op: &'static str, p: &Path| {
        let path = p.display().to_string();
        move |source| Error::Write { op, path, source }
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("creating directory", dir))?;
    let tmp = temp_path(path);
    let written = (|| -> Result<()> {
        let f = File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        fill(&mut w).map_err(io("writing", &tmp))?;
        let f = w.into_inner().map_err(|e| io("writing", &tmp)(e.into_error()))?;
        f.sync_all().map_err(io("syncing", &tmp))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    sync_dir(dir);
    Ok(())
}

/// A hidden temp name next to `path`, unique per process, so concurrent writers never clash
/// and directory listings (checkpoint steps, shard patterns) never match it.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Fsyncs a directory so that a rename inside it is durable; file systems without directory
/// fsync make this a no-op rather than an error.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/world.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");

        // A fill that fails leaves the old content and no temp file behind.
        let err = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("writing ") && err.ends_with("disk full"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["world.json"]);

        // A target that cannot be replaced (a directory) is an error naming it.
        let err = write_atomic(dir.path().join("sub").as_path(), b"x").unwrap_err().to_string();
        assert!(err.starts_with("renaming into place ") && err.contains("sub"), "{err}");
    }
}
