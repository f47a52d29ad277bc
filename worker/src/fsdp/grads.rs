//! [`GradShard`]: a unit's shard gradient summed over a step's micro-batches.

use tch::{Device, Tensor};

use super::tensors::append_f32;

/// One unit's shard gradient, summed over micro-batches: a host vector when the reduce-scatter
/// runs on the host (adding into it allocates nothing: a fresh tensor per add cost page faults
/// on the embeddings' unit every step), a device tensor when it runs on the GPU.
pub(super) enum GradShard {
    /// Host path.
    Host(Vec<f32>),
    /// Device path: its length, and the sum (allocated by the first add).
    Device(usize, Option<Tensor>),
}

impl GradShard {
    pub(super) fn new(len: usize, device: bool) -> Self {
        if device { GradShard::Device(len, None) } else { GradShard::Host(vec![0.0; len]) }
    }

    /// Adds a host shard (host path).
    pub(super) fn add_host(&mut self, g: &[f32], device: Device) {
        match self {
            GradShard::Host(acc) => acc.iter_mut().zip(g).for_each(|(a, g)| *a += g),
            GradShard::Device(_, acc) => Self::add_tensor_to(acc, &Tensor::from_slice(g).to_device(device)),
        }
    }

    /// Adds a device shard (device path).
    pub(super) fn add_tensor(&mut self, g: &Tensor) {
        match self {
            GradShard::Host(acc) => {
                let mut host = Vec::with_capacity(acc.len());
                append_f32(g, &mut host);
                acc.iter_mut().zip(&host).for_each(|(a, g)| *a += g);
            }
            GradShard::Device(_, acc) => Self::add_tensor_to(acc, g),
        }
    }

    fn add_tensor_to(acc: &mut Option<Tensor>, g: &Tensor) {
        match acc {
            Some(a) => {
                let _ = a.g_add_(g);
            }
            None => *acc = Some(g.to_kind(tch::Kind::Float).copy()),
        }
    }

    /// Sum of squares (f64 accumulation on the host; torch's cascade-summed f32 norm on the
    /// device, no f64 copy of the gradients).
    pub(super) fn sq_sum(&self) -> f64 {
        match self {
            GradShard::Host(acc) => acc.iter().map(|&g| f64::from(g) * f64::from(g)).sum(),
            GradShard::Device(_, Some(t)) => t.norm().double_value(&[]).powi(2),
            GradShard::Device(_, None) => 0.0,
        }
    }

    /// The summed gradient as an f32 tensor on `device` (zeros of `len` if nothing was added).
    pub(super) fn into_tensor(self, device: Device) -> Tensor {
        match self {
            GradShard::Host(acc) => Tensor::from_slice(&acc).to_device(device),
            GradShard::Device(_, Some(t)) => t,
            GradShard::Device(len, None) => Tensor::zeros([len as i64], (tch::Kind::Float, device)),
        }
    }
}
