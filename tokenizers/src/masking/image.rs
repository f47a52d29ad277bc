//! Image-like masking (ml-4m `UnifiedMasking.image_mask`): input and target positions are
//! disjoint slices of one random permutation of the grid; the data is not touched.

use rand::Rng;
use rand::seq::SliceRandom;

/// The three masks of an image-like modality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageMasks {
    /// `true` = not an input.
    pub input: Vec<bool>,
    /// `true` = not a target.
    pub target: Vec<bool>,
    /// Target count at the first target position (index 0 when there is none), else 0.
    pub dam: Vec<i64>,
}

/// Masks an `n`-position grid with `b_in` inputs and `b_tgt` targets; needs `b_in + b_tgt <= n`.
pub(crate) fn image_mask(rng: &mut impl Rng, n: usize, b_in: usize, b_tgt: usize) -> ImageMasks {
    debug_assert!(b_in + b_tgt <= n, "checked by the caller");
    // ml-4m argsorts uniform noise: a uniform permutation. Only its first b_in + b_tgt entries
    // matter, so a partial Fisher-Yates shuffle gives the same distribution for less work.
    let mut perm: Vec<usize> = (0..n).collect();
    let (chosen, _) = perm.partial_shuffle(rng, b_in + b_tgt);
    let (inputs, targets) = chosen.split_at(b_in);
    let mut input = vec![true; n];
    let mut target = vec![true; n];
    for &i in inputs {
        input[i] = false;
    }
    for &i in targets {
        target[i] = false;
    }
    // argmin(target_mask + arange * 1e-6): the lowest target position, or 0 if there is none.
    let first = targets.iter().copied().min().unwrap_or(0);
    let mut dam = vec![0; n];
    dam[first] = targets.len() as i64;
    ImageMasks { input, target, dam }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn disjoint_counts_and_dam_at_first_target() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for (b_in, b_tgt) in [(0, 0), (196, 0), (0, 196), (10, 20), (100, 96), (1, 1)] {
            let m = image_mask(&mut rng, 196, b_in, b_tgt);
            assert_eq!(m.input.iter().filter(|x| !**x).count(), b_in);
            assert_eq!(m.target.iter().filter(|x| !**x).count(), b_tgt);
            assert!(m.input.iter().zip(&m.target).all(|(i, t)| *i || *t), "input and target overlap");
            let first = m.target.iter().position(|t| !*t).unwrap_or(0);
            assert_eq!(m.dam[first], b_tgt as i64);
            assert_eq!(m.dam.iter().sum::<i64>(), b_tgt as i64, "one non-zero entry");
        }
    }

    #[test]
    fn positions_are_uniform() {
        // Each of 16 positions is an input with probability 4/16 over many draws.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut hits = [0usize; 16];
        for _ in 0..16_000 {
            let m = image_mask(&mut rng, 16, 4, 0);
            for (h, x) in hits.iter_mut().zip(&m.input) {
                *h += usize::from(!*x);
            }
        }
        // Binomial(16000, 0.25): mean 4000, sd 55.
        assert!(hits.iter().all(|&h| (3780..4220).contains(&h)), "{hits:?}");
    }
}
