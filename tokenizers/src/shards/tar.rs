//! Tar shards: a header scanner that indexes members for random access, and a writer.
//!
//! The scanner reads only the 512-byte headers (seeking over member data), so indexing a shard
//! costs one small read per member. It understands ustar, GNU (`L` long names) and pax (`x`
//! records for `path` and `size`) as written by Python's `tarfile`, GNU tar and webdataset.
//! Members are grouped into samples the way webdataset's `tarfile_samples` does: the key is
//! the path up to the first `.` of the file name, the suffix (lower-cased) is the rest, and a
//! new sample starts whenever the key changes. Non-regular entries, names without a dot and
//! `__meta__`-style names are skipped, as in webdataset.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::files::{io_error, read_at, temp_sibling};
use crate::error::{Error, Result};

const BLOCK: u64 = 512;

/// One member of a sample: its suffix and where its bytes lie in the tar file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    /// The member name after the sample key and its dot, lower-cased (`jpg`, `rgb.jpg`).
    pub suffix: String,
    /// The full member name in the tar (for error messages).
    pub name: String,
    /// Byte offset of the member's data in the tar file.
    pub offset: u64,
    /// Length of the member's data in bytes.
    pub len: u64,
}

/// One sample of a tar: consecutive members sharing a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarSample {
    /// The sample key (`000123`, or `dir/000123` for members in directories).
    pub key: String,
    /// The sample's members, in tar order.
    pub members: Vec<TarMember>,
}

/// The sample index of one tar file (offsets only; no member data is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarIndex {
    /// The tar file.
    pub path: PathBuf,
    /// Its samples, in tar order.
    pub samples: Vec<TarSample>,
}

impl TarIndex {
    /// Scans the headers of the tar at `path`; truncated or corrupt tars are errors naming the
    /// file, the byte offset and the member.
    pub fn scan(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| io_error(path, source))?;
        let file_len = file.metadata().map_err(|source| io_error(path, source))?.len();
        let mut samples: Vec<TarSample> = Vec::new();
        for entry in Scanner::new(&file, path, file_len) {
            let entry = entry?;
            let Some((key, suffix)) = split_key(&entry.name) else { continue };
            let member = TarMember { suffix, name: entry.name.clone(), offset: entry.offset, len: entry.len };
            match samples.last_mut() {
                Some(s) if s.key == key => {
                    if s.members.iter().any(|m| m.suffix == member.suffix) {
                        return Err(tar_error(path, entry.header_offset, &entry.name, "duplicate member in one sample"));
                    }
                    s.members.push(member);
                }
                _ => samples.push(TarSample { key: key.to_string(), members: vec![member] }),
            }
        }
        Ok(Self { path: path.to_path_buf(), samples })
    }

    /// Reads the bytes of `member` (one of this index's members) from the tar file.
    pub fn read_member(&self, member: &TarMember) -> Result<Vec<u8>> {
        let file = File::open(&self.path).map_err(|source| io_error(&self.path, source))?;
        let len = usize::try_from(member.len).map_err(|_| tar_error(&self.path, member.offset, &member.name, "member too large"))?;
        super::files::read_exact_at(&file, &self.path, member.offset, len)
    }
}

/// webdataset's `base_plus_ext`: `(key, suffix)` split at the first dot of the file name, or
/// `None` for names webdataset skips (no dot, `__x__` metadata files).
fn split_key(name: &str) -> Option<(&str, String)> {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    let base = &name[base_start..];
    if base.starts_with("__") && base.ends_with("__") && !name.contains('/') {
        return None;
    }
    let dot = base.find('.')?;
    if dot == 0 {
        return None;
    }
    Some((&name[..base_start + dot], base[dot + 1..].to_lowercase()))
}

fn tar_error(path: &Path, offset: u64, member: &str, reason: impl Into<String>) -> Error {
    // A damaged header's name is arbitrary bytes: escaped, it cannot garble the terminal.
    Error::Tar { file: path.display().to_string(), offset, member: member.escape_debug().to_string(), reason: reason.into() }
}

/// A regular-file entry found by the scanner.
struct Entry {
    name: String,
    header_offset: u64,
    offset: u64,
    len: u64,
}

/// Iterates over the regular-file entries of a tar, resolving long-name extensions.
struct Scanner<'a> {
    file: &'a File,
    path: &'a Path,
    file_len: u64,
    pos: u64,
    done: bool,
}

impl<'a> Scanner<'a> {
    fn new(file: &'a File, path: &'a Path, file_len: u64) -> Self {
        Self { file, path, file_len, pos: 0, done: false }
    }

    fn err(&self, offset: u64, member: &str, reason: impl Into<String>) -> Error {
        tar_error(self.path, offset, member, reason)
    }

    fn read_block(&self, offset: u64, member: &str) -> Result<Option<[u8; 512]>> {
        let mut block = [0u8; 512];
        let n = read_at(self.file, self.path, &mut block, offset)?;
        if n == 0 && offset >= self.file_len {
            // Like Python's tarfile, accept an archive that ends without the zero blocks.
            return Ok(None);
        }
        if n < block.len() {
            // pread may return short counts on some filesystems; retry once for the rest.
            let m = read_at(self.file, self.path, &mut block[n..], offset + n as u64)?;
            if n + m < block.len() {
                return Err(self.err(offset, member, format!("truncated header: only {} of 512 bytes", n + m)));
            }
        }
        Ok(Some(block))
    }

    fn read_data(&self, offset: u64, len: u64, member: &str) -> Result<Vec<u8>> {
        if len > 1 << 24 {
            return Err(self.err(offset, member, format!("extended header of {len} bytes is implausibly large")));
        }
        self.check_fits(offset, len, member)?;
        super::files::read_exact_at(self.file, self.path, offset, len as usize)
    }

    fn check_fits(&self, offset: u64, len: u64, member: &str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.file_len => Ok(()),
            _ => Err(self.err(
                offset,
                member,
                format!("truncated: member data of {len} bytes runs past the end of the file ({} bytes)", self.file_len),
            )),
        }
    }

    fn next_entry(&mut self) -> Result<Option<Entry>> {
        let mut long_name: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let header_offset = self.pos;
            let pending = long_name.clone().unwrap_or_default();
            let Some(block) = self.read_block(header_offset, &pending)? else { return Ok(None) };
            if block.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let raw_name = header_name(&block);
            let shown = if pending.is_empty() { raw_name.clone() } else { pending.clone() };
            verify_checksum(&block).map_err(|r| self.err(header_offset, &shown, r))?;
            let size = parse_number(&block[124..136]).map_err(|r| self.err(header_offset, &shown, format!("size field: {r}")))?;
            let data_offset = header_offset + BLOCK;
            let typeflag = block[156];
            let size = match typeflag {
                b'0' | b'\0' | b'7' => pax_size.take().unwrap_or(size),
                _ => size,
            };
            let padded = size.div_ceil(BLOCK).checked_mul(BLOCK).ok_or_else(|| self.err(header_offset, &shown, "size overflows"))?;
            self.pos = data_offset.checked_add(padded).ok_or_else(|| self.err(header_offset, &shown, "size overflows"))?;
            match typeflag {
                b'0' | b'\0' | b'7' => {
                    self.check_fits(data_offset, size, &shown)?;
                    return Ok(Some(Entry { name: shown, header_offset, offset: data_offset, len: size }));
                }
                b'L' => {
                    let data = self.read_data(data_offset, size, &shown)?;
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    long_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                }
                b'x' => {
                    let data = self.read_data(data_offset, size, &shown)?;
                    let (path, psize) = parse_pax(&data).map_err(|r| self.err(header_offset, &shown, format!("pax header: {r}")))?;
                    if path.is_some() {
                        long_name = path;
                    }
                    pax_size = psize.or(pax_size);
                }
                b'S' => return Err(self.err(header_offset, &shown, "GNU sparse members are not supported")),
                _ => {
                    // Directories, links, devices, global pax headers: not sample data.
                    self.check_fits(data_offset, size, &shown)?;
                    long_name = None;
                    pax_size = None;
                }
            }
        }
    }
}

impl Iterator for Scanner<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_entry();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r.transpose()
    }
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The name of a header, with the ustar prefix when the magic says ustar (GNU reuses that field).
fn header_name(block: &[u8; 512]) -> String {
    let name = cstr(&block[0..100]);
    if &block[257..263] == b"ustar\0" {
        let prefix = cstr(&block[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

fn verify_checksum(block: &[u8; 512]) -> std::result::Result<(), String> {
    let stored = parse_number(&block[148..156]).map_err(|r| format!("checksum field: {r}"))?;
    let unsigned: u64 = block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
    // Some historic writers summed signed bytes; accept either, as tar implementations do.
    let signed: i64 = block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { i64::from(b as i8) }).sum();
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(format!("header checksum mismatch (stored {stored}, computed {unsigned}): not a tar or corrupt"))
    }
}

/// An octal numeric field (NUL/space padded) or GNU base-256 (high bit of the first byte).
fn parse_number(field: &[u8]) -> std::result::Result<u64, String> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return Err("negative base-256 value".into());
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v.checked_mul(256).and_then(|v| v.checked_add(u64::from(b))).ok_or("base-256 value overflows")?;
        }
        return Ok(v);
    }
    let text: String = field.iter().map(|&b| b as char).collect();
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(digits, 8).map_err(|_| format!("'{}' is not an octal number", digits.escape_default()))
}

/// The `path` and `size` records of a pax extended header (`"<len> <key>=<value>\n"`...).
fn parse_pax(data: &[u8]) -> std::result::Result<(Option<String>, Option<u64>), String> {
    let (mut path, mut size) = (None, None);
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let sp = rest.iter().position(|&b| b == b' ').ok_or("record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse().ok()).ok_or("bad record length")?;
        if len <= sp + 1 || len > rest.len() {
            return Err("record length out of range".into());
        }
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match &record[..eq] {
                b"path" => path = Some(value),
                b"size" => size = Some(value.parse().map_err(|_| format!("bad size '{value}'"))?),
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    Ok((path, size))
}

/// Writes a tar file atomically (a temporary sibling, renamed into place by [`Self::finish`]).
///
/// Headers are ustar with mtime 0 and mode 0644 so fixtures are byte-for-byte reproducible;
/// names longer than 100 bytes get a GNU `L` long-name header.
pub struct TarWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
}

impl TarWriter {
    /// Starts writing the tar that will appear at `path` once finished.
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = temp_sibling(path);
        let file = File::create(&tmp).map_err(|source| io_error(&tmp, source))?;
        Ok(Self { path: path.to_path_buf(), tmp, out: BufWriter::new(file) })
    }

    /// Appends a regular-file member `name` holding `data`.
    pub fn append(&mut self, name: &str, data: &[u8]) -> Result<()> {
        if name.is_empty() || name.contains('\0') {
            return Err(tar_error(&self.path, 0, name, "member names must be non-empty and contain no NUL"));
        }
        if name.len() > 100 {
            let mut long = name.as_bytes().to_vec();
            long.push(0);
            self.entry(b"././@LongLink", b'L', &long)?;
        }
        self.entry(&name.as_bytes()[..name.len().min(100)], b'0', data)
    }

    /// Appends all members of one sample as `<key>.<suffix>`.
    pub fn append_sample(&mut self, key: &str, members: &[(&str, &[u8])]) -> Result<()> {
        for (suffix, data) in members {
            self.append(&format!("{key}.{suffix}"), data)?;
        }
        Ok(())
    }

    fn entry(&mut self, name: &[u8], typeflag: u8, data: &[u8]) -> Result<()> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        let size = data.len() as u64;
        if size >= 1 << 33 {
            // 11 octal digits hold < 8 GiB; use GNU base-256 beyond that.
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        } else {
            h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        }
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        let w = &mut self.out;
        w.write_all(&h)
            .and_then(|_| w.write_all(data))
            .and_then(|_| w.write_all(&vec![0u8; pad as usize]))
            .map_err(|source| io_error(&self.tmp, source))
    }

    /// Writes the end-of-archive blocks and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        // Two zero blocks end the archive; pad to tar's 10 KiB record like Python's tarfile.
        self.out.write_all(&[0u8; 1024]).map_err(|source| io_error(&self.tmp, source))?;
        let file = self.out.into_inner().map_err(|e| io_error(&self.tmp, e.into_error()))?;
        let len = file.metadata().map_err(|source| io_error(&self.tmp, source))?.len();
        let rec = 10240;
        let pad = (rec - len % rec) % rec;
        let mut file = file;
        file.write_all(&vec![0u8; pad as usize]).and_then(|_| file.sync_all()).map_err(|source| io_error(&self.tmp, source))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|source| io_error(&self.path, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_garbage_member_name_is_escaped_in_errors() {
        let e = tar_error(Path::new("rgb/shard-0.tar"), 512, "x\u{1b}[2J\u{7}\u{0}y.png", "truncated");
        let msg = e.to_string();
        assert!(msg.contains(r"x\u{1b}[2J\u{7}\0y.png"), "{msg}");
        assert!(!msg.contains('\u{1b}') && !msg.contains('\u{0}'), "{msg}");
    }

    #[test]
    fn split_key_follows_webdataset() {
        assert_eq!(split_key("000123.jpg"), Some(("000123", "jpg".into())));
        assert_eq!(split_key("000123.rgb.JPG"), Some(("000123", "rgb.jpg".into())));
        assert_eq!(split_key("a.b/000123.json"), Some(("a.b/000123", "json".into())));
        assert_eq!(split_key("noext"), None);
        assert_eq!(split_key("__meta__"), None);
    }

    #[test]
    fn numbers_and_pax() {
        assert_eq!(parse_number(b"00000001750\0"), Ok(1000));
        assert_eq!(parse_number(b"     17 \0"), Ok(15));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 5;
        assert_eq!(parse_number(&b256), Ok(5));
        assert!(parse_number(b"0009\0").is_err());
        let pax = b"31 path=dir/very/long/name.npy\n13 size=1234\n";
        assert_eq!(parse_pax(pax), Ok((Some("dir/very/long/name.npy".into()), Some(1234))));
    }

    #[test]
    fn long_names_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar");
        let long = format!("{}/000001.json", "d".repeat(120));
        let mut w = TarWriter::create(&path).unwrap();
        w.append(&long, b"{}").unwrap();
        w.append("000002.txt", b"hi").unwrap();
        w.finish().unwrap();
        let idx = TarIndex::scan(&path).unwrap();
        assert_eq!(idx.samples.len(), 2);
        assert_eq!(idx.samples[0].members[0].name, long);
        assert_eq!(idx.read_member(&idx.samples[1].members[0]).unwrap(), b"hi");
    }
}
