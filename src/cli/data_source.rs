//! The batch source of a job: the real data path, or (for benchmarks) pre-built synthetic batches.

use tessera_model::FourMConfig;
use tessera_protocol::ResolvedJob;
use tessera_worker::data::{DataPipeline, open_job_data};

/// Opens the job's data pipeline for the model `cfg`.
pub fn open(job: &ResolvedJob, cfg: &FourMConfig) -> anyhow::Result<DataPipeline> {
    Ok(open_job_data(job, &cfg.all_domains())?)
}
