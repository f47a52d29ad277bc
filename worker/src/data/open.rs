//! Builds the [`DataPipeline`] of a resolved job: one record reader, budget sampler and masker
//! per dataset.

use std::sync::Arc;

use tessera_protocol::job::{DatasetKind, ResolvedJob};
use tessera_protocol::seeds;
use tessera_protocol::{MixtureSchedule, SampleLedger};
use tessera_tokenizers::Modality;
use tessera_tokenizers::masking::{MaskingOptions, SampleMasker};
use tessera_tokenizers::mixture::BudgetSampler;
use tessera_tokenizers::text::TextTokenizer;

use super::pipeline::{DataPipeline, PipelineDataset};
use super::records::{RecordReader, SyntheticRecords};
use super::shard_records::{ShardRecords, TextRecords};
use crate::error::{DatasetProblem, Result, WorkerError};

/// Which split of the job's datasets to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training records (`path`).
    Train,
    /// The held-out records (`val_path`; synthetic datasets draw records with another seed).
    Val,
}

/// Opens every dataset of `job` for a model over `model_modalities`.
pub fn open_job_data(job: &ResolvedJob, model_modalities: &[Modality]) -> Result<DataPipeline> {
    Ok(open_split(job, model_modalities, Split::Train)?.0)
}

/// Opens the held-out split for validation: the pipeline over the datasets that have one, and
/// a ledger mixing them with their configured weights (its own seed, so the fixed validation
/// set is independent of training). `None` when no dataset has a held-out split.
pub fn open_val_data(job: &ResolvedJob, model_modalities: &[Modality]) -> Result<Option<(DataPipeline, SampleLedger)>> {
    let (pipeline, kept) = open_split(job, model_modalities, Split::Val)?;
    if kept.is_empty() {
        return Ok(None);
    }
    let weights: Vec<f64> = kept.iter().map(|&i| job.schedule.versions()[0].weights[i]).collect();
    let schedule = MixtureSchedule::new(weights)?;
    let ledger = SampleLedger::new(seeds::validation_ledger(job.seed), schedule, pipeline.dataset_lens())?;
    Ok(Some((pipeline, ledger)))
}

/// The pipeline of one split and the job positions of the datasets it holds.
fn open_split(job: &ResolvedJob, model_modalities: &[Modality], split: Split) -> Result<(DataPipeline, Vec<usize>)> {
    let tokenizer = Arc::new(match &job.text_tokenizer {
        Some(path) => TextTokenizer::from_file(path)?,
        None => TextTokenizer::without_vocabulary(),
    });
    let mut datasets = Vec::new();
    let mut kept = Vec::new();
    for (i, ds) in job.datasets.iter().enumerate() {
        if split == Split::Val && !ds.has_held_out() {
            continue;
        }
        let path = match (split, ds.kind) {
            (_, DatasetKind::Synthetic) => None,
            (Split::Train, _) => Some(ds.path.clone().ok_or_else(|| WorkerError::Dataset {
                origin: job.origin.clone(),
                dataset: ds.name.clone(),
                problem: DatasetProblem::NoPath,
            })?),
            (Split::Val, _) => ds.val_path.clone(),
        };
        let stream = if split == Split::Val { seeds::Split::Val } else { seeds::Split::Train };
        let budgets = BudgetSampler::new(ds.mixture.clone(), ds.budget)?;
        let masker = SampleMasker::new(
            budgets.modalities(),
            Arc::clone(&tokenizer),
            MaskingOptions { seed: seeds::masking(job.seed, i as u64, stream) },
        )?;
        let reader: Box<dyn RecordReader> = match (ds.kind, path) {
            (DatasetKind::Synthetic, _) => Box::new(SyntheticRecords::new(
                budgets.modalities(),
                &tokenizer,
                seeds::synthetic_records(ds.budget.seed, stream),
                ds.records,
            )),
            (DatasetKind::Shards, Some(p)) => Box::new(ShardRecords::open(&p, &ds.name_map, budgets.modalities(), ds.budget.seed)?),
            (DatasetKind::Text, Some(p)) => Box::new(TextRecords::open(&p, &ds.text_field)?),
            (_, None) => unreachable!("non-synthetic datasets always have a path here"),
        };
        if reader.is_empty() {
            let split = if split == Split::Val { "val" } else { "train" };
            return Err(WorkerError::Dataset {
                origin: job.origin.clone(),
                dataset: ds.name.clone(),
                problem: DatasetProblem::Empty { split },
            });
        }
        datasets.push(PipelineDataset { name: ds.name.clone(), reader, budgets, masker });
        kept.push(i);
    }
    Ok((DataPipeline::new(datasets, model_modalities.to_vec(), job.decode_threads, job.skip_bad_samples)?, kept))
}
