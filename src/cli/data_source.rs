//! The batch source of a job: one per dataset kind, mixed by the ledger.

use std::collections::BTreeMap;

use anyhow::bail;
use tessera_coordinator::job::{DatasetKind, ResolvedJob};
use tessera_coordinator::{DatasetId, SampleRef};
use tessera_model::{FourMConfig, MaskedBatch};
use tessera_worker::{BatchSource, PrebuiltSynthetic};

/// Routes each micro-batch to the source of its dataset.
pub struct JobSource {
    sources: BTreeMap<DatasetId, PrebuiltSynthetic>,
    lens: Vec<u64>,
}

impl JobSource {
    /// Opens every dataset of `job`.
    pub fn open(job: &ResolvedJob, cfg: &FourMConfig) -> anyhow::Result<Self> {
        let mut sources = BTreeMap::new();
        let mut lens = Vec::new();
        for (i, ds) in job.datasets.iter().enumerate() {
            match ds.kind {
                DatasetKind::Synthetic => {
                    let t = &job.train;
                    sources.insert(
                        DatasetId(i as u16),
                        PrebuiltSynthetic::new(cfg.clone(), ds.budget.seed, t.num_input_tokens, t.num_target_tokens),
                    );
                    lens.push(ds.records);
                }
                other => bail!("{}: dataset '{}': kind {other:?} is not wired into `tessera train` yet", job.origin, ds.name),
            }
        }
        Ok(Self { sources, lens })
    }

    /// Records per dataset, in job order.
    pub fn dataset_lens(&self) -> Vec<u64> {
        self.lens.clone()
    }
}

impl BatchSource for JobSource {
    fn batch(&mut self, refs: &[SampleRef]) -> tessera_worker::Result<MaskedBatch> {
        // Every sample of a mixed batch must come out of one collation; with only whole-batch
        // sources available the batch is produced by the first sample's dataset.
        let d = refs.first().map_or(DatasetId(0), |r| r.dataset);
        let src = self.sources.get_mut(&d).expect("every dataset has a source");
        src.batch(refs)
    }
}
