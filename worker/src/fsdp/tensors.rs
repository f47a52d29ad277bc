//! Copies between tch tensors and the flat host vectors the collectives work on.

use tch::{Kind, Tensor};

/// The f32 contents of a tensor (converted if needed), appended to `out`.
pub fn append_f32(t: &Tensor, out: &mut Vec<f32>) {
    let t = t.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous().view([-1]);
    let n = t.numel();
    let start = out.len();
    out.resize(start + n, 0.0);
    t.copy_data(&mut out[start..], n);
}
