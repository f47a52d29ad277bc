//! Training a WordPiece text tokenizer the way ml-4m's `train_wordpiece_tokenizer.py` does
//! (`fourm/utils/tokenizer/text_tokenizer.py: train_unified_wordpiece_tokenizer`).

use std::collections::HashSet;
use std::path::Path;

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

use super::classes::COCO_CLASSES;
use super::tokenizer::{EOS, PAD, SOS, TextTokenizer, UNK};
use crate::error::{Error, Result};

/// The continuing-subword prefix of the model, trainer and decoder.
const WORDPIECE_PREFIX: &str = "##";

/// What to train: ml-4m's command-line options, with its defaults in [`TrainSpec::default`].
///
/// The resulting id layout is `[PAD]`=0 `[UNK]`=1 `[SOS]`=2 `[EOS]`=3, then `[S_0]` ..
/// `[S_{num_sentinels-1}]`, then `v0=0` .. `v0={coord_bins-1}`, `v1=…`, `v2=…`, `v3=…`, then the
/// object classes in the given order, then the learned WordPiece vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainSpec {
    /// Total vocabulary size, special tokens included (ml-4m: 30000).
    pub vocab_size: usize,
    /// Number of sentinel tokens `[S_k]` (ml-4m: 200).
    pub num_sentinels: usize,
    /// Coordinate bins per axis: tokens `v0=0..v3={coord_bins-1}` (ml-4m: 1000).
    pub coord_bins: usize,
    /// Object-class names, each one whole token matched after normalisation (ml-4m: the 80
    /// COCO names; empty for ml-4m's `--object_classes none`).
    pub object_classes: Vec<String>,
    /// Lowercase in the BertNormalizer (ml-4m: true; `--no_lowercase` turns it off).
    pub lowercase: bool,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            vocab_size: 30_000,
            num_sentinels: 200,
            coord_bins: 1000,
            object_classes: COCO_CLASSES.iter().map(|c| c.to_string()).collect(),
            lowercase: true,
        }
    }
}

impl TrainSpec {
    /// Number of special (added) tokens this spec lays out before the learned vocabulary.
    pub fn num_special_tokens(&self) -> usize {
        4 + self.num_sentinels + 4 * self.coord_bins + self.object_classes.len()
    }

    /// The special tokens in id order, flagged as ml-4m flags them: sentinels and coordinates
    /// single-word and not normalised, object classes single-word and normalised.
    fn special_tokens(&self) -> Vec<AddedToken> {
        let mut tokens: Vec<AddedToken> = [PAD, UNK, SOS, EOS].iter().map(|t| AddedToken::from(*t, true)).collect();
        let plain = |s: String| AddedToken::from(s, true).single_word(true).normalized(false);
        tokens.extend((0..self.num_sentinels).map(|k| plain(format!("[S_{k}]"))));
        for axis in 0..4 {
            tokens.extend((0..self.coord_bins).map(|n| plain(format!("v{axis}={n}"))));
        }
        tokens.extend(self.object_classes.iter().map(|c| AddedToken::from(c.clone(), true).single_word(true).normalized(true)));
        tokens
    }

    fn validate(&self) -> Result<()> {
        let specials = self.num_special_tokens();
        if self.vocab_size <= specials {
            return Err(Error::TrainSpec {
                field: "vocab_size",
                reason: format!("{} leaves no room for a learned vocabulary after {specials} special tokens", self.vocab_size),
            });
        }
        let mut seen = HashSet::new();
        for c in &self.object_classes {
            if c.trim().is_empty() || c.trim() != c {
                return Err(Error::TrainSpec { field: "object_classes", reason: format!("class name {c:?} is empty or padded") });
            }
            if !seen.insert(c.as_str()) {
                return Err(Error::TrainSpec { field: "object_classes", reason: format!("class name {c:?} is listed twice") });
            }
        }
        Ok(())
    }
}

impl TextTokenizer {
    /// Trains a WordPiece tokenizer on text files (one or more sequences per line) exactly as
    /// ml-4m's `train_unified_wordpiece_tokenizer` does: BertNormalizer(clean_text,
    /// handle_chinese_chars, strip_accents unset, `lowercase`), BertPreTokenizer, WordPiece with
    /// `[UNK]` and `##`, min_frequency 0, the WordPiece decoder, no post-processor.
    pub fn train<P: AsRef<Path>>(files: &[P], spec: &TrainSpec) -> Result<Self> {
        spec.validate()?;
        if files.is_empty() {
            return Err(Error::TrainSpec { field: "files", reason: "no training files".into() });
        }
        let mut names = Vec::with_capacity(files.len());
        for f in files {
            let f = f.as_ref();
            let name = f.display().to_string();
            // The trainer's own I/O errors carry no path: check each file first.
            std::fs::File::open(f).map_err(|source| Error::Io { path: name.clone(), source })?;
            names.push(name);
        }
        let origin = format!("text tokenizer trained on {}", names.join(", "));
        let err = |op| {
            let origin = origin.clone();
            move |source| Error::Tokenizer { origin, op, source }
        };

        let model = WordPiece::builder()
            .unk_token(UNK.into())
            .continuing_subword_prefix(WORDPIECE_PREFIX.into())
            .build()
            .map_err(err("build the WordPiece model"))?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer
            .with_normalizer(Some(BertNormalizer::new(true, true, None, spec.lowercase)))
            .map_err(err("set the normalizer"))?
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_decoder(Some(WordPieceDecoder::new(WORDPIECE_PREFIX.into(), true)));
        let mut trainer: TrainerWrapper = WordPieceTrainer::builder()
            .vocab_size(spec.vocab_size)
            .min_frequency(0)
            .show_progress(false)
            .continuing_subword_prefix(WORDPIECE_PREFIX.into())
            .special_tokens(spec.special_tokens())
            .build()
            .into();
        tokenizer.train_from_files(&mut trainer, names).map_err(err("train"))?;
        Ok(Self::from_tokenizer(tokenizer, origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_ml4m_layout_size() {
        // reference §2.1: 4284 added tokens in ml-4m's published tokenizer.
        assert_eq!(TrainSpec::default().num_special_tokens(), 4284);
        let specials = TrainSpec::default().special_tokens();
        assert_eq!(specials[5].content, "[S_1]");
        assert_eq!(specials[204 + 1000 * 3 + 999].content, "v3=999");
        assert_eq!(specials[4231].content, "dining table");
        assert!(specials[4231].normalized && specials[4231].single_word && specials[4231].special);
        assert!(!specials[5].normalized && specials[5].single_word);
        assert!(!specials[0].normalized && !specials[0].single_word);
    }

    #[test]
    fn invalid_specs_are_refused() {
        let small = TrainSpec { vocab_size: 4284, ..TrainSpec::default() };
        assert!(matches!(small.validate(), Err(Error::TrainSpec { field: "vocab_size", .. })));
        let dup = TrainSpec { object_classes: vec!["cat".into(), "cat".into()], ..TrainSpec::default() };
        assert!(matches!(dup.validate(), Err(Error::TrainSpec { field: "object_classes", .. })));
        let err = TextTokenizer::train(&["/nonexistent/corpus.txt"], &TrainSpec::default()).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/corpus.txt"), "{err}");
    }
}
