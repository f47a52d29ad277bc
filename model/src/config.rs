//! Model configuration: size presets, the resolved [`FourMConfig`], its ml-4m metadata form
//! (the `__metadata__` of published safetensors), and parameter counting without allocation.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_tokenizers::{Modality, ModalityKind, ModalitySet, PosEmb, TokenModalityDef};

use crate::error::{ModelError, Result};

/// The `__metadata__` key listing the definitions of tokenizer-defined modalities (a JSON list
/// of [`TokenModalityDef`]); present only when the model has some.
pub const TOKEN_MODALITIES_KEY: &str = "tessera_token_modalities";

// The closed sets a job names live in the contract crate, so that the coordinator refuses an
// unknown one when it resolves the job; re-exported here for the model's users.
pub use tessera_protocol::job::{Flavor, Preset};

/// MLP activation (ml-4m `act_layer`, a torch.nn class name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `nn.SiLU`.
    SiLU,
    /// `nn.GELU` (exact erf form).
    GELU,
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SiLU => "SiLU",
            Self::GELU => "GELU",
        })
    }
}

/// The resolved model configuration: no options, validated once by [`FourMConfig::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct FourMConfig {
    /// Modalities with encoder embeddings, sorted by key.
    pub domains_in: Vec<Modality>,
    /// Modalities with decoder embeddings, sorted by key.
    pub domains_out: Vec<Modality>,
    /// Model width D.
    pub dim: usize,
    /// Encoder blocks.
    pub encoder_depth: usize,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Attention heads (head dim = dim / heads).
    pub num_heads: usize,
    /// MLP hidden width ratio (SwiGLU uses int(2 * ratio * dim / 3)).
    pub mlp_ratio: f64,
    /// Bias on qkv / q / kv projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub proj_bias: bool,
    /// Bias on MLP linears.
    pub mlp_bias: bool,
    /// Learned LayerNorm bias (otherwise a zero buffer that is still saved).
    pub norm_bias: bool,
    /// MLP activation.
    pub act: Activation,
    /// Gated (SwiGLU) MLP.
    pub gated_mlp: bool,
    /// LayerNorm on per-head queries and keys.
    pub qk_norm: bool,
    /// Default image size for image-like modalities without their own size.
    pub image_size: usize,
    /// Default patch size.
    pub patch_size: usize,
    /// Plain causal decoder mask instead of the compressed per-modality mask.
    pub decoder_causal_mask: bool,
    /// Decoder tokens attend only within their own modality.
    pub decoder_sep_mask: bool,
    /// Decoder embeddings reuse the encoder's `mod_emb` where a modality has both.
    pub share_modality_embeddings: bool,
    /// Decoder `to_logits` shares its weight with `token_emb` (ml-4m training); published
    /// `FM` checkpoints are untied.
    pub tie_decoder_embeddings: bool,
}

impl FourMConfig {
    /// A preset in a flavour over the given modalities, with ml-4m's defaults elsewhere.
    pub fn preset(preset: Preset, flavor: Flavor, modalities: &ModalitySet) -> Self {
        let (dim, enc, dec, heads) = preset.dims();
        let swiglu = flavor == Flavor::SwigluNobias;
        Self {
            domains_in: modalities.inputs.clone(),
            domains_out: modalities.outputs.clone(),
            dim,
            encoder_depth: enc,
            decoder_depth: dec,
            num_heads: heads,
            mlp_ratio: 4.0,
            qkv_bias: !swiglu,
            proj_bias: !swiglu,
            mlp_bias: !swiglu,
            norm_bias: !swiglu,
            act: if swiglu { Activation::SiLU } else { Activation::GELU },
            gated_mlp: swiglu,
            qk_norm: false,
            image_size: 224,
            patch_size: 16,
            decoder_causal_mask: false,
            decoder_sep_mask: true,
            share_modality_embeddings: true,
            tie_decoder_embeddings: true,
        }
    }

    /// Checks the invariants every other module relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(ModelError::Config { field: field.into(), reason });
        if self.dim == 0 || self.num_heads == 0 || !self.dim.is_multiple_of(self.num_heads) {
            return bad("dim", format!("dim {} must be a positive multiple of num_heads {}", self.dim, self.num_heads));
        }
        if !self.dim.is_multiple_of(4) {
            return bad("dim", format!("dim {} must be divisible by 4 for 2D sin-cos positions", self.dim));
        }
        if self.domains_in.is_empty() {
            return bad("domains_in", "at least one input modality is required".into());
        }
        if self.domains_out.is_empty() {
            return bad("domains_out", "at least one output modality is required".into());
        }
        for m in &self.domains_in {
            if !m.spec().has_encoder {
                return bad("domains_in", format!("{m} has no encoder embedding"));
            }
        }
        for m in &self.domains_out {
            if !m.spec().has_decoder {
                return bad("domains_out", format!("{m} has no decoder embedding (input-only modality)"));
            }
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 {
            return bad("mlp_ratio", format!("must be positive, got {}", self.mlp_ratio));
        }
        Ok(())
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// MLP hidden width, computed exactly as ml-4m does (int() truncation, SwiGLU 2/3 rule).
    pub fn mlp_hidden(&self) -> usize {
        let hidden = (self.dim as f64 * self.mlp_ratio) as usize;
        if self.gated_mlp { (2.0 * hidden as f64 / 3.0) as usize } else { hidden }
    }

    /// The sorted union of input and output modalities.
    pub fn all_domains(&self) -> Vec<Modality> {
        let mut all: Vec<Modality> = self.domains_in.iter().chain(&self.domains_out).copied().collect();
        all.sort_by_key(|m| m.key());
        all.dedup();
        all
    }

    /// The number of tokens an image-like modality has under this config (its own
    /// image/patch size wins, as in ml-4m's `info.get('input_size', config['image_size'])`).
    pub fn grid_tokens(&self, m: Modality) -> usize {
        let s = m.spec();
        let (image, patch) = image_and_patch(self, m);
        if s.kind.is_image_like() { (image / patch) * (image / patch) } else { 0 }
    }

    /// The `__metadata__` entries of an ml-4m-compatible safetensors file: one key per
    /// `FM(config)` field, each value JSON (which ml-4m's yaml.safe_load also parses).
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let keys = |ms: &[Modality]| serde_json::to_string(&ms.iter().map(|m| m.key()).collect::<Vec<_>>()).unwrap_or_default();
        let mut md = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            md.insert(k.to_string(), v);
        };
        put("domains_in", keys(&self.domains_in));
        put("domains_out", keys(&self.domains_out));
        put("dim", self.dim.to_string());
        put("encoder_depth", self.encoder_depth.to_string());
        put("decoder_depth", self.decoder_depth.to_string());
        put("num_heads", self.num_heads.to_string());
        put("mlp_ratio", format!("{:?}", self.mlp_ratio));
        put("qkv_bias", self.qkv_bias.to_string());
        put("proj_bias", self.proj_bias.to_string());
        put("mlp_bias", self.mlp_bias.to_string());
        put("norm_bias", self.norm_bias.to_string());
        put("act_layer", format!("\"{}\"", self.act));
        put("gated_mlp", self.gated_mlp.to_string());
        put("qk_norm", self.qk_norm.to_string());
        put("image_size", self.image_size.to_string());
        put("patch_size", self.patch_size.to_string());
        put("decoder_causal_mask", self.decoder_causal_mask.to_string());
        put("decoder_sep_mask", self.decoder_sep_mask.to_string());
        put("num_register_tokens", "0".to_string());
        put("share_modality_embeddings", self.share_modality_embeddings.to_string());
        // Only FM(config) keys: ml-4m passes every metadata entry to FourM as a keyword. The one
        // exception is written only for models ml-4m cannot build anyway: the definitions of
        // tokenizer-defined modalities, so the file can be loaded without its job.
        let custom: Vec<_> = self.all_domains().into_iter().filter_map(Modality::token_def).collect();
        if !custom.is_empty() {
            put(TOKEN_MODALITIES_KEY, serde_json::to_string(&custom).unwrap_or_default());
        }
        md
    }

    /// Reads a config from safetensors `__metadata__` (or a `config.json` flattened to strings).
    /// Values may be JSON or the simple YAML scalars ml-4m writes (`True`, `SiLU`, `['a', 'b']`).
    /// `source` names the file for error messages.
    pub fn from_metadata(md: &BTreeMap<String, String>, source: &str) -> Result<Self> {
        let get = |k: &str| -> Result<serde_json::Value> {
            let raw = md
                .get(k)
                .ok_or_else(|| ModelError::Config { field: k.into(), reason: format!("missing from the config metadata of {source}") })?;
            Ok(parse_scalar(raw))
        };
        let opt = |k: &str| md.get(k).map(|raw| parse_scalar(raw));
        let field_err = |k: &str, v: &serde_json::Value, want: &str| ModelError::Config {
            field: k.into(),
            reason: format!("expected {want} in {source}, got {v}"),
        };
        let as_usize = |k: &str| -> Result<usize> {
            let v = get(k)?;
            v.as_u64().map(|x| x as usize).ok_or_else(|| field_err(k, &v, "a non-negative integer"))
        };
        let as_bool = |k: &str, default: Option<bool>| -> Result<bool> {
            match (opt(k), default) {
                (None, Some(d)) => Ok(d),
                (None, None) => get(k).map(|_| false),
                (Some(v), _) => v.as_bool().ok_or_else(|| field_err(k, &v, "a boolean")),
            }
        };
        if let Some(raw) = md.get(TOKEN_MODALITIES_KEY) {
            let defs: Vec<TokenModalityDef> = serde_json::from_str(raw).map_err(|e| ModelError::Config {
                field: TOKEN_MODALITIES_KEY.into(),
                reason: format!("expected a JSON list of token modality definitions in {source}: {e}"),
            })?;
            TokenModalityDef::register_all(&defs)
                .map_err(|e| ModelError::Config { field: TOKEN_MODALITIES_KEY.into(), reason: format!("{e} (in {source})") })?;
        }
        let as_mods = |k: &str| -> Result<Vec<Modality>> {
            let v = get(k)?;
            let list = v.as_array().ok_or_else(|| field_err(k, &v, "a list of modality keys"))?;
            let mut mods = Vec::with_capacity(list.len());
            for item in list {
                let key = item.as_str().ok_or_else(|| field_err(k, item, "a modality key string"))?;
                mods.push(
                    Modality::from_key(key).map_err(|e| ModelError::Config { field: k.into(), reason: format!("{e} (in {source})") })?,
                );
            }
            Ok(mods)
        };
        let act = match get("act_layer")? {
            serde_json::Value::String(s) if s == "SiLU" => Activation::SiLU,
            serde_json::Value::String(s) if s == "GELU" => Activation::GELU,
            v => return Err(field_err("act_layer", &v, "\"SiLU\" or \"GELU\"")),
        };
        let mlp_ratio = {
            let v = get("mlp_ratio")?;
            v.as_f64().ok_or_else(|| field_err("mlp_ratio", &v, "a number"))?
        };
        if let Some(v) = opt("num_register_tokens")
            && v.as_u64() != Some(0)
        {
            return Err(field_err("num_register_tokens", &v, "0 (register tokens are not supported)"));
        }
        let mut domains_in = as_mods("domains_in")?;
        let mut domains_out = as_mods("domains_out")?;
        // ml-4m silently skips modalities without an embedding on that side (e.g. rgb@224 out).
        domains_in.retain(|m| m.spec().has_encoder);
        domains_out.retain(|m| m.spec().has_decoder);
        domains_in.sort_by_key(|m| m.key());
        domains_out.sort_by_key(|m| m.key());
        let cfg = Self {
            domains_in,
            domains_out,
            dim: as_usize("dim")?,
            encoder_depth: as_usize("encoder_depth")?,
            decoder_depth: as_usize("decoder_depth")?,
            num_heads: as_usize("num_heads")?,
            mlp_ratio,
            qkv_bias: as_bool("qkv_bias", Some(true))?,
            proj_bias: as_bool("proj_bias", Some(true))?,
            mlp_bias: as_bool("mlp_bias", Some(true))?,
            norm_bias: as_bool("norm_bias", Some(true))?,
            act,
            gated_mlp: as_bool("gated_mlp", Some(false))?,
            qk_norm: as_bool("qk_norm", Some(false))?,
            image_size: opt("image_size").and_then(|v| v.as_u64()).map(|x| x as usize).unwrap_or(224),
            patch_size: opt("patch_size").and_then(|v| v.as_u64()).map(|x| x as usize).unwrap_or(16),
            decoder_causal_mask: as_bool("decoder_causal_mask", Some(false))?,
            decoder_sep_mask: as_bool("decoder_sep_mask", Some(true))?,
            share_modality_embeddings: as_bool("share_modality_embeddings", Some(true))?,
            // Tying is a property of the tensors, not the config: the loader unties when a
            // file's to_logits and token_emb differ (see Checkpoint::load).
            tie_decoder_embeddings: true,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parameter counts computed from shapes alone (nothing is allocated), de-duplicating
    /// tied and shared tensors the way `named_parameters()` does.
    pub fn param_counts(&self) -> ParamCounts {
        let d = self.dim;
        let h = self.mlp_hidden();
        let lin = |i: usize, o: usize, bias: bool| i * o + if bias { o } else { 0 };
        let norm = |bias: bool| d + if bias { d } else { 0 };
        let qk_norm = if self.qk_norm { 2 * (self.head_dim() + if self.norm_bias { self.head_dim() } else { 0 }) } else { 0 };
        let mlp = if self.gated_mlp {
            2 * lin(d, h, self.mlp_bias) + lin(h, d, self.mlp_bias)
        } else {
            lin(d, h, self.mlp_bias) + lin(h, d, self.mlp_bias)
        };
        let attn = lin(d, 3 * d, self.qkv_bias) + lin(d, d, self.proj_bias) + qk_norm;
        let xattn = lin(d, d, self.qkv_bias) + lin(d, 2 * d, self.qkv_bias) + lin(d, d, self.proj_bias) + qk_norm;
        let enc_block = 2 * norm(self.norm_bias) + attn + mlp;
        let dec_block = 4 * norm(self.norm_bias) + attn + xattn + mlp;
        let encoder = self.encoder_depth * enc_block + norm(self.norm_bias);
        let decoder = self.decoder_depth * dec_block + norm(self.norm_bias) + lin(d, d, true);
        let mask_token = d;

        let mut embeddings = 0;
        for &m in &self.domains_in {
            embeddings += self.encoder_embedding_params(m);
        }
        for &m in &self.domains_out {
            embeddings += self.decoder_embedding_params(m);
        }
        ParamCounts {
            total: encoder + decoder + mask_token + embeddings,
            excluding_embeddings: encoder + decoder + mask_token,
            embeddings,
            encoder_blocks: self.encoder_depth * enc_block,
            decoder_blocks: self.decoder_depth * dec_block,
        }
    }

    fn encoder_embedding_params(&self, m: Modality) -> usize {
        let d = self.dim;
        let s = m.spec();
        let pos = if s.pos_emb == PosEmb::Learned { self.grid_tokens(m) * d } else { 0 };
        let content = match s.kind {
            ModalityKind::Pixels => {
                let (_, patch) = image_and_patch(self, m);
                s.channels * patch * patch * d
            }
            ModalityKind::ImageTokens | ModalityKind::GlobalTokens | ModalityKind::Sequence => s.vocab_size * d,
            ModalityKind::SequenceEmbedding => s.channels * d + d,
        };
        content + pos + d
    }

    fn decoder_embedding_params(&self, m: Modality) -> usize {
        let d = self.dim;
        let s = m.spec();
        let pos = if s.pos_emb == PosEmb::Learned { self.grid_tokens(m) * d } else { 0 };
        let shared_mod = self.share_modality_embeddings && self.domains_in.contains(&m);
        let mod_emb = if shared_mod { 0 } else { d };
        let logits = if self.tie_decoder_embeddings { 0 } else { s.vocab_size * d };
        s.vocab_size * d + logits + pos + mod_emb
    }
}

/// ml-4m's `info.get('input_size', config['image_size'])` / `info.get('patch_size', …)`:
/// every registered image-like modality carries its own patch size; global tokens and
/// modalities without an explicit input size follow the model's image size.
pub(crate) fn image_and_patch(cfg: &FourMConfig, m: Modality) -> (usize, usize) {
    let s = m.spec();
    match s.kind {
        // Tokenizer-defined global tokens carry their own one-pixel-per-token grid.
        ModalityKind::GlobalTokens if !m.is_custom() => (cfg.image_size, s.patch_size),
        _ => (s.image_size, s.patch_size),
    }
}

/// Parameter counts of a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Every trainable parameter (tied/shared ones once).
    pub total: usize,
    /// Transformer blocks, final norms, context projection and mask token: what ml-4m's
    /// README sizes (198M for B) count.
    pub excluding_embeddings: usize,
    /// Per-modality embedding tables, projections, learned positions and modality embeddings.
    pub embeddings: usize,
    /// Encoder blocks only.
    pub encoder_blocks: usize,
    /// Decoder blocks only.
    pub decoder_blocks: usize,
}

/// Parses one metadata value: JSON first, then the YAML scalars ml-4m writes.
fn parse_scalar(raw: &str) -> serde_json::Value {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(raw) {
        return v;
    }
    let t = raw.trim();
    match t {
        "True" | "true" => return serde_json::Value::Bool(true),
        "False" | "false" => return serde_json::Value::Bool(false),
        _ => {}
    }
    // Python list repr with single quotes: ['caption', 'det'].
    if t.starts_with('[')
        && t.ends_with(']')
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t.replace('\'', "\""))
    {
        return v;
    }
    serde_json::Value::String(t.trim_matches(|c| c == '\'' || c == '"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(p: Preset) -> ParamCounts {
        let set = ModalitySet::parse("4m21").unwrap();
        FourMConfig::preset(p, Flavor::SwigluNobias, &set).param_counts()
    }

    #[test]
    fn transformer_param_counts_match_ml4m_readme() {
        // ml-4m README: 4M-B 198M, 4M-L 705M, 4M-XL 2.8B (embedding tables excluded).
        let b = counts(Preset::Base).excluding_embeddings as f64;
        let l = counts(Preset::Large).excluding_embeddings as f64;
        let xl = counts(Preset::Xlarge).excluding_embeddings as f64;
        assert!((b / 1e6 - 198.8).abs() < 0.1, "base {b}");
        assert!((l / 1e6 - 705.7).abs() < 0.1, "large {l}");
        assert!((xl / 1e9 - 2.823).abs() < 0.001, "xlarge {xl}");
    }

    #[test]
    fn swiglu_hidden_width_truncates_like_python() {
        let set = ModalitySet::parse("caption").unwrap();
        let c = FourMConfig::preset(Preset::Large, Flavor::SwigluNobias, &set);
        assert_eq!(c.mlp_hidden(), 2730);
        let c = FourMConfig::preset(Preset::Xlarge, Flavor::SwigluNobias, &set);
        assert_eq!(c.mlp_hidden(), 5461);
        let c = FourMConfig::preset(Preset::Base, Flavor::Gelu, &set);
        assert_eq!(c.mlp_hidden(), 3072);
    }

    #[test]
    fn metadata_round_trips_and_reads_ml4m_yaml_scalars() {
        let set = ModalitySet::parse("4m21").unwrap();
        let c = FourMConfig::preset(Preset::Tiny, Flavor::SwigluNobias, &set);
        let back = FourMConfig::from_metadata(&c.to_metadata(), "test").unwrap();
        assert_eq!(back, c);

        let mut md = c.to_metadata();
        md.insert("domains_in".into(), "['caption', 'rgb@224']".into());
        md.insert("act_layer".into(), "SiLU".into());
        md.insert("qkv_bias".into(), "False".into());
        let ml4m = FourMConfig::from_metadata(&md, "test").unwrap();
        assert_eq!(ml4m.domains_in, vec![Modality::Caption, Modality::Rgb224]);
        assert!(!ml4m.qkv_bias);

        md.insert("domains_out".into(), "['caption', 'bogus']".into());
        let err = FourMConfig::from_metadata(&md, "ckpt.safetensors").unwrap_err().to_string();
        assert!(err.contains("bogus") && err.contains("domains_out"), "{err}");
        md.insert("domains_out".into(), "['caption']".into());
        md.remove("dim");
        let err = FourMConfig::from_metadata(&md, "ckpt.safetensors").unwrap_err().to_string();
        assert!(err.contains("dim") && err.contains("ckpt.safetensors"), "{err}");
    }

    #[test]
    fn metadata_carries_tokenizer_defined_modalities() {
        let def = TokenModalityDef { key: "tok_cfgtest@32".into(), vocab_size: 128, grid: 4, kind: ModalityKind::ImageTokens };
        let m = def.register().unwrap();
        let set = ModalitySet::new(&[Modality::Caption, m], &[m]);
        let c = FourMConfig::preset(Preset::Tiny, Flavor::SwigluNobias, &set);
        assert_eq!(c.grid_tokens(m), 16);
        let md = c.to_metadata();
        let listed: Vec<TokenModalityDef> = serde_json::from_str(&md[TOKEN_MODALITIES_KEY]).unwrap();
        assert_eq!(listed, vec![def.clone()]);
        assert_eq!(FourMConfig::from_metadata(&md, "test").unwrap(), c);
        // Built-in-only models keep ml-4m's exact key set.
        let plain = FourMConfig::preset(Preset::Tiny, Flavor::SwigluNobias, &ModalitySet::parse("caption").unwrap());
        assert!(!plain.to_metadata().contains_key(TOKEN_MODALITIES_KEY));
        // A file that redefines a registered key with other numbers is refused, naming it.
        let mut bad = md.clone();
        bad.insert(TOKEN_MODALITIES_KEY.into(), serde_json::to_string(&[TokenModalityDef { vocab_size: 64, ..def }]).unwrap());
        let err = FourMConfig::from_metadata(&bad, "ckpt.safetensors").unwrap_err().to_string();
        assert!(err.contains("tok_cfgtest@32") && err.contains("ckpt.safetensors"), "{err}");
    }
}
