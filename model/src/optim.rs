//! AdamW with ml-4m's parameter groups: decoupled weight decay on everything except norms and
//! biases (the name rule of `optim_factory.get_parameter_groups`), betas (0.9, 0.95), eps 1e-8.
//! Runs libtorch's C++ AdamW, whose `zero_grad` resets gradients to undefined, so a parameter
//! that a step does not touch is skipped exactly as PyTorch's `set_to_none=True` skips it.

use tch::nn::VarStore;
use tch::{COptimizer, Tensor};

use crate::error::Result;

/// AdamW hyper-parameters (ml-4m defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (set per step by the schedule).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay for the decay group.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05 }
    }
}

/// ml-4m's rule: norms, biases, `.gamma` and `.lookup_table_weight` get no weight decay.
pub fn is_no_decay(name: &str) -> bool {
    name.contains("norm.")
        || name.contains(".norm")
        || name.ends_with(".bias")
        || name.ends_with(".lookup_table_weight")
        || name.ends_with(".gamma")
}

/// AdamW over every trainable variable of a store, in two groups (decay, no-decay).
pub struct AdamW {
    opt: COptimizer,
    cfg: AdamWConfig,
    params: Vec<(String, Tensor)>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW").field("cfg", &self.cfg).field("params", &self.params.len()).finish()
    }
}

/// Group index of parameters with weight decay.
const DECAY: usize = 0;
/// Group index of parameters without weight decay.
const NO_DECAY: usize = 1;

impl AdamW {
    /// Creates the optimizer over `vs`'s trainable variables, in name order.
    pub fn new(vs: &VarStore, cfg: AdamWConfig) -> Result<Self> {
        let mut opt = COptimizer::adamw(cfg.lr, cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.eps, false)?;
        let vars = vs.variables();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let mut params = Vec::new();
        // Group 0 exists from construction; group 1 is created by its first parameter.
        for name in names {
            let t = &vars[name];
            if !t.requires_grad() {
                continue;
            }
            opt.add_parameters(t, if is_no_decay(name) { NO_DECAY } else { DECAY })?;
            params.push((name.clone(), t.shallow_clone()));
        }
        opt.set_weight_decay_group(DECAY, cfg.weight_decay)?;
        if params.iter().any(|(n, _)| is_no_decay(n)) {
            opt.set_weight_decay_group(NO_DECAY, 0.0)?;
        }
        Ok(Self { opt, cfg, params })
    }

    /// Sets the learning rate of every group.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.cfg.lr = lr;
        Ok(self.opt.set_learning_rate(lr)?)
    }

    /// Resets gradients to undefined (PyTorch's `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&self) -> Result<()> {
        Ok(self.opt.zero_grad()?)
    }

    /// One AdamW update of every parameter that has a gradient.
    pub fn step(&self) -> Result<()> {
        Ok(self.opt.step()?)
    }

    /// The optimised parameters, by name.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_decay_names_follow_ml4m() {
        for n in [
            "encoder.0.norm1.weight",
            "encoder.0.norm1.bias",
            "encoder_norm.weight",
            "decoder.1.query_norm.weight",
            "decoder_proj_context.bias",
            "decoder.0.context_norm.weight",
        ] {
            assert!(is_no_decay(n), "{n}");
        }
        for n in [
            "encoder.0.attn.qkv.weight",
            "decoder_embeddings.caption.token_emb.weight",
            "encoder_embeddings.caption.mod_emb",
            "mask_token",
            "encoder_embeddings.tok_dinov2_global.pos_emb",
        ] {
            assert!(!is_no_decay(n), "{n}");
        }
    }
}
