//! Chained generation schedules: ml-4m's `build_chained_generation_schedules` and the token,
//! temperature and guidance schedules of `fourm/utils/generation.py`, computed in f64 with
//! numpy's and Python's exact operations (`linspace` with integer flooring, `round` half to
//! even), so that every step decodes the same number of tokens at the same temperature.
//!
//! The YAML form ([`ScheduleSpec`]) uses ml-4m's keyword names plus `top_k` and `top_p`, as
//! `GenerationSampler.generate` takes them.

use std::path::Path;

use serde::Deserialize;
use tessera_tokenizers::{Modality, ModalityKind};

use crate::error::{ModelError, Result};
use crate::generate::sampling::TopK;

/// A decoding scheme (ml-4m `autoregression_schemes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Confidence-ordered parallel unmasking (image-like targets).
    MaskGit,
    /// Random-order unmasking (image-like targets).
    Roar,
    /// Left-to-right decoding of a sequence target.
    Autoregressive,
}

impl Scheme {
    /// ml-4m's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MaskGit => "maskgit",
            Self::Roar => "roar",
            Self::Autoregressive => "autoregressive",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "maskgit" => Some(Self::MaskGit),
            "roar" => Some(Self::Roar),
            "autoregressive" => Some(Self::Autoregressive),
            _ => None,
        }
    }
}

/// How many tokens each MaskGIT step decodes (ml-4m `token_decoding_schedules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDecodingSchedule {
    /// `cosine_schedule`: many tokens first, few at the end.
    Cosine,
    /// `linear_schedule`: near-equal chunks, largest first.
    Linear,
}

/// How the temperature changes over a target's steps (ml-4m `temp_schedules`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TempSchedule {
    /// The start temperature at every step.
    Constant,
    /// Decays with the fraction of tokens left (`linear_temp_schedule`).
    Linear,
    /// `onex:{min_t}:{power}`: a 1/x^power curve from the start temperature down to `min_t`.
    OneX {
        /// The temperature the curve ends at.
        min_t: f64,
        /// The exponent of x.
        power: f64,
    },
}

impl TempSchedule {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "constant" => Some(Self::Constant),
            "linear" => Some(Self::Linear),
            // ml-4m tests `'onex' in name` and reads the two numbers after the first ':'.
            _ if s.contains("onex") => {
                let parts: Vec<&str> = s.split(':').skip(1).collect();
                match parts.as_slice() {
                    [a, b] => Some(Self::OneX { min_t: a.trim().parse().ok()?, power: b.trim().parse().ok()? }),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// How the guidance scale changes over a target's steps (ml-4m `cfg_schedules`; its `cosine`
/// raises `NotImplementedError`, so only `constant` exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfgSchedule {
    /// The same scale at every step.
    Constant,
}

/// One entry of a chained schedule: what one call of a decoding step does.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSchedule {
    /// The modality this step decodes.
    pub target: Modality,
    /// The decoding scheme.
    pub scheme: Scheme,
    /// Tokens decoded in this step; `None` for autoregressive targets (one step decodes the
    /// whole sequence).
    pub num_tokens: Option<i64>,
    /// Sampling temperature (≤ 1e-10 means argmax, as ml-4m's `np.isclose(t, 0)`).
    pub temperature: f64,
    /// Classifier-free guidance scale; 1.0 = no guidance.
    pub cfg_scale: f64,
    /// The modalities blanked in the unconditional pass.
    pub cfg_cond_domains: Vec<Modality>,
    /// Multi-condition guidance (ml-4m's `generate_multi_guided`): one weight per condition,
    /// the `cond_domains` in order and then every earlier target. Empty: single guidance by
    /// `cfg_scale`.
    pub cfg_weights: Vec<f64>,
}

/// The per-target settings of one chain, typed (see [`ScheduleSpec`] for the YAML form).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSettings {
    /// The target modality.
    pub target: Modality,
    /// Tokens of the target (grid size for images).
    pub tokens: i64,
    /// The decoding scheme.
    pub scheme: Scheme,
    /// Number of steps (ignored for autoregressive targets).
    pub decoding_steps: usize,
    /// MaskGIT token schedule (ROAR always uses `linear`).
    pub token_schedule: TokenDecodingSchedule,
    /// Start temperature.
    pub temp: f64,
    /// Temperature schedule.
    pub temp_schedule: TempSchedule,
    /// Guidance scale (1.0 when `cfg_weights` is given).
    pub cfg_scale: f64,
    /// Multi-condition guidance weights (a list in `cfg_scales`); empty for single guidance.
    pub cfg_weights: Vec<f64>,
    /// Guidance schedule.
    pub cfg_schedule: CfgSchedule,
}

/// `cosine_schedule(num_steps, total_tokens)` of ml-4m, in f64.
pub fn cosine_schedule(num_steps: usize, total_tokens: i64) -> Vec<i64> {
    let n = num_steps as f64;
    let s: Vec<f64> = (0..num_steps).map(|i| 0.0 + 0.5 * 1.0 * (1.0 + (std::f64::consts::PI * i as f64 / n).cos())).collect();
    // Python's round() rounds half to even.
    let mut tokens: Vec<i64> = s.windows(2).map(|w| (total_tokens as f64 * (w[0] - w[1])).round_ties_even() as i64).collect();
    let used: i64 = tokens.iter().sum();
    tokens.push(total_tokens - used);
    tokens
}

/// numpy's `linspace(start, stop, num)` (endpoint included) in f64.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return vec![];
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut y: Vec<f64> = (0..num).map(|i| if step == 0.0 { i as f64 / div * delta } else { i as f64 * step } + start).collect();
    y[num - 1] = stop;
    y
}

/// `linear_schedule(num_steps, total_tokens)` of ml-4m: `linspace(0, N, steps + 1, dtype=int)`
/// differences, largest first, trailing zeros trimmed.
pub fn linear_schedule(num_steps: usize, total_tokens: i64) -> Vec<i64> {
    // numpy floors float values when the linspace dtype is an integer type.
    let edges: Vec<i64> = linspace(0.0, total_tokens as f64, num_steps + 1).iter().map(|v| v.floor() as i64).collect();
    let mut diffs: Vec<i64> = edges.windows(2).map(|w| w[1] - w[0]).collect();
    diffs.sort_unstable_by(|a, b| b.cmp(a));
    while diffs.last() == Some(&0) {
        diffs.pop();
    }
    diffs
}

/// `linear_temp_schedule(temp, token_schedule)` of ml-4m.
pub fn linear_temp_schedule(temp: f64, tokens: &[i64]) -> Vec<f64> {
    let total: i64 = tokens.iter().sum();
    let mut out = vec![temp * 1.0];
    let mut cum = 0i64;
    for &t in &tokens[..tokens.len().saturating_sub(1)] {
        cum += t;
        out.push(temp * (total - cum) as f64 / total as f64);
    }
    out.truncate(tokens.len());
    out.into_iter().map(|v| v.max(1e-9)).collect()
}

/// numpy's `array ** scalar`: the exponents numpy maps to dedicated ufuncs (`sqrt`, `square`,
/// `reciprocal`) take them, which can differ from `pow` in the last bit.
fn numpy_power(x: f64, p: f64) -> f64 {
    match p {
        0.5 => x.sqrt(),
        2.0 => x * x,
        -1.0 => 1.0 / x,
        1.0 => x,
        0.0 => 1.0,
        _ => x.powf(p),
    }
}

/// `onex_temp_schedule(max_t, min_t, token_schedule, power)` of ml-4m (linspace 1..100).
pub fn onex_temp_schedule(max_t: f64, min_t: f64, tokens: &[i64], power: f64) -> Vec<f64> {
    let total: i64 = tokens.iter().sum();
    let x = linspace(1.0, 100.0, total.max(0) as usize);
    let y: Vec<f64> = x.iter().map(|&v| 1.0 / numpy_power(v, power)).collect();
    let lo = y.iter().copied().fold(f64::INFINITY, f64::min);
    let y: Vec<f64> = y.iter().map(|v| v - lo).collect();
    let hi = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let y: Vec<f64> = y.iter().map(|v| v / hi).collect();
    let mut cum = 0i64;
    // zip() in ml-4m: only the first len(token_schedule) values of the curve are used.
    tokens
        .iter()
        .zip(&y)
        .map(|(&t, &us)| {
            cum += t;
            let cs = cum as f64 / total as f64;
            let s = (1.0 - cs) * us;
            (min_t + (max_t - min_t) * s).max(1e-9)
        })
        .collect()
}

/// ml-4m's `build_chained_generation_schedules`: the steps of every target in order; with
/// `cfg_grow_conditioning`, each finished MaskGIT/ROAR target joins the guidance conditions of
/// the targets after it (autoregressive targets do not: ml-4m `continue`s before that line).
pub fn build_chained_generation_schedules(
    cond_domains: &[Modality],
    targets: &[TargetSettings],
    cfg_grow_conditioning: bool,
) -> Vec<StepSchedule> {
    let mut cond: Vec<Modality> = cond_domains.to_vec();
    let mut out = Vec::new();
    for t in targets {
        if t.scheme == Scheme::Autoregressive {
            out.push(StepSchedule {
                target: t.target,
                scheme: t.scheme,
                num_tokens: None,
                temperature: t.temp,
                cfg_scale: t.cfg_scale,
                cfg_cond_domains: cond.clone(),
                cfg_weights: t.cfg_weights.clone(),
            });
            continue;
        }
        let n = t.decoding_steps;
        let tokens = match (t.scheme, t.token_schedule) {
            (Scheme::MaskGit, TokenDecodingSchedule::Cosine) => cosine_schedule(n, t.tokens),
            _ => linear_schedule(n, t.tokens),
        };
        let temps = match t.temp_schedule {
            TempSchedule::Constant => vec![t.temp; n],
            TempSchedule::Linear => linear_temp_schedule(t.temp, &tokens),
            TempSchedule::OneX { min_t, power } => onex_temp_schedule(t.temp, min_t, &tokens, power),
        };
        let cfgs = match t.cfg_schedule {
            CfgSchedule::Constant => vec![t.cfg_scale; n],
        };
        for ((&k, &temp), &cfg) in tokens.iter().zip(&temps).zip(&cfgs) {
            out.push(StepSchedule {
                target: t.target,
                scheme: t.scheme,
                num_tokens: Some(k),
                temperature: temp,
                cfg_scale: cfg,
                cfg_cond_domains: cond.clone(),
                // ml-4m: `np.array(cfg_scale) * np.ones(num_steps).reshape(-1, 1)`, the same
                // weights at every step.
                cfg_weights: t.cfg_weights.clone(),
            });
        }
        if cfg_grow_conditioning {
            cond.push(t.target);
        }
    }
    out
}

/// A number in a schedule file: YAML keeps integers and floats apart (ml-4m's `top_k` means a
/// count as an int and a fraction as a float).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
}

/// One target's `cfg_scales` entry: a scale, or (ml-4m's multi-condition guidance) a list of
/// weights, one per condition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CfgScale {
    /// Single guidance: `uncond + s·(cond − uncond)`.
    Scale(f64),
    /// Multi-condition guidance: `uncond + Σ wᵢ·(condᵢ − uncond)`.
    Weights(Vec<f64>),
}

/// A schedule file: the keyword arguments of ml-4m's `build_chained_generation_schedules`,
/// plus `top_k` and `top_p` of `GenerationSampler.generate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Conditioning modalities (blanked in the unconditional pass of guidance).
    pub cond_domains: Vec<String>,
    /// Targets, generated in this order.
    pub target_domains: Vec<String>,
    /// Tokens per target.
    pub tokens_per_target: Vec<i64>,
    /// `maskgit`, `roar` or `autoregressive` per target.
    pub autoregression_schemes: Vec<String>,
    /// Steps per target (ignored for autoregressive ones).
    pub decoding_steps: Vec<usize>,
    /// `cosine` or `linear` per target.
    pub token_decoding_schedules: Vec<String>,
    /// Start temperature per target.
    pub temps: Vec<f64>,
    /// `constant`, `linear` or `onex:{min_t}:{power}` per target.
    pub temp_schedules: Vec<String>,
    /// Guidance scale per target (1.0 = none), or per target a list of weights, one per
    /// condition (multi-condition guidance: every entry a list, all targets image-like).
    pub cfg_scales: Vec<CfgScale>,
    /// `constant` per target.
    pub cfg_schedules: Vec<String>,
    /// Each finished target joins the guidance conditions. Default false (ml-4m's).
    #[serde(default)]
    pub cfg_grow_conditioning: bool,
    /// An integer keeps that many tokens, a float that fraction of the vocabulary; 0 = off
    /// (the default, ml-4m's).
    #[serde(default)]
    top_k: Option<Number>,
    /// Nucleus threshold; 0 = off (the default, ml-4m's).
    #[serde(default)]
    pub top_p: f64,
}

/// A validated schedule: the chained steps and the sampling filters.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationPlan {
    /// The conditioning modalities as given.
    pub cond_domains: Vec<Modality>,
    /// Per-target settings as given.
    pub targets: Vec<TargetSettings>,
    /// The chained steps.
    pub steps: Vec<StepSchedule>,
    /// top-k filter.
    pub top_k: TopK,
    /// top-p (nucleus) threshold; 0 = off.
    pub top_p: f64,
}

impl ScheduleSpec {
    /// Parses a YAML schedule.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self> {
        serde_yaml::from_str(text).map_err(|source| ModelError::ScheduleParse { source_name: source_name.to_string(), source })
    }

    /// Reads and parses a YAML schedule file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { op: "reading", path: path.to_path_buf(), source })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The top-k filter as [`TopK`].
    pub fn top_k(&self) -> TopK {
        match self.top_k {
            None => TopK::Off,
            Some(Number::Int(k)) if k > 0 => TopK::Count(k as usize),
            Some(Number::Float(f)) if f > 0.0 => TopK::Fraction(f),
            Some(_) => TopK::Off,
        }
    }

    /// Checks every list against `target_domains` and every value against its closed set, and
    /// builds the chained steps. `source_name` names the file in errors.
    pub fn resolve(&self, source_name: &str) -> Result<GenerationPlan> {
        let n = self.target_domains.len();
        let lens: [(&'static str, usize); 9] = [
            ("tokens_per_target", self.tokens_per_target.len()),
            ("autoregression_schemes", self.autoregression_schemes.len()),
            ("decoding_steps", self.decoding_steps.len()),
            ("token_decoding_schedules", self.token_decoding_schedules.len()),
            ("temps", self.temps.len()),
            ("temp_schedules", self.temp_schedules.len()),
            ("cfg_scales", self.cfg_scales.len()),
            ("cfg_schedules", self.cfg_schedules.len()),
            ("target_domains", n),
        ];
        for (key, len) in lens {
            if len != n {
                return Err(ModelError::ScheduleLength { source_name: source_name.to_string(), key, len, expected: n });
            }
        }
        let bad = |key: &'static str, index: usize, value: &str, expected: &'static str| ModelError::ScheduleValue {
            source_name: source_name.to_string(),
            key,
            index,
            value: value.to_string(),
            expected,
        };
        let modality = |key: &'static str, index: usize, s: &str| Modality::from_key(s).map_err(|_| bad(key, index, s, "a modality key"));
        let cond_domains = self.cond_domains.iter().enumerate().map(|(i, s)| modality("cond_domains", i, s)).collect::<Result<Vec<_>>>()?;
        let multi = self.cfg_scales.iter().any(|c| matches!(c, CfgScale::Weights(_)));
        let mut targets = Vec::with_capacity(n);
        for i in 0..n {
            let target = modality("target_domains", i, &self.target_domains[i])?;
            let scheme = Scheme::parse(&self.autoregression_schemes[i])
                .ok_or_else(|| bad("autoregression_schemes", i, &self.autoregression_schemes[i], "maskgit, roar or autoregressive"))?;
            check_scheme(target, scheme)?;
            let token_schedule = match self.token_decoding_schedules[i].as_str() {
                "cosine" => TokenDecodingSchedule::Cosine,
                "linear" => TokenDecodingSchedule::Linear,
                // ml-4m only reads this for MaskGIT; elsewhere any value passes.
                _ if scheme != Scheme::MaskGit => TokenDecodingSchedule::Linear,
                other => return Err(bad("token_decoding_schedules", i, other, "cosine or linear")),
            };
            let temp_schedule = match TempSchedule::parse(&self.temp_schedules[i]) {
                Some(t) => t,
                None if scheme == Scheme::Autoregressive => TempSchedule::Constant,
                None => return Err(bad("temp_schedules", i, &self.temp_schedules[i], "constant, linear or onex:<min_t>:<power>")),
            };
            let cfg_schedule = match self.cfg_schedules[i].as_str() {
                "constant" => CfgSchedule::Constant,
                _ if scheme == Scheme::Autoregressive => CfgSchedule::Constant,
                other => return Err(bad("cfg_schedules", i, other, "constant (ml-4m implements no other)")),
            };
            let tokens = self.tokens_per_target[i];
            if tokens < 1 {
                return Err(bad("tokens_per_target", i, &tokens.to_string(), "a positive token count"));
            }
            if scheme != Scheme::Autoregressive && self.decoding_steps[i] == 0 {
                return Err(bad("decoding_steps", i, "0", "a positive step count"));
            }
            let (cfg_scale, cfg_weights) = match &self.cfg_scales[i] {
                CfgScale::Scale(s) if !multi => (*s, Vec::new()),
                CfgScale::Scale(s) => return Err(bad("cfg_scales", i, &s.to_string(), "a list of weights, as the other targets have")),
                CfgScale::Weights(w) => {
                    // ml-4m's multi-condition sampler decodes image-like targets only and,
                    // after each target, adds it as one more condition.
                    if scheme == Scheme::Autoregressive {
                        return Err(bad("autoregression_schemes", i, scheme.name(), "maskgit or roar (multi-condition guidance)"));
                    }
                    if w.len() != cond_domains.len() + i {
                        return Err(bad(
                            "cfg_scales",
                            i,
                            &format!("{w:?}"),
                            "one weight per condition: the cond_domains, then each earlier target",
                        ));
                    }
                    (1.0, w.clone())
                }
            };
            targets.push(TargetSettings {
                target,
                tokens,
                scheme,
                decoding_steps: self.decoding_steps[i],
                token_schedule,
                temp: self.temps[i],
                temp_schedule,
                cfg_scale,
                cfg_weights,
                cfg_schedule,
            });
        }
        if let Some(Number::Float(f)) = self.top_k
            && !(f.is_finite() && f <= 1.0)
        {
            return Err(bad("top_k", 0, &f.to_string(), "an integer count or a fraction of the vocabulary in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(bad("top_p", 0, &self.top_p.to_string(), "a probability in [0, 1]"));
        }
        let steps = build_chained_generation_schedules(&cond_domains, &targets, self.cfg_grow_conditioning);
        Ok(GenerationPlan { cond_domains, targets, steps, top_k: self.top_k(), top_p: self.top_p })
    }
}

/// MaskGIT and ROAR decode image-like token grids; autoregression decodes text sequences.
pub fn check_scheme(target: Modality, scheme: Scheme) -> Result<()> {
    let kind = target.kind();
    let ok = match scheme {
        Scheme::MaskGit | Scheme::Roar => matches!(kind, ModalityKind::ImageTokens | ModalityKind::GlobalTokens),
        Scheme::Autoregressive => kind == ModalityKind::Sequence,
    };
    if ok {
        Ok(())
    } else {
        Err(ModelError::SchemeMismatch { modality: target.key().to_string(), scheme: scheme.name(), kind: kind.ml4m_type() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_eight_steps_over_196_rounds_like_python() {
        // The middle differences are 37.503…, which round to 38 (ml-4m: [7 21 32 38 38 32 21 7]).
        assert_eq!(cosine_schedule(8, 196), vec![7, 21, 32, 38, 38, 32, 21, 7]);
    }

    #[test]
    fn linear_schedule_trims_and_sorts() {
        assert_eq!(linear_schedule(4, 10), vec![3, 3, 2, 2]);
        assert_eq!(linear_schedule(5, 3), vec![1, 1, 1]);
    }

    #[test]
    fn schedule_lists_of_other_lengths_name_the_key() {
        let yaml = "cond_domains: [caption]\ntarget_domains: [tok_rgb@224]\ntokens_per_target: [196, 196]\n\
            autoregression_schemes: [maskgit]\ndecoding_steps: [8]\ntoken_decoding_schedules: [cosine]\ntemps: [1.0]\n\
            temp_schedules: [constant]\ncfg_scales: [1.0]\ncfg_schedules: [constant]\n";
        let err = ScheduleSpec::from_yaml(yaml, "s.yaml").unwrap().resolve("s.yaml").unwrap_err().to_string();
        assert!(err.contains("tokens_per_target") && err.contains("s.yaml"), "{err}");
    }

    #[test]
    fn weight_lists_in_cfg_scales_are_multi_condition_guidance() {
        let yaml = |cfg: &str, schemes: &str| {
            format!(
                "cond_domains: [caption, tok_rgb@224]\ntarget_domains: [tok_clip@224, tok_depth@224]\ntokens_per_target: [196, 196]\n\
                 autoregression_schemes: {schemes}\ndecoding_steps: [2, 3]\ntoken_decoding_schedules: [cosine, linear]\n\
                 temps: [1.0, 1.0]\ntemp_schedules: [constant, constant]\ncfg_scales: {cfg}\ncfg_schedules: [constant, constant]\n"
            )
        };
        let resolve = |cfg: &str, schemes: &str| ScheduleSpec::from_yaml(&yaml(cfg, schemes), "m.yaml").unwrap().resolve("m.yaml");
        let plan = resolve("[[2, 1.5], [2.5, 0.5, 1.5]]", "[maskgit, roar]").unwrap();
        assert_eq!(plan.steps.len(), 5);
        assert!(plan.steps[..2].iter().all(|s| s.cfg_weights == [2.0, 1.5] && s.cfg_scale == 1.0));
        assert!(plan.steps[2..].iter().all(|s| s.cfg_weights == [2.5, 0.5, 1.5]));
        // Plain scales stay single guidance.
        assert!(resolve("[3.0, 1.0]", "[maskgit, roar]").unwrap().steps.iter().all(|s| s.cfg_weights.is_empty()));
        // The second target weighs three conditions (two given, one generated).
        let err = resolve("[[2, 1.5], [2.5, 0.5]]", "[maskgit, roar]").unwrap_err().to_string();
        assert!(err.contains("cfg_scales") && err.contains("m.yaml") && err.contains("one weight per condition"), "{err}");
        // Lists and plain scales do not mix.
        let err = resolve("[[2, 1.5], 3.0]", "[maskgit, roar]").unwrap_err().to_string();
        assert!(err.contains("cfg_scales") && err.contains("list of weights"), "{err}");
    }

    #[test]
    fn top_k_int_is_a_count_and_float_a_fraction() {
        let base = "cond_domains: []\ntarget_domains: []\ntokens_per_target: []\nautoregression_schemes: []\ndecoding_steps: []\n\
            token_decoding_schedules: []\ntemps: []\ntemp_schedules: []\ncfg_scales: []\ncfg_schedules: []\n";
        let k = |extra: &str| ScheduleSpec::from_yaml(&format!("{base}{extra}"), "-").unwrap().top_k();
        assert_eq!(k("top_k: 1\n"), TopK::Count(1));
        assert_eq!(k("top_k: 1.0\n"), TopK::Fraction(1.0));
        assert_eq!(k(""), TopK::Off);
    }
}
