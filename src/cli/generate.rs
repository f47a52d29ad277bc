//! `tessera generate`: the machine interface of any-to-any generation. Reads weights, a
//! conditioning batch (full inputs and empty targets, the masked-batch format of `tessera model
//! forward --batch`) and a schedule YAML (ml-4m's `build_chained_generation_schedules` keyword
//! names plus `top_k`/`top_p`), runs ml-4m's generation loop and writes the final batch.
//! The user-facing form (`--input`/`--target`/`--tokenizers`, in `user`) builds those files
//! itself and decodes the targets (`decode`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tessera_model::generate::{GenerateOptions, GenerationSampler, ScheduleSpec, TextSpecials};
use tessera_model::{Checkpoint, MaskedBatch};
use tessera_tokenizers::Modality;
use tessera_tokenizers::text::TextTokenizer;

use super::model::DeviceArg;
use super::output::emit;

pub mod decode;
pub mod encode;
pub mod user;

/// Arguments of `tessera generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model weights (ml-4m-compatible safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Conditioning batch: conditions as full inputs, targets as empty targets.
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    batch: Option<PathBuf>,
    /// Schedule YAML (ml-4m's keyword names, plus top_k and top_p); with --input, replaces the
    /// default schedule.
    #[arg(long, required_unless_present = "input")]
    schedule: Option<PathBuf>,
    /// The final batch (each target's `<mod>.tensor` holds the generated ids); with --input, a
    /// directory for the decoded outputs.
    #[arg(long)]
    out: PathBuf,
    /// A condition, `KEY=VALUE`: `rgb@224=img.png`, `caption=some text`, `tok_x@64=ids.json`, or
    /// `tok_depth@64=depth.png` (a picture, encoded with that modality's tokenizer from
    /// --tokenizers).
    #[arg(long, requires = "target")]
    input: Vec<String>,
    /// A target modality to generate and decode (in chain order).
    #[arg(long)]
    target: Vec<String>,
    /// Directory of the modality tokenizers (`tessera tokenize` output dirs) and
    /// `text_tokenizer.json`.
    #[arg(long)]
    tokenizers: Option<PathBuf>,
    /// Default schedule: MaskGIT steps per image-like target.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Default schedule: positions of each sequence target.
    #[arg(long, default_value_t = 64)]
    max_tokens: i64,
    /// Default schedule: sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Default schedule: top-k (1 = greedy, 0 = off).
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Base seed; step i of the chained schedule uses seed + i (ml-4m's rule; a multi-condition
    /// guided schedule re-seeds every step with the seed itself, as ml-4m's does).
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
    if !a.input.is_empty() {
        return run_user(a, ckpt);
    }
    let (Some(batch_path), Some(schedule)) = (&a.batch, &a.schedule) else { bail!("--batch and --schedule are required without --input") };
    let source = batch_path.display().to_string();
    let batch = MaskedBatch::load(batch_path)?;
    batch.check_against(ckpt.model.config(), &source)?;
    let batch = batch.to_device(device);
    let sched_name = schedule.display().to_string();
    let plan = ScheduleSpec::from_file(schedule)?.resolve(&sched_name)?;
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

/// The user-facing form: builds `cond.safetensors` and `schedule.yaml` in `--out`, generates,
/// writes `out.safetensors` and the decoded targets.
fn run_user(a: GenerateArgs, ckpt: Checkpoint) -> anyhow::Result<()> {
    let device = a.device.device()?;
    let targets: Vec<Modality> = a
        .target
        .iter()
        .map(|k| Modality::from_key(k).with_context(|| format!("--target {k}: unknown modality")))
        .collect::<anyhow::Result<_>>()?;
    let assets = a.tokenizers.as_deref().map(|d| decode::Assets::load(d, a.text_tokenizer.as_deref())).transpose()?;
    let own_text = match (&assets, &a.text_tokenizer) {
        (None, Some(p)) => Some(TextTokenizer::from_file(p)?),
        _ => None,
    };
    let text = assets.as_ref().and_then(|s| s.text().ok()).or(own_text.as_ref());
    user::check_decodable(&targets, assets.as_ref(), text)?;
    let specials = match text {
        Some(t) => TextSpecials::from_tokenizer(t)?,
        None => TextSpecials::ml4m_default(),
    };
    let batch = user::build_batch(&a.input, &targets, assets.as_ref(), text, &specials, a.max_tokens)?;
    batch.check_against(ckpt.model.config(), "--input/--target")?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    batch.save(&a.out.join("cond.safetensors"))?;
    let sched_path = a.out.join("schedule.yaml");
    let yaml = match &a.schedule {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => {
            let conds: Vec<Modality> = batch.modalities.keys().copied().filter(|m| !targets.contains(m)).collect();
            let d = user::DefaultSchedule { steps: a.steps, temperature: a.temperature, top_k: a.top_k };
            user::schedule_yaml(&conds, &targets, &batch, &d)
        }
    };
    std::fs::write(&sched_path, &yaml).with_context(|| format!("writing {}", sched_path.display()))?;
    let plan = ScheduleSpec::from_file(&sched_path)?.resolve(&sched_path.display().to_string())?;
    let opts = GenerateOptions { top_k: plan.top_k, top_p: plan.top_p, seed: Some(a.seed), kv_cache: !a.no_kv_cache };
    let start = std::time::Instant::now();
    let sampler = GenerationSampler::new(&ckpt.model, specials);
    let out = tch::autocast(a.bf16, || sampler.generate(&batch.to_device(device), &plan.steps, &opts))?.to_device(tch::Device::Cpu);
    let seconds = start.elapsed().as_secs_f64();
    out.save(&a.out.join("out.safetensors"))?;
    let files = user::write_outputs(&out, &targets, assets.as_ref(), text, &a.out)?;
    let summary = serde_json::json!({"out": a.out, "targets": a.target, "seconds": seconds, "files": user::describe(&files)});
    emit(a.json, &summary, || {
        let list: Vec<String> = files.iter().map(|f| format!("  {}\n", f.display())).collect();
        format!("generated {} in {seconds:.2} s:\n{}", a.target.join(", "), list.concat())
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
            batch: Some(cond),
            schedule: Some(sched.clone()),
            out: out.clone(),
            input: vec![],
            target: vec![],
            tokenizers: None,
            steps: 8,
            max_tokens: 64,
            temperature: 1.0,
            top_k: 1,
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
