//! What the FSDP tests share: their job and loopback rings.

#![allow(dead_code)] // each test crate uses part of it

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_ops::{JobAuth, Rank, RingConfig, Secret, TcpRing};
use tessera_protocol::job::{JobConfig, ResolvedJob};

/// `../shared` beside the checkout, or `TESSERA_SHARED_DIR` (where `tools/gpu/check.sh` puts
/// the shared data on a device machine, whose checkout has no `../shared` beside it).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("TESSERA_SHARED_DIR").map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"), PathBuf::from)
}

/// The FSDP tests' job `name` (a 2+2-block 4M over four modalities, synthetic data, global
/// batch 6 in micro-batches of 2), with `extra_train` appended to its `[train]` table.
pub fn fsdp_job(dir: &Path, name: &str, extra_train: &str) -> ResolvedJob {
    fsdp_job_batched(dir, name, (6, 2), extra_train)
}

/// [`fsdp_job`] with `(global, micro)` batch sizes.
pub fn fsdp_job_batched(dir: &Path, name: &str, (global, micro): (usize, usize), extra_train: &str) -> ResolvedJob {
    let tok = shared_dir().join("data/ml-4m/text_tokenizer_4m_wordpiece_30k.json");
    let text = format!(
        r#"
[job]
name = "{name}"
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
global_batch_size = {global}
micro_batch_size = {micro}
blr = 0.1
total_steps = 10
warmup_steps = 1
clip_grad = 0.5
{extra_train}
"#,
        tok = tok.display()
    );
    let file = format!("{name}.toml");
    ResolvedJob::resolve(&JobConfig::from_toml(&text, &file).unwrap(), &file, dir).unwrap()
}

/// `[eval]` for [`fsdp_job`]'s `extra_train` (it closes `[train]`): validation every step on
/// `samples` held-out samples (synthetic records the training split never draws).
pub fn eval_table(samples: u64) -> String {
    format!("\n[eval]\nevery_steps = 1\nsamples = {samples}\nbaseline_samples = 8\n")
}

/// Asserts that FSDP's validation `got` equals one process's `want`: the same modalities and
/// tokens, the same baseline to the bit (its per-batch sums travel exactly), losses within `rel`.
pub fn assert_same_validation(got: &tessera_worker::eval::EvalReport, want: &tessera_worker::eval::EvalReport, rel: f64, what: &str) {
    assert_eq!(got.modalities.keys().collect::<Vec<_>>(), want.modalities.keys().collect::<Vec<_>>(), "{what}");
    for (m, w) in &want.modalities {
        let g = &got.modalities[m];
        assert_eq!(g.tokens, w.tokens, "{what}: {m}");
        assert_eq!(g.unigram, w.unigram, "{what}: {m}");
        assert!(w.unigram.is_some(), "{what}: {m} has a fitted baseline");
        assert!((g.loss - w.loss).abs() / w.loss.abs() < rel, "{what}: {m}: loss {} vs {}", g.loss, w.loss);
    }
}

/// The test rings' identity: job 7, generation `generation`, a fixed secret.
pub fn auth(generation: u64) -> JobAuth {
    JobAuth { job_id: 7, generation, secret: Secret::new(b"fsdp-test-secret".to_vec()) }
}

/// Ring settings of the tests: generation `generation`, a 120 s deadline.
pub fn ring_config(generation: u64) -> RingConfig {
    let mut c = RingConfig::new(auth(generation));
    c.timeout = Duration::from_secs(120);
    c
}

/// `world` loopback listeners and their addresses (every rank's peer table).
pub fn listeners(world: usize) -> (Vec<TcpListener>, Vec<std::net::SocketAddr>) {
    let ls: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers = ls.iter().map(|l| l.local_addr().unwrap()).collect();
    (ls, peers)
}

/// Runs `f(rank, ring)` on a thread per rank of a `world`-rank ring (generation 0) and returns
/// the results in rank order.
pub fn on_rings<T: Send + 'static>(world: usize, f: impl Fn(usize, TcpRing) -> T + Send + Sync + Clone + 'static) -> Vec<T> {
    let (ls, peers) = listeners(world);
    let handles: Vec<_> = ls
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let (peers, f) = (peers.clone(), f.clone());
            std::thread::spawn(move || f(rank, TcpRing::connect(listener, Rank(rank as u32), &peers, ring_config(0)).unwrap()))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

/// Checkpoints every rank's state at its current step under `root` the way a coordinated job
/// does: each rank writes its snapshot, and once all have (an all-reduce is the barrier), rank
/// 0 commits them with the store's one commit. Collective. Returns the committed directory.
pub fn save_on_ring<S: tessera_worker::BatchSource>(t: &mut tessera_worker::fsdp::FsdpTrainer<TcpRing, S>, root: &Path) -> PathBuf {
    use tessera_protocol::checkpoint as store;
    let mut snap = t.snapshot(0);
    let (step, rank, manifest) = (snap.step, snap.rank, snap.manifest.take());
    snap.write().expect("writing this rank's shard");
    let world = manifest.as_ref().map_or(0, |m| m.world);
    t.agree(&mut [0]).expect("every rank wrote");
    if rank == 0 {
        let tmp = store::temp_dir(root, step, 0);
        let files = (0..world).map(|r| store::file_entry(&tmp.join(store::shard_file(r, world))).unwrap()).collect();
        store::commit(root, &tmp, manifest.expect("rank 0 carries the manifest"), files).expect("committing");
    }
    t.agree(&mut [0]).expect("rank 0 committed");
    root.join(store::dir_name(step))
}

/// Restores each rank from the newest valid checkpoint under `root` (resharded to the ring's
/// world); the step restored, if any.
pub fn resume_on_ring<S: tessera_worker::BatchSource>(t: &mut tessera_worker::fsdp::FsdpTrainer<TcpRing, S>, root: &Path) -> Option<u64> {
    let (found, _) = tessera_protocol::checkpoint::latest_valid(root).expect("listing checkpoints");
    found.map(|(dir, _)| t.restore_from(&dir).expect("restoring"))
}
