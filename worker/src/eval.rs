//! Validation: each modality's cross-entropy on held-out batches, token-weighted across
//! batches, beside the unigram baseline a trained model must beat (each modality's target-token
//! frequencies fitted on training batches, add-one smoothed).

use std::collections::BTreeMap;

use serde::Serialize;
use tch::{Kind, Tensor};
use tessera_model::{ForwardOptions, FourM, FourMConfig, MaskedBatch};
use tessera_protocol::{ModalityScore, ResolvedJob, SampleLedger, SampleRef, ValidationReport};
use tessera_tokenizers::Modality;

use crate::data::{open_job_data, open_val_data};
use crate::error::Result;
use crate::source::BatchSource;

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

/// One batch's contribution to one modality's score: what ranks exchange so that the world's
/// validation sums the same numbers in the same order as one process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchScore {
    /// The modality.
    pub modality: Modality,
    /// Its target tokens in the batch.
    pub tokens: u64,
    /// The model's mean cross-entropy over them.
    pub loss: f64,
    /// The baseline's summed negative log-likelihood over them (0 without a fitted baseline).
    pub unigram_nll: f64,
}

/// The options that make a forward's per-modality losses exact means over `batch`'s targets:
/// its own target counts as the normaliser. Also returns the target ids (for the baseline).
pub fn scoring_options(model: &FourM, batch: &MaskedBatch, opts: &ForwardOptions) -> Result<(ForwardOptions, BTreeMap<Modality, Tensor>)> {
    let tokens = model.target_tokens(batch, opts)?;
    let counts: BTreeMap<Modality, i64> = tokens.iter().map(|(m, t)| (*m, t.numel() as i64)).collect();
    Ok((ForwardOptions { loss_normalizer: Some(counts), ..opts.clone() }, tokens))
}

/// The scores of one batch from its forward's per-modality losses (under [`scoring_options`])
/// and its target ids; modalities without targets are left out.
pub fn batch_scores(
    mod_loss: &BTreeMap<Modality, Tensor>,
    tokens: &BTreeMap<Modality, Tensor>,
    baseline: Option<&UnigramBaseline>,
) -> Result<Vec<BatchScore>> {
    let mut scores = Vec::new();
    for (&modality, ids) in tokens {
        let n = ids.numel() as u64;
        if n == 0 {
            continue;
        }
        let unigram_nll = match baseline {
            Some(b) => b.nll_sum(modality, ids)?.unwrap_or(0.0),
            None => 0.0,
        };
        scores.push(BatchScore { modality, tokens: n, loss: mod_loss[&modality].double_value(&[]), unigram_nll });
    }
    Ok(scores)
}

/// Folds batch scores, in batch order, into the token-weighted report.
pub fn fold_scores<'a>(scores: impl IntoIterator<Item = &'a BatchScore>, baseline: Option<&UnigramBaseline>) -> EvalReport {
    let mut sums: BTreeMap<Modality, (u64, f64, f64)> = BTreeMap::new();
    for s in scores {
        let e = sums.entry(s.modality).or_default();
        e.0 += s.tokens;
        e.1 += s.loss * s.tokens as f64;
        e.2 += s.unigram_nll;
    }
    let modalities = sums
        .into_iter()
        .map(|(m, (n, loss, uni))| {
            let fitted = baseline.is_some_and(|b| b.counts.contains_key(&m));
            (m, ModalityEval { tokens: n, loss: loss / n as f64, unigram: fitted.then(|| uni / n as f64) })
        })
        .collect();
    EvalReport { modalities }
}

/// Scores `model` on `batches` (no gradients): per-modality token-weighted cross-entropy, and
/// the baseline's on the same tokens.
pub fn evaluate<'a>(
    model: &FourM,
    batches: impl IntoIterator<Item = &'a MaskedBatch>,
    opts: &ForwardOptions,
    baseline: Option<&UnigramBaseline>,
) -> Result<EvalReport> {
    let mut scores = Vec::new();
    for batch in batches {
        let (o, tokens) = scoring_options(model, batch, opts)?;
        let out = tch::no_grad(|| model.forward(batch, &o))?;
        scores.extend(batch_scores(&out.mod_loss, &tokens, baseline)?);
    }
    Ok(fold_scores(&scores, baseline))
}

impl EvalReport {
    /// The report as ranks send it and logs record it (`seconds`: how long scoring took).
    pub fn to_report(&self, generation: u64, step: u64, samples: u64, seconds: f64) -> ValidationReport {
        let modalities = self
            .modalities
            .iter()
            .map(|(m, e)| ((*m).into(), ModalityScore { tokens: e.tokens, loss: e.loss, unigram: e.unigram }))
            .collect();
        ValidationReport { generation, step, samples, modalities, seconds }
    }
}

/// A job's fixed held-out batches and the training batches its unigram baseline is fitted on
/// (once, at first use). When to validate is the step driver's ([`crate::driver::Plan`]).
#[derive(Debug)]
pub struct ValidationSet {
    /// The held-out batches, in micro-batches, in ledger order.
    pub val: Vec<MaskedBatch>,
    /// The baseline's training batches, emptied once it is fitted (with image modalities they
    /// are hundreds of MiB that a long job would otherwise keep for nothing).
    fit: std::cell::RefCell<Vec<MaskedBatch>>,
    baseline: std::cell::OnceCell<UnigramBaseline>,
}

impl ValidationSet {
    /// Loads the held-out batches (and the baseline's training batches) when the job validates
    /// ([`ResolvedJob::validates`]); `None` otherwise (the launcher prints why, see
    /// [`ResolvedJob::notes`]).
    pub fn prepare(job: &ResolvedJob, cfg: &FourMConfig) -> Result<Option<Self>> {
        let e = &job.eval;
        if e.every_steps == 0 {
            return Ok(None);
        }
        let mods = cfg.all_domains();
        let Some((mut pipeline, ledger)) = open_val_data(job, &mods)? else {
            return Ok(None);
        };
        let batch = job.train.micro_batch_size as u64;
        let chunks = |p: &mut dyn FnMut(&[SampleRef]) -> Result<MaskedBatch>, l: &SampleLedger, n: u64| {
            (0..n.div_ceil(batch)).map(|k| p(&l.locate_range(k * batch, batch.min(n - k * batch)))).collect::<Result<Vec<_>>>()
        };
        let val = chunks(&mut |r| pipeline.batch(r), &ledger, e.samples)?;
        let mut train = open_job_data(job, &mods)?;
        let train_ledger = SampleLedger::new(job.seed, job.schedule.clone(), train.dataset_lens())?;
        let fit = chunks(&mut |r| train.batch(r), &train_ledger, e.baseline_samples)?;
        Ok(Some(Self { val, fit: std::cell::RefCell::new(fit), baseline: std::cell::OnceCell::new() }))
    }

    /// Held-out samples.
    pub fn samples(&self) -> u64 {
        self.val.iter().map(|b| b.batch_size() as u64).sum()
    }

    /// The unigram baseline, fitted on the training batches at the first call (the target
    /// ids depend on the masks and `opts` only, not on parameter values).
    pub fn baseline(&self, model: &FourM, opts: &ForwardOptions) -> Result<&UnigramBaseline> {
        if let Some(b) = self.baseline.get() {
            return Ok(b);
        }
        let b = UnigramBaseline::fitted(model, &self.fit.borrow(), opts)?;
        *self.fit.borrow_mut() = Vec::new();
        Ok(self.baseline.get_or_init(|| b))
    }

    /// [`Self::score`] at step count `step`, timed, as the report logs record.
    pub fn report(&self, model: &FourM, device: tch::Device, opts: &ForwardOptions, step: u64) -> Result<ValidationReport> {
        let started = std::time::Instant::now();
        let scored = self.score(model, device, opts)?;
        Ok(scored.to_report(0, step, self.samples(), started.elapsed().as_secs_f64()))
    }

    /// Scores a whole single-device `model` (no gradients) on the held-out batches, moved to
    /// `device`.
    pub fn score(&self, model: &FourM, device: tch::Device, opts: &ForwardOptions) -> Result<EvalReport> {
        let baseline = self.baseline(model, opts)?;
        let on_device: Vec<MaskedBatch> = self.val.iter().map(|b| b.to_device(device)).collect();
        evaluate(model, &on_device, opts, Some(baseline))
    }
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
