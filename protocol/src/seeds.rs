//! Every named seed stream of a job, in one place. All randomness of training derives from the
//! job seed through these functions (nothing is drawn from a global generator), which is why a
//! checkpoint stores no RNG state and why any world size sees the same samples, budgets, masks
//! and decoder orders. Each stream has its own salt so no two streams share a seed; changing a
//! salt or an argument changes the numbers of every run (the bitwise refactor proof,
//! `tools/refactor_proof/`, catches that).

use crate::ledger::mix;

/// A split whose data streams are drawn: held-out data gets streams of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training data.
    Train,
    /// The held-out split.
    Val,
}

impl Split {
    fn salt(self) -> u64 {
        match self {
            Split::Train => 0,
            Split::Val => 0x0076_616c, // "val"
        }
    }
}

/// The ledger's choice of record within dataset `dataset` in `epoch` (a Feistel key).
pub fn record_order(ledger_seed: u64, dataset: u64, epoch: u64) -> u64 {
    mix(&[ledger_seed, dataset, epoch, 0x7265_636f_7264]) // "record"
}

/// The ledger's dataset choices in block `block` of schedule version `version`.
pub fn schedule_block(ledger_seed: u64, version: u64, block: u64) -> u64 {
    mix(&[ledger_seed, version, block, 0x0062_6c6f_636b]) // "block"
}

/// The budget stream of the job's dataset number `dataset` (config order).
pub fn dataset_budget(job_seed: u64, dataset: u64) -> u64 {
    mix(&[job_seed, dataset, 0x6275_6467_6574]) // "budget"
}

/// The seed of the held-out split's ledger.
pub fn validation_ledger(job_seed: u64) -> u64 {
    mix(&[job_seed, 0x7661_6c69_6461_7465]) // "validate"
}

/// The masking stream of dataset number `dataset` in `split`.
pub fn masking(job_seed: u64, dataset: u64, split: Split) -> u64 {
    mix(&[job_seed, dataset, 0x6d61_736b, split.salt()]) // "mask"
}

/// The generator of a synthetic dataset's records in `split` (from its budget stream).
pub fn synthetic_records(budget_seed: u64, split: Split) -> u64 {
    mix(&[budget_seed, split.salt()])
}

/// The draws of one record's content (synthetic records, text sampling).
pub fn record_content(seed: u64, record: u64) -> u64 {
    mix(&[seed, record, 0x7265_636f_7264]) // "record"
}

/// The augmentation of one sample read from shards.
pub fn augmentation(seed: u64, sample: u64) -> u64 {
    mix(&[seed, sample, 0x6175_676d]) // "augm"
}

/// The decoder modality order of a training micro-batch whose first sample is `first_sample`.
pub fn decoder_order(job_seed: u64, step: u64, first_sample: u64) -> u64 {
    mix(&[job_seed, step, first_sample])
}

/// The decoder modality order of every validation pass of the job (fixed, so every evaluation
/// scores the same tokens).
pub fn validation_decoder_order(job_seed: u64) -> u64 {
    mix(&[job_seed, 0x6576_616c]) // "eval"
}

/// A prebuilt synthetic batch of `len` samples starting at `first_sample` (test sources).
pub fn synthetic_batch(seed: u64, first_sample: u64, len: u64) -> u64 {
    mix(&[seed, first_sample, len])
}

/// The job id of the collective handshake (the generation is added per generation).
pub fn job_id(job_seed: u64, name: &str) -> u64 {
    mix(&[job_seed, name.len() as u64])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_of_the_same_seed_differ() {
        let s = 11;
        let all = [
            record_order(s, 0, 0),
            schedule_block(s, 0, 0),
            dataset_budget(s, 0),
            validation_ledger(s),
            masking(s, 0, Split::Train),
            masking(s, 0, Split::Val),
            synthetic_records(s, Split::Val),
            record_content(s, 0),
            augmentation(s, 0),
            decoder_order(s, 0, 0),
            validation_decoder_order(s),
            job_id(s, "x"),
        ];
        let distinct: std::collections::BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
    }
}
