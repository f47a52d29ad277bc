//! NumPy `.npy` (format versions 1–3) and `.npz` (a zip of `.npy` members), read and write.
//!
//! Only plain numeric C-order arrays are supported, which is what ml-4m stores for tokens
//! (int16), crop settings (int) and T5 embeddings (float). Pickled object arrays (`|O`, used
//! by ml-4m for SAM instances) cannot be read without a Python unpickler and are refused with
//! a pointer to the converter script.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};

use super::origin::Origin;
use crate::error::Result;

/// The script that converts ml-4m's pickled SAM-instance `.npy` files to JSON.
pub const SAM_CONVERTER: &str = "tools/data/sam_npy_to_json.py";

/// The elements of an [`NdArray`], one variant per supported dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    /// `|b1`
    Bool(Vec<bool>),
    /// `|u1`
    U8(Vec<u8>),
    /// `|i1`
    I8(Vec<i8>),
    /// `<i2`
    I16(Vec<i16>),
    /// `<u2`
    U16(Vec<u16>),
    /// `<i4`
    I32(Vec<i32>),
    /// `<u4`
    U32(Vec<u32>),
    /// `<i8`
    I64(Vec<i64>),
    /// `<u8`
    U64(Vec<u64>),
    /// `<f2`, kept as IEEE half bits.
    F16(Vec<u16>),
    /// `<f4`
    F32(Vec<f32>),
    /// `<f8`
    F64(Vec<f64>),
}

/// A decoded `.npy` array: C-order elements and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements in C order.
    pub data: ArrayData,
}

macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            ArrayData::Bool($v) => $body,
            ArrayData::U8($v) => $body,
            ArrayData::I8($v) => $body,
            ArrayData::I16($v) => $body,
            ArrayData::U16($v) => $body,
            ArrayData::I32($v) => $body,
            ArrayData::U32($v) => $body,
            ArrayData::I64($v) => $body,
            ArrayData::U64($v) => $body,
            ArrayData::F16($v) => $body,
            ArrayData::F32($v) => $body,
            ArrayData::F64($v) => $body,
        }
    };
}

impl NdArray {
    /// An array from a shape and matching data; `None` when the element count differs.
    pub fn new(shape: Vec<usize>, data: ArrayData) -> Option<Self> {
        let a = Self { shape, data };
        (a.shape.iter().product::<usize>() == a.len()).then_some(a)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_variant!(&self.data, v => v.len())
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The NumPy dtype string (`<i2`, `|b1`, ...).
    pub fn dtype(&self) -> &'static str {
        match &self.data {
            ArrayData::Bool(_) => "|b1",
            ArrayData::U8(_) => "|u1",
            ArrayData::I8(_) => "|i1",
            ArrayData::I16(_) => "<i2",
            ArrayData::U16(_) => "<u2",
            ArrayData::I32(_) => "<i4",
            ArrayData::U32(_) => "<u4",
            ArrayData::I64(_) => "<i8",
            ArrayData::U64(_) => "<u8",
            ArrayData::F16(_) => "<f2",
            ArrayData::F32(_) => "<f4",
            ArrayData::F64(_) => "<f8",
        }
    }

    /// The elements widened to i64 (bools as 0/1); `None` for float arrays or u64 values
    /// above `i64::MAX`.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        Some(match &self.data {
            ArrayData::Bool(v) => v.iter().map(|&b| i64::from(b)).collect(),
            ArrayData::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            ArrayData::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            ArrayData::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            ArrayData::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            ArrayData::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            ArrayData::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            ArrayData::I64(v) => v.clone(),
            ArrayData::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect::<Option<_>>()?,
            ArrayData::F16(_) | ArrayData::F32(_) | ArrayData::F64(_) => return None,
        })
    }

    /// The elements converted to f32 (bools as 0/1; wide integers and f64 lose precision).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            ArrayData::Bool(v) => v.iter().map(|&b| f32::from(u8::from(b))).collect(),
            ArrayData::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            ArrayData::I8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            ArrayData::I16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            ArrayData::U16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            ArrayData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            ArrayData::U32(v) => v.iter().map(|&x| x as f32).collect(),
            ArrayData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            ArrayData::U64(v) => v.iter().map(|&x| x as f32).collect(),
            ArrayData::F16(v) => v.iter().map(|&x| f16_to_f32(x)).collect(),
            ArrayData::F32(v) => v.clone(),
            ArrayData::F64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// True for integer and bool dtypes.
    pub fn is_integer(&self) -> bool {
        !matches!(self.data, ArrayData::F16(_) | ArrayData::F32(_) | ArrayData::F64(_))
    }
}

/// IEEE 754 half → single precision (exact; subnormals, infinities and NaN preserved).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m · 2^-24, exactly representable in f32.
            let v = m as f32 * f32::powi(2.0, -24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Decodes a `.npy` member; `origin` names the file, sample key and member in errors.
pub fn decode_npy(bytes: &[u8], origin: &Origin) -> Result<NdArray> {
    parse_npy(bytes).map_err(|r| origin.error(r))
}

fn parse_npy(bytes: &[u8]) -> std::result::Result<NdArray, String> {
    let rest = bytes.strip_prefix(b"\x93NUMPY").ok_or("not a .npy file (bad magic)")?;
    let (&major, rest) = rest.split_first().ok_or("truncated .npy header")?;
    let (_, rest) = rest.split_first().ok_or("truncated .npy header")?;
    let (hlen, rest) = match major {
        1 => {
            let b = rest.get(..2).ok_or("truncated .npy header")?;
            (usize::from(u16::from_le_bytes([b[0], b[1]])), &rest[2..])
        }
        2 | 3 => {
            let b = rest.get(..4).ok_or("truncated .npy header")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, &rest[4..])
        }
        v => return Err(format!("unsupported .npy format version {v}")),
    };
    let header = rest.get(..hlen).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not UTF-8")?;
    let data = &rest[hlen..];
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let fortran = dict_value(header, "fortran_order").ok_or("the .npy header has no 'fortran_order'")?;
    let shape = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if descr.starts_with('[') || descr.starts_with('(') {
        return Err("structured dtypes are not supported".into());
    }
    if descr.ends_with('O') {
        return Err(format!(
            "object arrays are not supported (pickled Python objects, e.g. ml-4m's SAM instances); convert with {SAM_CONVERTER}"
        ));
    }
    if fortran != "False" {
        return Err("Fortran-order arrays are not supported (save with C order)".into());
    }
    let shape = parse_shape(shape)?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let array_data = parse_data(descr, data, count)?;
    Ok(NdArray { shape, data: array_data })
}

/// The raw text of `'key': value` in numpy's header dict (values are strings, bools or tuples).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else if let Some(q) = rest.strip_prefix('\'') {
        q.find('\'')? + 2
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

fn parse_shape(s: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = s.strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(|| format!("bad shape '{s}'"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse().map_err(|_| format!("bad shape '{s}'")))
        .collect()
}

fn parse_data(descr: &str, data: &[u8], count: usize) -> std::result::Result<ArrayData, String> {
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'>' | b'|' | b'=') => (descr.as_bytes()[0], &descr[1..]),
        _ => (b'=', descr),
    };
    let big = order == b'>';
    let size: usize = code.get(1..).and_then(|s| s.parse().ok()).ok_or_else(|| format!("unsupported dtype '{descr}'"))?;
    let want = count.checked_mul(size).ok_or("shape overflows")?;
    if data.len() != want {
        return Err(format!("dtype '{descr}' and shape need {want} data bytes but the file has {}", data.len()));
    }
    macro_rules! num {
        ($t:ty, $variant:ident) => {{
            const N: usize = std::mem::size_of::<$t>();
            ArrayData::$variant(
                data.chunks_exact(N)
                    .map(|c| {
                        let mut b = [0u8; N];
                        b.copy_from_slice(c);
                        if big { <$t>::from_be_bytes(b) } else { <$t>::from_le_bytes(b) }
                    })
                    .collect(),
            )
        }};
    }
    Ok(match (code.as_bytes()[0], size) {
        (b'b', 1) => ArrayData::Bool(data.iter().map(|&b| b != 0).collect()),
        (b'u', 1) => ArrayData::U8(data.to_vec()),
        (b'i', 1) => ArrayData::I8(data.iter().map(|&b| b as i8).collect()),
        (b'i', 2) => num!(i16, I16),
        (b'u', 2) => num!(u16, U16),
        (b'i', 4) => num!(i32, I32),
        (b'u', 4) => num!(u32, U32),
        (b'i', 8) => num!(i64, I64),
        (b'u', 8) => num!(u64, U64),
        (b'f', 2) => num!(u16, F16),
        (b'f', 4) => num!(f32, F32),
        (b'f', 8) => num!(f64, F64),
        _ => return Err(format!("unsupported dtype '{descr}'")),
    })
}

/// Encodes an array as a version-1 `.npy` file (little endian, C order, 64-byte aligned header).
pub fn encode_npy(array: &NdArray) -> Vec<u8> {
    let shape = match array.shape.as_slice() {
        [d] => format!("({d},)"),
        s => format!("({})", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", array.dtype());
    // numpy pads with spaces so that magic + lengths + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + array.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &array.data {
        ArrayData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        ArrayData::U8(v) => out.extend_from_slice(v),
        ArrayData::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        ArrayData::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        ArrayData::U16(v) | ArrayData::F16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        ArrayData::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        ArrayData::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        ArrayData::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        ArrayData::U64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        ArrayData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        ArrayData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    out
}

/// Decodes a `.npz` member into its arrays, keyed by member name without `.npy`
/// (`emb`, `mask_valid` for ml-4m's t5_caption).
pub fn decode_npz(bytes: &[u8], origin: &Origin) -> Result<BTreeMap<String, NdArray>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| origin.error(format!("not a valid .npz (zip): {e}")))?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).map_err(|e| origin.error(format!("npz entry {i}: {e}")))?;
        let name = file.name().to_string();
        let mut buf = Vec::with_capacity(usize::try_from(file.size()).unwrap_or(0).min(1 << 30));
        file.read_to_end(&mut buf).map_err(|e| origin.error(format!("npz entry '{name}': {e}")))?;
        let array = parse_npy(&buf).map_err(|r| origin.error(format!("npz entry '{name}': {r}")))?;
        out.insert(name.strip_suffix(".npy").unwrap_or(&name).to_string(), array);
    }
    Ok(out)
}

/// Encodes named arrays as an uncompressed `.npz` (like `np.savez`).
pub fn encode_npz(arrays: &BTreeMap<String, NdArray>) -> Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let err = |e: String| crate::error::Error::Encode { what: "npz".into(), reason: e };
    for (name, array) in arrays {
        zip.start_file(format!("{name}.npy"), opts).map_err(|e| err(e.to_string()))?;
        zip.write_all(&encode_npy(array)).map_err(|e| err(e.to_string()))?;
    }
    Ok(zip.finish().map_err(|e| err(e.to_string()))?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin::new("f.tar", "k", "m.npy")
    }

    #[test]
    fn round_trip_all_dtypes() {
        let arrays = [
            NdArray::new(vec![2, 3], ArrayData::I16(vec![-1, 2, 3, 4, 5, i16::MAX])).unwrap(),
            NdArray::new(vec![3], ArrayData::I64(vec![-7, 0, i64::MAX])).unwrap(),
            NdArray::new(vec![1, 2], ArrayData::F32(vec![0.5, -1.25])).unwrap(),
            NdArray::new(vec![2], ArrayData::Bool(vec![true, false])).unwrap(),
            NdArray::new(vec![], ArrayData::F64(vec![3.5])).unwrap(),
            NdArray::new(vec![0, 5], ArrayData::U8(vec![])).unwrap(),
        ];
        for a in arrays {
            let bytes = encode_npy(&a);
            assert_eq!((bytes.len() - a.len() * bytes_per(&a)) % 64, 0);
            assert_eq!(decode_npy(&bytes, &origin()).unwrap(), a);
        }
    }

    fn bytes_per(a: &NdArray) -> usize {
        a.dtype()[2..].parse().unwrap()
    }

    #[test]
    fn reads_numpy_written_headers() {
        // Header text exactly as numpy 1.x writes it for np.save(np.zeros((2,5), '<i8')).
        let mut h = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 5), }".to_string();
        while h.len() < 117 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend((0..10i64).flat_map(|v| v.to_le_bytes()));
        let a = decode_npy(&b, &origin()).unwrap();
        assert_eq!(a.shape, [2, 5]);
        assert_eq!(a.to_i64().unwrap(), (0..10).collect::<Vec<_>>());
        // Version 2 header and big-endian data.
        let h2 = "{'descr': '>f2', 'fortran_order': False, 'shape': (3,), }\n";
        let mut b2 = b"\x93NUMPY\x02\x00".to_vec();
        b2.extend_from_slice(&(h2.len() as u32).to_le_bytes());
        b2.extend_from_slice(h2.as_bytes());
        for h in [0x3c00u16, 0xc000, 0x0001] {
            b2.extend_from_slice(&h.to_be_bytes());
        }
        let a2 = decode_npy(&b2, &origin()).unwrap();
        assert_eq!(a2.to_f32(), [1.0, -2.0, f32::powi(2.0, -24)]);
    }

    #[test]
    fn refuses_object_fortran_and_short_data() {
        let mk = |descr: &str, fortran: &str, data: &[u8]| {
            let h = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': (2,), }}\n");
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(data);
            decode_npy(&b, &origin()).unwrap_err().to_string()
        };
        let e = mk("|O", "False", b"\x80\x02");
        assert!(e.contains("object arrays") && e.contains(SAM_CONVERTER) && e.contains("f.tar") && e.contains("'k'"), "{e}");
        assert!(mk("<i2", "True", &[0; 4]).contains("Fortran"));
        assert!(mk("<i2", "False", &[0; 3]).contains("need 4 data bytes"));
        assert!(mk("<c8", "False", &[0; 16]).contains("unsupported dtype"));
        assert!(decode_npy(b"garbage", &origin()).is_err());
    }

    #[test]
    fn half_precision() {
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x8001), -f32::powi(2.0, -24));
    }
}
