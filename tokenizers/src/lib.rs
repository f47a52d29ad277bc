//! Everything about *what* the 4M model consumes, without libtorch: the [`Modality`] registry
//! (the single source of truth for keys, kinds, vocabularies and token counts of every 4M-21
//! modality), the [`mixture`] module (the Dirichlet-mixture policy that gives each modality its
//! per-sample input/target token budget), the [`text`] module (ml-4m's WordPiece text tokenizer:
//! [`text::TextTokenizer`], loading, encoding and training), the [`serialize`] module (ml-4m's
//! exact text serializations of detections, metadata, palettes, poses and SAM instances), the
//! [`shards`] module (ml-4m's on-disk formats: tar shards joined by key, `.npy`/`.npz`/JSON/
//! image members, C4-style text corpora) and the [`masking`] module (ml-4m's per-sample
//! input/target masking and collation) and the [`world`] module (a procedurally rendered
//! multimodal dataset whose aligned modalities are computed exactly, written in ml-4m's layout).
//! [`atomic`] holds the one atomic, durable file write that every crate uses.
//!
//! The coordinator depends on this crate for the registry, so nothing here may link tch.

pub mod atomic;
mod error;
pub mod masking;
pub mod mixture;
mod modality;
pub mod serialize;
pub mod shards;
pub mod text;
pub mod world;

pub use error::{Divergence, Error, Result};
pub use modality::{CustomModality, Modality, ModalityKind, ModalitySet, ModalitySpec, PosEmb, TokenModalityDef};
