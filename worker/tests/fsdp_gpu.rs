//! FSDP on a CUDA device: the units' flat vectors through NCCL (and through the host ring as
//! the fallback) against the single-process trainer on the same GPU, in fp32 and under bf16
//! autocast, at world size 1 (in production each rank is its own process on its own GPU, and
//! sees it as device 0; several ranks in one test process would all land on device 0, which
//! NCCL refuses).
//! On a host without CUDA or NCCL every test prints `SKIPPED` with the reason (CI); a GPU host
//! runs them with the plain `cargo test`.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use tessera_coordinator::job::{JobConfig, ResolvedJob};
use tessera_ops::{JobAuth, Rank, RingConfig, Secret, TcpRing};
use tessera_worker::data::open_job_data;
use tessera_worker::fsdp::{FsdpTrainer, flat};
use tessera_worker::{Trainer, four_m_config};

const STEPS: usize = 3;

/// Why this host cannot run the GPU cases, if it cannot.
fn skip_reason() -> Option<String> {
    if !tch::Cuda::is_available() {
        return Some("libtorch sees no CUDA device".into());
    }
    tessera_ops::nccl::available().err().map(|e| e.to_string())
}

fn job(dir: &Path, bf16: bool) -> ResolvedJob {
    // `TESSERA_SHARED_DIR`: where `tools/gpu/check.sh` puts the shared data on a device machine,
    // whose checkout has no `../shared` beside it.
    let shared = std::env::var_os("TESSERA_SHARED_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"), std::path::PathBuf::from);
    let tok = shared.join("data/ml-4m/text_tokenizer_4m_wordpiece_30k.json");
    let text = format!(
        r#"
[job]
name = "fsdp-gpu-test"
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
device = "cuda"
bf16 = {bf16}
"#,
        tok = tok.display()
    );
    ResolvedJob::resolve(&JobConfig::from_toml(&text, "fsdp-gpu-test.toml").unwrap(), "fsdp-gpu-test.toml", dir).unwrap()
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
    let listeners: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let (peers, dir) = (peers.clone(), dir.to_path_buf());
            std::thread::spawn(move || {
                let auth = JobAuth { job_id: 9, generation: 0, secret: Secret::new(b"fsdp-gpu-secret".to_vec()) };
                let mut config = RingConfig::new(auth.clone());
                config.timeout = Duration::from_secs(120);
                let mut ring = TcpRing::connect(listener, Rank(rank as u32), &peers, config).unwrap();
                let job = job(&dir, bf16);
                let comm = if nccl {
                    let mut c = tessera_ops::NcclConfig::new(auth, 0);
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
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
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
    let world = 3;
    let listeners: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let (peers, dir) = (peers.clone(), d.path().to_path_buf());
            std::thread::spawn(move || {
                let auth = JobAuth { job_id: 9, generation: 0, secret: Secret::new(b"fsdp-gpu-secret".to_vec()) };
                let mut config = RingConfig::new(auth.clone());
                config.timeout = Duration::from_secs(30);
                let mut ring = TcpRing::connect(listener, Rank(rank as u32), &peers, config).unwrap();
                let start = std::time::Instant::now();
                let err = flat::nccl_over(&mut ring, &tessera_ops::NcclConfig::new(auth.clone(), 0)).err().expect("no NCCL here");
                let fallback = flat::device_comm(&mut ring, &job(&dir, false), auth).unwrap();
                (err.to_string(), fallback.is_none(), start.elapsed())
            })
        })
        .collect();
    for (rank, h) in handles.into_iter().enumerate() {
        let (err, host_path, took) = h.join().expect("rank thread");
        assert!(err.contains(&format!("rank {rank}: NCCL: ")), "{err}");
        assert!(err.contains("unavailable") || err.contains("could not create"), "{err}");
        assert!(host_path, "rank {rank} must fall back to the host path");
        assert!(took < Duration::from_secs(10), "rank {rank} took {took:?}");
    }
}
