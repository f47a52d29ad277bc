//! Tokenizer metrics: codebook usage and perplexity over a sliding window of batches, mean IoU
//! of decoded class maps, and token agreement between two encodings.

use std::collections::VecDeque;

use tch::{Device, Kind, Tensor};

/// Code counts of the last `window` batches, per head.
#[derive(Debug)]
pub struct CodeUsage {
    heads: i64,
    vocab: i64,
    window: usize,
    recent: VecDeque<Tensor>,
    /// Sum of `recent`, `(H, V)` f64 on the CPU.
    total_HV: Tensor,
}

impl CodeUsage {
    /// Tracks `heads` codebooks of `vocab` codes over the last `window` batches (at least 1).
    pub fn new(heads: usize, vocab: usize, window: usize) -> Self {
        let (heads, vocab) = (heads as i64, vocab as i64);
        Self {
            heads,
            vocab,
            window: window.max(1),
            recent: VecDeque::new(),
            total_HV: Tensor::zeros([heads, vocab], (Kind::Double, Device::Cpu)),
        }
    }

    /// Adds a batch of ids `(B, T)`; token `t` belongs to head `t mod H` (the MLP lays heads
    /// out along T, conv has one head).
    pub fn record(&mut self, ids_BT: &Tensor) {
        let ids = ids_BT.to_device(Device::Cpu).to_kind(Kind::Int64);
        let t = ids.size()[1];
        let head_T = Tensor::arange(t, (Kind::Int64, Device::Cpu)).remainder(self.heads);
        let flat = (ids + head_T.unsqueeze(0) * self.vocab).reshape([-1]);
        let counts = flat.bincount::<Tensor>(None, self.heads * self.vocab).to_kind(Kind::Double).reshape([self.heads, self.vocab]);
        self.total_HV += &counts;
        self.recent.push_back(counts);
        if self.recent.len() > self.window
            && let Some(old) = self.recent.pop_front()
        {
            self.total_HV -= old;
        }
    }

    /// Fraction of codes (over all heads) used at least once in the window.
    pub fn usage(&self) -> f64 {
        self.total_HV.gt(0.5).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
    }

    /// exp(entropy) of the window's code distribution, averaged over heads: the effective
    /// number of codes in use (1 when collapsed, the vocabulary size when uniform).
    pub fn perplexity(&self) -> f64 {
        let p = &self.total_HV / self.total_HV.sum_dim_intlist(1, true, Kind::Double).clamp_min(1e-12);
        let ent = -(&p * p.clamp_min(1e-30).log()).sum_dim_intlist(1, false, Kind::Double);
        ent.exp().mean(Kind::Double).double_value(&[])
    }
}

/// Mean intersection-over-union of class maps `(B, S, S)` over the classes present in either
/// map (a class absent from both says nothing about the prediction).
pub fn mean_iou(pred: &Tensor, target: &Tensor, num_classes: usize) -> f64 {
    let (pred, target) = (pred.to_device(Device::Cpu), target.to_device(Device::Cpu));
    let mut ious = Vec::new();
    for c in 0..num_classes as i64 {
        let (p, t) = (pred.eq(c), target.eq(c));
        let union = p.logical_or(&t).sum(Kind::Int64).int64_value(&[]);
        if union > 0 {
            let inter = p.logical_and(&t).sum(Kind::Int64).int64_value(&[]);
            ious.push(inter as f64 / union as f64);
        }
    }
    if ious.is_empty() { 1.0 } else { ious.iter().sum::<f64>() / ious.len() as f64 }
}

/// Fraction of equal entries of two id tensors of the same shape.
pub fn token_agreement(a: &Tensor, b: &Tensor) -> f64 {
    a.eq_tensor(&b.to_device(a.device())).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_usage_and_perplexity_follow_the_window() {
        let mut u = CodeUsage::new(1, 4, 2);
        u.record(&Tensor::from_slice(&[0i64, 0, 0, 0]).reshape([1, 4]));
        assert_eq!(u.usage(), 0.25);
        assert!((u.perplexity() - 1.0).abs() < 1e-9);
        u.record(&Tensor::from_slice(&[1i64, 2, 3, 1]).reshape([1, 4]));
        assert_eq!(u.usage(), 1.0);
        u.record(&Tensor::from_slice(&[1i64, 2, 3, 0]).reshape([1, 4]));
        // Window 2: the first batch has left; counts are 1:3, 2:2, 3:2, 0:1.
        let p = [1.0f64 / 8.0, 3.0 / 8.0, 2.0 / 8.0, 2.0 / 8.0];
        let ppl = (-p.iter().map(|x| x * x.ln()).sum::<f64>()).exp();
        assert!((u.perplexity() - ppl).abs() < 1e-9);
        // Two heads interleaved along tokens.
        let mut u = CodeUsage::new(2, 2, 1);
        u.record(&Tensor::from_slice(&[0i64, 1, 0, 1]).reshape([2, 2]));
        assert_eq!(u.usage(), 0.5);
    }

    #[test]
    fn tokenizer_miou_counts_present_classes() {
        let t = Tensor::from_slice(&[0i64, 0, 1, 1]).reshape([1, 2, 2]);
        let p = Tensor::from_slice(&[0i64, 1, 1, 1]).reshape([1, 2, 2]);
        assert!((mean_iou(&p, &t, 5) - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-9);
        assert_eq!(mean_iou(&t, &t, 5), 1.0);
    }
}
