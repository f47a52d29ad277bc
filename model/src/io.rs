//! safetensors reading and writing for tch tensors, with metadata, clear errors on corrupt
//! files, and atomic writes (temp file, fsync, rename) so a crash never leaves half a file.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// Tensors of a file in file order, plus its `__metadata__`.
pub type TensorFile = (Vec<(String, Tensor)>, BTreeMap<String, String>);

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file onto the CPU.
pub fn read(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io { op: "reading", path: path.to_path_buf(), source })?;
    let format = |reason: String| ModelError::Format { path: path.to_path_buf(), reason };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
    let metadata: BTreeMap<String, String> = header.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default();
    // Keep the header's tensor order (offset order) for reproducible iteration.
    let mut names: Vec<(usize, String)> = header.tensors().iter().map(|(name, info)| (info.data_offsets.0, name.clone())).collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for (_, name) in names {
        let view = st.tensor(&name).map_err(|e| format(format!("tensor '{name}': {e}")))?;
        let kind = kind_of(view.dtype()).ok_or_else(|| format(format!("tensor '{name}': unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        tensors.push((name, t));
    }
    Ok((tensors, metadata))
}

/// Random-access reads of parts of f32 tensors in a safetensors file, by positional reads of
/// just the bytes asked for: how a rank restoring a resharded checkpoint reads only the slices
/// of the old ranks' files that overlap its new shard, instead of whole files.
#[derive(Debug)]
pub struct SliceReader {
    path: PathBuf,
    file: std::fs::File,
    /// Absolute byte offset of the data area (after the 8-byte length and the JSON header).
    data_start: u64,
    /// Name -> (dtype, element count, byte range inside the data area).
    entries: BTreeMap<String, (Dtype, usize, std::ops::Range<u64>)>,
}

impl SliceReader {
    /// Opens `path` and reads its header (nothing of the data yet).
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let io = |op: &'static str| move |source| ModelError::Io { op, path: path.to_path_buf(), source };
        let format = |reason: String| ModelError::Format { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(io("opening"))?;
        let file_len = file.metadata().map_err(io("reading the size of"))?.len();
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0).map_err(|_| format("shorter than a safetensors header".into()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > 100 << 20 || 8 + header_len > file_len {
            return Err(format(format!("header length {header_len} does not fit a {file_len}-byte file")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8).map_err(io("reading the header of"))?;
        // The safetensors crate's own header type parses it (names, dtypes, shapes, offsets);
        // the data area is never read here, so its bounds are checked against the file size.
        let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header).map_err(|e| format(format!("header: {e}")))?;
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        let mut end = 0u64;
        for (name, info) in meta.tensors() {
            let (lo, hi) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            let numel: usize = info.shape.iter().product();
            if hi < lo || hi - lo != (numel * info.dtype.bitsize() / 8) as u64 {
                return Err(format(format!("tensor '{name}': offsets {lo}..{hi} do not hold {numel} {:?} values", info.dtype)));
            }
            end = end.max(hi);
            entries.insert(name.clone(), (info.dtype, numel, lo..hi));
        }
        if data_start + end != file_len {
            return Err(format(format!("the tensors end at byte {}, the file has {file_len} (truncated or padded)", data_start + end)));
        }
        Ok(Self { path: path.to_path_buf(), file, data_start, entries })
    }

    /// Element count of tensor `name`, if the file has it.
    pub fn numel(&self, name: &str) -> Option<usize> {
        self.entries.get(name).map(|e| e.1)
    }

    /// Elements `range` of the flattened f32 tensor `name`, as a 1-D tensor.
    pub fn read_f32(&self, name: &str, range: std::ops::Range<usize>) -> Result<Tensor> {
        use std::os::unix::fs::FileExt;
        let format = |reason: String| ModelError::Format { path: self.path.clone(), reason };
        let (dtype, numel, bytes) = self.entries.get(name).ok_or_else(|| format(format!("missing tensor '{name}'")))?;
        if *dtype != Dtype::F32 {
            return Err(format(format!("tensor '{name}' is {dtype:?}, expected F32")));
        }
        if range.start > range.end || range.end > *numel {
            return Err(format(format!("elements {range:?} are outside tensor '{name}' of {numel}")));
        }
        let mut buf = vec![0u8; range.len() * 4];
        let at = self.data_start + bytes.start + range.start as u64 * 4;
        self.file.read_exact_at(&mut buf, at).map_err(|source| ModelError::Io { op: "reading", path: self.path.clone(), source })?;
        Ok(Tensor::f_from_data_size(&buf, &[range.len() as i64], Kind::Float)?)
    }
}

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_raw(name: &str, t: &Tensor, path: &Path) -> Result<Raw> {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let dtype = dtype_of(t.kind()).ok_or_else(|| ModelError::Format {
        path: path.to_path_buf(),
        reason: format!("tensor '{name}': cannot store kind {:?}", t.kind()),
    })?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Raw { dtype, shape: t.size().iter().map(|&s| s as usize).collect(), data })
}

/// Writes tensors and metadata atomically: a temp file in the same directory is written,
/// fsynced and renamed over `path`.
pub fn write(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let raws: Vec<(String, Raw)> = tensors.iter().map(|(n, t)| Ok((n.clone(), to_raw(n, t, path)?))).collect::<Result<_>>()?;
    let md: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let bytes = safetensors::tensor::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), Some(md))
        .map_err(|e| ModelError::Format { path: path.to_path_buf(), reason: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temp file + fsync + rename (+ directory fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |op: &'static str, p: PathBuf| move |source| ModelError::Io { op, path: p, source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("creating directory", dir.to_path_buf()))?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", tmp.clone()))?;
    f.write_all(bytes).map_err(io("writing", tmp.clone()))?;
    f.sync_all().map_err(io("syncing", tmp.clone()))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path.to_path_buf()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_reader_reads_exact_ranges_and_refuses_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = Tensor::arange(10, (Kind::Float, tch::Device::Cpu));
        let b = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3]) * 10.0;
        let ids = Tensor::arange(4, (Kind::Int64, tch::Device::Cpu));
        write(&path, &[("a".into(), a), ("b".into(), b), ("ids".into(), ids)], &BTreeMap::new()).unwrap();
        let r = SliceReader::open(&path).unwrap();
        assert_eq!((r.numel("a"), r.numel("b"), r.numel("zzz")), (Some(10), Some(6), None));
        assert_eq!(Vec::<f32>::try_from(r.read_f32("a", 3..7).unwrap()).unwrap(), vec![3.0, 4.0, 5.0, 6.0]);
        assert_eq!(Vec::<f32>::try_from(r.read_f32("b", 4..6).unwrap()).unwrap(), vec![40.0, 50.0]);
        assert_eq!(r.read_f32("a", 5..5).unwrap().numel(), 0);
        for (name, range, want) in [("a", 8..11, "outside"), ("ids", 0..1, "I64"), ("nope", 0..1, "missing")] {
            let e = r.read_f32(name, range).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("t.safetensors"), "{e}");
        }
        // A truncated file is refused when opened, naming the file.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
        let e = SliceReader::open(&path).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("t.safetensors"), "{e}");
    }
}
