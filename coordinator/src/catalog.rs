//! The checkpoint catalogue, independent of any tensor library: directory naming, checksums,
//! verification of the files a manifest lists, the commit (manifest written last, directory
//! renamed into place, parent fsynced), and pruning. Workers write the files; whoever commits
//! (the coordinator, or rank 0 of a bare run) uses this module, and so does anyone choosing a
//! checkpoint to restore: a directory that is not committed or does not verify is never chosen.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{CoordinatorError, Result};

/// Name of the manifest inside a checkpoint directory (written last: its presence commits).
pub const MANIFEST: &str = "manifest.json";

/// One file of a checkpoint with its integrity data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CoordinatorError + 'a {
    move |source| CoordinatorError::Io { path: format!("{op} {}", path.display()), source }
}

fn bad(dir: &Path, reason: String) -> CoordinatorError {
    CoordinatorError::Checkpoint { path: dir.display().to_string(), reason }
}

/// Directory name of the checkpoint after `step` steps.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The temp directory the ranks of `generation` write a checkpoint of `step` into. The
/// generation is part of the name so that files of an aborted attempt never mix with a retry.
pub fn temp_dir(root: &Path, step: u64, generation: u64) -> PathBuf {
    root.join(format!(".{}.tmp-g{generation}", dir_name(step)))
}

/// Size and hex SHA-256 of a file.
pub fn digest(path: &Path) -> Result<(u64, String)> {
    let mut f = fs::File::open(path).map_err(io_err("opening", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((total, h.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

/// The [`FileEntry`] of a file, as recorded in manifests.
pub fn file_entry(path: &Path) -> Result<FileEntry> {
    let (bytes, sha256) = digest(path)?;
    Ok(FileEntry { name: path.file_name().unwrap_or_default().to_string_lossy().into_owned(), bytes, sha256 })
}

/// Checkpoint directories under `root` (committed or not), newest step first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("listing", root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("listing", root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            out.push((step, entry.path()));
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// A manifest's fields this module relies on; the rest is the writer's business.
#[derive(Deserialize)]
struct ManifestHead {
    state: StateHead,
    files: Vec<FileEntry>,
}

#[derive(Deserialize)]
struct StateHead {
    step: u64,
}

/// Verifies a checkpoint directory: its manifest parses, and every file it lists has the
/// recorded size and SHA-256. Returns the step it holds.
pub fn verify(dir: &Path) -> Result<u64> {
    let text = fs::read(dir.join(MANIFEST)).map_err(|e| bad(dir, format!("no readable {MANIFEST}: {e}")))?;
    let m: ManifestHead = serde_json::from_slice(&text).map_err(|e| bad(dir, format!("{MANIFEST}: {e}")))?;
    if m.files.is_empty() {
        return Err(bad(dir, format!("{MANIFEST} lists no files")));
    }
    for f in &m.files {
        let (bytes, sha) = digest(&dir.join(&f.name)).map_err(|e| bad(dir, e.to_string()))?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(bad(dir, format!("{}: {bytes} bytes, sha256 {sha}; manifest says {} bytes, {}", f.name, f.bytes, f.sha256)));
        }
    }
    Ok(m.state.step)
}

/// Steps of the committed checkpoints under `root` that verify (ascending), and why the others
/// were passed over.
pub fn committed(root: &Path) -> Result<(Vec<u64>, Vec<String>)> {
    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    for (step, dir) in list(root)? {
        match verify(&dir) {
            Ok(s) if s == step => ok.push(step),
            Ok(s) => rejected.push(format!("{}: manifest says step {s}", dir.display())),
            Err(e) => rejected.push(e.to_string()),
        }
    }
    ok.sort_unstable();
    Ok((ok, rejected))
}

/// Commits a checkpoint whose files are durable in `tmp`: checks each file's size against its
/// entry (the writer computed the checksum from the bytes it wrote; re-reading gigabytes here
/// would stall the commit, and [`verify`] checks every byte before a restore), sets the manifest's `files`, writes the manifest (temp + fsync + rename), renames `tmp` to
/// its final name and fsyncs `root`. Returns the final directory and the bytes committed.
pub fn commit(root: &Path, tmp: &Path, mut manifest: serde_json::Value, files: Vec<FileEntry>) -> Result<(PathBuf, u64)> {
    let step = manifest
        .get("state")
        .and_then(|s| s.get("step"))
        .and_then(|s| s.as_u64())
        .ok_or_else(|| bad(tmp, "the manifest to commit has no state.step".into()))?;
    let mut bytes = 0;
    for f in &files {
        let path = tmp.join(&f.name);
        let n = fs::metadata(&path).map_err(|e| bad(tmp, format!("{}: {e}", f.name)))?.len();
        if n != f.bytes {
            return Err(bad(tmp, format!("{}: {n} bytes on disk; its writer reported {} bytes", f.name, f.bytes)));
        }
        bytes += n;
    }
    manifest["files"] = serde_json::to_value(&files).expect("file entries serialise");
    let json = serde_json::to_vec_pretty(&manifest).expect("a JSON value serialises");
    write_atomic(&tmp.join(MANIFEST), &json)?;
    let dir = root.join(dir_name(step));
    if dir.exists() {
        // A checkpoint of the same step from a rolled-back generation: the new one replaces it.
        fs::remove_dir_all(&dir).map_err(io_err("replacing", &dir))?;
    }
    fs::rename(tmp, &dir).map_err(io_err("renaming into place", &dir))?;
    sync_dir(root);
    Ok((dir, bytes + json.len() as u64))
}

/// Writes `bytes` to `path` through a temp file, fsync and rename (then fsyncs the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(bytes).map_err(io_err("writing", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; a failure here is not fatal on file systems without dir fsync.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Deletes all but the `keep` newest committed checkpoints (those with a manifest; checking
/// presence, not checksums, keeps this cheap), directories without a manifest older than the
/// newest kept one, and temp directories of attempts that can no longer commit (every
/// generation before `live_generation`).
pub fn prune(root: &Path, keep: usize, live_generation: u64) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut kept: Vec<u64> = Vec::new();
    for (step, dir) in list(root)? {
        let has_manifest = dir.join(MANIFEST).is_file();
        let remove = if has_manifest {
            if kept.len() < keep.max(1) {
                kept.push(step);
                false
            } else {
                true
            }
        } else {
            kept.first().is_some_and(|&newest| step < newest)
        };
        if remove {
            fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
            removed.push(dir);
        }
    }
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = name.starts_with(".step-")
                && name.rsplit_once(".tmp-g").and_then(|(_, g)| g.parse::<u64>().ok()).is_some_and(|g| g < live_generation);
            if stale {
                let _ = fs::remove_dir_all(e.path());
                removed.push(e.path());
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(tmp: &Path, name: &str, content: &[u8]) -> FileEntry {
        fs::create_dir_all(tmp).unwrap();
        fs::write(tmp.join(name), content).unwrap();
        file_entry(&tmp.join(name)).unwrap()
    }

    #[test]
    fn commit_then_verify_and_detect_corruption() {
        let root = tempfile::tempdir().unwrap();
        let tmp = temp_dir(root.path(), 4, 0);
        let files = vec![shard(&tmp, "rank-0", b"zero"), shard(&tmp, "rank-1", b"one")];
        let (dir, bytes) = commit(root.path(), &tmp, serde_json::json!({"state": {"step": 4}, "job": "t"}), files).unwrap();
        assert!(bytes > 7);
        assert_eq!(dir, root.path().join("step-00000004"));
        assert_eq!(verify(&dir).unwrap(), 4);
        assert_eq!(committed(root.path()).unwrap().0, vec![4]);
        fs::write(dir.join("rank-1"), b"One").unwrap();
        let e = verify(&dir).unwrap_err().to_string();
        assert!(e.contains("rank-1") && e.contains("sha256"), "{e}");
        let (ok, rejected) = committed(root.path()).unwrap();
        assert!(ok.is_empty() && rejected.len() == 1);
    }

    #[test]
    fn commit_refuses_a_file_that_differs_from_its_report() {
        let root = tempfile::tempdir().unwrap();
        let tmp = temp_dir(root.path(), 2, 1);
        let mut f = shard(&tmp, "rank-0", b"data");
        f.bytes += 1;
        let e = commit(root.path(), &tmp, serde_json::json!({"state": {"step": 2}}), vec![f]).unwrap_err().to_string();
        assert!(e.contains("rank-0") && e.contains("reported"), "{e}");
        assert!(list(root.path()).unwrap().is_empty(), "nothing committed");
    }

    #[test]
    fn uncommitted_directories_are_never_chosen_and_prune_keeps_the_newest() {
        let root = tempfile::tempdir().unwrap();
        for step in [1u64, 2, 3] {
            let tmp = temp_dir(root.path(), step, 0);
            let f = shard(&tmp, "rank-0", &step.to_le_bytes());
            commit(root.path(), &tmp, serde_json::json!({"state": {"step": step}}), vec![f]).unwrap();
        }
        // A partial directory (no manifest) with a newer step.
        fs::create_dir_all(root.path().join("step-00000009")).unwrap();
        let stale = temp_dir(root.path(), 5, 0);
        shard(&stale, "rank-0", b"x");
        let (ok, rejected) = committed(root.path()).unwrap();
        assert_eq!(ok, vec![1, 2, 3]);
        assert_eq!(rejected.len(), 1);
        prune(root.path(), 2, 1).unwrap();
        let left: Vec<u64> = list(root.path()).unwrap().iter().map(|e| e.0).collect();
        assert_eq!(left, vec![9, 3, 2], "step 1 goes; the partial step 9 is newer than anything kept, so it stays");
        assert!(!stale.exists(), "temp dirs of older generations are removed");
    }
}
