//! The ViT VQ-VAE encoder and decoder (ml-4m's `ViTEncoder` / `vit_b_dec`, scaled down): a
//! patch projection (convolution with kernel = stride = patch), a fixed 2-D sin-cos position
//! table, pre-norm transformer blocks, and on the encoder side ml-4m's residual tanh post-MLP
//! (from ViT-VQGAN) before the projection to the code dim. The decoder maps each code back to
//! a patch of pixels with a linear layer and un-patchifies.
//!
//! Shape legend: B batch, C channels, S side, P patch, G grid side, N = G² tokens, W width,
//! D code dim, H attention heads, K head dim.

use tch::Tensor;
use tch::nn::{self, Module};

use crate::posemb::sincos_2d;

/// Pre-norm block: `x + attn(LN(x))`, then `x + MLP(LN(x))` with GELU and 4× inner width.
#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
}

impl Block {
    fn new(p: &nn::Path, w: i64, heads: i64) -> Self {
        Self {
            norm1: nn::layer_norm(p / "norm1", vec![w], Default::default()),
            qkv: nn::linear(p / "attn" / "qkv", w, 3 * w, Default::default()),
            proj: nn::linear(p / "attn" / "proj", w, w, Default::default()),
            norm2: nn::layer_norm(p / "norm2", vec![w], Default::default()),
            fc1: nn::linear(p / "mlp" / "fc1", w, 4 * w, Default::default()),
            fc2: nn::linear(p / "mlp" / "fc2", 4 * w, w, Default::default()),
            heads,
        }
    }

    fn forward(&self, x_BNW: &Tensor) -> Tensor {
        let (b, n, w) = x_BNW.size3().unwrap_or((0, 0, 0));
        let k = w / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x_BNW)).reshape([b, n, 3, self.heads, k]).permute([2, 0, 3, 1, 4]);
        let (q_BHNK, k_BHNK, v_BHNK) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let a_BHNK = Tensor::scaled_dot_product_attention::<Tensor>(&q_BHNK, &k_BHNK, &v_BHNK, None, 0.0, false, None, false);
        let x_BNW = x_BNW + self.proj.forward(&a_BHNK.transpose(1, 2).reshape([b, n, w]));
        &x_BNW + self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x_BNW)).gelu("none"))
    }
}

/// Shared trunk: position table and blocks, then a final norm.
#[derive(Debug)]
struct Trunk {
    pos_1NW: Tensor,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
}

impl Trunk {
    fn new(p: &nn::Path, grid: i64, w: i64, depth: usize, heads: i64) -> Self {
        // Fixed, not learned (ml-4m); a non-trainable variable so it travels with the weights.
        let pos_1NW = p.add("pos_emb", sincos_2d(grid, grid, w).to_device(p.device()), false);
        let blocks = (0..depth).map(|i| Block::new(&(p / "blocks" / i), w, heads)).collect();
        Self { pos_1NW, blocks, norm: nn::layer_norm(p / "norm", vec![w], Default::default()) }
    }

    fn forward(&self, x_BNW: &Tensor) -> Tensor {
        let mut h = x_BNW + &self.pos_1NW;
        for b in &self.blocks {
            h = b.forward(&h);
        }
        self.norm.forward(&h)
    }
}

/// Image `(B, C, S, S)` → latents `(B, N, D)` in row-major grid order.
#[derive(Debug)]
pub struct VitEncoder {
    patch_proj: nn::Conv2D,
    trunk: Trunk,
    post_norm: nn::LayerNorm,
    post_fc1: nn::Linear,
    post_fc2: nn::Linear,
    quant_proj: nn::Linear,
}

/// Sizes shared by the encoder and decoder.
#[derive(Debug, Clone, Copy)]
pub struct VitDims {
    /// Input / output channels.
    pub channels: usize,
    /// Image side.
    pub size: usize,
    /// Patch side.
    pub patch: usize,
    /// Transformer width.
    pub width: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Code dim.
    pub code_dim: usize,
}

impl VitEncoder {
    /// The encoder for `d` (validated by the config: width divisible by heads and by 4).
    pub fn new(p: &nn::Path, d: VitDims) -> Self {
        let (w, patch) = (d.width as i64, d.patch as i64);
        let cfg = nn::ConvConfig { stride: patch, ..Default::default() };
        Self {
            patch_proj: nn::conv2d(p / "patch_proj", d.channels as i64, w, patch, cfg),
            trunk: Trunk::new(&(p / "trunk"), (d.size / d.patch) as i64, w, d.depth, d.heads as i64),
            post_norm: nn::layer_norm(p / "post_mlp" / "norm", vec![w], Default::default()),
            post_fc1: nn::linear(p / "post_mlp" / "fc1", w, 4 * w, Default::default()),
            post_fc2: nn::linear(p / "post_mlp" / "fc2", 4 * w, w, Default::default()),
            quant_proj: nn::linear(p / "quant_proj", w, d.code_dim as i64, Default::default()),
        }
    }

    /// Encodes `x_BCSS` to `z_BND`.
    pub fn forward(&self, x_BCSS: &Tensor) -> Tensor {
        let x_BNW = self.patch_proj.forward(x_BCSS).flatten(2, 3).transpose(1, 2);
        let h = self.trunk.forward(&x_BNW);
        // ml-4m runs the post-MLP in fp32; everything here is fp32 already.
        let h = &h + self.post_fc2.forward(&self.post_fc1.forward(&self.post_norm.forward(&h)).tanh());
        self.quant_proj.forward(&h)
    }
}

/// Codes `(B, N, D)` → output `(B, C, S, S)` (values, or class logits).
#[derive(Debug)]
pub struct VitDecoder {
    post_quant_proj: nn::Linear,
    trunk: Trunk,
    to_pixels: nn::Linear,
    dims: VitDims,
}

impl VitDecoder {
    /// The decoder for `d`.
    pub fn new(p: &nn::Path, d: VitDims) -> Self {
        let w = d.width as i64;
        Self {
            post_quant_proj: nn::linear(p / "post_quant_proj", d.code_dim as i64, w, Default::default()),
            trunk: Trunk::new(&(p / "trunk"), (d.size / d.patch) as i64, w, d.depth, d.heads as i64),
            to_pixels: nn::linear(p / "to_pixels", w, (d.patch * d.patch * d.channels) as i64, Default::default()),
            dims: d,
        }
    }

    /// Decodes `q_BND` to `(B, C, S, S)`.
    pub fn forward(&self, q_BND: &Tensor) -> Tensor {
        let (c, p, g) = (self.dims.channels as i64, self.dims.patch as i64, (self.dims.size / self.dims.patch) as i64);
        let h = self.trunk.forward(&self.post_quant_proj.forward(q_BND));
        let px = self.to_pixels.forward(&h);
        // (B, G·G, P·P·C) → (B, G, G, P, P, C) → (B, C, G, P, G, P) → (B, C, S, S).
        px.reshape([-1, g, g, p, p, c]).permute([0, 5, 1, 3, 2, 4]).reshape([-1, c, g * p, g * p])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn tokenizer_vit_patchify_and_unpatchify_are_inverse_layouts() {
        let vs = nn::VarStore::new(Device::Cpu);
        let d = VitDims { channels: 3, size: 16, patch: 4, width: 32, depth: 1, heads: 4, code_dim: 8 };
        let enc = VitEncoder::new(&(vs.root() / "enc"), d);
        let dec = VitDecoder::new(&(vs.root() / "dec"), d);
        let z = enc.forward(&Tensor::zeros([2, 3, 16, 16], (Kind::Float, Device::Cpu)));
        assert_eq!(z.size(), [2, 16, 8]);
        assert_eq!(dec.forward(&z).size(), [2, 3, 16, 16]);
        // The un-patchify layout: pixel (c, y, x) comes from token (y/P)·G + x/P, entry
        // ((y%P)·P + x%P)·C + c — the layout of the patch projection's weights.
        let px = Tensor::arange(16 * 48, (Kind::Float, Device::Cpu)).reshape([1, 16, 48]);
        let img = px.reshape([-1, 4, 4, 4, 4, 3]).permute([0, 5, 1, 3, 2, 4]).reshape([-1, 3, 16, 16]);
        let (c, y, x) = (2i64, 9i64, 6i64);
        let token = (y / 4) * 4 + x / 4;
        let entry = ((y % 4) * 4 + x % 4) * 3 + c;
        assert_eq!(img.double_value(&[0, c, y, x]), (token * 48 + entry) as f64);
    }
}
