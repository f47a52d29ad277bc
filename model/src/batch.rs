//! The masked batch: ml-4m's collated `mod_dict` (reference §3.5) as typed tensors, its
//! on-disk form (safetensors with `<modality>.tensor|input_mask|target_mask|decoder_attention_mask`)
//! and the validation that turns malformed input into errors naming modality and key.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};
use tessera_tokenizers::{Modality, ModalityKind, PosEmb};

use crate::config::FourMConfig;
use crate::embeddings::MAX_SINCOS_ROWS;
use crate::error::{ModelError, Result};
use crate::io;

/// The four tensors of one modality in a batch. Masks use ml-4m's polarity: true = excluded.
#[derive(Debug)]
pub struct ModalityTensors {
    /// Pixels (B,C,H,W) f32, token ids (B,L) i64, or vectors (B,L,E) f32.
    pub tensor: Tensor,
    /// (B, L) bool: true = not an encoder input.
    pub input_mask: Tensor,
    /// (B, L) bool: true = not a decoder target.
    pub target_mask: Tensor,
    /// (B, L) i64: ml-4m's compressed decoder attention mask.
    pub decoder_attention_mask: Tensor,
}

impl ModalityTensors {
    /// A copy sharing the tensors' storage (generation replaces tensors, never writes into them).
    pub(crate) fn shallow_clone(&self) -> Self {
        Self {
            tensor: self.tensor.shallow_clone(),
            input_mask: self.input_mask.shallow_clone(),
            target_mask: self.target_mask.shallow_clone(),
            decoder_attention_mask: self.decoder_attention_mask.shallow_clone(),
        }
    }
}

/// A batch of masked samples over several modalities.
#[derive(Debug)]
pub struct MaskedBatch {
    /// Per-modality tensors.
    pub modalities: BTreeMap<Modality, ModalityTensors>,
}

const FIELDS: [&str; 4] = ["tensor", "input_mask", "target_mask", "decoder_attention_mask"];

impl MaskedBatch {
    /// A copy sharing the tensors' storage.
    pub(crate) fn shallow_clone(&self) -> Self {
        Self { modalities: self.modalities.iter().map(|(m, t)| (*m, t.shallow_clone())).collect() }
    }

    /// Number of samples.
    pub fn batch_size(&self) -> i64 {
        self.modalities.values().next().map(|t| t.tensor.size()[0]).unwrap_or(0)
    }

    /// Reads a batch file and normalises dtypes (ids and the attention mask to i64), failing
    /// with the offending modality and key on anything malformed.
    pub fn load(path: &Path) -> Result<Self> {
        let (tensors, _) = io::read(path)?;
        Self::from_named(tensors, &path.display().to_string())
    }

    /// Groups `<modality>.<field>` tensors into a batch (see [`MaskedBatch::load`]).
    pub fn from_named(tensors: Vec<(String, Tensor)>, source: &str) -> Result<Self> {
        let err = |modality: &str, key: &str, reason: String| ModelError::Batch {
            source_name: source.to_string(),
            modality: modality.to_string(),
            key: key.to_string(),
            reason,
        };
        let mut parts: BTreeMap<Modality, BTreeMap<&'static str, Tensor>> = BTreeMap::new();
        for (name, t) in tensors {
            let (mod_key, field) = name.rsplit_once('.').ok_or_else(|| err("?", &name, "expected '<modality>.<field>'".into()))?;
            let field = FIELDS
                .iter()
                .find(|f| **f == field)
                .ok_or_else(|| err(mod_key, &name, format!("unknown field '{field}' (expected one of {})", FIELDS.join(", "))))?;
            let m = Modality::from_key(mod_key).map_err(|e| err(mod_key, &name, e.to_string()))?;
            parts.entry(m).or_default().insert(field, t);
        }
        let mut modalities = BTreeMap::new();
        for (m, mut fields) in parts {
            let mut take = |f: &str| fields.remove(f).ok_or_else(|| err(m.key(), &format!("{m}.{f}"), "missing".into()));
            let tensor = take("tensor")?;
            let input_mask = take("input_mask")?;
            let target_mask = take("target_mask")?;
            let decoder_attention_mask = take("decoder_attention_mask")?;
            modalities.insert(m, ModalityTensors { tensor, input_mask, target_mask, decoder_attention_mask });
        }
        if modalities.is_empty() {
            return Err(err("-", "-", "the batch holds no modality".into()));
        }
        let batch = Self { modalities };
        batch.normalized(source)
    }

    /// Checks shapes, dtypes and value ranges against the registry; returns the batch with
    /// integer ids and attention masks widened to i64.
    fn normalized(self, source: &str) -> Result<Self> {
        let b = self.batch_size();
        let mut out = BTreeMap::new();
        for (m, t) in self.modalities {
            let err = |field: &str, reason: String| ModelError::Batch {
                source_name: source.to_string(),
                modality: m.key().to_string(),
                key: format!("{m}.{field}"),
                reason,
            };
            let s = m.spec();
            let shape = t.tensor.size();
            if shape.first() != Some(&b) {
                return Err(err("tensor", format!("batch size {:?} differs from the batch's {b}", shape.first())));
            }
            let is_int = |k: Kind| matches!(k, Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8);
            let is_float = |k: Kind| matches!(k, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
            let (tensor, len) = match s.kind {
                ModalityKind::Pixels => {
                    let want = [b, s.channels as i64, s.image_size as i64, s.image_size as i64];
                    if shape != want {
                        return Err(err("tensor", format!("shape {shape:?}, expected {want:?}")));
                    }
                    if !is_float(t.tensor.kind()) {
                        return Err(err("tensor", format!("dtype {:?}, expected a float type", t.tensor.kind())));
                    }
                    (t.tensor.to_kind(Kind::Float), s.max_tokens as i64)
                }
                ModalityKind::SequenceEmbedding => {
                    if shape.len() != 3 || shape[2] != s.channels as i64 || shape[1] > s.max_tokens as i64 {
                        return Err(err("tensor", format!("shape {shape:?}, expected [{b}, <= {}, {}]", s.max_tokens, s.channels)));
                    }
                    if !is_float(t.tensor.kind()) {
                        return Err(err("tensor", format!("dtype {:?}, expected a float type", t.tensor.kind())));
                    }
                    (t.tensor.to_kind(Kind::Float), shape[1])
                }
                ModalityKind::ImageTokens | ModalityKind::GlobalTokens | ModalityKind::Sequence => {
                    if !is_int(t.tensor.kind()) {
                        return Err(err("tensor", format!("dtype {:?}, expected integer token ids", t.tensor.kind())));
                    }
                    let ids = t.tensor.reshape([b, -1]).to_kind(Kind::Int64);
                    let len = ids.size()[1];
                    if s.kind != ModalityKind::Sequence && (shape.len() < 2 || len != s.max_tokens as i64) {
                        return Err(err("tensor", format!("shape {shape:?}, expected [{b}, {}]", s.max_tokens)));
                    }
                    if s.kind == ModalityKind::Sequence && shape.len() != 2 {
                        return Err(err("tensor", format!("shape {shape:?}, expected [{b}, L]")));
                    }
                    if ids.numel() > 0 {
                        let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
                        if lo < 0 || hi >= s.vocab_size as i64 {
                            return Err(err(
                                "tensor",
                                format!("token ids span [{lo}, {hi}], outside the vocabulary [0, {})", s.vocab_size),
                            ));
                        }
                    }
                    (ids, len)
                }
            };
            let want = [b, len];
            for (field, mask) in [("input_mask", &t.input_mask), ("target_mask", &t.target_mask)] {
                if mask.kind() != Kind::Bool {
                    return Err(err(field, format!("dtype {:?}, expected bool (true = excluded)", mask.kind())));
                }
                if mask.size() != want {
                    return Err(err(field, format!("shape {:?}, expected {want:?}", mask.size())));
                }
            }
            let dam = &t.decoder_attention_mask;
            if !is_int(dam.kind()) || dam.size() != want {
                return Err(err("decoder_attention_mask", format!("{:?} {:?}, expected integer {want:?}", dam.kind(), dam.size())));
            }
            if let PosEmb::SinCos1d { .. } = s.pos_emb {
                // Encoder positions come from the input mask; they must fit the table.
                let inputs = t.input_mask.logical_not().sum_dim_intlist(1, false, Kind::Int64).max().int64_value(&[]);
                if inputs > MAX_SINCOS_ROWS {
                    return Err(err(
                        "input_mask",
                        format!("{inputs} valid input tokens, more than the {MAX_SINCOS_ROWS} positions of {m}"),
                    ));
                }
            }
            out.insert(
                m,
                ModalityTensors {
                    tensor,
                    input_mask: t.input_mask,
                    target_mask: t.target_mask,
                    decoder_attention_mask: dam.to_kind(Kind::Int64),
                },
            );
        }
        Ok(Self { modalities: out })
    }

    /// Checks that every modality is known to the model on at least one side.
    pub fn check_against(&self, cfg: &FourMConfig, source: &str) -> Result<()> {
        for m in self.modalities.keys() {
            if !cfg.domains_in.contains(m) && !cfg.domains_out.contains(m) {
                return Err(ModelError::Batch {
                    source_name: source.to_string(),
                    modality: m.key().to_string(),
                    key: format!("{m}.tensor"),
                    reason: "the model has no embedding for this modality".into(),
                });
            }
        }
        Ok(())
    }

    /// The batch's tensors as `<modality>.<field>` pairs, the on-disk layout.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (m, t) in &self.modalities {
            out.push((format!("{m}.tensor"), t.tensor.shallow_clone()));
            out.push((format!("{m}.input_mask"), t.input_mask.shallow_clone()));
            out.push((format!("{m}.target_mask"), t.target_mask.shallow_clone()));
            out.push((format!("{m}.decoder_attention_mask"), t.decoder_attention_mask.to_kind(Kind::Int)));
        }
        out
    }

    /// Writes the batch file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        io::write(path, &self.named_tensors(), &BTreeMap::new())
    }

    /// Moves every tensor to `device`.
    pub fn to_device(&self, device: Device) -> Self {
        let modalities = self
            .modalities
            .iter()
            .map(|(m, t)| {
                let t = t.shallow_clone();
                (
                    *m,
                    ModalityTensors {
                        tensor: t.tensor.to_device(device),
                        input_mask: t.input_mask.to_device(device),
                        target_mask: t.target_mask.to_device(device),
                        decoder_attention_mask: t.decoder_attention_mask.to_device(device),
                    },
                )
            })
            .collect();
        Self { modalities }
    }
}
