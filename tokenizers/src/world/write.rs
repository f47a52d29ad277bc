//! Writes a world in ml-4m's shard layout: `OUT/{train,val}/<folder>/shard-NNNNN.tar`, one
//! folder per modality, samples generated in parallel shard by shard and written in index
//! order (so the bytes do not depend on the thread count), plus `OUT/world.json`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::json;

use super::features::{GLOBAL_DIM, MAP_DIM, PATCH};
use super::sample::{FOLDERS, WorldSample};
use super::scene::{COLOURS, SIZES, ShapeClass};
use super::spec::{Progress, SplitSummary, WorldSpec, WorldSummary};
use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::shards::TarWriter;

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source }
}

/// One shard to produce: its folder root, number and sample range.
struct ShardJob {
    root: PathBuf,
    shard: usize,
    samples: Range<usize>,
}

/// A generated shard: its keys and members, in index order.
type ShardSamples = Vec<(String, Vec<(&'static str, &'static str, Vec<u8>)>)>;

/// Generates `spec` under `out` (created if missing), reporting progress after each shard is
/// written. Shard `k + 1` is generated while shard `k` is written, so the disk waits
/// (tar writes, fsync) overlap the rendering.
pub fn generate(out: &Path, spec: &WorldSpec, progress: &mut dyn FnMut(Progress)) -> Result<WorldSummary> {
    spec.validate()?;
    let start = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(spec.threads)
        .build()
        .map_err(|e| Error::ThreadPool { threads: spec.threads, reason: e.to_string() })?;
    let mut jobs = Vec::new();
    let mut splits = Vec::new();
    for (name, first, count) in spec.splits() {
        let shards = count.div_ceil(spec.shard_size);
        let root = out.join(name);
        if count > 0 {
            for f in FOLDERS {
                let dir = root.join(f.name);
                std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            }
        }
        for shard in 0..shards {
            let lo = first + shard * spec.shard_size;
            jobs.push(ShardJob { root: root.clone(), shard, samples: lo..(lo + spec.shard_size).min(first + count) });
        }
        let data_path = if count > 0 { split_pattern(out, name, shards) } else { String::new() };
        splits.push(SplitSummary { name: name.to_string(), samples: count, shards, data_path });
    }
    let (mut done, mut bytes) = (0, 0u64);
    let mut pending: Option<(&ShardJob, ShardSamples)> = None;
    for next in jobs.iter().map(Some).chain([None]) {
        let (generated, written) = pool.install(|| {
            rayon::join(
                || next.map(|job| generate_shard(spec, job.samples.clone())).transpose(),
                || pending.take().map(|(job, samples)| write_shard(job, &samples).map(|b| (b, samples.len()))).transpose(),
            )
        });
        if let Some((b, n)) = written? {
            bytes += b;
            done += n;
            progress(Progress { done, total: spec.samples });
        }
        pending = next.zip(generated?);
    }
    write_atomic(&out.join("world.json"), world_json(spec, &splits).to_string().as_bytes())?;
    Ok(WorldSummary { out_dir: out.to_path_buf(), splits, bytes, elapsed: start.elapsed() })
}

/// Generates and encodes the samples of one shard, in parallel, in index order.
fn generate_shard(spec: &WorldSpec, samples: Range<usize>) -> Result<ShardSamples> {
    samples
        .into_par_iter()
        .map(|i| {
            let s = WorldSample::generate(spec, i);
            Ok((s.key.clone(), s.members()?))
        })
        .collect()
}

/// Writes one shard per folder; returns the member bytes written.
fn write_shard(job: &ShardJob, samples: &ShardSamples) -> Result<u64> {
    let mut writers = FOLDERS
        .iter()
        .map(|f| TarWriter::create(&job.root.join(f.name).join(format!("shard-{:05}.tar", job.shard))))
        .collect::<Result<Vec<_>>>()?;
    let mut bytes = 0;
    for (key, members) in samples {
        for (w, (_, ext, data)) in writers.iter_mut().zip(members) {
            w.append(&format!("{key}.{ext}"), data)?;
            bytes += data.len() as u64;
        }
    }
    for w in writers {
        w.finish()?;
    }
    Ok(bytes)
}

/// `OUT/split/[rgb,depth,...]/shard-{00000..NNNNN}.tar`.
fn split_pattern(out: &Path, split: &str, shards: usize) -> String {
    let folders: Vec<&str> = FOLDERS.iter().map(|f| f.name).collect();
    format!("{}/{split}/[{}]/shard-{{00000..{:05}}}.tar", out.display(), folders.join(","), shards.saturating_sub(1))
}

/// The root summary: spec, splits, classes, vocabularies and what each folder holds.
fn world_json(spec: &WorldSpec, splits: &[SplitSummary]) -> serde_json::Value {
    let folders: serde_json::Map<String, serde_json::Value> =
        FOLDERS.iter().map(|f| (f.name.to_string(), json!({ "ext": f.ext, "content": f.content, "feeds": f.feeds }))).collect();
    json!({
        "generator": "tessera world v1",
        "spec": spec,
        "splits": splits,
        "classes": ShapeClass::ALL.iter().map(|c| json!({ "id": c.semantic_id(), "name": c.name() })).collect::<Vec<_>>(),
        "colours": COLOURS.iter().map(|c| c.0).collect::<Vec<_>>(),
        "sizes": SIZES.iter().map(|s| s.0).collect::<Vec<_>>(),
        "global_feature_dim": GLOBAL_DIM,
        "feature_map_dim": MAP_DIM,
        "feature_map_patch": PATCH,
        "folders": folders,
    })
}
