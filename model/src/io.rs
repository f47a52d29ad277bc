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
