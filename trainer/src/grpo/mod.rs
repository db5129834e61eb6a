//! The GRPO engine: group rollouts from the candle model, group-relative advantages, and the
//! policy losses of GRPO and its variants.
//!
//! - [`advantages`]: `(r - mean) / (std + eps)` per group, per batch, or unscaled (Dr. GRPO).
//! - [`loss`]: clipped-ratio (GRPO, DAPO clip-higher) and plain policy-gradient (GPG) per-token
//!   losses, the k3 KL to the reference, and the GRPO / BNPO / Dr. GRPO / DAPO aggregations.
//! - [`dynamic`]: DAPO's dynamic sampling (zero-variance groups replaced by fresh draws).
//! - [`policy`]: prompts encoded once, G rollouts sharing the prompt's KV cache, per-token
//!   log-probs recomputed with gradients, the SFT loss.
//! - [`method`]: the named methods of a run (`sft|grpo|dapo|gpg|dr_grpo`) as loss presets.

pub mod advantages;
pub mod dynamic;
pub mod loss;
pub mod method;
pub mod policy;

pub use advantages::{advantages, RewardScaling, ADVANTAGE_EPS};
pub use dynamic::{DynamicSampling, Filled};
pub use loss::{
    aggregate, gpg_scale, loss, per_token_loss, Aggregation, LossConfig, LossInputs, LossOutput,
    Objective, Window,
};
pub use method::Method;
pub use policy::{completion_logps, rollout, sft_loss, Completion, Prompt, RolloutConfig};

#[derive(Debug, thiserror::Error)]
pub enum GrpoError {
    #[error("{len} rewards cannot be split into groups of {group_size}")]
    GroupLayout { len: usize, group_size: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
