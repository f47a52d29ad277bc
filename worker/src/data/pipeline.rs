//! [`DataPipeline`]: the [`BatchSource`] of real jobs. For each sample of a micro-batch (in
//! parallel on a dedicated thread pool): read its record, draw its budget from the dataset's
//! mixture (pure in the global index), mask it, fill the model's other modalities with empties;
//! then collate in order and build tensors.

use std::sync::Arc;

use rayon::prelude::*;
use tessera_model::MaskedBatch;
use tessera_protocol::SampleRef;
use tessera_tokenizers::Modality;
use tessera_tokenizers::masking::{MaskedModality, MaskedSample, SampleMasker, collate};
use tessera_tokenizers::mixture::BudgetSampler;

use super::records::RecordReader;
use super::tensors::to_masked_batch;
use crate::error::{Result, WorkerError};
use crate::source::BatchSource;

/// One dataset of the pipeline.
pub struct PipelineDataset {
    /// Name (for errors).
    pub name: String,
    /// Record reader.
    pub reader: Box<dyn RecordReader>,
    /// Budget policy.
    pub budgets: BudgetSampler,
    /// Masker over the budget's modalities.
    pub masker: SampleMasker,
}

/// Turns ledger references into masked batches; see the module docs.
pub struct DataPipeline {
    datasets: Vec<PipelineDataset>,
    model_modalities: Vec<Modality>,
    pool: rayon::ThreadPool,
    skip_bad_samples: bool,
    skipped: Arc<std::sync::atomic::AtomicU64>,
}

impl DataPipeline {
    /// A pipeline over `datasets` (indexed by `SampleRef::dataset`) producing batches with
    /// every modality of `model_modalities`, decoding on `threads` threads.
    pub fn new(datasets: Vec<PipelineDataset>, model_modalities: Vec<Modality>, threads: usize, skip_bad_samples: bool) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("tessera-data-{i}"))
            .build()
            .map_err(|e| WorkerError::Thread { thread: "the data thread pool", detail: format!("cannot start: {e}") })?;
        Ok(Self { datasets, model_modalities, pool, skip_bad_samples, skipped: Arc::default() })
    }

    /// Records per dataset.
    pub fn dataset_lens(&self) -> Vec<u64> {
        self.datasets.iter().map(|d| d.reader.len()).collect()
    }

    /// The masked sample of one reference, with every model modality present.
    pub fn sample(&self, r: &SampleRef) -> Result<MaskedSample> {
        let d = &self.datasets[r.dataset.0 as usize];
        let err = |reason: String| WorkerError::Sample { index: r.index, dataset: d.name.clone(), record: r.record, reason };
        let values = d.reader.values(r).map_err(|e| err(e.to_string()))?;
        let budget = d.budgets.sample(r.index);
        let mut masked = d.masker.mask(values, &budget).map_err(|e| err(e.to_string()))?;
        self.complete(&mut masked);
        Ok(masked)
    }

    /// Adds empties for model modalities the dataset lacks and drops any it has extra.
    fn complete(&self, s: &mut MaskedSample) {
        s.retain(|m, _| self.model_modalities.contains(m));
        for &m in &self.model_modalities {
            s.entry(m).or_insert_with(|| MaskedModality::empty(m));
        }
    }

    /// The masked samples of `refs`, in order; bad samples become all-empty samples (which add
    /// nothing to the loss) when skipping is on.
    pub fn samples(&self, refs: &[SampleRef]) -> Result<Vec<MaskedSample>> {
        let results: Vec<Result<MaskedSample>> = self.pool.install(|| refs.par_iter().map(|r| self.sample(r)).collect());
        results
            .into_iter()
            .map(|r| match r {
                Err(e) if self.skip_bad_samples => {
                    tracing::warn!("skipping bad sample: {e}");
                    self.skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut empty = MaskedSample::new();
                    self.complete(&mut empty);
                    Ok(empty)
                }
                other => other,
            })
            .collect()
    }
}

impl BatchSource for DataPipeline {
    fn batch(&mut self, refs: &[SampleRef]) -> Result<MaskedBatch> {
        let samples = self.samples(refs)?;
        Ok(to_masked_batch(collate(&samples)?))
    }

    fn skipped_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.skipped)
    }
}
