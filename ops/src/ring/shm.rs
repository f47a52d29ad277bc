//! Same-host payload path: a file in `/dev/shm` per ring link, mapped shared by both ends
//! (`super::mapping`, copies only), while headers and flow control stay on the TCP connection.
//! A user-space copy through shared pages costs far less than pushing the bytes through the
//! loopback TCP stack (or `pread`/`pwrite` on tmpfs, which the first version used).
//!
//! The file has `SLOTS` slots of one chunk each, used round robin. The sender writes a payload
//! into the next slot and then sends the frame header on TCP; the receiver, after the header,
//! reads the slot and writes one credit byte back on the same TCP connection (TCP is full
//! duplex; nothing else travels in that direction). The sender waits for a credit before reusing
//! a slot. Failure handling is unchanged: every wait is a blocking socket read that the guard
//! can interrupt.
//!
//! Setup, after the authenticated handshake: each rank creates its outgoing file (mode 0600,
//! unique name), sends the path to its right neighbour, which opens it and answers 1 (or 0 if
//! it cannot, e.g. another host: that link then carries payloads on TCP); the creator then
//! unlinks the file, so nothing is left behind even if a process dies.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use super::mapping::Mapping;

/// Slots per link file.
pub(crate) const SLOTS: usize = 8;
/// Where the files live (tmpfs on Linux).
pub(crate) const SHM_DIR: &str = "/dev/shm";
/// Longest path accepted from the neighbour.
const MAX_PATH: usize = 512;

/// Sender side of a link file.
pub(crate) struct Outbox {
    map: Mapping,
    slot_bytes: usize,
    next: usize,
    credits: usize,
}

impl Outbox {
    /// Copies `bytes` (at most one slot) into the next free slot, waiting for a credit from the
    /// receiver on `right` if all slots are in use.
    pub fn put(&mut self, mut right: &TcpStream, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > self.slot_bytes {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "payload larger than a shared-memory slot"));
        }
        let mut credits = [0u8; SLOTS];
        while self.credits == 0 {
            match right.read(&mut credits)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.credits += n,
            }
        }
        self.map.write(self.next * self.slot_bytes, bytes)?;
        self.next = (self.next + 1) % SLOTS;
        self.credits -= 1;
        Ok(())
    }
}

/// Receiver side of a link file.
pub(crate) struct Inbox {
    map: Mapping,
    slot_bytes: usize,
    next: usize,
}

impl Inbox {
    /// Copies the next slot into `dst` (the length announced by the frame header) and returns
    /// the slot to the sender on `left`.
    pub fn take(&mut self, mut left: &TcpStream, dst: &mut [u8]) -> io::Result<()> {
        if dst.len() > self.slot_bytes {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "frame larger than a shared-memory slot"));
        }
        self.map.read(self.next * self.slot_bytes, dst)?;
        self.next = (self.next + 1) % SLOTS;
        left.write_all(&[1])
    }
}

/// Sets up the link files with both neighbours; `None` for a link that stays on TCP (disabled
/// here or at the neighbour, or the file cannot be created or opened).
pub(crate) fn negotiate(
    left: &TcpStream,
    right: &TcpStream,
    slot_bytes: usize,
    enabled: bool,
    timeout: Duration,
) -> io::Result<(Option<Outbox>, Option<Inbox>)> {
    for s in [left, right] {
        s.set_read_timeout(Some(timeout))?;
    }
    let mut right_w = right;
    let mut left_rw = left;
    let created = if enabled { create(slot_bytes).ok() } else { None };
    let path = created.as_ref().map(|(p, _)| p.to_string_lossy().into_owned()).unwrap_or_default();
    right_w.write_all(&(path.len() as u16).to_le_bytes())?;
    right_w.write_all(path.as_bytes())?;

    let mut len = [0u8; 2];
    left_rw.read_exact(&mut len)?;
    let len = usize::from(u16::from_le_bytes(len));
    if len > MAX_PATH {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "shared-memory path too long"));
    }
    let mut theirs = vec![0u8; len];
    left_rw.read_exact(&mut theirs)?;
    let inbox = if enabled { open(&theirs, slot_bytes) } else { None };
    left_rw.write_all(&[u8::from(inbox.is_some())])?;

    let mut answer = [0u8; 1];
    let mut right_r = right;
    right_r.read_exact(&mut answer)?;
    let outbox = created.and_then(|(path, map)| {
        // Once the neighbour has it mapped the name is no longer needed.
        let _ = std::fs::remove_file(&path);
        (answer[0] == 1).then_some(Outbox { map, slot_bytes, next: 0, credits: SLOTS })
    });
    for s in [left, right] {
        s.set_read_timeout(None)?;
    }
    Ok((outbox, inbox))
}

/// Creates and maps a fresh link file; the name is unlinked again on failure.
fn create(slot_bytes: usize) -> io::Result<(PathBuf, Mapping)> {
    create_mapped("", SLOTS * slot_bytes, |_| Ok(()))
}

/// Creates a fresh `len`-byte file in the shared-memory directory (mode 0600, a unique name
/// `tessera-ops-PID-{tag}RANDOM`), maps it writable and runs `init` on the mapping; the name
/// is unlinked again if any of that fails.
///
/// The pages are allocated up front: a sparse file on a full tmpfs (Docker's default
/// `/dev/shm` is 64 MiB) would map fine and then kill the process with SIGBUS at the first
/// write past the limit. Allocated, it fails here with ENOSPC and the caller falls back.
pub(crate) fn create_mapped(tag: &str, len: usize, init: impl FnOnce(&mut Mapping) -> io::Result<()>) -> io::Result<(PathBuf, Mapping)> {
    let name = format!("tessera-ops-{}-{tag}{:016x}", std::process::id(), rand::random::<u64>());
    let path = PathBuf::from(SHM_DIR).join(name);
    let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
    let size = i64::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "shared-memory file too large"))?;
    let mapped = nix::fcntl::posix_fallocate(&file, 0, size)
        .map_err(io::Error::from)
        .and_then(|()| Mapping::new(&file, len, true))
        .and_then(|mut map| init(&mut map).map(|()| map));
    match mapped {
        Ok(map) => Ok((path, map)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

fn open(path: &[u8], slot_bytes: usize) -> Option<Inbox> {
    let path = std::str::from_utf8(path).ok().filter(|p| !p.is_empty())?;
    // Only files in the shared-memory directory with our naming: the neighbour is authenticated,
    // but there is no reason to open anything else.
    let p = PathBuf::from(path);
    if p.parent() != Some(std::path::Path::new(SHM_DIR)) || !p.file_name()?.to_str()?.starts_with("tessera-ops-") {
        return None;
    }
    let file = File::open(&p).ok()?;
    let map = Mapping::new(&file, SLOTS * slot_bytes, false).ok()?;
    Some(Inbox { map, slot_bytes, next: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files of this process with `tag` left in the shared-memory directory.
    fn leftovers(tag: &str) -> usize {
        let prefix = format!("tessera-ops-{}-{tag}", std::process::id());
        std::fs::read_dir(SHM_DIR).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(&prefix)).count()
    }

    #[test]
    fn a_file_larger_than_the_shared_memory_fails_at_creation_not_at_first_write() {
        let fs = nix::sys::statvfs::statvfs(SHM_DIR).unwrap();
        let capacity = fs.blocks() as u64 * fs.fragment_size() as u64;
        if capacity == 0 {
            eprintln!("SKIPPED: {SHM_DIR} has no size limit");
            return;
        }
        // Sparse, this would map fine and fault with SIGBUS once written past the limit.
        let err = create_mapped("toolarge-", 2 * capacity as usize, |_| Ok(())).err().expect("no room for it");
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
        assert_eq!(leftovers("toolarge-"), 0, "the name is unlinked again");
        let (path, mut map) = create_mapped("fits-", 1 << 20, |m| m.write(0, b"ok")).unwrap();
        map.write((1 << 20) - 2, b"ok").unwrap();
        std::fs::remove_file(path).unwrap();
    }
}
