//! Validation: an [`AlphasConfig`] becomes a [`Mixture`] with no `Option`s, checked once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::modality::{Modality, ModalitySet};

use super::spec::{AlphasConfig, HyphenAlphasSpec, Keep, MixtureSpec, ModalityAlphasSpec};

/// The smallest concentration: alphas are clamped to it (ml-4m `torch.clamp(alpha, min=1e-9)`),
/// so alpha 0 means "practically never", not an invalid Dirichlet.
pub const ALPHA_MIN: f64 = 1e-9;

/// One Dirichlet component of a [`Mixture`]; vectors are indexed like [`Mixture::modalities`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// Probability of choosing this component for a sample (weights normalised to sum 1).
    pub weight: f64,
    /// Input concentrations, clamped at [`ALPHA_MIN`].
    pub input_alphas: Vec<f64>,
    /// Target concentrations, clamped at [`ALPHA_MIN`].
    pub target_alphas: Vec<f64>,
    /// Keep scheme per modality ([`Keep::Random`] for image-like ones, which have none).
    pub keep: Vec<Keep>,
}

/// A validated mixture of Dirichlet distributions over a sorted modality set.
/// Serialised as validated, so a resolved job can travel to workers without re-parsing its
/// config; only a process that resolved it writes one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mixture {
    origin: String,
    modalities: Vec<Modality>,
    components: Vec<Component>,
}

impl Mixture {
    /// Where the config came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The modalities, sorted by ml-4m key (the order of every per-modality vector).
    pub fn modalities(&self) -> &[Modality] {
        &self.modalities
    }

    /// The components, at least one.
    pub fn components(&self) -> &[Component] {
        &self.components
    }
}

impl AlphasConfig {
    /// Validates the config into a [`Mixture`].
    ///
    /// `domains` is ml-4m's dataset domain set. For a table it restricts the mixture to
    /// `domains.all()` (every one must have an entry; `None` takes every entry). For the
    /// hyphen form it supplies the input/output domains when the file does not name them
    /// (giving both is an error).
    pub fn resolve(&self, domains: Option<&ModalitySet>) -> Result<Mixture> {
        match self {
            Self::Table(spec) => resolve_table(spec, domains.map(ModalitySet::all)),
            Self::Hyphen { origin, spec } => {
                let table = hyphen_table(origin, spec, domains)?;
                let all = table.keys().map(|k| Modality::from_key(k)).collect::<Result<Vec<_>>>()?;
                let spec = MixtureSpec { origin: origin.clone(), field_prefix: String::new(), sampling_weights: None, modalities: table };
                resolve_table(&spec, Some(all))
            }
        }
    }
}

fn invalid(origin: &str, field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Alphas { origin: origin.to_string(), field: field.into(), reason: reason.into() }
}

/// ml-4m `setup_sampling_mod_info` without `alphas_config`: every domain starts at alpha 0; the
/// hyphen values are assigned to the sorted input (resp. output) domains.
fn hyphen_table(origin: &str, spec: &HyphenAlphasSpec, domains: Option<&ModalitySet>) -> Result<BTreeMap<String, ModalityAlphasSpec>> {
    let named = spec.in_domains.is_some() || spec.out_domains.is_some();
    let (inputs, outputs) = match (named, domains) {
        (true, Some(_)) => {
            return Err(invalid(origin, "in_domains", "the file names its domains; do not also pass a modality set"));
        }
        (false, None) => {
            return Err(invalid(origin, "in_domains", "hyphen-string alphas need domains: name them in the file or pass a modality set"));
        }
        (true, None) => (parse_domains(origin, "in_domains", &spec.in_domains)?, parse_domains(origin, "out_domains", &spec.out_domains)?),
        (false, Some(set)) => (set.inputs.clone(), set.outputs.clone()),
    };
    let input = hyphen_alphas(origin, "input_alphas", &spec.input_alphas, &inputs)?;
    let target = hyphen_alphas(origin, "target_alphas", &spec.target_alphas, &outputs)?;
    let mut table = BTreeMap::new();
    for m in inputs.iter().chain(&outputs) {
        let entry = ModalityAlphasSpec {
            input_alphas: vec![input.get(m).copied().unwrap_or(0.0)],
            target_alphas: vec![target.get(m).copied().unwrap_or(0.0)],
            keep: Some(vec![Keep::Random]),
        };
        table.insert(m.key().to_string(), entry);
    }
    Ok(table)
}

fn parse_domains(origin: &str, field: &str, value: &Option<String>) -> Result<Vec<Modality>> {
    let Some(value) = value else { return Ok(Vec::new()) };
    let mut mods = value
        .split('-')
        .map(|k| Modality::from_key(k.trim()).map_err(|e| invalid(origin, field, e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    mods.sort_by_key(|m| m.key());
    mods.dedup();
    Ok(mods)
}

fn hyphen_alphas(origin: &str, field: &str, value: &Option<String>, domains: &[Modality]) -> Result<BTreeMap<Modality, f64>> {
    let Some(value) = value else { return Ok(BTreeMap::new()) };
    let values = value
        .split('-')
        .map(|v| v.trim().parse::<f64>().map_err(|_| invalid(origin, field, format!("'{v}' is not a number (in \"{value}\")"))))
        .collect::<Result<Vec<_>>>()?;
    let values = match values.len() {
        1 => vec![values[0]; domains.len()],
        n if n == domains.len() => values,
        n => {
            let keys: Vec<_> = domains.iter().map(|m| m.key()).collect();
            return Err(invalid(origin, field, format!("{n} values for {} sorted domains ({})", domains.len(), keys.join("-"))));
        }
    };
    Ok(domains.iter().copied().zip(values).collect())
}

fn resolve_table(spec: &MixtureSpec, domains: Option<Vec<Modality>>) -> Result<Mixture> {
    let origin = spec.origin.as_str();
    let field = |key: &str, sub: &str| format!("{}{key}{sub}", spec.field_prefix);
    let Some(first) = spec.modalities.values().next() else {
        return Err(invalid(origin, spec.field_prefix.trim_end_matches('.'), "no modalities"));
    };
    let n_mix = first.input_alphas.len();
    if n_mix == 0 {
        let key = spec.modalities.keys().next().map_or("", String::as_str);
        return Err(invalid(origin, field(key, ".input_alphas"), "no components"));
    }

    // Every entry is checked, whether or not the domain set uses it.
    let mut table = BTreeMap::new();
    for (key, entry) in &spec.modalities {
        let m = Modality::from_key(key).map_err(|e| invalid(origin, field(key, ""), e.to_string()))?;
        for (sub, alphas) in [(".input_alphas", &entry.input_alphas), (".target_alphas", &entry.target_alphas)] {
            if alphas.len() != n_mix {
                return Err(invalid(origin, field(key, sub), format!("{} values, but the mixture has {n_mix} components", alphas.len())));
            }
            if let Some(a) = alphas.iter().find(|a| !a.is_finite() || **a < 0.0) {
                return Err(invalid(origin, field(key, sub), format!("alpha {a} is not a finite number >= 0")));
            }
        }
        if let Some(keep) = &entry.keep
            && keep.len() != n_mix
        {
            return Err(invalid(origin, field(key, ".keep"), format!("{} values, but the mixture has {n_mix} components", keep.len())));
        }
        if entry.keep.is_none() && m.kind().is_sequence_like() {
            return Err(invalid(origin, field(key, ".keep"), "missing; ml-4m requires `keep` for sequence modalities"));
        }
        table.insert(m, entry);
    }

    let mut modalities = match domains {
        Some(d) => d,
        None => table.keys().copied().collect(),
    };
    modalities.sort_by_key(|m| m.key());
    modalities.dedup();
    if modalities.is_empty() {
        return Err(invalid(origin, spec.field_prefix.trim_end_matches('.'), "the domain set is empty"));
    }
    let entries = modalities
        .iter()
        .map(|m| table.get(m).copied().ok_or_else(|| invalid(origin, field(m.key(), ""), "missing, but the domain set includes it")))
        .collect::<Result<Vec<_>>>()?;

    let weights = match &spec.sampling_weights {
        None => vec![1.0 / n_mix as f64; n_mix],
        Some(w) => {
            if w.len() != n_mix {
                return Err(invalid(origin, "sampling_weights", format!("{} weights for {n_mix} components", w.len())));
            }
            let sum: f64 = w.iter().sum();
            if w.iter().any(|x| !x.is_finite() || *x < 0.0) || sum <= 0.0 || !sum.is_finite() {
                return Err(invalid(origin, "sampling_weights", "weights must be finite, >= 0 and not all 0"));
            }
            w.iter().map(|x| x / sum).collect()
        }
    };

    let components = (0..n_mix)
        .map(|k| Component {
            weight: weights[k],
            input_alphas: entries.iter().map(|e| e.input_alphas[k].max(ALPHA_MIN)).collect(),
            target_alphas: entries.iter().map(|e| e.target_alphas[k].max(ALPHA_MIN)).collect(),
            keep: modalities
                .iter()
                .zip(&entries)
                .map(|(m, e)| match &e.keep {
                    Some(keep) if m.kind().is_sequence_like() => keep[k],
                    _ => Keep::Random,
                })
                .collect(),
        })
        .collect();
    Ok(Mixture { origin: origin.to_string(), modalities, components })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;

    /// ml-4m's alphas files, read from the shared data folder (never copied into the repo).
    pub(crate) fn shared_alphas(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m/configs/alphas").join(name)
    }

    pub(crate) const MOD21: &str = "mix_mod21_all2allmix_rgb2all_capT5bias.yaml";
    pub(crate) const MOD7: &str = "mix_mod7_all2all_rgb2all_a0.5.yaml";

    fn resolve_str(yaml: &str, domains: Option<&str>) -> Result<Mixture> {
        let set = domains.map(|d| ModalitySet::parse(d).unwrap());
        AlphasConfig::from_yaml_str(yaml, "test.yaml")?.resolve(set.as_ref())
    }

    fn err_str(yaml: &str, domains: Option<&str>) -> String {
        resolve_str(yaml, domains).unwrap_err().to_string()
    }

    #[test]
    fn mod21_file_resolves_to_19_sorted_modalities_and_7_weighted_components() {
        let cfg = AlphasConfig::from_yaml_file(&shared_alphas(MOD21)).unwrap();
        let mix = cfg.resolve(None).unwrap();
        // ml-4m sorts all_domains by key; the 4M-21 set has the same 19 modalities.
        assert_eq!(mix.modalities(), ModalitySet::parse("4m21").unwrap().all().as_slice());
        assert_eq!(mix.modalities()[0], Modality::Caption);
        assert_eq!(mix.modalities()[5], Modality::Rgb224, "after caption, color_palette, det, human_poses, metadata");
        assert_eq!(mix.modalities()[11..13], [Modality::TokDinov2_224, Modality::TokDinov2Global], "'@' sorts before '_'");
        let w: Vec<f64> = mix.components().iter().map(|c| c.weight).collect();
        let expect = [1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 12.0, 1.0 / 12.0];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
        let idx = |m: Modality| mix.modalities().iter().position(|x| *x == m).unwrap();
        let (rgb, cap, t5, pal) = (idx(Modality::Rgb224), idx(Modality::Caption), idx(Modality::T5Caption), idx(Modality::ColorPalette));
        let rgb2all = &mix.components()[4];
        assert_eq!(rgb2all.input_alphas[rgb], 1000.0);
        assert_eq!(rgb2all.input_alphas[cap], ALPHA_MIN, "alpha 0 is clamped to 1e-9");
        assert_eq!(rgb2all.target_alphas[rgb], ALPHA_MIN);
        assert_eq!(rgb2all.target_alphas[t5], 0.5, "t5_caption has a (wasted) target alpha");
        assert_eq!(mix.components()[5].keep[cap], Keep::All);
        assert_eq!(mix.components()[6].keep[t5], Keep::All);
        assert_eq!(mix.components()[6].keep[cap], Keep::Random);
        assert!(mix.components().iter().all(|c| c.keep[pal] == Keep::Binary));
        assert_eq!(mix.components()[2].input_alphas[idx(Modality::TokDinov2Global)], 1.0);
    }

    #[test]
    fn mod7_plain_table_has_uniform_components() {
        let mix = AlphasConfig::from_yaml_file(&shared_alphas(MOD7)).unwrap().resolve(None).unwrap();
        let keys: Vec<_> = mix.modalities().iter().map(|m| m.key()).collect();
        assert_eq!(keys, ["caption", "det", "rgb@224", "tok_clip@224", "tok_depth@224", "tok_normal@224", "tok_rgb@224", "tok_semseg@224"]);
        assert_eq!(mix.components().len(), 2);
        assert!(mix.components().iter().all(|c| c.weight == 0.5));
        assert_eq!(mix.components()[0].input_alphas[2], 1000.0);
        assert_eq!(mix.components()[0].input_alphas[0], ALPHA_MIN);
        assert_eq!(mix.components()[1].input_alphas, vec![0.5; 8]);
        // Restricting to a subset keeps only those entries, still sorted.
        let set = ModalitySet::parse("tok_rgb@224,caption").unwrap();
        let sub = AlphasConfig::from_yaml_file(&shared_alphas(MOD7)).unwrap().resolve(Some(&set)).unwrap();
        assert_eq!(sub.modalities(), &[Modality::Caption, Modality::TokRgb224]);
        assert_eq!(sub.components()[0].target_alphas, vec![0.5, 0.5]);
    }

    #[test]
    fn hyphen_strings_follow_sorted_in_domains() {
        // Values are assigned in *sorted* domain order, not as written: caption < det < tok_rgb.
        let yaml = "in_domains: tok_rgb@224-det-caption\nout_domains: det\ninput_alphas: \"0.5-2.0-4.0\"\ntarget_alphas: \"1.0\"\n";
        let mix = resolve_str(yaml, None).unwrap();
        assert_eq!(mix.modalities(), &[Modality::Caption, Modality::Det, Modality::TokRgb224]);
        let c = &mix.components()[0];
        assert_eq!(c.input_alphas, vec![0.5, 2.0, 4.0]);
        assert_eq!(c.target_alphas, vec![ALPHA_MIN, 1.0, ALPHA_MIN], "modalities outside out_domains get 0");
        assert_eq!(c.keep, vec![Keep::Random; 3]);
        assert_eq!(c.weight, 1.0);
        // C4: one value for all, domains from the caller.
        let c4 = resolve_str("input_alphas: \"1.0\"\ntarget_alphas: \"1.0\"\n", Some("caption")).unwrap();
        assert_eq!(c4.modalities(), &[Modality::Caption]);
        assert_eq!(c4.components()[0].input_alphas, vec![1.0]);
        // 4m21 domains: t5_caption is an input domain only, so it gets a target alpha of 0.
        let all = resolve_str("input_alphas: \"1.0\"\ntarget_alphas: \"2.0\"\n", Some("4m21")).unwrap();
        assert_eq!(all.modalities().len(), 19);
        let t5 = all.modalities().iter().position(|m| *m == Modality::T5Caption).unwrap();
        assert_eq!(all.components()[0].target_alphas[t5], ALPHA_MIN);
        assert_eq!(all.components()[0].input_alphas[t5], 1.0);
    }

    #[test]
    fn invalid_configs_name_file_and_field() {
        let e = err_str("caption:\n  input_alphas: [1.0, 2.0]\n  target_alphas: [1.0]\n  keep: [random, all]\n", None);
        assert!(e.contains("test.yaml") && e.contains("caption.target_alphas") && e.contains("2 components"), "{e}");
        let e = err_str(
            "sampling_weights: [1.0]\nalphas_mixture:\n  det:\n    input_alphas: [1.0, 1.0]\n    target_alphas: [1.0, 1.0]\n    keep: [random, random]\n",
            None,
        );
        assert!(e.contains("sampling_weights") && e.contains("1 weights for 2"), "{e}");
        let e = err_str("sampling_weights: [1.0]\nalphas_mixture:\n  det:\n    input_alphas: [1.0]\n    target_alphas: [1.0]\n", None);
        assert!(e.contains("alphas_mixture.det.keep") && e.contains("missing"), "{e}");
        let e = err_str("tok_rgb@224:\n  input_alphas: [-1.0]\n  target_alphas: [1.0]\n", None);
        assert!(e.contains("tok_rgb@224.input_alphas") && e.contains("-1"), "{e}");
        let e = err_str("tok_rgb:\n  input_alphas: [1.0]\n  target_alphas: [1.0]\n", None);
        assert!(e.contains("field `tok_rgb`") && e.contains("unknown modality"), "{e}");
        let e = err_str("tok_rgb@224:\n  input_alphas: [1.0]\n  target_alphas: [1.0]\n  kep: [all]\n", None);
        assert!(e.contains("test.yaml") && e.contains("kep"), "{e}");
        let e = err_str("tok_rgb@224:\n  input_alphas: [1.0]\n  target_alphas: [1.0]\n", Some("tok_rgb@224,tok_depth@224"));
        assert!(e.contains("field `tok_depth@224`") && e.contains("domain set"), "{e}");
        let e = err_str("in_domains: caption-det\ninput_alphas: \"1-2-3\"\n", None);
        assert!(e.contains("field `input_alphas`") && e.contains("3 values for 2"), "{e}");
        let e = err_str("input_alphas: \"1.0\"\n", None);
        assert!(e.contains("need domains"), "{e}");
        let e = err_str("in_domains: caption\ninput_alphas: \"x\"\n", Some("caption"));
        assert!(e.contains("do not also pass"), "{e}");
        let e = AlphasConfig::from_yaml_file(std::path::Path::new("/nonexistent/a.yaml")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/a.yaml"), "{e}");
    }
}
