//! Tokenizer-defined token modalities: keys such as `tok_depth@32` whose vocabulary and grid
//! come from a tokenizer trained here, not from ml-4m's `MODALITY_INFO`.
//!
//! A [`TokenModalityDef`] (what a job's `[[model.token_modalities]]` or a checkpoint's metadata
//! carries) is turned into a [`ModalitySpec`] and interned in a process-wide, append-only table,
//! so a [`Modality::Custom`] stays `Copy`, its spec stays `&'static`, and keys resolve through
//! the same `from_key`/serde path as the built-ins. Registration is idempotent: the same key with
//! the same numbers returns the same modality; the same key with other numbers, a built-in key,
//! or an id that collides with another modality's is an error. Every process of a job registers
//! the same definitions from the same job file before it resolves any key.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Modality, ModalityKind, ModalitySpec, PosEmb};
use crate::error::{Error, Result};

/// Interned specs of the registered custom modalities (leaked: they live for the process).
static REGISTRY: RwLock<Vec<&'static ModalitySpec>> = RwLock::new(Vec::new());

/// A handle to a registered custom modality; equality, order and hash follow its key.
#[derive(Clone, Copy)]
pub struct CustomModality(&'static ModalitySpec);

impl CustomModality {
    /// The interned spec.
    pub fn spec(self) -> &'static ModalitySpec {
        self.0
    }

    /// The definition it was registered from.
    pub fn def(self) -> TokenModalityDef {
        let s = self.0;
        TokenModalityDef { key: s.key.to_string(), vocab_size: s.vocab_size, grid: s.grid_side(), kind: s.kind }
    }
}

impl PartialEq for CustomModality {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for CustomModality {}

impl Hash for CustomModality {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl PartialOrd for CustomModality {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CustomModality {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.key.cmp(other.0.key)
    }
}

impl fmt::Debug for CustomModality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomModality({:?})", self.0.key)
    }
}

fn default_kind() -> ModalityKind {
    ModalityKind::ImageTokens
}

/// A tokenizer-defined token modality as a job (`[[model.token_modalities]]`), a checkpoint's
/// metadata or `tessera tokenize`'s `modality.json` declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenModalityDef {
    /// The key and shard folder name, `tok_<name>@<size>`: `size` is the image side in pixels
    /// the grid covers (`@1` for global vectors).
    pub key: String,
    /// Codebook size: token ids lie in `0..vocab_size`.
    pub vocab_size: usize,
    /// Tokens per side of the (square) token grid: `grid²` tokens per sample.
    pub grid: usize,
    /// `image_tokens` (2D sin-cos positions) or `global_tokens` (learned positions).
    /// Default: image_tokens.
    #[serde(default = "default_kind")]
    pub kind: ModalityKind,
}

impl TokenModalityDef {
    /// Validates the definition into a spec (key and folder not yet interned).
    fn to_spec(&self) -> Result<(ModalityKind, usize, usize, u16)> {
        let bad = |reason: String| Err(Error::CustomModality { key: self.key.clone(), reason });
        let Some((name, size)) = self.key.strip_prefix("tok_").and_then(|rest| rest.rsplit_once('@')) else {
            return bad("the key must look like tok_<name>@<size>".into());
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return bad(format!("the name '{name}' must be non-empty ASCII letters, digits or '_'"));
        }
        let Ok(size) = size.parse::<usize>() else { return bad(format!("the size '{size}' after '@' must be an integer")) };
        if Modality::ALL.iter().any(|m| m.key() == self.key) {
            return bad("this is a built-in ml-4m key; it cannot be redefined".into());
        }
        if self.vocab_size < 2 || self.vocab_size > 32_768 {
            return bad(format!("vocab_size {} must be in 2..=32768 (token shards are int16)", self.vocab_size));
        }
        if self.grid == 0 {
            return bad("grid must be at least 1".into());
        }
        let (image, patch) = match self.kind {
            ModalityKind::ImageTokens => {
                if size == 0 || !size.is_multiple_of(self.grid) {
                    return bad(format!("the image size {size} is not a multiple of the grid side {}", self.grid));
                }
                (size, size / self.grid)
            }
            // A global vector has no pixels: one "pixel" per token.
            ModalityKind::GlobalTokens => (self.grid, 1),
            other => return bad(format!("kind must be image_tokens or global_tokens, not {other:?}")),
        };
        Ok((self.kind, image, patch, uint15_hash(&self.key)))
    }

    /// Registers the modality in this process (idempotent) and returns it.
    pub fn register(&self) -> Result<Modality> {
        let (kind, image_size, patch_size, id) = self.to_spec()?;
        let mut reg = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = reg.iter().find(|s| s.key == self.key) {
            let existing = CustomModality(s);
            if existing.def() != *self {
                return Err(Error::CustomModality {
                    key: self.key.clone(),
                    reason: format!("already registered as {:?}, now declared as {self:?}", existing.def()),
                });
            }
            return Ok(Modality::Custom(existing));
        }
        if let Some(other) = Modality::ALL.iter().map(|m| m.spec()).chain(reg.iter().copied()).find(|s| s.id == id) {
            return Err(Error::CustomModality {
                key: self.key.clone(),
                reason: format!("its id {id} (SHA-256 of the key mod 2^15) collides with '{}'; choose another name", other.key),
            });
        }
        let key: &'static str = Box::leak(self.key.clone().into_boxed_str());
        let spec: &'static ModalitySpec = Box::leak(Box::new(ModalitySpec {
            key,
            kind,
            id,
            vocab_size: self.vocab_size,
            max_tokens: self.grid * self.grid,
            image_size,
            patch_size,
            channels: 0,
            pos_emb: if kind == ModalityKind::GlobalTokens { PosEmb::Learned } else { PosEmb::SinCos2d },
            has_encoder: true,
            has_decoder: true,
            folder: key,
        }));
        reg.push(spec);
        Ok(Modality::Custom(CustomModality(spec)))
    }

    /// Registers every definition, in order; the first refusal is the error.
    pub fn register_all(defs: &[Self]) -> Result<Vec<Modality>> {
        defs.iter().map(Self::register).collect()
    }
}

/// ml-4m's `generate_uint15_hash`: SHA-256 of the key as a big integer modulo 2^15, which only
/// depends on the digest's last two bytes.
pub(crate) fn uint15_hash(key: &str) -> u16 {
    let d = Sha256::digest(key.as_bytes());
    (u16::from(d[30]) << 8 | u16::from(d[31])) & 0x7fff
}

/// The first registered custom modality whose spec satisfies `pred`.
pub(super) fn find(pred: impl Fn(&ModalitySpec) -> bool) -> Option<Modality> {
    let reg = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    reg.iter().find(|s| pred(s)).map(|s| Modality::Custom(CustomModality(s)))
}

/// Every registered custom modality, in registration order.
pub(super) fn all() -> Vec<Modality> {
    let reg = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    reg.iter().map(|s| Modality::Custom(CustomModality(s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(key: &str, vocab: usize, grid: usize) -> TokenModalityDef {
        TokenModalityDef { key: key.into(), vocab_size: vocab, grid, kind: ModalityKind::ImageTokens }
    }

    #[test]
    fn registered_keys_resolve_round_trip_and_keep_ml4m_ids() {
        let m = def("tok_unit_depth@32", 256, 8).register().unwrap();
        let s = m.spec();
        assert_eq!((s.vocab_size, s.max_tokens, s.image_size, s.patch_size, s.grid_side()), (256, 64, 32, 4, 8));
        assert_eq!(s.kind, ModalityKind::ImageTokens);
        assert_eq!(s.id, uint15_hash("tok_unit_depth@32"));
        assert_eq!(Modality::from_key("tok_unit_depth@32").unwrap(), m);
        assert_eq!(Modality::from_id(s.id), Some(m));
        assert!(Modality::custom().contains(&m) && m.is_custom());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"tok_unit_depth@32\"");
        assert_eq!(serde_json::from_str::<Modality>(&json).unwrap(), m);
        assert_eq!(m.token_def(), Some(def("tok_unit_depth@32", 256, 8)));
        // Idempotent; other numbers under the same key are refused.
        assert_eq!(def("tok_unit_depth@32", 256, 8).register().unwrap(), m);
        let err = def("tok_unit_depth@32", 512, 8).register().unwrap_err().to_string();
        assert!(err.contains("tok_unit_depth@32") && err.contains("already registered"), "{err}");
        // A set over built-in and custom keys.
        let set = super::super::ModalitySet::parse("caption,tok_unit_depth@32").unwrap();
        assert_eq!(set.outputs, vec![Modality::Caption, m]);
    }

    #[test]
    fn global_tokens_use_learned_positions() {
        let d = TokenModalityDef { key: "tok_unit_global@1".into(), vocab_size: 64, grid: 2, kind: ModalityKind::GlobalTokens };
        let m = d.register().unwrap();
        assert_eq!((m.spec().max_tokens, m.spec().pos_emb, m.spec().grid_side()), (4, PosEmb::Learned, 2));
        assert_eq!(m.token_def(), Some(d));
    }

    #[test]
    fn bad_definitions_are_refused_with_the_reason() {
        for (d, want) in [
            (def("depth@32", 256, 8), "tok_<name>@<size>"),
            (def("tok_depth@x", 256, 8), "integer"),
            (def("tok_depth@224", 256, 14), "built-in"),
            (def("tok_unit_bad@30", 256, 8), "multiple of the grid"),
            (def("tok_unit_bad@32", 1, 8), "vocab_size"),
            (def("tok_unit_bad@32", 40_000, 8), "vocab_size"),
            (def("tok_unit bad@32", 256, 8), "name"),
        ] {
            let err = d.register().unwrap_err().to_string();
            assert!(err.contains(want) && err.contains(&d.key), "{err}");
        }
        let err = Modality::from_key("tok_unit_unregistered@32").unwrap_err().to_string();
        assert!(err.contains("token_modalities"), "{err}");
    }
}
