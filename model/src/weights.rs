//! Weight interchange with ml-4m: a `Checkpoint` is a `VarStore` plus the `FourM` built in it,
//! saved as safetensors whose tensor names are ml-4m's `FourM.state_dict()` keys (buffers and
//! tied aliases included) and whose `__metadata__` is the FM config. Loading checks every key
//! and shape and names what does not match.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::FourMConfig;
use crate::error::{ModelError, Result};
use crate::fourm::FourM;
use crate::io;

/// libtorch's default generator is process-global: seeding it and drawing a whole model must
/// not interleave with another thread doing the same, or the same seed gives other weights.
pub(crate) static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A model together with the store that owns its variables.
#[derive(Debug)]
pub struct Checkpoint {
    /// Owner of every parameter and buffer.
    pub vs: VarStore,
    /// The model built in `vs`.
    pub model: FourM,
}

impl Checkpoint {
    /// A freshly initialised model (ml-4m initialisation) on `device`, seeded by `seed`.
    pub fn init(cfg: &FourMConfig, device: Device, seed: i64) -> Result<Self> {
        Self::init_with(cfg, device, seed, &mut |_, _| {})
    }

    /// [`Checkpoint::init`], calling `after_block` with the store and each transformer block's
    /// path as soon as the block is drawn (see [`FourM::new_with`]).
    pub fn init_with(cfg: &FourMConfig, device: Device, seed: i64, after_block: &mut dyn FnMut(&VarStore, &str)) -> Result<Self> {
        let _guard = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let vs = VarStore::new(device);
        let model = FourM::new_with(&vs.root(), cfg, &mut |block| after_block(&vs, block))?;
        Ok(Self { vs, model })
    }

    /// Every tensor of ml-4m's state dict, canonical variables plus aliases, sorted by name.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let vars = self.vs.variables();
        let mut out: BTreeMap<String, Tensor> = vars.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        for (alias, canonical) in self.model.aliases() {
            if let Some(t) = vars.get(canonical) {
                out.insert(alias.clone(), t.shallow_clone());
            }
        }
        out.into_iter().collect()
    }

    /// Writes the weights as ml-4m-compatible safetensors (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        io::write(path, &self.state_dict(), &self.model.config().to_metadata())
    }

    /// Loads weights saved by [`Checkpoint::save`] or published by ml-4m (FM config in the
    /// safetensors metadata, or in a `config.json` beside the file).
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let (tensors, mut md) = io::read(path)?;
        if !md.contains_key("dim") {
            let cfg_path = path.with_file_name("config.json");
            if cfg_path.exists() {
                md = read_config_json(&cfg_path)?;
            }
        }
        let mut cfg = FourMConfig::from_metadata(&md, &path.display().to_string())?;
        // ml-4m's training model ties to_logits to token_emb, its FM wrapper does not: keep
        // them tied exactly when every pair in the file is identical.
        cfg.tie_decoder_embeddings = cfg.domains_out.iter().all(|m| {
            let find = |suffix: &str| tensors.iter().find(|(n, _)| *n == format!("decoder_embeddings.{m}.{suffix}")).map(|(_, t)| t);
            match (find("token_emb.weight"), find("to_logits.weight")) {
                (Some(a), Some(b)) => a.size() == b.size() && a.equal(b),
                _ => true,
            }
        });
        let ckpt = Self::init(&cfg, device, 0)?;
        ckpt.copy_from(tensors, path)?;
        Ok(ckpt)
    }

    /// Copies named tensors into the model's variables; every variable must be present with
    /// the right shape, aliases must agree with their canonical tensor, nothing may be left over.
    pub fn copy_from(&self, tensors: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
        let mut vars = self.vs.variables();
        let aliases: BTreeMap<&str, &str> = self.model.aliases().iter().map(|(a, c)| (a.as_str(), c.as_str())).collect();
        let file: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let (mut missing, mut unexpected, mut mismatched) = (Vec::new(), Vec::new(), Vec::new());
        for (name, t) in &file {
            if let Some(var) = vars.get(name) {
                if var.size() != t.size() {
                    mismatched.push(format!("{name}: expected {:?} got {:?}", var.size(), t.size()));
                } else if !is_float(t.kind()) {
                    mismatched.push(format!("{name}: expected a float dtype, got {:?}", t.kind()));
                }
            } else if let Some(canonical) = aliases.get(name.as_str()) {
                if let Some(c) = file.get(*canonical)
                    && (c.size() != t.size() || !c.equal(t))
                {
                    mismatched.push(format!("{name}: differs from {canonical}, which this model ties it to"));
                }
            } else {
                unexpected.push(name.clone());
            }
        }
        let needed: BTreeSet<&String> = vars.keys().collect();
        for name in needed {
            if !file.contains_key(name) {
                missing.push(name.clone());
            }
        }
        for alias in aliases.keys() {
            if !file.contains_key(*alias) {
                missing.push(alias.to_string());
            }
        }
        if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
            return Err(ModelError::StateDict { path: path.to_path_buf(), missing, unexpected, mismatched });
        }
        tch::no_grad(|| {
            for (name, var) in vars.iter_mut() {
                let src = &file[name];
                var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
            }
        });
        Ok(())
    }

    /// Re-draws every parameter far from initialisation (for numerics checks where a
    /// near-uniform softmax would hide bugs): matrices N(0, scale/√fan_in), vectors and
    /// embeddings N(0, scale) around their init mean. Buffers are left alone.
    pub fn redraw(&self, seed: i64, scale: f64) {
        let _guard = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let named = self.vs.variables();
        let mut names: Vec<&String> = named.keys().collect();
        names.sort();
        tch::no_grad(|| {
            for name in names {
                let var = &named[name];
                if !var.requires_grad() {
                    continue;
                }
                let size = var.size();
                let is_norm_weight = name.ends_with("norm1.weight")
                    || name.ends_with("norm2.weight")
                    || name.contains("norm.weight")
                    || name.contains("_norm.weight");
                let new = if is_norm_weight {
                    Tensor::randn(&size, (Kind::Float, var.device())) * (0.5 * scale) + 1.0
                } else if size.len() == 2 && !name.contains("token_emb") {
                    Tensor::randn(&size, (Kind::Float, var.device())) * (scale / (size[1] as f64).sqrt())
                } else {
                    Tensor::randn(&size, (Kind::Float, var.device())) * scale
                };
                var.shallow_clone().copy_(&new.to_kind(var.kind()));
            }
        });
    }
}

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// Reads a HF-style `config.json` into metadata strings (each value re-serialised as JSON).
fn read_config_json(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { op: "reading", path: path.to_path_buf(), source })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Config { field: "config.json".into(), reason: format!("{}: {e}", path.display()) })?;
    let obj = value
        .as_object()
        .ok_or_else(|| ModelError::Config { field: "config.json".into(), reason: format!("{}: not a JSON object", path.display()) })?;
    Ok(obj.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
}
