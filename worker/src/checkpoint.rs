//! The tensors of checkpoints: every rank writes its shards of every unit (fp32 master and
//! AdamW moments) to `rank-RRRRR-of-WWWWW.safetensors`, and any world size loads them back,
//! each new rank reading only the overlapping pieces of the old shards
//! ([`tessera_ops::shard_range`] gives both layouts). One process is a world of one: it writes
//! the same format ([`whole_model_snapshot`]). The store itself (manifest, naming, commit, verify,
//! newest valid, prune) is the contract crate's `tessera_protocol::checkpoint`; one-process
//! checkpoints written before there was one format still load ([`shards_from_single`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tch::Tensor;
use tessera_model::io::Stored;
use tessera_model::{AdamW, Checkpoint, io};
use tessera_ops::shard_range;
use tessera_protocol::checkpoint::{
    LEGACY_MODEL_FILE, LEGACY_OPTIMIZER_FILE, Layout, Manifest, ParamRecord, TrainState, UnitRecord, shard_file,
};

use crate::error::{Result, WorkerError, io_err};
use crate::fsdp::snapshot::Snapshot;

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

/// Writes this rank's shards into `tmp` (fsynced by the atomic write); returns the file.
pub fn write_shards(tmp: &Path, rank: usize, world: usize, units: &[UnitRecord], shards: &[ShardTensors]) -> Result<PathBuf> {
    fs::create_dir_all(tmp).map_err(io_err("creating", tmp))?;
    let path = tmp.join(shard_file(rank, world));
    io::write(&path, &named_shards(units, shards), &Default::default())?;
    Ok(path)
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

/// Rank `rank` of `world`'s shards of every unit, assembled from a checkpoint written at any
/// world size: the overlap of the new shard range with each old rank's range is copied.
pub fn load_shards(dir: &Path, m: &Manifest, rank: usize, world: usize) -> Result<Vec<ShardTensors>> {
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
pub fn load_masters(dir: &Path, m: &Manifest, rank: usize, world: usize) -> Result<Vec<Tensor>> {
    let parts = load_parts(dir, m, rank, world, &["master"])?;
    Ok(parts.into_iter().map(|mut p| p.remove(0)).collect())
}

/// Per unit, the tensors `what` (suffixes of the shard files' keys) of rank `rank` of `world`.
fn load_parts(dir: &Path, m: &Manifest, rank: usize, world: usize, what: &[&str]) -> Result<Vec<Vec<Tensor>>> {
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
pub fn unit_records(units: &[crate::fsdp::units::Unit], steps: Option<&[Vec<i64>]>) -> Vec<UnitRecord> {
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
    if found.len() != mine.len() || !found.iter().zip(mine).all(|(a, b)| a.same_layout(b)) {
        return Err(WorkerError::Checkpoint {
            path: dir.to_path_buf(),
            reason: "its parameter layout does not match this job's model".into(),
        });
    }
    Ok(())
}

/// Rank `rank` of `world`'s shards (and every parameter's update count) built from a
/// one-process checkpoint written before there was one format (`model.safetensors` +
/// `optimizer.safetensors`, [`Layout::Single`]) for the layout `units`.
pub fn shards_from_single(dir: &Path, units: &[UnitRecord], rank: usize, world: usize) -> Result<(Vec<ShardTensors>, Vec<Vec<i64>>)> {
    let bad = |reason: String| WorkerError::Checkpoint { path: dir.to_path_buf(), reason };
    let weights: std::collections::BTreeMap<String, Tensor> = io::read(&dir.join(LEGACY_MODEL_FILE))?.0.into_iter().collect();
    let state: std::collections::BTreeMap<String, Tensor> = io::read(&dir.join(LEGACY_OPTIMIZER_FILE))?.0.into_iter().collect();
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

/// Rank `rank` of `world`'s shards and update counts from the checkpoint `dir` of either
/// layout, checked against this model's layout `mine`.
pub fn load_any(dir: &Path, m: &Manifest, mine: &[UnitRecord], rank: usize, world: usize) -> Result<(Vec<ShardTensors>, Vec<Vec<i64>>)> {
    match m.layout() {
        Some(Layout::Sharded) => {
            check_layout(dir, &m.units, mine)?;
            let shards = load_shards(dir, m, rank, world)?;
            Ok((shards, m.units.iter().map(|u| u.params.iter().map(|p| p.steps).collect()).collect()))
        }
        Some(Layout::Single) => shards_from_single(dir, mine, rank, world),
        None => Err(WorkerError::Checkpoint { path: dir.to_path_buf(), reason: format!("unknown format '{}'", m.format) }),
    }
}

/// Checks that a checkpoint continues this job: written under the same seed (another seed
/// would not continue the same data stream).
pub fn check_seed(dir: &Path, m: &Manifest, seed: u64) -> Result<()> {
    if m.seed != seed {
        return Err(WorkerError::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!("written with seed {}, the job has seed {seed}: it would not continue the same data", m.seed),
        });
    }
    Ok(())
}

/// The whole model a checkpoint of either layout holds, on the CPU: every rank's master shards
/// put back together (what `tessera export` writes and what validation after a run scores).
pub fn consolidate(cfg: &tessera_model::FourMConfig, dir: &Path, m: &Manifest) -> Result<Checkpoint> {
    let model = Checkpoint::init(cfg, tch::Device::Cpu, m.seed as i64)?;
    match m.layout() {
        Some(Layout::Single) => {
            let path = dir.join(LEGACY_MODEL_FILE);
            let (weights, _) = io::read(&path)?;
            model.copy_from(weights, &path)?;
        }
        _ => {
            let units = crate::fsdp::units_of(&model.vs, 1, 0);
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

/// A snapshot of one process's whole model and optimizer (a world of one) at `state`, in the
/// sharded format, ready to be committed ([`crate::fsdp::snapshot::Snapshot::commit_alone`]).
pub fn whole_model_snapshot(
    root: &Path,
    job: &str,
    seed: u64,
    state: &TrainState,
    model: &Checkpoint,
    opt: &AdamW,
    generation: u64,
) -> Result<Snapshot> {
    let started = std::time::Instant::now();
    let units = crate::fsdp::units_of(&model.vs, 1, 0);
    let mut moments: BTreeMap<String, Tensor> = opt.state().into_iter().collect();
    // Each unit's flat master / exp_avg / exp_avg_sq is streamed from the live parameters and
    // moments (`Stored::Flat`), not assembled: a copy would add the model and both moments to
    // the process's peak memory at every checkpoint.
    let mut flats = Vec::with_capacity(units.len());
    let mut steps = Vec::with_capacity(units.len());
    for u in &units {
        let mut parts: [Vec<(usize, Tensor)>; 3] = Default::default();
        let mut unit_steps = Vec::with_capacity(u.params.len());
        for p in &u.params {
            let mut take = |suffix: &str| {
                moments.remove(&format!("{}.{suffix}", p.name)).ok_or_else(|| WorkerError::Checkpoint {
                    path: root.to_path_buf(),
                    reason: format!("the optimizer has no '{}.{suffix}'", p.name),
                })
            };
            let (exp_avg, exp_avg_sq, step) = (take("exp_avg")?, take("exp_avg_sq")?, take("step")?);
            for (k, src) in [p.tensor.detach(), exp_avg, exp_avg_sq].into_iter().enumerate() {
                parts[k].push((p.offset, src));
            }
            unit_steps.push(step.int64_value(&[0]));
        }
        flats.push((u.numel, parts));
        steps.push(unit_steps);
    }
    let records = unit_records(&units, Some(&steps));
    let mut tensors = Vec::with_capacity(3 * records.len());
    for (r, (numel, parts)) in records.iter().zip(flats) {
        for (suffix, pieces) in ["master", "exp_avg", "exp_avg_sq"].into_iter().zip(parts) {
            tensors.push((format!("{}.{suffix}", r.name), Stored::Flat { numel, pieces }));
        }
    }
    let manifest = Manifest::new(job, seed, 1, state.clone(), records);
    Ok(Snapshot::live(root.to_path_buf(), (generation, state.step), tensors, manifest, started))
}

/// Loads the checkpoint `dir` of either layout into a whole model and its optimizer (one
/// process: a world of one).
pub fn restore_whole_model(dir: &Path, m: &Manifest, model: &Checkpoint, opt: &mut AdamW) -> Result<()> {
    let units = crate::fsdp::units_of(&model.vs, 1, 0);
    let (shards, steps) = load_any(dir, m, &unit_records(&units, None), 0, 1)?;
    let mut opt_state = Vec::new();
    for ((u, s), unit_steps) in units.iter().zip(&shards).zip(&steps) {
        for (p, step) in u.params.iter().zip(unit_steps) {
            let piece = |t: &Tensor| t.narrow(0, p.offset as i64, p.numel as i64).view(p.shape.as_slice());
            tch::no_grad(|| p.tensor.shallow_clone().copy_(&piece(&s.master)));
            opt_state.push((format!("{}.exp_avg", p.name), piece(&s.exp_avg)));
            opt_state.push((format!("{}.exp_avg_sq", p.name), piece(&s.exp_avg_sq)));
            opt_state.push((format!("{}.step", p.name), Tensor::from_slice(&[*step])));
        }
    }
    opt.load_state(opt_state, &dir.display().to_string())?;
    Ok(())
}
