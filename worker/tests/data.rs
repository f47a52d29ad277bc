//! The data path: determinism per global index, independence from how a step is split, dataset
//! mixing with empty modalities, and invariants of the masked batch.

use std::path::Path;

use tch::Kind;
use tessera_model::MaskedBatch;
use tessera_protocol::SampleLedger;
use tessera_protocol::job::{JobConfig, ResolvedJob};
use tessera_tokenizers::Modality;
use tessera_worker::BatchSource;
use tessera_worker::data::open_job_data;

fn job(extra_datasets: &str) -> ResolvedJob {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m");
    let text = format!(
        r#"
[job]
name = "data-test"
seed = 11
output_dir = "out"

[model]
modalities = "4m21"

[data]
text_tokenizer = "{tok}"
input_tokens = 128
target_tokens = 128
decode_threads = 2

[[data.datasets]]
name = "multimodal"
kind = "synthetic"
records = 500
weight = 2.0
alphas = "{alphas}"
{extra_datasets}

[train]
global_batch_size = 8
total_steps = 10
"#,
        tok = shared.join("text_tokenizer_4m_wordpiece_30k.json").display(),
        alphas = shared.join("configs/alphas/mix_mod21_all2allmix_rgb2all_capT5bias.yaml").display(),
    );
    let cfg = JobConfig::from_toml(&text, "data-test.toml").unwrap();
    ResolvedJob::resolve(&cfg, "data-test.toml", Path::new("/tmp")).unwrap()
}

const TEXT_ONLY: &str = r#"
[[data.datasets]]
name = "text-only"
kind = "synthetic"
records = 300
modalities = "caption"
"#;

fn assert_same(a: &MaskedBatch, b: &MaskedBatch) {
    assert_eq!(a.modalities.keys().collect::<Vec<_>>(), b.modalities.keys().collect::<Vec<_>>());
    for (m, x) in &a.modalities {
        let y = &b.modalities[m];
        for (what, p, q) in [
            ("tensor", &x.tensor, &y.tensor),
            ("input_mask", &x.input_mask, &y.input_mask),
            ("target_mask", &x.target_mask, &y.target_mask),
            ("dam", &x.decoder_attention_mask, &y.decoder_attention_mask),
        ] {
            assert!(p.equal(q), "{m} {what} differs");
        }
    }
}

fn cat(a: &MaskedBatch, b: &MaskedBatch) -> MaskedBatch {
    let mut out = MaskedBatch { modalities: Default::default() };
    for (m, x) in &a.modalities {
        let y = &b.modalities[m];
        out.modalities.insert(
            *m,
            tessera_model::ModalityTensors {
                tensor: tch::Tensor::cat(&[&x.tensor, &y.tensor], 0),
                input_mask: tch::Tensor::cat(&[&x.input_mask, &y.input_mask], 0),
                target_mask: tch::Tensor::cat(&[&x.target_mask, &y.target_mask], 0),
                decoder_attention_mask: tch::Tensor::cat(&[&x.decoder_attention_mask, &y.decoder_attention_mask], 0),
            },
        );
    }
    out
}

/// Global step s is the same samples, masked the same way, whether one rank loads all 8 or
/// two ranks load 4 each, and whatever pipeline instance or thread count does it.
#[test]
fn a_step_is_the_same_however_it_is_split() {
    let job = job(TEXT_ONLY);
    let mods = job.model.modalities.all();
    let mut one = open_job_data(&job, &mods).unwrap();
    let ledger = SampleLedger::new(job.seed, job.schedule.clone(), one.dataset_lens()).unwrap();
    let refs = ledger.locate_range(8, 8);
    let whole = one.batch(&refs).unwrap();
    let mut other = open_job_data(&job, &mods).unwrap();
    let halves = cat(&other.batch(&refs[..4]).unwrap(), &other.batch(&refs[4..]).unwrap());
    assert_same(&whole, &halves);
    // Another step gives other samples.
    let next = one.batch(&ledger.locate_range(16, 8)).unwrap();
    assert!(!next.modalities[&Modality::Caption].tensor.equal(&whole.modalities[&Modality::Caption].tensor));
}

/// Every batch carries every model modality; samples of the caption-only dataset have all other
/// modalities fully masked; budgets are respected per sample.
#[test]
fn mixed_batches_fill_missing_modalities_and_respect_budgets() {
    let job = job(TEXT_ONLY);
    let mods = job.model.modalities.all();
    let mut p = open_job_data(&job, &mods).unwrap();
    let ledger = SampleLedger::new(job.seed, job.schedule.clone(), p.dataset_lens()).unwrap();
    let refs = ledger.locate_range(0, 64);
    assert!(refs.iter().any(|r| r.dataset.0 == 1) && refs.iter().any(|r| r.dataset.0 == 0));
    let batch = p.batch(&refs).unwrap();
    assert_eq!(batch.modalities.len(), mods.len());
    let mut total_in = tch::Tensor::zeros([64], (Kind::Int64, tch::Device::Cpu));
    let mut total_tgt = tch::Tensor::zeros([64], (Kind::Int64, tch::Device::Cpu));
    for (m, t) in &batch.modalities {
        let n_in = t.input_mask.logical_not().sum_dim_intlist(1, false, Kind::Int64);
        let n_tgt = t.target_mask.logical_not().sum_dim_intlist(1, false, Kind::Int64);
        total_in += &n_in;
        total_tgt += &n_tgt;
        for (i, r) in refs.iter().enumerate() {
            if r.dataset.0 == 1 && *m != Modality::Caption {
                assert_eq!(n_in.int64_value(&[i as i64]) + n_tgt.int64_value(&[i as i64]), 0, "{m} of a caption-only sample");
            }
            if m.kind().is_image_like() {
                // Image input and target positions are disjoint.
                let both = t.input_mask.get(i as i64).logical_not().logical_and(&t.target_mask.get(i as i64).logical_not());
                assert_eq!(both.sum(Kind::Int64).int64_value(&[]), 0, "{m} sample {i}");
            }
        }
    }
    for i in 0..64 {
        assert!(total_in.int64_value(&[i]) <= 128, "sample {i} input {}", total_in.int64_value(&[i]));
        assert!(total_tgt.int64_value(&[i]) <= 128, "sample {i} target {}", total_tgt.int64_value(&[i]));
    }
    // Caption-only samples spend their whole input budget on the caption when it is long
    // enough, and the batch validates against the model's expectations.
    let cfg = tessera_model::FourMConfig::preset(tessera_model::Preset::Tiny, tessera_model::Flavor::SwigluNobias, &job.model.modalities);
    batch.check_against(&cfg, "pipeline").unwrap();
}

/// The prefetcher returns exactly the inner source's batch for every request, predicted
/// (consecutive) or not (a jump back, as after a resume).
#[test]
fn prefetched_batches_equal_direct_ones() {
    let job = job(TEXT_ONLY);
    let mods = job.model.modalities.all();
    let mut direct = open_job_data(&job, &mods).unwrap();
    let ledger = SampleLedger::new(job.seed, job.schedule.clone(), direct.dataset_lens()).unwrap();
    let mut pre = tessera_worker::Prefetcher::new(open_job_data(&job, &mods).unwrap(), ledger.clone(), 4, 2);
    for start in [0u64, 4, 8, 12, 4, 8, 40] {
        let refs = ledger.locate_range(start, 4);
        assert_same(&pre.batch(&refs).unwrap(), &direct.batch(&refs).unwrap());
    }
}
