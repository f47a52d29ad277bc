//! The closed sets a job's `[model]` names: size [`Preset`]s and block [`Flavor`]s. They live in
//! the contract crate (not in the model crate, which links tch) so that a job naming an unknown
//! one is refused when it is resolved, at `config check`, `train` or submit time, instead of by a
//! worker after the job has started.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;

/// Size presets. `tiny` is the 256-wide, 4+4-layer model that the peer benchmarks call tiny
/// (ml-4m's own `fm_tiny_6e_6d` is 384/6+6: use explicit overrides for it); the others equal
/// ml-4m's `fm_{small_8e_8d,base_12e_12d,large_24e_24d,xlarge_24e_24d}` architectures.
/// Serialised by its name; `b`, `l` and `xl` are read as aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// dim 256, 4+4 layers, 4 heads.
    Tiny,
    /// dim 512, 8+8 layers, 8 heads.
    Small,
    /// dim 768, 12+12 layers, 12 heads (4M-B).
    #[serde(alias = "b")]
    Base,
    /// dim 1024, 24+24 layers, 16 heads (4M-L).
    #[serde(alias = "l")]
    Large,
    /// dim 2048, 24+24 layers, 32 heads (4M-XL).
    #[serde(alias = "xl")]
    Xlarge,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Self; 5] = [Self::Tiny, Self::Small, Self::Base, Self::Large, Self::Xlarge];

    /// (dim, encoder depth, decoder depth, heads) of the preset.
    pub fn dims(self) -> (usize, usize, usize, usize) {
        match self {
            Self::Tiny => (256, 4, 4, 4),
            Self::Small => (512, 8, 8, 8),
            Self::Base => (768, 12, 12, 12),
            Self::Large => (1024, 24, 24, 16),
            Self::Xlarge => (2048, 24, 24, 32),
        }
    }

    /// The name a job config writes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Base => "base",
            Self::Large => "large",
            Self::Xlarge => "xlarge",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        match s {
            "tiny" => Ok(Self::Tiny),
            "small" => Ok(Self::Small),
            "base" | "b" => Ok(Self::Base),
            "large" | "l" => Ok(Self::Large),
            "xlarge" | "xl" => Ok(Self::Xlarge),
            other => Err(ProtocolError::UnknownName { kind: "preset", name: other.into(), known: "tiny, small, base, large, xlarge" }),
        }
    }
}

/// Block flavours that ml-4m registers. Serialised by its name; `swiglu` is read as an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    /// `*_swiglu_nobias`: SwiGLU MLP, no biases, bias-free LayerNorm (what 4M-21 uses).
    #[serde(alias = "swiglu")]
    SwigluNobias,
    /// `*_gelu`: GELU MLP, biases everywhere, LayerNorm with bias.
    Gelu,
}

impl Flavor {
    /// The name a job config writes (ml-4m's model-id suffix).
    pub fn name(self) -> &'static str {
        match self {
            Self::SwigluNobias => "swiglu_nobias",
            Self::Gelu => "gelu",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Flavor {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        match s {
            "swiglu_nobias" | "swiglu" => Ok(Self::SwigluNobias),
            "gelu" => Ok(Self::Gelu),
            other => Err(ProtocolError::UnknownName { kind: "flavor", name: other.into(), known: "swiglu_nobias, gelu" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_parse_and_serde_agrees() {
        let cases = [
            ("tiny", Preset::Tiny),
            ("small", Preset::Small),
            ("base", Preset::Base),
            ("b", Preset::Base),
            ("large", Preset::Large),
            ("l", Preset::Large),
            ("xlarge", Preset::Xlarge),
            ("xl", Preset::Xlarge),
        ];
        for (text, preset) in cases {
            assert_eq!(text.parse::<Preset>().unwrap(), preset, "{text}");
            assert_eq!(serde_json::from_str::<Preset>(&format!("\"{text}\"")).unwrap(), preset, "{text}");
        }
        for p in Preset::ALL {
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
            assert_eq!(p.to_string().parse::<Preset>().unwrap(), p);
        }
        for (text, flavor) in [("swiglu_nobias", Flavor::SwigluNobias), ("swiglu", Flavor::SwigluNobias), ("gelu", Flavor::Gelu)] {
            assert_eq!(text.parse::<Flavor>().unwrap(), flavor, "{text}");
            assert_eq!(serde_json::from_str::<Flavor>(&format!("\"{text}\"")).unwrap(), flavor, "{text}");
            assert_eq!(serde_json::to_string(&flavor).unwrap(), format!("\"{}\"", flavor.name()));
        }
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let e = "huge".parse::<Preset>().unwrap_err().to_string();
        assert_eq!(e, "unknown preset 'huge' (tiny, small, base, large, xlarge)");
        let e = "relu".parse::<Flavor>().unwrap_err().to_string();
        assert_eq!(e, "unknown flavor 'relu' (swiglu_nobias, gelu)");
        assert!(serde_json::from_str::<Preset>("\"Base\"").is_err(), "names are case-sensitive, as before");
    }
}
