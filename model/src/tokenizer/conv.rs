//! The convolutional VQ-VAE encoder and decoder. The encoder halves the side once per stage
//! (4×4 stride-2 convolutions, channels doubling up to 4× the first stage) with group-normed
//! residual blocks, then projects to the code dim (ml-4m's `quant_proj`); the decoder mirrors
//! it with nearest upsampling followed by a 3×3 convolution, which avoids the checkerboard
//! artefacts of transposed convolutions.
//!
//! Shape legend: B batch, C channels, S side, G token-grid side, D code dim.

use tch::Tensor;
use tch::nn::{self, Module};

use super::config::GROUPS;

fn conv(p: nn::Path, i: usize, o: usize, k: i64, stride: i64) -> nn::Conv2D {
    // "Same" padding for odd kernels; k/2−1 makes a 4×4 stride-2 conv halve the side exactly.
    let padding = if k % 2 == 0 { k / 2 - 1 } else { (k - 1) / 2 };
    let cfg = nn::ConvConfig { stride, padding, ..Default::default() };
    nn::conv2d(p, i as i64, o as i64, k, cfg)
}

fn norm(p: nn::Path, c: usize) -> nn::GroupNorm {
    nn::group_norm(p, GROUPS as i64, c as i64, Default::default())
}

/// `x + conv(silu(norm(conv(silu(norm(x))))))`.
#[derive(Debug)]
struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
}

impl ResBlock {
    fn new(p: &nn::Path, c: usize) -> Self {
        Self {
            norm1: norm(p / "norm1", c),
            conv1: conv(p / "conv1", c, c, 3, 1),
            norm2: norm(p / "norm2", c),
            conv2: conv(p / "conv2", c, c, 3, 1),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        x + self.conv2.forward(&self.norm2.forward(&h).silu())
    }
}

/// Channels of stage `i` (0 = the full-resolution stem): doubling, capped at 4× the first.
fn stage_channels(base: usize, i: usize) -> usize {
    base << i.min(2)
}

/// Image `(B, C, S, S)` → latents `(B, D, G, G)`.
#[derive(Debug)]
pub struct ConvEncoder {
    stem: nn::Conv2D,
    stages: Vec<(nn::Conv2D, Vec<ResBlock>)>,
    out_norm: nn::GroupNorm,
    quant_proj: nn::Conv2D,
}

impl ConvEncoder {
    /// An encoder with `levels` stride-2 stages from `in_ch` channels to `code_dim`.
    pub fn new(p: &nn::Path, in_ch: usize, base: usize, levels: u32, res_blocks: usize, code_dim: usize) -> Self {
        let stem = conv(p / "stem", in_ch, base, 3, 1);
        let mut stages = Vec::new();
        for i in 0..levels as usize {
            let (ci, co) = (stage_channels(base, i), stage_channels(base, i + 1));
            let sp = p / "stages" / i;
            let blocks = (0..res_blocks).map(|j| ResBlock::new(&(&sp / "res" / j), co)).collect();
            stages.push((conv(&sp / "down", ci, co, 4, 2), blocks));
        }
        let top = stage_channels(base, levels as usize);
        Self { stem, stages, out_norm: norm(p / "out_norm", top), quant_proj: conv(p / "quant_proj", top, code_dim, 1, 1) }
    }

    /// Encodes `x_BCSS` to `z_BDGG`.
    pub fn forward(&self, x_BCSS: &Tensor) -> Tensor {
        let mut h = self.stem.forward(x_BCSS);
        for (down, blocks) in &self.stages {
            h = down.forward(&h.silu());
            for b in blocks {
                h = b.forward(&h);
            }
        }
        self.quant_proj.forward(&self.out_norm.forward(&h).silu())
    }
}

/// Codes `(B, D, G, G)` → output `(B, C, S, S)` (values, or class logits for class maps).
#[derive(Debug)]
pub struct ConvDecoder {
    post_quant_proj: nn::Conv2D,
    stages: Vec<(Vec<ResBlock>, nn::Conv2D)>,
    out_norm: nn::GroupNorm,
    out: nn::Conv2D,
}

impl ConvDecoder {
    /// The mirror of [`ConvEncoder::new`], ending in `out_ch` channels.
    pub fn new(p: &nn::Path, out_ch: usize, base: usize, levels: u32, res_blocks: usize, code_dim: usize) -> Self {
        let top = stage_channels(base, levels as usize);
        let post_quant_proj = conv(p / "post_quant_proj", code_dim, top, 1, 1);
        let mut stages = Vec::new();
        for i in (0..levels as usize).rev() {
            let (ci, co) = (stage_channels(base, i + 1), stage_channels(base, i));
            let sp = p / "stages" / i;
            let blocks = (0..res_blocks).map(|j| ResBlock::new(&(&sp / "res" / j), ci)).collect();
            stages.push((blocks, conv(&sp / "up", ci, co, 3, 1)));
        }
        Self { post_quant_proj, stages, out_norm: norm(p / "out_norm", base), out: conv(p / "out", base, out_ch, 3, 1) }
    }

    /// Decodes `q_BDGG` to `(B, out_ch, S, S)`.
    pub fn forward(&self, q_BDGG: &Tensor) -> Tensor {
        let mut h = self.post_quant_proj.forward(q_BDGG);
        for (blocks, up) in &self.stages {
            for b in blocks {
                h = b.forward(&h);
            }
            let s = h.size();
            h = up.forward(&h.silu().upsample_nearest2d([s[2] * 2, s[3] * 2], None, None));
        }
        self.out.forward(&self.out_norm.forward(&h).silu())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn tokenizer_conv_shapes_follow_the_downsampling() {
        let vs = nn::VarStore::new(Device::Cpu);
        let enc = ConvEncoder::new(&(vs.root() / "enc"), 3, 16, 3, 1, 8);
        let dec = ConvDecoder::new(&(vs.root() / "dec"), 5, 16, 3, 1, 8);
        let z = enc.forward(&Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu)));
        assert_eq!(z.size(), [2, 8, 8, 8]);
        assert_eq!(dec.forward(&z).size(), [2, 5, 64, 64]);
    }
}
