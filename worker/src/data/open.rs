//! Builds the [`DataPipeline`] of a resolved job: one record reader, budget sampler and masker
//! per dataset.

use std::sync::Arc;

use tessera_coordinator::job::{DatasetKind, ResolvedJob};
use tessera_coordinator::ledger::mix;
use tessera_tokenizers::Modality;
use tessera_tokenizers::masking::{MaskingOptions, SampleMasker};
use tessera_tokenizers::mixture::BudgetSampler;
use tessera_tokenizers::text::TextTokenizer;

use super::pipeline::{DataPipeline, PipelineDataset};
use super::records::{RecordReader, SyntheticRecords};
use super::shard_records::{ShardRecords, TextRecords};
use crate::error::{Result, WorkerError};

/// Opens every dataset of `job` for a model over `model_modalities`.
pub fn open_job_data(job: &ResolvedJob, model_modalities: &[Modality]) -> Result<DataPipeline> {
    let tokenizer = Arc::new(match &job.text_tokenizer {
        Some(path) => TextTokenizer::from_file(path)?,
        None => TextTokenizer::without_vocabulary(),
    });
    let path = |ds: &tessera_coordinator::job::ResolvedDataset| {
        ds.path
            .clone()
            .ok_or_else(|| WorkerError::Training { step: 0, reason: format!("{}: dataset '{}' has no path", job.origin, ds.name) })
    };
    let mut datasets = Vec::new();
    for (i, ds) in job.datasets.iter().enumerate() {
        let budgets = BudgetSampler::new(ds.mixture.clone(), ds.budget)?;
        let masker = SampleMasker::new(
            budgets.modalities(),
            Arc::clone(&tokenizer),
            MaskingOptions { seed: mix(&[job.seed, i as u64, 0x6d61_736b]) },
        )?;
        let reader: Box<dyn RecordReader> = match ds.kind {
            DatasetKind::Synthetic => Box::new(SyntheticRecords::new(budgets.modalities(), &tokenizer, ds.budget.seed, ds.records)),
            DatasetKind::Shards => Box::new(ShardRecords::open(&path(ds)?, &ds.name_map, budgets.modalities(), ds.budget.seed)?),
            DatasetKind::Text => Box::new(TextRecords::open(&path(ds)?, &ds.text_field)?),
        };
        if reader.is_empty() {
            return Err(WorkerError::Training { step: 0, reason: format!("{}: dataset '{}' has no records", job.origin, ds.name) });
        }
        datasets.push(PipelineDataset { name: ds.name.clone(), reader, budgets, masker });
    }
    DataPipeline::new(datasets, model_modalities.to_vec(), job.decode_threads, job.skip_bad_samples)
}
