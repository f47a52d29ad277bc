//! Per-modality embedding modules (ml-4m `encoder_embeddings.py` / `decoder_embeddings.py`).
//! Each returns the content part `x` and the positional + modality part `emb` separately,
//! because the model re-adds `emb` to the encoder context.
//!
//! Shape legend: B batch, L tokens of the modality, D width, V vocabulary, C channels.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use tessera_tokenizers::{Modality, ModalityKind, PosEmb};

use crate::batch::ModalityTensors;
use crate::config::{FourMConfig, image_and_patch};
use crate::layers::{Linear, LinearInit};
use crate::posemb::{sincos_1d, sincos_2d};

/// ml-4m's embedding init: N(0, 0.02) for embeddings, mod_emb, mask token and learned positions.
pub const INIT_STD: f64 = 0.02;
/// Rows of every 1D sin-cos table (ml-4m's `max_sincos_pos_emb`).
pub const MAX_SINCOS_ROWS: i64 = 512;

/// Output of an embedding module.
#[derive(Debug)]
pub struct Embedded {
    /// Content embedding, (B, L, D); `None` for image-like decoder inputs (replaced by the mask token).
    pub x: Option<Tensor>,
    /// Positional + modality embedding, (B, L, D).
    pub emb: Tensor,
}

/// Creates the positional table of modality `m` under `p` (buffer or learned parameter).
fn pos_table(p: &nn::Path, cfg: &FourMConfig, m: Modality) -> Tensor {
    let d = cfg.dim as i64;
    match m.spec().pos_emb {
        PosEmb::Learned => p.var("pos_emb", &[1, cfg.grid_tokens(m) as i64, d], Init::Randn { mean: 0.0, stdev: INIT_STD }),
        PosEmb::SinCos2d => {
            let (image, patch) = image_and_patch(cfg, m);
            let side = (image / patch) as i64;
            let buf = p.zeros_no_train("pos_emb", &[1, side * side, d]);
            tch::no_grad(|| buf.shallow_clone().copy_(&sincos_2d(side, side, d)));
            buf
        }
        PosEmb::SinCos1d { .. } => {
            // ml-4m slices the (1, 512, D) table with `[:max_length]`, which cuts the leading
            // axis of size 1, so every 1D table keeps all 512 rows.
            let buf = p.zeros_no_train("pos_emb", &[1, MAX_SINCOS_ROWS, d]);
            tch::no_grad(|| buf.shallow_clone().copy_(&sincos_1d(MAX_SINCOS_ROWS, d)));
            buf
        }
    }
}

/// 1D positions from a mask (true = not part of this side): valid tokens get 0, 1, 2, … in
/// order, masked ones a zero vector; with `clamp_at`, positions at or beyond it map to row 0
/// (ml-4m's decoder rule with `max_length`).
fn masked_positions(table_1ld: &Tensor, mask_bl: &Tensor, clamp_at: Option<i64>) -> Tensor {
    let (b, l) = mask_bl.size2().expect("mask must be (B, L)");
    let valid = mask_bl.logical_not();
    let mut pos_bl = valid.cumsum(1, Kind::Int64) - 1;
    pos_bl = pos_bl.masked_fill(mask_bl, 0);
    if let Some(rows) = clamp_at {
        pos_bl = pos_bl.masked_fill(&pos_bl.ge(rows), 0);
    }
    let d = table_1ld.size()[2];
    let emb = table_1ld.squeeze_dim(0).index_select(0, &pos_bl.reshape([-1])).reshape([b, l, d]);
    emb.masked_fill(&mask_bl.unsqueeze(-1), 0.0)
}

/// The encoder embedding of one modality.
#[derive(Debug)]
pub struct EncoderEmbedding {
    modality: Modality,
    /// Token table (V, D), pixel patch projection (D, C·P·P) or T5 projection (D, 4096).
    content: Content,
    pos_emb: Tensor,
    /// Modality embedding (1, 1, D); shared with the decoder when configured.
    pub mod_emb: Tensor,
    patch: i64,
}

#[derive(Debug)]
enum Content {
    Tokens { table: Tensor, padding_idx: i64 },
    Patches(Linear),
    Vectors(Linear),
}

impl EncoderEmbedding {
    /// Creates the module under `p` = `encoder_embeddings.<key>`.
    pub fn new(p: nn::Path, cfg: &FourMConfig, m: Modality) -> Self {
        let s = m.spec();
        let d = cfg.dim as i64;
        let pos_emb = pos_table(&p, cfg, m);
        let mod_emb = p.var("mod_emb", &[1, 1, d], Init::Randn { mean: 0.0, stdev: INIT_STD });
        let (_, patch) = image_and_patch(cfg, m);
        let content = match s.kind {
            ModalityKind::Pixels => {
                Content::Patches(Linear::new(&p / "proj", s.channels * patch * patch, cfg.dim, false, LinearInit::Xavier))
            }
            ModalityKind::SequenceEmbedding => {
                Content::Vectors(Linear::new(&p / "emb_proj", s.channels, cfg.dim, true, LinearInit::Xavier))
            }
            ModalityKind::ImageTokens | ModalityKind::GlobalTokens | ModalityKind::Sequence => {
                let table = (&p / "token_emb").var("weight", &[s.vocab_size as i64, d], Init::Randn { mean: 0.0, stdev: INIT_STD });
                let padding_idx = if s.kind == ModalityKind::Sequence { 0 } else { -1 };
                Content::Tokens { table, padding_idx }
            }
        };
        Self { modality: m, content, pos_emb, mod_emb, patch: patch as i64 }
    }

    /// Embeds one modality of a batch.
    pub fn forward(&self, t: &ModalityTensors) -> Embedded {
        let kind = self.modality.kind();
        let x = match &self.content {
            Content::Tokens { table, padding_idx } => {
                let b = t.tensor.size()[0];
                Tensor::embedding(table, &t.tensor.reshape([b, -1]), *padding_idx, false, false)
            }
            Content::Patches(proj) => proj.forward(&patchify(&t.tensor, self.patch)),
            Content::Vectors(proj) => proj.forward(&t.tensor),
        };
        let b = x.size()[0];
        let emb = match kind {
            ModalityKind::Sequence | ModalityKind::SequenceEmbedding => {
                masked_positions(&self.pos_emb, &t.input_mask, None) + &self.mod_emb
            }
            _ => (&self.pos_emb + &self.mod_emb).expand([b, -1, -1], false),
        };
        Embedded { x: Some(x), emb }
    }
}

/// (B, C, nh·P, nw·P) → (B, nh·nw, P·P·C): channel fastest inside a patch, patches row-major.
pub fn patchify(img_bchw: &Tensor, patch: i64) -> Tensor {
    let (b, c, h, w) = img_bchw.size4().expect("pixels must be (B, C, H, W)");
    let (nh, nw) = (h / patch, w / patch);
    img_bchw.reshape([b, c, nh, patch, nw, patch]).permute([0, 2, 4, 3, 5, 1]).reshape([b, nh * nw, patch * patch * c])
}

/// The decoder embedding of one modality (token table, output projection, positions).
#[derive(Debug)]
pub struct DecoderEmbedding {
    modality: Modality,
    token_emb: Tensor,
    /// Separate output projection (V, D) when untied; `None` = tied to `token_emb`.
    to_logits: Option<Tensor>,
    pos_emb: Tensor,
    mod_emb: Tensor,
}

impl DecoderEmbedding {
    /// Creates the module under `p` = `decoder_embeddings.<key>`; `shared_mod_emb` is the
    /// encoder's modality embedding when ml-4m's `share_modality_embeddings` applies.
    pub fn new(p: nn::Path, cfg: &FourMConfig, m: Modality, shared_mod_emb: Option<Tensor>) -> Self {
        let s = m.spec();
        let (d, v) = (cfg.dim as i64, s.vocab_size as i64);
        let pos_emb = pos_table(&p, cfg, m);
        let mod_emb = shared_mod_emb.unwrap_or_else(|| p.var("mod_emb", &[1, 1, d], Init::Randn { mean: 0.0, stdev: INIT_STD }));
        // ml-4m initialises token_emb ~ N(0, 0.02) and then to_logits (xavier); when tied, the
        // shared tensor ends up xavier-uniform.
        let xavier = (6.0 / (d + v) as f64).sqrt();
        let (token_init, to_logits) = if cfg.tie_decoder_embeddings {
            (Init::Uniform { lo: -xavier, up: xavier }, None)
        } else {
            let w = (&p / "to_logits").var("weight", &[v, d], Init::Uniform { lo: -xavier, up: xavier });
            (Init::Randn { mean: 0.0, stdev: INIT_STD }, Some(w))
        };
        let token_emb = (&p / "token_emb").var("weight", &[v, d], token_init);
        Self { modality: m, token_emb, to_logits, pos_emb, mod_emb }
    }

    /// Decoder-side embedding: content embedding of the (teacher-forced) tokens for
    /// sequences, positions from the target mask, modality embedding.
    pub fn forward_embed(&self, t: &ModalityTensors) -> Embedded {
        let b = t.tensor.size()[0];
        match self.modality.kind() {
            ModalityKind::Sequence => {
                let x = Tensor::embedding(&self.token_emb, &t.tensor, 0, false, false);
                let max_length = match self.modality.spec().pos_emb {
                    PosEmb::SinCos1d { max_length } => max_length as i64,
                    _ => MAX_SINCOS_ROWS,
                };
                let emb = masked_positions(&self.pos_emb, &t.target_mask, Some(max_length)) + &self.mod_emb;
                Embedded { x: Some(x), emb }
            }
            _ => Embedded { x: None, emb: (&self.pos_emb + &self.mod_emb).expand([b, -1, -1], false) },
        }
    }

    /// Content embedding of decoder token ids (B, L) → (B, L, D).
    pub fn token_embed(&self, ids_bl: &Tensor) -> Tensor {
        Tensor::embedding(&self.token_emb, ids_bl, 0, false, false)
    }

    /// Logits over the modality's vocabulary for decoder outputs `y_..D`.
    pub fn logits(&self, y: &Tensor) -> Tensor {
        y.linear::<&Tensor>(self.to_logits.as_ref().unwrap_or(&self.token_emb), None)
    }
}
