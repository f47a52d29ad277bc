//! Finite scalar quantization (Mentzer et al. 2023): each latent dimension `d` is bounded by
//! tanh to `levels[d]` integer values and rounded with a straight-through gradient. The
//! codebook is implicit (the grid of level combinations, mixed-radix ids), so nothing is
//! learned or updated and no code can die.
//!
//! Shape legend: N latents, D code dim (= number of levels).

use tch::{Device, Kind, Tensor};

/// Stops the tanh bound exactly at ±(L−1)/2, where rounding would reach one level too many.
const EPS: f64 = 1e-3;

/// An FSQ quantizer for a fixed list of levels.
#[derive(Debug)]
pub struct Fsq {
    levels: Vec<i64>,
    /// Mixed-radix place values: `basis[d] = levels[0] · … · levels[d−1]`.
    basis: Vec<i64>,
}

impl Fsq {
    /// An FSQ over `levels` (validated by the config: each ≥ 2, small product).
    pub fn new(levels: &[usize]) -> Self {
        let levels: Vec<i64> = levels.iter().map(|&l| l as i64).collect();
        let basis = levels.iter().scan(1i64, |acc, &l| Some(std::mem::replace(acc, *acc * l))).collect();
        Self { levels, basis }
    }

    /// The implicit codebook size.
    pub fn size(&self) -> i64 {
        self.levels.iter().product()
    }

    fn per_dim(&self, f: impl Fn(i64) -> f64, device: Device) -> Tensor {
        Tensor::from_slice(&self.levels.iter().map(|&l| f(l) as f32).collect::<Vec<_>>()).to_device(device)
    }

    /// Quantizes `z (…, D)`: returns the codes scaled to [−1, 1] (straight-through, so the
    /// gradient of the rounding is the identity) and the ids `(…)`.
    pub fn quantize(&self, z: &Tensor) -> (Tensor, Tensor) {
        let dev = z.device();
        let half_l = self.per_dim(|l| (l - 1) as f64 * (1.0 + EPS) / 2.0, dev);
        // Even level counts are asymmetric ({−2,−1,0,1} for 4): shift and offset centre them.
        let offset = self.per_dim(|l| if l % 2 == 0 { 0.5 } else { 0.0 }, dev);
        let shift = (&offset / &half_l).atanh();
        let bounded = (z + shift).tanh() * &half_l - &offset;
        let rounded = bounded.round();
        let ste = &bounded + (&rounded - &bounded).detach();
        let half_width = self.per_dim(|l| (l / 2) as f64, dev);
        let digits = (rounded.detach() + &half_width).to_kind(Kind::Int64);
        let ids = (digits * Tensor::from_slice(&self.basis).to_device(dev)).sum_dim_intlist(-1, false, Kind::Int64);
        (ste / half_width, ids)
    }

    /// The codes of ids `(…)` → `(…, D)` in [−1, 1], exactly the values [`Fsq::quantize`] gives.
    pub fn lookup(&self, ids: &Tensor) -> Tensor {
        let dev = ids.device();
        let basis = Tensor::from_slice(&self.basis).to_device(dev);
        let levels = Tensor::from_slice(&self.levels).to_device(dev);
        let digits = ids.unsqueeze(-1).floor_divide(&basis).remainder_tensor(&levels).to_kind(Kind::Float);
        let half_width = self.per_dim(|l| (l / 2) as f64, dev);
        (digits - &half_width) / half_width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every grid point of the implicit codebook maps to a distinct id in 0..size, and lookup
    /// inverts quantize exactly, for odd and even level counts.
    #[test]
    fn tokenizer_fsq_round_trip_covers_the_implicit_codebook() {
        let fsq = Fsq::new(&[8, 5, 2, 3]);
        assert_eq!(fsq.size(), 240);
        let codes = fsq.lookup(&Tensor::arange(240, (Kind::Int64, Device::Cpu)));
        // Inverse of the bound: pick latents that land on each grid value, then quantize them.
        let half_l = fsq.per_dim(|l| (l - 1) as f64 * (1.0 + EPS) / 2.0, Device::Cpu);
        let offset = fsq.per_dim(|l| if l % 2 == 0 { 0.5 } else { 0.0 }, Device::Cpu);
        let half_width = fsq.per_dim(|l| (l / 2) as f64, Device::Cpu);
        let target = &codes * &half_width;
        let z = ((&target + &offset) / &half_l).atanh() - (&offset / &half_l).atanh();
        let (q, ids) = fsq.quantize(&z);
        assert_eq!(Vec::<i64>::try_from(&ids).unwrap(), (0..240).collect::<Vec<_>>());
        assert!((q - &codes).abs().max().double_value(&[]) < 1e-6);
        assert!(codes.abs().max().double_value(&[]) <= 1.0);
        // Random latents: quantize → lookup reproduces the codes, and the gradient passes.
        let z = super::super::seeded_randn(7, &[100, 4]).set_requires_grad(true) * 3.0;
        let (q, ids) = fsq.quantize(&z);
        assert!((fsq.lookup(&ids) - q.detach()).abs().max().double_value(&[]) < 1e-6);
        assert!(ids.min().int64_value(&[]) >= 0 && ids.max().int64_value(&[]) < 240);
    }

    #[test]
    fn tokenizer_fsq_gradient_is_straight_through() {
        let z = super::super::seeded_randn(8, &[10, 3]).set_requires_grad(true);
        let (q, _) = Fsq::new(&[5, 5, 5]).quantize(&z);
        q.sum(Kind::Float).backward();
        // d q / d z = tanh' · half_l / half_width, positive everywhere.
        assert!(z.grad().min().double_value(&[]) > 0.0);
    }
}
