//! Ring algorithms over the chunk pipeline.
//!
//! The buffer is split into `world` segments with [`shard_range`] and each segment into chunks of
//! at most `chunk` elements; both ends derive the same layout, so frames need no addressing.
//! With `n` ranks and `seg(k) = (rank + k) mod n`:
//! - reduce-scatter: at step `s` (0..n-1) send `seg(-1-s)` and receive-and-reduce `seg(-2-s)`;
//!   after the last step this rank holds the full reduction of its own segment `seg(0)`.
//! - all-gather: at step `s` send `seg(-s)` and receive `seg(-1-s)`, forwarding what arrived.
//! - all-reduce: reduce-scatter then all-gather on the same chunks; each rank sends and receives
//!   `2(n-1)/n` of the buffer, the bandwidth-optimal amount.
//! - broadcast: the root streams chunks around the ring; every rank forwards unless its right
//!   neighbour is the root.

use std::ops::Range;

use crate::element::Element;
use crate::frame::Header;
use crate::shard::shard_range;
use crate::types::ReduceOp;

use super::pipe::{self, Fault, Link};

/// Position of this rank in the ring and the chunk size, fixed for one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ring {
    /// This rank.
    pub rank: usize,
    /// World size, at least 2.
    pub world: usize,
    /// Elements per chunk, at least 1.
    pub chunk: usize,
}

impl Ring {
    /// Index of segment `rank + k` (mod world).
    fn seg(&self, k: isize) -> usize {
        (self.rank as isize + k).rem_euclid(self.world as isize) as usize
    }
}

/// Chunk element ranges of each segment of a `len`-element buffer split over `segments`.
struct Layout {
    /// All chunks in buffer order.
    chunks: Vec<Range<usize>>,
    /// Chunk ids (indices into `chunks`) of each segment.
    ids: Vec<Range<usize>>,
}

impl Layout {
    fn new(len: usize, segments: usize, chunk: usize) -> Self {
        let mut chunks = Vec::new();
        let mut ids = Vec::with_capacity(segments);
        for s in 0..segments {
            let seg = shard_range(len, segments, s);
            let first = chunks.len();
            let mut at = seg.start;
            while at < seg.end {
                let end = (at + chunk).min(seg.end);
                chunks.push(at..end);
                at = end;
            }
            ids.push(first..chunks.len());
        }
        Layout { chunks, ids }
    }

    /// Most chunks in any segment (bounds the frames sent per step).
    fn max_chunks(&self) -> usize {
        self.ids.iter().map(|r| r.len()).max().unwrap_or(0)
    }

    /// Splits `buf` (of the layout's length) into one mutable slice per chunk.
    fn split<'a, T>(&self, mut buf: &'a mut [T]) -> Vec<&'a mut [T]> {
        let mut out = Vec::with_capacity(self.chunks.len());
        for r in &self.chunks {
            let (head, tail) = std::mem::take(&mut buf).split_at_mut(r.len());
            out.push(head);
            buf = tail;
        }
        out
    }
}

/// In-place all-reduce: reduce-scatter then all-gather over the same chunks.
pub(crate) fn all_reduce<T: Element>(link: &mut Link<'_>, template: Header, ring: Ring, buf: &mut [T], op: ReduceOp) -> Result<(), Fault> {
    let n = ring.world;
    let layout = Layout::new(buf.len(), n, ring.chunk);
    let mut scratch = vec![T::zeroed(); ring.chunk.min(buf.len())];
    let (bytes, frames) = (size_of_val(buf), 2 * (n - 1) * layout.max_chunks());
    pipe::run(link, template, layout.split(buf), bytes, frames, |lend, read| {
        for id in layout.ids[ring.seg(-1)].clone() {
            lend.lend(0, id)?;
        }
        for s in 0..n - 1 {
            for id in layout.ids[ring.seg(-2 - s as isize)].clone() {
                let dst = lend.slot(id)?;
                read.recv_reduce(s, dst, &mut scratch, op)?;
                // The last step completes this rank's segment: finish Avg before it is shared.
                if s == n - 2 && op == ReduceOp::Avg {
                    T::divide(dst, n);
                }
                lend.lend(s + 1, id)?;
            }
        }
        for s in 0..n - 1 {
            for id in layout.ids[ring.seg(-1 - s as isize)].clone() {
                read.recv(n - 1 + s, lend.slot(id)?)?;
                if s < n - 2 {
                    lend.lend(n + s, id)?;
                }
            }
        }
        Ok(())
    })
}

/// Reduce-scatter from a read-only input; `output` receives segment `rank`; `partial` is scratch
/// of at least the input's length when the world has more than two ranks.
pub(crate) fn reduce_scatter<T: Element>(
    link: &mut Link<'_>,
    template: Header,
    ring: Ring,
    input: &[T],
    output: &mut [T],
    partial: &mut [T],
    op: ReduceOp,
) -> Result<(), Fault> {
    let n = ring.world;
    let layout = Layout::new(input.len(), n, ring.chunk);
    // Partial sums of the segments passing through (all but our own) need a home, `partial`
    // (the input's length, reused across calls); with two ranks nothing passes through.
    let slots = if n > 2 { layout.split(&mut partial[..input.len()]) } else { Vec::new() };
    let own = shard_range(input.len(), n, ring.rank);
    pipe::run(link, template, slots, size_of_val(input), (n - 1) * layout.max_chunks(), |lend, read| {
        for id in layout.ids[ring.seg(-1)].clone() {
            lend.send_shared(0, &input[layout.chunks[id].clone()])?;
        }
        for s in 0..n - 2 {
            for id in layout.ids[ring.seg(-2 - s as isize)].clone() {
                let dst = lend.slot(id)?;
                read.recv(s, dst)?;
                T::combine(dst, &input[layout.chunks[id].clone()], op);
                lend.lend(s + 1, id)?;
            }
        }
        for id in layout.ids[ring.rank].clone() {
            let r = layout.chunks[id].clone();
            let dst = &mut output[r.start - own.start..r.end - own.start];
            read.recv(n - 2, dst)?;
            T::combine(dst, &input[r], op);
            if op == ReduceOp::Avg {
                T::divide(dst, n);
            }
        }
        Ok(())
    })
}

/// All-gather of `input` (this rank's shard) into `output`.
pub(crate) fn all_gather<T: Element>(
    link: &mut Link<'_>,
    template: Header,
    ring: Ring,
    input: &[T],
    output: &mut [T],
) -> Result<(), Fault> {
    let n = ring.world;
    let layout = Layout::new(output.len(), n, ring.chunk);
    let own = shard_range(output.len(), n, ring.rank);
    let (bytes, frames) = (size_of_val(output), (n - 1) * layout.max_chunks());
    pipe::run(link, template, layout.split(output), bytes, frames, |lend, read| {
        // Send our shard straight from the input and copy it into place meanwhile.
        let local = |id: usize| layout.chunks[id].start - own.start..layout.chunks[id].end - own.start;
        for id in layout.ids[ring.rank].clone() {
            lend.send_shared(0, &input[local(id)])?;
        }
        for id in layout.ids[ring.rank].clone() {
            lend.slot(id)?.copy_from_slice(&input[local(id)]);
        }
        for s in 0..n - 1 {
            for id in layout.ids[ring.seg(-1 - s as isize)].clone() {
                read.recv(s, lend.slot(id)?)?;
                if s < n - 2 {
                    lend.lend(s + 1, id)?;
                }
            }
        }
        Ok(())
    })
}

/// Pipelined broadcast from `root` around the ring.
pub(crate) fn broadcast<T: Element>(link: &mut Link<'_>, template: Header, ring: Ring, buf: &mut [T], root: usize) -> Result<(), Fault> {
    let layout = Layout::new(buf.len(), 1, ring.chunk);
    let forward = (ring.rank + 1) % ring.world != root;
    let (bytes, frames) = (size_of_val(buf), layout.max_chunks());
    pipe::run(link, template, layout.split(buf), bytes, frames, |lend, read| {
        for id in layout.ids[0].clone() {
            if ring.rank != root {
                read.recv(0, lend.slot(id)?)?;
                if !forward {
                    continue;
                }
            }
            lend.lend(0, id)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_tiles_segments_in_chunks() {
        let l = Layout::new(10, 3, 3);
        assert_eq!(l.chunks, vec![0..3, 3..4, 4..7, 7..10]);
        assert_eq!(l.ids, vec![0..2, 2..3, 3..4]);
        let mut buf = [0u8; 10];
        assert_eq!(l.split(&mut buf).iter().map(|c| c.len()).collect::<Vec<_>>(), [3, 1, 3, 3]);
        let empty = Layout::new(1, 3, 4);
        assert_eq!(empty.ids, vec![0..1, 1..1, 1..1]);
    }
}
