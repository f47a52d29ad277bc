//! [`SampleMasker`]: masks every modality of one sample given its [`SampleBudget`] (ml-4m
//! `UnifiedMasking.__call__` after the budget draw), filling missing modalities with empties.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::mixture::SampleBudget;
use crate::modality::{Modality, ModalityKind};
use crate::text::{EOS, PAD, TextTokenizer, WordLookup};

use super::image::image_mask;
use super::masked::{MaskedModality, MaskedTensor};
use super::sequence::{ModalityBudget, Scratch, TextIds, mask_embeddings, mask_sequence};
use super::span::{Sentinels, Units};
use super::value::ModalityValue;

/// One sample's transformed values, by modality.
pub type SampleValues = BTreeMap<Modality, ModalityValue>;

/// One sample's masked modalities, by modality (every modality of the masker).
pub type MaskedSample = BTreeMap<Modality, MaskedModality>;

/// Tag mixed into the masking key so that its streams never coincide with the budget sampler's
/// (whose key is `ChaCha8Rng::seed_from_u64(seed)`), even for the same seed.
const MASKING_KEY_TAG: &[u8; 24] = b"tessera/masking/v1\0\0\0\0\0\0";

/// The masking random stream of global sample `index`: ChaCha8 keyed by the seed's 8
/// little-endian bytes followed by [`MASKING_KEY_TAG`], stream id `index`. A pure function of
/// (seed, index), independent of the budget sampler's stream for the same (seed, index).
pub fn masking_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..].copy_from_slice(MASKING_KEY_TAG);
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(index);
    rng
}

/// Settings of a [`SampleMasker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaskingOptions {
    /// Seed of every sample's masking stream (see [`masking_rng`]).
    pub seed: u64,
}

/// Masks samples over a fixed modality list; cheap to share between threads.
#[derive(Debug, Clone)]
pub struct SampleMasker {
    modalities: Vec<Modality>,
    tokenizer: Arc<TextTokenizer>,
    /// Table fast path in front of the tokenizer (same ids; most data-path texts hit it).
    words: Arc<WordLookup>,
    ids: TextIds,
    options: MaskingOptions,
}

impl SampleMasker {
    /// A masker over `modalities` in the order of every [`SampleBudget`] vector (the
    /// [`crate::mixture::BudgetSampler::modalities`] order). The tokenizer must have `[PAD]`,
    /// `[EOS]` and `[S_1]` when a sequence modality is present.
    pub fn new(modalities: &[Modality], tokenizer: Arc<TextTokenizer>, options: MaskingOptions) -> Result<Self> {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = modalities.iter().find(|m| !seen.insert(**m)) {
            return Err(Error::MaskSetup { reason: format!("modality {dup} is listed twice") });
        }
        let has_seq = modalities.iter().any(|m| m.kind() == ModalityKind::Sequence);
        let need = |tok: &str, id: Option<u32>| match (id, has_seq) {
            (Some(id), _) => Ok(i64::from(id)),
            // Without text modalities the ids are never written.
            (None, false) => Ok(0),
            (None, true) => Err(Error::MaskSetup { reason: format!("tokenizer {} has no {tok} token", tokenizer.origin()) }),
        };
        let ids = TextIds {
            pad: need(PAD, tokenizer.pad_id())?,
            eos: need(EOS, tokenizer.eos_id())?,
            sentinels: Sentinels::new(tokenizer.sentinels()),
        };
        if has_seq && ids.sentinels.id(1).is_none() {
            return Err(Error::MaskSetup { reason: format!("tokenizer {} has no sentinel [S_1]", tokenizer.origin()) });
        }
        let words = Arc::new(if has_seq { WordLookup::new(&tokenizer) } else { WordLookup::default() });
        Ok(Self { modalities: modalities.to_vec(), tokenizer, words, ids, options })
    }

    /// The modalities, in budget order.
    pub fn modalities(&self) -> &[Modality] {
        &self.modalities
    }

    /// The settings.
    pub fn options(&self) -> MaskingOptions {
        self.options
    }

    /// The text tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Masks one sample with the stream of its budget's index ([`masking_rng`]): the same
    /// (seed, index, values, budget) give the same masked sample in any process and order.
    pub fn mask(&self, values: SampleValues, budget: &SampleBudget) -> Result<MaskedSample> {
        self.mask_with_rng(values, budget, &mut masking_rng(self.options.seed, budget.index))
    }

    /// Masks one sample with a caller-supplied random stream. Values of modalities outside the
    /// masker are ignored (as ml-4m ignores extra keys); missing ones become empties.
    pub fn mask_with_rng(&self, mut values: SampleValues, budget: &SampleBudget, rng: &mut impl Rng) -> Result<MaskedSample> {
        let n = self.modalities.len();
        if budget.input.len() != n || budget.target.len() != n || budget.keep.len() != n {
            return Err(Error::MaskSetup {
                reason: format!(
                    "budget of sample {} has {}/{}/{} input/target/keep entries for {n} modalities",
                    budget.index,
                    budget.input.len(),
                    budget.target.len(),
                    budget.keep.len()
                ),
            });
        }
        let mut scratch = Scratch::default();
        let mut out = MaskedSample::new();
        for (j, &m) in self.modalities.iter().enumerate() {
            let masked = match values.remove(&m) {
                None => MaskedModality::empty(m),
                Some(v) => {
                    let b = ModalityBudget { input: budget.input[j], target: budget.target[j], keep: budget.keep[j] };
                    self.mask_one(rng, m, v, b, &mut scratch)?
                }
            };
            out.insert(m, masked);
        }
        Ok(out)
    }

    /// Every modality empty (a sample with no data, e.g. for padding a batch).
    pub fn empty(&self) -> MaskedSample {
        self.modalities.iter().map(|&m| (m, MaskedModality::empty(m))).collect()
    }

    fn mask_one(
        &self,
        rng: &mut impl Rng,
        m: Modality,
        value: ModalityValue,
        b: ModalityBudget,
        scratch: &mut Scratch,
    ) -> Result<MaskedModality> {
        value.validate(m)?;
        let s = m.spec();
        match value {
            ModalityValue::Tokens(ids) => self.mask_image(rng, m, b, MaskedTensor::Ids(ids)),
            ModalityValue::Pixels(data) => {
                let shape = vec![s.channels, s.image_size, s.image_size];
                self.mask_image(rng, m, b, MaskedTensor::Floats { data, shape })
            }
            ModalityValue::Text(text) => {
                let mut tokens = self.encode(m, &text)?;
                // EOS before truncation: a long sequence loses its EOS (pitfall 4).
                tokens.push(self.ids.eos);
                tokens.truncate(s.max_tokens);
                mask_sequence(rng, s, Units { tokens: &tokens, lens: None }, b, &self.ids, scratch)
            }
            ModalityValue::Chunks(chunks) => {
                let (tokens, lens) = self.encode_chunks(m, &chunks)?;
                mask_sequence(rng, s, Units { tokens: &tokens, lens: Some(&lens) }, b, &self.ids, scratch)
            }
            ModalityValue::Embeddings { rows, dim, data } => Ok(mask_embeddings(rng, s, (rows, dim, data), b.input, b.keep, scratch)),
        }
    }

    /// Image-like masking; the data is passed through untouched.
    fn mask_image(&self, rng: &mut impl Rng, m: Modality, b: ModalityBudget, tensor: MaskedTensor) -> Result<MaskedModality> {
        let n = m.spec().max_tokens;
        if b.input + b.target > n {
            return Err(Error::MaskBudget {
                modality: m.key(),
                reason: format!("input {} + target {} exceed the {n} positions (targets must be disjoint from inputs)", b.input, b.target),
            });
        }
        let masks = image_mask(rng, n, b.input, b.target);
        Ok(MaskedModality { tensor, input_mask: masks.input, target_mask: masks.target, decoder_attention_mask: masks.dam })
    }

    fn encode(&self, m: Modality, text: &str) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        if self.words.encode(text, &mut out) {
            return Ok(out);
        }
        let ids = self.tokenizer.encode(text).map_err(|e| Error::MaskValue { modality: m.key(), reason: e.to_string() })?;
        Ok(ids.into_iter().map(i64::from).collect())
    }

    /// Chunks tokenized one by one, plus `[EOS]` as a final chunk, keeping the prefix whose
    /// cumulative token count stays within `max_tokens` (ml-4m drops every chunk past it).
    fn encode_chunks(&self, m: Modality, chunks: &[String]) -> Result<(Vec<i64>, Vec<usize>)> {
        let max = m.spec().max_tokens;
        let mut tokens = Vec::new();
        let mut lens = Vec::with_capacity(chunks.len() + 1);
        for chunk in chunks {
            let ids = self.encode(m, chunk)?;
            if tokens.len() + ids.len() > max {
                return Ok((tokens, lens));
            }
            tokens.extend_from_slice(&ids);
            lens.push(ids.len());
        }
        if tokens.len() < max {
            tokens.push(self.ids.eos);
            lens.push(1);
        }
        Ok((tokens, lens))
    }
}
