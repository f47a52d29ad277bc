//! Span masking with sentinels (ml-4m `simple_span_masking` and `chunk_span_masking`), the
//! keep-probability policy of `sequence_mask` around it, and target truncation.
//!
//! A sequence is a list of *units*: single tokens, or whole chunks (metadata pairs). Each unit is
//! kept as input with probability `keep_prob`; every run of dropped units becomes one sentinel
//! `[S_k]` in the input and `[S_k] + run` in the target, and the target closes with `[S_{n+1}]`.

use std::ops::Range;

use rand::Rng;

use crate::error::{Error, Result};
use crate::mixture::Keep;

/// ml-4m's `keep_prob_decay_factor`: the keep probability shrinks by this until the input fits.
pub const KEEP_PROB_DECAY: f64 = 0.9;

/// Units over a flat token list: unit `i` is the next `lens[i]` tokens, or one token when
/// `lens` is `None`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Units<'a> {
    /// All tokens, unit after unit.
    pub tokens: &'a [i64],
    /// Tokens per unit; `None`: one token per unit.
    pub lens: Option<&'a [usize]>,
}

impl Units<'_> {
    /// Number of units.
    pub fn len(&self) -> usize {
        self.lens.map_or(self.tokens.len(), <[usize]>::len)
    }

    fn unit_len(&self, i: usize) -> usize {
        self.lens.map_or(1, |l| l[i])
    }
}

/// The sentinel ids of a tokenizer: `[S_k]` by k, and which ids are sentinels.
#[derive(Debug, Clone)]
pub(crate) struct Sentinels {
    /// `by_k[k]` = id of `[S_k]`, or -1 where the vocabulary has no such entry.
    by_k: Vec<i64>,
    /// `is_sentinel[id]`: whether `id` is any `[S_k]` (ml-4m's `sentinel_ids` set).
    is_sentinel: Vec<bool>,
}

impl Sentinels {
    /// Builds the tables from (k, id) pairs.
    pub fn new(pairs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut by_k = Vec::new();
        let mut is_sentinel = Vec::new();
        for (k, id) in pairs {
            let (k, id) = (k as usize, id as usize);
            if by_k.len() <= k {
                by_k.resize(k + 1, -1);
            }
            by_k[k] = id as i64;
            if is_sentinel.len() <= id {
                is_sentinel.resize(id + 1, false);
            }
            is_sentinel[id] = true;
        }
        Self { by_k, is_sentinel }
    }

    /// Id of `[S_k]`, if present.
    pub fn id(&self, k: usize) -> Option<i64> {
        self.by_k.get(k).copied().filter(|&id| id >= 0)
    }

    /// Whether `id` is a sentinel.
    pub fn contains(&self, id: i64) -> bool {
        usize::try_from(id).ok().and_then(|i| self.is_sentinel.get(i).copied()).unwrap_or(false)
    }
}

/// Draws `keep[i] = rand() <= p` per unit (ml-4m: `torch.rand(n) <= keep_prob`).
///
/// `p >= 1` keeps everything without drawing (exact: `rand() < 1`). `p <= 0` drops
/// everything without drawing; ml-4m would keep a unit whose f32 draw is exactly 0.0
/// (probability 2^-24 per unit), an artifact not worth reproducing.
pub(crate) fn draw_keep(rng: &mut impl Rng, p: f64, keep: &mut [bool]) {
    if p >= 1.0 {
        keep.fill(true);
    } else if p <= 0.0 {
        keep.fill(false);
    } else {
        for k in keep.iter_mut() {
            *k = f64::from(rng.random::<f32>()) <= p;
        }
    }
}

/// Length of the input span masking produces: kept tokens plus one sentinel per dropped run.
pub(crate) fn input_len(units: Units<'_>, keep: &[bool]) -> usize {
    let mut n = 0;
    let mut prev_dropped = false;
    for (i, &k) in keep.iter().enumerate() {
        if k {
            n += units.unit_len(i);
            prev_dropped = false;
        } else {
            n += usize::from(!prev_dropped);
            prev_dropped = true;
        }
    }
    n
}

/// ml-4m's keep-probability policy: `b_in == 0` drops every unit; otherwise `keep_prob` comes
/// from the keep scheme and is multiplied by [`KEEP_PROB_DECAY`] (re-drawing the units each
/// time) until the input fits `b_in`. Fills `keep` (one entry per unit).
pub(crate) fn choose_keep(rng: &mut impl Rng, scheme: Keep, b_in: usize, units: Units<'_>, keep: &mut Vec<bool>) {
    keep.clear();
    keep.resize(units.len(), false);
    if b_in == 0 {
        return;
    }
    let mut p = match scheme {
        Keep::Random => rng.random::<f64>(),
        Keep::All => 1.0,
        Keep::Binary => {
            if rng.random::<bool>() {
                1.0
            } else {
                0.0
            }
        }
    };
    draw_keep(rng, p, keep);
    // Terminates: as p shrinks every unit is dropped, giving an input of at most 1 <= b_in.
    while input_len(units, keep) > b_in {
        p *= KEEP_PROB_DECAY;
        draw_keep(rng, p, keep);
    }
}

/// Builds input and target id lists from the kept units (`simple_span_masking` /
/// `chunk_span_masking`); `modality` names errors about missing sentinels.
pub(crate) fn span_mask(
    modality: &'static str,
    units: Units<'_>,
    keep: &[bool],
    sentinels: &Sentinels,
    input: &mut Vec<i64>,
    target: &mut Vec<i64>,
) -> Result<()> {
    let sentinel = |k: usize| {
        sentinels
            .id(k)
            .ok_or_else(|| Error::MaskValue { modality, reason: format!("span masking needs [S_{k}], which the tokenizer lacks") })
    };
    input.clear();
    target.clear();
    let mut start = 0;
    let mut count = 0;
    let mut prev_dropped = false;
    for (i, &k) in keep.iter().enumerate() {
        let unit = &units.tokens[start..start + units.unit_len(i)];
        start += unit.len();
        if k {
            input.extend_from_slice(unit);
            prev_dropped = false;
        } else {
            if !prev_dropped {
                count += 1;
                let s = sentinel(count)?;
                input.push(s);
                target.push(s);
            }
            target.extend_from_slice(unit);
            prev_dropped = true;
        }
    }
    target.push(sentinel(count + 1)?);
    Ok(())
}

/// The part of `target` kept under budget `b_tgt` (ml-4m `sequence_mask`, over-budget branch):
/// start at a random sentinel other than the final one and take `b_tgt` tokens; if fewer than
/// `b_tgt` tokens follow it, take the tail from the earliest sentinel whose tail fits.
pub(crate) fn truncate_target(rng: &mut impl Rng, target: &[i64], b_tgt: usize, sentinels: &Sentinels) -> Range<usize> {
    if target.len() <= b_tgt {
        return 0..target.len();
    }
    let positions: Vec<usize> = target.iter().enumerate().filter(|(_, id)| sentinels.contains(**id)).map(|(i, _)| i).collect();
    // np.random.randint(max(1, n - 1)): never the closing sentinel when there are two or more.
    let j = rng.random_range(0..positions.len().saturating_sub(1).max(1));
    let Some(&start) = positions.get(j) else {
        // No sentinel at all cannot come out of span_mask (the target always closes with one);
        // ml-4m would fail here, keep the first b_tgt tokens instead.
        return 0..b_tgt;
    };
    if target.len() - start >= b_tgt {
        return start..start + b_tgt;
    }
    // The closing sentinel's tail (1 token) always fits here since b_tgt > tail >= 1.
    positions.iter().find(|&&i| target.len() - i <= b_tgt).map_or(0..target.len(), |&i| i..target.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// `[S_k]` = 100 + k, as a toy vocabulary.
    fn sentinels() -> Sentinels {
        Sentinels::new((0..20).map(|k| (k, 100 + k)))
    }

    #[test]
    fn spans_number_from_one_and_close_the_target() {
        let tokens = [10, 11, 12, 13, 14, 15];
        let units = Units { tokens: &tokens, lens: None };
        let keep = [true, false, false, true, false, true];
        let (mut inp, mut tgt) = (Vec::new(), Vec::new());
        span_mask("caption", units, &keep, &sentinels(), &mut inp, &mut tgt).unwrap();
        assert_eq!(inp, [10, 101, 13, 102, 15]);
        assert_eq!(tgt, [101, 11, 12, 102, 14, 103]);
        assert_eq!(input_len(units, &keep), inp.len());
    }

    #[test]
    fn chunks_are_masked_whole() {
        let tokens = [1, 2, 3, 4, 5, 6, 3];
        let lens = [2, 2, 2, 1];
        let units = Units { tokens: &tokens, lens: Some(&lens) };
        let keep = [false, true, false, false];
        let (mut inp, mut tgt) = (Vec::new(), Vec::new());
        span_mask("metadata", units, &keep, &sentinels(), &mut inp, &mut tgt).unwrap();
        assert_eq!(inp, [101, 3, 4, 102]);
        assert_eq!(tgt, [101, 1, 2, 102, 5, 6, 3, 103]);
        assert_eq!(input_len(units, &keep), 4);
    }

    #[test]
    fn missing_sentinel_is_an_error_naming_the_modality() {
        let tokens = [10, 11];
        let only_one = Sentinels::new([(1, 101)]);
        let (mut inp, mut tgt) = (Vec::new(), Vec::new());
        let err = span_mask("det", Units { tokens: &tokens, lens: None }, &[false, false], &only_one, &mut inp, &mut tgt).unwrap_err();
        assert!(err.to_string().contains("det") && err.to_string().contains("[S_2]"), "{err}");
    }

    #[test]
    fn truncation_starts_at_a_non_final_sentinel_or_the_earliest_fitting_tail() {
        let s = sentinels();
        // [S_1] a b [S_2] c [S_3]: sentinels at 0, 3, 5.
        let tgt = [101, 1, 2, 102, 3, 103];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let r = truncate_target(&mut rng, &tgt, 3, &s);
            // From S_1: 6 >= 3 -> 0..3. From S_2: 3 >= 3 -> 3..6. Never from S_3.
            assert!(r == (0..3) || r == (3..6), "{r:?}");
            seen.insert(r.start);
        }
        assert_eq!(seen.len(), 2, "both non-final sentinels are chosen");
        // Budget 4: from S_1 -> 0..4; from S_2 the tail (3) is short -> earliest tail <= 4 is S_2's.
        for _ in 0..100 {
            let r = truncate_target(&mut rng, &tgt, 4, &s);
            assert!(r == (0..4) || r == (3..6), "{r:?}");
        }
        // A single sentinel (all kept): [S_1] with budget 0 gives nothing.
        assert_eq!(truncate_target(&mut rng, &[101], 0, &s), 0..0);
        assert_eq!(truncate_target(&mut rng, &tgt, 6, &s), 0..6, "fits: untouched");
    }

    #[test]
    fn keep_policy_fits_the_budget_and_all_keeps_everything() {
        let tokens: Vec<i64> = (0..50).collect();
        let units = Units { tokens: &tokens, lens: None };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut keep = Vec::new();
        for b_in in [1, 2, 7, 25, 49, 50, 60] {
            for scheme in [Keep::Random, Keep::All, Keep::Binary] {
                choose_keep(&mut rng, scheme, b_in, units, &mut keep);
                assert!(input_len(units, &keep) <= b_in, "{scheme:?} {b_in}");
                if scheme == Keep::All && b_in >= 50 {
                    assert!(keep.iter().all(|k| *k));
                }
            }
        }
        choose_keep(&mut rng, Keep::All, 0, units, &mut keep);
        assert!(keep.iter().all(|k| !*k), "b_in == 0 drops everything");
    }
}
