//! Validation on the ranks: the world scores the held-out set with its sharded parameters,
//! forward only, each rank on its share of the held-out micro-batches. The result equals
//! one-process validation: per-batch scores travel exactly and are folded in batch order.

use std::collections::BTreeMap;

use tch::Tensor;
use tessera_model::{ForwardOptions, MaskedBatch, Staged};
use tessera_ops::{Collective, ReduceOp, shard_range};
use tessera_protocol::ValidationReport;
use tessera_tokenizers::Modality;

use super::{FsdpTrainer, amp};
use crate::error::{Result, WorkerError};
use crate::eval::{BatchScore, EvalReport, UnigramBaseline, ValidationSet, batch_scores, fold_scores, scoring_options};
use crate::source::BatchSource;
use crate::trainer::eval_options;

/// i64 slots per (batch, output modality) in the exchange: tokens, loss bits, baseline bits.
const SLOTS: usize = 3;

impl<C: Collective + 'static, S: BatchSource> FsdpTrainer<C, S> {
    /// Scores `set` with the current parameters (collective: every rank calls it at the same
    /// step) and returns the whole report on every rank.
    ///
    /// Each rank forwards a contiguous share of the held-out micro-batches, in groups of as
    /// many as a training step gives it (so activations stay within training's), block unit by
    /// block unit: one all-gather of each unit per group, not per batch. The per-batch scores
    /// are then exchanged bit for bit (f64 bit patterns summed as i64 with only the owner's
    /// slots non-zero) and folded in batch order, as one process folds them.
    pub fn evaluate(&mut self, set: &ValidationSet) -> Result<EvalReport> {
        let (world, rank) = (self.coll.world(), self.coll.rank().0 as usize);
        let opts = eval_options(&self.job);
        let baseline = set.baseline(&self.model.model, &opts)?;
        let n = set.val.len();
        let k = self.outputs.len();
        let t = &self.job.train;
        let group = t.global_batch_size.div_ceil(world).div_ceil(t.micro_batch_size).max(1);
        if let Some(r) = self.units.iter().position(|u| u.name == "rest") {
            // Re-gathered: the resident copy predates the last optimizer step.
            self.gather_unit(r)?;
        }
        let mine: Vec<usize> = shard_range(n, world, rank).collect();
        // Every rank runs as many groups as the largest share needs (rank 0's): each group
        // gathers every unit, so a rank with fewer batches (or none) still takes part.
        let rounds = shard_range(n, world, 0).len().div_ceil(group);
        let mut slots = vec![0i64; n * k * SLOTS];
        for r in 0..rounds {
            let chunk = &mine[(r * group).min(mine.len())..((r + 1) * group).min(mine.len())];
            let batches: Vec<&MaskedBatch> = chunk.iter().map(|&b| &set.val[b]).collect();
            for (&b, scores) in chunk.iter().zip(self.forward_scores(&batches, &opts, baseline)?) {
                for s in scores {
                    let mi = self.outputs.iter().position(|m| *m == s.modality).ok_or_else(|| WorkerError::Layout {
                        rank: self.coll.rank().0,
                        step: self.state.step,
                        detail: format!("validation scored {}, which is not a target modality", s.modality.key()),
                    })?;
                    let at = (b * k + mi) * SLOTS;
                    slots[at] = s.tokens as i64;
                    slots[at + 1] = s.loss.to_bits() as i64;
                    slots[at + 2] = s.unigram_nll.to_bits() as i64;
                }
            }
        }
        let r = self.coll.all_reduce(&mut slots, ReduceOp::Sum);
        self.comm(r)?;
        let mut scores = Vec::new();
        for (i, s) in slots.chunks_exact(SLOTS).enumerate() {
            if s[0] > 0 {
                scores.push(BatchScore {
                    modality: self.outputs[i % k],
                    tokens: s[0] as u64,
                    loss: f64::from_bits(s[1] as u64),
                    unigram_nll: f64::from_bits(s[2] as u64),
                });
            }
        }
        Ok(fold_scores(&scores, Some(baseline)))
    }

    /// [`Self::evaluate`] at the current step, timed, as the report ranks send and logs record
    /// (`generation`: the generation the ranks train in).
    pub fn validation_report(&mut self, set: &ValidationSet, generation: u64) -> Result<ValidationReport> {
        let started = std::time::Instant::now();
        let report = self.evaluate(set)?;
        Ok(report.to_report(generation, self.state.step, set.samples(), started.elapsed().as_secs_f64()))
    }

    /// Forward passes of `batches` together, unit by unit (gathered just before use, freed
    /// after), without autograd; the scores of each batch. Collective even for no batches.
    fn forward_scores(
        &mut self,
        batches: &[&MaskedBatch],
        opts: &ForwardOptions,
        baseline: &UnigramBaseline,
    ) -> Result<Vec<Vec<BatchScore>>> {
        let bf16 = self.job.train.bf16;
        let (enc_units, dec_units) = self.block_units()?;
        let order: Vec<usize> = enc_units.iter().chain(&dec_units).copied().collect();
        let n_enc = enc_units.len();
        tch::no_grad(|| {
            let mut prepared: Vec<(ForwardOptions, BTreeMap<Modality, Tensor>, Staged)> = Vec::with_capacity(batches.len());
            for batch in batches {
                let batch = batch.to_device(self.device);
                let (o, tokens) = scoring_options(&self.model.model, &batch, opts)?;
                let staged = amp(bf16, || self.model.model.stage_embed(&batch, &o))?;
                prepared.push((o, tokens, staged));
            }
            let mut ahead = None;
            let mut xs: Vec<Tensor> = prepared.iter().map(|(_, _, s)| s.encoder_input()).collect();
            for (i, &u) in enc_units.iter().enumerate() {
                self.advance(&order, i, &mut ahead)?;
                for (x, (_, _, s)) in xs.iter_mut().zip(&prepared) {
                    *x = amp(bf16, || self.model.model.stage_encoder_block(i, x, s));
                }
                self.free_unit(u)?;
            }
            let contexts: Vec<Tensor> =
                xs.iter().zip(&prepared).map(|(x, (_, _, s))| amp(bf16, || self.model.model.stage_context(x, s))).collect();
            drop(xs);
            let mut ys: Vec<Tensor> = prepared.iter().map(|(_, _, s)| s.decoder_input()).collect();
            for (j, &u) in dec_units.iter().enumerate() {
                self.advance(&order, n_enc + j, &mut ahead)?;
                for ((y, c), (_, _, s)) in ys.iter_mut().zip(&contexts).zip(&prepared) {
                    *y = amp(bf16, || self.model.model.stage_decoder_block(j, y, c, s));
                }
                self.free_unit(u)?;
            }
            ys.iter()
                .zip(&prepared)
                .map(|(y, (o, tokens, s))| {
                    let out = amp(bf16, || self.model.model.stage_losses(y, s, o))?;
                    batch_scores(&out.mod_loss, tokens, Some(baseline))
                })
                .collect()
        })
    }
}
