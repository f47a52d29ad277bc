//! Training checkpoints: model weights (ml-4m-compatible safetensors), AdamW state and a JSON
//! manifest (step, data position, mixture schedule, counters, file checksums).
//!
//! A checkpoint is a directory `step-<8 digits>` written as `.step-….tmp-<pid>` first; the
//! files are fsynced, the manifest is written last, then the directory is renamed into place and
//! its parent fsynced. A directory whose manifest is missing, unparsable, or whose files do not
//! match their recorded size and SHA-256 is never resumed from.
//!
//! No RNG state is stored because none exists: every random draw of training (data order,
//! budgets, masks, decoder modality order) derives from (job seed, sample index, step).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_coordinator::MixtureSchedule;
pub use tessera_coordinator::catalog::{FileEntry, dir_name, list};
use tessera_model::{AdamW, Checkpoint, io};

use crate::error::{Result, WorkerError, io_err};

/// Size and checksum of a file, as recorded in manifests.
pub(crate) fn file_entry(path: &Path) -> Result<FileEntry> {
    Ok(tessera_coordinator::catalog::file_entry(path)?)
}

pub(crate) fn digest(path: &Path) -> Result<(u64, String)> {
    Ok(tessera_coordinator::catalog::digest(path)?)
}

/// Manifest format tag; bumped on incompatible changes.
pub const FORMAT: &str = "tessera-checkpoint/1";
/// Name of the manifest inside a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";
/// Model weights file.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Running totals carried across resumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Steps skipped for a non-finite loss or gradient.
    pub skipped_steps: u64,
    /// Samples skipped as undecodable (`skip_bad_samples`).
    pub skipped_samples: u64,
    /// Samples consumed (including those of skipped steps).
    pub samples_seen: u64,
    /// Tokens consumed, counted as ml-4m does ((N_in + N_tgt) per sample).
    pub tokens_seen: u64,
}

/// Where training stands: what a checkpoint restores besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Global index of the next sample to train on (the data position).
    pub next_sample_index: u64,
    /// The mixture schedule in force (all versions).
    pub schedule: MixtureSchedule,
    /// Running totals.
    pub counters: Counters,
}

impl TrainState {
    /// Moves past one optimizer step of `samples` samples of `tokens_per_sample` tokens each
    /// (counted as ml-4m does), `skipped_samples` of which were undecodable.
    pub fn advance(&mut self, samples: u64, tokens_per_sample: u64, skipped_samples: u64) {
        self.step += 1;
        self.next_sample_index += samples;
        self.counters.samples_seen += samples;
        self.counters.tokens_seen += samples * tokens_per_sample;
        self.counters.skipped_samples += skipped_samples;
    }
}

/// The manifest of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Job name.
    pub job: String,
    /// Job seed (a resume under another seed would not continue the same data stream).
    pub seed: u64,
    /// Training position.
    pub state: TrainState,
    /// How randomness is restored.
    pub rng: String,
    /// Files and checksums.
    pub files: Vec<FileEntry>,
}

/// Writes a checkpoint of `model` and `opt` at `state` under `root`; returns its directory.
pub fn save(root: &Path, job: &str, seed: u64, state: &TrainState, model: &Checkpoint, opt: &AdamW) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(io_err("creating", root))?;
    let final_dir = root.join(dir_name(state.step));
    let tmp = root.join(format!(".{}.tmp-{}", dir_name(state.step), std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err("removing stale", &tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
    model.save(&tmp.join(MODEL_FILE))?;
    io::write(&tmp.join(OPTIMIZER_FILE), &opt.state(), &Default::default())?;
    let files = [MODEL_FILE, OPTIMIZER_FILE].iter().map(|name| file_entry(&tmp.join(name))).collect::<Result<Vec<_>>>()?;
    let manifest = Manifest {
        format: FORMAT.into(),
        job: job.into(),
        seed,
        state: state.clone(),
        rng: "derived: every random draw is a function of (seed, sample index, step)".into(),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    io::write_atomic(&tmp.join(MANIFEST), &json)?;
    if final_dir.exists() {
        // A checkpoint of the same step from an earlier, rolled-back run: replace it.
        fs::remove_dir_all(&final_dir).map_err(io_err("replacing", &final_dir))?;
    }
    fs::rename(&tmp, &final_dir).map_err(io_err("renaming into place", &final_dir))?;
    if let Ok(d) = fs::File::open(root) {
        let _ = d.sync_all();
    }
    Ok(final_dir)
}

/// Reads a checkpoint's manifest and verifies every file against it.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let bad = |reason: String| WorkerError::Checkpoint { path: dir.to_path_buf(), reason };
    let text = fs::read(dir.join(MANIFEST)).map_err(|e| bad(format!("no readable {MANIFEST}: {e}")))?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(format!("format '{}' (expected '{FORMAT}')", m.format)));
    }
    for f in &m.files {
        let (bytes, sha) = digest(&dir.join(&f.name)).map_err(|e| bad(e.to_string()))?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(bad(format!("{}: {bytes} bytes, sha256 {sha}; manifest says {} bytes, {}", f.name, f.bytes, f.sha256)));
        }
    }
    Ok(m)
}

/// A checkpoint directory that verified, with its manifest.
#[derive(Debug, Clone)]
pub struct ValidCheckpoint {
    /// The directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// The newest checkpoint under `root` that verifies, with the reasons others were passed over.
pub fn latest_valid(root: &Path) -> Result<(Option<ValidCheckpoint>, Vec<String>)> {
    let mut rejected = Vec::new();
    for (_, dir) in list(root)? {
        match verify(&dir) {
            Ok(manifest) => return Ok((Some(ValidCheckpoint { dir, manifest }), rejected)),
            Err(e) => rejected.push(e.to_string()),
        }
    }
    Ok((None, rejected))
}

/// Loads a verified checkpoint's tensors into `model` and `opt`.
pub fn restore(dir: &Path, model: &Checkpoint, opt: &mut AdamW) -> Result<()> {
    let (weights, _) = io::read(&dir.join(MODEL_FILE))?;
    model.copy_from(weights, &dir.join(MODEL_FILE))?;
    let (state, _) = io::read(&dir.join(OPTIMIZER_FILE))?;
    opt.load_state(state, &dir.join(OPTIMIZER_FILE).display().to_string())?;
    Ok(())
}

/// Deletes all but the `keep` newest checkpoints (and stale temp directories of this process).
pub fn prune(root: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (_, dir) in list(root)?.into_iter().skip(keep) {
        fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
        removed.push(dir);
    }
    Ok(removed)
}
