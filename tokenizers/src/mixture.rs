//! The modality-budget policy of 4M training: a mixture of Dirichlet distributions decides, per
//! sample, how many of the `N_in` input and `N_tgt` target tokens each modality gets
//! (reference §3.1–3.3; ml-4m `UnifiedMasking.input_token_budget` / `target_token_budget`,
//! wired up by `pretrain_utils.setup_sampling_mod_info`).
//!
//! Two layers, as everywhere in tessera:
//! - [`AlphasConfig`] is the config as written: one of ml-4m's alphas YAML layouts (a plain
//!   per-modality table, or `sampling_weights` + `alphas_mixture`), or the hyphen-string form of
//!   a data-config entry (`input_alphas: "1.0-0.5-…"`, one value per sorted domain or one for all).
//! - [`Mixture`] is the validated result, with no `Option`s: modalities sorted by key exactly as
//!   ml-4m sorts its domains, alphas clamped at 1e-9, one weight and one keep scheme per
//!   component.
//!
//! [`BudgetSampler`] draws a [`SampleBudget`] for a global sample index; the result is a pure
//! function of (seed, index), so any worker can reproduce any sample's budget.
//! [`BudgetStats`] summarises many budgets (`tessera data inspect-mixture`).

mod budget;
mod resolve;
mod spec;
mod stats;

pub use budget::{BudgetConfig, BudgetSampler, MAX_TRIES, SampleBudget, TokenRange};
pub use resolve::{ALPHA_MIN, Component, Mixture};
pub use spec::{AlphasConfig, HyphenAlphasSpec, Keep, MixtureSpec, ModalityAlphasSpec};
pub use stats::{BudgetReport, BudgetStats, ModalityBudgetStats};
