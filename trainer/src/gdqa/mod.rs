//! GDQA, group diversity question augmentation: a hard question's group of rollouts is spread over
//! several rewordings of it, so that the group's rewards disagree and GRPO gets a gradient.
//!
//! [`variants`] makes the rewordings (always keeping the correct answer), [`hardness`] decides
//! which questions get them, [`metrics`] measures the invalid-gradient ratio GDQA exists to lower.

pub mod hardness;
pub mod metrics;
pub mod variants;

pub use hardness::{HardnessConfig, HardnessTracker};
pub use metrics::{has_zero_variance, invalid_gradient_ratio, GroupOutcome, InvalidGradientRatio};
pub use variants::{make_variants, rephrasings, spread_group};

/// GRPO's group-relative advantages: each reward minus the group mean, over the group's standard
/// deviation (plus `eps`). Computed over the whole group even when its rollouts answered different
/// variants, which is what lets a varied group carry a signal.
pub fn group_advantages(rewards: &[f32], eps: f32) -> Vec<f32> {
    if rewards.is_empty() {
        return Vec::new();
    }
    let n = rewards.len() as f32;
    let mean = rewards.iter().sum::<f32>() / n;
    let var = rewards.iter().map(|r| (r - mean) * (r - mean)).sum::<f32>() / n;
    let std = var.sqrt();
    rewards.iter().map(|r| (r - mean) / (std + eps)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_centred_and_zero_for_a_uniform_group() {
        let a = group_advantages(&[1.0, 0.0, 0.0, 1.0], 1e-6);
        assert!(
            (a[0] - 1.0).abs() < 1e-4 && (a[1] + 1.0).abs() < 1e-4,
            "{a:?}"
        );
        assert!(group_advantages(&[1.0; 4], 1e-6).iter().all(|&x| x == 0.0));
        assert!(group_advantages(&[], 1e-6).is_empty());
    }
}
