//! [`WordLookup`]: a table-driven fast path for the texts 4M's data path mostly tokenizes
//! (coordinate tokens, class names, sentinels and plain lower-case words separated by single
//! spaces), giving exactly the ids of [`TextTokenizer::encode`] without its per-call cost.
//!
//! Why it is exact: on printable ASCII with words separated by single spaces, the WordPiece
//! pipeline (added-token extraction, BertNormalizer, BertPreTokenizer, WordPiece) works word by
//! word, except for added tokens that contain a space. A word then maps to one id when it is an
//! added token (case-sensitive for non-normalized ones, lower-cased for normalized ones), or when
//! its lower-cased form is an all-alphanumeric vocabulary entry, which WordPiece's
//! longest-match-first takes whole and which no single-word added token can split. Added tokens
//! that span words (`dining table`) are matched leftmost-longest over words joined by exactly
//! one space, as the extraction would match them. Every other text (other characters, unknown
//! or multi-piece words) is left to the full tokenizer.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::TextTokenizer;

/// FNV-1a: the keys are short words looked up hundreds of times per sample, where SipHash's
/// per-key setup dominates; HashDoS resistance is moot for a table built from the vocabulary.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type Map<V> = HashMap<String, V, BuildHasherDefault<Fnv>>;

/// Word → id tables for [`WordLookup::encode`].
#[derive(Debug, Clone, Default)]
pub struct WordLookup {
    /// Added tokens matched on the raw text (not normalized), by exact content.
    raw: Map<u32>,
    /// Normalized added tokens and whole-word vocabulary entries, by lower-case content.
    normalized: Map<u32>,
    /// Added tokens that span several words, by lower-cased first word, longest first:
    /// (words, whether normalized, id).
    multi_word: Map<Vec<(Vec<String>, bool, u32)>>,
}

impl WordLookup {
    /// Builds the tables from a tokenizer's vocabulary and added tokens.
    pub fn new(tok: &TextTokenizer) -> Self {
        let added = tok.inner().get_added_tokens_decoder();
        // Added tokens that may match inside a word: a vocabulary word containing one is unsafe.
        let breaking: Vec<String> = added.values().filter(|t| !t.single_word).map(|t| t.content.clone()).collect();
        // The model's own vocabulary (without added tokens): what WordPiece looks words up in.
        let mut normalized: Map<u32> = tok
            .inner()
            .get_vocab(false)
            .into_iter()
            .filter(|(w, _)| {
                let alnum = !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                let punct = w.len() == 1 && w.bytes().all(|b| b.is_ascii_punctuation());
                (alnum || punct) && !breaking.iter().any(|b| w.contains(b.as_str()))
            })
            .collect();
        let mut raw = Map::default();
        let mut multi_word: Map<Vec<(Vec<String>, bool, u32)>> = Map::default();
        for (id, t) in added {
            let c = &t.content;
            if c.is_empty() || !c.bytes().all(|b| (0x20..0x7f).contains(&b)) || t.lstrip || t.rstrip {
                continue;
            }
            if c.contains(' ') {
                let words: Vec<String> = c.split(' ').map(str::to_string).collect();
                // Runs of spaces inside a token cannot be matched word by word: leave it out,
                // and decline every text (below) rather than risk missing it.
                if words.iter().any(String::is_empty) {
                    return Self::default();
                }
                multi_word.entry(words[0].to_ascii_lowercase()).or_default().push((words, t.normalized, id));
            } else if t.normalized {
                normalized.insert(c.to_ascii_lowercase(), id);
            } else {
                // A raw token shadows a vocabulary entry of the same lower-cased text only when
                // the case matches; keep the vocabulary entry for other spellings.
                raw.insert(c.clone(), id);
            }
        }
        for list in multi_word.values_mut() {
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        }
        Self { raw, normalized, multi_word }
    }

    /// The multi-word added token starting at `items[0]` (whose lower-cased form is `first`;
    /// words separated by single spaces, none a raw added token, which the extraction would
    /// have split off first), longest first.
    fn multi_word_at(&self, first: &str, items: &[&str]) -> Option<(u32, usize)> {
        self.multi_word.get(first)?.iter().find_map(|(words, normalized, id)| {
            let hit = items.len() >= words.len()
                && words.iter().zip(items).all(|(w, item)| {
                    let same = if *normalized { item.eq_ignore_ascii_case(w) } else { item == w };
                    same && !self.raw.contains_key(*item)
                });
            hit.then_some((*id, words.len()))
        })
    }

    /// Appends the ids of `text` to `out` and returns true when every word is in the tables;
    /// otherwise returns false and leaves `out` as it was.
    pub fn encode(&self, text: &str, out: &mut Vec<i64>) -> bool {
        let start = out.len();
        if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return false;
        }
        if self.raw.is_empty() && self.normalized.is_empty() {
            return false;
        }
        let mut lower = String::new();
        // Consecutive items of the split are separated by exactly one space; extra spaces show
        // up as empty items.
        let items: Vec<&str> = text.split(' ').collect();
        let mut i = 0;
        while i < items.len() {
            let word = items[i];
            i += 1;
            if word.is_empty() {
                continue;
            }
            if let Some(&id) = self.raw.get(word) {
                out.push(i64::from(id));
                continue;
            }
            let key = if word.bytes().any(|b| b.is_ascii_uppercase()) {
                lower.clear();
                lower.push_str(word);
                lower.make_ascii_lowercase();
                lower.as_str()
            } else {
                word
            };
            if let Some((id, n)) = self.multi_word_at(key, &items[i - 1..]) {
                out.push(i64::from(id));
                i += n - 1;
                continue;
            }
            match self.normalized.get(key) {
                Some(&id) => out.push(i64::from(id)),
                None => {
                    out.truncate(start);
                    return false;
                }
            }
        }
        true
    }
}
