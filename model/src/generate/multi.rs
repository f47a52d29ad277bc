//! Multi-condition guidance, ml-4m's `GenerationSampler.generate_multi_guided`: every condition
//! gets its own conditional pass, and the logits are `uncond + Σ wᵢ·(condᵢ − uncond)`
//! (Liu et al. 2022, composable diffusion), so a user can weigh, say, a caption against a
//! depth map.
//!
//! The passes, as ml-4m builds them from a caller's `uncond_dict` and `cond_dicts`:
//! - unconditional: the batch with every `cond_domains` modality blanked the way single
//!   guidance blanks it (a sequence keeps one `[S_1]`, an image is fully masked), plus the
//!   targets;
//! - condition i: that one modality as given, plus the target being decoded.
//!
//! When a target is finished it leaves the unconditional inputs (its input mask becomes all
//! true, which is also how it comes back in the result) and joins as one more condition, so
//! target j weighs `cond_domains.len() + j` conditions. Every step re-seeds with the run's
//! seed itself (ml-4m passes `seed`, not `seed + step`, here).
//!
//! One deliberate difference: ml-4m's `multi_guided_roar_step_batched` writes the inverted
//! masks into its conditional dicts (input mask set, target mask cleared), so its conditional
//! passes never see the tokens decoded so far and query other positions than the
//! unconditional pass; tessera keeps every pass on the same target state, as its MaskGIT
//! path does. The reference script patches ml-4m the same way for the comparison.

use std::collections::BTreeMap;

use tch::Tensor;
use tessera_tokenizers::Modality;

use crate::batch::{MaskedBatch, ModalityTensors};
use crate::error::{MissingPart, ModelError, Result};
use crate::generate::builders::blank_condition;
use crate::generate::sampler::{GenerateOptions, GenerationSampler, StepLogits, StepParams, guide_multi};
use crate::generate::schedule::{Scheme, StepSchedule};

impl GenerationSampler<'_> {
    /// Runs a schedule whose steps carry multi-condition weights (`cfg_weights`).
    pub(super) fn generate_multi_guided(
        &self,
        batch: &MaskedBatch,
        steps: &[StepSchedule],
        opts: &GenerateOptions,
        observe: &mut dyn FnMut(StepLogits<'_>),
    ) -> Result<MaskedBatch> {
        let Some(first) = steps.first() else { return Ok(batch.shallow_clone()) };
        for s in steps {
            if s.scheme == Scheme::Autoregressive || s.cfg_weights.is_empty() {
                return Err(ModelError::MultiGuidance { modality: s.target.key().to_string() });
            }
        }
        let missing = |m: Modality| ModelError::GenerationModality { modality: m.key().to_string(), missing: MissingPart::InBatch };
        // The conditions of the first target are the schedule's `cond_domains`.
        let mut conds: Vec<(Modality, ModalityTensors)> = Vec::new();
        let mut uncond = batch.shallow_clone();
        for &c in &first.cfg_cond_domains {
            let t = batch.modalities.get(&c).ok_or_else(|| missing(c))?;
            conds.push((c, t.shallow_clone()));
            uncond.modalities.insert(c, blank_condition(c, t, &self.specials));
        }
        let _guard = crate::weights::RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::no_grad(|| {
            let mut current = first.target;
            for (index, info) in steps.iter().enumerate() {
                if info.target != current {
                    // The finished target leaves the unconditional inputs and conditions alone.
                    let done = uncond.modalities.get_mut(&current).ok_or_else(|| missing(current))?;
                    done.input_mask = done.input_mask.ones_like();
                    let as_cond = ModalityTensors {
                        tensor: done.tensor.shallow_clone(),
                        input_mask: done.input_mask.zeros_like(),
                        target_mask: done.target_mask.ones_like(),
                        decoder_attention_mask: done.decoder_attention_mask.shallow_clone(),
                    };
                    conds.push((current, as_cond));
                    current = info.target;
                }
                if let Some(seed) = opts.seed {
                    tch::manual_seed(seed);
                }
                let p = StepParams { index, info, top_k: opts.top_k, top_p: opts.top_p, kv_cache: opts.kv_cache };
                let t = uncond.modalities.get(&info.target).ok_or_else(|| missing(info.target))?;
                let logits_at = |pos_bn: &Tensor| -> Result<Tensor> {
                    // ml-4m's order: each conditional pass, then the unconditional one; a
                    // condition without a weight is left out as ml-4m's `zip` does.
                    let mut cond_logits = Vec::with_capacity(conds.len());
                    for ((m, ct), &w) in conds.iter().zip(&info.cfg_weights) {
                        let pass = MaskedBatch { modalities: BTreeMap::from([(*m, ct.shallow_clone()), (info.target, t.shallow_clone())]) };
                        cond_logits.push((self.grid_logits(&pass, info.target, pos_bn)?, w));
                    }
                    let uncond_logits = self.grid_logits(&uncond, info.target, pos_bn)?;
                    Ok(guide_multi(&uncond_logits, &cond_logits))
                };
                let updated = self.grid_step_with(t, &p, &logits_at, observe)?;
                uncond.modalities.insert(info.target, updated);
            }
            // Conditions come back as they were given, targets as ml-4m's unconditional dict
            // holds them.
            let mut out = batch.shallow_clone();
            for s in steps {
                out.modalities.insert(s.target, uncond.modalities[&s.target].shallow_clone());
            }
            Ok(out)
        })
    }
}
