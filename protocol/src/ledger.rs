//! The global sample ledger: which record of which dataset is global sample `i`.
//!
//! Determinism contract (architecture.md): the dataset, the record inside it and its epoch are
//! pure functions of (job seed, `i`, mixture schedule). World size only decides how a step's
//! index range `[s·B, (s+1)·B)` is split, so resume and resize never skip or repeat data.
//!
//! How: the index space of every schedule version is cut into blocks of [`BLOCK`] samples. A
//! block holds each dataset exactly its largest-remainder share of the weights, in an order
//! shuffled by (seed, version, block). A dataset's *local counter* at `i` (how many of its
//! samples came before) is therefore computable in O(block) without replaying history; the
//! counter walks a seeded Feistel permutation of the dataset's records, one permutation per
//! epoch, so every record is used once per epoch and no permutation table is stored.

use std::fmt;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ProtocolError, Result};

/// Samples per block of the apportionment; weights are honoured exactly within each block.
pub const BLOCK: u64 = 1024;

/// Position of a dataset in the job's dataset list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DatasetId(pub u16);

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dataset#{}", self.0)
    }
}

/// One version of the dataset mixture, in force from global sample `start_index` on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleVersion {
    /// Version number (0 for the job's initial mixture, +1 per change).
    pub version: u32,
    /// First global sample index this version applies to.
    pub start_index: u64,
    /// Relative weight per dataset (need not sum to 1; zero disables a dataset).
    pub weights: Vec<f64>,
}

/// The mixture over time: versions ordered by start index; the first starts at 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureSchedule {
    versions: Vec<ScheduleVersion>,
}

impl MixtureSchedule {
    /// A schedule with one version from sample 0 on.
    pub fn new(weights: Vec<f64>) -> Result<Self> {
        check_weights(&weights, None)?;
        Ok(Self { versions: vec![ScheduleVersion { version: 0, start_index: 0, weights }] })
    }

    /// Adds a version taking effect at `start_index` (after every existing version's start).
    pub fn push(&mut self, start_index: u64, weights: Vec<f64>) -> Result<u32> {
        let last = self.versions.last().expect("a schedule has a version");
        check_weights(&weights, Some(last.weights.len()))?;
        if start_index <= last.start_index {
            return Err(ProtocolError::Schedule {
                reason: format!(
                    "version starting at sample {start_index} is not after version {} (sample {})",
                    last.version, last.start_index
                ),
            });
        }
        let version = last.version + 1;
        self.versions.push(ScheduleVersion { version, start_index, weights });
        Ok(version)
    }

    /// The versions, oldest first.
    pub fn versions(&self) -> &[ScheduleVersion] {
        &self.versions
    }

    /// Number of datasets.
    pub fn num_datasets(&self) -> usize {
        self.versions[0].weights.len()
    }

    /// Position in `versions()` of the version in force at sample `index`.
    fn position_at(&self, index: u64) -> usize {
        self.versions.partition_point(|v| v.start_index <= index) - 1
    }
}

fn check_weights(weights: &[f64], expected_len: Option<usize>) -> Result<()> {
    let err = |reason: String| Err(ProtocolError::Schedule { reason });
    if let Some(n) = expected_len
        && weights.len() != n
    {
        return err(format!("{} weights for {n} datasets", weights.len()));
    }
    if weights.is_empty() {
        return err("no datasets".into());
    }
    if weights.len() > u16::MAX as usize {
        return err(format!("{} datasets (at most {})", weights.len(), u16::MAX));
    }
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite() || **w < 0.0) {
        return err(format!("weight {i} is {w}; weights must be finite and >= 0"));
    }
    if weights.iter().sum::<f64>() <= 0.0 {
        return err("all weights are 0".into());
    }
    Ok(())
}

/// Where global sample `index` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRef {
    /// Global sample index.
    pub index: u64,
    /// The dataset.
    pub dataset: DatasetId,
    /// Record index inside the dataset.
    pub record: u64,
    /// How many full passes over the dataset came before this sample.
    pub epoch: u64,
    /// Schedule version in force.
    pub schedule_version: u32,
}

/// Per-version apportionment, precomputed.
#[derive(Debug, Clone)]
struct Segment {
    start: u64,
    /// Samples per block for each dataset (sum = BLOCK).
    per_block: Vec<u64>,
    /// Each dataset's local counter at `start`.
    offset: Vec<u64>,
}

/// Maps global sample indices to dataset records; see the module docs.
#[derive(Debug, Clone)]
pub struct SampleLedger {
    seed: u64,
    schedule: MixtureSchedule,
    lens: Vec<u64>,
    segments: Vec<Segment>,
}

impl SampleLedger {
    /// A ledger over datasets of `lens` records; a dataset with positive weight must be non-empty.
    pub fn new(seed: u64, schedule: MixtureSchedule, lens: Vec<u64>) -> Result<Self> {
        if lens.len() != schedule.num_datasets() {
            return Err(ProtocolError::Schedule {
                reason: format!("{} dataset sizes for {} datasets", lens.len(), schedule.num_datasets()),
            });
        }
        let mut segments: Vec<Segment> = Vec::new();
        for v in schedule.versions() {
            let per_block = apportion(&v.weights, BLOCK);
            if let Some(d) = (0..lens.len()).find(|&d| per_block[d] > 0 && lens[d] == 0) {
                return Err(ProtocolError::Schedule { reason: format!("dataset {d} has weight {} but no records", v.weights[d]) });
            }
            let offset = match segments.last() {
                None => vec![0; lens.len()],
                Some(prev) => {
                    let prev_version = schedule.versions()[segments.len() - 1].version;
                    let counts = count_in(seed, prev_version, &prev.per_block, v.start_index - prev.start);
                    prev.offset.iter().zip(counts).map(|(o, c)| o + c).collect()
                }
            };
            segments.push(Segment { start: v.start_index, per_block, offset });
        }
        Ok(Self { seed, schedule, lens, segments })
    }

    /// The schedule.
    pub fn schedule(&self) -> &MixtureSchedule {
        &self.schedule
    }

    /// Records per dataset.
    pub fn dataset_lens(&self) -> &[u64] {
        &self.lens
    }

    /// Where global sample `index` comes from.
    pub fn locate(&self, index: u64) -> SampleRef {
        self.locate_range(index, 1)[0]
    }

    /// Samples `start .. start+len`, computing each block's order once.
    pub fn locate_range(&self, start: u64, len: u64) -> Vec<SampleRef> {
        let mut out = Vec::with_capacity(len as usize);
        let mut cached: Option<(usize, u64, Vec<u16>, Vec<u32>)> = None;
        for index in start..start + len {
            let pos = self.schedule.position_at(index);
            let seg = &self.segments[pos];
            let version = self.schedule.versions()[pos].version;
            let rel = index - seg.start;
            let (block, within) = (rel / BLOCK, (rel % BLOCK) as usize);
            if !matches!(&cached, Some((p, b, _, _)) if *p == pos && *b == block) {
                let order = block_order(self.seed, version, block, &seg.per_block);
                let ranks = ranks_of(&order, seg.per_block.len());
                cached = Some((pos, block, order, ranks));
            }
            let (_, _, order, ranks) = cached.as_ref().expect("just filled");
            let d = order[within] as usize;
            let counter = seg.offset[d] + block * seg.per_block[d] + ranks[within] as u64;
            let n = self.lens[d];
            let epoch = counter / n;
            let record = feistel_permute(counter % n, n, crate::seeds::record_order(self.seed, d as u64, epoch));
            out.push(SampleRef { index, dataset: DatasetId(d as u16), record, epoch, schedule_version: version });
        }
        out
    }
}

/// Largest-remainder apportionment of `total` slots by `weights` (ties to the lower index).
fn apportion(weights: &[f64], total: u64) -> Vec<u64> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| w / sum * total as f64).collect();
    let mut counts: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let mut rest = total - counts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).filter(|&d| weights[d] > 0.0).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    for d in order.iter().cycle() {
        if rest == 0 {
            break;
        }
        counts[*d] += 1;
        rest -= 1;
    }
    counts
}

/// The dataset of each position of a block: the multiset given by `per_block`, shuffled.
fn block_order(seed: u64, version: u32, block: u64, per_block: &[u64]) -> Vec<u16> {
    let mut order: Vec<u16> = per_block.iter().enumerate().flat_map(|(d, &c)| std::iter::repeat_n(d as u16, c as usize)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(crate::seeds::schedule_block(seed, version as u64, block));
    order.shuffle(&mut rng);
    order
}

/// For each position, how many earlier positions of the block hold the same dataset.
fn ranks_of(order: &[u16], datasets: usize) -> Vec<u32> {
    let mut seen = vec![0u32; datasets];
    order
        .iter()
        .map(|&d| {
            let r = seen[d as usize];
            seen[d as usize] += 1;
            r
        })
        .collect()
}

/// Samples per dataset among the first `len` samples of a segment.
fn count_in(seed: u64, version: u32, per_block: &[u64], len: u64) -> Vec<u64> {
    let (full, partial) = (len / BLOCK, (len % BLOCK) as usize);
    let mut counts: Vec<u64> = per_block.iter().map(|c| c * full).collect();
    if partial > 0 {
        for &d in &block_order(seed, version, full, per_block)[..partial] {
            counts[d as usize] += 1;
        }
    }
    counts
}

/// SplitMix64 finaliser: a well-mixed 64-bit hash step.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes several words into one seed.
pub fn mix(words: &[u64]) -> u64 {
    words.iter().fold(0x0074_6573_7365_7261_u64, |h, &w| splitmix(h ^ splitmix(w)))
}

/// A bijection of `0..n` keyed by `key`: a 4-round Feistel network on the smallest even bit
/// width covering `n`, cycle-walking values that land outside (fewer than 4 steps expected).
pub fn feistel_permute(x: u64, n: u64, key: u64) -> u64 {
    debug_assert!(x < n);
    if n <= 1 {
        return 0;
    }
    let bits = 64 - (n - 1).leading_zeros();
    let half = bits.div_ceil(2).max(1);
    let mask = (1u64 << half) - 1;
    let mut v = x;
    loop {
        let (mut l, mut r) = (v >> half, v & mask);
        for round in 0..4u64 {
            let f = splitmix(r ^ mix(&[key, round])) & mask;
            (l, r) = (r, l ^ f);
        }
        v = (l << half) | r;
        if v < n {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feistel_is_a_permutation() {
        for n in [1u64, 2, 3, 7, 64, 1000, 4099] {
            let mut seen = vec![false; n as usize];
            for x in 0..n {
                let y = feistel_permute(x, n, 42);
                assert!(y < n && !seen[y as usize], "n={n} x={x} y={y}");
                seen[y as usize] = true;
            }
        }
        // Different keys give different orders.
        let a: Vec<u64> = (0..100).map(|x| feistel_permute(x, 100, 1)).collect();
        let b: Vec<u64> = (0..100).map(|x| feistel_permute(x, 100, 2)).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn apportionment_is_exact_and_sums_to_block() {
        assert_eq!(apportion(&[0.6, 0.2, 0.2], 1024), vec![614, 205, 205]);
        assert_eq!(apportion(&[1.0], 1024), vec![1024]);
        assert_eq!(apportion(&[1.0, 0.0, 1.0], 1024), vec![512, 0, 512]);
        assert_eq!(apportion(&[1.0, 1.0, 1.0], 1024).iter().sum::<u64>(), 1024);
    }

    #[test]
    fn every_record_once_per_epoch() {
        let ledger = SampleLedger::new(7, MixtureSchedule::new(vec![1.0]).unwrap(), vec![1500]).unwrap();
        let refs = ledger.locate_range(0, 3000);
        for epoch in 0..2 {
            let mut recs: Vec<u64> = refs.iter().filter(|r| r.epoch == epoch).map(|r| r.record).collect();
            assert_eq!(recs.len(), 1500);
            recs.sort_unstable();
            recs.dedup();
            assert_eq!(recs.len(), 1500, "epoch {epoch} repeats a record");
        }
        // The two epochs use different orders.
        assert_ne!(refs[..1500].iter().map(|r| r.record).collect::<Vec<_>>(), refs[1500..].iter().map(|r| r.record).collect::<Vec<_>>());
    }

    #[test]
    fn pure_in_index_and_independent_of_split() {
        let schedule = MixtureSchedule::new(vec![0.6, 0.2, 0.2]).unwrap();
        let ledger = SampleLedger::new(3, schedule, vec![10_000, 500, 77]).unwrap();
        let whole = ledger.locate_range(1000, 3000);
        // Any split (ranks of a world of 3, single lookups in reverse) gives the same refs.
        let mut split = Vec::new();
        for (a, b) in [(1000, 1777), (1777, 2001), (2001, 4000)] {
            split.extend(ledger.locate_range(a, b - a));
        }
        assert_eq!(whole, split);
        for i in (1000..4000).rev().step_by(97) {
            assert_eq!(ledger.locate(i), whole[(i - 1000) as usize]);
        }
        let counts = (0..3).map(|d| whole.iter().filter(|r| r.dataset.0 == d).count()).collect::<Vec<_>>();
        assert!((counts[0] as f64 / 3000.0 - 0.6).abs() < 0.01, "{counts:?}");
        // Another seed gives another order.
        let other = SampleLedger::new(4, MixtureSchedule::new(vec![0.6, 0.2, 0.2]).unwrap(), vec![10_000, 500, 77]).unwrap();
        assert_ne!(other.locate_range(1000, 3000), whole);
    }

    #[test]
    fn schedule_change_keeps_the_past_and_continues_counters() {
        let lens = vec![5000, 5000];
        let base = SampleLedger::new(9, MixtureSchedule::new(vec![1.0, 1.0]).unwrap(), lens.clone()).unwrap();
        let mut schedule = MixtureSchedule::new(vec![1.0, 1.0]).unwrap();
        assert_eq!(schedule.push(1500, vec![0.0, 1.0]).unwrap(), 1);
        let changed = SampleLedger::new(9, schedule, lens).unwrap();
        assert_eq!(base.locate_range(0, 1500), changed.locate_range(0, 1500));
        let after = changed.locate_range(1500, 2000);
        assert!(after.iter().all(|r| r.dataset.0 == 1 && r.schedule_version == 1));
        // Dataset 1 continues its epoch: no record repeats across the change.
        let mut recs: Vec<u64> = changed.locate_range(0, 3500).iter().filter(|r| r.dataset.0 == 1).map(|r| r.record).collect();
        let n = recs.len();
        recs.sort_unstable();
        recs.dedup();
        assert_eq!(recs.len(), n);
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(MixtureSchedule::new(vec![]).is_err());
        assert!(MixtureSchedule::new(vec![0.0]).is_err());
        assert!(MixtureSchedule::new(vec![1.0, f64::NAN]).is_err());
        let mut s = MixtureSchedule::new(vec![1.0]).unwrap();
        assert!(s.push(0, vec![1.0]).is_err());
        assert!(s.push(10, vec![1.0, 2.0]).is_err());
        let err = SampleLedger::new(0, MixtureSchedule::new(vec![1.0, 1.0]).unwrap(), vec![10, 0]).unwrap_err();
        assert!(err.to_string().contains("dataset 1"), "{err}");
    }
}
