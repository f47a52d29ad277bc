//! The one checkpoint manifest: the training position, the flat parameter layout and the files
//! with their checksums. Every launch mode writes it (one process is a world of one); a
//! manifest of the one-process format written before that ([`LEGACY_SINGLE_FORMAT`]) still
//! parses into the same type, with [`Layout::Single`].

use serde::{Deserialize, Serialize};

use super::FileEntry;
use crate::ledger::MixtureSchedule;

/// Format tag of the manifest every mode writes: one shard file per rank of `world`.
pub const FORMAT: &str = "tessera-sharded-checkpoint/1";
/// Format tag of one-process checkpoints written before there was one format
/// (`model.safetensors` + `optimizer.safetensors`); read, never written.
pub const LEGACY_SINGLE_FORMAT: &str = "tessera-checkpoint/1";
/// Weights file of a [`Layout::Single`] checkpoint.
pub const LEGACY_MODEL_FILE: &str = "model.safetensors";
/// AdamW state file of a [`Layout::Single`] checkpoint.
pub const LEGACY_OPTIMIZER_FILE: &str = "optimizer.safetensors";

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

/// Where training stands: what a checkpoint restores besides tensors. No RNG state is stored
/// because none exists: every random draw of training (data order, budgets, masks, decoder
/// modality order) derives from (job seed, sample index, step).
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
    /// The position before the first step of a job with `schedule`.
    pub fn start(schedule: MixtureSchedule) -> Self {
        Self { step: 0, next_sample_index: 0, schedule, counters: Counters::default() }
    }

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

/// One parameter of a unit, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamRecord {
    /// ml-4m state-dict name.
    pub name: String,
    /// Shape.
    pub shape: Vec<i64>,
    /// Offset in the unit's flat vector.
    pub offset: usize,
    /// AdamW updates applied so far.
    pub steps: i64,
}

/// One unit (the granularity of sharding), as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// Unit name (`encoder.0`, …, `rest`).
    pub name: String,
    /// Elements of its flat vector.
    pub numel: usize,
    /// Its parameters.
    pub params: Vec<ParamRecord>,
}

impl UnitRecord {
    /// True when `other` has the same name, size and parameters (names, shapes, offsets):
    /// shards of one load into the other.
    pub fn same_layout(&self, other: &UnitRecord) -> bool {
        self.name == other.name
            && self.numel == other.numel
            && self.params.len() == other.params.len()
            && self.params.iter().zip(&other.params).all(|(p, q)| p.name == q.name && p.shape == q.shape && p.offset == q.offset)
    }
}

/// How a checkpoint's tensors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One shard file per rank of the world that wrote it ([`shard_file`]).
    Sharded,
    /// The pre-[`FORMAT`] one-process files ([`LEGACY_MODEL_FILE`], [`LEGACY_OPTIMIZER_FILE`]).
    Single,
}

/// Name of rank `rank`'s shard file in a world of `world`.
pub fn shard_file(rank: usize, world: usize) -> String {
    format!("rank-{rank:05}-of-{world:05}.safetensors")
}

/// The manifest of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`] (or [`LEGACY_SINGLE_FORMAT`] for an old one-process checkpoint).
    pub format: String,
    /// Job name.
    pub job: String,
    /// Job seed (a resume under another seed would not continue the same data stream).
    pub seed: u64,
    /// World size that wrote it (0 in a legacy one-process manifest).
    #[serde(default)]
    pub world: usize,
    /// Training position.
    pub state: TrainState,
    /// Flat layout (empty in a legacy one-process manifest).
    #[serde(default)]
    pub units: Vec<UnitRecord>,
    /// Files with checksums (set on commit).
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The manifest of a checkpoint that `world` ranks write of `state` in layout `units`
    /// (its files are filled in on commit).
    pub fn new(job: &str, seed: u64, world: usize, state: TrainState, units: Vec<UnitRecord>) -> Self {
        Self { format: FORMAT.into(), job: job.into(), seed, world, state, units, files: Vec::new() }
    }

    /// How its tensors are stored; `None` for a format this build does not know.
    pub fn layout(&self) -> Option<Layout> {
        match self.format.as_str() {
            FORMAT => Some(Layout::Sharded),
            LEGACY_SINGLE_FORMAT => Some(Layout::Single),
            _ => None,
        }
    }

    /// The files a complete checkpoint of this manifest has, by name.
    pub fn expected_files(&self) -> Vec<String> {
        match self.layout() {
            Some(Layout::Sharded) => (0..self.world).map(|r| shard_file(r, self.world)).collect(),
            Some(Layout::Single) => vec![LEGACY_MODEL_FILE.into(), LEGACY_OPTIMIZER_FILE.into()],
            None => Vec::new(),
        }
    }
}
