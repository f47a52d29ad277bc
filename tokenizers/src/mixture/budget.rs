//! Per-sample token budgets drawn from a [`Mixture`] (reference §3.3; ml-4m
//! `UnifiedMasking.__call__`, `input_token_budget`, `target_token_budget`).
//!
//! Determinism contract: the budget of global sample index `i` is a pure function of
//! (mixture, config, `config.seed`, `i`). Each sample draws from its own ChaCha8 stream: the key
//! is expanded from the seed, the 64-bit stream id is the index. Nothing is shared between
//! samples, so workers may sample any indices in any order.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::modality::Modality;

use super::resolve::Mixture;
use super::spec::Keep;

/// Attempts per budget before giving up on `min_tokens` (ml-4m `max_tries`).
pub const MAX_TRIES: usize = 100;

/// An inclusive range of per-sample token counts, drawn uniformly (ml-4m `random.randint(lo, hi)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRange {
    /// Smallest count (ml-4m `min_*_tokens`; `None` there means `max`).
    pub min: usize,
    /// Largest count (ml-4m `num_*_tokens`).
    pub max: usize,
}

impl TokenRange {
    /// A range `min..=max`; refuses `min > max`.
    pub fn new(min: usize, max: usize) -> Result<Self> {
        if min > max {
            return Err(Error::Budget { reason: format!("token range {min}..={max} is empty") });
        }
        Ok(Self { min, max })
    }

    /// Always `n` (4M-21 trains with 256/256).
    pub fn fixed(n: usize) -> Self {
        Self { min: n, max: n }
    }
}

/// Settings of budget sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetConfig {
    /// Input tokens per sample, `N_in`.
    pub input_tokens: TokenRange,
    /// Target tokens per sample, `N_tgt`.
    pub target_tokens: TokenRange,
    /// Seed of every sample's stream.
    pub seed: u64,
}

/// One sample's budgets; vectors are indexed like [`Mixture::modalities`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleBudget {
    /// Global sample index it was drawn for.
    pub index: u64,
    /// The mixture component chosen.
    pub component: usize,
    /// `N_in` drawn for this sample.
    pub num_input_tokens: usize,
    /// `N_tgt` drawn for this sample.
    pub num_target_tokens: usize,
    /// Input tokens per modality; sums to at most `num_input_tokens` (caps drop the excess).
    pub input: Vec<usize>,
    /// Target tokens per modality; sums to at most `num_target_tokens`.
    pub target: Vec<usize>,
    /// The component's keep scheme per modality.
    pub keep: Vec<Keep>,
}

/// Draws [`SampleBudget`]s; see the module docs for the determinism contract.
#[derive(Debug, Clone)]
pub struct BudgetSampler {
    mixture: Mixture,
    config: BudgetConfig,
    max_tokens: Vec<usize>,
    min_tokens: Vec<usize>,
    is_image: Vec<bool>,
    cumulative_weights: Vec<f64>,
    input: Vec<Dirichlet>,
    target: Vec<Dirichlet>,
}

impl BudgetSampler {
    /// A sampler with caps from [`Modality::spec`] and ml-4m's `min_tokens` (0 everywhere).
    pub fn new(mixture: Mixture, config: BudgetConfig) -> Result<Self> {
        let mods = mixture.modalities();
        let comps = mixture.components();
        let input = comps.iter().map(|c| Dirichlet::new(&c.input_alphas)).collect::<Result<_>>()?;
        let target = comps.iter().map(|c| Dirichlet::new(&c.target_alphas)).collect::<Result<_>>()?;
        let mut acc = 0.0;
        let cumulative_weights = comps
            .iter()
            .map(|c| {
                acc += c.weight;
                acc
            })
            .collect();
        Ok(Self {
            max_tokens: mods.iter().map(|m| m.spec().max_tokens).collect(),
            min_tokens: vec![0; mods.len()],
            is_image: mods.iter().map(|m| m.kind().is_image_like()).collect(),
            cumulative_weights,
            input,
            target,
            mixture,
            config,
        })
    }

    /// Replaces ml-4m's per-modality `min_tokens` (indexed like the modalities): a budget is
    /// re-drawn, up to [`MAX_TRIES`] times, until every modality has at least its minimum.
    pub fn with_min_tokens(mut self, min_tokens: &[usize]) -> Result<Self> {
        if min_tokens.len() != self.min_tokens.len() {
            return Err(Error::Budget { reason: format!("{} min_tokens for {} modalities", min_tokens.len(), self.min_tokens.len()) });
        }
        self.min_tokens = min_tokens.to_vec();
        Ok(self)
    }

    /// The mixture sampled from.
    pub fn mixture(&self) -> &Mixture {
        &self.mixture
    }

    /// The settings.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// The modalities, in the order of every per-modality vector.
    pub fn modalities(&self) -> &[Modality] {
        self.mixture.modalities()
    }

    /// The budget of global sample `index`.
    pub fn sample(&self, index: u64) -> SampleBudget {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        rng.set_stream(index);

        // Same draw order as ml-4m's __call__: component, N_in, N_tgt, input, target.
        let u: f64 = rng.random();
        let last = self.cumulative_weights.len() - 1;
        let component = self.cumulative_weights.iter().position(|&c| u < c).unwrap_or(last);
        let (ri, rt) = (self.config.input_tokens, self.config.target_tokens);
        let num_input_tokens = rng.random_range(ri.min..=ri.max);
        let num_target_tokens = rng.random_range(rt.min..=rt.max);

        let mut scratch = Scratch::new(self.max_tokens.len());
        let input = self.budget(&self.input[component], num_input_tokens, &self.max_tokens, &mut rng, &mut scratch);
        // Image positions are shared between input and target; sequences are not reduced.
        let cap: Vec<usize> = (0..input.len())
            .map(|j| {
                let rest = if self.is_image[j] { self.max_tokens[j] - input[j] } else { self.max_tokens[j] };
                rest.max(self.min_tokens[j])
            })
            .collect();
        let target = self.budget(&self.target[component], num_target_tokens, &cap, &mut rng, &mut scratch);
        let keep = self.mixture.components()[component].keep.clone();
        SampleBudget { index, component, num_input_tokens, num_target_tokens, input, target, keep }
    }

    /// `floor(Dir * n)`, the remainder as `r` more draws each giving +1 to its argmax, then the
    /// caps; re-drawn while a modality is under its minimum.
    fn budget(&self, dir: &Dirichlet, n: usize, cap: &[usize], rng: &mut ChaCha8Rng, s: &mut Scratch) -> Vec<usize> {
        let mut b = vec![0usize; cap.len()];
        for _ in 0..MAX_TRIES {
            dir.sample(rng, s);
            let n_f = n as f32;
            for (bj, p) in b.iter_mut().zip(&s.p) {
                *bj = (p * n_f).floor() as usize;
            }
            let rest = n.saturating_sub(b.iter().sum());
            for _ in 0..rest {
                dir.sample(rng, s);
                b[argmax_first(&s.p)] += 1;
            }
            for (bj, c) in b.iter_mut().zip(cap) {
                *bj = (*bj).min(*c);
            }
            if b.iter().zip(&self.min_tokens).all(|(bj, m)| bj >= m) {
                return b;
            }
        }
        tracing::warn!(min_tokens = ?self.min_tokens, "no budget met min_tokens in {MAX_TRIES} tries");
        b
    }
}

/// Index of the first maximum (torch's `argmax` on CPU).
fn argmax_first(p: &[f32]) -> usize {
    let mut best = 0;
    for (j, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = j;
        }
    }
    best
}

/// Buffers reused across the draws of one sample.
struct Scratch {
    g: Vec<f64>,
    p: Vec<f32>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Self { g: vec![0.0; n], p: vec![0.0; n] }
    }
}

/// A Dirichlet as torch's CPU `_sample_dirichlet` computes it: Gamma(alpha, 1) draws in f64,
/// each at least `f64::MIN_POSITIVE`, normalised, cast to f32 and clamped to
/// `[f32::MIN_POSITIVE, 1 - 2^-24]`. The clamps decide the all-alphas-tiny case (an even split).
#[derive(Debug, Clone)]
struct Dirichlet {
    gammas: Vec<Gamma<f64>>,
}

/// The largest f32 below 1 (torch's `nexttoward(1.0f, 0)`).
const ONE_BELOW: f32 = 1.0 - f32::EPSILON / 2.0;

impl Dirichlet {
    fn new(alphas: &[f64]) -> Result<Self> {
        let gammas = alphas
            .iter()
            .map(|&a| Gamma::new(a, 1.0).map_err(|e| Error::Budget { reason: format!("Gamma({a}, 1): {e}") }))
            .collect::<Result<_>>()?;
        Ok(Self { gammas })
    }

    fn sample(&self, rng: &mut ChaCha8Rng, s: &mut Scratch) {
        let mut sum = 0.0;
        for (g, d) in s.g.iter_mut().zip(&self.gammas) {
            *g = d.sample(rng).max(f64::MIN_POSITIVE);
            sum += *g;
        }
        for (p, g) in s.p.iter_mut().zip(&s.g) {
            *p = ((g / sum) as f32).clamp(f32::MIN_POSITIVE, ONE_BELOW);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mixture::resolve::tests::{MOD7, MOD21, shared_alphas};
    use crate::mixture::{AlphasConfig, BudgetStats};
    use crate::modality::ModalitySet;

    fn config(n_in: usize, n_tgt: usize, seed: u64) -> BudgetConfig {
        BudgetConfig { input_tokens: TokenRange::fixed(n_in), target_tokens: TokenRange::fixed(n_tgt), seed }
    }

    fn file_sampler(file: &str, n_in: usize, n_tgt: usize, seed: u64) -> BudgetSampler {
        let mix = AlphasConfig::from_yaml_file(&shared_alphas(file)).unwrap().resolve(None).unwrap();
        BudgetSampler::new(mix, config(n_in, n_tgt, seed)).unwrap()
    }

    fn yaml_sampler(yaml: &str, domains: Option<&str>, cfg: BudgetConfig) -> BudgetSampler {
        let set = domains.map(|d| ModalitySet::parse(d).unwrap());
        let mix = AlphasConfig::from_yaml_str(yaml, "test.yaml").unwrap().resolve(set.as_ref()).unwrap();
        BudgetSampler::new(mix, cfg).unwrap()
    }

    fn pos(s: &BudgetSampler, m: Modality) -> usize {
        s.modalities().iter().position(|x| *x == m).unwrap()
    }

    #[test]
    fn sums_and_caps_hold_for_the_4m21_mixture() {
        let s = file_sampler(MOD21, 256, 256, 3);
        let max: Vec<usize> = s.modalities().iter().map(|m| m.spec().max_tokens).collect();
        let (mut short, mut exact) = (0, 0);
        for i in 0..3000 {
            let b = s.sample(i);
            let (si, st): (usize, usize) = (b.input.iter().sum(), b.target.iter().sum());
            assert!(si <= 256 && st <= 256, "{b:?}");
            let mut tgt_caps_slack = true;
            for (j, m) in s.modalities().iter().enumerate() {
                assert!(b.input[j] <= max[j], "{m} input over its cap: {b:?}");
                let cap = if m.kind().is_image_like() { max[j] - b.input[j] } else { max[j] };
                assert!(b.target[j] <= cap, "{m} target over its cap {cap}: {b:?}");
                tgt_caps_slack &= b.target[j] < cap;
            }
            // No cap reached means no token was dropped: the budget is spent exactly.
            if b.input.iter().zip(&max).all(|(x, c)| x < c) {
                assert_eq!(si, 256, "{b:?}");
            }
            if tgt_caps_slack {
                assert_eq!(st, 256, "{b:?}");
            }
            if si < 256 {
                short += 1;
            } else {
                exact += 1;
            }
        }
        // rgb2all (1/6 of samples) always loses 60 input tokens to the rgb@224 cap, and the
        // sparse all2all components (alpha 0.01, 0.1) often pile the budget on a small modality.
        assert!(short > 500 && exact > 500, "short {short}, exact {exact}");
    }

    #[test]
    fn rgb2all_gives_rgb_196_input_tokens_and_caption_bias_keeps_all() {
        let s = file_sampler(MOD21, 256, 256, 11);
        let (rgb, cap, t5) = (pos(&s, Modality::Rgb224), pos(&s, Modality::Caption), pos(&s, Modality::T5Caption));
        let mut seen = [0usize; 7];
        for i in 0..2000 {
            let b = s.sample(i);
            seen[b.component] += 1;
            match b.component {
                4 => {
                    assert_eq!(b.input[rgb], 196, "{b:?}");
                    assert_eq!(b.input.iter().sum::<usize>(), 196, "only rgb@224 is an input: {b:?}");
                    assert_eq!(b.target[rgb], 0, "{b:?}");
                }
                5 => assert_eq!(b.keep[cap], Keep::All),
                6 => {
                    assert_eq!(b.keep[t5], Keep::All);
                    assert_eq!(b.target[t5], 0, "t5 target alpha is 0 in the T5-bias component");
                }
                _ => assert_eq!(b.keep[cap], Keep::Random),
            }
        }
        // Weights 1/6 x5 and 1/12 x2: about 333 and 167 of 2000.
        assert!(seen[..5].iter().all(|&n| (270..400).contains(&n)) && seen[5..].iter().all(|&n| (115..220).contains(&n)), "{seen:?}");
    }

    #[test]
    fn budgets_are_a_pure_function_of_seed_and_index() {
        let a = file_sampler(MOD21, 256, 256, 7);
        let b = file_sampler(MOD21, 256, 256, 7);
        let late = a.sample(123_456);
        for i in [0, 1, 2, 1000, u64::MAX] {
            assert_eq!(a.sample(i), b.sample(i));
        }
        assert_eq!(a.sample(123_456), late, "order of calls does not matter");
        let key = |x: &SampleBudget| (x.component, x.input.clone(), x.target.clone());
        let mut seen: Vec<_> = (0..50).map(|i| key(&a.sample(i))).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 50, "different indices give different budgets");
        let other = file_sampler(MOD21, 256, 256, 8);
        let same = (0..50).filter(|&i| key(&a.sample(i)) == key(&other.sample(i))).count();
        assert_eq!(same, 0, "a different seed gives different budgets");
    }

    #[test]
    fn dirichlet_moments_match_theory() {
        // Sequences only, so no cap binds at 256: every budget is spent exactly.
        let yaml = "in_domains: caption-det-human_poses-sam_instance\nout_domains: caption-det-human_poses-sam_instance\n\
                    input_alphas: \"1.0\"\ntarget_alphas: \"0.5-1.0-2.0-4.5\"\n";
        let s = yaml_sampler(yaml, None, config(256, 256, 2024));
        let mut stats = BudgetStats::new(s.modalities(), 1);
        for i in 0..20_000 {
            let b = s.sample(i);
            assert_eq!((b.input.iter().sum::<usize>(), b.target.iter().sum::<usize>()), (256, 256));
            stats.add(&b);
        }
        let r = stats.report();
        // Dir(1,1,1,1) marginal: Beta(1,3); mean N/4 = 64, std N*sqrt(3/80) = 49.57.
        for m in &r.modalities {
            let se = m.input_std / (20_000f64).sqrt();
            assert!((m.input_mean - 64.0).abs() < (4.0 * se).min(1.5), "{m:?}");
            assert!((m.input_std - 49.57).abs() < 1.0, "{m:?}");
        }
        // Dir(0.5,1,2,4.5) over sorted caption, det, human_poses, sam_instance: N*alpha/8.
        for (m, expect) in r.modalities.iter().zip([16.0, 32.0, 64.0, 144.0]) {
            assert!((m.target_mean - expect).abs() < 2.0, "{m:?} expected {expect}");
        }
        assert_eq!((r.input_total_mean, r.target_total_mean), (256.0, 256.0));
    }

    #[test]
    fn min_tokens_forces_redraws() {
        let yaml = "in_domains: caption-det\nout_domains: caption-det\ninput_alphas: \"1.0\"\ntarget_alphas: \"1.0\"\n";
        let s = yaml_sampler(yaml, None, config(100, 100, 5));
        assert!((0..200).any(|i| s.sample(i).input[0] < 30), "without a minimum, small budgets occur");
        let s = s.with_min_tokens(&[30, 30]).unwrap();
        for i in 0..200 {
            let b = s.sample(i);
            assert!(b.input.iter().chain(&b.target).all(|&x| (30..=70).contains(&x)), "{b:?}");
        }
        assert!(s.with_min_tokens(&[1]).is_err());
    }

    #[test]
    fn token_ranges_are_inclusive_and_c4_caption_takes_everything() {
        let yaml = "input_alphas: \"1.0\"\ntarget_alphas: \"1.0\"\n";
        let cfg = BudgetConfig { input_tokens: TokenRange::new(64, 256).unwrap(), target_tokens: TokenRange::fixed(300), seed: 1 };
        let s = yaml_sampler(yaml, Some("caption"), cfg);
        let (mut lo, mut hi) = (false, false);
        for i in 0..5000 {
            let b = s.sample(i);
            assert!((64..=256).contains(&b.num_input_tokens));
            lo |= b.num_input_tokens == 64;
            hi |= b.num_input_tokens == 256;
            assert_eq!(b.input, vec![b.num_input_tokens], "a single modality takes the whole input budget");
            assert_eq!(b.target, vec![256], "300 target tokens are capped at caption's 256");
        }
        assert!(lo && hi, "both ends of the range are drawn");
        assert!(TokenRange::new(5, 4).is_err());
    }

    #[test]
    fn all_zero_alphas_split_evenly_as_torch_does() {
        // Every alpha clamped to 1e-9: each gamma draw underflows to the minimum, so the
        // Dirichlet is an even split and the remainder goes to the first modality (argmax ties).
        let yaml = "in_domains: caption-det-metadata\nout_domains: caption\n";
        let s = yaml_sampler(yaml, None, config(256, 10, 0));
        for i in 0..100 {
            assert_eq!(s.sample(i).input, vec![86, 85, 40], "metadata is capped at 40");
        }
    }

    #[test]
    fn mod7_rgb2all_half_of_the_time() {
        let s = file_sampler(MOD7, 128, 128, 9);
        let rgb = pos(&s, Modality::Rgb224);
        let rgb2all: Vec<_> = (0..1000).map(|i| s.sample(i)).filter(|b| b.component == 0).collect();
        assert!((430..570).contains(&rgb2all.len()), "{}", rgb2all.len());
        for b in &rgb2all {
            assert_eq!(b.input[rgb], 128, "128 < 196: the rgb budget is not capped");
            assert_eq!(b.input.iter().sum::<usize>(), 128);
        }
    }
}
