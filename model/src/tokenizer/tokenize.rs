//! Pre-tokenization of a world split (ml-4m's `save_vq_tokens.py`, reference §6.3): every
//! sample of a modality folder encoded by a trained tokenizer and written, shard for shard and
//! key for key, as `<key>.npy` int16 `(n_crops, n_tokens)` members of a `tok_<modality>@<size>`
//! folder beside it, so the 4M data pipeline reads the tokens aligned with the other folders.
//!
//! Resumable: shards are written atomically (temp sibling, then rename), a finished shard whose
//! keys and arrays check out is kept on a rerun, and `tokenize.json` records the tokenizer's
//! digest so shards of another tokenizer are never reused. The folder also gets
//! `modality.json`, the [`TokenModalityDef`] a job declares to train on the tokens.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use tessera_tokenizers::shards::{ArrayData, NameMap, NdArray, Origin, ShardDataset, TarIndex, TarWriter, decode_npy, encode_npy};
use tessera_tokenizers::{ModalityKind, TokenModalityDef};

use super::ModalityTokenizer;
use super::config::InputKind;
use super::model::Tokenizer;
use super::transform::{prepare, read_crops, read_raw};
use crate::error::{ModelError, Result};
use tessera_tokenizers::atomic::write_atomic;

/// Samples (with all their crops) encoded per forward (bounds memory, not results).
const CHUNK: usize = 64;

/// The token folder's record of which tokenizer wrote its shards.
pub const TOKENIZE_MANIFEST: &str = "tokenize.json";

/// The token folder's modality definition (a [`TokenModalityDef`] as JSON).
pub const MODALITY_FILE: &str = "modality.json";

/// What [`tokenize_world_split`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizeSummary {
    /// The token folder.
    pub folder: PathBuf,
    /// Samples of the split.
    pub samples: usize,
    /// Shards of the split (as many as the source folder has).
    pub shards: usize,
    /// Shards written by this call.
    pub written: usize,
    /// Finished shards of an earlier run that were checked and kept.
    pub kept: usize,
    /// Samples encoded by this call.
    pub encoded: usize,
    /// True when every shard now exists (false when `max_shards` stopped the run early).
    pub complete: bool,
}

/// Options of [`tokenize_world_split`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// Stop after writing this many shards (the rest are written by a rerun); `None`: all.
    pub max_shards: Option<usize>,
    /// Shards encoded concurrently, one thread each (0 or 1: one at a time). The bytes do not
    /// depend on it.
    pub parallel_shards: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    /// SHA-256 of the tokenizer's config and tensors.
    tokenizer: String,
    /// The source folder the tokens encode.
    source: String,
    /// Token rows per sample and crop.
    tokens_per_sample: usize,
}

/// ml-4m's folder name for pre-computed tokens: `tok_<modality>@<size>` (`@1` for vectors).
pub fn token_folder_name(tok: &Tokenizer) -> String {
    let size = match tok.config().input {
        InputKind::Image { size, .. } | InputKind::ClassMap { size, .. } => size,
        InputKind::Vector { .. } => 1,
    };
    format!("tok_{}@{size}", tok.config().modality)
}

/// The 4M modality a tokenizer's tokens form: `tok_<modality>@<size>`, its codebook size and
/// grid (image tokens), or global tokens for a vector tokenizer whose code count is a square;
/// `None` when the codes cannot form a square grid.
pub fn token_modality_def(tok: &Tokenizer) -> Option<TokenModalityDef> {
    let cfg = tok.config();
    let tokens = cfg.tokens_per_sample();
    let grid = tokens.isqrt();
    let kind = match cfg.input {
        InputKind::Image { .. } | InputKind::ClassMap { .. } => ModalityKind::ImageTokens,
        InputKind::Vector { .. } => ModalityKind::GlobalTokens,
    };
    (grid * grid == tokens).then(|| TokenModalityDef { key: token_folder_name(tok), vocab_size: cfg.vocab_size(), grid, kind })
}

/// SHA-256 (hex) of a tokenizer's config and every tensor (names, shapes and values).
pub fn tokenizer_digest(tok: &Tokenizer) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(tok.config()).unwrap_or_default());
    let mut vars: Vec<(String, Tensor)> = tok.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        h.update(name.as_bytes());
        h.update(format!("{:?}", t.size()).as_bytes());
        let values: Vec<f64> = Vec::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1])).unwrap_or_default();
        for v in values {
            h.update(v.to_le_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes split `split` of the world at `dir` with `tok` into `dir/split/<token folder>/`
/// (ids fit int16: the config caps vocabularies at [`super::MAX_VOCAB`]). Each sample gets one
/// token row per crop of its `crop_settings` (ml-4m's `(n_crops, n_tokens)`), each crop cut,
/// flipped and resized to the tokenizer's side; feature folders have no per-crop version, so
/// worlds with several crops are refused for them. Finished shards of an earlier run with the
/// same tokenizer are kept, so an interrupted run resumes and ends with the same bytes.
pub fn tokenize_world_split(dir: &Path, split: &str, tok: &Tokenizer, opts: &TokenizeOptions) -> Result<TokenizeSummary> {
    let cfg = tok.config();
    let folder = cfg.modality.as_str();
    let ds = &ShardDataset::open(
        &format!(
            "{}/{split}/[{folder},crop_settings]/shard-{{00000..{:05}}}.tar",
            dir.display(),
            count_shards(dir, split, folder)?.saturating_sub(1)
        ),
        &NameMap::new(),
    )?;
    let out = dir.join(split).join(token_folder_name(tok));
    std::fs::create_dir_all(&out).map_err(|source| ModelError::Io { op: "creating directory", path: out.clone(), source })?;
    let t = tok.tokens_per_sample();
    let manifest = Manifest { tokenizer: tokenizer_digest(tok), source: folder.to_string(), tokens_per_sample: t };
    prepare_folder(&out, &manifest)?;
    if let Some(def) = token_modality_def(tok) {
        let json =
            serde_json::to_vec_pretty(&def).map_err(|e| ModelError::Config { field: MODALITY_FILE.into(), reason: e.to_string() })?;
        write_atomic(&out.join(MODALITY_FILE), &json).map_err(ModelError::Write)?;
    }

    // Shard ranges of the source: [start, end) per shard, in order.
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < ds.len() {
        let shard = ds.shard_of(i)?;
        let mut end = i;
        while end < ds.len() && ds.shard_of(end)? == shard {
            end += 1;
        }
        ranges.push((shard, i, end));
        i = end;
    }
    let mut summary =
        TokenizeSummary { folder: out.clone(), samples: ds.len(), shards: ranges.len(), written: 0, kept: 0, encoded: 0, complete: true };
    // Finished shards are kept; the first `max_shards` missing ones are written.
    let mut todo = Vec::new();
    for (shard, start, end) in ranges {
        let path = out.join(format!("shard-{shard:05}.tar"));
        let keys = (start..end).map(|j| ds.key(j).map(str::to_string)).collect::<std::result::Result<Vec<_>, _>>()?;
        if path.is_file() && finished_shard_is_valid(&path, &keys, t) {
            summary.kept += 1;
        } else {
            todo.push((start..end, path));
        }
    }
    if let Some(m) = opts.max_shards.filter(|m| *m < todo.len()) {
        todo.truncate(m);
        summary.complete = false;
    }
    // Helper threads each own a copy of the tokenizer (tensors stay on one thread) and take
    // the next missing shard until none is left.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = |tok: &Tokenizer| -> Result<()> {
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some((range, path)) = todo.get(k) else { return Ok(()) };
            write_shard(ds, folder, tok, range.clone(), path)?;
        }
    };
    let copies = (1..opts.parallel_shards.clamp(1, todo.len().max(1))).map(|_| tok.duplicate()).collect::<Result<Vec<_>>>()?;
    std::thread::scope(|s| {
        let helpers: Vec<_> = copies.into_iter().map(|copy| s.spawn(move || work(&copy))).collect();
        let mine = work(tok);
        helpers.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).fold(mine, Result::and)
    })?;
    summary.written = todo.len();
    summary.encoded = todo.iter().map(|(r, _)| r.len()).sum();
    Ok(summary)
}

/// Makes `out` ready for (re)writing: removes temp files of interrupted runs, and every shard
/// when they were written by another tokenizer (or the record is unreadable); then records
/// `manifest`.
fn prepare_folder(out: &Path, manifest: &Manifest) -> Result<()> {
    let path = out.join(TOKENIZE_MANIFEST);
    let same = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()).is_some_and(|m| m == *manifest);
    let entries = std::fs::read_dir(out).map_err(|source| ModelError::Io { op: "listing", path: out.to_path_buf(), source })?;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let temp = name.starts_with("shard-") && name.contains(".tar.tmp-");
        let stale = !same && name.starts_with("shard-") && name.ends_with(".tar");
        if temp || stale {
            std::fs::remove_file(e.path()).map_err(|source| ModelError::Io { op: "removing", path: e.path(), source })?;
        }
    }
    if !same {
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| ModelError::Config { field: TOKENIZE_MANIFEST.into(), reason: e.to_string() })?;
        write_atomic(&path, &json).map_err(ModelError::Write)?;
    }
    Ok(())
}

/// True when the tar at `path` holds exactly `keys`, in order, each with one int16
/// `(n_crops, tokens)` `.npy` member.
fn finished_shard_is_valid(path: &Path, keys: &[String], tokens: usize) -> bool {
    let Ok(index) = TarIndex::scan(path) else { return false };
    index.samples.len() == keys.len()
        && index.samples.iter().zip(keys).all(|(s, key)| {
            s.key == *key
                && s.members.len() == 1
                && s.members[0].suffix == "npy"
                && index.read_member(&s.members[0]).ok().is_some_and(|bytes| {
                    let origin = Origin::new(path.display().to_string(), key.clone(), s.members[0].name.clone());
                    decode_npy(&bytes, &origin)
                        .is_ok_and(|a| matches!(a.data, ArrayData::I16(_)) && a.shape.len() == 2 && a.shape[0] >= 1 && a.shape[1] == tokens)
                })
        })
}

/// Encodes samples `range` of `ds` and writes them as the shard at `path` (atomically).
fn write_shard(ds: &ShardDataset, folder: &str, tok: &Tokenizer, range: std::ops::Range<usize>, path: &Path) -> Result<()> {
    let cfg = tok.config();
    let t = tok.tokens_per_sample();
    let mut writer = TarWriter::create(path)?;
    for start in range.clone().step_by(CHUNK) {
        // Encode CHUNK samples' crops in one forward, then split the rows back per sample.
        let mut keys = Vec::new();
        let mut rows = Vec::new();
        for j in start..(start + CHUNK).min(range.end) {
            let (key, raw) = read_raw(ds, j, folder)?;
            let crops = read_crops(ds, j)?;
            // Feature folders were computed on the whole image, which is crop 0 (the centre
            // square, §6.3; the world's maps are square); other crops are refused by prepare.
            let feature = matches!(folder, "feature_map" | "global_feature");
            for (k, c) in crops.iter().enumerate() {
                rows.push(prepare(folder, &key, &raw, (!(feature && k == 0)).then_some(c), cfg)?);
            }
            keys.push((key, crops.len()));
        }
        let ids = tok.encode(&Tensor::stack(&rows, 0))?.to_device(Device::Cpu).to_kind(Kind::Int16);
        let ids: Vec<i16> = Vec::try_from(ids.reshape([-1]))?;
        let mut at = 0;
        for (key, n_crops) in keys {
            let array = NdArray { shape: vec![n_crops, t], data: ArrayData::I16(ids[at..at + n_crops * t].to_vec()) };
            writer.append(&format!("{key}.npy"), &encode_npy(&array))?;
            at += n_crops * t;
        }
    }
    writer.finish()?;
    Ok(())
}

/// Number of `shard-*.tar` files of a folder.
fn count_shards(dir: &Path, split: &str, folder: &str) -> Result<usize> {
    let fdir = dir.join(split).join(folder);
    let entries = std::fs::read_dir(&fdir).map_err(|source| ModelError::Io { op: "listing", path: fdir.clone(), source })?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("shard-") && n.ends_with(".tar")
        })
        .count())
}

#[cfg(test)]
mod tests {
    use super::super::TokenizerConfig;
    use super::super::world::load_world_split;
    use super::*;
    use tessera_tokenizers::shards::Decoded;
    use tessera_tokenizers::world::{WorldSpec, generate};

    /// A 64-px world with 3 crops per sample, tokenized by an (untrained) 32-px tokenizer:
    /// one row per crop, row 0 the whole image resized, the other rows other crops.
    #[test]
    fn tokenizer_multi_crop_worlds_get_one_token_row_per_crop() {
        let dir = tempfile::tempdir().unwrap();
        let spec = WorldSpec { samples: 10, size: 64, seed: 21, n_crops: 3, val_fraction: 0.5, shard_size: 4, threads: 1 };
        generate(dir.path(), &spec, &mut |_| {}).unwrap();
        let tok = Tokenizer::new(&TokenizerConfig::preset("semseg", 32).unwrap(), Device::Cpu).unwrap();
        let summary = tokenize_world_split(dir.path(), "val", &tok, &TokenizeOptions::default()).unwrap();
        assert_eq!((summary.samples, summary.shards), (5, 2));
        assert!(summary.folder.ends_with("val/tok_semseg@32"));
        let whole = load_world_split(dir.path(), "val", tok.config(), None).unwrap();
        assert_eq!(whole.size(), [5, 32, 32]);
        let expected = tok.encode(&whole).unwrap();
        let pattern = format!("{}/val/[semseg,tok_semseg@32]/shard-{{00000..00001}}.tar", dir.path().display());
        let ds = ShardDataset::open(&pattern, &NameMap::new()).unwrap();
        let mut differs = false;
        for i in 0..5 {
            let Decoded::Array(a) = &ds.read_decoded(i).unwrap().members["tok_semseg@32"] else { panic!("tokens are an array") };
            assert_eq!(a.shape, [3, 64]);
            let ids = a.to_i64().unwrap();
            assert_eq!(ids[..64], Vec::<i64>::try_from(expected.get(i as i64)).unwrap()[..], "row 0 is the whole image");
            differs |= ids[64..128] != ids[..64];
        }
        assert!(differs, "the random crops give other tokens than the whole image");
        // Feature maps exist only for the whole image.
        let fm = Tokenizer::new(&TokenizerConfig::preset("feature_map", 64).unwrap(), Device::Cpu).unwrap();
        let err = tokenize_world_split(dir.path(), "val", &fm, &TokenizeOptions::default()).unwrap_err().to_string();
        assert!(err.contains("single-crop"), "{err}");
    }

    fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    /// An interrupted run (stopped after one shard, with a stale temp file and a corrupt shard
    /// left behind) finishes on a rerun with exactly the bytes of an uninterrupted run; shards
    /// of another tokenizer are never kept.
    #[test]
    fn tokenizer_interrupted_tokenize_resumes_to_identical_bytes() {
        let spec = WorldSpec { samples: 14, size: 32, seed: 5, n_crops: 2, val_fraction: 0.1, shard_size: 4, threads: 1 };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate(a.path(), &spec, &mut |_| {}).unwrap();
        generate(b.path(), &spec, &mut |_| {}).unwrap();
        let tok = Tokenizer::new(&TokenizerConfig::preset("depth", 32).unwrap(), Device::Cpu).unwrap();
        let full = tokenize_world_split(a.path(), "train", &tok, &TokenizeOptions::default()).unwrap();
        let n = full.shards;
        assert!(n >= 3, "{full:?}");
        assert_eq!((full.written, full.kept, full.complete), (n, 0, true));
        let reference = folder_bytes(&full.folder);
        let def: TokenModalityDef = serde_json::from_slice(&std::fs::read(full.folder.join(MODALITY_FILE)).unwrap()).unwrap();
        assert_eq!((def.key.as_str(), def.vocab_size, def.grid), ("tok_depth@32", 256, 8));

        let first = tokenize_world_split(b.path(), "train", &tok, &TokenizeOptions { max_shards: Some(1), ..Default::default() }).unwrap();
        assert_eq!((first.written, first.complete), (1, false));
        let out = first.folder;
        // What a killed run leaves: a temp file, and (from some other writer) a truncated shard.
        std::fs::write(out.join("shard-00001.tar.tmp-4242"), b"partial").unwrap();
        std::fs::write(out.join("shard-00002.tar"), &reference.iter().find(|(n, _)| n == "shard-00002.tar").unwrap().1[..700]).unwrap();
        // The rest on two threads: the bytes do not depend on it.
        let rest = tokenize_world_split(b.path(), "train", &tok, &TokenizeOptions { parallel_shards: 2, ..Default::default() }).unwrap();
        assert_eq!((rest.kept, rest.written, rest.encoded, rest.complete), (1, n - 1, full.samples - 4, true));
        assert_eq!(folder_bytes(&out), reference, "resumed shards equal an uninterrupted run's");
        let again = tokenize_world_split(b.path(), "train", &tok, &TokenizeOptions::default()).unwrap();
        assert_eq!((again.kept, again.written), (n, 0));

        // Another tokenizer (other seed) rewrites every shard.
        let other = Tokenizer::new(&TokenizerConfig { seed: 1, ..TokenizerConfig::preset("depth", 32).unwrap() }, Device::Cpu).unwrap();
        assert_ne!(tokenizer_digest(&other), tokenizer_digest(&tok));
        let redo = tokenize_world_split(b.path(), "train", &other, &TokenizeOptions::default()).unwrap();
        assert_eq!((redo.kept, redo.written), (0, n));
        assert_ne!(folder_bytes(&out), reference);
    }
}
