//! The crate's only `unsafe` code: two bounds-checked copies into and out of a shared memory
//! mapping of a link file (no Rust reference into the shared pages is ever created).
//!
//! Why: copying through the mapping is a plain user-space memcpy, about twice the speed of
//! `pread`/`pwrite` on tmpfs, which pay a page-cache lookup per 4 KiB in the kernel.
//!
//! Exclusive access to a slot is a protocol property, not a type-system one: the writer fills a
//! slot only while it holds the slot's credit, and the reader reads it only after the frame
//! header (sent after the copy, over TCP; the syscalls order the accesses) and before returning
//! the credit. An authenticated peer that broke the protocol could at worst make us read
//! garbage bytes (any bit pattern is a valid element), never touch memory outside the mapping.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use memmap2::{MmapOptions, MmapRaw};

/// A `MAP_SHARED` mapping of the first `len` bytes of a file. The mapping itself (creation,
/// unmapping, moving between threads) is `memmap2::MmapRaw`'s; this type only adds the
/// bounds-checked copies, so it needs no `Send` claim of its own.
pub(crate) struct Mapping {
    raw: MmapRaw,
    len: usize,
    writable: bool,
}

impl Mapping {
    /// Maps `len` bytes of `file` (which must be at least that long), read-write or read-only.
    pub fn new(file: &File, len: usize, writable: bool) -> io::Result<Self> {
        if len == 0 || file.metadata()?.len() < len as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "file shorter than the mapping"));
        }
        let mut opts = MmapOptions::new();
        opts.len(len);
        let raw = if writable { opts.map_raw(file)? } else { opts.map_raw_read_only(file)? };
        Ok(Mapping { raw, len, writable })
    }

    fn check(&self, offset: usize, n: usize) -> io::Result<()> {
        match offset.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "copy outside the shared mapping")),
        }
    }

    /// Copies `src` into the mapping at `offset`.
    pub fn write(&mut self, offset: usize, src: &[u8]) -> io::Result<()> {
        self.check(offset, src.len())?;
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only mapping"));
        }
        // SAFETY: `offset + src.len() <= len` (checked), the mapping is writable, and `src` is
        // ordinary process memory, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.raw.as_mut_ptr().add(offset), src.len()) };
        Ok(())
    }

    /// Copies `dst.len()` bytes at `offset` out of the mapping.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        self.check(offset, dst.len())?;
        // SAFETY: `offset + dst.len() <= len` (checked) and the mapping is readable; `dst` is
        // ordinary process memory, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(self.raw.as_ptr().add(offset), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_of_one_file_see_each_others_bytes_and_stay_in_bounds() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        let mut writer = Mapping::new(&file, 4096, true).unwrap();
        let reader = Mapping::new(&file, 4096, false).unwrap();
        writer.write(4000, &[7u8; 96]).unwrap();
        let mut out = [0u8; 96];
        reader.read(4000, &mut out).unwrap();
        assert_eq!(out, [7u8; 96]);
        assert!(writer.write(4001, &[0u8; 96]).is_err());
        assert!(reader.read(usize::MAX, &mut out).is_err());
        assert!(Mapping::new(&file, 8192, false).is_err(), "longer than the file");
        let mut ro = Mapping::new(&file, 4096, false).unwrap();
        assert!(ro.write(0, &[1]).is_err());
    }
}
