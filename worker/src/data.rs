//! The data path: ledger sample references → records read from their dataset → transformed
//! modality values → 4M masking with the dataset's budget policy → collated tch tensors.
//!
//! - [`records`]: per-dataset readers producing one sample's transformed values.
//! - [`pipeline`]: [`DataPipeline`], the [`crate::BatchSource`] that runs the per-sample work
//!   in parallel and collates.
//! - [`tensors`]: turns a collated batch of flat buffers into a `MaskedBatch`.

pub mod open;
pub mod pipeline;
pub mod records;
pub mod shard_records;
pub mod tensors;

pub use open::{Split, open_job_data, open_val_data};
pub use pipeline::DataPipeline;
pub use records::{RecordReader, SyntheticRecords};
pub use shard_records::{ShardRecords, TextRecords};
