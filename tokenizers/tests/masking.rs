//! Masking against ml-4m's rules (reference §3.4–3.5, pitfalls 2–8, 22, 25, 29), on ml-4m's own
//! WordPiece tokenizer and the real 4M-21 alphas mixture, with seeded synthetic samples.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_tokenizers::masking::synthetic::SyntheticSource;
use tessera_tokenizers::masking::{
    BatchTensor, MaskedModality, MaskedSample, MaskedTensor, MaskingOptions, ModalityValue, SampleMasker, SampleValues, collate,
    collate_into,
};
use tessera_tokenizers::mixture::{AlphasConfig, BudgetConfig, BudgetSampler, Keep, SampleBudget, TokenRange};
use tessera_tokenizers::text::TextTokenizer;
use tessera_tokenizers::{Modality, ModalityKind};

fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m").join(rel)
}

fn tokenizer() -> Arc<TextTokenizer> {
    static TOK: OnceLock<Arc<TextTokenizer>> = OnceLock::new();
    TOK.get_or_init(|| Arc::new(TextTokenizer::from_file(shared("text_tokenizer_4m_wordpiece_30k.json")).expect("ml-4m tokenizer JSON")))
        .clone()
}

fn sampler(seed: u64) -> BudgetSampler {
    let path = shared("configs/alphas/mix_mod21_all2allmix_rgb2all_capT5bias.yaml");
    let mix = AlphasConfig::from_yaml_file(&path).unwrap().resolve(None).unwrap();
    let cfg = BudgetConfig { input_tokens: TokenRange::fixed(256), target_tokens: TokenRange::fixed(256), seed };
    BudgetSampler::new(mix, cfg).unwrap()
}

fn masker(mods: &[Modality], seed: u64) -> SampleMasker {
    SampleMasker::new(mods, tokenizer(), MaskingOptions { seed }).unwrap()
}

/// A one-modality budget by hand.
fn budget(index: u64, b_in: usize, b_tgt: usize, keep: Keep) -> SampleBudget {
    SampleBudget {
        index,
        component: 0,
        num_input_tokens: b_in,
        num_target_tokens: b_tgt,
        input: vec![b_in],
        target: vec![b_tgt],
        keep: vec![keep],
    }
}

fn one(m: Modality, v: ModalityValue) -> SampleValues {
    BTreeMap::from([(m, v)])
}

fn ids(x: &MaskedModality) -> &[i64] {
    x.tensor.ids().expect("an id tensor")
}

fn sentinel(k: u32) -> i64 {
    i64::from(tokenizer().sentinel_id(k).unwrap())
}

fn is_sentinel(id: i64) -> bool {
    static SET: OnceLock<BTreeSet<i64>> = OnceLock::new();
    SET.get_or_init(|| tokenizer().sentinels().map(|(_, id)| i64::from(id)).collect()).contains(&id)
}

/// Sentinel number k of an id `[S_k]`.
fn sentinel_k(id: i64) -> Option<u32> {
    tokenizer().sentinels().find(|(_, s)| i64::from(*s) == id).map(|(k, _)| k)
}

fn eos() -> i64 {
    i64::from(tokenizer().eos_id().unwrap())
}

/// The units ml-4m masks: text ids + EOS truncated to max_tokens, or chunk ids + an EOS chunk
/// while the cumulative count fits.
fn original_tokens(m: Modality, v: &ModalityValue) -> Vec<i64> {
    let tok = tokenizer();
    let max = m.spec().max_tokens;
    let enc = |s: &str| tok.encode(s).unwrap().into_iter().map(i64::from).collect::<Vec<_>>();
    match v {
        ModalityValue::Text(s) => {
            let mut t = enc(s);
            t.push(eos());
            t.truncate(max);
            t
        }
        ModalityValue::Chunks(chunks) => {
            let mut t = Vec::new();
            for c in chunks.iter().map(|c| enc(c)).chain(std::iter::once(vec![eos()])) {
                if t.len() + c.len() > max {
                    break;
                }
                t.extend(c);
            }
            t
        }
        _ => panic!("not a sequence"),
    }
}

/// Input with every `[S_k]` replaced by the target's span after `[S_k]` (ml-4m `merge_span_masking`).
fn merge_spans(input: &[i64], target: &[i64]) -> Vec<i64> {
    let mut spans: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut cur = None;
    for &t in target {
        if is_sentinel(t) {
            cur = Some(t);
            spans.entry(t).or_default();
        } else if let Some(s) = cur {
            spans.get_mut(&s).unwrap().push(t);
        }
    }
    input.iter().flat_map(|t| if is_sentinel(*t) { spans.get(t).cloned().unwrap_or_default() } else { vec![*t] }).collect()
}

/// Positions where a mask is false, i.e. selected.
fn selected(mask: &[bool]) -> Vec<usize> {
    mask.iter().enumerate().filter(|(_, m)| !**m).map(|(i, _)| i).collect()
}

/// Checks every invariant of one masked modality against its value and budget; returns
/// whether a sequence target was truncated.
fn check(m: Modality, value: &ModalityValue, x: &MaskedModality, b_in: usize, b_tgt: usize) -> bool {
    let s = m.spec();
    let len = s.batch_len();
    assert_eq!((x.input_mask.len(), x.target_mask.len(), x.decoder_attention_mask.len()), (len, len, len), "{m}: mask lengths");
    let (inp, tgt) = (selected(&x.input_mask), selected(&x.target_mask));
    assert!(inp.len() <= b_in && tgt.len() <= b_tgt, "{m}: {} inputs / {} targets over budget {b_in}/{b_tgt}", inp.len(), tgt.len());
    match s.kind {
        ModalityKind::Pixels | ModalityKind::ImageTokens | ModalityKind::GlobalTokens => {
            assert_eq!((inp.len(), tgt.len()), (b_in, b_tgt), "{m}: an image spends its budgets exactly");
            assert!(inp.iter().all(|i| x.target_mask[*i]), "{m}: input and target positions overlap");
            let first = tgt.first().copied().unwrap_or(0);
            let mut dam = vec![0i64; len];
            dam[first] = b_tgt as i64;
            assert_eq!(x.decoder_attention_mask, dam, "{m}: dam");
            match (value, &x.tensor) {
                (ModalityValue::Tokens(v), MaskedTensor::Ids(t)) => assert_eq!(v, t, "{m}: tokens untouched"),
                (ModalityValue::Pixels(v), MaskedTensor::Floats { data, shape }) => {
                    assert_eq!(v, data, "{m}: pixels untouched");
                    assert_eq!(shape, &[3, 224, 224]);
                }
                _ => panic!("{m}: tensor kind"),
            }
            false
        }
        ModalityKind::SequenceEmbedding => {
            let ModalityValue::Embeddings { rows, dim, data: orig } = value else { panic!("{m}: value kind") };
            let MaskedTensor::ZeroPaddedRows { shape, .. } = &x.tensor else { panic!("{m}: tensor kind") };
            assert_eq!(shape, &[77, 4096]);
            let data = &x.tensor.dense_floats().unwrap();
            assert!(tgt.is_empty() && x.decoder_attention_mask.iter().all(|d| *d == 0), "{m}: input only");
            assert_eq!(inp, (0..inp.len()).collect::<Vec<_>>(), "{m}: inputs at the front");
            // Each input row is a zero sentinel row or the next kept original row, in order;
            // two sentinels are never adjacent (a dropped run is one sentinel).
            let mut next = 0;
            let mut prev_zero = false;
            for r in 0..inp.len() {
                let row = &data[r * dim..(r + 1) * dim];
                if row.iter().all(|v| *v == 0.0) {
                    assert!(!prev_zero, "{m}: adjacent sentinel rows at {r}");
                    prev_zero = true;
                    next += 1; // at least one original row was dropped here
                    continue;
                }
                let found = (next..(*rows).min(77)).find(|&o| orig[o * dim..(o + 1) * dim] == *row);
                let o = found.unwrap_or_else(|| panic!("{m}: input row {r} is not a later original row"));
                assert!(prev_zero || o == next, "{m}: row {r} skips originals without a sentinel");
                next = o + 1;
                prev_zero = false;
            }
            assert!(data[inp.len() * dim..].iter().all(|v| *v == 0.0), "{m}: rows past the input are zero");
            false
        }
        ModalityKind::Sequence => {
            let t = ids(x);
            assert_eq!(inp, (0..inp.len()).collect::<Vec<_>>(), "{m}: input block at 0");
            let dam: Vec<i64> = x.target_mask.iter().map(|m| i64::from(!*m)).collect();
            assert_eq!(x.decoder_attention_mask, dam, "{m}: causal dam = 1 on targets");
            if tgt.is_empty() {
                assert_eq!(b_tgt, 0, "{m}: a target always has a sentinel unless the budget is 0");
                assert!(t[inp.len()..].iter().all(|v| *v == 0), "{m}: PAD after input");
                return true;
            }
            // Pitfall 2: the target block starts at b_in, and the gap is PAD with both masks set.
            assert_eq!(tgt, (b_in..b_in + tgt.len()).collect::<Vec<_>>(), "{m}: target block at offset b_in");
            assert!(t[inp.len()..b_in].iter().all(|v| *v == 0) && t[b_in + tgt.len()..].iter().all(|v| *v == 0), "{m}: PAD elsewhere");
            let (input, target) = (&t[..inp.len()], &t[b_in..b_in + tgt.len()]);
            assert!(is_sentinel(target[0]), "{m}: target starts with a sentinel");
            let ks: Vec<u32> = target.iter().filter_map(|id| sentinel_k(*id)).collect();
            assert!(ks.windows(2).all(|w| w[1] == w[0] + 1), "{m}: sentinels consecutive {ks:?}");
            let orig = original_tokens(m, value);
            if b_in == 0 {
                // Everything is target: [S_1] seq [S_2], or its first b_tgt tokens (S_1 is the
                // only non-final sentinel to start from).
                assert!(input.is_empty(), "{m}: b_in == 0 leaves no input");
                let mut whole = vec![sentinel(1)];
                whole.extend(&orig);
                whole.push(sentinel(2));
                assert_eq!(target, &whole[..target.len()], "{m}: b_in == 0 gives [S_1] seq [S_2]");
                assert!(target.len() == whole.len() || target.len() == b_tgt, "{m}: cut exactly at the budget");
                return target.len() < whole.len();
            }
            let n_spans = input.iter().filter(|t| is_sentinel(**t)).count() as u32;
            let closed = sentinel_k(*target.last().unwrap()) == Some(n_spans + 1);
            if ks[0] == 1 && closed {
                // Untruncated: the closing sentinel is [S_{n+1}] and spans restore the sequence.
                assert_eq!(merge_spans(input, target), orig, "{m}: input + spans reassemble the sequence");
                false
            } else {
                // Truncated: exactly b_tgt tokens from a non-final sentinel, or a tail that ends
                // with the closing sentinel and fits the budget.
                assert!(target.len() == b_tgt || (target.len() < b_tgt && closed), "{m}: truncation rule");
                assert!(ks[0] > 1 || target.len() == b_tgt, "{m}: a tail never starts at [S_1]");
                true
            }
        }
    }
}

#[test]
fn every_invariant_holds_over_the_4m21_mixture() {
    let bs = sampler(1);
    let mods = bs.modalities().to_vec();
    let mk = masker(&mods, 2);
    let src = SyntheticSource::new(&mods, &tokenizer());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (mut truncated, mut zero_in, mut keep_all) = (0, 0, 0);
    for i in 0..600 {
        let b = bs.sample(i);
        let values = src.sample(&mut rng);
        let out = mk.mask(values.clone(), &b).unwrap();
        assert_eq!(out.keys().copied().collect::<BTreeSet<_>>(), mods.iter().copied().collect::<BTreeSet<_>>());
        let (mut sum_in, mut sum_tgt) = (0, 0);
        for (j, m) in mods.iter().enumerate() {
            truncated += usize::from(check(*m, &values[m], &out[m], b.input[j], b.target[j]));
            zero_in += usize::from(m.kind() == ModalityKind::Sequence && b.input[j] == 0 && b.target[j] > 0);
            keep_all += usize::from(b.keep[j] == Keep::All);
            sum_in += out[m].input_count();
            sum_tgt += out[m].target_count();
        }
        assert!(sum_in <= 256 && sum_tgt <= 256, "sample {i}: {sum_in}/{sum_tgt}");
    }
    // The paths the checks cover must actually occur.
    assert!(truncated > 50 && zero_in > 500 && keep_all > 50, "truncated {truncated}, b_in=0 {zero_in}, keep all {keep_all}");
}

#[test]
fn keep_all_leaves_the_target_as_s1() {
    let mk = masker(&[Modality::Caption], 0);
    let v = ModalityValue::Text("a dog runs on the beach".into());
    let orig = original_tokens(Modality::Caption, &v);
    let out = mk.mask(one(Modality::Caption, v), &budget(0, 100, 50, Keep::All)).unwrap();
    let x = &out[&Modality::Caption];
    let t = ids(x);
    assert_eq!(&t[..orig.len()], orig.as_slice(), "whole caption + EOS as input");
    assert_eq!(*orig.last().unwrap(), eos());
    assert_eq!(selected(&x.target_mask), vec![100], "one target position at b_in");
    assert_eq!(t[100], sentinel(1));
    assert_eq!(t[100], 5, "[S_1] is id 5");
    assert_eq!(x.decoder_attention_mask[100], 1);
}

#[test]
fn zero_input_budget_makes_the_whole_sequence_the_target() {
    let mk = masker(&[Modality::Caption], 0);
    let v = ModalityValue::Text("a red car parked next to a small house".into());
    let orig = original_tokens(Modality::Caption, &v);
    for keep in [Keep::Random, Keep::All, Keep::Binary] {
        let x = mk.mask(one(Modality::Caption, v.clone()), &budget(7, 0, 256, keep)).unwrap().remove(&Modality::Caption).unwrap();
        assert_eq!(x.input_count(), 0);
        let mut want = vec![sentinel(1)];
        want.extend(&orig);
        want.push(sentinel(2));
        assert_eq!(&ids(&x)[..want.len()], want.as_slice(), "{keep:?}");
        assert_eq!(selected(&x.target_mask), (0..want.len()).collect::<Vec<_>>());
    }
    // Over budget with one non-final sentinel: cut to the first b_tgt tokens.
    let x = mk.mask(one(Modality::Caption, v), &budget(7, 0, 4, Keep::Random)).unwrap().remove(&Modality::Caption).unwrap();
    assert_eq!(&ids(&x)[..4], &[sentinel(1), orig[0], orig[1], orig[2]]);
    assert_eq!(x.target_count(), 4);
}

#[test]
fn eos_is_appended_before_truncation() {
    let mk = masker(&[Modality::ColorPalette], 0);
    // 8 colours: 1 + 24 coordinate tokens, beyond max_tokens 23, so EOS is cut.
    let long = std::iter::once("v1=8".to_string()).chain((0..24).map(|i| format!("v0={i}"))).collect::<Vec<_>>().join(" ");
    let x = mk.mask(one(Modality::ColorPalette, ModalityValue::Text(long)), &budget(0, 23, 0, Keep::All)).unwrap();
    let t = ids(&x[&Modality::ColorPalette]);
    assert_eq!(t[..23].iter().filter(|i| **i == eos()).count(), 0, "EOS truncated away");
    assert_eq!(t[0], 1204 + 8, "v1=8");
    assert_eq!(t[22], 204 + 21, "the 23rd token is v0=21");
    let short = ModalityValue::Text("v1=1 v0=1 v0=2 v0=3".into());
    let x = mk.mask(one(Modality::ColorPalette, short), &budget(0, 23, 0, Keep::All)).unwrap();
    assert_eq!(&ids(&x[&Modality::ColorPalette])[..5], &[1205, 205, 206, 207, eos()]);
}

#[test]
fn metadata_is_masked_in_whole_chunks_and_truncated_by_chunk() {
    let m = Modality::Metadata;
    let mk = masker(&[m], 0);
    let src = SyntheticSource::new(&[m], &tokenizer());
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let is_v1 = |t: i64| (1204..2204).contains(&t);
    let is_v0 = |t: i64| (204..1204).contains(&t);
    let mut spans_seen = 0;
    for i in 0..300 {
        let v = src.value(m, &mut rng);
        let ModalityValue::Chunks(chunks) = &v else { panic!() };
        assert_eq!(chunks.len(), 19);
        let b_in = 1 + (i as usize % 40);
        let x = mk.mask(one(m, v.clone()), &budget(i, b_in, 40, Keep::Random)).unwrap().remove(&m).unwrap();
        let t = ids(&x);
        // Outside sentinels and EOS, the input and every span are whole `v1 v0` pairs.
        let segments = |seq: &[i64]| -> Vec<Vec<i64>> {
            seq.split(|t| is_sentinel(*t)).map(|s| s.iter().copied().filter(|t| *t != eos()).collect()).collect()
        };
        let input = &t[..x.input_count()];
        let target = &t[b_in..b_in + x.target_count()];
        for seg in segments(input).into_iter().chain(segments(target)) {
            assert!(seg.len() % 2 == 0 && seg.chunks(2).all(|p| is_v1(p[0]) && is_v0(p[1])), "split pair in {seg:?}");
            spans_seen += 1;
        }
    }
    assert!(spans_seen > 1000, "{spans_seen}");
    // 20 pairs are exactly 40 tokens: the EOS chunk no longer fits. 21 pairs: the last is dropped too.
    for (n, want_len) in [(19, 39), (20, 40), (21, 40)] {
        let chunks: Vec<String> = (0..n).map(|k| format!("v1={k} v0={k}")).collect();
        let x = mk.mask(one(m, ModalityValue::Chunks(chunks)), &budget(0, 40, 0, Keep::All)).unwrap().remove(&m).unwrap();
        assert_eq!(x.input_count(), want_len, "{n} chunks");
        assert_eq!(ids(&x)[want_len - 1] == eos(), n == 19, "{n} chunks: EOS kept only when it fits");
    }
}

#[test]
fn t5_rows_are_kept_in_order_with_zero_sentinel_rows() {
    let m = Modality::T5Caption;
    let mk = masker(&[m], 0);
    let dim = 4096;
    // Row r holds the value r + 1 everywhere, so the output names its source rows; 90 rows
    // exceed max_tokens 77 and the extra rows must never appear.
    let rows = 90;
    let data: Vec<f32> = (0..rows * dim).map(|i| (i / dim + 1) as f32).collect();
    let v = ModalityValue::Embeddings { rows, dim, data };
    let mut with_sentinels = 0;
    for i in 0..200 {
        let b_in = 1 + (i as usize * 7) % 77;
        let x = mk.mask(one(m, v.clone()), &budget(i, b_in, 100, Keep::Random)).unwrap().remove(&m).unwrap();
        check(m, &v, &x, b_in, 100);
        let data = x.tensor.dense_floats().unwrap();
        let firsts: Vec<f32> = (0..x.input_count()).map(|r| data[r * dim]).collect();
        assert!(firsts.iter().all(|f| *f <= 77.0), "row beyond 77 used: {firsts:?}");
        let kept: Vec<f32> = firsts.iter().copied().filter(|f| *f > 0.0).collect();
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "order");
        with_sentinels += usize::from(firsts.contains(&0.0));
    }
    assert!(with_sentinels > 150, "{with_sentinels}");
    let x = mk.mask(one(m, v.clone()), &budget(0, 77, 0, Keep::All)).unwrap().remove(&m).unwrap();
    assert_eq!(x.input_count(), 77, "keep all at full budget: every row");
    let x = mk.mask(one(m, v), &budget(0, 0, 50, Keep::All)).unwrap().remove(&m).unwrap();
    assert_eq!(x.input_count(), 0, "b_in 0: nothing");
    assert!(x.tensor.dense_floats().unwrap().iter().all(|f| *f == 0.0));
    assert!(x.tensor.floats().unwrap().is_empty(), "no input rows are stored");
}

#[test]
fn missing_modalities_are_empty_and_fully_masked() {
    let bs = sampler(0);
    let mods = bs.modalities().to_vec();
    let mk = masker(&mods, 0);
    // A C4-like sample: only a caption.
    let out = mk.mask(one(Modality::Caption, ModalityValue::Text("hello world".into())), &bs.sample(5)).unwrap();
    assert_eq!(out.len(), 19);
    for (m, x) in &out {
        if *m == Modality::Caption {
            continue;
        }
        let s = m.spec();
        assert_eq!(x, &MaskedModality::empty(*m), "{m}");
        assert!(x.input_mask.iter().chain(&x.target_mask).all(|b| *b) && x.decoder_attention_mask.iter().all(|d| *d == 0), "{m}");
        let want_shape = match s.kind {
            ModalityKind::Pixels => vec![3, 224, 224],
            ModalityKind::SequenceEmbedding => vec![77, 4096],
            _ => vec![s.batch_len()],
        };
        assert_eq!(x.tensor.shape(), want_shape, "{m}");
        assert_eq!(x.len(), if s.kind == ModalityKind::Sequence { 2 * (s.max_tokens + 1) } else { s.max_tokens }, "{m}");
    }
    assert_eq!(out[&Modality::Caption].len(), 514);
    assert_eq!(out[&Modality::SamInstance].len(), 582);
    assert_eq!(out[&Modality::Metadata].len(), 82);
    assert_eq!(mk.empty().len(), 19);
}

#[test]
fn same_seed_and_index_give_the_same_sample() {
    let bs = sampler(4);
    let mods = bs.modalities().to_vec();
    let src = SyntheticSource::new(&mods, &tokenizer());
    let values = src.sample(&mut ChaCha8Rng::seed_from_u64(1));
    let (a, b) = (masker(&mods, 10), masker(&mods, 10));
    let budget = bs.sample(42);
    let first = a.mask(values.clone(), &budget).unwrap();
    let _ = a.mask(values.clone(), &bs.sample(43)).unwrap();
    assert_eq!(first, b.mask(values.clone(), &budget).unwrap(), "another masker, after other samples");
    // Same budget numbers under another index: a different stream, different masks.
    let moved = SampleBudget { index: 43, ..budget.clone() };
    let other = a.mask(values.clone(), &moved).unwrap();
    assert_ne!(first, other);
    let other_seed = masker(&mods, 11).mask(values, &budget).unwrap();
    assert_ne!(first, other_seed);
    // The masking stream differs from the budget stream of the same (seed, index).
    use rand::RngCore;
    let mut m = tessera_tokenizers::masking::masking_rng(4, 42);
    let mut bsr = ChaCha8Rng::seed_from_u64(4);
    bsr.set_stream(42);
    assert_ne!(m.next_u64(), bsr.next_u64());
}

#[test]
fn bad_values_and_budgets_are_errors_naming_the_modality() {
    let mods = [Modality::TokRgb224, Modality::T5Caption, Modality::Rgb224, Modality::Caption];
    let mk = masker(&mods, 0);
    let b = |b_in: usize, b_tgt: usize| SampleBudget {
        index: 0,
        component: 0,
        num_input_tokens: 0,
        num_target_tokens: 0,
        input: vec![b_in; 4],
        target: vec![b_tgt; 4],
        keep: vec![Keep::Random; 4],
    };
    let err = |m: Modality, v: ModalityValue, bb: &SampleBudget| mk.mask(one(m, v), bb).unwrap_err().to_string();
    let e = err(Modality::TokRgb224, ModalityValue::Tokens(vec![0; 195]), &b(1, 1));
    assert!(e.contains("tok_rgb@224") && e.contains("195"), "{e}");
    let e = err(Modality::TokRgb224, ModalityValue::Tokens(vec![16384; 196]), &b(1, 1));
    assert!(e.contains("tok_rgb@224") && e.contains("16384"), "{e}");
    let e = err(Modality::TokRgb224, ModalityValue::Text("x".into()), &b(1, 1));
    assert!(e.contains("tok_rgb@224") && e.contains("Text"), "{e}");
    let e = err(Modality::T5Caption, ModalityValue::Embeddings { rows: 2, dim: 8, data: vec![0.0; 16] }, &b(1, 1));
    assert!(e.contains("t5_caption") && e.contains("4096"), "{e}");
    let e = err(Modality::Rgb224, ModalityValue::Pixels(vec![0.0; 10]), &b(1, 1));
    assert!(e.contains("rgb@224") && e.contains("150528"), "{e}");
    let e = err(Modality::TokRgb224, ModalityValue::Tokens(vec![0; 196]), &b(100, 97));
    assert!(e.contains("tok_rgb@224") && e.contains("disjoint"), "{e}");
    let e = err(Modality::Caption, ModalityValue::Text("x".into()), &b(257, 0));
    assert!(e.contains("caption") && e.contains("257"), "{e}");
    let short = SampleBudget { input: vec![1], ..b(1, 1) };
    let e = mk.mask(SampleValues::new(), &short).unwrap_err().to_string();
    assert!(e.contains("4 modalities"), "{e}");
    assert!(SampleMasker::new(&[Modality::Caption, Modality::Caption], tokenizer(), MaskingOptions::default()).is_err());
}

#[test]
fn collate_stacks_samples_in_order() {
    let bs = sampler(6);
    let mods = bs.modalities().to_vec();
    let mk = masker(&mods, 6);
    let src = SyntheticSource::new(&mods, &tokenizer());
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let samples: Vec<MaskedSample> = (0..3).map(|i| mk.mask(src.sample(&mut rng), &bs.sample(i)).unwrap()).collect();
    let batch = collate(&samples).unwrap();
    assert_eq!(batch.size(), 3);
    assert_eq!(batch.modalities().len(), 19);
    for (m, x) in batch.modalities() {
        let s = m.spec();
        let len = s.batch_len();
        assert_eq!(x.mask_shape, [3, len], "{m}");
        let want: Vec<usize> = match s.kind {
            ModalityKind::Pixels => vec![3, 3, 224, 224],
            ModalityKind::SequenceEmbedding => vec![3, 77, 4096],
            _ => vec![3, len],
        };
        assert_eq!(x.tensor.shape(), want.as_slice(), "{m}");
        for (i, sample) in samples.iter().enumerate() {
            let one = &sample[m];
            assert_eq!(&x.input_mask[i * len..(i + 1) * len], one.input_mask.as_slice(), "{m} sample {i}");
            assert_eq!(&x.target_mask[i * len..(i + 1) * len], one.target_mask.as_slice());
            assert_eq!(&x.decoder_attention_mask[i * len..(i + 1) * len], one.decoder_attention_mask.as_slice());
            match (&x.tensor, &one.tensor) {
                (BatchTensor::Ids { data, .. }, MaskedTensor::Ids(v)) => assert_eq!(&data[i * v.len()..(i + 1) * v.len()], v.as_slice()),
                (BatchTensor::Floats { data, .. }, t) => {
                    let v = t.dense_floats().expect("floats");
                    assert_eq!(&data[i * v.len()..(i + 1) * v.len()], v.as_slice())
                }
                _ => panic!("{m}: kind changed"),
            }
        }
    }
    // Reusing a batch's buffers gives the same result: after the same samples in another order
    // (stale T5 rows must be re-zeroed), and after a batch of another size.
    let mut reused = collate(&[samples[2].clone(), samples[0].clone(), samples[1].clone()]).unwrap();
    collate_into(&samples, &mut reused).unwrap();
    assert!(reused == batch, "reused batch differs from a fresh one");
    let mut reused = collate(&samples[..1]).unwrap();
    collate_into(&samples, &mut reused).unwrap();
    assert!(reused == batch, "reused batch differs from a fresh one");
    let only_caption: Vec<MaskedSample> =
        samples.iter().map(|s| s.iter().filter(|(m, _)| **m == Modality::Caption).map(|(m, x)| (*m, x.clone())).collect()).collect();
    collate_into(&only_caption, &mut reused).unwrap();
    assert_eq!(reused.modalities().keys().copied().collect::<Vec<_>>(), [Modality::Caption]);
    assert_eq!(reused.modalities()[&Modality::Caption], batch.modalities()[&Modality::Caption]);
    let mut broken = samples.clone();
    broken[2].remove(&Modality::Det);
    let e = collate(&broken).unwrap_err().to_string();
    assert!(e.contains("det") && e.contains("sample 2"), "{e}");
    assert!(collate(&[]).is_err());
}

#[test]
fn realised_token_counts_are_plausible_for_the_4m21_mixture() {
    // The peer (ml-4m UnifiedMasking on the same kind of synthetic data, 3000 samples) realised
    // means of 167.7 input and 186.3 target tokens per sample; budgets are 256/256 before caps
    // and before sequences run short of tokens.
    let bs = sampler(12);
    let mods = bs.modalities().to_vec();
    let mk = masker(&mods, 12);
    let src = SyntheticSource::new(&mods, &tokenizer());
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let pool: Vec<SampleValues> = (0..50).map(|_| src.sample(&mut rng)).collect();
    let n = 2000;
    let (mut tot_in, mut tot_tgt) = (0usize, 0usize);
    let mut per_mod_in = vec![0usize; mods.len()];
    let mut per_mod_budget = vec![0usize; mods.len()];
    for i in 0..n {
        let b = bs.sample(i as u64);
        let out = mk.mask(pool[i % pool.len()].clone(), &b).unwrap();
        for (j, m) in mods.iter().enumerate() {
            per_mod_in[j] += out[m].input_count();
            per_mod_budget[j] += b.input[j];
            tot_in += out[m].input_count();
            tot_tgt += out[m].target_count();
        }
    }
    let (mean_in, mean_tgt) = (tot_in as f64 / n as f64, tot_tgt as f64 / n as f64);
    assert!((150.0..185.0).contains(&mean_in), "mean input tokens {mean_in}");
    assert!((165.0..205.0).contains(&mean_tgt), "mean target tokens {mean_tgt}");
    for (j, m) in mods.iter().enumerate() {
        assert!(per_mod_in[j] <= per_mod_budget[j], "{m}");
        if m.kind().is_image_like() {
            assert_eq!(per_mod_in[j], per_mod_budget[j], "{m}: images spend their input budget");
        }
    }
}

#[test]
fn keep_schemes_have_ml4m_distributions() {
    let m = Modality::Caption;
    let mk = masker(&[m], 3);
    // 99 words + EOS = 100 tokens.
    let text = vec!["dog"; 99].join(" ");
    let v = ModalityValue::Text(text);
    let n = original_tokens(m, &v).len();
    assert_eq!(n, 100);
    // Random: keep_prob ~ U(0,1), decayed by 0.9 while over budget, so inputs crowd just under
    // b_in instead of collapsing to a bare sentinel.
    let counts: Vec<usize> =
        (0..300).map(|i| mk.mask(one(m, v.clone()), &budget(i, 50, 256, Keep::Random)).unwrap()[&m].input_count()).collect();
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    assert!(counts.iter().all(|c| (1..=50).contains(c)), "{counts:?}");
    assert!((28.0..50.0).contains(&mean), "mean input {mean}");
    assert!(counts.iter().filter(|c| **c >= 40).count() > 100, "the decay stops close to the budget");
    // Random with room for everything: input ~ 100 p (2 - p) for p ~ U(0,1), so both ends occur
    // (p >= 0.55 gives >= 80 tokens, 45% of draws; p <= 0.16 gives <= 30, 16%).
    let free: Vec<usize> =
        (0..300).map(|i| mk.mask(one(m, v.clone()), &budget(i, 200, 256, Keep::Random)).unwrap()[&m].input_count()).collect();
    let (hi, lo) = (free.iter().filter(|c| **c >= 80).count(), free.iter().filter(|c| **c <= 30).count());
    assert!((100..170).contains(&hi) && (25..75).contains(&lo), "keep_prob not uniform: {hi} high, {lo} low");
    // Binary with room for everything: all input (target [S_1]) or all target (input [S_1]).
    let (mut all_in, mut all_out) = (0, 0);
    for i in 0..400 {
        let x = mk.mask(one(m, v.clone()), &budget(i, 200, 256, Keep::Binary)).unwrap().remove(&m).unwrap();
        match (x.input_count(), x.target_count()) {
            (100, 1) => all_in += 1,
            (1, 102) => all_out += 1,
            other => panic!("binary keep gave {other:?}"),
        }
    }
    assert!((160..240).contains(&all_in) && all_in + all_out == 400, "{all_in} / {all_out}");
}

#[test]
fn reused_batches_re_zero_stale_t5_rows() {
    let m = Modality::T5Caption;
    let mk = masker(&[m], 0);
    let v = ModalityValue::Embeddings { rows: 60, dim: 4096, data: vec![1.5; 60 * 4096] };
    let full = mk.mask(one(m, v.clone()), &budget(0, 77, 0, Keep::All)).unwrap();
    let some = mk.mask(one(m, v), &budget(1, 10, 0, Keep::Random)).unwrap();
    let none = mk.empty();
    assert_eq!(full[&m].tensor.floats().unwrap().len(), 60 * 4096, "keep all stores every row");
    let mut out = collate(&[full.clone(), full.clone()]).unwrap();
    for next in [vec![none.clone(), some.clone()], vec![some.clone(), full.clone()], vec![none.clone(), none.clone()]] {
        collate_into(&next, &mut out).unwrap();
        // Not assert_eq: a failure would print megabytes of floats.
        assert!(out == collate(&next).unwrap(), "reused batch differs from a fresh one");
    }
    let BatchTensor::Floats { data, .. } = &out.modalities()[&m].tensor else { panic!() };
    assert!(data.iter().all(|f| *f == 0.0), "two empties after full rows: all zero");
}
