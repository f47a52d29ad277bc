//! Pre-tokenization of a world split (ml-4m's `save_vq_tokens.py`, reference §6.3): every
//! sample of a modality folder encoded by a trained tokenizer and written, shard for shard and
//! key for key, as `<key>.npy` int16 `(1, n_tokens)` members of a `tok_<modality>@<size>`
//! folder beside it, so the 4M data pipeline reads the tokens aligned with the other folders.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tessera_tokenizers::shards::{ArrayData, NdArray, TarWriter, encode_npy};

use super::ModalityTokenizer;
use super::config::InputKind;
use super::model::Tokenizer;
use super::world::{open_folder, read_sample};
use crate::error::{ModelError, Result};

/// Samples encoded per forward (bounds memory, not results).
const CHUNK: usize = 64;

/// What [`tokenize_world_split`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizeSummary {
    /// The token folder.
    pub folder: PathBuf,
    /// Samples tokenized.
    pub samples: usize,
    /// Shards written (as many as the source folder has).
    pub shards: usize,
}

/// ml-4m's folder name for pre-computed tokens: `tok_<modality>@<size>` (`@1` for vectors).
pub fn token_folder_name(tok: &Tokenizer) -> String {
    let size = match tok.config().input {
        InputKind::Image { size, .. } | InputKind::ClassMap { size, .. } => size,
        InputKind::Vector { .. } => 1,
    };
    format!("tok_{}@{size}", tok.config().modality)
}

/// Encodes split `split` of the world at `dir` with `tok` into `dir/split/<token folder>/`
/// (ids fit int16: the config caps vocabularies at [`super::MAX_VOCAB`]).
/// Only crop 0 (the whole image) is tokenized, so worlds generated with several crops are
/// refused rather than given token rows that their `crop_settings` would index past.
pub fn tokenize_world_split(dir: &Path, split: &str, tok: &Tokenizer) -> Result<TokenizeSummary> {
    let cfg = tok.config();
    let bad = |reason: String| ModelError::Tokenizer { modality: cfg.modality.clone(), reason };
    let world_json = dir.join("world.json");
    if let Ok(text) = std::fs::read(&world_json) {
        let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(format!("{}: {e}", world_json.display())))?;
        let n_crops = v["spec"]["n_crops"].as_u64().unwrap_or(1);
        if n_crops != 1 {
            return Err(bad(format!("the world has {n_crops} crops per sample; only single-crop worlds can be tokenized")));
        }
    }
    let ds = open_folder(dir, split, cfg)?;
    let folder = dir.join(split).join(token_folder_name(tok));
    std::fs::create_dir_all(&folder).map_err(|source| ModelError::Io { op: "creating directory", path: folder.clone(), source })?;
    let t = tok.tokens_per_sample();
    let mut shards = 0;
    let mut i = 0;
    while i < ds.len() {
        let shard = ds.shard_of(i)?;
        let mut end = i;
        while end < ds.len() && ds.shard_of(end)? == shard {
            end += 1;
        }
        let mut writer = TarWriter::create(&folder.join(format!("shard-{shard:05}.tar")))?;
        for start in (i..end).step_by(CHUNK) {
            let samples = (start..(start + CHUNK).min(end)).map(|j| read_sample(&ds, j, &cfg.modality)).collect::<Result<Vec<_>>>()?;
            let x = Tensor::stack(&samples.iter().map(|(_, x)| x.shallow_clone()).collect::<Vec<_>>(), 0);
            let ids = tok.encode(&x)?.to_device(Device::Cpu).to_kind(Kind::Int16);
            let ids: Vec<i16> = Vec::try_from(ids.reshape([-1]))?;
            for ((key, _), row) in samples.iter().zip(ids.chunks_exact(t)) {
                let array = NdArray { shape: vec![1, t], data: ArrayData::I16(row.to_vec()) };
                writer.append(&format!("{key}.npy"), &encode_npy(&array))?;
            }
        }
        writer.finish()?;
        shards += 1;
        i = end;
    }
    Ok(TokenizeSummary { folder, samples: ds.len(), shards })
}
