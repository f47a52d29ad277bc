//! [`GradShard`]: a unit's shard gradient summed over a step's micro-batches.

use tch::{Device, Tensor};

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

    /// Adds a host shard (host path; the trainer creates every shard for the path it runs).
    pub(super) fn add_host(&mut self, g: &[f32]) {
        match self {
            GradShard::Host(acc) => acc.iter_mut().zip(g).for_each(|(a, g)| *a += g),
            GradShard::Device(..) => unreachable!("a host reduce-scatter on the device path"),
        }
    }

    /// Adds a host result for elements `at..at + g.len()` of the shard (host path, a unit
    /// reduced in pieces).
    pub(super) fn add_host_at(&mut self, at: usize, g: &[f32]) {
        match self {
            GradShard::Host(acc) => acc[at..at + g.len()].iter_mut().zip(g).for_each(|(a, g)| *a += g),
            GradShard::Device(..) => unreachable!("a host reduce-scatter on the device path"),
        }
    }

    /// Adds a device shard (device path).
    pub(super) fn add_tensor(&mut self, g: &Tensor) {
        match self {
            GradShard::Device(_, Some(a)) => {
                let _ = a.g_add_(g);
            }
            GradShard::Device(_, acc) => *acc = Some(g.to_kind(tch::Kind::Float).copy()),
            GradShard::Host(_) => unreachable!("a device reduce-scatter on the host path"),
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
