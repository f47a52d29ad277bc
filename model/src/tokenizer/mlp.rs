//! ml-4m's Bottleneck MLP (`BottleneckMLP`): `linear_in`, residual pre-norm blocks
//! `x + W2·GELU(W1·LN(x))` with a 4× inner width, `linear_out`. The tokenizer uses one as the
//! encoder (vector → heads·code_dim) and one as the decoder (heads·code_dim → vector).
//!
//! Shape legend: B batch, I input width, W hidden width, O output width.

use tch::Tensor;
use tch::nn::{self, Module};

#[derive(Debug)]
struct Block {
    norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// A residual MLP mapping `(B, I)` to `(B, O)`.
#[derive(Debug)]
pub struct BottleneckMlp {
    linear_in: nn::Linear,
    blocks: Vec<Block>,
    linear_out: nn::Linear,
}

impl BottleneckMlp {
    /// `input → width → (blocks residual blocks) → output`.
    pub fn new(p: &nn::Path, input: usize, width: usize, blocks: usize, output: usize) -> Self {
        let (i, w, o) = (input as i64, width as i64, output as i64);
        let blocks = (0..blocks)
            .map(|j| {
                let bp = p / "blocks" / j;
                Block {
                    norm: nn::layer_norm(&bp / "norm", vec![w], Default::default()),
                    fc1: nn::linear(&bp / "fc1", w, 4 * w, Default::default()),
                    fc2: nn::linear(&bp / "fc2", 4 * w, w, Default::default()),
                }
            })
            .collect();
        Self {
            linear_in: nn::linear(p / "linear_in", i, w, Default::default()),
            blocks,
            linear_out: nn::linear(p / "linear_out", w, o, Default::default()),
        }
    }

    /// Maps `x_BI` to `(B, O)`.
    pub fn forward(&self, x_BI: &Tensor) -> Tensor {
        let mut h_BW = self.linear_in.forward(x_BI);
        for b in &self.blocks {
            h_BW = &h_BW + b.fc2.forward(&b.fc1.forward(&b.norm.forward(&h_BW)).gelu("none"));
        }
        self.linear_out.forward(&h_BW)
    }
}
