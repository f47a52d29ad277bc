//! Validation: each modality's cross-entropy on held-out batches, token-weighted across
//! batches, beside the unigram baseline a trained model must beat (each modality's target-token
//! frequencies fitted on training batches, add-one smoothed).

use std::collections::BTreeMap;

use serde::Serialize;
use tch::{Kind, Tensor};
use tessera_model::{ForwardOptions, FourM, MaskedBatch};
use tessera_tokenizers::Modality;

use crate::error::Result;

/// Per-modality target-token frequencies.
#[derive(Debug, Clone, Default)]
pub struct UnigramBaseline {
    counts: BTreeMap<Modality, Vec<u64>>,
}

impl UnigramBaseline {
    /// An empty baseline.
    pub fn new() -> Self {
        Self::default()
    }

    /// A baseline fitted on every batch of `batches`.
    pub fn fitted(model: &FourM, batches: &[MaskedBatch], opts: &ForwardOptions) -> Result<Self> {
        let mut b = Self::new();
        for batch in batches {
            b.fit(model, batch, opts)?;
        }
        Ok(b)
    }

    /// Counts the label ids a forward of `batch` would score (see `FourM::target_tokens`).
    pub fn fit(&mut self, model: &FourM, batch: &MaskedBatch, opts: &ForwardOptions) -> Result<()> {
        for (m, ids) in model.target_tokens(batch, opts)? {
            let counts = self.counts.entry(m).or_insert_with(|| vec![0; m.spec().vocab_size]);
            for id in Vec::<i64>::try_from(ids.to_kind(Kind::Int64))? {
                if let Some(c) = counts.get_mut(id as usize) {
                    *c += 1;
                }
            }
        }
        Ok(())
    }

    /// Summed negative log-likelihood (nats) of `ids` of modality `m` under the add-one
    /// smoothed frequencies; `None` when `m` was never fitted.
    pub fn nll_sum(&self, m: Modality, ids: &Tensor) -> Result<Option<f64>> {
        let Some(counts) = self.counts.get(&m) else { return Ok(None) };
        let total = counts.iter().sum::<u64>() as f64 + counts.len() as f64;
        let ids = Vec::<i64>::try_from(ids.to_kind(Kind::Int64))?;
        Ok(Some(ids.iter().map(|&id| -(((counts.get(id as usize).copied().unwrap_or(0) + 1) as f64) / total).ln()).sum()))
    }
}

/// One modality's validation result.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ModalityEval {
    /// Target tokens scored.
    pub tokens: u64,
    /// Mean cross-entropy of the model (nats per token).
    pub loss: f64,
    /// Mean cross-entropy of the unigram baseline, when one was given.
    pub unigram: Option<f64>,
}

/// Validation results of every decoder modality that had targets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalReport {
    /// Per modality.
    pub modalities: BTreeMap<Modality, ModalityEval>,
}

/// Scores `model` on `batches` (no gradients): per-modality token-weighted cross-entropy, and
/// the baseline's on the same tokens.
pub fn evaluate<'a>(
    model: &FourM,
    batches: impl IntoIterator<Item = &'a MaskedBatch>,
    opts: &ForwardOptions,
    baseline: Option<&UnigramBaseline>,
) -> Result<EvalReport> {
    let mut sums: BTreeMap<Modality, (u64, f64, f64)> = BTreeMap::new();
    for batch in batches {
        let tokens = model.target_tokens(batch, opts)?;
        let counts: BTreeMap<Modality, i64> = tokens.iter().map(|(m, t)| (*m, t.numel() as i64)).collect();
        // With the batch's own counts as normaliser each modality's loss is sum/N: exact sums.
        let o = ForwardOptions { loss_normalizer: Some(counts.clone()), ..opts.clone() };
        let out = tch::no_grad(|| model.forward(batch, &o))?;
        for (m, n) in counts {
            if n == 0 {
                continue;
            }
            let e = sums.entry(m).or_default();
            e.0 += n as u64;
            e.1 += out.mod_loss[&m].double_value(&[]) * n as f64;
            if let Some(b) = baseline
                && let Some(nll) = b.nll_sum(m, &tokens[&m])?
            {
                e.2 += nll;
            }
        }
    }
    let modalities = sums
        .into_iter()
        .map(|(m, (n, loss, uni))| {
            let fitted = baseline.is_some_and(|b| b.counts.contains_key(&m));
            (m, ModalityEval { tokens: n, loss: loss / n as f64, unigram: fitted.then(|| uni / n as f64) })
        })
        .collect();
    Ok(EvalReport { modalities })
}

#[cfg(test)]
mod tests {
    use tessera_model::{Checkpoint, Flavor, FourMConfig, Preset, SyntheticSpec, synthetic_batch};
    use tessera_tokenizers::ModalitySet;

    use super::*;

    fn setup() -> (Checkpoint, Vec<MaskedBatch>, ForwardOptions) {
        let mut cfg = FourMConfig::preset(Preset::Tiny, Flavor::SwigluNobias, &ModalitySet::parse("caption,tok_rgb@224").unwrap());
        cfg.dim = 32;
        cfg.encoder_depth = 1;
        cfg.decoder_depth = 1;
        cfg.num_heads = 2;
        let ckpt = Checkpoint::init(&cfg, tch::Device::Cpu, 1).unwrap();
        let batches =
            (0..3).map(|s| synthetic_batch(&cfg, &SyntheticSpec { batch_size: 4, input_tokens: 32, target_tokens: 32, seed: s })).collect();
        (ckpt, batches, ForwardOptions { num_encoder_tokens: 32, num_decoder_tokens: 32, ..Default::default() })
    }

    /// One batch: the report's losses are the forward's own per-modality losses; at
    /// initialisation they are near ln(vocabulary), like a baseline fitted on uniform ids.
    #[test]
    fn eval_matches_forward_and_baselines_are_sane() {
        let (ckpt, batches, opts) = setup();
        let report = evaluate(&ckpt.model, &batches[..1], &opts, None).unwrap();
        let out = tch::no_grad(|| ckpt.model.forward(&batches[0], &opts)).unwrap();
        for (m, e) in &report.modalities {
            let l = out.mod_loss[m].double_value(&[]);
            assert!((e.loss - l).abs() < 1e-5 * l, "{m}: {} vs {l}", e.loss);
            assert!(e.unigram.is_none());
        }
        let uni = UnigramBaseline::fitted(&ckpt.model, &batches, &opts).unwrap();
        let report = evaluate(&ckpt.model, &batches, &opts, Some(&uni)).unwrap();
        let tok = &report.modalities[&Modality::TokRgb224];
        // Synthetic token ids are uniform over 8192: the fitted unigram cannot beat ln(8192)
        // by much on its own training data, and never exceeds the add-one bound.
        let ln_v = (8192f64).ln();
        let u = tok.unigram.unwrap();
        assert!(u > 0.5 * ln_v && u < ln_v + 0.1, "unigram {u} vs ln V {ln_v}");
        assert!((tok.loss - ln_v).abs() < 1.0, "untrained loss {} vs ln V {ln_v}", tok.loss);
    }

    /// A modality whose targets are always one token: the baseline's cross-entropy goes to 0.
    #[test]
    fn unigram_of_a_constant_is_near_zero() {
        let mut uni = UnigramBaseline::new();
        let ids = Tensor::from_slice(&vec![7i64; 100_000]);
        uni.counts.insert(Modality::TokRgb224, vec![0; 8192]);
        uni.counts.get_mut(&Modality::TokRgb224).unwrap()[7] = 100_000;
        let nll = uni.nll_sum(Modality::TokRgb224, &ids).unwrap().unwrap() / 100_000.0;
        assert!(nll < 0.1, "{nll}");
        assert!(uni.nll_sum(Modality::Caption, &ids).unwrap().is_none());
    }
}
