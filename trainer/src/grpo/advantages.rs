//! Group-relative advantages: each completion's reward against its group's mean, divided by a
//! standard deviation taken over the group (GRPO), over the whole batch, or not at all (Dr. GRPO).
//!
//! Numbers follow TRL's GRPOTrainer: sample standard deviation (Bessel's correction) and 1e-4 added
//! to it, so a zero-variance group gets advantages of exactly zero rather than NaN.

use serde::{Deserialize, Serialize};

use super::GrpoError;

/// TRL's constant in the advantage denominator.
pub const ADVANTAGE_EPS: f64 = 1e-4;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardScaling {
    /// Divide by the group's standard deviation (GRPO).
    #[default]
    Group,
    /// Divide by the standard deviation of every reward in the batch.
    Batch,
    /// Leave the centred rewards unscaled (Dr. GRPO).
    None,
}

/// Advantages for `rewards` laid out group after group, `group_size` completions each.
pub fn advantages(
    rewards: &[f32],
    group_size: usize,
    scaling: RewardScaling,
) -> Result<Vec<f32>, GrpoError> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return Err(GrpoError::GroupLayout {
            len: rewards.len(),
            group_size,
        });
    }
    let batch_std = sample_std(rewards.iter().map(|&r| r as f64));
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(group_size) {
        let mean = group.iter().map(|&r| r as f64).sum::<f64>() / group.len() as f64;
        let scale = match scaling {
            RewardScaling::Group => {
                1.0 / (sample_std(group.iter().map(|&r| r as f64)) + ADVANTAGE_EPS)
            }
            RewardScaling::Batch => 1.0 / (batch_std + ADVANTAGE_EPS),
            RewardScaling::None => 1.0,
        };
        out.extend(group.iter().map(|&r| ((r as f64 - mean) * scale) as f32));
    }
    Ok(out)
}

/// Sample standard deviation; a single value has none, and its (NaN-free) spread is taken as 0 so
/// that its centred reward, which is 0, stays 0.
fn sample_std(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let n = values.clone().count();
    if n < 2 {
        return 0.0;
    }
    let mean = values.clone().sum::<f64>() / n as f64;
    let ss: f64 = values.map(|v| (v - mean) * (v - mean)).sum();
    (ss / (n - 1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centred_and_scaled_per_group() {
        let a = advantages(&[1.0, 0.0, 1.0, 0.0, 0.5, 0.5], 2, RewardScaling::Group).unwrap();
        // Group std of [1, 0] is 1/sqrt(2).
        let expect = 0.5 / (std::f64::consts::FRAC_1_SQRT_2 + ADVANTAGE_EPS);
        assert!((a[0] as f64 - expect).abs() < 1e-6);
        assert!((a[1] as f64 + expect).abs() < 1e-6);
        assert_eq!(&a[4..], &[0.0, 0.0]);
        let none = advantages(&[1.0, 0.0, 0.25, 0.75], 2, RewardScaling::None).unwrap();
        assert_eq!(none, vec![0.5, -0.5, -0.25, 0.25]);
    }

    #[test]
    fn layout_errors() {
        assert!(advantages(&[1.0, 2.0, 3.0], 2, RewardScaling::Group).is_err());
        assert!(advantages(&[1.0], 0, RewardScaling::Group).is_err());
    }
}
