//! Summary statistics of many sampled budgets (for `tessera data inspect-mixture` and tests).

use serde::Serialize;

use crate::modality::Modality;

use super::budget::SampleBudget;

/// Running sums of one quantity.
#[derive(Debug, Clone, Copy, Default)]
struct Moments {
    sum: f64,
    sum_sq: f64,
    nonzero: u64,
}

impl Moments {
    fn add(&mut self, x: usize) {
        let x = x as f64;
        self.sum += x;
        self.sum_sq += x * x;
        self.nonzero += u64::from(x > 0.0);
    }

    /// (mean, population std, fraction nonzero) over `n` samples.
    fn summary(&self, n: u64) -> (f64, f64, f64) {
        if n == 0 {
            return (0.0, 0.0, 0.0);
        }
        let n = n as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        (mean, var.sqrt(), self.nonzero as f64 / n)
    }
}

/// Accumulates [`SampleBudget`]s of one mixture.
#[derive(Debug, Clone)]
pub struct BudgetStats {
    modalities: Vec<Modality>,
    samples: u64,
    component_counts: Vec<u64>,
    input: Vec<Moments>,
    target: Vec<Moments>,
    input_total: Moments,
    target_total: Moments,
}

/// Statistics of one modality's budgets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModalityBudgetStats {
    /// The modality.
    pub modality: Modality,
    /// Mean input budget.
    pub input_mean: f64,
    /// Standard deviation of the input budget (population, ddof 0).
    pub input_std: f64,
    /// Fraction of samples in which the modality is an input (budget > 0).
    pub input_freq: f64,
    /// Mean target budget.
    pub target_mean: f64,
    /// Standard deviation of the target budget (population, ddof 0).
    pub target_std: f64,
    /// Fraction of samples in which the modality is a target (budget > 0).
    pub target_freq: f64,
}

/// The summary of a [`BudgetStats`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetReport {
    /// Samples accumulated.
    pub samples: u64,
    /// How often each mixture component was chosen.
    pub component_counts: Vec<u64>,
    /// Mean of the summed input budget (below `N_in` when caps bind).
    pub input_total_mean: f64,
    /// Mean of the summed target budget.
    pub target_total_mean: f64,
    /// One entry per modality, sorted by key.
    pub modalities: Vec<ModalityBudgetStats>,
}

impl BudgetStats {
    /// Empty statistics over `modalities` (the sampler's order) and `components` components.
    pub fn new(modalities: &[Modality], components: usize) -> Self {
        Self {
            modalities: modalities.to_vec(),
            samples: 0,
            component_counts: vec![0; components],
            input: vec![Moments::default(); modalities.len()],
            target: vec![Moments::default(); modalities.len()],
            input_total: Moments::default(),
            target_total: Moments::default(),
        }
    }

    /// Adds one sample's budgets.
    pub fn add(&mut self, b: &SampleBudget) {
        self.samples += 1;
        self.component_counts[b.component] += 1;
        for (m, &x) in self.input.iter_mut().zip(&b.input) {
            m.add(x);
        }
        for (m, &x) in self.target.iter_mut().zip(&b.target) {
            m.add(x);
        }
        self.input_total.add(b.input.iter().sum());
        self.target_total.add(b.target.iter().sum());
    }

    /// The summary.
    pub fn report(&self) -> BudgetReport {
        let n = self.samples;
        let modalities = self
            .modalities
            .iter()
            .zip(self.input.iter().zip(&self.target))
            .map(|(&modality, (i, t))| {
                let (input_mean, input_std, input_freq) = i.summary(n);
                let (target_mean, target_std, target_freq) = t.summary(n);
                ModalityBudgetStats { modality, input_mean, input_std, input_freq, target_mean, target_std, target_freq }
            })
            .collect();
        BudgetReport {
            samples: n,
            component_counts: self.component_counts.clone(),
            input_total_mean: self.input_total.summary(n).0,
            target_total_mean: self.target_total.summary(n).0,
            modalities,
        }
    }
}
