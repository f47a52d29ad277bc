//! The fused CPU AdamW pass: one sweep over (param, grad, exp_avg, exp_avg_sq) per parameter,
//! split into contiguous chunks across threads.
//!
//! This is the crate's only `unsafe`: it views the four tensors' f32 storage as slices.

use tch::{Device, Tensor};

use super::AdamWConfig;
use crate::error::{ModelError, Result};

/// Per-parameter scalars of one AdamW step (PyTorch `_single_tensor_adamw` notation).
#[derive(Debug, Clone, Copy)]
pub struct Hyper {
    /// 1 - lr * weight_decay.
    pub decay_factor: f64,
    /// 1 - beta1 (the lerp weight of the first moment).
    pub one_minus_beta1: f64,
    /// beta2.
    pub beta2: f64,
    /// 1 - beta2.
    pub one_minus_beta2: f64,
    /// lr / (1 - beta1^t).
    pub step_size: f64,
    /// sqrt(1 - beta2^t).
    pub bias_correction2_sqrt: f64,
    /// eps.
    pub eps: f64,
}

impl Hyper {
    /// Scalars for update number `step` (1-based) with weight decay `wd`.
    pub fn new(c: &AdamWConfig, wd: f64, step: i64) -> Self {
        let t = step as i32;
        Self {
            decay_factor: 1.0 - c.lr * wd,
            one_minus_beta1: 1.0 - c.beta1,
            beta2: c.beta2,
            one_minus_beta2: 1.0 - c.beta2,
            step_size: c.lr / (1.0 - c.beta1.powi(t)),
            bias_correction2_sqrt: (1.0 - c.beta2.powi(t)).sqrt(),
            eps: c.eps,
        }
    }
}

/// Elements below which splitting across threads costs more than it saves.
const MIN_PER_THREAD: usize = 1 << 16;

/// Applies one AdamW update in place. All four tensors must be contiguous f32 CPU tensors of
/// the same size (the caller checks), and `param`, `exp_avg`, `exp_avg_sq` must not be touched
/// by anyone else during the call (the optimizer owns the step; the model is not running).
/// Tensors that share memory are refused with [`ModelError::Overlap`] before any slice exists.
pub fn adamw_f32(param: &Tensor, grad: &Tensor, exp_avg: &Tensor, exp_avg_sq: &Tensor, h: &Hyper, threads: usize) -> Result<()> {
    let n = param.numel();
    assert!(grad.numel() == n && exp_avg.numel() == n && exp_avg_sq.numel() == n, "AdamW state sizes differ");
    check_disjoint("adamw_update", &[("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)])?;
    if n == 0 {
        return Ok(());
    }
    // SAFETY: each tensor is a contiguous f32 CPU tensor with `n` elements (checked by the
    // caller and above), so its data pointer is valid for `n` f32 reads and writes. No two of
    // the four share a byte (`check_disjoint` above), so the mutable slices do not alias each
    // other or `grad`, which is only read. No other thread uses them while the step runs.
    #[allow(unsafe_code)]
    let (p, g, m, v) = unsafe {
        (
            std::slice::from_raw_parts_mut(param.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(grad.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(exp_avg.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(exp_avg_sq.data_ptr() as *mut f32, n),
        )
    };
    let threads = threads.clamp(1, n.div_ceil(MIN_PER_THREAD));
    if threads == 1 {
        kernel(p, g, m, v, h);
        return Ok(());
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        let parts = p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(m.chunks_mut(chunk)).zip(v.chunks_mut(chunk));
        for (((p, g), m), v) in parts {
            s.spawn(move || kernel(p, g, m, v, h));
        }
    });
    Ok(())
}

/// Refuses `tensors` (named for the error) if any two of them share memory: an in-place update
/// through one would change what it reads through the other, and slices built over them would
/// alias. Conservative: each tensor counts as the whole byte range from its first to its last
/// element, so interleaved strided views of one storage are refused too.
pub fn check_disjoint(op: &'static str, tensors: &[(&'static str, &Tensor)]) -> Result<()> {
    let extents: Vec<_> = tensors.iter().map(|(name, t)| (*name, extent(t))).collect();
    for (i, (first, a)) in extents.iter().enumerate() {
        for (second, b) in &extents[i + 1..] {
            if let (Some((da, a0, a1)), Some((db, b0, b1))) = (a, b)
                && da == db
                && a0 < b1
                && b0 < a1
            {
                return Err(ModelError::Overlap { op, first, second });
            }
        }
    }
    Ok(())
}

/// The device and the byte range `[start, end)` that `t`'s elements span (`None` when empty).
fn extent(t: &Tensor) -> Option<(Device, usize, usize)> {
    if t.numel() == 0 {
        return None;
    }
    // libtorch strides are non-negative: the last element is at the sum of (size - 1) * stride.
    let last: i64 = t.size().iter().zip(t.stride()).map(|(&n, s)| (n - 1) * s).sum();
    let start = t.data_ptr() as usize;
    Some((t.device(), start, start + (last as usize + 1) * t.kind().elt_size_in_bytes()))
}

/// The per-element update, in f32 like PyTorch's kernels.
fn kernel(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &Hyper) {
    let decay = h.decay_factor as f32;
    let w1 = h.one_minus_beta1 as f32;
    let b2 = h.beta2 as f32;
    let w2 = h.one_minus_beta2 as f32;
    let step = h.step_size as f32;
    let bc2 = h.bias_correction2_sqrt as f32;
    let eps = h.eps as f32;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *p *= decay;
        *m += w1 * (g - *m);
        *v = *v * b2 + w2 * g * g;
        let denom = v.sqrt() / bc2 + eps;
        *p -= step * *m / denom;
    }
}
