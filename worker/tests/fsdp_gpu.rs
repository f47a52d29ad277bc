//! FSDP on a CUDA device: the units' flat vectors through NCCL (and through the host ring as
//! the fallback) against the single-process trainer on the same GPU, in fp32 and under bf16
//! autocast, at world size 1 (in production each rank is its own process on its own GPU, and
//! sees it as device 0; several ranks in one test process would all land on device 0, which
//! NCCL refuses).
//! On a host without CUDA or NCCL every test prints `SKIPPED` with the reason (CI); a GPU host
//! runs them with the plain `cargo test`.

use std::path::Path;
use std::time::Duration;

use tessera_protocol::job::ResolvedJob;
use tessera_worker::data::open_job_data;
use tessera_worker::eval::ValidationSet;
use tessera_worker::fsdp::{FsdpTrainer, flat};
use tessera_worker::{Trainer, four_m_config};

mod common;

const STEPS: usize = 3;

/// Why this host cannot run the GPU cases, if it cannot.
fn skip_reason() -> Option<String> {
    if !tch::Cuda::is_available() {
        return Some("libtorch sees no CUDA device".into());
    }
    tessera_ops::nccl::available().err().map(|e| e.to_string())
}

fn job(dir: &Path, bf16: bool) -> ResolvedJob {
    common::fsdp_job(dir, "fsdp-gpu-test", &format!("device = \"cuda\"\nbf16 = {bf16}"))
}

fn single(dir: &Path, bf16: bool) -> Vec<f64> {
    let job = job(dir, bf16);
    let cfg = four_m_config(&job.model, &job.origin).unwrap();
    let source = open_job_data(&job, &cfg.all_domains()).unwrap();
    let mut t = Trainer::new(job, &cfg, source, vec![200]).unwrap();
    (0..STEPS).map(|_| t.step().unwrap().loss).collect()
}

/// Per-step losses of every rank of a `world`-rank FSDP job on the GPU, flat vectors through
/// NCCL when `nccl`, else through the ring.
fn fsdp(dir: &Path, world: usize, bf16: bool, nccl: bool) -> Vec<Vec<f64>> {
    let dir = dir.to_path_buf();
    common::on_rings(world, move |_, mut ring| {
        let job = job(&dir, bf16);
        let comm = if nccl {
            let mut c = tessera_ops::NcclConfig::new(common::auth(0), 0);
            c.timeout = Duration::from_secs(60);
            Some(flat::nccl_over(&mut ring, &c).unwrap())
        } else {
            None
        };
        let cfg = four_m_config(&job.model, &job.origin).unwrap();
        let source = open_job_data(&job, &cfg.all_domains()).unwrap();
        let mut t = FsdpTrainer::new(job, &cfg, source, vec![200], ring).unwrap().with_device_comm(comm).unwrap();
        (0..STEPS).map(|_| t.step().unwrap().loss).collect::<Vec<f64>>()
    })
}

fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (s, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite() && (g - w).abs() / w.abs() < rel, "{what}, step {s}: {g} vs {w} (tolerance {rel:e})");
    }
}

/// fp32 on the GPU: FSDP through NCCL, and through the host ring, equals the single-process
/// trainer (GPU reductions are not bit-reproducible, hence 1e-4 rather than the CPU's 1e-6).
#[test]
fn fsdp_on_the_gpu_through_nccl_equals_one_process() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let want = single(d.path(), false);
    for nccl in [true, false] {
        for got in fsdp(d.path(), 1, false, nccl) {
            assert_close(&got, &want, 1e-4, &format!("nccl {nccl}"));
        }
    }
}

/// bf16 autocast with fp32 reduction: FSDP through NCCL follows the single-process bf16 run
/// closely, and both stay near fp32 training.
#[test]
fn fsdp_bf16_on_the_gpu_follows_one_process_bf16() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let fp32 = single(d.path(), false);
    let want = single(d.path(), true);
    assert_close(&want, &fp32, 5e-2, "single-process bf16 vs fp32");
    for got in fsdp(d.path(), 1, true, true) {
        assert_close(&got, &want, 2e-2, "FSDP bf16 vs single-process bf16");
    }
}

/// Validation on the ranks with the units gathered through NCCL equals the single-process
/// trainer's on the same GPU.
#[test]
fn validation_through_nccl_scores_like_one_process() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let job_eval = |dir: &Path| common::fsdp_job(dir, "fsdp-gpu-eval", &format!("device = \"cuda\"{}", common::eval_table(6)));
    let job = job_eval(d.path());
    let cfg = four_m_config(&job.model, &job.origin).unwrap();
    let set = ValidationSet::prepare(&job, &cfg).unwrap().expect("a held-out set");
    let source = open_job_data(&job, &cfg.all_domains()).unwrap();
    let mut t = Trainer::new(job.clone(), &cfg, source, vec![200]).unwrap();
    t.step().unwrap();
    let want = set.score(&t.model().model, tch::Device::Cuda(0), &tessera_worker::trainer::eval_options(&job)).unwrap();
    let dir = d.path().to_path_buf();
    let got = common::on_rings(1, move |_, mut ring| {
        let job = job_eval(&dir);
        let mut c = tessera_ops::NcclConfig::new(common::auth(0), 0);
        c.timeout = Duration::from_secs(60);
        let comm = flat::nccl_over(&mut ring, &c).unwrap();
        let cfg = four_m_config(&job.model, &job.origin).unwrap();
        let set = ValidationSet::prepare(&job, &cfg).unwrap().unwrap();
        let source = open_job_data(&job, &cfg.all_domains()).unwrap();
        let mut t = FsdpTrainer::new(job, &cfg, source, vec![200], ring).unwrap().with_device_comm(Some(comm)).unwrap();
        t.step().unwrap();
        t.evaluate(&set).unwrap()
    });
    common::assert_same_validation(&got[0], &want, 1e-4, "NCCL, world 1");
}

/// Without NCCL (CI): building the communicator fails on every rank with an error naming NCCL,
/// nobody waits for a unique id that never comes, and a CUDA job's ranks agree to fall back to
/// the host path.
#[test]
fn without_nccl_every_rank_fails_fast_or_falls_back_to_the_host_path() {
    if tessera_ops::nccl::available().is_ok() {
        println!("SKIPPED: this host can run NCCL, so there is no unavailability to check");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let results = common::on_rings(3, move |_, mut ring| {
        let start = std::time::Instant::now();
        let err = flat::nccl_over(&mut ring, &tessera_ops::NcclConfig::new(common::auth(0), 0)).err().expect("no NCCL here");
        let fallback = flat::device_comm(&mut ring, &job(&dir, false), common::auth(0)).unwrap();
        (err.to_string(), fallback.is_none(), start.elapsed())
    });
    for (rank, (err, host_path, took)) in results.into_iter().enumerate() {
        assert!(err.contains(&format!("rank {rank}: NCCL: ")), "{err}");
        assert!(err.contains("unavailable") || err.contains("could not create"), "{err}");
        assert!(host_path, "rank {rank} must fall back to the host path");
        assert!(took < Duration::from_secs(10), "rank {rank} took {took:?}");
    }
}
