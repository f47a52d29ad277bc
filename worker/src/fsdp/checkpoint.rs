//! Sharded checkpoints of an FSDP job: every rank writes its shards of every unit (fp32 master
//! and AdamW moments) to `rank-RRRRR-of-WWWWW.safetensors`; rank 0 writes the manifest (global
//! unit sizes, parameter names/shapes/offsets/update counts, files and checksums) once every
//! shard is durable, then commits the directory by renaming it. Any world size can load it:
//! each new rank reads the overlapping pieces of the old shards
//! ([`tessera_ops::shard_range`] gives both layouts).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tessera_model::io;
use tessera_ops::shard_range;

use crate::checkpoint::{FileEntry, TrainState, digest, dir_name, file_entry};
use crate::error::{Result, WorkerError, io_err};

/// Manifest format tag of sharded checkpoints.
pub const FORMAT: &str = "tessera-sharded-checkpoint/1";
/// Manifest file name.
pub const MANIFEST: &str = "manifest.json";

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

/// One unit, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// Unit name (`encoder.0`, …, `rest`).
    pub name: String,
    /// Elements of its flat vector.
    pub numel: usize,
    /// Its parameters.
    pub params: Vec<ParamRecord>,
}

/// The manifest of a sharded checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardedManifest {
    /// [`FORMAT`].
    pub format: String,
    /// Job name.
    pub job: String,
    /// Job seed.
    pub seed: u64,
    /// World size that wrote it.
    pub world: usize,
    /// Training position.
    pub state: TrainState,
    /// Flat layout.
    pub units: Vec<UnitRecord>,
    /// Shard files (one per rank) with checksums.
    pub files: Vec<FileEntry>,
}

/// A rank's tensors of one unit: master weights and the two moments.
#[derive(Debug)]
pub struct ShardTensors {
    /// fp32 master shard.
    pub master: Tensor,
    /// First moment.
    pub exp_avg: Tensor,
    /// Second moment.
    pub exp_avg_sq: Tensor,
}

impl ShardTensors {
    /// The same shard on `device` (no copy when it is there already).
    pub fn to_device(self, device: tch::Device) -> Self {
        let ShardTensors { master, exp_avg, exp_avg_sq } = self;
        ShardTensors { master: master.to_device(device), exp_avg: exp_avg.to_device(device), exp_avg_sq: exp_avg_sq.to_device(device) }
    }
}

/// Name of rank `rank`'s shard file in a world of `world`.
pub fn shard_file(rank: usize, world: usize) -> String {
    format!("rank-{rank:05}-of-{world:05}.safetensors")
}

/// The temp directory all ranks write into before the commit.
pub fn temp_dir(root: &Path, step: u64, job_id: u64) -> PathBuf {
    root.join(format!(".{}.tmp-{job_id:016x}", dir_name(step)))
}

/// Phase 1 (every rank): writes this rank's shards into `tmp` (fsynced by the atomic write).
pub fn write_shards(tmp: &Path, rank: usize, world: usize, units: &[UnitRecord], shards: &[ShardTensors]) -> Result<()> {
    fs::create_dir_all(tmp).map_err(io_err("creating", tmp))?;
    io::write(&tmp.join(shard_file(rank, world)), &named_shards(units, shards), &Default::default())?;
    Ok(())
}

/// A rank's shard tensors under their names in a shard file (views, not copies).
pub fn named_shards(units: &[UnitRecord], shards: &[ShardTensors]) -> Vec<(String, Tensor)> {
    let mut named = Vec::with_capacity(3 * shards.len());
    for (u, s) in units.iter().zip(shards) {
        named.push((format!("{}.master", u.name), s.master.shallow_clone()));
        named.push((format!("{}.exp_avg", u.name), s.exp_avg.shallow_clone()));
        named.push((format!("{}.exp_avg_sq", u.name), s.exp_avg_sq.shallow_clone()));
    }
    named
}

/// Phase 2 (rank 0, after every rank finished phase 1): checksums the shards, writes the
/// manifest and commits the directory; returns its final path.
pub fn commit(root: &Path, tmp: &Path, mut manifest: ShardedManifest) -> Result<PathBuf> {
    manifest.files = (0..manifest.world).map(|r| file_entry(&tmp.join(shard_file(r, manifest.world)))).collect::<Result<_>>()?;
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    io::write_atomic(&tmp.join(MANIFEST), &json)?;
    let dir = root.join(dir_name(manifest.state.step));
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err("replacing", &dir))?;
    }
    fs::rename(tmp, &dir).map_err(io_err("renaming into place", &dir))?;
    if let Ok(d) = fs::File::open(root) {
        let _ = d.sync_all();
    }
    Ok(dir)
}

/// Reads a sharded checkpoint's manifest and checks its shape and the files' sizes (cheap; no
/// checksums: for a directory already verified, e.g. chosen by the coordinator).
pub fn read_manifest(dir: &Path) -> Result<ShardedManifest> {
    let bad = |reason: String| WorkerError::Checkpoint { path: dir.to_path_buf(), reason };
    let text = fs::read(dir.join(MANIFEST)).map_err(|e| bad(format!("no readable {MANIFEST}: {e}")))?;
    let m: ShardedManifest = serde_json::from_slice(&text).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if m.format != FORMAT {
        return Err(bad(format!("format '{}' (expected '{FORMAT}')", m.format)));
    }
    if m.files.len() != m.world {
        return Err(bad(format!("{} shard files for a world of {}", m.files.len(), m.world)));
    }
    for f in &m.files {
        let len = fs::metadata(dir.join(&f.name)).map_err(|e| bad(format!("{}: {e}", f.name)))?.len();
        if len != f.bytes {
            return Err(bad(format!("{}: {len} bytes; manifest says {}", f.name, f.bytes)));
        }
    }
    Ok(m)
}

/// Reads and verifies a sharded checkpoint's manifest and files.
pub fn verify(dir: &Path) -> Result<ShardedManifest> {
    let bad = |reason: String| WorkerError::Checkpoint { path: dir.to_path_buf(), reason };
    let m = read_manifest(dir)?;
    for f in &m.files {
        let (bytes, sha) = digest(&dir.join(&f.name)).map_err(|e| bad(e.to_string()))?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(bad(format!("{}: {bytes} bytes, sha256 {sha}; manifest says {} bytes, {}", f.name, f.bytes, f.sha256)));
        }
    }
    Ok(m)
}

/// A sharded checkpoint that verified.
pub type FoundCheckpoint = (PathBuf, ShardedManifest);

/// The newest sharded checkpoint under `root` that verifies, and why newer ones were skipped.
pub fn latest_valid(root: &Path) -> Result<(Option<FoundCheckpoint>, Vec<String>)> {
    let mut rejected = Vec::new();
    for (_, dir) in crate::checkpoint::list(root)? {
        match verify(&dir) {
            Ok(m) => return Ok((Some((dir, m)), rejected)),
            Err(e) => rejected.push(e.to_string()),
        }
    }
    Ok((None, rejected))
}

/// Rank `rank` of `world`'s shards of every unit, assembled from a checkpoint written at any
/// world size: the overlap of the new shard range with each old rank's range is copied.
pub fn load_shards(dir: &Path, m: &ShardedManifest, rank: usize, world: usize) -> Result<Vec<ShardTensors>> {
    let parts = load_parts(dir, m, rank, world, &["master", "exp_avg", "exp_avg_sq"])?;
    Ok(parts
        .into_iter()
        .map(|p| {
            let [master, exp_avg, exp_avg_sq]: [Tensor; 3] = p.try_into().expect("three parts asked for");
            ShardTensors { master, exp_avg, exp_avg_sq }
        })
        .collect())
}

/// Like [`load_shards`], the fp32 master shards only: a third of the bytes, for consumers of the
/// weights (export, validation) that need no optimizer state.
pub fn load_masters(dir: &Path, m: &ShardedManifest, rank: usize, world: usize) -> Result<Vec<Tensor>> {
    let parts = load_parts(dir, m, rank, world, &["master"])?;
    Ok(parts.into_iter().map(|mut p| p.remove(0)).collect())
}

/// Per unit, the tensors `what` (suffixes of the shard files' keys) of rank `rank` of `world`.
fn load_parts(dir: &Path, m: &ShardedManifest, rank: usize, world: usize, what: &[&str]) -> Result<Vec<Vec<Tensor>>> {
    let bad = |reason: String| WorkerError::Checkpoint { path: dir.to_path_buf(), reason };
    // Only the overlapping slices are read (positional reads): after a failure each survivor
    // reads about 1/world of the checkpoint instead of whole old-rank files.
    let mut files: Vec<Option<io::SliceReader>> = (0..m.world).map(|_| None).collect();
    let mut out = Vec::with_capacity(m.units.len());
    for u in &m.units {
        let want = shard_range(u.numel, world, rank);
        let parts: Vec<Tensor> = what.iter().map(|_| Tensor::zeros([want.len() as i64], (tch::Kind::Float, tch::Device::Cpu))).collect();
        for (old, cached) in files.iter_mut().enumerate() {
            let have = shard_range(u.numel, m.world, old);
            let (lo, hi) = (want.start.max(have.start), want.end.min(have.end));
            if lo >= hi {
                continue;
            }
            if cached.is_none() {
                *cached = Some(io::SliceReader::open(&dir.join(shard_file(old, m.world)))?);
            }
            let file = cached.as_ref().expect("just opened");
            for (k, what) in what.iter().enumerate() {
                let key = format!("{}.{what}", u.name);
                let n = file.numel(&key).ok_or_else(|| bad(format!("{}: missing '{key}'", shard_file(old, m.world))))?;
                if n != have.len() {
                    return Err(bad(format!("'{key}' of rank {old} has {n} elements, expected {}", have.len())));
                }
                let piece = file.read_f32(&key, lo - have.start..hi - have.start)?;
                parts[k].narrow(0, (lo - want.start) as i64, (hi - lo) as i64).copy_(&piece);
            }
        }
        out.push(parts);
    }
    Ok(out)
}

/// The layout of `units` as recorded in manifests, with each parameter's update count from
/// `steps` (zeros when `None`).
pub fn unit_records(units: &[super::units::Unit], steps: Option<&[Vec<i64>]>) -> Vec<UnitRecord> {
    units
        .iter()
        .enumerate()
        .map(|(ui, u)| UnitRecord {
            name: u.name.clone(),
            numel: u.numel,
            params: u
                .params
                .iter()
                .enumerate()
                .map(|(pi, p)| ParamRecord {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    offset: p.offset,
                    steps: steps.map_or(0, |s| s[ui][pi]),
                })
                .collect(),
        })
        .collect()
}

/// Checks that a checkpoint's flat layout is the one `mine` describes (same units, parameter
/// names, shapes and offsets), so its shards can be loaded into this model.
pub fn check_layout(dir: &Path, found: &[UnitRecord], mine: &[UnitRecord]) -> Result<()> {
    let same_param = |p: &ParamRecord, q: &ParamRecord| p.name == q.name && p.shape == q.shape && p.offset == q.offset;
    let same_unit = |a: &UnitRecord, b: &UnitRecord| {
        a.name == b.name
            && a.numel == b.numel
            && a.params.len() == b.params.len()
            && a.params.iter().zip(&b.params).all(|(p, q)| same_param(p, q))
    };
    if found.len() != mine.len() || !found.iter().zip(mine).all(|(a, b)| same_unit(a, b)) {
        return Err(WorkerError::Checkpoint {
            path: dir.to_path_buf(),
            reason: "its parameter layout does not match this job's model".into(),
        });
    }
    Ok(())
}

/// Rank `rank` of `world`'s shards (and every parameter's update count) built from a
/// single-process checkpoint (`model.safetensors` + `optimizer.safetensors`) for the layout
/// `units`: how a run started with one worker continues with several.
pub fn shards_from_single(dir: &Path, units: &[UnitRecord], rank: usize, world: usize) -> Result<(Vec<ShardTensors>, Vec<Vec<i64>>)> {
    let bad = |reason: String| WorkerError::Checkpoint { path: dir.to_path_buf(), reason };
    let weights: std::collections::BTreeMap<String, Tensor> = io::read(&dir.join(crate::checkpoint::MODEL_FILE))?.0.into_iter().collect();
    let state: std::collections::BTreeMap<String, Tensor> = io::read(&dir.join(crate::checkpoint::OPTIMIZER_FILE))?.0.into_iter().collect();
    let mut shards = Vec::with_capacity(units.len());
    let mut steps = Vec::with_capacity(units.len());
    for u in units {
        let range = shard_range(u.numel, world, rank);
        let parts: [Tensor; 3] = std::array::from_fn(|_| Tensor::zeros([range.len() as i64], (tch::Kind::Float, tch::Device::Cpu)));
        let mut unit_steps = Vec::with_capacity(u.params.len());
        for p in &u.params {
            let numel: i64 = p.shape.iter().product();
            let (lo, hi) = (range.start.max(p.offset), range.end.min(p.offset + numel as usize));
            let sources = [weights.get(&p.name), state.get(&format!("{}.exp_avg", p.name)), state.get(&format!("{}.exp_avg_sq", p.name))];
            for (k, src) in sources.into_iter().enumerate() {
                let src = src.ok_or_else(|| bad(format!("no tensor for parameter '{}'", p.name)))?;
                if src.numel() as i64 != numel {
                    return Err(bad(format!("'{}' has {} elements, the model {numel}", p.name, src.numel())));
                }
                if lo < hi {
                    let piece = src.to_kind(tch::Kind::Float).reshape([-1]).narrow(0, (lo - p.offset) as i64, (hi - lo) as i64);
                    parts[k].narrow(0, (lo - range.start) as i64, (hi - lo) as i64).copy_(&piece);
                }
            }
            let step = state.get(&format!("{}.step", p.name)).ok_or_else(|| bad(format!("no update count for '{}'", p.name)))?;
            unit_steps.push(step.int64_value(&[0]));
        }
        let [master, exp_avg, exp_avg_sq] = parts;
        shards.push(ShardTensors { master, exp_avg, exp_avg_sq });
        steps.push(unit_steps);
    }
    Ok((shards, steps))
}

/// A checkpoint of either format.
#[derive(Debug)]
pub enum AnyCheckpoint {
    /// Written by one process (`model.safetensors` + `optimizer.safetensors`).
    Single(crate::checkpoint::ValidCheckpoint),
    /// Written by FSDP ranks.
    Sharded(FoundCheckpoint),
}

impl AnyCheckpoint {
    /// The training position it holds.
    pub fn state(&self) -> &TrainState {
        match self {
            Self::Single(c) => &c.manifest.state,
            Self::Sharded((_, m)) => &m.state,
        }
    }

    /// Its seed.
    pub fn seed(&self) -> u64 {
        match self {
            Self::Single(c) => c.manifest.seed,
            Self::Sharded((_, m)) => m.seed,
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        match self {
            Self::Single(c) => &c.dir,
            Self::Sharded((d, _)) => d,
        }
    }
}

/// The whole model a checkpoint of either format holds, on the CPU: the one-process weights,
/// or every rank's master shards put back together (what `tessera export` writes and what
/// validation after a multi-worker run scores).
pub fn consolidate(cfg: &tessera_model::FourMConfig, found: &AnyCheckpoint) -> Result<tessera_model::Checkpoint> {
    let model = tessera_model::Checkpoint::init(cfg, tch::Device::Cpu, found.seed() as i64)?;
    match found {
        AnyCheckpoint::Single(c) => {
            let path = c.dir.join(crate::checkpoint::MODEL_FILE);
            let (weights, _) = io::read(&path)?;
            model.copy_from(weights, &path)?;
        }
        AnyCheckpoint::Sharded((dir, m)) => {
            let units = super::units::units_of(&model.vs, 1, 0);
            check_layout(dir, &m.units, &unit_records(&units, None))?;
            // Masters only: the moments would triple the bytes read and the memory held.
            let masters = load_masters(dir, m, 0, 1)?;
            for (u, master) in units.iter().zip(&masters) {
                for p in &u.params {
                    let piece = master.narrow(0, p.offset as i64, p.numel as i64).view(p.shape.as_slice());
                    tch::no_grad(|| p.tensor.shallow_clone().copy_(&piece));
                }
            }
        }
    }
    Ok(model)
}

/// The newest checkpoint under `root` of either format that verifies, and why newer ones
/// were passed over.
pub fn latest_any(root: &Path) -> Result<(Option<AnyCheckpoint>, Vec<String>)> {
    let mut rejected = Vec::new();
    for (_, dir) in crate::checkpoint::list(root)? {
        let format = fs::read(dir.join(MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("format").and_then(|f| f.as_str()).map(str::to_string));
        let found = if format.as_deref() == Some(FORMAT) {
            verify(&dir).map(|m| AnyCheckpoint::Sharded((dir.clone(), m)))
        } else {
            crate::checkpoint::verify(&dir)
                .map(|manifest| AnyCheckpoint::Single(crate::checkpoint::ValidCheckpoint { dir: dir.clone(), manifest }))
        };
        match found {
            Ok(c) => return Ok((Some(c), rejected)),
            Err(e) => rejected.push(e.to_string()),
        }
    }
    Ok((None, rejected))
}
