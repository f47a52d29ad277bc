//! Pre-tokenization of a world split (ml-4m's `save_vq_tokens.py`, reference §6.3): every
//! sample of a modality folder encoded by a trained tokenizer and written, shard for shard and
//! key for key, as `<key>.npy` int16 `(1, n_tokens)` members of a `tok_<modality>@<size>`
//! folder beside it, so the 4M data pipeline reads the tokens aligned with the other folders.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tessera_tokenizers::shards::{ArrayData, NameMap, NdArray, ShardDataset, TarWriter, encode_npy};

use super::ModalityTokenizer;
use super::config::InputKind;
use super::model::Tokenizer;
use super::transform::{prepare, read_crops, read_raw};
use crate::error::{ModelError, Result};

/// Samples (with all their crops) encoded per forward (bounds memory, not results).
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
/// (ids fit int16: the config caps vocabularies at [`super::MAX_VOCAB`]). Each sample gets one
/// token row per crop of its `crop_settings` (ml-4m's `(n_crops, n_tokens)`), each crop cut,
/// flipped and resized to the tokenizer's side; feature folders have no per-crop version, so
/// worlds with several crops are refused for them.
pub fn tokenize_world_split(dir: &Path, split: &str, tok: &Tokenizer) -> Result<TokenizeSummary> {
    let cfg = tok.config();
    let folder = cfg.modality.as_str();
    let with_crops = ShardDataset::open(
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
    let ds = &with_crops;
    let mut shards = 0;
    let mut i = 0;
    while i < ds.len() {
        let shard = ds.shard_of(i)?;
        let mut end = i;
        while end < ds.len() && ds.shard_of(end)? == shard {
            end += 1;
        }
        let mut writer = TarWriter::create(&out.join(format!("shard-{shard:05}.tar")))?;
        for start in (i..end).step_by(CHUNK) {
            // Encode CHUNK samples' crops in one forward, then split the rows back per sample.
            let mut keys = Vec::new();
            let mut rows = Vec::new();
            for j in start..(start + CHUNK).min(end) {
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
        shards += 1;
        i = end;
    }
    Ok(TokenizeSummary { folder: out, samples: ds.len(), shards })
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
        let summary = tokenize_world_split(dir.path(), "val", &tok).unwrap();
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
        let err = tokenize_world_split(dir.path(), "val", &fm).unwrap_err().to_string();
        assert!(err.contains("single-crop"), "{err}");
    }
}
