//! The checkpoint store, independent of any tensor library, and the only one: directory and
//! temp naming, the [`Manifest`], checksums, verification of the files a manifest lists, the
//! commit (manifest written last, directory renamed into place, parent fsynced), the newest
//! valid checkpoint, and pruning. Workers write the tensor files (`tessera-worker`'s
//! `checkpoint` module); whoever commits (the coordinator, or rank 0 when the ranks run on
//! their own) uses this module, and so does anyone choosing a checkpoint to restore: a
//! directory that is not committed or does not verify is never chosen.
//!
//! Layout on disk: `ROOT/step-<8 digits>/` holds `manifest.json` and one
//! `rank-RRRRR-of-WWWWW.safetensors` per rank; the ranks of generation `g` write into
//! `ROOT/.step-<8 digits>.tmp-g<g>/` first.

mod manifest;

pub use manifest::{
    Counters, FORMAT, LEGACY_MODEL_FILE, LEGACY_OPTIMIZER_FILE, LEGACY_SINGLE_FORMAT, Layout, Manifest, ParamRecord, TrainState,
    UnitRecord, shard_file,
};

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use tessera_tokenizers::atomic::{sync_dir, write_atomic};

use crate::error::{ProtocolError, Result};

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

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ProtocolError + 'a {
    move |source| ProtocolError::Io { path: format!("{op} {}", path.display()), source }
}

fn bad(dir: &Path, reason: String) -> ProtocolError {
    ProtocolError::Checkpoint { path: dir.display().to_string(), reason }
}

/// What [`prune`] is given when no attempt can still commit: every temp directory is abandoned.
pub const NO_LIVE_GENERATION: u64 = u64::MAX;

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

fn read_parsed(dir: &Path) -> Result<Manifest> {
    let text = fs::read(dir.join(MANIFEST)).map_err(|e| bad(dir, format!("no readable {MANIFEST}: {e}")))?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| bad(dir, format!("{MANIFEST}: {e}")))?;
    if m.layout().is_none() {
        return Err(bad(dir, format!("{MANIFEST}: format '{}' (this build reads '{FORMAT}' and '{LEGACY_SINGLE_FORMAT}')", m.format)));
    }
    let listed: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    for want in m.expected_files() {
        if !listed.contains(&want.as_str()) {
            return Err(bad(dir, format!("{MANIFEST} does not list {want} (world of {})", m.world)));
        }
    }
    Ok(m)
}

/// Reads a checkpoint's manifest and checks that every file it lists is there with its
/// recorded size (cheap, no checksums: for a directory that was verified when it was chosen).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let m = read_parsed(dir)?;
    for f in &m.files {
        let len = fs::metadata(dir.join(&f.name)).map_err(|e| bad(dir, format!("{}: {e}", f.name)))?.len();
        if len != f.bytes {
            return Err(bad(dir, format!("{}: {len} bytes; manifest says {}", f.name, f.bytes)));
        }
    }
    Ok(m)
}

/// Verifies a checkpoint directory: its manifest parses, names a known format and lists every
/// file that format needs, and every file has the recorded size and SHA-256.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let m = read_parsed(dir)?;
    for f in &m.files {
        let (bytes, sha) = digest(&dir.join(&f.name)).map_err(|e| bad(dir, e.to_string()))?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(bad(dir, format!("{}: {bytes} bytes, sha256 {sha}; manifest says {} bytes, {}", f.name, f.bytes, f.sha256)));
        }
    }
    Ok(m)
}

/// A checkpoint directory that verified, with its manifest.
pub type Found = (PathBuf, Manifest);

/// The newest checkpoint under `root` that verifies, and why newer ones were passed over.
pub fn latest_valid(root: &Path) -> Result<(Option<Found>, Vec<String>)> {
    let mut rejected = Vec::new();
    for (step, dir) in list(root)? {
        match verify(&dir) {
            Ok(m) if m.state.step == step => return Ok((Some((dir, m)), rejected)),
            Ok(m) => rejected.push(format!("{}: manifest says step {}", dir.display(), m.state.step)),
            Err(e) => rejected.push(e.to_string()),
        }
    }
    Ok((None, rejected))
}

/// Steps of the committed checkpoints under `root` that verify (ascending), and why the others
/// were passed over.
pub fn committed(root: &Path) -> Result<(Vec<u64>, Vec<String>)> {
    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    for (step, dir) in list(root)? {
        match verify(&dir) {
            Ok(m) if m.state.step == step => ok.push(step),
            Ok(m) => rejected.push(format!("{}: manifest says step {}", dir.display(), m.state.step)),
            Err(e) => rejected.push(e.to_string()),
        }
    }
    ok.sort_unstable();
    Ok((ok, rejected))
}

/// Commits a checkpoint whose files are durable in `tmp`: checks that `files` are the ones
/// the manifest's layout needs and each has its reported size (the writer computed the
/// checksum from the bytes it wrote; re-reading gigabytes here would stall the commit, and
/// [`verify`] checks every byte before a restore), sets the manifest's `files`, writes the
/// manifest (temp + fsync + rename), renames `tmp` to its final name and fsyncs `root`.
/// Returns the final directory and the bytes committed.
pub fn commit(root: &Path, tmp: &Path, mut manifest: Manifest, files: Vec<FileEntry>) -> Result<(PathBuf, u64)> {
    let step = manifest.state.step;
    let mut names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    let mut want = manifest.expected_files();
    want.sort_unstable();
    if manifest.layout() != Some(Layout::Sharded) || names != want {
        return Err(bad(
            tmp,
            format!("files {names:?} for a {} manifest of a world of {} (expected {want:?})", manifest.format, manifest.world),
        ));
    }
    let mut bytes = 0;
    for f in &files {
        let path = tmp.join(&f.name);
        let n = fs::metadata(&path).map_err(|e| bad(tmp, format!("{}: {e}", f.name)))?.len();
        if n != f.bytes {
            return Err(bad(tmp, format!("{}: {n} bytes on disk; its writer reported {} bytes", f.name, f.bytes)));
        }
        bytes += n;
    }
    manifest.files = files;
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
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

/// Deletes all but the `keep` newest committed checkpoints (those with a manifest; checking
/// presence, not checksums, keeps this cheap), directories without a manifest older than the
/// newest kept one, and temp directories of attempts that can no longer commit (every
/// generation before `live_generation`; ranks that run without a coordinator commit one
/// checkpoint at a time and pass [`NO_LIVE_GENERATION`]).
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
    use crate::ledger::MixtureSchedule;

    fn shard(tmp: &Path, name: &str, content: &[u8]) -> FileEntry {
        fs::create_dir_all(tmp).unwrap();
        fs::write(tmp.join(name), content).unwrap();
        file_entry(&tmp.join(name)).unwrap()
    }

    fn manifest(step: u64, world: usize) -> Manifest {
        let mut state = TrainState::start(MixtureSchedule::new(vec![1.0]).unwrap());
        state.step = step;
        Manifest::new("t", 7, world, state, Vec::new())
    }

    #[test]
    fn commit_then_verify_and_detect_corruption() {
        let root = tempfile::tempdir().unwrap();
        let tmp = temp_dir(root.path(), 4, 0);
        let files = vec![shard(&tmp, &shard_file(0, 2), b"zero"), shard(&tmp, &shard_file(1, 2), b"one")];
        let (dir, bytes) = commit(root.path(), &tmp, manifest(4, 2), files).unwrap();
        assert!(bytes > 7);
        assert_eq!(dir, root.path().join("step-00000004"));
        let m = verify(&dir).unwrap();
        assert_eq!((m.state.step, m.world, m.layout()), (4, 2, Some(Layout::Sharded)));
        assert_eq!(committed(root.path()).unwrap().0, vec![4]);
        assert_eq!(latest_valid(root.path()).unwrap().0.map(|f| f.0), Some(dir.clone()));
        fs::write(dir.join(shard_file(1, 2)), b"One").unwrap();
        let e = verify(&dir).unwrap_err().to_string();
        assert!(e.contains("rank-00001-of-00002") && e.contains("sha256"), "{e}");
        let (ok, rejected) = committed(root.path()).unwrap();
        assert!(ok.is_empty() && rejected.len() == 1);
        assert!(latest_valid(root.path()).unwrap().0.is_none());
    }

    #[test]
    fn commit_refuses_a_file_that_differs_from_its_report_or_a_missing_rank() {
        let root = tempfile::tempdir().unwrap();
        let tmp = temp_dir(root.path(), 2, 1);
        let mut f = shard(&tmp, &shard_file(0, 1), b"data");
        f.bytes += 1;
        let e = commit(root.path(), &tmp, manifest(2, 1), vec![f]).unwrap_err().to_string();
        assert!(e.contains("rank-00000-of-00001") && e.contains("reported"), "{e}");
        let f = shard(&tmp, &shard_file(0, 2), b"data");
        let e = commit(root.path(), &tmp, manifest(2, 2), vec![f]).unwrap_err().to_string();
        assert!(e.contains("rank-00001-of-00002"), "{e}");
        assert!(list(root.path()).unwrap().is_empty(), "nothing committed");
    }

    #[test]
    fn a_legacy_one_process_manifest_reads_as_the_single_layout() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<FileEntry> = [LEGACY_MODEL_FILE, LEGACY_OPTIMIZER_FILE].iter().map(|n| shard(dir.path(), n, n.as_bytes())).collect();
        let legacy = serde_json::json!({
            "format": LEGACY_SINGLE_FORMAT, "job": "old", "seed": 3, "rng": "derived",
            "state": {"step": 6, "next_sample_index": 48, "schedule": MixtureSchedule::new(vec![1.0]).unwrap(),
                      "counters": {"skipped_steps": 0, "skipped_samples": 0, "samples_seen": 48, "tokens_seen": 96}},
            "files": files,
        });
        fs::write(dir.path().join(MANIFEST), serde_json::to_vec(&legacy).unwrap()).unwrap();
        let m = verify(dir.path()).unwrap();
        assert_eq!((m.layout(), m.state.step, m.world, m.seed), (Some(Layout::Single), 6, 0, 3));
        // An unknown format is refused by name.
        fs::write(
            dir.path().join(MANIFEST),
            serde_json::to_vec(&serde_json::json!({"format": "x/9", "job": "", "seed": 0, "state": legacy["state"], "files": []})).unwrap(),
        )
        .unwrap();
        let e = verify(dir.path()).unwrap_err().to_string();
        assert!(e.contains("format 'x/9'"), "{e}");
    }

    #[test]
    fn uncommitted_directories_are_never_chosen_and_prune_keeps_the_newest() {
        let root = tempfile::tempdir().unwrap();
        for step in [1u64, 2, 3] {
            let tmp = temp_dir(root.path(), step, 0);
            let f = shard(&tmp, &shard_file(0, 1), &step.to_le_bytes());
            commit(root.path(), &tmp, manifest(step, 1), vec![f]).unwrap();
        }
        // A partial directory (no manifest) with a newer step.
        fs::create_dir_all(root.path().join("step-00000009")).unwrap();
        let stale = temp_dir(root.path(), 5, 0);
        shard(&stale, "rank-0", b"x");
        let live = temp_dir(root.path(), 6, 1);
        shard(&live, "rank-0", b"x");
        let (ok, rejected) = committed(root.path()).unwrap();
        assert_eq!(ok, vec![1, 2, 3]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(latest_valid(root.path()).unwrap().0.unwrap().1.state.step, 3, "the partial step 9 is passed over");
        prune(root.path(), 2, 1).unwrap();
        let left: Vec<u64> = list(root.path()).unwrap().iter().map(|e| e.0).collect();
        assert_eq!(left, vec![9, 3, 2], "step 1 goes; the partial step 9 is newer than anything kept, so it stays");
        assert!(!stale.exists(), "temp dirs of older generations are removed");
        assert!(live.exists(), "the live generation's temp dir stays");
        prune(root.path(), 2, NO_LIVE_GENERATION).unwrap();
        assert!(!live.exists(), "with no live generation every temp dir is abandoned");
    }
}
