//! Seeded generator of valid masked batches in ml-4m's layout, for demos, tests and
//! benchmarks before (and independently of) the data path. It follows 4M's masking rules
//! (disjoint image input/target positions, span masking with sentinels for sequences, target
//! block at offset b_in, compressed decoder attention masks) with simple random budgets; the
//! real Dirichlet-mixture sampler lives in the data path.

use rand::Rng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};
use tessera_tokenizers::{Modality, ModalityKind, PosEmb};

use crate::batch::{MaskedBatch, ModalityTensors};
use crate::config::FourMConfig;

/// Id of `[EOS]` in ml-4m's WordPiece vocabulary.
pub const EOS_ID: i64 = 3;
/// Id of sentinel `[S_k]` is `SENTINEL_BASE + k`.
pub const SENTINEL_BASE: i64 = 4;
/// First id after ml-4m's 4,284 special tokens: ordinary words start here.
const FIRST_WORD_ID: i64 = 4284;

/// Settings of the synthetic batch generator.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    /// Samples in the batch.
    pub batch_size: usize,
    /// Per-sample encoder token budget.
    pub input_tokens: usize,
    /// Per-sample decoder token budget.
    pub target_tokens: usize,
    /// RNG seed; the same seed gives the same batch.
    pub seed: u64,
}

/// Splits `total` over `n` slots with a flat Dirichlet (exponential draws), flooring.
fn split_budget(rng: &mut ChaCha8Rng, total: usize, n: usize) -> Vec<usize> {
    if n == 0 {
        return vec![];
    }
    let w: Vec<f64> = (0..n).map(|_| -(1.0 - rng.random::<f64>()).ln()).collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|x| ((x / s) * total as f64).floor() as usize).collect()
}

/// One sample's tensors for one modality (flat vectors, stacked later).
struct SampleMod {
    tensor_f: Vec<f32>,
    tensor_i: Vec<i64>,
    input_mask: Vec<bool>,
    target_mask: Vec<bool>,
    dam: Vec<i64>,
}

/// Generates a batch over every modality of `cfg` (union of inputs and outputs).
pub fn synthetic_batch(cfg: &FourMConfig, spec: &SyntheticSpec) -> MaskedBatch {
    let mods = cfg.all_domains();
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut per_mod: Vec<Vec<SampleMod>> = mods.iter().map(|_| Vec::new()).collect();
    for _ in 0..spec.batch_size {
        let ins: Vec<usize> = (0..mods.len()).filter(|&i| cfg.domains_in.contains(&mods[i])).collect();
        let outs: Vec<usize> = (0..mods.len()).filter(|&i| cfg.domains_out.contains(&mods[i])).collect();
        let b_in_split = split_budget(&mut rng, spec.input_tokens, ins.len());
        let b_tgt_split = split_budget(&mut rng, spec.target_tokens, outs.len());
        for (i, &m) in mods.iter().enumerate() {
            let b_in = ins.iter().position(|&j| j == i).map(|p| b_in_split[p]).unwrap_or(0);
            let b_tgt = outs.iter().position(|&j| j == i).map(|p| b_tgt_split[p]).unwrap_or(0);
            per_mod[i].push(sample_modality(&mut rng, m, b_in, b_tgt));
        }
    }
    let b = spec.batch_size as i64;
    let mut modalities = std::collections::BTreeMap::new();
    for (i, &m) in mods.iter().enumerate() {
        let s = m.spec();
        let samples = &per_mod[i];
        let len = s.batch_len() as i64;
        let flat_bool = |f: &dyn Fn(&SampleMod) -> &Vec<bool>| {
            let v: Vec<bool> = samples.iter().flat_map(|x| f(x).iter().copied()).collect();
            Tensor::from_slice(&v).reshape([b, len])
        };
        let tensor = match s.kind {
            ModalityKind::Pixels => {
                let v: Vec<f32> = samples.iter().flat_map(|x| x.tensor_f.iter().copied()).collect();
                Tensor::from_slice(&v).reshape([b, s.channels as i64, s.image_size as i64, s.image_size as i64])
            }
            ModalityKind::SequenceEmbedding => {
                let v: Vec<f32> = samples.iter().flat_map(|x| x.tensor_f.iter().copied()).collect();
                Tensor::from_slice(&v).reshape([b, len, s.channels as i64])
            }
            _ => {
                let v: Vec<i64> = samples.iter().flat_map(|x| x.tensor_i.iter().copied()).collect();
                Tensor::from_slice(&v).reshape([b, len])
            }
        };
        let dam: Vec<i64> = samples.iter().flat_map(|x| x.dam.iter().copied()).collect();
        modalities.insert(
            m,
            ModalityTensors {
                tensor,
                input_mask: flat_bool(&|x| &x.input_mask),
                target_mask: flat_bool(&|x| &x.target_mask),
                decoder_attention_mask: Tensor::from_slice(&dam).reshape([b, len]).to_kind(Kind::Int64),
            },
        );
    }
    MaskedBatch { modalities }
}

fn sample_modality(rng: &mut ChaCha8Rng, m: Modality, b_in: usize, b_tgt: usize) -> SampleMod {
    let s = m.spec();
    let len = s.batch_len();
    let mut out =
        SampleMod { tensor_f: vec![], tensor_i: vec![], input_mask: vec![true; len], target_mask: vec![true; len], dam: vec![0; len] };
    match s.kind {
        ModalityKind::Pixels | ModalityKind::ImageTokens | ModalityKind::GlobalTokens => {
            let n = s.max_tokens;
            if s.kind == ModalityKind::Pixels {
                let px = s.channels * s.image_size * s.image_size;
                out.tensor_f = (0..px).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect();
            } else {
                out.tensor_i = (0..n).map(|_| rng.random_range(0..s.vocab_size as i64)).collect();
            }
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(rng);
            let b_in = b_in.min(n);
            let b_tgt = if s.has_decoder { b_tgt.min(n - b_in) } else { 0 };
            for &p in &perm[..b_in] {
                out.input_mask[p] = false;
            }
            for &p in &perm[b_in..b_in + b_tgt] {
                out.target_mask[p] = false;
            }
            if let Some(first) = (0..n).find(|&i| !out.target_mask[i]) {
                out.dam[first] = b_tgt as i64;
            }
        }
        ModalityKind::SequenceEmbedding => {
            let rows = s.max_tokens;
            out.tensor_f = vec![0.0; rows * s.channels];
            let valid = rng.random_range(1..=rows).min(b_in);
            for r in 0..valid {
                out.input_mask[r] = false;
                for c in 0..s.channels {
                    out.tensor_f[r * s.channels + c] = rng.random::<f32>() * 2.0 - 1.0;
                }
            }
        }
        ModalityKind::Sequence => {
            out.tensor_i = vec![0; len];
            let rows = match s.pos_emb {
                PosEmb::SinCos1d { max_length } => max_length,
                _ => s.max_tokens,
            };
            let n_words = rng.random_range(1..s.max_tokens);
            let mut units: Vec<i64> = (0..n_words).map(|_| rng.random_range(FIRST_WORD_ID..s.vocab_size as i64)).collect();
            units.push(EOS_ID);
            units.truncate(s.max_tokens);
            let b_in = b_in.min(rows).min(s.max_tokens);
            let mut p_keep: f64 = if b_in == 0 { 0.0 } else { rng.random() };
            // ml-4m: with no input budget the whole sequence is one target span and the
            // input is empty; otherwise shrink the keep probability until the input fits.
            let (inp, tgt) = loop {
                let (inp, tgt) = span_mask(rng, &units, p_keep);
                if b_in == 0 {
                    break (vec![], tgt);
                }
                if inp.len() <= b_in {
                    break (inp, tgt);
                }
                p_keep *= 0.9;
            };
            let tgt: Vec<i64> = if s.has_decoder { tgt.into_iter().take(b_tgt).collect() } else { vec![] };
            for (i, &t) in inp.iter().enumerate() {
                out.tensor_i[i] = t;
                out.input_mask[i] = false;
            }
            for (j, &t) in tgt.iter().enumerate() {
                out.tensor_i[b_in + j] = t;
                out.target_mask[b_in + j] = false;
                out.dam[b_in + j] = 1;
            }
        }
    }
    out
}

/// T5-style span masking: masked runs become sentinels `[S_1]`, `[S_2]`, … in the input and
/// `[S_k] span…` in the target, which ends with a closing sentinel.
fn span_mask(rng: &mut ChaCha8Rng, units: &[i64], p_keep: f64) -> (Vec<i64>, Vec<i64>) {
    let (mut inp, mut tgt, mut s, mut prev_masked) = (vec![], vec![], 0i64, false);
    for &u in units {
        let masked = rng.random::<f64>() > p_keep;
        if masked {
            if !prev_masked {
                s += 1;
                inp.push(SENTINEL_BASE + s);
                tgt.push(SENTINEL_BASE + s);
            }
            tgt.push(u);
        } else {
            inp.push(u);
        }
        prev_masked = masked;
    }
    tgt.push(SENTINEL_BASE + s + 1);
    (inp, tgt)
}
