//! Moving a large unit's flat vector in pieces: a reduce-scatter or all-gather of the whole
//! `rest` unit (embeddings and heads, 45% of a 4M-21 model's parameters) needs a host copy of
//! its whole flat vector next to the gradients or parameters it came from; in pieces, only one
//! piece is ever copied out.
//!
//! Piece `k` is, for each rank in order, the `k`-th sub-range of that rank's shard. Its sub-range
//! lengths are exactly [`shard_range`]'s over the piece's length (every piece but the last gives
//! each rank `per_rank` elements; the last one carries the unit's `numel % world` extra
//! elements on the first ranks, as the unit's own layout does), so a collective on the piece
//! hands every rank precisely its own sub-range: the shard layout, and so the checkpoints,
//! stay the same.

use std::ops::Range;

use tessera_ops::shard_range;

/// The pieces of a `numel`-element vector sharded over `world` ranks, with about `per_rank`
/// elements per rank per piece: `pieces[k][r]` is rank `r`'s flat range in piece `k`.
pub fn pieces(numel: usize, world: usize, per_rank: usize) -> Vec<Vec<Range<usize>>> {
    let per_rank = per_rank.max(1);
    let base = numel / world;
    let count = base.div_ceil(per_rank).max(1);
    (0..count)
        .map(|k| {
            (0..world)
                .map(|r| {
                    let shard = shard_range(numel, world, r);
                    let lo = shard.start + k * per_rank;
                    let hi = if k + 1 == count { shard.end } else { lo + per_rank };
                    lo..hi
                })
                .collect()
        })
        .collect()
}

/// The total length of a piece.
pub fn piece_len(piece: &[Range<usize>]) -> usize {
    piece.iter().map(|r| r.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_each_shard_in_order_with_the_collective_layout() {
        for (numel, world, per_rank) in
            [(10, 3, 2), (11, 3, 2), (7, 4, 1), (3, 4, 5), (0, 2, 4), (1000, 3, 333), (1001, 2, 1000), (97, 5, 4)]
        {
            let ps = pieces(numel, world, per_rank);
            for r in 0..world {
                // Rank r's ranges tile its shard, in order.
                let shard = shard_range(numel, world, r);
                let mut at = shard.start;
                for p in &ps {
                    assert_eq!(p[r].start, at, "{numel}/{world}/{per_rank}");
                    at = p[r].end;
                }
                assert_eq!(at, shard.end, "{numel}/{world}/{per_rank}");
            }
            for p in &ps {
                // Each rank's part is what a collective over the piece gives it.
                let len = piece_len(p);
                for r in 0..world {
                    assert_eq!(p[r].len(), shard_range(len, world, r).len(), "{numel}/{world}/{per_rank}: {p:?}");
                }
            }
            if numel / world > per_rank {
                assert!(ps.len() > 1 && ps[0].iter().all(|r| r.len() == per_rank));
            }
        }
    }
}
