//! Any-to-any generation, a port of ml-4m's `fourm/models/generate.py`: chained schedules
//! ([`schedule`]), sampling and filtering ([`sampling`]), batch builders and span merging
//! ([`builders`]) and the decoding loop with MaskGIT, ROAR and autoregression, classifier-free
//! guidance and a KV cache ([`sampler`]), and multi-condition guidance (`multi`).
//!
//! With the same weights, batch, schedule and seed it produces ml-4m's tokens; the one
//! deliberate rule ml-4m leaves open is the order among equal MaskGIT confidences, where
//! tessera commits the lower position first.

pub mod builders;
mod multi;
pub mod sampler;
pub mod sampling;
pub mod schedule;

pub use builders::{TextSpecials, blank_condition, custom_text, empty_target, full_input, merge_sequences, merge_span_masking};
pub use sampler::{GenerateOptions, GenerationSampler, StepLogits, guide, guide_multi};
pub use sampling::{TopK, filter_logits, sample_tokens, sample_tokens_batched, top_indices_stable};
pub use schedule::{
    CfgScale, CfgSchedule, GenerationPlan, ScheduleSpec, Scheme, StepSchedule, TargetSettings, TempSchedule, TokenDecodingSchedule,
    build_chained_generation_schedules, cosine_schedule, linear_schedule, linear_temp_schedule, onex_temp_schedule,
};
