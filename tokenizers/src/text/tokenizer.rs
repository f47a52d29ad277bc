//! [`TextTokenizer`]: a loaded HF tokenizer plus the ids 4M's data path looks up.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rayon::prelude::*;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// The padding token of ml-4m's layout (id 0).
pub const PAD: &str = "[PAD]";
/// The unknown-word token of ml-4m's layout (id 1).
pub const UNK: &str = "[UNK]";
/// The start-of-sequence token of ml-4m's layout (id 2).
pub const SOS: &str = "[SOS]";
/// The end-of-sequence token of ml-4m's layout (id 3); appended by masking, not by encode.
pub const EOS: &str = "[EOS]";
/// Sentinel tokens are `[S_k]`; every vocabulary entry with this prefix is one.
pub const SENTINEL_PREFIX: &str = "[S_";

/// A text tokenizer read from (or trained into) a HuggingFace `tokenizer.json`.
///
/// Encoding is exactly `tokenizers.Tokenizer.encode(text).ids` as ml-4m calls it (the file's
/// own post-processor runs; ml-4m's file has none, so nothing is added: `[EOS]` is appended by
/// the masking code). Every error names the file.
pub struct TextTokenizer {
    inner: Tokenizer,
    origin: String,
    pad: Option<u32>,
    unk: Option<u32>,
    sos: Option<u32>,
    eos: Option<u32>,
    /// Sentinel index k -> id of `[S_k]`.
    sentinels: BTreeMap<u32, u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("sentinels", &self.sentinels.len())
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads a HuggingFace tokenizer JSON file (any model; ml-4m's is WordPiece).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        // Read ourselves so that a missing file is reported with its path.
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: origin.clone(), source })?;
        let inner = Tokenizer::from_bytes(bytes).map_err(|source| Error::Tokenizer { origin: origin.clone(), op: "load", source })?;
        Ok(Self::from_tokenizer(inner, origin))
    }

    /// A tokenizer that knows only `[PAD]` and `[UNK]`: for jobs without text modalities, where
    /// no vocabulary is needed but the masking API takes a tokenizer.
    pub fn without_vocabulary() -> Self {
        const JSON: &str = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
            "vocab":{"[PAD]":0,"[UNK]":1}}}"###;
        let inner = JSON.parse::<Tokenizer>().expect("the built-in minimal tokenizer JSON is valid");
        Self::from_tokenizer(inner, "<no vocabulary>")
    }

    /// Wraps an already built HF tokenizer; `origin` names it in errors.
    pub fn from_tokenizer(inner: Tokenizer, origin: impl Into<String>) -> Self {
        let vocab = inner.get_vocab(true);
        let sentinels = sentinel_mapping(&vocab);
        let id = |t: &str| inner.token_to_id(t);
        Self { pad: id(PAD), unk: id(UNK), sos: id(SOS), eos: id(EOS), sentinels, origin: origin.into(), inner }
    }

    /// Where this tokenizer came from (its file), as named in errors.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens (30000 for ml-4m's).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The whole vocabulary, added tokens included: token -> id.
    pub fn vocab(&self) -> HashMap<String, u32> {
        self.inner.get_vocab(true)
    }

    /// Contents of the added (special) tokens, in id order.
    pub fn added_tokens(&self) -> Vec<String> {
        let mut added: Vec<(u32, String)> = self.inner.get_added_tokens_decoder().into_iter().map(|(id, t)| (id, t.content)).collect();
        added.sort_unstable_by_key(|(id, _)| *id);
        added.into_iter().map(|(_, c)| c).collect()
    }

    /// Id of `[PAD]`, if the vocabulary has it.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Id of `[UNK]`, if the vocabulary has it.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// Id of `[SOS]`, if the vocabulary has it.
    pub fn sos_id(&self) -> Option<u32> {
        self.sos
    }

    /// Id of `[EOS]`, if the vocabulary has it.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Id of the sentinel `[S_k]` (span masking numbers them from 1), if present.
    pub fn sentinel_id(&self, k: u32) -> Option<u32> {
        self.sentinels.get(&k).copied()
    }

    /// All sentinels as (k, id), ascending k: ml-4m's `get_sentinel_to_id_mapping`.
    pub fn sentinels(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.sentinels.iter().map(|(&k, &id)| (k, id))
    }

    /// Id of the coordinate token `v{axis}={value}` (axis 0..=3, value < coord bins), if present.
    pub fn coord_id(&self, axis: u32, value: u32) -> Option<u32> {
        self.inner.token_to_id(&format!("v{axis}={value}"))
    }

    /// Id of a token (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of an id (added tokens included).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes one string to ids (ml-4m: `text_tokenizer.encode(text).ids`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // `encode_fast` skips offset tracking; the ids are those of `encode`.
        let enc = self.inner.encode_fast(text, true).map_err(|source| self.error("encode", source))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes many strings, in parallel on the current rayon pool (run it inside
    /// `ThreadPool::install` to choose the threads); the result is in input order.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Decodes ids to text with the file's decoder (ml-4m: WordPiece, `##` joined, cleanup on);
    /// `skip_special_tokens` drops every added special token (Python's default is true).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|source| self.error("decode", source))
    }

    /// Saves as HF tokenizer JSON (pretty, like Python's `Tokenizer.save`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.inner.save(path, true).map_err(|source| Error::Tokenizer { origin: path.display().to_string(), op: "save", source })
    }

    fn error(&self, op: &'static str, source: tokenizers::Error) -> Error {
        Error::Tokenizer { origin: self.origin.clone(), op, source }
    }
}

/// ml-4m's `get_sentinel_to_id_mapping`: every vocabulary entry `[S_k]`, keyed by k. Entries
/// that start with `[S_` but are not `[S_<integer>]` are not sentinels and are left out (where
/// ml-4m's `int(...)` would raise).
fn sentinel_mapping(vocab: &HashMap<String, u32>) -> BTreeMap<u32, u32> {
    vocab
        .iter()
        .filter_map(|(tok, &id)| {
            let k = tok.strip_prefix(SENTINEL_PREFIX)?.strip_suffix(']')?;
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((k.parse().ok()?, id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_mapping_parses_only_integer_sentinels() {
        let vocab: HashMap<String, u32> =
            [("[S_0]", 4), ("[S_12]", 16), ("[S_x]", 9), ("[S_]", 10), ("[S_3", 11), ("[SOS]", 2), ("s_1", 40)]
                .into_iter()
                .map(|(t, i)| (t.to_string(), i))
                .collect();
        let m = sentinel_mapping(&vocab);
        assert_eq!(m.into_iter().collect::<Vec<_>>(), [(0, 4), (12, 16)]);
    }

    #[test]
    fn missing_and_malformed_files_name_the_file() {
        let err = TextTokenizer::from_file("/nonexistent/tok.json").unwrap_err().to_string();
        assert!(err.contains("/nonexistent/tok.json"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("broken.json");
        std::fs::write(&bad, "{\"model\": 3}").unwrap();
        let err = TextTokenizer::from_file(&bad).unwrap_err().to_string();
        assert!(err.contains("broken.json") && err.contains("load"), "{err}");
    }
}
