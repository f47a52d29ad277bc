//! Learning-rate schedule: linear warm-up then cosine decay, exactly ml-4m's
//! `cosine_scheduler` (reference §5.3) evaluated per step instead of stored as an array.

use serde::{Deserialize, Serialize};

/// Warm-up + cosine schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// Peak value (`blr · global_batch / 256`).
    pub peak: f64,
    /// Final value (`min_blr · global_batch / 256`).
    pub end: f64,
    /// Warm-up steps (linear from 0 to `peak`, both ends included, like `np.linspace`).
    pub warmup_steps: u64,
    /// Total steps, warm-up included.
    pub total_steps: u64,
}

impl CosineSchedule {
    /// The value at optimizer step `step` (0-based); steps past the end keep the final value.
    pub fn at(&self, step: u64) -> f64 {
        let w = self.warmup_steps.min(self.total_steps);
        if step < w {
            // np.linspace(0, peak, w): w == 1 gives [0].
            return if w == 1 { 0.0 } else { self.peak * step as f64 / (w - 1) as f64 };
        }
        let rest = self.total_steps - w;
        if rest == 0 {
            return self.end;
        }
        let i = (step - w).min(rest - 1) as f64;
        self.end + 0.5 * (self.peak - self.end) * (1.0 + (std::f64::consts::PI * i / rest as f64).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of ml-4m's `cosine_scheduler(1e-3, 1e-5, epochs=1, niter_per_ep=10, warmup_steps=4)`,
    /// computed with numpy.
    #[test]
    fn matches_ml4m_cosine_scheduler() {
        let s = CosineSchedule { peak: 1e-3, end: 1e-5, warmup_steps: 4, total_steps: 10 };
        let expected = [
            0.0,
            0.000_333_333_333_333_333_3,
            0.000_666_666_666_666_666_6,
            0.001,
            0.001,
            0.000_933_682_574_873_297_2,
            0.000_752_5,
            0.000_505,
            0.000_257_500_000_000_000_13,
            0.000_076_317_425_126_702_84,
        ];
        for (i, e) in expected.iter().enumerate() {
            assert!((s.at(i as u64) - e).abs() < 1e-15, "step {i}: {} vs {e}", s.at(i as u64));
        }
        assert_eq!(s.at(50), s.at(9));
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let s = CosineSchedule { peak: 2.0, end: 0.0, warmup_steps: 0, total_steps: 4 };
        assert_eq!(s.at(0), 2.0);
        assert!((s.at(2) - 1.0).abs() < 1e-12);
    }
}
