//! `FourM`: the masked multimodal encoder-decoder of ml-4m `fm.py`, single-device.
//!
//! The forward pass follows ml-4m step by step: per-modality embeddings; encoder token
//! selection (valid tokens first, stable, keep `N_enc`); decoder token selection with the
//! one-token shift for sequences and the mask token for images; the compressed decoder
//! attention mask expanded with a cumsum and modality separation; context projection with
//! the encoder embeddings re-added; per-modality cross-entropy combined by the 'mod' or
//! 'token' rule.
//!
//! Shape legend: B batch, O all encoder slots, N kept encoder tokens, P all decoder slots,
//! M kept decoder tokens, D width.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use tch::nn::{self, Init};
use tch::{Device, Kind, Reduction, Tensor};
use tessera_tokenizers::{Modality, ModalityKind};

use crate::batch::MaskedBatch;
use crate::config::FourMConfig;
use crate::embeddings::{DecoderEmbedding, EncoderEmbedding, INIT_STD};
use crate::error::{ModelError, Result};
use crate::layers::{Block, DecoderBlock, LayerNorm, Linear, LinearInit};

mod inference;
pub(crate) use inference::{DecoderCache, EncodedContext};

/// How per-modality losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossType {
    /// Mean of per-modality mean cross-entropies over every decoder modality in the batch
    /// (modalities without targets count as 0), ml-4m's `mod`.
    Mod,
    /// Per-modality losses weighted by ml-4m's `logits.numel()` counts (tokens × vocabulary,
    /// reproduced as written in ml-4m), its `token`.
    Token,
}

impl std::str::FromStr for LossType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mod" | "modality" => Ok(Self::Mod),
            "token" => Ok(Self::Token),
            other => Err(ModelError::Config { field: "loss".into(), reason: format!("'{other}' is not 'mod' or 'token'") }),
        }
    }
}

/// Knobs of one forward pass.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// Encoder token budget (ml-4m `num_encoder_tokens`).
    pub num_encoder_tokens: i64,
    /// Decoder token budget (ml-4m `num_decoder_tokens`).
    pub num_decoder_tokens: i64,
    /// Loss combination.
    pub loss: LossType,
    /// Seed for the per-batch shuffle of decoder modality order (ml-4m shuffles with Python's
    /// `random`); `None` keeps key order. Only matters when targets exceed the decoder budget.
    pub decoder_order_seed: Option<u64>,
    /// Also return per-modality logits of the selected target tokens.
    pub return_logits: bool,
    /// Per-modality target-token counts of the *whole* batch this forward is a part of (a
    /// micro-batch, or one rank's share). When set, the losses are this part's *contributions*:
    /// summing them over all parts gives exactly the loss of the whole batch, whatever the split
    /// (see [`FourM::target_counts`]). `None`: the losses of this batch alone (ml-4m).
    pub loss_normalizer: Option<BTreeMap<Modality, i64>>,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self {
            num_encoder_tokens: 256,
            num_decoder_tokens: 256,
            loss: LossType::Mod,
            decoder_order_seed: None,
            return_logits: false,
            loss_normalizer: None,
        }
    }
}

/// Result of a forward pass.
#[derive(Debug)]
pub struct ForwardOutput {
    /// The combined loss (scalar).
    pub loss: Tensor,
    /// Per-modality mean cross-entropy (scalar each; 0 for modalities without targets).
    pub mod_loss: BTreeMap<Modality, Tensor>,
    /// Logits (K, V) of each modality's selected targets, if requested.
    pub logits: BTreeMap<Modality, Tensor>,
    /// Number of target tokens per modality that entered the loss.
    pub target_counts: BTreeMap<Modality, i64>,
}

/// The 4M model. Parameter names equal ml-4m's `FourM.state_dict()` keys.
#[derive(Debug)]
pub struct FourM {
    cfg: FourMConfig,
    encoder_embeddings: BTreeMap<Modality, EncoderEmbedding>,
    decoder_embeddings: BTreeMap<Modality, DecoderEmbedding>,
    encoder: Vec<Block>,
    encoder_norm: LayerNorm,
    decoder_proj_context: Linear,
    decoder: Vec<DecoderBlock>,
    decoder_norm: LayerNorm,
    mask_token: Tensor,
    /// (alias key, canonical key): names ml-4m's state dict holds twice for one tensor.
    aliases: Vec<(String, String)>,
}

impl FourM {
    /// Builds and initialises the model under `p` (normally a fresh `VarStore`'s root).
    pub fn new(p: &nn::Path, cfg: &FourMConfig) -> Result<Self> {
        Self::new_with(p, cfg, &mut |_| {})
    }

    /// [`FourM::new`], calling `after_block` with each transformer block's path (`encoder.3`,
    /// `decoder.0`) right after its variables are drawn: a sharded trainer keeps its slice of
    /// the block and frees the rest there, so no rank ever holds every block at once. The
    /// values drawn are those of [`FourM::new`] (the callback must not use the RNG).
    pub fn new_with(p: &nn::Path, cfg: &FourMConfig, after_block: &mut dyn FnMut(&str)) -> Result<Self> {
        cfg.validate()?;
        let mut aliases = Vec::new();
        let mut encoder_embeddings = BTreeMap::new();
        for &m in &cfg.domains_in {
            encoder_embeddings.insert(m, EncoderEmbedding::new(p / "encoder_embeddings" / m.key(), cfg, m));
        }
        let mut decoder_embeddings = BTreeMap::new();
        for &m in &cfg.domains_out {
            let shared = match encoder_embeddings.get(&m) {
                Some(enc) if cfg.share_modality_embeddings => {
                    aliases.push((format!("decoder_embeddings.{m}.mod_emb"), format!("encoder_embeddings.{m}.mod_emb")));
                    Some(enc.mod_emb.shallow_clone())
                }
                _ => None,
            };
            if cfg.tie_decoder_embeddings {
                aliases.push((format!("decoder_embeddings.{m}.to_logits.weight"), format!("decoder_embeddings.{m}.token_emb.weight")));
            }
            decoder_embeddings.insert(m, DecoderEmbedding::new(p / "decoder_embeddings" / m.key(), cfg, m, shared));
        }
        let mut encoder = Vec::with_capacity(cfg.encoder_depth);
        for i in 0..cfg.encoder_depth {
            encoder.push(Block::new(p / "encoder" / i, cfg));
            after_block(&format!("encoder.{i}"));
        }
        let mut decoder = Vec::with_capacity(cfg.decoder_depth);
        for i in 0..cfg.decoder_depth {
            decoder.push(DecoderBlock::new(p / "decoder" / i, cfg));
            after_block(&format!("decoder.{i}"));
        }
        Ok(Self {
            cfg: cfg.clone(),
            encoder_embeddings,
            decoder_embeddings,
            encoder,
            encoder_norm: LayerNorm::new(p / "encoder_norm", cfg.dim, cfg.norm_bias),
            decoder_proj_context: Linear::new(p / "decoder_proj_context", cfg.dim, cfg.dim, true, LinearInit::Xavier),
            decoder,
            decoder_norm: LayerNorm::new(p / "decoder_norm", cfg.dim, cfg.norm_bias),
            mask_token: p.var("mask_token", &[1, 1, cfg.dim as i64], Init::Randn { mean: 0.0, stdev: INIT_STD }),
            aliases,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &FourMConfig {
        &self.cfg
    }

    /// State-dict keys that ml-4m stores twice for one tensor, as (alias, canonical).
    pub fn aliases(&self) -> &[(String, String)] {
        &self.aliases
    }

    /// Runs the model on a masked batch and returns the losses (and optionally logits).
    pub fn forward(&self, batch: &MaskedBatch, opts: &ForwardOptions) -> Result<ForwardOutput> {
        let staged = self.stage_embed(batch, opts)?;
        let mut x = staged.encoder_input();
        for i in 0..self.encoder.len() {
            x = self.stage_encoder_block(i, &x, &staged);
        }
        let context = self.stage_context(&x, &staged);
        let mut y = staged.decoder_input();
        for j in 0..self.decoder.len() {
            y = self.stage_decoder_block(j, &y, &context, &staged);
        }
        self.stage_losses(&y, &staged, opts)
    }

    /// Stage 1 of the forward pass: token selection and embeddings (everything before the
    /// transformer stacks). The stages exist so that a caller (FSDP) can run the stacks block
    /// by block, e.g. to gather a block's parameters just before it or to recompute it in the
    /// backward pass; [`FourM::forward`] is exactly the composition of the stages.
    pub fn stage_embed(&self, batch: &MaskedBatch, opts: &ForwardOptions) -> Result<Staged> {
        let enc = self.select_encoder_tokens(batch, opts.num_encoder_tokens)?;
        let dec = self.select_decoder_tokens(batch, opts.num_decoder_tokens, opts.decoder_order_seed)?;
        Ok(Staged { enc, dec })
    }

    /// Number of encoder blocks.
    pub fn num_encoder_blocks(&self) -> usize {
        self.encoder.len()
    }

    /// Number of decoder blocks.
    pub fn num_decoder_blocks(&self) -> usize {
        self.decoder.len()
    }

    /// Encoder block `i` on `x` (B, N, D).
    pub fn stage_encoder_block(&self, i: usize, x: &Tensor, staged: &Staged) -> Tensor {
        self.encoder[i].forward(x, &staged.enc.mask_b1n)
    }

    /// The decoder's context from the encoder output: norm, projection, plus the encoder's
    /// positional/modality embeddings again (ml-4m).
    pub fn stage_context(&self, x: &Tensor, staged: &Staged) -> Tensor {
        self.stage_context_with(x, &staged.enc.emb)
    }

    /// [`FourM::stage_context`] with the encoder embeddings given explicitly (a caller that
    /// cuts the graph at stage boundaries passes a detached copy, see [`Staged::encoder_emb`]).
    pub fn stage_context_with(&self, x: &Tensor, encoder_emb: &Tensor) -> Tensor {
        self.decoder_proj_context.forward(&self.encoder_norm.forward(x)) + encoder_emb
    }

    /// Decoder block `j` on `y` (B, M, D) attending to `context`.
    pub fn stage_decoder_block(&self, j: usize, y: &Tensor, context: &Tensor, staged: &Staged) -> Tensor {
        self.decoder[j].forward(y, context, Some(&staged.dec.sa_mask_bmm), &staged.enc.mask_b1n)
    }

    /// The last stage: decoder norm, logits and losses.
    pub fn stage_losses(&self, y: &Tensor, staged: &Staged, opts: &ForwardOptions) -> Result<ForwardOutput> {
        let y_bmd = self.decoder_norm.forward(y);
        self.losses(&y_bmd, &staged.dec, opts)
    }

    /// The number of target tokens per decoder modality that a forward with `opts` would put
    /// into the loss, computed from the masks alone (no embeddings, no blocks). Summed over the
    /// parts of a batch, it is the normaliser of [`ForwardOptions::loss_normalizer`].
    pub fn target_counts(&self, batch: &MaskedBatch, opts: &ForwardOptions) -> Result<BTreeMap<Modality, i64>> {
        Ok(self.target_tokens(batch, opts)?.into_iter().map(|(m, ids)| (m, ids.numel() as i64)).collect())
    }

    /// The label ids per decoder modality that a forward with `opts` puts into the loss (1-D
    /// i64, in selection order), from the masks alone: what a unigram baseline is fitted and
    /// scored on.
    pub fn target_tokens(&self, batch: &MaskedBatch, opts: &ForwardOptions) -> Result<BTreeMap<Modality, Tensor>> {
        tch::no_grad(|| {
            let mut mods = present_modalities(batch, "output", |m| self.decoder_embeddings.contains_key(m))?;
            if let Some(seed) = opts.decoder_order_seed {
                mods.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            }
            let (mut masks, mut mod_ids, mut ids) = (Vec::new(), Vec::new(), Vec::new());
            let b = batch.batch_size();
            for &m in &mods {
                let t = &batch.modalities[&m];
                let len = t.target_mask.size()[1];
                let (mask, labels) = if m.kind() == ModalityKind::Sequence {
                    (t.target_mask.narrow(1, 1, len - 1).logical_or(&t.target_mask.narrow(1, 0, len - 1)), t.tensor.narrow(1, 1, len - 1))
                } else {
                    (t.target_mask.shallow_clone(), t.tensor.shallow_clone())
                };
                let n = mask.size()[1];
                masks.push(mask);
                ids.push(labels.to_kind(Kind::Int64));
                mod_ids.push(Tensor::full([b, n], i64::from(m.id()), (Kind::Int64, t.target_mask.device())));
            }
            let mask_bp = Tensor::cat(&masks, 1);
            let keep_bm = keep_indices(&mask_bp, opts.num_decoder_tokens);
            let mask_bm = mask_bp.gather(1, &keep_bm, false);
            let mod_bm = Tensor::cat(&mod_ids, 1).gather(1, &keep_bm, false).masked_fill(&mask_bm, -1);
            let ids_bm = Tensor::cat(&ids, 1).gather(1, &keep_bm, false);
            Ok(mods.iter().map(|&m| (m, ids_bm.masked_select(&mod_bm.eq(i64::from(m.id()))))).collect())
        })
    }

    fn select_encoder_tokens(&self, batch: &MaskedBatch, n_keep: i64) -> Result<EncoderTokens> {
        let (mut xs, mut embs, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        // ml-4m concatenates in the batch dict's order; sorted keys give the same math.
        for m in present_modalities(batch, "input", |m| self.encoder_embeddings.contains_key(m))? {
            let t = &batch.modalities[&m];
            let e = self.encoder_embeddings[&m].forward(t);
            xs.push(e.x.expect("encoder embeddings always produce content"));
            embs.push(e.emb);
            masks.push(t.input_mask.shallow_clone());
        }
        let x_bod = Tensor::cat(&xs, 1);
        let emb_bod = Tensor::cat(&embs, 1);
        let mask_bo = Tensor::cat(&masks, 1);
        let keep_bn = keep_indices(&mask_bo, n_keep);
        let mask_bn = mask_bo.gather(1, &keep_bn, false);
        Ok(EncoderTokens {
            tokens: gather_rows(&x_bod, &keep_bn, &mask_bn),
            emb: gather_rows(&emb_bod, &keep_bn, &mask_bn),
            mask_b1n: mask_bn.unsqueeze(1),
        })
    }

    fn select_decoder_tokens(&self, batch: &MaskedBatch, n_keep: i64, order_seed: Option<u64>) -> Result<DecoderTokens> {
        let mut mods = present_modalities(batch, "output", |m| self.decoder_embeddings.contains_key(m))?;
        if let Some(seed) = order_seed {
            mods.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        }
        let b = batch.batch_size();
        let dev = self.mask_token.device();
        let (mut ys, mut ids, mut embs, mut masks, mut dams, mut mod_ids) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for &m in &mods {
            let t = &batch.modalities[&m];
            let e = self.decoder_embeddings[&m].forward_embed(t);
            let len = t.target_mask.size()[1];
            if m.kind() == ModalityKind::Sequence {
                // Teacher forcing: queries are tokens [:-1], labels [1:]; a pair counts only
                // when both positions are targets.
                let x = e.x.expect("sequence decoder embeddings produce content");
                ys.push(x.narrow(1, 0, len - 1));
                ids.push(t.tensor.narrow(1, 1, len - 1));
                embs.push(e.emb.narrow(1, 0, len - 1));
                masks.push(t.target_mask.narrow(1, 1, len - 1).logical_or(&t.target_mask.narrow(1, 0, len - 1)));
                dams.push(t.decoder_attention_mask.narrow(1, 0, len - 1));
                mod_ids.push(Tensor::full([b, len - 1], i64::from(m.id()), (Kind::Int64, dev)));
            } else {
                ys.push(self.mask_token.expand([b, len, -1], false));
                ids.push(t.tensor.shallow_clone());
                embs.push(e.emb);
                masks.push(t.target_mask.shallow_clone());
                dams.push(t.decoder_attention_mask.shallow_clone());
                mod_ids.push(Tensor::full([b, len], i64::from(m.id()), (Kind::Int64, dev)));
            }
        }
        let y_bpd = Tensor::cat(&ys, 1);
        let emb_bpd = Tensor::cat(&embs, 1);
        let mask_bp = Tensor::cat(&masks, 1);
        let keep_bm = keep_indices(&mask_bp, n_keep);
        let mask_bm = mask_bp.gather(1, &keep_bm, false);
        let tokens = gather_rows(&y_bpd, &keep_bm, &mask_bm);
        let emb = gather_rows(&emb_bpd, &keep_bm, &mask_bm);
        let targets_bm = Tensor::cat(&ids, 1).gather(1, &keep_bm, false).masked_fill(&mask_bm, 0);
        let dam_bm = Tensor::cat(&dams, 1).gather(1, &keep_bm, false);
        let mod_bm = Tensor::cat(&mod_ids, 1).gather(1, &keep_bm, false);
        // The expanded mask uses modality ids before padding slots are set to -1 (ml-4m order).
        let sa_mask_bmm = self.expand_decoder_attention_mask(&dam_bm, &mod_bm);
        let mod_bm = mod_bm.masked_fill(&mask_bm, -1);
        Ok(DecoderTokens { tokens, emb, targets_bm, mod_bm, sa_mask_bmm, modalities: mods })
    }

    /// ml-4m `adapt_decoder_attention_mask`: token i may see tokens j < cumsum(dam)[i] of its
    /// own modality (true = blocked).
    fn expand_decoder_attention_mask(&self, dam_bm: &Tensor, mod_bm: &Tensor) -> Tensor {
        let (b, m) = dam_bm.size2().expect("decoder attention mask must be (B, M)");
        let dev = dam_bm.device();
        let mut blocked = if self.cfg.decoder_causal_mask {
            Tensor::ones([m, m], (Kind::Bool, dev)).triu(1).expand([b, m, m], false)
        } else {
            let arange_11m = Tensor::arange(m, (Kind::Int64, dev)).view([1, 1, m]);
            let cumsum_bm1 = dam_bm.cumsum(-1, Kind::Int64).unsqueeze(-1);
            arange_11m.ge_tensor(&cumsum_bm1)
        };
        if self.cfg.decoder_sep_mask {
            blocked = blocked.logical_or(&mod_bm.unsqueeze(1).ne_tensor(&mod_bm.unsqueeze(2)));
        }
        blocked
    }

    fn losses(&self, y_bmd: &Tensor, dec: &DecoderTokens, opts: &ForwardOptions) -> Result<ForwardOutput> {
        let mut mod_loss = BTreeMap::new();
        let mut logits_out = BTreeMap::new();
        let mut counts = BTreeMap::new();
        let mut weights = BTreeMap::new();
        let dev = y_bmd.device();
        for &m in &dec.modalities {
            let sel_bm = dec.mod_bm.eq(i64::from(m.id()));
            let y_kd = y_bmd.index(&[Some(&sel_bm)]);
            let k = y_kd.size()[0];
            counts.insert(m, k);
            if k == 0 {
                mod_loss.insert(m, Tensor::zeros([], (Kind::Float, dev)));
                weights.insert(m, 0i64);
                continue;
            }
            let logits_kv = self.decoder_embeddings[&m].logits(&y_kd);
            let targets_k = dec.targets_bm.index(&[Some(&sel_bm)]);
            let (loss, weight) = match &opts.loss_normalizer {
                None => (logits_kv.cross_entropy_loss::<Tensor>(&targets_k, None, Reduction::Mean, -100, 0.0), logits_kv.numel() as i64),
                Some(total) => {
                    let n = total.get(&m).copied().unwrap_or(0).max(k);
                    let sum = logits_kv.cross_entropy_loss::<Tensor>(&targets_k, None, Reduction::Sum, -100, 0.0);
                    (sum / n as f64, n * logits_kv.size()[1])
                }
            };
            weights.insert(m, weight);
            mod_loss.insert(m, loss);
            if opts.return_logits {
                logits_out.insert(m, logits_kv);
            }
        }
        let sum = mod_loss.values().fold(Tensor::zeros([], (Kind::Float, dev)), |acc, l| acc + l);
        let loss = match opts.loss {
            LossType::Mod => sum / mod_loss.len() as f64,
            LossType::Token => {
                // With a normaliser the weights are the whole batch's (N_m · V_m), so the parts'
                // contributions still sum to the whole batch's loss.
                let total: i64 = match &opts.loss_normalizer {
                    None => weights.values().sum(),
                    Some(counts) => counts.iter().map(|(m, n)| n * m.spec().vocab_size as i64).sum(),
                };
                let weighted = mod_loss.iter().fold(Tensor::zeros([], (Kind::Float, dev)), |acc, (m, l)| acc + l * weights[m] as f64);
                if total == 0 { weighted } else { weighted / total as f64 }
            }
        };
        Ok(ForwardOutput { loss, mod_loss, logits: logits_out, target_counts: counts })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.mask_token.device()
    }
}

/// Indices of the first `n_keep` slots after a stable sort that puts valid (false) slots first;
/// equal to ml-4m's `argsort(mask + arange * 1e-6)`.
fn keep_indices(mask_bo: &Tensor, n_keep: i64) -> Tensor {
    let (_, order) = mask_bo.to_kind(Kind::Uint8).sort_stable(true, 1, false);
    let o = order.size()[1];
    order.narrow(1, 0, n_keep.min(o))
}

/// The modalities of `batch` that `accepts`, sorted by key; an error when there are none.
fn present_modalities(batch: &MaskedBatch, side: &str, accepts: impl Fn(&Modality) -> bool) -> Result<Vec<Modality>> {
    let mut mods: Vec<Modality> = batch.modalities.keys().copied().filter(|m| accepts(m)).collect();
    mods.sort_by_key(|m| m.key());
    if mods.is_empty() {
        return Err(ModelError::Batch {
            source_name: "<forward>".into(),
            modality: "-".into(),
            key: "-".into(),
            reason: format!("no {side} modality of the model is in the batch"),
        });
    }
    Ok(mods)
}

/// Gathers the kept slots `keep_bn` of `x_bod` and zeroes those that are padding (`mask_bn`).
fn gather_rows(x_bod: &Tensor, keep_bn: &Tensor, mask_bn: &Tensor) -> Tensor {
    let d = x_bod.size()[2];
    x_bod.gather(1, &keep_bn.unsqueeze(-1).expand([-1, -1, d], false), false).masked_fill(&mask_bn.unsqueeze(-1), 0.0)
}

/// The selected, embedded tokens of one batch between the forward stages (see
/// [`FourM::stage_embed`]).
pub struct Staged {
    enc: EncoderTokens,
    dec: DecoderTokens,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged").field("encoder_tokens", &self.enc.tokens.size()).field("decoder_tokens", &self.dec.tokens.size()).finish()
    }
}

impl Staged {
    /// The encoder stack's input: selected token embeddings plus positional/modality embeddings.
    pub fn encoder_input(&self) -> Tensor {
        &self.enc.tokens + &self.enc.emb
    }

    /// The encoder's positional + modality embeddings, re-added to form the decoder context.
    pub fn encoder_emb(&self) -> Tensor {
        self.enc.emb.shallow_clone()
    }

    /// The decoder stack's input: mask tokens / shifted sequence embeddings plus embeddings.
    pub fn decoder_input(&self) -> Tensor {
        &self.dec.tokens + &self.dec.emb
    }
}

struct EncoderTokens {
    tokens: Tensor,
    emb: Tensor,
    mask_b1n: Tensor,
}

struct DecoderTokens {
    tokens: Tensor,
    emb: Tensor,
    targets_bm: Tensor,
    mod_bm: Tensor,
    sa_mask_bmm: Tensor,
    modalities: Vec<Modality>,
}
