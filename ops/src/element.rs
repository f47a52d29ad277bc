//! Element types the collectives accept and how each one reduces.
//!
//! Half-precision types reduce by widening each element to f32, combining, and rounding back once
//! per combination, so a bf16 sum over a ring rounds once per hop (exact for values that stay
//! representable, such as small integers).

use bytemuck::Pod;
use half::{bf16, f16};

use crate::types::{DType, ReduceOp};

/// A plain-old-data element the collectives can move and reduce.
pub trait Element: Pod + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// The dtype tag carried on the wire.
    const DTYPE: DType;

    /// `acc[i] = acc[i] (op) other[i]`; `Avg` accumulates like `Sum` (see [`Element::divide`]).
    fn combine(acc: &mut [Self], other: &[Self], op: ReduceOp);

    /// Finishes an `Avg`: `buf[i] /= world` (integers truncate toward zero).
    fn divide(buf: &mut [Self], world: usize);
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;

    fn combine(acc: &mut [f32], other: &[f32], op: ReduceOp) {
        // Plain zipped loops so the compiler vectorises them.
        match op {
            ReduceOp::Sum | ReduceOp::Avg => acc.iter_mut().zip(other).for_each(|(a, b)| *a += *b),
            ReduceOp::Max => acc.iter_mut().zip(other).for_each(|(a, b)| *a = a.max(*b)),
        }
    }

    fn divide(buf: &mut [f32], world: usize) {
        let w = world as f32;
        buf.iter_mut().for_each(|x| *x /= w);
    }
}

impl Element for i64 {
    const DTYPE: DType = DType::I64;

    fn combine(acc: &mut [i64], other: &[i64], op: ReduceOp) {
        // Wrapping: overflow must not panic on values that came from the network.
        match op {
            ReduceOp::Sum | ReduceOp::Avg => acc.iter_mut().zip(other).for_each(|(a, b)| *a = a.wrapping_add(*b)),
            ReduceOp::Max => acc.iter_mut().zip(other).for_each(|(a, b)| *a = (*a).max(*b)),
        }
    }

    fn divide(buf: &mut [i64], world: usize) {
        let w = world as i64;
        buf.iter_mut().for_each(|x| *x = x.wrapping_div(w));
    }
}

/// Implements [`Element`] for a 16-bit float through f32.
macro_rules! half_element {
    ($t:ty, $dtype:expr) => {
        impl Element for $t {
            const DTYPE: DType = $dtype;

            fn combine(acc: &mut [$t], other: &[$t], op: ReduceOp) {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => {
                        acc.iter_mut().zip(other).for_each(|(a, b)| *a = <$t>::from_f32(a.to_f32() + b.to_f32()))
                    }
                    ReduceOp::Max => acc.iter_mut().zip(other).for_each(|(a, b)| *a = <$t>::from_f32(a.to_f32().max(b.to_f32()))),
                }
            }

            fn divide(buf: &mut [$t], world: usize) {
                let w = world as f32;
                buf.iter_mut().for_each(|x| *x = <$t>::from_f32(x.to_f32() / w));
            }
        }
    };
}

half_element!(bf16, DType::BF16);
half_element!(f16, DType::F16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions() {
        let mut a = vec![1.0f32, -2.0, 3.0];
        f32::combine(&mut a, &[4.0, 5.0, -6.0], ReduceOp::Sum);
        assert_eq!(a, [5.0, 3.0, -3.0]);
        f32::combine(&mut a, &[0.0, 9.0, 0.0], ReduceOp::Max);
        assert_eq!(a, [5.0, 9.0, 0.0]);
        let mut b = vec![bf16::from_f32(3.0), bf16::from_f32(-8.0)];
        bf16::combine(&mut b, &[bf16::from_f32(3.0), bf16::from_f32(2.0)], ReduceOp::Avg);
        bf16::divide(&mut b, 2);
        assert_eq!(b, [bf16::from_f32(3.0), bf16::from_f32(-3.0)]);
        let mut i = vec![7i64, -7, i64::MAX];
        i64::combine(&mut i, &[0, 0, 1], ReduceOp::Sum);
        i64::divide(&mut i[..2], 2);
        assert_eq!(&i[..2], [3, -3]);
    }
}
