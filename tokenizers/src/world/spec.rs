//! What [`super::generate`] produces: the spec (validated once), its train/val split and the
//! summary handed back.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest accepted image side (bounds memory per shard).
pub const MAX_SIZE: usize = 1024;

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldSpec {
    /// Number of samples over both splits (default 1000).
    pub samples: usize,
    /// Image side in pixels, a multiple of 16 in 16..=1024 (default 64; 64, 128 and 224 are the usual).
    pub size: usize,
    /// Seed; sample `i` depends only on (seed, i), so equal specs give byte-identical shards.
    pub seed: u64,
    /// Crops per sample in `crop_settings` (default 1: the centre square, i.e. the whole image).
    pub n_crops: usize,
    /// Fraction of samples (the last ones) in the val split, rounded (default 0.1).
    pub val_fraction: f64,
    /// Samples per shard (default 1000).
    pub shard_size: usize,
    /// Generation threads; 0 uses rayon's default (one per core) (default 0). Not written to
    /// `world.json`: it does not change the output.
    #[serde(skip_serializing)]
    pub threads: usize,
}

impl Default for WorldSpec {
    fn default() -> Self {
        Self { samples: 1000, size: 64, seed: 0, n_crops: 1, val_fraction: 0.1, shard_size: 1000, threads: 0 }
    }
}

impl WorldSpec {
    /// Refuses specs that cannot be generated, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| Err(Error::WorldSpec { field, reason });
        if self.samples == 0 {
            return bad("samples", "must be at least 1".into());
        }
        if self.size == 0 || !self.size.is_multiple_of(16) || self.size > MAX_SIZE {
            return bad("size", format!("{} is not a multiple of 16 in 16..={MAX_SIZE} (use 64, 128 or 224)", self.size));
        }
        if self.n_crops == 0 {
            return bad("n_crops", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.val_fraction) {
            return bad("val_fraction", format!("{} is not in [0, 1]", self.val_fraction));
        }
        if self.shard_size == 0 {
            return bad("shard_size", "must be at least 1".into());
        }
        Ok(())
    }

    /// Number of val samples (the last indices).
    pub fn val_samples(&self) -> usize {
        ((self.samples as f64 * self.val_fraction).round() as usize).min(self.samples)
    }

    /// The two splits as `(name, first index, sample count)`.
    pub fn splits(&self) -> [(&'static str, usize, usize); 2] {
        let val = self.val_samples();
        [("train", 0, self.samples - val), ("val", self.samples - val, val)]
    }
}

/// Live progress of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Samples written so far.
    pub done: usize,
    /// Samples to write in all.
    pub total: usize,
}

/// One written split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitSummary {
    /// `train` or `val`.
    pub name: String,
    /// Samples in the split.
    pub samples: usize,
    /// Shards per folder.
    pub shards: usize,
    /// The ml-4m `data_path` pattern of the split (empty when it has no samples).
    pub data_path: String,
}

/// What [`super::generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldSummary {
    /// The output directory.
    pub out_dir: PathBuf,
    /// The train and val splits.
    pub splits: Vec<SplitSummary>,
    /// Total bytes of the shards written.
    pub bytes: u64,
    /// Wall time of the generation.
    pub elapsed: Duration,
}

impl WorldSummary {
    /// Samples per second over the whole run.
    pub fn samples_per_second(&self) -> f64 {
        let n: usize = self.splits.iter().map(|s| s.samples).sum();
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}
