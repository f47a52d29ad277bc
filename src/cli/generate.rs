//! `tessera generate`: the machine interface of any-to-any generation. Reads weights, a
//! conditioning batch (full inputs and empty targets, the masked-batch format of `tessera model
//! forward --batch`) and a schedule YAML (ml-4m's `build_chained_generation_schedules` keyword
//! names plus `top_k`/`top_p`), runs ml-4m's generation loop and writes the final batch.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use tessera_model::generate::{GenerateOptions, GenerationSampler, ScheduleSpec, TextSpecials};
use tessera_model::{Checkpoint, MaskedBatch};
use tessera_tokenizers::text::TextTokenizer;

use super::model::DeviceArg;
use super::output::emit;

/// Arguments of `tessera generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model weights (ml-4m-compatible safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Conditioning batch: conditions as full inputs, targets as empty targets.
    #[arg(long)]
    batch: PathBuf,
    /// Schedule YAML (ml-4m's keyword names, plus top_k and top_p).
    #[arg(long)]
    schedule: PathBuf,
    /// Where to write the final batch (each target's `<mod>.tensor` holds the generated ids).
    #[arg(long)]
    out: PathBuf,
    /// Base seed; step i of the chained schedule uses seed + i (ml-4m's rule).
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Text tokenizer JSON for the special ids of sequence targets (default: ml-4m's layout,
    /// [PAD] 0, [EOS] 3, [S_k] 4 + k).
    #[arg(long)]
    text_tokenizer: Option<PathBuf>,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// bf16 autocast (CUDA only).
    #[arg(long)]
    bf16: bool,
    /// Autoregressive decoding without the KV cache (re-runs the decoder on the whole prefix).
    #[arg(long)]
    no_kv_cache: bool,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Summary {
    out: PathBuf,
    steps: usize,
    targets: Vec<String>,
    seconds: f64,
}

/// Runs `tessera generate`.
pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let device = a.device.device()?;
    if a.bf16 && !device.is_cuda() {
        bail!("--bf16 runs under CUDA autocast; on the CPU generation runs in fp32");
    }
    let ckpt = Checkpoint::load(&a.weights, device)?;
    let source = a.batch.display().to_string();
    let batch = MaskedBatch::load(&a.batch)?;
    batch.check_against(ckpt.model.config(), &source)?;
    let batch = batch.to_device(device);
    let sched_name = a.schedule.display().to_string();
    let plan = ScheduleSpec::from_file(&a.schedule)?.resolve(&sched_name)?;
    let specials = match &a.text_tokenizer {
        Some(p) => TextSpecials::from_tokenizer(&TextTokenizer::from_file(p)?)?,
        None => TextSpecials::ml4m_default(),
    };
    let opts = GenerateOptions { top_k: plan.top_k, top_p: plan.top_p, seed: Some(a.seed), kv_cache: !a.no_kv_cache };
    let sampler = GenerationSampler::new(&ckpt.model, specials);
    let start = std::time::Instant::now();
    let out = tch::autocast(a.bf16, || sampler.generate(&batch, &plan.steps, &opts))?;
    let seconds = start.elapsed().as_secs_f64();
    out.to_device(tch::Device::Cpu).save(&a.out)?;
    let summary = Summary {
        out: a.out.clone(),
        steps: plan.steps.len(),
        targets: plan.targets.iter().map(|t| t.target.key().to_string()).collect(),
        seconds,
    };
    emit(a.json, &summary, || {
        format!("generated {} in {} steps ({seconds:.2} s) -> {}\n", summary.targets.join(", "), summary.steps, a.out.display())
    })
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};
    use tessera_model::generate::{GenerateOptions, GenerationSampler, ScheduleSpec, TextSpecials, empty_target, full_input};
    use tessera_model::{Checkpoint, Flavor, FourMConfig, MaskedBatch, Preset};
    use tessera_tokenizers::{Modality, ModalitySet};

    use super::{GenerateArgs, run};
    use crate::cli::model::DeviceArg;

    /// The command on files (weights, conditioning, schedule) writes the same batch as the
    /// library, with every target generated (image grid committed, caption merged).
    #[test]
    fn generate_command_writes_the_library_result() {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            FourMConfig::preset(Preset::Tiny, Flavor::SwigluNobias, &ModalitySet::parse("caption,tok_clip@224,tok_rgb@224").unwrap());
        (cfg.dim, cfg.encoder_depth, cfg.decoder_depth, cfg.num_heads) = (32, 1, 1, 2);
        let ckpt = Checkpoint::init(&cfg, Device::Cpu, 5).unwrap();
        ckpt.redraw(6, 1.0);
        let weights = dir.path().join("w.safetensors");
        ckpt.save(&weights).unwrap();
        let sp = TextSpecials::ml4m_default();
        let rgb = Tensor::randint(16384, [1, 196], (Kind::Int64, Device::Cpu));
        let mut batch = MaskedBatch { modalities: Default::default() };
        batch.modalities.insert(Modality::TokRgb224, full_input(Modality::TokRgb224, rgb, None, &sp).unwrap());
        batch.modalities.insert(Modality::TokClip224, empty_target(Modality::TokClip224, 1, 196, &sp, Device::Cpu).unwrap());
        batch.modalities.insert(Modality::Caption, empty_target(Modality::Caption, 1, 8, &sp, Device::Cpu).unwrap());
        let cond = dir.path().join("cond.safetensors");
        batch.save(&cond).unwrap();
        let yaml = "cond_domains: [tok_rgb@224]\ntarget_domains: [tok_clip@224, caption]\ntokens_per_target: [196, 8]\n\
            autoregression_schemes: [maskgit, autoregressive]\ndecoding_steps: [3, 1]\ntoken_decoding_schedules: [cosine, linear]\n\
            temps: [1.0, 0.7]\ntemp_schedules: [linear, constant]\ncfg_scales: [2.0, 1.5]\ncfg_schedules: [constant, constant]\n\
            cfg_grow_conditioning: true\ntop_p: 0.9\n";
        let sched = dir.path().join("sched.yaml");
        std::fs::write(&sched, yaml).unwrap();
        let out = dir.path().join("out.safetensors");
        run(GenerateArgs {
            weights: weights.clone(),
            batch: cond,
            schedule: sched.clone(),
            out: out.clone(),
            seed: 9,
            text_tokenizer: None,
            device: DeviceArg::Cpu,
            bf16: false,
            no_kv_cache: false,
            json: true,
        })
        .unwrap();
        let got = MaskedBatch::load(&out).unwrap();
        let plan = ScheduleSpec::from_file(&sched).unwrap().resolve("sched.yaml").unwrap();
        let opts = GenerateOptions { top_k: plan.top_k, top_p: plan.top_p, seed: Some(9), kv_cache: true };
        let want = GenerationSampler::new(&ckpt.model, sp).generate(&batch, &plan.steps, &opts).unwrap();
        for m in [Modality::TokClip224, Modality::Caption] {
            assert!(got.modalities[&m].tensor.equal(&want.modalities[&m].tensor), "{m}: command and library differ");
        }
        let clip = &got.modalities[&Modality::TokClip224];
        assert!(!bool::try_from(clip.input_mask.any()).unwrap(), "every tok_clip position is committed");
        let caption = &got.modalities[&Modality::Caption].tensor;
        assert!(caption.size()[1] >= 1 && caption.size()[1] <= 8, "the caption is merged back: {:?}", caption.size());
    }
}
