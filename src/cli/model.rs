//! `tessera model …`: size/memory info, initialisation, synthetic batches and forward passes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tch::{Device, Kind};
use tessera_model::{
    Checkpoint, Flavor, ForwardOptions, FourMConfig, LossType, MaskedBatch, ParamCounts, Preset, SyntheticSpec, io, synthetic_batch,
};
use tessera_tokenizers::ModalitySet;

use super::output::{emit, si};

/// Model sub-commands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Parameter counts and memory for a preset over a modality set.
    Info(InfoArgs),
    /// Initialise a model like ml-4m and save it as ml-4m-compatible safetensors.
    Init(InitArgs),
    /// Write a seeded synthetic masked batch for a model's modalities.
    SynthBatch(SynthArgs),
    /// Run a forward pass on a masked batch and write the losses (and logits).
    Forward(ForwardArgs),
}

/// Which architecture to build.
#[derive(Debug, Args)]
pub struct ArchArgs {
    /// Size preset: tiny, small, base, large, xlarge.
    #[arg(long, default_value = "tiny")]
    pub preset: Preset,
    /// Block flavour: swiglu_nobias (4M-21) or gelu.
    #[arg(long, default_value = "swiglu_nobias")]
    flavor: Flavor,
    /// Modalities: 4m21, 4m7, mod11, or a comma-separated list of ml-4m keys.
    #[arg(long, default_value = "4m21")]
    pub modalities: String,
    /// Override the width.
    #[arg(long)]
    dim: Option<usize>,
    /// Override the encoder depth.
    #[arg(long)]
    encoder_depth: Option<usize>,
    /// Override the decoder depth.
    #[arg(long)]
    decoder_depth: Option<usize>,
    /// Override the number of heads.
    #[arg(long)]
    num_heads: Option<usize>,
}

impl ArchArgs {
    /// Resolves the arguments into a validated config.
    pub fn config(&self) -> anyhow::Result<FourMConfig> {
        let set = ModalitySet::parse(&self.modalities)?;
        let mut cfg = FourMConfig::preset(self.preset, self.flavor, &set);
        if let Some(d) = self.dim {
            cfg.dim = d;
        }
        if let Some(d) = self.encoder_depth {
            cfg.encoder_depth = d;
        }
        if let Some(d) = self.decoder_depth {
            cfg.decoder_depth = d;
        }
        if let Some(h) = self.num_heads {
            cfg.num_heads = h;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Arguments of `model info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `model init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Re-draw all parameters at this O(1) scale instead of ml-4m's init (numerics checks).
    #[arg(long)]
    redraw_scale: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `model synth-batch`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Take the modalities from this checkpoint (otherwise from --modalities).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[command(flatten)]
    arch: ArchArgs,
    /// Output batch file.
    #[arg(long)]
    out: PathBuf,
    /// Samples.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Per-sample input token budget.
    #[arg(long, default_value_t = 256)]
    num_input_tokens: usize,
    /// Per-sample target token budget.
    #[arg(long, default_value_t = 256)]
    num_target_tokens: usize,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Device selection.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    /// CUDA if available, else CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device 0.
    Cuda,
}

impl DeviceArg {
    /// The tch device for this choice.
    pub fn device(self) -> anyhow::Result<Device> {
        Ok(match self {
            Self::Auto => Device::cuda_if_available(),
            Self::Cpu => Device::Cpu,
            Self::Cuda => {
                if !tch::Cuda::is_available() {
                    bail!("--device cuda: no CUDA device is available to libtorch");
                }
                Device::Cuda(0)
            }
        })
    }
}

/// Arguments of `model forward`.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Model weights (safetensors with the FM config in its metadata or a config.json beside it).
    #[arg(long)]
    weights: PathBuf,
    /// Masked batch (safetensors, ml-4m mod_dict layout).
    #[arg(long)]
    batch: PathBuf,
    /// Output safetensors with `loss`, `<modality>.loss` (and `<modality>.logits`).
    #[arg(long)]
    out: PathBuf,
    /// Encoder token budget.
    #[arg(long, default_value_t = 256)]
    num_input_tokens: i64,
    /// Decoder token budget.
    #[arg(long, default_value_t = 256)]
    num_target_tokens: i64,
    /// Loss combination: mod or token.
    #[arg(long, default_value = "mod")]
    loss: String,
    /// Also write the logits of each modality's selected targets.
    #[arg(long)]
    logits: bool,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Run under bf16 autocast (CUDA only).
    #[arg(long)]
    bf16: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a model sub-command.
pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Info(a) => info(a),
        ModelCommand::Init(a) => init(a),
        ModelCommand::SynthBatch(a) => synth(a),
        ModelCommand::Forward(a) => forward(a),
    }
}

#[derive(Serialize)]
struct MemoryBytes {
    weights_fp32: usize,
    weights_bf16: usize,
    grads_fp32: usize,
    adamw_state_fp32: usize,
    training_fp32_total: usize,
}

#[derive(Serialize)]
struct Info {
    preset: Preset,
    flavor: Flavor,
    dim: usize,
    encoder_depth: usize,
    decoder_depth: usize,
    num_heads: usize,
    mlp_hidden: usize,
    domains_in: Vec<String>,
    domains_out: Vec<String>,
    params_total: usize,
    params_excluding_embeddings: usize,
    params_embeddings: usize,
    params_encoder_blocks: usize,
    params_decoder_blocks: usize,
    memory_bytes: MemoryBytes,
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    let cfg = a.arch.config()?;
    let ParamCounts { total, excluding_embeddings, embeddings, encoder_blocks, decoder_blocks } = cfg.param_counts();
    let info = Info {
        preset: a.arch.preset,
        flavor: a.arch.flavor,
        dim: cfg.dim,
        encoder_depth: cfg.encoder_depth,
        decoder_depth: cfg.decoder_depth,
        num_heads: cfg.num_heads,
        mlp_hidden: cfg.mlp_hidden(),
        domains_in: cfg.domains_in.iter().map(|m| m.to_string()).collect(),
        domains_out: cfg.domains_out.iter().map(|m| m.to_string()).collect(),
        params_total: total,
        params_excluding_embeddings: excluding_embeddings,
        params_embeddings: embeddings,
        params_encoder_blocks: encoder_blocks,
        params_decoder_blocks: decoder_blocks,
        memory_bytes: MemoryBytes {
            weights_fp32: total * 4,
            weights_bf16: total * 2,
            grads_fp32: total * 4,
            adamw_state_fp32: total * 8,
            training_fp32_total: total * 16,
        },
    };
    emit(a.json, &info, || {
        let m = &info.memory_bytes;
        format!(
            "preset {} ({}): dim {}, {}+{} layers, {} heads, MLP hidden {}\n\
             inputs  ({}): {}\noutputs ({}): {}\n\
             parameters: {} total, {} excluding embeddings, {} in embeddings\n\
             memory: weights {}B fp32 / {}B bf16, grads {}B, AdamW state {}B, training total {}B (fp32, before activations)\n",
            info.preset,
            info.flavor,
            info.dim,
            info.encoder_depth,
            info.decoder_depth,
            info.num_heads,
            info.mlp_hidden,
            info.domains_in.len(),
            info.domains_in.join(" "),
            info.domains_out.len(),
            info.domains_out.join(" "),
            si(total as f64),
            si(excluding_embeddings as f64),
            si(embeddings as f64),
            si(m.weights_fp32 as f64),
            si(m.weights_bf16 as f64),
            si(m.grads_fp32 as f64),
            si(m.adamw_state_fp32 as f64),
            si(m.training_fp32_total as f64),
        )
    })
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    let cfg = a.arch.config()?;
    let ckpt = Checkpoint::init(&cfg, Device::Cpu, a.seed)?;
    if let Some(scale) = a.redraw_scale {
        ckpt.redraw(a.seed.wrapping_add(1), scale);
    }
    ckpt.save(&a.out).with_context(|| format!("saving {}", a.out.display()))?;
    let tensors = ckpt.state_dict().len();
    let summary = serde_json::json!({"out": a.out, "tensors": tensors, "params_total": cfg.param_counts().total, "seed": a.seed, "redraw_scale": a.redraw_scale});
    emit(a.json, &summary, || {
        format!("wrote {} ({} tensors, {} parameters)\n", a.out.display(), tensors, si(cfg.param_counts().total as f64))
    })
}

fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let cfg = match &a.weights {
        Some(w) => {
            let (_, md) = io::read(w)?;
            FourMConfig::from_metadata(&md, &w.display().to_string())?
        }
        None => a.arch.config()?,
    };
    let spec =
        SyntheticSpec { batch_size: a.batch_size, input_tokens: a.num_input_tokens, target_tokens: a.num_target_tokens, seed: a.seed };
    let batch = synthetic_batch(&cfg, &spec);
    batch.save(&a.out)?;
    println!("wrote {} ({} modalities, batch {})", a.out.display(), batch.modalities.len(), a.batch_size);
    Ok(())
}

#[derive(Serialize)]
struct ForwardSummary {
    loss: f64,
    mod_loss: BTreeMap<String, f64>,
    target_tokens: BTreeMap<String, i64>,
    out: PathBuf,
}

fn forward(a: ForwardArgs) -> anyhow::Result<()> {
    let device = a.device.device()?;
    if a.bf16 && !device.is_cuda() {
        bail!("--bf16 runs under CUDA autocast; on the CPU the model runs in fp32");
    }
    let loss: LossType = a.loss.parse()?;
    let ckpt = Checkpoint::load(&a.weights, device)?;
    let batch_source = a.batch.display().to_string();
    let batch = MaskedBatch::load(&a.batch)?;
    batch.check_against(ckpt.model.config(), &batch_source)?;
    let batch = batch.to_device(device);
    let opts = ForwardOptions {
        num_encoder_tokens: a.num_input_tokens,
        num_decoder_tokens: a.num_target_tokens,
        loss,
        decoder_order_seed: None,
        return_logits: a.logits,
        loss_normalizer: None,
    };
    let out = tch::no_grad(|| tch::autocast(a.bf16, || ckpt.model.forward(&batch, &opts)))?;
    let mut tensors = vec![("loss".to_string(), out.loss.to_kind(Kind::Float).to_device(Device::Cpu))];
    let mut summary =
        ForwardSummary { loss: out.loss.double_value(&[]), mod_loss: BTreeMap::new(), target_tokens: BTreeMap::new(), out: a.out.clone() };
    for (m, l) in &out.mod_loss {
        tensors.push((format!("{m}.loss"), l.to_kind(Kind::Float).to_device(Device::Cpu)));
        summary.mod_loss.insert(m.to_string(), l.double_value(&[]));
        summary.target_tokens.insert(m.to_string(), out.target_counts[m]);
    }
    for (m, l) in &out.logits {
        tensors.push((format!("{m}.logits"), l.to_kind(Kind::Float).to_device(Device::Cpu)));
    }
    io::write(&a.out, &tensors, &BTreeMap::new())?;
    emit(a.json, &summary, || {
        let mut s = format!("loss {:.6}\n", summary.loss);
        for (m, l) in &summary.mod_loss {
            s.push_str(&format!("  {m:<22} {l:.6}  ({} targets)\n", summary.target_tokens[m]));
        }
        s
    })
}
