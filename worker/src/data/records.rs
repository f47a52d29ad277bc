//! Per-dataset record readers: each produces one sample's transformed modality values
//! (ml-4m's output of `UnifiedDataTransform`, the input of masking).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_protocol::SampleRef;
use tessera_tokenizers::Modality;
use tessera_tokenizers::masking::SampleValues;
use tessera_tokenizers::masking::synthetic::SyntheticSource;
use tessera_tokenizers::text::TextTokenizer;

use crate::error::Result;

/// Reads and transforms records of one dataset. Must be pure in the reference: the values of a
/// sample (its record, and the augmentation drawn for its global index) never depend on order.
pub trait RecordReader: Send + Sync {
    /// Number of records.
    fn len(&self) -> u64;

    /// True when the dataset has no records.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The transformed values of sample `r` (record `r.record`, augmentation by `r.index`).
    fn values(&self, r: &SampleRef) -> Result<SampleValues>;
}

/// Seeded random records with format-valid values for every modality: record `k` always has the
/// same values (like a stored dataset), drawn from a stream keyed by (dataset seed, k).
#[derive(Debug, Clone)]
pub struct SyntheticRecords {
    source: SyntheticSource,
    seed: u64,
    records: u64,
}

impl SyntheticRecords {
    /// `records` synthetic records over `modalities`.
    pub fn new(modalities: &[Modality], tokenizer: &TextTokenizer, seed: u64, records: u64) -> Self {
        Self { source: SyntheticSource::new(modalities, tokenizer), seed, records }
    }
}

impl RecordReader for SyntheticRecords {
    fn len(&self) -> u64 {
        self.records
    }

    fn values(&self, r: &SampleRef) -> Result<SampleValues> {
        let mut rng = ChaCha8Rng::seed_from_u64(tessera_protocol::seeds::record_content(self.seed, r.record));
        Ok(self.source.sample(&mut rng))
    }
}
