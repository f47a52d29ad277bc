//! The serde layer: ml-4m's ways of writing a Dirichlet mixture, parsed as written.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a sequence modality's keep probability is drawn in one mixture component (ml-4m `keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// `keep_prob ~ U(0, 1)`; ml-4m's default when `keep` is absent.
    Random,
    /// `keep_prob = 1`: the whole sequence is input when the budget allows.
    All,
    /// `keep_prob` is 0 or 1 with equal probability.
    Binary,
}

/// One modality's entry in a per-modality alphas table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModalityAlphasSpec {
    /// Dirichlet concentration of this modality's input budget, one value per component.
    pub input_alphas: Vec<f64>,
    /// Dirichlet concentration of this modality's target budget, one value per component.
    pub target_alphas: Vec<f64>,
    /// Keep scheme per component. Default: absent. ml-4m requires it for sequence modalities
    /// (`seq`, `seq_emb`) in an alphas file and never reads it for image-like ones.
    #[serde(default)]
    pub keep: Option<Vec<Keep>>,
}

/// A Dirichlet mixture written as a per-modality table (both alphas-file layouts).
#[derive(Debug, Clone, PartialEq)]
pub struct MixtureSpec {
    /// Where the spec came from (a file path); named in every error.
    pub origin: String,
    /// Dotted prefix of the table inside the document (`alphas_mixture.` or empty), for errors.
    pub field_prefix: String,
    /// Relative component weights. Default: absent, meaning uniform (ml-4m `random.randint`).
    pub sampling_weights: Option<Vec<f64>>,
    /// The table, keyed by ml-4m modality key.
    pub modalities: BTreeMap<String, ModalityAlphasSpec>,
}

/// ml-4m's hyphen-string form: the alpha fields of a data-config dataset entry without
/// `alphas_config` (one Dirichlet, modalities not listed get alpha 0, keep is `random`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HyphenAlphasSpec {
    /// Hyphen-separated input domains. Default: absent; then the domains must be given.
    #[serde(default)]
    pub in_domains: Option<String>,
    /// Hyphen-separated output domains. Default: absent; then the domains must be given.
    #[serde(default)]
    pub out_domains: Option<String>,
    /// One value for every input domain, or one per sorted input domain, hyphen separated.
    /// Default: absent, meaning every input alpha is 0 (as ml-4m).
    #[serde(default)]
    pub input_alphas: Option<String>,
    /// One value for every output domain, or one per sorted output domain, hyphen separated.
    /// Default: absent, meaning every target alpha is 0 (as ml-4m).
    #[serde(default)]
    pub target_alphas: Option<String>,
}

/// An alphas config as written, in one of ml-4m's layouts; [`AlphasConfig::resolve`] validates it.
#[derive(Debug, Clone, PartialEq)]
pub enum AlphasConfig {
    /// A per-modality table, optionally with `sampling_weights` (an ml-4m alphas file).
    Table(MixtureSpec),
    /// Hyphen strings over the sorted domains (an ml-4m data-config entry).
    Hyphen {
        /// Where the spec came from; named in every error.
        origin: String,
        /// The fields as written.
        spec: HyphenAlphasSpec,
    },
}

/// ml-4m's `sampling_weights` + `alphas_mixture` layout.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightedFile {
    sampling_weights: Option<Vec<f64>>,
    alphas_mixture: BTreeMap<String, ModalityAlphasSpec>,
}

const HYPHEN_FIELDS: [&str; 4] = ["in_domains", "out_domains", "input_alphas", "target_alphas"];

impl AlphasConfig {
    /// Reads an alphas YAML file; see [`AlphasConfig::from_yaml_str`] for the layouts.
    pub fn from_yaml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    /// Parses an alphas YAML document. The layout is chosen by its top-level keys:
    /// `sampling_weights`/`alphas_mixture` → weighted mixture (ml-4m reads `alphas_mixture` when
    /// `sampling_weights` is present); any of `in_domains`, `out_domains`, `input_alphas`,
    /// `target_alphas` → hyphen strings; otherwise a plain per-modality table.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self> {
        let yaml = |source| Error::Yaml { origin: origin.to_string(), source };
        let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(yaml)?;
        let Some(map) = doc.as_mapping() else {
            return Err(Error::Alphas { origin: origin.into(), field: "<document>".into(), reason: "expected a mapping".into() });
        };
        let has = |k: &str| map.contains_key(k);
        if has("sampling_weights") || has("alphas_mixture") {
            let f: WeightedFile = serde_yaml::from_str(text).map_err(yaml)?;
            Ok(Self::Table(MixtureSpec {
                origin: origin.into(),
                field_prefix: "alphas_mixture.".into(),
                sampling_weights: f.sampling_weights,
                modalities: f.alphas_mixture,
            }))
        } else if HYPHEN_FIELDS.iter().any(|k| has(k)) {
            Ok(Self::Hyphen { origin: origin.into(), spec: serde_yaml::from_str(text).map_err(yaml)? })
        } else {
            let modalities = serde_yaml::from_str(text).map_err(yaml)?;
            Ok(Self::Table(MixtureSpec { origin: origin.into(), field_prefix: String::new(), sampling_weights: None, modalities }))
        }
    }

    /// Where the config came from.
    pub fn origin(&self) -> &str {
        match self {
            Self::Table(spec) => &spec.origin,
            Self::Hyphen { origin, .. } => origin,
        }
    }
}
