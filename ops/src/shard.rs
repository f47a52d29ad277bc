//! Shard layout shared by every collective and by FSDP: how `len` elements split over `world`
//! ranks when `len` is not a multiple of `world`.

use std::ops::Range;

/// Elements `[start, end)` owned by `rank` when `len` elements are split over `world` ranks.
///
/// The first `len % world` ranks get one extra element, so shard sizes differ by at most one and
/// the shards tile `0..len` in rank order. `world` must be at least 1 and `rank < world`.
pub fn shard_range(len: usize, world: usize, rank: usize) -> Range<usize> {
    debug_assert!(world > 0 && rank < world, "rank {rank} out of world {world}");
    let base = len / world;
    let extra = len % world;
    let start = rank * base + rank.min(extra);
    let size = base + usize::from(rank < extra);
    start..start + size
}

/// Number of elements owned by `rank` (the length of [`shard_range`]).
pub fn shard_len(len: usize, world: usize, rank: usize) -> usize {
    shard_range(len, world, rank).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_tile_the_range_and_differ_by_at_most_one() {
        for len in 0..60 {
            for world in 1..9 {
                let mut next = 0;
                let sizes: Vec<usize> = (0..world).map(|r| shard_len(len, world, r)).collect();
                for r in 0..world {
                    let range = shard_range(len, world, r);
                    assert_eq!(range.start, next, "len {len} world {world} rank {r}");
                    next = range.end;
                }
                assert_eq!(next, len);
                let (min, max) = (sizes.iter().min().copied(), sizes.iter().max().copied());
                assert!(max.unwrap_or(0) - min.unwrap_or(0) <= 1);
                // Larger shards come first.
                assert!(sizes.windows(2).all(|w| w[0] >= w[1]));
            }
        }
    }

    #[test]
    fn examples() {
        assert_eq!(shard_range(10, 3, 0), 0..4);
        assert_eq!(shard_range(10, 3, 1), 4..7);
        assert_eq!(shard_range(10, 3, 2), 7..10);
        assert_eq!(shard_range(1, 3, 2), 1..1);
        assert_eq!(shard_range(0, 1, 0), 0..0);
    }
}
