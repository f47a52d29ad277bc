//! Generation against ml-4m: schedules, per-step logits and whole chained runs must equal
//! apple/ml-4m's `GenerationSampler` on the same re-drawn weights (fixture written by
//! tools/ml4m_reference/make_generation_fixture.sh), plus the KV cache and bad-input errors.
//! CPU, fp32, one libtorch thread.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use tessera_model::generate::{
    GenerateOptions, GenerationSampler, ScheduleSpec, StepSchedule, TextSpecials, TopK, empty_target, full_input,
};
use tessera_model::{Checkpoint, Flavor, FourMConfig, MaskedBatch, ModalityTensors, Preset};
use tessera_tokenizers::{Modality, ModalitySet};

/// Tolerance of logits, relative to the largest magnitude among the compared values of one
/// sampling call (an element-wise ratio is meaningless for logits near 0).
const LOGIT_TOL: f64 = 1e-5;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ml4m_generation.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model(fx: &Value) -> Checkpoint {
    let a = &fx["arch"];
    let flavor: Flavor = a["flavor"].as_str().unwrap().parse().unwrap();
    let mut cfg = FourMConfig::preset(Preset::Tiny, flavor, &ModalitySet::parse(a["modalities"].as_str().unwrap()).unwrap());
    cfg.dim = a["dim"].as_u64().unwrap() as usize;
    cfg.encoder_depth = a["encoder_depth"].as_u64().unwrap() as usize;
    cfg.decoder_depth = a["decoder_depth"].as_u64().unwrap() as usize;
    cfg.num_heads = a["num_heads"].as_u64().unwrap() as usize;
    let ckpt = Checkpoint::init(&cfg, Device::Cpu, a["init_seed"].as_i64().unwrap()).unwrap();
    ckpt.redraw(a["redraw_seed"].as_i64().unwrap(), a["redraw_scale"].as_f64().unwrap());
    ckpt
}

fn specials(fx: &Value) -> TextSpecials {
    let s = &fx["text_specials"];
    TextSpecials {
        pad: s["pad"].as_i64().unwrap(),
        eos: s["eos"].as_i64().unwrap(),
        s1: s["s1"].as_i64().unwrap(),
        s2: s["s2"].as_i64().unwrap(),
        sentinels: s["sentinels"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect(),
    }
}

/// A (B, L) tensor from nested JSON lists of integers or booleans.
fn tensor2(v: &Value) -> Tensor {
    let rows = v.as_array().unwrap();
    let b = rows.len() as i64;
    let first = &rows[0].as_array().unwrap()[0];
    if first.is_boolean() {
        let flat: Vec<bool> = rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_bool().unwrap())).collect();
        Tensor::from_slice(&flat).view([b, -1])
    } else {
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect();
        Tensor::from_slice(&flat).view([b, -1])
    }
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.to_kind(Kind::Int64).equal(&b.to_kind(Kind::Int64))
}

/// The case's conditioning built with tessera's builders (one row at a time, as ml-4m's
/// `init_full_input_modality` needs), checked against the batch ml-4m's builders made.
fn conditioning(fx: &Value, case: &Value, sp: &TextSpecials) -> MaskedBatch {
    let kw = &case["schedule_kwargs"];
    let want = case["conditioning"].as_object().unwrap();
    let targets: Vec<&str> = kw["target_domains"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut modalities = BTreeMap::new();
    for (key, fields) in want {
        let m: Modality = key.parse().unwrap();
        let built = if let Some(i) = targets.iter().position(|t| t == key) {
            let n = kw["tokens_per_target"][i].as_i64().unwrap();
            let b = tensor2(&fields["tensor"]).size()[0];
            empty_target(m, b, n, sp, Device::Cpu).unwrap()
        } else {
            // Rows of the raw input: ml-4m's tensor with the masks ignored.
            let raw = tensor2(&fields["tensor"]);
            let rows: Vec<ModalityTensors> = (0..raw.size()[0]).map(|r| full_input(m, raw.narrow(0, r, 1), None, sp).unwrap()).collect();
            let cat = |f: fn(&ModalityTensors) -> &Tensor| Tensor::cat(&rows.iter().map(f).collect::<Vec<_>>(), 0);
            ModalityTensors {
                tensor: cat(|t| &t.tensor),
                input_mask: cat(|t| &t.input_mask),
                target_mask: cat(|t| &t.target_mask),
                decoder_attention_mask: cat(|t| &t.decoder_attention_mask),
            }
        };
        for (field, t) in [("tensor", &built.tensor), ("input_mask", &built.input_mask), ("target_mask", &built.target_mask)] {
            assert!(same(t, &tensor2(&fields[field])), "{}: builder output {key}.{field} differs from ml-4m's", case["name"]);
        }
        if let Some(dam) = fields.get("decoder_attention_mask") {
            assert!(same(&built.decoder_attention_mask, &tensor2(dam)), "{}: {key}.decoder_attention_mask", case["name"]);
        }
        modalities.insert(m, built);
    }
    let _ = fx;
    MaskedBatch { modalities }
}

fn plan(case: &Value) -> (Vec<StepSchedule>, GenerateOptions) {
    let mut kw = case["schedule_kwargs"].clone();
    kw["top_k"] = case["top_k"].clone();
    kw["top_p"] = case["top_p"].clone();
    let spec: ScheduleSpec = serde_json::from_value(kw).unwrap();
    let plan = spec.resolve(case["name"].as_str().unwrap()).unwrap();
    let opts = GenerateOptions { top_k: plan.top_k, top_p: plan.top_p, seed: case["seed"].as_i64(), kv_cache: false };
    (plan.steps, opts)
}

/// The fixture's digest of one (R, V) logits matrix: log-sum-exp of the first rows and a block.
fn digest(logits_rv: &Tensor, fx: &Value) -> (Vec<f64>, Vec<f64>) {
    let d = &fx["digest"];
    let l = logits_rv.to_kind(Kind::Double);
    let rows = (d["lse_rows"].as_i64().unwrap()).min(l.size()[0]);
    let lse: Vec<f64> = Vec::try_from(l.narrow(0, 0, rows).logsumexp([-1], false)).unwrap();
    let (br, bc) = (d["block_rows"].as_i64().unwrap().min(l.size()[0]), d["block_cols"].as_i64().unwrap());
    let block: Vec<f64> = Vec::try_from(l.narrow(0, 0, br).narrow(1, 0, bc).reshape([-1])).unwrap();
    (lse, block)
}

fn flat_f64(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat_f64).collect(),
        x => vec![x.as_f64().unwrap()],
    }
}

/// max |a − b| / max |b| over two equally long lists.
fn rel_to_scale(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The case's model: the fixture's weights, with the `[S_2]` row of each listed sequence
/// target's tied decoder embedding scaled as the reference script scaled it (so that rows stop
/// early, at different steps).
fn case_model(fx: &Value, case: &Value) -> Checkpoint {
    let ckpt = model(fx);
    if let Some(scales) = case.get("s2_row_scale").and_then(Value::as_object) {
        let s2 = fx["text_specials"]["s2"].as_i64().unwrap();
        let vars = ckpt.vs.variables();
        for (m, alpha) in scales {
            let w = &vars[&format!("decoder_embeddings.{m}.token_emb.weight")];
            tch::no_grad(|| {
                let _ = w.get(s2).g_mul_scalar_(alpha.as_f64().unwrap());
            });
        }
    }
    ckpt
}

/// Fixture cases whose name starts with one of `prefixes`.
fn cases<'v>(fx: &'v Value, prefixes: &[&str]) -> Vec<&'v Value> {
    let all = fx["cases"].as_array().unwrap().iter();
    all.filter(|c| prefixes.iter().any(|p| c["name"].as_str().unwrap().starts_with(p))).collect()
}

/// Runs one case, compares every sampling call's logits digest and the final targets, and
/// returns the worst relative logit difference. Where the fixture holds ml-4m's raw
/// autoregressive output (every token, also those a finished row kept generating), the argmax
/// of each observed step (top-k 1) must reproduce it.
fn run_case(ckpt: &Checkpoint, fx: &Value, case: &Value, kv_cache: bool) -> f64 {
    let name = case["name"].as_str().unwrap();
    eprintln!("case {name} (kv_cache {kv_cache})");
    let sp = specials(fx);
    let batch = conditioning(fx, case, &sp);
    let (steps, mut opts) = plan(case);
    opts.kv_cache = kv_cache;
    let mut got = Vec::new();
    let mut ar_tokens: BTreeMap<Modality, Vec<Tensor>> = BTreeMap::new();
    let sampler = GenerationSampler::new(&ckpt.model, sp);
    let out = sampler
        .generate_observed(&batch, &steps, &opts, &mut |s| {
            let v = *s.logits.size().last().unwrap();
            got.push(digest(&s.logits.reshape([-1, v]), fx));
            if s.positions.is_none() {
                ar_tokens.entry(s.target).or_default().push(s.logits.argmax(-1, false));
            }
        })
        .unwrap();
    if let Some(raw) = case.get("ar_raw").and_then(Value::as_object) {
        assert_eq!(opts.top_k, TopK::Count(1), "{name}: raw ids are compared through argmax");
        for (key, want) in raw {
            let want = tensor2(want);
            let mine = Tensor::stack(&ar_tokens[&key.parse::<Modality>().unwrap()], 1);
            let theirs = want.narrow(1, 1, want.size()[1] - 1);
            assert!(same(&mine, &theirs), "{name} (kv_cache {kv_cache}): raw {key} tokens\n tessera {mine}\n ml-4m {theirs}");
        }
    }
    let want = case["logits"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{name}: number of sampling calls");
    let mut worst = 0.0f64;
    for (i, ((lse, block), w)) in got.iter().zip(want).enumerate() {
        let (wl, wb) = (flat_f64(&w["lse"]), flat_f64(&w["block"]));
        assert_eq!((lse.len(), block.len()), (wl.len(), wb.len()), "{name}: call {i} digest size");
        worst = worst.max(rel_to_scale(lse, &wl)).max(rel_to_scale(block, &wb));
        assert!(worst <= LOGIT_TOL, "{name} (kv_cache {kv_cache}): sampling call {i}: logits differ from ml-4m by {worst:e}");
    }
    for (key, fields) in case["result"].as_object().unwrap() {
        let t = &out.modalities[&key.parse::<Modality>().unwrap()];
        for (field, mine) in [("tensor", &t.tensor), ("input_mask", &t.input_mask), ("target_mask", &t.target_mask)] {
            let theirs = tensor2(&fields[field]);
            assert!(same(mine, &theirs), "{name} (kv_cache {kv_cache}): {key}.{field}\n tessera {mine}\n ml-4m {theirs}");
        }
    }
    worst
}

/// Whether `target`'s temperature schedule is `onex` with a power numpy computes with its
/// SIMD `pow` (SVML on AVX-512 machines, up to 1 ulp from the correctly rounded libm `pow`
/// tessera uses); 0.5, 1, 2, -1 and 0 go through exact ufuncs (sqrt, …) in numpy and in tessera.
fn svml_power(kwargs: &Value, target: &str) -> bool {
    let i = kwargs["target_domains"].as_array().unwrap().iter().position(|t| t == target).unwrap();
    let sched = kwargs["temp_schedules"][i].as_str().unwrap();
    match sched.strip_prefix("onex:").and_then(|r| r.split(':').nth(1)).and_then(|p| p.parse::<f64>().ok()) {
        Some(p) => ![0.5, 1.0, 2.0, -1.0, 0.0].contains(&p),
        None => false,
    }
}

/// Token counts and guidance exactly; temperatures bit for bit (but for `svml_power`).
#[test]
fn schedules_equal_ml4m_exactly() {
    let fx = fixture();
    for (i, s) in fx["schedules"].as_array().unwrap().iter().enumerate() {
        let spec: ScheduleSpec = serde_json::from_value(s["kwargs"].clone()).unwrap();
        let steps = spec.resolve(&format!("schedule set {i}")).unwrap().steps;
        let want = s["steps"].as_array().unwrap();
        assert_eq!(steps.len(), want.len(), "set {i}: number of steps");
        for (j, (g, w)) in steps.iter().zip(want).enumerate() {
            assert_eq!(g.target.key(), w["target_domain"].as_str().unwrap(), "set {i} step {j}");
            assert_eq!(g.scheme.name(), w["scheme"].as_str().unwrap(), "set {i} step {j}");
            assert_eq!(g.num_tokens, w["num_tokens"].as_i64(), "set {i} step {j}: tokens");
            // Bits, not the JSON float: serde_json's default float parser may be 1 ulp off.
            let bits = w["temperature_bits"].as_i64().unwrap() as u64;
            let ulps = (g.temperature.to_bits() as i64 - bits as i64).unsigned_abs();
            // A 1-ulp difference of pow grows to a few ulps through the schedule's arithmetic.
            let allowed = if svml_power(&s["kwargs"], g.target.key()) { 4 } else { 0 };
            assert!(ulps <= allowed, "set {i} step {j}: temperature {} vs {} ({ulps} ulp)", g.temperature, f64::from_bits(bits));
            match w["cfg_scale"].as_array() {
                Some(ws) => {
                    let ws: Vec<f64> = ws.iter().map(|v| v.as_f64().unwrap()).collect();
                    assert_eq!(g.cfg_weights, ws, "set {i} step {j}: multi-condition weights");
                }
                None => assert_eq!(g.cfg_scale, w["cfg_scale"].as_f64().unwrap(), "set {i} step {j}: cfg"),
            }
            let conds: Vec<&str> = g.cfg_cond_domains.iter().map(|m| m.key()).collect();
            let wc: Vec<&str> = w["cfg_cond_domains"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            assert_eq!(conds, wc, "set {i} step {j}: cfg conditions");
        }
    }
}

/// Every chain of the fixture, without the KV cache: logits of every MaskGIT, ROAR and
/// autoregressive sampling (guided and not) within 1e-5, and identical token ids.
#[test]
fn chained_runs_equal_ml4m() {
    tch::set_num_threads(1);
    let fx = fixture();
    let ckpt = model(&fx);
    let mut worst = 0.0f64;
    let single = cases(&fx, &["maskgit_", "roar", "ar_chain", "sampled_"]);
    assert!(single.len() >= 7, "the fixture's single-guidance chains");
    for case in single {
        worst = worst.max(run_case(&ckpt, &fx, case, false));
    }
    eprintln!("max relative logit difference to ml-4m: {worst:e}");
}

/// The autoregressive chains again with the KV cache: the same ids as ml-4m (and as without).
#[test]
fn kv_cached_autoregression_gives_the_same_ids() {
    tch::set_num_threads(1);
    let fx = fixture();
    let ckpt = model(&fx);
    let chains = cases(&fx, &["ar_chain"]);
    assert!(chains.len() >= 2, "the fixture has autoregressive chains");
    for case in chains {
        run_case(&ckpt, &fx, case, true);
    }
}

/// Multi-condition guidance (ml-4m's `generate_multi_guided`, cfg_scales as lists): MaskGIT
/// and ROAR, a finished target joining as a condition, image-only conditions whose
/// unconditional pass has no encoder token: logits within 1e-5 and identical ids.
#[test]
fn multi_condition_guidance_equals_ml4m() {
    tch::set_num_threads(1);
    let fx = fixture();
    let ckpt = model(&fx);
    let multi = cases(&fx, &["multi_"]);
    assert!(multi.len() >= 3, "the fixture's multi-guided chains");
    for case in multi {
        assert!(case["multi_guided"].as_bool().unwrap());
        let (steps, _) = plan(case);
        assert!(steps.iter().all(|s| !s.cfg_weights.is_empty()), "{}: weights reach the steps", case["name"]);
        run_case(&ckpt, &fx, case, false);
    }
}

/// Rows that emit `[S_2]` early, at different steps (weights shaped by the reference
/// script), stop and merge as ml-4m's: finished rows keep generating until every row has
/// stopped, spans merge up to the sentinel and right-pad with `[PAD]`; with and without the
/// KV cache, guided and not.
#[test]
fn autoregressive_early_stop_equals_ml4m() {
    tch::set_num_threads(1);
    let fx = fixture();
    let stop_cases = cases(&fx, &["ar_stop"]);
    assert!(stop_cases.len() >= 2, "the fixture's early-stop chains");
    for case in stop_cases {
        let name = case["name"].as_str().unwrap();
        // The fixture really exercises the path: every row stops, at distinct steps.
        for (key, steps) in case["ar_stop_steps"].as_object().unwrap() {
            let steps: Vec<i64> = steps.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            let distinct: std::collections::BTreeSet<_> = steps.iter().collect();
            assert!(steps.iter().all(|&s| s >= 0) && distinct.len() == steps.len(), "{name}: {key} stops at {steps:?}");
        }
        let ckpt = case_model(&fx, case);
        for kv_cache in [false, true] {
            run_case(&ckpt, &fx, case, kv_cache);
        }
    }
}

fn expect_err<T: std::fmt::Debug>(r: tessera_model::Result<T>, needles: &[&str]) {
    let msg = r.expect_err("expected an error").to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not name {n:?}");
    }
}

/// Bad schedules and batches fail with errors that name the modality, key or file.
#[test]
fn bad_input_is_a_typed_error_naming_what_is_wrong() {
    let fx = fixture();
    let ckpt = model(&fx);
    let sp = specials(&fx);
    let case = &fx["cases"][0];
    let batch = conditioning(&fx, case, &sp);
    let sampler = GenerationSampler::new(&ckpt.model, sp.clone());
    let run = |kw: Value| -> tessera_model::Result<MaskedBatch> {
        let spec: ScheduleSpec = serde_json::from_value(kw).unwrap();
        let plan = spec.resolve("bad.yaml")?;
        sampler.generate(&batch, &plan.steps, &GenerateOptions::default())
    };
    let base = case["schedule_kwargs"].clone();

    // A target the model has no decoder embedding for.
    let mut kw = base.clone();
    kw["target_domains"][1] = "tok_semseg@224".into();
    expect_err(run(kw), &["tok_semseg@224", "decoder embedding"]);

    // Lists of different lengths, named by key and file (here a real YAML file).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sched.yaml");
    let mut kw = base.clone();
    kw["temps"] = serde_json::json!([1.0]);
    std::fs::write(&path, serde_yaml::to_string(&kw).unwrap()).unwrap();
    let spec = ScheduleSpec::from_file(&path).unwrap();
    expect_err(spec.resolve(&path.display().to_string()), &["temps", "sched.yaml"]);

    // A scheme that does not fit the target, an unknown value.
    let mut kw = base.clone();
    kw["autoregression_schemes"][0] = "autoregressive".into();
    expect_err(run(kw), &["tok_clip@224", "autoregressive"]);
    let mut kw = base.clone();
    kw["temp_schedules"][0] = "cosine".into();
    expect_err(run(kw), &["temp_schedules", "cosine", "bad.yaml"]);

    // A guidance condition that is not in the batch.
    let mut kw = base.clone();
    kw["cond_domains"] = serde_json::json!(["tok_rgb@224"]);
    kw["cfg_scales"] = serde_json::json!([3.0, 3.0]);
    expect_err(run(kw), &["tok_rgb@224", "not in the batch"]);

    // Token ids outside the vocabulary.
    let mut bad = MaskedBatch { modalities: BTreeMap::new() };
    for (m, t) in &batch.modalities {
        let tensor = if *m == Modality::Caption { t.tensor.full_like(40_000) } else { t.tensor.shallow_clone() };
        let t2 = ModalityTensors {
            tensor,
            input_mask: t.input_mask.shallow_clone(),
            target_mask: t.target_mask.shallow_clone(),
            decoder_attention_mask: t.decoder_attention_mask.shallow_clone(),
        };
        bad.modalities.insert(*m, t2);
    }
    let (steps, opts) = plan(case);
    expect_err(sampler.generate(&bad, &steps, &opts), &["caption", "vocabulary"]);
}
