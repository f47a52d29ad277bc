//! FSDP equals one-process training: 2 and 3 ranks (threads, each with its own TCP ring
//! endpoint on loopback) against the single-process trainer on the same job, seed and data.

use std::path::Path;

use tessera_model::{FourMConfig, MaskedBatch};
use tessera_ops::{Rank, TcpRing};
use tessera_protocol::SampleRef;
use tessera_protocol::job::ResolvedJob;
use tessera_worker::data::{DataPipeline, open_job_data};
use tessera_worker::fsdp::FsdpTrainer;
use tessera_worker::{BatchSource, Trainer, four_m_config};

mod common;

const STEPS: usize = 3;

fn job(dir: &Path) -> ResolvedJob {
    job_with(dir, Mode::default())
}

/// How FSDP runs: `prefetch`, the collective on its own thread gathering one unit ahead;
/// `keep`, blocks keep their graphs from the forward to the backward pass (no recomputation);
/// `blank`, global samples whose targets are all masked out (see [`Blanked`]); `pieces`, the
/// `rest` unit gathered and reduced in pieces of this many elements per rank; `batch`, the
/// job's `(global, micro)` batch sizes instead of (6, 2).
#[derive(Clone, Copy, Debug, Default)]
struct Mode {
    prefetch: bool,
    keep: bool,
    blank: &'static [u64],
    pieces: Option<usize>,
    batch: Option<(usize, usize)>,
}

/// The job's data with every target of some samples masked out: a micro-batch made only of
/// them has no target token at all (as short texts can give), so its loss has no graph.
struct Blanked {
    inner: DataPipeline,
    blank: &'static [u64],
}

impl BatchSource for Blanked {
    fn batch(&mut self, refs: &[SampleRef]) -> tessera_worker::Result<MaskedBatch> {
        let batch = self.inner.batch(refs)?;
        for (row, r) in refs.iter().enumerate() {
            if self.blank.contains(&r.index) {
                for t in batch.modalities.values() {
                    let _ = t.target_mask.get(row as i64).fill_(1);
                }
            }
        }
        Ok(batch)
    }

    fn skipped_counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.inner.skipped_counter()
    }
}

fn source(job: &ResolvedJob, cfg: &FourMConfig, mode: Mode) -> Blanked {
    Blanked { inner: open_job_data(job, &cfg.all_domains()).unwrap(), blank: mode.blank }
}

fn job_with(dir: &Path, m: Mode) -> ResolvedJob {
    let extra = format!("threads = 1\nfsdp_prefetch = {}\nfsdp_recompute = {}", m.prefetch, !m.keep);
    common::fsdp_job_batched(dir, "fsdp-test", m.batch.unwrap_or((6, 2)), &extra)
}

type Run = (Vec<f64>, Vec<(String, tch::Tensor)>);

fn single(dir: &Path, mode: Mode, steps: usize) -> Run {
    let job = job_with(dir, mode);
    let cfg = four_m_config(&job.model, &job.origin).unwrap();
    let source = source(&job, &cfg, mode);
    let mut t = Trainer::new(job, &cfg, source, vec![200]).unwrap();
    let losses = (0..steps).map(|_| t.step().unwrap().loss).collect();
    let vars = t.model().vs.variables();
    let mut params: Vec<(String, tch::Tensor)> =
        vars.into_iter().filter(|(_, v)| v.requires_grad()).map(|(n, v)| (n, v.detach().copy())).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    (losses, params)
}

type Rank0Trainer = FsdpTrainer<TcpRing, Blanked>;

/// Runs `f` on every rank of a `world`-rank FSDP job (threads, TCP ring on loopback).
fn on_world<T: Send + 'static>(dir: &Path, world: usize, f: impl Fn(&mut Rank0Trainer) -> T + Send + Sync + Clone + 'static) -> Vec<T> {
    on_world_with(dir, world, Mode::default(), f)
}

/// [`on_world`] in FSDP mode `mode`.
fn on_world_with<T: Send + 'static>(
    dir: &Path,
    world: usize,
    mode: Mode,
    f: impl Fn(&mut Rank0Trainer) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let dir = dir.to_path_buf();
    common::on_rings(world, move |_, ring| {
        let job = job_with(&dir, mode);
        let cfg = four_m_config(&job.model, &job.origin).unwrap();
        let source = source(&job, &cfg, mode);
        let mut t = FsdpTrainer::new(job, &cfg, source, vec![200], ring).unwrap();
        if let Some(n) = mode.pieces {
            t = t.with_piece_elems(n);
        }
        f(&mut t)
    })
}

/// A checkpoint written by 3 ranks, loaded by 2 and by 1: the next step's loss equals the one
/// the 3 ranks computed when they went on.
#[test]
fn checkpoint_at_3_ranks_resumes_at_2_and_1() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    let root = job(d.path()).checkpoint.dir;
    let at3 = on_world(d.path(), 3, {
        let root = root.clone();
        move |t| {
            t.step().unwrap();
            t.step().unwrap();
            common::save_on_ring(t, &root);
            t.step().unwrap().loss
        }
    });
    assert!(d.path().join("out/checkpoints/step-00000002/manifest.json").is_file());
    for world in [2, 1] {
        let root = root.clone();
        let next = on_world(d.path(), world, move |t| {
            assert_eq!(common::resume_on_ring(t, &root), Some(2));
            t.step().unwrap().loss
        });
        for l in next {
            assert!((l - at3[0]).abs() / at3[0].abs() < 1e-6, "world {world}: {l} vs {}", at3[0]);
        }
    }
    // A corrupted shard file makes the checkpoint invalid: nothing to resume from.
    let shard = d.path().join("out/checkpoints/step-00000002/rank-00001-of-00003.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    assert_eq!(on_world(d.path(), 2, move |t| common::resume_on_ring(t, &root)), vec![None, None]);
}

/// A one-process checkpoint as it was written before there was one format
/// (`model.safetensors` + `optimizer.safetensors` + a `tessera-checkpoint/1` manifest), written
/// here the way that writer did so the test keeps proving such checkpoints still load.
fn write_legacy_single(t: &Trainer<Blanked>) -> std::path::PathBuf {
    use tessera_protocol::checkpoint as store;
    let dir = t.job().checkpoint.dir.join(store::dir_name(t.state().step));
    std::fs::create_dir_all(&dir).unwrap();
    t.model().save(&dir.join(store::LEGACY_MODEL_FILE)).unwrap();
    tessera_model::io::write(&dir.join(store::LEGACY_OPTIMIZER_FILE), &t.optimizer().state(), &Default::default()).unwrap();
    let files: Vec<store::FileEntry> =
        [store::LEGACY_MODEL_FILE, store::LEGACY_OPTIMIZER_FILE].iter().map(|n| store::file_entry(&dir.join(n)).unwrap()).collect();
    let manifest = serde_json::json!({
        "format": store::LEGACY_SINGLE_FORMAT, "job": t.job().name, "seed": t.job().seed, "state": t.state(),
        "rng": "derived: every random draw is a function of (seed, sample index, step)", "files": files,
    });
    std::fs::write(dir.join(store::MANIFEST), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    dir
}

/// One-process checkpoints, of the format written before there was one and of the one format
/// one process now writes (a world of one), load in one process (the next step bit for bit)
/// and at 1, 2 and 3 ranks (the next step as one process computes it). Sharded checkpoints
/// written before the change have the format they have now (`checkpoint_at_3_ranks_…`).
#[test]
fn one_process_checkpoints_old_and_new_load_in_every_mode_and_world_size() {
    tch::set_num_threads(1);
    for legacy in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let trainer = || {
            let job = job(d.path());
            let cfg = four_m_config(&job.model, &job.origin).unwrap();
            let source = source(&job, &cfg, Mode::default());
            Trainer::new(job, &cfg, source, vec![200]).unwrap()
        };
        let mut t = trainer();
        t.step().unwrap();
        t.step().unwrap();
        let dir = if legacy { write_legacy_single(&t) } else { t.save_checkpoint().unwrap() };
        let layout = tessera_protocol::checkpoint::verify(&dir).unwrap().layout();
        assert_eq!(
            layout,
            Some(if legacy { tessera_protocol::checkpoint::Layout::Single } else { tessera_protocol::checkpoint::Layout::Sharded })
        );
        let next = t.step().unwrap().loss;
        let mut resumed = trainer();
        assert_eq!(resumed.resume().unwrap().0.as_deref(), Some(dir.as_path()));
        assert_eq!(resumed.step().unwrap().loss.to_bits(), next.to_bits(), "legacy {legacy}: one process, bit for bit");
        for world in [1, 2, 3] {
            let root = job(d.path()).checkpoint.dir;
            let losses = on_world(d.path(), world, move |t| {
                assert_eq!(common::resume_on_ring(t, &root), Some(2));
                t.step().unwrap().loss
            });
            for l in losses {
                assert!((l - next).abs() / next.abs() < 1e-6, "legacy {legacy}, world {world}: {l} vs {next}");
            }
        }
    }
}

/// What a rank keeps between generations (model, units, data source) restores a checkpoint at
/// another world size exactly like a fresh process: 3 ranks checkpoint at step 2 and train on,
/// then two of them keep their model, form a 2-rank ring and restore step 2 from it; their next
/// loss equals the one the 3 ranks computed after the checkpoint.
#[test]
fn a_kept_model_restores_at_another_world_size() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    let ((l3, peers3), (l2, peers2)) = (common::listeners(3), common::listeners(2));
    let mut l2 = l2.into_iter();
    let handles: Vec<_> = l3
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let next = if rank < 2 { l2.next() } else { None };
            let (peers3, peers2, dir) = (peers3.clone(), peers2.clone(), d.path().to_path_buf());
            std::thread::spawn(move || {
                let config = common::ring_config;
                let job = job(&dir);
                let cfg = four_m_config(&job.model, &job.origin).unwrap();
                let ring = TcpRing::connect(listener, Rank(rank as u32), &peers3, config(0)).unwrap();
                let source = open_job_data(&job, &cfg.all_domains()).unwrap();
                let mut t = FsdpTrainer::new(job.clone(), &cfg, source, vec![200], ring).unwrap();
                t.step().unwrap();
                t.step().unwrap();
                let ckpt = common::save_on_ring(&mut t, &job.checkpoint.dir);
                let after = t.step().unwrap().loss;
                let Some(listener) = next else { return (after, None) };
                let kept = t.into_resident().unwrap();
                let ring = TcpRing::connect(listener, Rank(rank as u32), &peers2, config(1)).unwrap();
                let mut t = FsdpTrainer::restored(job, &cfg, kept, ring, &ckpt).unwrap();
                assert_eq!(t.state().step, 2);
                (after, Some(t.step().unwrap().loss))
            })
        })
        .collect();
    let results: Vec<(f64, Option<f64>)> = handles.into_iter().map(|h| h.join().expect("rank thread")).collect();
    let want = results[0].0;
    let again: Vec<f64> = results.iter().filter_map(|r| r.1).collect();
    assert_eq!(again.len(), 2);
    for l in again {
        assert!((l - want).abs() / want.abs() < 1e-6, "kept model at 2 ranks: {l} vs {want} at 3");
    }
}

fn sharded(dir: &Path, world: usize, mode: Mode, steps: usize) -> Vec<Run> {
    on_world_with(dir, world, mode, move |t| {
        let losses: Vec<f64> = (0..steps).map(|_| t.step().unwrap().loss).collect();
        (losses, t.full_parameters().unwrap().into_iter().collect())
    })
}

#[test]
fn fsdp_over_2_and_3_ranks_equals_one_process() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    // The collective inline or on its own thread with prefetch; blocks recomputed or kept.
    // The `rest` unit whole, or in pieces (many, with an uneven last one).
    let modes = [
        (2, Mode { prefetch: false, keep: false, blank: &[], pieces: None, batch: None }),
        (2, Mode { prefetch: true, keep: false, blank: &[], pieces: Some(100_003), batch: None }),
        (3, Mode { prefetch: true, keep: false, blank: &[], pieces: None, batch: None }),
        (3, Mode { prefetch: false, keep: true, blank: &[], pieces: Some(77_777), batch: None }),
    ];
    assert_sharded_equal_single(d.path(), &modes, STEPS);
}

/// Micro-batches without a single target token train like one process: step 1's samples 8
/// and 9 (its 3rd and 4th) have none, which leaves rank 0 of 2 (samples 6-8 in micro-batches
/// 6-7, 8) and rank 1 of 3 (8-9) a micro-batch whose loss has no graph, and one process a
/// micro-batch of its own (8-9). Those ranks still gather and reduce every unit with the rest.
#[test]
fn micro_batches_without_targets_train_like_one_process() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    let blank: &[u64] = &[8, 9];
    let modes = [
        (2, Mode { prefetch: false, keep: false, blank, pieces: None, batch: None }),
        (3, Mode { prefetch: true, keep: false, blank, pieces: Some(50_001), batch: None }),
        (3, Mode { prefetch: false, keep: true, blank, pieces: None, batch: None }),
    ];
    assert_sharded_equal_single(d.path(), &modes, STEPS);
}

/// Global batches that do not split evenly over the ranks train like one process: with 5
/// samples on 2 ranks (3 and 2), 8 in micro-batches of 2 on 3 ranks (3, 3 and 2 samples: 2, 2
/// and 1 micro-batches) or 6 on 4 ranks (2, 2, 1 and 1), ranks with fewer micro-batches still
/// take part in every collective of the step. Every world from 2 to 4 on global batches 5, 6
/// and 8 in micro-batches of 1 and 2 (5 has no micro-batches of 2), each world in turn with
/// the collective inline or ahead on its thread, blocks recomputed or kept.
#[test]
fn uneven_micro_batches_over_the_ranks_train_like_one_process() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    for (i, batch) in [(5, 1), (6, 1), (6, 2), (8, 1), (8, 2)].into_iter().enumerate() {
        let modes = [2, 3, 4].map(|world| {
            let turn = i + world;
            (world, Mode { prefetch: turn % 2 == 1, keep: turn % 4 >= 2, blank: &[], pieces: None, batch: Some(batch) })
        });
        // Two steps: the second one's loss and the parameters after it show the first update.
        assert_sharded_equal_single(d.path(), &modes, 2);
    }
}

/// Each `(world, mode)` run's per-step losses over `steps` steps (1e-6) and final parameters (1e-5 relative L2)
/// equal one process's on the same data (`mode.blank` and `mode.batch` of the first run).
fn assert_sharded_equal_single(dir: &Path, modes: &[(usize, Mode)], steps: usize) {
    let (losses, params) = single(dir, modes[0].1, steps);
    for &(world, mode) in modes {
        let runs = sharded(dir, world, mode, steps);
        for (rank, (l, p)) in runs.iter().enumerate() {
            for (s, (a, b)) in l.iter().zip(&losses).enumerate() {
                assert!((a - b).abs() / b.abs() < 1e-6, "world {world} {mode:?} rank {rank} step {s}: loss {a} vs {b}");
            }
            assert_eq!(p.len(), params.len());
            for ((na, ta), (nb, tb)) in p.iter().zip(&params) {
                assert_eq!(na, nb);
                // Relative L2 error per tensor: Adam divides by sqrt(v), so float-order noise in a
                // gradient shows up as ~1e-7-absolute jitter in single elements.
                let diff = (ta - tb).norm().double_value(&[]);
                let scale = tb.norm().double_value(&[]).max(1e-6);
                assert!(diff / scale < 1e-5, "world {world} {mode:?} rank {rank} {na}: relative L2 difference {}", diff / scale);
            }
        }
    }
}

/// Validation on the ranks (forward only, each rank its share of the held-out batches) equals
/// one process's, also with more ranks than held-out batches (3 ranks, 2 batches: one rank
/// has none and still takes part in every gather) and with the gathers on the comm thread.
#[test]
fn validation_on_the_ranks_scores_like_one_process() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    let job_of = |dir: &Path, prefetch: bool| {
        common::fsdp_job(dir, "fsdp-eval", &format!("threads = 1\nfsdp_prefetch = {prefetch}{}", common::eval_table(4)))
    };
    let job = job_of(d.path(), false);
    let cfg = four_m_config(&job.model, &job.origin).unwrap();
    let set = tessera_worker::eval::ValidationSet::prepare(&job, &cfg).unwrap().expect("a held-out set");
    assert_eq!(set.val.len(), 2, "4 samples in micro-batches of 2");
    let source = open_job_data(&job, &cfg.all_domains()).unwrap();
    let mut t = Trainer::new(job.clone(), &cfg, source, vec![200]).unwrap();
    t.step().unwrap();
    t.step().unwrap();
    let opts = tessera_worker::trainer::eval_options(&job);
    let want = set.score(&t.model().model, tch::Device::Cpu, &opts).unwrap();
    for (world, prefetch) in [(2, false), (3, true)] {
        let dir = d.path().to_path_buf();
        let reports = common::on_rings(world, move |_, ring| {
            let job = job_of(&dir, prefetch);
            let cfg = four_m_config(&job.model, &job.origin).unwrap();
            let set = tessera_worker::eval::ValidationSet::prepare(&job, &cfg).unwrap().unwrap();
            let source = open_job_data(&job, &cfg.all_domains()).unwrap();
            let mut t = FsdpTrainer::new(job, &cfg, source, vec![200], ring).unwrap();
            t.step().unwrap();
            t.step().unwrap();
            t.evaluate(&set).unwrap()
        });
        for (rank, got) in reports.iter().enumerate() {
            common::assert_same_validation(got, &want, 1e-5, &format!("world {world}, rank {rank}"));
        }
    }
}
