//! The inference forward of generation (ml-4m `GenerationSampler`'s
//! `forward_mask_encoder_generation` and the decoder calls around it): the encoder keeps every
//! valid input token (the batch's largest count, not a fixed budget), and the decoder runs on
//! queries the caller builds (mask tokens for MaskGIT/ROAR, token embeddings for
//! autoregression), with full, causal or cached self-attention.
//!
//! Shape legend: B batch, N kept encoder tokens, M decoder queries, L modality length,
//! D width, V vocabulary.

use tch::{Kind, Tensor};
use tessera_tokenizers::Modality;

use super::FourM;
use crate::batch::MaskedBatch;
use crate::embeddings::DecoderEmbedding;
use crate::error::{MissingPart, ModelError, Result};
use crate::layers::BlockCache;

/// The encoder's output for one batch, ready for the decoder's cross-attention.
#[derive(Debug)]
pub(crate) struct EncodedContext {
    /// Projected encoder output plus the encoder embeddings (B, N, D).
    pub(crate) context_bnd: Tensor,
    /// Padding of the context (B, 1, N), true = blocked.
    pub(crate) mask_b1n: Tensor,
}

/// Per-block self- and cross-attention caches of one autoregressive decoding.
#[derive(Debug)]
pub(crate) struct DecoderCache {
    blocks: Vec<BlockCache>,
}

impl FourM {
    /// Encodes every valid input token of `batch` (ml-4m keeps the batch maximum of valid
    /// tokens; rows with fewer are padded and masked).
    pub(crate) fn encode_for_generation(&self, batch: &MaskedBatch) -> Result<EncodedContext> {
        let mut valid = Vec::new();
        for (m, t) in &batch.modalities {
            if self.encoder_embeddings.contains_key(m) {
                valid.push(t.input_mask.logical_not().sum_dim_intlist(1, false, Kind::Int64));
            }
        }
        let n_keep =
            if valid.is_empty() { 0 } else { Tensor::stack(&valid, 1).sum_dim_intlist(1, false, Kind::Int64).max().int64_value(&[]) };
        let enc = self.select_encoder_tokens(batch, n_keep)?;
        let mut x = &enc.tokens + &enc.emb;
        for block in &self.encoder {
            x = block.forward(&x, &enc.mask_b1n);
        }
        let context_bnd = self.stage_context_with(&x, &enc.emb);
        Ok(EncodedContext { context_bnd, mask_b1n: enc.mask_b1n })
    }

    /// The decoder stack and its final norm on queries `y_bmd`; `sa_mask_bmm` blocks query
    /// pairs (`None`: full attention).
    pub(crate) fn decode_queries(&self, y_bmd: &Tensor, ctx: &EncodedContext, sa_mask_bmm: Option<&Tensor>) -> Tensor {
        let mut y = y_bmd.shallow_clone();
        for block in &self.decoder {
            y = block.forward(&y, &ctx.context_bnd, sa_mask_bmm, &ctx.mask_b1n);
        }
        self.decoder_norm.forward(&y)
    }

    /// An empty self-attention cache over `ctx` for [`FourM::decode_cached`].
    pub(crate) fn new_decoder_cache(&self, ctx: &EncodedContext) -> DecoderCache {
        DecoderCache { blocks: self.decoder.iter().map(|b| b.new_cache(&ctx.context_bnd)).collect() }
    }

    /// The decoder on the next queries `y_bnd` of an autoregressive decoding, attending
    /// causally to themselves and to every query given before through `cache`.
    pub(crate) fn decode_cached(&self, y_bnd: &Tensor, ctx: &EncodedContext, cache: &mut DecoderCache) -> Tensor {
        let mut y = y_bnd.shallow_clone();
        for (block, c) in self.decoder.iter().zip(cache.blocks.iter_mut()) {
            y = block.forward_cached(&y, c, &ctx.mask_b1n);
        }
        self.decoder_norm.forward(&y)
    }

    /// The decoder embedding of a target, or an error naming it when the model has none.
    pub(crate) fn decoder_embedding(&self, m: Modality) -> Result<&DecoderEmbedding> {
        self.decoder_embeddings
            .get(&m)
            .ok_or(ModelError::GenerationModality { modality: m.key().to_string(), missing: MissingPart::DecoderEmbedding })
    }

    /// The learned mask token (1, 1, D) that image-like decoder queries start from.
    pub(crate) fn mask_token(&self) -> &Tensor {
        &self.mask_token
    }
}
