//! The modality registry: one enum with one static spec per modality, mirroring ml-4m's
//! `MODALITY_INFO` for every key 4M-21 trains on (plus the @448 super-resolution keys).
//!
//! Serde names and `Display` equal ml-4m's keys (`tok_rgb@224`, `caption`, …) so configs,
//! checkpoints and shard folders interoperate with ml-4m.
//!
//! Tokenizer-defined token modalities (`tok_depth@32` from `tessera tokenize`) are
//! [`Modality::Custom`]: a job or checkpoint declares them as [`TokenModalityDef`]s, which are
//! registered (idempotently, append-only) before any key is resolved; see [`custom`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod custom;

pub use custom::{CustomModality, TokenModalityDef};

/// What kind of data a modality carries; decides embedding module, masking and collation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModalityKind {
    /// Raw pixels, patch-embedded by a linear layer (ml-4m type `img`, input only).
    Pixels,
    /// A grid of discrete tokens from an image-like tokenizer (ml-4m type `img`).
    ImageTokens,
    /// A handful of discrete tokens encoding a global vector (ml-4m type `img`, learned positions).
    GlobalTokens,
    /// A text-vocabulary token sequence (ml-4m type `seq`).
    Sequence,
    /// A sequence of precomputed float vectors such as T5-XXL outputs (ml-4m type `seq_emb`, input only).
    SequenceEmbedding,
}

impl ModalityKind {
    /// True for the kinds ml-4m calls `img`: fixed positions, bidirectional decoding, no shift.
    pub fn is_image_like(self) -> bool {
        matches!(self, Self::Pixels | Self::ImageTokens | Self::GlobalTokens)
    }

    /// True for the kinds decoded autoregressively with the one-token shift (`seq`, `seq_emb`).
    pub fn is_sequence_like(self) -> bool {
        matches!(self, Self::Sequence | Self::SequenceEmbedding)
    }

    /// ml-4m's `type` string for this kind.
    pub fn ml4m_type(self) -> &'static str {
        match self {
            Self::Pixels | Self::ImageTokens | Self::GlobalTokens => "img",
            Self::Sequence => "seq",
            Self::SequenceEmbedding => "seq_emb",
        }
    }
}

/// How a modality's positional embedding is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PosEmb {
    /// Fixed 2D sin-cos over the token grid (a non-learned buffer).
    SinCos2d,
    /// A learned table with one row per token (global tokens).
    Learned,
    /// Fixed 1D sin-cos over 512 rows. ml-4m's `[:max_length]` slice hits the table's
    /// leading axis of size 1, so the table keeps all 512 rows; `max_length` only bounds
    /// decoder positions (those at or beyond it map to row 0).
    SinCos1d {
        /// ml-4m's `max_length`.
        max_length: usize,
    },
}

/// Static facts about one modality; see [`Modality::spec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModalitySpec {
    /// ml-4m's key, e.g. `tok_rgb@224`.
    pub key: &'static str,
    /// The kind of data.
    pub kind: ModalityKind,
    /// ml-4m's modality id: SHA-256 of the key modulo 2^15 (used for same-modality masks).
    pub id: u16,
    /// Token vocabulary size (0 for pixels and sequence embeddings).
    pub vocab_size: usize,
    /// Maximum number of tokens per sample (grid size for images, `max_tokens` for sequences).
    pub max_tokens: usize,
    /// Image side in pixels the grid refers to (0 for sequences).
    pub image_size: usize,
    /// Patch side in pixels of one token (0 for sequences).
    pub patch_size: usize,
    /// Input channels for pixel modalities, vector width for sequence embeddings, else 0.
    pub channels: usize,
    /// The positional embedding.
    pub pos_emb: PosEmb,
    /// Whether the modality has an encoder embedding (can be an input).
    pub has_encoder: bool,
    /// Whether the modality has a decoder embedding (can be a target).
    pub has_decoder: bool,
    /// Folder name of the modality in ml-4m shard layouts.
    pub folder: &'static str,
}

impl ModalitySpec {
    /// Tokens per side of the grid for image-like modalities (0 for sequences).
    pub fn grid_side(&self) -> usize {
        if self.kind.is_image_like() { self.image_size / self.patch_size } else { 0 }
    }

    /// Length of the per-sample tensor and masks along the token axis in a masked batch:
    /// the grid size for images, `(max_tokens + 1) * 2` for sequences (room for input,
    /// sentinels and target at offset b_in), `max_tokens` for sequence embeddings.
    pub fn batch_len(&self) -> usize {
        match self.kind {
            ModalityKind::Sequence => (self.max_tokens + 1) * 2,
            _ => self.max_tokens,
        }
    }
}

macro_rules! modalities {
    ($( $(#[$doc:meta])* $variant:ident = $key:literal => $spec:expr ),+ $(,)?) => {
        /// Every modality tessera knows: one variant per ml-4m key, plus the tokenizer-defined
        /// token modalities registered at run time. Serialised as its key.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Modality {
            $( $(#[$doc])* $variant, )+
            /// A tokenizer-defined token modality (`tok_<name>@<size>`), see [`TokenModalityDef`].
            Custom(CustomModality),
        }

        impl Modality {
            /// Every built-in (ml-4m) modality, in declaration order; registered custom ones are
            /// listed by [`Modality::custom`].
            pub const ALL: &'static [Modality] = &[$(Modality::$variant),+];

            /// The spec of this modality (static for built-ins, interned for custom ones).
            pub fn spec(self) -> &'static ModalitySpec {
                match self {
                    $( Modality::$variant => {
                        const SPEC: ModalitySpec = $spec;
                        &SPEC
                    } )+
                    Modality::Custom(c) => c.spec(),
                }
            }
        }
    };
}

const fn tok_grid(key: &'static str, id: u16, vocab: usize, image: usize, patch: usize) -> ModalitySpec {
    ModalitySpec {
        key,
        kind: ModalityKind::ImageTokens,
        id,
        vocab_size: vocab,
        max_tokens: (image / patch) * (image / patch),
        image_size: image,
        patch_size: patch,
        channels: 0,
        pos_emb: PosEmb::SinCos2d,
        has_encoder: true,
        has_decoder: true,
        folder: key,
    }
}

const fn tok_global(key: &'static str, id: u16) -> ModalitySpec {
    // ml-4m: patch_size 56 over the default 224 input -> a 4x4 "grid" of 16 tokens.
    ModalitySpec {
        key,
        kind: ModalityKind::GlobalTokens,
        id,
        vocab_size: 8192,
        max_tokens: 16,
        image_size: 224,
        patch_size: 56,
        channels: 0,
        pos_emb: PosEmb::Learned,
        has_encoder: true,
        has_decoder: true,
        folder: key,
    }
}

const fn pixels(key: &'static str, id: u16, image: usize, folder: &'static str) -> ModalitySpec {
    ModalitySpec {
        key,
        kind: ModalityKind::Pixels,
        id,
        vocab_size: 0,
        max_tokens: (image / 16) * (image / 16),
        image_size: image,
        patch_size: 16,
        channels: 3,
        pos_emb: PosEmb::SinCos2d,
        has_encoder: true,
        has_decoder: false,
        folder,
    }
}

const fn text_seq(key: &'static str, id: u16, max_tokens: usize, pos_rows: usize) -> ModalitySpec {
    ModalitySpec {
        key,
        kind: ModalityKind::Sequence,
        id,
        vocab_size: 30_000,
        max_tokens,
        image_size: 0,
        patch_size: 0,
        channels: 0,
        pos_emb: PosEmb::SinCos1d { max_length: pos_rows },
        has_encoder: true,
        has_decoder: true,
        folder: key,
    }
}

modalities! {
    /// RGB pixels at 224 px, 16 px patches (input only).
    Rgb224 = "rgb@224" => pixels("rgb@224", 20716, 224, "rgb"),
    /// RGB tokens (16k codebook).
    TokRgb224 = "tok_rgb@224" => tok_grid("tok_rgb@224", 11606, 16384, 224, 16),
    /// Depth tokens.
    TokDepth224 = "tok_depth@224" => tok_grid("tok_depth@224", 20063, 8192, 224, 16),
    /// Surface-normal tokens.
    TokNormal224 = "tok_normal@224" => tok_grid("tok_normal@224", 16656, 8192, 224, 16),
    /// COCO semantic segmentation tokens.
    TokSemseg224 = "tok_semseg@224" => tok_grid("tok_semseg@224", 12515, 4096, 224, 16),
    /// CLIP-B/16 feature-map tokens.
    TokClip224 = "tok_clip@224" => tok_grid("tok_clip@224", 11422, 8192, 224, 16),
    /// DINOv2-B/14 feature-map tokens (patch 14, 16x16 grid).
    TokDinov2_224 = "tok_dinov2@224" => tok_grid("tok_dinov2@224", 26275, 8192, 224, 14),
    /// ImageBind-H/14 feature-map tokens (patch 14, 16x16 grid).
    TokImagebind224 = "tok_imagebind@224" => tok_grid("tok_imagebind@224", 6200, 8192, 224, 14),
    /// DINOv2 global-vector tokens (16 tokens, learned positions).
    TokDinov2Global = "tok_dinov2_global" => tok_global("tok_dinov2_global", 29172),
    /// ImageBind global-vector tokens (16 tokens, learned positions).
    TokImagebindGlobal = "tok_imagebind_global" => tok_global("tok_imagebind_global", 12099),
    /// SAM edge tokens.
    TokSamEdge224 = "tok_sam_edge@224" => tok_grid("tok_sam_edge@224", 7842, 8192, 224, 16),
    /// Canny edge tokens.
    TokCannyEdge224 = "tok_canny_edge@224" => tok_grid("tok_canny_edge@224", 12520, 8192, 224, 16),
    /// Captions (WordPiece text).
    Caption = "caption" => text_seq("caption", 32652, 256, 256),
    /// Detection boxes serialized with coordinate tokens.
    Det = "det" => text_seq("det", 30982, 256, 256),
    /// Image metadata as `v1=type v0=value` chunks.
    Metadata = "metadata" => text_seq("metadata", 1951, 40, 40),
    /// Human poses (boxes, pose codes, SMPL parameters); only 263 positional rows, as ml-4m.
    HumanPoses = "human_poses" => text_seq("human_poses", 30584, 275, 263),
    /// Colour palettes.
    ColorPalette = "color_palette" => text_seq("color_palette", 12967, 23, 23),
    /// SAM instances (query points, boxes and instance codes).
    SamInstance = "sam_instance" => text_seq("sam_instance", 1938, 290, 290),
    /// T5-XXL caption embeddings, 77 x 4096 floats (input only).
    T5Caption = "t5_caption" => ModalitySpec {
        key: "t5_caption",
        kind: ModalityKind::SequenceEmbedding,
        id: 28551,
        vocab_size: 0,
        max_tokens: 77,
        image_size: 0,
        patch_size: 0,
        channels: 4096,
        pos_emb: PosEmb::SinCos1d { max_length: 77 },
        has_encoder: true,
        has_decoder: false,
        folder: "t5_caption",
    },
    /// RGB pixels at 448 px (super-resolution model, input only).
    Rgb448 = "rgb@448" => pixels("rgb@448", 27924, 448, "rgb"),
    /// RGB tokens at 448 px (28x28 grid).
    TokRgb448 = "tok_rgb@448" => tok_grid("tok_rgb@448", 1057, 16384, 448, 16),
    /// Depth tokens at 448 px.
    TokDepth448 = "tok_depth@448" => tok_grid("tok_depth@448", 11499, 8192, 448, 16),
    /// Normal tokens at 448 px.
    TokNormal448 = "tok_normal@448" => tok_grid("tok_normal@448", 32321, 8192, 448, 16),
    /// Semantic segmentation tokens at 448 px.
    TokSemseg448 = "tok_semseg@448" => tok_grid("tok_semseg@448", 10291, 4096, 448, 16),
    /// CLIP tokens at 448 px.
    TokClip448 = "tok_clip@448" => tok_grid("tok_clip@448", 3585, 8192, 448, 16),
}

impl Modality {
    /// ml-4m's key for this modality.
    pub fn key(self) -> &'static str {
        self.spec().key
    }

    /// The kind of data this modality carries.
    pub fn kind(self) -> ModalityKind {
        self.spec().kind
    }

    /// ml-4m's int15 modality id.
    pub fn id(self) -> u16 {
        self.spec().id
    }

    /// Looks a modality up by its key: a built-in ml-4m key or a registered custom one.
    pub fn from_key(key: &str) -> Result<Self> {
        if let Some(m) = Self::ALL.iter().copied().find(|m| m.key() == key) {
            return Ok(m);
        }
        custom::find(|s| s.key == key).ok_or_else(|| {
            let mut known: Vec<&str> = Self::ALL.iter().map(|m| m.key()).collect();
            known.extend(Self::custom().iter().map(|m| m.key()));
            let hint = if key.starts_with("tok_") {
                " (tokenizer-defined keys must be declared, e.g. in the job's [[model.token_modalities]])"
            } else {
                ""
            };
            Error::UnknownModality { key: key.to_string(), hint, known: known.join(", ") }
        })
    }

    /// Finds the modality (built-in or registered) whose ml-4m id is `id`.
    pub fn from_id(id: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| m.id() == id).or_else(|| custom::find(|s| s.id == id))
    }

    /// The custom modalities registered in this process, in registration order.
    pub fn custom() -> Vec<Self> {
        custom::all()
    }

    /// True for a tokenizer-defined modality (not one of ml-4m's keys).
    pub fn is_custom(self) -> bool {
        matches!(self, Self::Custom(_))
    }

    /// The definition of a custom modality (what a job or checkpoint must carry to rebuild
    /// it); `None` for built-ins.
    pub fn token_def(self) -> Option<TokenModalityDef> {
        match self {
            Self::Custom(c) => Some(c.def()),
            _ => None,
        }
    }
}

impl Serialize for Modality {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

impl<'de> Deserialize<'de> for Modality {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Modality;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a modality key such as \"caption\" or \"tok_rgb@224\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Modality, E> {
                Modality::from_key(v).map_err(E::custom)
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for Modality {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_key(s)
    }
}

/// The input and output domains of a model or dataset, each sorted by key as ml-4m sorts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModalitySet {
    /// Modalities the encoder may receive.
    pub inputs: Vec<Modality>,
    /// Modalities the decoder may predict.
    pub outputs: Vec<Modality>,
}

/// 4M-21's CC12M input domains [ml-4m mix_mod21_all2allmix_rgb2all_capT5bias_C4.yaml].
const MOD21_IN: &[Modality] = &[
    Modality::Caption,
    Modality::T5Caption,
    Modality::Det,
    Modality::Metadata,
    Modality::Rgb224,
    Modality::TokRgb224,
    Modality::TokNormal224,
    Modality::TokDepth224,
    Modality::TokSemseg224,
    Modality::TokClip224,
    Modality::HumanPoses,
    Modality::TokDinov2_224,
    Modality::TokDinov2Global,
    Modality::TokImagebind224,
    Modality::TokImagebindGlobal,
    Modality::TokSamEdge224,
    Modality::TokCannyEdge224,
    Modality::ColorPalette,
    Modality::SamInstance,
];

/// 4M-7's domains (CC12M): RGB pixels and tokens, depth, normals, semseg, CLIP, caption, det.
const MOD7_IN: &[Modality] = &[
    Modality::Rgb224,
    Modality::TokRgb224,
    Modality::TokDepth224,
    Modality::TokNormal224,
    Modality::TokSemseg224,
    Modality::TokClip224,
    Modality::Caption,
    Modality::Det,
];

/// The 11-modality set used by the peer benchmarks (every key is both input and output).
const MOD11: &[Modality] = &[
    Modality::Caption,
    Modality::Det,
    Modality::Metadata,
    Modality::ColorPalette,
    Modality::TokRgb224,
    Modality::TokDepth224,
    Modality::TokNormal224,
    Modality::TokSemseg224,
    Modality::TokClip224,
    Modality::TokDinov2_224,
    Modality::TokDinov2Global,
];

impl ModalitySet {
    /// Builds a set from explicit lists; sorts and de-duplicates them, and keeps outputs only
    /// where a decoder exists and inputs only where an encoder exists.
    pub fn new(inputs: &[Modality], outputs: &[Modality]) -> Self {
        let mut inputs: Vec<Modality> = inputs.iter().copied().filter(|m| m.spec().has_encoder).collect();
        let mut outputs: Vec<Modality> = outputs.iter().copied().filter(|m| m.spec().has_decoder).collect();
        inputs.sort_by_key(|m| m.key());
        inputs.dedup();
        outputs.sort_by_key(|m| m.key());
        outputs.dedup();
        Self { inputs, outputs }
    }

    /// Parses a named set (`4m21`, `4m7`, `mod11`) or a comma-separated key list; in a list,
    /// every modality is used on each side where it has an embedding.
    pub fn parse(spec: &str) -> Result<Self> {
        let named = |list: &[Modality]| Self::new(list, list);
        let set = match spec.trim() {
            "4m21" | "mod21" => named(MOD21_IN),
            "4m7" | "mod7" => named(MOD7_IN),
            "mod11" => named(MOD11),
            other => {
                let mods = other.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Modality::from_key).collect::<Result<Vec<_>>>()?;
                named(&mods)
            }
        };
        if set.inputs.is_empty() && set.outputs.is_empty() {
            return Err(Error::InvalidModalitySet { spec: spec.to_string(), reason: "no modalities".into() });
        }
        Ok(set)
    }

    /// The sorted union of inputs and outputs (ml-4m's `all_domains`).
    pub fn all(&self) -> Vec<Modality> {
        let mut all: Vec<Modality> = self.inputs.iter().chain(&self.outputs).copied().collect();
        all.sort_by_key(|m| m.key());
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn uint15_hash(key: &str) -> u16 {
        // SHA-256 as a big integer modulo 2^15 only depends on the last two bytes.
        let d = Sha256::digest(key.as_bytes());
        (u16::from(d[30]) << 8 | u16::from(d[31])) & 0x7fff
    }

    #[test]
    fn ids_are_ml4m_sha256_hashes_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in Modality::ALL {
            assert_eq!(m.id(), uint15_hash(m.key()), "id of {m}");
            assert!(seen.insert(m.id()), "duplicate id for {m}");
        }
        // Values quoted in the reference brief.
        assert_eq!(Modality::Caption.id(), 32652);
        assert_eq!(Modality::SamInstance.id(), 1938);
    }

    #[test]
    fn keys_round_trip_through_serde_and_fromstr() {
        for m in Modality::ALL {
            let json = serde_json::to_string(m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.key()));
            let back: Modality = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *m);
            assert_eq!(m.key().parse::<Modality>().unwrap(), *m);
        }
        let err = "tok_rgb".parse::<Modality>().unwrap_err().to_string();
        assert!(err.contains("tok_rgb") && err.contains("tok_rgb@224"), "{err}");
    }

    #[test]
    fn token_counts_match_ml4m() {
        assert_eq!(Modality::TokRgb224.spec().max_tokens, 196);
        assert_eq!(Modality::TokDinov2_224.spec().max_tokens, 256);
        assert_eq!(Modality::TokDinov2Global.spec().max_tokens, 16);
        assert_eq!(Modality::TokRgb448.spec().max_tokens, 784);
        assert_eq!(Modality::Rgb224.spec().max_tokens, 196);
        assert_eq!(Modality::Caption.spec().batch_len(), 514);
        assert_eq!(Modality::Metadata.spec().batch_len(), 82);
        assert_eq!(Modality::HumanPoses.spec().batch_len(), 552);
        assert_eq!(Modality::ColorPalette.spec().batch_len(), 48);
        assert_eq!(Modality::SamInstance.spec().batch_len(), 582);
        assert_eq!(Modality::T5Caption.spec().batch_len(), 77);
        assert_eq!(Modality::HumanPoses.spec().pos_emb, PosEmb::SinCos1d { max_length: 263 });
    }

    #[test]
    fn mod21_has_19_inputs_17_outputs() {
        let set = ModalitySet::parse("4m21").unwrap();
        assert_eq!(set.inputs.len(), 19);
        assert_eq!(set.outputs.len(), 17);
        assert!(!set.outputs.contains(&Modality::Rgb224));
        assert!(!set.outputs.contains(&Modality::T5Caption));
        let keys: Vec<_> = set.inputs.iter().map(|m| m.key()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "inputs are sorted by key");
        assert_eq!(ModalitySet::parse("4m7").unwrap().outputs.len(), 7);
        assert!(ModalitySet::parse("caption,nope").is_err());
        assert_eq!(ModalitySet::parse("caption, rgb@224").unwrap().outputs, vec![Modality::Caption]);
    }
}
