//! Import of ml-4m's YAML configs (a model/run config, the data config it names, and the alphas
//! files those name) into a tessera [`JobConfig`].
//!
//! ml-4m paths are relative to its repository (`cfgs/default/4m/data/...`). They are looked up
//! under `ml4m_root` when given, else by file name beside the model config and in its sibling
//! folders (`../data`, `../alphas`), which is how `../shared/data/ml-4m/configs` is laid out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config::{
    CheckpointSection, DataSection, DatasetKind, DatasetSection, JobConfig, JobSection, LossKind, ModelSection, TokensSpec, TrainSection,
};
use super::model_kind::{Flavor, Preset};
use crate::error::{ProtocolError, Result};

/// The ml-4m run-config keys tessera uses; every other key is reported as ignored.
#[derive(Debug, Default, Deserialize)]
struct RunYaml {
    model: Option<String>,
    num_input_tokens: Option<usize>,
    num_target_tokens: Option<usize>,
    min_input_tokens: Option<usize>,
    min_target_tokens: Option<usize>,
    loss_type: Option<String>,
    blr: Option<f64>,
    min_blr: Option<f64>,
    weight_decay: Option<f64>,
    clip_grad: Option<f64>,
    batch_size: Option<usize>,
    epochs: Option<i64>,
    total_tokens: Option<f64>,
    warmup_epochs: Option<i64>,
    warmup_steps: Option<i64>,
    warmup_tokens: Option<f64>,
    epoch_size: Option<u64>,
    data_config: Option<String>,
    seed: Option<u64>,
    save_ckpt_freq: Option<u64>,
    dtype: Option<String>,
}

/// Keys of a run config that are read (the rest are listed as ignored).
const RUN_KEYS: &[&str] = &[
    "model",
    "num_input_tokens",
    "num_target_tokens",
    "min_input_tokens",
    "min_target_tokens",
    "loss_type",
    "blr",
    "min_blr",
    "weight_decay",
    "clip_grad",
    "batch_size",
    "epochs",
    "total_tokens",
    "warmup_epochs",
    "warmup_steps",
    "warmup_tokens",
    "epoch_size",
    "data_config",
    "seed",
    "save_ckpt_freq",
    "dtype",
];

#[derive(Debug, Deserialize)]
struct DataYaml {
    train: TrainDataYaml,
}

#[derive(Debug, Deserialize)]
struct TrainDataYaml {
    datasets: serde_yaml::Mapping,
    #[serde(default)]
    weights: Option<Vec<f64>>,
}

#[derive(Debug, Default, Deserialize)]
struct DatasetYaml {
    #[serde(rename = "type")]
    kind: Option<String>,
    in_domains: Option<String>,
    out_domains: Option<String>,
    input_alphas: Option<String>,
    target_alphas: Option<String>,
    alphas_config: Option<String>,
    data_path: Option<String>,
    num_input_tokens: Option<usize>,
    num_target_tokens: Option<usize>,
    min_input_tokens: Option<usize>,
    min_target_tokens: Option<usize>,
    #[serde(default)]
    modality_name_map: Option<BTreeMap<String, String>>,
}

/// Result of an import: the config plus what the user must know about it.
#[derive(Debug, Clone)]
pub struct Ml4mImport {
    /// The job config.
    pub config: JobConfig,
    /// Things that were ignored, assumed or left for the user to fill in.
    pub warnings: Vec<String>,
}

/// Imports an ml-4m run config. `world_size` multiplies ml-4m's per-GPU `batch_size` into the
/// global batch. `ml4m_root` resolves the repository-relative paths it contains.
pub fn import_ml4m(run_yaml: &Path, ml4m_root: Option<&Path>, world_size: usize) -> Result<Ml4mImport> {
    let origin = run_yaml.display().to_string();
    let bad = |field: &str, reason: String| ProtocolError::Config { origin: origin.clone(), field: field.into(), reason };
    let text = read(run_yaml)?;
    let value = yaml11(serde_yaml::from_str(&text).map_err(|source| ProtocolError::Yaml { path: origin.clone(), source })?);
    let mut warnings = Vec::new();
    if let Some(map) = value.as_mapping() {
        let ignored: Vec<String> =
            map.keys().filter_map(|k| k.as_str()).filter(|k| !RUN_KEYS.contains(k)).map(str::to_string).collect::<Vec<_>>();
        if !ignored.is_empty() {
            warnings.push(format!("ignored ml-4m keys: {}", ignored.join(", ")));
        }
    }
    let run: RunYaml = serde_yaml::from_value(value).map_err(|source| ProtocolError::Yaml { path: origin.clone(), source })?;

    let model_name = run.model.clone().ok_or_else(|| bad("model", "missing".into()))?;
    let model = parse_model_name(&model_name).map_err(|r| bad("model", r))?;
    if run.dtype.as_deref().is_some_and(|d| d.contains("bf")) {
        warnings.push("ml-4m trains in bfloat16: set train.device = \"cuda\" and train.bf16 = true on a GPU".into());
    }
    let tokens = |min: Option<usize>, num: Option<usize>| match (min, num) {
        (Some(lo), Some(hi)) if lo != hi => TokensSpec::Range([lo, hi]),
        (_, Some(n)) => TokensSpec::Fixed(n),
        _ => TokensSpec::Fixed(256),
    };
    let input_tokens = tokens(run.min_input_tokens, run.num_input_tokens);
    let target_tokens = tokens(run.min_target_tokens, run.num_target_tokens);

    let data_ref = run.data_config.clone().ok_or_else(|| bad("data_config", "missing".into()))?;
    let data_path =
        locate(&data_ref, run_yaml, ml4m_root, "data").ok_or_else(|| bad("data_config", format!("cannot find '{data_ref}'")))?;
    let data_origin = data_path.display().to_string();
    let yaml_err = |source| ProtocolError::Yaml { path: data_origin.clone(), source };
    let data: DataYaml = serde_yaml::from_value(yaml11(serde_yaml::from_str(&read(&data_path)?).map_err(yaml_err)?)).map_err(yaml_err)?;
    let names: Vec<String> = data.train.datasets.keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    let weights = data.train.weights.clone().unwrap_or_else(|| vec![1.0; names.len()]);
    if weights.len() != names.len() {
        return Err(ProtocolError::Config {
            origin: data_origin,
            field: "train.weights".into(),
            reason: format!("{} weights for {} datasets", weights.len(), names.len()),
        });
    }
    let mut datasets = Vec::new();
    let mut union: Vec<String> = Vec::new();
    for (name, weight) in names.iter().zip(&weights) {
        let raw = data.train.datasets.get(name.as_str()).cloned().unwrap_or_default();
        let ds: DatasetYaml = serde_yaml::from_value(raw)
            .map_err(|source| ProtocolError::Yaml { path: format!("{data_origin} (train.datasets.{name})"), source })?;
        let kind = match ds.kind.as_deref() {
            Some("multimodal") | None => DatasetKind::Shards,
            Some("huggingface") => {
                warnings.push(format!("dataset '{name}': a Hugging Face dataset becomes a text corpus; point `path` at JSON-lines files"));
                DatasetKind::Text
            }
            Some(other) => return Err(bad(&format!("train.datasets.{name}.type"), format!("unknown dataset type '{other}'"))),
        };
        let mut mods: Vec<String> = Vec::new();
        for list in [&ds.in_domains, &ds.out_domains].into_iter().flatten() {
            mods.extend(list.split('-').map(str::to_string));
        }
        mods.sort();
        mods.dedup();
        for m in &mods {
            if !union.contains(m) {
                union.push(m.clone());
            }
        }
        let alphas = match &ds.alphas_config {
            Some(a) => match locate(a, run_yaml, ml4m_root, "alphas") {
                Some(p) => Some(p),
                None => {
                    warnings.push(format!("dataset '{name}': alphas file '{a}' not found; set `alphas` before running"));
                    Some(PathBuf::from(a))
                }
            },
            None => None,
        };
        if ds.data_path.as_deref().is_some_and(|p| p.contains("path/to")) {
            warnings.push(format!(
                "dataset '{name}': data_path is ml-4m's placeholder '{}'; set `path`",
                ds.data_path.as_deref().unwrap_or("")
            ));
        }
        let override_tokens = |min, num: Option<usize>| num.map(|_| tokens(min, num));
        datasets.push(DatasetSection {
            name: name.clone(),
            kind,
            path: ds.data_path.clone(),
            val_path: None,
            weight: *weight,
            modalities: Some(mods.join(",")),
            input_alphas: if alphas.is_none() { ds.input_alphas.clone() } else { None },
            target_alphas: if alphas.is_none() { ds.target_alphas.clone() } else { None },
            alphas,
            name_map: ds.modality_name_map.clone().unwrap_or_default(),
            text_field: None,
            records: None,
            input_tokens: override_tokens(ds.min_input_tokens, ds.num_input_tokens),
            target_tokens: override_tokens(ds.min_target_tokens, ds.num_target_tokens),
        });
    }
    union.sort();

    let global_batch = run.batch_size.unwrap_or(8) * world_size.max(1);
    let per_sample = (input_tokens.max() + target_tokens.max()) as f64;
    let mut train = TrainSection {
        global_batch_size: global_batch,
        blr: run.blr.unwrap_or(1e-4),
        min_blr: run.min_blr.unwrap_or(0.0),
        clip_grad: run.clip_grad,
        loss: match run.loss_type.as_deref() {
            Some("token") => LossKind::Token,
            _ => LossKind::Mod,
        },
        ..TrainSection::default()
    };
    if let Some(wd) = run.weight_decay {
        train.weight_decay = wd;
    }
    // ml-4m §5.2: tokens in billions, epochs of `epoch_size` samples.
    let steps_per_epoch = run.epoch_size.map(|e| (e / global_batch as u64).max(1));
    match (run.total_tokens.filter(|t| *t > 0.0), run.epochs.filter(|e| *e > 0), steps_per_epoch) {
        (Some(t), _, Some(spe)) => {
            let epochs = (t * 1e9 / (per_sample * run.epoch_size.unwrap_or(1) as f64)).ceil() as u64;
            train.total_steps = Some(epochs * spe);
        }
        (Some(t), _, None) => train.total_tokens = Some((t * 1e9) as u64),
        (None, Some(e), Some(spe)) => train.total_steps = Some(e as u64 * spe),
        _ => return Err(bad("total_tokens", "need total_tokens, or epochs with epoch_size".into())),
    }
    match (run.warmup_tokens.filter(|t| *t > 0.0), run.warmup_steps.filter(|s| *s > 0), run.warmup_epochs.filter(|e| *e > 0)) {
        (Some(t), _, _) => train.warmup_steps = Some((t * 1e9 / (per_sample * global_batch as f64)).ceil() as u64),
        (None, Some(s), _) => train.warmup_steps = Some(s as u64),
        (None, None, Some(e)) => train.warmup_steps = steps_per_epoch.map(|spe| e as u64 * spe),
        _ => {}
    }
    let checkpoint =
        CheckpointSection { every_steps: steps_per_epoch.unwrap_or(1000) * run.save_ckpt_freq.unwrap_or(1), ..Default::default() };
    let stem = run_yaml.file_stem().and_then(|s| s.to_str()).unwrap_or("ml4m").to_string();
    let config = JobConfig {
        job: JobSection { name: stem.clone(), seed: run.seed.unwrap_or(0), output_dir: PathBuf::from("output").join(&stem) },
        model: ModelSection {
            preset: model.preset.to_string(),
            flavor: model.flavor.to_string(),
            modalities: union.join(","),
            token_modalities: Vec::new(),
            dim: model.dim,
            encoder_depth: Some(model.encoder_depth),
            decoder_depth: Some(model.decoder_depth),
            num_heads: model.num_heads,
            init: None,
        },
        data: DataSection { input_tokens, target_tokens, text_tokenizer: None, decode_threads: 2, skip_bad_samples: false, datasets },
        train,
        checkpoint,
        eval: Default::default(),
        stragglers: Default::default(),
    };
    warnings.push("set data.text_tokenizer to the WordPiece JSON (ml-4m's text_tokenizer_4m_wordpiece_30k.json)".into());
    Ok(Ml4mImport { config, warnings })
}

/// The architecture named by an ml-4m model id such as `fm_base_12e_12d_swiglu_nobias`.
#[derive(Debug, PartialEq)]
struct ModelName {
    preset: Preset,
    flavor: Flavor,
    dim: Option<usize>,
    num_heads: Option<usize>,
    encoder_depth: usize,
    decoder_depth: usize,
}

fn parse_model_name(name: &str) -> std::result::Result<ModelName, String> {
    let parts: Vec<&str> = name.split('_').collect();
    let err = || format!("'{name}' is not an ml-4m model id like fm_base_12e_12d_swiglu_nobias");
    if parts.len() < 5 || parts[0] != "fm" {
        return Err(err());
    }
    let depth = |p: &str, suffix: char| p.strip_suffix(suffix).and_then(|d| d.parse::<usize>().ok()).ok_or_else(err);
    let (encoder_depth, decoder_depth) = (depth(parts[2], 'e')?, depth(parts[3], 'd')?);
    let flavor = match parts[4..].join("_").as_str() {
        "swiglu_nobias" => Flavor::SwigluNobias,
        "gelu" => Flavor::Gelu,
        other => return Err(format!("unsupported block flavour '{other}' in '{name}' (swiglu_nobias, gelu)")),
    };
    // ml-4m's own tiny is 384 wide with 6 heads; tessera's `tiny` preset is the 256-wide peer tiny.
    let (preset, dim, num_heads) = match parts[1] {
        "tiny" => (Preset::Tiny, Some(384), Some(6)),
        "small" => (Preset::Small, None, None),
        "base" => (Preset::Base, None, None),
        "large" => (Preset::Large, None, None),
        "xlarge" => (Preset::Xlarge, None, None),
        other => return Err(format!("unknown size '{other}' in '{name}'")),
    };
    Ok(ModelName { preset, flavor, dim, num_heads, encoder_depth, decoder_depth })
}

/// PyYAML (YAML 1.1) reads `10_000_000` as an integer; serde_yaml (YAML 1.2) as a string.
/// ml-4m configs rely on the former, so such strings become numbers here.
fn yaml11(v: serde_yaml::Value) -> serde_yaml::Value {
    use serde_yaml::Value;
    match v {
        Value::String(s) if s.contains('_') && s.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
            let plain = s.replace('_', "");
            if let Ok(i) = plain.parse::<u64>() {
                Value::Number(i.into())
            } else if let Ok(f) = plain.parse::<f64>() {
                Value::Number(f.into())
            } else {
                Value::String(s)
            }
        }
        Value::Mapping(m) => Value::Mapping(m.into_iter().map(|(k, v)| (k, yaml11(v))).collect()),
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(yaml11).collect()),
        other => other,
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ProtocolError::Io { path: path.display().to_string(), source })
}

/// Finds an ml-4m repository-relative file (see the module docs).
fn locate(reference: &str, run_yaml: &Path, ml4m_root: Option<&Path>, sibling: &str) -> Option<PathBuf> {
    let rel = Path::new(reference);
    let mut candidates = Vec::new();
    if let Some(root) = ml4m_root {
        candidates.push(root.join(rel));
    }
    if rel.is_absolute() {
        candidates.push(rel.to_path_buf());
    }
    if let (Some(dir), Some(file)) = (run_yaml.parent(), rel.file_name()) {
        candidates.push(dir.join(file));
        if let Some(up) = dir.parent() {
            candidates.push(up.join(sibling).join(file));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).map(|p| std::path::absolute(&p).unwrap_or(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        let m = parse_model_name("fm_base_12e_12d_swiglu_nobias").unwrap();
        assert_eq!((m.preset, m.flavor, m.encoder_depth, m.decoder_depth), (Preset::Base, Flavor::SwigluNobias, 12, 12));
        let t = parse_model_name("fm_tiny_6e_6d_gelu").unwrap();
        assert_eq!((t.dim, t.num_heads), (Some(384), Some(6)));
        assert!(parse_model_name("vit_base").is_err());
        assert!(parse_model_name("fm_base_12e_12d_relu").unwrap_err().contains("relu"));
    }
}
