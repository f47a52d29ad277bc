//! Model FLOPs of training, from the configuration alone: what throughput in FLOP/s and MFU
//! (model FLOPs utilisation) are computed from.
//!
//! A training sample with `T_in` encoder tokens and `T_out` decoder tokens costs
//!
//! ```text
//! F = 6·(N_in·T_in + N_out·T_out) + 12·d·(L_enc·T_in² + L_dec·(T_out² + T_out·T_in))
//! ```
//!
//! FLOPs, and one token `F / (T_in + T_out)`. This is the standard `6·N + attention` estimate
//! (Kaplan et al. 2020, PaLM's MFU) written for an encoder-decoder, where a token meets only the
//! weights of its own side:
//! - `N_in`, the parameters each encoder token meets: the encoder blocks, the encoder norm, the
//!   context projection, and in every decoder block the context norm and the cross-attention
//!   key/value projection (they run once per context token, i.e. per encoder token);
//! - `N_out`, the parameters each decoder token meets: the decoder blocks without those two,
//!   the decoder norm, and the output projection `d·V̄` (`V̄` the mean vocabulary of the output
//!   modalities: targets are spread over them);
//! - `6` = 2 FLOPs per multiply-add × 3 (the forward pass, and the backward pass's two matmuls
//!   per weight, for the activations' and the weights' gradients);
//! - `12·d` per (query, key) pair and layer: `QKᵀ` and `attention·V` cost `2·d` FLOPs each per
//!   pair in the forward pass, three times that in training; the encoder attends `T_in²` pairs,
//!   the decoder `T_out²` (self) plus `T_out·T_in` (cross).
//!
//! Left out, as in the standard estimate: embedding lookups (no matmul), the patch projection
//! of pixel inputs, norms, activations and softmax (element-wise), and work a trainer adds
//! (recomputation under FSDP): MFU counts the model's FLOPs, not the hardware's.

use crate::config::FourMConfig;

/// FLOPs of training one sample, and per token, for a model and its token budgets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainFlops {
    /// Parameters each encoder token meets (`N_in`).
    pub params_per_input_token: f64,
    /// Parameters each decoder token meets, output projection included (`N_out`).
    pub params_per_target_token: f64,
    /// FLOPs of one training sample (`F`).
    pub per_sample: f64,
    /// FLOPs per token (`F / (T_in + T_out)`).
    pub per_token: f64,
}

impl FourMConfig {
    /// Training FLOPs of this model on samples of `input_tokens` encoder and `target_tokens`
    /// decoder tokens (see the module docs for the formula).
    pub fn train_flops(&self, input_tokens: usize, target_tokens: usize) -> TrainFlops {
        let d = self.dim as f64;
        let lin = |i: usize, o: usize, bias: bool| (i * o + if bias { o } else { 0 }) as f64;
        let norm = d + if self.norm_bias { d } else { 0.0 };
        let counts = self.param_counts();
        // Per decoder block, what runs on the context (encoder tokens) rather than the queries.
        let on_context = lin(self.dim, 2 * self.dim, self.qkv_bias) + norm;
        let l_dec = self.decoder_depth as f64;
        let n_in = counts.encoder_blocks as f64 + norm + lin(self.dim, self.dim, true) + l_dec * on_context;
        let vocab: f64 = self.domains_out.iter().map(|m| m.spec().vocab_size as f64).sum::<f64>() / self.domains_out.len().max(1) as f64;
        let n_out = counts.decoder_blocks as f64 - l_dec * on_context + norm + d * vocab;
        let (t_in, t_out) = (input_tokens as f64, target_tokens as f64);
        let attention = 12.0 * d * (self.encoder_depth as f64 * t_in * t_in + l_dec * (t_out * t_out + t_out * t_in));
        let per_sample = 6.0 * (n_in * t_in + n_out * t_out) + attention;
        let tokens = t_in + t_out;
        TrainFlops {
            params_per_input_token: n_in,
            params_per_target_token: n_out,
            per_sample,
            per_token: if tokens > 0.0 { per_sample / tokens } else { 0.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::nn;
    use tessera_tokenizers::{Modality, ModalityKind, ModalitySet, TokenModalityDef};

    use crate::config::{Flavor, FourMConfig, Preset};
    use crate::fourm::FourM;

    /// Two output modalities with different vocabularies, small enough to build any preset.
    fn modalities() -> ModalitySet {
        let def = |key: &str, vocab_size| TokenModalityDef { key: key.into(), vocab_size, grid: 4, kind: ModalityKind::ImageTokens };
        let a = def("tok_flopsa@32", 96).register().unwrap();
        let b = def("tok_flopsb@32", 160).register().unwrap();
        ModalitySet::new(&[a, b], &[a, b])
    }

    /// FLOPs of one training sample counted from the built model's variables, by name: every
    /// weight matrix `[out, in]` costs 2·in·out FLOPs per row it multiplies forward (bias and
    /// norm parameters one multiply-add each, as in 6·N), three times that in training, on the
    /// rows of its side; attention is counted per layer from its query and key counts.
    fn counted(cfg: &FourMConfig, t_in: f64, t_out: f64) -> f64 {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _model = FourM::new(&vs.root(), cfg).unwrap();
        let (mut input, mut target) = (0.0, 0.0);
        let mut vocab = Vec::new();
        // Trainable parameters only: a bias-free norm keeps a zero buffer that is no parameter.
        for (name, t) in vs.variables().into_iter().filter(|(_, t)| t.requires_grad()) {
            let n = t.numel() as f64;
            let on_context = name.contains(".cross_attn.kv.") || name.contains(".context_norm.");
            if name.starts_with("encoder.") || name.starts_with("encoder_norm.") || name.starts_with("decoder_proj_context.") || on_context
            {
                input += n;
            } else if name.starts_with("decoder.") || name.starts_with("decoder_norm.") {
                target += n;
            } else if name.starts_with("decoder_embeddings.") && name.ends_with(".token_emb.weight") {
                // Tied: the token table is also the output projection.
                vocab.push(t.size()[0] as f64);
            }
        }
        let mean_vocab = vocab.iter().sum::<f64>() / vocab.len() as f64;
        target += cfg.dim as f64 * mean_vocab;
        let mut flops = 3.0 * 2.0 * (input * t_in + target * t_out);
        let d = cfg.dim as f64;
        for _ in 0..cfg.encoder_depth {
            flops += 3.0 * (2.0 * t_in * t_in * d + 2.0 * t_in * t_in * d);
        }
        for _ in 0..cfg.decoder_depth {
            flops += 3.0 * (2.0 * t_out * t_out * d + 2.0 * t_out * t_out * d);
            flops += 3.0 * (2.0 * t_out * t_in * d + 2.0 * t_out * t_in * d);
        }
        flops
    }

    #[test]
    fn train_flops_equal_a_count_over_the_built_model() {
        let set = modalities();
        for (preset, flavor, t_in, t_out) in [(Preset::Tiny, Flavor::SwigluNobias, 128, 64), (Preset::Small, Flavor::Gelu, 256, 256)] {
            let cfg = FourMConfig::preset(preset, flavor, &set);
            let f = cfg.train_flops(t_in, t_out);
            let want = counted(&cfg, t_in as f64, t_out as f64);
            assert!((f.per_sample - want).abs() <= 1e-9 * want, "{preset:?}: formula {} vs count {want}", f.per_sample);
            assert!((f.per_token * (t_in + t_out) as f64 - want).abs() <= 1e-9 * want);
        }
    }

    #[test]
    fn flops_per_token_is_about_six_times_the_parameters_a_token_meets() {
        // Without attention (one token each side) the estimate is 6·N per token, N the mean of
        // the two sides: a sanity check on the scale, e.g. for 4M-B about 6 · 100M.
        let cfg = FourMConfig::preset(Preset::Base, Flavor::SwigluNobias, &ModalitySet::new(&[Modality::Caption], &[Modality::Caption]));
        let f = cfg.train_flops(1, 1);
        let mean_n = (f.params_per_input_token + f.params_per_target_token) / 2.0;
        assert!((f.per_token / (6.0 * mean_n) - 1.0).abs() < 1e-3, "{f:?}");
        let c = cfg.param_counts();
        // Both sides together meet every transformer parameter once (plus the output projection).
        let blocks = (c.encoder_blocks + c.decoder_blocks) as f64;
        assert!(f.params_per_input_token + f.params_per_target_token > blocks);
        // Longer sequences cost more per token through attention alone.
        assert!(cfg.train_flops(512, 512).per_token > cfg.train_flops(256, 256).per_token);
    }
}
