//! The text tokenizer of 4M (reference §2.1): ml-4m's WordPiece tokenizer, run by the
//! HuggingFace `tokenizers` crate so that ids equal what ml-4m's Python `tokenizers` gives.
//!
//! - [`TextTokenizer`] loads any HF tokenizer JSON (ml-4m ships
//!   `text_tokenizer_4m_wordpiece_30k.json`), encodes and decodes, and resolves the ids 4M's
//!   data path needs: `[PAD]`/`[UNK]`/`[SOS]`/`[EOS]`, the span-masking sentinels `[S_k]`
//!   (gathered from the vocabulary as ml-4m's `get_sentinel_to_id_mapping` does) and the
//!   coordinate tokens `vK=n` of boxes, poses, palettes and metadata.
//! - [`TrainSpec`] + [`TextTokenizer::train`] train a new one the way ml-4m's
//!   `train_wordpiece_tokenizer.py` does, with its exact special-token layout.
//! - [`WordLookup`] encodes the common texts of the data path (coordinates, class names, plain
//!   words) from tables, with the ids of [`TextTokenizer::encode`], and declines everything else.
//! - [`COCO_CLASSES`] and [`object_classes_from_file`] give the object-class tokens.

mod classes;
mod lookup;
mod tokenizer;
mod train;

pub use classes::{COCO_CLASSES, object_classes_from_file};
pub use lookup::WordLookup;
pub use tokenizer::{EOS, PAD, SENTINEL_PREFIX, SOS, TextTokenizer, UNK};
pub use train::TrainSpec;
