//! Same-host all-gather through an *arena*: one `/dev/shm` file per rank, written only by its
//! owner and mapped read-only by every other rank of the ring.
//!
//! Why: the ring all-gather moves every shard `n - 1` hops, each hop a copy into a link file
//! and a copy out of it, on top of the copy into the caller's buffer. Through the arena every
//! rank copies its shard in once and every other rank copies it out once: for three ranks 20%
//! fewer bytes touched, no per-chunk frames and credits, and no sender thread, which matters
//! when ranks share few cores. The ring itself still carries the synchronisation.
//!
//! A call runs in *rounds*; round `k` uses half `k mod 2` of every arena, each half holding one
//! window of `half` bytes of every shard. In a round each rank copies its window in, then the
//! ranks run a *token round* (an all-gather of the round number over the ring), then each rank
//! copies the others' windows out. Why two halves suffice: a rank writes half `h` again in round
//! `k + 2` only after it completed token round `k + 1`, which every rank enters only after
//! copying out round `k`. The copies are ordered by the sockets' syscalls, as in `super::shm`.
//!
//! Setup, after the link files: every rank creates its arena (mode 0600, unique name, a random
//! nonce in its first bytes) and the ranks all-gather *records* (half size, nonce, path). A rank
//! maps every other arena whose nonce matches; the ranks agree (all-reduce of a count) whether every
//! rank mapped every arena, and then every owner unlinks its file. Any failure (another host,
//! the feature off at some rank, different half sizes) leaves every rank on the ring algorithm.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::element::Element;
use crate::shard::shard_range;

use super::mapping::Mapping;
use super::shm::SHM_DIR;
/// Bytes before the two halves: the nonce, padded to a cache line.
const HEADER_BYTES: usize = 64;
/// Longest path a record carries.
const MAX_PATH: usize = 256;
/// `i64` words of one record: half size, two nonce words, path length, path bytes.
pub(crate) const RECORD_WORDS: usize = 4 + MAX_PATH / 8;

/// This rank's arena before the ranks have agreed to use it.
pub(crate) struct Offer {
    /// The file's name, unlinked when the offer is dropped or accepted.
    path: Option<PathBuf>,
    /// Its writable mapping; `None` when disabled or creation failed.
    map: Option<Mapping>,
    half: usize,
}

/// The other ranks' arenas, mapped read-only, by rank (`None` at this rank).
pub(crate) type Theirs = Vec<Option<Mapping>>;

impl Offer {
    /// Creates this rank's arena of two `half`-byte buffers (nothing when `half` is 0).
    pub fn new(half: usize) -> Self {
        let (path, map) = match (half > 0).then(|| create(half)) {
            Some(Ok((p, m))) => (Some(p), Some(m)),
            _ => (None, None),
        };
        Offer { path, map, half }
    }

    /// The record the other ranks need to map this arena (all zeros when there is none).
    pub fn record(&self) -> Vec<i64> {
        let mut words = vec![0i64; RECORD_WORDS];
        let (Some(path), Some(map)) = (&self.path, &self.map) else { return words };
        let path = path.to_string_lossy();
        let mut nonce = [0u8; 16];
        if path.len() > MAX_PATH || map.read(0, &mut nonce).is_err() {
            return words;
        }
        words[0] = self.half as i64;
        words[1] = i64::from_le_bytes(nonce[..8].try_into().unwrap_or_default());
        words[2] = i64::from_le_bytes(nonce[8..].try_into().unwrap_or_default());
        words[3] = path.len() as i64;
        let mut bytes = [0u8; MAX_PATH];
        bytes[..path.len()].copy_from_slice(path.as_bytes());
        for (w, b) in words[4..].iter_mut().zip(bytes.chunks_exact(8)) {
            *w = i64::from_le_bytes(b.try_into().unwrap_or_default());
        }
        words
    }

    /// Maps every other rank's arena from the gathered `records` (rank-major); `None` unless
    /// every rank offered one of the same half size and each opened file carries its nonce.
    pub fn accept(&self, records: &[i64], rank: usize, world: usize) -> Option<Theirs> {
        self.map.as_ref()?;
        let mut theirs = Vec::with_capacity(world);
        for (q, rec) in records.chunks_exact(RECORD_WORDS).enumerate().take(world) {
            if q == rank {
                theirs.push(None);
                continue;
            }
            if rec[0] as usize != self.half {
                return None;
            }
            theirs.push(Some(open(rec, self.half)?));
        }
        (theirs.len() == world).then_some(theirs)
    }

    /// The arena, once every rank has accepted every other's; the file's name goes.
    pub fn into_arena(mut self, theirs: Theirs) -> Option<Arena> {
        let mine = self.map.take()?;
        Some(Arena { mine, theirs, half: self.half, round: 0 })
    }
}

impl Drop for Offer {
    /// The name is only needed until every rank has mapped the file (or given up).
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Every rank's arena mapped: this rank's writable, the others' read-only.
pub(crate) struct Arena {
    mine: Mapping,
    /// By rank; `None` at this rank.
    theirs: Theirs,
    half: usize,
    /// Rounds run so far (the same on every rank: calls and their sizes are).
    round: u64,
}

/// One round of an arena all-gather: which elements of every shard it moves.
pub(crate) struct Round {
    /// The round number, also the token every rank sends.
    pub number: u64,
    /// Byte offset of this round's half in every arena.
    offset: usize,
    /// Element range of the output per rank.
    windows: Vec<Range<usize>>,
}

impl Arena {
    /// The rounds of an all-gather of `len` elements of `T` over `world` ranks (none when
    /// `len` is 0); advances the round counter.
    pub fn plan<T: Element>(&mut self, len: usize, world: usize) -> Vec<Round> {
        let per = (self.half / size_of::<T>()).max(1);
        let segs: Vec<Range<usize>> = (0..world).map(|q| shard_range(len, world, q)).collect();
        let longest = segs.iter().map(|s| s.len()).max().unwrap_or(0);
        (0..longest.div_ceil(per))
            .map(|r| {
                let number = self.round;
                self.round += 1;
                let windows = segs
                    .iter()
                    .map(|s| {
                        let a = (s.start + r * per).min(s.end);
                        a..(a + per).min(s.end)
                    })
                    .collect();
                Round { number, offset: HEADER_BYTES + (number % 2) as usize * self.half, windows }
            })
            .collect()
    }

    /// Copies this rank's window of `round` from `output` (where its shard already is) in.
    pub fn put<T: Element>(&mut self, round: &Round, rank: usize, output: &[T]) -> io::Result<()> {
        self.mine.write(round.offset, bytemuck::cast_slice(&output[round.windows[rank].clone()]))
    }

    /// Copies every other rank's window of `round` out into `output`.
    pub fn take<T: Element>(&self, round: &Round, output: &mut [T]) -> io::Result<()> {
        for (q, map) in self.theirs.iter().enumerate() {
            if let Some(map) = map {
                map.read(round.offset, bytemuck::cast_slice_mut(&mut output[round.windows[q].clone()]))?;
            }
        }
        Ok(())
    }
}

/// Creates and maps a fresh arena file with a random nonce; the name is unlinked on failure.
fn create(half: usize) -> io::Result<(PathBuf, Mapping)> {
    super::shm::create_mapped("arena-", HEADER_BYTES + 2 * half, |map| map.write(0, &rand::random::<[u8; 16]>()))
}

/// Maps the arena a record names, read-only, if it is one of ours and carries the nonce.
fn open(rec: &[i64], half: usize) -> Option<Mapping> {
    let len = usize::try_from(rec[3]).ok().filter(|&n| n > 0 && n <= MAX_PATH)?;
    let bytes: Vec<u8> = rec[4..].iter().flat_map(|w| w.to_le_bytes()).take(len).collect();
    let path = PathBuf::from(String::from_utf8(bytes).ok()?);
    // The peers are authenticated, but there is no reason to map anything but an arena.
    let name = path.file_name()?.to_str()?;
    if path.parent() != Some(Path::new(SHM_DIR)) || !name.starts_with("tessera-ops-") || !name.contains("-arena-") {
        return None;
    }
    let file = File::open(&path).ok()?;
    let map = Mapping::new(&file, HEADER_BYTES + 2 * half, false).ok()?;
    let mut nonce = [0u8; 16];
    map.read(0, &mut nonce).ok()?;
    let want: Vec<u8> = rec[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
    // Same name on another host's tmpfs would be a different file: the nonce tells them apart.
    (nonce[..] == want[..]).then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_offers_map_each_other_and_rounds_tile_uneven_shards() {
        let (a, b) = (Offer::new(64), Offer::new(64));
        let records: Vec<i64> = a.record().into_iter().chain(b.record()).collect();
        let theirs = [a.accept(&records, 0, 2).unwrap(), b.accept(&records, 1, 2).unwrap()];
        let mut arenas: Vec<Arena> = [a, b].into_iter().zip(theirs).map(|(o, t)| o.into_arena(t).unwrap()).collect();
        // 37 f32 elements over 2 ranks: shards of 19 and 18, windows of 16 elements.
        let plans: Vec<Vec<Round>> = arenas.iter_mut().map(|x| x.plan::<f32>(37, 2)).collect();
        assert_eq!(plans[0].len(), 2);
        assert_eq!(plans[0][1].windows, vec![16..19, 35..37]);
        let mut outs = [vec![0f32; 37], vec![0f32; 37]];
        for (r, out) in outs.iter_mut().enumerate() {
            for i in shard_range(37, 2, r) {
                out[i] = i as f32;
            }
        }
        // Both ranks run the same plan; every rank copies in before any copies out.
        for round in &plans[0] {
            for (r, arena) in arenas.iter_mut().enumerate() {
                arena.put(round, r, &outs[r]).unwrap();
            }
            for (arena, out) in arenas.iter().zip(outs.iter_mut()) {
                arena.take(round, out).unwrap();
            }
        }
        let want: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(outs[0], want);
        assert_eq!(outs[1], want);
        // Round numbers continue across calls, alternating halves.
        assert_eq!(arenas[0].plan::<f32>(1, 2)[0].number, 2);
    }

    #[test]
    fn records_of_another_size_a_wrong_nonce_or_a_foreign_path_are_refused() {
        let (a, b, c) = (Offer::new(64), Offer::new(64), Offer::new(128));
        let mixed: Vec<i64> = a.record().into_iter().chain(c.record()).collect();
        assert!(a.accept(&mixed, 0, 2).is_none(), "different half sizes");
        let mut forged = b.record();
        forged[1] ^= 1;
        let records: Vec<i64> = a.record().into_iter().chain(forged).collect();
        assert!(a.accept(&records, 0, 2).is_none(), "nonce mismatch");
        let mut foreign = vec![0i64; RECORD_WORDS];
        foreign[0] = 64;
        foreign[3] = 8;
        foreign[4] = i64::from_le_bytes(*b"/etc/pas");
        let records: Vec<i64> = a.record().into_iter().chain(foreign).collect();
        assert!(a.accept(&records, 0, 2).is_none(), "outside /dev/shm");
        assert!(Offer::new(0).record().iter().all(|&w| w == 0), "disabled offers nothing");
    }

    #[test]
    fn dropping_an_offer_unlinks_its_file() {
        let offer = Offer::new(64);
        let path = offer.path.clone().unwrap();
        assert!(path.exists());
        drop(offer);
        assert!(!path.exists());
    }
}
