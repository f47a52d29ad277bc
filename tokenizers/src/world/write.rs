//! Writes a world in ml-4m's shard layout: `OUT/{train,val}/<folder>/shard-NNNNN.tar`, one
//! folder per modality, samples generated in parallel shard by shard and written in index
//! order (so the bytes do not depend on the thread count), plus `OUT/world.json`.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde_json::json;

use super::features::{GLOBAL_DIM, MAP_DIM, PATCH};
use super::sample::{FOLDERS, WorldSample};
use super::scene::{COLOURS, SIZES, ShapeClass};
use super::spec::{Progress, SplitSummary, WorldSpec, WorldSummary};
use crate::error::{Error, Result};
use crate::shards::{TarWriter, write_atomic};

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source }
}

/// Generates `spec` under `out` (created if missing), reporting progress after each shard.
pub fn generate(out: &Path, spec: &WorldSpec, progress: &mut dyn FnMut(Progress)) -> Result<WorldSummary> {
    spec.validate()?;
    let start = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(spec.threads)
        .build()
        .map_err(|e| Error::ThreadPool { threads: spec.threads, reason: e.to_string() })?;
    let mut done = 0;
    let mut bytes = 0u64;
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
            let hi = (lo + spec.shard_size).min(first + count);
            let samples: Vec<_> = pool.install(|| {
                (lo..hi)
                    .into_par_iter()
                    .map(|i| {
                        let s = WorldSample::generate(spec, i);
                        Ok((s.key.clone(), s.members()?))
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            let mut writers = FOLDERS
                .iter()
                .map(|f| TarWriter::create(&root.join(f.name).join(format!("shard-{shard:05}.tar"))))
                .collect::<Result<Vec<_>>>()?;
            for (key, members) in &samples {
                for (w, (_, ext, data)) in writers.iter_mut().zip(members) {
                    w.append(&format!("{key}.{ext}"), data)?;
                    bytes += data.len() as u64;
                }
            }
            for w in writers {
                w.finish()?;
            }
            done += samples.len();
            progress(Progress { done, total: spec.samples });
        }
        let data_path = if count > 0 { split_pattern(out, name, shards) } else { String::new() };
        splits.push(SplitSummary { name: name.to_string(), samples: count, shards, data_path });
    }
    write_atomic(&out.join("world.json"), world_json(spec, &splits).to_string().as_bytes())?;
    Ok(WorldSummary { out_dir: out.to_path_buf(), splits, bytes, elapsed: start.elapsed() })
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
