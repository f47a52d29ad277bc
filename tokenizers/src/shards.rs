//! ml-4m's on-disk data formats, read and written in pure Rust (reference §6).
//!
//! - [`pattern`]: `data_path` expansion (`root/[rgb,caption]/shard-{00000..00099}.tar`).
//! - [`tar`]: tar shards, a header-only indexer for random access and an atomic writer.
//! - [`dataset`]: [`ShardDataset`], one folder per modality joined by key like ml-4m's
//!   `multi_tarfile_samples`, read by record index.
//! - [`npy`], [`rgb`], [`decode`]: member decoders (`.npy`, `.npz`, `.json`, `.txt`,
//!   `.png`/`.jpg`) and writers, typed views of tokens / crop settings / T5 embeddings, and
//!   ml-4m's RGB crop-resize-normalise transform.
//! - [`corpus`]: [`TextCorpus`], C4-style JSON-lines or plain-text documents by index.
//! - [`parallel`]: [`ParallelReader`], order-preserving parallel read + decode.
//! - [`fixture`]: deterministic datasets in ml-4m's layout for tests and benchmarks.
//!
//! Every error names the file and, for members, the sample key and member.

pub mod corpus;
pub mod dataset;
pub mod decode;
mod files;
pub mod fixture;
pub mod npy;
mod origin;
pub mod parallel;
pub mod pattern;
pub mod rgb;
pub mod tar;

pub use corpus::{TextCorpus, TextFormat, TextRecord};
pub use dataset::{DecodedRecord, Member, NameMap, RawRecord, ShardDataset};
pub use decode::{Decoded, T5Embeddings, TokenArray, crop_settings_from_array, decode_member, encode_json, encode_text};
pub use fixture::{FIXTURE_FOLDERS, Fixture, FixtureSpec, write_fixture};
pub use npy::{ArrayData, NdArray, decode_npy, decode_npz, encode_npy, encode_npz};
pub use origin::Origin;
pub use parallel::ParallelReader;
pub use pattern::{FolderShards, brace_expand, expand_shard_pattern};
pub use rgb::{ChwImage, CropSetting, ResizeFilter, Rgb8Image, rgb_transform};
pub use tar::{TarIndex, TarWriter};
