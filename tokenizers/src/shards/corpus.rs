//! A plain-text corpus for C4-style text co-training: JSON lines or one document per line, in
//! one or more files, indexed by byte offset for random access by record index.
//!
//! A record is one non-blank line (lines holding only whitespace are skipped in both formats,
//! so record indices count documents, not lines). JSON lines take the document from a string
//! field (`text` by default, as in C4; ml-4m renames it to `caption`). Plain text takes the
//! line itself without its line ending: one document per line, the layout of most dumps, and
//! the only one that keeps random access a single small read.
//!
//! Memory is bounded by the index stride: the index keeps one (offset, line) checkpoint every
//! `stride` records (16 bytes each), and a read seeks to the checkpoint and skips forward.
//! Compressed files (`.gz`, `.zst`, ...) are refused: they cannot be read at an offset.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use super::files::{DEFAULT_OPEN_FILES, FileCache, io_error, read_at};
use super::pattern::brace_expand;
use crate::error::{Error, Result};

/// How corpus lines are turned into documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextFormat {
    /// One JSON object per line; the document is the string field named here.
    JsonLines {
        /// The field holding the text (`text` for C4).
        field: String,
    },
    /// One document per line.
    Lines,
}

impl TextFormat {
    /// JSON lines with C4's `text` field.
    pub fn c4() -> Self {
        Self::JsonLines { field: "text".into() }
    }
}

/// One document of the corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRecord {
    /// The record index in the corpus.
    pub index: usize,
    /// The file it came from.
    pub file: PathBuf,
    /// Its 1-based line number in that file.
    pub line: u64,
    /// The document text.
    pub text: String,
}

/// An indexed text corpus over one or more files.
#[derive(Debug)]
pub struct TextCorpus {
    pattern: String,
    files: Vec<PathBuf>,
    format: TextFormat,
    stride: usize,
    /// Record index of the first record of each file (one extra entry: the total).
    file_starts: Vec<usize>,
    /// Per file, `(byte offset, 1-based line)` of records 0, stride, 2·stride, ...
    checkpoints: Vec<Vec<(u64, u64)>>,
    cache: FileCache,
}

const COMPRESSED: [&str; 5] = ["gz", "zst", "bz2", "xz", "lz4"];

impl TextCorpus {
    /// Indexes the files matching `pattern` (brace syntax) with one checkpoint per record.
    pub fn open(pattern: &str, format: TextFormat) -> Result<Self> {
        Self::open_with_stride(pattern, format, 1)
    }

    /// Indexes with one checkpoint every `stride` records (≥ 1): less memory, longer reads.
    pub fn open_with_stride(pattern: &str, format: TextFormat, stride: usize) -> Result<Self> {
        let stride = stride.max(1);
        let files: Vec<PathBuf> = brace_expand(pattern)?.into_iter().map(PathBuf::from).collect();
        if let Some(path) = files.iter().find(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| COMPRESSED.contains(&e))) {
            return Err(Error::Layout {
                origin: path.display().to_string(),
                reason: "compressed corpus files cannot be read by offset; decompress them first".into(),
            });
        }
        // One pass per file, files in parallel (C4 comes as 1024 files).
        let indexed: Vec<(usize, Vec<(u64, u64)>)> = files.par_iter().map(|p| index_file(p, stride)).collect::<Result<_>>()?;
        let mut file_starts = vec![0];
        let mut checkpoints = Vec::with_capacity(files.len());
        for (n, cps) in indexed {
            checkpoints.push(cps);
            file_starts.push(file_starts[file_starts.len() - 1] + n);
        }
        Ok(Self {
            pattern: pattern.to_string(),
            files,
            format,
            stride,
            file_starts,
            checkpoints,
            cache: FileCache::new(DEFAULT_OPEN_FILES),
        })
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.file_starts[self.file_starts.len() - 1]
    }

    /// True when the corpus has no documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The corpus files, in pattern order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Reads document `i` by seeking to its checkpoint.
    pub fn read(&self, i: usize) -> Result<TextRecord> {
        if i >= self.len() {
            return Err(Error::IndexOutOfRange { index: i, len: self.len(), origin: self.pattern.clone() });
        }
        let f = self.file_starts.partition_point(|&s| s <= i) - 1;
        let local = i - self.file_starts[f];
        let (offset, line) = self.checkpoints[f][local / self.stride];
        let path = &self.files[f];
        let file = self.cache.get(f, path)?;
        let mut reader = LineAt { file: &file, path, pos: offset, line: line - 1, buf: Vec::new() };
        let mut skip = local % self.stride;
        loop {
            let (line_no, bytes) = reader.next_line()?.ok_or_else(|| Error::TextRecord {
                file: path.display().to_string(),
                line: reader.line,
                reason: "file is shorter than when it was indexed".into(),
            })?;
            if is_blank(&bytes) {
                continue;
            }
            if skip == 0 {
                return Ok(TextRecord {
                    index: i,
                    file: path.clone(),
                    line: line_no,
                    text: parse_line(&bytes, &self.format, path, line_no)?,
                });
            }
            skip -= 1;
        }
    }

    /// Iterates over all documents in order with buffered sequential reads.
    pub fn iter(&self) -> TextIter<'_> {
        TextIter { corpus: self, file: 0, reader: None, line: 0, index: 0 }
    }
}

/// Sequential iterator over a [`TextCorpus`]; see [`TextCorpus::iter`].
pub struct TextIter<'a> {
    corpus: &'a TextCorpus,
    file: usize,
    reader: Option<BufReader<File>>,
    line: u64,
    index: usize,
}

impl Iterator for TextIter<'_> {
    type Item = Result<TextRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = Vec::new();
        while self.file < self.corpus.files.len() {
            let path = &self.corpus.files[self.file];
            let reader = match &mut self.reader {
                Some(r) => r,
                None => match File::open(path) {
                    Ok(f) => self.reader.insert(BufReader::with_capacity(1 << 20, f)),
                    Err(source) => {
                        self.file = self.corpus.files.len();
                        return Some(Err(io_error(path, source)));
                    }
                },
            };
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    self.file += 1;
                    self.reader = None;
                    self.line = 0;
                }
                Ok(_) => {
                    self.line += 1;
                    if is_blank(&buf) {
                        continue;
                    }
                    let index = self.index;
                    self.index += 1;
                    let text = parse_line(trim_eol(&buf), &self.corpus.format, path, self.line);
                    return Some(text.map(|text| TextRecord { index, file: path.clone(), line: self.line, text }));
                }
                Err(source) => {
                    self.file = self.corpus.files.len();
                    return Some(Err(io_error(path, source)));
                }
            }
        }
        None
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn parse_line(bytes: &[u8], format: &TextFormat, path: &Path, line: u64) -> Result<String> {
    let err = |reason: String| Error::TextRecord { file: path.display().to_string(), line, reason };
    match format {
        TextFormat::Lines => String::from_utf8(bytes.to_vec()).map_err(|e| err(format!("not UTF-8: {e}"))),
        TextFormat::JsonLines { field } => {
            let v: Value = serde_json::from_slice(bytes).map_err(|e| err(format!("malformed JSON: {e}")))?;
            match v.get(field) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(err(format!("field '{field}' is not a string but {other}"))),
                None => Err(err(format!("no field '{field}'"))),
            }
        }
    }
}

/// One pass over `path`: the record count and a checkpoint every `stride` records.
fn index_file(path: &Path, stride: usize) -> Result<(usize, Vec<(u64, u64)>)> {
    let file = File::open(path).map_err(|source| io_error(path, source))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (mut offset, mut line, mut count) = (0u64, 0u64, 0usize);
    let mut checkpoints = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|source| io_error(path, source))?;
        if n == 0 {
            break;
        }
        line += 1;
        if !is_blank(&buf) {
            if count % stride == 0 {
                checkpoints.push((offset, line));
            }
            count += 1;
        }
        offset += n as u64;
    }
    checkpoints.shrink_to_fit();
    Ok((count, checkpoints))
}

/// Reads lines from a byte offset with positional reads (the file handle is shared).
struct LineAt<'a> {
    file: &'a File,
    path: &'a Path,
    pos: u64,
    line: u64,
    buf: Vec<u8>,
}

impl LineAt<'_> {
    /// The next line (1-based number, bytes without line ending), or `None` at end of file.
    fn next_line(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut chunk = std::mem::take(&mut self.buf);
        chunk.resize(64 * 1024, 0);
        loop {
            let n = read_at(self.file, self.path, &mut chunk, self.pos)?;
            if n == 0 {
                self.buf = chunk;
                if out.is_empty() {
                    return Ok(None);
                }
                self.line += 1;
                return Ok(Some((self.line, out)));
            }
            match chunk[..n].iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    out.extend_from_slice(&chunk[..nl]);
                    self.pos += nl as u64 + 1;
                    self.buf = chunk;
                    self.line += 1;
                    let trimmed = trim_eol(&out).len();
                    out.truncate(trimmed);
                    return Ok(Some((self.line, out)));
                }
                None => {
                    out.extend_from_slice(&chunk[..n]);
                    self.pos += n as u64;
                }
            }
        }
    }
}
