//! The multi-folder shard dataset: one folder of tar shards per modality, joined by sample key
//! exactly like ml-4m's `multi_tarfile_samples`, and indexed for random access.
//!
//! Semantics kept from ml-4m:
//! - folders come from the pattern's `[a,b,...]` list, shard `i` of every folder is joined
//!   with shard `i` of the others, and keys must be equal position by position, otherwise
//!   [`Error::Divergence`] ("Divergence detected") names the shard, both folders and keys;
//! - a member `<key>.<ext>` of folder `f` becomes `<name>.<ext>` where `name` is
//!   `name_map[f]`, or `f` itself when the map has no entry for it;
//! - members are kept as they are (`<key>.rgb.jpg` → `rgb.jpg`) when the suffix already has
//!   the `name.ext` form, when the sample holds several members in that tar (multi-modality
//!   tars), or when the pattern has no `[...]` list;
//! - the final name is split like ml-4m's `remove_extensions` (`.gz` aware):
//!   `tok_rgb@224.npy` → modality `tok_rgb@224`, extension `npy`.
//!
//! `tools/ml4m_reference/check_shards.py` runs ml-4m's own `multi_tarfile_samples` (with
//! webdataset) next to this reader on the same tars and compares every record's key and members.
//!
//! Deliberate differences: ml-4m `zip`s the per-folder iterators and silently stops at the
//! shortest shard, and lets a later folder overwrite an earlier member of the same name; both
//! are errors here because they hide broken data.
//!
//! Memory: the index keeps, per sample, its key and 16 bytes per member (offset, length,
//! member slot) plus 16 bytes of bookkeeping; no member data.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use rayon::prelude::*;

use super::decode::{Decoded, decode_member};
use super::files::{DEFAULT_OPEN_FILES, FileCache, read_exact_at};
use super::origin::Origin;
use super::pattern::{FolderShards, expand_shard_pattern};
use super::tar::{TarIndex, TarSample};
use crate::error::{Divergence, Error, Result};

/// Folder name → modality name (ml-4m's `modality_name_map`, e.g. `tok_rgb` → `tok_rgb@224`).
pub type NameMap = HashMap<String, String>;

/// One member of a record: the raw bytes and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The extension after the modality name (`npy`, `json`, `json.gz`).
    pub ext: String,
    /// The member's name in the tar file.
    pub tar_member: String,
    /// The shard file holding it.
    pub file: PathBuf,
    /// The member's bytes.
    pub bytes: Vec<u8>,
}

/// One sample with its members undecoded, keyed by modality (or folder) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// The record index in the dataset.
    pub index: usize,
    /// The sample key.
    pub key: String,
    /// Modality name (`rgb`, `tok_rgb@224`) → member.
    pub members: BTreeMap<String, Member>,
}

/// One sample with decoded members.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRecord {
    /// The record index in the dataset.
    pub index: usize,
    /// The sample key.
    pub key: String,
    /// Modality name → decoded member.
    pub members: BTreeMap<String, Decoded>,
}

impl RawRecord {
    /// The [`Origin`] of member `name`, for error messages.
    pub fn origin(&self, name: &str) -> Origin {
        match self.members.get(name) {
            Some(m) => Origin::new(m.file.display().to_string(), &self.key, &m.tar_member),
            None => Origin::new("<none>", &self.key, name),
        }
    }

    /// The member `name` or an error naming the sample and the missing member.
    pub fn member(&self, name: &str) -> Result<&Member> {
        self.members.get(name).ok_or_else(|| {
            self.origin(name).error(format!("no such member (has: {})", self.members.keys().cloned().collect::<Vec<_>>().join(", ")))
        })
    }

    /// Decodes every member by its extension.
    pub fn decode(&self) -> Result<DecodedRecord> {
        let members = self
            .members
            .iter()
            .map(|(name, m)| Ok((name.clone(), decode_member(&m.ext, &m.bytes, &self.origin(name))?)))
            .collect::<Result<_>>()?;
        Ok(DecodedRecord { index: self.index, key: self.key.clone(), members })
    }
}

/// Where one member of a record lies; `slot` indexes [`ShardDataset::slots`].
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    len: u32,
    slot: u32,
}

/// A distinct (folder, output name, extension, tar suffix) combination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    folder: usize,
    name: String,
    ext: String,
    suffix: String,
}

/// The compact index of one shard across all folders, built in parallel then merged.
struct ShardPart {
    keys: Vec<String>,
    counts: Vec<usize>,
    entries: Vec<(u64, u32, usize)>,
    slots: Vec<Slot>,
}

/// A multi-folder tar-shard dataset in ml-4m's layout, indexed for random access.
#[derive(Debug)]
pub struct ShardDataset {
    pattern: String,
    folders: Vec<FolderShards>,
    shard_starts: Vec<usize>,
    key_bytes: String,
    key_ends: Vec<usize>,
    member_starts: Vec<usize>,
    entries: Vec<Entry>,
    slots: Vec<Slot>,
    files: FileCache,
}

impl ShardDataset {
    /// Expands `pattern`, scans every shard of every folder (in parallel over shards) and joins
    /// the folders by key; `name_map` renames folders to modality names.
    pub fn open(pattern: &str, name_map: &NameMap) -> Result<Self> {
        let folders = expand_shard_pattern(pattern)?;
        let n_shards = folders[0].shards.len();
        let parts: Vec<Result<ShardPart>> = (0..n_shards).into_par_iter().map(|s| index_shard(&folders, s, name_map)).collect();
        let mut ds = Self {
            pattern: pattern.to_string(),
            shard_starts: vec![0],
            key_bytes: String::new(),
            key_ends: Vec::new(),
            member_starts: vec![0],
            entries: Vec::new(),
            slots: Vec::new(),
            files: FileCache::new(DEFAULT_OPEN_FILES),
            folders,
        };
        let mut slot_ids: HashMap<Slot, u32> = HashMap::new();
        for part in parts {
            let part = part?;
            let remap: Vec<u32> = part
                .slots
                .into_iter()
                .map(|slot| {
                    let next = ds.slots.len() as u32;
                    *slot_ids.entry(slot.clone()).or_insert_with(|| {
                        ds.slots.push(slot);
                        next
                    })
                })
                .collect();
            for key in &part.keys {
                ds.key_bytes.push_str(key);
                ds.key_ends.push(ds.key_bytes.len());
            }
            let mut it = part.entries.into_iter();
            for count in part.counts {
                ds.entries.extend(it.by_ref().take(count).map(|(offset, len, slot)| Entry { offset, len, slot: remap[slot] }));
                ds.member_starts.push(ds.entries.len());
            }
            ds.shard_starts.push(ds.key_ends.len());
        }
        ds.entries.shrink_to_fit();
        Ok(ds)
    }

    /// Sets how many shard files are kept open at once (default 64).
    pub fn with_open_files(mut self, n: usize) -> Self {
        self.files = FileCache::new(n);
        self
    }

    /// The pattern the dataset was opened with.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Number of records (samples).
    pub fn len(&self) -> usize {
        self.key_ends.len()
    }

    /// True when the dataset has no records.
    pub fn is_empty(&self) -> bool {
        self.key_ends.is_empty()
    }

    /// Number of shards per folder.
    pub fn num_shards(&self) -> usize {
        self.shard_starts.len() - 1
    }

    /// The folders and their shard paths, in pattern order.
    pub fn folders(&self) -> &[FolderShards] {
        &self.folders
    }

    /// The distinct member (modality) names found in the dataset, sorted.
    pub fn member_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.slots.iter().map(|s| s.name.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    fn check(&self, i: usize) -> Result<()> {
        if i < self.len() { Ok(()) } else { Err(Error::IndexOutOfRange { index: i, len: self.len(), origin: self.pattern.clone() }) }
    }

    /// The key of record `i`.
    pub fn key(&self, i: usize) -> Result<&str> {
        self.check(i)?;
        let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
        Ok(&self.key_bytes[start..self.key_ends[i]])
    }

    /// The shard index holding record `i`.
    pub fn shard_of(&self, i: usize) -> Result<usize> {
        self.check(i)?;
        Ok(self.shard_starts.partition_point(|&s| s <= i) - 1)
    }

    /// Reads every member of record `i` (positional reads; no decoding).
    pub fn read(&self, i: usize) -> Result<RawRecord> {
        self.read_filtered(i, |_| true)
    }

    /// Reads only the members whose modality name is in `names` (others are not read).
    pub fn read_only(&self, i: usize, names: &[&str]) -> Result<RawRecord> {
        self.read_filtered(i, |n| names.contains(&n))
    }

    /// Reads and decodes record `i`.
    pub fn read_decoded(&self, i: usize) -> Result<DecodedRecord> {
        self.read(i)?.decode()
    }

    fn read_filtered(&self, i: usize, keep: impl Fn(&str) -> bool) -> Result<RawRecord> {
        let shard = self.shard_of(i)?;
        let key = self.key(i)?.to_string();
        let mut members = BTreeMap::new();
        for e in &self.entries[self.member_starts[i]..self.member_starts[i + 1]] {
            let slot = &self.slots[e.slot as usize];
            if !keep(&slot.name) {
                continue;
            }
            let path = &self.folders[slot.folder].shards[shard];
            let file = self.files.get(shard * self.folders.len() + slot.folder, path)?;
            let bytes = read_exact_at(&file, path, e.offset, e.len as usize)?;
            let tar_member = format!("{key}.{}", slot.suffix);
            members.insert(slot.name.clone(), Member { ext: slot.ext.clone(), tar_member, file: path.clone(), bytes });
        }
        Ok(RawRecord { index: i, key, members })
    }
}

/// Scans shard `s` of every folder, checks key alignment and resolves member names.
fn index_shard(folders: &[FolderShards], s: usize, name_map: &NameMap) -> Result<ShardPart> {
    let scans: Vec<TarIndex> = folders.iter().map(|f| TarIndex::scan(&f.shards[s])).collect::<Result<_>>()?;
    let reference = &scans[0];
    let folder_label = |f: usize| folders[f].folder.clone().unwrap_or_else(|| "<no folder>".into());
    for (f, scan) in scans.iter().enumerate().skip(1) {
        let n = reference.samples.len().max(scan.samples.len());
        for pos in 0..n {
            let ka = reference.samples.get(pos).map(|x| x.key.as_str());
            let kb = scan.samples.get(pos).map(|x| x.key.as_str());
            if ka != kb {
                return Err(Error::Divergence(Box::new(Divergence {
                    shard: s,
                    position: pos,
                    folder_a: folder_label(0),
                    file_a: reference.path.display().to_string(),
                    key_a: ka.unwrap_or("<end of shard>").to_string(),
                    folder_b: folder_label(f),
                    file_b: scan.path.display().to_string(),
                    key_b: kb.unwrap_or("<end of shard>").to_string(),
                })));
            }
        }
    }
    let mut part =
        ShardPart { keys: Vec::with_capacity(reference.samples.len()), counts: Vec::new(), entries: Vec::new(), slots: Vec::new() };
    let mut slot_ids: HashMap<Slot, usize> = HashMap::new();
    for pos in 0..reference.samples.len() {
        let key = &reference.samples[pos].key;
        let mut seen: HashMap<String, usize> = HashMap::new();
        let before = part.entries.len();
        for (f, scan) in scans.iter().enumerate() {
            let sample: &TarSample = &scan.samples[pos];
            let multi = sample.members.len() > 1;
            for m in &sample.members {
                let full = member_name(folders[f].folder.as_deref(), &m.suffix, multi, name_map);
                let (name, ext) = split_ext(&full);
                if let Some(&other) = seen.get(&name) {
                    return Err(Error::Layout {
                        origin: scan.path.display().to_string(),
                        reason: format!(
                            "sample '{key}': member '{}' gives modality '{name}', which folder '{}' already gave",
                            m.name,
                            folder_label(other)
                        ),
                    });
                }
                seen.insert(name.clone(), f);
                let len = u32::try_from(m.len).map_err(|_| Error::Tar {
                    file: scan.path.display().to_string(),
                    offset: m.offset,
                    member: m.name.clone(),
                    reason: "members of 4 GiB or more are not supported".into(),
                })?;
                let slot = Slot { folder: f, name, ext, suffix: m.suffix.clone() };
                let next = part.slots.len();
                let id = *slot_ids.entry(slot.clone()).or_insert_with(|| {
                    part.slots.push(slot);
                    next
                });
                part.entries.push((m.offset, len, id));
            }
        }
        part.keys.push(key.clone());
        part.counts.push(part.entries.len() - before);
    }
    Ok(part)
}

/// ml-4m's renaming rule for suffix `k` of a member of `folder` (see the module docs).
fn member_name(folder: Option<&str>, k: &str, multi: bool, name_map: &NameMap) -> String {
    let has_name = if k.contains(".gz") { k.matches('.').count() == 2 } else { k.matches('.').count() == 1 };
    match folder {
        Some(f) if !multi && !has_name => format!("{}.{k}", name_map.get(f).map_or(f, String::as_str)),
        _ => k.to_string(),
    }
}

/// `(name, ext)` like ml-4m's `remove_ext_with_gz` (`caption.json.gz` → `caption`, `json.gz`).
/// A name without a dot (members of a tar opened without `[...]`, e.g. `npy`) is also its own
/// extension, so it decodes the way ml-4m's `wds_decoder` does (`key == "npy"`).
fn split_ext(full: &str) -> (String, String) {
    let (stem, gz) = match full.strip_suffix(".gz") {
        Some(s) => (s, ".gz"),
        None => (full, ""),
    };
    match stem.rfind('.') {
        Some(i) if i > 0 => (stem[..i].to_string(), format!("{}{gz}", &stem[i + 1..])),
        _ if gz.is_empty() => (stem.to_string(), stem.to_string()),
        _ => (stem.to_string(), "gz".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renaming_follows_ml4m() {
        let mut map = NameMap::new();
        map.insert("tok_rgb".into(), "tok_rgb@224".into());
        assert_eq!(member_name(Some("tok_rgb"), "npy", false, &map), "tok_rgb@224.npy");
        assert_eq!(member_name(Some("rgb"), "jpg", false, &map), "rgb.jpg");
        assert_eq!(member_name(Some("rgb"), "rgb.jpg", false, &map), "rgb.jpg");
        assert_eq!(member_name(Some("cap"), "json.gz", false, &map), "cap.json.gz");
        assert_eq!(member_name(Some("x"), "jpg", true, &map), "jpg");
        assert_eq!(member_name(None, "jpg", false, &map), "jpg");
        assert_eq!(split_ext("tok_rgb@224.npy"), ("tok_rgb@224".into(), "npy".into()));
        assert_eq!(split_ext("caption.json.gz"), ("caption".into(), "json.gz".into()));
        assert_eq!(split_ext("jpg"), ("jpg".into(), "jpg".into()));
        assert_eq!(split_ext("x.gz"), ("x".into(), "gz".into()));
    }
}
