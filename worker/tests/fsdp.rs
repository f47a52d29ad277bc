//! FSDP equals one-process training: 2 and 3 ranks (threads, each with its own TCP ring
//! endpoint on loopback) against the single-process trainer on the same job, seed and data.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use tessera_coordinator::job::{JobConfig, ResolvedJob};
use tessera_ops::{JobAuth, Rank, RingConfig, Secret, TcpRing};
use tessera_worker::data::open_job_data;
use tessera_worker::fsdp::FsdpTrainer;
use tessera_worker::{Trainer, four_m_config};

const STEPS: usize = 3;

fn job(dir: &Path) -> ResolvedJob {
    job_with(dir, false)
}

/// The test job; `prefetch`: FSDP's collective on its own thread, gathers one unit ahead.
fn job_with(dir: &Path, prefetch: bool) -> ResolvedJob {
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json");
    let text = format!(
        r#"
[job]
name = "fsdp-test"
seed = 21
output_dir = "out"

[model]
modalities = "caption,det,tok_rgb@224,tok_depth@224"
dim = 64
encoder_depth = 2
decoder_depth = 2
num_heads = 2

[data]
text_tokenizer = "{tok}"
input_tokens = 32
target_tokens = 32

[[data.datasets]]
name = "syn"
kind = "synthetic"
records = 200

[train]
global_batch_size = 6
micro_batch_size = 2
blr = 0.1
total_steps = 10
warmup_steps = 1
clip_grad = 0.5
threads = 1
fsdp_prefetch = {prefetch}
"#,
        tok = tok.display()
    );
    ResolvedJob::resolve(&JobConfig::from_toml(&text, "fsdp-test.toml").unwrap(), "fsdp-test.toml", dir).unwrap()
}

type Run = (Vec<f64>, Vec<(String, tch::Tensor)>);

fn single(dir: &Path) -> Run {
    let job = job(dir);
    let cfg = four_m_config(&job.model, &job.origin).unwrap();
    let source = open_job_data(&job, &cfg.all_domains()).unwrap();
    let mut t = Trainer::new(job, &cfg, source, vec![200]).unwrap();
    let losses = (0..STEPS).map(|_| t.step().unwrap().loss).collect();
    let vars = t.model().vs.variables();
    let mut params: Vec<(String, tch::Tensor)> =
        vars.into_iter().filter(|(_, v)| v.requires_grad()).map(|(n, v)| (n, v.detach().copy())).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    (losses, params)
}

type Rank0Trainer = FsdpTrainer<TcpRing, tessera_worker::data::DataPipeline>;

/// Runs `f` on every rank of a `world`-rank FSDP job (threads, TCP ring on loopback).
fn on_world<T: Send + 'static>(dir: &Path, world: usize, f: impl Fn(&mut Rank0Trainer) -> T + Send + Sync + Clone + 'static) -> Vec<T> {
    on_world_with(dir, world, false, f)
}

/// [`on_world`] with the job's `fsdp_prefetch` set to `prefetch`.
fn on_world_with<T: Send + 'static>(
    dir: &Path,
    world: usize,
    prefetch: bool,
    f: impl Fn(&mut Rank0Trainer) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let listeners: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let (peers, dir, f) = (peers.clone(), dir.to_path_buf(), f.clone());
            std::thread::spawn(move || {
                let mut config = RingConfig::new(JobAuth { job_id: 7, generation: 0, secret: Secret::new(b"fsdp-test-secret".to_vec()) });
                config.timeout = Duration::from_secs(120);
                let ring = TcpRing::connect(listener, Rank(rank as u32), &peers, config).unwrap();
                let job = job_with(&dir, prefetch);
                let cfg = four_m_config(&job.model, &job.origin).unwrap();
                let source = open_job_data(&job, &cfg.all_domains()).unwrap();
                let mut t = FsdpTrainer::new(job, &cfg, source, vec![200], ring).unwrap();
                f(&mut t)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

/// A checkpoint written by 3 ranks, loaded by 2 and by 1: the next step's loss equals the one
/// the 3 ranks computed when they went on.
#[test]
fn checkpoint_at_3_ranks_resumes_at_2_and_1() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    let at3 = on_world(d.path(), 3, |t| {
        t.step().unwrap();
        t.step().unwrap();
        t.save_checkpoint().unwrap();
        t.step().unwrap().loss
    });
    assert!(d.path().join("out/checkpoints/step-00000002/manifest.json").is_file());
    for world in [2, 1] {
        let next = on_world(d.path(), world, |t| {
            assert_eq!(t.resume().unwrap(), Some(2));
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
    assert_eq!(on_world(d.path(), 2, |t| t.resume().unwrap()), vec![None, None]);
}

/// What a rank keeps between generations (model, units, data source) restores a checkpoint at
/// another world size exactly like a fresh process: 3 ranks checkpoint at step 2 and train on,
/// then two of them keep their model, form a 2-rank ring and restore step 2 from it; their next
/// loss equals the one the 3 ranks computed after the checkpoint.
#[test]
fn a_kept_model_restores_at_another_world_size() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    let bind = |_| TcpListener::bind("127.0.0.1:0").unwrap();
    let (l3, l2): (Vec<TcpListener>, Vec<TcpListener>) = ((0..3).map(bind).collect(), (0..2).map(bind).collect());
    let peers3: Vec<_> = l3.iter().map(|l| l.local_addr().unwrap()).collect();
    let peers2: Vec<_> = l2.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut l2 = l2.into_iter();
    let handles: Vec<_> = l3
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let next = if rank < 2 { l2.next() } else { None };
            let (peers3, peers2, dir) = (peers3.clone(), peers2.clone(), d.path().to_path_buf());
            std::thread::spawn(move || {
                let config = |generation| {
                    let mut c = RingConfig::new(JobAuth { job_id: 7, generation, secret: Secret::new(b"fsdp-test-secret".to_vec()) });
                    c.timeout = Duration::from_secs(120);
                    c
                };
                let job = job(&dir);
                let cfg = four_m_config(&job.model, &job.origin).unwrap();
                let ring = TcpRing::connect(listener, Rank(rank as u32), &peers3, config(0)).unwrap();
                let source = open_job_data(&job, &cfg.all_domains()).unwrap();
                let mut t = FsdpTrainer::new(job.clone(), &cfg, source, vec![200], ring).unwrap();
                t.step().unwrap();
                t.step().unwrap();
                let ckpt = t.save_checkpoint().unwrap();
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

fn sharded(dir: &Path, world: usize, prefetch: bool) -> Vec<Run> {
    on_world_with(dir, world, prefetch, |t| {
        let losses: Vec<f64> = (0..STEPS).map(|_| t.step().unwrap().loss).collect();
        (losses, t.full_parameters().unwrap().into_iter().collect())
    })
}

#[test]
fn fsdp_over_2_and_3_ranks_equals_one_process() {
    tch::set_num_threads(1);
    let d = tempfile::tempdir().unwrap();
    let (losses, params) = single(d.path());
    // Both ways of running the collective: inline, and on its own thread with prefetch.
    for (world, prefetch) in [(2, false), (2, true), (3, true)] {
        let runs = sharded(d.path(), world, prefetch);
        for (rank, (l, p)) in runs.iter().enumerate() {
            for (s, (a, b)) in l.iter().zip(&losses).enumerate() {
                assert!((a - b).abs() / b.abs() < 1e-6, "world {world} prefetch {prefetch} rank {rank} step {s}: loss {a} vs {b}");
            }
            assert_eq!(p.len(), params.len());
            for ((na, ta), (nb, tb)) in p.iter().zip(&params) {
                assert_eq!(na, nb);
                // Relative L2 error per tensor: Adam divides by sqrt(v), so float-order noise in a
                // gradient shows up as ~1e-7-absolute jitter in single elements.
                let diff = (ta - tb).norm().double_value(&[]);
                let scale = tb.norm().double_value(&[]).max(1e-6);
                assert!(diff / scale < 1e-5, "world {world} prefetch {prefetch} rank {rank} {na}: relative L2 difference {}", diff / scale);
            }
        }
    }
}
