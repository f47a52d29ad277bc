//! AdamW with ml-4m's parameter groups: decoupled weight decay on everything except norms and
//! biases (the name rule of `optim_factory.get_parameter_groups`), betas (0.9, 0.95), eps 1e-8.
//!
//! The update is PyTorch's single-tensor AdamW formula. On the CPU it runs as one fused pass per
//! parameter over (param, grad, exp_avg, exp_avg_sq), split across libtorch's thread count:
//! small 4M models spend a large share of each step in the optimizer over their embedding
//! tables, and a fused pass moves each byte once instead of once per tensor op. Elsewhere
//! (CUDA, non-f32) the same formula runs as tensor ops. Gradients are reset to *undefined*
//! (PyTorch's `zero_grad(set_to_none=True)`), so a parameter a step does not reach is skipped.

use tch::nn::VarStore;
use tch::{COptimizer, Device, Kind, Tensor};

use crate::error::{ModelError, Result};

mod fused;

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

/// One optimised parameter and its AdamW state.
struct ParamState {
    name: String,
    param: Tensor,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates applied so far (PyTorch keeps the step count per parameter).
    steps: i64,
}

/// AdamW over every trainable variable of a store.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<ParamState>,
    /// Holds every parameter only to reset gradients to undefined (tch exposes no other way).
    grad_reset: COptimizer,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW").field("cfg", &self.cfg).field("params", &self.params.len()).finish()
    }
}

impl AdamW {
    /// Creates the optimizer over `vs`'s trainable variables, in name order.
    pub fn new(vs: &VarStore, cfg: AdamWConfig) -> Result<Self> {
        let vars = vs.variables();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let mut grad_reset = COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)?;
        let mut params = Vec::new();
        for name in names {
            let t = &vars[name];
            if !t.requires_grad() {
                continue;
            }
            grad_reset.add_parameters(t, 0)?;
            params.push(ParamState {
                name: name.clone(),
                param: t.shallow_clone(),
                decay: !is_no_decay(name),
                exp_avg: Tensor::zeros_like(t),
                exp_avg_sq: Tensor::zeros_like(t),
                steps: 0,
            });
        }
        Ok(Self { cfg, params, grad_reset })
    }

    /// Sets the learning rate of every group.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.cfg.lr = lr;
        Ok(())
    }

    /// The current hyper-parameters.
    pub fn config(&self) -> AdamWConfig {
        self.cfg
    }

    /// Resets gradients to undefined (PyTorch's `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&self) -> Result<()> {
        Ok(self.grad_reset.zero_grad()?)
    }

    /// One AdamW update of every parameter that has a gradient.
    pub fn step(&mut self) -> Result<()> {
        let c = self.cfg;
        let threads = tch::get_num_threads().max(1) as usize;
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let grad = p.param.grad();
                if !grad.defined() {
                    continue;
                }
                p.steps += 1;
                let wd = if p.decay { c.weight_decay } else { 0.0 };
                let h = fused::Hyper::new(&c, wd, p.steps);
                let fusable = p.param.device() == Device::Cpu
                    && [&p.param, &grad, &p.exp_avg, &p.exp_avg_sq].iter().all(|t| t.kind() == Kind::Float && t.is_contiguous());
                if fusable {
                    fused::adamw_f32(&p.param, &grad, &p.exp_avg, &p.exp_avg_sq, &h, threads)?;
                } else {
                    tensor_ops_step(&p.param, &grad, &p.exp_avg, &p.exp_avg_sq, &h);
                }
            }
            Ok(())
        })
    }

    /// The optimised parameters, by name.
    pub fn params(&self) -> Vec<(&str, &Tensor)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.param)).collect()
    }

    /// Sum of squares of every defined gradient (f64 accumulation): the local part of the
    /// global gradient norm, so a sharded caller can add the parts of every rank first.
    pub fn grad_sq_sum(&self) -> f64 {
        tch::no_grad(|| {
            self.params
                .iter()
                .map(|p| p.param.grad())
                .filter(|g| g.defined())
                .map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]))
                .sum()
        })
    }

    /// Multiplies every defined gradient by `factor` (gradient clipping, accumulation scaling).
    pub fn scale_grads(&self, factor: f64) {
        tch::no_grad(|| {
            for p in &self.params {
                let mut g = p.param.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                }
            }
        });
    }

    /// The optimizer state as named tensors: `<param>.exp_avg`, `<param>.exp_avg_sq` and the
    /// per-parameter update count `<param>.step` (a one-element i64 tensor).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.params.len());
        for p in &self.params {
            out.push((format!("{}.exp_avg", p.name), p.exp_avg.shallow_clone()));
            out.push((format!("{}.exp_avg_sq", p.name), p.exp_avg_sq.shallow_clone()));
            out.push((format!("{}.step", p.name), Tensor::from_slice(&[p.steps])));
        }
        out
    }

    /// Restores a state written by [`AdamW::state`]; every parameter's three entries must be
    /// present with matching shapes, and nothing else.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, origin: &str) -> Result<()> {
        let mut file: std::collections::BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let bad = |reason: String| ModelError::Format { path: origin.into(), reason };
        for p in &mut self.params {
            let mut take =
                |suffix: &str| file.remove(&format!("{}.{suffix}", p.name)).ok_or_else(|| bad(format!("missing '{}.{suffix}'", p.name)));
            let (m, v, step) = (take("exp_avg")?, take("exp_avg_sq")?, take("step")?);
            for (what, t) in [("exp_avg", &m), ("exp_avg_sq", &v)] {
                if t.size() != p.param.size() {
                    return Err(bad(format!("'{}.{what}': shape {:?}, parameter has {:?}", p.name, t.size(), p.param.size())));
                }
            }
            if step.numel() != 1 || step.kind() != Kind::Int64 {
                return Err(bad(format!("'{}.step': expected one i64", p.name)));
            }
            tch::no_grad(|| {
                p.exp_avg.copy_(&m.to_kind(p.exp_avg.kind()).to_device(p.exp_avg.device()));
                p.exp_avg_sq.copy_(&v.to_kind(p.exp_avg_sq.kind()).to_device(p.exp_avg_sq.device()));
            });
            p.steps = step.int64_value(&[0]);
        }
        if let Some(extra) = file.keys().next() {
            return Err(bad(format!("unexpected entry '{extra}' ({} in all)", file.len())));
        }
        Ok(())
    }
}

/// One AdamW update of `param` (any 1-D or contiguous slice of parameters) with its state,
/// `step` being this update's 1-based count: the fused CPU kernel for contiguous f32 CPU
/// tensors, tensor ops otherwise. For callers that keep their own (e.g. sharded) state, whose
/// four tensors may be views: any two that share memory are refused ([`ModelError::Overlap`]),
/// on either path, before anything is written.
pub fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    cfg: &AdamWConfig,
    weight_decay: f64,
    step: i64,
) -> Result<()> {
    let h = fused::Hyper::new(cfg, weight_decay, step);
    tch::no_grad(|| {
        let fusable = param.device() == Device::Cpu
            && [param, grad, exp_avg, exp_avg_sq].iter().all(|t| t.kind() == Kind::Float && t.is_contiguous());
        if fusable {
            fused::adamw_f32(param, grad, exp_avg, exp_avg_sq, &h, tch::get_num_threads().max(1) as usize)
        } else {
            let named = [("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)];
            fused::check_disjoint("adamw_update", &named)?;
            tensor_ops_step(param, grad, exp_avg, exp_avg_sq, &h);
            Ok(())
        }
    })
}

/// The same update as tensor ops (PyTorch's `_single_tensor_adamw`), for CUDA and other kinds.
fn tensor_ops_step(param: &Tensor, grad: &Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor, h: &fused::Hyper) {
    let mut param = param.shallow_clone();
    let (mut m, mut v) = (exp_avg.shallow_clone(), exp_avg_sq.shallow_clone());
    let _ = param.g_mul_scalar_(h.decay_factor);
    let _ = m.lerp_(grad, h.one_minus_beta1);
    let _ = v.g_mul_scalar_(h.beta2);
    let _ = v.g_add_(&(grad * grad * h.one_minus_beta2));
    let denom = (v.sqrt() / h.bias_correction2_sqrt) + h.eps;
    let _ = param.g_add_(&(&m / denom * -h.step_size));
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

    /// The fused kernel and the tensor-op path compute the same update, and both equal the
    /// textbook formula evaluated in f64 on a few elements.
    #[test]
    fn fused_update_equals_reference_formula() {
        // The generator is process-global: hold the crate's lock so that concurrently running
        // tests that seed and draw under it get their own numbers.
        let _guard = crate::weights::RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(0);
        let n = 100_003; // odd size: exercises the uneven split across threads
        let p0 = Tensor::randn([n], (Kind::Float, Device::Cpu));
        let cfg = AdamWConfig { lr: 1e-2, ..AdamWConfig::default() };
        let (pa, pb) = (p0.copy(), p0.copy());
        let (ma, va) = (Tensor::zeros([n], (Kind::Float, Device::Cpu)), Tensor::zeros([n], (Kind::Float, Device::Cpu)));
        let (mb, vb) = (ma.copy(), va.copy());
        let mut grads = Vec::new();
        for step in 1..=3 {
            let g = Tensor::randn([n], (Kind::Float, Device::Cpu));
            let h = fused::Hyper::new(&cfg, 0.05, step);
            fused::adamw_f32(&pa, &g, &ma, &va, &h, 2).unwrap();
            tensor_ops_step(&pb, &g, &mb, &vb, &h);
            grads.push(g);
        }
        let diff = (&pa - &pb).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "fused vs tensor ops differ by {diff}");
        // f64 reference for element 7.
        let (mut p, mut m, mut v) = (p0.double_value(&[7]), 0.0f64, 0.0f64);
        for (i, g) in grads.iter().enumerate() {
            let t = (i + 1) as f64;
            let g = g.double_value(&[7]);
            p *= 1.0 - cfg.lr * 0.05;
            m = 0.9 * m + 0.1 * g;
            v = 0.95 * v + 0.05 * g * g;
            let denom = (v / (1.0 - 0.95f64.powf(t))).sqrt() + cfg.eps;
            p -= cfg.lr / (1.0 - 0.9f64.powf(t)) * m / denom;
        }
        assert!((pa.double_value(&[7]) - p).abs() < 1e-6, "{} vs {p}", pa.double_value(&[7]));
    }

    /// Views of one storage handed to `adamw_update` as different arguments are refused on the
    /// fused and the tensor-op path, and nothing is written; adjacent views that do not share a
    /// byte are accepted.
    #[test]
    fn overlapping_arguments_are_refused() {
        let opts = (Kind::Float, Device::Cpu);
        let cfg = AdamWConfig { lr: 1e-2, ..AdamWConfig::default() };
        let buf = Tensor::arange(12, opts);
        let before = buf.copy();
        let (m, v) = (Tensor::zeros([4], opts), Tensor::zeros([4], opts));
        // param = buf[0..4], grad = buf[2..6]: contiguous f32, so the fused path would run.
        let err = adamw_update(&buf.narrow(0, 0, 4), &buf.narrow(0, 2, 4), &m, &v, &cfg, 0.05, 1).unwrap_err();
        assert!(matches!(err, ModelError::Overlap { op: "adamw_update", first: "param", second: "grad" }), "{err}");
        // exp_avg_sq strided over param's storage: the tensor-op path.
        let strided = buf.as_strided([4], [2], Some(1));
        let err = adamw_update(&buf.narrow(0, 4, 4), &Tensor::ones([4], opts), &m, &strided, &cfg, 0.05, 1).unwrap_err();
        assert!(matches!(err, ModelError::Overlap { first: "param", second: "exp_avg_sq", .. }), "{err}");
        assert!(buf.equal(&before) && m.equal(&Tensor::zeros([4], opts)), "a refused update wrote");
        // Back to back in one buffer, sharing no byte: a valid call.
        adamw_update(&buf.narrow(0, 0, 4), &buf.narrow(0, 4, 4), &m, &v, &cfg, 0.05, 1).unwrap();
    }
}
