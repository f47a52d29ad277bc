//! safetensors reading and writing for tch tensors, with metadata, clear errors on corrupt
//! files, and atomic writes (temp file, fsync, rename) so a crash never leaves half a file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, TensorInfo};
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

/// Reads every tensor of a safetensors file onto the CPU, one tensor at a time (the extra
/// memory is the largest tensor's bytes, not the whole file).
pub fn read(path: &Path) -> Result<TensorFile> {
    let reader = SliceReader::open(path)?;
    let mut names: Vec<(u64, &String)> = reader.entries.iter().map(|(name, e)| (e.bytes.start, name)).collect();
    // The header's tensor order (offset order) for reproducible iteration.
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for (_, name) in names {
        tensors.push((name.clone(), reader.read_tensor(name)?));
    }
    Ok((tensors, reader.metadata.clone()))
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
    entries: BTreeMap<String, Entry>,
    /// The file's `__metadata__`.
    metadata: BTreeMap<String, String>,
}

/// Where one tensor lies in a safetensors file.
#[derive(Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<i64>,
    numel: usize,
    /// Byte range inside the data area.
    bytes: std::ops::Range<u64>,
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
            let shape = info.shape.iter().map(|&d| d as i64).collect();
            entries.insert(name.clone(), Entry { dtype: info.dtype, shape, numel, bytes: lo..hi });
        }
        if data_start + end != file_len {
            return Err(format(format!("the tensors end at byte {}, the file has {file_len} (truncated or padded)", data_start + end)));
        }
        let metadata = meta.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default();
        Ok(Self { path: path.to_path_buf(), file, data_start, entries, metadata })
    }

    /// Element count of tensor `name`, if the file has it.
    pub fn numel(&self, name: &str) -> Option<usize> {
        self.entries.get(name).map(|e| e.numel)
    }

    /// The whole tensor `name`, in its dtype and shape.
    pub fn read_tensor(&self, name: &str) -> Result<Tensor> {
        let format = |reason: String| ModelError::Format { path: self.path.clone(), reason };
        let e = self.entries.get(name).ok_or_else(|| format(format!("missing tensor '{name}'")))?;
        let kind = kind_of(e.dtype).ok_or_else(|| format(format!("tensor '{name}': unsupported dtype {:?}", e.dtype)))?;
        let buf = self.read_bytes(e.bytes.start, (e.bytes.end - e.bytes.start) as usize)?;
        Ok(Tensor::f_from_data_size(&buf, &e.shape, kind)?)
    }

    /// `len` bytes at `at` inside the data area.
    fn read_bytes(&self, at: u64, len: usize) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, self.data_start + at).map_err(|source| ModelError::Io {
            op: "reading",
            path: self.path.clone(),
            source,
        })?;
        Ok(buf)
    }

    /// Elements `range` of the flattened f32 tensor `name`, as a 1-D tensor.
    pub fn read_f32(&self, name: &str, range: std::ops::Range<usize>) -> Result<Tensor> {
        let format = |reason: String| ModelError::Format { path: self.path.clone(), reason };
        let Entry { dtype, numel, bytes, .. } = self.entries.get(name).ok_or_else(|| format(format!("missing tensor '{name}'")))?;
        if *dtype != Dtype::F32 {
            return Err(format(format!("tensor '{name}' is {dtype:?}, expected F32")));
        }
        if range.start > range.end || range.end > *numel {
            return Err(format(format!("elements {range:?} are outside tensor '{name}' of {numel}")));
        }
        let buf = self.read_bytes(bytes.start + range.start as u64 * 4, range.len() * 4)?;
        Ok(Tensor::f_from_data_size(&buf, &[range.len() as i64], Kind::Float)?)
    }
}

/// Bytes copied out of a tensor per write: the writer's whole buffer, whatever the tensor size.
const CHUNK_BYTES: usize = 8 << 20;

/// A tensor to store: a tensor as it is, or a flat f32 tensor of `numel` elements assembled
/// from pieces at element offsets (zeros between them), streamed into the file piece by piece
/// without ever being built (a checkpoint of live parameters needs no copy of them).
pub enum Stored {
    /// The tensor itself.
    Tensor(Tensor),
    /// A flat f32 tensor made of `pieces` (element offset, tensor flattened and cast to f32).
    Flat {
        /// Its length.
        numel: usize,
        /// The pieces, at element offsets that do not overlap.
        pieces: Vec<(usize, Tensor)>,
    },
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Tensor(t) => write!(f, "Tensor({:?}, {:?})", t.kind(), t.size()),
            Stored::Flat { numel, pieces } => write!(f, "Flat({numel} elements, {} pieces)", pieces.len()),
        }
    }
}

impl Stored {
    fn dtype(&self) -> Option<Dtype> {
        match self {
            Stored::Tensor(t) => dtype_of(t.kind()),
            Stored::Flat { .. } => Some(Dtype::F32),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Stored::Tensor(t) => t.numel() * t.kind().elt_size_in_bytes(),
            Stored::Flat { numel, .. } => numel * 4,
        }
    }

    fn shape(&self) -> Vec<usize> {
        match self {
            Stored::Tensor(t) => t.size().iter().map(|&s| s as usize).collect(),
            Stored::Flat { numel, .. } => vec![*numel],
        }
    }
}

/// Writes tensors and metadata atomically (see [`write_stored`]).
pub fn write(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let stored: Vec<(String, Stored)> = tensors.iter().map(|(n, t)| (n.clone(), Stored::Tensor(t.shallow_clone()))).collect();
    write_stored(path, &stored, metadata)
}

/// Streams `t` (on the host, contiguous, flattened) into `f`, a chunk at a time.
fn stream(f: &mut impl Write, name: &str, t: &Tensor, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let t = t.to_device(tch::Device::Cpu).contiguous().view([-1]);
    let (numel, elt) = (t.numel(), t.kind().elt_size_in_bytes());
    let per_chunk = (CHUNK_BYTES / elt).max(1);
    let mut at = 0;
    while at < numel {
        let n = per_chunk.min(numel - at);
        buf.resize(n * elt, 0);
        t.narrow(0, at as i64, n as i64).f_copy_data_u8(buf, n).map_err(|e| std::io::Error::other(format!("tensor '{name}': {e}")))?;
        f.write_all(buf)?;
        at += n;
    }
    Ok(())
}

/// Writes `bytes` zero bytes.
fn zeros(f: &mut impl Write, bytes: usize) -> std::io::Result<()> {
    let chunk = vec![0u8; bytes.min(CHUNK_BYTES)];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(())
}

/// Writes tensors and metadata atomically: a temp file in the same directory is written,
/// fsynced and renamed over `path`. The tensors are streamed into the file a chunk at a time,
/// so writing a multi-GiB shard needs [`CHUNK_BYTES`] of extra memory, not a copy of it
/// (a CPU tensor is never copied whole; a GPU tensor is brought to the host one at a time; a
/// [`Stored::Flat`] tensor is never assembled).
pub fn write_stored(path: &Path, tensors: &[(String, Stored)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let format = |reason: String| ModelError::Format { path: path.to_path_buf(), reason };
    // safetensors' own layout rule: descending dtype alignment, then name.
    let mut order: Vec<(&String, &Stored, Dtype)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = t.dtype().ok_or_else(|| format(format!("tensor '{name}': cannot store kind {t:?}")))?;
        if let Stored::Flat { numel, pieces } = t {
            let mut spans: Vec<(usize, usize)> = pieces.iter().map(|(o, p)| (*o, *o + p.numel())).collect();
            spans.sort_unstable();
            let overlap = spans.windows(2).any(|w| w[0].1 > w[1].0);
            if overlap || spans.last().is_some_and(|s| s.1 > *numel) {
                return Err(format(format!("tensor '{name}': its pieces overlap or run past its {numel} elements")));
            }
        }
        order.push((name, t, dtype));
    }
    order.sort_by(|(ln, _, ld), (rn, _, rd)| rd.cmp(ld).then(ln.cmp(rn)));
    let mut infos = Vec::with_capacity(order.len());
    let mut offset = 0;
    for (name, t, dtype) in &order {
        let n = t.bytes();
        infos.push(((*name).clone(), TensorInfo { dtype: *dtype, shape: t.shape(), data_offsets: (offset, offset + n) }));
        offset += n;
    }
    let md: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let header = Metadata::new(Some(md), infos).map_err(|e| format(e.to_string()))?;
    let mut header = serde_json::to_vec(&header).map_err(|e| format(e.to_string()))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    tessera_tokenizers::atomic::write_atomic_with(path, |f| {
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        let mut buf = Vec::new();
        for (name, t, _) in &order {
            match t {
                Stored::Tensor(t) => stream(f, name, t, &mut buf)?,
                Stored::Flat { numel, pieces } => {
                    let mut sorted: Vec<&(usize, Tensor)> = pieces.iter().collect();
                    sorted.sort_by_key(|(o, _)| *o);
                    let mut at = 0;
                    for (o, p) in sorted {
                        zeros(f, (o - at) * 4)?;
                        stream(f, name, &p.to_kind(Kind::Float), &mut buf)?;
                        at = o + p.numel();
                    }
                    zeros(f, (numel - at) * 4)?;
                }
            }
        }
        Ok(())
    })
    .map_err(ModelError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor as the safetensors crate's own serializer sees it.
    struct Bytes(Dtype, Vec<usize>, Vec<u8>);

    impl safetensors::tensor::View for &Bytes {
        fn dtype(&self) -> Dtype {
            self.0
        }
        fn shape(&self) -> &[usize] {
            &self.1
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(&self.2)
        }
        fn data_len(&self) -> usize {
            self.2.len()
        }
    }

    #[test]
    fn streamed_files_are_byte_identical_to_the_safetensors_serializer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let cpu = tch::Device::Cpu;
        // Several dtypes (the file orders them by alignment, then name), a tensor spanning
        // several write chunks, a non-contiguous one, an empty one.
        let big = Tensor::arange((CHUNK_BYTES / 4 * 2 + 123) as i64, (Kind::Float, cpu)).view([-1, 1]);
        let tensors: Vec<(String, Tensor)> = vec![
            ("z.big".into(), big),
            ("a.ids".into(), Tensor::arange(5, (Kind::Int64, cpu))),
            ("m.half".into(), Tensor::arange(7, (Kind::Float, cpu)).to_kind(Kind::BFloat16)),
            ("t.transposed".into(), Tensor::arange(6, (Kind::Float, cpu)).view([2, 3]).tr()),
            ("e.empty".into(), Tensor::zeros([0, 4], (Kind::Float, cpu))),
        ];
        let md: BTreeMap<String, String> = [("dim".to_string(), "8".to_string())].into();
        write(&path, &tensors, &md).unwrap();
        let raw: Vec<(String, Bytes)> = tensors
            .iter()
            .map(|(n, t)| {
                let t = t.contiguous();
                let mut data = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
                t.copy_data_u8(&mut data, t.numel());
                (n.clone(), Bytes(dtype_of(t.kind()).unwrap(), t.size().iter().map(|&s| s as usize).collect(), data))
            })
            .collect();
        let want = safetensors::tensor::serialize(
            raw.iter().map(|(n, b)| (n.as_str(), b)),
            Some(md.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        )
        .unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the streamed file differs from safetensors::serialize");
        let (back, meta) = read(&path).unwrap();
        assert_eq!(meta.get("dim").map(String::as_str), Some("8"));
        for (name, t) in &tensors {
            let b = &back.iter().find(|(n, _)| n == name).unwrap().1;
            assert!(b.equal(&t.contiguous()), "{name}");
        }
        // No temp file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

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

    #[test]
    fn a_flat_tensor_streamed_from_pieces_is_the_assembled_tensor_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let b = Tensor::from_slice(&[4.0f32, 5.0, 6.0, 7.0]).reshape([2, 2]);
        let assembled = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 7.0, 0.0]);
        let (whole, flat) = (dir.path().join("whole.safetensors"), dir.path().join("flat.safetensors"));
        write(&whole, &[("u.master".into(), assembled)], &Default::default()).unwrap();
        // Pieces out of order, with gaps before, between and after them.
        let pieces = vec![(5, b), (1, a.shallow_clone())];
        write_stored(&flat, &[("u.master".into(), Stored::Flat { numel: 10, pieces })], &Default::default()).unwrap();
        assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&flat).unwrap());
        let overlapping = vec![(0, a.shallow_clone()), (2, a)];
        let refused = write_stored(&flat, &[("u.master".into(), Stored::Flat { numel: 10, pieces: overlapping })], &Default::default());
        assert!(refused.unwrap_err().to_string().contains("overlap"), "overlapping pieces are refused");
    }
}
