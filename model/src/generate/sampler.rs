//! The generation loop, ml-4m's `GenerationSampler.generate`: one chained schedule entry at a
//! time, MaskGIT, ROAR or autoregressive, each optionally classifier-free guided.
//!
//! Determinism: as ml-4m, step `i` seeds libtorch's global generator with `seed + i` before
//! it draws (ROAR's random order, then the multinomial samples), so a seeded run draws the
//! same numbers as ml-4m's. The whole run holds the crate's RNG lock, so another thread that
//! seeds the global generator cannot interleave.
//!
//! Guidance: the unconditional pass blanks the step's `cfg_cond_domains`
//! ([`blank_condition`]); logits are `uncond + (cond − uncond) · scale`, only when the scale is
//! not 1.0 and there is a condition (ml-4m's test).
//!
//! Shape legend: B batch, L modality length, N decoder queries, D width, V vocabulary.

use tch::{Kind, Tensor};
use tessera_tokenizers::Modality;

use crate::batch::{MaskedBatch, ModalityTensors};
use crate::error::{MissingPart, ModelError, Result};
use crate::fourm::{EncodedContext, FourM};
use crate::generate::builders::{TextSpecials, blank_condition, merge_sequences};
use crate::generate::sampling::{TopK, sample_tokens, sample_tokens_batched, top_indices_stable};
use crate::generate::schedule::{Scheme, StepSchedule, check_scheme};

/// Run-wide sampling options (`GenerationSampler.generate`'s keyword arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// top-k filter.
    pub top_k: TopK,
    /// top-p threshold (0 = off).
    pub top_p: f64,
    /// Base seed; step `i` uses `seed + i`. `None`: the generator is not re-seeded.
    pub seed: Option<i64>,
    /// Autoregressive decoding reuses each block's keys and values instead of re-running the
    /// decoder on the whole prefix for every token.
    pub kv_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { top_k: TopK::Off, top_p: 0.0, seed: Some(0), kv_cache: true }
    }
}

/// The logits a step samples from (after guidance, before filtering), shown to an observer.
#[derive(Debug)]
pub struct StepLogits<'a> {
    /// Index of the chained-schedule entry.
    pub step: usize,
    /// The target modality.
    pub target: Modality,
    /// The decoding scheme.
    pub scheme: Scheme,
    /// For autoregressive steps, the index of the token being decoded; 0 otherwise.
    pub token: usize,
    /// (B, N, V) for MaskGIT/ROAR, (B, V) for one autoregressive token.
    pub logits: &'a Tensor,
    /// Target positions (B, N) the MaskGIT/ROAR queries stand for; `None` for autoregression.
    pub positions: Option<&'a Tensor>,
}

/// Generates target modalities with a trained [`FourM`].
#[derive(Debug)]
pub struct GenerationSampler<'a> {
    pub(super) model: &'a FourM,
    pub(super) specials: TextSpecials,
}

/// Sampling settings of one step.
pub(super) struct StepParams<'s> {
    pub(super) index: usize,
    pub(super) info: &'s StepSchedule,
    pub(super) top_k: TopK,
    pub(super) top_p: f64,
    pub(super) kv_cache: bool,
}

impl<'s> StepParams<'s> {
    fn guided(&self) -> bool {
        self.info.cfg_scale != 1.0 && !self.info.cfg_cond_domains.is_empty()
    }
}

impl<'a> GenerationSampler<'a> {
    /// A sampler for `model`; `specials` are the text vocabulary's ids (sequence targets).
    pub fn new(model: &'a FourM, specials: TextSpecials) -> Self {
        Self { model, specials }
    }

    /// Runs every step of `steps` on `batch` (conditions as full inputs, targets as empty
    /// targets) and returns the final batch.
    pub fn generate(&self, batch: &MaskedBatch, steps: &[StepSchedule], opts: &GenerateOptions) -> Result<MaskedBatch> {
        self.generate_observed(batch, steps, opts, &mut |_| {})
    }

    /// [`GenerationSampler::generate`], showing `observe` the logits of every sampling.
    pub fn generate_observed(
        &self,
        batch: &MaskedBatch,
        steps: &[StepSchedule],
        opts: &GenerateOptions,
        observe: &mut dyn FnMut(StepLogits<'_>),
    ) -> Result<MaskedBatch> {
        self.validate(batch, steps)?;
        if steps.iter().any(|s| !s.cfg_weights.is_empty()) {
            return self.generate_multi_guided(batch, steps, opts, observe);
        }
        let _guard = crate::weights::RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::no_grad(|| {
            let mut batch = batch.shallow_clone();
            for (index, info) in steps.iter().enumerate() {
                if let Some(seed) = opts.seed {
                    tch::manual_seed(seed + index as i64);
                }
                let p = StepParams { index, info, top_k: opts.top_k, top_p: opts.top_p, kv_cache: opts.kv_cache };
                let updated = match info.scheme {
                    Scheme::MaskGit | Scheme::Roar => self.grid_step(&batch, &p, observe)?,
                    Scheme::Autoregressive => self.autoregressive_step(&batch, &p, observe)?,
                };
                batch.modalities.insert(info.target, updated);
            }
            Ok(batch)
        })
    }

    /// Every target must be decodable and present, every guidance condition present, every
    /// token id inside its vocabulary (an out-of-range id would abort inside libtorch).
    pub(super) fn validate(&self, batch: &MaskedBatch, steps: &[StepSchedule]) -> Result<()> {
        let missing = |m: Modality, part| ModelError::GenerationModality { modality: m.key().to_string(), missing: part };
        for (m, t) in &batch.modalities {
            let vocab = m.spec().vocab_size as i64;
            if vocab == 0 || t.tensor.numel() == 0 {
                continue;
            }
            let (lo, hi) = (t.tensor.min().int64_value(&[]), t.tensor.max().int64_value(&[]));
            if lo < 0 || hi >= vocab {
                return Err(ModelError::Batch {
                    source_name: "<generate>".into(),
                    modality: m.key().to_string(),
                    key: format!("{m}.tensor"),
                    reason: format!("token ids span [{lo}, {hi}], outside the vocabulary [0, {vocab})"),
                });
            }
        }
        for s in steps {
            self.model.decoder_embedding(s.target)?;
            check_scheme(s.target, s.scheme)?;
            if !batch.modalities.contains_key(&s.target) {
                return Err(missing(s.target, MissingPart::InBatch));
            }
            if s.cfg_scale != 1.0 {
                for &c in &s.cfg_cond_domains {
                    if !batch.modalities.contains_key(&c) && !steps.iter().any(|o| o.target == c) {
                        return Err(missing(c, MissingPart::InBatch));
                    }
                }
            }
        }
        Ok(())
    }

    /// The unconditional batch of a guided step.
    fn unconditional(&self, batch: &MaskedBatch, conds: &[Modality]) -> Result<MaskedBatch> {
        let mut uncond = batch.shallow_clone();
        for &c in conds {
            let t = batch
                .modalities
                .get(&c)
                .ok_or(ModelError::GenerationModality { modality: c.key().to_string(), missing: MissingPart::InBatch })?;
            uncond.modalities.insert(c, blank_condition(c, t, &self.specials));
        }
        Ok(uncond)
    }

    /// Logits (B, N, V) of mask-token queries at `pos_bn` of an image-like target.
    pub(super) fn grid_logits(&self, batch: &MaskedBatch, target: Modality, pos_bn: &Tensor) -> Result<Tensor> {
        let ctx = self.model.encode_for_generation(batch)?;
        let de = self.model.decoder_embedding(target)?;
        let t = &batch.modalities[&target];
        let emb_bld = de.forward_embed(t).emb;
        let (b, n) = (pos_bn.size()[0], pos_bn.size()[1]);
        let d = emb_bld.size()[2];
        let pad_bn = t.target_mask.gather(1, pos_bn, false);
        let emb_bnd = emb_bld.gather(1, &pos_bn.unsqueeze(-1).expand([b, n, d], false), false).masked_fill(&pad_bn.unsqueeze(-1), 0.0);
        let tokens_bnd = self.model.mask_token().expand([b, n, d], false).masked_fill(&pad_bn.unsqueeze(-1), 0.0);
        let y_bnd = self.model.decode_queries(&(tokens_bnd + emb_bnd), &ctx, None);
        Ok(de.logits(&y_bnd))
    }

    /// One MaskGIT or ROAR step: returns the target's tensors after it.
    fn grid_step(&self, batch: &MaskedBatch, p: &StepParams<'_>, observe: &mut dyn FnMut(StepLogits<'_>)) -> Result<ModalityTensors> {
        let t = &batch.modalities[&p.info.target];
        self.grid_step_with(t, p, &|pos_bn| self.guided_grid_logits(batch, p, pos_bn), observe)
    }

    /// One MaskGIT or ROAR step on the target's tensors `t`, with `logits_at` giving the
    /// (guided) logits at the chosen query positions.
    pub(super) fn grid_step_with(
        &self,
        t: &ModalityTensors,
        p: &StepParams<'_>,
        logits_at: &dyn Fn(&Tensor) -> Result<Tensor>,
        observe: &mut dyn FnMut(StepLogits<'_>),
    ) -> Result<ModalityTensors> {
        let target = p.info.target;
        let masked = t.target_mask.get(0).logical_not().sum(Kind::Int64).int64_value(&[]);
        let requested = p.info.num_tokens.unwrap_or(masked);
        if requested < 0 || (p.info.scheme == Scheme::MaskGit && requested > masked) {
            return Err(ModelError::StepTokens { step: p.index, modality: target.key().to_string(), requested, available: masked });
        }
        // Still-masked positions in ascending order (MaskGIT), or in a seeded random order
        // (ROAR: 1e-6 · U(0,1) added to the mask, ml-4m's f32 arithmetic).
        let order_bl = match p.info.scheme {
            Scheme::Roar => {
                let l = t.target_mask.size()[1];
                let noise_1l = Tensor::rand([l], (Kind::Float, t.target_mask.device())).unsqueeze(0) * 1e-6;
                let key = t.target_mask.to_kind(Kind::Float) + noise_1l;
                key.sort_stable(true, 1, false).1
            }
            _ => t.target_mask.to_kind(Kind::Uint8).sort_stable(true, 1, false).1,
        };
        let n = match p.info.scheme {
            Scheme::Roar => requested.min(masked),
            _ => masked,
        };
        let pos_bn = order_bl.narrow(1, 0, n);
        let logits_bnv = logits_at(&pos_bn)?;
        observe(StepLogits { step: p.index, target, scheme: p.info.scheme, token: 0, logits: &logits_bnv, positions: Some(&pos_bn) });
        let (samples_bn, probs_bn) = sample_tokens_batched(&logits_bnv, p.info.temperature, p.top_k, p.top_p)?;
        let (write_pos, write_ids) = match p.info.scheme {
            Scheme::MaskGit => {
                let top_bk = top_indices_stable(&probs_bn, requested);
                (pos_bn.gather(1, &top_bk, false), samples_bn.gather(1, &top_bk, false))
            }
            _ => (pos_bn, samples_bn),
        };
        Ok(ModalityTensors {
            tensor: t.tensor.scatter(1, &write_pos, &write_ids),
            input_mask: t.input_mask.scatter_value(1, &write_pos, 0),
            target_mask: t.target_mask.scatter_value(1, &write_pos, 1),
            decoder_attention_mask: t.decoder_attention_mask.shallow_clone(),
        })
    }

    fn guided_grid_logits(&self, batch: &MaskedBatch, p: &StepParams<'_>, pos_bn: &Tensor) -> Result<Tensor> {
        let cond = self.grid_logits(batch, p.info.target, pos_bn)?;
        if !p.guided() {
            return Ok(cond);
        }
        let uncond = self.grid_logits(&self.unconditional(batch, &p.info.cfg_cond_domains)?, p.info.target, pos_bn)?;
        Ok(guide(&uncond, &cond, p.info.cfg_scale))
    }

    /// One autoregressive step: decodes the whole sequence target and merges it back.
    fn autoregressive_step(
        &self,
        batch: &MaskedBatch,
        p: &StepParams<'_>,
        observe: &mut dyn FnMut(StepLogits<'_>),
    ) -> Result<ModalityTensors> {
        let target = p.info.target;
        let t = &batch.modalities[&target];
        let de = self.model.decoder_embedding(target)?;
        let n_targets = t.target_mask.get(0).logical_not().sum(Kind::Int64).int64_value(&[]);
        if n_targets == 0 {
            return Err(ModelError::StepTokens { step: p.index, modality: target.key().to_string(), requested: 1, available: 0 });
        }
        let pos_bn = t.target_mask.to_kind(Kind::Uint8).sort_stable(true, 1, false).1.narrow(1, 0, n_targets);
        let pad_bn = t.target_mask.gather(1, &pos_bn, false);
        let emb_bld = de.forward_embed(t).emb;
        let (b, d) = (pos_bn.size()[0], emb_bld.size()[2]);
        let emb_bnd =
            emb_bld.gather(1, &pos_bn.unsqueeze(-1).expand([b, n_targets, d], false), false).masked_fill(&pad_bn.unsqueeze(-1), 0.0);
        let ids_bn = t.tensor.gather(1, &pos_bn, false).masked_fill(&pad_bn, 0);
        // The stop token is row 0's last target token (the closing sentinel of an empty target).
        let stop = ids_bn.int64_value(&[0, n_targets - 1]);
        let mut out_bt = ids_bn.narrow(1, 0, 1);
        if bool::try_from(out_bt.eq(stop).any_dim(-1, false).all())? {
            // ml-4m returns the bare prefix here (and then fails); nothing is left to decode.
            return Ok(t.shallow_clone());
        }
        let seq_len = (target.spec().max_tokens as i64).min(n_targets);
        let ctx_cond = self.model.encode_for_generation(batch)?;
        let ctx_uncond =
            if p.guided() { Some(self.model.encode_for_generation(&self.unconditional(batch, &p.info.cfg_cond_domains)?)?) } else { None };
        let mut caches =
            p.kv_cache.then(|| (self.model.new_decoder_cache(&ctx_cond), ctx_uncond.as_ref().map(|c| self.model.new_decoder_cache(c))));
        for i in 0..seq_len {
            let cur = out_bt.size()[1];
            let last_hidden = |ctx: &EncodedContext, cache: Option<&mut crate::fourm::DecoderCache>| -> Tensor {
                match cache {
                    Some(cache) => {
                        let y_b1d = de.token_embed(&out_bt.narrow(1, cur - 1, 1)) + emb_bnd.narrow(1, cur - 1, 1);
                        self.model.decode_cached(&y_b1d, ctx, cache)
                    }
                    None => {
                        let y_btd = de.token_embed(&out_bt) + emb_bnd.narrow(1, 0, cur);
                        let causal_btt = Tensor::ones([cur, cur], (Kind::Bool, y_btd.device())).triu(1).expand([b, cur, cur], false);
                        self.model.decode_queries(&y_btd, ctx, Some(&causal_btt)).narrow(1, cur - 1, 1)
                    }
                }
            };
            let (cache_c, cache_u) = match caches.as_mut() {
                Some((c, u)) => (Some(c), u.as_mut()),
                None => (None, None),
            };
            let cond_bv = de.logits(&last_hidden(&ctx_cond, cache_c)).squeeze_dim(1);
            let logits_bv = match &ctx_uncond {
                Some(ctx_u) => guide(&de.logits(&last_hidden(ctx_u, cache_u)).squeeze_dim(1), &cond_bv, p.info.cfg_scale),
                None => cond_bv,
            };
            observe(StepLogits {
                step: p.index,
                target,
                scheme: Scheme::Autoregressive,
                token: i as usize,
                logits: &logits_bv,
                positions: None,
            });
            let (ids_b, _) = sample_tokens(&logits_bv, p.info.temperature, p.top_k, p.top_p)?;
            out_bt = Tensor::cat(&[&out_bt, &ids_b.unsqueeze(1)], 1);
            if bool::try_from(out_bt.eq(stop).any_dim(-1, false).all())? {
                break;
            }
        }
        merge_sequences(t, &out_bt, &self.specials)
    }
}

/// Classifier-free guidance in ml-4m's operation order: `uncond + (cond − uncond) · scale`.
pub fn guide(uncond: &Tensor, cond: &Tensor, scale: f64) -> Tensor {
    uncond + (cond - uncond) * scale
}

/// Multi-condition guidance (ml-4m `multi_guided_*`): `uncond + Σ wᵢ (condᵢ − uncond)`.
pub fn guide_multi(uncond: &Tensor, conds: &[(Tensor, f64)]) -> Tensor {
    let terms: Vec<Tensor> = conds.iter().map(|(c, w)| (c - uncond) * *w).collect();
    if terms.is_empty() { uncond.shallow_clone() } else { uncond + Tensor::stack(&terms, 0).sum_dim_intlist(0, false, None) }
}
