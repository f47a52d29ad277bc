//! The data path over ml-4m shards and a text corpus: transform + masking of real files,
//! dataset mixing, and bad input (malformed member, truncated shard) with and without
//! `skip_bad_samples`.

use std::path::Path;

use tch::Kind;
use tessera_protocol::SampleLedger;
use tessera_protocol::job::{JobConfig, ResolvedJob};
use tessera_tokenizers::Modality;
use tessera_tokenizers::shards::fixture::fixture_sample;
use tessera_tokenizers::shards::{FixtureSpec, TarWriter, write_fixture};
use tessera_worker::data::open_job_data;
use tessera_worker::{BatchSource, WorkerError};

fn job(root: &Path, pattern: &str, skip_bad: bool) -> ResolvedJob {
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json");
    let text = format!(
        r#"
[job]
name = "shards-test"
seed = 2
output_dir = "out"

[model]
modalities = "caption,det,metadata,rgb@224,tok_rgb@224"

[data]
text_tokenizer = "{tok}"
input_tokens = 64
target_tokens = 64
decode_threads = 2
skip_bad_samples = {skip_bad}

[[data.datasets]]
name = "cc"
kind = "shards"
path = "{pattern}"
weight = 3.0
name_map = {{ tok_rgb = "tok_rgb@224" }}

[[data.datasets]]
name = "c4"
kind = "text"
path = "{corpus}"

[train]
global_batch_size = 8
total_steps = 5
"#,
        tok = tok.display(),
        corpus = root.join("c4/part-{0..1}.jsonl").display(),
    );
    ResolvedJob::resolve(&JobConfig::from_toml(&text, "shards-test.toml").unwrap(), "shards-test.toml", root).unwrap()
}

fn write_corpus(root: &Path) {
    std::fs::create_dir_all(root.join("c4")).unwrap();
    for part in 0..2 {
        let lines: Vec<String> = (0..20)
            .map(|i| {
                serde_json::json!({ "text": format!("document {part} {i}: the red dog sat near the blue house"), "url": "x" }).to_string()
            })
            .collect();
        std::fs::write(root.join(format!("c4/part-{part}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
}

const SPEC: FixtureSpec = FixtureSpec { shards: 2, samples_per_shard: 6, n_crops: 3, n_tokens: 196, width: 48, height: 40, seed: 9 };

#[test]
fn shards_and_corpus_become_masked_batches() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(&dir.path().join("cc"), &SPEC).unwrap();
    write_corpus(dir.path());
    let job = job(dir.path(), &fx.pattern, false);
    let mods = job.model.modalities.all();
    let mut p = open_job_data(&job, &mods).unwrap();
    assert_eq!(p.dataset_lens(), vec![12, 40]);
    let ledger = SampleLedger::new(job.seed, job.schedule.clone(), p.dataset_lens()).unwrap();
    let refs = ledger.locate_range(0, 32);
    let batch = p.batch(&refs).unwrap();
    let rgb = &batch.modalities[&Modality::Rgb224];
    assert_eq!(rgb.tensor.size(), vec![32, 3, 224, 224]);
    for (i, r) in refs.iter().enumerate() {
        let i = i as i64;
        let caption_in = batch.modalities[&Modality::Caption].input_mask.get(i).logical_not().sum(Kind::Int64).int64_value(&[]);
        let caption_tgt = batch.modalities[&Modality::Caption].target_mask.get(i).logical_not().sum(Kind::Int64).int64_value(&[]);
        assert!(caption_in + caption_tgt > 0, "sample {i}: the caption is always present");
        let pixels = rgb.tensor.get(i).abs().sum(Kind::Double).double_value(&[]);
        if r.dataset.0 == 1 {
            assert_eq!(pixels, 0.0, "text samples have empty images");
        } else {
            assert!(pixels > 0.0, "image samples have pixels");
            // The tokens are a row of the stored (n_crops, 196) array: ids below 8192.
            let toks = batch.modalities[&Modality::TokRgb224].tensor.get(i);
            assert!(toks.max().int64_value(&[]) < 8192);
        }
    }
    // Reading again gives the same batch (same crop choice, same masks).
    let again = p.batch(&refs).unwrap();
    assert!(again.modalities[&Modality::Det].tensor.equal(&batch.modalities[&Modality::Det].tensor));
    assert!(again.modalities[&Modality::Rgb224].tensor.equal(&rgb.tensor));
}

/// Replaces shard 0 of `folder` with one whose sample 2 has `bad` bytes for its member.
fn corrupt_member(root: &Path, folder: &str, ext: &str, bad: &[u8]) {
    let path = root.join(folder).join("shard-00000.tar");
    let mut w = TarWriter::create(&path).unwrap();
    for s in 0..SPEC.samples_per_shard {
        let members = fixture_sample(&SPEC, s).unwrap();
        let (_, _, bytes) = members.iter().find(|(f, _, _)| *f == folder).unwrap();
        let data: &[u8] = if s == 2 { bad } else { bytes };
        w.append(&format!("{s:09}.{ext}"), data).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn bad_members_fail_with_file_and_key_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cc");
    let fx = write_fixture(&root, &SPEC).unwrap();
    write_corpus(dir.path());
    corrupt_member(&root, "det", "json", b"{\"instances\": [ {\"boxes\": [0.1, 0.2]");

    let job_strict = job(dir.path(), &fx.pattern, false);
    let mods = job_strict.model.modalities.all();
    let mut strict = open_job_data(&job_strict, &mods).unwrap();
    let ledger = SampleLedger::new(job_strict.seed, job_strict.schedule.clone(), strict.dataset_lens()).unwrap();
    // Find the global index whose record is the corrupt sample (record 2 of dataset 0).
    let bad = ledger.locate_range(0, 400).into_iter().find(|r| r.dataset.0 == 0 && r.record == 2).unwrap();
    let err = strict.batch(&[bad]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WorkerError::Sample { .. }), "{msg}");
    assert!(msg.contains("det") && msg.contains("000000002") && msg.contains("shard-00000.tar") && msg.contains("cc"), "{msg}");

    let job_skip = job(dir.path(), &fx.pattern, true);
    let mut lenient = open_job_data(&job_skip, &mods).unwrap();
    let counter = lenient.skipped_counter();
    let good = ledger.locate_range(0, 400).into_iter().find(|r| r.dataset.0 == 0 && r.record == 3).unwrap();
    let batch = lenient.batch(&[bad, good]).unwrap();
    assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 1);
    let tm = &batch.modalities[&Modality::Caption].target_mask;
    let im = &batch.modalities[&Modality::Caption].input_mask;
    assert!(tm.get(0).all().int64_value(&[]) == 1 && im.get(0).all().int64_value(&[]) == 1, "the skipped sample is empty");
    assert!(im.get(1).logical_not().any().int64_value(&[]) == 1 || tm.get(1).logical_not().any().int64_value(&[]) == 1);
}

#[test]
fn truncated_shard_is_refused_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cc");
    let fx = write_fixture(&root, &SPEC).unwrap();
    write_corpus(dir.path());
    let shard = root.join("tok_rgb/shard-00001.tar");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2 + 100]).unwrap();
    let job = job(dir.path(), &fx.pattern, false);
    let err = open_job_data(&job, &job.model.modalities.all()).err().expect("a truncated shard must be refused").to_string();
    assert!(err.contains("tok_rgb/shard-00001.tar"), "{err}");
}

#[test]
fn diverging_keys_across_folders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cc");
    let fx = write_fixture(&root, &SPEC).unwrap();
    write_corpus(dir.path());
    // Rewrite the caption shard with one key renamed.
    let path = root.join("caption/shard-00000.tar");
    let mut w = TarWriter::create(&path).unwrap();
    for s in 0..SPEC.samples_per_shard {
        let members = fixture_sample(&SPEC, s).unwrap();
        let (_, _, bytes) = members.iter().find(|(f, _, _)| *f == "caption").unwrap();
        let key = if s == 4 { "elsewhere".to_string() } else { format!("{s:09}") };
        w.append(&format!("{key}.json"), bytes).unwrap();
    }
    w.finish().unwrap();
    let job = job(dir.path(), &fx.pattern, false);
    let err = open_job_data(&job, &job.model.modalities.all()).err().expect("diverging keys must be refused").to_string();
    assert!(err.contains("elsewhere") && err.contains("000000004"), "{err}");
}

/// A float token array, a token array of the wrong width and an unknown metadata key are each
/// refused with the shard file, the sample key and what is wrong.
#[test]
fn wrong_dtype_shape_and_unknown_metadata_key_name_file_and_key() {
    use tessera_tokenizers::shards::{ArrayData, NdArray, encode_npy};
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("tok_rgb", "npy", encode_npy(&NdArray { shape: vec![3, 196], data: ArrayData::F32(vec![1.0; 3 * 196]) }), "integer"),
        ("tok_rgb", "npy", encode_npy(&NdArray { shape: vec![3, 100], data: ArrayData::I16(vec![1; 300]) }), "100"),
        ("metadata", "json", br#"{"original_width": 40, "brightness_of_the_moon": 3.0}"#.to_vec(), "brightness_of_the_moon"),
    ];
    for (folder, ext, bad, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cc");
        let fx = write_fixture(&root, &SPEC).unwrap();
        write_corpus(dir.path());
        corrupt_member(&root, folder, ext, &bad);
        let job = job(dir.path(), &fx.pattern, false);
        let mut p = open_job_data(&job, &job.model.modalities.all()).unwrap();
        let ledger = SampleLedger::new(job.seed, job.schedule.clone(), p.dataset_lens()).unwrap();
        let r = ledger.locate_range(0, 400).into_iter().find(|r| r.dataset.0 == 0 && r.record == 2).unwrap();
        let msg = p.batch(&[r]).unwrap_err().to_string();
        assert!(msg.contains(expect) && msg.contains("000000002"), "{folder}: {msg}");
        if folder == "tok_rgb" {
            assert!(msg.contains("tok_rgb/shard-00000.tar"), "{msg}");
        }
    }
}
