//! Reads and decodes many records on a dedicated thread pool, preserving the requested order.
//!
//! The pool is owned (not rayon's global one) so the loader's decode parallelism is an explicit
//! setting that does not compete with other rayon users such as the index build.

use rayon::prelude::*;

use super::dataset::{DecodedRecord, RawRecord, ShardDataset};
use crate::error::{Error, Result};

/// A fixed-size pool for parallel record reading and decoding.
pub struct ParallelReader {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl std::fmt::Debug for ParallelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelReader").field("threads", &self.threads).finish()
    }
}

impl ParallelReader {
    /// A pool of `threads` workers (at least one).
    pub fn new(threads: usize) -> Result<Self> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("shard-decode-{i}"))
            .build()
            .map_err(|e| Error::ThreadPool { threads, reason: e.to_string() })?;
        Ok(Self { pool, threads })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Applies `f` to every index in parallel; results come back in `indices` order, and on
    /// failure the error of the earliest failing index is returned (deterministically).
    pub fn map<T, F>(&self, indices: &[usize], f: F) -> Result<Vec<T>>
    where
        T: Send,
        F: Fn(usize) -> Result<T> + Sync,
    {
        let results: Vec<Result<T>> = self.pool.install(|| indices.par_iter().map(|&i| f(i)).collect());
        results.into_iter().collect()
    }

    /// Reads records (undecoded) in parallel.
    pub fn read_raw(&self, ds: &ShardDataset, indices: &[usize]) -> Result<Vec<RawRecord>> {
        self.map(indices, |i| ds.read(i))
    }

    /// Reads and decodes records in parallel.
    pub fn read_decoded(&self, ds: &ShardDataset, indices: &[usize]) -> Result<Vec<DecodedRecord>> {
        self.map(indices, |i| ds.read_decoded(i))
    }
}
