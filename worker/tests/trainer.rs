//! Trainer: exact resume, checkpoint validation and pruning, non-finite step handling.

use std::path::Path;

use tessera_protocol::checkpoint;
use tessera_protocol::job::{JobConfig, ResolvedJob};
use tessera_worker::{PrebuiltSynthetic, Trainer, WorkerError, four_m_config};

fn job_micro(dir: &Path, extra_train: &str, micro: usize) -> ResolvedJob {
    let tok = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json")
        .display()
        .to_string();
    let text = format!(
        r#"
[job]
name = "resume-test"
seed = 5
output_dir = "out"

[model]
modalities = "caption,tok_rgb@224,tok_depth@224"
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
records = 100

[train]
global_batch_size = 4
micro_batch_size = {micro}
blr = 0.05
total_steps = 6
warmup_steps = 2
clip_grad = 1.0
threads = 1
{extra_train}

[checkpoint]
every_steps = 0
keep_last = 2
"#
    );
    let cfg = JobConfig::from_toml(&text, "test.toml").unwrap();
    ResolvedJob::resolve(&cfg, "test.toml", dir).unwrap()
}

fn trainer(dir: &Path, extra: &str) -> Trainer<PrebuiltSynthetic> {
    trainer_micro(dir, extra, 2)
}

fn trainer_micro(dir: &Path, extra: &str, micro: usize) -> Trainer<PrebuiltSynthetic> {
    tch::set_num_threads(1);
    let job = job_micro(dir, extra, micro);
    let cfg = four_m_config(&job.model, &job.origin).unwrap();
    let source = PrebuiltSynthetic::new(cfg.clone(), job.seed, 32, 32);
    Trainer::new(job, &cfg, source, vec![100]).unwrap()
}

/// Training 3 steps, checkpointing, and resuming in a fresh trainer gives bit-identical losses
/// and gradient norms for the following steps, compared with an uninterrupted run.
#[test]
fn resume_is_bit_exact() {
    let a = tempfile::tempdir().unwrap();
    let mut straight = trainer(a.path(), "");
    let full: Vec<(f64, f64)> = (0..6).map(|_| straight.step().map(|r| (r.loss, r.grad_norm)).unwrap()).collect();
    assert!(full.iter().all(|(l, g)| l.is_finite() && *g > 0.0));

    let b = tempfile::tempdir().unwrap();
    let mut first = trainer(b.path(), "");
    for _ in 0..3 {
        first.step().unwrap();
    }
    let saved = first.save_checkpoint().unwrap();
    assert!(saved.ends_with("step-00000003"));
    drop(first);

    let mut resumed = trainer(b.path(), "");
    let (from, rejected) = resumed.resume().unwrap();
    assert_eq!(from.as_deref(), Some(saved.as_path()));
    assert!(rejected.is_empty());
    assert_eq!(resumed.state().step, 3);
    assert_eq!(resumed.state().next_sample_index, 12);
    for (i, expected) in full.iter().enumerate().skip(3) {
        let r = resumed.step().unwrap();
        assert_eq!(r.step, i as u64);
        assert_eq!(r.loss.to_bits(), expected.0.to_bits(), "step {i}: {} vs {}", r.loss, expected.0);
        assert_eq!(r.grad_norm.to_bits(), expected.1.to_bits(), "step {i} grad norm");
    }
    assert!(resumed.finished());
}

/// A checkpoint whose file was corrupted on disk or whose manifest is missing is never chosen;
/// keep-last-K removes the oldest.
#[test]
fn corrupt_checkpoints_are_skipped_and_old_ones_pruned() {
    let d = tempfile::tempdir().unwrap();
    let mut t = trainer(d.path(), "");
    let mut dirs = Vec::new();
    for _ in 0..3 {
        t.step().unwrap();
        dirs.push(t.save_checkpoint().unwrap());
    }
    let root = &t.job().checkpoint.dir;
    let kept: Vec<u64> = checkpoint::list(root).unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(kept, vec![3, 2], "keep_last = 2");

    // One process writes the one format, as a world of one.
    let m = checkpoint::verify(&dirs[2]).unwrap();
    assert_eq!((m.layout(), m.world, m.state.step), (Some(checkpoint::Layout::Sharded), 1, 3));
    // Flip one byte in the newest shard file: checksum mismatch.
    let model = dirs[2].join(checkpoint::shard_file(0, 1));
    let mut bytes = std::fs::read(&model).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&model, bytes).unwrap();
    let err = checkpoint::verify(&dirs[2]).unwrap_err().to_string();
    assert!(err.contains("rank-00000-of-00001.safetensors") && err.contains("sha256"), "{err}");

    let mut r = trainer(d.path(), "");
    let (from, rejected) = r.resume().unwrap();
    assert_eq!(from.as_deref(), Some(dirs[1].as_path()));
    assert_eq!(rejected.len(), 1);
    assert_eq!(r.state().step, 2);

    // A directory without a manifest (a write that died before commit) is passed over too.
    std::fs::remove_file(dirs[1].join(checkpoint::MANIFEST)).unwrap();
    let (found, rejected) = checkpoint::latest_valid(root).unwrap();
    assert!(found.is_none());
    assert_eq!(rejected.len(), 2);
}

/// A non-finite loss skips the update and counts it; with skipping off it is an error naming
/// the step.
#[test]
fn non_finite_steps_are_skipped_or_fail() {
    let d = tempfile::tempdir().unwrap();
    let mut t = trainer(d.path(), "");
    let poison = |t: &Trainer<PrebuiltSynthetic>| {
        let vars = t.model().vs.variables();
        let w = vars.iter().find(|(n, _)| n.ends_with("encoder_norm.weight")).map(|(_, v)| v.shallow_clone()).unwrap();
        tch::no_grad(|| {
            let _ = w.shallow_clone().fill_(f64::NAN);
        });
    };
    poison(&t);
    let before: std::collections::BTreeMap<String, f64> = t
        .model()
        .vs
        .variables()
        .iter()
        .filter(|(n, _)| n.contains("decoder.0.mlp"))
        .map(|(n, v)| (n.clone(), v.sum(tch::Kind::Double).double_value(&[])))
        .collect();
    let r = t.step().unwrap();
    assert!(r.skipped && !r.loss.is_finite());
    assert_eq!(t.state().counters.skipped_steps, 1);
    assert_eq!(t.state().step, 1, "a skipped step still consumes its samples");
    let after: std::collections::BTreeMap<String, f64> = t
        .model()
        .vs
        .variables()
        .iter()
        .filter(|(n, _)| n.contains("decoder.0.mlp"))
        .map(|(n, v)| (n.clone(), v.sum(tch::Kind::Double).double_value(&[])))
        .collect();
    assert_eq!(before, after, "a skipped step must not update weights");

    let e = tempfile::tempdir().unwrap();
    let mut strict = trainer(e.path(), "skip_nonfinite = false");
    poison(&strict);
    let err = strict.step().unwrap_err();
    assert!(matches!(err, WorkerError::NonFinite { step: 0, .. }), "{err}");
    assert_eq!(err.kind(), tessera_protocol::messages::FailureKind::Numerics);
}

/// Gradient accumulation does not change training: micro-batches of 1, 2 or 4 samples give the
/// same losses and parameters as one batch of 4, up to float summation order.
#[test]
fn accumulation_equals_one_big_batch() {
    let run = |micro: usize| {
        let d = tempfile::tempdir().unwrap();
        tch::set_num_threads(1);
        let job = job_micro(d.path(), "", micro);
        let cfg = four_m_config(&job.model, &job.origin).unwrap();
        // The real data path: every sample is a pure function of its global index.
        let source = tessera_worker::data::open_job_data(&job, &cfg.all_domains()).unwrap();
        let mut t = Trainer::new(job, &cfg, source, vec![100]).unwrap();
        let losses: Vec<f64> = (0..3).map(|_| t.step().unwrap().loss).collect();
        let vars = t.model().vs.variables();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let params = tch::Tensor::cat(&names.iter().map(|n| vars[*n].flatten(0, -1)).collect::<Vec<_>>(), 0);
        (losses, params)
    };
    let (l4, p4) = run(4);
    for micro in [1, 2] {
        let (l, p) = run(micro);
        for (a, b) in l.iter().zip(&l4) {
            assert!((a - b).abs() / b.abs() < 1e-6, "micro {micro}: loss {a} vs {b}");
        }
        let diff = (&p - &p4).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "micro {micro}: parameters differ by {diff}");
    }
}
