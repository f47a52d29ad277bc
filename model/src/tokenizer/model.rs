//! [`Tokenizer`]: a configured network (conv VQ-VAE or bottleneck MLP) with its quantizer in
//! one `VarStore`, its training forward, encode/decode, and save/load as
//! `tokenizer.safetensors` + `tokenizer.json`.
//!
//! Shape legend: B batch, C channels, S side, G token-grid side, H heads, N latents per head,
//! D code dim, T tokens per sample.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};

use super::ModalityTokenizer;
use super::config::{ArchKind, InputKind, ReconLoss, TokenizerConfig};
use super::conv::{ConvDecoder, ConvEncoder};
use super::loss::recon_loss;
use super::mlp::BottleneckMlp;
use super::quantizer::{Quantized, Quantizer};
use super::vit::{VitDecoder, VitDims, VitEncoder};
use crate::error::{ModelError, Result};
use crate::io;

/// File name of the weights in a tokenizer directory.
pub const WEIGHTS_FILE: &str = "tokenizer.safetensors";
/// File name of the configuration in a tokenizer directory.
pub const CONFIG_FILE: &str = "tokenizer.json";

#[derive(Debug)]
enum Net {
    Conv { class_emb: Option<nn::Embedding>, enc: Box<ConvEncoder>, dec: Box<ConvDecoder> },
    Vit { class_emb: Option<nn::Embedding>, enc: Box<VitEncoder>, dec: Box<VitDecoder> },
    Mlp { enc: BottleneckMlp, dec: BottleneckMlp },
}

/// The class-map embedding (if any) and the encoder's input / decoder's output channels.
fn image_io(root: &nn::Path, input: &InputKind) -> (Option<nn::Embedding>, usize, usize) {
    match *input {
        InputKind::Image { channels, .. } => (None, channels, channels),
        InputKind::ClassMap { num_classes, embed_dim, .. } => {
            let emb = nn::embedding(root / "cls_emb", num_classes as i64, embed_dim as i64, Default::default());
            (Some(emb), embed_dim, num_classes)
        }
        InputKind::Vector { .. } => unreachable!("validate pairs vectors with the mlp"),
    }
}

/// Embeds class maps `(B, S, S)` to `(B, E, S, S)`; images pass through.
fn embed_input(class_emb: &Option<nn::Embedding>, x: &Tensor) -> Tensor {
    match class_emb {
        Some(emb) => emb.forward(x).permute([0, 3, 1, 2]),
        None => x.shallow_clone(),
    }
}

/// A modality tokenizer: encoder, quantizer and decoder owned by one store.
#[derive(Debug)]
pub struct Tokenizer {
    cfg: TokenizerConfig,
    vs: VarStore,
    net: Net,
    quantizer: Quantizer,
}

/// The training forward of one batch.
#[derive(Debug)]
pub struct TokenizerForward {
    /// `recon + commitment_weight · commit`, the value to minimise.
    pub loss: Tensor,
    /// The reconstruction loss alone.
    pub recon_loss: Tensor,
    /// The commitment loss alone.
    pub commit_loss: Tensor,
    /// Decoder output: values, or class logits for class maps.
    pub output: Tensor,
    /// Token ids `(B, T)`.
    pub ids_BT: Tensor,
    /// What the post-step codebook update needs.
    pub quantized: Quantized,
}

impl Tokenizer {
    /// A freshly initialised tokenizer on `device`, seeded by `cfg.seed`.
    pub fn new(cfg: &TokenizerConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        // libtorch's generator is process-global: hold the crate's lock while drawing.
        let _guard = crate::weights::RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(cfg.seed as i64);
        let vs = VarStore::new(device);
        let root = vs.root();
        let code_dim = cfg.code_dim;
        let net = match (&cfg.input, &cfg.arch) {
            (input, ArchKind::Conv { downsample_log2, channels, res_blocks }) => {
                let (class_emb, in_ch, out_ch) = image_io(&root, input);
                let enc = ConvEncoder::new(&(&root / "encoder"), in_ch, *channels, *downsample_log2, *res_blocks, code_dim);
                let dec = ConvDecoder::new(&(&root / "decoder"), out_ch, *channels, *downsample_log2, *res_blocks, code_dim);
                Net::Conv { class_emb, enc: Box::new(enc), dec: Box::new(dec) }
            }
            (input @ (InputKind::Image { size, .. } | InputKind::ClassMap { size, .. }), ArchKind::Vit { patch, width, depth, heads }) => {
                let (class_emb, in_ch, out_ch) = image_io(&root, input);
                let dims = VitDims { channels: in_ch, size: *size, patch: *patch, width: *width, depth: *depth, heads: *heads, code_dim };
                let enc = VitEncoder::new(&(&root / "encoder"), dims);
                let dec = VitDecoder::new(&(&root / "decoder"), VitDims { channels: out_ch, ..dims });
                Net::Vit { class_emb, enc: Box::new(enc), dec: Box::new(dec) }
            }
            (InputKind::Vector { dim }, ArchKind::Mlp { hidden, blocks, n_heads }) => {
                let latent = n_heads * code_dim;
                Net::Mlp {
                    enc: BottleneckMlp::new(&(&root / "encoder"), *dim, *hidden, *blocks, latent),
                    dec: BottleneckMlp::new(&(&root / "decoder"), latent, *hidden, *blocks, *dim),
                }
            }
            _ => unreachable!("validate pairs class maps and images with conv or vit, vectors with the mlp"),
        };
        let quantizer = Quantizer::new(&(&root / "quantizer"), cfg);
        Ok(Self { cfg: cfg.clone(), vs, net, quantizer })
    }

    /// The configuration.
    pub fn config(&self) -> &TokenizerConfig {
        &self.cfg
    }

    /// The store owning every parameter and codebook buffer.
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    fn bad(&self, reason: String) -> ModelError {
        ModelError::Tokenizer { modality: self.cfg.modality.clone(), reason }
    }

    /// Checks `x`'s shape and kind against the input kind; returns it on the store's device.
    fn check_input(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        match self.cfg.input {
            InputKind::Image { channels, size } => {
                if s.len() != 4 || s[1] != channels as i64 || s[2] != size as i64 || s[3] != size as i64 {
                    return Err(self.bad(format!("expected images (B, {channels}, {size}, {size}), got {s:?}")));
                }
                Ok(x.to_device(self.device()).to_kind(Kind::Float))
            }
            InputKind::ClassMap { num_classes, size, .. } => {
                if s.len() != 3 || s[1] != size as i64 || s[2] != size as i64 || x.is_floating_point() {
                    return Err(self.bad(format!("expected integer class maps (B, {size}, {size}), got {s:?} {:?}", x.kind())));
                }
                let x = x.to_device(self.device()).to_kind(Kind::Int64);
                if x.numel() > 0 && (x.min().int64_value(&[]) < 0 || x.max().int64_value(&[]) >= num_classes as i64) {
                    return Err(self.bad(format!("class ids outside 0..{num_classes}")));
                }
                Ok(x)
            }
            InputKind::Vector { dim } => {
                if s.len() != 2 || s[1] != dim as i64 {
                    return Err(self.bad(format!("expected vectors (B, {dim}), got {s:?}")));
                }
                Ok(x.to_device(self.device()).to_kind(Kind::Float))
            }
        }
    }

    /// Encoder latents `(H, N, D)`: conv and ViT give `(1, B·G·G, D)` in row-major grid
    /// order per sample, the MLP `(H, B, D)`.
    fn latents(&self, x: &Tensor) -> Tensor {
        let d = self.cfg.code_dim as i64;
        match &self.net {
            Net::Conv { class_emb, enc, .. } => enc.forward(&embed_input(class_emb, x)).permute([0, 2, 3, 1]).reshape([1, -1, d]),
            Net::Vit { class_emb, enc, .. } => enc.forward(&embed_input(class_emb, x)).reshape([1, -1, d]),
            Net::Mlp { enc, .. } => {
                let h = self.cfg.heads() as i64;
                enc.forward(x).reshape([-1, h, d]).transpose(0, 1)
            }
        }
    }

    /// Ids `(H, B·T/H)` ↔ `(B, T)`.
    fn ids_to_bt(&self, ids_HN: &Tensor) -> Tensor {
        let t = self.cfg.tokens_per_sample() as i64;
        match self.net {
            Net::Conv { .. } | Net::Vit { .. } => ids_HN.reshape([-1, t]),
            Net::Mlp { .. } => ids_HN.transpose(0, 1).reshape([-1, t]),
        }
    }

    fn ids_to_hn(&self, ids_BT: &Tensor) -> Tensor {
        match self.net {
            Net::Conv { .. } | Net::Vit { .. } => ids_BT.reshape([1, -1]),
            Net::Mlp { .. } => ids_BT.transpose(0, 1).contiguous(),
        }
    }

    /// Decoder output from codes `(H, N, D)`.
    fn decode_codes(&self, codes_HND: &Tensor) -> Tensor {
        let d = self.cfg.code_dim as i64;
        match &self.net {
            Net::Conv { dec, .. } => {
                let g = self.cfg.grid() as i64;
                dec.forward(&codes_HND.reshape([-1, g, g, d]).permute([0, 3, 1, 2]))
            }
            Net::Vit { dec, .. } => {
                let n = self.cfg.tokens_per_sample() as i64;
                dec.forward(&codes_HND.reshape([-1, n, d]))
            }
            Net::Mlp { dec, .. } => {
                let h = self.cfg.heads() as i64;
                dec.forward(&codes_HND.transpose(0, 1).reshape([-1, h * d]))
            }
        }
    }

    /// The training forward: encode, quantize (straight-through), decode, losses.
    pub fn forward(&self, x: &Tensor) -> Result<TokenizerForward> {
        let x = self.check_input(x)?;
        let quantized = self.quantizer.quantize(&self.latents(&x));
        let output = self.decode_codes(&quantized.codes_HND);
        let recon = recon_loss(self.cfg.loss, &output, &x);
        let loss = &recon + &quantized.commit_loss * self.cfg.commitment_weight;
        let ids_BT = self.ids_to_bt(&quantized.ids_HN);
        Ok(TokenizerForward { loss, recon_loss: recon, commit_loss: quantized.commit_loss.shallow_clone(), output, ids_BT, quantized })
    }

    /// The codebook update after an optimizer step (EMA and dead-code replacement).
    pub fn update_codebook(&mut self, fwd: &TokenizerForward) -> usize {
        self.quantizer.update(&fwd.quantized)
    }

    /// Decoder output for codes `(B, T)`: values, or class logits `(B, classes, S, S)`.
    pub fn decode_output(&self, codes_BT: &Tensor) -> Result<Tensor> {
        let t = self.cfg.tokens_per_sample() as i64;
        let s = codes_BT.size();
        if s.len() != 2 || s[1] != t || codes_BT.is_floating_point() {
            return Err(self.bad(format!("expected integer codes (B, {t}), got {s:?} {:?}", codes_BT.kind())));
        }
        let codes = codes_BT.to_device(self.device()).to_kind(Kind::Int64);
        let vocab = self.cfg.vocab_size() as i64;
        if codes.numel() > 0 && (codes.min().int64_value(&[]) < 0 || codes.max().int64_value(&[]) >= vocab) {
            return Err(self.bad(format!("codes outside 0..{vocab}")));
        }
        Ok(tch::no_grad(|| self.decode_codes(&self.quantizer.lookup(&self.ids_to_hn(&codes)))))
    }

    /// Writes `tokenizer.safetensors` (every parameter and codebook buffer) and
    /// `tokenizer.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tensors: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        let tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
        let mut md = BTreeMap::new();
        md.insert("format".to_string(), "tessera-tokenizer-v1".to_string());
        io::write(&dir.join(WEIGHTS_FILE), &tensors, &md)?;
        let json = serde_json::to_vec_pretty(&self.cfg)
            .map_err(|e| ModelError::Config { field: "tokenizer.json".into(), reason: e.to_string() })?;
        tessera_tokenizers::atomic::write_atomic(&dir.join(CONFIG_FILE), &json).map_err(ModelError::Write)
    }

    /// Loads a tokenizer saved by [`Tokenizer::save`]; every tensor must match the network the
    /// config builds, by name, shape and kind.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read(&cfg_path).map_err(|source| ModelError::Io { op: "reading", path: cfg_path.clone(), source })?;
        let cfg: TokenizerConfig = serde_json::from_slice(&text)
            .map_err(|e| ModelError::Config { field: "tokenizer.json".into(), reason: format!("{}: {e}", cfg_path.display()) })?;
        let tok = Self::new(&cfg, device)?;
        let path = dir.join(WEIGHTS_FILE);
        let (tensors, _) = io::read(&path)?;
        tok.copy_from(tensors, &path)?;
        Ok(tok)
    }

    /// An independent copy (its own store, same config and values), e.g. for another thread:
    /// tensors are never shared between threads.
    pub(crate) fn duplicate(&self) -> Result<Self> {
        let copy = Self::new(&self.cfg, self.device())?;
        copy.copy_from(self.vs.variables().into_iter().collect(), Path::new("<in-memory tokenizer>"))?;
        Ok(copy)
    }

    /// Copies named tensors into the store, refusing missing, unexpected or mismatched ones.
    pub(crate) fn copy_from(&self, tensors: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
        let mut vars = self.vs.variables();
        let file: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let mut mismatched = Vec::new();
        let unexpected: Vec<String> = file.keys().filter(|k| !vars.contains_key(*k)).cloned().collect();
        let needed: BTreeSet<&String> = vars.keys().collect();
        let missing: Vec<String> = needed.into_iter().filter(|k| !file.contains_key(*k)).cloned().collect();
        for (name, t) in &file {
            if let Some(v) = vars.get(name)
                && (v.size() != t.size() || v.kind() != t.kind())
            {
                mismatched.push(format!("{name}: expected {:?} {:?} got {:?} {:?}", v.kind(), v.size(), t.kind(), t.size()));
            }
        }
        if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
            return Err(ModelError::StateDict { path: path.to_path_buf(), missing, unexpected, mismatched });
        }
        tch::no_grad(|| {
            for (name, var) in vars.iter_mut() {
                var.copy_(&file[name].to_device(var.device()));
            }
        });
        Ok(())
    }
}

/// l2-normalises along dimension 1 (channels, or the vector).
fn l2norm_dim1(x: &Tensor) -> Tensor {
    x / x.square().sum_dim_intlist(1, true, Kind::Float).sqrt().clamp_min(1e-12)
}

impl ModalityTokenizer for Tokenizer {
    fn modality(&self) -> &str {
        &self.cfg.modality
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size()
    }

    fn tokens_per_sample(&self) -> usize {
        self.cfg.tokens_per_sample()
    }

    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.check_input(x)?;
        tch::no_grad(|| Ok(self.ids_to_bt(&self.quantizer.quantize(&self.latents(&x)).ids_HN)))
    }

    fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let out = self.decode_output(codes)?;
        Ok(match (&self.cfg.input, self.cfg.loss) {
            (InputKind::ClassMap { .. }, _) => out.argmax(1, false),
            // A cosine loss trains directions only: the output's norm is arbitrary, so the
            // decoded data is the unit direction (unit normals, unit global features).
            (_, ReconLoss::Cosine) => l2norm_dim1(&out),
            _ => out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{QuantizerKind, ReconLoss};
    use super::*;

    fn cfg(quantizer: QuantizerKind, code_dim: usize) -> TokenizerConfig {
        TokenizerConfig {
            modality: "depth".into(),
            input: InputKind::Image { channels: 1, size: 16 },
            arch: ArchKind::Conv { downsample_log2: 2, channels: 8, res_blocks: 1 },
            quantizer,
            code_dim,
            loss: ReconLoss::Mse,
            commitment_weight: 1.0,
            seed: 5,
        }
    }

    #[test]
    fn tokenizer_save_load_gives_identical_codes_and_decodes() {
        let c = cfg(QuantizerKind::EmaCosine { codebook_size: 32, decay: 0.9, dead_threshold: 0.1 }, 8);
        let tok = Tokenizer::new(&c, Device::Cpu).unwrap();
        let x = super::super::seeded_randn(9, &[4, 1, 16, 16]);
        let ids = tok.encode(&x).unwrap();
        assert_eq!(ids.size(), [4, 16]);
        assert_eq!(ids.kind(), Kind::Int64);
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path()).unwrap();
        let back = Tokenizer::load(dir.path(), Device::Cpu).unwrap();
        assert!(back.encode(&x).unwrap().equal(&ids));
        assert!(back.decode(&ids).unwrap().equal(&tok.decode(&ids).unwrap()));
        // Another seed builds other weights: the load really copied them.
        let other = Tokenizer::new(&TokenizerConfig { seed: 6, ..c.clone() }, Device::Cpu).unwrap();
        assert!(!other.encode(&x).unwrap().equal(&ids));
        // A file from another architecture is refused by name.
        let big = TokenizerConfig { code_dim: 4, ..c };
        let wrong = Tokenizer::new(&big, Device::Cpu).unwrap();
        let (tensors, _) = io::read(&dir.path().join(WEIGHTS_FILE)).unwrap();
        let err = wrong.copy_from(tensors, dir.path()).unwrap_err().to_string();
        assert!(err.contains("quant_proj"), "{err}");
    }

    #[test]
    fn tokenizer_fsq_codes_decode_and_reencode_to_themselves_in_latent_space() {
        let c = cfg(QuantizerKind::Fsq { levels: vec![8, 5, 5, 5] }, 4);
        let tok = Tokenizer::new(&c, Device::Cpu).unwrap();
        assert_eq!(tok.vocab_size(), 1000);
        let x = super::super::seeded_randn(10, &[2, 1, 16, 16]);
        let ids = tok.encode(&x).unwrap();
        assert!(ids.min().int64_value(&[]) >= 0 && ids.max().int64_value(&[]) < 1000);
        // The training forward's straight-through codes are exactly the looked-up codes.
        let fwd = tok.forward(&x).unwrap();
        assert!(fwd.ids_BT.equal(&ids));
        let looked_up = tok.quantizer.lookup(&tok.ids_to_hn(&ids));
        assert!((fwd.quantized.codes_HND.detach() - looked_up).abs().max().double_value(&[]) < 1e-6);
        assert!(
            fwd.output.equal(&tok.decode(&ids).unwrap()) || (fwd.output - tok.decode(&ids).unwrap()).abs().max().double_value(&[]) < 1e-5
        );
    }

    #[test]
    fn tokenizer_rejects_malformed_input_by_modality() {
        let c = cfg(QuantizerKind::EmaCosine { codebook_size: 8, decay: 0.9, dead_threshold: 0.1 }, 8);
        let tok = Tokenizer::new(&c, Device::Cpu).unwrap();
        let err = tok.encode(&Tensor::zeros([2, 3, 16, 16], (Kind::Float, Device::Cpu))).unwrap_err().to_string();
        assert!(err.contains("depth") && err.contains("(B, 1, 16, 16)"), "{err}");
        let err = tok.decode(&Tensor::full([1, 16], 8, (Kind::Int64, Device::Cpu))).unwrap_err().to_string();
        assert!(err.contains("outside 0..8"), "{err}");
    }
}
