//! Token sampling as ml-4m's `GenerationSampler` does it: top-k then top-p filtering of the
//! logits, softmax of the filtered logits divided by the temperature, one multinomial draw per
//! row from libtorch's global generator (so a seeded run draws what ml-4m draws), or argmax
//! when the temperature is 0 (`np.isclose(t, 0, atol=1e-10)`).
//!
//! MaskGIT commits the positions whose sampled token had the highest probability. With top-k
//! 1 all of them are 1.0, so the order among equal confidences decides everything: tessera
//! takes the LOWER position first (a stable descending sort), never `topk`'s unspecified order.
//!
//! Shape legend: R rows (flattened batch × queries), V vocabulary, B batch, N queries.

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// The top-k filter of `GenerationSampler.generate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TopK {
    /// No filtering (ml-4m's `top_k = 0`).
    Off,
    /// Keep the k highest logits (an integer `top_k`).
    Count(usize),
    /// Keep `int(f · V)` logits (a float `top_k`; 1.0 keeps everything).
    Fraction(f64),
}

/// Temperatures at or below this are argmax (ml-4m: `np.isclose(temperature, 0, atol=1e-10)`).
const ARGMAX_TEMPERATURE: f64 = 1e-10;

/// ml-4m's `top_k_top_p_filtering`: logits outside the top-k, then outside the smallest
/// prefix whose probability exceeds `top_p` (the first token always kept), become -inf.
pub fn filter_logits(logits_rv: &Tensor, top_k: TopK, top_p: f64) -> Result<Tensor> {
    let v = logits_rv.size().last().copied().unwrap_or(0);
    let k = match top_k {
        TopK::Off => None,
        TopK::Count(k) => Some((k as i64).min(v)),
        TopK::Fraction(f) => {
            // Python's int() truncates towards zero.
            let k = ((f * v as f64).trunc() as i64).min(v);
            if k < 1 {
                return Err(ModelError::TopKEmpty { top_k: f, vocab: v });
            }
            Some(k)
        }
    };
    let mut logits = logits_rv.shallow_clone();
    if let Some(k) = k.filter(|&k| k > 0) {
        let (values, _) = logits.topk(k, -1, true, true);
        let kth_r1 = values.narrow(-1, k - 1, 1);
        logits = logits.masked_fill(&logits.lt_tensor(&kth_r1), f64::NEG_INFINITY);
    }
    if top_p > 0.0 {
        let (sorted, order) = logits.sort_stable(true, -1, true);
        let cum = sorted.softmax(-1, sorted.kind()).cumsum(-1, sorted.kind());
        let over = cum.gt(top_p);
        // Shift right so that the first token above the threshold stays; the top one always stays.
        let n = over.size()[over.dim() - 1];
        let keep_first = Tensor::zeros_like(&over.narrow(-1, 0, 1));
        let remove_sorted = Tensor::cat(&[keep_first, over.narrow(-1, 0, n - 1)], -1);
        let remove = remove_sorted.scatter(-1, &order, &remove_sorted);
        logits = logits.masked_fill(&remove, f64::NEG_INFINITY);
    }
    Ok(logits)
}

/// ml-4m's `sample_tokens` on (R, V) logits: the sampled ids (R) and the probability of each
/// sampled id (R, f32; exactly 1.0 under argmax).
pub fn sample_tokens(logits_rv: &Tensor, temperature: f64, top_k: TopK, top_p: f64) -> Result<(Tensor, Tensor)> {
    if temperature.abs() <= ARGMAX_TEMPERATURE {
        let ids = logits_rv.argmax(-1, false);
        let probs = Tensor::ones(ids.size(), (Kind::Float, ids.device()));
        return Ok((ids, probs));
    }
    let filtered = filter_logits(logits_rv, top_k, top_p)?;
    let probs_rv = (filtered / temperature).softmax(-1, logits_rv.kind());
    let ids_r = probs_rv.multinomial(1, false).select(1, 0);
    let p_r = probs_rv.gather(1, &ids_r.unsqueeze(1), false).squeeze_dim(1);
    Ok((ids_r, p_r))
}

/// [`sample_tokens`] on (B, N, V) logits, returning (B, N) ids and probabilities.
pub fn sample_tokens_batched(logits_bnv: &Tensor, temperature: f64, top_k: TopK, top_p: f64) -> Result<(Tensor, Tensor)> {
    let (b, n, v) = logits_bnv.size3()?;
    let (ids, probs) = sample_tokens(&logits_bnv.reshape([b * n, v]), temperature, top_k, top_p)?;
    Ok((ids.reshape([b, n]), probs.reshape([b, n])))
}

/// The indices (B, k) of the `k` highest values per row of `conf_bn`; among equal values the
/// lower index first (the tie rule of the module doc).
pub fn top_indices_stable(conf_bn: &Tensor, k: i64) -> Tensor {
    let (_, order) = conf_bn.sort_stable(true, -1, true);
    order.narrow(-1, 0, k)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    #[test]
    fn ties_commit_lower_positions_first() {
        let conf = Tensor::from_slice(&[1.0f32, 0.5, 1.0, 1.0, 0.2, 1.0]).view([1, 6]);
        let idx = top_indices_stable(&conf, 3);
        assert_eq!(Vec::<i64>::try_from(idx.view([-1])).unwrap(), vec![0, 2, 3]);
    }

    #[test]
    fn top_k_keeps_k_and_top_p_keeps_the_first_token_over_p() {
        let logits = Tensor::from_slice(&[0.0f32, 3.0, 1.0, 2.0]).view([1, 4]);
        let k2 = filter_logits(&logits, TopK::Count(2), 0.0).unwrap();
        let kept: Vec<bool> = Vec::try_from(k2.isfinite().view([-1])).unwrap();
        assert_eq!(kept, vec![false, true, false, true]);
        let all = filter_logits(&logits, TopK::Fraction(1.0), 0.0).unwrap();
        assert!(bool::try_from(all.isfinite().all()).unwrap());
        // softmax of [3, 2, 1, 0] = [.644, .237, .087, .032]: p = 0.7 keeps the first two.
        let p = filter_logits(&logits, TopK::Off, 0.7).unwrap();
        let kept: Vec<bool> = Vec::try_from(p.isfinite().view([-1])).unwrap();
        assert_eq!(kept, vec![false, true, false, true]);
        assert!(filter_logits(&logits, TopK::Fraction(0.1), 0.0).is_err());
    }

    #[test]
    fn argmax_below_1e10_and_top1_sampling_agree() {
        let logits = Tensor::randn([5, 50], (Kind::Float, Device::Cpu));
        let (a, pa) = sample_tokens(&logits, 0.0, TopK::Off, 0.0).unwrap();
        let (b, pb) = sample_tokens(&logits, 3.0, TopK::Count(1), 0.0).unwrap();
        assert!(a.equal(&b));
        assert!(pa.equal(&pb), "top-1 sampling has probability exactly 1");
    }
}
