//! Validation of a [`JobConfig`] into a [`ResolvedJob`]: paths made absolute, alphas loaded
//! and resolved into mixtures, the LR schedule and step counts computed (reference §5.2).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_tokenizers::mixture::{AlphasConfig, BudgetConfig, HyphenAlphasSpec, Mixture, TokenRange};
use tessera_tokenizers::{Modality, ModalityKind, ModalitySet};

use super::config::{DatasetKind, DeviceKind, JobConfig, LossKind, TokensSpec};
use super::model_kind::{Flavor, Preset};
use crate::error::{ProtocolError, Result};
use crate::ledger::MixtureSchedule;
use crate::lr::CosineSchedule;

/// The model part of a resolved job (turned into a `FourMConfig` by the worker, which links tch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Size preset (the config's name, checked here so that a bad one is refused at submit).
    pub preset: Preset,
    /// Block flavour.
    pub flavor: Flavor,
    /// Encoder and decoder modalities.
    pub modalities: ModalitySet,
    /// Width override.
    pub dim: Option<usize>,
    /// Encoder depth override.
    pub encoder_depth: Option<usize>,
    /// Decoder depth override.
    pub decoder_depth: Option<usize>,
    /// Head count override.
    pub num_heads: Option<usize>,
    /// Initial weights.
    pub init: Option<PathBuf>,
    /// Tokenizer-defined token modalities the job declared (registered in every process that
    /// reads the job's modality keys: see `messages::JobSpec`).
    #[serde(default)]
    pub token_modalities: Vec<tessera_tokenizers::TokenModalityDef>,
}

/// One dataset, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedDataset {
    /// Name.
    pub name: String,
    /// Storage kind.
    pub kind: DatasetKind,
    /// Absolute shard/file pattern (shards, text).
    pub path: Option<String>,
    /// Absolute pattern of the held-out split.
    pub val_path: Option<String>,
    /// Modalities this dataset provides.
    pub modalities: ModalitySet,
    /// The Dirichlet mixture its budgets are drawn from.
    pub mixture: Mixture,
    /// Budget settings (token ranges and this dataset's seed).
    pub budget: BudgetConfig,
    /// Folder → modality key.
    pub name_map: BTreeMap<String, String>,
    /// JSON field of a text corpus.
    pub text_field: String,
    /// Records of a synthetic dataset.
    pub records: u64,
}

/// Optimisation settings, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedTrain {
    /// Samples per optimizer step.
    pub global_batch_size: usize,
    /// Samples per forward/backward.
    pub micro_batch_size: usize,
    /// Optimizer steps of the run.
    pub total_steps: u64,
    /// LR per step.
    pub lr: CosineSchedule,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// Gradient-norm clip.
    pub clip_grad: Option<f64>,
    /// Skip non-finite steps.
    pub skip_nonfinite: bool,
    /// Loss normalisation.
    pub loss: LossKind,
    /// Device.
    pub device: DeviceKind,
    /// bf16 autocast.
    pub bf16: bool,
    /// libtorch CPU threads (0 = default).
    pub threads: usize,
    /// Log every this many steps.
    pub log_every: u64,
    /// Encoder slots per sample (the largest input budget).
    pub num_input_tokens: usize,
    /// Decoder slots per sample (the largest target budget).
    pub num_target_tokens: usize,
    /// Deadline of every collective call.
    pub collective_timeout: std::time::Duration,
    /// FSDP: host collective on its own thread with prefetch of the next unit.
    pub fsdp_prefetch: bool,
    /// FSDP: recompute blocks in the backward pass (else keep their graphs and parameters).
    pub fsdp_recompute: bool,
}

/// Checkpoint settings, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedCheckpoint {
    /// Save period in steps (0 = end/SIGTERM only).
    pub every_steps: u64,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Absolute directory.
    pub dir: PathBuf,
    /// Resume from the newest valid checkpoint.
    pub auto_resume: bool,
}

/// Straggler policy, validated: `factor` is finite and above 1, `steps` at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StragglerPolicy {
    /// A rank's own step time must exceed this many times the others' median.
    pub factor: f64,
    /// For this many consecutive steps.
    pub steps: u32,
    /// Then drain it at the next checkpointed boundary (and replace it when launched locally).
    pub drain: bool,
}

impl Default for StragglerPolicy {
    fn default() -> Self {
        let s = super::config::StragglersSection::default();
        Self { factor: s.factor, steps: s.steps, drain: s.drain }
    }
}

/// A job ready to run: every value checked once, here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedJob {
    /// The config file it came from.
    pub origin: String,
    /// Run name.
    pub name: String,
    /// Job seed.
    pub seed: u64,
    /// Absolute output directory.
    pub output_dir: PathBuf,
    /// The model.
    pub model: ModelSpec,
    /// Datasets, in config order ([`crate::DatasetId`] = position).
    pub datasets: Vec<ResolvedDataset>,
    /// Initial mixture schedule (version 0 from the config's weights).
    pub schedule: MixtureSchedule,
    /// Text tokenizer file.
    pub text_tokenizer: Option<PathBuf>,
    /// Decode threads.
    pub decode_threads: usize,
    /// Skip bad samples instead of failing.
    pub skip_bad_samples: bool,
    /// Optimisation.
    pub train: ResolvedTrain,
    /// Checkpointing.
    pub checkpoint: ResolvedCheckpoint,
    /// Validation.
    pub eval: super::config::EvalSection,
    /// Straggler detection and draining.
    pub stragglers: StragglerPolicy,
}

impl ResolvedDataset {
    /// Whether it has held-out records: a `val_path`, or synthetic (drawn with another seed).
    pub fn has_held_out(&self) -> bool {
        matches!(self.kind, DatasetKind::Synthetic) || self.val_path.is_some()
    }
}

impl ResolvedJob {
    /// Whether some dataset has a held-out split to validate on.
    pub fn has_held_out(&self) -> bool {
        self.datasets.iter().any(ResolvedDataset::has_held_out)
    }

    /// Whether the job validates: `[eval]` asks for it and there is a held-out split.
    pub fn validates(&self) -> bool {
        self.eval.every_steps > 0 && self.has_held_out()
    }

    /// Settings that are valid but probably not what the author meant, one line each; every
    /// launch mode prints them once, at start (workers stay quiet about them).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.eval.every_steps > 0 && !self.has_held_out() {
            notes.push(format!(
                "[eval] every_steps = {} but no dataset has a held-out split (val_path); validation is off",
                self.eval.every_steps
            ));
        }
        notes
    }

    /// Reads, parses and validates a TOML job config.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg = JobConfig::from_file(path)?;
        let full = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = full.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::resolve(&cfg, &path.display().to_string(), &base)
    }

    /// Validates `cfg`; relative paths are taken relative to `base`.
    pub fn resolve(cfg: &JobConfig, origin: &str, base: &Path) -> Result<Self> {
        let bad = |field: &str, reason: String| ProtocolError::Config { origin: origin.to_string(), field: field.to_string(), reason };
        let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let set = |field: &str, spec: &str| ModalitySet::parse(spec).map_err(|e| bad(field, e.to_string()));

        if cfg.job.name.trim().is_empty() {
            return Err(bad("job.name", "must not be empty".into()));
        }
        // Tokenizer-defined keys first: every later key lookup (sets, name maps) may use them.
        for (i, def) in cfg.model.token_modalities.iter().enumerate() {
            def.register().map_err(|e| bad(&format!("model.token_modalities[{i}]"), e.to_string()))?;
        }
        let model_set = set("model.modalities", &cfg.model.modalities)?;
        let model = ModelSpec {
            preset: cfg.model.preset.parse().map_err(|e: ProtocolError| bad("model.preset", e.to_string()))?,
            flavor: cfg.model.flavor.parse().map_err(|e: ProtocolError| bad("model.flavor", e.to_string()))?,
            modalities: model_set.clone(),
            dim: cfg.model.dim,
            encoder_depth: cfg.model.encoder_depth,
            decoder_depth: cfg.model.decoder_depth,
            num_heads: cfg.model.num_heads,
            init: cfg.model.init.as_deref().map(abs),
            token_modalities: cfg.model.token_modalities.clone(),
        };

        let range = |field: &str, t: TokensSpec| -> Result<TokenRange> {
            let r = match t {
                TokensSpec::Fixed(n) => TokenRange::fixed(n),
                TokensSpec::Range([lo, hi]) => TokenRange::new(lo, hi).map_err(|e| bad(field, e.to_string()))?,
            };
            if r.max == 0 {
                return Err(bad(field, "must be at least 1".into()));
            }
            Ok(r)
        };
        let d = &cfg.data;
        if d.datasets.is_empty() {
            return Err(bad("data.datasets", "at least one dataset is required".into()));
        }
        if d.decode_threads == 0 {
            return Err(bad("data.decode_threads", "must be at least 1".into()));
        }
        let mut datasets = Vec::new();
        let (mut max_in, mut max_tgt) = (0, 0);
        for (i, ds) in d.datasets.iter().enumerate() {
            let f = |name: &str| format!("data.datasets[{i}].{name}");
            if datasets.iter().any(|o: &ResolvedDataset| o.name == ds.name) {
                return Err(bad(&f("name"), format!("duplicate dataset name '{}'", ds.name)));
            }
            if !ds.weight.is_finite() || ds.weight < 0.0 {
                return Err(bad(&f("weight"), format!("{} is not a finite non-negative number", ds.weight)));
            }
            let modalities = match (&ds.modalities, ds.kind) {
                (Some(m), _) => set(&f("modalities"), m)?,
                (None, DatasetKind::Text) => ModalitySet::new(&[Modality::Caption], &[Modality::Caption]),
                (None, _) => model_set.clone(),
            };
            if let Some(m) = modalities.all().into_iter().find(|m| !model_set.all().contains(m)) {
                return Err(bad(&f("modalities"), format!("'{m}' is not a modality of the model ({})", cfg.model.modalities)));
            }
            if ds.kind == DatasetKind::Text && modalities.all() != [Modality::Caption] {
                return Err(bad(&f("modalities"), "a text corpus provides exactly `caption`".into()));
            }
            let path = match (ds.kind, &ds.path) {
                (DatasetKind::Synthetic, _) => None,
                (_, None) => return Err(bad(&f("path"), format!("required for a {:?} dataset", ds.kind).to_lowercase())),
                (_, Some(p)) => Some(if Path::new(p).is_absolute() { p.clone() } else { base.join(p).display().to_string() }),
            };
            let alphas = match &ds.alphas {
                Some(p) => {
                    if ds.input_alphas.is_some() || ds.target_alphas.is_some() {
                        return Err(bad(&f("alphas"), "give either an alphas file or input_alphas/target_alphas, not both".into()));
                    }
                    AlphasConfig::from_yaml_file(&abs(p))?
                }
                None => AlphasConfig::Hyphen {
                    origin: format!("{origin} ({})", f("input_alphas")),
                    spec: HyphenAlphasSpec {
                        in_domains: None,
                        out_domains: None,
                        input_alphas: Some(ds.input_alphas.clone().unwrap_or_else(|| "1.0".into())),
                        target_alphas: Some(ds.target_alphas.clone().unwrap_or_else(|| "1.0".into())),
                    },
                },
            };
            let mixture = alphas.resolve(Some(&modalities))?;
            let input_tokens = range(&f("input_tokens"), ds.input_tokens.unwrap_or(d.input_tokens))?;
            let target_tokens = range(&f("target_tokens"), ds.target_tokens.unwrap_or(d.target_tokens))?;
            max_in = max_in.max(input_tokens.max);
            max_tgt = max_tgt.max(target_tokens.max);
            for key in ds.name_map.values() {
                Modality::from_key(key).map_err(|e| bad(&f("name_map"), e.to_string()))?;
            }
            let records = ds.records.unwrap_or(4096);
            if ds.kind == DatasetKind::Synthetic && records == 0 {
                return Err(bad(&f("records"), "a synthetic dataset needs at least one record".into()));
            }
            let val_path =
                ds.val_path.as_ref().map(|p| if Path::new(p).is_absolute() { p.clone() } else { base.join(p).display().to_string() });
            datasets.push(ResolvedDataset {
                name: ds.name.clone(),
                kind: ds.kind,
                path,
                val_path,
                modalities,
                mixture,
                budget: BudgetConfig { input_tokens, target_tokens, seed: crate::seeds::dataset_budget(cfg.job.seed, i as u64) },
                name_map: ds.name_map.clone(),
                text_field: ds.text_field.clone().unwrap_or_else(|| "text".into()),
                records,
            });
        }
        let schedule = MixtureSchedule::new(d.datasets.iter().map(|ds| ds.weight).collect())
            .map_err(|e| bad("data.datasets.weight", e.to_string()))?;
        let needs_text = datasets.iter().any(|ds| ds.modalities.all().iter().any(|m| is_text(*m)));
        if needs_text && d.text_tokenizer.is_none() {
            return Err(bad("data.text_tokenizer", "required: a dataset has sequence modalities".into()));
        }

        let t = &cfg.train;
        if t.global_batch_size == 0 {
            return Err(bad("train.global_batch_size", "must be at least 1".into()));
        }
        let micro = t.micro_batch_size.unwrap_or(t.global_batch_size);
        if micro == 0 || !t.global_batch_size.is_multiple_of(micro) {
            return Err(bad("train.micro_batch_size", format!("{micro} does not divide global_batch_size {}", t.global_batch_size)));
        }
        let tokens_per_step = ((max_in + max_tgt) * t.global_batch_size) as u64;
        let total_steps = match (t.total_steps, t.total_tokens) {
            (Some(s), None) => s,
            (None, Some(tok)) => tok.div_ceil(tokens_per_step),
            _ => return Err(bad("train.total_steps", "give exactly one of total_steps and total_tokens".into())),
        };
        if total_steps == 0 {
            return Err(bad("train.total_steps", "the run has no steps".into()));
        }
        let warmup_steps = match (t.warmup_steps, t.warmup_tokens) {
            (Some(s), None) => s,
            (None, Some(tok)) => tok.div_ceil(tokens_per_step),
            (None, None) => 0,
            _ => return Err(bad("train.warmup_steps", "give at most one of warmup_steps and warmup_tokens".into())),
        };
        if warmup_steps > total_steps {
            return Err(bad("train.warmup_steps", format!("{warmup_steps} warm-up steps exceed the {total_steps} steps of the run")));
        }
        let scale = t.global_batch_size as f64 / 256.0;
        let peak = t.lr.unwrap_or(t.blr * scale);
        for (field, v) in [("train.lr", peak), ("train.min_blr", t.min_blr), ("train.weight_decay", t.weight_decay), ("train.eps", t.eps)] {
            if !v.is_finite() || v < 0.0 {
                return Err(bad(field, format!("{v} is not a finite non-negative number")));
            }
        }
        if t.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(bad("train.betas", format!("{:?}: each must be in [0, 1)", t.betas)));
        }
        if let Some(c) = t.clip_grad
            && !(c.is_finite() && c > 0.0)
        {
            return Err(bad("train.clip_grad", format!("{c} must be a positive number")));
        }
        if t.collective_timeout_s == 0 {
            return Err(bad("train.collective_timeout_s", "must be at least 1".into()));
        }
        if t.bf16 && t.device != DeviceKind::Cuda {
            return Err(bad("train.bf16", "bf16 autocast needs device = \"cuda\"".into()));
        }
        let train = ResolvedTrain {
            global_batch_size: t.global_batch_size,
            micro_batch_size: micro,
            total_steps,
            lr: CosineSchedule { peak, end: t.min_blr * scale, warmup_steps, total_steps },
            weight_decay: t.weight_decay,
            betas: t.betas,
            eps: t.eps,
            clip_grad: t.clip_grad,
            skip_nonfinite: t.skip_nonfinite,
            loss: t.loss,
            device: t.device,
            bf16: t.bf16,
            threads: t.threads,
            log_every: t.log_every.max(1),
            num_input_tokens: max_in,
            num_target_tokens: max_tgt,
            collective_timeout: std::time::Duration::from_secs(t.collective_timeout_s),
            fsdp_prefetch: t.fsdp_prefetch,
            fsdp_recompute: t.fsdp_recompute,
        };
        let output_dir = abs(&cfg.job.output_dir);
        let c = &cfg.checkpoint;
        if c.keep_last == 0 {
            return Err(bad("checkpoint.keep_last", "must be at least 1".into()));
        }
        let checkpoint = ResolvedCheckpoint {
            every_steps: c.every_steps,
            keep_last: c.keep_last,
            dir: c.dir.as_deref().map(abs).unwrap_or_else(|| output_dir.join("checkpoints")),
            auto_resume: c.auto_resume,
        };
        let st = &cfg.stragglers;
        if !st.factor.is_finite() || st.factor <= 1.0 {
            return Err(bad("stragglers.factor", format!("must be a finite number above 1, got {}", st.factor)));
        }
        if st.steps == 0 {
            return Err(bad("stragglers.steps", "must be at least 1".into()));
        }
        let stragglers = StragglerPolicy { factor: st.factor, steps: st.steps, drain: st.drain };
        Ok(Self {
            origin: origin.to_string(),
            name: cfg.job.name.clone(),
            seed: cfg.job.seed,
            output_dir,
            model,
            datasets,
            schedule,
            text_tokenizer: d.text_tokenizer.as_deref().map(abs),
            decode_threads: d.decode_threads,
            skip_bad_samples: d.skip_bad_samples,
            train,
            checkpoint,
            eval: cfg.eval.clone(),
            stragglers,
        })
    }
}

/// Modalities serialised to text before masking.
fn is_text(m: Modality) -> bool {
    m.kind() == ModalityKind::Sequence
}
