//! Fixed sin-cos positional tables, built with the same float32 operations as ml-4m's
//! `build_1d_sincos_posemb` / `build_2d_sincos_posemb` so the buffers are bit-identical.

use tch::{Device, Kind, Tensor};

const TEMPERATURE: f64 = 10000.0;

/// ω_k = 1 / T^(k / parts) for k in 0..parts, float32.
fn omega(parts: i64) -> Tensor {
    let k = Tensor::arange(parts, (Kind::Float, Device::Cpu)) / (parts as f64);
    Tensor::pow_scalar(TEMPERATURE, &k).reciprocal()
}

/// 1D table of shape (1, max_len, dim): `[sin(n ω), cos(n ω)]`, all sines first.
pub fn sincos_1d(max_len: i64, dim: i64) -> Tensor {
    let pos = Tensor::arange(max_len, (Kind::Float, Device::Cpu));
    let out = pos.unsqueeze(1) * omega(dim / 2).unsqueeze(0);
    Tensor::cat(&[out.sin(), out.cos()], 1).unsqueeze(0)
}

/// 2D table of shape (1, h*w, dim) for a row-major grid: `[sin(a ω), cos(a ω), sin(b ω), cos(b ω)]`
/// where token t has a = t / h and b = t % h (ml-4m's meshgrid 'ij' layout).
pub fn sincos_2d(h: i64, w: i64, dim: i64) -> Tensor {
    let t = Tensor::arange(h * w, (Kind::Int64, Device::Cpu));
    let a = t.divide_scalar_mode(h, "floor").to_kind(Kind::Float);
    let b = t.remainder(h).to_kind(Kind::Float);
    let om = omega(dim / 4).unsqueeze(0);
    let out_a = a.unsqueeze(1) * &om;
    let out_b = b.unsqueeze(1) * &om;
    Tensor::cat(&[out_a.sin(), out_a.cos(), out_b.sin(), out_b.cos()], 1).unsqueeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_d_values() {
        let t = sincos_1d(4, 8);
        assert_eq!(t.size(), vec![1, 4, 8]);
        // Position 0: sines 0, cosines 1.
        let row0: Vec<f32> = Vec::try_from(t.get(0).get(0)).unwrap();
        assert_eq!(row0, vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        // Position 3, k = 1: omega = 1/10000^(1/4) = 0.1.
        let v = t.get(0).get(3).double_value(&[1]);
        assert!((v - (0.3f64).sin()).abs() < 1e-6, "{v}");
    }

    #[test]
    fn two_d_layout_is_row_then_column() {
        let (h, w, d) = (3, 3, 8);
        let t = sincos_2d(h, w, d);
        assert_eq!(t.size(), vec![1, 9, 8]);
        // Token 5 = row 1, col 2: first quarter sin(1*omega0)=sin(1), third quarter sin(2).
        let v: Vec<f32> = Vec::try_from(t.get(0).get(5)).unwrap();
        assert!((v[0] as f64 - 1f64.sin()).abs() < 1e-6);
        assert!((v[4] as f64 - 2f64.sin()).abs() < 1e-6);
    }
}
