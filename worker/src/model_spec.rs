//! Turns the coordinator's [`ModelSpec`] (typed presets, no tch) into a validated [`FourMConfig`].

use tessera_model::FourMConfig;
use tessera_protocol::job::ModelSpec;

use crate::error::{Result, WorkerError};

/// The model config a job asks for; errors name the config file and the `model.*` field.
pub fn four_m_config(spec: &ModelSpec, origin: &str) -> Result<FourMConfig> {
    let bad =
        |field: &'static str, e: tessera_model::ModelError| WorkerError::ModelSpec { origin: origin.into(), field, reason: e.to_string() };
    let mut cfg = FourMConfig::preset(spec.preset, spec.flavor, &spec.modalities);
    if let Some(d) = spec.dim {
        cfg.dim = d;
    }
    if let Some(d) = spec.encoder_depth {
        cfg.encoder_depth = d;
    }
    if let Some(d) = spec.decoder_depth {
        cfg.decoder_depth = d;
    }
    if let Some(h) = spec.num_heads {
        cfg.num_heads = h;
    }
    cfg.validate().map_err(|e| bad("dim", e))?;
    Ok(cfg)
}
